//! Resident memory per live session in the memory store, ours against
//! tower-sessions' `MemoryStore`, with the bench's small record.
//!
//! `footprint --impl server-session|tower-sessions [-n 1000000]` prints one
//! JSON line. Run each impl in its own process so neither sees the other's heap.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use server_session::{MemoryStore, Session, SessionInterface};
use tower_sessions::session::{Id, Record};
use tower_sessions::SessionStore as _;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn ours() -> Session {
    match server_session_bench::peer_record(Duration::from_secs(3600), false) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("footprint: {e}");
            std::process::exit(1);
        }
    }
}

fn theirs() -> Record {
    let data: HashMap<String, serde_json::Value> = [
        ("user_id", serde_json::json!(4_815_162_342u64)),
        (
            "csrf_token",
            serde_json::json!("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        ),
        ("locale", serde_json::json!("en-US")),
        ("theme", serde_json::json!("dark")),
        (
            "last_path",
            serde_json::json!("/account/settings/notifications"),
        ),
        ("visits", serde_json::json!(0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Record {
        id: Id::default(),
        data,
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut imp = String::from("server-session");
    let mut n: usize = 1_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let v = args.next().unwrap_or_default();
        match k.as_str() {
            "--impl" => imp = v,
            "-n" => n = v.parse().unwrap_or(n),
            _ => {
                eprintln!("usage: footprint --impl server-session|tower-sessions [-n N]");
                std::process::exit(2);
            }
        }
    }
    let before = rss_bytes();
    let started = Instant::now();
    let live = match imp.as_str() {
        "server-session" => {
            let store = MemoryStore::new();
            for _ in 0..n {
                if let Err(e) = store.create(&ours()).await {
                    eprintln!("footprint: {e}");
                    std::process::exit(1);
                }
            }
            let live = store.len().await.unwrap_or(0) as usize;
            std::mem::forget(store);
            live
        }
        "tower-sessions" => {
            let store = tower_sessions::MemoryStore::default();
            for _ in 0..n {
                let mut record = theirs();
                if let Err(e) = store.create(&mut record).await {
                    eprintln!("footprint: {e}");
                    std::process::exit(1);
                }
            }
            std::mem::forget(store);
            n
        }
        other => {
            eprintln!("footprint: unknown impl {other:?}");
            std::process::exit(2);
        }
    };
    let after = rss_bytes();
    println!(
        "{}",
        serde_json::json!({
            "impl": imp,
            "sessions": live,
            "rss_bytes": after.saturating_sub(before),
            "rss_bytes_per_session": after.saturating_sub(before) / live.max(1) as u64,
            "fill_secs": (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
        })
    );
}

//! Soak runs (not part of CI; `scripts/soak` runs them):
//!
//! - memory: one million sessions (half expiring after 1 s), then `flush`
//!   while 8 tasks keep loading and saving live sessions; reports peak RSS
//!   per session, flush time and the worst latency of the other tasks.
//! - redis, postgres: 100,000 sessions, then `flush`, `len` and `clear`
//!   each while 8 tasks keep working; reports each call's time and the
//!   worst stall of the other operations meanwhile (target: under 100 ms).
//!
//! `soak [memory|redis|postgres]...` (default: all three), sizes from
//! `SOAK_MEMORY` and `SOAK_SERVER`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use server_session::{
    MemoryStore, PostgresConfig, PostgresStore, RedisConfig, RedisStore, SessionId,
    SessionInterface,
};

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn fill(store: &Arc<dyn SessionInterface>, n: usize, short_every: usize) -> Vec<SessionId> {
    let live = Arc::new(std::sync::Mutex::new(Vec::new()));
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, live, next) = (store.clone(), live.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Relaxed) as usize;
                    if i >= n {
                        break;
                    }
                    let short = short_every > 0 && i.is_multiple_of(short_every);
                    let ttl = if short {
                        Duration::from_secs(1)
                    } else {
                        Duration::from_secs(3600)
                    };
                    let Ok(s) = server_session_bench::peer_record(ttl, false) else {
                        continue;
                    };
                    if store.create(&s).await.is_ok() && !short {
                        if let Ok(mut live) = live.lock() {
                            live.push(s.id());
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let ids = live.lock().map(|l| l.clone()).unwrap_or_default();
    ids
}

/// Runs `call` while 8 tasks load and save live sessions; returns how long
/// the call took and the slowest of the other operations meanwhile.
async fn while_busy<F, Fut, T>(
    store: &Arc<dyn SessionInterface>,
    live: &[SessionId],
    call: F,
) -> (Duration, Duration, u64, T)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let live = Arc::new(live.to_vec());
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (store, stop, worst, ops, live) = (
                store.clone(),
                stop.clone(),
                worst.clone(),
                ops.clone(),
                live.clone(),
            );
            tokio::spawn(async move {
                let mut i = t;
                while !stop.load(Relaxed) {
                    let id = live[i % live.len().max(1)];
                    let started = Instant::now();
                    if let Ok(Some(mut s)) = store.get(&id).await {
                        let _ = s.insert("visits", &(i as u64));
                        let _ = store.update(&s, s.version()).await;
                    }
                    worst.fetch_max(started.elapsed().as_micros() as u64, Relaxed);
                    ops.fetch_add(1, Relaxed);
                    i += 8;
                    // The memory store never waits: let the measured call run.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    worst.store(0, Relaxed);
    let started = Instant::now();
    let out = call().await;
    let took = started.elapsed();
    stop.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (
        took,
        Duration::from_micros(worst.load(Relaxed)),
        ops.load(Relaxed),
        out,
    )
}

async fn soak_memory() {
    let n = env_usize("SOAK_MEMORY", 1_000_000);
    let before_kb = status_kb("VmRSS:");
    let store: Arc<dyn SessionInterface> = Arc::new(MemoryStore::new());
    let started = Instant::now();
    let live = fill(&store, n, 2).await;
    let fill_secs = started.elapsed().as_secs_f64();
    let peak_kb = status_kb("VmHWM:");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (took, worst, ops, flushed) = while_busy(&store, &live, || store.flush()).await;
    let flushed = flushed.unwrap_or(0);
    println!(
        "memory: {n} sessions filled in {fill_secs:.1} s; peak RSS {} MiB = {} bytes per session; \
         flush removed {flushed} in {:.0} ms while 8 tasks did {ops} load+save ops, worst {:.1} ms",
        peak_kb / 1024,
        (peak_kb.saturating_sub(before_kb) * 1024) / n.max(1) as u64,
        took.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
}

async fn soak_server(name: &str, store: Arc<dyn SessionInterface>) {
    let n = env_usize("SOAK_SERVER", 100_000);
    let started = Instant::now();
    let live = fill(&store, n, 2).await;
    println!(
        "{name}: {n} sessions filled in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (took, worst, ops, flushed) = while_busy(&store, &live, || store.flush()).await;
    println!(
        "{name}: flush removed {} in {:.0} ms; meanwhile {ops} ops, worst {:.1} ms",
        flushed.unwrap_or(0),
        took.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
    let (took, worst, ops, len) = while_busy(&store, &live, || store.len()).await;
    println!(
        "{name}: len = {} in {:.0} ms; meanwhile {ops} ops, worst {:.1} ms",
        len.unwrap_or(0),
        took.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
    let (took, worst, ops, cleared) = while_busy(&store, &live, || store.clear()).await;
    println!(
        "{name}: clear {} in {:.0} ms; meanwhile {ops} ops, worst {:.1} ms",
        if cleared.is_ok() { "done" } else { "FAILED" },
        took.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() {
    let mut which: Vec<String> = std::env::args().skip(1).collect();
    if which.is_empty() {
        which = vec!["memory".into(), "redis".into(), "postgres".into()];
    }
    for backend in which {
        match backend.as_str() {
            "memory" => soak_memory().await,
            "redis" => {
                let url =
                    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
                match RedisStore::connect_with(RedisConfig {
                    prefix: format!("soak:{}:", std::process::id()),
                    ..RedisConfig::new(url)
                })
                .await
                {
                    Ok(store) => soak_server("redis", Arc::new(store)).await,
                    Err(e) => eprintln!("soak: redis: {e}"),
                }
            }
            "postgres" => {
                let url = std::env::var("DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
                let store = PostgresStore::connect_with(PostgresConfig {
                    schema: Some("server_session_soak".into()),
                    ..PostgresConfig::new(url)
                })
                .await;
                match store {
                    Ok(store) => {
                        if let Err(e) = store.migrate().await {
                            eprintln!("soak: postgres migrate: {e}");
                            continue;
                        }
                        let _ = store.clear().await;
                        let store = Arc::new(store);
                        soak_server("postgres", store.clone()).await;
                        let _ = store.drop_table().await;
                    }
                    Err(e) => eprintln!("soak: postgres: {e}"),
                }
            }
            other => eprintln!("soak: unknown backend {other:?} (memory, redis, postgres)"),
        }
    }
}

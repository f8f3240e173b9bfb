//! The whole HTTP path, the peer's side: the small axum app of
//! `bench/src/bin/http_path.rs` on tower-sessions 0.14's
//! `SessionManagerLayer`, served on loopback until killed, for
//! `scripts/bench-http` to load with wrk (and to run under callgrind).
//!
//! ```text
//! peer_http_path --backend memory|redis|sqlite|postgres [--port 0] [--exit-after N]
//! ```
//!
//! Routes: `/inc` reads the counter `n` from the session and writes `n + 1`
//! (`get`, then `insert`, as tower-sessions' counter example), `/read` only
//! reads it, `/none` never touches the session. The bound port is the first
//! line on stdout. `--exit-after N` stops serving after the N-th request has
//! been answered and its connection closed, so a profiler wrapping the
//! server writes its output. `http_path --client N` drives it.
//!
//! Session config, matched by `http_path`: cookie `id`, not `Secure` (plain
//! http), `HttpOnly`, `SameSite=Lax` (tower-sessions' default is `Strict`),
//! expiry after 10 minutes of inactivity (a persistent cookie). Pools: 16
//! connections for Redis and PostgreSQL (our stores' default); SQLite as
//! tower-sessions documents it (WAL, synchronous NORMAL, 8 connections).
//!
//! Names: PostgreSQL table `peer_bench.http_bench_tower`, SQLite file
//! `$TMPDIR/http_bench_tower.sqlite`, emptied at start and removed on
//! SIGTERM/SIGINT or after `--exit-after`. The Redis store has no key
//! prefix: its sessions are left to expire (10 minutes).
//!
//! env: REDIS_URL (redis://127.0.0.1:6379), DATABASE_URL or PG_URL
//! (postgres://postgres@127.0.0.1:5432/test); loopback hosts only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{from_fn, Next};
use axum::routing::get;
use axum::Router;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::Notify;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, MemoryStore, Session, SessionManagerLayer, SessionStore};
use tower_sessions_redis_store::{
    fred::prelude::{self as fred, ClientLike},
    RedisStore,
};
use tower_sessions_sqlx_store::{PostgresStore, SqliteStore};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const NAME: &str = "http_bench_tower";

fn die(message: &str) -> ! {
    eprintln!("peer_http_path: {message}");
    std::process::exit(2);
}

/// Refuses anything but loopback: this tool only ever loads local servers.
fn check_loopback(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let auth = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = auth.rsplit('@').next().unwrap_or("");
    let host = match hostport.strip_prefix('[') {
        Some(h) => h.split(']').next().unwrap_or(""),
        None => hostport.split(':').next().unwrap_or(""),
    };
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !ok {
        die(&format!("refusing non-loopback host {host:?} in {url}"));
    }
    url.to_string()
}

fn env_url(keys: &[&str], default: &str) -> String {
    let url = keys
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .unwrap_or_else(|| default.into());
    check_loopback(&url)
}

fn remove_sqlite(path: &str) {
    for suffix in ["", "-wal", "-shm"] {
        // Absent files are the normal case before a run.
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

/// The counter as tower-sessions' own counter example writes it.
async fn inc(session: Session) -> Result<String, StatusCode> {
    let n: u64 = session
        .get("n")
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .unwrap_or(0);
    session
        .insert("n", n + 1)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok((n + 1).to_string())
}

async fn read(session: Session) -> Result<String, StatusCode> {
    let n: u64 = session
        .get("n")
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .unwrap_or(0);
    Ok(n.to_string())
}

async fn none() -> &'static str {
    "none"
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without handlers the default action (exit) applies anyway.
        _ => std::future::pending().await,
    }
}

/// Serves the app on `store` until killed or `exit_after` requests.
async fn serve<S: SessionStore + Clone>(store: S, port: u16, exit_after: Option<u64>) -> Res<()> {
    let layer = SessionManagerLayer::new(store)
        .with_secure(false)
        .with_same_site(SameSite::Lax)
        .with_expiry(Expiry::OnInactivity(time::Duration::minutes(10)));
    let mut app = Router::new()
        .route("/inc", get(inc))
        .route("/read", get(read))
        .route("/none", get(none))
        .layer(layer);
    // Counting stays out of the measured app unless asked for.
    let done = Arc::new(Notify::new());
    if let Some(limit) = exit_after {
        let (count, done) = (Arc::new(AtomicU64::new(0)), done.clone());
        app = app.layer(from_fn(move |request: Request, next: Next| {
            if count.fetch_add(1, Ordering::Relaxed) + 1 == limit {
                // notify_one keeps the permit until the shutdown future polls.
                done.notify_one();
            }
            next.run(request)
        }));
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("{}", listener.local_addr()?.port());
    // The script reads the port before it sends anything.
    std::io::Write::flush(&mut std::io::stdout())?;
    // Graceful: the last request is answered, then its connection ends.
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        if exit_after.is_some() {
            done.notified().await;
        } else {
            std::future::pending::<()>().await;
        }
    });
    tokio::select! {
        served = server => served?,
        // Open keep-alive connections would hold a graceful shutdown.
        _ = terminated() => {}
    }
    Ok(())
}

async fn run_on(backend: &str, port: u16, exit_after: Option<u64>) -> Res<()> {
    match backend {
        "memory" => serve(MemoryStore::default(), port, exit_after).await,
        "redis" => {
            let cfg = fred::Config::from_url(&env_url(&["REDIS_URL"], "redis://127.0.0.1:6379"))?;
            let pool = fred::Pool::new(cfg, None, None, None, 16)?;
            let _connection_task = pool.init().await?;
            serve(RedisStore::new(pool), port, exit_after).await
        }
        "sqlite" => {
            let path = std::env::temp_dir()
                .join(format!("{NAME}.sqlite"))
                .to_string_lossy()
                .into_owned();
            remove_sqlite(&path);
            // The pool tower-sessions' documentation suggests: WAL,
            // synchronous NORMAL.
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await?;
            let store = SqliteStore::new(pool.clone());
            store.migrate().await?;
            let served = serve(store, port, exit_after).await;
            pool.close().await;
            remove_sqlite(&path);
            served
        }
        "postgres" => {
            let url = env_url(
                &["DATABASE_URL", "PG_URL"],
                "postgres://postgres@127.0.0.1:5432/test",
            );
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy(&url)?;
            let drop = format!("drop table if exists peer_bench.{NAME}");
            sqlx::query(&drop).execute(&pool).await?;
            let store = PostgresStore::new(pool.clone())
                .with_schema_name("peer_bench")?
                .with_table_name(NAME)?;
            store.migrate().await?;
            let served = serve(store, port, exit_after).await;
            sqlx::query(&drop).execute(&pool).await?;
            served
        }
        b => die(&format!("unknown backend {b:?}")),
    }
}

#[tokio::main]
async fn main() {
    let (mut backend, mut port, mut exit_after) = (String::new(), 0u16, None);
    let usage = "usage: peer_http_path --backend B [--port P] [--exit-after N]";
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let v = args.next().unwrap_or_else(|| die(usage));
        match k.as_str() {
            "--backend" => backend = v,
            "--port" => port = v.parse().unwrap_or_else(|_| die("--port P")),
            "--exit-after" => {
                exit_after = Some(v.parse().unwrap_or_else(|_| die("--exit-after N")))
            }
            _ => die(usage),
        }
    }
    if let Err(e) = run_on(&backend, port, exit_after).await {
        die(&format!("{backend}: {e}"));
    }
}

//! The whole HTTP path, our side: a small axum app on `SessionLayer`, served
//! on loopback until killed, for `scripts/bench-http` to load with wrk (and
//! to run under callgrind). `bench/peer`'s `peer_http_path` is the same app
//! on tower-sessions' `SessionManagerLayer`.
//!
//! ```text
//! http_path --backend memory|redis|sqlite|postgres [--port 0] [--plain] [--exit-after N]
//! http_path --client N --port P [--path /inc]
//! ```
//!
//! Routes: `/inc` reads the counter `n` from the session and writes `n + 1`,
//! `/read` only reads it, `/none` never touches the session. `--plain`
//! serves the same routes without any session layer (`/inc` and `/read`
//! then answer a constant): the baseline for `/none`. The bound port is the
//! first line on stdout. `--exit-after N` stops serving after the N-th
//! request has been answered and its connection closed, so a profiler
//! wrapping the server writes its output.
//!
//! `--client N` is a load-free driver for counting instructions: one
//! keep-alive connection gets a cookie from `/inc`, then sends N requests to
//! `--path` with it (so the server sees N + 1 requests).
//!
//! Session config, matched by `peer_http_path`: cookie `id` (no `__Host-`
//! prefix, not `Secure`: plain http), `HttpOnly`, `SameSite=Lax`, a
//! persistent cookie, expiry after 10 minutes of inactivity and no absolute
//! limit. Ten minutes rather than a day: tower-sessions' Redis store has no
//! key prefix, so its sessions can only be left to expire.
//!
//! Each backend uses its own names (Redis prefix `http_bench_ours:`,
//! PostgreSQL table `server_session_bench.http_bench_ours`, SQLite file
//! `$TMPDIR/http_bench_ours.sqlite`), emptied at start and removed on
//! SIGTERM/SIGINT or after `--exit-after`.
//!
//! env: REDIS_URL (redis://127.0.0.1:6379), DATABASE_URL or PG_URL
//! (postgres://postgres@127.0.0.1:5432/test); loopback hosts only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{from_fn, Next};
use axum::routing::get;
use axum::Router;
use server_session::{
    MemoryStore, PostgresConfig, PostgresStore, RedisConfig, RedisStore, SessionConfig,
    SessionInterface, SessionManager, SqliteConfig, SqliteStore,
};
use server_session_bench::loopback_url;
use session_axum::{Session, SessionLayer, SessionRejection};
use tokio::sync::Notify;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const NAME: &str = "http_bench_ours";

fn die(message: &str) -> ! {
    eprintln!("http_path: {message}");
    std::process::exit(2);
}

/// What a run leaves behind, and how to remove it.
enum Cleanup {
    None,
    Clear(Arc<dyn SessionInterface>),
    Postgres(Arc<PostgresStore>),
    /// The SQLite file (and its `-wal`, `-shm`).
    File(String),
}

impl Cleanup {
    async fn run(self) -> Res<()> {
        match self {
            Cleanup::None => {}
            Cleanup::Clear(store) => store.clear().await?,
            Cleanup::Postgres(store) => store.drop_table().await?,
            Cleanup::File(path) => remove_sqlite(&path),
        }
        Ok(())
    }
}

fn remove_sqlite(path: &str) {
    for suffix in ["", "-wal", "-shm"] {
        // Absent files are the normal case before a run.
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

/// The store for `backend`, empty, under this tool's own names.
async fn connect(backend: &str) -> Res<(Arc<dyn SessionInterface>, Cleanup)> {
    Ok(match backend {
        "memory" => (Arc::new(MemoryStore::new()), Cleanup::None),
        "redis" => {
            let store: Arc<dyn SessionInterface> = Arc::new(
                RedisStore::connect_with(RedisConfig {
                    prefix: format!("{NAME}:"),
                    ..RedisConfig::new(loopback_url(&["REDIS_URL"], "redis://127.0.0.1:6379"))
                })
                .await?,
            );
            // A killed earlier run may have left sessions behind.
            store.clear().await?;
            (store.clone(), Cleanup::Clear(store))
        }
        "sqlite" => {
            let path = std::env::temp_dir()
                .join(format!("{NAME}.sqlite"))
                .to_string_lossy()
                .into_owned();
            remove_sqlite(&path);
            let store =
                SqliteStore::connect_with(SqliteConfig::new(format!("sqlite://{path}"))).await?;
            store.migrate().await?;
            (Arc::new(store), Cleanup::File(path))
        }
        "postgres" => {
            let url = loopback_url(
                &["DATABASE_URL", "PG_URL"],
                "postgres://postgres@127.0.0.1:5432/test",
            );
            let store = Arc::new(
                PostgresStore::connect_with(PostgresConfig {
                    schema: Some("server_session_bench".into()),
                    table: NAME.into(),
                    ..PostgresConfig::new(url)
                })
                .await?,
            );
            store.drop_table().await?;
            store.migrate().await?;
            (store.clone(), Cleanup::Postgres(store))
        }
        b => die(&format!("unknown backend {b:?}")),
    })
}

/// The counter as the README shows it: one atomic read-modify-write.
async fn inc(session: Session) -> Result<String, SessionRejection> {
    let n = session.modify("n", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    Ok(n.to_string())
}

async fn read(session: Session) -> Result<String, SessionRejection> {
    Ok(session.get::<u64>("n")?.unwrap_or(0).to_string())
}

async fn none() -> &'static str {
    "none"
}

async fn constant() -> &'static str {
    "0"
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

struct Args {
    backend: String,
    port: u16,
    plain: bool,
    exit_after: Option<u64>,
    client: Option<u64>,
    path: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        backend: String::new(),
        port: 0,
        plain: false,
        exit_after: None,
        client: None,
        path: "/inc".into(),
    };
    let usage = "usage: http_path --backend B [--port P] [--plain] [--exit-after N] \
                 | http_path --client N --port P [--path /inc]";
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        if k == "--plain" {
            a.plain = true;
            continue;
        }
        let v = args.next().unwrap_or_else(|| die(usage));
        match k.as_str() {
            "--backend" => a.backend = v,
            "--port" => a.port = v.parse().unwrap_or_else(|_| die("--port P")),
            "--exit-after" => {
                a.exit_after = Some(v.parse().unwrap_or_else(|_| die("--exit-after N")))
            }
            "--client" => a.client = Some(v.parse().unwrap_or_else(|_| die("--client N"))),
            "--path" => a.path = v,
            _ => die(usage),
        }
    }
    a
}

fn main() {
    let args = parse_args();
    if let Some(n) = args.client {
        client(args.port, &args.path, n);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    runtime.block_on(serve(args));
}

async fn serve(args: Args) {
    let routes = Router::new().route("/none", get(none));
    let (mut app, cleanup) = if args.plain {
        let app = routes
            .route("/inc", get(constant))
            .route("/read", get(constant));
        (app, Cleanup::None)
    } else {
        let (store, cleanup) = connect(&args.backend)
            .await
            .unwrap_or_else(|e| die(&format!("{} setup failed: {e}", args.backend)));
        let config = SessionConfig {
            secure: false,
            persistent: true,
            idle_timeout: Duration::from_secs(600),
            absolute_timeout: None,
            ..SessionConfig::default()
        };
        let manager = Arc::new(
            SessionManager::new(store, config).unwrap_or_else(|e| die(&format!("config: {e}"))),
        );
        let app = routes
            .route("/inc", get(inc))
            .route("/read", get(read))
            .layer(SessionLayer::new(manager));
        (app, cleanup)
    };
    // Counting stays out of the measured app unless asked for.
    let done = Arc::new(Notify::new());
    if let Some(limit) = args.exit_after {
        let (count, done) = (Arc::new(AtomicU64::new(0)), done.clone());
        app = app.layer(from_fn(move |request: Request, next: Next| {
            if count.fetch_add(1, Ordering::Relaxed) + 1 == limit {
                // notify_one keeps the permit until the shutdown future polls.
                done.notify_one();
            }
            next.run(request)
        }));
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .unwrap_or_else(|e| die(&format!("bind: {e}")));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| die(&format!("bind: {e}")))
        .port();
    println!("{port}");
    // The script reads the port before it sends anything.
    let _ = std::io::stdout().flush();
    let exit_after = args.exit_after.is_some();
    // Graceful: the last request is answered, then its connection ends.
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        if exit_after {
            done.notified().await;
        } else {
            std::future::pending::<()>().await;
        }
    });
    tokio::select! {
        served = server => {
            if let Err(e) = served {
                eprintln!("http_path: serve: {e}");
            }
        }
        // Open keep-alive connections would hold a graceful shutdown.
        _ = terminated() => {}
    }
    if let Err(e) = cleanup.run().await {
        eprintln!("http_path: {} cleanup failed: {e}", args.backend);
    }
}

/// One keep-alive connection: a cookie from `/inc`, then `n` GETs of `path`.
fn client(port: u16, path: &str, n: u64) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| die(&format!("connect to port {port}: {e}")));
    // Small requests, answered one at a time: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let first = http_get(&mut stream, "/inc", None);
    let cookie = first
        .lines()
        .find_map(|l| {
            l.get(..11)
                .filter(|h| h.eq_ignore_ascii_case("set-cookie:"))
                .map(|_| l[11..].trim())
        })
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .unwrap_or_else(|| die(&format!("/inc set no cookie: {first:?}")));
    for _ in 0..n {
        http_get(&mut stream, path, Some(&cookie));
    }
}

/// Sends one GET and reads the answer; its head, or exits on anything but 200.
fn http_get(stream: &mut TcpStream, path: &str, cookie: Option<&str>) -> String {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{cookie}\r\n");
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| die(&format!("write: {e}")));
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream
            .read(&mut chunk)
            .unwrap_or_else(|e| die(&format!("read: {e}")));
        if read == 0 {
            die("the server closed the connection");
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 200") {
                die(&format!("{path} answered {head:?}"));
            }
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.get(..15)
                        .filter(|h| h.eq_ignore_ascii_case("content-length:"))
                        .and_then(|_| l[15..].trim().parse().ok())
                })
                .unwrap_or_else(|| die("no content-length"));
            if buffer.len() >= end + 4 + length {
                return head;
            }
        }
    }
}

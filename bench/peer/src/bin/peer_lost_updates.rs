//! Lost updates over real HTTP, the peer's side: the counter app a new user
//! of tower-sessions 0.14 writes (`session.get::<u64>("n")`, then
//! `session.insert("n", n + 1)`) on `SessionManagerLayer`, served by axum on
//! loopback and driven by many concurrent clients that all send the same
//! session cookie. `bench/src/bin/lost_updates.rs` is the same run on
//! server-session; the JSON lines match.
//!
//! `peer_lost_updates --backend memory|redis|sqlite|postgres|mysql [--clients 16] [--requests 50]`
//!
//! One client gets a session cookie from `/start` (which sets the counter to
//! 0), then `--clients` tokio tasks, each with its own hyper-util client and
//! keep-alive connection, send `--requests` requests each to `/inc`; `/read`
//! gives the final counter. Prints one JSON line on stdout:
//! `{impl, backend, clients, requests, acknowledged, failed, final_count, lost}`
//! where `lost` = acknowledged − final_count. Each run uses its own SQL table
//! or SQLite file and removes it at the end (Redis and memory: the session
//! is deleted; the Redis store has no key prefix).
//!
//! env: REDIS_URL (redis://127.0.0.1:6379), DATABASE_URL or PG_URL
//! (postgres://postgres@127.0.0.1:5432/test), MYSQL_URL
//! (mysql://root@127.0.0.1:3306/test); loopback hosts only.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tower_sessions::session::Id;
use tower_sessions::{MemoryStore, Session, SessionManagerLayer, SessionStore};
use tower_sessions_redis_store::{
    fred::prelude::{self as fred, ClientLike},
    RedisStore,
};
use tower_sessions_sqlx_store::{MySqlStore, PostgresStore, SqliteStore};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn die(message: &str) -> ! {
    eprintln!("peer_lost_updates: {message}");
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

async fn start(session: Session) -> Result<&'static str, StatusCode> {
    session
        .insert("n", 0u64)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok("0")
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

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One GET; the status, the first `Set-Cookie` pair and the body.
async fn send(
    client: &HttpClient,
    url: &str,
    cookie: Option<&str>,
) -> Res<(StatusCode, Option<String>, String)> {
    let mut request = Request::get(url);
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    let response = client.request(request.body(Empty::new())?).await?;
    let status = response.status();
    let set_cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok((
        status,
        set_cookie,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// What one run measured.
struct Outcome {
    acknowledged: u64,
    failed: u64,
    final_count: u64,
}

/// Serves the app on `store`, drives it, deletes the session.
async fn run<S: SessionStore + Clone>(store: S, clients: usize, requests: usize) -> Res<Outcome> {
    let app = Router::new()
        .route("/start", get(start))
        .route("/inc", get(inc))
        .route("/read", get(read))
        .layer(SessionManagerLayer::new(store.clone()).with_secure(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let base = format!("http://{address}");
    let (status, cookie, _) = send(&client(), &format!("{base}/start"), None).await?;
    let cookie = match (status.is_success(), cookie) {
        (true, Some(cookie)) => Arc::new(cookie),
        _ => return Err(format!("/start answered {status} without a session cookie").into()),
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (cookie, url) = (cookie.clone(), format!("{base}/inc"));
            tokio::spawn(async move {
                let client = client();
                let (mut acknowledged, mut failed) = (0u64, 0u64);
                for _ in 0..requests {
                    match send(&client, &url, Some(&cookie)).await {
                        Ok((status, _, _)) if status.is_success() => acknowledged += 1,
                        Ok((status, _, body)) => {
                            failed += 1;
                            eprintln!("peer_lost_updates: /inc answered {status}: {body}");
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("peer_lost_updates: /inc failed: {e}");
                        }
                    }
                }
                (acknowledged, failed)
            })
        })
        .collect();
    let (mut acknowledged, mut failed) = (0, 0);
    for task in tasks {
        let (a, f) = task.await?;
        acknowledged += a;
        failed += f;
    }
    let elapsed = started.elapsed();
    let (status, _, body) = send(&client(), &format!("{base}/read"), Some(&cookie)).await?;
    server.abort();
    if !status.is_success() {
        return Err(format!("/read answered {status}").into());
    }
    let final_count: u64 = body
        .trim()
        .parse()
        .map_err(|_| format!("/read answered {body:?}"))?;
    // The cookie's value is the session id: delete what this run stored.
    let id = cookie.split_once('=').map_or("", |(_, v)| v);
    match Id::from_str(id) {
        Ok(id) => store.delete(&id).await?,
        Err(e) => eprintln!("peer_lost_updates: cookie {cookie:?} holds no session id: {e}"),
    }
    eprintln!(
        "peer_lost_updates: tower-sessions: {acknowledged} acknowledged, {failed} failed, \
         final {final_count} in {:.2} s",
        elapsed.as_secs_f64()
    );
    Ok(Outcome {
        acknowledged,
        failed,
        final_count,
    })
}

/// Connects to `backend` under a table of this run's own, runs, drops it.
async fn run_on(backend: &str, unique: &str, clients: usize, requests: usize) -> Res<Outcome> {
    let table = format!("lost_updates_{unique}");
    match backend {
        "memory" => run(MemoryStore::default(), clients, requests).await,
        "redis" => {
            let cfg = fred::Config::from_url(&env_url(&["REDIS_URL"], "redis://127.0.0.1:6379"))?;
            let pool = fred::Pool::new(cfg, None, None, None, 8)?;
            let _connection_task = pool.init().await?;
            run(RedisStore::new(pool), clients, requests).await
        }
        "sqlite" => {
            let path = std::env::temp_dir()
                .join(format!("peer_lost_updates_{unique}.sqlite"))
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
            let outcome = run(store, clients, requests).await;
            pool.close().await;
            remove_sqlite(&path);
            outcome
        }
        "postgres" => {
            let url = env_url(
                &["DATABASE_URL", "PG_URL"],
                "postgres://postgres@127.0.0.1:5432/test",
            );
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy(&url)?;
            let store = PostgresStore::new(pool.clone())
                .with_schema_name("peer_bench")?
                .with_table_name(&table)?;
            store.migrate().await?;
            let outcome = run(store, clients, requests).await;
            sqlx::query(&format!("drop table if exists peer_bench.{table}"))
                .execute(&pool)
                .await?;
            outcome
        }
        "mysql" => {
            let url = env_url(&["MYSQL_URL"], "mysql://root@127.0.0.1:3306/test");
            let pool = MySqlPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy(&url)?;
            let store = MySqlStore::new(pool.clone())
                .with_schema_name("peer_bench")?
                .with_table_name(&table)?;
            store.migrate().await?;
            let outcome = run(store, clients, requests).await;
            sqlx::query(&format!("drop table if exists peer_bench.{table}"))
                .execute(&pool)
                .await?;
            outcome
        }
        b => die(&format!("unknown backend {b:?}")),
    }
}

#[tokio::main]
async fn main() {
    let (mut backend, mut clients, mut requests) = (String::new(), 16usize, 50usize);
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let v = args.next().unwrap_or_default();
        match k.as_str() {
            "--backend" => backend = v,
            "--clients" => clients = v.parse().unwrap_or_else(|_| die("--clients N")),
            "--requests" => requests = v.parse().unwrap_or_else(|_| die("--requests N")),
            _ => die("usage: peer_lost_updates --backend B [--clients 16] [--requests 50]"),
        }
    }
    let unique = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let outcome = run_on(&backend, &unique, clients, requests)
        .await
        .unwrap_or_else(|e| die(&format!("{backend}: {e}")));
    println!(
        "{}",
        serde_json::json!({
            "impl": "tower-sessions",
            "backend": backend,
            "clients": clients,
            "requests": clients * requests,
            "acknowledged": outcome.acknowledged,
            "failed": outcome.failed,
            "final_count": outcome.final_count,
            "lost": outcome.acknowledged as i64 - outcome.final_count as i64,
        })
    );
}

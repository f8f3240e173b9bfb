//! Lost updates over real HTTP, our side: a counter app on `SessionLayer`
//! served by axum on loopback, driven by many concurrent clients that all
//! send the same session cookie. Every acknowledged (2xx) increment must
//! survive; `bench/peer`'s `lost_updates` is the same run on tower-sessions.
//!
//! `lost_updates --backend memory|redis|sqlite|postgres|mysql [--clients 16] [--requests 50]`
//!
//! One client gets a session cookie from `/start` (which sets the counter to
//! 0), then `--clients` tokio tasks, each with its own hyper-util client and
//! keep-alive connection, send `--requests` requests each to `/inc`; `/read`
//! gives the final counter. Prints one JSON line on stdout:
//! `{impl, backend, clients, requests, acknowledged, failed, final_count, lost}`
//! where `lost` = acknowledged − final_count. Each run uses its own Redis
//! prefix, SQL table or SQLite file, and removes it at the end.
//!
//! env: REDIS_URL (redis://127.0.0.1:6379), DATABASE_URL or PG_URL
//! (postgres://postgres@127.0.0.1:5432/test), MYSQL_URL
//! (mysql://root@127.0.0.1:3306/test); loopback hosts only.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use server_session::{
    MemoryStore, MysqlConfig, MysqlStore, PostgresConfig, PostgresStore, RedisConfig, RedisStore,
    SessionConfig, SessionInterface, SessionManager, SqliteConfig, SqliteStore,
};
use server_session_bench::loopback_url;
use session_axum::{Session, SessionLayer, SessionRejection};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn die(message: &str) -> ! {
    eprintln!("lost_updates: {message}");
    std::process::exit(2);
}

/// What a run leaves behind, and how to remove it.
enum Cleanup {
    /// Nothing outside the process.
    None,
    /// This run's Redis prefix.
    Clear(Arc<dyn SessionInterface>),
    Postgres(Arc<PostgresStore>),
    Mysql(Arc<MysqlStore>),
    /// The SQLite file (and its `-wal`, `-shm`).
    File(String),
}

impl Cleanup {
    async fn run(self) -> Res<()> {
        match self {
            Cleanup::None => {}
            Cleanup::Clear(store) => store.clear().await?,
            Cleanup::Postgres(store) => store.drop_table().await?,
            Cleanup::Mysql(store) => store.drop_table().await?,
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

/// The store for `backend`, under a name no other run uses.
async fn connect(backend: &str, unique: &str) -> Res<(Arc<dyn SessionInterface>, Cleanup)> {
    Ok(match backend {
        "memory" => (Arc::new(MemoryStore::new()), Cleanup::None),
        "redis" => {
            let store: Arc<dyn SessionInterface> = Arc::new(
                RedisStore::connect_with(RedisConfig {
                    prefix: format!("lost_updates:{unique}:"),
                    ..RedisConfig::new(loopback_url(&["REDIS_URL"], "redis://127.0.0.1:6379"))
                })
                .await?,
            );
            (store.clone(), Cleanup::Clear(store))
        }
        "sqlite" => {
            let path = std::env::temp_dir()
                .join(format!("lost_updates_{unique}.sqlite"))
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
                    table: format!("lost_updates_{unique}"),
                    ..PostgresConfig::new(url)
                })
                .await?,
            );
            store.migrate().await?;
            (store.clone(), Cleanup::Postgres(store))
        }
        "mysql" => {
            let url = loopback_url(&["MYSQL_URL"], "mysql://root@127.0.0.1:3306/test");
            let store = Arc::new(
                MysqlStore::connect_with(MysqlConfig {
                    table: format!("lost_updates_{unique}"),
                    ..MysqlConfig::new(url)
                })
                .await?,
            );
            store.migrate().await?;
            (store.clone(), Cleanup::Mysql(store))
        }
        b => die(&format!("unknown backend {b:?}")),
    })
}

async fn start(session: Session) -> Result<&'static str, SessionRejection> {
    session.insert("n", &0u64)?;
    Ok("0")
}

/// The counter as the README shows it: one atomic read-modify-write.
async fn inc(session: Session) -> Result<String, SessionRejection> {
    let n = session.modify("n", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    Ok(n.to_string())
}

async fn read(session: Session) -> Result<String, SessionRejection> {
    Ok(session.get::<u64>("n")?.unwrap_or(0).to_string())
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

#[tokio::main]
async fn main() {
    // Why a save failed (a 500 from the layer) is only in its log.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    let (mut backend, mut clients, mut requests) = (String::new(), 16usize, 50usize);
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let v = args.next().unwrap_or_default();
        match k.as_str() {
            "--backend" => backend = v,
            "--clients" => clients = v.parse().unwrap_or_else(|_| die("--clients N")),
            "--requests" => requests = v.parse().unwrap_or_else(|_| die("--requests N")),
            _ => die("usage: lost_updates --backend B [--clients 16] [--requests 50]"),
        }
    }
    let unique = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let (store, cleanup) = connect(&backend, &unique)
        .await
        .unwrap_or_else(|e| die(&format!("{backend} setup failed: {e}")));
    let outcome = run(store, clients, requests).await;
    if let Err(e) = cleanup.run().await {
        eprintln!("lost_updates: {backend} cleanup failed: {e}");
    }
    let (acknowledged, failed, final_count) =
        outcome.unwrap_or_else(|e| die(&format!("{backend}: {e}")));
    println!(
        "{}",
        serde_json::json!({
            "impl": "server-session",
            "backend": backend,
            "clients": clients,
            "requests": clients * requests,
            "acknowledged": acknowledged,
            "failed": failed,
            "final_count": final_count,
            "lost": acknowledged as i64 - final_count as i64,
        })
    );
}

/// Serves the app, drives it; (acknowledged, failed, final counter).
async fn run(
    store: Arc<dyn SessionInterface>,
    clients: usize,
    requests: usize,
) -> Res<(u64, u64, u64)> {
    let config = SessionConfig {
        secure: false,
        ..SessionConfig::default()
    };
    let manager = Arc::new(SessionManager::new(store, config)?);
    let app = Router::new()
        .route("/start", get(start))
        .route("/inc", get(inc))
        .route("/read", get(read))
        .layer(SessionLayer::new(manager));
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
                            eprintln!("lost_updates: /inc answered {status}: {body}");
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("lost_updates: /inc failed: {e}");
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
    if !status.is_success() {
        return Err(format!("/read answered {status}").into());
    }
    let final_count: u64 = body
        .trim()
        .parse()
        .map_err(|_| format!("/read answered {body:?}"))?;
    server.abort();
    eprintln!(
        "lost_updates: server-session: {acknowledged} acknowledged, {failed} failed, \
         final {final_count} in {:.2} s",
        elapsed.as_secs_f64()
    );
    Ok((acknowledged, failed, final_count))
}

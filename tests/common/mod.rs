//! Shared by the backend tests: reaching servers, skipping, unique names.
#![allow(dead_code)]

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;

/// What a test factory or wrapper made or saw, kept to be taken back at
/// once (by a factory's `cleanup`, or by an assertion).
#[derive(Debug)]
pub struct Made<T>(std::sync::Mutex<Vec<T>>);

impl<T> Default for Made<T> {
    fn default() -> Self {
        Made(std::sync::Mutex::new(Vec::new()))
    }
}

impl<T> Made<T> {
    pub fn keep(&self, item: T) {
        if let Ok(mut items) = self.0.lock() {
            items.push(item);
        }
    }

    pub fn take(&self) -> Vec<T> {
        self.0
            .lock()
            .map(|mut items| items.drain(..).collect())
            .unwrap_or_default()
    }
}

/// What to do when a backend's server cannot be reached: with `CI` set,
/// fail loudly; otherwise skip with one `SKIPPED` line (see [`say_skipped`]).
pub fn unreachable(backend: &str, address: &str, error: impl std::fmt::Display) {
    if std::env::var_os("CI").is_some() {
        panic!("{backend} at {address} is unreachable and CI is set: {error}");
    }
    say_skipped(&format!(
        "{}: {address} unreachable ({error})",
        running_test(backend)
    ));
}

/// Prints `SKIPPED <line>` to the process's real stderr. libtest captures
/// `println!`/`eprintln!` of passing tests, so a skip printed that way would
/// show as a plain "ok"; a direct write to the stderr handle is not captured.
/// `.ci/run` fails the run on any such line that names an unreachable server.
pub fn say_skipped(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {line}");
}

/// `what` followed by the running test's name, which libtest gives the
/// thread that runs it (absent with `--test-threads=1`, where tests run on
/// `main`).
fn running_test(what: &str) -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => format!("{what} ({name})"),
        _ => what.to_owned(),
    }
}

/// A short random name, unique per test case, safe in keys, tables and paths.
pub fn unique(prefix: &str) -> String {
    let token = server_session::SessionToken::generate();
    let tail: String = token
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("{prefix}{}", tail.to_ascii_lowercase())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The shared Redis Cluster (`scripts/services` starts it on
/// 127.0.0.1:7000-7005).
pub fn redis_cluster_url() -> String {
    std::env::var("REDIS_CLUSTER_URL").unwrap_or_else(|_| {
        let nodes: Vec<String> = (7000..=7005)
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    })
}

pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The case `a_connection_the_server_closed_is_replaced` of a SQL store
/// whose pool holds one connection: `kill` has the server close that
/// connection (once it is back in the pool, idle). After `ping_after_idle`
/// the pool checks it, finds it dead and opens another, so the caller never
/// sees it; sooner it is handed out unchecked (no round trip per
/// statement), its statement may fail with `Error::Backend`, it is not
/// pooled again, and the next operation succeeds.
pub async fn a_closed_connection_is_replaced<K, F>(
    store: &dyn server_session::SessionInterface,
    ping_after_idle: std::time::Duration,
    mut kill: K,
) where
    K: FnMut() -> F,
    F: std::future::Future<Output = ()>,
{
    use std::time::Duration;
    let s = server_session::Session::new(
        server_session::SessionToken::generate().id(),
        Duration::from_secs(600),
    );
    store.create(&s).await.unwrap();
    for waited in [ping_after_idle + Duration::from_millis(200), Duration::ZERO] {
        kill().await;
        tokio::time::sleep(waited).await;
        let first = store.get(&s.id()).await;
        if waited > Duration::ZERO {
            let found = first.expect("the dead connection was checked and replaced");
            assert_eq!(found.map(|found| found.id()), Some(s.id()));
        } else if let Err(e) = first {
            assert!(matches!(e, server_session::Error::Backend { .. }), "{e:?}");
        }
        let next = store.get(&s.id()).await.expect("a new connection");
        assert_eq!(next.map(|found| found.id()), Some(s.id()));
    }
}

/// The `host:port` a server `url` names (`localhost` as 127.0.0.1, the
/// scheme's `default_port` when it names none): where a test proxy forwards.
pub fn upstream(url: &str, default_port: u16) -> std::net::SocketAddr {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let hostport = rest
        .split(['/', '?'])
        .next()
        .unwrap_or("")
        .rsplit('@')
        .next()
        .unwrap_or("");
    let mut parts = hostport.split(':');
    let host = parts.next().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let port = parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(default_port);
    format!("{host}:{port}")
        .parse()
        .expect("a loopback address")
}

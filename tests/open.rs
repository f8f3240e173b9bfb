//! `server_session::open(url)`: every compiled-in scheme against the real
//! servers (`REDIS_URL`, `DATABASE_URL`, `MYSQL_URL`), each case in its own
//! table, prefix or directory; the errors for unknown or missing schemes,
//! unknown parameters and credentials.

mod common;

use std::sync::Arc;

use server_session::open::{compiled_schemes, redact_url};
use server_session::{open, Error, SessionInterface};

/// Creates, reads, updates (compare-and-set) and re-reads one session,
/// leaving it stored at version 2; returns its id.
#[cfg(any(
    feature = "memory",
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "fs"
))]
async fn round_trip(store: &Arc<dyn SessionInterface>) -> server_session::SessionId {
    use server_session::{Session, SessionToken, UpdateOutcome};
    let mut session = Session::new(
        SessionToken::generate().id(),
        std::time::Duration::from_secs(60),
    );
    session.insert("quote", "first").unwrap();
    store.create(&session).await.expect("create");
    let mut loaded = store
        .get(&session.id())
        .await
        .expect("get")
        .expect("the created session");
    assert_eq!(
        loaded.get::<String>("quote").unwrap().as_deref(),
        Some("first")
    );
    loaded.insert("quote", "second").unwrap();
    let outcome = store
        .update(&loaded, loaded.version())
        .await
        .expect("update");
    assert_eq!(outcome, UpdateOutcome::Updated { version: 2 });
    let again = store
        .get(&session.id())
        .await
        .expect("get")
        .expect("the updated session");
    assert_eq!(
        again.get::<String>("quote").unwrap().as_deref(),
        Some("second")
    );
    assert_eq!(again.version(), 2);
    assert_eq!(
        store.update(&loaded, 1).await.expect("stale update"),
        UpdateOutcome::Conflict,
        "a compare-and-set on the old version must conflict"
    );
    session.id()
}

/// `base` with `params` appended as query parameters.
fn with_params(base: &str, params: &str) -> String {
    let joint = if base.contains('?') { '&' } else { '?' };
    format!("{base}{joint}{params}")
}

/// Opens `url`, or reports the server unreachable (a failure under CI) and
/// gives `None`.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
async fn open_or_skip(
    backend: &str,
    url: &str,
    options: &server_session::OpenOptions,
) -> Option<Arc<dyn SessionInterface>> {
    match server_session::open_with(url, options).await {
        Ok(store) => Some(store),
        Err(e) if e.is_transient() => {
            common::unreachable(backend, &redact_url(url), e);
            None
        }
        Err(e) => panic!("opening {}: {e}", redact_url(url)),
    }
}

fn config_message(result: server_session::Result<Arc<dyn SessionInterface>>) -> String {
    match result {
        Err(Error::Config(message)) => message,
        Err(other) => panic!("expected Error::Config, got {other}"),
        Ok(_) => panic!("expected Error::Config, the store opened"),
    }
}

#[tokio::test]
async fn an_unknown_scheme_is_a_config_error_naming_it_and_the_compiled_in_schemes() {
    for url in ["ftp://example.com/x", "FTP://example.com/x", "ftp:"] {
        let message = config_message(open(url).await);
        assert!(message.contains("\"ftp\""), "{message}");
        for scheme in compiled_schemes() {
            assert!(message.contains(scheme), "{scheme} missing from: {message}");
        }
    }
    let schemes = compiled_schemes();
    assert_eq!(
        schemes.contains(&"memory"),
        cfg!(feature = "memory"),
        "{schemes:?}"
    );
    assert_eq!(
        schemes.contains(&"postgresql"),
        cfg!(feature = "postgres"),
        "{schemes:?}"
    );
}

#[tokio::test]
async fn malformed_urls_are_config_errors() {
    for url in [
        "",
        "   ",
        "sessions.db",
        "://host",
        "1x://host",
        "a b://host",
    ] {
        let message = config_message(open(url).await);
        assert!(message.contains("scheme"), "{url:?}: {message}");
    }
    #[cfg(feature = "memory")]
    for url in ["memory://somewhere", "memory:/path"] {
        config_message(open(url).await);
    }
    #[cfg(feature = "sqlite")]
    for url in ["sqlite:", "sqlite://"] {
        config_message(open(url).await);
    }
    #[cfg(feature = "fs")]
    for url in [
        "fs:",
        "fs://",
        "fs:relative",
        "fs:///tmp/x%zz",
        "fs:///tmp/x?sync=maybe",
    ] {
        config_message(open(url).await);
    }
}

/// Only a build that lacks a backend can show this error.
#[cfg(not(all(
    feature = "memory",
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "fs"
)))]
#[tokio::test]
async fn a_scheme_not_compiled_in_names_its_feature_and_the_compiled_in_schemes() {
    let all = [
        (cfg!(feature = "memory"), "memory", "memory://"),
        (cfg!(feature = "sqlite"), "sqlite", "sqlite::memory:"),
        (
            cfg!(feature = "postgres"),
            "postgres",
            "postgresql://u:hunter2@h/db",
        ),
        (cfg!(feature = "mysql"), "mysql", "mariadb://u:hunter2@h/db"),
        (cfg!(feature = "redis"), "redis", "redis://:hunter2@h"),
        (cfg!(feature = "fs"), "fs", "fs:///tmp/x"),
    ];
    let mut checked = 0;
    for (_, feature, url) in all.into_iter().filter(|(compiled, _, _)| !compiled) {
        let message = config_message(open(url).await);
        let scheme = url.split(':').next().unwrap();
        assert!(message.contains(&format!("\"{scheme}\"")), "{message}");
        assert!(
            message.contains(&format!("`{feature}` feature")),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "password shown: {message}");
        for compiled in compiled_schemes() {
            assert!(message.contains(compiled), "{compiled} missing: {message}");
        }
        checked += 1;
    }
    assert!(checked > 0);
}

#[tokio::test]
async fn credentials_never_appear_in_errors() {
    // No scheme known: the user info must not come back.
    for url in [
        "ftp://user:hunter2@example.com/",
        "user:hunter2@example.com",
        "hunter2",
    ] {
        let message = open(url).await.expect_err("not a store").to_string();
        assert!(!message.contains("hunter2"), "{url}: {message}");
    }
    // Unknown parameters after a password, in the user info or the query.
    for url in [
        "postgres://u:hunter2@127.0.0.1:1/db?tabel=x",
        "postgres://u@127.0.0.1:1/db?password=hunter2&tabel=x",
        "mysql://u:hunter2@127.0.0.1:1/db?tabel=x",
        "redis://:hunter2@127.0.0.1:1?prefx=x",
        // A '?' inside the password makes its tail look like a parameter.
        "postgres://u:hun?ter2@127.0.0.1:1/db",
    ] {
        let message = open(url).await.expect_err("not a store").to_string();
        assert!(!message.contains("hunter2"), "{url}: {message}");
        assert!(!message.contains("ter2"), "{url}: {message}");
    }
    assert_eq!(
        redact_url("postgres://u:hunter2@h/db?sslmode=disable&password=hunter3"),
        "postgres://u@h/db?sslmode=disable&password=<redacted>"
    );
}

/// The stores' own errors (an unreachable server) carry the address, with
/// the password out, whether in the user info or a `password=` parameter.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
#[tokio::test]
async fn an_unreachable_server_is_a_transient_error_without_the_password() {
    let mut urls = Vec::new();
    if cfg!(feature = "postgres") {
        urls.push("postgres://u:hunter2@127.0.0.1:1/db");
        urls.push("postgresql://u@127.0.0.1:1/db?password=hunter2");
    }
    if cfg!(feature = "mysql") {
        urls.push("mysql://u:hunter2@127.0.0.1:1/db");
    }
    if cfg!(feature = "redis") {
        urls.push("redis://:hunter2@127.0.0.1:1");
    }
    // At once: each waits out its store's connect timeout.
    let opening: Vec<_> = urls
        .into_iter()
        .map(|url| (url, tokio::spawn(open(url))))
        .collect();
    for (url, opened) in opening {
        let error = opened
            .await
            .expect("open panicked")
            .expect_err("nothing listens on port 1");
        assert!(error.is_transient(), "{url}: {error}");
        let message = format!("{error} / {error:?}");
        assert!(!message.contains("hunter2"), "{url}: {message}");
        assert!(message.contains("127.0.0.1:1"), "{url}: {message}");
    }
}

#[tokio::test]
async fn an_unknown_or_repeated_query_parameter_is_a_config_error_naming_it() {
    let mut cases: Vec<(String, &str)> = Vec::new();
    if cfg!(feature = "memory") {
        cases.push(("memory://?table=x".into(), "`table`"));
    }
    if cfg!(feature = "sqlite") {
        cases.push(("sqlite::memory:?tabel=x".into(), "`tabel`"));
        cases.push(("sqlite::memory:?table=a&table=b".into(), "`table`"));
        cases.push(("sqlite::memory:?table=".into(), "`table`"));
        cases.push(("sqlite::memory:?prefix=x".into(), "`prefix`"));
    }
    if cfg!(feature = "postgres") {
        cases.push((with_params(&common::database_url(), "tabel=x"), "`tabel`"));
        cases.push((
            with_params(&common::database_url(), "schema=a&schema=b"),
            "`schema`",
        ));
    }
    if cfg!(feature = "mysql") {
        cases.push((with_params(&common::mysql_url(), "schema=x"), "`schema`"));
    }
    if cfg!(feature = "redis") {
        cases.push((with_params(&common::redis_url(), "prefx=x"), "`prefx`"));
        cases.push((
            with_params(&common::redis_url(), "protocol=resp3"),
            "`protocol`",
        ));
    }
    if cfg!(feature = "fs") {
        cases.push(("fs:///tmp/never-made?bogus=1".into(), "`bogus`"));
    }
    for (url, named) in cases {
        let message = config_message(open(&url).await);
        assert!(message.contains(named), "{url}: {message}");
    }
}

#[cfg(feature = "memory")]
#[tokio::test]
async fn memory_opens_by_each_spelling() {
    for url in ["memory", "memory:", "memory://", "MEMORY://", " memory:// "] {
        let store = open(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        round_trip(&store).await;
        assert_eq!(
            store.len().await.unwrap(),
            1,
            "{url}: a fresh store each time"
        );
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use server_session::sqlite::sqlx;
    use server_session::{open_with, OpenOptions, SessionToken};
    use server_session::{SqliteConfig, SqliteStore};

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(common::unique("session-open-sqlite-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[tokio::test]
    async fn a_file_opens_migrated_in_the_table_the_url_names() {
        let dir = temp_dir();
        let path = dir.join("sessions.db");
        let url = format!("sqlite://{}?table=from_url&mode=rwc", path.display());
        let store = open_with(&url, &OpenOptions::new().default_table("not_this"))
            .await
            .unwrap();
        let id = round_trip(&store).await;
        drop(store);
        let plain = format!("sqlite://{}", path.display());
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'session_store$%'",
        )
        .fetch_all(&sqlx::SqlitePool::connect(&plain).await.unwrap())
        .await
        .unwrap();
        assert_eq!(tables, ["from_url"]);
        let direct = SqliteStore::connect_with(SqliteConfig {
            table: "from_url".into(),
            ..SqliteConfig::new(plain)
        })
        .await
        .unwrap();
        assert!(direct.get(&id).await.unwrap().is_some());
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn in_memory_and_the_default_table_option() {
        let store = open("sqlite::memory:").await.unwrap();
        round_trip(&store).await;
        let store = open_with(
            "SQLITE::memory:",
            &OpenOptions::new().default_table("app_sessions"),
        )
        .await
        .unwrap();
        round_trip(&store).await;
        // A table name that is not an identifier is refused by the store.
        let message = config_message(open("sqlite::memory:?table=a%3Bdrop").await);
        assert!(message.contains("a;drop"), "{message}");
    }

    #[tokio::test]
    async fn without_migrate_the_table_is_left_to_the_app() {
        let store = open_with("sqlite::memory:", &OpenOptions::new().migrate(false))
            .await
            .unwrap();
        let error = store
            .get(&SessionToken::generate().id())
            .await
            .expect_err("no table yet");
        assert!(
            matches!(error, Error::Backend { .. }),
            "expected a backend error, got {error}"
        );
    }

    #[tokio::test]
    async fn two_opens_of_one_file_at_once_are_safe() {
        let dir = temp_dir();
        let url = format!("sqlite://{}", dir.join("twice.db").display());
        let (a, b) = tokio::join!(open(&url), open(&url));
        let (a, b) = (a.unwrap(), b.unwrap());
        let id = round_trip(&a).await;
        assert_eq!(b.get(&id).await.unwrap().map(|s| s.version()), Some(2));
        let migrated: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM \"{}\" WHERE table_name = 'sessions'",
            server_session::sqlite::MIGRATIONS_TABLE
        ))
        .fetch_one(&sqlx::SqlitePool::connect(&url).await.unwrap())
        .await
        .unwrap();
        // One row per step (the table, then the user index), each once.
        assert_eq!(migrated, 2, "a migration step ran twice or not at all");
        drop((a, b));
        std::fs::remove_dir_all(dir).ok();
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use server_session::postgres::sqlx;
    use server_session::{open_with, OpenOptions};
    use server_session::{PostgresConfig, PostgresStore};

    async fn drop_table(schema: Option<&str>, table: &str) {
        let config = PostgresConfig {
            schema: schema.map(str::to_owned),
            table: table.to_owned(),
            ..PostgresConfig::new(common::database_url())
        };
        if let Ok(store) = PostgresStore::connect_with(config).await {
            if let Err(e) = store.drop_table().await {
                eprintln!("could not drop {table}: {e}");
            }
            if let Some(schema) = schema {
                let drop = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
                if let Err(e) = sqlx::query(&drop).execute(store.pool()).await {
                    eprintln!("could not drop schema {schema}: {e}");
                }
            }
        }
    }

    #[tokio::test]
    async fn postgres_and_postgresql_open_migrated_in_the_named_table_and_schema() {
        let base = common::database_url();
        let schema = common::unique("s_");
        let table = common::unique("t_");
        let url = with_params(&base, &format!("table={table}&schema={schema}"));
        let Some(store) = open_or_skip("postgres", &url, &OpenOptions::new()).await else {
            return;
        };
        let id = round_trip(&store).await;
        let direct = PostgresStore::connect_with(PostgresConfig {
            schema: Some(schema.clone()),
            table: table.clone(),
            ..PostgresConfig::new(base.clone())
        })
        .await
        .unwrap();
        assert!(
            direct.get(&id).await.unwrap().is_some(),
            "not in {schema}.{table}"
        );
        drop_table(Some(&schema), &table).await;

        let table = common::unique("t_");
        let url = base.replacen("postgres://", "postgresql://", 1);
        assert!(url.starts_with("postgresql://"), "{url}");
        let store = open_with(&url, &OpenOptions::new().default_table(table.clone()))
            .await
            .unwrap();
        let id = round_trip(&store).await;
        let direct = PostgresStore::connect_with(PostgresConfig {
            table: table.clone(),
            ..PostgresConfig::new(base)
        })
        .await
        .unwrap();
        assert!(direct.get(&id).await.unwrap().is_some(), "not in {table}");
        drop_table(None, &table).await;
    }

    #[tokio::test]
    async fn driver_parameters_pass_through() {
        let table = common::unique("t_");
        let url = with_params(
            &common::database_url(),
            &format!("application_name=open_test&sslmode=disable&table={table}"),
        );
        let Some(store) = open_or_skip("postgres", &url, &OpenOptions::new()).await else {
            return;
        };
        round_trip(&store).await;
        drop_table(None, &table).await;
    }

    #[tokio::test]
    async fn two_opens_of_one_url_at_once_are_safe() {
        let table = common::unique("t_");
        let url = with_params(&common::database_url(), &format!("table={table}"));
        let options = OpenOptions::new();
        let (a, b) = tokio::join!(
            open_or_skip("postgres", &url, &options),
            open_or_skip("postgres", &url, &options)
        );
        let (Some(a), Some(b)) = (a, b) else {
            return;
        };
        let id = round_trip(&a).await;
        assert_eq!(b.get(&id).await.unwrap().map(|s| s.version()), Some(2));
        drop_table(None, &table).await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use server_session::OpenOptions;
    use server_session::{MysqlConfig, MysqlStore};

    async fn drop_table(table: &str) {
        let config = MysqlConfig {
            table: table.to_owned(),
            ..MysqlConfig::new(common::mysql_url())
        };
        if let Ok(store) = MysqlStore::connect_with(config).await {
            if let Err(e) = store.drop_table().await {
                eprintln!("could not drop {table}: {e}");
            }
        }
    }

    #[tokio::test]
    async fn mysql_and_mariadb_open_migrated_in_the_named_table() {
        let base = common::mysql_url();
        for scheme in ["mysql://", "mariadb://"] {
            let table = common::unique("t_");
            let url = with_params(
                &base.replacen("mysql://", scheme, 1),
                &format!("table={table}&charset=utf8mb4"),
            );
            assert!(url.starts_with(scheme), "{url}");
            let Some(store) = open_or_skip("mysql", &url, &OpenOptions::new()).await else {
                return;
            };
            let id = round_trip(&store).await;
            let direct = MysqlStore::connect_with(MysqlConfig {
                table: table.clone(),
                ..MysqlConfig::new(base.clone())
            })
            .await
            .unwrap();
            assert!(direct.get(&id).await.unwrap().is_some(), "not in {table}");
            drop_table(&table).await;
        }
    }

    #[tokio::test]
    async fn two_opens_of_one_url_at_once_are_safe() {
        let table = common::unique("t_");
        let url = with_params(&common::mysql_url(), &format!("table={table}"));
        let options = OpenOptions::new();
        let (a, b) = tokio::join!(
            open_or_skip("mysql", &url, &options),
            open_or_skip("mysql", &url, &options)
        );
        let (Some(a), Some(b)) = (a, b) else {
            return;
        };
        let id = round_trip(&a).await;
        assert_eq!(b.get(&id).await.unwrap().map(|s| s.version()), Some(2));
        drop_table(&table).await;
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use server_session::{OpenOptions, SessionId};
    use server_session::{RedisConfig, RedisStore};

    async fn found_under(prefix: &str, id: &SessionId) -> bool {
        let store = RedisStore::connect_with(RedisConfig {
            prefix: prefix.to_owned(),
            ..RedisConfig::new(common::redis_url())
        })
        .await
        .unwrap();
        store.get(id).await.unwrap().is_some()
    }

    #[tokio::test]
    async fn the_url_prefix_wins_over_the_default_prefix() {
        let prefix = format!("{}:", common::unique("open:"));
        let url = with_params(
            &common::redis_url(),
            // Percent-encoded ':' decodes to the same prefix.
            &format!("prefix={}", prefix.replace(':', "%3A")),
        );
        let options = OpenOptions::new().default_prefix("open:not-this:");
        let Some(store) = open_or_skip("redis", &url, &options).await else {
            return;
        };
        let id = round_trip(&store).await;
        assert!(found_under(&prefix, &id).await, "not under {prefix}");
        assert!(!found_under("open:not-this:", &id).await);
        store.clear().await.unwrap();
    }

    #[tokio::test]
    async fn the_default_prefix_applies_when_the_url_has_none() {
        let prefix = format!("{}:", common::unique("open:"));
        let options = OpenOptions::new().default_prefix(prefix.clone());
        let Some(store) = open_or_skip("redis", &common::redis_url(), &options).await else {
            return;
        };
        let id = round_trip(&store).await;
        assert!(found_under(&prefix, &id).await, "not under {prefix}");
        store.clear().await.unwrap();
    }
}

#[cfg(feature = "fs")]
mod fs {
    use super::*;
    use server_session::FsStore;

    #[tokio::test]
    async fn an_absolute_directory_percent_decoded() {
        let parent = std::env::temp_dir().join(common::unique("session-open-fs-"));
        let root = parent.join("with space");
        let url = format!("fs://{}/with%20space?sync=false", parent.display());
        assert!(url.starts_with("fs:///"), "{url}");
        let store = open(&url).await.unwrap();
        let id = round_trip(&store).await;
        let path = FsStore::open(&root).await.unwrap().path_of(&id);
        assert!(path.is_file(), "{} missing", path.display());
        std::fs::remove_dir_all(parent).ok();
    }

    #[tokio::test]
    async fn a_relative_directory_is_under_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        let tmp = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let base = tmp
            .strip_prefix(&cwd)
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let relative = base.join(common::unique("session-open-fs-"));
        let url = format!("fs://{}", relative.display());
        assert!(!url.starts_with("fs:///"), "{url}");
        let store = open(&url).await.unwrap();
        let id = round_trip(&store).await;
        let root = cwd.join(&relative);
        let path = FsStore::open(&root).await.unwrap().path_of(&id);
        assert!(path.is_file(), "{} missing", path.display());
        std::fs::remove_dir_all(root).ok();
    }
}

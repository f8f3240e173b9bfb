//! Review of the SQL stores' user index (issue 13) on SQLite (a file),
//! PostgreSQL and MySQL/MariaDB: hostile user keys (SQL wildcards, quotes,
//! case, trailing spaces, Unicode) never leak across users, rebinding
//! through set/update moves the listing, revoke and `except`, expiry, and
//! racing writers leave an index that agrees with the records. Each run
//! uses its own table, dropped at the end. A server that cannot be reached
//! fails the test when CI is set, else prints a SKIPPED line.
#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod common;

use std::sync::Arc;

use server_session::SessionInterface;

// ---- battery shared (copied) by the review_index tests of every store ----
// The battery every store's review_index test runs.
use session_store::conformance::index_battery::*;

/// Runs every battery case on `store`.
async fn battery(store: Arc<dyn SessionInterface>) {
    keys_never_leak(&*store).await;
    rebinding_moves_the_listing(&*store).await;
    store.clear().await.expect("clear");
    revoke_and_except(&*store).await;
    store.clear().await.expect("clear");
    expired_are_not_listed(&*store).await;
    store.clear().await.expect("clear");
    racing_writers_leave_an_exact_index(store.clone(), 40).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_user_index() {
    use server_session::SqliteStore;
    let path = std::env::temp_dir().join(format!("{}.db", common::unique("review-index-")));
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("sqlite");
    store.migrate().await.expect("migrate");
    battery(Arc::new(store)).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_user_index() {
    use server_session::{PostgresConfig, PostgresStore};
    let url = common::database_url();
    let store = match PostgresStore::connect_with(PostgresConfig {
        schema: Some("session_tests".into()),
        table: common::unique("t_"),
        pool_size: 8,
        ..PostgresConfig::new(url.clone())
    })
    .await
    {
        Ok(store) => Arc::new(store),
        Err(e) => return common::unreachable("postgres", &url, e),
    };
    store.migrate().await.expect("migrate");
    battery(store.clone()).await;
    store.drop_table().await.expect("drop table");
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_user_index() {
    use server_session::{MysqlConfig, MysqlStore};
    let url =
        std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let store = match MysqlStore::connect_with(MysqlConfig {
        table: common::unique("t_"),
        pool_size: 8,
        ..MysqlConfig::new(url.clone())
    })
    .await
    {
        Ok(store) => Arc::new(store),
        Err(e) => return common::unreachable("mysql", &url, e),
    };
    store.migrate().await.expect("migrate");
    battery(store.clone()).await;
    store.drop_table().await.expect("drop table");
}

//! The SQLite store: the conformance suite on private in-memory databases,
//! and the file-backed behaviour (WAL, migrations, corrupt rows).
#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use server_session::conformance::factory;
use server_session::sqlite::sqlx;
use server_session::{
    conformance_tests, Error, Session, SessionInterface, SessionToken, SqliteConfig, SqliteStore,
};

async fn memory_store() -> SqliteStore {
    let store = SqliteStore::connect("sqlite::memory:")
        .await
        .expect("in-memory sqlite");
    store.migrate().await.expect("migrate");
    store
}

conformance_tests!(factory(|| async {
    Some(Arc::new(memory_store().await) as Arc<dyn SessionInterface>)
}));

fn temp_db(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(common::unique("session-sqlite-"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join(name).display());
    (dir, url)
}

#[tokio::test]
async fn a_file_database_uses_wal_and_survives_reopening() {
    let (dir, url) = temp_db("sessions.db");
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&sqlx::SqlitePool::connect(&url).await.unwrap())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    s.insert("k", "v").unwrap();
    store.create(&s).await.unwrap();
    drop(store);
    let reopened = SqliteStore::connect(&url).await.unwrap();
    reopened.migrate().await.unwrap();
    let back = reopened
        .get(&s.id())
        .await
        .unwrap()
        .expect("kept across reopen");
    assert_eq!(back.get::<String>("k").unwrap().as_deref(), Some("v"));
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_in_parallel() {
    let (dir, url) = temp_db("m.db");
    let a = SqliteStore::connect(&url).await.unwrap();
    let b = SqliteStore::connect(&url).await.unwrap();
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    a.migrate().await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions_migrations")
        .fetch_one(&sqlx::SqlitePool::connect(&url).await.unwrap())
        .await
        .unwrap();
    assert_eq!(applied, 1, "a migration step ran twice");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_table_name_that_is_not_an_identifier_is_a_config_error() {
    for table in ["sessions; DROP TABLE x", "1abc", "a-b", ""] {
        let result = SqliteStore::connect_with(SqliteConfig {
            table: table.into(),
            ..SqliteConfig::new("sqlite::memory:")
        })
        .await;
        assert!(
            matches!(result, Err(Error::Config(_))),
            "{table:?} was accepted"
        );
    }
}

#[tokio::test]
async fn using_the_table_before_migrate_is_a_backend_error_naming_it() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    match store.get(&SessionToken::generate().id()).await {
        Err(Error::Backend { store, context, .. }) => {
            assert_eq!(store, "sqlite");
            assert!(context.contains("sessions"), "{context}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_corrupt_row_is_a_decode_error_not_a_panic() {
    let (dir, url) = temp_db("c.db");
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    let id = SessionToken::generate().id();
    for garbage in [&b"garbage"[..], &[][..], &[1u8; 30][..]] {
        sqlx::query("INSERT OR REPLACE INTO sessions (id, record, expires_at, version) VALUES (?1, ?2, ?3, 1)")
            .bind(&id.as_bytes()[..])
            .bind(garbage)
            .bind(server_session::now_millis() + 60_000)
            .execute(&raw)
            .await
            .unwrap();
        assert!(
            matches!(store.get(&id).await, Err(Error::Decode { .. })),
            "{garbage:?} did not give a decode error"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn an_unopenable_path_is_a_backend_error_naming_it() {
    let result = SqliteStore::connect("sqlite:///nonexistent-dir/for/sure/s.db").await;
    match result {
        Err(Error::Backend { context, .. }) => {
            assert!(context.contains("nonexistent-dir"), "{context}")
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

//! The SQLite store: the conformance suite on private in-memory databases,
//! and the file-backed behaviour (WAL, migrations, corrupt rows).
#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use server_session::conformance::factory;
use server_session::sqlite::sqlx;
use server_session::{
    codec, conformance_tests, Error, Session, SessionInterface, SessionToken, SqliteConfig,
    SqliteStore, UpdateOutcome,
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
    let applied: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM \"{}\" WHERE table_name = 'sessions'",
        server_session::sqlite::MIGRATIONS_TABLE
    ))
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
    let valid = codec::encode(&Session::new(id, Duration::from_secs(60)), 1).unwrap();
    let rows = [
        (&b"garbage"[..], 1),
        (&[][..], 1),
        (&[1u8; 30][..], 1),
        (&valid[..], -5),
    ];
    for (garbage, version) in rows {
        sqlx::query("INSERT OR REPLACE INTO sessions (id, record, expires_at, version) VALUES (?1, ?2, ?3, ?4)")
            .bind(&id.as_bytes()[..])
            .bind(garbage)
            .bind(server_session::now_millis() + 60_000)
            .bind(version)
            .execute(&raw)
            .await
            .unwrap();
        assert!(
            matches!(store.get(&id).await, Err(Error::Decode { .. })),
            "{garbage:?} at version {version} did not give a decode error"
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

/// A reader holding an old snapshot must not stall writers: the background
/// checkpoint is passive, so it copies what it can and never waits for
/// readers while holding writers off.
#[tokio::test]
async fn a_long_reader_never_stalls_writers() {
    use sqlx::Connection as _;
    let (dir, url) = temp_db("reader.db");
    let store = SqliteStore::connect_with(SqliteConfig {
        checkpoint_every: Duration::from_millis(20),
        ..SqliteConfig::new(url.clone())
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    store.create(&s).await.unwrap();

    let mut reader = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
        .fetch_one(&mut reader)
        .await
        .unwrap();
    assert_eq!(seen, 1);

    let hold = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    let mut writes = 0;
    while started.elapsed() < hold {
        let began = std::time::Instant::now();
        s.insert("n", &writes).unwrap();
        let outcome = store.update(&s, s.version()).await;
        slowest = slowest.max(began.elapsed());
        match outcome {
            Ok(UpdateOutcome::Updated { version }) => s.set_version(version),
            other => panic!("write {writes} failed beside a long reader: {other:?}"),
        }
        writes += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    assert!(
        slowest < Duration::from_millis(500),
        "a write waited {slowest:?} for the reader ({writes} writes)"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Fills `sessions` with rows 1..=n expiring at `expires_at`.
async fn fill(url: &str, n: i64, expires_at: i64) {
    sqlx::query(
        "WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < ?1)
         INSERT OR REPLACE INTO sessions (id, record, expires_at, version)
         SELECT CAST(printf('%032d', n) AS BLOB), x'00', ?2, 1 FROM i",
    )
    .bind(n)
    .bind(expires_at)
    .execute(&sqlx::SqlitePool::connect(url).await.unwrap())
    .await
    .unwrap();
}

/// In SQLite a batch cannot lose rows to another writer between finding and
/// deleting them (one statement holds the write lock throughout); what can
/// happen is other connections deleting and extending rows between
/// batches. Neither may make `clear` or `flush` stop early, and `flush`
/// must keep every row extended before it reached it.
#[tokio::test]
async fn clear_and_flush_finish_beside_other_writers() {
    let (dir, url) = temp_db("busy.db");
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let other = sqlx::SqlitePool::connect(&url).await.unwrap();

    let cutoff = server_session::now_millis() - 1;
    fill(&url, 5000, cutoff - 60_000).await;
    let meddler = tokio::spawn({
        let other = other.clone();
        async move {
            let mut extended = Vec::new();
            for n in (1..=5000i64).rev().step_by(7) {
                let id = format!("{n:032}");
                let sql = if n % 2 == 0 {
                    "UPDATE sessions SET expires_at = expires_at + 7200000 WHERE id = CAST(?1 AS BLOB)"
                } else {
                    "DELETE FROM sessions WHERE id = CAST(?1 AS BLOB)"
                };
                let done = sqlx::query(sql).bind(&id).execute(&other).await.unwrap();
                if n % 2 == 0 && done.rows_affected() == 1 {
                    extended.push(id);
                }
                tokio::task::yield_now().await;
            }
            extended
        }
    });
    store.flush().await.unwrap();
    let extended = meddler.await.unwrap();
    let expired: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE expires_at <= ?1")
        .bind(cutoff)
        .fetch_one(&other)
        .await
        .unwrap();
    assert_eq!(expired, 0, "flush returned with expired rows left");
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
        .fetch_one(&other)
        .await
        .unwrap();
    assert_eq!(kept as usize, extended.len(), "an extended row was flushed");

    fill(&url, 5000, cutoff + 3_600_000).await;
    let meddler = tokio::spawn({
        let other = other.clone();
        async move {
            for n in (1..=5000i64).rev().step_by(3) {
                sqlx::query("DELETE FROM sessions WHERE id = CAST(?1 AS BLOB)")
                    .bind(format!("{n:032}"))
                    .execute(&other)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        }
    });
    store.clear().await.unwrap();
    meddler.await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
        .fetch_one(&other)
        .await
        .unwrap();
    assert_eq!(left, 0, "clear returned with rows left");
    std::fs::remove_dir_all(dir).ok();
}

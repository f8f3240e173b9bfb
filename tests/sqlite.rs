//! The SQLite store: the conformance suite on database files (so that a
//! store can nest in another's file: a private in-memory database has one
//! store), `sqlite::memory:`, and the file-backed behaviour (WAL,
//! migrations, corrupt rows, the user index).
#![cfg(feature = "sqlite")]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use server_session::conformance::{factory, StoreFactory};
use server_session::sqlite::sqlx;
use server_session::{
    async_trait, codec, conformance_tests, Error, Session, SessionInterface, SessionToken,
    SqliteConfig, SqliteStore, UpdateOutcome, UserBinding,
};

async fn memory_store() -> SqliteStore {
    let store = SqliteStore::connect("sqlite::memory:")
        .await
        .expect("in-memory sqlite");
    store.migrate().await.expect("migrate");
    store
}

/// A database file per store, in a directory removed after the case; each
/// store's file and table are remembered by the address of its `Arc`, so
/// that `make_nested` can open another table in the same file.
#[derive(Default)]
struct Files {
    dirs: common::Made<PathBuf>,
    tables: Mutex<Vec<(usize, String, String)>>,
}

fn address(store: &Arc<dyn SessionInterface>) -> usize {
    Arc::as_ptr(store) as *const () as usize
}

impl Files {
    async fn open(&self, url: String, table: String) -> Option<Arc<dyn SessionInterface>> {
        let store = SqliteStore::connect_with(SqliteConfig {
            table: table.clone(),
            ..SqliteConfig::new(url.clone())
        })
        .await
        .expect("sqlite file");
        store.migrate().await.expect("migrate");
        let store: Arc<dyn SessionInterface> = Arc::new(store);
        if let Ok(mut tables) = self.tables.lock() {
            tables.push((address(&store), url, table));
        }
        Some(store)
    }
}

#[async_trait]
impl StoreFactory for Files {
    async fn make(&self) -> Option<Arc<dyn SessionInterface>> {
        let (dir, url) = temp_db("sessions.db");
        self.dirs.keep(dir);
        self.open(url, "sessions".into()).await
    }

    /// A table in the outer store's file whose name starts with the outer
    /// table's and ends like its user index's name (`sessions$user_key`).
    async fn make_nested(
        &self,
        outer: &Arc<dyn SessionInterface>,
    ) -> Option<Arc<dyn SessionInterface>> {
        let (url, table) = self
            .tables
            .lock()
            .ok()?
            .iter()
            .find(|(at, ..)| *at == address(outer))
            .map(|(_, url, table)| (url.clone(), table.clone()))?;
        self.open(url, format!("{table}_user_key")).await
    }

    async fn cleanup(&self, _store: Arc<dyn SessionInterface>) {
        for dir in self.dirs.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

conformance_tests!(Files::default());

/// `sqlite::memory:`, where reads share the writer's one connection, passes
/// the conformance suite; only the cases that need a store nested in the
/// same database are skipped (a private in-memory database has one store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_database_passes_the_conformance_suite() {
    let report = server_session::conformance::run_all(Arc::new(factory(|| async {
        Some(Arc::new(memory_store().await) as Arc<dyn SessionInterface>)
    })))
    .await;
    assert!(report.failed.is_empty(), "{:#?}", report.failed);
    assert!(
        report.skipped.iter().all(|case| case.contains("nested")),
        "{:?}",
        report.skipped
    );
    assert!(report.passed.contains(&"user_index_revoke_racing_saves"));
}

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
    assert_eq!(
        recorded(&url, "sessions").await,
        [1, 2],
        "a migration step ran twice, or not at all"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// The versions recorded for `table`, in order, repeats included.
async fn recorded(url: &str, table: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT version FROM \"{}\" WHERE table_name = ?1 ORDER BY version",
        server_session::sqlite::MIGRATIONS_TABLE
    ))
    .bind(table)
    .fetch_all(&sqlx::SqlitePool::connect(url).await.unwrap())
    .await
    .unwrap()
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

/// A live session bound to `user`.
fn bound(user: &str) -> Session {
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    s.set_user(Some(UserBinding::new(user, BTreeMap::new()).unwrap()));
    s
}

async fn ids_of(
    store: &SqliteStore,
    user: &str,
) -> std::collections::BTreeSet<server_session::SessionId> {
    store
        .sessions_of(user)
        .await
        .unwrap()
        .iter()
        .map(Session::id)
        .collect()
}

/// A database the previous version left (migration 1 recorded, no
/// `user_key` column), with a session in it, opened by this version: two
/// stores migrating it at once add the user index once, the old session
/// still loads and saves, and sessions bound from now on are indexed.
#[tokio::test]
async fn a_table_of_the_previous_schema_gains_the_user_index_and_keeps_its_sessions() {
    let (dir, url) = temp_db("previous.db");
    // Opening creates the file; migrating comes later.
    let a = SqliteStore::connect(&url).await.unwrap();
    let b = SqliteStore::connect(&url).await.unwrap();
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE TABLE \"{m}\" (table_name TEXT NOT NULL, version INTEGER NOT NULL,
             applied_at INTEGER NOT NULL, PRIMARY KEY (table_name, version)) WITHOUT ROWID;
         INSERT INTO \"{m}\" VALUES ('sessions', 1, 0);
         CREATE TABLE sessions (id BLOB PRIMARY KEY NOT NULL, record BLOB NOT NULL,
             expires_at INTEGER NOT NULL, version INTEGER NOT NULL) WITHOUT ROWID;
         CREATE INDEX \"sessions$expires_at\" ON sessions (expires_at);",
        m = server_session::sqlite::MIGRATIONS_TABLE
    ))
    .execute(&raw)
    .await
    .unwrap();
    let mut old = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    old.insert("cart", &3u8).unwrap();
    sqlx::query("INSERT INTO sessions (id, record, expires_at, version) VALUES (?1, ?2, ?3, 1)")
        .bind(&old.id().as_bytes()[..])
        .bind(codec::encode(&old, 1).unwrap())
        .bind(old.expires_at_millis())
        .execute(&raw)
        .await
        .unwrap();

    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    a.migrate().await.unwrap();
    assert_eq!(recorded(&url, "sessions").await, [1, 2]);

    let back = a.get(&old.id()).await.unwrap().expect("the old session");
    assert_eq!(back.get::<u8>("cart").unwrap(), Some(3));
    assert_eq!(back.user_key(), None);
    // A login on the old session binds it; a new login is indexed too.
    let mut login = back.clone();
    login.set_user(Some(UserBinding::new("ada", BTreeMap::new()).unwrap()));
    assert_eq!(
        b.update(&login, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    );
    let fresh = bound("ada");
    b.create(&fresh).await.unwrap();
    assert_eq!(
        ids_of(&a, "ada").await,
        [old.id(), fresh.id()].into_iter().collect()
    );
    let column: Option<String> = sqlx::query_scalar("SELECT user_key FROM sessions WHERE id = ?1")
        .bind(&old.id().as_bytes()[..])
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(column.as_deref(), Some("ada"));
    // The lookup goes through the user index.
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT id, record, expires_at, version FROM sessions
         WHERE user_key = ?1 AND expires_at > ?2",
    )
    .bind("ada")
    .bind(0i64)
    .fetch_all(&raw)
    .await
    .unwrap();
    assert!(
        plan.iter()
            .any(|(.., detail)| detail.contains("sessions$user_key")),
        "{plan:?}"
    );
    assert_eq!(
        a.revoke_user("ada", Some(&fresh.id())).await.unwrap(),
        [old.id()]
    );
    assert!(a.get(&old.id()).await.unwrap().is_none());
    assert_eq!(ids_of(&b, "ada").await, [fresh.id()].into_iter().collect());
    std::fs::remove_dir_all(dir).ok();
}

/// Rows written behind the store's back under a user's key (a record that
/// does not decode, one bound to another user, an id of the wrong length)
/// are skipped by `sessions_of`, never an error or a panic: the user's
/// good sessions are still listed, and `revoke_user` still works.
#[tokio::test]
async fn sessions_of_skips_rows_it_cannot_trust() {
    let (dir, url) = temp_db("bad.db");
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let good = bound("ada");
    store.create(&good).await.unwrap();
    let bob = bound("bob");
    let rows: [(Vec<u8>, Vec<u8>); 4] = [
        (
            SessionToken::generate().id().as_bytes().to_vec(),
            b"garbage".to_vec(),
        ),
        (
            SessionToken::generate().id().as_bytes().to_vec(),
            Vec::new(),
        ),
        (
            SessionToken::generate().id().as_bytes().to_vec(),
            codec::encode(&bob, 1).unwrap(),
        ),
        (vec![7u8; 5], codec::encode(&good, 1).unwrap()),
    ];
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    for (id, record) in &rows {
        sqlx::query(
            "INSERT INTO sessions (id, record, expires_at, version, user_key)
             VALUES (?1, ?2, ?3, 1, 'ada')",
        )
        .bind(&id[..])
        .bind(&record[..])
        .bind(server_session::now_millis() + 60_000)
        .execute(&raw)
        .await
        .unwrap();
    }
    assert_eq!(
        ids_of(&store, "ada").await,
        [good.id()].into_iter().collect()
    );
    let revoked = store.revoke_user("ada", None).await.unwrap();
    assert!(revoked.contains(&good.id()), "{revoked:?}");
    assert!(store.sessions_of("ada").await.unwrap().is_empty());
    std::fs::remove_dir_all(dir).ok();
}

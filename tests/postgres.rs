//! The PostgreSQL store against the real server (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), each case in its own table.
#![cfg(feature = "postgres")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::postgres::until_blocked;
use server_session::conformance::StoreFactory;
use server_session::postgres::sqlx;
use server_session::{
    async_trait, codec, conformance_tests, DeleteOutcome, Error, PostgresConfig, PostgresStore,
    Session, SessionInterface, SessionToken, UpdateOutcome, UserBinding,
};

const SCHEMA: &str = "session_tests";

async fn fresh_store() -> Option<PostgresStore> {
    store_named(common::unique("t_")).await
}

/// A migrated store on `table` in [`SCHEMA`].
async fn store_named(table: String) -> Option<PostgresStore> {
    let url = common::database_url();
    let config = PostgresConfig {
        schema: Some(SCHEMA.into()),
        table,
        pool_size: 4,
        ..PostgresConfig::new(url.clone())
    };
    let store = match PostgresStore::connect_with(config).await {
        Ok(store) => store,
        Err(e) => {
            common::unreachable("postgres", &url, e);
            return None;
        }
    };
    store.migrate().await.expect("migrate");
    Some(store)
}

/// Makes a table per store and drops them all after the case; each
/// store's table is remembered by the address of its `Arc`, so that
/// `make_nested` can make a table named after one it made.
#[derive(Default)]
struct Postgres {
    made: common::Made<Arc<PostgresStore>>,
    tables: Mutex<Vec<(usize, String)>>,
}

fn address<T: ?Sized>(store: &Arc<T>) -> usize {
    Arc::as_ptr(store) as *const () as usize
}

impl Postgres {
    fn keep(&self, store: PostgresStore, table: String) -> Arc<dyn SessionInterface> {
        let store = Arc::new(store);
        self.made.keep(store.clone());
        if let Ok(mut tables) = self.tables.lock() {
            tables.push((address(&store), table));
        }
        store
    }
}

#[async_trait]
impl StoreFactory for Postgres {
    async fn make(&self) -> Option<Arc<dyn SessionInterface>> {
        let table = common::unique("t_");
        let store = store_named(table.clone()).await?;
        Some(self.keep(store, table))
    }

    /// A table in the same schema whose name starts with the outer table's
    /// and ends like its user index's name (`<table>$user_key`).
    async fn make_nested(
        &self,
        outer: &Arc<dyn SessionInterface>,
    ) -> Option<Arc<dyn SessionInterface>> {
        let outer = self
            .tables
            .lock()
            .ok()?
            .iter()
            .find(|(at, _)| *at == address(outer))
            .map(|(_, table)| table.clone())?;
        let table = format!("{outer}_user_key");
        let store = store_named(table.clone()).await?;
        Some(self.keep(store, table))
    }

    async fn cleanup(&self, _store: Arc<dyn SessionInterface>) {
        for store in self.made.take() {
            if let Err(e) = store.drop_table().await {
                eprintln!("could not drop {}: {e}", store.table());
            }
        }
    }
}

conformance_tests!(Postgres::default());

#[tokio::test]
async fn migrate_is_idempotent_and_safe_in_parallel() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let twin = PostgresStore::new(
        store.pool().clone(),
        Some(SCHEMA),
        store.table().split('.').nth(1).unwrap(),
    )
    .unwrap();
    let (a, b) = tokio::join!(store.migrate(), twin.migrate());
    a.unwrap();
    b.unwrap();
    assert_eq!(
        recorded(&store).await,
        [1, 2],
        "a migration step ran twice, or not at all"
    );
    store.drop_table().await.unwrap();
}

/// The versions recorded for the store's table, in order, repeats included.
async fn recorded(store: &PostgresStore) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT version FROM {SCHEMA}.\"{}\" WHERE table_name = $1 ORDER BY version",
        server_session::postgres::MIGRATIONS_TABLE
    ))
    .bind(store.table().split('.').nth(1).unwrap())
    .fetch_all(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn names_that_are_not_identifiers_are_config_errors() {
    let url = common::database_url();
    for (schema, table) in [
        (None, "x; DROP TABLE y"),
        (Some("a b"), "sessions"),
        (None, "9t"),
    ] {
        let result = PostgresStore::connect_with(PostgresConfig {
            schema: schema.map(Into::into),
            table: table.into(),
            ..PostgresConfig::new(url.clone())
        })
        .await;
        assert!(
            matches!(result, Err(Error::Config(_))),
            "{schema:?}.{table} was accepted"
        );
    }
}

#[tokio::test]
async fn a_missing_table_is_a_backend_error_naming_it() {
    let Some(store) = fresh_store().await else {
        return;
    };
    store.drop_table().await.unwrap();
    match store.get(&SessionToken::generate().id()).await {
        Err(Error::Backend {
            store: name,
            context,
            ..
        }) => {
            assert_eq!(name, "postgres");
            assert!(context.contains(store.table()), "{context}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_corrupt_row_is_a_decode_error_not_a_panic() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let id = SessionToken::generate().id();
    let valid = codec::encode(&Session::new(id, Duration::from_secs(60)), 1).unwrap();
    let rows = [
        (&b"garbage"[..], 1i64),
        (&[][..], 1),
        (&[1u8; 30][..], 1),
        (&valid[..], -5),
    ];
    for (garbage, version) in rows {
        sqlx::query(&format!(
            "INSERT INTO {} (id, record, expires_at, version) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record, version = excluded.version",
            store.table()
        ))
        .bind(&id.as_bytes()[..])
        .bind(garbage)
        .bind(server_session::now_millis() + 60_000)
        .bind(version)
        .execute(store.pool())
        .await
        .unwrap();
        assert!(
            matches!(store.get(&id).await, Err(Error::Decode { .. })),
            "{garbage:?} at version {version}"
        );
    }
    store.drop_table().await.unwrap();
}

#[tokio::test]
async fn unreachable_servers_and_unknown_users_are_backend_errors() {
    for url in [
        "postgres://postgres@127.0.0.1:1/test".to_owned(),
        common::database_url().replace("postgres@", "no_such_user_here@"),
    ] {
        let started = std::time::Instant::now();
        let result = PostgresStore::connect_with(PostgresConfig {
            connect_timeout: Duration::from_millis(800),
            operation_timeout: Duration::from_secs(2),
            ..PostgresConfig::new(url.clone())
        })
        .await;
        // A pool that never got a connection sent nothing: `Unavailable`
        // (the manager then knows no write landed); a server that refused
        // the login may also surface as `Backend`.
        assert!(
            matches!(
                result,
                Err(Error::Backend {
                    store: "postgres",
                    ..
                } | Error::Unavailable {
                    store: "postgres",
                    ..
                })
            ),
            "{url}: {result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// A second connection's transaction, held open while the store works, to
/// put a row lock exactly where a race would put it.
async fn locking(store: &PostgresStore, sql: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = store.pool().begin().await.unwrap();
    let done = sqlx::query(&sql.replace("{t}", store.table()))
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1, "{sql} locked nothing");
    tx
}

/// Inserts rows 1..=n whose ids ascend with n and whose expiries are
/// `expires_at + n`, so row 1 is first in insertion, id and expiry order:
/// whatever plan a batch uses, row 1 is in the first batch.
async fn fill(store: &PostgresStore, n: i64, expires_at: i64) {
    sqlx::query(&format!(
        "INSERT INTO {} (id, record, expires_at, version)
         SELECT decode(lpad(to_hex(i), 64, '0'), 'hex'), '\\x00'::bytea, $1 + i, 1
         FROM generate_series(1, $2) AS i ORDER BY i",
        store.table()
    ))
    .bind(expires_at)
    .bind(n)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn rows(store: &PostgresStore) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {}", store.table()))
        .fetch_one(store.pool())
        .await
        .unwrap()
}

const ROW_ONE: &str = "decode(lpad('1', 64, '0'), 'hex')";

#[tokio::test]
async fn clear_does_not_stop_when_a_concurrent_delete_shortens_a_batch() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    fill(&store, 2500, server_session::now_millis() + 3_600_000).await;
    let tx = locking(&store, &format!("DELETE FROM {{t}} WHERE id = {ROW_ONE}")).await;
    let clearing = tokio::spawn({
        let store = store.clone();
        async move { store.clear().await }
    });
    until_blocked(&store).await;
    tx.commit().await.unwrap();
    clearing.await.unwrap().unwrap();
    assert_eq!(rows(&store).await, 0, "clear returned with rows left");
    store.drop_table().await.unwrap();
}

#[tokio::test]
async fn flush_does_not_stop_when_a_concurrent_delete_shortens_a_batch() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    fill(&store, 2500, server_session::now_millis() - 60_000).await;
    let tx = locking(&store, &format!("DELETE FROM {{t}} WHERE id = {ROW_ONE}")).await;
    let flushing = tokio::spawn({
        let store = store.clone();
        async move { store.flush().await }
    });
    until_blocked(&store).await;
    tx.commit().await.unwrap();
    assert_eq!(flushing.await.unwrap().unwrap(), 2499);
    assert_eq!(
        rows(&store).await,
        0,
        "flush returned with expired rows left"
    );
    store.drop_table().await.unwrap();
}

#[tokio::test]
async fn flush_keeps_a_row_extended_while_it_waited_for_it() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    fill(&store, 3, server_session::now_millis() - 60_000).await;
    let tx = locking(
        &store,
        &format!(
            "UPDATE {{t}} SET expires_at = {} WHERE id = {ROW_ONE}",
            server_session::now_millis() + 3_600_000
        ),
    )
    .await;
    let flushing = tokio::spawn({
        let store = store.clone();
        async move { store.flush().await }
    });
    until_blocked(&store).await;
    tx.commit().await.unwrap();
    assert_eq!(flushing.await.unwrap().unwrap(), 2);
    assert_eq!(rows(&store).await, 1, "flush deleted the extended row");
    store.drop_table().await.unwrap();
}

/// `delete_if` waits for a concurrent writer of its row and answers by what
/// that writer left, not by what it saw before waiting.
#[tokio::test]
async fn delete_if_judges_the_row_a_concurrent_writer_left() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    let cases = [
        (
            "UPDATE {t} SET version = 2 WHERE id = $ID",
            DeleteOutcome::Conflict,
            true,
        ),
        ("DELETE FROM {t} WHERE id = $ID", DeleteOutcome::Gone, false),
        (
            "UPDATE {t} SET expires_at = expires_at + 1 WHERE id = $ID",
            DeleteOutcome::Deleted,
            false,
        ),
    ];
    for (sql, outcome, kept) in cases {
        let s = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
        store.create(&s).await.unwrap();
        let id = format!("'\\x{}'::bytea", hex(&s.id().as_bytes()[..]));
        let tx = locking(&store, &sql.replace("$ID", &id)).await;
        let deleting = tokio::spawn({
            let (store, id) = (store.clone(), s.id());
            async move { store.delete_if(&id, 1).await }
        });
        until_blocked(&store).await;
        tx.commit().await.unwrap();
        assert_eq!(deleting.await.unwrap().unwrap(), outcome, "after {sql}");
        assert_eq!(store.exists(&s.id()).await.unwrap(), kept, "after {sql}");
    }
    store.drop_table().await.unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A live session bound to `user`.
fn bound(user: &str) -> Session {
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    s.set_user(Some(UserBinding::new(user, BTreeMap::new()).unwrap()));
    s
}

async fn ids_of(store: &PostgresStore, user: &str) -> BTreeSet<server_session::SessionId> {
    store
        .sessions_of(user)
        .await
        .unwrap()
        .iter()
        .map(Session::id)
        .collect()
}

/// A table the previous version left (migration 1 recorded, no `user_key`
/// column), with a session in it, migrated by two stores at once: the user
/// index is added once, the old session still loads and saves, and
/// sessions bound from now on are indexed.
#[tokio::test]
async fn a_table_of_the_previous_schema_gains_the_user_index_and_keeps_its_sessions() {
    let Some(probe) = fresh_store().await else {
        return;
    };
    probe.drop_table().await.unwrap();
    let name = probe.table().split('.').nth(1).unwrap().to_owned();
    let t = probe.table().to_owned();
    sqlx::raw_sql(&format!(
        "CREATE TABLE IF NOT EXISTS {SCHEMA}.\"{m}\" (table_name text NOT NULL,
             version bigint NOT NULL, applied_at bigint NOT NULL,
             PRIMARY KEY (table_name, version));
         INSERT INTO {SCHEMA}.\"{m}\" VALUES ('{name}', 1, 0);
         CREATE TABLE {t} (id bytea PRIMARY KEY, record bytea NOT NULL,
             expires_at bigint NOT NULL, version bigint NOT NULL) WITH (fillfactor = 70);
         CREATE INDEX \"{name}$expires_at\" ON {t} (expires_at);",
        m = server_session::postgres::MIGRATIONS_TABLE
    ))
    .execute(probe.pool())
    .await
    .unwrap();
    let mut old = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    old.insert("cart", &3u8).unwrap();
    sqlx::query(&format!(
        "INSERT INTO {t} (id, record, expires_at, version) VALUES ($1, $2, $3, 1)"
    ))
    .bind(&old.id().as_bytes()[..])
    .bind(codec::encode(&old, 1).unwrap())
    .bind(old.expires_at_millis())
    .execute(probe.pool())
    .await
    .unwrap();

    let a = PostgresStore::new(probe.pool().clone(), Some(SCHEMA), &name).unwrap();
    let b = PostgresStore::new(probe.pool().clone(), Some(SCHEMA), &name).unwrap();
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    a.migrate().await.unwrap();
    assert_eq!(recorded(&a).await, [1, 2]);

    let back = a.get(&old.id()).await.unwrap().expect("the old session");
    assert_eq!(back.get::<u8>("cart").unwrap(), Some(3));
    assert_eq!(back.user_key(), None);
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
        BTreeSet::from([old.id(), fresh.id()])
    );
    let index: Option<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
    )
    .bind(SCHEMA)
    .bind(format!("{name}$user_key"))
    .fetch_optional(a.pool())
    .await
    .unwrap();
    let index = index.expect("the user index exists");
    assert!(index.contains("(user_key)"), "{index}");
    assert_eq!(
        a.revoke_user("ada", Some(&fresh.id())).await.unwrap(),
        [old.id()]
    );
    assert!(a.get(&old.id()).await.unwrap().is_none());
    assert_eq!(ids_of(&b, "ada").await, BTreeSet::from([fresh.id()]));
    a.drop_table().await.unwrap();
}

/// Rows written behind the store's back under a user's key (a record that
/// does not decode, one bound to another user, an id of the wrong length)
/// are skipped by `sessions_of`, never an error or a panic.
#[tokio::test]
async fn sessions_of_skips_rows_it_cannot_trust() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let good = bound("ada");
    store.create(&good).await.unwrap();
    let rows: [(Vec<u8>, Vec<u8>); 3] = [
        (
            SessionToken::generate().id().as_bytes().to_vec(),
            b"garbage".to_vec(),
        ),
        (
            SessionToken::generate().id().as_bytes().to_vec(),
            codec::encode(&bound("bob"), 1).unwrap(),
        ),
        (vec![7u8; 5], codec::encode(&good, 1).unwrap()),
    ];
    for (id, record) in &rows {
        sqlx::query(&format!(
            "INSERT INTO {} (id, record, expires_at, version, user_key)
             VALUES ($1, $2, $3, 1, 'ada')",
            store.table()
        ))
        .bind(&id[..])
        .bind(&record[..])
        .bind(server_session::now_millis() + 60_000)
        .execute(store.pool())
        .await
        .unwrap();
    }
    assert_eq!(ids_of(&store, "ada").await, BTreeSet::from([good.id()]));
    let revoked = store.revoke_user("ada", None).await.unwrap();
    assert!(revoked.contains(&good.id()), "{revoked:?}");
    assert!(store.sessions_of("ada").await.unwrap().is_empty());
    store.drop_table().await.unwrap();
}

/// `revoke_user` waits for a concurrent writer of a user's row and acts on
/// what that writer left: a row rebound to another user meanwhile is
/// spared and not reported, a row saved under the same user is deleted.
#[tokio::test]
async fn revoke_judges_the_rows_a_concurrent_writer_left() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    let (rebound, saved) = (bound("ada"), bound("ada"));
    store.create(&rebound).await.unwrap();
    store.create(&saved).await.unwrap();
    let mut tx = store.pool().begin().await.unwrap();
    for (s, user) in [(&rebound, "bob"), (&saved, "ada")] {
        sqlx::query(&format!(
            "UPDATE {} SET user_key = $2, version = version + 1 WHERE id = $1",
            store.table()
        ))
        .bind(&s.id().as_bytes()[..])
        .bind(user)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    let revoking = tokio::spawn({
        let store = store.clone();
        async move { store.revoke_user("ada", None).await }
    });
    until_blocked(&store).await;
    tx.commit().await.unwrap();
    assert_eq!(revoking.await.unwrap().unwrap(), [saved.id()]);
    assert!(store.exists(&rebound.id()).await.unwrap());
    assert!(!store.exists(&saved.id()).await.unwrap());
    store.drop_table().await.unwrap();
}

/// `revoke_user`'s `DELETE`, undone by PostgreSQL to break a deadlock, runs
/// again rather than failing the revoke, and answers each row once. The
/// deadlock is made on purpose: another transaction holds the user's second
/// row while the revoke holds the first, then asks for the first. That
/// transaction checks for deadlocks only after a minute, so the revoke's
/// own check (`deadlock_timeout` after it began to wait) finds the cycle
/// and undoes the revoke.
#[tokio::test]
async fn a_revoke_chosen_as_a_deadlock_victim_runs_again() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    // Created in this order, so any plan meets `first` first: the heap and
    // the user index's equal keys are both in insertion order.
    let (first, second) = (bound("ada"), bound("ada"));
    store.create(&first).await.unwrap();
    store.create(&second).await.unwrap();
    let lock = format!("SELECT id FROM {} WHERE id = $1 FOR UPDATE", store.table());
    let row = |s: &Session| s.id().as_bytes().to_vec();
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '1min'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(&lock)
        .bind(row(&second))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let revoking = tokio::spawn({
        let store = store.clone();
        async move { store.revoke_user("ada", None).await }
    });
    until_blocked(&store).await;
    sqlx::query(&lock)
        .bind(row(&first))
        .fetch_one(&mut *tx)
        .await
        .expect("PostgreSQL undid the revoke, which waited first");
    // The revoke's next try waits for `first` until this commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.unwrap();
    let mut revoked = revoking.await.unwrap().expect("the retried DELETE");
    revoked.sort_by_key(|id| *id.as_bytes());
    let mut both = [first.id(), second.id()];
    both.sort_by_key(|id| *id.as_bytes());
    assert_eq!(revoked, both, "each row answered once");
    assert!(!store.exists(&first.id()).await.unwrap());
    assert!(!store.exists(&second.id()).await.unwrap());
    store.drop_table().await.unwrap();
}

/// A pooled connection the server closed while it sat unused is replaced
/// (see `common::a_closed_connection_is_replaced`).
#[tokio::test]
async fn a_connection_the_server_closed_is_replaced() {
    let url = common::database_url();
    let config = PostgresConfig {
        schema: Some(SCHEMA.into()),
        table: common::unique("t_"),
        pool_size: 1,
        ..PostgresConfig::new(url.clone())
    };
    let store = match PostgresStore::connect_with(config).await {
        Ok(store) => store,
        Err(e) => return common::unreachable("postgres", &url, e),
    };
    store.migrate().await.expect("migrate");
    let pool = store.pool().clone();
    // Connected once, before: a slow connect inside `kill` could let the
    // pooled connection sit past `PING_AFTER_IDLE` in the round meant to
    // hand it out unchecked.
    let admin = Arc::new(tokio::sync::Mutex::new(
        <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap(),
    ));
    let kill = || {
        let (pool, admin) = (pool.clone(), admin.clone());
        async move {
            // The pool has one connection: this is the one the store uses.
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&pool)
                .await
                .unwrap();
            // sqlx checks a connection as it goes back to the pool (in a
            // task of its own): kill it only once it is back, idle.
            while pool.num_idle() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
                .bind(pid)
                .fetch_one(&mut *admin.lock().await)
                .await
                .unwrap();
            assert!(killed, "backend {pid} terminated");
        }
    };
    let ping_after_idle = server_session::postgres::PING_AFTER_IDLE;
    common::a_closed_connection_is_replaced(&store, ping_after_idle, kill).await;
    store.drop_table().await.unwrap();
}

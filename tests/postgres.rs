//! The PostgreSQL store against the real server (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), each case in its own table.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use server_session::conformance::StoreFactory;
use server_session::postgres::sqlx;
use server_session::{
    async_trait, codec, conformance_tests, DeleteOutcome, Error, PostgresConfig, PostgresStore,
    Session, SessionInterface, SessionToken,
};

const SCHEMA: &str = "session_tests";

async fn fresh_store() -> Option<PostgresStore> {
    let url = common::database_url();
    let config = PostgresConfig {
        schema: Some(SCHEMA.into()),
        table: common::unique("t_"),
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

/// Makes a table per store and drops them all after the case.
#[derive(Default)]
struct Postgres {
    made: common::Made<Arc<PostgresStore>>,
}

#[async_trait]
impl StoreFactory for Postgres {
    async fn make(&self) -> Option<Arc<dyn SessionInterface>> {
        let store = Arc::new(fresh_store().await?);
        self.made.keep(store.clone());
        Some(store)
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
    let applied: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {SCHEMA}.\"{}\" WHERE table_name = $1",
        server_session::postgres::MIGRATIONS_TABLE
    ))
    .bind(twin.table().split('.').nth(1).unwrap())
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(applied, 1, "a migration step ran twice");
    store.drop_table().await.unwrap();
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

/// Waits until a statement on `table` waits for a row lock.
async fn until_blocked(store: &PostgresStore) {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0",
        )
        .bind(store.table())
        .fetch_one(store.pool())
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no statement on {} ever waited for the lock", store.table());
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

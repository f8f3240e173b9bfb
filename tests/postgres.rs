//! The PostgreSQL store against the real server (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), each case in its own table.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use server_session::conformance::StoreFactory;
use server_session::postgres::sqlx;
use server_session::{
    async_trait, conformance_tests, Error, PostgresConfig, PostgresStore, SessionInterface,
    SessionToken,
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
        "SELECT COUNT(*) FROM {}_migrations",
        store.table()
    ))
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
    for garbage in [&b"garbage"[..], &[][..], &[1u8; 30][..]] {
        sqlx::query(&format!(
            "INSERT INTO {} (id, record, expires_at, version) VALUES ($1, $2, $3, 1)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            store.table()
        ))
        .bind(&id.as_bytes()[..])
        .bind(garbage)
        .bind(server_session::now_millis() + 60_000)
        .execute(store.pool())
        .await
        .unwrap();
        assert!(
            matches!(store.get(&id).await, Err(Error::Decode { .. })),
            "{garbage:?}"
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
        assert!(
            matches!(
                result,
                Err(Error::Backend {
                    store: "postgres",
                    ..
                })
            ),
            "{url}: {result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

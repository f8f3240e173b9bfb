//! Adversarial review of the SQL stores against real databases: raw rows
//! written behind the store's back, expiry and version bounds, table-name
//! namespaces, and interleavings forced with a second connection's locks.
#![cfg(any(feature = "postgres", feature = "sqlite"))]

mod common;

use std::time::Duration;

use server_session::{
    from_unix_millis, now_millis, Session, SessionInterface, SessionToken, UpdateOutcome,
};

fn session(ttl_ms: i64) -> Session {
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    s.set_expires_at_millis(now_millis() + ttl_ms);
    s
}

/// update with an earlier expiry after touch keeps the touched expiry, and
/// returns the new body (data, write ids) whole.
async fn update_after_touch_keeps_the_later_expiry(store: &dyn SessionInterface) {
    let s = session(60_000);
    store.create(&s).await.unwrap();
    let touched = now_millis() + 3_600_000;
    assert!(store
        .touch(&s.id(), from_unix_millis(touched))
        .await
        .unwrap());
    let mut next = s.clone();
    next.insert("k", &5u32).unwrap();
    next.stamp_write(9);
    next.set_expires_at_millis(now_millis() + 1_000);
    assert_eq!(
        store.update(&next, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    );
    let got = store.get(&s.id()).await.unwrap().expect("live");
    assert_eq!(got.expires_at_millis(), touched);
    assert_eq!(got.recent_writes(), [9]);
    assert_eq!(got.data(), next.data());
    assert_eq!(got.version(), 2);
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;
    use std::time::Duration;

    use server_session::postgres::sqlx;
    use server_session::{
        codec, from_unix_millis, now_millis, DeleteOutcome, Error, PostgresConfig, PostgresStore,
        SessionInterface, UpdateOutcome,
    };

    use super::{common, session};

    const SCHEMA: &str = "session_review";

    async fn store_named(schema: Option<&str>, table: String) -> Option<PostgresStore> {
        let url = common::database_url();
        let config = PostgresConfig {
            schema: schema.map(str::to_owned),
            table,
            pool_size: 4,
            ..PostgresConfig::new(url.clone())
        };
        match PostgresStore::connect_with(config).await {
            Ok(store) => Some(store),
            Err(e) => {
                common::unreachable("postgres", &url, e);
                None
            }
        }
    }

    async fn fresh() -> Option<PostgresStore> {
        let store = store_named(Some(SCHEMA), common::unique("r_")).await?;
        store.migrate().await.unwrap();
        Some(store)
    }

    async fn raw_row(store: &PostgresStore, id: &[u8], record: &[u8], expires: i64, version: i64) {
        sqlx::query(&format!(
            "INSERT INTO {} (id, record, expires_at, version) VALUES ($1, $2, $3, $4)",
            store.table()
        ))
        .bind(id)
        .bind(record)
        .bind(expires)
        .bind(version)
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

    /// Waits until a statement on the store's table waits for a row lock.
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
        panic!("nothing waited for a lock on {}", store.table());
    }

    #[tokio::test]
    async fn update_after_touch_keeps_the_later_expiry() {
        let Some(store) = fresh().await else { return };
        super::update_after_touch_keeps_the_later_expiry(&store).await;
        store.drop_table().await.unwrap();
    }

    /// Raw rows at the edges of the expiry range and with corrupt records:
    /// flush deletes exactly the expired ones, len counts exactly the live
    /// ones, get reports corrupt live rows as Error::Decode.
    #[tokio::test]
    async fn raw_rows_at_the_edges() {
        let Some(store) = fresh().await else { return };
        let ids: Vec<[u8; 32]> = (1..=6u8).map(|n| [n; 32]).collect();
        let live = session(3_600_000);
        let good = codec::encode(&live, 1).unwrap();
        raw_row(&store, &ids[0], &good, i64::MIN, 1).await;
        raw_row(&store, &ids[1], &good, 0, 1).await;
        raw_row(&store, &ids[2], &good, i64::MAX, 1).await;
        raw_row(&store, &ids[3], b"garbage", i64::MAX, 1).await;
        raw_row(&store, &ids[4], &good, i64::MAX, -1).await;
        raw_row(&store, &ids[5], b"", -1, 1).await;
        let id = |n: usize| server_session::SessionId::from_bytes(ids[n]);
        assert_eq!(store.len().await.unwrap(), 3);
        assert!(store.get(&id(0)).await.unwrap().is_none());
        assert!(store.get(&id(1)).await.unwrap().is_none());
        let far = store.get(&id(2)).await.unwrap().expect("live");
        assert_eq!(far.expires_at_millis(), i64::MAX);
        assert!(matches!(store.get(&id(3)).await, Err(Error::Decode { .. })));
        assert!(matches!(store.get(&id(4)).await, Err(Error::Decode { .. })));
        assert_eq!(store.flush().await.unwrap(), 3);
        assert_eq!(rows(&store).await, 3);
        // touch cannot move i64::MAX, but answers live.
        assert!(store
            .touch(&id(2), from_unix_millis(now_millis() + 1))
            .await
            .unwrap());
        assert_eq!(
            store
                .get(&id(2))
                .await
                .unwrap()
                .unwrap()
                .expires_at_millis(),
            i64::MAX
        );
        store.clear().await.unwrap();
        assert_eq!(rows(&store).await, 0);
        store.drop_table().await.unwrap();
    }

    /// Tables of the same name in two schemas are two namespaces.
    #[tokio::test]
    async fn same_table_in_two_schemas_is_two_namespaces() {
        let table = common::unique("r_");
        let Some(a) = store_named(Some("session_review_a"), table.clone()).await else {
            return;
        };
        let Some(b) = store_named(Some("session_review_b"), table).await else {
            return;
        };
        a.migrate().await.unwrap();
        b.migrate().await.unwrap();
        let (sa, sb) = (session(60_000), session(60_000));
        a.create(&sa).await.unwrap();
        b.create(&sb).await.unwrap();
        a.clear().await.unwrap();
        assert_eq!(a.len().await.unwrap(), 0);
        assert_eq!(b.len().await.unwrap(), 1);
        assert!(b.get(&sb.id()).await.unwrap().is_some());
        a.drop_table().await.unwrap();
        b.drop_table().await.unwrap();
    }

    /// clear deletes a row another connection extends while clear waits
    /// for it (clear deletes everything), and flush spares one extended
    /// while it waited, in the same run with many rows and several batches.
    #[tokio::test]
    async fn clear_deletes_a_row_extended_while_it_waited() {
        let Some(store) = fresh().await else { return };
        let store = Arc::new(store);
        let s = session(60_000);
        store.create(&s).await.unwrap();
        let mut tx = store.pool().begin().await.unwrap();
        sqlx::query(&format!(
            "UPDATE {} SET expires_at = expires_at + 3600000 WHERE id = $1",
            store.table()
        ))
        .bind(&s.id().as_bytes()[..])
        .execute(&mut *tx)
        .await
        .unwrap();
        let clearing = tokio::spawn({
            let store = store.clone();
            async move { store.clear().await }
        });
        until_blocked(&store).await;
        tx.commit().await.unwrap();
        clearing.await.unwrap().unwrap();
        assert_eq!(rows(&store).await, 0);
        store.drop_table().await.unwrap();
    }

    /// Many tasks race update and delete_if on one row: one winner.
    #[tokio::test]
    async fn update_and_delete_if_races_have_one_winner() {
        let Some(store) = fresh().await else { return };
        let store = Arc::new(store);
        for round in 0..6 {
            let s = session(60_000);
            store.create(&s).await.unwrap();
            let mut tasks = Vec::new();
            for n in 0..8 {
                let (store, s) = (store.clone(), s.clone());
                tasks.push(tokio::spawn(async move {
                    if (n + round) % 2 == 0 {
                        matches!(
                            store.update(&s, 1).await.unwrap(),
                            UpdateOutcome::Updated { .. }
                        )
                    } else {
                        store.delete_if(&s.id(), 1).await.unwrap() == DeleteOutcome::Deleted
                    }
                }));
            }
            let mut wins = 0;
            for task in tasks {
                wins += usize::from(task.await.unwrap());
            }
            assert_eq!(wins, 1, "round {round}");
        }
        store.drop_table().await.unwrap();
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::path::PathBuf;
    use std::sync::Arc;

    use server_session::sqlite::sqlx::{self, Connection as _};
    use server_session::{
        codec, DeleteOutcome, Error, SessionInterface, SqliteConfig, SqliteStore, UpdateOutcome,
    };

    use super::{common, session};

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(common::unique("review-sqlite-"));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn url(&self) -> String {
            format!("sqlite://{}", self.0.join("db.sqlite").display())
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn open(dir: &Dir, table: &str) -> SqliteStore {
        let store = SqliteStore::connect_with(SqliteConfig {
            table: table.into(),
            ..SqliteConfig::new(dir.url())
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        store
    }

    async fn raw(dir: &Dir) -> sqlx::SqliteConnection {
        sqlx::SqliteConnection::connect(&dir.url()).await.unwrap()
    }

    #[tokio::test]
    async fn update_after_touch_keeps_the_later_expiry() {
        let dir = Dir::new();
        let store = open(&dir, "sessions").await;
        super::update_after_touch_keeps_the_later_expiry(&store).await;
    }

    /// Raw rows at the edges and corrupt ones, as for PostgreSQL.
    #[tokio::test]
    async fn raw_rows_at_the_edges() {
        let dir = Dir::new();
        let store = open(&dir, "sessions").await;
        let mut conn = raw(&dir).await;
        let good = codec::encode(&session(3_600_000), 1).unwrap();
        let rows: [(&[u8], i64, i64); 6] = [
            (&good, i64::MIN, 1),
            (&good, 0, 1),
            (&good, i64::MAX, 1),
            (b"garbage", i64::MAX, 1),
            (&good, i64::MAX, -1),
            (b"", -1, 1),
        ];
        for (n, (record, expires, version)) in rows.iter().enumerate() {
            sqlx::query(
                "INSERT INTO sessions (id, record, expires_at, version) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(vec![n as u8 + 1; 32])
            .bind(*record)
            .bind(*expires)
            .bind(*version)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        let id = |n: u8| server_session::SessionId::from_bytes([n + 1; 32]);
        assert_eq!(store.len().await.unwrap(), 3);
        assert!(store.get(&id(0)).await.unwrap().is_none());
        assert_eq!(
            store
                .get(&id(2))
                .await
                .unwrap()
                .unwrap()
                .expires_at_millis(),
            i64::MAX
        );
        assert!(matches!(store.get(&id(3)).await, Err(Error::Decode { .. })));
        assert!(matches!(store.get(&id(4)).await, Err(Error::Decode { .. })));
        assert_eq!(store.flush().await.unwrap(), 3);
        assert_eq!(store.len().await.unwrap(), 3);
        store.clear().await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    /// Two tables in one file are two namespaces.
    #[tokio::test]
    async fn two_tables_in_one_file_are_two_namespaces() {
        let dir = Dir::new();
        let a = open(&dir, "alpha").await;
        let b = open(&dir, "alpha2").await;
        let (sa, sb) = (session(60_000), session(60_000));
        a.create(&sa).await.unwrap();
        b.create(&sb).await.unwrap();
        a.clear().await.unwrap();
        assert_eq!(a.len().await.unwrap(), 0);
        assert!(b.get(&sb.id()).await.unwrap().is_some());
    }

    /// Many tasks race update and delete_if on one row: one winner.
    #[tokio::test]
    async fn update_and_delete_if_races_have_one_winner() {
        let dir = Dir::new();
        let store = Arc::new(open(&dir, "sessions").await);
        for round in 0..10 {
            let s = session(60_000);
            store.create(&s).await.unwrap();
            let mut tasks = Vec::new();
            for n in 0..12 {
                let (store, s) = (store.clone(), s.clone());
                tasks.push(tokio::spawn(async move {
                    if (n + round) % 2 == 0 {
                        matches!(
                            store.update(&s, 1).await.unwrap(),
                            UpdateOutcome::Updated { .. }
                        )
                    } else {
                        store.delete_if(&s.id(), 1).await.unwrap() == DeleteOutcome::Deleted
                    }
                }));
            }
            let mut wins = 0;
            for task in tasks {
                wins += usize::from(task.await.unwrap());
            }
            assert_eq!(wins, 1, "round {round}");
        }
    }
}

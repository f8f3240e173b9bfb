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

/// A bytea literal's digits, for the PostgreSQL cases' raw statements.
#[cfg(feature = "postgres")]
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    use crate::common::postgres::until_blocked;
    use server_session::postgres::sqlx;
    use server_session::postgres::{MAX_TABLE_NAME_LEN, MIGRATIONS_TABLE};
    use server_session::{
        codec, from_unix_millis, now_millis, DeleteOutcome, Error, PostgresConfig, PostgresStore,
        SessionInterface, UpdateOutcome,
    };

    use super::{common, hex, session};

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

    /// An operation that waited for another connection's row lock until
    /// the record expired must judge expiry after the wait: touch false,
    /// update Gone, delete_if Gone, and the record stays expired (a reader
    /// already saw it expired while the operation waited).
    #[tokio::test]
    async fn operations_that_waited_past_the_expiry_do_not_revive() {
        let Some(store) = fresh().await else { return };
        let store = Arc::new(store);
        let mut failures = Vec::new();
        for op in ["touch", "update", "delete_if"] {
            let s = session(400);
            store.create(&s).await.unwrap();
            let mut tx = store.pool().begin().await.unwrap();
            sqlx::query(&format!(
                "SELECT 1 FROM {} WHERE id = '\\x{}'::bytea FOR UPDATE",
                store.table(),
                hex(&s.id().as_bytes()[..])
            ))
            .execute(&mut *tx)
            .await
            .unwrap();
            let waiting = tokio::spawn({
                let (store, s) = (store.clone(), s.clone());
                async move {
                    let later = now_millis() + 3_600_000;
                    match op {
                        "touch" => format!(
                            "{:?}",
                            store.touch(&s.id(), from_unix_millis(later)).await.unwrap()
                        ),
                        "update" => {
                            let mut next = s.clone();
                            next.set_expires_at_millis(later);
                            format!("{:?}", store.update(&next, 1).await.unwrap())
                        }
                        _ => format!("{:?}", store.delete_if(&s.id(), 1).await.unwrap()),
                    }
                }
            });
            until_blocked(&store).await;
            tokio::time::sleep(Duration::from_millis(700)).await;
            let seen = store.get(&s.id()).await.unwrap();
            assert!(seen.is_none(), "{op}: expired while it waited");
            tx.commit().await.unwrap();
            let outcome = waiting.await.unwrap();
            let after = store.get(&s.id()).await.unwrap();
            let expected = match op {
                "touch" => "false",
                _ => "Gone",
            };
            if outcome != expected || after.is_some() {
                failures.push(format!(
                    "{op}: answered {outcome} (expected {expected}); record live afterwards: {}",
                    after.is_some()
                ));
            }
        }
        store.drop_table().await.unwrap();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// A store whose table is named like another store's helper objects
    /// (its old migration table `<t>_migrations`, its old index name
    /// `<schema>_<t>_expires_at`, its index `<t>$expires_at` is no
    /// identifier) is a separate namespace: migrating `<t>` must neither
    /// break it nor be broken by it, and dropping `<t>` must not drop the
    /// other store's sessions.
    #[tokio::test]
    async fn a_table_named_like_another_stores_helpers_is_its_own_namespace() {
        let mut failures = Vec::new();
        for suffix in ["_migrations", "_expires_at"] {
            let base = common::unique("r_");
            let other = match suffix {
                "_migrations" => format!("{base}_migrations"),
                _ => format!("{SCHEMA}_{base}_expires_at"),
            };
            let Some(b) = store_named(Some(SCHEMA), other.clone()).await else {
                return;
            };
            b.migrate().await.unwrap();
            let sb = session(60_000);
            b.create(&sb).await.unwrap();
            let Some(a) = store_named(Some(SCHEMA), base).await else {
                return;
            };
            let migrated = a.migrate().await;
            let sa = session(60_000);
            let created = a.create(&sa).await;
            let dropped = a.drop_table().await;
            let b_kept = b.get(&sb.id()).await;
            let b_again = b.migrate().await;
            let _ = b.drop_table().await;
            if !(migrated.is_ok()
                && created.is_ok()
                && dropped.is_ok()
                && matches!(b_kept, Ok(Some(_)))
                && b_again.is_ok())
            {
                failures.push(format!(
                    "{other}: migrate: {migrated:?}\ncreate after migrate: {created:?}\ndrop: {dropped:?}\nthe other store's session after drop_table: {b_kept:?}\nthe other store migrated again: {b_again:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// PostgreSQL cuts identifiers to 63 bytes, so a table name must leave
    /// room for its index's suffix: the longest name accepted migrates and
    /// works, one byte more is `Error::Config` naming the limit.
    #[tokio::test]
    async fn the_longest_table_name_migrates_and_one_more_byte_is_refused() {
        let mut table = common::unique("r_");
        while table.len() < MAX_TABLE_NAME_LEN {
            table.push('x');
        }
        let Some(store) = store_named(Some(SCHEMA), table.clone()).await else {
            return;
        };
        let migrated = store.migrate().await;
        let s = session(60_000);
        let created = store.create(&s).await;
        let got = store.get(&s.id()).await;
        let _ = store.drop_table().await;
        assert!(migrated.is_ok(), "migrate: {migrated:?}");
        assert!(created.is_ok(), "create: {created:?}");
        assert!(matches!(got, Ok(Some(_))), "get: {got:?}");

        table.push('x');
        let url = common::database_url();
        let too_long = PostgresStore::connect_with(PostgresConfig {
            schema: Some(SCHEMA.into()),
            table: table.clone(),
            ..PostgresConfig::new(url)
        })
        .await;
        match too_long {
            Err(Error::Config(message)) => assert!(
                message.contains(&MAX_TABLE_NAME_LEN.to_string()) && message.contains(&table),
                "{message}"
            ),
            other => panic!("a {}-byte table name: {other:?}", table.len()),
        }
    }

    /// A table migrated by the earlier layout (record in `<t>_migrations`,
    /// index `<schema>_<t>_expires_at`), built here by hand, is adopted:
    /// its sessions stay, the old record and index name are gone (freeing
    /// both names for other stores), and migrating again changes nothing.
    #[tokio::test]
    async fn a_table_of_the_earlier_layout_is_adopted_with_its_sessions() {
        let base = common::unique("r_");
        let Some(store) = store_named(Some(SCHEMA), base.clone()).await else {
            return;
        };
        let t = store.table().to_owned();
        // Under the migrations' lock: a store migrating meanwhile may be
        // creating the schema too.
        sqlx::raw_sql(&format!(
            "SELECT pg_advisory_xact_lock(hashtext('session-store migrate'));
             CREATE SCHEMA IF NOT EXISTS {SCHEMA};
             CREATE TABLE {t}_migrations (version bigint PRIMARY KEY, applied_at bigint NOT NULL);
             INSERT INTO {t}_migrations VALUES (1, 0);
             CREATE TABLE {t} (id bytea PRIMARY KEY, record bytea NOT NULL,
                 expires_at bigint NOT NULL, version bigint NOT NULL) WITH (fillfactor = 70);
             CREATE INDEX {SCHEMA}_{base}_expires_at ON {t} (expires_at);"
        ))
        .execute(store.pool())
        .await
        .unwrap();
        // Written as the earlier version wrote it (no `user_key` column yet).
        let s = session(60_000);
        raw_row(
            &store,
            &s.id().as_bytes()[..],
            &codec::encode(&s, 1).unwrap(),
            s.expires_at_millis(),
            1,
        )
        .await;
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        assert!(store.get(&s.id()).await.unwrap().is_some(), "session lost");
        let exists = |name: String| {
            let pool = store.pool().clone();
            async move {
                sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                    .bind(name)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        assert!(!exists(format!("{t}_migrations")).await, "old record kept");
        assert!(
            !exists(format!("{SCHEMA}.{SCHEMA}_{base}_expires_at")).await,
            "old index name kept"
        );
        assert!(exists(format!("{SCHEMA}.\"{base}$expires_at\"")).await);
        let recorded: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT version FROM {SCHEMA}.\"{MIGRATIONS_TABLE}\" WHERE table_name = $1"
        ))
        .bind(&base)
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(recorded, [1, 2]);
        // The freed name is now free for a store of its own.
        let Some(other) = store_named(Some(SCHEMA), format!("{base}_migrations")).await else {
            return;
        };
        other.migrate().await.unwrap();
        other.create(&session(60_000)).await.unwrap();
        store.drop_table().await.unwrap();
        assert_eq!(other.len().await.unwrap(), 1);
        other.drop_table().await.unwrap();
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use server_session::sqlite::sqlx::{self, Connection as _};
    use server_session::sqlite::MIGRATIONS_TABLE;
    use server_session::{
        codec, from_unix_millis, now_millis, DeleteOutcome, Error, SessionInterface, SqliteConfig,
        SqliteStore, UpdateOutcome,
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

    /// An operation that waited for another process's write lock until the
    /// record expired judges expiry after the wait: touch false, update
    /// Gone, and the record stays expired.
    #[tokio::test]
    async fn operations_that_waited_past_the_expiry_do_not_revive() {
        let dir = Dir::new();
        let store = Arc::new(open(&dir, "sessions").await);
        let mut failures = Vec::new();
        for op in ["touch", "update", "delete_if"] {
            let s = session(300);
            store.create(&s).await.unwrap();
            let mut other = raw(&dir).await;
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut other)
                .await
                .unwrap();
            let waiting = tokio::spawn({
                let (store, s) = (store.clone(), s.clone());
                async move {
                    let later = now_millis() + 3_600_000;
                    match op {
                        "touch" => format!(
                            "{:?}",
                            store.touch(&s.id(), from_unix_millis(later)).await.unwrap()
                        ),
                        "update" => {
                            let mut next = s.clone();
                            next.set_expires_at_millis(later);
                            format!("{:?}", store.update(&next, 1).await.unwrap())
                        }
                        _ => format!("{:?}", store.delete_if(&s.id(), 1).await.unwrap()),
                    }
                }
            });
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert!(store.get(&s.id()).await.unwrap().is_none(), "{op}");
            sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
            let outcome = waiting.await.unwrap();
            let after = store.get(&s.id()).await.unwrap();
            let expected = match op {
                "touch" => "false",
                _ => "Gone",
            };
            if outcome != expected || after.is_some() {
                failures.push(format!(
                    "{op}: answered {outcome} (expected {expected}); record live afterwards: {}",
                    after.is_some()
                ));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// Tables named like another store's migration table or index (old
    /// names included) are separate namespaces that migrate and work, in
    /// either order.
    #[tokio::test]
    async fn tables_named_like_another_stores_helpers_are_their_own_namespaces() {
        let mut failures = Vec::new();
        for other in ["s_migrations", "s_expires_at"] {
            for other_first in [true, false] {
                let dir = Dir::new();
                let open_other = || async {
                    let store = open(&dir, other).await;
                    store.create(&session(60_000)).await.unwrap();
                    store
                };
                let first = if other_first {
                    Some(open_other().await)
                } else {
                    None
                };
                let second = SqliteStore::connect_with(SqliteConfig {
                    table: "s".into(),
                    ..SqliteConfig::new(dir.url())
                })
                .await
                .unwrap();
                let migrated = second.migrate().await;
                let created = second.create(&session(60_000)).await;
                let first = match first {
                    Some(first) => first,
                    None => open_other().await,
                };
                let first_len = first.len().await;
                let second_len = second.len().await;
                if migrated.is_err()
                    || created.is_err()
                    || !matches!(first_len, Ok(1))
                    || !matches!(second_len, Ok(1))
                {
                    failures.push(format!(
                        "{other} first: {other_first}: s: migrate {migrated:?}, create {created:?}, len {second_len:?}; {other} len {first_len:?}"
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// A table migrated by the earlier layout (record in `<t>_migrations`,
    /// index `<t>_expires_at`), built here by hand, is adopted: its
    /// sessions stay, the old record and index are gone (freeing both names
    /// for other stores), and migrating again changes nothing.
    #[tokio::test]
    async fn a_table_of_the_earlier_layout_is_adopted_with_its_sessions() {
        let dir = Dir::new();
        // Opening the store creates the file; migrating comes later.
        let store = SqliteStore::connect_with(SqliteConfig {
            table: "Sess".into(),
            ..SqliteConfig::new(dir.url())
        })
        .await
        .unwrap();
        let mut conn = raw(&dir).await;
        sqlx::raw_sql(
            "CREATE TABLE Sess_migrations (version INTEGER PRIMARY KEY NOT NULL, applied_at INTEGER NOT NULL);
             INSERT INTO Sess_migrations VALUES (1, 0);
             CREATE TABLE Sess (id BLOB PRIMARY KEY NOT NULL, record BLOB NOT NULL,
                 expires_at INTEGER NOT NULL, version INTEGER NOT NULL) WITHOUT ROWID;
             CREATE INDEX Sess_expires_at ON Sess (expires_at);",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        // Written as the earlier version wrote it (no `user_key` column yet).
        let s = session(60_000);
        sqlx::query("INSERT INTO Sess (id, record, expires_at, version) VALUES (?1, ?2, ?3, 1)")
            .bind(&s.id().as_bytes()[..])
            .bind(codec::encode(&s, 1).unwrap())
            .bind(s.expires_at_millis())
            .execute(&mut conn)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        assert!(store.get(&s.id()).await.unwrap().is_some(), "session lost");
        let objects: Vec<(String, String)> = sqlx::query_as(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let objects: Vec<(&str, &str)> = objects
            .iter()
            .map(|(kind, name)| (kind.as_str(), name.as_str()))
            .collect();
        assert_eq!(
            objects,
            [
                ("table", "Sess"),
                ("index", "sess$expires_at"),
                ("index", "sess$user_key"),
                ("table", MIGRATIONS_TABLE)
            ]
        );
        let recorded: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT table_name, version FROM \"{MIGRATIONS_TABLE}\""
        ))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(recorded, [("sess".to_owned(), 1), ("sess".to_owned(), 2)]);
        for other in ["sess_migrations", "sess_expires_at"] {
            let store = open(&dir, other).await;
            store.create(&session(60_000)).await.unwrap();
            assert_eq!(store.len().await.unwrap(), 1, "{other}");
        }
        assert_eq!(store.len().await.unwrap(), 1);
    }
}

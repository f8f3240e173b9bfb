//! The MySQL/MariaDB store against the real server (`MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`), each case in its own table.
#![cfg(feature = "mysql")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mysql::{hex, locking, until_blocked};
use server_session::conformance::StoreFactory;
use server_session::mysql::sqlx;
use server_session::{
    async_trait, codec, conformance_tests, DeleteOutcome, Error, MysqlConfig, MysqlStore, Session,
    SessionInterface, SessionToken, UpdateOutcome, UserBinding,
};

async fn fresh_store() -> Option<MysqlStore> {
    store_named(common::unique("t_")).await
}

/// A migrated store on `table`.
async fn store_named(table: String) -> Option<MysqlStore> {
    common::mysql::store(common::mysql::config(table)).await
}

/// Makes a table per store and drops them all after the case; each
/// store's table is remembered by the address of its `Arc`, so that
/// `make_nested` can make a table named after one it made.
#[derive(Default)]
struct Mysql {
    made: common::Made<Arc<MysqlStore>>,
    tables: Mutex<Vec<(usize, String)>>,
}

fn address<T: ?Sized>(store: &Arc<T>) -> usize {
    Arc::as_ptr(store) as *const () as usize
}

impl Mysql {
    fn keep(&self, store: MysqlStore) -> Arc<dyn SessionInterface> {
        let store = Arc::new(store);
        self.made.keep(store.clone());
        if let Ok(mut tables) = self.tables.lock() {
            tables.push((address(&store), store.table().to_owned()));
        }
        store
    }
}

#[async_trait]
impl StoreFactory for Mysql {
    async fn make(&self) -> Option<Arc<dyn SessionInterface>> {
        Some(self.keep(fresh_store().await?))
    }

    /// A table in the same database whose name starts with the outer
    /// table's and is its user index's name (`user_key`) after a `_`.
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
        Some(self.keep(store_named(format!("{outer}_user_key")).await?))
    }

    async fn cleanup(&self, _store: Arc<dyn SessionInterface>) {
        for store in self.made.take() {
            if let Err(e) = store.drop_table().await {
                eprintln!("could not drop {}: {e}", store.table());
            }
        }
    }
}

conformance_tests!(Mysql::default());

/// The versions recorded for the store's table, in order, repeats included.
async fn applied(store: &MysqlStore) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT version FROM `{}` WHERE table_name = ? ORDER BY version",
        server_session::mysql::MIGRATIONS_TABLE
    ))
    .bind(store.table())
    .fetch_all(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_in_parallel() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let twin = MysqlStore::new(store.pool().clone(), store.table()).unwrap();
    let (a, b) = tokio::join!(store.migrate(), twin.migrate());
    a.unwrap();
    b.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(applied(&store).await, [1, 2], "a migration step ran twice");

    // A table the migrations have never seen, migrated by two stores at
    // once: one creates it, the other finds it done.
    let fresh = MysqlStore::new(store.pool().clone(), &common::unique("t_")).unwrap();
    let fresh_twin = MysqlStore::new(store.pool().clone(), fresh.table()).unwrap();
    let (a, b) = tokio::join!(fresh.migrate(), fresh_twin.migrate());
    a.unwrap();
    b.unwrap();
    assert_eq!(applied(&fresh).await, [1, 2], "a migration step ran twice");
    let s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    fresh.create(&s).await.unwrap();
    assert!(fresh.exists(&s.id()).await.unwrap());

    // Dropping one table forgets its record and nothing else.
    fresh.drop_table().await.unwrap();
    assert_eq!(applied(&fresh).await, [0i64; 0]);
    assert_eq!(applied(&store).await, [1, 2]);
    store.drop_table().await.unwrap();
}

#[tokio::test]
async fn names_that_are_not_identifiers_are_config_errors() {
    let url = common::mysql_url();
    for table in ["x; DROP TABLE y", "a`b", "9t", "t$x", ""] {
        let result = MysqlStore::connect_with(MysqlConfig {
            table: table.into(),
            ..MysqlConfig::new(url.clone())
        })
        .await;
        assert!(
            matches!(result, Err(Error::Config(_))),
            "{table:?} was accepted"
        );
    }
}

#[tokio::test]
async fn a_reserved_word_is_a_usable_table_name() {
    let Ok(pool) = sqlx::MySqlPool::connect(&common::mysql_url()).await else {
        common::unreachable("mysql", &common::mysql_url(), "connect failed");
        return;
    };
    // Unquoted, `order` would be a syntax error in every statement.
    let store = MysqlStore::new(pool, "order").unwrap();
    store.drop_table().await.unwrap();
    store.migrate().await.unwrap();
    let s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    store.create(&s).await.unwrap();
    assert_eq!(store.len().await.unwrap(), 1);
    store.drop_table().await.unwrap();
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
            assert_eq!(name, "mysql");
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
        (&valid[..], 0),
    ];
    for (garbage, version) in rows {
        sqlx::query(&format!(
            "INSERT INTO `{}` (id, record, expires_at, version) VALUES (?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE record = VALUES(record), version = VALUES(version)",
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
    // A corrupt version matches no expected version.
    let s = Session::new(id, Duration::from_secs(60));
    assert_eq!(
        store.update(&s, 1).await.unwrap(),
        UpdateOutcome::Conflict,
        "a row at version 0 was updated as if at 1"
    );
    store.drop_table().await.unwrap();
}

#[tokio::test]
async fn unreachable_servers_and_unknown_users_are_backend_errors() {
    for url in [
        "mysql://root@127.0.0.1:1/test".to_owned(),
        common::mysql_url().replace("root@", "no_such_user_here@"),
    ] {
        let started = std::time::Instant::now();
        let result = MysqlStore::connect_with(MysqlConfig {
            connect_timeout: Duration::from_millis(800),
            operation_timeout: Duration::from_secs(2),
            ..MysqlConfig::new(url.clone())
        })
        .await;
        // A pool that never got a connection sent nothing: `Unavailable`;
        // a server that refused the login may also surface as `Backend`.
        assert!(
            matches!(
                result,
                Err(Error::Backend { store: "mysql", .. }
                    | Error::Unavailable { store: "mysql", .. })
            ),
            "{url}: {result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// Row `i`'s id: ids ascend with `i`.
fn row_id(i: i64) -> String {
    format!("X'{i:064x}'")
}

/// Inserts rows 1..=n whose ids ascend with n and whose expiries are
/// `expires_at + n`, so row 1 is first in id and expiry order: whatever
/// plan a batch uses, row 1 is in the first batch.
async fn fill(store: &MysqlStore, n: i64, expires_at: i64) {
    let values: Vec<String> = (1..=n)
        .map(|i| format!("({}, X'00', {}, 1)", row_id(i), expires_at + i))
        .collect();
    sqlx::query(&format!(
        "INSERT INTO `{}` (id, record, expires_at, version) VALUES {}",
        store.table(),
        values.join(", ")
    ))
    .execute(store.pool())
    .await
    .unwrap();
}

async fn rows(store: &MysqlStore) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM `{}`", store.table()))
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn clear_does_not_stop_when_a_concurrent_delete_shortens_a_batch() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    fill(&store, 2500, server_session::now_millis() + 3_600_000).await;
    let tx = locking(
        &store,
        &format!("DELETE FROM {{t}} WHERE id = {}", row_id(1)),
        &[],
    )
    .await;
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
    let tx = locking(
        &store,
        &format!("DELETE FROM {{t}} WHERE id = {}", row_id(1)),
        &[],
    )
    .await;
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
            "UPDATE {{t}} SET expires_at = {} WHERE id = {}",
            server_session::now_millis() + 3_600_000,
            row_id(1)
        ),
        &[],
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
        let id = format!("X'{}'", hex(&s.id().as_bytes()[..]));
        let tx = locking(&store, &sql.replace("$ID", &id), &[]).await;
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

/// An operation that waited for a row lock past the record's expiry judges
/// it by the clock after the wait: it finds the record gone and does not
/// revive it.
#[tokio::test]
async fn writes_that_waited_past_the_expiry_do_not_revive_the_record() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    for op in ["update", "touch", "delete_if"] {
        let id = SessionToken::generate().id();
        let mut s = Session::new(id, Duration::from_secs(3600));
        store.create(&s).await.unwrap();
        // Expires 800 ms from now by the server's clock.
        sqlx::query(&format!(
            "UPDATE `{}` SET expires_at = CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED) + 800
             WHERE id = ?",
            store.table()
        ))
        .bind(&id.as_bytes()[..])
        .execute(store.pool())
        .await
        .unwrap();
        let row = format!("X'{}'", hex(&id.as_bytes()[..]));
        let tx = locking(
            &store,
            &format!("SELECT id FROM {{t}} WHERE id = {row} FOR UPDATE"),
            &[],
        )
        .await;
        s.insert("k", &1).unwrap();
        let waiting = tokio::spawn({
            let (store, s) = (store.clone(), s.clone());
            async move {
                let later = server_session::time::OffsetDateTime::now_utc()
                    + server_session::time::Duration::hours(1);
                match op {
                    "update" => format!("{:?}", store.update(&s, 1).await),
                    "touch" => format!("{:?}", store.touch(&s.id(), later).await),
                    _ => format!("{:?}", store.delete_if(&s.id(), 1).await),
                }
            }
        });
        until_blocked(&store).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        tx.commit().await.unwrap();
        let answer = waiting.await.unwrap();
        let expected = match op {
            "update" => "Ok(Gone)",
            "touch" => "Ok(false)",
            _ => "Ok(Gone)",
        };
        assert_eq!(answer, expected, "{op} after waiting past the expiry");
        assert!(
            store.get(&id).await.unwrap().is_none(),
            "{op} revived the record"
        );
    }
    store.drop_table().await.unwrap();
}

/// Table names differing only in case are two tables on a server that does
/// not fold names (`lower_case_table_names = 0`, Linux's default), so their
/// migration records must not collide either.
#[tokio::test]
async fn tables_named_alike_but_for_case_migrate_separately() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let folds: i64 = sqlx::query_scalar("SELECT CAST(@@lower_case_table_names AS SIGNED)")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let upper = MysqlStore::new(store.pool().clone(), &store.table().to_ascii_uppercase()).unwrap();
    upper.migrate().await.unwrap();
    let s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    upper.create(&s).await.unwrap();
    if folds == 0 {
        assert!(
            !store.exists(&s.id()).await.unwrap(),
            "one table for two names"
        );
        assert_eq!(applied(&upper).await, [1, 2]);
        upper.drop_table().await.unwrap();
        assert_eq!(
            applied(&store).await,
            [1, 2],
            "dropping {} forgot {}",
            upper.table(),
            store.table()
        );
    } else {
        upper.drop_table().await.unwrap();
    }
    store.drop_table().await.unwrap();
}

/// A live session bound to `user`.
fn bound(user: &str) -> Session {
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    s.set_user(Some(UserBinding::new(user, BTreeMap::new()).unwrap()));
    s
}

async fn ids_of(store: &MysqlStore, user: &str) -> BTreeSet<server_session::SessionId> {
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
    let t = probe.table().to_owned();
    sqlx::raw_sql(&format!(
        "INSERT INTO `{m}` (table_name, version, applied_at) VALUES ('{t}', 1, 0);
         CREATE TABLE `{t}` (id BINARY(32) NOT NULL PRIMARY KEY, record LONGBLOB NOT NULL,
             expires_at BIGINT NOT NULL, version BIGINT NOT NULL,
             INDEX expires_at (expires_at)) ENGINE = InnoDB;",
        m = server_session::mysql::MIGRATIONS_TABLE
    ))
    .execute(probe.pool())
    .await
    .unwrap();
    let mut old = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    old.insert("cart", &3u8).unwrap();
    sqlx::query(&format!(
        "INSERT INTO `{t}` (id, record, expires_at, version) VALUES (?, ?, ?, 1)"
    ))
    .bind(&old.id().as_bytes()[..])
    .bind(codec::encode(&old, 1).unwrap())
    .bind(old.expires_at_millis())
    .execute(probe.pool())
    .await
    .unwrap();

    let a = MysqlStore::new(probe.pool().clone(), &t).unwrap();
    let b = MysqlStore::new(probe.pool().clone(), &t).unwrap();
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    a.migrate().await.unwrap();
    assert_eq!(applied(&a).await, [1, 2]);

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
    let indexed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.statistics
         WHERE table_schema = DATABASE() AND table_name = ? AND index_name = 'user_key'
         AND column_name = 'user_key'",
    )
    .bind(&t)
    .fetch_one(a.pool())
    .await
    .unwrap();
    assert_eq!(indexed, 1, "the user index is missing");
    assert_eq!(
        a.revoke_user("ada", Some(&fresh.id())).await.unwrap(),
        [old.id()]
    );
    assert!(a.get(&old.id()).await.unwrap().is_none());
    assert_eq!(ids_of(&b, "ada").await, BTreeSet::from([fresh.id()]));
    a.drop_table().await.unwrap();
}

/// MySQL DDL is not transactional: a process that died after a step of
/// migration 2 but before its record left the column (or the column and
/// the index) in place. The next migration finishes the step instead of
/// failing on what is there.
#[tokio::test]
async fn a_half_applied_user_index_migration_is_finished() {
    for (done, label) in [
        ("ALTER TABLE {t} ADD COLUMN user_key VARBINARY(256) NULL", "column"),
        (
            "ALTER TABLE {t} ADD COLUMN user_key VARBINARY(256) NULL, ADD INDEX user_key (user_key)",
            "column and index",
        ),
    ] {
        let Some(store) = fresh_store().await else {
            return;
        };
        let t = format!("`{}`", store.table());
        sqlx::raw_sql(&format!(
            "DELETE FROM `{m}` WHERE table_name = '{name}' AND version = 2;
             ALTER TABLE {t} DROP INDEX user_key, DROP COLUMN user_key;
             {done};",
            m = server_session::mysql::MIGRATIONS_TABLE,
            name = store.table(),
            done = done.replace("{t}", &t)
        ))
        .execute(store.pool())
        .await
        .unwrap();
        assert_eq!(applied(&store).await, [1], "{label}");
        store.migrate().await.unwrap();
        assert_eq!(applied(&store).await, [1, 2], "{label}");
        let s = bound("ada");
        store.create(&s).await.unwrap();
        assert_eq!(ids_of(&store, "ada").await, BTreeSet::from([s.id()]), "{label}");
        store.drop_table().await.unwrap();
    }
}

/// Keys compare byte for byte, whatever MySQL's string comparison rules
/// (case-insensitive collations, trailing spaces padded away, canonically
/// equivalent characters), and the longest keys (256 bytes) fit.
#[tokio::test]
async fn user_keys_compare_byte_for_byte() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let (longest, longest_wide) = ("a".repeat(256), "ä".repeat(128));
    let keys = [
        "ada",
        "Ada",
        "ada ",
        "ada  ",
        "ada\u{a0}",
        "äda",
        "a\u{308}da",
        "ADA",
        &longest,
        &longest_wide,
    ];
    let mut made = Vec::new();
    for key in keys {
        let s = bound(key);
        store.create(&s).await.unwrap();
        made.push((key, s.id()));
    }
    for (key, id) in &made {
        assert_eq!(ids_of(&store, key).await, BTreeSet::from([*id]), "{key:?}");
    }
    for (key, id) in made {
        assert_eq!(store.revoke_user(key, None).await.unwrap(), [id], "{key:?}");
    }
    store.drop_table().await.unwrap();
}

/// `revoke_user` locks the rows it found and deletes exactly those: a row
/// rebound to another user by a concurrent writer is spared and not
/// reported, a row saved under the same user is deleted.
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
            "UPDATE `{}` SET user_key = ?, version = version + 1 WHERE id = ?",
            store.table()
        ))
        .bind(user.as_bytes())
        .bind(&s.id().as_bytes()[..])
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

/// A batch of `revoke_user` that InnoDB rolls back to break a deadlock runs
/// again rather than failing the revoke, and answers each row once. The
/// deadlock is made on purpose: another transaction, heavier (it wrote 50
/// rows elsewhere, so InnoDB spares it), holds the user's higher row while
/// the revoke holds the lower, then asks for the lower.
#[tokio::test]
async fn a_revoke_chosen_as_a_deadlock_victim_runs_again() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    let (mut low, mut high) = (bound("ada"), bound("ada"));
    if low.id().as_bytes() > high.id().as_bytes() {
        std::mem::swap(&mut low, &mut high);
    }
    store.create(&low).await.unwrap();
    store.create(&high).await.unwrap();
    let t = format!("`{}`", store.table());
    let weight = format!("`{}_weight`", store.table());
    let other = sqlx::MySqlPool::connect(&common::mysql_url())
        .await
        .unwrap();
    sqlx::query(&format!("CREATE TABLE {weight} (n INT PRIMARY KEY)"))
        .execute(&other)
        .await
        .unwrap();
    let mut tx = other.begin().await.unwrap();
    let values: Vec<String> = (0..50).map(|n| format!("({n})")).collect();
    sqlx::query(&format!(
        "INSERT INTO {weight} VALUES {}",
        values.join(", ")
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let lock = format!("SELECT id FROM {t} WHERE id = ? FOR UPDATE");
    let row = |s: &Session| s.id().as_bytes().to_vec();
    sqlx::query(&lock)
        .bind(row(&high))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let revoking = tokio::spawn({
        let store = store.clone();
        async move { store.revoke_user("ada", None).await }
    });
    // The revoke holds `low` and waits for `high`; asking for `low` closes
    // the cycle, and InnoDB rolls back the lighter transaction, the revoke's.
    until_blocked(&store).await;
    sqlx::query(&lock)
        .bind(row(&low))
        .fetch_one(&mut *tx)
        .await
        .expect("InnoDB chose the revoke, the lighter transaction, as the victim");
    // The revoke's next try waits for `low` until this commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.unwrap();
    let mut revoked = revoking.await.unwrap().expect("the retried batch");
    revoked.sort_by_key(|id| *id.as_bytes());
    assert_eq!(revoked, [low.id(), high.id()], "each row answered once");
    assert!(!store.exists(&low.id()).await.unwrap());
    assert!(!store.exists(&high.id()).await.unwrap());
    sqlx::query(&format!("DROP TABLE {weight}"))
        .execute(&other)
        .await
        .unwrap();
    store.drop_table().await.unwrap();
}

/// A revoke locks and deletes only its user's rows: it finishes while
/// another transaction holds a row of another user, the table's lowest,
/// and leaves that user's sessions. (A `DELETE … WHERE id IN (…)`, which
/// the planner ran as a full scan on a small table, waited for that row,
/// and two users' revokes deadlocked on each other's rows.)
#[tokio::test]
async fn a_revoke_passes_over_rows_another_transaction_holds() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let mut ids: Vec<_> = (0..12).map(|_| SessionToken::generate().id()).collect();
    ids.sort_by_key(|id| *id.as_bytes());
    // Bob's rows are the even ones from the lowest, so a scan from the
    // start meets one of his first.
    let sessions: Vec<Session> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut s = Session::new(*id, Duration::from_secs(3600));
            let user = if i % 2 == 0 { "bob" } else { "ada" };
            s.set_user(Some(UserBinding::new(user, BTreeMap::new()).unwrap()));
            s
        })
        .collect();
    for s in &sessions {
        store.create(s).await.unwrap();
    }
    let held = locking(
        &store,
        "SELECT id FROM {t} WHERE id = ? FOR UPDATE",
        &[&sessions[0].id().as_bytes()[..]],
    )
    .await;
    let mut revoked = tokio::time::timeout(Duration::from_secs(3), store.revoke_user("ada", None))
        .await
        .expect("the revoke waited for a row of another user")
        .unwrap();
    revoked.sort_by_key(|id| *id.as_bytes());
    let ada: Vec<_> = sessions
        .iter()
        .filter(|s| s.user_key() == Some("ada"))
        .map(Session::id)
        .collect();
    assert_eq!(revoked, ada);
    assert_eq!(ids_of(&store, "bob").await.len(), 6);
    held.rollback().await.unwrap();
    store.drop_table().await.unwrap();
}

/// A revoke given up on at any point (its timeout, or its caller, dropped
/// it: here after 1, 2, … polls until one finishes, each stage's reply
/// given 30 ms to arrive; a slower one only moves the drop a stage earlier)
/// leaves no pooled connection inside a transaction, and the pool keeps
/// working: a session created next is committed, seen from another
/// connection.
#[tokio::test]
async fn a_revoke_dropped_at_any_point_leaves_the_pool_clean() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    for polls in 1..=40 {
        let config = MysqlConfig {
            pool_size: 1,
            ..common::mysql::config(common::unique("t_"))
        };
        let Some(store) = common::mysql::store(config).await else {
            return;
        };
        let other = sqlx::MySqlPool::connect(&common::mysql_url())
            .await
            .unwrap();
        // Every statement prepared once on the one connection.
        store.create(&bound("warm")).await.unwrap();
        store.revoke_user("warm", None).await.unwrap();
        store.create(&bound("ada")).await.unwrap();
        store.create(&bound("ada")).await.unwrap();
        let finished = {
            let mut revoke = std::pin::pin!(store.revoke_user("ada", None));
            let mut cx = Context::from_waker(Waker::noop());
            let mut finished = false;
            for _ in 0..polls {
                if let Poll::Ready(revoked) = revoke.as_mut().poll(&mut cx) {
                    assert_eq!(revoked.unwrap().len(), 2);
                    finished = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            finished
        };
        let in_transaction: i64 = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::query_scalar("SELECT CAST(@@in_transaction AS SIGNED)").fetch_one(store.pool()),
        )
        .await
        .unwrap_or_else(|_| panic!("after {polls} polls, the pool gave no connection"))
        .unwrap();
        assert_eq!(in_transaction, 0, "after {polls} polls");
        let s = bound("bob");
        store.create(&s).await.unwrap();
        let seen: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM `{}` WHERE id = ?",
            store.table()
        ))
        .bind(&s.id().as_bytes()[..])
        .fetch_one(&other)
        .await
        .unwrap();
        assert_eq!(seen, 1, "after {polls} polls, a create was not committed");
        store.drop_table().await.unwrap();
        if finished {
            return;
        }
    }
    panic!("the revoke never finished within 40 polls");
}

/// A pooled connection the server closed while it sat unused is replaced
/// (see `common::a_closed_connection_is_replaced`).
#[tokio::test]
async fn a_connection_the_server_closed_is_replaced() {
    let config = MysqlConfig {
        pool_size: 1,
        ..common::mysql::config(common::unique("t_"))
    };
    let Some(store) = common::mysql::store(config).await else {
        return;
    };
    let pool = store.pool().clone();
    // Connected once, before: a slow connect inside `kill` could let the
    // pooled connection sit past `PING_AFTER_IDLE` in the round meant to
    // hand it out unchecked.
    let admin = Arc::new(tokio::sync::Mutex::new(
        <sqlx::MySqlConnection as sqlx::Connection>::connect(&common::mysql_url())
            .await
            .unwrap(),
    ));
    let kill = || {
        let (pool, admin) = (pool.clone(), admin.clone());
        async move {
            // The pool has one connection: this is the one the store uses.
            let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
                .fetch_one(&pool)
                .await
                .unwrap();
            // sqlx checks a connection as it goes back to the pool (in a
            // task of its own): kill it only once it is back, idle.
            while pool.num_idle() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sqlx::query(&format!("KILL CONNECTION {id}"))
                .execute(&mut *admin.lock().await)
                .await
                .unwrap();
        }
    };
    let ping_after_idle = server_session::mysql::PING_AFTER_IDLE;
    common::a_closed_connection_is_replaced(&store, ping_after_idle, kill).await;
    store.drop_table().await.unwrap();
}

/// A miss is explained by a second read, a later statement: a record
/// deleted while an update waited for its row, then created again under
/// the same id at the same version before that read, was at version 1 or
/// absent at every instant. The update answers Gone, not Conflict, which
/// would send the caller to re-read the new record and write its changes
/// onto it. A proxy holds the second read until the create committed.
#[tokio::test]
async fn a_record_deleted_and_created_again_before_the_miss_is_explained_is_gone() {
    use common::proxy::{Mode, Proxy};
    let direct = common::mysql::config(common::unique("t_"));
    let Some(direct) = common::mysql::store(direct).await else {
        return;
    };
    let proxy = Proxy::start(common::upstream(&common::mysql_url(), 3306)).await;
    let through = format!("mysql://root@{}/test", proxy.addr);
    let proxied = MysqlStore::connect_with(MysqlConfig {
        url: through,
        pool_size: 1,
        ..common::mysql::config(direct.table().to_owned())
    })
    .await
    .unwrap();
    let proxied = Arc::new(proxied);
    let s = Session::new(SessionToken::generate().id(), Duration::from_secs(600));
    direct.create(&s).await.unwrap();
    let id = s.id().as_bytes().to_vec();
    let tx = locking(&direct, "DELETE FROM {t} WHERE id = ?", &[&id]).await;
    let waiting = tokio::spawn({
        let (store, s) = (proxied.clone(), s.clone());
        async move { store.update(&s, 1).await }
    });
    until_blocked(&direct).await;
    // The second read's text goes out when the fresh connection prepares it.
    let fired = proxy.switch().arm(b"version <=> ?".to_vec(), Mode::Stall);
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), fired)
        .await
        .expect("the second read went out")
        .unwrap();
    direct.create(&s).await.unwrap();
    proxy.set(Mode::Pass);
    let outcome = waiting.await.unwrap().unwrap();
    direct.drop_table().await.unwrap();
    assert_eq!(outcome, UpdateOutcome::Gone);
}

//! Review of 0fb5079 (PostgreSQL), against the real server: update,
//! delete_if and touch lock and judge the row in a one-time filter, then
//! explain a miss with a second read; the pools check only connections
//! idle for `PING_AFTER_IDLE`.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::postgres::until_blocked;
use server_session::postgres::sqlx;
use server_session::{
    from_unix_millis, now_millis, DeleteOutcome, Error, PostgresConfig, PostgresStore, Session,
    SessionInterface, SessionToken, UpdateOutcome,
};

const SCHEMA: &str = "session_review_pool";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn session(ttl_ms: i64) -> Session {
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    s.set_expires_at_millis(now_millis() + ttl_ms);
    s
}

/// A migrated store; `options` goes into the URL (`-c name=value ...`).
async fn store_with(pool_size: u32, options: Option<&str>) -> Option<PostgresStore> {
    let base = common::database_url();
    let url = match options {
        Some(o) => format!(
            "{base}?options={}",
            o.replace(' ', "%20").replace('=', "%3D")
        ),
        None => base.clone(),
    };
    let config = PostgresConfig {
        schema: Some(SCHEMA.into()),
        table: common::unique("p_"),
        pool_size,
        ..PostgresConfig::new(url)
    };
    let store = match PostgresStore::connect_with(config).await {
        Ok(store) => store,
        Err(e) => {
            common::unreachable("postgres", &base, e);
            return None;
        }
    };
    store.migrate().await.expect("migrate");
    Some(store)
}

async fn admin() -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(&common::database_url())
        .await
        .unwrap()
}

async fn row(store: &PostgresStore, id: &[u8]) -> Option<(i64, i64)> {
    sqlx::query_as(&format!(
        "SELECT version, expires_at FROM {} WHERE id = $1",
        store.table()
    ))
    .bind(id)
    .fetch_optional(&mut admin().await)
    .await
    .unwrap()
}

/// Warms every pooled connection's prepared statements past PostgreSQL's
/// five custom plans (so a generic plan is cached where the planner likes it).
async fn warm(store: &PostgresStore) {
    for _ in 0..12 {
        let s = session(60_000);
        store.create(&s).await.unwrap();
        let mut next = s.clone();
        next.insert("w", &1u8).unwrap();
        assert!(matches!(
            store.update(&next, 1).await.unwrap(),
            UpdateOutcome::Updated { .. }
        ));
        assert!(store
            .touch(&s.id(), from_unix_millis(now_millis() + 90_000))
            .await
            .unwrap());
        assert_eq!(
            store.update(&next, 1).await.unwrap(),
            UpdateOutcome::Conflict
        );
        assert_eq!(
            store.delete_if(&s.id(), 1).await.unwrap(),
            DeleteOutcome::Conflict
        );
        assert_eq!(
            store.delete_if(&s.id(), 2).await.unwrap(),
            DeleteOutcome::Deleted
        );
        assert_eq!(store.update(&next, 2).await.unwrap(), UpdateOutcome::Gone);
    }
}

/// Each blocker (a second connection's transaction on the row), then the
/// store's update of version 1 waiting behind it: the outcome and the row
/// after. `$ID` is the row's id.
async fn update_behind_blockers(store: Arc<PostgresStore>) -> Vec<String> {
    update_behind(store, &CASES).await
}

const CASES: [(&str, &str, Option<i64>); 4] = [
    // Same version, expiry moved: our write must apply, on top of it.
    (
        "UPDATE {t} SET expires_at = expires_at + 1 WHERE id = $ID",
        "Updated { version: 2 }",
        Some(2),
    ),
    // Version moved: Conflict, nothing written.
    (
        "UPDATE {t} SET version = 7 WHERE id = $ID",
        "Conflict",
        Some(7),
    ),
    ("DELETE FROM {t} WHERE id = $ID", "Gone", None),
    // Expired by the blocker: Gone, and not revived.
    (
        "UPDATE {t} SET expires_at = 1 WHERE id = $ID",
        "Gone",
        Some(1),
    ),
];

async fn update_behind(
    store: Arc<PostgresStore>,
    cases: &[(&str, &str, Option<i64>)],
) -> Vec<String> {
    let mut failures = Vec::new();
    for &(sql, want, want_version) in cases {
        let s = session(600_000);
        store.create(&s).await.unwrap();
        let id = format!("'\\x{}'::bytea", hex(&s.id().as_bytes()[..]));
        let mut tx = store.pool().begin().await.unwrap();
        for part in sql.split("; ") {
            let done = sqlx::query(&part.replace("{t}", store.table()).replace("$ID", &id))
                .execute(&mut *tx)
                .await
                .unwrap();
            assert_eq!(done.rows_affected(), 1, "{part}");
        }
        let waiting = tokio::spawn({
            let (store, s) = (store.clone(), s.clone());
            async move {
                let mut next = s.clone();
                next.insert("ours", &1u8).unwrap();
                store.update(&next, 1).await
            }
        });
        until_blocked(&store).await;
        tx.commit().await.unwrap();
        let outcome = format!("{:?}", waiting.await.unwrap().unwrap());
        let after = row(&store, &s.id().as_bytes()[..]).await.map(|(v, _)| v);
        let ours = store
            .get(&s.id())
            .await
            .unwrap()
            .is_some_and(|got| got.contains_key("ours"));
        if outcome != want || after != want_version || ours != (want_version == Some(2)) {
            failures.push(format!(
                "after `{sql}`: answered {outcome} (want {want}), row version {after:?} (want {want_version:?}), our data stored: {ours}"
            ));
        }
    }
    failures
}

/// The row replaced atomically (one transaction deletes it and inserts it
/// again, same id, same version 1, same record) while the update waited:
/// the row the update locked is gone, so it answers Gone and writes
/// nothing ("Conflict" would claim a live record at another version, and
/// send the caller to write its changes onto the new record).
#[tokio::test]
async fn an_atomic_replace_at_the_same_version_is_no_conflict() {
    let Some(store) = store_with(4, None).await else {
        return;
    };
    let store = Arc::new(store);
    let failures = update_behind(
        store.clone(),
        &[(
            "WITH old AS (DELETE FROM {t} WHERE id = $ID RETURNING *) INSERT INTO {t} SELECT * FROM old",
            "Gone",
            Some(1),
        )],
    )
    .await;
    store.drop_table().await.unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn update_behind_a_writer_acts_on_what_it_left_custom_plans() {
    let Some(store) = store_with(4, None).await else {
        return;
    };
    let store = Arc::new(store);
    let failures = update_behind_blockers(store.clone()).await;
    store.drop_table().await.unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn update_behind_a_writer_acts_on_what_it_left_generic_plans_big_table() {
    let Some(store) = store_with(2, Some("-c plan_cache_mode=force_generic_plan")).await else {
        return;
    };
    // Many rows, analyzed, so a scan choice could matter.
    sqlx::query(&format!(
        "INSERT INTO {} (id, record, expires_at, version)
         SELECT decode(lpad(to_hex(i), 64, '0'), 'hex'), '\\x00'::bytea, 99999999999999, 1
         FROM generate_series(1, 50000) AS i",
        store.table()
    ))
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(&format!("ANALYZE {}", store.table()))
        .execute(store.pool())
        .await
        .unwrap();
    warm(&store).await;
    let store = Arc::new(store);
    let failures = update_behind_blockers(store.clone()).await;
    store.drop_table().await.unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Same, with sequential scans only (the write's scan reads every row: the
/// one-time filter must still gate it, and the judged row be the written one).
#[tokio::test]
async fn update_behind_a_writer_acts_on_what_it_left_seqscan_generic() {
    let Some(store) = store_with(
        2,
        Some("-c plan_cache_mode=force_generic_plan -c enable_indexscan=off -c enable_bitmapscan=off"),
    )
    .await
    else {
        return;
    };
    warm(&store).await;
    let store = Arc::new(store);
    let failures = update_behind_blockers(store.clone()).await;
    store.drop_table().await.unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Counters incremented by racing read-modify-write loops (update on the
/// version read, reload on Conflict), with touches and gets in between and
/// generic plans: every Updated is one increment, none lost, none applied
/// without being reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_increments_are_counted_exactly() {
    let Some(store) = store_with(6, Some("-c plan_cache_mode=force_generic_plan")).await else {
        return;
    };
    warm(&store).await;
    let store = Arc::new(store);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut s = session(600_000);
        s.insert("n", &0u64).unwrap();
        store.create(&s).await.unwrap();
        ids.push(s.id());
    }
    let mut tasks = Vec::new();
    for t in 0..12usize {
        let (store, id) = (store.clone(), ids[t % ids.len()]);
        tasks.push(tokio::spawn(async move {
            let mut wins = 0u64;
            let mut conflicts = 0u64;
            for i in 0..60 {
                if i % 7 == 0 {
                    assert!(store
                        .touch(&id, from_unix_millis(now_millis() + 600_000 + i))
                        .await
                        .unwrap());
                }
                loop {
                    let cur = store.get(&id).await.unwrap().expect("live");
                    let n: u64 = cur.get("n").unwrap().unwrap();
                    let mut next = cur.clone();
                    next.insert("n", &(n + 1)).unwrap();
                    match store.update(&next, cur.version()).await.unwrap() {
                        UpdateOutcome::Updated { version } => {
                            assert_eq!(version, cur.version() + 1);
                            wins += 1;
                            break;
                        }
                        UpdateOutcome::Conflict => conflicts += 1,
                        UpdateOutcome::Gone => panic!("gone while live"),
                    }
                }
            }
            (wins, conflicts)
        }));
    }
    let mut total = 0;
    let mut conflicts = 0;
    for task in tasks {
        let (w, c) = task.await.unwrap();
        total += w;
        conflicts += c;
    }
    let mut sum = 0;
    for id in &ids {
        let s = store.get(id).await.unwrap().expect("live");
        let n: u64 = s.get("n").unwrap().unwrap();
        assert_eq!(s.version(), n + 1, "version counts the increments");
        sum += n;
    }
    eprintln!("updates {total}, conflicts {conflicts}");
    assert_eq!(sum, total);
    store.drop_table().await.unwrap();
}

/// delete_if and update racing revoke-like deletes and expiry: a delete
/// reported Deleted removed the row; an update reported Gone left no live
/// row; nothing comes back after a delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_deletes_and_updates_never_revive() {
    let Some(store) = store_with(6, Some("-c plan_cache_mode=force_generic_plan")).await else {
        return;
    };
    warm(&store).await;
    let store = Arc::new(store);
    for round in 0..40 {
        let s = session(if round % 3 == 0 { 30 } else { 600_000 });
        store.create(&s).await.unwrap();
        let mut tasks = Vec::new();
        for n in 0..6 {
            let (store, s) = (store.clone(), s.clone());
            tasks.push(tokio::spawn(async move {
                match n % 3 {
                    0 => {
                        let mut next = s.clone();
                        next.set_expires_at_millis(now_millis() + 600_000);
                        format!("u{:?}", store.update(&next, 1).await.unwrap())
                    }
                    1 => format!("d{:?}", store.delete_if(&s.id(), 1).await.unwrap()),
                    _ => format!(
                        "t{:?}",
                        store
                            .touch(&s.id(), from_unix_millis(now_millis() + 600_000))
                            .await
                            .unwrap()
                    ),
                }
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let deleted = outcomes.iter().any(|o| o == "dDeleted");
        let updated = outcomes
            .iter()
            .filter(|o| o.starts_with("uUpdated"))
            .count();
        let dels = outcomes.iter().filter(|o| *o == "dDeleted").count();
        assert!(updated + dels <= 1, "round {round}: {outcomes:?}");
        let live = store.get(&s.id()).await.unwrap();
        if deleted {
            assert!(
                live.is_none(),
                "round {round}: deleted but live: {outcomes:?}"
            );
            assert!(row(&store, &s.id().as_bytes()[..]).await.is_none());
        }
        if updated == 1 {
            assert_eq!(
                live.map(|l| l.version()),
                Some(2),
                "round {round}: {outcomes:?}"
            );
        }
    }
    store.drop_table().await.unwrap();
}

/// A pooled connection killed inside PING_AFTER_IDLE: update, delete_if and
/// touch on it fail with an error that says they may have applied
/// (Backend), never Unavailable (which promises nothing was sent), and
/// nothing was applied; the next call works.
#[tokio::test]
async fn a_write_on_a_connection_killed_inside_the_window() {
    let Some(store) = store_with(1, None).await else {
        return;
    };
    let mut admin = admin().await;
    let s = session(600_000);
    store.create(&s).await.unwrap();
    let mut failures = Vec::new();
    for op in ["update", "delete_if", "touch", "get"] {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .unwrap();
        while store.pool().num_idle() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert!(killed);
        let before = row(&store, &s.id().as_bytes()[..]).await;
        let result = match op {
            "update" => {
                let mut next = s.clone();
                next.insert("x", &1u8).unwrap();
                store.update(&next, 1).await.map(|o| format!("{o:?}"))
            }
            "delete_if" => store.delete_if(&s.id(), 1).await.map(|o| format!("{o:?}")),
            "touch" => store
                .touch(&s.id(), from_unix_millis(now_millis() + 900_000))
                .await
                .map(|o| format!("{o:?}")),
            _ => store
                .get(&s.id())
                .await
                .map(|o| format!("{:?}", o.map(|s| s.version()))),
        };
        let after = row(&store, &s.id().as_bytes()[..]).await;
        match &result {
            Err(e @ Error::Backend { .. }) => {
                assert!(e.may_have_applied());
                if before != after {
                    failures.push(format!(
                        "{op}: failed ({e}) but applied: {before:?} -> {after:?}"
                    ));
                }
            }
            Err(e) => failures.push(format!("{op}: {e:?}")),
            Ok(o) => eprintln!("{op}: went through ({o}): the pool noticed the kill"),
        }
    }
    let again = store.get(&s.id()).await.unwrap();
    assert_eq!(again.map(|g| g.version()), Some(1));
    store.drop_table().await.unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The judge read of a miss runs on the same connection; the server kills
/// that connection between the write and the read (a blocker keeps the
/// write waiting, the kill comes once the blocker moved the version): the
/// caller hears an error that allows the write to have applied, never a
/// wrong Conflict/Gone, and nothing was written.
#[tokio::test]
async fn a_kill_while_the_write_waits_is_an_ambiguous_error() {
    let Some(store) = store_with(2, None).await else {
        return;
    };
    let store = Arc::new(store);
    let s = session(600_000);
    store.create(&s).await.unwrap();
    let id = format!("'\\x{}'::bytea", hex(&s.id().as_bytes()[..]));
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&format!(
        "UPDATE {} SET version = 5 WHERE id = {id}",
        store.table()
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let waiting = tokio::spawn({
        let (store, s) = (store.clone(), s.clone());
        async move { store.update(&s, 1).await }
    });
    until_blocked(&store).await;
    let mut admin = admin().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0",
    )
    .bind(store.table())
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    tx.commit().await.unwrap();
    let result = waiting.await.unwrap();
    assert!(
        matches!(&result, Err(e) if e.may_have_applied()),
        "{result:?}"
    );
    assert_eq!(
        row(&store, &s.id().as_bytes()[..]).await.map(|r| r.0),
        Some(5)
    );
    store.drop_table().await.unwrap();
}

/// SQLite's reader pool with the hook: readers idle past the window are
/// pinged and still read; readers used back to back read what the writer
/// committed (no stale snapshot from an unpinged reader).
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_readers_after_idle_and_back_to_back() {
    use server_session::{SqliteConfig, SqliteStore};
    let dir = std::env::temp_dir().join(common::unique("rvpool_"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("s.db").display());
    let store = SqliteStore::connect_with(SqliteConfig {
        readers: 2,
        ..SqliteConfig::new(url)
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let s = session(600_000);
    store.create(&s).await.unwrap();
    for round in 0..40u64 {
        let cur = store.get(&s.id()).await.unwrap().expect("live");
        assert_eq!(cur.version(), round + 1);
        let mut next = cur.clone();
        next.insert("r", &round).unwrap();
        assert!(matches!(
            store.update(&next, cur.version()).await.unwrap(),
            UpdateOutcome::Updated { .. }
        ));
        if round % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    }
    assert!(store.delete_if(&s.id(), 41).await.unwrap() == DeleteOutcome::Deleted);
    assert!(store.get(&s.id()).await.unwrap().is_none());
    std::fs::remove_dir_all(&dir).ok();
}

/// The miss path's second read is a later statement: a record deleted
/// while the update waited for its lock, then created again under the same
/// id at the same version before that read, is answered `Conflict`
/// ("live at another version"), though the record was at version 1 or
/// absent at every instant (Gone or Updated would be true). Forced with a
/// proxy that holds the second read until the create committed.
#[tokio::test]
async fn a_delete_and_recreate_between_the_write_and_its_judge_read_is_no_conflict() {
    use common::proxy::{Mode, Proxy};
    let proxy = Proxy::start(common::upstream(&common::database_url(), 5432)).await;
    let url = format!("postgres://postgres@{}/test", proxy.addr);
    let config = PostgresConfig {
        schema: Some(SCHEMA.into()),
        table: common::unique("x_"),
        pool_size: 1,
        ..PostgresConfig::new(url)
    };
    let Ok(proxied) = PostgresStore::connect_with(config.clone()).await else {
        return common::unreachable("postgres", "proxy", "no server");
    };
    proxied.migrate().await.unwrap();
    let direct = PostgresStore::connect_with(PostgresConfig {
        url: common::database_url(),
        ..config
    })
    .await
    .unwrap();
    let proxied = Arc::new(proxied);
    let s = session(600_000);
    direct.create(&s).await.unwrap();
    let id = format!("'\\x{}'::bytea", hex(&s.id().as_bytes()[..]));
    let mut tx = direct.pool().begin().await.unwrap();
    sqlx::query(&format!("DELETE FROM {} WHERE id = {id}", direct.table()))
        .execute(&mut *tx)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let (store, s) = (proxied.clone(), s.clone());
        async move { store.update(&s, 1).await }
    });
    until_blocked(&direct).await;
    let fired = proxy.switch().arm(b")::int::bigint".to_vec(), Mode::Stall);
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), fired)
        .await
        .expect("the judge read went out")
        .unwrap();
    direct.create(&s).await.unwrap();
    proxy.set(Mode::Pass);
    let outcome = waiting.await.unwrap().unwrap();
    direct.drop_table().await.unwrap();
    assert_ne!(
        outcome,
        UpdateOutcome::Conflict,
        "the record was never live at another version than 1"
    );
}

//! Adversarial review of store-mysql's one-statement `update`, `delete_if`
//! and `touch` (`WHERE id = ? AND version = ? AND expires_at > SYSDATE`),
//! with a second read on a miss, against the real server.
#![cfg(feature = "mysql")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::mysql::{locking, until_blocked};
use server_session::mysql::sqlx;
use server_session::time::{Duration as TimeDuration, OffsetDateTime};
use server_session::{
    now_millis, DeleteOutcome, MysqlConfig, MysqlStore, Session, SessionInterface, SessionToken,
    UpdateOutcome,
};

async fn store_with(timeout: Duration) -> Option<MysqlStore> {
    common::mysql::store(MysqlConfig {
        operation_timeout: timeout,
        ..common::mysql::config(common::unique("t_"))
    })
    .await
}

async fn fresh_store() -> Option<MysqlStore> {
    store_with(Duration::from_secs(10)).await
}

async fn stored(store: &MysqlStore, id: &[u8]) -> Option<(i64, i64)> {
    sqlx::query_as(&format!(
        "SELECT version, expires_at FROM `{}` WHERE id = ?",
        store.table()
    ))
    .bind(id)
    .fetch_optional(store.pool())
    .await
    .unwrap()
}

fn later(hours: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + TimeDuration::hours(hours)
}

/// `touch` answers from the affected-row count: a touch that leaves the
/// expiry as it is (an earlier or the same one) must still answer `true`
/// for a live record (CLIENT_FOUND_ROWS); `update` with an earlier expiry
/// keeps the stored one (GREATEST).
#[tokio::test]
async fn touch_keeping_the_expiry_is_true_and_update_never_shortens() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    store.create(&s).await.unwrap();
    let id = s.id();
    let (_, stored_at) = stored(&store, &id.as_bytes()[..]).await.unwrap();

    let earlier = OffsetDateTime::now_utc() + TimeDuration::minutes(5);
    assert!(store.touch(&id, earlier).await.unwrap(), "earlier touch");
    let same = server_session::from_unix_millis(stored_at);
    assert!(store.touch(&id, same).await.unwrap(), "same-expiry touch");
    assert!(
        store.touch(&id, same).await.unwrap(),
        "same-expiry touch again"
    );
    assert_eq!(
        stored(&store, &id.as_bytes()[..]).await.unwrap().1,
        stored_at
    );

    s.set_expires_at_millis(now_millis() + 60_000);
    s.insert("k", &1).unwrap();
    assert_eq!(
        store.update(&s, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    );
    assert_eq!(
        stored(&store, &id.as_bytes()[..]).await.unwrap(),
        (2, stored_at)
    );
    // Same data again at the right version: still a write.
    assert_eq!(
        store.update(&s, 2).await.unwrap(),
        UpdateOutcome::Updated { version: 3 }
    );
    // Stale version on a live record: Conflict, not Gone.
    assert_eq!(store.update(&s, 2).await.unwrap(), UpdateOutcome::Conflict);
    assert_eq!(
        store.delete_if(&id, 2).await.unwrap(),
        DeleteOutcome::Conflict
    );
    assert_eq!(
        store.delete_if(&id, 3).await.unwrap(),
        DeleteOutcome::Deleted
    );
    assert_eq!(store.delete_if(&id, 3).await.unwrap(), DeleteOutcome::Gone);
    assert!(!store.touch(&id, later(1)).await.unwrap());
    store.drop_table().await.unwrap();
}

/// A lock holder that extends an about-to-expire record: the waiting write
/// must judge the row as committed after the wait (live), not the version
/// it first saw (expired by then).
#[tokio::test]
async fn a_write_waiting_behind_an_extension_sees_the_extension() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    for op in ["update", "touch", "delete_if"] {
        let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
        store.create(&s).await.unwrap();
        let id = s.id();
        let idb = id.as_bytes().to_vec();
        sqlx::query(&format!(
            "UPDATE `{}` SET expires_at = CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED) + 600
             WHERE id = ?",
            store.table()
        ))
        .bind(&idb[..])
        .execute(store.pool())
        .await
        .unwrap();
        let tx = locking(
            &store,
            "UPDATE {t} SET expires_at = expires_at + 3600000 WHERE id = ?",
            &[&idb[..]],
        )
        .await;
        s.insert("k", &1).unwrap();
        let waiting = tokio::spawn({
            let (store, s) = (store.clone(), s.clone());
            async move {
                match op {
                    "update" => format!("{:?}", store.update(&s, 1).await),
                    "touch" => format!("{:?}", store.touch(&s.id(), later(2)).await),
                    _ => format!("{:?}", store.delete_if(&s.id(), 1).await),
                }
            }
        });
        until_blocked(&store).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        tx.commit().await.unwrap();
        let answer = waiting.await.unwrap();
        let expected = match op {
            "update" => "Ok(Updated { version: 2 })",
            "touch" => "Ok(true)",
            _ => "Ok(Deleted)",
        };
        assert_eq!(answer, expected, "{op} behind an extension");
    }
    store.drop_table().await.unwrap();
}

/// Lock holders that change the version, delete (as `revoke_user` does) or
/// roll back: the waiting write answers by the row as committed.
#[tokio::test]
async fn writes_waiting_behind_concurrent_writers_answer_by_the_committed_row() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    let cases = [
        ("UPDATE {t} SET version = 7 WHERE id = ?", true, "Conflict"),
        ("DELETE FROM {t} WHERE id = ?", true, "Gone"),
        ("DELETE FROM {t} WHERE id = ?", false, "Done"),
        ("SELECT id FROM {t} WHERE id = ? FOR UPDATE", true, "Done"),
    ];
    for (holder, commit, want) in cases {
        for op in ["update", "touch", "delete_if"] {
            let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
            store.create(&s).await.unwrap();
            let idb = s.id().as_bytes().to_vec();
            let tx = locking(&store, holder, &[&idb[..]]).await;
            s.insert("k", &1).unwrap();
            let waiting = tokio::spawn({
                let (store, s) = (store.clone(), s.clone());
                async move {
                    match op {
                        "update" => format!("{:?}", store.update(&s, 1).await),
                        "touch" => format!("{:?}", store.touch(&s.id(), later(2)).await),
                        _ => format!("{:?}", store.delete_if(&s.id(), 1).await),
                    }
                }
            });
            until_blocked(&store).await;
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
            let answer = waiting.await.unwrap();
            let expected: String = match (op, want) {
                ("update", "Done") => "Ok(Updated { version: 2 })".into(),
                ("update", w) => format!("Ok({w})"),
                ("touch", "Gone") => "Ok(false)".into(),
                ("touch", _) => "Ok(true)".into(),
                (_, "Done") => "Ok(Deleted)".into(),
                (_, w) => format!("Ok({w})"),
            };
            assert_eq!(answer, expected, "{op} behind `{holder}` (commit {commit})");
            if want == "Gone" {
                assert!(stored(&store, &idb).await.is_none(), "{op} revived it");
            }
        }
    }
    store.drop_table().await.unwrap();
}

/// A write that times out while waiting for a row lock: the old
/// transaction rolled back when the client went away; one autocommit
/// statement may apply once the lock is granted, after the caller was told
/// it failed. That is only acceptable if the error said it may have
/// applied.
#[tokio::test]
async fn a_timed_out_write_that_applies_later_said_it_may_have() {
    let Some(store) = store_with(Duration::from_millis(500)).await else {
        return;
    };
    let store = Arc::new(store);
    for op in ["update", "touch", "delete_if"] {
        let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
        store.create(&s).await.unwrap();
        let idb = s.id().as_bytes().to_vec();
        let before = stored(&store, &idb).await;
        let tx = locking(
            &store,
            "SELECT id FROM {t} WHERE id = ? FOR UPDATE",
            &[&idb[..]],
        )
        .await;
        s.insert("k", &1).unwrap();
        let err = match op {
            "update" => store.update(&s, 1).await.map(|o| format!("{o:?}")),
            "touch" => store
                .touch(&s.id(), later(5))
                .await
                .map(|o| format!("{o:?}")),
            _ => store.delete_if(&s.id(), 1).await.map(|o| format!("{o:?}")),
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = stored(&store, &idb).await;
        match err {
            Ok(answer) => panic!("{op} answered {answer} while the row was locked"),
            Err(e) => {
                if after != before {
                    assert!(
                        e.may_have_applied(),
                        "{op} failed with {e:?} (not may-have-applied) yet applied later: \
                         {before:?} -> {after:?}"
                    );
                    eprintln!("note: timed-out {op} applied after its error ({e:?})");
                }
            }
        }
    }
    store.drop_table().await.unwrap();
}

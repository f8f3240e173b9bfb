//! The manager's commit rules under races, lost replies and partial
//! failure. Each test replays one interleaving of two requests, or one
//! fault, against the reference store; the fault wrapper injects the
//! failures real backends produce (a reply lost after the write was
//! applied, a failed step in the middle of a regeneration). The same rules
//! run against the real servers in the conformance suite and `tests/faults.rs`.
#![cfg(feature = "conformance")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use session_store::conformance::ReferenceStore;
use session_store::cookie::{Cookie, CookieJar, Key};
use session_store::time::OffsetDateTime;
use session_store::{
    jar_from_cookie_headers, DeleteOutcome, Error, Result, Session, SessionConfig, SessionId,
    SessionInterface, SessionManager, UpdateOutcome,
};

fn dev() -> SessionConfig {
    SessionConfig {
        secure: false,
        resolve_timeout: Duration::from_millis(200),
        ..SessionConfig::default()
    }
}

fn jar(cookie: &Cookie<'static>) -> CookieJar {
    let mut jar = CookieJar::new();
    jar.add_original(cookie.clone());
    jar
}

fn lost_reply() -> Error {
    Error::backend("faulty", "test", "timed out after 100ms")
}

/// The reference store, with failures to order: each counter says how many
/// of the next calls of that kind fail.
#[derive(Debug, Default)]
struct Faulty {
    inner: ReferenceStore,
    /// `update` applies the write, then reports a timeout.
    update_applied_then_lost: AtomicU32,
    /// `create` applies the write, then reports a timeout.
    create_applied_then_lost: AtomicU32,
    /// `get` fails without reading.
    get_fails: AtomicU32,
    /// `delete_if` fails without deleting.
    delete_if_fails: AtomicU32,
    /// `delete_if` deletes, then reports a timeout.
    delete_if_applied_then_lost: AtomicU32,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl SessionInterface for Faulty {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        if take(&self.get_fails) {
            return Err(lost_reply());
        }
        self.inner.get(id).await
    }
    async fn set(&self, session: &Session) -> Result<()> {
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Session) -> Result<()> {
        self.inner.create(session).await?;
        if take(&self.create_applied_then_lost) {
            return Err(lost_reply());
        }
        Ok(())
    }
    async fn update(&self, session: &Session, expected: u64) -> Result<UpdateOutcome> {
        let outcome = self.inner.update(session, expected).await?;
        if take(&self.update_applied_then_lost) {
            return Err(lost_reply());
        }
        Ok(outcome)
    }
    async fn delete_if(&self, id: &SessionId, expected: u64) -> Result<DeleteOutcome> {
        if take(&self.delete_if_fails) {
            return Err(lost_reply());
        }
        let outcome = self.inner.delete_if(id, expected).await?;
        if take(&self.delete_if_applied_then_lost) {
            return Err(lost_reply());
        }
        Ok(outcome)
    }
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        self.inner.touch(id, expires_at).await
    }
    async fn flush(&self) -> Result<u64> {
        self.inner.flush().await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
    async fn len(&self) -> Result<u64> {
        self.inner.len().await
    }
}

async fn setup(config: SessionConfig) -> (Arc<Faulty>, SessionManager, Cookie<'static>) {
    let store = Arc::new(Faulty::default());
    let manager = SessionManager::new(store.clone(), config).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("balance", &100i64).unwrap();
    let cookie = s
        .commit()
        .await
        .unwrap()
        .expect("a new session with data sends a cookie");
    (store, manager, cookie)
}

async fn balance(manager: &SessionManager, cookie: &Cookie<'static>) -> Option<i64> {
    let s = manager.start(&jar(cookie)).await.unwrap();
    assert!(!s.is_new(), "the session is gone");
    s.get("balance").unwrap()
}

/// Bug 5: a save whose reply was lost after Redis applied it is success,
/// not failure, and a retried commit does not debit twice.
#[tokio::test]
async fn a_lost_reply_after_the_save_landed_is_success_and_never_applied_twice() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.modify("balance", |b: Option<i64>| b.unwrap_or(0) - 30)
        .unwrap();
    store.update_applied_then_lost.store(1, Ordering::SeqCst);
    let answer = s.commit().await;
    assert!(
        answer.is_ok(),
        "a save that landed was reported as {answer:?}"
    );
    assert_eq!(balance(&manager, &cookie).await, Some(70));
    // Committing again writes nothing more.
    s.commit().await.unwrap();
    assert_eq!(balance(&manager, &cookie).await, Some(70));
}

/// Bug 5, the hard half: the re-read fails too, so the commit cannot tell
/// and reports the error; the app retries the commit on the same handle,
/// which must find its own write instead of replaying the debit.
#[tokio::test]
async fn a_retried_commit_after_an_unresolved_lost_reply_does_not_debit_twice() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.modify("balance", |b: Option<i64>| b.unwrap_or(0) - 30)
        .unwrap();
    store.update_applied_then_lost.store(1, Ordering::SeqCst);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(
        matches!(s.commit().await, Err(Error::Backend { .. })),
        "with the store unreadable the outcome is unknown: an error"
    );
    store.get_fails.store(0, Ordering::SeqCst);
    s.commit().await.expect("the retried commit resolves");
    assert_eq!(balance(&manager, &cookie).await, Some(70), "debited twice");
}

/// A lost reply, then another request saves before we re-read: our write
/// id is still in the record's history, so we know it landed.
#[tokio::test]
async fn a_lost_reply_followed_by_other_saves_is_still_recognised() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.modify("balance", |b: Option<i64>| b.unwrap_or(0) - 30)
        .unwrap();
    store.update_applied_then_lost.store(1, Ordering::SeqCst);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    for _ in 0..3 {
        let mut other = manager.start(&jar(&cookie)).await.unwrap();
        other
            .modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)
            .unwrap();
        other.commit().await.unwrap();
    }
    s.commit().await.expect("the retried commit resolves");
    assert_eq!(balance(&manager, &cookie).await, Some(70), "debited twice");
}

/// When more saves followed a lost one than the record remembers, the
/// commit says it cannot tell rather than risk a double debit.
#[tokio::test]
async fn too_many_saves_after_a_lost_reply_is_outcome_unknown_not_a_replay() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.modify("balance", |b: Option<i64>| b.unwrap_or(0) - 30)
        .unwrap();
    store.update_applied_then_lost.store(1, Ordering::SeqCst);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    for _ in 0..(session_store::RECENT_WRITES + 2) {
        let mut other = manager.start(&jar(&cookie)).await.unwrap();
        other
            .modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)
            .unwrap();
        other.commit().await.unwrap();
    }
    assert!(matches!(
        s.commit().await,
        Err(Error::OutcomeUnknown { .. })
    ));
    assert_eq!(balance(&manager, &cookie).await, Some(70), "debited twice");
}

/// A new session's create whose reply was lost is recognised by its write
/// id on retry instead of being stored again under another id.
#[tokio::test]
async fn a_lost_create_reply_is_recognised() {
    let store = Arc::new(Faulty::default());
    let manager = SessionManager::new(store.clone(), dev()).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("k", &1u8).unwrap();
    store.create_applied_then_lost.store(1, Ordering::SeqCst);
    let cookie = s.commit().await.unwrap().expect("a cookie");
    assert_eq!(store.len().await.unwrap(), 1, "stored twice");
    assert!(!manager.start(&jar(&cookie)).await.unwrap().is_new());
}

/// Bug 1a: a logout lands while a login (regenerate) is in flight. The
/// login must not bring the session back under a new id.
#[tokio::test]
async fn regenerate_after_a_concurrent_logout_creates_nothing() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    let mut logout = manager.start(&jar(&cookie)).await.unwrap();
    logout.destroy();
    logout.commit().await.unwrap();
    login.insert("user", "ada").unwrap();
    login.regenerate().unwrap();
    let answer = login.commit().await.unwrap();
    assert!(
        answer.is_none(),
        "the login sent a cookie for a logged-out session"
    );
    assert!(login.is_gone());
    assert_eq!(store.len().await.unwrap(), 0, "the session came back");
}

/// Bug 1b: a save acknowledged on the old id while a login was in flight
/// is carried into the new record.
#[tokio::test]
async fn regenerate_keeps_a_save_that_landed_after_it_loaded() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    let mut other = manager.start(&jar(&cookie)).await.unwrap();
    other.insert("cart", &3u32).unwrap();
    other
        .modify("balance", |b: Option<i64>| b.unwrap_or(0) - 1)
        .unwrap();
    other.commit().await.unwrap();
    login.insert("user", "ada").unwrap();
    login.regenerate().unwrap();
    let new = login.commit().await.unwrap().expect("a new cookie");
    let s = manager.start(&jar(&new)).await.unwrap();
    assert_eq!(
        s.get::<u32>("cart").unwrap(),
        Some(3),
        "the acknowledged save was lost"
    );
    assert_eq!(s.get::<i64>("balance").unwrap(), Some(99));
    assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("ada"));
    assert_eq!(store.len().await.unwrap(), 1, "the old id survived");
    assert!(manager.start(&jar(&cookie)).await.unwrap().is_new());
}

/// Bug 2: a request that loaded the pre-login id and commits after the
/// login must not answer with a removal cookie (which would erase the
/// login's cookie if the browser applied it last), and must not store
/// anything under either id.
#[tokio::test]
async fn a_request_overlapping_a_login_leaves_the_cookie_alone() {
    let config = SessionConfig {
        touch_after: Duration::ZERO,
        ..dev()
    };
    let (store, manager, cookie) = setup(config).await;
    let mut writer = manager.start(&jar(&cookie)).await.unwrap();
    let mut reader = manager.start(&jar(&cookie)).await.unwrap();
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    login.regenerate().unwrap();
    let new = login.commit().await.unwrap().expect("login cookie");
    writer.insert("late", &1u8).unwrap();
    assert!(
        writer.commit().await.unwrap().is_none(),
        "a removal cookie after a login"
    );
    assert!(
        reader.commit().await.unwrap().is_none(),
        "a touch answered with a cookie"
    );
    assert_eq!(store.len().await.unwrap(), 1);
    let s = manager.start(&jar(&new)).await.unwrap();
    assert!(!s.is_new());
    assert_eq!(
        s.get::<u8>("late").unwrap(),
        None,
        "the pre-login id could write into the login"
    );
}

/// Bug 10: deleting the old id fails during regenerate: the commit
/// reports it, and a retried commit finishes the job (one record, the new
/// cookie sent).
#[tokio::test]
async fn a_regeneration_that_failed_midway_is_finished_by_a_retried_commit() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    login.insert("user", "ada").unwrap();
    login.regenerate().unwrap();
    store.delete_if_fails.store(1, Ordering::SeqCst);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(login.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    let new = login
        .commit()
        .await
        .unwrap()
        .expect("the retried commit sends the cookie");
    assert_eq!(store.len().await.unwrap(), 1, "both records stayed");
    let s = manager.start(&jar(&new)).await.unwrap();
    assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("ada"));
    assert!(manager.start(&jar(&cookie)).await.unwrap().is_new());
}

/// A lost reply on the compare-and-delete of a regeneration, with the
/// record gone on re-read: ours or a logout's? The manager must not
/// resurrect; it drops the new record and says so.
#[tokio::test]
async fn a_regeneration_whose_retirement_is_in_doubt_never_resurrects() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    login.regenerate().unwrap();
    store.delete_if_applied_then_lost.store(1, Ordering::SeqCst);
    assert!(matches!(
        login.commit().await,
        Err(Error::OutcomeUnknown { .. })
    ));
    assert_eq!(store.len().await.unwrap(), 0);
}

/// Bug 7: a replay must consume only the flash value this request read.
#[tokio::test]
async fn a_replay_keeps_a_newer_flash_under_the_same_key() {
    let (_store, manager, cookie) = setup(dev()).await;
    let mut first = manager.start(&CookieJar::new()).await.unwrap();
    drop(first.commit().await);
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.flash("msg", "first").unwrap();
    s.commit().await.unwrap();
    first = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(
        first.get_flash::<String>("msg").unwrap().as_deref(),
        Some("first")
    );
    let mut b = manager.start(&jar(&cookie)).await.unwrap();
    b.flash("msg", "second").unwrap();
    b.commit().await.unwrap();
    first.insert("other", &1u8).unwrap();
    first.commit().await.unwrap();
    let mut next = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(
        next.get_flash::<String>("msg").unwrap().as_deref(),
        Some("second"),
        "the newer flash was consumed by a request that never read it"
    );
}

/// A corrupt record does not lock its browser out: a fresh session starts.
#[tokio::test]
async fn an_undecodable_record_starts_a_fresh_session() {
    #[derive(Debug, Default)]
    struct Corrupt(ReferenceStore);
    #[async_trait]
    impl SessionInterface for Corrupt {
        async fn exists(&self, id: &SessionId) -> Result<bool> {
            self.0.exists(id).await
        }
        async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
            Err(Error::decode(
                format!("record {id}"),
                "unknown record format 9",
            ))
        }
        async fn set(&self, s: &Session) -> Result<()> {
            self.0.set(s).await
        }
        async fn delete(&self, id: &SessionId) -> Result<()> {
            self.0.delete(id).await
        }
        async fn create(&self, s: &Session) -> Result<()> {
            self.0.create(s).await
        }
        async fn update(&self, s: &Session, v: u64) -> Result<UpdateOutcome> {
            self.0.update(s, v).await
        }
        async fn delete_if(&self, id: &SessionId, v: u64) -> Result<DeleteOutcome> {
            self.0.delete_if(id, v).await
        }
        async fn touch(&self, id: &SessionId, at: OffsetDateTime) -> Result<bool> {
            self.0.touch(id, at).await
        }
        async fn flush(&self) -> Result<u64> {
            self.0.flush().await
        }
        async fn clear(&self) -> Result<()> {
            self.0.clear().await
        }
        async fn len(&self) -> Result<u64> {
            self.0.len().await
        }
    }
    let manager = SessionManager::new(Arc::new(Corrupt::default()), dev()).unwrap();
    let token = session_store::SessionToken::generate();
    let cookie = Cookie::new("id", token.as_str().to_owned());
    let mut s = manager
        .start(&jar(&cookie))
        .await
        .expect("no 503 for a corrupt record");
    assert!(s.is_new());
    assert_ne!(s.id(), token.id());
    s.insert("k", &1u8).unwrap();
    assert!(s.commit().await.unwrap().is_some());
}

/// A cookie verified by a retired-but-still-listed key is re-issued signed
/// with the current key, even on a request that changes nothing.
#[tokio::test]
async fn a_cookie_signed_with_an_old_key_is_re_signed() {
    let (old_key, new_key) = (Key::generate(), Key::generate());
    let store: Arc<dyn SessionInterface> = Arc::new(ReferenceStore::new());
    let keys = |keys: Vec<Key>| SessionConfig {
        signing_keys: keys,
        ..dev()
    };
    let old = SessionManager::new(store.clone(), keys(vec![old_key.clone()])).unwrap();
    let mut s = old.start(&CookieJar::new()).await.unwrap();
    s.insert("n", &1u8).unwrap();
    let cookie = s.commit().await.unwrap().unwrap();
    let rotated = SessionManager::new(store.clone(), keys(vec![new_key.clone(), old_key])).unwrap();
    let mut s = rotated.start(&jar(&cookie)).await.unwrap();
    assert!(!s.is_new());
    let resigned = s
        .commit()
        .await
        .unwrap()
        .expect("an old-key cookie is re-issued");
    let retired = SessionManager::new(store, keys(vec![new_key])).unwrap();
    let s = retired.start(&jar(&resigned)).await.unwrap();
    assert_eq!(
        s.get::<u8>("n").unwrap(),
        Some(1),
        "the re-signed cookie does not load"
    );
    // A current-key cookie is not re-sent needlessly.
    let mut again = retired.start(&jar(&resigned)).await.unwrap();
    assert!(again.commit().await.unwrap().is_none());
}

/// Two session cookies with different values (one tossed by a subdomain):
/// neither is trusted.
#[tokio::test]
async fn duplicate_session_cookies_start_a_fresh_session() {
    let (_store, manager, cookie) = setup(dev()).await;
    let other = session_store::SessionToken::generate();
    for header in [
        format!("id={}; id={}", cookie.value(), other.as_str()),
        format!("id={}; id={}", other.as_str(), cookie.value()),
    ] {
        let s = manager
            .start(&jar_from_cookie_headers([header.as_str()]))
            .await
            .unwrap();
        assert!(s.is_new(), "a duplicated cookie loaded a session: {header}");
    }
    let same = format!("id={0}; id={0}", cookie.value());
    let s = manager
        .start(&jar_from_cookie_headers([same.as_str()]))
        .await
        .unwrap();
    assert!(!s.is_new(), "an identical duplicate is harmless");
}

/// A request that loaded early does not pull the expiry back below what a
/// later request's touch wrote.
#[tokio::test]
async fn a_slow_save_does_not_move_the_expiry_backwards() {
    let config = SessionConfig {
        touch_after: Duration::ZERO,
        ..dev()
    };
    let (store, manager, cookie) = setup(config).await;
    let mut slow = manager.start(&jar(&cookie)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut fast = manager.start(&jar(&cookie)).await.unwrap();
    fast.commit().await.unwrap();
    let id = fast.id();
    let extended = store.get(&id).await.unwrap().unwrap().expires_at_millis();
    slow.insert("k", &1u8).unwrap();
    slow.commit().await.unwrap();
    let after = store.get(&id).await.unwrap().unwrap().expires_at_millis();
    assert!(
        after >= extended,
        "expiry moved back by {} ms",
        extended - after
    );
}

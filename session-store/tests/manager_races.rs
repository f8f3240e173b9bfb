//! The manager's commit rules under races, lost replies and partial
//! failure. Each test replays one interleaving of two requests, or one
//! fault, against the reference store; the fault wrapper injects the
//! failures real backends produce (a reply lost after the write was
//! applied, a failed step in the middle of a regeneration). The same rules
//! run against the real servers in the conformance suite and `tests/faults.rs`.
#![cfg(feature = "conformance")]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// A failure before anything was sent: definitely not applied.
fn unsent() -> Error {
    Error::Unavailable {
        store: "faulty",
        context: "test".into(),
        source: "connection refused".into(),
    }
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
    /// `update` reports a timeout without writing.
    update_lost_unapplied: AtomicU32,
    /// `update` reports a timeout; the write lands when the next `create`
    /// is sent (a delayed packet).
    update_deferred: AtomicU32,
    deferred: Mutex<Option<(Session, u64)>>,
    /// `delete` reports a timeout without deleting.
    delete_lost_unapplied: AtomicU32,
    /// `touch` fails before sending anything.
    touch_unsent: AtomicU32,
    /// `touch` reports a timeout without moving the expiry.
    touch_lost_unapplied: AtomicU32,
    /// How many `get` calls were made, failed ones included.
    gets: AtomicU32,
    /// How many `update` calls were made.
    updates: AtomicU32,
    /// Before each `get` / `update`, the next number in the queue of saves by
    /// other requests lands on the same record.
    foreign_saves_before_get: Mutex<VecDeque<u32>>,
    foreign_saves_before_update: Mutex<VecDeque<u32>>,
    foreign_write_ids: AtomicU64,
    /// `create` answers that the id is taken, without writing.
    create_collides: AtomicU32,
    /// How many `create` calls were made.
    creates: AtomicU32,
    /// `update` fails before sending anything.
    update_unsent: AtomicU32,
    /// `delete_if` fails before sending anything.
    delete_if_unsent: AtomicU32,
    /// `delete_if` reports a timeout; the delete lands when the next
    /// `delete_if` is sent.
    delete_if_deferred: AtomicU32,
    deferred_delete: Mutex<Option<(SessionId, u64)>>,
    /// `create` fails before sending anything.
    create_unsent: AtomicU32,
    /// `create` reports a timeout without writing, and another writer's
    /// session appears under the same id (a colliding token generator).
    create_lost_to_another: AtomicU32,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Faulty {
    /// Another request's saves: each moves the record one version on.
    async fn foreign_saves(&self, id: &SessionId, queue: &Mutex<VecDeque<u32>>) {
        let count = queue.lock().unwrap().pop_front().unwrap_or(0);
        for _ in 0..count {
            let mut other = self.inner.get(id).await.unwrap().expect("the record");
            let write_id = self.foreign_write_ids.fetch_add(1, Ordering::SeqCst) + (1 << 40);
            other.stamp_write(write_id);
            let version = other.version();
            let outcome = self.inner.update(&other, version).await.unwrap();
            assert!(matches!(outcome, UpdateOutcome::Updated { .. }));
        }
    }
}

#[async_trait]
impl SessionInterface for Faulty {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.foreign_saves(id, &self.foreign_saves_before_get).await;
        if take(&self.get_fails) {
            return Err(lost_reply());
        }
        self.inner.get(id).await
    }
    async fn set(&self, session: &Session) -> Result<()> {
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        if take(&self.delete_lost_unapplied) {
            return Err(lost_reply());
        }
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Session) -> Result<()> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        if take(&self.create_unsent) {
            return Err(unsent());
        }
        if take(&self.create_lost_to_another) {
            let mut other = Session::new(session.id(), Duration::from_secs(60));
            other.insert("owner", "someone else").unwrap();
            other.stamp_write(u64::MAX);
            self.inner.create(&other).await?;
            return Err(lost_reply());
        }
        if take(&self.create_collides) {
            return Err(Error::IdCollision { id: session.id() });
        }
        let late = self.deferred.lock().unwrap().take();
        if let Some((late, expected)) = late {
            self.inner.update(&late, expected).await?;
        }
        self.inner.create(session).await?;
        if take(&self.create_applied_then_lost) {
            return Err(lost_reply());
        }
        Ok(())
    }
    async fn update(&self, session: &Session, expected: u64) -> Result<UpdateOutcome> {
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.foreign_saves(&session.id(), &self.foreign_saves_before_update)
            .await;
        if take(&self.update_unsent) {
            return Err(unsent());
        }
        if take(&self.update_lost_unapplied) {
            return Err(lost_reply());
        }
        if take(&self.update_deferred) {
            *self.deferred.lock().unwrap() = Some((session.clone(), expected));
            return Err(lost_reply());
        }
        let outcome = self.inner.update(session, expected).await?;
        if take(&self.update_applied_then_lost) {
            return Err(lost_reply());
        }
        Ok(outcome)
    }
    async fn delete_if(&self, id: &SessionId, expected: u64) -> Result<DeleteOutcome> {
        let late = self.deferred_delete.lock().unwrap().take();
        if let Some((late, expected)) = late {
            self.inner.delete_if(&late, expected).await?;
        }
        if take(&self.delete_if_unsent) {
            return Err(unsent());
        }
        if take(&self.delete_if_deferred) {
            *self.deferred_delete.lock().unwrap() = Some((*id, expected));
            return Err(lost_reply());
        }
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
        if take(&self.touch_unsent) {
            return Err(unsent());
        }
        if take(&self.touch_lost_unapplied) {
            return Err(lost_reply());
        }
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

// The cases below were found by mutation testing (`scripts/mutants`): each
// fails if one rule of the commit state machine is broken.

/// A configuration that touches the expiry on every request.
fn touching() -> SessionConfig {
    SessionConfig {
        touch_after: Duration::ZERO,
        ..dev()
    }
}

/// A login whose retirement of the old record was in doubt, then
/// regenerated again by the app: the doubt is not forgotten, so the
/// vanished old record is reported, not taken for a logout.
#[tokio::test]
async fn a_second_regenerate_remembers_a_retirement_in_doubt() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    login.regenerate().unwrap();
    store.delete_if_applied_then_lost.store(1, Ordering::SeqCst);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(matches!(login.commit().await, Err(Error::Backend { .. })));
    store.get_fails.store(0, Ordering::SeqCst);
    login.regenerate().unwrap();
    let answer = login.commit().await;
    assert!(
        matches!(answer, Err(Error::OutcomeUnknown { .. })),
        "the old record may have been retired by our own delete: {answer:?}"
    );
    assert_eq!(store.len().await.unwrap(), 0, "a new record survived");
}

/// Stores the flash value of `key` as `bytes`, bypassing the manager.
async fn plant_flash(store: &Faulty, id: &SessionId, key: &str, bytes: Vec<u8>) {
    let mut stored = store.get(id).await.unwrap().expect("the record");
    stored.flash_mut().insert(key.to_owned(), bytes);
    let version = stored.version();
    store.update(&stored, version).await.unwrap();
}

/// A flash value stored before values carried a marker and a nonce is read
/// back whole.
#[tokio::test]
async fn a_flash_value_stored_without_a_nonce_reads_back_whole() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.flash("notice", "your quote was saved").unwrap();
    s.commit().await.unwrap();
    let id = s.id();
    let marked = store.get(&id).await.unwrap().unwrap().flash()["notice"].clone();
    assert_eq!(marked[..2], [0xF1, 0xA5], "the marker");
    // Marker (2 bytes) and nonce (8 bytes) removed: the old layout.
    plant_flash(&store, &id, "notice", marked[10..].to_vec()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(
        s.get_flash::<String>("notice").unwrap().as_deref(),
        Some("your quote was saved")
    );
}

/// A corrupt flash entry that starts with the marker but is shorter than
/// the marker and nonce is a decode error, never a panic.
#[tokio::test]
async fn a_truncated_flash_entry_is_a_decode_error() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    plant_flash(&store, &s.id(), "notice", vec![0xF1, 0xA5, 7]).await;
    let mut s2 = manager.start(&jar(&cookie)).await.unwrap();
    assert!(matches!(
        s2.get_flash::<String>("notice"),
        Err(Error::Decode { .. })
    ));
    s.insert("still", &"usable").unwrap();
    s.commit().await.unwrap();
}

/// A logout whose delete timed out without deleting: the session is still
/// there, so the logout is an error (not a removal cookie over a live
/// session), and a retried commit finishes it.
#[tokio::test]
async fn a_logout_whose_delete_did_not_land_is_an_error_until_retried() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.destroy();
    store.delete_lost_unapplied.store(1, Ordering::SeqCst);
    let answer = s.commit().await;
    assert!(
        matches!(answer, Err(Error::Backend { .. })),
        "the session is still live: {answer:?}"
    );
    assert!(!manager.start(&jar(&cookie)).await.unwrap().is_new());
    let removal = s.commit().await.unwrap();
    assert!(
        removal.is_some(),
        "the retried logout sends the removal cookie"
    );
    assert!(manager.start(&jar(&cookie)).await.unwrap().is_new());
}

/// A touch that failed before it was sent is the store's error, with no
/// re-read (nothing can have landed; a down store is not polled).
#[tokio::test]
async fn a_touch_never_sent_is_reported_without_a_re_read() {
    let (store, manager, cookie) = setup(touching()).await;
    // A later millisecond: the touch has an expiry to move forward.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    store.touch_unsent.store(1, Ordering::SeqCst);
    let gets = store.gets.load(Ordering::SeqCst);
    assert!(matches!(s.commit().await, Err(Error::Unavailable { .. })));
    assert_eq!(store.gets.load(Ordering::SeqCst), gets);
}

/// A touch whose reply was lost and which did not land: the re-read shows
/// the old expiry, so the commit reports the failure.
#[tokio::test]
async fn a_lost_touch_that_did_not_land_is_an_error() {
    let (store, manager, cookie) = setup(touching()).await;
    // A later millisecond: the touch has an expiry to move forward.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    store.touch_lost_unapplied.store(1, Ordering::SeqCst);
    let answer = s.commit().await;
    assert!(matches!(answer, Err(Error::Backend { .. })), "{answer:?}");
}

/// A touch whose reply was lost, on a session a logout deleted meanwhile:
/// the session is gone, which is no error and sends no cookie.
#[tokio::test]
async fn a_lost_touch_of_a_session_logged_out_meanwhile_is_gone() {
    let (store, manager, cookie) = setup(touching()).await;
    // A later millisecond: the touch has an expiry to move forward.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    store.inner.delete(&s.id()).await.unwrap();
    store.touch_lost_unapplied.store(1, Ordering::SeqCst);
    let answer = s.commit().await;
    assert!(matches!(answer, Ok(None)), "{answer:?}");
}

/// A save lost without landing; the app adds a change and commits again,
/// and that save lands but its reply is lost too. The landed save carried
/// both changes: neither is applied again.
#[tokio::test]
async fn a_save_of_a_longer_change_log_is_not_mistaken_for_an_earlier_one() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.modify("balance", |b: Option<i64>| b.unwrap_or(0) - 10)
        .unwrap();
    store.update_lost_unapplied.store(1, Ordering::SeqCst);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    s.modify("balance", |b: Option<i64>| b.unwrap_or(0) - 5)
        .unwrap();
    store.update_applied_then_lost.store(1, Ordering::SeqCst);
    s.commit().await.unwrap();
    assert_eq!(balance(&manager, &cookie).await, Some(85));
}

/// The re-read after a lost reply is retried at 0, 20 and 60 ms; the next
/// try (at 140 ms) would start at the resolve deadline, so it is not made.
/// On tokio's paused clock the schedule is exact.
#[tokio::test(start_paused = true)]
async fn a_failing_re_read_backs_off_until_the_resolve_timeout() {
    let config = SessionConfig {
        resolve_timeout: Duration::from_millis(140),
        ..dev()
    };
    let (store, manager, cookie) = setup(config).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.modify("balance", |b: Option<i64>| b.unwrap_or(0) - 30)
        .unwrap();
    store.update_applied_then_lost.store(1, Ordering::SeqCst);
    store.get_fails.store(1000, Ordering::SeqCst);
    let gets = store.gets.load(Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    assert!(s.commit().await.is_err());
    assert_eq!(store.gets.load(Ordering::SeqCst) - gets, 3);
    assert_eq!(started.elapsed(), Duration::from_millis(60));
    // One failed re-read, then the record: resolved within the deadline.
    store.get_fails.store(1, Ordering::SeqCst);
    s.commit().await.expect("resolved on the second re-read");
    assert_eq!(balance(&manager, &cookie).await, Some(70));
}

/// A save whose reply was lost is still in flight when the request
/// regenerates, and lands after the new record was created: the new record
/// carries the change once.
#[tokio::test]
async fn a_lost_save_landing_during_a_regeneration_is_not_applied_twice() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.modify("balance", |b: Option<i64>| b.unwrap_or(0) - 10)
        .unwrap();
    store.update_deferred.store(1, Ordering::SeqCst);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    s.regenerate().unwrap();
    let new = s.commit().await.unwrap().expect("the login's cookie");
    assert!(
        store.deferred.lock().unwrap().is_none(),
        "the late save landed"
    );
    assert_eq!(balance(&manager, &new).await, Some(90), "debited twice");
    assert!(manager.start(&jar(&cookie)).await.unwrap().is_new());
}

/// A lost save that did not land, then the record moved on (so it never
/// can): the doubt is over. A later conflict, however far other requests
/// moved the record, is replayed, not reported as unknown.
#[tokio::test]
async fn once_the_record_moved_past_a_lost_save_later_conflicts_are_replayed() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.modify("balance", |b: Option<i64>| b.unwrap_or(0) - 10)
        .unwrap();
    store.update_lost_unapplied.store(1, Ordering::SeqCst);
    // The re-read finds another request's save; our next save then meets
    // more saves than the record remembers.
    store.foreign_saves_before_get.lock().unwrap().push_back(1);
    let many = session_store::RECENT_WRITES as u32 + 2;
    store
        .foreign_saves_before_update
        .lock()
        .unwrap()
        .extend([0, many]);
    s.commit().await.expect("replayed on the newest record");
    assert_eq!(balance(&manager, &cookie).await, Some(90));
}

/// A new session whose id is already taken is stored under another.
#[tokio::test]
async fn an_id_collision_draws_another_id() {
    let store = Arc::new(Faulty::default());
    let manager = SessionManager::new(store.clone(), dev()).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("k", &1u8).unwrap();
    store.create_collides.store(1, Ordering::SeqCst);
    let cookie = s.commit().await.unwrap().expect("a cookie");
    assert_eq!(store.creates.load(Ordering::SeqCst), 2);
    assert_eq!(store.len().await.unwrap(), 1);
    assert!(!manager.start(&jar(&cookie)).await.unwrap().is_new());
}

/// Ids that keep colliding mean a broken token generator or store: after
/// three fresh draws the commit gives up with `IdCollision`.
#[tokio::test]
async fn endless_id_collisions_give_up_after_three_redraws() {
    let store = Arc::new(Faulty::default());
    let manager = SessionManager::new(store.clone(), dev()).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("k", &1u8).unwrap();
    store.create_collides.store(1000, Ordering::SeqCst);
    let answer = s.commit().await;
    assert!(
        matches!(answer, Err(Error::IdCollision { .. })),
        "{answer:?}"
    );
    assert_eq!(store.creates.load(Ordering::SeqCst), 4);
}

/// A login whose compare-and-delete of the old record failed before it was
/// sent reports the store's error without re-reading; a retried commit
/// finishes the login.
#[tokio::test]
async fn a_retirement_never_sent_is_reported_and_finished_by_a_retry() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    login.regenerate().unwrap();
    store.delete_if_unsent.store(1, Ordering::SeqCst);
    let gets = store.gets.load(Ordering::SeqCst);
    assert!(matches!(
        login.commit().await,
        Err(Error::Unavailable { .. })
    ));
    assert_eq!(store.gets.load(Ordering::SeqCst), gets);
    let new = login.commit().await.unwrap().expect("the login's cookie");
    assert!(manager.start(&jar(&cookie)).await.unwrap().is_new());
    assert_eq!(balance(&manager, &new).await, Some(100));
}

/// A login's compare-and-delete times out without deleting, is seen not to
/// have landed, and then lands late: the old record is gone by our own
/// hand, which cannot be told from a logout. The login is reported as
/// unknown, never silently dropped as if the user had logged out.
#[tokio::test]
async fn a_retirement_that_lands_late_is_reported_as_unknown() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    login.insert("user", "ada").unwrap();
    login.regenerate().unwrap();
    store.delete_if_deferred.store(1, Ordering::SeqCst);
    let answer = login.commit().await;
    assert!(
        matches!(answer, Err(Error::OutcomeUnknown { .. })),
        "{answer:?}"
    );
    assert_eq!(store.len().await.unwrap(), 0, "the new record is dropped");
}

/// A login that created its new record, failed to retire the old one, and
/// gained a change before its retried commit: the new record is brought up
/// to date. Saves to the private record settle lost replies themselves.
#[tokio::test]
async fn a_retried_login_writes_later_changes_to_the_new_record() {
    for fault in ["applied_then_lost", "lost_unapplied"] {
        let (store, manager, cookie) = setup(dev()).await;
        let mut login = manager.start(&jar(&cookie)).await.unwrap();
        login.insert("user", "ada").unwrap();
        login.regenerate().unwrap();
        store.delete_if_unsent.store(1, Ordering::SeqCst);
        assert!(login.commit().await.is_err());
        login.insert("theme", "dark").unwrap();
        match fault {
            "applied_then_lost" => store.update_applied_then_lost.store(1, Ordering::SeqCst),
            _ => store.update_lost_unapplied.store(1, Ordering::SeqCst),
        }
        let updates = store.updates.load(Ordering::SeqCst);
        let new = login
            .commit()
            .await
            .unwrap_or_else(|e| panic!("{fault}: {e}"))
            .expect("the login's cookie");
        // A save found landed (our write id) is not written again.
        let writes = if fault == "applied_then_lost" { 1 } else { 2 };
        assert_eq!(
            store.updates.load(Ordering::SeqCst) - updates,
            writes,
            "{fault}"
        );
        let s = manager.start(&jar(&new)).await.unwrap();
        assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("ada"));
        assert_eq!(
            s.get::<String>("theme").unwrap().as_deref(),
            Some("dark"),
            "{fault}: the later change is missing"
        );
    }
}

/// The same, with the private save failing before it was sent: the store's
/// error, no re-read.
#[tokio::test]
async fn a_private_save_never_sent_is_reported_without_a_re_read() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    login.regenerate().unwrap();
    store.delete_if_unsent.store(1, Ordering::SeqCst);
    assert!(login.commit().await.is_err());
    login.insert("theme", "dark").unwrap();
    store.update_unsent.store(1, Ordering::SeqCst);
    let gets = store.gets.load(Ordering::SeqCst);
    assert!(matches!(
        login.commit().await,
        Err(Error::Unavailable { .. })
    ));
    assert_eq!(store.gets.load(Ordering::SeqCst), gets);
}

/// A save in doubt, then a login: its first commit settles the doubt (the
/// save has not landed yet), creates the new record and fails to retire the
/// old one; meanwhile the late save lands and another request saves. The
/// retried commit finds both on the old record and must carry them into the
/// new one, though it has no change of its own left to write.
#[tokio::test]
async fn a_retried_login_carries_saves_that_landed_after_its_new_record() {
    let (store, manager, cookie) = setup(dev()).await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.modify("balance", |b: Option<i64>| b.unwrap_or(0) - 10)
        .unwrap();
    store.update_deferred.store(1, Ordering::SeqCst);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    s.regenerate().unwrap();
    store.delete_if_unsent.store(1, Ordering::SeqCst);
    assert!(matches!(s.commit().await, Err(Error::Unavailable { .. })));
    assert!(
        store.deferred.lock().unwrap().is_none(),
        "the late save landed"
    );
    let mut other = manager.start(&jar(&cookie)).await.unwrap();
    other.insert("theme", "dark").unwrap();
    other.commit().await.unwrap();
    let new = s.commit().await.unwrap().expect("the login's cookie");
    let after = manager.start(&jar(&new)).await.unwrap();
    assert_eq!(after.get::<i64>("balance").unwrap(), Some(90));
    assert_eq!(
        after.get::<String>("theme").unwrap().as_deref(),
        Some("dark"),
        "an acknowledged save was lost by the login"
    );
}

/// A new session's create that failed before it was sent: the store's
/// error, no re-read.
#[tokio::test]
async fn a_create_never_sent_is_reported_without_a_re_read() {
    let store = Arc::new(Faulty::default());
    let manager = SessionManager::new(store.clone(), dev()).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("k", &1u8).unwrap();
    store.create_unsent.store(1, Ordering::SeqCst);
    assert!(matches!(s.commit().await, Err(Error::Unavailable { .. })));
    assert_eq!(store.gets.load(Ordering::SeqCst), 0);
    assert_eq!(store.len().await.unwrap(), 0);
}

/// A create whose reply was lost finds, on re-read, another writer's
/// session under its id: that session is neither taken over nor deleted;
/// ours is stored under a new id.
#[tokio::test]
async fn a_lost_create_never_takes_over_another_session_under_its_id() {
    let store = Arc::new(Faulty::default());
    let manager = SessionManager::new(store.clone(), dev()).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    let first_id = s.id();
    s.insert("owner", "me").unwrap();
    store.create_lost_to_another.store(1, Ordering::SeqCst);
    let cookie = s.commit().await.unwrap().expect("a cookie");
    let mine = manager.start(&jar(&cookie)).await.unwrap();
    assert_ne!(mine.id(), first_id);
    assert_eq!(mine.get::<String>("owner").unwrap().as_deref(), Some("me"));
    s.commit().await.unwrap();
    let theirs = store.get(&first_id).await.unwrap().expect("not deleted");
    assert_eq!(
        theirs.get::<String>("owner").unwrap().as_deref(),
        Some("someone else")
    );
}

//! Adversarial review of the commit state machine (one write id per
//! attempt, no `update_in_doubt`, `Regeneration::stale`, `judge` without
//! its version guard): scenarios that combine lost replies, late-landing
//! writes, retried commits and second regenerations. Each test names the
//! rule of `ActiveSession::commit` / `regenerate` / `destroy` it checks.
#![cfg(feature = "conformance")]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use session_store::conformance::ReferenceStore;
use session_store::cookie::{Cookie, CookieJar};
use session_store::time::OffsetDateTime;
use session_store::{
    DeleteOutcome, Error, Result, Session, SessionConfig, SessionId, SessionInterface,
    SessionManager, UpdateOutcome,
};

fn dev() -> SessionConfig {
    SessionConfig {
        secure: false,
        resolve_timeout: Duration::from_millis(100),
        ..SessionConfig::default()
    }
}

fn jar(cookie: &Cookie<'static>) -> CookieJar {
    let mut jar = CookieJar::new();
    jar.add_original(cookie.clone());
    jar
}

fn lost_reply() -> Error {
    Error::backend("scripted", "test", "timed out after 100ms")
}

fn unsent() -> Error {
    Error::Unavailable {
        store: "scripted",
        context: "test".into(),
        source: "connection refused".into(),
    }
}

/// What one scripted call does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Applied, then the reply is lost.
    AppliedThenLost,
    /// The reply is lost and nothing was applied.
    LostUnapplied,
    /// The reply is lost; the write stays in flight and lands when a later
    /// step says so (`land_first`).
    Deferred,
    /// Failed before anything was sent.
    Unsent,
}

/// The script of one call: first land the writes still in flight (if
/// `land_first`), then behave as `fault` says (`None`: normally).
#[derive(Clone, Copy, Debug, Default)]
struct Step {
    land_first: bool,
    fault: Option<Fault>,
}

fn fault(fault: Fault) -> Step {
    Step {
        land_first: false,
        fault: Some(fault),
    }
}

const PASS: Step = Step {
    land_first: false,
    fault: None,
};

/// A write sent but not yet landed.
#[derive(Debug)]
enum InFlight {
    Update(Session, u64),
    Create(Session),
    DeleteIf(SessionId, u64),
}

/// The reference store with a script per operation kind: each call takes
/// the next step of its queue (an empty queue passes; for `get`, an empty
/// queue then consults `get_fails`).
#[derive(Debug, Default)]
struct Scripted {
    inner: ReferenceStore,
    gets: Mutex<VecDeque<Step>>,
    get_fails: AtomicU32,
    updates: Mutex<VecDeque<Step>>,
    creates: Mutex<VecDeque<Step>>,
    delete_ifs: Mutex<VecDeque<Step>>,
    in_flight: Mutex<Vec<InFlight>>,
}

impl Scripted {
    fn script(queue: &Mutex<VecDeque<Step>>, steps: &[Step]) {
        queue.lock().unwrap().extend(steps.iter().copied());
    }

    fn next(queue: &Mutex<VecDeque<Step>>) -> Step {
        queue.lock().unwrap().pop_front().unwrap_or_default()
    }

    /// Lands every write still in flight, in the order sent; their
    /// outcomes go nowhere (nobody waits for those replies any more).
    async fn land(&self) {
        let in_flight = std::mem::take(&mut *self.in_flight.lock().unwrap());
        for write in in_flight {
            let _ = match write {
                InFlight::Update(session, expected) => {
                    self.inner.update(&session, expected).await.map(drop)
                }
                InFlight::Create(session) => self.inner.create(&session).await,
                InFlight::DeleteIf(id, expected) => {
                    self.inner.delete_if(&id, expected).await.map(drop)
                }
            };
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight.lock().unwrap().len()
    }
}

#[async_trait]
impl SessionInterface for Scripted {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let step = self.gets.lock().unwrap().pop_front();
        let failed = match step {
            Some(step) => {
                if step.land_first {
                    self.land().await;
                }
                step.fault.is_some()
            }
            None => self
                .get_fails
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok(),
        };
        if failed {
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
        let step = Self::next(&self.creates);
        if step.land_first {
            self.land().await;
        }
        match step.fault {
            None => self.inner.create(session).await,
            Some(Fault::AppliedThenLost) => {
                self.inner.create(session).await?;
                Err(lost_reply())
            }
            Some(Fault::LostUnapplied) => Err(lost_reply()),
            Some(Fault::Deferred) => {
                let write = InFlight::Create(session.clone());
                self.in_flight.lock().unwrap().push(write);
                Err(lost_reply())
            }
            Some(Fault::Unsent) => Err(unsent()),
        }
    }
    async fn update(&self, session: &Session, expected: u64) -> Result<UpdateOutcome> {
        let step = Self::next(&self.updates);
        if step.land_first {
            self.land().await;
        }
        match step.fault {
            None => self.inner.update(session, expected).await,
            Some(Fault::AppliedThenLost) => {
                self.inner.update(session, expected).await?;
                Err(lost_reply())
            }
            Some(Fault::LostUnapplied) => Err(lost_reply()),
            Some(Fault::Deferred) => {
                let write = InFlight::Update(session.clone(), expected);
                self.in_flight.lock().unwrap().push(write);
                Err(lost_reply())
            }
            Some(Fault::Unsent) => Err(unsent()),
        }
    }
    async fn delete_if(&self, id: &SessionId, expected: u64) -> Result<DeleteOutcome> {
        let step = Self::next(&self.delete_ifs);
        if step.land_first {
            self.land().await;
        }
        match step.fault {
            None => self.inner.delete_if(id, expected).await,
            Some(Fault::AppliedThenLost) => {
                self.inner.delete_if(id, expected).await?;
                Err(lost_reply())
            }
            Some(Fault::LostUnapplied) => Err(lost_reply()),
            Some(Fault::Deferred) => {
                let write = InFlight::DeleteIf(*id, expected);
                self.in_flight.lock().unwrap().push(write);
                Err(lost_reply())
            }
            Some(Fault::Unsent) => Err(unsent()),
        }
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

async fn setup_with(config: SessionConfig) -> (Arc<Scripted>, SessionManager, Cookie<'static>) {
    let store = Arc::new(Scripted::default());
    let manager = SessionManager::new(store.clone(), config).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("balance", &100i64).unwrap();
    let cookie = s.commit().await.unwrap().expect("a cookie");
    (store, manager, cookie)
}

async fn setup() -> (Arc<Scripted>, SessionManager, Cookie<'static>) {
    setup_with(dev()).await
}

/// Another request of the same browser saves `key = value` on the record.
async fn foreign_insert(
    manager: &SessionManager,
    cookie: &Cookie<'static>,
    key: &str,
    value: &str,
) {
    let mut other = manager.start(&jar(cookie)).await.unwrap();
    assert!(!other.is_new(), "the record is gone");
    other.insert(key, value).unwrap();
    other.commit().await.unwrap();
}

fn debit(s: &mut session_store::ActiveSession, amount: i64) {
    s.modify("balance", move |b: Option<i64>| b.unwrap_or(0) - amount)
        .unwrap();
}

// Scenarios that hold, kept for coverage the other suites lack. The
// violations found by this review (a carried save lost when the private
// rewrite failed, an in-doubt create settled after a rebuild, a late
// private save credited to the retry, a re-signed cookie after a login, a
// login cutting short a touched expiry) are reported to the maintainers
// with their failing tests, to be added with the fixes.

/// `judge` without its `fresh.version() > doubted` guard, at the window's
/// edge: a lost save that did not land on v1, then exactly RECENT_WRITES
/// foreign saves. The writer of v2 is still in the history, so the commit
/// knows its save is not there and replays it once; one more foreign save
/// and it cannot tell.
#[tokio::test]
async fn a_lost_save_is_judged_at_the_edge_of_the_write_history() {
    for (foreign, knowable) in [
        (session_store::RECENT_WRITES, true),
        (session_store::RECENT_WRITES + 1, false),
    ] {
        let (store, manager, cookie) = setup().await;
        let mut s = manager.start(&jar(&cookie)).await.unwrap();
        debit(&mut s, 10);
        Scripted::script(&store.updates, &[fault(Fault::LostUnapplied)]);
        store.get_fails.store(1000, Ordering::SeqCst);
        assert!(s.commit().await.is_err());
        store.get_fails.store(0, Ordering::SeqCst);
        for n in 0..foreign {
            foreign_insert(&manager, &cookie, "n", &n.to_string()).await;
        }
        let answer = s.commit().await;
        let balance: Option<i64> = manager
            .start(&jar(&cookie))
            .await
            .unwrap()
            .get("balance")
            .unwrap();
        if knowable {
            assert!(answer.is_ok(), "{foreign} foreign saves: {answer:?}");
            assert_eq!(balance, Some(90), "{foreign} foreign saves");
        } else {
            assert!(
                matches!(answer, Err(Error::OutcomeUnknown { .. })),
                "{foreign} foreign saves: {answer:?}"
            );
            assert_eq!(balance, Some(100), "{foreign} foreign saves");
        }
    }
}

/// Every attempt has its own write id: a save lost on v1 (still in
/// flight), a retried commit with one more change whose first attempt
/// conflicts with the late landing. The landed save carried one change; the
/// second is replayed on top, the first never again.
#[tokio::test]
async fn a_late_landing_shorter_save_is_told_from_the_retry() {
    let (store, manager, cookie) = setup().await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    debit(&mut s, 10);
    Scripted::script(&store.updates, &[fault(Fault::Deferred)]);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    debit(&mut s, 5);
    Scripted::script(
        &store.updates,
        &[Step {
            land_first: true,
            fault: None,
        }],
    );
    s.commit().await.unwrap();
    assert_eq!(store.in_flight(), 0);
    let after = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(after.get::<i64>("balance").unwrap(), Some(85));
}

/// A lost save on the old record lands while the login retires it, after
/// the login's first commit failed and the app added a change: the landed
/// save is absorbed (applied once), the later change reaches the new record.
#[tokio::test]
async fn a_save_landing_during_a_retried_login_is_absorbed_once() {
    let (store, manager, cookie) = setup().await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    debit(&mut s, 10);
    Scripted::script(&store.updates, &[fault(Fault::Deferred)]);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    s.regenerate().unwrap();
    Scripted::script(&store.delete_ifs, &[fault(Fault::Unsent)]);
    assert!(matches!(s.commit().await, Err(Error::Unavailable { .. })));
    s.insert("user", "ada").unwrap();
    Scripted::script(
        &store.delete_ifs,
        &[Step {
            land_first: true,
            fault: None,
        }],
    );
    let new = s.commit().await.unwrap().expect("the login's cookie");
    let after = manager.start(&jar(&new)).await.unwrap();
    assert_eq!(
        after.get::<i64>("balance").unwrap(),
        Some(90),
        "debited twice"
    );
    assert_eq!(after.get::<String>("user").unwrap().as_deref(), Some("ada"));
    assert_eq!(store.len().await.unwrap(), 1);
    assert!(manager.start(&jar(&cookie)).await.unwrap().is_new());
}

/// A landed save whose reply was lost, then more foreign saves than the
/// record remembers, then a login: the login cannot tell whether its debit
/// is in the record, so it reports that and creates nothing (no double
/// debit, no second record), on every retry.
#[tokio::test]
async fn a_login_after_an_unknowable_save_creates_nothing() {
    let (store, manager, cookie) = setup().await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    debit(&mut s, 10);
    Scripted::script(&store.updates, &[fault(Fault::AppliedThenLost)]);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    for n in 0..=session_store::RECENT_WRITES {
        foreign_insert(&manager, &cookie, "n", &n.to_string()).await;
    }
    s.regenerate().unwrap();
    for attempt in 0..2 {
        let answer = s.commit().await;
        assert!(
            matches!(answer, Err(Error::OutcomeUnknown { .. })),
            "attempt {attempt}: {answer:?}"
        );
    }
    assert_eq!(store.len().await.unwrap(), 1, "a second record appeared");
    let after = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(after.get::<i64>("balance").unwrap(), Some(90));
}

/// `destroy()` after a login failed twice (first new record created, then
/// a second `regenerate()` whose create reply was lost unresolved): every
/// record is deleted, old and new, and the removal cookie is sent.
#[tokio::test]
async fn destroy_after_failed_logins_leaves_no_record() {
    let (store, manager, cookie) = setup().await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    s.regenerate().unwrap();
    Scripted::script(&store.delete_ifs, &[fault(Fault::Unsent)]);
    assert!(s.commit().await.is_err());
    assert_eq!(store.len().await.unwrap(), 2);
    s.regenerate().unwrap();
    // The discarded first record is deleted at commit start, then the
    // second create lands but its reply is lost and cannot be re-read.
    Scripted::script(&store.creates, &[fault(Fault::AppliedThenLost)]);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    s.destroy();
    let removal = s.commit().await.unwrap().expect("a removal cookie");
    assert_eq!(removal.max_age(), Some(session_store::time::Duration::ZERO));
    assert_eq!(
        store.len().await.unwrap(),
        0,
        "a record survived the logout"
    );
}

/// A regeneration whose old save is in doubt races a logout: step 1 finds
/// the old record gone and creates nothing, even with a create of an
/// earlier commit in doubt; no cookie.
#[tokio::test]
async fn a_login_with_a_create_in_doubt_racing_a_logout_creates_nothing() {
    let (store, manager, cookie) = setup().await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    debit(&mut s, 10);
    Scripted::script(&store.updates, &[fault(Fault::LostUnapplied)]);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    s.regenerate().unwrap();
    // Step 1 re-reads the old record; the create lands, its reply is lost,
    // and the re-read of the new record fails.
    Scripted::script(&store.gets, &[PASS]);
    Scripted::script(&store.creates, &[fault(Fault::AppliedThenLost)]);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    let mut logout = manager.start(&jar(&cookie)).await.unwrap();
    logout.destroy();
    logout.commit().await.unwrap();
    let answer = s.commit().await.unwrap();
    assert!(answer.is_none(), "a cookie for a logged-out session");
    assert!(s.is_gone());
    assert_eq!(store.len().await.unwrap(), 0, "the login created a record");
}

/// Flash across a replayed login: the request read a flash value, its save
/// landed with the reply lost, another request set a newer flash under the
/// same key; the login absorbs its landed save and keeps the newer flash.
#[tokio::test]
async fn a_login_absorbing_its_landed_save_keeps_a_newer_flash() {
    let (store, manager, cookie) = setup().await;
    let mut setter = manager.start(&jar(&cookie)).await.unwrap();
    setter.flash("msg", "first").unwrap();
    setter.commit().await.unwrap();
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(
        s.get_flash::<String>("msg").unwrap().as_deref(),
        Some("first")
    );
    debit(&mut s, 10);
    Scripted::script(&store.updates, &[fault(Fault::AppliedThenLost)]);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    let mut b = manager.start(&jar(&cookie)).await.unwrap();
    b.flash("msg", "second").unwrap();
    b.commit().await.unwrap();
    s.regenerate().unwrap();
    let new = s.commit().await.unwrap().expect("the login's cookie");
    let mut after = manager.start(&jar(&new)).await.unwrap();
    assert_eq!(after.get::<i64>("balance").unwrap(), Some(90));
    assert_eq!(
        after.get_flash::<String>("msg").unwrap().as_deref(),
        Some("second")
    );
}

// The violations the review found, fixed since: each failed before its fix.

/// A save carried into the new record during a login, whose rewrite of the
/// new record failed: the retried commit (no doubt left to settle) still
/// rewrites it, so the acknowledged save is not lost.
#[tokio::test]
async fn a_carried_save_whose_private_rewrite_failed_survives_the_retry() {
    let (store, manager, cookie) = setup().await;
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    login.insert("user", "ada").unwrap();
    login.regenerate().unwrap();
    foreign_insert(&manager, &cookie, "theme", "dark").await;
    // create, delete_if conflicts, re-read, rebase, then the private
    // rewrite fails before it is sent.
    Scripted::script(&store.updates, &[fault(Fault::Unsent)]);
    assert!(matches!(
        login.commit().await,
        Err(Error::Unavailable { .. })
    ));
    let new = login.commit().await.unwrap().expect("the login's cookie");
    let after = manager.start(&jar(&new)).await.unwrap();
    assert_eq!(after.get::<String>("user").unwrap().as_deref(), Some("ada"));
    assert_eq!(
        after.get::<String>("theme").unwrap().as_deref(),
        Some("dark"),
        "an acknowledged save was lost by the login"
    );
}

/// Step 1 rebuilds the session from a newer old record, then step 2
/// settles an earlier commit's create, whose record predates the rebuild:
/// the rebuilt session is what the new record ends up holding.
#[tokio::test]
async fn a_create_in_doubt_settled_after_a_rebuild_keeps_a_foreign_save() {
    let (store, manager, cookie) = setup().await;
    let mut s = manager.start(&jar(&cookie)).await.unwrap();
    debit(&mut s, 10);
    // 1st commit: the save is lost without landing; the re-read fails.
    Scripted::script(&store.updates, &[fault(Fault::LostUnapplied)]);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    s.regenerate().unwrap();
    // 2nd commit: step 1 re-reads the old record (fine), the create lands
    // with its reply lost, and the new record cannot be re-read.
    Scripted::script(&store.gets, &[PASS]);
    Scripted::script(&store.creates, &[fault(Fault::AppliedThenLost)]);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    // Another request saves to the old record, acknowledged.
    foreign_insert(&manager, &cookie, "theme", "dark").await;
    let new = s.commit().await.unwrap().expect("the login's cookie");
    let after = manager.start(&jar(&new)).await.unwrap();
    assert_eq!(after.get::<i64>("balance").unwrap(), Some(90));
    assert_eq!(
        after.get::<String>("theme").unwrap().as_deref(),
        Some("dark"),
        "an acknowledged save was lost by the login"
    );
}

/// A private save of an earlier commit (carrying fewer changes) lands late,
/// just before the retry's save, whose reply is lost: the version bump is
/// not taken for the retry's own write (write ids tell), so the change made
/// before the retry reaches the record.
#[tokio::test]
async fn a_late_private_save_is_not_mistaken_for_the_retry() {
    let (store, manager, cookie) = setup().await;
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    login.insert("user", "ada").unwrap();
    login.regenerate().unwrap();
    // 1st commit: new record created, retirement fails before it is sent.
    Scripted::script(&store.delete_ifs, &[fault(Fault::Unsent)]);
    assert!(login.commit().await.is_err());
    // 2nd commit: one more change; its private save stays in flight.
    login.insert("theme", "dark").unwrap();
    Scripted::script(&store.updates, &[fault(Fault::Deferred)]);
    store.get_fails.store(1000, Ordering::SeqCst);
    assert!(login.commit().await.is_err());
    store.get_fails.store(0, Ordering::SeqCst);
    // 3rd commit: another change; the 2nd commit's save lands first, this
    // save (now a conflict) loses its reply.
    login.insert("lang", "fr").unwrap();
    Scripted::script(
        &store.updates,
        &[Step {
            land_first: true,
            fault: Some(Fault::LostUnapplied),
        }],
    );
    let new = login.commit().await.unwrap().expect("the login's cookie");
    let after = manager.start(&jar(&new)).await.unwrap();
    assert_eq!(
        after.get::<String>("theme").unwrap().as_deref(),
        Some("dark")
    );
    assert_eq!(
        after.get::<String>("lang").unwrap().as_deref(),
        Some("fr"),
        "a change made before the retried commit is missing"
    );
}

/// A read-only request whose cookie was signed with a rotated-out key
/// would re-issue it; a parallel login retired the token first: no cookie
/// (it could overwrite the login's).
#[tokio::test]
async fn no_re_signed_cookie_is_sent_after_a_login_retired_it() {
    use session_store::cookie::Key;
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
    let rotated = SessionManager::new(store, keys(vec![new_key, old_key])).unwrap();
    let mut reader = rotated.start(&jar(&cookie)).await.unwrap();
    // Without the login, the reader would re-sign the cookie.
    let mut twin = rotated.start(&jar(&cookie)).await.unwrap();
    assert!(twin.commit().await.unwrap().is_some(), "re-signed");
    let mut login = rotated.start(&jar(&cookie)).await.unwrap();
    login.regenerate().unwrap();
    login.commit().await.unwrap().expect("the login's cookie");
    let answer = reader.commit().await.unwrap();
    assert!(
        answer.is_none(),
        "a cookie for the retired pre-login token: {answer:?}"
    );
}

/// A touch does not bump the version, so the login's compare-and-delete
/// cannot see a later expiry a faster request wrote: the login computes its
/// own expiry at commit time, never earlier than that one.
#[tokio::test]
async fn a_login_does_not_cut_short_an_expiry_a_faster_request_extended() {
    let config = SessionConfig {
        touch_after: Duration::ZERO,
        ..dev()
    };
    let (store, manager, cookie) = setup_with(config).await;
    let mut login = manager.start(&jar(&cookie)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut fast = manager.start(&jar(&cookie)).await.unwrap();
    fast.commit().await.unwrap();
    let extended = store
        .get(&fast.id())
        .await
        .unwrap()
        .unwrap()
        .expires_at_millis();
    login.regenerate().unwrap();
    login.commit().await.unwrap().expect("the login's cookie");
    let after = store
        .get(&login.id())
        .await
        .unwrap()
        .unwrap()
        .expires_at_millis();
    assert!(
        after >= extended,
        "the login moved the expiry back by {} ms",
        extended - after
    );
}

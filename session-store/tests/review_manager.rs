//! An adversarial review of the manager's commit rules: each test attacks
//! one sentence of the documented contract (`ActiveSession::commit`,
//! `regenerate`, `SessionManager::start`, `SessionConfig`,
//! `jar_from_cookie_headers`, README "What the manager does for you").
//!
//! `Chaos` wraps the reference store and lets a test script each call:
//! fail it before it reaches the store, let it land and then lose the
//! reply, or run another request's work (directly on the inner store)
//! right before or after it. Interleavings are therefore exact, not timed.
#![cfg(feature = "conformance")]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use session_store::conformance::ReferenceStore;
use session_store::cookie::{Cookie, CookieJar, Key};
use session_store::time::OffsetDateTime;
use session_store::{
    jar_from_cookie_headers, DeleteOutcome, Error, Result, Session, SessionConfig, SessionId,
    SessionInterface, SessionManager, SessionToken, UpdateOutcome, MAX_VERSION, RECENT_WRITES,
};

type Action = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Get,
    Create,
    Update,
    DeleteIf,
    Delete,
    Touch,
}

/// What `Chaos` does with one call.
enum Plan {
    Pass,
    /// Fails with a backend error without reaching the store.
    FailBefore,
    /// Reaches the store, then fails with a backend error (a lost reply).
    FailAfter,
    /// Runs another request's work, then the call.
    RunBefore(Action),
    /// Holds the write back (an `update` or `create` stuck in the network)
    /// and fails; [`Chaos::release`] lands it later.
    Delay,
}

/// A write held back by [`Plan::Delay`].
enum Held {
    Update(Session, u64),
    Create(Session),
}

type Script = Box<dyn FnMut(Op, &SessionId) -> Plan + Send>;

#[derive(Default)]
struct Chaos {
    inner: Arc<ReferenceStore>,
    script: Mutex<Option<Script>>,
    held: Arc<Mutex<Vec<Held>>>,
}

impl std::fmt::Debug for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaos").finish_non_exhaustive()
    }
}

fn lost() -> Error {
    Error::backend("chaos", "test", "timed out after 100ms")
}

impl Chaos {
    fn script(&self, script: impl FnMut(Op, &SessionId) -> Plan + Send + 'static) {
        *self.script.lock().unwrap() = Some(Box::new(script));
    }

    fn calm(&self) {
        *self.script.lock().unwrap() = None;
    }

    /// Work that lands every held-back write, in order, and says how each
    /// went (`true`: it wrote).
    fn release(&self) -> impl Future<Output = Vec<bool>> + Send + 'static {
        let held = self.held.clone();
        let inner = self.inner.clone();
        async move {
            let writes: Vec<Held> = std::mem::take(&mut *held.lock().unwrap());
            let mut landed = Vec::new();
            for write in writes {
                landed.push(match write {
                    Held::Update(session, version) => matches!(
                        inner.update(&session, version).await,
                        Ok(UpdateOutcome::Updated { .. })
                    ),
                    Held::Create(session) => inner.create(&session).await.is_ok(),
                });
            }
            landed
        }
    }

    fn plan(&self, op: Op, id: &SessionId) -> Plan {
        match self.script.lock().unwrap().as_mut() {
            Some(script) => script(op, id),
            None => Plan::Pass,
        }
    }

    /// Decides the fate of a call; `Ok(true)` means "lose the reply".
    async fn before(&self, op: Op, id: &SessionId) -> Result<bool> {
        let plan = self.plan(op, id);
        self.enact(plan).await
    }

    async fn enact(&self, plan: Plan) -> Result<bool> {
        match plan {
            Plan::Delay => Err(lost()),
            Plan::Pass => Ok(false),
            Plan::FailBefore => Err(lost()),
            Plan::FailAfter => Ok(true),
            Plan::RunBefore(action) => {
                action.await;
                Ok(false)
            }
        }
    }
}

#[async_trait]
impl SessionInterface for Chaos {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let lose = self.before(Op::Get, id).await?;
        let answer = self.inner.get(id).await?;
        if lose {
            return Err(lost());
        }
        Ok(answer)
    }
    async fn set(&self, session: &Session) -> Result<()> {
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        let lose = self.before(Op::Delete, id).await?;
        self.inner.delete(id).await?;
        if lose {
            return Err(lost());
        }
        Ok(())
    }
    async fn create(&self, session: &Session) -> Result<()> {
        let plan = self.plan(Op::Create, &session.id());
        let lose = match plan {
            Plan::Delay => {
                self.held
                    .lock()
                    .unwrap()
                    .push(Held::Create(session.clone()));
                return Err(lost());
            }
            other => self.enact(other).await?,
        };
        self.inner.create(session).await?;
        if lose {
            return Err(lost());
        }
        Ok(())
    }
    async fn update(&self, session: &Session, expected: u64) -> Result<UpdateOutcome> {
        let plan = self.plan(Op::Update, &session.id());
        let lose = match plan {
            Plan::Delay => {
                self.held
                    .lock()
                    .unwrap()
                    .push(Held::Update(session.clone(), expected));
                return Err(lost());
            }
            other => self.enact(other).await?,
        };
        let outcome = self.inner.update(session, expected).await?;
        if lose {
            return Err(lost());
        }
        Ok(outcome)
    }
    async fn delete_if(&self, id: &SessionId, expected: u64) -> Result<DeleteOutcome> {
        let lose = self.before(Op::DeleteIf, id).await?;
        let outcome = self.inner.delete_if(id, expected).await?;
        if lose {
            return Err(lost());
        }
        Ok(outcome)
    }
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let lose = self.before(Op::Touch, id).await?;
        let moved = self.inner.touch(id, expires_at).await?;
        if lose {
            return Err(lost());
        }
        Ok(moved)
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

fn dev() -> SessionConfig {
    SessionConfig {
        secure: false,
        resolve_timeout: Duration::from_millis(150),
        ..SessionConfig::default()
    }
}

fn jar(cookie: &Cookie<'static>) -> CookieJar {
    let mut jar = CookieJar::new();
    jar.add_original(cookie.clone());
    jar
}

struct World {
    store: Arc<Chaos>,
    /// The app over the faulty store.
    app: SessionManager,
    /// Other requests, straight on the reference store (no faults).
    others: Arc<SessionManager>,
    cookie: Cookie<'static>,
}

async fn world(config: SessionConfig) -> World {
    let store = Arc::new(Chaos::default());
    let app = SessionManager::new(store.clone(), config.clone()).unwrap();
    let others = Arc::new(SessionManager::new(store.inner.clone(), config).unwrap());
    let mut s = app.start(&CookieJar::new()).await.unwrap();
    s.insert("balance", &100i64).unwrap();
    let cookie = s.commit().await.unwrap().expect("a cookie");
    World {
        store,
        app,
        others,
        cookie,
    }
}

fn debit(s: &mut session_store::ActiveSession, amount: i64) {
    s.modify("balance", move |b: Option<i64>| b.unwrap_or(0) - amount)
        .unwrap();
}

/// Another request's work, to run inside a store call.
fn other_request(
    others: &Arc<SessionManager>,
    cookie: &Cookie<'static>,
    work: impl FnOnce(&mut session_store::ActiveSession) + Send + 'static,
) -> Action {
    let others = others.clone();
    let cookie = cookie.clone();
    Box::pin(async move {
        let mut s = others.start(&jar(&cookie)).await.unwrap();
        assert!(!s.is_new(), "the other request found no session");
        work(&mut s);
        s.commit().await.unwrap();
    })
}

async fn load(manager: &SessionManager, cookie: &Cookie<'static>) -> Option<Session> {
    let s = manager.start(&jar(cookie)).await.unwrap();
    (!s.is_new()).then(|| s.session().clone())
}

async fn balance(manager: &SessionManager, cookie: &Cookie<'static>) -> Option<i64> {
    load(manager, cookie)
        .await
        .and_then(|s| s.get::<i64>("balance").unwrap())
}

/// A script that sees each call with its number among calls of its kind
/// (from 0).
fn counted(
    mut f: impl FnMut(Op, u32) -> Plan + Send + 'static,
) -> impl FnMut(Op, &SessionId) -> Plan + Send + 'static {
    let mut seen = std::collections::HashMap::<Op, u32>::new();
    move |op, _| {
        let n = seen.entry(op).or_insert(0);
        let this = *n;
        *n += 1;
        f(op, this)
    }
}

impl std::hash::Hash for Op {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (*self as u8).hash(state);
    }
}

/// Work that does nothing but land held writes, asserting how they went.
fn release_expecting(store: &Chaos, expected: Vec<bool>) -> Action {
    let release = store.release();
    Box::pin(async move {
        assert_eq!(release.await, expected, "held writes landed differently");
    })
}

// ---------------------------------------------------------------------------
// Lost and delayed replies on a plain save
// ---------------------------------------------------------------------------

/// The save is held up in the network: the commit sees a timeout, re-reads
/// (nothing there), and the original lands just before the retry. The
/// retry conflicts with it and must recognise it as its own.
#[tokio::test]
async fn a_delayed_original_landing_before_the_retry_counts_once() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 30);
    let store = w.store.clone();
    w.store.script(counted(move |op, n| match (op, n) {
        (Op::Update, 0) => Plan::Delay,
        (Op::Update, 1) => Plan::RunBefore(release_expecting(&store, vec![true])),
        _ => Plan::Pass,
    }));
    let answer = s.commit().await;
    w.store.calm();
    assert!(
        answer.is_ok(),
        "a save that landed was reported as {answer:?}"
    );
    assert_eq!(balance(&w.app, &w.cookie).await, Some(70), "not one debit");
    assert_eq!(s.get::<i64>("balance").unwrap(), Some(70));
    s.commit().await.unwrap();
    assert_eq!(balance(&w.app, &w.cookie).await, Some(70));
}

/// The held original lands after the commit rebased onto another
/// request's save and retried: the compare-and-set refuses it.
#[tokio::test]
async fn a_delayed_original_landing_after_a_rebased_retry_is_refused() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 30);
    let (others, cookie) = (w.others.clone(), w.cookie.clone());
    w.store.script(counted(move |op, n| match (op, n) {
        (Op::Update, 0) => Plan::Delay,
        (Op::Get, 0) => Plan::RunBefore(other_request(&others, &cookie, |o| debit(o, 5))),
        _ => Plan::Pass,
    }));
    s.commit().await.unwrap();
    w.store.calm();
    assert_eq!(
        w.store.release().await,
        vec![false],
        "the late original landed"
    );
    assert_eq!(balance(&w.app, &w.cookie).await, Some(65));
}

/// Lost twice: the first attempt never lands, the commit rebases onto
/// another save, and the rebased attempt lands but its reply is lost.
#[tokio::test]
async fn a_lost_reply_on_the_rebased_attempt_is_recognised() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 30);
    let (others, cookie) = (w.others.clone(), w.cookie.clone());
    w.store.script(counted(move |op, n| match (op, n) {
        (Op::Update, 0) => Plan::FailBefore,
        (Op::Get, 0) => Plan::RunBefore(other_request(&others, &cookie, |o| debit(o, 5))),
        (Op::Update, 1) => Plan::FailAfter,
        _ => Plan::Pass,
    }));
    s.commit()
        .await
        .expect("the landed rebased save is success");
    w.store.calm();
    assert_eq!(balance(&w.app, &w.cookie).await, Some(65));
}

/// A new session's create held up in the network lands just before the
/// retry.
#[tokio::test]
async fn a_delayed_create_landing_before_the_retry_leaves_an_unreachable_orphan() {
    let store = Arc::new(Chaos::default());
    let app = SessionManager::new(store.clone(), dev()).unwrap();
    let mut s = app.start(&CookieJar::new()).await.unwrap();
    s.insert("k", &1u8).unwrap();
    let chaos = store.clone();
    store.script(counted(move |op, n| match (op, n) {
        (Op::Create, 0) => Plan::Delay,
        (Op::Create, 1) => Plan::RunBefore(release_expecting(&chaos, vec![true])),
        _ => Plan::Pass,
    }));
    let cookie = s.commit().await.unwrap().expect("a cookie");
    store.calm();
    // The retry used a fresh id (a lost create is never retried under its
    // own id: see f9 below), so the late original is an orphan under an id
    // no browser was given; the cookie's record holds the data once.
    let record = load(&app, &cookie).await.expect("the cookie loads");
    assert_eq!(record.version(), 1);
    assert_eq!(record.get::<u8>("k").unwrap(), Some(1));
    assert!(store.len().await.unwrap() <= 2);
}

/// Fails the save's reply after it landed (or before, when `lands` is
/// false) and every re-read, so the commit cannot tell: an error.
async fn unresolved_save(w: &World, s: &mut session_store::ActiveSession, lands: bool) {
    w.store.script(counted(move |op, n| match (op, n) {
        (Op::Update, 0) if lands => Plan::FailAfter,
        (Op::Update, 0) => Plan::FailBefore,
        (Op::Get, _) => Plan::FailBefore,
        _ => Plan::Pass,
    }));
    let answer = s.commit().await;
    w.store.calm();
    assert!(
        matches!(answer, Err(Error::Backend { .. })),
        "unreadable store: {answer:?}"
    );
}

async fn other_saves(w: &World, count: usize) {
    for _ in 0..count {
        other_request(&w.others, &w.cookie, |o| {
            o.modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)
                .unwrap();
        })
        .await;
    }
}

/// The write-id history at its exact edge: a landed save followed by
/// `RECENT_WRITES - 1` others is still in the record, so recognised.
#[tokio::test]
async fn a_landed_save_followed_by_recent_writes_minus_one_saves_is_recognised() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 30);
    unresolved_save(&w, &mut s, true).await;
    other_saves(&w, RECENT_WRITES - 1).await;
    s.commit().await.expect("its write id is still remembered");
    assert_eq!(balance(&w.app, &w.cookie).await, Some(70));
}

/// One more save and the id scrolled out: outcome unknown, not a replay.
#[tokio::test]
async fn a_landed_save_followed_by_recent_writes_saves_is_outcome_unknown() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 30);
    unresolved_save(&w, &mut s, true).await;
    other_saves(&w, RECENT_WRITES).await;
    let answer = s.commit().await;
    assert!(
        matches!(answer, Err(Error::OutcomeUnknown { .. })),
        "{answer:?}"
    );
    assert_eq!(balance(&w.app, &w.cookie).await, Some(70), "debited twice");
}

/// A save that never landed, followed by exactly `RECENT_WRITES` others:
/// the history still names the writer of the version it would have made,
/// so the commit knows it did not land and applies it (once).
#[tokio::test]
async fn an_unlanded_save_followed_by_recent_writes_saves_is_applied_once() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 30);
    unresolved_save(&w, &mut s, false).await;
    other_saves(&w, RECENT_WRITES).await;
    s.commit()
        .await
        .expect("the history proves it did not land");
    assert_eq!(balance(&w.app, &w.cookie).await, Some(70));
    let record = load(&w.app, &w.cookie).await.unwrap();
    assert_eq!(
        record.get::<u64>("visits").unwrap(),
        Some(RECENT_WRITES as u64)
    );
}

/// A lost reply, then a logout before the re-read: nothing comes back.
#[tokio::test]
async fn a_lost_reply_then_a_logout_revives_nothing() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 30);
    let (others, cookie) = (w.others.clone(), w.cookie.clone());
    w.store.script(counted(move |op, n| match (op, n) {
        (Op::Update, 0) => Plan::Delay,
        (Op::Get, 0) => Plan::RunBefore(other_request(&others, &cookie, |o| o.destroy())),
        _ => Plan::Pass,
    }));
    let answer = s.commit().await.unwrap();
    w.store.calm();
    assert!(answer.is_none(), "a cookie for a logged-out session");
    assert!(s.is_gone());
    assert_eq!(
        w.store.release().await,
        vec![false],
        "the held save revived it"
    );
    assert_eq!(w.store.len().await.unwrap(), 0);
}

// ---------------------------------------------------------------------------
// Regeneration under races
// ---------------------------------------------------------------------------

/// A logout lands between the login's create and its compare-and-delete.
#[tokio::test]
async fn a_logout_between_create_and_delete_if_wins() {
    let w = world(dev()).await;
    let mut login = w.app.start(&jar(&w.cookie)).await.unwrap();
    login.insert("user", "ada").unwrap();
    login.regenerate().unwrap();
    let (others, cookie) = (w.others.clone(), w.cookie.clone());
    w.store.script(counted(move |op, n| match (op, n) {
        (Op::DeleteIf, 0) => Plan::RunBefore(other_request(&others, &cookie, |o| o.destroy())),
        _ => Plan::Pass,
    }));
    assert!(login.commit().await.unwrap().is_none());
    w.store.calm();
    assert!(login.is_gone());
    assert_eq!(
        w.store.len().await.unwrap(),
        0,
        "the login survived a logout"
    );
}

/// A save lands (carried over), then a logout lands before the next
/// compare-and-delete: the carried-over record is dropped too.
#[tokio::test]
async fn a_logout_during_the_carry_over_loop_wins() {
    let w = world(dev()).await;
    let mut login = w.app.start(&jar(&w.cookie)).await.unwrap();
    login.insert("user", "ada").unwrap();
    login.regenerate().unwrap();
    let (others, cookie) = (w.others.clone(), w.cookie.clone());
    w.store.script(counted(move |op, n| match (op, n) {
        (Op::DeleteIf, 0) => Plan::RunBefore(other_request(&others, &cookie, |o| {
            o.insert("cart", &3u32).unwrap()
        })),
        (Op::DeleteIf, 1) => Plan::RunBefore(other_request(&others, &cookie, |o| o.destroy())),
        _ => Plan::Pass,
    }));
    assert!(login.commit().await.unwrap().is_none());
    w.store.calm();
    assert_eq!(
        w.store.len().await.unwrap(),
        0,
        "the login survived a logout"
    );
}

/// Another login regenerates the same session between our create and our
/// compare-and-delete: theirs wins, ours leaves nothing behind.
#[tokio::test]
async fn a_concurrent_login_between_create_and_delete_if_wins() {
    let w = world(dev()).await;
    let mut login = w.app.start(&jar(&w.cookie)).await.unwrap();
    login.regenerate().unwrap();
    let theirs: Arc<Mutex<Option<Cookie<'static>>>> = Arc::default();
    let (others, cookie, slot) = (w.others.clone(), w.cookie.clone(), theirs.clone());
    w.store.script(counted(move |op, n| match (op, n) {
        (Op::DeleteIf, 0) => {
            let (others, cookie, slot) = (others.clone(), cookie.clone(), slot.clone());
            Plan::RunBefore(Box::pin(async move {
                let mut other = others.start(&jar(&cookie)).await.unwrap();
                other.regenerate().unwrap();
                *slot.lock().unwrap() = other.commit().await.unwrap();
            }))
        }
        _ => Plan::Pass,
    }));
    assert!(login.commit().await.unwrap().is_none());
    w.store.calm();
    assert_eq!(w.store.len().await.unwrap(), 1, "two logins' records");
    let theirs = theirs.lock().unwrap().clone().expect("their cookie");
    assert_eq!(balance(&w.app, &theirs).await, Some(100));
    assert!(load(&w.app, &w.cookie).await.is_none(), "the old id lives");
}

/// `destroy()` after a regeneration whose commit failed half-way deletes
/// both records and expires the cookie.
#[tokio::test]
async fn destroy_after_a_half_done_regeneration_deletes_both_records() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    s.insert("user", "ada").unwrap();
    s.regenerate().unwrap();
    w.store.script(counted(|op, _| match op {
        Op::DeleteIf | Op::Get => Plan::FailBefore,
        _ => Plan::Pass,
    }));
    assert!(s.commit().await.is_err());
    w.store.calm();
    assert_eq!(w.store.len().await.unwrap(), 2, "the create did not happen");
    s.destroy();
    let answer = s.commit().await.unwrap().expect("a removal cookie");
    assert_eq!(answer.max_age(), Some(session_store::time::Duration::ZERO));
    assert_eq!(
        w.store.len().await.unwrap(),
        0,
        "a record outlived the logout"
    );
    assert!(
        s.commit().await.unwrap().is_none(),
        "the removal is sent once"
    );
}

/// `regenerate()` again after a failed regeneration commit: one record in
/// the end, under the last id; the first new id is dropped.
#[tokio::test]
async fn regenerate_twice_after_a_failed_commit_leaves_one_record() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    s.regenerate().unwrap();
    w.store.script(counted(|op, _| match op {
        Op::DeleteIf | Op::Get => Plan::FailBefore,
        _ => Plan::Pass,
    }));
    assert!(s.commit().await.is_err());
    w.store.calm();
    let abandoned = s.id();
    s.regenerate().unwrap();
    assert_ne!(s.id(), abandoned);
    let cookie = s.commit().await.unwrap().expect("the new cookie");
    assert_eq!(w.store.len().await.unwrap(), 1);
    assert!(!w.store.exists(&abandoned).await.unwrap());
    assert_eq!(balance(&w.app, &cookie).await, Some(100));
    assert!(load(&w.app, &w.cookie).await.is_none());
}

/// `regenerate()` on a new session, twice: one record, the last token.
#[tokio::test]
async fn regenerate_on_a_new_session_stores_one_record() {
    let w = world(dev()).await;
    let mut s = w.app.start(&CookieJar::new()).await.unwrap();
    s.insert("k", &1u8).unwrap();
    s.regenerate().unwrap();
    s.regenerate().unwrap();
    let cookie = s.commit().await.unwrap().expect("a cookie");
    assert_eq!(cookie.value(), s.token().as_str());
    assert_eq!(
        w.store.len().await.unwrap(),
        2,
        "the world's session and this one"
    );
    assert!(load(&w.app, &cookie).await.is_some());
    // An empty new session regenerated is still not stored.
    let mut empty = w.app.start(&CookieJar::new()).await.unwrap();
    empty.regenerate().unwrap();
    assert!(empty.commit().await.unwrap().is_none());
    assert_eq!(w.store.len().await.unwrap(), 2);
}

/// A regeneration whose create's reply was lost, then a logout: the
/// in-doubt create is recognised and then dropped with the login.
#[tokio::test]
async fn a_lost_create_reply_in_a_regeneration_then_a_logout_leaves_nothing() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    s.regenerate().unwrap();
    let (others, cookie) = (w.others.clone(), w.cookie.clone());
    w.store.script(counted(move |op, n| match (op, n) {
        (Op::Create, 0) => Plan::FailAfter,
        (Op::DeleteIf, 0) => Plan::RunBefore(other_request(&others, &cookie, |o| o.destroy())),
        _ => Plan::Pass,
    }));
    assert!(s.commit().await.unwrap().is_none());
    w.store.calm();
    assert_eq!(w.store.len().await.unwrap(), 0);
}

// ---------------------------------------------------------------------------
// Repeated commits, failing replays
// ---------------------------------------------------------------------------

/// After a successful commit, committing again writes nothing.
#[tokio::test]
async fn committing_again_after_success_writes_nothing() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 1);
    s.regenerate().unwrap();
    let cookie = s.commit().await.unwrap().expect("a cookie");
    let version = load(&w.app, &cookie).await.unwrap().version();
    for _ in 0..3 {
        assert!(s.commit().await.unwrap().is_none());
    }
    assert_eq!(load(&w.app, &cookie).await.unwrap().version(), version);
    assert_eq!(balance(&w.app, &cookie).await, Some(99));
}

/// A `modify` closure that cannot decode the fresh value on replay: the
/// commit fails with the decode error, writes nothing, and fails the same
/// way when called again (the handle stays consistent).
#[tokio::test]
async fn a_modify_that_fails_on_replay_writes_nothing_and_stays_failing() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    s.insert("note", "mine").unwrap();
    debit(&mut s, 30);
    other_request(&w.others, &w.cookie, |o| {
        o.insert("balance", "not a number").unwrap()
    })
    .await;
    for _ in 0..2 {
        let answer = s.commit().await;
        assert!(matches!(answer, Err(Error::Decode { .. })), "{answer:?}");
        assert!(s.is_modified());
        assert!(!s.is_gone());
    }
    let record = load(&w.app, &w.cookie).await.unwrap();
    assert_eq!(
        record.get::<String>("balance").unwrap().as_deref(),
        Some("not a number")
    );
    assert_eq!(
        record.get::<String>("note").unwrap(),
        None,
        "half a replay saved"
    );
}

// ---------------------------------------------------------------------------
// Cookies, timeouts, versions
// ---------------------------------------------------------------------------

/// A session past its absolute timeout: a request that loaded it just
/// before commits nothing; the next request starts fresh.
#[tokio::test]
async fn the_absolute_timeout_ends_a_session_mid_request() {
    let config = SessionConfig {
        absolute_timeout: Some(Duration::from_millis(300)),
        touch_after: Duration::ZERO,
        ..dev()
    };
    let w = world(config).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    assert!(!s.is_new());
    assert!(s.session().expires_at_millis() <= s.session().created_at_millis() + 300);
    tokio::time::sleep(Duration::from_millis(400)).await;
    debit(&mut s, 1);
    assert!(s.commit().await.unwrap().is_none());
    assert!(s.is_gone());
    let fresh = w.app.start(&jar(&w.cookie)).await.unwrap();
    assert!(fresh.is_new());
    assert_eq!(w.store.inner.len().await.unwrap(), 0);
}

/// Signed cookies survive the trip through `Set-Cookie` and `Cookie`
/// headers, and key rotation re-issues them under the current key.
#[tokio::test]
async fn signed_cookies_round_trip_through_headers_across_a_rotation() {
    let (old_key, new_key) = (Key::generate(), Key::generate());
    let store: Arc<dyn SessionInterface> = Arc::new(ReferenceStore::new());
    let keys = |keys: Vec<Key>| SessionConfig {
        signing_keys: keys,
        ..SessionConfig::default()
    };
    let header = |c: &Cookie<'static>| {
        format!(
            "{}={}",
            c.name(),
            c.encoded()
                .to_string()
                .split_once('=')
                .unwrap()
                .1
                .split(';')
                .next()
                .unwrap()
        )
    };
    let old = SessionManager::new(store.clone(), keys(vec![old_key.clone()])).unwrap();
    let mut s = old.start(&CookieJar::new()).await.unwrap();
    s.insert("n", &1u8).unwrap();
    let cookie = s.commit().await.unwrap().unwrap();
    assert_eq!(cookie.name(), "__Host-id");
    let sent = header(&cookie);
    let rotated = SessionManager::new(store.clone(), keys(vec![new_key.clone(), old_key])).unwrap();
    let mut s = rotated
        .start(&jar_from_cookie_headers([sent.as_str()]))
        .await
        .unwrap();
    assert!(!s.is_new(), "the signed cookie did not survive the headers");
    let resigned = s.commit().await.unwrap().expect("re-signed");
    let retired = SessionManager::new(store.clone(), keys(vec![new_key])).unwrap();
    let sent = header(&resigned);
    let s = retired
        .start(&jar_from_cookie_headers([sent.as_str()]))
        .await
        .unwrap();
    assert_eq!(s.get::<u8>("n").unwrap(), Some(1));
    // The bare token without a signature is refused.
    let bare = format!("__Host-id={}", s.token().as_str());
    let s = retired
        .start(&jar_from_cookie_headers([bare.as_str()]))
        .await
        .unwrap();
    assert!(s.is_new(), "an unsigned token was accepted");
}

/// With the secure defaults the session is read only from `__Host-id`:
/// a plain `id` cookie (which a sibling subdomain can plant) is ignored,
/// and two `__Host-id` values start a fresh session.
#[tokio::test]
async fn the_host_prefixed_name_is_the_only_one_read() {
    let w = world(SessionConfig {
        resolve_timeout: Duration::from_millis(150),
        ..SessionConfig::default()
    })
    .await;
    assert_eq!(w.cookie.name(), "__Host-id");
    let token = w.cookie.value();
    let plain = format!("id={token}");
    let s = w
        .app
        .start(&jar_from_cookie_headers([plain.as_str()]))
        .await
        .unwrap();
    assert!(s.is_new(), "a plain-named cookie was trusted");
    let stranger = SessionToken::generate();
    let doubled = format!("__Host-id={token}; __Host-id={}", stranger.as_str());
    let s = w
        .app
        .start(&jar_from_cookie_headers([doubled.as_str()]))
        .await
        .unwrap();
    assert!(s.is_new());
    let split = [
        format!("__Host-id={token}"),
        format!("__Host-id={}", stranger.as_str()),
    ];
    let s = w
        .app
        .start(&jar_from_cookie_headers(split.iter().map(String::as_str)))
        .await
        .unwrap();
    assert!(
        s.is_new(),
        "duplicates across two Cookie headers were trusted"
    );
    let beside = format!("id={}; __Host-id={token}", stranger.as_str());
    let s = w
        .app
        .start(&jar_from_cookie_headers([beside.as_str()]))
        .await
        .unwrap();
    assert!(
        !s.is_new(),
        "a plain cookie beside ours locked the user out"
    );
}

/// Versions at the top of the range: the last storable version is
/// reachable, the next save is refused without writing, and regenerating
/// restarts the count.
#[tokio::test]
async fn versions_at_max_version() {
    let w = world(dev()).await;
    let id = SessionToken::parse(w.cookie.value()).unwrap().id();
    let mut record = w.store.inner.get(&id).await.unwrap().unwrap();
    record.set_version(MAX_VERSION - 1);
    w.store.inner.set(&record).await.unwrap();
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 1);
    s.commit().await.unwrap();
    assert_eq!(
        load(&w.app, &w.cookie).await.unwrap().version(),
        MAX_VERSION
    );
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 1);
    let answer = s.commit().await;
    assert!(
        matches!(answer, Err(Error::VersionOutOfRange { .. })),
        "{answer:?}"
    );
    assert_eq!(balance(&w.app, &w.cookie).await, Some(99), "written anyway");
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    s.regenerate().unwrap();
    let cookie = s.commit().await.unwrap().expect("a cookie");
    assert_eq!(load(&w.app, &cookie).await.unwrap().version(), 1);
    assert_eq!(w.store.len().await.unwrap(), 1);
}

// Findings of the adversarial review, kept as regression tests.

/// F2: `regenerate()` after an unresolved save must not replay it.
#[tokio::test]
async fn f2_regenerate_after_an_unresolved_save_does_not_apply_it_twice() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 30);
    unresolved_save(&w, &mut s, true).await;
    s.regenerate().unwrap();
    let cookie = s.commit().await.unwrap().expect("a cookie");
    assert_eq!(balance(&w.app, &cookie).await, Some(70), "debited twice");
}

/// F1: a change made after a failed commit is saved by the retry.
#[tokio::test]
async fn f1_a_change_made_after_a_failed_commit_is_saved_by_the_retry() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    debit(&mut s, 30);
    unresolved_save(&w, &mut s, true).await;
    s.insert("receipt", "r-1").unwrap();
    let answer = s.commit().await;
    assert!(answer.is_ok(), "{answer:?}");
    let record = load(&w.app, &w.cookie).await.unwrap();
    assert_eq!(record.get::<i64>("balance").unwrap(), Some(70));
    assert_eq!(
        record.get::<String>("receipt").unwrap().as_deref(),
        Some("r-1"),
        "commit said Ok but the later change is not stored (handle shows {:?})",
        s.get::<String>("receipt").unwrap()
    );
}

/// F1b: the same for a new session whose create is in doubt.
#[tokio::test]
async fn f1b_a_change_made_after_a_failed_create_is_saved_by_the_retry() {
    let store = Arc::new(Chaos::default());
    let app = SessionManager::new(store.clone(), dev()).unwrap();
    let mut s = app.start(&CookieJar::new()).await.unwrap();
    s.insert("a", &1u8).unwrap();
    store.script(counted(|op, n| match (op, n) {
        (Op::Create, 0) => Plan::FailAfter,
        (Op::Get, _) => Plan::FailBefore,
        _ => Plan::Pass,
    }));
    assert!(s.commit().await.is_err());
    store.calm();
    s.insert("b", &2u8).unwrap();
    let cookie = s.commit().await.unwrap().expect("a cookie");
    let record = load(&app, &cookie).await.unwrap();
    assert_eq!(record.get::<u8>("a").unwrap(), Some(1));
    assert_eq!(
        record.get::<u8>("b").unwrap(),
        Some(2),
        "the later change was dropped"
    );
}

/// F1c: the same for a regeneration that failed after its create.
#[tokio::test]
async fn f1c_a_change_made_after_a_failed_regeneration_is_saved_by_the_retry() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    s.insert("user", "ada").unwrap();
    s.regenerate().unwrap();
    w.store.script(counted(|op, _| match op {
        Op::DeleteIf | Op::Get => Plan::FailBefore,
        _ => Plan::Pass,
    }));
    assert!(s.commit().await.is_err());
    w.store.calm();
    s.insert("role", "admin").unwrap();
    let cookie = s.commit().await.unwrap().expect("a cookie");
    let record = load(&w.app, &cookie).await.unwrap();
    assert_eq!(
        record.get::<String>("user").unwrap().as_deref(),
        Some("ada")
    );
    assert_eq!(
        record.get::<String>("role").unwrap().as_deref(),
        Some("admin"),
        "the later change was dropped"
    );
}

/// F3: a lost reply on the carry-over into the new record does not wedge
/// the regeneration.
#[tokio::test]
async fn f3_a_lost_reply_on_the_carry_over_is_finished_by_a_retried_commit() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    s.insert("user", "ada").unwrap();
    s.regenerate().unwrap();
    let (others, cookie) = (w.others.clone(), w.cookie.clone());
    let mut broken = false;
    w.store.script(counted(move |op, n| match (op, n) {
        (Op::DeleteIf, 0) => Plan::RunBefore(other_request(&others, &cookie, |o| {
            o.insert("cart", &3u32).unwrap()
        })),
        (Op::Update, 0) => {
            broken = true;
            Plan::FailAfter
        }
        (Op::Get, _) if broken => Plan::FailBefore,
        _ => Plan::Pass,
    }));
    assert!(s.commit().await.is_err());
    w.store.calm();
    let mut last = None;
    for _ in 0..3 {
        last = Some(s.commit().await);
        if matches!(last, Some(Ok(_))) {
            break;
        }
    }
    let new = match last {
        Some(Ok(Some(cookie))) => cookie,
        other => panic!("the retried commits never finish the regeneration: {other:?}"),
    };
    let record = load(&w.app, &new).await.unwrap();
    assert_eq!(record.get::<u32>("cart").unwrap(), Some(3));
    assert_eq!(w.store.len().await.unwrap(), 1);
}

/// F9: a create held up in the network that lands after a logout must not
/// bring the session back under the cookie the browser had.
#[tokio::test]
async fn f9_a_delayed_create_landing_after_logout_does_not_resurrect() {
    let store = Arc::new(Chaos::default());
    let app = SessionManager::new(store.clone(), dev()).unwrap();
    let mut s = app.start(&CookieJar::new()).await.unwrap();
    s.insert("user", "ada").unwrap();
    store.script(counted(|op, n| match (op, n) {
        (Op::Create, 0) => Plan::Delay,
        _ => Plan::Pass,
    }));
    let cookie = s.commit().await.unwrap().expect("a cookie");
    store.calm();
    let mut logout = app.start(&jar(&cookie)).await.unwrap();
    logout.destroy();
    logout.commit().await.unwrap();
    let landed = store.release().await;
    assert!(
        load(&app, &cookie).await.is_none(),
        "the logged-out session came back (held create landed: {landed:?})"
    );
}

/// F4: a retried login whose own delete may have landed says so instead of
/// reporting a logout.
#[tokio::test]
async fn f4_a_retried_regeneration_after_a_lost_delete_reply_reports_the_doubt() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    s.regenerate().unwrap();
    w.store.script(counted(|op, n| match (op, n) {
        (Op::DeleteIf, 0) => Plan::FailAfter,
        (Op::Get, _) => Plan::FailBefore,
        _ => Plan::Pass,
    }));
    assert!(matches!(s.commit().await, Err(Error::Backend { .. })));
    w.store.calm();
    let answer = s.commit().await;
    assert!(
        matches!(answer, Err(Error::OutcomeUnknown { .. })),
        "the login's own delete was reported as a logout: {answer:?}, is_gone = {}",
        s.is_gone()
    );
}

/// F5: a touch that landed is success.
#[tokio::test]
async fn f5_a_touch_that_landed_is_success() {
    let w = world(SessionConfig {
        touch_after: Duration::ZERO,
        ..dev()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    w.store.script(counted(|op, _| match op {
        Op::Touch => Plan::FailAfter,
        _ => Plan::Pass,
    }));
    let answer = s.commit().await;
    w.store.calm();
    assert!(
        answer.is_ok(),
        "a touch that landed was reported as {answer:?}"
    );
}

/// F5b: a logout whose delete landed is success.
#[tokio::test]
async fn f5b_a_delete_that_landed_is_success() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    s.destroy();
    w.store.script(counted(|op, _| match op {
        Op::Delete => Plan::FailAfter,
        _ => Plan::Pass,
    }));
    let answer = s.commit().await;
    w.store.calm();
    assert_eq!(w.store.len().await.unwrap(), 0);
    assert!(
        answer.is_ok(),
        "a logout that landed was reported as {answer:?}"
    );
}

/// F8: `destroy()` after a regeneration whose create is in doubt removes
/// the logged-in record too.
#[tokio::test]
async fn f8_destroy_after_an_in_doubt_regeneration_create_leaves_nothing() {
    let w = world(dev()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    s.insert("user", "ada").unwrap();
    s.regenerate().unwrap();
    w.store.script(counted(|op, n| match (op, n) {
        (Op::Create, 0) => Plan::FailAfter,
        (Op::Get, _) => Plan::FailBefore,
        _ => Plan::Pass,
    }));
    assert!(s.commit().await.is_err());
    w.store.calm();
    s.destroy();
    s.commit().await.unwrap();
    assert_eq!(
        w.store.inner.len().await.unwrap(),
        0,
        "the logged-in record outlived the logout"
    );
}

/// F6: a newer flash that happens to equal the one read survives.
#[tokio::test]
async fn f6_a_newer_flash_with_the_same_value_survives() {
    let w = world(dev()).await;
    other_request(&w.others, &w.cookie, |o| o.flash("msg", "Saved").unwrap()).await;
    let mut first = w.app.start(&jar(&w.cookie)).await.unwrap();
    assert_eq!(
        first.get_flash::<String>("msg").unwrap().as_deref(),
        Some("Saved")
    );
    other_request(&w.others, &w.cookie, |o| {
        o.get_flash::<String>("msg").unwrap();
    })
    .await;
    other_request(&w.others, &w.cookie, |o| o.flash("msg", "Saved").unwrap()).await;
    first.insert("x", &1u8).unwrap();
    first.commit().await.unwrap();
    let mut next = w.app.start(&jar(&w.cookie)).await.unwrap();
    assert_eq!(
        next.get_flash::<String>("msg").unwrap().as_deref(),
        Some("Saved"),
        "the newer flash was consumed by a request that never read it"
    );
}

/// F7: reading the old flash does not consume the one this request set.
#[tokio::test]
async fn f7_a_flash_set_by_this_request_survives_reading_the_old_one() {
    let w = world(dev()).await;
    other_request(&w.others, &w.cookie, |o| o.flash("msg", "Saved").unwrap()).await;
    let mut s = w.app.start(&jar(&w.cookie)).await.unwrap();
    s.flash("msg", "Saved").unwrap();
    assert_eq!(
        s.get_flash::<String>("msg").unwrap().as_deref(),
        Some("Saved")
    );
    s.commit().await.unwrap();
    let mut next = w.app.start(&jar(&w.cookie)).await.unwrap();
    assert_eq!(
        next.get_flash::<String>("msg").unwrap().as_deref(),
        Some("Saved"),
        "the flash this request set for the next one is gone"
    );
}

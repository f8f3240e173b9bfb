//! `ActiveSession::needs_commit`: a layer drops the handle without
//! committing when it says `false`, so it must never say `false` for a
//! commit that would write, touch, delete or send a cookie.
#![cfg(feature = "conformance")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use session_store::conformance::ReferenceStore;
use session_store::cookie::{Cookie, CookieJar, Key};
use session_store::time::OffsetDateTime;
use session_store::{
    async_trait, ActiveSession, DeleteOutcome, Result, Session, SessionConfig, SessionId,
    SessionInterface, SessionManager, UpdateOutcome,
};

/// A reference store that counts the calls a commit may make.
#[derive(Debug, Default)]
struct Calls {
    inner: ReferenceStore,
    calls: AtomicUsize,
}

impl Calls {
    fn note(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
    fn count(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl SessionInterface for Calls {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.note();
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        // Not counted: `start` loads, and a commit re-reads only after
        // a write it made.
        self.inner.get(id).await
    }
    async fn set(&self, session: &Session) -> Result<()> {
        self.note();
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.note();
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Session) -> Result<()> {
        self.note();
        self.inner.create(session).await
    }
    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        self.note();
        self.inner.update(session, expected_version).await
    }
    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        self.note();
        self.inner.delete_if(id, expected_version).await
    }
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        self.note();
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

fn dev() -> SessionConfig {
    SessionConfig {
        secure: false,
        ..SessionConfig::default()
    }
}

fn jar(cookie: &Cookie<'static>) -> CookieJar {
    let mut jar = CookieJar::new();
    jar.add_original(cookie.clone());
    jar
}

/// Commits `s` and checks it against what `needs_commit` said before.
async fn commit_as_promised(store: &Calls, mut s: ActiveSession, expect_needed: bool, case: &str) {
    let needed = s.needs_commit();
    assert_eq!(needed, expect_needed, "{case}: needs_commit");
    let before = store.count();
    let cookie = s.commit().await.unwrap_or_else(|e| panic!("{case}: {e}"));
    if !needed {
        assert!(
            cookie.is_none(),
            "{case}: sent a cookie it said was not due"
        );
        assert_eq!(store.count(), before, "{case}: called the store");
    } else {
        assert!(
            cookie.is_some() || store.count() > before,
            "{case}: said a commit was needed, and it did nothing"
        );
    }
    assert!(!s.needs_commit(), "{case}: still needed after committing");
}

async fn setup(config: SessionConfig) -> (Arc<Calls>, SessionManager, Cookie<'static>) {
    let store = Arc::new(Calls::default());
    let manager = SessionManager::new(store.clone(), config).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("n", &1u64).unwrap();
    s.flash("notice", "saved").unwrap();
    let cookie = s.commit().await.unwrap().expect("a cookie");
    (store, manager, cookie)
}

#[tokio::test]
async fn only_a_commit_with_nothing_to_do_is_skippable() {
    let (store, m, cookie) = setup(dev()).await;
    let cookies = jar(&cookie);
    let load = || m.start(&cookies);

    let s = m.start(&CookieJar::new()).await.unwrap();
    commit_as_promised(&store, s, false, "a new session left empty").await;

    let mut s = m.start(&CookieJar::new()).await.unwrap();
    s.insert("k", &1u8).unwrap();
    commit_as_promised(&store, s, true, "a new session given data").await;

    let s = load().await.unwrap();
    assert_eq!(s.get::<u64>("n").unwrap(), Some(1));
    commit_as_promised(&store, s, false, "a loaded session only read").await;

    let mut s = load().await.unwrap();
    assert!(!s.remove("absent"));
    commit_as_promised(&store, s, false, "removing a key that is not there").await;

    let mut s = load().await.unwrap();
    s.insert("n", &2u64).unwrap();
    commit_as_promised(&store, s, true, "a loaded session changed").await;

    let mut s = load().await.unwrap();
    s.modify("n", |n: Option<u64>| n.unwrap_or(0) + 1).unwrap();
    commit_as_promised(&store, s, true, "a modify").await;

    let mut s = load().await.unwrap();
    assert_eq!(
        s.get_flash::<String>("notice").unwrap().as_deref(),
        Some("saved")
    );
    commit_as_promised(&store, s, true, "a flash value read (consumed)").await;

    let mut s = load().await.unwrap();
    s.regenerate().unwrap();
    commit_as_promised(&store, s, true, "a regeneration").await;
}

#[tokio::test]
async fn a_destroy_and_a_session_ended_elsewhere() {
    let (store, m, cookie) = setup(dev()).await;
    let mut s = m.start(&jar(&cookie)).await.unwrap();
    s.destroy();
    commit_as_promised(&store, s, true, "a destroy").await;

    // The session ended meanwhile: the read-only request has nothing to do.
    let (store, m, cookie) = setup(dev()).await;
    let s = m.start(&jar(&cookie)).await.unwrap();
    store.inner.delete(&s.id()).await.unwrap();
    commit_as_promised(&store, s, false, "read-only, ended elsewhere").await;
}

#[tokio::test]
async fn a_due_touch_is_a_commit() {
    // touch_after zero: every load moves the expiry.
    let (store, m, cookie) = setup(SessionConfig {
        touch_after: Duration::ZERO,
        ..dev()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let s = m.start(&jar(&cookie)).await.unwrap();
    commit_as_promised(&store, s, true, "a read-only load with a touch due").await;
}

#[tokio::test]
async fn a_cookie_signed_with_a_retired_key_is_reissued() {
    let (old, new) = (Key::generate(), Key::generate());
    let (store, m, cookie) = setup(SessionConfig {
        signing_keys: vec![old.clone()],
        ..dev()
    })
    .await;
    let s = m.start(&jar(&cookie)).await.unwrap();
    commit_as_promised(&store, s, false, "signed with the current key").await;
    let rotated = SessionManager::new(
        store.clone(),
        SessionConfig {
            signing_keys: vec![new, old],
            ..dev()
        },
    )
    .unwrap();
    let s = rotated.start(&jar(&cookie)).await.unwrap();
    assert!(!s.is_new(), "the retired key still verifies");
    commit_as_promised(&store, s, true, "signed with a retired key").await;
}

#[tokio::test]
async fn cookie_only_sessions_say_the_same() {
    let m = SessionManager::cookie_only(vec![Key::generate()], dev()).unwrap();
    let store = Calls::default();
    let mut s = m.start(&CookieJar::new()).await.unwrap();
    assert!(!s.needs_commit());
    s.insert("n", &1u64).unwrap();
    assert!(s.needs_commit());
    let cookie = s.commit().await.unwrap().expect("the sealed cookie");
    let s = m.start(&jar(&cookie)).await.unwrap();
    assert_eq!(s.get::<u64>("n").unwrap(), Some(1));
    commit_as_promised(&store, s, false, "a sealed session only read").await;
}

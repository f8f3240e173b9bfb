//! Review of sessions by user through the manager (issue 13): rebinding and
//! regeneration keep the index exact, revoke against in-flight requests and
//! logins, `except`, the per-user cap against concurrent logins and
//! rebinding, and lifecycle events (failed commits, repeated commits,
//! runtimes). The store is the reference store, wrapped where a test needs
//! to step in between two store calls of a commit.
#![cfg(feature = "conformance")]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use session_store::conformance::ReferenceStore;
use session_store::cookie::Cookie;
use session_store::time::OffsetDateTime;
use session_store::{
    async_trait, jar_from_cookie_headers, ActiveSession, DeleteOutcome, Error, EventHook,
    FlushReport, Result, Session, SessionConfig, SessionEvent, SessionId, SessionInterface,
    SessionManager, UpdateOutcome, UserBinding,
};

/// Ways a test steps into the store calls of a commit.
#[derive(Default)]
struct Hooks {
    /// The first `sessions_of` calls (as many as the barrier's size) wait
    /// here first, so that concurrent logins list together.
    list_barrier: Option<Arc<tokio::sync::Barrier>>,
    /// How many `sessions_of` calls have passed.
    listings: std::sync::atomic::AtomicUsize,
    /// The barrier's size.
    barrier_size: usize,
    /// `sessions_of` and `revoke_user` answer `Unsupported` (no index).
    no_index: bool,
    /// After the next `sessions_of`, this session is rebound to `bob`.
    rebind_after_list: Mutex<Option<SessionId>>,
    /// Before the next `delete_if`, this user's sessions are revoked.
    revoke_before_delete_if: Mutex<Option<String>>,
    /// `create` and `update` fail (certainly not applied).
    fail_writes: AtomicBool,
}

struct Hooked {
    inner: ReferenceStore,
    hooks: Hooks,
}

impl fmt::Debug for Hooked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hooked")
    }
}

impl Hooks {
    fn list_barrier_size(&self) -> Option<(Arc<tokio::sync::Barrier>, usize)> {
        self.list_barrier.clone().map(|b| (b, self.barrier_size))
    }
}

impl Hooked {
    fn new(hooks: Hooks) -> Arc<Self> {
        Arc::new(Hooked {
            inner: ReferenceStore::new(),
            hooks,
        })
    }

    fn refuse_write(&self) -> Result<()> {
        if self.hooks.fail_writes.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                store: "hooked",
                context: "writing".into(),
                source: "refused by the test".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl SessionInterface for Hooked {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        self.inner.get(id).await
    }
    async fn set(&self, session: &Session) -> Result<()> {
        self.refuse_write()?;
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Session) -> Result<()> {
        self.refuse_write()?;
        self.inner.create(session).await
    }
    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        self.refuse_write()?;
        self.inner.update(session, expected_version).await
    }
    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        let revoke = self
            .hooks
            .revoke_before_delete_if
            .lock()
            .expect("lock")
            .take();
        if let Some(user) = revoke {
            self.inner.revoke_user(&user, None).await?;
        }
        self.inner.delete_if(id, expected_version).await
    }
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        self.inner.touch(id, expires_at).await
    }
    async fn flush(&self) -> Result<u64> {
        self.inner.flush().await
    }
    async fn flush_reporting(&self) -> Result<FlushReport> {
        self.inner.flush_reporting().await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
    async fn len(&self) -> Result<u64> {
        self.inner.len().await
    }
    async fn sessions_of(&self, user_key: &str) -> Result<Vec<Session>> {
        if self.hooks.no_index {
            return Err(Error::Unsupported {
                store: "hooked",
                operation: "sessions_of",
            });
        }
        let nth = self.hooks.listings.fetch_add(1, Ordering::SeqCst);
        if let Some((barrier, size)) = &self.hooks.list_barrier_size() {
            if nth < *size {
                barrier.wait().await;
            }
        }
        let listed = self.inner.sessions_of(user_key).await?;
        let rebind = self.hooks.rebind_after_list.lock().expect("lock").take();
        if let Some(id) = rebind {
            let mut s = self.inner.get(&id).await?.expect("the session to rebind");
            s.set_user(Some(UserBinding::new("bob", BTreeMap::new())?));
            let version = s.version();
            self.inner.update(&s, version).await?;
        }
        Ok(listed)
    }
    async fn revoke_user(
        &self,
        user_key: &str,
        except: Option<&SessionId>,
    ) -> Result<Vec<SessionId>> {
        if self.hooks.no_index {
            return Err(Error::Unsupported {
                store: "hooked",
                operation: "revoke_user",
            });
        }
        self.inner.revoke_user(user_key, except).await
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        secure: false,
        ..SessionConfig::default()
    }
}

fn header(cookie: &Cookie<'_>) -> String {
    cookie.stripped().encoded().to_string()
}

async fn start(manager: &SessionManager, cookie: Option<&str>) -> ActiveSession {
    manager
        .start(&jar_from_cookie_headers(cookie))
        .await
        .expect("start")
}

fn device(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("device".to_owned(), name.to_owned())])
}

/// An anonymous visit; its cookie header.
async fn visit(manager: &SessionManager) -> String {
    let mut s = start(manager, None).await;
    s.insert("cart", &1u8).expect("insert");
    header(&s.commit().await.expect("commit").expect("cookie"))
}

/// A login from `cookie`'s session: set_user + regenerate + commit; the
/// new cookie header (None when the commit sent none).
async fn log_in_from(manager: &SessionManager, cookie: &str, user: &str) -> Option<String> {
    let mut login = start(manager, Some(cookie)).await;
    login.set_user(user, device(user)).expect("set_user");
    login.regenerate().expect("regenerate");
    login.commit().await.expect("commit").map(|c| header(&c))
}

async fn log_in(manager: &SessionManager, user: &str) -> String {
    let anonymous = visit(manager).await;
    log_in_from(manager, &anonymous, user)
        .await
        .expect("a login cookie")
}

async fn id_of(manager: &SessionManager, cookie: &str) -> Option<SessionId> {
    let s = start(manager, Some(cookie)).await;
    (!s.is_new()).then(|| s.id())
}

async fn listed(manager: &SessionManager, user: &str) -> Vec<SessionId> {
    manager
        .sessions_of(user)
        .await
        .expect("sessions_of")
        .into_iter()
        .map(|s| s.id)
        .collect()
}

type Seen = Arc<Mutex<Vec<SessionEvent>>>;

fn recording() -> (Seen, EventHook) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let hook = EventHook::new(move |event: SessionEvent| {
        sink.lock().expect("lock").push(event);
    });
    (seen, hook)
}

/// The events seen once `count` arrived (or after 2 s), plus 100 ms for
/// any extra one to show up.
async fn settle(seen: &Seen, count: usize) -> Vec<SessionEvent> {
    for _ in 0..200 {
        if seen.lock().expect("lock").len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    seen.lock().expect("lock").clone()
}

// ---------------------------------------------------------------- index

#[tokio::test]
async fn regenerating_a_bound_session_moves_its_listing_to_the_new_id() {
    let store = Hooked::new(Hooks::default());
    let manager = SessionManager::new(store.clone(), config()).expect("manager");
    let cookie = log_in(&manager, "ada").await;
    let first = id_of(&manager, &cookie).await.expect("logged in");
    // A second login step (privilege change) regenerates without set_user.
    let mut again = start(&manager, Some(&cookie)).await;
    again.regenerate().expect("regenerate");
    let cookie2 = header(&again.commit().await.expect("commit").expect("cookie"));
    let second = id_of(&manager, &cookie2).await.expect("still logged in");
    assert_ne!(first, second);
    assert_eq!(listed(&manager, "ada").await, vec![second]);
    assert!(id_of(&manager, &cookie).await.is_none());
    // set_user to another user, then regenerate in the same request.
    let mut switch = start(&manager, Some(&cookie2)).await;
    switch.set_user("bob", device("x")).expect("set_user");
    switch.regenerate().expect("regenerate");
    let cookie3 = header(&switch.commit().await.expect("commit").expect("cookie"));
    let third = id_of(&manager, &cookie3).await.expect("bob");
    assert!(listed(&manager, "ada").await.is_empty());
    assert_eq!(listed(&manager, "bob").await, vec![third]);
}

/// A login's set_user is replayed after a conflict with a concurrent save,
/// and a concurrent save's replay does not undo a rebinding that beat it.
#[tokio::test]
async fn set_user_survives_conflict_replay_in_both_directions() {
    let store = Hooked::new(Hooks::default());
    let manager = SessionManager::new(store.clone(), config()).expect("manager");
    let cookie = visit(&manager).await;
    let mut login = start(&manager, Some(&cookie)).await;
    let mut other = start(&manager, Some(&cookie)).await;
    other.insert("theme", "dark").expect("insert");
    other.commit().await.expect("other commit");
    login.set_user("ada", device("laptop")).expect("set_user");
    login.commit().await.expect("login commit");
    let stored = store.get(&login.id()).await.expect("get").expect("live");
    assert_eq!(stored.user_key(), Some("ada"));
    assert!(stored.contains_key("theme"), "the other save was lost");
    assert_eq!(listed(&manager, "ada").await, vec![login.id()]);

    // Now the other way: a slow request that only inserts loses the race
    // to a rebinding to bob; its replay keeps bob.
    let mut slow = start(&manager, Some(&cookie)).await;
    let mut rebind = start(&manager, Some(&cookie)).await;
    rebind.set_user("bob", device("desk")).expect("set_user");
    rebind.commit().await.expect("rebind commit");
    slow.insert("late", &true).expect("insert");
    slow.commit().await.expect("slow commit");
    let stored = store.get(&slow.id()).await.expect("get").expect("live");
    assert_eq!(stored.user_key(), Some("bob"));
    assert!(stored.contains_key("late"));
    assert!(listed(&manager, "ada").await.is_empty());
    assert_eq!(listed(&manager, "bob").await, vec![slow.id()]);

    // clear_user racing a plain save: the unbinding wins and stays.
    let mut plain = start(&manager, Some(&cookie)).await;
    let mut unbind = start(&manager, Some(&cookie)).await;
    unbind.clear_user();
    unbind.commit().await.expect("unbind commit");
    plain.insert("later", &1u8).expect("insert");
    plain.commit().await.expect("plain commit");
    assert!(listed(&manager, "bob").await.is_empty());
    assert_eq!(
        store
            .get(&plain.id())
            .await
            .expect("get")
            .expect("live")
            .user_key(),
        None
    );
}

// ---------------------------------------------------------------- revoke

#[tokio::test]
async fn except_keeps_only_that_session_of_that_user() {
    let store = Hooked::new(Hooks::default());
    let manager = SessionManager::new(store.clone(), config()).expect("manager");
    let a1 = log_in(&manager, "ada").await;
    let a2 = log_in(&manager, "ada").await;
    let b1 = log_in(&manager, "bob").await;
    let bob_id = id_of(&manager, &b1).await.expect("bob");
    // `except` naming another user's session spares nothing of ada's.
    assert_eq!(
        manager
            .revoke_user("ada", Some(&bob_id))
            .await
            .expect("revoke"),
        2
    );
    assert!(id_of(&manager, &a1).await.is_none());
    assert!(id_of(&manager, &a2).await.is_none());
    assert_eq!(id_of(&manager, &b1).await, Some(bob_id));
    // `except` naming the user's own session keeps exactly it.
    let a3 = log_in(&manager, "ada").await;
    let a4 = log_in(&manager, "ada").await;
    let keep = id_of(&manager, &a4).await.expect("a4");
    assert_eq!(
        manager
            .revoke_user("ada", Some(&keep))
            .await
            .expect("revoke"),
        1
    );
    assert!(id_of(&manager, &a3).await.is_none());
    assert_eq!(listed(&manager, "ada").await, vec![keep]);
    // Revoking a user with no sessions, or a prefix of a user's key.
    assert_eq!(manager.revoke_user("ad", None).await.expect("revoke"), 0);
    assert_eq!(manager.revoke_user("ada ", None).await.expect("revoke"), 0);
    assert_eq!(listed(&manager, "ada").await, vec![keep]);
}

/// A request whose only work is moving the expiry (touch) does not bring
/// a revoked session back.
#[tokio::test]
async fn an_in_flight_touch_does_not_revive_a_revoked_session() {
    let store = Hooked::new(Hooks::default());
    let manager = SessionManager::new(
        store.clone(),
        SessionConfig {
            touch_after: Duration::ZERO,
            ..config()
        },
    )
    .expect("manager");
    let cookie = log_in(&manager, "ada").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut in_flight = start(&manager, Some(&cookie)).await;
    assert!(!in_flight.is_new());
    assert_eq!(manager.revoke_user("ada", None).await.expect("revoke"), 1);
    assert!(in_flight.commit().await.expect("commit").is_none());
    assert!(in_flight.is_gone());
    assert!(store.get(&in_flight.id()).await.expect("get").is_none());
    assert!(listed(&manager, "ada").await.is_empty());
}

/// A re-login (a bound session regenerating) during which revoke_user
/// runs, between the new record's create and the old one's retirement:
/// nothing comes back, under either id.
#[tokio::test]
async fn a_relogin_racing_revoke_brings_nothing_back() {
    let store = Hooked::new(Hooks::default());
    let manager = SessionManager::new(store.clone(), config()).expect("manager");
    let cookie = log_in(&manager, "ada").await;
    *store.hooks.revoke_before_delete_if.lock().expect("lock") = Some("ada".into());
    let relogin = log_in_from(&manager, &cookie, "ada").await;
    assert!(relogin.is_none(), "the revoked re-login sent a cookie");
    assert!(id_of(&manager, &cookie).await.is_none());
    assert!(listed(&manager, "ada").await.is_empty());
    assert_eq!(store.len().await.expect("len"), 0);
}

/// An anonymous session logging in while revoke_user runs (after the
/// login's bound record exists): the revoke may take the login (it is
/// documented that it may survive, not that it must); either way the
/// listing and the cookie agree, and the anonymous session is retired.
#[tokio::test]
async fn a_login_racing_revoke_leaves_listing_and_cookie_in_agreement() {
    let store = Hooked::new(Hooks::default());
    let manager = SessionManager::new(store.clone(), config()).expect("manager");
    let anonymous = visit(&manager).await;
    *store.hooks.revoke_before_delete_if.lock().expect("lock") = Some("ada".into());
    let login = log_in_from(&manager, &anonymous, "ada").await;
    assert!(id_of(&manager, &anonymous).await.is_none());
    let live = match &login {
        Some(cookie) => id_of(&manager, cookie).await,
        None => None,
    };
    assert_eq!(
        listed(&manager, "ada").await,
        live.into_iter().collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------- cap

/// Two logins of one user at once under `max_sessions_per_user = 1`, both
/// listing after both records exist ("two logins at once each see the
/// other"): exactly one session is left, not zero (each evicting the
/// other) and not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_logins_under_a_cap_of_one_leave_one_session() {
    let store = Hooked::new(Hooks {
        list_barrier: Some(Arc::new(tokio::sync::Barrier::new(2))),
        barrier_size: 2,
        ..Hooks::default()
    });
    let manager = Arc::new(
        SessionManager::new(
            store.clone(),
            SessionConfig {
                max_sessions_per_user: Some(1),
                ..config()
            },
        )
        .expect("manager"),
    );
    let logins: Vec<_> = (0..2)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { log_in(&manager, "ada").await })
        })
        .collect();
    let mut cookies = Vec::new();
    for login in logins {
        cookies.push(login.await.expect("login task"));
    }
    let left = listed(&manager, "ada").await;
    assert_eq!(
        left.len(),
        1,
        "both logins succeeded, {} sessions left under a cap of 1",
        left.len()
    );
}

/// Three logins at once under a cap of 2, listing together: the oldest of
/// them must not evict a newer login while keeping itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn concurrent_logins_never_evict_a_login_newer_than_the_evictor() {
    let store = Hooked::new(Hooks {
        list_barrier: Some(Arc::new(tokio::sync::Barrier::new(3))),
        barrier_size: 3,
        ..Hooks::default()
    });
    let manager = Arc::new(
        SessionManager::new(
            store.clone(),
            SessionConfig {
                max_sessions_per_user: Some(2),
                ..config()
            },
        )
        .expect("manager"),
    );
    let logins: Vec<_> = (0..3u64)
        .map(|n| {
            let manager = manager.clone();
            tokio::spawn(async move {
                // Staggered so that the records' expiries order them.
                tokio::time::sleep(Duration::from_millis(15 * n)).await;
                log_in(&manager, "ada").await
            })
        })
        .collect();
    let mut cookies = Vec::new();
    for login in logins {
        cookies.push(login.await.expect("login task"));
    }
    let left = listed(&manager, "ada").await;
    assert_eq!(
        left.len(),
        2,
        "three logins under a cap of 2 left {} sessions",
        left.len()
    );
}

/// A session listed for eviction but rebound to another user before the
/// eviction lands is spared, and no Revoked event names it.
#[tokio::test]
async fn the_cap_spares_a_session_rebound_after_the_listing() {
    let (seen, hook) = recording();
    let store = Hooked::new(Hooks::default());
    let manager = SessionManager::new(
        store.clone(),
        SessionConfig {
            max_sessions_per_user: Some(1),
            events: Some(hook),
            ..config()
        },
    )
    .expect("manager");
    let first = log_in(&manager, "ada").await;
    let first_id = id_of(&manager, &first).await.expect("first");
    *store.hooks.rebind_after_list.lock().expect("lock") = Some(first_id);
    let second = log_in(&manager, "ada").await;
    let second_id = id_of(&manager, &second).await.expect("second");
    assert_eq!(listed(&manager, "ada").await, vec![second_id]);
    assert_eq!(listed(&manager, "bob").await, vec![first_id]);
    let events = settle(&seen, 4).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, SessionEvent::Revoked { .. })),
        "{events:?}"
    );
}

/// The cap never counts or evicts another user's sessions, nor the
/// session enforcing it.
#[tokio::test]
async fn the_cap_evicts_only_older_sessions_of_the_same_user() {
    let store = Hooked::new(Hooks::default());
    let manager = SessionManager::new(
        store.clone(),
        SessionConfig {
            max_sessions_per_user: Some(1),
            ..config()
        },
    )
    .expect("manager");
    let bob = log_in(&manager, "bob").await;
    let ada2 = log_in(&manager, "ada2").await;
    let _ada_old = log_in(&manager, "ada").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let ada = log_in(&manager, "ada").await;
    assert!(id_of(&manager, &bob).await.is_some());
    assert!(id_of(&manager, &ada2).await.is_some());
    let ada_id = id_of(&manager, &ada).await.expect("the newest login");
    assert_eq!(listed(&manager, "ada").await, vec![ada_id]);
}

/// With a store without a user index, a login under a cap still succeeds
/// (the cap is logged as unenforceable), and the manager's user calls say
/// Unsupported.
#[tokio::test]
async fn a_cap_over_a_store_without_an_index_does_not_fail_logins() {
    let store = Hooked::new(Hooks {
        no_index: true,
        ..Hooks::default()
    });
    let manager = SessionManager::new(
        store.clone(),
        SessionConfig {
            max_sessions_per_user: Some(1),
            ..config()
        },
    )
    .expect("manager");
    let cookie = log_in(&manager, "ada").await;
    assert!(id_of(&manager, &cookie).await.is_some());
    assert!(matches!(
        manager.sessions_of("ada").await,
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        manager.revoke_user("ada", None).await,
        Err(Error::Unsupported { .. })
    ));
}

// ---------------------------------------------------------------- events

#[tokio::test]
async fn a_failed_commit_emits_no_event_and_its_retry_emits_one() {
    let (seen, hook) = recording();
    let store = Hooked::new(Hooks::default());
    let manager = SessionManager::new(
        store.clone(),
        SessionConfig {
            events: Some(hook),
            ..config()
        },
    )
    .expect("manager");
    let mut s = start(&manager, None).await;
    s.set_user("ada", device("laptop")).expect("set_user");
    store.hooks.fail_writes.store(true, Ordering::SeqCst);
    assert!(s.commit().await.is_err());
    assert!(
        settle(&seen, 1).await.is_empty(),
        "an event for a failed commit"
    );
    store.hooks.fail_writes.store(false, Ordering::SeqCst);
    s.commit().await.expect("retry");
    let events = settle(&seen, 1).await;
    assert_eq!(
        events,
        vec![SessionEvent::Created {
            id: s.id(),
            user_key: Some("ada".into())
        }]
    );
}

//! Review findings (issue 13), each failing before its fix: the cap ranks
//! by login time (a login from an older anonymous session still enforces
//! it), a logout committed twice announces once, and events reach the hook
//! whichever runtime sent them.
#![cfg(feature = "conformance")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use session_store::conformance::ReferenceStore;
use session_store::cookie::Cookie;
use session_store::{
    jar_from_cookie_headers, ActiveSession, EventHook, SessionConfig, SessionEvent, SessionId,
    SessionManager,
};

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

/// A sequential login under `max_sessions_per_user = 1` while the user has
/// one other session: the user is left with one session. The login comes
/// from an anonymous session opened before the other device logged in (a
/// login page left open), so with an absolute timeout the login's expiry
/// (created_at + absolute) is earlier than the other session's: ranking by
/// expiry puts the login below the other session, the login never evicts
/// itself, and so nothing is evicted at all; no concurrent login is
/// involved, and the overshoot stays.
#[tokio::test]
async fn a_login_from_an_older_anonymous_session_still_enforces_the_cap() {
    let store = Arc::new(ReferenceStore::new());
    let manager = SessionManager::new(
        store.clone(),
        SessionConfig {
            max_sessions_per_user: Some(1),
            absolute_timeout: Some(Duration::from_secs(3600)),
            ..config()
        },
    )
    .expect("manager");
    let laptop_page = visit(&manager).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let phone = log_in(&manager, "ada").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let laptop = log_in_from(&manager, &laptop_page, "ada")
        .await
        .expect("the laptop's login cookie");
    let left = listed(&manager, "ada").await;
    assert_eq!(
        left.len(),
        1,
        "a login under a cap of 1 left {} sessions (phone live: {}, laptop live: {})",
        left.len(),
        id_of(&manager, &phone).await.is_some(),
        id_of(&manager, &laptop).await.is_some()
    );
}

/// Committing a destroyed session a second time (the handler committed,
/// then the framework layer commits again) deletes nothing new: it must
/// not announce a second `Destroyed`.
#[tokio::test]
async fn a_second_commit_of_a_logout_announces_nothing_more() {
    let (seen, hook) = recording();
    let store = Arc::new(ReferenceStore::new());
    let manager = SessionManager::new(
        store.clone(),
        SessionConfig {
            events: Some(hook),
            ..config()
        },
    )
    .expect("manager");
    let cookie = log_in(&manager, "ada").await;
    let mut logout = start(&manager, Some(&cookie)).await;
    logout.destroy();
    logout.commit().await.expect("commit");
    logout.commit().await.expect("second commit");
    // Created + Regenerated + Destroyed.
    let events = settle(&seen, 3).await;
    let destroyed = events
        .iter()
        .filter(|e| matches!(e, SessionEvent::Destroyed { .. }))
        .count();
    assert_eq!(destroyed, 1, "{events:?}");
}

/// Events of a manager that outlives the runtime that sent its first event
/// (a server restarted in-process, a worker runtime replaced, one runtime
/// per test): later events, sent on a live runtime, still reach the hook.
#[test]
fn events_still_reach_the_hook_after_the_first_runtime_ended() {
    let (seen, hook) = recording();
    let store = Arc::new(ReferenceStore::new());
    let manager = Arc::new(
        SessionManager::new(
            store,
            SessionConfig {
                events: Some(hook.clone()),
                ..config()
            },
        )
        .expect("manager"),
    );
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    };
    let first = runtime();
    first.block_on(async {
        visit(&manager).await;
        assert_eq!(settle(&seen, 1).await.len(), 1);
    });
    drop(first);
    let second = runtime();
    second.block_on(async {
        visit(&manager).await;
        let events = settle(&seen, 2).await;
        assert_eq!(
            events.len(),
            2,
            "the second runtime's event was lost (dropped: {})",
            hook.dropped()
        );
    });
}

//! Sessions by user through the manager: binding at login, listing,
//! revoking (all, all but the current one), the per-user cap under
//! concurrent logins, and lifecycle events that never hold a request up.
#![cfg(feature = "conformance")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use session_store::conformance::ReferenceStore;
use session_store::cookie::{Cookie, Key};
use session_store::{
    jar_from_cookie_headers, ActiveSession, Error, EventHook, SessionConfig, SessionEvent,
    SessionInterface, SessionManager,
};

fn config() -> SessionConfig {
    SessionConfig {
        secure: false,
        ..SessionConfig::default()
    }
}

fn manager_with(config: SessionConfig) -> (Arc<ReferenceStore>, SessionManager) {
    let store = Arc::new(ReferenceStore::new());
    let manager = SessionManager::new(store.clone(), config).expect("manager");
    (store, manager)
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

/// An anonymous visit, then a login from it (set_user + regenerate), as a
/// browser would: returns the logged-in cookie header.
async fn log_in(manager: &SessionManager, user: &str, device_name: &str) -> String {
    let mut visit = start(manager, None).await;
    visit.insert("cart", &1u8).expect("insert");
    let anonymous = visit.commit().await.expect("commit").expect("cookie");
    let mut login = start(manager, Some(&header(&anonymous))).await;
    login.set_user(user, device(device_name)).expect("set_user");
    login.regenerate().expect("regenerate");
    let cookie = login.commit().await.expect("commit").expect("cookie");
    header(&cookie)
}

#[tokio::test]
async fn a_login_is_listed_under_its_user_with_its_metadata() {
    let (_, manager) = manager_with(config());
    let laptop = log_in(&manager, "ada", "laptop").await;
    let _phone = log_in(&manager, "ada", "phone").await;
    let _bob = log_in(&manager, "bob", "desk").await;
    let current = start(&manager, Some(&laptop)).await;
    assert_eq!(current.user_key(), Some("ada"));
    let listed = manager.sessions_of("ada").await.expect("sessions_of");
    assert_eq!(listed.len(), 2);
    let mine = listed
        .iter()
        .find(|s| s.id == current.id())
        .expect("the current session is listed under its new id");
    assert_eq!(
        mine.metadata.get("device").map(String::as_str),
        Some("laptop")
    );
    assert!(mine.created_at <= mine.last_active_at && mine.last_active_at < mine.expires_at);
    let devices: Vec<_> = listed
        .iter()
        .map(|s| s.metadata["device"].clone())
        .collect();
    assert!(devices.contains(&"phone".to_owned()), "{devices:?}");
    assert_eq!(manager.sessions_of("bob").await.expect("bob").len(), 1);
    assert!(manager
        .sessions_of("nobody")
        .await
        .expect("none")
        .is_empty());
}

#[tokio::test]
async fn logout_takes_the_session_out_of_the_listing() {
    let (_, manager) = manager_with(config());
    let cookie = log_in(&manager, "ada", "laptop").await;
    let mut logout = start(&manager, Some(&cookie)).await;
    logout.destroy();
    logout.commit().await.expect("commit");
    assert!(manager.sessions_of("ada").await.expect("list").is_empty());
}

#[tokio::test]
async fn log_out_other_devices_keeps_the_current_one_and_nothing_comes_back() {
    let (store, manager) = manager_with(config());
    let laptop = log_in(&manager, "ada", "laptop").await;
    let phone = log_in(&manager, "ada", "phone").await;
    let tablet = log_in(&manager, "ada", "tablet").await;
    // The phone has a request in flight when the laptop revokes it.
    let mut in_flight = start(&manager, Some(&phone)).await;
    assert!(!in_flight.is_new());
    let current = start(&manager, Some(&laptop)).await;
    let revoked = manager
        .revoke_user("ada", Some(&current.id()))
        .await
        .expect("revoke");
    assert_eq!(revoked, 2);
    in_flight.insert("late", &true).expect("insert");
    let cookie = in_flight.commit().await.expect("commit");
    assert!(
        cookie.is_none(),
        "a revoked session's request sent a cookie"
    );
    assert!(in_flight.is_gone());
    assert!(
        store.get(&in_flight.id()).await.expect("get").is_none(),
        "the in-flight save brought the revoked session back"
    );
    let listed = manager.sessions_of("ada").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, current.id());
    for revoked_cookie in [&phone, &tablet] {
        let next = start(&manager, Some(revoked_cookie)).await;
        assert!(next.is_new(), "a revoked device is still logged in");
        assert_eq!(next.user_key(), None);
    }
    assert!(!start(&manager, Some(&laptop)).await.is_new());
    assert_eq!(
        manager.revoke_user("ada", None).await.expect("revoke all"),
        1
    );
    assert!(start(&manager, Some(&laptop)).await.is_new());
}

#[tokio::test]
async fn the_per_user_cap_revokes_the_least_recently_active() {
    let (_, manager) = manager_with(SessionConfig {
        max_sessions_per_user: Some(2),
        ..config()
    });
    let first = log_in(&manager, "ada", "first").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = log_in(&manager, "ada", "second").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let third = log_in(&manager, "ada", "third").await;
    let devices: Vec<String> = manager
        .sessions_of("ada")
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.metadata["device"].clone())
        .collect();
    assert_eq!(devices, ["third", "second"]);
    assert!(start(&manager, Some(&first)).await.is_new());
    assert!(!start(&manager, Some(&second)).await.is_new());
    assert!(!start(&manager, Some(&third)).await.is_new());
    // Another user is not counted against ada.
    log_in(&manager, "bob", "desk").await;
    assert_eq!(manager.sessions_of("ada").await.expect("list").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_overshoot_the_cap_by_at_most_one() {
    for _ in 0..5 {
        let (_, manager) = manager_with(SessionConfig {
            max_sessions_per_user: Some(2),
            ..config()
        });
        let manager = Arc::new(manager);
        let mut logins = Vec::new();
        for n in 0..8 {
            let manager = manager.clone();
            logins.push(tokio::spawn(async move {
                log_in(&manager, "ada", &format!("device {n}")).await
            }));
        }
        for login in logins {
            login.await.expect("login task");
        }
        let left = manager.sessions_of("ada").await.expect("list").len();
        assert!(
            (1..=3).contains(&left),
            "{left} sessions left under a cap of 2"
        );
    }
}

#[tokio::test]
async fn bad_user_keys_are_refused_with_a_typed_error() {
    let (_, manager) = manager_with(config());
    let mut session = start(&manager, None).await;
    for key in ["", "a\u{0}b", "line\nbreak", &"x".repeat(257)] {
        match session.set_user(key, BTreeMap::new()) {
            Err(Error::Encode { .. }) => {}
            other => panic!("user key {key:?} gave {other:?}"),
        }
    }
    let big = (0..17).map(|n| (n.to_string(), String::new())).collect();
    assert!(matches!(
        session.set_user("ada", big),
        Err(Error::Encode { .. })
    ));
    session
        .set_user("ada", BTreeMap::new())
        .expect("a fine key");
}

#[tokio::test]
async fn unbinding_takes_the_session_out_of_the_listing() {
    let (_, manager) = manager_with(config());
    let cookie = log_in(&manager, "ada", "laptop").await;
    let mut session = start(&manager, Some(&cookie)).await;
    session.clear_user();
    session.commit().await.expect("commit");
    assert!(manager.sessions_of("ada").await.expect("list").is_empty());
    assert_eq!(start(&manager, Some(&cookie)).await.user_key(), None);
}

#[tokio::test]
async fn a_store_without_a_user_index_says_so() {
    let manager = SessionManager::cookie_only(vec![Key::generate()], config()).expect("manager");
    assert!(matches!(
        manager.sessions_of("ada").await,
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        manager.revoke_user("ada", None).await,
        Err(Error::Unsupported { .. })
    ));
}

type Seen = Arc<Mutex<Vec<SessionEvent>>>;

fn recording() -> (Seen, EventHook) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let hook = EventHook::new(move |event: SessionEvent| {
        if let Ok(mut seen) = sink.lock() {
            seen.push(event);
        }
    });
    (seen, hook)
}

async fn wait_for(seen: &Seen, count: usize) -> Vec<SessionEvent> {
    for _ in 0..200 {
        let now = seen.lock().map(|s| s.clone()).unwrap_or_default();
        if now.len() >= count {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {count} events, saw {:?}",
        seen.lock().map(|s| s.clone())
    );
}

#[tokio::test]
async fn lifecycle_events_are_told_to_the_hook() {
    let (seen, hook) = recording();
    let (store, manager) = manager_with(SessionConfig {
        events: Some(hook),
        ..config()
    });
    // Created, then Regenerated (with the binding) by the login.
    let cookie = log_in(&manager, "ada", "laptop").await;
    let events = wait_for(&seen, 2).await;
    let SessionEvent::Created {
        id: created,
        user_key: None,
    } = events[0].clone()
    else {
        panic!("{events:?}");
    };
    let SessionEvent::Regenerated {
        old_id,
        new_id,
        user_key,
    } = events[1].clone()
    else {
        panic!("{events:?}");
    };
    assert_eq!(old_id, created);
    assert_eq!(user_key.as_deref(), Some("ada"));
    // Revoked, by the manager.
    let other = log_in(&manager, "ada", "phone").await;
    manager
        .revoke_user("ada", Some(&new_id))
        .await
        .expect("revoke");
    let events = wait_for(&seen, 5).await;
    assert!(
        matches!(&events[4], SessionEvent::Revoked { user_key, .. } if user_key == "ada"),
        "{events:?}"
    );
    assert!(start(&manager, Some(&other)).await.is_new());
    // Destroyed, by a logout.
    let mut logout = start(&manager, Some(&cookie)).await;
    logout.destroy();
    logout.commit().await.expect("commit");
    let events = wait_for(&seen, 6).await;
    assert_eq!(
        events[5],
        SessionEvent::Destroyed {
            id: new_id,
            user_key: Some("ada".into())
        }
    );
    // Expired, from flush.
    let mut old = session_store::Session::new(
        session_store::SessionToken::generate().id(),
        Duration::from_secs(1),
    );
    old.set_expires_at_millis(session_store::now_millis() - 1);
    store.set(&old).await.expect("set");
    assert_eq!(manager.flush().await.expect("flush"), 1);
    let events = wait_for(&seen, 7).await;
    assert_eq!(
        events[6],
        SessionEvent::Expired {
            id: old.id(),
            user_key: None
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_or_panicking_hook_never_holds_up_a_request() {
    let (release, stuck) = std::sync::mpsc::channel::<()>();
    let stuck = Mutex::new(stuck);
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = calls.clone();
    let hook = EventHook::new(move |_event: SessionEvent| {
        let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n == 0 {
            panic!("a hook bug");
        }
        if n == 1 {
            // Blocks until the test is done with its requests.
            let _ = stuck.lock().map(|r| r.recv());
        }
    });
    let (_, manager) = manager_with(SessionConfig {
        events: Some(hook.clone()),
        ..config()
    });
    // Each commit creates a session (one event each); none waits on the hook.
    for _ in 0..50 {
        let mut session = start(&manager, None).await;
        session.insert("k", &1u8).expect("insert");
        tokio::time::timeout(Duration::from_secs(5), session.commit())
            .await
            .expect("a commit waited on the event hook")
            .expect("commit");
    }
    release.send(()).expect("release the hook");
    for _ in 0..300 {
        if calls.load(std::sync::atomic::Ordering::SeqCst) >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        50,
        "after a panic and a stall, every later event still reached the hook"
    );
    assert_eq!(hook.dropped(), 0);
}

#[tokio::test]
async fn a_fresh_session_bound_to_a_user_is_stored_even_without_data() {
    let (_, manager) = manager_with(config());
    let mut session = start(&manager, None).await;
    session.set_user("ada", BTreeMap::new()).expect("set_user");
    let cookie = session.commit().await.expect("commit");
    assert!(cookie.is_some(), "a bound session sent no cookie");
    let listed = manager.sessions_of("ada").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, session.id());
}

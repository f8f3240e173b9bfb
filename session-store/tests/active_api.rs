//! The `ActiveSession` handle's own API: what handlers read back from it.
#![cfg(feature = "conformance")]

use std::sync::Arc;
use std::time::Duration;

use session_store::conformance::ReferenceStore;
use session_store::cookie::{Cookie, CookieJar};
use session_store::{SessionConfig, SessionInterface, SessionManager};

fn manager(config: SessionConfig) -> (Arc<ReferenceStore>, SessionManager) {
    let store = Arc::new(ReferenceStore::new());
    let manager = SessionManager::new(store.clone(), config).unwrap();
    (store, manager)
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

async fn issued(manager: &SessionManager) -> Cookie<'static> {
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("a", &1u8).unwrap();
    s.insert("b", &2u8).unwrap();
    s.commit().await.unwrap().unwrap()
}

#[tokio::test]
async fn keys_contains_and_remove_reflect_the_data() {
    let (_store, m) = manager(dev());
    let cookie = issued(&m).await;
    let mut s = m.start(&jar(&cookie)).await.unwrap();
    assert_eq!(s.keys(), ["a", "b"]);
    assert!(s.contains_key("a"));
    assert!(!s.contains_key("zz"));
    assert!(s.remove("a"), "removing a present key says so");
    assert!(!s.remove("a"), "removing it twice says it was not there");
    assert!(!s.remove("zz"));
    assert_eq!(s.keys(), ["b"]);
    s.commit().await.unwrap();
    let s = m.start(&jar(&cookie)).await.unwrap();
    assert_eq!(s.keys(), ["b"], "the removal was not saved");
}

#[tokio::test]
async fn is_modified_tracks_what_a_commit_would_write() {
    let (_store, m) = manager(dev());
    let cookie = issued(&m).await;
    let mut s = m.start(&jar(&cookie)).await.unwrap();
    assert!(!s.is_modified(), "a fresh load is unmodified");
    s.insert("a", &1u8).unwrap();
    assert!(
        s.is_modified(),
        "an insert is saved even when the loaded copy held the value"
    );
    s.commit().await.unwrap();
    assert!(!s.is_modified(), "a commit leaves nothing to write");
    s.regenerate().unwrap();
    assert!(s.is_modified(), "a regeneration is a change");
    let mut other = m.start(&jar(&cookie)).await.unwrap();
    other.destroy();
    assert!(other.is_modified(), "a destroy is a change");
}

#[tokio::test]
async fn is_gone_only_when_another_request_ended_the_session() {
    let (_store, m) = manager(dev());
    let cookie = issued(&m).await;
    let mut slow = m.start(&jar(&cookie)).await.unwrap();
    let mut fine = m.start(&jar(&cookie)).await.unwrap();
    fine.insert("c", &3u8).unwrap();
    fine.commit().await.unwrap();
    assert!(!fine.is_gone());
    let mut logout = m.start(&jar(&cookie)).await.unwrap();
    logout.destroy();
    logout.commit().await.unwrap();
    assert!(!logout.is_gone(), "the logout itself is not 'gone'");
    slow.insert("d", &4u8).unwrap();
    assert!(!slow.is_gone(), "not before its commit");
    assert!(slow.commit().await.unwrap().is_none());
    assert!(slow.is_gone());
    // Committing a gone session again stays quiet.
    assert!(slow.commit().await.unwrap().is_none());
}

#[tokio::test]
async fn a_moved_expiry_sends_a_cookie_only_when_the_cookie_is_persistent() {
    for persistent in [false, true] {
        let (_store, m) = manager(SessionConfig {
            touch_after: Duration::ZERO,
            persistent,
            ..dev()
        });
        let cookie = issued(&m).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut s = m.start(&jar(&cookie)).await.unwrap();
        let answer = s.commit().await.unwrap();
        assert_eq!(
            answer.is_some(),
            persistent,
            "persistent = {persistent}: {answer:?}"
        );
        if let Some(renewed) = answer {
            assert!(renewed.max_age().is_some_and(|age| age.whole_seconds() > 0));
        }
    }
}

#[tokio::test]
async fn debug_output_names_the_id_never_the_token() {
    let (_store, m) = manager(dev());
    let s = m.start(&CookieJar::new()).await.unwrap();
    let shown = format!("{s:?}");
    assert!(shown.starts_with("ActiveSession"), "{shown}");
    assert!(shown.contains(&s.id().to_hex()), "{shown}");
    assert!(!shown.contains(s.token().as_str()), "{shown}");
    let config = format!("{:?}", m.config());
    assert!(config.contains("SessionConfig") && config.contains("idle_timeout"));
}

#[tokio::test]
async fn a_commit_that_found_nothing_to_do_touches_nothing() {
    let (store, m) = manager(dev());
    let cookie = issued(&m).await;
    let before = store.get(&m.start(&jar(&cookie)).await.unwrap().id()).await;
    let mut s = m.start(&jar(&cookie)).await.unwrap();
    assert!(s.commit().await.unwrap().is_none());
    let after = store.get(&s.id()).await;
    assert_eq!(
        before.unwrap().map(|r| r.expires_at_millis()),
        after.unwrap().map(|r| r.expires_at_millis()),
        "a read-only request within touch_after wrote"
    );
}

//! Manager behaviour beyond the store contract: store swapping, custom
//! token generators, cookie options.
#![cfg(feature = "conformance")]

use std::sync::Arc;
use std::time::Duration;

use session_store::conformance::ReferenceStore;
use session_store::cookie::{Cookie, CookieJar, SameSite};
use session_store::{
    jar_from_cookie_headers, Error, Session, SessionConfig, SessionInterface, SessionManager,
    SessionToken,
};

fn dev() -> SessionConfig {
    SessionConfig {
        secure: false,
        ..SessionConfig::default()
    }
}

#[tokio::test]
async fn set_operations_swaps_the_store_without_disturbing_requests_in_flight() {
    let (a, b) = (
        Arc::new(ReferenceStore::new()),
        Arc::new(ReferenceStore::new()),
    );
    let manager = SessionManager::new(a.clone(), dev()).unwrap();
    let mut in_flight = manager.start(&CookieJar::new()).await.unwrap();
    manager.set_operations(b.clone());
    in_flight.insert("k", &1u8).unwrap();
    in_flight.commit().await.unwrap().expect("a cookie");
    assert_eq!(
        a.len().await.unwrap(),
        1,
        "the started request did not finish on its store"
    );
    assert_eq!(b.len().await.unwrap(), 0);
    let mut next = manager.start(&CookieJar::new()).await.unwrap();
    next.insert("k", &2u8).unwrap();
    next.commit().await.unwrap();
    assert_eq!(
        b.len().await.unwrap(),
        1,
        "new requests did not use the new store"
    );
}

#[tokio::test]
async fn a_custom_token_generator_must_pass_validation() {
    let good = SessionConfig {
        token_generator: Some(Arc::new(|| {
            "custom-token-of-enough-length-0123456789".to_owned()
        })),
        ..dev()
    };
    let manager = SessionManager::new(Arc::new(ReferenceStore::new()), good).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    assert_eq!(
        s.token().as_str(),
        "custom-token-of-enough-length-0123456789"
    );
    s.insert("k", &1u8).unwrap();
    let cookie = s.commit().await.unwrap().unwrap();
    assert_eq!(cookie.value(), "custom-token-of-enough-length-0123456789");

    let bad = SessionConfig {
        token_generator: Some(Arc::new(|| "../not a token".to_owned())),
        ..dev()
    };
    let manager = SessionManager::new(Arc::new(ReferenceStore::new()), bad).unwrap();
    assert!(matches!(
        manager.start(&CookieJar::new()).await,
        Err(Error::InvalidId { .. })
    ));
}

#[tokio::test]
async fn cookie_options_are_applied_and_checked() {
    let config = SessionConfig {
        cookie_name: "sid".into(),
        host_prefix: true,
        same_site: SameSite::Strict,
        persistent: true,
        ..SessionConfig::default()
    };
    let manager = SessionManager::new(Arc::new(ReferenceStore::new()), config).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("k", &1u8).unwrap();
    let cookie = s.commit().await.unwrap().unwrap();
    assert_eq!(cookie.name(), "__Host-sid");
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(cookie.same_site(), Some(SameSite::Strict));
    assert!(cookie
        .max_age()
        .is_some_and(|age| age.whole_seconds() > 86_000));
    let header = format!("__Host-sid={}", cookie.value());
    let back = manager
        .start(&jar_from_cookie_headers([header.as_str()]))
        .await
        .unwrap();
    assert!(!back.is_new());

    // The prefix is used whenever the cookie qualifies, and only then.
    assert_eq!(
        SessionConfig::default().effective_cookie_name(),
        "__Host-id"
    );
    for plain in [
        SessionConfig {
            secure: false,
            ..SessionConfig::default()
        },
        SessionConfig {
            domain: Some("example.com".into()),
            ..SessionConfig::default()
        },
        SessionConfig {
            path: "/app".into(),
            ..SessionConfig::default()
        },
        SessionConfig {
            host_prefix: false,
            ..SessionConfig::default()
        },
    ] {
        assert_eq!(plain.effective_cookie_name(), "id", "{plain:?}");
        assert!(SessionManager::new(Arc::new(ReferenceStore::new()), plain).is_ok());
    }

    for bad in [
        SessionConfig {
            cookie_name: "bad name;".into(),
            ..SessionConfig::default()
        },
        SessionConfig {
            max_commit_attempts: 0,
            ..SessionConfig::default()
        },
    ] {
        assert!(matches!(
            SessionManager::new(Arc::new(ReferenceStore::new()), bad),
            Err(Error::Config(_))
        ));
    }
}

/// A `touch_after` not below `idle_timeout` would never extend a session
/// that is only read (the expiry would have to move by more than the whole
/// timeout), so it is refused, naming both; just below is accepted.
#[test]
fn touch_after_must_be_below_idle_timeout() {
    let with = |touch_after, idle_timeout| SessionConfig {
        touch_after,
        idle_timeout,
        ..SessionConfig::default()
    };
    for (touch, idle) in [(60, 60), (60, 30), (3600, 1)] {
        let config = with(Duration::from_secs(touch), Duration::from_secs(idle));
        match SessionManager::new(Arc::new(ReferenceStore::new()), config) {
            Err(Error::Config(reason)) => assert!(
                reason.contains("touch_after") && reason.contains(&format!("{idle}s")),
                "{reason}"
            ),
            other => panic!("touch_after {touch}s, idle {idle}s: {:?}", other.err()),
        }
    }
    let just_below = with(Duration::from_secs(59), Duration::from_secs(60));
    assert!(SessionManager::new(Arc::new(ReferenceStore::new()), just_below).is_ok());
}

#[test]
fn tokens_never_show_in_debug_output() {
    let token = SessionToken::generate();
    let shown = format!("{token:?} {:?}", token.id());
    assert!(!shown.contains(token.as_str()));
    assert!(shown.contains(&token.id().to_hex()));
}

#[tokio::test]
async fn the_manager_shows_its_config_and_flushes_its_store() {
    let store = Arc::new(ReferenceStore::new());
    let config = SessionConfig {
        cookie_name: "sid".into(),
        ..dev()
    };
    let manager = SessionManager::new(store.clone(), config).unwrap();
    assert_eq!(manager.config().cookie_name, "sid");
    let shown = format!("{manager:?}");
    assert!(
        shown.starts_with("SessionManager") && shown.contains("\"sid\""),
        "{shown}"
    );
    for idle in [100, 100, 60_000] {
        let session = Session::new(SessionToken::generate().id(), Duration::from_millis(idle));
        store.create(&session).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(manager.flush().await.unwrap(), 2);
    assert_eq!(store.len().await.unwrap(), 1);
}

/// The stored expiry moves forward only once `touch_after` has passed
/// since it was last written (that is what spares a write per request).
#[tokio::test]
async fn the_expiry_moves_once_touch_after_has_passed() {
    let store = Arc::new(ReferenceStore::new());
    let config = SessionConfig {
        idle_timeout: Duration::from_secs(60),
        touch_after: Duration::from_secs(10),
        ..dev()
    };
    let manager = SessionManager::new(store.clone(), config).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("k", &1u8).unwrap();
    let cookie: Cookie<'static> = s.commit().await.unwrap().expect("a cookie");
    let mut jar = CookieJar::new();
    jar.add_original(cookie);
    let id = s.id();
    // As if last written `ago_ms` ago (the record's expiry that much older).
    let age = |ago_ms: i64| {
        let store = store.clone();
        async move {
            let mut stored = store.get(&id).await.unwrap().unwrap();
            let older = stored.expires_at_millis() - ago_ms;
            stored.set_expires_at_millis(older);
            store.set(&stored).await.unwrap();
            older
        }
    };
    let recent = age(5_000).await;
    manager.start(&jar).await.unwrap().commit().await.unwrap();
    let after = store.get(&id).await.unwrap().unwrap().expires_at_millis();
    assert_eq!(after, recent, "touched before touch_after had passed");
    let stale = age(15_000).await;
    manager.start(&jar).await.unwrap().commit().await.unwrap();
    let after = store.get(&id).await.unwrap().unwrap().expires_at_millis();
    assert!(
        after >= stale + 15_000,
        "not touched after touch_after had passed"
    );
}

//! Adversarial review of cookie-only sessions (issue 14, part 3): sealed
//! times at their boundaries, key rotation that must re-issue exactly once,
//! a valid seal around garbage, `set_operations`/`store()`/`flush()` on a
//! cookie-only manager, and the size limit for sessions that already fit.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use session_store::cookie::{Cookie, CookieJar, Key};
use session_store::{
    codec, jar_from_cookie_headers, now_millis, ActiveSession, Error, Session, SessionConfig,
    SessionManager, SessionToken, MAX_COOKIE_BYTES,
};

fn config() -> SessionConfig {
    SessionConfig {
        secure: false,
        ..SessionConfig::default()
    }
}

fn manager_with(keys: &[&Key], config: SessionConfig) -> SessionManager {
    SessionManager::cookie_only(keys.iter().map(|k| (*k).clone()).collect(), config)
        .expect("manager")
}

fn manager(keys: &[&Key]) -> SessionManager {
    manager_with(keys, config())
}

/// The `Cookie` request header a browser would send back for `cookie`.
fn header_for(cookie: &Cookie<'_>) -> String {
    cookie.stripped().encoded().to_string()
}

async fn start(manager: &SessionManager, header: &str) -> ActiveSession {
    manager
        .start(&jar_from_cookie_headers([header]))
        .await
        .expect("cookie-only start never fails on client input")
}

/// `plain` sealed with `key` under cookie `name`, as a request header.
fn seal_raw(key: &Key, name: &str, plain: &str) -> String {
    let mut jar = CookieJar::new();
    jar.private_mut(key)
        .add(Cookie::new(name.to_owned(), plain.to_owned()));
    // As the manager sends it: the jar's standard base64 re-encoded URL-safe.
    let sealed = jar.get(name).expect("sealed").value().to_owned();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .expect("the jar writes base64");
    format!("{name}={}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A session record sealed exactly as the manager seals it.
fn forge(key: &Key, token: &SessionToken, session: &Session) -> String {
    let record = codec::encode(session, session.version()).expect("encode");
    let value = format!("{}.{}", token.as_str(), URL_SAFE_NO_PAD.encode(record));
    seal_raw(key, "id", &value)
}

/// Whatever the client sends, a cookie-only start gives a usable fresh
/// session that commits a cookie of its own.
async fn assert_fresh(manager: &SessionManager, name: &str, header: &str) {
    let mut session = start(manager, header).await;
    assert!(session.is_new(), "{name}: loaded a session");
    assert_eq!(session.keys(), Vec::<String>::new(), "{name}: data leaked");
    session.insert("k", &1u8).expect("insert");
    let cookie = session
        .commit()
        .await
        .unwrap_or_else(|e| panic!("{name}: commit failed: {e}"))
        .unwrap_or_else(|| panic!("{name}: no cookie"));
    let again = start(manager, &header_for(&cookie)).await;
    assert!(!again.is_new(), "{name}: the fresh cookie does not open");
}

#[tokio::test]
async fn a_valid_seal_around_garbage_starts_fresh() {
    let key = Key::generate();
    let manager = manager(&[&key]);
    let token = SessionToken::generate();
    let t = token.as_str();
    let not_a_record = URL_SAFE_NO_PAD.encode(b"definitely not a bincode session record");
    let rows = [
        ("no separator", seal_raw(&key, "id", t)),
        ("empty", seal_raw(&key, "id", "")),
        ("only a separator", seal_raw(&key, "id", ".")),
        ("empty record", seal_raw(&key, "id", &format!("{t}."))),
        ("short token", seal_raw(&key, "id", "abc.AAAA")),
        (
            "token with bad characters",
            seal_raw(&key, "id", &format!("{}!.AAAA", &t[..t.len() - 1])),
        ),
        (
            "record not base64",
            seal_raw(&key, "id", &format!("{t}.***")),
        ),
        (
            "record padded base64",
            seal_raw(&key, "id", &format!("{t}.AAAA==")),
        ),
        (
            "record not a session",
            seal_raw(&key, "id", &format!("{t}.{not_a_record}")),
        ),
        (
            "two separators",
            seal_raw(&key, "id", &format!("{t}.AAAA.AAAA")),
        ),
        (
            "sealed for another cookie name",
            seal_raw(&key, "other", &format!("{t}.AAAA")).replacen("other=", "id=", 1),
        ),
        ("percent junk", "id=%ZZ%".to_owned()),
        ("percent-encoded invalid utf-8", "id=%FF%FE%FD".to_owned()),
        ("percent-encoded NUL", "id=%00%00".to_owned()),
        ("value is a quote", "id=\"".to_owned()),
        ("name only", "id".to_owned()),
        (
            "oversized by one",
            format!("id={}", "A".repeat(MAX_COOKIE_BYTES + 1)),
        ),
        ("huge", format!("id={}", "A".repeat(64 * 1024))),
    ];
    for (name, header) in rows {
        assert_fresh(&manager, name, &header).await;
    }
}

#[tokio::test]
async fn the_same_cookie_sent_twice_still_opens_and_a_different_copy_starts_fresh() {
    let key = Key::generate();
    let manager = manager(&[&key]);
    let mut session = start(&manager, "").await;
    session.insert("user", "ada").expect("insert");
    let cookie = session.commit().await.expect("commit").expect("cookie");
    let good = header_for(&cookie);
    let twice = start(&manager, &format!("{good}; {good}")).await;
    assert_eq!(
        twice.get::<String>("user").expect("get").as_deref(),
        Some("ada")
    );
    let mut other = start(&manager, "").await;
    other.insert("user", "eve").expect("insert");
    let other = header_for(&other.commit().await.expect("commit").expect("cookie"));
    // Two genuine cookies of one name (cookie tossing): neither is trusted.
    assert_fresh(&manager, "two genuine cookies", &format!("{good}; {other}")).await;
}

#[tokio::test]
async fn a_sealed_expiry_just_passed_does_not_open() {
    let key = Key::generate();
    let manager = manager(&[&key]);
    let token = SessionToken::generate();
    let mut session = Session::new(token.id(), Duration::from_secs(60));
    session.insert("user", "ada").expect("insert");
    session.set_expires_at_millis(now_millis() + 150);
    let header = forge(&key, &token, &session);
    assert!(!start(&manager, &header).await.is_new(), "still live");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        start(&manager, &header).await.is_new(),
        "opened after its sealed expiry"
    );
}

#[tokio::test]
async fn re_issues_never_carry_a_session_past_its_absolute_timeout() {
    let key = Key::generate();
    let manager = manager_with(
        &[&key],
        SessionConfig {
            idle_timeout: Duration::from_secs(3600),
            absolute_timeout: Some(Duration::from_millis(1500)),
            touch_after: Duration::ZERO,
            persistent: true,
            ..config()
        },
    );
    let mut first = start(&manager, "").await;
    first.insert("user", "ada").expect("insert");
    let created = first.session().created_at_millis();
    let mut cookie = first.commit().await.expect("commit").expect("cookie");
    let max_age = cookie.max_age().expect("Max-Age").whole_seconds();
    assert!(
        max_age <= 2,
        "Max-Age {max_age} beyond the absolute timeout"
    );
    // Keep the session busy: every request writes and is re-issued.
    let mut rounds = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut session = start(&manager, &header_for(&cookie)).await;
        if session.is_new() {
            break;
        }
        assert!(
            now_millis() < created + 1500 + 50,
            "opened past the absolute timeout"
        );
        assert!(session.session().expires_at_millis() <= created + 1500);
        session
            .modify("n", |n: Option<u64>| n.unwrap_or(0) + 1)
            .expect("modify");
        cookie = session.commit().await.expect("commit").expect("cookie");
        rounds += 1;
        assert!(rounds < 20, "the absolute timeout never ended the session");
    }
    assert!(now_millis() >= created + 1500);
    assert!(rounds >= 3, "{rounds}");
}

#[tokio::test]
async fn rotation_re_issues_once_then_never_again() {
    let (old, new) = (Key::generate(), Key::generate());
    let mut session = start(&manager(&[&old]), "").await;
    session.insert("user", "ada").expect("insert");
    let old_cookie = session.commit().await.expect("commit").expect("cookie");

    let rotated = manager(&[&new, &old]);
    let mut read = start(&rotated, &header_for(&old_cookie)).await;
    assert!(!read.is_new());
    let reissued = read
        .commit()
        .await
        .expect("commit")
        .expect("re-issued under the new key");
    // The re-issued cookie opens with the first key only: no further re-issue.
    for _ in 0..3 {
        let mut read = start(&rotated, &header_for(&reissued)).await;
        assert_eq!(
            read.get::<String>("user").expect("get").as_deref(),
            Some("ada")
        );
        assert!(
            read.commit().await.expect("commit").is_none(),
            "re-issued again"
        );
    }
    // A second commit of the rotating request sends nothing more.
    assert!(read.commit().await.expect("commit").is_none());
}

#[tokio::test]
async fn destroy_after_regenerate_leaves_no_data_and_removes_the_cookie() {
    let key = Key::generate();
    let manager = manager(&[&key]);
    let mut session = start(&manager, "").await;
    session.insert("secret", "s3").expect("insert");
    let cookie = session.commit().await.expect("commit").expect("cookie");
    let mut request = start(&manager, &header_for(&cookie)).await;
    request.regenerate().expect("regenerate");
    request.insert("user", "ada").expect("insert");
    request.destroy();
    request.insert("after", "destroy").expect("insert");
    let removal = request.commit().await.expect("commit").expect("removal");
    assert_eq!(removal.value(), "");
    assert_eq!(removal.max_age(), Some(session_store::time::Duration::ZERO));
    assert!(
        request.commit().await.expect("commit").is_none(),
        "removal sent twice"
    );
}

#[tokio::test]
async fn destroying_a_session_the_browser_never_had_sends_nothing() {
    let manager = manager(&[&Key::generate()]);
    let mut session = start(&manager, "").await;
    session.insert("k", &1u8).expect("insert");
    session.destroy();
    assert!(session.commit().await.expect("commit").is_none());
}

#[tokio::test]
async fn a_regenerated_cookie_gets_a_new_token_and_version_continues() {
    let key = Key::generate();
    let manager = manager(&[&key]);
    let mut session = start(&manager, "").await;
    session.insert("k", &1u8).expect("insert");
    let first = session.commit().await.expect("commit").expect("cookie");
    let mut login = start(&manager, &header_for(&first)).await;
    let old_id = login.id();
    let old_token = login.token().as_str().to_owned();
    login.regenerate().expect("regenerate");
    let second = login.commit().await.expect("commit").expect("cookie");
    let after = start(&manager, &header_for(&second)).await;
    assert_ne!(after.id(), old_id);
    assert_ne!(after.token().as_str(), old_token);
    assert!(after.session().version() > 1);
}

#[tokio::test]
async fn store_and_flush_of_a_cookie_only_manager() {
    let manager = manager(&[&Key::generate()]);
    let store = manager.store();
    let token = SessionToken::generate();
    let mut session = Session::new(token.id(), Duration::from_secs(60));
    session.insert("k", &1u8).expect("insert");
    match store.set(&session).await {
        Err(Error::Unsupported { .. }) => {}
        other => panic!("set on a cookie-only store: {other:?}"),
    }
    match store.create(&session).await {
        Err(Error::Unsupported { .. }) => {}
        other => panic!("create on a cookie-only store: {other:?}"),
    }
    assert_eq!(store.get(&token.id()).await.expect("get"), None);
    assert!(!store.exists(&token.id()).await.expect("exists"));
    assert_eq!(store.len().await.expect("len"), 0);
    assert_eq!(manager.flush().await.expect("flush"), 0);
    store.clear().await.expect("clear");
}

#[cfg(feature = "conformance")]
mod swapping {
    use std::sync::Arc;

    use session_store::conformance::ReferenceStore;
    use session_store::SessionInterface;

    use super::*;

    #[tokio::test]
    async fn set_operations_turns_a_cookie_only_manager_into_a_store_manager() {
        let manager = manager(&[&Key::generate()]);
        let mut session = start(&manager, "").await;
        session.insert("user", "ada").expect("insert");
        let cookie = session.commit().await.expect("commit").expect("cookie");
        // Started before the swap: finishes in its cookie.
        let mut in_flight = start(&manager, &header_for(&cookie)).await;
        let store = Arc::new(ReferenceStore::new());
        manager.set_operations(store.clone());
        assert!(!manager.is_cookie_only());
        in_flight.insert("n", &1u8).expect("insert");
        let sealed = in_flight
            .commit()
            .await
            .expect("commit")
            .expect("a sealed cookie");
        assert!(sealed.value().len() > 100, "not a sealed value");
        assert_eq!(store.len().await.expect("len"), 0, "wrote to the new store");
        // After the swap, sealed cookies start fresh sessions in the store.
        let mut after = start(&manager, &header_for(&sealed)).await;
        assert!(after.is_new());
        after.insert("k", &1u8).expect("insert");
        let stored = after.commit().await.expect("commit").expect("cookie");
        assert_eq!(store.len().await.expect("len"), 1);
        assert!(!start(&manager, &header_for(&stored)).await.is_new());
    }
}

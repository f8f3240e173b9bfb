//! Cookie-only sessions: the session sealed in its cookie, timeouts judged
//! from the sealed times, key rotation, the size limit, and what the mode
//! honestly cannot do (revoke a copied cookie, refuse a replayed one).

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
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

fn manager(keys: &[&Key]) -> SessionManager {
    SessionManager::cookie_only(keys.iter().map(|k| (*k).clone()).collect(), config())
        .expect("manager")
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

async fn commit(session: &mut ActiveSession) -> Option<Cookie<'static>> {
    session.commit().await.expect("commit")
}

/// `plain` sealed with `key` as the manager seals it (the private jar's
/// standard base64 re-encoded URL-safe), as a request header.
fn seal(key: &Key, plain: &str) -> String {
    let mut jar = CookieJar::new();
    jar.private_mut(key)
        .add(Cookie::new("id", plain.to_owned()));
    let sealed = jar.get("id").expect("sealed").value().to_owned();
    let bytes = STANDARD.decode(sealed).expect("the jar writes base64");
    format!("id={}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Seals `session` under `token` exactly as the manager does, so tests can
/// forge records with chosen times.
fn forge(key: &Key, token: &SessionToken, session: &Session) -> String {
    let record = codec::encode(session, session.version()).expect("encode");
    seal(
        key,
        &format!("{}.{}", token.as_str(), URL_SAFE_NO_PAD.encode(record)),
    )
}

#[tokio::test]
async fn a_session_round_trips_through_its_cookie() {
    let key = Key::generate();
    let manager = manager(&[&key]);
    assert!(manager.is_cookie_only());
    let mut first = start(&manager, "").await;
    assert!(first.is_new());
    first.insert("user", "ada").expect("insert");
    first.flash("notice", "welcome").expect("flash");
    let cookie = commit(&mut first)
        .await
        .expect("a cookie for a session with data");
    assert!(
        !cookie.value().contains("ada"),
        "the data is encrypted, not merely encoded"
    );

    let mut second = start(&manager, &header_for(&cookie)).await;
    assert!(!second.is_new());
    assert_eq!(second.id(), first.id(), "the sealed token keeps the id");
    assert_eq!(
        second.get::<String>("user").expect("get").as_deref(),
        Some("ada")
    );
    assert_eq!(
        second
            .get_flash::<String>("notice")
            .expect("flash")
            .as_deref(),
        Some("welcome")
    );
    assert_eq!(second.session().version(), 1);
    let cookie = commit(&mut second)
        .await
        .expect("consuming the flash is a change: the cookie is re-sent");
    assert_eq!(second.session().version(), 2);

    let mut third = start(&manager, &header_for(&cookie)).await;
    assert_eq!(third.get_flash::<String>("notice").expect("flash"), None);
    assert!(
        commit(&mut third).await.is_none(),
        "nothing changed and the expiry did not move: no cookie"
    );
    // No store behind it: nothing to count or flush.
    assert_eq!(manager.store().len().await.expect("len"), 0);
    assert_eq!(manager.flush().await.expect("flush"), 0);
}

#[tokio::test]
async fn an_untouched_new_session_sends_nothing() {
    let manager = manager(&[&Key::generate()]);
    let mut session = start(&manager, "").await;
    assert!(commit(&mut session).await.is_none());
}

#[tokio::test]
async fn cookies_that_do_not_open_start_fresh_sessions() {
    let key = Key::generate();
    let manager = manager(&[&key]);
    let mut session = start(&manager, "").await;
    session.insert("user", "ada").expect("insert");
    let cookie = commit(&mut session).await.expect("cookie");
    let good = header_for(&cookie);
    let value = cookie.value().to_owned();
    let flipped = {
        let mut bytes = value.clone().into_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).expect("ascii")
    };
    let other_key = {
        let token = SessionToken::generate();
        let record =
            codec::encode(&Session::new(token.id(), Duration::from_secs(60)), 1).expect("encode");
        seal(
            &Key::generate(),
            &format!("{}.{}", token.as_str(), URL_SAFE_NO_PAD.encode(record)),
        )
    };
    let hostile = [
        ("tampered", format!("id={flipped}")),
        ("truncated", format!("id={}", &value[..value.len() - 10])),
        ("sealed with an unknown key", other_key),
        (
            "oversized",
            format!("id={}", "A".repeat(MAX_COOKIE_BYTES + 1)),
        ),
        (
            "plain token",
            format!("id={}", SessionToken::generate().as_str()),
        ),
        ("garbage", "id=!!!~~~".to_owned()),
        ("empty", "id=".to_owned()),
        ("unicode", "id=éé🎉".to_owned()),
        ("duplicated with another value", format!("{good}; id=other")),
    ];
    for (name, header) in hostile {
        let mut fresh = start(&manager, &header).await;
        assert!(fresh.is_new(), "{name}: loaded a session");
        assert_eq!(fresh.get::<String>("user").expect("get"), None, "{name}");
        fresh.insert("k", &1u8).expect("insert");
        let issued = commit(&mut fresh).await.expect("a new cookie");
        assert_ne!(fresh.id(), session.id(), "{name}: the old id was adopted");
        assert!(
            !header.contains(issued.value()),
            "{name}: client value adopted"
        );
    }
    assert!(
        !start(&manager, &good).await.is_new(),
        "the genuine cookie still opens"
    );
}

#[tokio::test]
async fn a_sealed_value_does_not_open_under_another_cookie_name() {
    let key = Key::generate();
    let issuing = manager(&[&key]);
    let mut session = start(&issuing, "").await;
    session.insert("role", "admin").expect("insert");
    let cookie = commit(&mut session).await.expect("cookie");
    let other = SessionManager::cookie_only(
        vec![key],
        SessionConfig {
            cookie_name: "other".into(),
            ..config()
        },
    )
    .expect("manager");
    let moved = format!("other={}", cookie.value());
    assert!(start(&other, &moved).await.is_new());
}

#[tokio::test]
async fn key_rotation_reissues_under_the_first_key() {
    let (old, new) = (Key::generate(), Key::generate());
    let before = manager(&[&old]);
    let mut session = start(&before, "").await;
    session.insert("user", "ada").expect("insert");
    let old_cookie = commit(&mut session).await.expect("cookie");

    let rotated = manager(&[&new, &old]);
    let mut read = start(&rotated, &header_for(&old_cookie)).await;
    assert_eq!(
        read.get::<String>("user").expect("get").as_deref(),
        Some("ada")
    );
    let reissued = commit(&mut read)
        .await
        .expect("a cookie opened by a retired key is re-issued");

    let retired = manager(&[&new]);
    let again = start(&retired, &header_for(&reissued)).await;
    assert_eq!(
        again.get::<String>("user").expect("get").as_deref(),
        Some("ada")
    );
    assert!(
        start(&retired, &header_for(&old_cookie)).await.is_new(),
        "once the old key is gone, its cookies no longer open"
    );
}

#[tokio::test]
async fn timeouts_are_judged_from_the_sealed_times() {
    let key = Key::generate();
    let manager = manager(&[&key]);
    let token = SessionToken::generate();
    let now = now_millis();

    // Idle timeout passed: the sealed expiry is behind us, whatever Max-Age said.
    let mut idle = Session::new(token.id(), Duration::from_secs(60));
    idle.insert("user", "ada").expect("insert");
    idle.set_expires_at_millis(now - 1);
    assert!(start(&manager, &forge(&key, &token, &idle)).await.is_new());

    // Absolute timeout passed: created 8 days ago (the default is 7), even
    // with a sealed expiry still ahead.
    let mut old = Session::from_parts(
        token.id(),
        Default::default(),
        Default::default(),
        now - 8 * 24 * 3600 * 1000,
        now + 3600 * 1000,
        1,
    );
    old.insert("user", "ada").expect("insert");
    assert!(start(&manager, &forge(&key, &token, &old)).await.is_new());

    // Live: loaded.
    let mut live = Session::new(token.id(), Duration::from_secs(3600));
    live.insert("user", "ada").expect("insert");
    let loaded = start(&manager, &forge(&key, &token, &live)).await;
    assert!(!loaded.is_new());
    assert_eq!(loaded.id(), token.id());
}

#[tokio::test]
async fn a_read_only_request_reissues_once_the_expiry_moved_enough() {
    let key = Key::generate();
    let manager = SessionManager::cookie_only(
        vec![key.clone()],
        SessionConfig {
            touch_after: Duration::ZERO,
            ..config()
        },
    )
    .expect("manager");
    let token = SessionToken::generate();
    let mut session = Session::new(token.id(), Duration::from_secs(60));
    session.insert("user", "ada").expect("insert");
    let sealed_expiry = session.expires_at_millis();
    let mut read = start(&manager, &forge(&key, &token, &session)).await;
    assert!(read.get::<String>("user").expect("get").is_some());
    let cookie = commit(&mut read)
        .await
        .expect("the idle timeout only slides if the cookie is sent back");
    let again = start(&manager, &header_for(&cookie)).await;
    assert!(again.session().expires_at_millis() > sealed_expiry);
    assert_eq!(
        again.get::<String>("user").expect("get").as_deref(),
        Some("ada")
    );

    // With the default touch_after (60 s), a fresh cookie is not re-sent.
    let lazy = self::manager(&[&key]);
    let mut read = start(&lazy, &header_for(&cookie)).await;
    assert!(commit(&mut read).await.is_none());
}

#[tokio::test]
async fn a_session_too_large_for_its_cookie_fails_the_commit_and_loses_nothing() {
    let key = Key::generate();
    let manager = manager(&[&key]);
    let mut session = start(&manager, "").await;
    session.insert("user", "ada").expect("insert");
    let first = commit(&mut session).await.expect("cookie");

    let mut big = start(&manager, &header_for(&first)).await;
    big.insert("blob", &"x".repeat(5000)).expect("insert");
    match big.commit().await {
        Err(Error::CookieTooLarge { name, size, limit }) => {
            assert_eq!(name, "id");
            assert_eq!(limit, MAX_COOKIE_BYTES);
            assert!(size > limit, "{size}");
        }
        other => panic!("expected CookieTooLarge, got {other:?}"),
    }
    // The handle is intact: shrink and commit again.
    assert!(big.remove("blob"));
    let cookie = commit(&mut big).await.expect("fits again");
    let read = start(&manager, &header_for(&cookie)).await;
    assert_eq!(
        read.get::<String>("user").expect("get").as_deref(),
        Some("ada")
    );
    assert_eq!(read.get::<String>("blob").expect("get"), None);
}

#[tokio::test]
async fn the_size_limit_is_exact() {
    // Grow the value one byte at a time across the limit: every cookie that
    // is sent fits in 4096 bytes, every refusal names a size over it, and
    // once refused a larger value never fits (the sealed size depends on
    // the session alone, not on the random nonce).
    let manager = SessionManager::cookie_only(
        vec![Key::generate()],
        SessionConfig {
            persistent: true,
            domain: Some("example.com".into()),
            ..config()
        },
    )
    .expect("manager");
    let mut largest_sent = 0;
    let mut refused_at = None;
    for len in 1800..2400 {
        let mut session = start(&manager, "").await;
        session.insert("v", &"y".repeat(len)).expect("insert");
        match session.commit().await {
            Ok(Some(cookie)) => {
                let size = cookie.encoded().to_string().len();
                assert!(size <= MAX_COOKIE_BYTES, "sent {size} bytes");
                assert!(refused_at.is_none(), "a larger value fit after a refusal");
                largest_sent = largest_sent.max(size);
            }
            Err(Error::CookieTooLarge { size, .. }) => {
                assert!(size > MAX_COOKIE_BYTES);
                refused_at = Some(refused_at.map_or(size, |smallest: usize| smallest.min(size)));
            }
            other => panic!("{other:?}"),
        }
    }
    let refused_at = refused_at.expect("the loop crosses the limit");
    assert!(
        largest_sent > MAX_COOKIE_BYTES - 8,
        "a step of the loop is about two bytes of cookie: {largest_sent}"
    );
    assert!(refused_at <= MAX_COOKIE_BYTES + 4, "{refused_at}");
}

/// Review finding: the private jar's ciphertext is random, and sent as
/// standard base64 its '/' and '=' were percent-encoded to three bytes, so
/// one session sealed to different sizes and a read-only request of a
/// session that fit could fail with CookieTooLarge (a 500). Sealed values
/// are now URL-safe: the same session always seals to the same size.
#[tokio::test]
async fn read_only_re_issues_of_a_session_that_fit_never_fail() {
    let manager = SessionManager::cookie_only(
        vec![Key::generate()],
        SessionConfig {
            touch_after: Duration::ZERO,
            ..config()
        },
    )
    .expect("manager");
    // The largest value that fits.
    let mut largest = None;
    for len in 2000..2400 {
        let mut session = start(&manager, "").await;
        session.insert("v", &"y".repeat(len)).expect("insert");
        match session.commit().await {
            Ok(Some(cookie)) => largest = Some(cookie),
            Err(Error::CookieTooLarge { .. }) => break,
            other => panic!("{other:?}"),
        }
    }
    let cookie = largest.expect("a value that fits");
    let size = cookie.encoded().to_string().len();
    assert!(size > MAX_COOKIE_BYTES - 4, "not at the limit: {size}");
    for _ in 0..200 {
        let mut read = start(&manager, &header_for(&cookie)).await;
        assert!(read.get::<String>("v").expect("get").is_some());
        let again = commit(&mut read)
            .await
            .expect("touch_after 0: every read re-issues");
        assert_eq!(again.encoded().to_string().len(), size, "the size moved");
    }
}

#[tokio::test]
async fn regenerate_and_destroy_work_on_the_cookie() {
    let key = Key::generate();
    let manager = manager(&[&key]);
    let mut session = start(&manager, "").await;
    session.insert("cart", &3u32).expect("insert");
    let anonymous = commit(&mut session).await.expect("cookie");

    let mut login = start(&manager, &header_for(&anonymous)).await;
    let before = login.id();
    login.insert("user", "ada").expect("insert");
    login.regenerate().expect("regenerate");
    let logged_in = commit(&mut login).await.expect("a new cookie");
    let after = start(&manager, &header_for(&logged_in)).await;
    assert_ne!(after.id(), before, "login gives a new id");
    assert_eq!(after.get::<u32>("cart").expect("get"), Some(3));
    assert_eq!(
        after.get::<String>("user").expect("get").as_deref(),
        Some("ada")
    );
    assert_eq!(
        after.session().created_at_millis(),
        session.session().created_at_millis()
    );

    let mut logout = start(&manager, &header_for(&logged_in)).await;
    logout.destroy();
    let removal = commit(&mut logout).await.expect("a removal cookie");
    assert_eq!(removal.value(), "");
    assert_eq!(removal.max_age(), Some(session_store::time::Duration::ZERO));

    // What this mode cannot do (documented on `cookie_only`): a copy of the
    // cookie taken before the logout still opens until its sealed expiry.
    let replayed = start(&manager, &header_for(&logged_in)).await;
    assert_eq!(
        replayed.get::<String>("user").expect("get").as_deref(),
        Some("ada")
    );
}

#[tokio::test]
async fn without_a_key_there_is_no_cookie_only_manager() {
    match SessionManager::cookie_only(Vec::new(), config()) {
        Err(Error::Config(reason)) => assert!(reason.contains("key"), "{reason}"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test]
async fn persistent_cookies_carry_the_sealed_expiry_as_max_age() {
    let manager = SessionManager::cookie_only(
        vec![Key::generate()],
        SessionConfig {
            persistent: true,
            ..config()
        },
    )
    .expect("manager");
    let mut session = start(&manager, "").await;
    session.insert("k", &1u8).expect("insert");
    let cookie = commit(&mut session).await.expect("cookie");
    let max_age = cookie.max_age().expect("Max-Age").whole_seconds();
    assert!((86_000..=86_400).contains(&max_age), "{max_age}");
}

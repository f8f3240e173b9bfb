//! The scenarios, one function each, generic over the [`Framework`] under
//! test. [`framework_tests!`](crate::framework_tests) turns each into a
//! `#[tokio::test]`. They panic (fail) with a message naming what broke.

use std::sync::Arc;
use std::time::Duration;

use session_store::cookie::Key;
use session_store::{SessionInterface, SessionManager, SessionToken};
use session_store_memory::MemoryStore;

use crate::client::{get_with_cookies, Browser, Reply};
use crate::stores::{CountingStore, DownStore, FailingWrites};
use crate::{config, manager, Framework, Server};

/// The session cookie's name under [`config`].
fn cookie_name() -> String {
    config().effective_cookie_name().into_owned()
}

async fn serve<F: Framework>(
    store: Arc<dyn SessionInterface>,
    save_on_server_error: bool,
) -> Server {
    F::serve(manager(store), save_on_server_error).await
}

#[track_caller]
fn assert_ok(reply: &Reply, body: &str) {
    assert_eq!(reply.status, 200, "unexpected status: {reply:?}");
    assert_eq!(reply.body, body, "unexpected body: {reply:?}");
}

/// A browser of `server` that presents cookie `value` as its session.
fn replaying(server: &Server, value: &str) -> Browser {
    let browser = Browser::new(server);
    browser.set_cookie(&cookie_name(), value);
    browser
}

/// A browser that has a stored session (`base` = `1`) and its cookie value.
async fn with_session(server: &Server) -> (Browser, String) {
    let browser = Browser::new(server);
    assert_ok(&browser.get("/set/base/1").await, "ok");
    let value = browser
        .cookie(&cookie_name())
        .expect("a session that stored data sent no cookie");
    (browser, value)
}

/// Two overlapping `/set` requests of one session keep both keys: the
/// later save does not overwrite the earlier one's key.
pub async fn racing_sets_keep_both_keys<F: Framework>() {
    let server = serve::<F>(Arc::new(MemoryStore::new()), true).await;
    let (browser, _) = with_session(&server).await;
    let (a, b) = tokio::join!(browser.get("/set/a/1"), browser.get("/set/b/1"));
    assert_ok(&a, "ok");
    assert_ok(&b, "ok");
    for key in ["base", "a", "b"] {
        let reply = browser.get(&format!("/get/{key}")).await;
        assert_eq!(reply.body, "1", "a racing request lost key {key:?}");
    }
}

/// A slow `/set` that loaded the session before a `/logout` deleted it
/// saves nothing and sends no cookie: the old cookie then finds a fresh
/// session, never the logged-out one.
pub async fn slow_set_does_not_undo_logout<F: Framework>() {
    let server = serve::<F>(Arc::new(MemoryStore::new()), true).await;
    let name = cookie_name();
    // The overlap depends on scheduling: `/set` must load before `/logout`
    // commits. An attempt where it loaded after is still checked, then
    // retried.
    for _attempt in 0..5 {
        let (browser, old) = with_session(&server).await;
        let (slow, logout) = tokio::join!(browser.get("/set/a/1"), async {
            tokio::time::sleep(Duration::from_millis(15)).await;
            browser.get("/logout").await
        });
        assert_ok(&logout, "bye");
        assert_eq!(slow.status, 200, "the slow /set failed: {slow:?}");
        let replay = replaying(&server, &old);
        for key in ["base", "a"] {
            assert_eq!(
                replay.get(&format!("/get/{key}")).await.body,
                "",
                "the old cookie loads {key:?} after a logout: the slow request brought the session back"
            );
        }
        match slow.cookie(&name) {
            // It loaded before the logout, saved nothing and sent no cookie.
            None => {
                assert!(!slow.sets_cookie(), "{slow:?}");
                return;
            }
            // It loaded after the logout: a fresh session, fine, but not the
            // case under test.
            Some(value) => assert_ne!(
                value, old,
                "the slow request re-sent the logged-out session's cookie"
            ),
        }
    }
    panic!("in 5 attempts the slow /set never loaded its session before /logout committed");
}

/// The last character of `value` changed: a cookie of the right shape the
/// server never issued (or whose signature no longer matches).
fn forge(value: &str) -> String {
    let mut forged: Vec<char> = value.chars().collect();
    if let Some(last) = forged.last_mut() {
        *last = if *last == 'A' { 'B' } else { 'A' };
    }
    forged.into_iter().collect()
}

/// Hostile `Cookie` headers (garbage, 8 KB, a session cookie sent twice
/// with different values, a well-formed token never issued, NUL and
/// unicode escapes) get a fresh session: never a 500, never another
/// session's data, never the presented token adopted.
pub async fn hostile_cookies_start_fresh<F: Framework>() {
    let server = serve::<F>(Arc::new(MemoryStore::new()), true).await;
    let name = cookie_name();
    let owner = Browser::new(&server);
    assert_ok(&owner.get("/set/k/secret").await, "ok");
    let real = owner.cookie(&name).expect("no session cookie");
    let forged = forge(&real);
    let never_issued = SessionToken::generate();
    let never_issued = never_issued.as_str();
    let one = |header: String| vec![header.into_bytes()];
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("no name", one("garbage".into())),
        ("garbage value", one(format!("{name}=!!not*a*token!!"))),
        ("empty value", one(format!("{name}="))),
        (
            "8 KB value",
            one(format!("{name}={}", "A".repeat(8 * 1024))),
        ),
        (
            "duplicate in one header",
            one(format!("{name}={real}; {name}={forged}")),
        ),
        (
            "duplicate across headers",
            vec![
                format!("{name}={real}").into_bytes(),
                format!("{name}={forged}").into_bytes(),
            ],
        ),
        ("forged", one(format!("{name}={forged}"))),
        ("never issued", one(format!("{name}={never_issued}"))),
        ("percent-encoded NUL", one(format!("{name}=%00{real}"))),
        ("escaped NUL", one(format!("{name}=\\u0000{real}"))),
        ("escaped unicode", one(format!("{name}=\\u{{1F600}}"))),
        (
            "percent-encoded unicode",
            one(format!("{name}=%F0%9F%98%80")),
        ),
        ("raw UTF-8", one(format!("{name}=é😀{real}"))),
    ];
    for (what, headers) in cases {
        let reply = get_with_cookies(&server, "/get/k", &headers)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(reply.status, 200, "{what}: {reply:?}");
        assert_eq!(reply.body, "", "{what}: another session's data was read");

        let reply = get_with_cookies(&server, "/set/h/1", &headers)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(reply.status, 200, "{what}: {reply:?}");
        let fresh = reply
            .cookie(&name)
            .unwrap_or_else(|| panic!("{what}: a new session with data sent no cookie: {reply:?}"));
        for header in &headers {
            assert!(
                !String::from_utf8_lossy(header).contains(&fresh),
                "{what}: the presented value was adopted"
            );
        }
        let browser = replaying(&server, &fresh);
        assert_eq!(browser.get("/get/h").await.body, "1", "{what}");
        assert_eq!(browser.get("/get/k").await.body, "", "{what}");
    }
    assert_eq!(
        owner.get("/get/k").await.body,
        "secret",
        "the hostile requests damaged the real session"
    );
}

/// Every response that sets the session cookie (a new session, a login, a
/// logout's expiry) carries `Cache-Control: no-store`; a response that
/// stores nothing sets no cookie.
pub async fn responses_setting_the_cookie_are_no_store<F: Framework>() {
    let server = serve::<F>(Arc::new(MemoryStore::new()), true).await;
    let browser = Browser::new(&server);
    let reply = browser.get("/get/a").await;
    assert_ok(&reply, "");
    assert!(
        !reply.sets_cookie(),
        "an empty new session sent a cookie: {reply:?}"
    );
    for path in ["/set/a/1", "/login/ada", "/logout"] {
        let reply = browser.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert!(reply.sets_cookie(), "{path} set no cookie: {reply:?}");
        assert!(
            reply.is_no_store(),
            "{path} set a cookie without no-store: {reply:?}"
        );
    }
    assert!(
        browser.cookie(&cookie_name()).is_none(),
        "the logout did not expire the cookie"
    );
}

/// A route that never uses the session does no store I/O and sends no
/// cookie, with or without a session cookie in the request.
pub async fn none_route_does_no_store_io<F: Framework>() {
    let store = Arc::new(CountingStore::memory());
    let server = serve::<F>(store.clone(), true).await;
    let browser = Browser::new(&server);
    let reply = browser.get("/none").await;
    assert_ok(&reply, "none");
    assert!(!reply.sets_cookie(), "{reply:?}");
    assert_eq!(store.calls(), 0, "/none without a cookie used the store");

    assert_ok(&browser.get("/set/a/1").await, "ok");
    let before = store.calls();
    assert!(before > 0, "the counting store counted nothing");
    let reply = browser.get("/none").await;
    assert_ok(&reply, "none");
    assert!(!reply.sets_cookie(), "{reply:?}");
    assert_eq!(
        store.calls(),
        before,
        "/none with a session cookie used the store"
    );
    assert_eq!(browser.get("/get/a").await.body, "1");
}

/// With the store down, a route without the session still answers 200,
/// with or without a session cookie, while the session routes fail: 503
/// when a cookie names a session to load, 500 when a new session cannot be
/// saved.
pub async fn down_store_fails_only_session_routes<F: Framework>() {
    let server = serve::<F>(Arc::new(DownStore), true).await;
    let token = SessionToken::generate();
    let returning = replaying(&server, token.as_str());
    let new = Browser::new(&server);
    for browser in [&returning, &new] {
        let reply = browser.get("/none").await;
        assert_ok(&reply, "none");
        assert!(!reply.sets_cookie(), "{reply:?}");
    }
    for path in ["/get/x", "/set/a/1", "/incr"] {
        let reply = returning.get(path).await;
        assert_eq!(reply.status, 503, "{path} with the store down: {reply:?}");
        assert!(!reply.sets_cookie(), "{path}: {reply:?}");
    }
    // Without a cookie there is nothing to load: reading works, saving fails.
    assert_ok(&new.get("/get/x").await, "");
    let reply = new.get("/set/a/1").await;
    assert_eq!(reply.status, 500, "a save with the store down: {reply:?}");
    assert!(!reply.sets_cookie(), "{reply:?}");
}

/// A save that fails answers 500 and sends no cookie; nothing of it is
/// stored.
pub async fn failing_save_answers_500<F: Framework>() {
    let store = Arc::new(FailingWrites::new(Arc::new(MemoryStore::new()), false));
    let server = serve::<F>(store.clone(), true).await;
    let (browser, _) = with_session(&server).await;
    store.set_failing(true);
    let reply = browser.get("/set/b/1").await;
    assert_eq!(reply.status, 500, "an update that failed: {reply:?}");
    assert!(!reply.sets_cookie(), "{reply:?}");
    let fresh = Browser::new(&server);
    let reply = fresh.get("/set/c/1").await;
    assert_eq!(reply.status, 500, "a create that failed: {reply:?}");
    assert!(!reply.sets_cookie(), "{reply:?}");
    store.set_failing(false);
    assert_eq!(
        browser.get("/get/b").await.body,
        "",
        "the failed save landed"
    );
    assert_eq!(browser.get("/get/base").await.body, "1");
    assert_eq!(store.len().await.ok(), Some(1), "the failed create landed");
}

/// A panicking handler commits nothing: no write, no cookie, and a new
/// session it put data into is not created. The client sees a 5xx or a
/// dropped connection, whichever the framework does with a panic.
pub async fn panic_commits_nothing<F: Framework>() {
    let store = Arc::new(MemoryStore::new());
    let server = serve::<F>(store.clone(), true).await;
    let (browser, _) = with_session(&server).await;
    let fresh = Browser::new(&server);
    for who in [&browser, &fresh] {
        if let Ok(reply) = who.try_get("/panic").await {
            assert!(reply.status >= 500, "a panic answered {reply:?}");
            assert!(
                !reply.sets_cookie(),
                "a panicked request sent a cookie: {reply:?}"
            );
        }
    }
    assert_eq!(
        browser.get("/get/a").await.body,
        "",
        "the panicked handler's change was saved"
    );
    assert_eq!(browser.get("/get/base").await.body, "1");
    assert!(fresh.cookie(&cookie_name()).is_none());
    assert_eq!(
        store.len().await.ok(),
        Some(1),
        "a panicked new session was stored"
    );
}

/// With `save_on_server_error` off, a 5xx commits nothing and sends no
/// cookie, while a 4xx still saves; with it on (the default) a 5xx saves.
pub async fn server_error_without_save_commits_nothing<F: Framework>() {
    let store = Arc::new(MemoryStore::new());
    let server = serve::<F>(store.clone(), false).await;
    let (browser, _) = with_session(&server).await;
    let reply = browser.get("/status/500").await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(!reply.sets_cookie(), "{reply:?}");
    assert_eq!(
        browser.get("/get/a").await.body,
        "",
        "a 500 saved the session"
    );
    let fresh = Browser::new(&server);
    let reply = fresh.get("/status/500").await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(!reply.sets_cookie(), "a 500 created a session: {reply:?}");
    assert_eq!(store.len().await.ok(), Some(1), "a 500 created a session");
    assert_eq!(browser.get("/status/422").await.status, 422);
    assert_eq!(browser.get("/get/a").await.body, "x", "a 422 did not save");

    let saving = serve::<F>(Arc::new(MemoryStore::new()), true).await;
    let (browser, _) = with_session(&saving).await;
    assert_eq!(browser.get("/status/500").await.status, 500);
    assert_eq!(
        browser.get("/get/a").await.body,
        "x",
        "a 500 did not save with save_on_server_error on"
    );
}

/// 16 concurrent `/incr` on one session all count: the next one answers 17.
pub async fn concurrent_increments_are_exact<F: Framework>() {
    let server = serve::<F>(Arc::new(MemoryStore::new()), true).await;
    let (browser, _) = with_session(&server).await;
    let browser = Arc::new(browser);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let browser = browser.clone();
        tasks.spawn(async move { browser.get("/incr").await });
    }
    while let Some(done) = tasks.join_next().await {
        let reply = done.unwrap_or_else(|e| panic!("an /incr task failed: {e}"));
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_ok(&browser.get("/incr").await, "17");
}

/// A flash value is read by the next request that asks, and only once.
pub async fn flash_is_read_once<F: Framework>() {
    let server = serve::<F>(Arc::new(MemoryStore::new()), true).await;
    let browser = Browser::new(&server);
    assert_ok(&browser.get("/flash/hello").await, "ok");
    assert_ok(&browser.get("/read-flash").await, "hello");
    assert_ok(&browser.get("/read-flash").await, "");
}

/// A login gives a new cookie; the session's data moves to it, and the
/// old cookie no longer loads the session.
pub async fn login_replaces_the_cookie<F: Framework>() {
    let server = serve::<F>(Arc::new(MemoryStore::new()), true).await;
    let (browser, old) = with_session(&server).await;
    let reply = browser.get("/login/ada").await;
    assert_ok(&reply, "ok");
    let new = reply
        .cookie(&cookie_name())
        .unwrap_or_else(|| panic!("a login sent no cookie: {reply:?}"));
    assert_ne!(new, old, "a login kept the old token");
    assert_eq!(browser.get("/get/user").await.body, "ada");
    assert_eq!(
        browser.get("/get/base").await.body,
        "1",
        "a login lost the data"
    );
    let replay = replaying(&server, &old);
    assert_eq!(
        replay.get("/get/user").await.body,
        "",
        "the old cookie loads the login"
    );
    assert_eq!(
        replay.get("/get/base").await.body,
        "",
        "the old cookie still loads the session"
    );
}

/// A cookie-only manager (no store) with [`config`] and a fresh key.
fn cookie_only(key: &Key) -> Arc<SessionManager> {
    match SessionManager::cookie_only(vec![key.clone()], config()) {
        Ok(manager) => Arc::new(manager),
        Err(e) => panic!("the cookie-only configuration is refused: {e}"),
    }
}

/// Cookie-only sessions through the integration, handlers unchanged: data,
/// counters, flash, login and logout all travel in the cookie.
pub async fn cookie_only_sessions_round_trip<F: Framework>() {
    let server = F::serve(cookie_only(&Key::generate()), true).await;
    let browser = Browser::new(&server);
    assert_ok(&browser.get("/set/a/1").await, "ok");
    assert_ok(&browser.get("/get/a").await, "1");
    for expected in ["1", "2", "3"] {
        assert_ok(&browser.get("/incr").await, expected);
    }
    assert_ok(&browser.get("/flash/hello").await, "ok");
    assert_ok(&browser.get("/read-flash").await, "hello");
    assert_ok(&browser.get("/read-flash").await, "");
    let before = browser.cookie(&cookie_name()).expect("a session cookie");
    let login = browser.get("/login/ada").await;
    assert_ok(&login, "ok");
    assert!(login.is_no_store(), "{login:?}");
    assert_ne!(browser.cookie(&cookie_name()), Some(before));
    assert_ok(&browser.get("/get/user").await, "ada");
    assert_ok(&browser.get("/get/a").await, "1");
    assert_ok(&browser.get("/logout").await, "bye");
    assert_eq!(
        browser.cookie(&cookie_name()),
        None,
        "logout left the cookie"
    );
    assert_ok(&browser.get("/get/user").await, "");
}

/// A change that would make the cookie exceed 4096 bytes answers 500 and
/// sends no cookie: the browser keeps its last good one.
pub async fn cookie_only_too_large_answers_500_and_keeps_the_cookie<F: Framework>() {
    let server = F::serve(cookie_only(&Key::generate()), true).await;
    let browser = Browser::new(&server);
    assert_ok(&browser.get("/set/a/1").await, "ok");
    let good = browser.cookie(&cookie_name()).expect("a session cookie");
    let big = browser.get(&format!("/set/big/{}", "x".repeat(3000))).await;
    assert_eq!(big.status, 500, "{big:?}");
    assert!(!big.sets_cookie(), "a cookie was sent anyway: {big:?}");
    assert_eq!(browser.cookie(&cookie_name()), Some(good));
    assert_ok(&browser.get("/get/a").await, "1");
    assert_ok(&browser.get("/get/big").await, "");
}

/// A tampered or foreign-key cookie starts a fresh session (200, nothing
/// of the genuine session's data).
pub async fn cookie_only_tampered_cookies_start_fresh<F: Framework>() {
    let key = Key::generate();
    let server = F::serve(cookie_only(&key), true).await;
    let (_, genuine) = with_session(&server).await;
    let other_server = F::serve(cookie_only(&Key::generate()), true).await;
    let (_, foreign) = with_session(&other_server).await;
    for value in [
        forge(&genuine),
        genuine[..genuine.len() / 2].to_owned(),
        foreign,
    ] {
        let replay = replaying(&server, &value);
        let reply = replay.get("/get/base").await;
        assert_ok(&reply, "");
    }
    assert_ok(&replaying(&server, &genuine).get("/get/base").await, "1");
}

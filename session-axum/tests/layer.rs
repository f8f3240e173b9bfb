use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use framework_tests::{CountingStore, DownStore};
use session_axum::{Session, SessionLayer, SessionRejection};
use session_store::conformance::ReferenceStore;
use session_store::{SessionConfig, SessionInterface, SessionManager, SessionToken};
use session_store_memory::MemoryStore;
use tower::ServiceExt as _;
use tower_http::catch_panic::CatchPanicLayer;

async fn set_key(
    session: Session,
    Path(key): Path<String>,
) -> Result<&'static str, SessionRejection> {
    // Slow enough that two requests overlap between load and save.
    tokio::time::sleep(Duration::from_millis(50)).await;
    session.insert(&key, &true)?;
    Ok("ok")
}

async fn keys(session: Session) -> Result<String, SessionRejection> {
    let mut keys = Vec::new();
    for key in ["base", "a", "b"] {
        if session.get::<bool>(key)?.unwrap_or(false) {
            keys.push(key);
        }
    }
    Ok(keys.join(","))
}

async fn logout(session: Session) -> Result<&'static str, SessionRejection> {
    session.destroy()?;
    Ok("bye")
}

async fn set_then_panic(session: Session) -> &'static str {
    session.insert("a", &true).unwrap();
    panic!("handler bug after a session change");
}

/// Changes the session, then answers with the status in the path.
async fn set_then_fail(
    session: Session,
    Path(status): Path<u16>,
) -> Result<StatusCode, SessionRejection> {
    session.insert("a", &true)?;
    Ok(StatusCode::from_u16(status).unwrap())
}

/// A panic inside a session operation that the handler itself catches.
async fn set_then_catch_a_panic(session: Session) -> Result<&'static str, SessionRejection> {
    session.insert("a", &true)?;
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        session.modify("n", |_: Option<u64>| -> u64 {
            panic!("bug in a modify closure")
        })
    }));
    assert!(caught.is_err());
    Ok("carried on")
}

async fn set_flash(session: Session) -> Result<&'static str, SessionRejection> {
    session.flash("msg", "saved")?;
    Ok("ok")
}

async fn read_flash(session: Session) -> Result<String, SessionRejection> {
    Ok(session
        .get_flash::<String>("msg")?
        .unwrap_or_else(|| "none".into()))
}

async fn read_flash_then_panic(session: Session) -> String {
    let read = session.get_flash::<String>("msg");
    panic!("handler bug after reading {read:?}");
}

fn manager(store: Arc<dyn SessionInterface>) -> Arc<SessionManager> {
    let config = SessionConfig {
        secure: false,
        ..SessionConfig::default()
    };
    Arc::new(SessionManager::new(store, config).unwrap())
}

async fn no_session() -> &'static str {
    "plain"
}

/// Two extractions of the session in one request.
async fn keys_twice(first: Session, second: Session) -> Result<String, SessionRejection> {
    let a = first.get::<bool>("base")?.unwrap_or(false);
    let b = second.get::<bool>("base")?.unwrap_or(false);
    Ok(format!("{a},{b}"))
}

/// A page that does without the session when the store is down.
async fn greeting(session: Option<Session>) -> Result<String, SessionRejection> {
    Ok(match session {
        Some(session) => {
            let visits = session.modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
            format!("visit {visits}")
        }
        None => "hello, stranger".to_owned(),
    })
}

fn routes() -> Router {
    Router::new()
        .route("/plain", get(no_session))
        .route("/greeting", get(greeting))
        .route("/keys-twice", get(keys_twice))
        .route("/set/{key}", get(set_key))
        .route("/keys", get(keys))
        .route("/logout", get(logout))
        .route("/panic", get(set_then_panic))
        .route("/fail/{status}", get(set_then_fail))
        .route("/caught", get(set_then_catch_a_panic))
        .route("/flash", get(set_flash))
        .route("/read-flash", get(read_flash))
        .route("/read-flash-panic", get(read_flash_then_panic))
}

fn app() -> Router {
    routes().layer(SessionLayer::new(manager(Arc::new(MemoryStore::new()))))
}

/// The catch-panic layer sits inside the session layer, so a panic reaches
/// the session layer as an ordinary 500 response.
fn app_catching_panics(store: Arc<dyn SessionInterface>) -> Router {
    routes()
        .layer(CatchPanicLayer::new())
        .layer(SessionLayer::new(manager(store)))
}

async fn call(app: &Router, uri: &str, cookie: Option<&str>) -> axum::response::Response {
    let mut request = Request::get(uri);
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    app.clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn body(response: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn cookie_pair(response: &axum::response::Response) -> String {
    let set = response
        .headers()
        .get(SET_COOKIE)
        .expect("Set-Cookie")
        .to_str()
        .unwrap();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_requests_keep_both_changes() {
    let app = app();
    let first = call(&app, "/set/base", None).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers().get(CACHE_CONTROL).unwrap(), "no-store");
    let cookie = cookie_pair(&first);
    let (a, b) = tokio::join!(
        call(&app, "/set/a", Some(&cookie)),
        call(&app, "/set/b", Some(&cookie))
    );
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(b.status(), StatusCode::OK);
    assert!(
        a.headers().get(SET_COOKIE).is_none(),
        "an update re-sent the cookie"
    );
    let keys = body(call(&app, "/keys", Some(&cookie)).await).await;
    assert_eq!(keys, "base,a,b", "a racing request lost the other's change");
}

#[tokio::test]
async fn a_request_that_stores_nothing_sets_no_cookie() {
    let app = app();
    let response = call(&app, "/keys", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(SET_COOKIE).is_none());
    assert!(response.headers().get(CACHE_CONTROL).is_none());
}

#[tokio::test]
async fn logout_expires_the_cookie_and_the_session() {
    let app = app();
    let cookie = cookie_pair(&call(&app, "/set/base", None).await);
    let response = call(&app, "/logout", Some(&cookie)).await;
    let set = response
        .headers()
        .get(SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set.contains("Max-Age=0"), "{set}");
    assert_eq!(body(call(&app, "/keys", Some(&cookie)).await).await, "");
}

#[tokio::test]
async fn hostile_cookies_get_a_fresh_session_not_an_error() {
    let app = app();
    let long = format!("id={}", "A".repeat(10_240));
    for cookie in [
        "id=../../etc",
        "id=\u{1F600}",
        long.as_str(),
        "id=a; id=b; id=c",
        "garbage",
    ] {
        let response = call(&app, "/keys", Some(cookie)).await;
        assert_eq!(response.status(), StatusCode::OK, "{cookie}");
        assert_eq!(body(response).await, "");
    }
}

#[tokio::test]
async fn the_extractor_without_the_layer_is_a_clear_500() {
    let app = Router::new().route("/keys", get(keys));
    let response = app
        .oneshot(Request::get("/keys").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body(response).await, "session layer missing");
}

#[tokio::test]
async fn a_panicking_handler_behind_catch_panic_commits_nothing() {
    let store = Arc::new(ReferenceStore::new());
    let app = app_catching_panics(store.clone());
    let cookie = cookie_pair(&call(&app, "/set/base", None).await);

    let response = call(&app, "/panic", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        response.headers().get(SET_COOKIE).is_none(),
        "a panicked request sent a cookie"
    );
    assert_eq!(
        body(call(&app, "/keys", Some(&cookie)).await).await,
        "base",
        "the panicked handler's change was saved"
    );

    // A new session that received data before the panic is not created.
    let response = call(&app, "/panic", None).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().get(SET_COOKIE).is_none());
    assert_eq!(
        store.len().await.unwrap(),
        1,
        "a panicked session was stored"
    );
}

#[tokio::test]
async fn a_panic_caught_inside_a_session_operation_commits_nothing() {
    let app = app();
    let cookie = cookie_pair(&call(&app, "/set/base", None).await);
    let response = call(&app, "/caught", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(SET_COOKIE).is_none());
    assert_eq!(body(call(&app, "/keys", Some(&cookie)).await).await, "base");
}

#[tokio::test]
async fn a_panic_unwinding_through_the_layer_commits_nothing() {
    let store = Arc::new(ReferenceStore::new());
    let app = routes().layer(SessionLayer::new(manager(store.clone())));
    let request = Request::get("/panic").body(Body::empty()).unwrap();
    let outcome = tokio::spawn(app.oneshot(request)).await;
    assert!(outcome.is_err_and(|e| e.is_panic()));
    assert_eq!(
        store.len().await.unwrap(),
        0,
        "a panicked session was stored"
    );
}

#[tokio::test]
async fn server_errors_save_by_default() {
    let store = Arc::new(ReferenceStore::new());
    let app = routes().layer(SessionLayer::new(manager(store.clone())));
    let cookie = cookie_pair(&call(&app, "/set/base", None).await);
    let response = call(&app, "/fail/500", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body(call(&app, "/keys", Some(&cookie)).await).await,
        "base,a"
    );

    let response = call(&app, "/fail/503", None).await;
    assert!(response.headers().get(SET_COOKIE).is_some());
    assert_eq!(store.len().await.unwrap(), 2);
}

#[tokio::test]
async fn server_errors_can_skip_the_save() {
    let store = Arc::new(ReferenceStore::new());
    let app = routes().layer(SessionLayer::new(manager(store.clone())).save_on_server_error(false));
    let cookie = cookie_pair(&call(&app, "/set/base", None).await);
    for status in ["500", "503", "599"] {
        let response = call(&app, &format!("/fail/{status}"), Some(&cookie)).await;
        assert_eq!(response.status().as_str(), status);
        assert!(response.headers().get(SET_COOKIE).is_none(), "{status}");
        assert_eq!(
            body(call(&app, "/keys", Some(&cookie)).await).await,
            "base",
            "a {status} response saved the session"
        );
        let response = call(&app, &format!("/fail/{status}"), None).await;
        assert!(response.headers().get(SET_COOKIE).is_none(), "{status}");
        assert_eq!(
            store.len().await.unwrap(),
            1,
            "a {status} created a session"
        );
    }
    // Anything below 500 still saves.
    let response = call(&app, "/fail/422", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body(call(&app, "/keys", Some(&cookie)).await).await,
        "base,a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_after_a_logout_saves_nothing_and_sends_no_cookie() {
    let app = app();
    let cookie = cookie_pair(&call(&app, "/set/base", None).await);
    // `/set/a` loads the session, then sleeps while `/logout` deletes it.
    let (slow, logout) = tokio::join!(
        call(&app, "/set/a", Some(&cookie)),
        call(&app, "/logout", Some(&cookie))
    );
    assert_eq!(logout.status(), StatusCode::OK);
    assert_eq!(slow.status(), StatusCode::OK);
    assert!(
        slow.headers().get(SET_COOKIE).is_none(),
        "a request whose session was deleted meanwhile sent a cookie"
    );
    assert_eq!(body(call(&app, "/keys", Some(&cookie)).await).await, "");
}

#[tokio::test]
async fn a_flash_is_consumed_by_reading_it_unless_the_reader_panicked() {
    let app = app_catching_panics(Arc::new(ReferenceStore::new()));
    let cookie = cookie_pair(&call(&app, "/flash", None).await);
    let response = call(&app, "/read-flash-panic", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body(call(&app, "/read-flash", Some(&cookie)).await).await,
        "saved"
    );
    assert_eq!(
        body(call(&app, "/read-flash", Some(&cookie)).await).await,
        "none"
    );
}

#[tokio::test]
async fn a_route_without_the_extractor_does_no_store_io() {
    let store = Arc::new(CountingStore::memory());
    let app = routes().layer(SessionLayer::new(manager(store.clone())));
    let response = call(&app, "/plain", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(SET_COOKIE).is_none());
    assert_eq!(
        store.calls(),
        0,
        "a request without the extractor used the store"
    );

    // A valid session cookie does not make the layer load it either.
    let cookie = cookie_pair(&call(&app, "/set/base", None).await);
    let before = store.calls();
    assert!(before > 0, "the counting store counted nothing");
    let response = call(&app, "/plain", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "plain");
    assert_eq!(
        store.calls(),
        before,
        "a request with a session cookie but without the extractor used the store"
    );
}

#[tokio::test]
async fn every_extraction_in_a_request_shares_one_load() {
    let store = Arc::new(CountingStore::memory());
    let app = routes().layer(SessionLayer::new(manager(store.clone())));
    let cookie = cookie_pair(&call(&app, "/set/base", None).await);
    let before = store.calls();
    let response = call(&app, "/keys-twice", Some(&cookie)).await;
    assert_eq!(body(response).await, "true,true");
    // One read; an unchanged session is not written back.
    assert_eq!(store.calls() - before, 1, "the session was loaded twice");
}

#[tokio::test]
async fn a_store_outage_fails_only_the_routes_that_use_the_session() {
    let app = routes().layer(SessionLayer::new(manager(Arc::new(DownStore))));
    // A well-formed cookie: the session route must go to the store for it.
    let name = manager(Arc::new(DownStore)).cookie_name().to_owned();
    let cookie = format!("{name}={}", SessionToken::generate().as_str());
    let cookie = cookie.as_str();
    let response = call(&app, "/plain", Some(cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(SET_COOKIE).is_none());
    let response = call(&app, "/keys", Some(cookie)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get(SET_COOKIE).is_none());
    assert_eq!(body(response).await, "the session store is unavailable");
}

#[tokio::test]
async fn an_optional_session_is_some_while_the_store_works() {
    let app = app();
    let first = call(&app, "/greeting", None).await;
    assert_eq!(first.status(), StatusCode::OK);
    let cookie = cookie_pair(&first);
    assert_eq!(body(first).await, "visit 1");
    let second = call(&app, "/greeting", Some(&cookie)).await;
    assert_eq!(body(second).await, "visit 2");
}

#[tokio::test]
async fn an_optional_session_is_none_while_the_store_is_down() {
    let app = routes().layer(SessionLayer::new(manager(Arc::new(DownStore))));
    let name = manager(Arc::new(DownStore)).cookie_name().to_owned();
    let cookie = format!("{name}={}", SessionToken::generate().as_str());
    let response = call(&app, "/greeting", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(SET_COOKIE).is_none());
    assert_eq!(body(response).await, "hello, stranger");
}

#[tokio::test]
async fn an_optional_session_without_the_layer_is_still_a_500() {
    let response = call(&routes(), "/greeting", None).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// A handle kept past its request is refused, whether the request changed
/// the session (committed by the layer) or only read it (dropped by the
/// layer without a commit): it never reaches a session that has ended.
#[tokio::test]
async fn a_handle_kept_past_its_request_is_refused() {
    type Kept = Arc<std::sync::Mutex<Vec<Session>>>;
    async fn keep_reading(
        session: Session,
        axum::Extension(kept): axum::Extension<Kept>,
    ) -> Result<String, SessionRejection> {
        let n = session.get::<u64>("n")?.unwrap_or(0);
        kept.lock().unwrap().push(session);
        Ok(n.to_string())
    }
    async fn keep_writing(
        session: Session,
        axum::Extension(kept): axum::Extension<Kept>,
    ) -> Result<String, SessionRejection> {
        let n = session.modify("n", |n: Option<u64>| n.unwrap_or(0) + 1)?;
        kept.lock().unwrap().push(session);
        Ok(n.to_string())
    }
    let kept: Kept = Arc::default();
    let store = Arc::new(CountingStore::memory());
    let app = Router::new()
        .route("/read", get(keep_reading))
        .route("/write", get(keep_writing))
        .layer(SessionLayer::new(manager(store.clone())))
        .layer(axum::Extension(kept.clone()));
    let first = call(&app, "/write", None).await;
    let cookie = cookie_pair(&first);
    assert_eq!(body(first).await, "1");
    let before = store.calls();
    let read = call(&app, "/read", Some(&cookie)).await;
    assert!(read.headers().get(SET_COOKIE).is_none());
    assert_eq!(body(read).await, "1");
    assert_eq!(store.calls() - before, 1, "a read-only request wrote");
    let handles = std::mem::take(&mut *kept.lock().unwrap());
    assert_eq!(handles.len(), 2);
    for handle in handles {
        assert!(handle.id().is_none(), "a handle outlived its request");
        assert!(handle.insert("late", &1u8).is_err());
        assert!(handle.get::<u64>("n").is_err());
    }
    let after = call(&app, "/read", Some(&cookie)).await;
    assert_eq!(
        body(after).await,
        "1",
        "a late write through a kept handle landed"
    );
}

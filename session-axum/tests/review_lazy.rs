//! Adversarial review of the lazy axum layer (issue 14, parts 1 and 3):
//! a fallible extractor over a down store,
//! `Cache-Control` on responses that carry the cookie, and cookie-only
//! sessions behind the layer (no cookie without the extractor, key
//! rotation re-issued once).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use framework_tests::DownStore;
use session_axum::{Session, SessionLayer, SessionRejection};
use session_store::cookie::Key;
use session_store::{SessionConfig, SessionInterface, SessionManager};
use session_store_memory::MemoryStore;
use tower::ServiceExt as _;

fn config() -> SessionConfig {
    SessionConfig {
        secure: false,
        ..SessionConfig::default()
    }
}

fn manager(store: Arc<dyn SessionInterface>) -> Arc<SessionManager> {
    Arc::new(SessionManager::new(store, config()).expect("config"))
}

fn cookie_only(keys: &[&Key], config: SessionConfig) -> Arc<SessionManager> {
    Arc::new(
        SessionManager::cookie_only(keys.iter().map(|k| (*k).clone()).collect(), config)
            .expect("config"),
    )
}

async fn none() -> &'static str {
    "none"
}

async fn set(session: Session) -> Result<&'static str, SessionRejection> {
    session.insert("k", "v")?;
    Ok("ok")
}

async fn get_k(session: Session) -> Result<String, SessionRejection> {
    Ok(session.get::<String>("k")?.unwrap_or_default())
}

/// Inspects the rejection itself.
async fn fallible(session: Result<Session, SessionRejection>) -> String {
    match session {
        Ok(session) => {
            let _ = session.insert("k", "v");
            "loaded".into()
        }
        Err(e) => format!("rejected: {}", e.into_response().status().as_u16()),
    }
}

/// Writes and asks caches to keep the response.
async fn cacheable(session: Session) -> Result<impl IntoResponse, SessionRejection> {
    session.insert("k", "v")?;
    Ok(([(CACHE_CONTROL, "public, max-age=3600")], "cached?"))
}

async fn logout_cacheable(session: Session) -> Result<impl IntoResponse, SessionRejection> {
    session.destroy()?;
    Ok(([(CACHE_CONTROL, "public, max-age=3600")], "bye"))
}

/// Sets a cookie of its own beside the session's.
async fn own_cookie(session: Session) -> Result<impl IntoResponse, SessionRejection> {
    session.insert("k", "v")?;
    Ok(([(SET_COOKIE, "theme=dark; Path=/")], "ok"))
}

fn routes() -> Router {
    Router::new()
        .route("/none", get(none))
        .route("/set", get(set))
        .route("/get", get(get_k))
        .route("/fallible", get(fallible))
        .route("/cacheable", get(cacheable))
        .route("/logout-cacheable", get(logout_cacheable))
        .route("/own-cookie", get(own_cookie))
}

struct Reply {
    status: StatusCode,
    set_cookies: Vec<String>,
    cache_control: Option<String>,
    body: String,
}

impl Reply {
    fn pair(&self) -> String {
        self.set_cookies
            .iter()
            .find(|c| c.starts_with("id="))
            .expect("a session Set-Cookie")
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

async fn call(app: &Router, uri: &str, cookie: Option<&str>) -> Reply {
    let mut request = Request::get(uri);
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    Reply {
        status,
        set_cookies: headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect(),
        cache_control: headers
            .get(CACHE_CONTROL)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

#[tokio::test]
async fn a_fallible_extractor_over_a_down_store_answer_without_a_cookie() {
    let app = routes().layer(SessionLayer::new(manager(Arc::new(DownStore))));
    // A cookie makes the load go to the store (which is down).
    let cookie = "id=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let reply = call(&app, "/fallible", Some(cookie)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "rejected: 503");
    assert!(reply.set_cookies.is_empty());
    assert_eq!(
        call(&app, "/none", Some(cookie)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_response_carrying_the_cookie_is_no_store_whatever_the_handler_said() {
    let app = routes().layer(SessionLayer::new(manager(Arc::new(MemoryStore::new()))));
    let reply = call(&app, "/cacheable", None).await;
    assert_eq!(reply.set_cookies.len(), 1);
    assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
    let cookie = reply.pair();
    let reply = call(&app, "/logout-cacheable", Some(&cookie)).await;
    assert!(
        reply.set_cookies[0].contains("Max-Age=0"),
        "{:?}",
        reply.set_cookies
    );
    assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
    // The handler's own cookie survives beside the session's.
    let reply = call(&app, "/own-cookie", None).await;
    assert_eq!(reply.set_cookies.len(), 2, "{:?}", reply.set_cookies);
    assert!(reply
        .set_cookies
        .iter()
        .any(|c| c.starts_with("theme=dark")));
    assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
}

#[tokio::test]
async fn cookie_only_routes_without_the_extractor_send_nothing_even_for_a_stale_key() {
    let (old, new) = (Key::generate(), Key::generate());
    let before = routes().layer(SessionLayer::new(cookie_only(&[&old], config())));
    let old_cookie = call(&before, "/set", None).await.pair();
    let rotated = routes().layer(SessionLayer::new(cookie_only(&[&new, &old], config())));
    let reply = call(&rotated, "/none", Some(&old_cookie)).await;
    assert_eq!(reply.body, "none");
    assert!(reply.set_cookies.is_empty(), "{:?}", reply.set_cookies);
    // A route that reads re-issues it, once.
    let reply = call(&rotated, "/get", Some(&old_cookie)).await;
    assert_eq!(reply.body, "v");
    assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
    let new_cookie = reply.pair();
    let reply = call(&rotated, "/get", Some(&new_cookie)).await;
    assert_eq!(reply.body, "v");
    assert!(reply.set_cookies.is_empty(), "re-issued again");
}

#[tokio::test]
async fn cookie_only_sessions_expire_behind_the_layer() {
    let app = routes().layer(SessionLayer::new(cookie_only(
        &[&Key::generate()],
        SessionConfig {
            idle_timeout: Duration::from_millis(300),
            touch_after: Duration::ZERO,
            ..config()
        },
    )));
    let cookie = call(&app, "/set", None).await.pair();
    assert_eq!(call(&app, "/get", Some(&cookie)).await.body, "v");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let reply = call(&app, "/get", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "", "an idle-expired cookie still opened");
}

#[tokio::test]
async fn hostile_cookie_headers_never_500_in_cookie_only_mode() {
    let app = routes().layer(SessionLayer::new(cookie_only(
        &[&Key::generate()],
        config(),
    )));
    let good = call(&app, "/set", None).await.pair();
    let big = format!("id={}", "A".repeat(8000));
    let rows = [
        "id=%ZZ".to_owned(),
        "id=%FF%FE".to_owned(),
        "id=%00".to_owned(),
        "id".to_owned(),
        ";;;=;".to_owned(),
        big,
        format!("{good}; id=other"),
        format!("{good}; {good}x"),
    ];
    for cookie in rows {
        let reply = call(&app, "/get", Some(&cookie)).await;
        assert_eq!(reply.status, StatusCode::OK, "{cookie:.60}");
        assert_eq!(reply.body, "", "{cookie:.60}");
        assert!(reply.set_cookies.is_empty());
        let reply = call(&app, "/set", Some(&cookie)).await;
        assert_eq!(reply.status, StatusCode::OK, "{cookie:.60}");
        assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
    }
    // Non-UTF-8 bytes in the header.
    let request = Request::get("/get")
        .header(
            COOKIE,
            HeaderValue::from_bytes(b"id=\xff\xfe").expect("obs-text"),
        )
        .body(Body::empty())
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
}

//! Adversarial review of 08177ab through the axum layer: the layer now
//! builds a jar holding only `effective_cookie_name()`, so the `__Host-`
//! name, cookie-only sessions, multiple `Cookie` headers, encoded
//! spellings of the name and the duplicate rule must all behave as before.

use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use session_axum::{Session, SessionLayer, SessionRejection};
use session_store::cookie::Key;
use session_store::{SessionConfig, SessionManager};
use session_store_memory::MemoryStore;
use tower::ServiceExt as _;

/// Secure with the default `host_prefix`: the cookie is `__Host-id`.
fn secure() -> SessionConfig {
    SessionConfig {
        secure: true,
        ..SessionConfig::default()
    }
}

async fn bump(session: Session) -> Result<String, SessionRejection> {
    let n = session.get::<u64>("n")?.unwrap_or(0) + 1;
    session.insert("n", &n)?;
    Ok(n.to_string())
}

async fn call(app: &Router, cookies: &[&str]) -> (StatusCode, Option<String>, String) {
    let mut request = Request::get("/bump");
    for c in cookies {
        request = request.header(COOKIE, *c);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let pair = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("__Host-id="))
        .map(|c| c.split(';').next().unwrap_or_default().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, pair, String::from_utf8_lossy(&bytes).into_owned())
}

async fn check_layer(manager: SessionManager) {
    assert_eq!(manager.config().effective_cookie_name(), "__Host-id");
    let app = Router::new()
        .route("/bump", get(bump))
        .layer(SessionLayer::new(Arc::new(manager)));
    let (status, pair, body) = call(&app, &["theme=dark"]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    let mut pair = pair.expect("a __Host-id cookie");
    // Cookie-only sessions send a new value on every write: follow it.
    let mut follow = |set: Option<String>| {
        if let Some(set) = set {
            pair = set;
        }
        pair.clone()
    };
    let current = follow(None);

    // Among other cookies, across two Cookie headers, with the unprefixed
    // name holding junk: the session loads.
    let (_, set, body) = call(&app, &["a=1; id=junk", &format!("b=2; {current}; c=3")]).await;
    assert_eq!(body, "2");
    let current = follow(set);
    let value = current.trim_start_matches("__Host-id=").to_owned();
    // The same cookie again under an encoded spelling of its name, with the
    // same value: still one cookie.
    let encoded = format!("%5F%5FHost-id={value}");
    let (_, set, body) = call(&app, &[&current, &encoded]).await;
    assert_eq!(body, "3");
    let current = follow(set);
    let value = current.trim_start_matches("__Host-id=").to_owned();
    // The encoded spelling alone is the session cookie too.
    let encoded = format!("%5F%5FHost-id={value}");
    let (_, set, body) = call(&app, &[&encoded]).await;
    assert_eq!(body, "4");
    let current = follow(set);
    // Tossed: the name with a different value under another spelling.
    let tossed = "__Host%2Did=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (_, fresh, body) = call(&app, &[&current, tossed]).await;
    assert_eq!(body, "1", "a tossed duplicate must start a fresh session");
    assert!(fresh.is_some_and(|f| f != current));
    // The original is untouched by the tossing attempt.
    let (_, _, body) = call(&app, &[&current]).await;
    assert_eq!(body, "5");
}

#[tokio::test]
async fn store_backed_layer_reads_the_host_prefixed_cookie_alone() {
    let manager = SessionManager::new(Arc::new(MemoryStore::new()), secure()).expect("config");
    check_layer(manager).await;
}

#[tokio::test]
async fn cookie_only_layer_reads_the_host_prefixed_cookie_alone() {
    let manager = SessionManager::cookie_only(vec![Key::generate()], secure()).expect("config");
    check_layer(manager).await;
}

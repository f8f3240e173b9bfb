use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use session_axum::{Session, SessionLayer, SessionRejection};
use session_store::{SessionConfig, SessionManager};
use session_store_memory::MemoryStore;
use tower::ServiceExt as _;

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

fn app() -> Router {
    let config = SessionConfig {
        secure: false,
        ..SessionConfig::default()
    };
    let manager = SessionManager::new(Arc::new(MemoryStore::new()), config).unwrap();
    Router::new()
        .route("/set/{key}", get(set_key))
        .route("/keys", get(keys))
        .route("/logout", get(logout))
        .layer(SessionLayer::new(Arc::new(manager)))
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

//! Adversarial review of the actix-web integration (issue 14, parts 2 and
//! 3), mirroring session-axum/tests/review_lazy.rs: a fallible extractor
//! over a down store, `Cache-Control` on responses that carry the cookie,
//! and cookie-only sessions behind the middleware.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::{HeaderValue, CACHE_CONTROL, COOKIE, SET_COOKIE};
use actix_web::http::StatusCode;
use actix_web::test as actix_test;
use actix_web::{web, App, HttpResponse, ResponseError};
use framework_tests::DownStore;
use session_actix::{Session, SessionMiddleware, SessionRejection};
use session_store::cookie::Key;
use session_store::{SessionConfig, SessionInterface, SessionManager};
use session_store_memory::MemoryStore;

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

async fn optional(session: Option<Session>) -> String {
    match session {
        Some(session) => {
            let _ = session.insert("k", "v");
            "loaded".into()
        }
        None => "no session".into(),
    }
}

async fn fallible(session: Result<Session, SessionRejection>) -> String {
    match session {
        Ok(session) => {
            let _ = session.insert("k", "v");
            "loaded".into()
        }
        Err(e) => format!("rejected: {}", e.status_code().as_u16()),
    }
}

async fn cacheable(session: Session) -> Result<HttpResponse, SessionRejection> {
    session.insert("k", "v")?;
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "public, max-age=3600"))
        .body("cached?"))
}

async fn logout_cacheable(session: Session) -> Result<HttpResponse, SessionRejection> {
    session.destroy()?;
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "public, max-age=3600"))
        .body("bye"))
}

async fn own_cookie(session: Session) -> Result<HttpResponse, SessionRejection> {
    session.insert("k", "v")?;
    Ok(HttpResponse::Ok()
        .append_header((SET_COOKIE, "theme=dark; Path=/"))
        .body("ok"))
}

fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/none", web::get().to(none))
        .route("/set", web::get().to(set))
        .route("/get", web::get().to(get_k))
        .route("/optional", web::get().to(optional))
        .route("/fallible", web::get().to(fallible))
        .route("/cacheable", web::get().to(cacheable))
        .route("/logout-cacheable", web::get().to(logout_cacheable))
        .route("/own-cookie", web::get().to(own_cookie));
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

async fn call<S, B>(app: &S, uri: &str, cookie: Option<HeaderValue>) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut request = actix_test::TestRequest::get().uri(uri);
    if let Some(cookie) = cookie {
        request = request.insert_header((COOKIE, cookie));
    }
    let response = match app.call(request.to_request()).await {
        Ok(response) => response,
        Err(e) => panic!("the service failed: {e}"),
    };
    let status = response.status();
    let set_cookies = response
        .headers()
        .get_all(SET_COOKIE)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect();
    let cache_control = response
        .headers()
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = actix_test::read_body(response).await;
    Reply {
        status,
        set_cookies,
        cache_control,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn header(value: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(value).expect("header"))
}

macro_rules! app {
    ($manager:expr) => {
        actix_test::init_service(
            App::new()
                .configure(routes)
                .wrap(SessionMiddleware::new($manager)),
        )
        .await
    };
}

#[actix_web::test]
async fn optional_and_fallible_extractors_over_a_down_store_answer_without_a_cookie() {
    let app = app!(manager(Arc::new(DownStore)));
    let cookie = header("id=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let reply = call(&app, "/optional", cookie.clone()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "no session");
    assert!(reply.set_cookies.is_empty());
    let reply = call(&app, "/fallible", cookie.clone()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "rejected: 503");
    assert!(reply.set_cookies.is_empty());
    assert_eq!(
        call(&app, "/get", cookie.clone()).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(call(&app, "/none", cookie).await.status, StatusCode::OK);
}

#[actix_web::test]
async fn a_response_carrying_the_cookie_is_no_store_whatever_the_handler_said() {
    let app = app!(manager(Arc::new(MemoryStore::new())));
    let reply = call(&app, "/cacheable", None).await;
    assert_eq!(reply.set_cookies.len(), 1);
    assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
    let cookie = reply.pair();
    let reply = call(&app, "/logout-cacheable", header(&cookie)).await;
    assert!(
        reply.set_cookies[0].contains("Max-Age=0"),
        "{:?}",
        reply.set_cookies
    );
    assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
    let reply = call(&app, "/own-cookie", None).await;
    assert_eq!(reply.set_cookies.len(), 2, "{:?}", reply.set_cookies);
    assert!(reply
        .set_cookies
        .iter()
        .any(|c| c.starts_with("theme=dark")));
    assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
}

#[actix_web::test]
async fn cookie_only_routes_without_the_extractor_send_nothing_even_for_a_stale_key() {
    let (old, new) = (Key::generate(), Key::generate());
    let before = app!(cookie_only(&[&old], config()));
    let old_cookie = call(&before, "/set", None).await.pair();
    let rotated = app!(cookie_only(&[&new, &old], config()));
    let reply = call(&rotated, "/none", header(&old_cookie)).await;
    assert_eq!(reply.body, "none");
    assert!(reply.set_cookies.is_empty(), "{:?}", reply.set_cookies);
    let reply = call(&rotated, "/get", header(&old_cookie)).await;
    assert_eq!(reply.body, "v");
    assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
    let new_cookie = reply.pair();
    let reply = call(&rotated, "/get", header(&new_cookie)).await;
    assert_eq!(reply.body, "v");
    assert!(reply.set_cookies.is_empty(), "re-issued again");
}

#[actix_web::test]
async fn cookie_only_sessions_expire_behind_the_middleware() {
    let app = app!(cookie_only(
        &[&Key::generate()],
        SessionConfig {
            idle_timeout: Duration::from_millis(300),
            touch_after: Duration::ZERO,
            ..config()
        }
    ));
    let cookie = call(&app, "/set", None).await.pair();
    assert_eq!(call(&app, "/get", header(&cookie)).await.body, "v");
    actix_web::rt::time::sleep(Duration::from_millis(450)).await;
    let reply = call(&app, "/get", header(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "", "an idle-expired cookie still opened");
}

#[actix_web::test]
async fn hostile_cookie_headers_never_500_in_cookie_only_mode() {
    let app = app!(cookie_only(&[&Key::generate()], config()));
    let good = call(&app, "/set", None).await.pair();
    let rows = [
        "id=%ZZ".to_owned(),
        "id=%FF%FE".to_owned(),
        "id=%00".to_owned(),
        "id".to_owned(),
        ";;;=;".to_owned(),
        format!("id={}", "A".repeat(8000)),
        format!("{good}; id=other"),
        format!("{good}; {good}x"),
    ];
    for cookie in rows {
        let reply = call(&app, "/get", header(&cookie)).await;
        assert_eq!(reply.status, StatusCode::OK, "{cookie:.60}");
        assert_eq!(reply.body, "", "{cookie:.60}");
        assert!(reply.set_cookies.is_empty());
        let reply = call(&app, "/set", header(&cookie)).await;
        assert_eq!(reply.status, StatusCode::OK, "{cookie:.60}");
        assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
    }
    let obs_text = HeaderValue::from_bytes(b"id=\xff\xfe").expect("obs-text");
    assert_eq!(
        call(&app, "/get", Some(obs_text)).await.status,
        StatusCode::OK
    );
}

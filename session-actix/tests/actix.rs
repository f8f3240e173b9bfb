//! actix-web specific behaviour of the middleware and the extractor: lazy
//! loading, panics (caught and uncaught), the 5xx rule, failing stores.

mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use actix_web::http::StatusCode;
use actix_web::test as actix_test;
use actix_web::{web, App, FromRequest, HttpRequest, HttpResponse, ResponseError};
use session_actix::{Session, SessionMiddleware, SessionRejection};
use session_store::time::OffsetDateTime;
use session_store::{
    async_trait, DeleteOutcome, Error, Result, Session as Record, SessionConfig, SessionId,
    SessionInterface, SessionManager, UpdateOutcome,
};
use session_store_memory::MemoryStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A memory store that counts every call, and can be switched to fail all
/// calls (down) or only the writes.
#[derive(Debug, Default)]
struct Faulty {
    inner: MemoryStore,
    calls: AtomicUsize,
    down: AtomicBool,
    writes_fail: AtomicBool,
}

impl Faulty {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn enter(&self, write: bool) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) || (write && self.writes_fail.load(Ordering::SeqCst)) {
            return Err(Error::Unavailable {
                store: "faulty",
                context: "a test switched it off".into(),
                source: "connection refused".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl SessionInterface for Faulty {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.enter(false)?;
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Record>> {
        self.enter(false)?;
        self.inner.get(id).await
    }
    async fn set(&self, session: &Record) -> Result<()> {
        self.enter(true)?;
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.enter(true)?;
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Record) -> Result<()> {
        self.enter(true)?;
        self.inner.create(session).await
    }
    async fn update(&self, session: &Record, expected_version: u64) -> Result<UpdateOutcome> {
        self.enter(true)?;
        self.inner.update(session, expected_version).await
    }
    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        self.enter(true)?;
        self.inner.delete_if(id, expected_version).await
    }
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        self.enter(true)?;
        self.inner.touch(id, expires_at).await
    }
    async fn flush(&self) -> Result<u64> {
        self.enter(true)?;
        self.inner.flush().await
    }
    async fn clear(&self) -> Result<()> {
        self.enter(true)?;
        self.inner.clear().await
    }
    async fn len(&self) -> Result<u64> {
        self.inner.len().await
    }
}

async fn none() -> &'static str {
    "none"
}

async fn set_key(
    session: Session,
    key: web::Path<String>,
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

/// Two extractors in one handler: one session, one load.
async fn twice(first: Session, second: Session) -> Result<String, SessionRejection> {
    first.insert("a", &true)?;
    let same = first.id() == second.id() && second.get::<bool>("a")? == Some(true);
    Ok(same.to_string())
}

async fn logout(session: Session) -> Result<&'static str, SessionRejection> {
    session.destroy()?;
    Ok("bye")
}

async fn set_then_panic(session: Session) -> &'static str {
    session.insert("a", &true).expect("insert");
    panic!("handler bug after a session change");
}

/// Changes the session, then answers with the status in the path.
async fn set_then_fail(
    session: Session,
    status: web::Path<u16>,
) -> Result<HttpResponse, SessionRejection> {
    session.insert("a", &true)?;
    let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
    Ok(HttpResponse::build(status).finish())
}

/// A panic inside a session operation that the handler itself catches.
async fn set_then_catch_a_panic(session: Session) -> Result<&'static str, SessionRejection> {
    session.insert("a", &true)?;
    let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
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

/// Where `/keep` leaves its handle, to be used after the request.
type Kept = web::Data<Mutex<Option<Session>>>;

async fn keep(session: Session, kept: Kept) -> Result<&'static str, SessionRejection> {
    session.insert("base", &true)?;
    *kept.lock().expect("kept") = Some(session);
    Ok("kept")
}

/// More than a cookie can hold.
async fn big(session: Session) -> Result<&'static str, SessionRejection> {
    session.insert("big", &"x".repeat(5000))?;
    Ok("ok")
}

/// Where `/keep-request` leaves its request, to extract from after it ended.
type KeptRequest = web::Data<Mutex<Option<HttpRequest>>>;

async fn keep_request(request: HttpRequest, kept: KeptRequest) -> &'static str {
    *kept.lock().expect("kept") = Some(request);
    "kept"
}

fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/none", web::get().to(none))
        .route("/set/{key}", web::get().to(set_key))
        .route("/keys", web::get().to(keys))
        .route("/twice", web::get().to(twice))
        .route("/logout", web::get().to(logout))
        .route("/panic", web::get().to(set_then_panic))
        .route("/fail/{status}", web::get().to(set_then_fail))
        .route("/caught", web::get().to(set_then_catch_a_panic))
        .route("/flash", web::get().to(set_flash))
        .route("/read-flash", web::get().to(read_flash))
        .route("/read-flash-panic", web::get().to(read_flash_then_panic))
        .route("/keep", web::get().to(keep))
        .route("/keep-request", web::get().to(keep_request))
        .route("/big", web::get().to(big));
}

fn manager(store: Arc<dyn SessionInterface>) -> Arc<SessionManager> {
    let config = SessionConfig {
        secure: false,
        ..SessionConfig::default()
    };
    Arc::new(SessionManager::new(store, config).expect("config"))
}

/// Polls a future, turning a panic into an `Err` (what a catch-panic
/// middleware such as actix-web-lab's `CatchPanic` does).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// What a test needs of a response.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    set_cookie: Option<String>,
    cache_control: Option<String>,
    body: String,
}

impl Reply {
    /// The `name=value` pair of the `Set-Cookie` header.
    fn cookie(&self) -> String {
        let set = self.set_cookie.as_deref().expect("a Set-Cookie header");
        set.split(';').next().unwrap_or_default().to_owned()
    }
}

async fn reply<B: MessageBody>(response: ServiceResponse<B>) -> Reply {
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &actix_web::http::header::HeaderValue| {
                v.to_str().unwrap_or_default().to_owned()
            })
    };
    let set_cookie = header(SET_COOKIE);
    let cache_control = header(CACHE_CONTROL);
    let status = response.status();
    let body = actix_test::read_body(response).await;
    Reply {
        status,
        set_cookie,
        cache_control,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Calls the test service like actix-web's dispatcher does: an `Err` from
/// the service becomes the error's response.
async fn call<S, B>(app: &S, uri: &str, cookie: Option<&str>) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut request = actix_test::TestRequest::get().uri(uri);
    if let Some(cookie) = cookie {
        request = request.insert_header((COOKIE, cookie));
    }
    match app.call(request.to_request()).await {
        Ok(response) => reply(response).await,
        Err(e) => {
            let response = e.as_response_error().error_response();
            let status = response.status();
            let body = actix_web::body::to_bytes(response.into_body())
                .await
                .unwrap_or_default();
            Reply {
                status,
                set_cookie: None,
                cache_control: None,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        }
    }
}

macro_rules! app {
    ($middleware:expr) => {
        actix_test::init_service(App::new().configure(routes).wrap($middleware)).await
    };
}

/// The app with a catch-panic middleware inside the session middleware,
/// answering a panic with an `Err` (as actix-web-lab's `CatchPanic` does).
macro_rules! app_catching_panics {
    ($middleware:expr) => {
        actix_test::init_service(
            App::new()
                .configure(routes)
                .wrap_fn(|request: ServiceRequest, service| {
                    let inner = service.call(request);
                    async move {
                        CatchUnwind(Box::pin(inner)).await.unwrap_or_else(|_| {
                            Err(actix_web::error::ErrorInternalServerError(
                                "the handler panicked",
                            ))
                        })
                    }
                })
                .wrap($middleware),
        )
        .await
    };
}

#[actix_web::test]
async fn a_route_without_the_extractor_does_no_store_io_and_sends_no_cookie() {
    let store = Arc::new(Faulty::default());
    let app = app!(SessionMiddleware::new(manager(store.clone())));
    let response = call(&app, "/none", None).await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(response.set_cookie.is_none());
    assert!(response.cache_control.is_none());
    assert_eq!(store.calls(), 0);

    let cookie = call(&app, "/set/base", None).await.cookie();
    let before = store.calls();
    assert!(before > 0, "the counting store counted nothing");
    let response = call(&app, "/none", Some(&cookie)).await;
    assert_eq!(response.body, "none");
    assert!(response.set_cookie.is_none());
    assert_eq!(
        store.calls(),
        before,
        "/none with a session cookie used the store"
    );
}

#[actix_web::test]
async fn extractors_of_one_request_share_one_load() {
    let store = Arc::new(Faulty::default());
    let app = app!(SessionMiddleware::new(manager(store.clone())));
    let cookie = call(&app, "/set/base", None).await.cookie();
    let before = store.calls();
    let response = call(&app, "/twice", Some(&cookie)).await;
    assert_eq!(response.body, "true");
    // One read at load, one write at commit.
    assert_eq!(store.calls() - before, 2);
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "base,a");
}

#[actix_web::test]
async fn a_down_store_fails_only_the_routes_that_load_a_session() {
    let store = Arc::new(Faulty::default());
    let app = app!(SessionMiddleware::new(manager(store.clone())));
    let cookie = call(&app, "/set/base", None).await.cookie();
    store.down.store(true, Ordering::SeqCst);

    let response = call(&app, "/none", Some(&cookie)).await;
    assert_eq!(response.status, StatusCode::OK);
    let response = call(&app, "/keys", Some(&cookie)).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.body, "the session store is unavailable");
    assert!(response.set_cookie.is_none());
    // Without a cookie nothing is loaded: the new session fails at its save.
    let response = call(&app, "/set/a", None).await;
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.set_cookie.is_none());

    store.down.store(false, Ordering::SeqCst);
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "base");
}

#[actix_web::test]
async fn a_failed_save_is_a_500_without_a_cookie() {
    let store = Arc::new(Faulty::default());
    let app = app!(SessionMiddleware::new(manager(store.clone())));
    let cookie = call(&app, "/set/base", None).await.cookie();
    store.writes_fail.store(true, Ordering::SeqCst);
    for (uri, cookie) in [("/set/a", Some(cookie.as_str())), ("/set/a", None)] {
        let response = call(&app, uri, cookie).await;
        assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.body, "the session could not be saved");
        assert!(response.set_cookie.is_none());
    }
    store.writes_fail.store(false, Ordering::SeqCst);
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "base");
    assert_eq!(store.len().await.expect("len"), 1);
}

#[actix_web::test]
async fn racing_requests_keep_both_changes() {
    let app = app!(SessionMiddleware::new(manager(
        Arc::new(MemoryStore::new())
    )));
    let first = call(&app, "/set/base", None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache_control.as_deref(), Some("no-store"));
    let cookie = first.cookie();
    let (a, b) = tokio::join!(
        call(&app, "/set/a", Some(&cookie)),
        call(&app, "/set/b", Some(&cookie))
    );
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(b.status, StatusCode::OK);
    assert!(a.set_cookie.is_none(), "an update re-sent the cookie");
    let keys = call(&app, "/keys", Some(&cookie)).await.body;
    assert_eq!(keys, "base,a,b", "a racing request lost the other's change");
}

#[actix_web::test]
async fn a_request_that_stores_nothing_sets_no_cookie() {
    let app = app!(SessionMiddleware::new(manager(
        Arc::new(MemoryStore::new())
    )));
    let response = call(&app, "/keys", None).await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(response.set_cookie.is_none());
    assert!(response.cache_control.is_none());
}

#[actix_web::test]
async fn logout_expires_the_cookie_and_the_session() {
    let app = app!(SessionMiddleware::new(manager(
        Arc::new(MemoryStore::new())
    )));
    let cookie = call(&app, "/set/base", None).await.cookie();
    let response = call(&app, "/logout", Some(&cookie)).await;
    let set = response.set_cookie.expect("Set-Cookie");
    assert!(set.contains("Max-Age=0"), "{set}");
    assert_eq!(response.cache_control.as_deref(), Some("no-store"));
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "");
}

#[actix_web::test]
async fn hostile_cookies_get_a_fresh_session_not_an_error() {
    let app = app!(SessionMiddleware::new(manager(
        Arc::new(MemoryStore::new())
    )));
    let long = format!("id={}", "A".repeat(10_240));
    for cookie in [
        "id=../../etc",
        "id=%F0%9F%98%80",
        long.as_str(),
        "id=a; id=b; id=c",
        "garbage",
    ] {
        let response = call(&app, "/keys", Some(cookie)).await;
        assert_eq!(response.status, StatusCode::OK, "{cookie}");
        assert_eq!(response.body, "");
    }
}

#[actix_web::test]
async fn the_extractor_without_the_middleware_is_a_clear_500() {
    let app = actix_test::init_service(App::new().route("/keys", web::get().to(keys))).await;
    let response = call(&app, "/keys", None).await;
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.body, "session middleware missing");
}

#[actix_web::test]
async fn a_handle_kept_past_its_request_fails_instead_of_writing() {
    let kept: Kept = web::Data::new(Mutex::new(None));
    let store = Arc::new(MemoryStore::new());
    let app = actix_test::init_service(
        App::new()
            .app_data(kept.clone())
            .configure(routes)
            .wrap(SessionMiddleware::new(manager(store.clone()))),
    )
    .await;
    let cookie = call(&app, "/keep", None).await.cookie();
    let session = kept.lock().expect("kept").take().expect("a kept handle");
    assert!(session.id().is_none());
    assert!(session.insert("late", &true).is_err());
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "base");
}

#[actix_web::test]
async fn an_extraction_after_the_request_ended_loads_nothing() {
    let kept: KeptRequest = web::Data::new(Mutex::new(None));
    let store = Arc::new(Faulty::default());
    let app = actix_test::init_service(
        App::new()
            .app_data(kept.clone())
            .configure(routes)
            .wrap(SessionMiddleware::new(manager(store.clone()))),
    )
    .await;
    let cookie = call(&app, "/set/base", None).await.cookie();
    let response = call(&app, "/keep-request", Some(&cookie)).await;
    assert!(response.set_cookie.is_none());
    let request = kept.lock().expect("kept").take().expect("a kept request");
    let calls = store.calls();
    let session = Session::extract(&request).await.expect("an ended session");
    assert!(
        session.id().is_none(),
        "a session was loaded after its request ended"
    );
    assert!(session.insert("late", &true).is_err());
    assert_eq!(store.calls(), calls);
}

/// Cookie-only sessions are the manager's business: the same handlers and
/// middleware run on them unchanged.
#[actix_web::test]
async fn cookie_only_sessions_work_through_the_middleware() {
    let config = SessionConfig {
        secure: false,
        ..SessionConfig::default()
    };
    let key = session_store::cookie::Key::generate();
    let manager = SessionManager::cookie_only(vec![key], config).expect("cookie-only manager");
    let app = app!(SessionMiddleware::new(Arc::new(manager)));
    let first = call(&app, "/set/base", None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache_control.as_deref(), Some("no-store"));
    let cookie = first.cookie();
    // A change re-seals the session into a new cookie.
    let cookie = call(&app, "/set/a", Some(&cookie)).await.cookie();
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "base,a");
    assert!(call(&app, "/none", Some(&cookie))
        .await
        .set_cookie
        .is_none());

    // Too large for a cookie: the save fails, and the old cookie stays.
    let response = call(&app, "/big", Some(&cookie)).await;
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.set_cookie.is_none());
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "base,a");

    let response = call(&app, "/logout", Some(&cookie)).await;
    let set = response.set_cookie.expect("Set-Cookie");
    assert!(set.contains("Max-Age=0"), "{set}");
}

/// Without a catch-panic middleware actix-web answers a panic by closing
/// the connection; the session is not committed, and the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_panic_drops_the_connection_and_commits_nothing() {
    let store = Arc::new(MemoryStore::new());
    let (base, _server) =
        common::serve(SessionMiddleware::new(manager(store.clone())), routes).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let (status, head) = raw_get(&addr, "/set/base", None).await;
    assert_eq!(status, Some(200), "{head}");
    let cookie = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie").then(|| {
                value
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        })
        .expect("a session cookie");

    for cookie in [Some(cookie.as_str()), None] {
        let (status, head) = raw_get(&addr, "/panic", cookie).await;
        assert_eq!(status, None, "a panic got a response: {head}");
    }
    let (status, head) = raw_get(&addr, "/keys", Some(&cookie)).await;
    assert_eq!(status, Some(200), "{head}");
    assert!(head.ends_with("\r\n\r\nbase"), "{head}");
    assert_eq!(
        store.len().await.expect("len"),
        1,
        "a panicked session was stored"
    );
}

/// A `GET` over a fresh connection: the status (`None` when the server
/// closed the connection without answering) and the whole response text.
async fn raw_get(addr: &str, path: &str, cookie: Option<&str>) -> (Option<u16>, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("the server neither answered nor closed the connection");
    if read.is_err() {
        // A reset connection: no response.
        return (None, String::from_utf8_lossy(&response).into_owned());
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    (status, text)
}

#[actix_web::test]
async fn a_panicking_handler_behind_catch_panic_commits_nothing() {
    let store = Arc::new(MemoryStore::new());
    let app = app_catching_panics!(SessionMiddleware::new(manager(store.clone())));
    let cookie = call(&app, "/set/base", None).await.cookie();

    let response = call(&app, "/panic", Some(&cookie)).await;
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        response.set_cookie.is_none(),
        "a panicked request sent a cookie"
    );
    assert_eq!(
        call(&app, "/keys", Some(&cookie)).await.body,
        "base",
        "the panicked handler's change was saved"
    );

    // A new session that received data before the panic is not created.
    let response = call(&app, "/panic", None).await;
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.set_cookie.is_none());
    assert_eq!(
        store.len().await.expect("len"),
        1,
        "a panicked session was stored"
    );
}

/// A catch-panic wrapper that answers `500` itself (a response, not an
/// `Err`): the session middleware sees an ordinary 500 and still commits
/// nothing, even though server errors save by default.
#[actix_web::test]
async fn a_panic_turned_into_a_500_response_commits_nothing() {
    let store = Arc::new(MemoryStore::new());
    let app = actix_test::init_service(
        App::new()
            .service(
                web::resource("/panic")
                    .wrap_fn(|request: ServiceRequest, service| {
                        // Routing is done at this level, so a copy of the
                        // request may be kept to answer with.
                        let http_request = request.request().clone();
                        let inner = service.call(request);
                        async move {
                            match CatchUnwind(Box::pin(inner)).await {
                                Ok(outcome) => outcome,
                                Err(_) => Ok(ServiceResponse::new(
                                    http_request,
                                    HttpResponse::InternalServerError().body("caught"),
                                )),
                            }
                        }
                    })
                    .route(web::get().to(set_then_panic)),
            )
            .configure(routes)
            .wrap(SessionMiddleware::new(manager(store.clone()))),
    )
    .await;
    let cookie = call(&app, "/set/base", None).await.cookie();
    for cookie in [Some(cookie.as_str()), None] {
        let response = call(&app, "/panic", cookie).await;
        assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.body, "caught");
        assert!(response.set_cookie.is_none());
    }
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "base");
    assert_eq!(store.len().await.expect("len"), 1);
}

#[actix_web::test]
async fn a_panic_caught_inside_a_session_operation_commits_nothing() {
    let app = app!(SessionMiddleware::new(manager(
        Arc::new(MemoryStore::new())
    )));
    let cookie = call(&app, "/set/base", None).await.cookie();
    let response = call(&app, "/caught", Some(&cookie)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body, "carried on");
    assert!(response.set_cookie.is_none());
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "base");
}

#[actix_web::test]
async fn server_errors_save_by_default() {
    let store = Arc::new(MemoryStore::new());
    let app = app!(SessionMiddleware::new(manager(store.clone())));
    let cookie = call(&app, "/set/base", None).await.cookie();
    let response = call(&app, "/fail/500", Some(&cookie)).await;
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "base,a");

    let response = call(&app, "/fail/503", None).await;
    assert!(response.set_cookie.is_some());
    assert_eq!(store.len().await.expect("len"), 2);
}

#[actix_web::test]
async fn server_errors_can_skip_the_save() {
    let store = Arc::new(MemoryStore::new());
    let app = app!(SessionMiddleware::new(manager(store.clone())).save_on_server_error(false));
    let cookie = call(&app, "/set/base", None).await.cookie();
    for status in ["500", "503", "599"] {
        let response = call(&app, &format!("/fail/{status}"), Some(&cookie)).await;
        assert_eq!(response.status.as_str(), status);
        assert!(response.set_cookie.is_none(), "{status}");
        assert_eq!(
            call(&app, "/keys", Some(&cookie)).await.body,
            "base",
            "a {status} response saved the session"
        );
        let response = call(&app, &format!("/fail/{status}"), None).await;
        assert!(response.set_cookie.is_none(), "{status}");
        assert_eq!(
            store.len().await.expect("len"),
            1,
            "a {status} created a session"
        );
    }
    // Anything below 500 still saves.
    let response = call(&app, "/fail/422", Some(&cookie)).await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "base,a");
}

#[actix_web::test]
async fn a_slow_request_after_a_logout_saves_nothing_and_sends_no_cookie() {
    let app = app!(SessionMiddleware::new(manager(
        Arc::new(MemoryStore::new())
    )));
    let cookie = call(&app, "/set/base", None).await.cookie();
    // `/set/a` loads the session, then sleeps while `/logout` deletes it.
    let (slow, logout) = tokio::join!(call(&app, "/set/a", Some(&cookie)), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        call(&app, "/logout", Some(&cookie)).await
    });
    assert_eq!(logout.status, StatusCode::OK);
    assert_eq!(slow.status, StatusCode::OK);
    assert!(
        slow.set_cookie.is_none(),
        "a request whose session was deleted meanwhile sent a cookie"
    );
    assert_eq!(call(&app, "/keys", Some(&cookie)).await.body, "");
}

#[actix_web::test]
async fn a_flash_is_consumed_by_reading_it_unless_the_reader_panicked() {
    let app = app_catching_panics!(SessionMiddleware::new(manager(
        Arc::new(MemoryStore::new())
    )));
    let cookie = call(&app, "/flash", None).await.cookie();
    let response = call(&app, "/read-flash-panic", Some(&cookie)).await;
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(call(&app, "/read-flash", Some(&cookie)).await.body, "saved");
    assert_eq!(call(&app, "/read-flash", Some(&cookie)).await.body, "none");
}

/// The rejection's statuses, as handlers returning it answer.
#[test]
fn rejections_answer_500_or_503() {
    let down = || Error::Config("down".into());
    assert_eq!(
        SessionRejection::Unavailable(down()).status_code(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        SessionRejection::Session(down()).status_code(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        SessionRejection::MissingMiddleware.status_code(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

//! # session-actix
//!
//! actix-web integration for server-session: a [`SessionMiddleware`] that
//! commits each request's session after the handler, and a [`Session`]
//! extractor that loads the session from the request's cookies the first
//! time a handler asks for it.
//!
//! ```
//! use std::sync::Arc;
//! use actix_web::{test, web, App};
//! use session_actix::{Session, SessionMiddleware, SessionRejection};
//! use session_store::{SessionConfig, SessionManager, conformance::ReferenceStore};
//!
//! async fn visits(session: Session) -> Result<String, SessionRejection> {
//!     let n = session.modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
//!     Ok(format!("visit number {n}"))
//! }
//!
//! let manager = SessionManager::new(Arc::new(ReferenceStore::new()), SessionConfig::default()).unwrap();
//! let manager = Arc::new(manager);
//! actix_web::rt::System::new().block_on(async move {
//!     let app = test::init_service(
//!         App::new()
//!             .wrap(SessionMiddleware::new(manager))
//!             .route("/", web::get().to(visits)),
//!     )
//!     .await;
//!     let response = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
//!     assert!(response.status().is_success());
//!     assert!(response.headers().contains_key("set-cookie"));
//! });
//! ```
//!
//! What happens around each request:
//!
//! - **Sessions load lazily.** The middleware only leaves the manager in
//!   the request; the first [`Session`] extraction starts the session from
//!   the request's cookies (one store read), and every later extraction in
//!   the same request shares it. A request whose handler never extracts a
//!   `Session` touches no store and gets no session cookie, so a health
//!   check or a static file does not pay for a load, and a store outage
//!   fails only the routes that use sessions.
//! - Malformed cookies never fail a request: they start a fresh session. A
//!   store that fails at the load makes the extractor fail with
//!   [`SessionRejection::Unavailable`]: `503 Service Unavailable`.
//! - After the handler, a session that was loaded is saved with what
//!   changed (with the manager's conflict retries); `Set-Cookie` is
//!   appended when one is due, and such responses are marked
//!   `Cache-Control: no-store` so no cache shares a session cookie. A store
//!   that fails here gives `500`, since the handler's changes were not
//!   saved. If another request deleted or regenerated the session
//!   meanwhile, nothing is saved and no cookie is sent (a slow request
//!   never undoes a logout); a `destroy` expires the cookie.
//! - **A handler that panicked commits nothing**: no write, no touch, no
//!   cookie. actix-web does not turn a panic into a response: the
//!   connection is closed without one. A catch-panic middleware placed
//!   inside this one that answers `500` instead does not change this. The
//!   panic is noticed through the handler's `Session` handles: one that
//!   struck after the handler dropped (or moved away) every handle is not
//!   noticed, and the changes made before it are saved. See [`Session`].
//! - **Server errors (5xx) are saved by default**; with
//!   [`SessionMiddleware::save_on_server_error`]`(false)` a 5xx response
//!   commits nothing and sends no cookie.
//! - An inner service that answers with an `Err` instead of a response
//!   (actix-web's handlers and extractors never do; a middleware wrapped
//!   inside this one may) commits nothing: there is no response to carry
//!   the cookie.
#![warn(missing_docs)]

use std::fmt;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderValue, CACHE_CONTROL, COOKIE, SET_COOKIE};
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use session_store::{session_cookie_value, ActiveSession, Error, SessionManager};
use tokio::sync::OnceCell;

/// Commits sessions after the inner service; wrap an `App`, a `Scope` or a
/// `Resource` in it.
#[derive(Clone, Debug)]
pub struct SessionMiddleware {
    manager: Arc<SessionManager>,
    save_on_server_error: bool,
}

impl SessionMiddleware {
    /// A middleware over `manager` that saves after every response, server
    /// errors included (see [`save_on_server_error`](Self::save_on_server_error)).
    pub fn new(manager: Arc<SessionManager>) -> Self {
        SessionMiddleware {
            manager,
            save_on_server_error: true,
        }
    }

    /// Whether a response with a 5xx status still saves the session
    /// (default `true`).
    ///
    /// With `false`, a 5xx response writes nothing to the store (no save, no
    /// expiry touch, no delete) and sends no `Set-Cookie`, as if the handler
    /// had not touched the session: a `destroy` or `regenerate` the handler
    /// made is dropped too, so a logout that answers 5xx leaves the user
    /// logged in.
    ///
    /// The default saves because the middleware cannot tell a deliberate
    /// change from a half-finished one, and rolling back only the session is
    /// often the worse surprise: the handler's other effects (database
    /// writes, emails) are not rolled back either, so a discarded session
    /// can disagree with them (an order placed but still in the cart), and a
    /// logout or a failed-attempt counter that answered 5xx would silently
    /// not count. It is also what other session layers (tower-sessions) do.
    /// Choose `false` when your handlers treat a 5xx as "nothing happened".
    ///
    /// A panic is different: a panicking handler never commits, whatever
    /// this setting (see the [crate docs](crate)).
    pub fn save_on_server_error(mut self, save: bool) -> Self {
        self.save_on_server_error = save;
        self
    }
}

impl<S, B> Transform<S, ServiceRequest> for SessionMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = SessionService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SessionService {
            service,
            manager: self.manager.clone(),
            save_on_server_error: self.save_on_server_error,
        }))
    }
}

/// The service [`SessionMiddleware`] wraps around yours.
#[derive(Debug)]
pub struct SessionService<S> {
    service: S,
    manager: Arc<SessionManager>,
    save_on_server_error: bool,
}

fn plain(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(body)
}

type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Service<ServiceRequest> for SessionService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        // Copies of the header values (reference-counted bytes), kept as the
        // middleware saw them: a later middleware rewriting `Cookie` does not
        // change which session this request has. Parsed only at load.
        let cookies = request.headers().get_all(COOKIE).cloned().collect();
        let lazy = Arc::new(Lazy {
            manager: self.manager.clone(),
            cookies,
            loaded: OnceCell::new(),
        });
        request.extensions_mut().insert(Pending(lazy.clone()));
        let save_on_server_error = self.save_on_server_error;
        let inner = self.service.call(request);
        Box::pin(async move {
            // A panic unwinding through here drops `lazy` uncommitted.
            let outcome = inner.await;
            // Handlers are done with it: an extraction from now on (a handle
            // kept past the request) finds an ended session, not a new one.
            let shared = match lazy.loaded.get() {
                Some(shared) => shared.clone(),
                None => {
                    let _ = lazy.loaded.set(Arc::new(Shared::ended()));
                    return outcome.map(ServiceResponse::map_into_left_body);
                }
            };
            let mut response = match outcome {
                Ok(response) => response,
                Err(e) => {
                    if let Some(active) = shared.take() {
                        tracing::warn!(
                            id = %active.id(),
                            error = %e,
                            "the inner service failed without a response; session changes are discarded"
                        );
                    }
                    return Err(e);
                }
            };
            let committed = match shared.take() {
                Some(active) if shared.abandoned() => {
                    tracing::warn!(
                        id = %active.id(),
                        "the handler panicked; its session changes are discarded"
                    );
                    Ok(None)
                }
                Some(active) if !save_on_server_error && response.status().is_server_error() => {
                    tracing::debug!(
                        id = %active.id(),
                        status = %response.status(),
                        "server error; session changes are discarded"
                    );
                    Ok(None)
                }
                Some(mut active) => active.commit().await,
                None => Ok(None),
            };
            let replacement = match committed {
                Ok(None) => None,
                Ok(Some(cookie)) => match HeaderValue::from_str(&cookie.encoded().to_string()) {
                    Ok(value) => {
                        let headers = response.headers_mut();
                        headers.append(SET_COOKIE, value);
                        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                        None
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "session cookie is not a valid header");
                        Some(plain(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "session cookie error",
                        ))
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "could not save the session");
                    Some(plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the session could not be saved",
                    ))
                }
            };
            Ok(match replacement {
                None => response.map_into_left_body(),
                Some(error) => {
                    let (request, _) = response.into_parts();
                    ServiceResponse::new(request, error).map_into_right_body()
                }
            })
        })
    }
}

/// What the middleware leaves in the request's extensions: the manager,
/// and the session once an extractor loaded it.
#[derive(Clone)]
struct Pending(Arc<Lazy>);

struct Lazy {
    manager: Arc<SessionManager>,
    /// The request's `Cookie` header values.
    cookies: Vec<HeaderValue>,
    /// Set by the first extraction that loads the session (every extraction
    /// of the request waits for that one), or by the middleware once the
    /// handler is done.
    loaded: OnceCell<Arc<Shared>>,
}

/// One request's session, shared by the middleware and every [`Session`]
/// handle.
struct Shared {
    /// `None` once the middleware took it out to commit.
    active: Mutex<Option<ActiveSession>>,
    /// Set when a handle was dropped by a panicking thread.
    abandoned: AtomicBool,
}

impl Shared {
    fn new(active: ActiveSession) -> Self {
        Shared {
            active: Mutex::new(Some(active)),
            abandoned: AtomicBool::new(false),
        }
    }

    /// The session of a request that has ended without loading one.
    fn ended() -> Self {
        Shared {
            active: Mutex::new(None),
            abandoned: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<ActiveSession>> {
        // A handle used after a panic may still read; the middleware
        // discards such a session anyway (see `abandoned`).
        self.active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self) -> Option<ActiveSession> {
        self.lock().take()
    }

    /// Whether a handler panicked with this session in hand. A poisoned
    /// lock means a panic inside a session operation (a `modify` closure)
    /// even if the panic was caught before any handle was dropped.
    fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire) || self.active.is_poisoned()
    }
}

/// The session of the current request, for handlers.
///
/// Extracting it loads the session (the first extraction in a request does
/// the store read; the others share its result). Cheap to clone; every
/// clone is the same session. Changes are saved by [`SessionMiddleware`]
/// after the handler returns.
///
/// A handle dropped while its thread is panicking marks the request's
/// session as abandoned, and the middleware then commits nothing. A handler
/// keeps its `Session` argument until it returns, so a panic anywhere in
/// the handler is noticed. Not noticed: a panic after the handler dropped
/// (or moved away) every handle it had. Conversely a handle moved into a
/// spawned task that panics abandons the request's session too, even if
/// the handler carries on.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.abandoned.store(true, Ordering::Release);
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Session").field(&self.id()).finish()
    }
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, Option<ActiveSession>> {
        self.shared.lock()
    }

    /// Runs `f` on the session, unless the middleware already committed it
    /// (the handle outlived its request).
    fn with<R>(&self, f: impl FnOnce(&mut ActiveSession) -> R) -> Result<R, Error> {
        match self.lock().as_mut() {
            Some(active) => Ok(f(active)),
            None => Err(Error::Config(
                "this session was already committed: its request has ended".into(),
            )),
        }
    }

    session_store::session_handle_methods!("SessionMiddleware::save_on_server_error");
}

impl FromRequest for Session {
    type Error = SessionRejection;
    type Future = LocalBoxFuture<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let Some(Pending(lazy)) = request.extensions().get::<Pending>().cloned() else {
            return Box::pin(ready(Err(SessionRejection::MissingMiddleware)));
        };
        if let Some(shared) = lazy.loaded.get() {
            let shared = shared.clone();
            return Box::pin(ready(Ok(Session { shared })));
        }
        Box::pin(async move {
            // A failed load is not kept: the next extraction tries again.
            let shared = lazy
                .loaded
                .get_or_try_init(|| async {
                    let headers = lazy.cookies.iter().filter_map(|v| v.to_str().ok());
                    let value = session_cookie_value(headers, lazy.manager.cookie_name());
                    let active = lazy.manager.start_from_value(value.as_deref()).await?;
                    Ok::<_, Error>(Arc::new(Shared::new(active)))
                })
                .await
                .map_err(SessionRejection::Unavailable)?;
            Ok(Session {
                shared: shared.clone(),
            })
        })
    }
}

/// Why a handler could not use its session; answers with a plain-text error.
///
/// Return it from handlers (`Result<_, SessionRejection>`): session
/// operations' [`Error`]s convert into it with `?`.
#[derive(Debug)]
pub enum SessionRejection {
    /// The route is not wrapped in a [`SessionMiddleware`] (a programming
    /// error: 500).
    MissingMiddleware,
    /// The store failed while loading the session (503; the detail goes to
    /// the log, not the client).
    Unavailable(Error),
    /// A session operation failed (500; the detail goes to the log, not the
    /// client).
    Session(Error),
}

impl From<Error> for SessionRejection {
    fn from(e: Error) -> Self {
        SessionRejection::Session(e)
    }
}

impl fmt::Display for SessionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionRejection::MissingMiddleware => {
                f.write_str("Session extractor used on a route without SessionMiddleware")
            }
            SessionRejection::Unavailable(e) => write!(f, "could not start the session: {e}"),
            SessionRejection::Session(e) => write!(f, "session operation failed: {e}"),
        }
    }
}

impl std::error::Error for SessionRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionRejection::MissingMiddleware => None,
            SessionRejection::Unavailable(e) | SessionRejection::Session(e) => Some(e),
        }
    }
}

impl ResponseError for SessionRejection {
    fn status_code(&self) -> StatusCode {
        match self {
            SessionRejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            SessionRejection::MissingMiddleware | SessionRejection::Session(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        tracing::error!(error = %self, "session rejection");
        let body = match self {
            SessionRejection::MissingMiddleware => "session middleware missing",
            SessionRejection::Unavailable(_) => "the session store is unavailable",
            SessionRejection::Session(_) => "session error",
        };
        plain(self.status_code(), body)
    }
}

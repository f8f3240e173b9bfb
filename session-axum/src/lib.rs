//! # session-axum
//!
//! axum and tower integration for server-session: a [`SessionLayer`] that
//! gives each request a lazily loaded session and commits it after the
//! handler, and a [`Session`] extractor for handlers.
//!
//! ```
//! use std::sync::Arc;
//! use axum::{routing::get, Router};
//! use session_axum::{Session, SessionLayer, SessionRejection};
//! use session_store::{SessionConfig, SessionManager, conformance::ReferenceStore};
//!
//! async fn visits(session: Session) -> Result<String, SessionRejection> {
//!     let n = session.modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
//!     Ok(format!("visit number {n}"))
//! }
//!
//! async fn health() -> &'static str {
//!     "ok" // no `Session` here: no store I/O, no cookie, even if the store is down
//! }
//!
//! let manager = SessionManager::new(Arc::new(ReferenceStore::new()), SessionConfig::default()).unwrap();
//! let app: Router = Router::new()
//!     .route("/", get(visits))
//!     .route("/health", get(health))
//!     .layer(SessionLayer::new(Arc::new(manager)));
//! ```
//!
//! What the layer does around each request:
//!
//! - **Sessions are lazy.** Before the handler the layer only puts a small
//!   per-request state in the request's extensions: it neither parses
//!   cookies nor touches the store. The session is loaded when a handler
//!   first extracts [`Session`], once per request however many extractors
//!   or clones ask for it. A request whose handler never extracts it does
//!   no store I/O at all, sends no `Set-Cookie`, and is unaffected by a
//!   store outage.
//! - Loading starts the session from the request's `Cookie` headers (as
//!   the extractor sees the request, so after any layer inside this one
//!   that rewrites them). Malformed
//!   cookies never fail a request: they start a fresh session. A store that
//!   fails at load makes the extractor reject with
//!   [`SessionRejection::Unavailable`] (`503 Service Unavailable`), so only
//!   the routes that use the session fail.
//! - After the handler, if the session was loaded, it saves what changed
//!   (with the manager's conflict retries), appends `Set-Cookie` when one is
//!   due, and marks such responses `Cache-Control: no-store` so no cache
//!   shares a session cookie. A store that fails here gives `500`, since the
//!   handler's changes were not saved. If another request deleted or
//!   regenerated the session meanwhile, nothing is saved and no cookie is
//!   sent (a slow request never undoes a logout); a `destroy` expires the
//!   cookie.
//! - **A handler that panicked commits nothing**: no write, no touch, no
//!   cookie, even when a catch-panic layer (such as
//!   `tower_http::catch_panic::CatchPanicLayer`) inside this one turns the
//!   panic into a `500`. Its changes were half-finished by definition. The
//!   panic is noticed through the handler's `Session` handles: one that
//!   struck after the handler dropped (or moved away) every handle is not
//!   noticed, and the changes made before it are saved. See [`Session`].
//! - **Server errors (5xx) are saved by default**; with
//!   [`SessionLayer::save_on_server_error`]`(false)` a 5xx response commits
//!   nothing and sends no cookie.
#![warn(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use session_store::{session_cookie_value, ActiveSession, Error, SessionManager};
use tokio::sync::OnceCell;
use tower::{Layer, Service};

/// Gives each request a lazily loaded session and commits it after the
/// inner service (see the [crate docs](crate)).
#[derive(Clone, Debug)]
pub struct SessionLayer {
    manager: Arc<SessionManager>,
    save_on_server_error: bool,
}

impl SessionLayer {
    /// A layer over `manager` that saves after every response, server
    /// errors included (see [`save_on_server_error`](Self::save_on_server_error)).
    pub fn new(manager: Arc<SessionManager>) -> Self {
        SessionLayer {
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
    /// The default saves because the layer cannot tell a deliberate change
    /// from a half-finished one, and rolling back only the session is often
    /// the worse surprise: the handler's other effects (database writes,
    /// emails) are not rolled back either, so a discarded session can
    /// disagree with them (an order placed but still in the cart), and a
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

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            manager: self.manager.clone(),
            save_on_server_error: self.save_on_server_error,
        }
    }
}

/// The service [`SessionLayer`] wraps around yours.
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    manager: Arc<SessionManager>,
    save_on_server_error: bool,
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

impl<S, B> Service<Request<B>> for SessionService<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let shared = Arc::new(Shared {
            manager: self.manager.clone(),
            slot: OnceCell::new(),
            abandoned: AtomicBool::new(false),
        });
        request
            .extensions_mut()
            .insert(RequestSession(shared.clone()));
        // The inner service was polled ready: call it now, so the future
        // below needs no clone of it, and no allocation unless it commits.
        ResponseFuture {
            state: State::Handler {
                future: self.inner.call(request),
                shared,
                save_on_server_error: self.save_on_server_error,
            },
        }
    }
}

type CommitFuture = Pin<Box<dyn Future<Output = Response> + Send>>;

pin_project! {
    /// The response future of [`SessionService`]: the handler's response,
    /// then the commit of the session if the handler loaded it.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Handler {
            #[pin]
            future: F,
            // Dropped uncommitted if a panic unwinds through this future.
            shared: Arc<Shared>,
            save_on_server_error: bool,
        },
        Commit {
            future: CommitFuture,
        },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let commit = match self.as_mut().project().state.project() {
                StateProj::Handler {
                    future,
                    shared,
                    save_on_server_error,
                } => {
                    let response = match future.poll(cx) {
                        Poll::Ready(Ok(response)) => response,
                        Poll::Ready(Err(never)) => match never {},
                        Poll::Pending => return Poll::Pending,
                    };
                    // Never loaded: nothing to save, no cookie, no store I/O.
                    let Some(slot) = shared.slot.get() else {
                        return Poll::Ready(Ok(response));
                    };
                    // Loaded, but only read (no touch due): commit would do
                    // nothing, so it needs no future. Taken out all the
                    // same, as a commit would: later use of a handle that
                    // outlived the request is refused alike. A panic takes
                    // the long way, to be logged.
                    if !shared.abandoned() {
                        let mut guard = lock(slot);
                        if guard.as_ref().is_some_and(|active| !active.needs_commit()) {
                            drop(guard.take());
                            drop(guard);
                            return Poll::Ready(Ok(response));
                        }
                    }
                    let (shared, save) = (shared.clone(), *save_on_server_error);
                    // Boxed: the commit's future is large and most requests
                    // never get here.
                    let commit: CommitFuture =
                        Box::pin(async move { finish(&shared, response, save).await });
                    commit
                }
                StateProj::Commit { future } => return future.as_mut().poll(cx).map(Ok),
            };
            self.as_mut()
                .project()
                .state
                .set(State::Commit { future: commit });
        }
    }
}

/// Commits the request's session, if a handler loaded it, into `response`.
async fn finish(shared: &Shared, mut response: Response, save_on_server_error: bool) -> Response {
    let Some(slot) = shared.slot.get() else {
        return response;
    };
    // Handlers are done with it: take the session out to commit.
    let taken = lock(slot).take();
    let committed = match taken {
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
    match committed {
        Ok(None) => response,
        Ok(Some(cookie)) => match HeaderValue::from_str(&cookie.encoded().to_string()) {
            Ok(value) => {
                let headers = response.headers_mut();
                headers.append(SET_COOKIE, value);
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Err(e) => {
                tracing::error!(error = %e, "session cookie is not a valid header");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "session cookie error")
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "could not save the session");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the session could not be saved",
            )
        }
    }
}

/// One request's session state, shared by the layer, the request's
/// extensions and every [`Session`] handle.
struct Shared {
    manager: Arc<SessionManager>,
    /// Filled by the first extraction; inside, `None` once the layer took
    /// the session out to commit.
    slot: OnceCell<Mutex<Option<ActiveSession>>>,
    /// Set when a handle was dropped by a panicking thread.
    abandoned: AtomicBool,
}

fn lock(slot: &Mutex<Option<ActiveSession>>) -> MutexGuard<'_, Option<ActiveSession>> {
    // A handle used after a panic may still read; the layer discards such a
    // session anyway (see `Shared::abandoned`).
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Loads the session on first use from the request's `Cookie`
    /// headers; later and concurrent callers share that one load. A failed
    /// load is not kept: the next extraction tries again.
    async fn load(&self, headers: &HeaderMap) -> Result<(), Error> {
        self.slot
            .get_or_try_init(|| async {
                let values = headers.get_all(COOKIE).iter();
                let value = session_cookie_value(
                    values.filter_map(|v| v.to_str().ok()),
                    self.manager.cookie_name(),
                );
                self.manager
                    .start_from_value(value.as_deref())
                    .await
                    .map(|active| Mutex::new(Some(active)))
            })
            .await
            .map(|_| ())
    }

    /// Marks the session abandoned when dropped by a panicking thread.
    fn note_drop(&self) {
        if std::thread::panicking() {
            self.abandoned.store(true, Ordering::Release);
        }
    }

    /// Whether a handler panicked with this session in hand. A poisoned
    /// lock means a panic inside a session operation (a `modify` closure)
    /// even if the panic was caught before any handle was dropped.
    fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
            || self.slot.get().is_some_and(|slot| slot.is_poisoned())
    }
}

/// What the layer puts in the request's extensions for the extractor. It is
/// not a [`Session`] handle, because the session is not loaded yet, but its
/// drop during a panic (the request unwinding with the handler) abandons the
/// session like a handle's would.
#[derive(Clone)]
struct RequestSession(Arc<Shared>);

impl Drop for RequestSession {
    fn drop(&mut self) {
        self.0.note_drop();
    }
}

/// The session of the current request, for handlers.
///
/// Extracting it loads the session (see the [`FromRequestParts`] impl);
/// its methods are synchronous after that. Cheap to clone; every clone, and
/// every other extraction in the same request, is the same session.
/// Changes are saved by [`SessionLayer`] after the handler returns.
///
/// A handle dropped while its thread is panicking marks the request's
/// session as abandoned, and the layer then commits nothing (the request's
/// extensions, where the layer keeps the session's state, count as such a
/// handle while the request is alive). A handler
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
        self.shared.note_drop();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Session").field(&self.id()).finish()
    }
}

impl Session {
    /// Runs `f` on the session, unless the layer already committed it (the
    /// handle outlived its request).
    fn with<R>(&self, f: impl FnOnce(&mut ActiveSession) -> R) -> Result<R, Error> {
        // A handle exists only once the extractor loaded the slot.
        let Some(slot) = self.shared.slot.get() else {
            return Err(Error::Config("this session was never loaded".into()));
        };
        match lock(slot).as_mut() {
            Some(active) => Ok(f(active)),
            None => Err(Error::Config(
                "this session was already committed: its request has ended".into(),
            )),
        }
    }

    session_store::session_handle_methods!("SessionLayer::save_on_server_error");
}

/// Loads the request's session on first use (one store read, shared by
/// every extraction and clone in the request); later extractions are free.
///
/// Rejects with [`SessionRejection::Unavailable`] (`503`) when the store
/// fails at load, and [`SessionRejection::MissingLayer`] (`500`) on a route
/// without [`SessionLayer`].
impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let shared = parts
            .extensions
            .get::<RequestSession>()
            .map(|request| request.0.clone())
            .ok_or(SessionRejection::MissingLayer)?;
        shared
            .load(&parts.headers)
            .await
            .map_err(SessionRejection::Unavailable)?;
        Ok(Session { shared })
    }
}

/// `Option<Session>`: `None` when the store fails at load, so a page that
/// can do without the session (a public page greeting signed-in users)
/// still answers while the store is down; nothing is saved or sent for
/// that request. A route without [`SessionLayer`] is still rejected with
/// [`SessionRejection::MissingLayer`]: that is a wiring mistake, not an
/// outage.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        match <Session as FromRequestParts<S>>::from_request_parts(parts, state).await {
            Ok(session) => Ok(Some(session)),
            Err(SessionRejection::Unavailable(e)) => {
                tracing::warn!(error = %e, "session store unavailable; going on without a session");
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }
}

/// Why a handler could not use its session; answers with a plain-text error.
#[derive(Debug)]
pub enum SessionRejection {
    /// The route is not wrapped in a [`SessionLayer`] (a programming error: 500).
    MissingLayer,
    /// The store failed while loading the session (503 Service Unavailable;
    /// the detail goes to the log, not the client). Only routes that
    /// extract [`Session`] see it: the others do not touch the store.
    Unavailable(Error),
    /// A session operation failed (500; the detail goes to the log, not the client).
    Session(Error),
}

impl From<Error> for SessionRejection {
    fn from(e: Error) -> Self {
        SessionRejection::Session(e)
    }
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        match self {
            SessionRejection::MissingLayer => {
                tracing::error!("Session extractor used on a route without SessionLayer");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "session layer missing")
            }
            SessionRejection::Unavailable(e) => {
                tracing::error!(error = %e, "could not load the session");
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the session store is unavailable",
                )
            }
            SessionRejection::Session(e) => {
                tracing::error!(error = %e, "session operation failed");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "session error")
            }
        }
    }
}

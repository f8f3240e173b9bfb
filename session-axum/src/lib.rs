//! # session-axum
//!
//! axum and tower integration for server-session: a [`SessionLayer`] that
//! starts each request's session from its cookies and commits it after the
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
//! let manager = SessionManager::new(Arc::new(ReferenceStore::new()), SessionConfig::default()).unwrap();
//! let app: Router = Router::new()
//!     .route("/", get(visits))
//!     .layer(SessionLayer::new(Arc::new(manager)));
//! ```
//!
//! After the handler the layer saves what changed (with the manager's
//! conflict retries), appends `Set-Cookie` when one is due, and marks such
//! responses `Cache-Control: no-store` so no cache shares a session cookie.
//! A store that fails while starting the session gives `503 Service
//! Unavailable`; one that fails while committing gives `500`, since the
//! handler's changes were not saved. Malformed cookies never fail a request:
//! they start a fresh session.
#![warn(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use session_store::{jar_from_cookie_headers, ActiveSession, Error, SessionId, SessionManager};
use tower::{Layer, Service};

/// Starts and commits sessions around the inner service.
#[derive(Clone, Debug)]
pub struct SessionLayer {
    manager: Arc<SessionManager>,
}

impl SessionLayer {
    /// A layer over `manager`.
    pub fn new(manager: Arc<SessionManager>) -> Self {
        SessionLayer { manager }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            manager: self.manager.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around yours.
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    manager: Arc<SessionManager>,
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

impl<S, B> Service<Request<B>> for SessionService<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let manager = self.manager.clone();
        Box::pin(async move {
            let headers = request.headers().get_all(COOKIE);
            let jar = jar_from_cookie_headers(headers.iter().filter_map(|v| v.to_str().ok()));
            let active = match manager.start(&jar).await {
                Ok(active) => active,
                Err(e) => {
                    tracing::error!(error = %e, "could not start the session");
                    return Ok(plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the session store is unavailable",
                    ));
                }
            };
            let session = Session(Arc::new(Mutex::new(Some(active))));
            request.extensions_mut().insert(session.clone());
            let mut response = inner.call(request).await?;
            // Handlers are done with it: take the session out to commit.
            let taken = session.lock().take();
            let committed = match taken {
                Some(mut active) => active.commit().await,
                None => Ok(None),
            };
            match committed {
                Ok(None) => Ok(response),
                Ok(Some(cookie)) => match HeaderValue::from_str(&cookie.encoded().to_string()) {
                    Ok(value) => {
                        let headers = response.headers_mut();
                        headers.append(SET_COOKIE, value);
                        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                        Ok(response)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "session cookie is not a valid header");
                        Ok(plain(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "session cookie error",
                        ))
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "could not save the session");
                    Ok(plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the session could not be saved",
                    ))
                }
            }
        })
    }
}

/// The session of the current request, for handlers.
///
/// Cheap to clone; every clone is the same session. Changes are saved by
/// [`SessionLayer`] after the handler returns.
#[derive(Clone)]
pub struct Session(Arc<Mutex<Option<ActiveSession>>>);

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Session").field(&self.id()).finish()
    }
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, Option<ActiveSession>> {
        // Each change is applied whole under the lock, so a panicking
        // handler cannot leave the session half-changed.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the session, unless the layer already committed it (the
    /// handle outlived its request).
    fn with<R>(&self, f: impl FnOnce(&mut ActiveSession) -> R) -> Result<R, Error> {
        match self.lock().as_mut() {
            Some(active) => Ok(f(active)),
            None => Err(Error::Config(
                "this session was already committed: its request has ended".into(),
            )),
        }
    }

    /// The store id (a hash of the cookie token; safe to log); `None` once
    /// the request has ended.
    pub fn id(&self) -> Option<SessionId> {
        self.with(|s| s.id()).ok()
    }

    /// Whether this request started a new session.
    pub fn is_new(&self) -> bool {
        self.with(|s| s.is_new()).unwrap_or(false)
    }

    /// Reads `key` as a `T`; `Ok(None)` when absent.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.with(|s| s.get(key))?
    }

    /// Stores `value` under `key`.
    pub fn insert<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        self.with(|s| s.insert(key, value))?
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&self, key: &str) -> bool {
        self.with(|s| s.remove(key)).unwrap_or(false)
    }

    /// Read-modify-write of one value that stays exact under concurrent
    /// requests (see [`ActiveSession::modify`]).
    pub fn modify<T, F>(&self, key: &str, f: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> T + Send + Sync + 'static,
    {
        self.with(|s| s.modify(key, f))?
    }

    /// Sets a flash value for the next request.
    pub fn flash<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        self.with(|s| s.flash(key, value))?
    }

    /// A flash value set by the previous request.
    pub fn get_flash<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.with(|s| s.get_flash(key))?
    }

    /// New id, data kept, old record deleted: call after login.
    pub fn regenerate(&self) -> Result<(), Error> {
        self.with(|s| s.regenerate())?
    }

    /// Deletes the session and expires its cookie: call on logout.
    pub fn destroy(&self) -> Result<(), Error> {
        self.with(|s| s.destroy())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(SessionRejection::MissingLayer)
    }
}

/// Why a handler could not use its session; answers with a plain-text error.
#[derive(Debug)]
pub enum SessionRejection {
    /// The route is not wrapped in a [`SessionLayer`] (a programming error: 500).
    MissingLayer,
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
            SessionRejection::Session(e) => {
                tracing::error!(error = %e, "session operation failed");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "session error")
            }
        }
    }
}

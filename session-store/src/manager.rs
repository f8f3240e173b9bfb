//! The session manager: starts each request's session from its cookies.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cookie::{Cookie, CookieJar, Key};

use crate::active::{ActiveSession, State};
use crate::config::millis;
// The conformance cases name it from here.
pub(crate) use crate::config::SessionConfig;
use crate::cookie_only::{CookieSeal, NoStore};
use crate::cookies::presented_token;
use crate::error::{Error, Result};
use crate::id::SessionToken;
use crate::session::{now_millis, Session};
use crate::store::SessionInterface;
use crate::values::Values;

/// Where sessions live: a store, or (cookie-only mode) their own cookies.
enum Backend {
    Store(Arc<dyn SessionInterface>),
    Cookie(Arc<CookieSeal>),
}

impl Backend {
    fn store(&self) -> Arc<dyn SessionInterface> {
        match self {
            Backend::Store(store) => store.clone(),
            Backend::Cookie(_) => Arc::new(NoStore),
        }
    }
}

/// Starts sessions from cookies and commits them back.
///
/// Framework-agnostic: it reads a [`CookieJar`] and returns the
/// `Set-Cookie` to send. The axum layer (crate `session-axum`) wraps it.
///
/// It runs on Tokio with the time driver on (`enable_time` or
/// `enable_all`, as `#[tokio::main]`, `#[tokio::test]`, axum and actix-web
/// have it): commits that keep losing to other writers of the same session
/// pause a random moment before they retry, and a commit whose reply was
/// lost pauses before it re-reads. A commit that loses all of
/// [`SessionConfig::max_commit_attempts`] (128) gives up with
/// [`Error::Contention`](crate::Error::Contention) after about a second.
///
/// ```
/// # use std::sync::Arc;
/// # use session_store::{SessionManager, SessionConfig};
/// # async fn demo(store: Arc<dyn session_store::SessionInterface>) -> session_store::Result<()> {
/// let manager = SessionManager::new(store, SessionConfig::default())?;
/// let jar = session_store::jar_from_cookie_headers(["id=abc"]);
/// let mut session = manager.start(&jar).await?; // "abc" is no issued id: a new session
/// session.insert("user", "ada")?;
/// if let Some(cookie) = session.commit().await? {
///     println!("Set-Cookie: {}", cookie.encoded());
/// }
/// # Ok(()) }
/// ```
pub struct SessionManager {
    backend: ArcSwap<Backend>,
    config: Arc<SessionConfig>,
    /// [`SessionConfig::effective_cookie_name`], worked out once.
    cookie_name: String,
}

impl fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field(
                "store",
                &match &**self.backend.load() {
                    Backend::Store(store) => format!("{store:?}"),
                    Backend::Cookie(_) => "cookie-only".to_owned(),
                },
            )
            .field("config", &self.config)
            .finish()
    }
}

impl SessionManager {
    /// A manager over `store`; [`Error::Config`] if `config` is unusable.
    pub fn new(store: Arc<dyn SessionInterface>, config: SessionConfig) -> Result<Self> {
        config.validate()?;
        Ok(SessionManager {
            backend: ArcSwap::from_pointee(Backend::Store(store)),
            cookie_name: config.effective_cookie_name().into_owned(),
            config: Arc::new(config),
        })
    }

    /// A manager with no store: each session lives, encrypted and
    /// authenticated (AES-256-GCM), in its own cookie, like Remix's
    /// `createCookieSessionStorage`, actix-session's `CookieSessionStore` or
    /// Django's `signed_cookies`. Handlers use the same API as with a store.
    ///
    /// `keys`: the first encrypts, every key decrypts; a cookie opened by
    /// another key than the first is re-issued under the first, so an old
    /// key can be retired without logging anyone out. Generate keys with
    /// [`Key::generate`](cookie::Key::generate) and keep them secret and
    /// stable across restarts and servers. [`Error::Config`] without a key.
    /// [`SessionConfig::signing_keys`] is not used (the encryption already
    /// authenticates).
    ///
    /// The idle and absolute timeouts are enforced from the creation and
    /// expiry times sealed in the cookie, whatever the browser's `Max-Age`
    /// (each server's own clock judges them). A commit whose cookie would
    /// exceed [`MAX_COOKIE_BYTES`](crate::MAX_COOKIE_BYTES) fails with
    /// [`Error::CookieTooLarge`]; the browser keeps its previous cookie.
    /// A cookie that does not open (tampered, truncated, sealed with an
    /// unknown key, oversized, expired) starts a fresh session.
    ///
    /// What this mode cannot do, by construction:
    /// - **Revoke a copied cookie.** `destroy` makes *this* browser forget
    ///   the cookie, but a copy taken earlier stays valid until its sealed
    ///   expiry: there is no server-side record to delete.
    /// - **Refuse replay of an older cookie.** A client may send back any
    ///   cookie it was given that has not expired (say, one from before a
    ///   purchase that took a credit off its balance).
    /// - **Keep concurrent updates.** Two parallel requests each send back
    ///   their own cookie; the browser keeps the last one, and the other
    ///   request's changes are lost ([`ActiveSession::modify`] is exact only
    ///   within one request).
    /// - **Hold much**: about 2 KB of data, since the record is encoded
    ///   twice in base64 inside a 4 KB cookie sent on every request.
    ///
    /// Pick a server-side store when any of these matter: logins with
    /// "log out everywhere", balances or counters, or anything large.
    ///
    /// ```
    /// # use session_store::{SessionConfig, SessionManager, cookie::Key};
    /// let manager = SessionManager::cookie_only(vec![Key::generate()], SessionConfig::default())?;
    /// # Ok::<(), session_store::Error>(())
    /// ```
    pub fn cookie_only(keys: Vec<Key>, config: SessionConfig) -> Result<Self> {
        config.validate()?;
        Ok(SessionManager {
            backend: ArcSwap::from_pointee(Backend::Cookie(Arc::new(CookieSeal::new(keys)?))),
            cookie_name: config.effective_cookie_name().into_owned(),
            config: Arc::new(config),
        })
    }

    /// Whether sessions live in their cookies ([`cookie_only`](Self::cookie_only))
    /// rather than in a store.
    pub fn is_cookie_only(&self) -> bool {
        matches!(**self.backend.load(), Backend::Cookie(_))
    }

    /// The name of the session cookie as sent
    /// ([`SessionConfig::effective_cookie_name`]).
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The store new requests use. A cookie-only manager has none: it
    /// answers with a store that holds nothing, refuses writes with
    /// [`Error::Unsupported`] and has nothing to flush.
    pub fn store(&self) -> Arc<dyn SessionInterface> {
        self.backend.load().store()
    }

    /// Swaps the store at runtime (the seed's `setOperations`). Requests
    /// already started finish on the store they started with; new ones use
    /// `store`. Sessions are not copied over. A cookie-only manager turns
    /// into one on `store`: the cookies it issued then start fresh sessions.
    pub fn set_operations(&self, store: Arc<dyn SessionInterface>) {
        self.backend.store(Arc::new(Backend::Store(store)));
        tracing::info!("session store swapped");
    }

    /// Deletes expired sessions in the current store, returning how many.
    ///
    /// Run it periodically, e.g. from a tokio task:
    /// `loop { interval.tick().await; manager.flush().await.ok(); }`.
    ///
    /// With an [events hook](SessionConfig::events), stores that can say
    /// which sessions they flushed ([`SessionInterface::flush_reporting`])
    /// emit [`SessionEvent::Expired`](crate::SessionEvent::Expired) for each.
    pub async fn flush(&self) -> Result<u64> {
        let store = self.store();
        let Some(events) = &self.config.events else {
            return store.flush().await;
        };
        let report = store.flush_reporting().await?;
        for (id, user_key) in report.expired {
            events.emit(crate::events::SessionEvent::Expired { id, user_key });
        }
        Ok(report.deleted)
    }

    /// Starts the session of a request.
    ///
    /// Loads the session named by the cookie if the token is valid, the
    /// signature checks (when signing is on), and the session is live and
    /// within its absolute timeout. Otherwise starts a new session with a
    /// fresh server-generated token: an id the server did not issue is never
    /// adopted. A new session that receives no data is never stored.
    ///
    /// A stored record that cannot be decoded (corrupt, or written in a
    /// format this version does not know) is logged and treated as missing:
    /// the request starts a fresh session instead of failing, so one bad
    /// record cannot lock its browser out. The record itself is left alone
    /// (a newer app version running beside this one may be able to read it).
    ///
    /// Errors only when the store fails (a 503 for the request).
    pub async fn start(&self, jar: &CookieJar) -> Result<ActiveSession> {
        self.start_from_value(jar.get(&self.cookie_name).map(Cookie::value))
            .await
    }

    /// [`start`](Self::start) from the session cookie's value alone, as
    /// [`session_cookie_value`](crate::session_cookie_value) reads it from
    /// the request's `Cookie` headers (`None`: no session cookie, or one
    /// sent twice with different values). What the framework layers call:
    /// no cookie jar is built.
    pub async fn start_from_value(&self, value: Option<&str>) -> Result<ActiveSession> {
        let store = match &**self.backend.load() {
            Backend::Store(store) => store.clone(),
            Backend::Cookie(seal) => return self.start_sealed(seal.clone(), value),
        };
        let had_cookie = value.is_some();
        let now = now_millis();
        if let Some(presented) =
            value.and_then(|value| presented_token(&self.config, &self.cookie_name, value))
        {
            match SessionToken::parse(&presented.token) {
                Ok(token) => {
                    let id = token.id();
                    match store.get(&id).await {
                        Ok(Some(mut session)) => {
                            let expiry = self.config.expiry(session.created_at_millis(), now);
                            if expiry > now {
                                let moved = expiry - session.expires_at_millis()
                                    >= millis(self.config.touch_after);
                                if moved {
                                    session.set_expires_at_millis(expiry);
                                }
                                let mut active = ActiveSession::loaded(
                                    store,
                                    self.config.clone(),
                                    token,
                                    session,
                                    moved,
                                );
                                if presented.stale_key {
                                    active.reissue_cookie();
                                }
                                return Ok(active);
                            }
                            tracing::debug!(%id, "session reached its absolute timeout");
                            if let Err(e) = store.delete_if(&id, session.version()).await {
                                tracing::warn!(%id, error = %e, "could not delete a timed-out session");
                            }
                        }
                        Ok(None) => tracing::debug!(%id, "cookie names no live session"),
                        Err(e @ Error::Decode { .. }) => {
                            tracing::warn!(%id, error = %e, "stored session cannot be decoded; starting a fresh one");
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => tracing::debug!(error = %e, "refused session cookie"),
            }
        }
        self.fresh(store, had_cookie, now)
    }

    /// A new session with a fresh server-generated token.
    fn fresh(
        &self,
        store: Arc<dyn SessionInterface>,
        had_cookie: bool,
        now: i64,
    ) -> Result<ActiveSession> {
        let token = self.config.new_token()?;
        let mut session = Session::new(token.id(), self.config.idle_timeout);
        session.set_expires_at_millis(self.config.expiry(session.created_at_millis(), now));
        Ok(ActiveSession::new(
            store,
            self.config.clone(),
            token,
            session,
            had_cookie,
            State::New,
            Values::default(),
        ))
    }

    /// `start` in cookie-only mode: the session is whatever the cookie
    /// holds, if it opens and its sealed times say it is live. Never
    /// touches a store, never fails on what the client sent.
    fn start_sealed(&self, seal: Arc<CookieSeal>, value: Option<&str>) -> Result<ActiveSession> {
        let had_cookie = value.is_some();
        let now = now_millis();
        let mut active = match value.and_then(|value| seal.open(&self.cookie_name, value)) {
            Some(opened) => {
                let session = opened.session;
                // The sealed expiry is the idle timeout as of the last cookie
                // sent; `expiry` adds the absolute one from `created_at`.
                let expiry = self.config.expiry(session.created_at_millis(), now);
                if session.expires_at_millis() > now && expiry > now {
                    self.loaded_from_cookie(opened.token, session, opened.stale_key, expiry)
                } else {
                    tracing::debug!(id = %session.id(), "sealed session has expired");
                    self.fresh(Arc::new(NoStore), had_cookie, now)?
                }
            }
            None => self.fresh(Arc::new(NoStore), had_cookie, now)?,
        };
        active.cookie_seal = Some(seal);
        Ok(active)
    }

    fn loaded_from_cookie(
        &self,
        token: SessionToken,
        mut session: Session,
        stale_key: bool,
        expiry: i64,
    ) -> ActiveSession {
        // Only a cookie sent back extends the idle timeout, so a move of at
        // least `touch_after` re-issues it even when nothing else changed.
        let moved = expiry - session.expires_at_millis() >= millis(self.config.touch_after);
        if moved {
            session.set_expires_at_millis(expiry);
        }
        let mut active = ActiveSession::loaded(
            Arc::new(NoStore),
            self.config.clone(),
            token,
            session,
            moved,
        );
        if moved || stale_key {
            active.reissue_cookie();
        }
        active
    }
}

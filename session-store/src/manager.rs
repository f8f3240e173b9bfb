//! The session manager: starts each request's session from its cookies.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cookie::CookieJar;

use crate::active::{ActiveSession, State};
use crate::config::millis;
// The conformance cases name it from here.
pub(crate) use crate::config::SessionConfig;
use crate::cookies::presented_token;
use crate::error::{Error, Result};
use crate::id::SessionToken;
use crate::session::{now_millis, Session};
use crate::store::SessionInterface;

struct StoreSlot(Arc<dyn SessionInterface>);

/// Starts sessions from cookies and commits them back.
///
/// Framework-agnostic: it reads a [`CookieJar`] and returns the
/// `Set-Cookie` to send. The axum layer (crate `session-axum`) wraps it.
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
    store: ArcSwap<StoreSlot>,
    config: Arc<SessionConfig>,
}

impl fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field("store", &self.store.load().0)
            .field("config", &self.config)
            .finish()
    }
}

impl SessionManager {
    /// A manager over `store`; [`Error::Config`] if `config` is unusable.
    pub fn new(store: Arc<dyn SessionInterface>, config: SessionConfig) -> Result<Self> {
        config.validate()?;
        Ok(SessionManager {
            store: ArcSwap::from_pointee(StoreSlot(store)),
            config: Arc::new(config),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The store new requests use.
    pub fn store(&self) -> Arc<dyn SessionInterface> {
        self.store.load().0.clone()
    }

    /// Swaps the store at runtime (the seed's `setOperations`). Requests
    /// already started finish on the store they started with; new ones use
    /// `store`. Sessions are not copied over.
    pub fn set_operations(&self, store: Arc<dyn SessionInterface>) {
        self.store.store(Arc::new(StoreSlot(store)));
        tracing::info!("session store swapped");
    }

    /// Deletes expired sessions in the current store, returning how many.
    ///
    /// Run it periodically, e.g. from a tokio task:
    /// `loop { interval.tick().await; manager.flush().await.ok(); }`.
    pub async fn flush(&self) -> Result<u64> {
        self.store().flush().await
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
        let store = self.store();
        let had_cookie = jar.get(&self.config.effective_cookie_name()).is_some();
        let now = now_millis();
        if let Some(presented) = presented_token(&self.config, jar) {
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
            BTreeMap::new(),
        ))
    }
}

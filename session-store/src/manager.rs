//! Sessions from cookies: start, change, commit.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use cookie::{Cookie, CookieJar, Key, SameSite};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::{SessionId, SessionToken};
use crate::session::{decode_value, encode_value, now_millis, Session};
use crate::store::{SessionInterface, UpdateOutcome};

/// Makes session tokens instead of the built-in CSPRNG generator (the seed's
/// `keyGenerator`). What it returns must pass [`SessionToken::parse`].
pub type TokenGenerator = Arc<dyn Fn() -> String + Send + Sync>;

/// How the manager names, protects and times sessions.
///
/// The defaults are what a user of express-session or tower-sessions expects,
/// made safe: cookie `id`, `HttpOnly`, `SameSite=Lax`, `Secure`, path `/`, a
/// browser-session cookie, 24 h idle timeout, 7 days absolute timeout.
#[derive(Clone)]
pub struct SessionConfig {
    /// Cookie name (default `id`). With [`host_prefix`](Self::host_prefix)
    /// the cookie is sent as `__Host-` + this name.
    pub cookie_name: String,
    /// `HttpOnly` (default `true`): scripts cannot read the cookie.
    pub http_only: bool,
    /// `SameSite` (default `Lax`).
    pub same_site: SameSite,
    /// `Secure` (default `true`). Turn off only for plain-http development.
    pub secure: bool,
    /// Cookie path (default `/`).
    pub path: String,
    /// Cookie domain (default none: host-only).
    pub domain: Option<String>,
    /// Send the cookie as `__Host-<name>`; requires `secure`, path `/` and no domain.
    pub host_prefix: bool,
    /// Give the cookie a `Max-Age` matching the session's expiry (default
    /// `false`: the cookie ends with the browser session, the record with
    /// the timeouts below).
    pub persistent: bool,
    /// Sliding timeout: a session unused for this long expires (default 24 h).
    pub idle_timeout: Duration,
    /// Hard limit counted from creation, whatever the activity (default 7 days).
    pub absolute_timeout: Option<Duration>,
    /// A request that changes nothing still moves the expiry forward, but
    /// writes it (`touch`) only once it moved by at least this much
    /// (default 60 s), so read-only traffic does not write on every request.
    pub touch_after: Duration,
    /// HMAC keys for signed cookies: the first signs, all verify (rotation).
    /// Empty (the default): cookies are not signed; the token alone is the
    /// 256-bit secret.
    pub signing_keys: Vec<Key>,
    /// A custom token generator; `None` uses [`SessionToken::generate`].
    pub token_generator: Option<TokenGenerator>,
    /// How many times a commit re-loads and re-applies its changes after a
    /// `Conflict` before giving up with [`Error::Contention`] (default 128).
    pub max_commit_attempts: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            cookie_name: "id".into(),
            http_only: true,
            same_site: SameSite::Lax,
            secure: true,
            path: "/".into(),
            domain: None,
            host_prefix: false,
            persistent: false,
            idle_timeout: Duration::from_secs(24 * 3600),
            absolute_timeout: Some(Duration::from_secs(7 * 24 * 3600)),
            touch_after: Duration::from_secs(60),
            signing_keys: Vec::new(),
            token_generator: None,
            max_commit_attempts: 128,
        }
    }
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("cookie_name", &self.effective_cookie_name())
            .field("secure", &self.secure)
            .field("idle_timeout", &self.idle_timeout)
            .field("absolute_timeout", &self.absolute_timeout)
            .field("signing_keys", &self.signing_keys.len())
            .finish_non_exhaustive()
    }
}

impl SessionConfig {
    /// The cookie name as sent, with the `__Host-` prefix when enabled.
    pub fn effective_cookie_name(&self) -> String {
        if self.host_prefix {
            format!("__Host-{}", self.cookie_name)
        } else {
            self.cookie_name.clone()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.cookie_name.is_empty()
            || !self
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Error::Config(format!(
                "cookie name {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                self.cookie_name
            )));
        }
        if self.host_prefix && (!self.secure || self.path != "/" || self.domain.is_some()) {
            return Err(Error::Config(
                "the __Host- prefix needs secure = true, path = \"/\" and no domain".into(),
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(Error::Config("idle_timeout must be above zero".into()));
        }
        if self.max_commit_attempts == 0 {
            return Err(Error::Config(
                "max_commit_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Expiry for a session created at `created_at_ms`, active at `now_ms`.
    fn expiry(&self, created_at_ms: i64, now_ms: i64) -> i64 {
        let idle = now_ms.saturating_add(millis(self.idle_timeout));
        match self.absolute_timeout {
            Some(abs) => idle.min(created_at_ms.saturating_add(millis(abs))),
            None => idle,
        }
    }
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Builds a cookie jar from the values of a request's `Cookie` headers.
/// Pieces that do not parse are skipped.
pub fn jar_from_cookie_headers<'a>(headers: impl IntoIterator<Item = &'a str>) -> CookieJar {
    let mut jar = CookieJar::new();
    for header in headers {
        for cookie in Cookie::split_parse_encoded(header.to_owned()).flatten() {
            jar.add_original(cookie.into_owned());
        }
    }
    jar
}

fn new_token(config: &SessionConfig) -> Result<SessionToken> {
    match &config.token_generator {
        Some(generate) => SessionToken::parse(&generate()),
        None => Ok(SessionToken::generate()),
    }
}

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

    /// The session cookie's value, verified when signing is on.
    fn cookie_token(&self, jar: &CookieJar) -> Option<String> {
        let name = self.config.effective_cookie_name();
        if self.config.signing_keys.is_empty() {
            jar.get(&name).map(|c| c.value().to_owned())
        } else {
            self.config
                .signing_keys
                .iter()
                .find_map(|key| jar.signed(key).get(&name))
                .map(|c| c.value().to_owned())
        }
    }

    /// Starts the session of a request.
    ///
    /// Loads the session named by the cookie if the token is valid, the
    /// signature checks (when signing is on), and the session is live and
    /// within its absolute timeout. Otherwise starts a new session with a
    /// fresh server-generated token: an id the server did not issue is never
    /// adopted. A new session that receives no data is never stored.
    pub async fn start(&self, jar: &CookieJar) -> Result<ActiveSession> {
        let store = self.store();
        let had_cookie = jar.get(&self.config.effective_cookie_name()).is_some();
        let now = now_millis();
        if let Some(raw) = self.cookie_token(jar) {
            match SessionToken::parse(&raw) {
                Ok(token) => {
                    let id = token.id();
                    if let Some(mut session) = store.get(&id).await? {
                        let expiry = self.config.expiry(session.created_at_millis(), now);
                        if expiry <= now {
                            tracing::debug!(%id, "session reached its absolute timeout");
                            store.delete(&id).await?;
                        } else {
                            let moved = expiry - session.expires_at_millis()
                                >= millis(self.config.touch_after);
                            if moved {
                                session.set_expires_at_millis(expiry);
                            }
                            return Ok(ActiveSession::loaded(
                                store,
                                self.config.clone(),
                                token,
                                session,
                                moved,
                            ));
                        }
                    } else {
                        tracing::debug!(%id, "cookie names no live session");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "refused session cookie"),
            }
        }
        let token = new_token(&self.config)?;
        let mut session = Session::new(token.id(), self.config.idle_timeout);
        session.set_expires_at_millis(self.config.expiry(session.created_at_millis(), now));
        Ok(ActiveSession {
            store,
            config: self.config.clone(),
            manager_token: token,
            session,
            state: State::New,
            had_cookie,
            changes: Vec::new(),
            incoming_flash: BTreeMap::new(),
            expiry_moved: false,
            send_cookie: false,
        })
    }
}

type Modifier = Arc<dyn Fn(Option<&[u8]>) -> Result<Vec<u8>> + Send + Sync>;

/// One change a request made, kept so it can be re-applied on a fresh copy
/// after a `Conflict`.
#[derive(Clone)]
enum Change {
    Set(String, Vec<u8>),
    Remove(String),
    Modify(String, Modifier),
    Flash(String, Vec<u8>),
    ConsumeFlash(Vec<String>),
}

impl Change {
    fn apply(&self, session: &mut Session) -> Result<()> {
        match self {
            Change::Set(key, bytes) => {
                session.data_mut().insert(key.clone(), bytes.clone());
            }
            Change::Remove(key) => {
                session.data_mut().remove(key);
            }
            Change::Modify(key, modify) => {
                let next = modify(session.data().get(key).map(Vec::as_slice))?;
                session.data_mut().insert(key.clone(), next);
            }
            Change::Flash(key, bytes) => {
                session.flash_mut().insert(key.clone(), bytes.clone());
            }
            Change::ConsumeFlash(keys) => {
                for key in keys {
                    session.flash_mut().remove(key);
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not stored yet.
    New,
    /// Loaded from (or saved to) the store at this version.
    Loaded { version: u64 },
    /// Loaded, and given a new id: the old record goes at commit.
    Regenerated { old_id: SessionId },
    /// To be deleted at commit (`stored`: whether a record exists).
    Destroyed { stored: Option<SessionId> },
    /// Deleted by someone else while this request ran; nothing more is saved.
    Gone,
}

/// The session of one request: read and change it, then [`commit`](Self::commit).
pub struct ActiveSession {
    store: Arc<dyn SessionInterface>,
    config: Arc<SessionConfig>,
    manager_token: SessionToken,
    session: Session,
    state: State,
    had_cookie: bool,
    changes: Vec<Change>,
    incoming_flash: BTreeMap<String, Vec<u8>>,
    expiry_moved: bool,
    send_cookie: bool,
}

impl fmt::Debug for ActiveSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveSession")
            .field("id", &self.session.id())
            .field("state", &self.state)
            .field("changes", &self.changes.len())
            .finish_non_exhaustive()
    }
}

impl ActiveSession {
    fn loaded(
        store: Arc<dyn SessionInterface>,
        config: Arc<SessionConfig>,
        token: SessionToken,
        mut session: Session,
        expiry_moved: bool,
    ) -> Self {
        let incoming_flash = std::mem::take(session.flash_mut());
        let mut changes = Vec::new();
        if !incoming_flash.is_empty() {
            changes.push(Change::ConsumeFlash(
                incoming_flash.keys().cloned().collect(),
            ));
        }
        let send_cookie = expiry_moved && config.persistent;
        ActiveSession {
            store,
            config,
            manager_token: token,
            state: State::Loaded {
                version: session.version(),
            },
            session,
            had_cookie: true,
            changes,
            incoming_flash,
            expiry_moved,
            send_cookie,
        }
    }

    /// The store id of this session (a hash of the cookie's token; safe to log).
    pub fn id(&self) -> SessionId {
        self.session.id()
    }

    /// The token the cookie carries. Treat it as a password.
    pub fn token(&self) -> &SessionToken {
        &self.manager_token
    }

    /// Whether this request started a new session (nothing loaded).
    pub fn is_new(&self) -> bool {
        matches!(self.state, State::New)
    }

    /// The record as this request sees it, changes included.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Whether a commit would write anything.
    pub fn is_modified(&self) -> bool {
        !self.changes.is_empty()
            || matches!(
                self.state,
                State::Regenerated { .. } | State::Destroyed { .. }
            )
    }

    /// Reads `key` as a `T`; `Ok(None)` when absent.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.session.get(key)
    }

    /// Whether `key` holds a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.session.contains_key(key)
    }

    /// The data keys.
    pub fn keys(&self) -> Vec<String> {
        self.session.keys().map(str::to_owned).collect()
    }

    /// Stores `value` under `key`. Writing the value already there changes nothing.
    pub fn insert<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes = encode_value(key, value)?;
        if self.session.data().get(key) == Some(&bytes) {
            return Ok(());
        }
        self.record(Change::Set(key.to_owned(), bytes))
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        if !self.session.contains_key(key) {
            return false;
        }
        // Applying a removal cannot fail.
        self.record(Change::Remove(key.to_owned())).is_ok()
    }

    /// Read-modify-write of one value: `f` gets the current value (or
    /// `None`) and returns the new one, which is returned too.
    ///
    /// Unlike `get` then `insert`, `f` is run again on the fresh value if
    /// another request saved first, so concurrent increments all count.
    pub fn modify<T, F>(&mut self, key: &str, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> T + Send + Sync + 'static,
    {
        let owned_key = key.to_owned();
        let modifier: Modifier = Arc::new(move |current: Option<&[u8]>| {
            let current = current
                .map(|bytes| decode_value::<T>(&owned_key, bytes))
                .transpose()?;
            encode_value(&owned_key, &f(current))
        });
        self.record(Change::Modify(key.to_owned(), modifier))?;
        self.session
            .get(key)?
            .ok_or_else(|| Error::decode(key, "modified value vanished"))
    }

    /// Sets a flash value: readable with [`get_flash`](Self::get_flash) on
    /// the next request of this session, then gone.
    pub fn flash<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes = encode_value(key, value)?;
        self.record(Change::Flash(key.to_owned(), bytes))
    }

    /// A flash value set by the previous request; it is consumed when this
    /// request commits.
    pub fn get_flash<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.incoming_flash
            .get(key)
            .map(|bytes| decode_value(key, bytes))
            .transpose()
    }

    /// Gives the session a new id and keeps its data; the old record is
    /// deleted at commit. Call it after login (session fixation protection).
    pub fn regenerate(&mut self) -> Result<()> {
        let token = new_token(&self.config)?;
        match self.state {
            State::Loaded { .. } => {
                self.state = State::Regenerated {
                    old_id: self.session.id(),
                }
            }
            State::Destroyed { .. } | State::Gone => return Ok(()),
            State::New | State::Regenerated { .. } => {}
        }
        self.session.set_id(token.id());
        self.manager_token = token;
        self.send_cookie = true;
        Ok(())
    }

    /// Deletes the session at commit and expires the cookie (`Max-Age=0`).
    pub fn destroy(&mut self) {
        let stored = match self.state {
            State::Loaded { .. } => Some(self.session.id()),
            State::Regenerated { old_id } => Some(old_id),
            _ => None,
        };
        self.state = State::Destroyed { stored };
        self.changes.clear();
    }

    fn record(&mut self, change: Change) -> Result<()> {
        change.apply(&mut self.session)?;
        self.changes.push(change);
        Ok(())
    }
}

impl ActiveSession {
    /// Saves what changed and returns the `Set-Cookie` to send, if any.
    ///
    /// - a new session is stored (`create`) only if it received data;
    /// - a loaded session is saved with a compare-and-set `update`; on
    ///   `Conflict` the fresh record is loaded, this request's changes are
    ///   re-applied to it (only the keys it changed; [`modify`](Self::modify)
    ///   closures run again) and the save is retried;
    /// - if the session was deleted meanwhile (`Gone`), nothing is saved and
    ///   the cookie is expired: a slow request never undoes a logout;
    /// - an unchanged session only has its expiry moved (`touch`);
    /// - a destroyed session is deleted and its cookie expired.
    ///
    /// After a commit the handle reflects what is stored; committing again
    /// writes nothing unless something changed since.
    pub async fn commit(&mut self) -> Result<Option<Cookie<'static>>> {
        match self.state {
            State::Gone => Ok(None),
            State::Destroyed { stored } => {
                if let Some(id) = stored {
                    self.store.delete(&id).await?;
                }
                self.state = State::Destroyed { stored: None };
                Ok(self.had_cookie.then(|| self.removal_cookie()))
            }
            State::New => {
                if self.session.is_empty() {
                    return Ok(None);
                }
                self.create_with_fresh_ids().await?;
                Ok(Some(self.session_cookie()?))
            }
            State::Regenerated { old_id } => {
                self.session.set_version(1);
                self.create_with_fresh_ids().await?;
                self.store.delete(&old_id).await?;
                Ok(Some(self.session_cookie()?))
            }
            State::Loaded { version } => {
                if self.changes.is_empty() {
                    if self.expiry_moved {
                        self.expiry_moved = false;
                        let id = self.session.id();
                        if !self.store.touch(&id, self.session.expires_at()).await? {
                            return Ok(self.mark_gone());
                        }
                    }
                    return self.cookie_if_needed();
                }
                self.save_with_retries(version).await
            }
        }
    }

    async fn create_with_fresh_ids(&mut self) -> Result<()> {
        let mut attempts = 0;
        loop {
            match self.store.create(&self.session).await {
                Ok(()) => break,
                Err(Error::IdCollision { id }) if attempts < 3 => {
                    attempts += 1;
                    tracing::warn!(%id, "session id collision; drawing another");
                    let token = new_token(&self.config)?;
                    self.session.set_id(token.id());
                    self.manager_token = token;
                }
                Err(e) => return Err(e),
            }
        }
        self.changes.clear();
        self.state = State::Loaded {
            version: self.session.version(),
        };
        self.send_cookie = false;
        Ok(())
    }

    async fn save_with_retries(&mut self, mut version: u64) -> Result<Option<Cookie<'static>>> {
        let expires_at_ms = self.session.expires_at_millis();
        for _ in 0..self.config.max_commit_attempts {
            match self.store.update(&self.session, version).await? {
                UpdateOutcome::Updated { version } => {
                    self.session.set_version(version);
                    self.state = State::Loaded { version };
                    self.changes.clear();
                    self.expiry_moved = false;
                    return self.cookie_if_needed();
                }
                UpdateOutcome::Gone => return Ok(self.mark_gone()),
                UpdateOutcome::Conflict => {
                    let id = self.session.id();
                    tracing::debug!(%id, version, "save conflicted; re-applying changes");
                    let Some(mut fresh) = self.store.get(&id).await? else {
                        return Ok(self.mark_gone());
                    };
                    for change in &self.changes {
                        change.apply(&mut fresh)?;
                    }
                    fresh.set_expires_at_millis(fresh.expires_at_millis().max(expires_at_ms));
                    version = fresh.version();
                    self.session = fresh;
                }
            }
        }
        Err(Error::Contention {
            id: self.session.id(),
            attempts: self.config.max_commit_attempts,
        })
    }

    fn mark_gone(&mut self) -> Option<Cookie<'static>> {
        tracing::debug!(id = %self.session.id(), "session was deleted meanwhile; not saving");
        self.state = State::Gone;
        self.changes.clear();
        Some(self.removal_cookie())
    }

    fn cookie_if_needed(&mut self) -> Result<Option<Cookie<'static>>> {
        if std::mem::take(&mut self.send_cookie) {
            Ok(Some(self.session_cookie()?))
        } else {
            Ok(None)
        }
    }

    fn base_cookie(&self, value: String) -> Cookie<'static> {
        let config = &self.config;
        let mut cookie = Cookie::build((config.effective_cookie_name(), value))
            .http_only(config.http_only)
            .same_site(config.same_site)
            .secure(config.secure)
            .path(config.path.clone());
        if let Some(domain) = &config.domain {
            cookie = cookie.domain(domain.clone());
        }
        cookie.build()
    }

    fn session_cookie(&self) -> Result<Cookie<'static>> {
        let mut cookie = self.base_cookie(self.manager_token.as_str().to_owned());
        if self.config.persistent {
            cookie.set_max_age(time::Duration::seconds(
                self.session.remaining_seconds().min(i64::MAX as u64) as i64,
            ));
        }
        let Some(key) = self.config.signing_keys.first() else {
            return Ok(cookie);
        };
        let name = cookie.name().to_owned();
        let mut jar = CookieJar::new();
        jar.signed_mut(key).add(cookie);
        jar.get(&name)
            .cloned()
            .ok_or_else(|| Error::Config("signing the session cookie failed".into()))
    }

    fn removal_cookie(&self) -> Cookie<'static> {
        let mut cookie = self.base_cookie(String::new());
        cookie.make_removal();
        cookie
    }
}

//! How the manager names, protects and times sessions.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cookie::{Key, SameSite};

use crate::error::{Error, Result};
use crate::events::EventHook;
use crate::id::SessionToken;

/// Makes session tokens instead of the built-in CSPRNG generator (the seed's
/// `keyGenerator`). What it returns must pass [`SessionToken::parse`].
pub type TokenGenerator = Arc<dyn Fn() -> String + Send + Sync>;

/// How the manager names, protects and times sessions.
///
/// The defaults are what a user of express-session or tower-sessions expects,
/// made safe: cookie `id` (sent as `__Host-id` whenever it is `Secure`),
/// `HttpOnly`, `SameSite=Lax`, `Secure`, path `/`, a browser-session cookie,
/// 24 h idle timeout, 7 days absolute timeout.
#[derive(Clone)]
pub struct SessionConfig {
    /// Cookie name (default `id`). See [`host_prefix`](Self::host_prefix).
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
    /// Send the cookie as `__Host-<name>` whenever it qualifies: `secure`,
    /// path `/` and no domain (default `true`).
    ///
    /// Browsers accept a `__Host-` cookie only from the host itself, so a
    /// sibling or parent subdomain cannot plant a session cookie beside ours
    /// ("cookie tossing"). With plain-http development (`secure = false`),
    /// a path or a domain, the plain name is used.
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
    /// Must be below [`idle_timeout`](Self::idle_timeout) (else
    /// [`Error::Config`](crate::Error::Config)); zero touches on every request.
    pub touch_after: Duration,
    /// HMAC keys for signed cookies: the first signs, all verify (rotation).
    /// A cookie verified by another key than the first is re-issued signed
    /// with the first, so the old key can be retired without logging anyone
    /// out. Empty (the default): cookies are not signed; the token alone is
    /// the 256-bit secret.
    pub signing_keys: Vec<Key>,
    /// A custom token generator; `None` uses [`SessionToken::generate`].
    pub token_generator: Option<TokenGenerator>,
    /// How many times a commit re-loads and re-applies its changes after a
    /// `Conflict` before giving up with [`Error::Contention`] (default 128).
    pub max_commit_attempts: u32,
    /// How long a commit keeps re-reading a record to learn whether a save
    /// whose reply was lost (a backend error or timeout) landed, before it
    /// gives up with that error (default 2 s). A failed re-read is tried
    /// again after 20 ms, then after pauses doubling up to 200 ms, as long
    /// as the next try would start before the deadline. The save is never re-applied
    /// on top of itself either way; see [`ActiveSession::commit`](crate::ActiveSession::commit).
    pub resolve_timeout: Duration,
    /// At most this many live sessions per user (Spring Session's
    /// concurrent-session control; default `None`, no cap). When a commit
    /// binds a session to a user ([`ActiveSession::set_user`](crate::ActiveSession::set_user))
    /// and the user then has more, the others that signed in longest ago
    /// are revoked. The commit lists and revokes after its own write:
    /// two logins at once each see the other, so together they overshoot the
    /// cap by at most one, and only until the later one finishes its revoke.
    /// Needs a store with a user index
    /// ([`SessionInterface::sessions_of`](crate::SessionInterface::sessions_of)).
    pub max_sessions_per_user: Option<usize>,
    /// Where session lifecycle events go (default none); see
    /// [`SessionEvents`](crate::SessionEvents).
    pub events: Option<EventHook>,
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
            host_prefix: true,
            persistent: false,
            idle_timeout: Duration::from_secs(24 * 3600),
            absolute_timeout: Some(Duration::from_secs(7 * 24 * 3600)),
            touch_after: Duration::from_secs(60),
            signing_keys: Vec::new(),
            token_generator: None,
            max_commit_attempts: 128,
            resolve_timeout: Duration::from_secs(2),
            max_sessions_per_user: None,
            events: None,
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
            .field("max_sessions_per_user", &self.max_sessions_per_user)
            .finish_non_exhaustive()
    }
}

impl SessionConfig {
    /// The cookie name as sent: `__Host-` + [`cookie_name`](Self::cookie_name)
    /// when [`host_prefix`](Self::host_prefix) is on and the cookie qualifies.
    pub fn effective_cookie_name(&self) -> Cow<'_, str> {
        if self.uses_host_prefix() {
            Cow::Owned(format!("__Host-{}", self.cookie_name))
        } else {
            Cow::Borrowed(&self.cookie_name)
        }
    }

    fn uses_host_prefix(&self) -> bool {
        self.host_prefix && self.secure && self.path == "/" && self.domain.is_none()
    }

    pub(crate) fn validate(&self) -> Result<()> {
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
        if self.idle_timeout.is_zero() {
            return Err(Error::Config("idle_timeout must be above zero".into()));
        }
        if self.touch_after >= self.idle_timeout {
            // A read moves the expiry by the time since the last write, which
            // reaches touch_after only once the session has expired.
            return Err(Error::Config(format!(
                "touch_after ({:?}) must be below idle_timeout ({:?}): a session \
                 only read would otherwise never have its expiry extended",
                self.touch_after, self.idle_timeout
            )));
        }
        if self.max_sessions_per_user == Some(0) {
            return Err(Error::Config(
                "max_sessions_per_user must be at least 1 (None for no cap)".into(),
            ));
        }
        if self.max_commit_attempts == 0 {
            return Err(Error::Config(
                "max_commit_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Expiry for a session created at `created_at_ms`, active at `now_ms`.
    pub(crate) fn expiry(&self, created_at_ms: i64, now_ms: i64) -> i64 {
        let idle = now_ms.saturating_add(millis(self.idle_timeout));
        match self.absolute_timeout {
            Some(abs) => idle.min(created_at_ms.saturating_add(millis(abs))),
            None => idle,
        }
    }

    pub(crate) fn new_token(&self) -> Result<SessionToken> {
        match &self.token_generator {
            Some(generate) => SessionToken::parse(&generate()),
            None => Ok(SessionToken::generate()),
        }
    }
}

pub(crate) fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

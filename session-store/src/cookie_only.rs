//! Cookie-only sessions: the whole session sealed in its own cookie, no
//! store at all (see [`SessionManager::cookie_only`](crate::SessionManager::cookie_only)).
//!
//! The cookie's value is the session token and the encoded record
//! ([`codec`](crate::codec)), encrypted and authenticated with AES-256-GCM by
//! the `cookie` crate's private jar, which also binds the cookie's name: a
//! value moved to another cookie name does not open. The token gives the
//! session a stable [`SessionId`](crate::SessionId) across requests (for
//! logs) and changes on `regenerate`.

use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use cookie::{Cookie, CookieJar, Key};
use time::OffsetDateTime;

use crate::active::{ActiveSession, State};
use crate::codec;
use crate::config::SessionConfig;
use crate::cookies::{base_cookie, removal_cookie};
use crate::error::{Error, Result};
use crate::id::{SessionId, SessionToken};
use crate::session::{now_millis, Session};
use crate::store::{DeleteOutcome, SessionInterface, UpdateOutcome, MAX_VERSION};

/// Browsers keep a cookie only up to this size, name, value and attributes
/// included (RFC 6265 section 6.1 asks for at least 4096 bytes; the major
/// browsers stop there).
pub const MAX_COOKIE_BYTES: usize = 4096;

/// What tells the token from the record in the sealed value: not in the
/// token alphabet (base64url).
const SEPARATOR: char = '.';

/// The keys cookie-only sessions are sealed with: the first seals, every
/// key opens (rotation).
pub(crate) struct CookieSeal {
    keys: Vec<Key>,
}

/// A session cookie that opened.
pub(crate) struct Opened {
    pub token: SessionToken,
    pub session: Session,
    /// Opened by a key other than the first: re-seal it with the first.
    pub stale_key: bool,
}

impl CookieSeal {
    /// [`Error::Config`] without a key: an unsealed session would be
    /// readable and forgeable by the client.
    pub(crate) fn new(keys: Vec<Key>) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::Config(
                "cookie-only sessions need at least one key to encrypt the cookie".into(),
            ));
        }
        Ok(CookieSeal { keys })
    }

    /// The session the request's cookie holds, if it opens with one of the
    /// keys and decodes. Anything else (absent, oversized, tampered, sealed
    /// with an unknown key, a record this version cannot read) is `None`,
    /// and the request starts a fresh session.
    pub(crate) fn open(&self, name: &str, presented: &str) -> Option<Opened> {
        // Browsers never send more; decrypting a larger value is work an
        // attacker chose for us.
        if presented.len() > MAX_COOKIE_BYTES {
            tracing::debug!(cookie = %name, bytes = presented.len(), "oversized session cookie ignored");
            return None;
        }
        // The private jar reads standard base64; we send it URL-safe.
        let sealed = URL_SAFE_NO_PAD
            .decode(presented)
            .inspect_err(|e| tracing::debug!(error = %e, "session cookie is not a sealed value"))
            .ok()?;
        let mut as_sealed = CookieJar::new();
        as_sealed.add_original(Cookie::new(name.to_owned(), STANDARD.encode(sealed)));
        let (index, plain) = self
            .keys
            .iter()
            .enumerate()
            .find_map(|(index, key)| as_sealed.private(key).get(name).map(|c| (index, c)))?;
        let Some((token, record)) = plain.value().split_once(SEPARATOR) else {
            tracing::debug!("sealed session cookie has no record");
            return None;
        };
        let token = SessionToken::parse(token)
            .inspect_err(|e| tracing::debug!(error = %e, "sealed session cookie has a bad token"))
            .ok()?;
        let bytes = URL_SAFE_NO_PAD
            .decode(record)
            .inspect_err(|e| tracing::debug!(error = %e, "sealed session record is not base64"))
            .ok()?;
        let session = codec::decode(token.id(), &bytes, "session cookie")
            .inspect_err(|e| tracing::warn!(error = %e, "sealed session record does not decode"))
            .ok()?;
        Some(Opened {
            token,
            session,
            stale_key: index > 0,
        })
    }

    /// The cookie carrying `session` (at its version) sealed with the first
    /// key, or [`Error::CookieTooLarge`] when browsers would drop it.
    pub(crate) fn seal(
        &self,
        config: &SessionConfig,
        token: &SessionToken,
        session: &Session,
    ) -> Result<Cookie<'static>> {
        let record = codec::encode(session, session.version())?;
        let value = format!(
            "{}{SEPARATOR}{}",
            token.as_str(),
            URL_SAFE_NO_PAD.encode(record)
        );
        let mut cookie = base_cookie(config, value);
        if config.persistent {
            cookie.set_max_age(time::Duration::seconds(
                session.remaining_seconds().min(i64::MAX as u64) as i64,
            ));
        }
        let name = cookie.name().to_owned();
        let mut jar = CookieJar::new();
        jar.private_mut(&self.keys[0]).add(cookie);
        let mut sealed = jar
            .get(&name)
            .cloned()
            .ok_or_else(|| Error::Config("sealing the session cookie failed".into()))?;
        // The jar writes standard base64, whose '/' and '=' the cookie's
        // percent-encoding would triple, by how many the random nonce
        // happens to produce: a session's cookie would change size from one
        // seal to the next. URL-safe base64 needs no escaping, so the size
        // depends on the session alone.
        let bytes = STANDARD
            .decode(sealed.value())
            .map_err(|e| Error::Config(format!("the sealed session cookie is not base64: {e}")))?;
        sealed.set_value(URL_SAFE_NO_PAD.encode(bytes));
        let size = sealed.encoded().to_string().len();
        if size > MAX_COOKIE_BYTES {
            return Err(Error::CookieTooLarge {
                name,
                size,
                limit: MAX_COOKIE_BYTES,
            });
        }
        Ok(sealed)
    }
}

/// The store a cookie-only manager hands out: there is none. Reads find
/// nothing, writes are [`Error::Unsupported`], `flush`/`clear` have nothing
/// to do (the sessions live in the browsers).
#[derive(Debug)]
pub(crate) struct NoStore;

fn unsupported(operation: &'static str) -> Error {
    Error::Unsupported {
        store: "a cookie-only manager (its sessions live in their cookies)",
        operation,
    }
}

#[async_trait]
impl SessionInterface for NoStore {
    async fn exists(&self, _id: &SessionId) -> Result<bool> {
        Ok(false)
    }
    async fn get(&self, _id: &SessionId) -> Result<Option<Session>> {
        Ok(None)
    }
    async fn set(&self, _session: &Session) -> Result<()> {
        Err(unsupported("set"))
    }
    async fn delete(&self, _id: &SessionId) -> Result<()> {
        Err(unsupported("delete"))
    }
    async fn create(&self, _session: &Session) -> Result<()> {
        Err(unsupported("create"))
    }
    async fn update(&self, _session: &Session, _expected_version: u64) -> Result<UpdateOutcome> {
        Err(unsupported("update"))
    }
    async fn delete_if(&self, _id: &SessionId, _expected_version: u64) -> Result<DeleteOutcome> {
        Err(unsupported("delete_if"))
    }
    async fn touch(&self, _id: &SessionId, _expires_at: OffsetDateTime) -> Result<bool> {
        Err(unsupported("touch"))
    }
    async fn flush(&self) -> Result<u64> {
        Ok(0)
    }
    async fn clear(&self) -> Result<()> {
        Ok(())
    }
    async fn len(&self) -> Result<u64> {
        Ok(0)
    }
}

impl ActiveSession {
    /// `commit` in cookie-only mode: seal what the request sees into the
    /// cookie to send. Nothing to compare-and-set against: the browser
    /// keeps whichever response's cookie arrives last.
    pub(crate) fn commit_to_cookie(
        &mut self,
        seal: &CookieSeal,
    ) -> Result<Option<Cookie<'static>>> {
        let version = match &self.state {
            State::Gone => return Ok(None),
            State::Destroyed { .. } => {
                self.state = State::Destroyed {
                    pending: Vec::new(),
                };
                self.discarded.clear();
                // Once: a second commit has nothing left to say.
                return Ok(
                    std::mem::take(&mut self.had_cookie).then(|| removal_cookie(&self.config))
                );
            }
            State::New if self.session.is_empty() => return Ok(None),
            State::New => self.session.version(),
            State::Loaded { .. } if self.changes.is_empty() && !self.send_cookie => {
                return Ok(None)
            }
            State::Loaded { version }
            | State::Regenerating {
                old_version: version,
                ..
            } => next_version(self.session.id(), *version)?,
        };
        // Sealed on a copy: a cookie too large to send leaves the handle as
        // it was, so the caller can shrink the session and commit again.
        let mut sealed = self.session.clone();
        sealed.set_version(version);
        let expiry = self
            .config
            .expiry(sealed.created_at_millis(), now_millis())
            .max(sealed.expires_at_millis());
        sealed.set_expires_at_millis(expiry);
        let cookie = match seal.seal(&self.config, &self.token, &sealed) {
            Ok(cookie) => cookie,
            // Nothing changed: the cookie is re-sent only to slide the
            // expiry or move to the current key, and the browser's copy
            // still works. (Its size is the same as when it was issued,
            // unless a longer Max-Age tipped it over.)
            Err(Error::CookieTooLarge { size, .. })
                if self.changes.is_empty() && matches!(self.state, State::Loaded { .. }) =>
            {
                tracing::warn!(id = %self.session.id(), size, "a re-issued session cookie would be too large; the browser keeps its copy");
                self.send_cookie = false;
                self.expiry_moved = false;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.session = sealed;
        self.state = State::Loaded { version };
        self.changes.clear();
        self.expiry_moved = false;
        self.send_cookie = false;
        self.had_cookie = true;
        Ok(Some(cookie))
    }
}

fn next_version(id: SessionId, version: u64) -> Result<u64> {
    version
        .checked_add(1)
        .filter(|next| *next <= MAX_VERSION)
        .ok_or(Error::VersionOutOfRange { id, version })
}

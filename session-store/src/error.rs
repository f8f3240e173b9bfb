//! The one error type of every store and of the manager.

use crate::id::SessionId;

/// A boxed error from a backend client (Redis, sqlx, the filesystem, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, session_store::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a session store or the manager.
///
/// Each variant names the input it failed on, so that a log line alone says
/// what happened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A session token (from a cookie or a custom generator) is not of the
    /// accepted alphabet and length. `input` is shown escaped and cut to 64
    /// characters: it came from a client.
    #[error("invalid session token {input:?}: {reason}")]
    InvalidId {
        /// The offending input, escaped and truncated.
        input: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// `create` found a record already stored under this id.
    #[error("session id {id} is already taken")]
    IdCollision {
        /// The id that collided.
        id: SessionId,
    },

    /// A value could not be encoded.
    #[error("could not encode {key:?}: {reason}")]
    Encode {
        /// The data key (or `"record"` for the envelope).
        key: String,
        /// The encoder's message.
        reason: String,
    },

    /// Stored bytes could not be decoded: a corrupt record, an unknown
    /// envelope format, or a value read back as the wrong type.
    #[error("could not decode {key:?}: {reason}")]
    Decode {
        /// The data key, or the record / file the bytes came from.
        key: String,
        /// The decoder's message.
        reason: String,
    },

    /// The backend failed: unreachable, timed out, pool exhausted, I/O error.
    #[error("{store} store: {context}: {source}")]
    Backend {
        /// Which store (`"redis"`, `"postgres"`, `"fs"`, ...).
        store: &'static str,
        /// What was being done and against which address or path.
        context: String,
        /// The client's own error.
        #[source]
        source: BoxError,
    },

    /// The backend could not be reached, so nothing was sent: no connection
    /// could be had from the pool in time, or the connection failed before
    /// the request left. Unlike [`Error::Backend`], the operation certainly
    /// did not happen.
    #[error("{store} store unavailable: {context}: {source}")]
    Unavailable {
        /// Which store (`"redis"`, `"postgres"`, ...).
        store: &'static str,
        /// What was being done and against which address.
        context: String,
        /// The client's own error.
        #[source]
        source: BoxError,
    },

    /// A commit kept conflicting with other saves of the same session and
    /// gave up after `attempts` tries.
    #[error("session {id} kept changing under this request; gave up after {attempts} attempts")]
    Contention {
        /// The contended session.
        id: SessionId,
        /// How many saves were tried.
        attempts: u32,
    },

    /// A save's reply was lost (the backend failed or timed out after the
    /// request was sent) and re-reading the record could not tell whether
    /// it landed: more than [`RECENT_WRITES`](crate::RECENT_WRITES) other
    /// saves followed it. The save is not retried, so it is applied at most
    /// once.
    #[error("the outcome of saving session {id} is unknown: {reason}; it was not retried")]
    OutcomeUnknown {
        /// The session whose save is in doubt.
        id: SessionId,
        /// Why the outcome could not be established.
        reason: String,
    },

    /// A version cannot be stored or incremented: versions live in
    /// `1..=`[`MAX_VERSION`](crate::MAX_VERSION) so that every backend
    /// (SQL `BIGINT` included) holds them exactly.
    #[error("session {id}: version {version} is out of range (1..={max})", max = crate::MAX_VERSION)]
    VersionOutOfRange {
        /// The session.
        id: SessionId,
        /// The refused version.
        version: u64,
    },

    /// The configuration is unusable (a bad table name, a missing key, ...).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A cookie-only session grew too large for its cookie: browsers drop
    /// a cookie over [`MAX_COOKIE_BYTES`](crate::MAX_COOKIE_BYTES) (name,
    /// value and attributes). Nothing was sent; the browser keeps its
    /// previous cookie.
    #[error("session cookie {name:?} would be {size} bytes, over the browsers' limit of {limit}: store less in the session or use a server-side store")]
    CookieTooLarge {
        /// The cookie's name.
        name: String,
        /// The size of the `Set-Cookie` value it would have had.
        size: usize,
        /// The limit it broke.
        limit: usize,
    },

    /// The store cannot do this operation: a store without a user index
    /// asked for [`sessions_of`](crate::SessionInterface::sessions_of), a
    /// cookie-only manager's store asked to write.
    #[error("{operation} is not supported by {store}")]
    Unsupported {
        /// Which store.
        store: &'static str,
        /// The operation refused.
        operation: &'static str,
    },
}

impl Error {
    /// Whether the operation may have been applied although it failed: a
    /// backend error (a timeout, a dropped connection) can come after the
    /// server did the work. Every other error, [`Error::Unavailable`]
    /// included, is definite: nothing was written.
    pub fn may_have_applied(&self) -> bool {
        matches!(self, Error::Backend { .. })
    }

    /// Whether trying again later may succeed: the backend failed or could
    /// not be reached ([`Error::Backend`], [`Error::Unavailable`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Backend { .. } | Error::Unavailable { .. })
    }

    /// Builds an [`Error::Backend`].
    pub fn backend(
        store: &'static str,
        context: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            store,
            context: context.into(),
            source: source.into(),
        }
    }

    /// Builds an [`Error::Decode`]. `key` is written out only here, so a
    /// caller can name the record lazily (`format_args!`) and pay for the
    /// text only when something failed.
    pub fn decode(key: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::Decode {
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Builds an [`Error::InvalidId`], escaping and truncating the input.
    pub(crate) fn invalid_id(input: &str, reason: &'static str) -> Self {
        let input: String = input.chars().take(64).collect();
        Error::InvalidId { input, reason }
    }
}

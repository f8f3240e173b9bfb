//! Small helpers shared by store implementations.

use std::future::Future;
use std::time::Duration;

use crate::error::{BoxError, Error, Result};
use crate::id::SessionId;
use crate::store::MAX_VERSION;

/// Checks that `version` can be stored (`1..=MAX_VERSION`) and returns it as
/// the `i64` SQL stores bind; [`Error::VersionOutOfRange`] otherwise.
pub fn storable_version(id: SessionId, version: u64) -> Result<i64> {
    if (1..=MAX_VERSION).contains(&version) {
        Ok(version as i64)
    } else {
        Err(Error::VersionOutOfRange { id, version })
    }
}

/// The version `update` stores after `expected_version`; refuses to go past
/// [`MAX_VERSION`] (or to follow an impossible version) with
/// [`Error::VersionOutOfRange`] instead of overflowing.
pub fn next_version(id: SessionId, expected_version: u64) -> Result<u64> {
    match expected_version.checked_add(1) {
        Some(next) if next <= MAX_VERSION => Ok(next),
        _ => Err(Error::VersionOutOfRange {
            id,
            version: expected_version,
        }),
    }
}

/// Runs one backend operation within `limit`. A client error or a timeout
/// becomes [`Error::Backend`] naming `store` and `context()` (the operation
/// and the address or path), so a stalled server never hangs a request.
pub async fn timed<T, E, Fut>(
    store: &'static str,
    limit: Duration,
    context: impl FnOnce() -> String,
    operation: Fut,
) -> Result<T>
where
    E: Into<BoxError>,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    match tokio::time::timeout(limit, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::backend(store, context(), e)),
        Err(_) => Err(Error::backend(
            store,
            context(),
            format!("timed out after {limit:?}"),
        )),
    }
}

/// Marks a client error that happened before the request left (no
/// connection could be had): [`timed_unsent_aware`] turns it into
/// [`Error::Unavailable`], which the manager knows wrote nothing.
#[derive(Debug)]
pub struct Unsent(pub BoxError);

impl std::fmt::Display for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Unsent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Like [`timed`], but an error for which `unsent` says the request never
/// left (a pool that gave no connection, a refused connect) becomes
/// [`Error::Unavailable`] instead of [`Error::Backend`]. A timeout stays
/// `Backend`: the request may have been on its way.
pub async fn timed_unsent_aware<T, E, Fut>(
    store: &'static str,
    limit: Duration,
    context: impl FnOnce() -> String,
    unsent: impl FnOnce(&E) -> bool,
    operation: Fut,
) -> Result<T>
where
    E: Into<BoxError>,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    match tokio::time::timeout(limit, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if unsent(&e) => Err(Error::Unavailable {
            store,
            context: context(),
            source: e.into(),
        }),
        Ok(Err(e)) => Err(Error::backend(store, context(), e)),
        Err(_) => Err(Error::backend(
            store,
            context(),
            format!("timed out after {limit:?}"),
        )),
    }
}

/// Whether `name` is a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`, at
/// most 63 bytes) that can be put into SQL text without quoting; anything
/// else is [`Error::Config`]. SQL stores check table and schema names with
/// it before building a single statement.
pub fn check_sql_identifier(what: &str, name: &str) -> Result<()> {
    let mut bytes = name.bytes();
    let plain = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 63;
    if plain {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {name:?} is not a plain SQL identifier (letters, digits and '_', not starting with a digit, at most 63 bytes)"
        )))
    }
}

/// Redacts the password of a `scheme://user:password@host/...` URL for
/// error messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for good in ["sessions", "_t", "T1_x"] {
            assert!(check_sql_identifier("table", good).is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "1abc",
            "a-b",
            "a;drop table x",
            "\"q\"",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(
                matches!(check_sql_identifier("table", bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(redact_url("redis://:pw@h"), "redis://@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[tokio::test]
    async fn errors_before_sending_are_unavailable_and_definite() {
        let refused = async { Err::<(), BoxError>(Box::new(Unsent("pool timed out".into()))) };
        let err = timed_unsent_aware(
            "x",
            Duration::from_secs(1),
            || "op".into(),
            |e: &BoxError| e.is::<Unsent>(),
            refused,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert!(!err.may_have_applied());
        let sent = async { Err::<(), BoxError>("connection reset".into()) };
        let err = timed_unsent_aware(
            "x",
            Duration::from_secs(1),
            || "op".into(),
            |e: &BoxError| e.is::<Unsent>(),
            sent,
        )
        .await
        .unwrap_err();
        assert!(err.may_have_applied(), "{err}");
        let never = std::future::pending::<std::result::Result<(), BoxError>>();
        let err = timed_unsent_aware(
            "x",
            Duration::from_millis(5),
            || "op".into(),
            |_| true,
            never,
        )
        .await
        .unwrap_err();
        assert!(
            err.may_have_applied(),
            "a timeout may have been sent: {err}"
        );
    }

    #[tokio::test]
    async fn timeouts_become_backend_errors() {
        let never = std::future::pending::<std::result::Result<(), std::io::Error>>();
        let err = timed(
            "x",
            Duration::from_millis(10),
            || "op at here".into(),
            never,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("op at here"), "{err}");
        assert!(err.to_string().contains("timed out"), "{err}");
    }
}

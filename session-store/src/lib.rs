//! # session-store
//!
//! The contract of server-side session stores ([`SessionInterface`]), the
//! session record ([`Session`]), the id types ([`SessionToken`] in the
//! cookie, [`SessionId`] in the store), the framework-agnostic
//! [`SessionManager`] and, behind the `conformance` feature, the conformance
//! suite every store must pass.
#![warn(missing_docs)]

mod active;
pub mod backend;
mod changes;
pub mod codec;
mod commit;
mod config;
mod cookie_only;
mod cookies;
mod error;
mod events;
mod handle;
mod id;
mod manager;
mod session;
mod store;
mod users;
mod values;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use active::ActiveSession;
pub use async_trait::async_trait;
pub use config::{SessionConfig, TokenGenerator};
pub use cookie;
pub use cookie_only::MAX_COOKIE_BYTES;
pub use cookies::{jar_from_cookie_headers, session_cookie_value, session_jar_from_cookie_headers};
pub use error::{BoxError, Error, Result};
pub use events::{EventHook, SessionEvent, SessionEvents, EVENT_QUEUE};
pub use id::{SessionId, SessionToken, MAX_TOKEN_LEN, MIN_TOKEN_LEN};
pub use manager::SessionManager;
pub use session::{
    decode_value, encode_value, from_unix_millis, now_millis, unix_millis, Session, UserBinding,
    MAX_USER_KEY_LEN, MAX_USER_METADATA_ENTRIES, MAX_USER_METADATA_LEN, RECENT_WRITES,
};
pub use store::{DeleteOutcome, FlushReport, SessionInterface, UpdateOutcome, MAX_VERSION};
pub use time;
pub use users::UserSession;

/// What [`session_handle_methods!`] names; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
}

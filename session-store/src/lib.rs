//! # session-store
//!
//! The contract of server-side session stores ([`SessionInterface`]), the
//! session record ([`Session`]), the id types ([`SessionToken`] in the
//! cookie, [`SessionId`] in the store), the framework-agnostic
//! [`SessionManager`] and, behind the `conformance` feature, the conformance
//! suite every store must pass.
#![warn(missing_docs)]

pub mod backend;
pub mod codec;
mod error;
mod id;
mod manager;
mod session;
mod store;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use async_trait::async_trait;
pub use cookie;
pub use error::{BoxError, Error, Result};
pub use id::{SessionId, SessionToken, MAX_TOKEN_LEN, MIN_TOKEN_LEN};
pub use manager::{
    jar_from_cookie_headers, ActiveSession, SessionConfig, SessionManager, TokenGenerator,
};
pub use session::{
    decode_value, encode_value, from_unix_millis, now_millis, unix_millis, Session, RECENT_WRITES,
};
pub use store::{DeleteOutcome, SessionInterface, UpdateOutcome, MAX_VERSION};
pub use time;

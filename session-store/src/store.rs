//! The store contract.

use std::fmt;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::session::Session;

/// What [`SessionInterface::flush_reporting`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// How many expired records were deleted (as `flush` returns).
    pub deleted: u64,
    /// Those the store can name, with the user each was bound to; may be
    /// fewer than `deleted`.
    pub expired: Vec<(SessionId, Option<String>)>,
}

/// What a compare-and-set [`SessionInterface::update`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Saved; the record is now at `version` (the expected version + 1).
    Updated {
        /// The version now stored.
        version: u64,
    },
    /// The record is live but at another version: someone saved first.
    /// Nothing was written.
    Conflict,
    /// The record was deleted or has expired. Nothing was written: a save
    /// never brings a destroyed session back.
    Gone,
}

/// What a compare-and-delete [`SessionInterface::delete_if`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The record was live at the expected version and is now deleted.
    Deleted,
    /// The record is live but at another version: someone saved first.
    /// Nothing was deleted.
    Conflict,
    /// The record was already deleted or has expired (an expired record may
    /// be deleted now).
    Gone,
}

/// The highest version a record can hold (`i64::MAX`, so that every
/// backend, SQL `BIGINT` included, keeps versions exactly).
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// The operations every session store provides.
///
/// The trait is object safe: a store can live behind
/// `Arc<dyn SessionInterface>` and be swapped at runtime
/// ([`SessionManager::set_operations`](crate::SessionManager::set_operations)).
///
/// A session is *live* when it is stored and its `expires_at` is in the
/// future; *expired* when it is stored with an `expires_at` at or before now.
/// Each store is its own namespace (a key prefix, a table, a directory).
///
/// **Whose clock.** "Now" is the store's clock: the server's for stores on
/// a shared server (Redis `TIME`, PostgreSQL `clock_timestamp()`), so that
/// app servers whose clocks disagree still agree on what has expired; the
/// process's for in-process stores (memory, SQLite, files). Every operation
/// of one store judges expiry by the same clock.
///
/// **Versions** live in `1..=`[`MAX_VERSION`]. `set` and `create` refuse a
/// session whose version is outside it, and `update` refuses to go past it,
/// with [`Error::VersionOutOfRange`](crate::Error::VersionOutOfRange);
/// nothing is written then.
///
/// **Expiry moves forward only.** `update` and `touch` never make a stored
/// expiry earlier: a slow request that computed its expiry before a faster
/// one extended the session does not cut the session short. `set` stores
/// exactly what it is given (the one explicit way to shorten).
///
/// Every contract sentence below is checked by the conformance suite
/// (feature `conformance`).
#[async_trait]
pub trait SessionInterface: Send + Sync + fmt::Debug {
    /// Whether a record is stored under `id`, live or expired but not yet
    /// flushed. Used to check id collisions. Stores that drop expired records
    /// themselves (Redis) answer `false` once that happened.
    async fn exists(&self, id: &SessionId) -> Result<bool>;

    /// Same contract as [`exists`](Self::exists); kept for users porting from
    /// the JavaScript `SessionInterface`.
    async fn has(&self, id: &SessionId) -> Result<bool> {
        self.exists(id).await
    }

    /// Whether a record is stored under `id` and not expired.
    async fn is_valid(&self, id: &SessionId) -> Result<bool> {
        Ok(self.get(id).await?.is_some())
    }

    /// The session stored under `id`; `None` when it is missing or expired.
    /// Never returns an expired session.
    async fn get(&self, id: &SessionId) -> Result<Option<Session>>;

    /// Upserts `session` unconditionally, with its own `version()`,
    /// `expires_at()` (earlier or later than the stored one) and write ids.
    /// Prefer [`create`](Self::create) and [`update`](Self::update), which
    /// cannot lose concurrent writes.
    async fn set(&self, session: &Session) -> Result<()>;

    /// Removes the record under `id`. Idempotent: deleting a missing record
    /// is `Ok`.
    async fn delete(&self, id: &SessionId) -> Result<()>;

    /// Inserts `session` (with its own `version()`) only if nothing is stored
    /// under its id, live or expired; otherwise
    /// [`Error::IdCollision`](crate::Error::IdCollision) and the stored record
    /// is left untouched.
    async fn create(&self, session: &Session) -> Result<()>;

    /// Compare-and-set: stores `session` (data, flash, write ids: the whole
    /// record, replacing the old one) at version `expected_version + 1` if the
    /// stored record is live and at `expected_version`
    /// ([`UpdateOutcome::Updated`]); [`UpdateOutcome::Conflict`] if it is live
    /// at another version; [`UpdateOutcome::Gone`] if it is missing or
    /// expired. Only `Updated` writes anything. The stored expiry becomes the
    /// later of the stored one and `session.expires_at()`.
    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome>;

    /// Compare-and-delete: deletes the record under `id` if it is live and at
    /// `expected_version` ([`DeleteOutcome::Deleted`]);
    /// [`DeleteOutcome::Conflict`] and nothing deleted if it is live at
    /// another version; [`DeleteOutcome::Gone`] if it is missing or expired.
    ///
    /// Regeneration retires the old id with it, so that a login racing a
    /// logout cannot bring the logged-out session back, and a login racing a
    /// save cannot drop that save.
    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome>;

    /// Moves the expiry of a live session to `expires_at` if that is later
    /// than the stored expiry (never earlier), leaves its data, write ids and
    /// version alone, and returns `true`. Returns `false` and changes nothing
    /// when the session is missing or expired: touch never revives.
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool>;

    /// Deletes expired records and returns how many it deleted. Stores whose
    /// backend expires records itself may return 0. A record extended while
    /// `flush` runs is not deleted, and `flush` does not stop before every
    /// record that was expired when it started is gone, however many other
    /// writers delete or extend records meanwhile.
    async fn flush(&self) -> Result<u64>;

    /// [`flush`](Self::flush), saying which records it deleted, for the
    /// manager's [`SessionEvent::Expired`](crate::SessionEvent::Expired)
    /// events. The default runs `flush` and names none.
    async fn flush_reporting(&self) -> Result<FlushReport> {
        Ok(FlushReport {
            deleted: self.flush().await?,
            expired: Vec::new(),
        })
    }

    /// Deletes every session of this store's namespace, and nothing outside
    /// it (not even a namespace whose prefix starts with this one's). It does
    /// not stop early when other writers delete records meanwhile.
    async fn clear(&self) -> Result<()>;

    /// How many live sessions this store's namespace holds (never counting
    /// expired records, or another namespace's).
    async fn len(&self) -> Result<u64>;

    /// Whether this store's namespace holds no live session.
    async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// The live sessions of this namespace bound to `user_key`
    /// ([`Session::user_key`]), in no particular order: never an expired
    /// one, never one bound to another user, however the keys compare
    /// (`ada` does not find `ada2`).
    ///
    /// **The user index.** A store that supports it keeps every record
    /// findable by the user key it carries, in the same atomic step as the
    /// write: after `set`, `create` or `update` the record is listed under
    /// its user key and no longer under a previous one; after `delete`,
    /// `delete_if` or `clear` it is listed nowhere. An index entry may
    /// outlive its record: an expired record's until the next `flush` at
    /// most; a deleted record's, on a store that keeps record and index
    /// apart (as Redis does), when the delete was cut short between the two
    /// or raced a write of the same id, until the next `flush` after the
    /// record would have expired. It never
    /// makes `sessions_of` or `revoke_user` act on a record that is not
    /// bound to that user now.
    ///
    /// The default answers [`Error::Unsupported`]: the manager's user
    /// features then fail with it, and the conformance suite skips its
    /// user-index cases for the store (visibly).
    async fn sessions_of(&self, user_key: &str) -> Result<Vec<Session>> {
        let _ = user_key;
        Err(Error::Unsupported {
            store: "this store",
            operation: "sessions_of",
        })
    }

    /// Deletes every record of this namespace bound to `user_key` (live or
    /// expired) except the one under `except`, and returns the ids deleted.
    ///
    /// A revoked record stays deleted: a later `update` of it is `Gone`,
    /// `touch` is `false`, as after any delete, so a request in flight
    /// cannot bring it back. A record bound to the user after the call
    /// started (a login finishing meanwhile) may survive it.
    ///
    /// The default answers [`Error::Unsupported`] (see
    /// [`sessions_of`](Self::sessions_of)).
    async fn revoke_user(
        &self,
        user_key: &str,
        except: Option<&SessionId>,
    ) -> Result<Vec<SessionId>> {
        let _ = (user_key, except);
        Err(Error::Unsupported {
            store: "this store",
            operation: "revoke_user",
        })
    }
}

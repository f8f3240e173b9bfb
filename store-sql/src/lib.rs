//! # session-store-sql
//!
//! The engine the SQL session stores share (`session-store-sqlite`,
//! `session-store-postgres`, `session-store-mysql`). Each of them is a
//! [`Dialect`]: a table of its SQL [`Statements`], plus the few steps its
//! database needs done its own way. [`SqlStore`] does the rest the same way
//! for all three:
//!
//! - the batch loops of `flush` and `clear`, which stop only at a batch that
//!   *finds* no rows (a short batch proves nothing: others may have deleted
//!   rows it found); [`Batches`] says how a dialect finds and deletes one;
//! - the bookkeeping of migrations: one table [`MIGRATIONS_TABLE`] per
//!   database (or schema), a row per session table and version, the
//!   versioned DDL of [`Dialect::MIGRATIONS`], and the adoption of the
//!   earlier `<table>_migrations` layout where a dialect had one;
//! - identifier checks and name limits ([`check_table_name`]);
//! - the user index: a nullable, indexed `user_key` column that `set`,
//!   `create` and `update` write from the record in the same statement as
//!   the record, so the index never disagrees with the rows and a deleted
//!   or flushed row leaves no entry behind; `sessions_of` is one indexed
//!   `SELECT` (a row that does not decode is skipped with a warning), and
//!   [`Dialect::revoke_user`] deletes a user's rows and answers their ids;
//! - decoding rows into sessions (the `expires_at` and `version` columns
//!   are authoritative; a version outside `1..=MAX_VERSION` is
//!   `Error::Decode`) and compare-and-set results into `UpdateOutcome` and
//!   `DeleteOutcome` ([`Judged`]);
//! - version bounds (`backend::storable_version`, `backend::next_version`)
//!   and error mapping: every error names the store, the operation, the
//!   table and where the database is, and a pool that gave no connection is
//!   `Error::Unavailable` (nothing was sent).
//!
//! What each dialect does its own way:
//!
//! | | SQLite | PostgreSQL | MySQL/MariaDB |
//! | --- | --- | --- | --- |
//! | connections ([`Connections`]) | one writer behind a lock, beside a reader pool | a pool | a pool |
//! | clock for reads and the `flush` cutoff ([`Clock`]) | the app's (the database is a local file) | the server's | the server's |
//! | `update`, `delete_if`, `touch` | the write, under SQLite's write lock, reads `'now'` itself; a miss is explained by a second look under the same lock | one statement: a CTE locks the row, a level above judges it by `clock_timestamp()`, and the write runs only if that judgement passed; a miss is explained by a second read | one `UPDATE`/`DELETE` whose `WHERE` reads `SYSDATE(3)` once InnoDB holds the row; a miss is explained by a second read |
//! | a `flush`/`clear` batch ([`Batches`]) | one `DELETE`, holding the write lock throughout | one statement answering rows found and deleted | `SELECT` the ids, then `DELETE` them |
//! | `revoke_user` | one `DELETE … RETURNING id`, under the write lock | one `DELETE … RETURNING id` | `SELECT` the ids, then a transaction per batch: lock them (`FOR UPDATE`, by primary key), `DELETE` those locked |
//! | `user_key` column | `TEXT` (binary collation), partial index | `text COLLATE "C"`, partial index | `VARBINARY(256)`, index |
//! | migrations lock | `BEGIN IMMEDIATE` | `pg_advisory_xact_lock` | `GET_LOCK` |
//! | earlier layout adopted | yes | yes | none existed |
//!
//! A store crate wraps its `SqlStore<Dialect>` in its own public type (so
//! its constructors and configuration stay its own) and forwards
//! `SessionInterface` to it with [`session_interface!`].
#![warn(missing_docs)]

mod connections;
mod deadlock;
mod dialect;
mod engine;

pub use connections::{pool_options, Connection, Connections, PING_AFTER_IDLE};
pub use deadlock::{DeadlockRetry, DEADLOCK_ATTEMPTS};
pub use dialect::{
    Batches, Clock, Dialect, Judged, LegacyLayout, MigrationStatements, Migrations, Statements,
    Update,
};
pub use engine::{lazy_pool, Setup, SqlStore, MIGRATION_TIMEOUT};
pub use sqlx;

use session_store::backend::check_sql_identifier;
use session_store::{Error, Result};

/// The table, shared by every store in one database (PostgreSQL: one
/// schema), that records which migrations ran on which session table
/// (`table_name`, `version`, `applied_at`). Like the index name
/// `<table>$expires_at`, it holds a `$`, which no table name may, so it can
/// never be, or be taken by, another store's session table.
pub const MIGRATIONS_TABLE: &str = "session_store$migrations";

/// Suffix of the expiry index's name, `<table>$expires_at`.
pub const INDEX_SUFFIX: &str = "$expires_at";

/// Suffix of the user index's name, `<table>$user_key` (`{user_index}` in
/// [`Migrations`]), on the nullable `user_key` column that every write
/// fills from the record in the same statement. No longer than
/// [`INDEX_SUFFIX`], so the limit [`max_table_name_len`] keeps it whole too.
pub const USER_INDEX_SUFFIX: &str = "$user_key";

const _: () = assert!(USER_INDEX_SUFFIX.len() <= INDEX_SUFFIX.len());

/// Rows deleted per statement in `flush` and `clear`, so no statement holds
/// locks for long.
pub const DELETE_BATCH: usize = 1000;

/// The longest table name whose index name `<table>$expires_at` fits whole
/// in an identifier of `identifier_limit` bytes (cut short, it could name
/// the table itself).
pub const fn max_table_name_len(identifier_limit: usize) -> usize {
    identifier_limit - INDEX_SUFFIX.len()
}

/// Checks that `table` is a plain SQL identifier and, for a database that
/// cuts identifiers to `identifier_limit` bytes (named `database` in the
/// error), at most [`max_table_name_len`] bytes; [`Error::Config`] otherwise.
pub fn check_table_name(
    table: &str,
    database: &str,
    identifier_limit: Option<usize>,
) -> Result<()> {
    check_sql_identifier("table name", table)?;
    match identifier_limit {
        Some(limit) if table.len() > max_table_name_len(limit) => Err(Error::Config(format!(
            "table name {table:?} is {} bytes; {database} session tables are limited to {} bytes so that the index name {table}{INDEX_SUFFIX} fits {database}'s {limit}-byte identifiers",
            table.len(),
            max_table_name_len(limit),
        ))),
        _ => Ok(()),
    }
}

/// Implements `SessionInterface` and `Debug` for a store type by forwarding
/// to its [`SqlStore`] field: `session_interface!(PostgresStore => engine);`.
#[macro_export]
macro_rules! session_interface {
    ($store:ty => $engine:ident) => {
        #[$crate::__private::async_trait]
        impl $crate::__private::SessionInterface for $store {
            async fn exists(
                &self,
                id: &$crate::__private::SessionId,
            ) -> $crate::__private::Result<bool> {
                self.$engine.exists(id).await
            }

            async fn get(
                &self,
                id: &$crate::__private::SessionId,
            ) -> $crate::__private::Result<Option<$crate::__private::Session>> {
                self.$engine.get(id).await
            }

            async fn set(
                &self,
                session: &$crate::__private::Session,
            ) -> $crate::__private::Result<()> {
                self.$engine.set(session).await
            }

            async fn delete(
                &self,
                id: &$crate::__private::SessionId,
            ) -> $crate::__private::Result<()> {
                self.$engine.delete(id).await
            }

            async fn create(
                &self,
                session: &$crate::__private::Session,
            ) -> $crate::__private::Result<()> {
                self.$engine.create(session).await
            }

            async fn update(
                &self,
                session: &$crate::__private::Session,
                expected_version: u64,
            ) -> $crate::__private::Result<$crate::__private::UpdateOutcome> {
                self.$engine.update(session, expected_version).await
            }

            async fn delete_if(
                &self,
                id: &$crate::__private::SessionId,
                expected_version: u64,
            ) -> $crate::__private::Result<$crate::__private::DeleteOutcome> {
                self.$engine.delete_if(id, expected_version).await
            }

            async fn touch(
                &self,
                id: &$crate::__private::SessionId,
                expires_at: $crate::__private::OffsetDateTime,
            ) -> $crate::__private::Result<bool> {
                self.$engine.touch(id, expires_at).await
            }

            async fn flush(&self) -> $crate::__private::Result<u64> {
                self.$engine.flush().await
            }

            async fn clear(&self) -> $crate::__private::Result<()> {
                self.$engine.clear().await
            }

            async fn len(&self) -> $crate::__private::Result<u64> {
                self.$engine.len().await
            }

            async fn sessions_of(
                &self,
                user_key: &str,
            ) -> $crate::__private::Result<::std::vec::Vec<$crate::__private::Session>> {
                self.$engine.sessions_of(user_key).await
            }

            async fn revoke_user(
                &self,
                user_key: &str,
                except: ::std::option::Option<&$crate::__private::SessionId>,
            ) -> $crate::__private::Result<::std::vec::Vec<$crate::__private::SessionId>> {
                self.$engine.revoke_user(user_key, except).await
            }
        }

        impl ::std::fmt::Debug for $store {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($store))
                    .field("location", &self.$engine.location())
                    .field("table", &self.$engine.table())
                    .finish_non_exhaustive()
            }
        }
    };
}

/// What [`session_interface!`] expands to refers to, whatever the calling
/// crate imports.
#[doc(hidden)]
pub mod __private {
    pub use session_store::time::OffsetDateTime;
    pub use session_store::{
        async_trait, DeleteOutcome, Result, Session, SessionId, SessionInterface, UpdateOutcome,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use session_store::backend::storable_version;
    use session_store::{DeleteOutcome, SessionToken, UpdateOutcome, MAX_VERSION};

    #[test]
    fn table_names_are_identifiers_within_the_limit() {
        assert!(check_table_name("sessions", "X", None).is_ok());
        assert!(matches!(
            check_table_name("a;b", "X", None),
            Err(Error::Config(_))
        ));
        let longest = "t".repeat(max_table_name_len(63));
        assert_eq!(longest.len() + INDEX_SUFFIX.len(), 63);
        assert!(check_table_name(&longest, "PostgreSQL", Some(63)).is_ok());
        let over = format!("{longest}u");
        match check_table_name(&over, "PostgreSQL", Some(63)) {
            Err(Error::Config(message)) => {
                assert!(message.contains(&over), "{message}");
                assert!(message.contains("52"), "{message}");
            }
            other => panic!("{over:?} was accepted: {other:?}"),
        }
    }

    #[test]
    fn judgements_decode_into_outcomes() {
        let done = Judged {
            live: true,
            done: true,
        };
        let missed = Judged {
            live: true,
            done: false,
        };
        let gone = Judged {
            live: false,
            done: false,
        };
        assert_eq!(
            done.update_outcome(7),
            UpdateOutcome::Updated { version: 7 }
        );
        assert_eq!(missed.update_outcome(7), UpdateOutcome::Conflict);
        assert_eq!(gone.update_outcome(7), UpdateOutcome::Gone);
        assert_eq!(done.delete_outcome(), DeleteOutcome::Deleted);
        assert_eq!(missed.delete_outcome(), DeleteOutcome::Conflict);
        assert_eq!(gone.delete_outcome(), DeleteOutcome::Gone);
    }

    #[test]
    fn stored_versions_outside_the_range_are_decode_errors() {
        let id = SessionToken::generate().id();
        let session = session_store::Session::new(id, std::time::Duration::from_secs(60));
        let record = session_store::codec::encode(&session, 1).unwrap();
        for version in [i64::MIN, -1, 0] {
            assert!(
                matches!(
                    engine::decode_session(id, record.clone(), 5, version, "row"),
                    Err(Error::Decode { .. })
                ),
                "{version}"
            );
        }
        let max = storable_version(id, MAX_VERSION).unwrap();
        let decoded = engine::decode_session(id, record, 5, max, "row").unwrap();
        assert_eq!(decoded.version(), MAX_VERSION);
        assert_eq!(decoded.expires_at_millis(), 5);
    }
}

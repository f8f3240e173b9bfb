//! What a dialect supplies: its statements and the steps it takes its own way.

use async_trait::async_trait;
use session_store::{DeleteOutcome, Result, UpdateOutcome};
use sqlx::query::Query;
use sqlx::Database;

use crate::SqlStore;

/// Versioned DDL: each step runs once, in order, recorded in
/// [`MIGRATIONS_TABLE`](crate::MIGRATIONS_TABLE). In a statement `{t}`
/// stands for the table as written into SQL, `{index}` for the quoted name
/// of its expiry index, `<table>$expires_at`, and `{user_index}` for the
/// quoted name of its user index, `<table>$user_key`.
pub type Migrations = &'static [(i64, &'static [&'static str])];

/// The clock that judges expiry where no row lock is involved: in `get`,
/// `len` and the cutoff of `flush`.
pub enum Clock {
    /// This process's clock, bound as the last parameter of `get` and `len`:
    /// for a database in a local file, with no server clock to defer to.
    App,
    /// The database server's, read by `get` and `len` themselves; `now` is a
    /// statement answering it in Unix milliseconds, `flush`'s cutoff. App
    /// servers whose clocks disagree still agree on what has expired.
    Server {
        /// `SELECT` the server's clock in Unix milliseconds.
        now: String,
    },
}

/// How a dialect deletes one batch of `flush` (which binds its cutoff
/// first) or `clear` (which deletes every row). The loop around them stops
/// at the first batch that finds no rows, never at a short one.
pub enum Batches {
    /// One statement that deletes a batch and answers two counts, the rows
    /// it found and the rows it deleted: rows found may be deleted by others
    /// meanwhile. A `flush` statement must check the expiry again on each
    /// row it deletes, so a row extended while it waited for the row's lock
    /// is spared.
    Counted {
        /// `flush`'s statement, taking the cutoff.
        flush: String,
        /// `clear`'s statement.
        clear: String,
    },
    /// One `DELETE` that holds the database's write lock from finding its
    /// rows to deleting them, so no other writer can delete a row in between:
    /// the rows it deleted are the rows it found.
    Locked {
        /// `flush`'s statement, taking the cutoff.
        flush: String,
        /// `clear`'s statement.
        clear: String,
    },
    /// A `SELECT` of at most [`DELETE_BATCH`](crate::DELETE_BATCH) ids, then
    /// a `DELETE` binding exactly that many ids (a short batch repeats its
    /// last, so it is one prepared statement). `flush`'s `DELETE` repeats
    /// the expiry condition, which the database checks on the row it locked.
    FoundThenDeleted {
        /// `flush`'s `SELECT`, taking the cutoff.
        flush_find: String,
        /// `flush`'s `DELETE`, taking the cutoff, then the ids.
        flush_delete: String,
        /// `clear`'s `SELECT`.
        clear_find: String,
        /// `clear`'s `DELETE`, taking the ids.
        clear_delete: String,
    },
}

/// The statements that keep [`MIGRATIONS_TABLE`](crate::MIGRATIONS_TABLE).
pub struct MigrationStatements {
    /// Creates the table if it is missing.
    pub create_table: String,
    /// Takes a table's key; answers the highest version recorded for it (0
    /// for none).
    pub recorded: String,
    /// Takes a table's key, a version and the time it was applied.
    pub record: String,
}

/// A dialect's statements for what every SQL store does alike, each on the
/// table `id` (the session id), `record`, `expires_at` (Unix ms), `version`
/// and `user_key` (the record's [`Session::user_key`], NULL for a session
/// bound to no user). Parameters are bound in the order listed; a user key
/// is bound by [`Dialect::bind_user_key`].
///
/// [`Session::user_key`]: session_store::Session::user_key
pub struct Statements {
    /// Takes the id; answers whether a row (live or not) has it.
    pub exists: String,
    /// Takes the id (and with [`Clock::App`], now); answers `record`,
    /// `expires_at` and `version` of the row if it is live.
    pub get: String,
    /// Takes id, record, expires_at, version, user_key; inserts or replaces
    /// the row.
    pub set: String,
    /// Takes the id; deletes its row.
    pub delete: String,
    /// Takes id, record, expires_at, version, user_key; inserts the row
    /// unless the id is taken (then it affects no row, or fails as a unique
    /// violation).
    pub create: String,
    /// Takes nothing (with [`Clock::App`], now); counts live rows.
    pub len: String,
    /// Takes a user key (with [`Clock::App`], then now); answers `id`,
    /// `record`, `expires_at` and `version` of every live row bound to it,
    /// found through the user index.
    pub sessions_of: String,
    /// The clock of `get`, `len` and `flush`.
    pub clock: Clock,
    /// The batches of `flush` and `clear`.
    pub batches: Batches,
    /// The migrations' bookkeeping.
    pub migrations: MigrationStatements,
    /// The earlier layout to adopt, for a dialect that had one.
    pub legacy: Option<LegacyLayout>,
}

/// Where a dialect's earlier layout kept a table's migration record, and
/// how to adopt it: the record moves to
/// [`MIGRATIONS_TABLE`](crate::MIGRATIONS_TABLE), its table is dropped
/// (freeing the name for a store that wants it), and the expiry index is
/// given its new name; the sessions stay.
pub struct LegacyLayout {
    /// The record table `<table>_migrations` (columns `version` and
    /// `applied_at`), as written into SQL and as bound to `columns`.
    pub record_table: String,
    /// Takes the record table; answers its column names, sorted. A table
    /// of that name is taken for a record only by its shape: it may as well
    /// be the session table of a store named `<table>_migrations`, which is
    /// left alone.
    pub columns: String,
    /// The session table as the catalog queries below take it.
    pub table_ref: String,
    /// Takes the table; answers whether it exists. Without it the record is
    /// stale (the table was dropped by hand) and is only dropped.
    pub table_exists: String,
    /// Takes the table's key; copies the record's rows into
    /// [`MIGRATIONS_TABLE`](crate::MIGRATIONS_TABLE), skipping rows already
    /// there.
    pub copy: String,
    /// The earlier name of the expiry index, as the catalog has it.
    pub old_index: String,
    /// Takes the table and the old index name; answers the old index as
    /// written into SQL if it is one of this table's own indexes.
    pub find_old_index: String,
    /// What becomes of the old index: `{old}` stands for it, `{index}` for
    /// the new name (the engine then creates the new index if it is still
    /// missing).
    pub replace_old_index: &'static str,
}

/// What a compare-and-set `update` writes, bound as a dialect needs.
pub struct Update<'a> {
    /// The session id.
    pub id: &'a [u8],
    /// The encoded record, at `version`.
    pub record: &'a [u8],
    /// The new expiry (Unix ms); the stored one never moves earlier.
    pub expires_at: i64,
    /// The version stored on success.
    pub version: i64,
    /// The version the row must hold.
    pub expected: i64,
    /// The record's user key, written to `user_key` in the same statement.
    pub user_key: Option<&'a str>,
}

/// What a compare-and-set write found and did: whether the record was live
/// (by the clock read once its lock was held) and whether the write applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judged {
    /// The record was there and live. For a write that did not apply:
    /// live at a version other than the expected one (a conflict); a record
    /// found at the expected version only after the write missed was
    /// stored again in between, and counts as gone.
    pub live: bool,
    /// The write applied.
    pub done: bool,
}

impl Judged {
    /// The write applied (so the record was live).
    pub const DONE: Judged = Judged {
        live: true,
        done: true,
    };

    /// The write did not apply; whether the record was live.
    pub fn missed(live: bool) -> Judged {
        Judged { live, done: false }
    }

    /// `Updated` at `version` if the write applied, else `Conflict` for a
    /// live record (another version) and `Gone` for none.
    pub fn update_outcome(self, version: u64) -> UpdateOutcome {
        match self {
            Judged { done: true, .. } => UpdateOutcome::Updated { version },
            Judged { live: true, .. } => UpdateOutcome::Conflict,
            Judged { live: false, .. } => UpdateOutcome::Gone,
        }
    }

    /// `Deleted` if the delete applied, else `Conflict` for a live record
    /// (another version) and `Gone` for none.
    pub fn delete_outcome(self) -> DeleteOutcome {
        match self {
            Judged { done: true, .. } => DeleteOutcome::Deleted,
            Judged { live: true, .. } => DeleteOutcome::Conflict,
            Judged { live: false, .. } => DeleteOutcome::Gone,
        }
    }
}

/// One SQL dialect: its driver, its statements (given to [`SqlStore`] in
/// [`Setup`](crate::Setup)) and the steps it takes its own way. Each step
/// must judge expiry by a clock read *after* the row's (or the database's)
/// write lock is held, so an operation that waited for a concurrent writer
/// past a record's expiry does not revive it.
#[async_trait]
pub trait Dialect: Send + Sync + Sized + 'static {
    /// The sqlx driver.
    type Db: Database;

    /// The store's name in errors (`"postgres"`).
    const STORE: &'static str;

    /// The character that quotes identifiers (the expiry index's name).
    const QUOTE: char;

    /// The versioned DDL of the session table.
    const MIGRATIONS: Migrations;

    /// How many rows a statement affected.
    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;

    /// Binds a user key (NULL for `None`) as the `user_key` column takes
    /// it: text, or its UTF-8 bytes where the column is binary so that keys
    /// compare byte for byte.
    fn bind_user_key<'q>(
        query: Query<'q, Self::Db, <Self::Db as Database>::Arguments<'q>>,
        user_key: Option<&'q str>,
    ) -> Query<'q, Self::Db, <Self::Db as Database>::Arguments<'q>>;

    /// Whether `error`, from a migration step, says the step's change is
    /// already there (a column or index of that name exists). Only a
    /// dialect whose DDL is not transactional needs this: a process that
    /// died between a step and its record left the step done but not
    /// recorded, and the next migration must not fail on it.
    fn already_applied(error: &sqlx::Error) -> bool {
        let _ = error;
        false
    }

    /// Takes the lock that keeps two migrations apart (two processes at
    /// once apply each step once), works out the table's key in
    /// [`MIGRATIONS_TABLE`](crate::MIGRATIONS_TABLE), and runs
    /// [`SqlStore::apply_migrations`] under it.
    async fn migrate(&self, store: &SqlStore<Self>) -> Result<()>;

    /// Writes `update` if the row is live at the expected version, keeping
    /// the later of the two expiries.
    async fn update(&self, store: &SqlStore<Self>, update: Update<'_>) -> Result<Judged>;

    /// Deletes the row `id` if it is live at `expected` (`None`, a version
    /// no row can hold, matches nothing).
    async fn delete_if(
        &self,
        store: &SqlStore<Self>,
        id: &[u8],
        expected: Option<i64>,
    ) -> Result<Judged>;

    /// Moves the expiry of the live row `id` to `expires_at` if that is
    /// later; whether the row was live.
    async fn touch(&self, store: &SqlStore<Self>, id: &[u8], expires_at: i64) -> Result<bool>;

    /// Deletes every row (live or not) whose `user_key` is `user_key`,
    /// except the row `except` (empty: no row is excepted, as no id is
    /// empty), and answers the ids of exactly the rows it deleted. A row
    /// bound to the user while this runs may be spared; a row rebound to
    /// another user meanwhile must be.
    async fn revoke_user(
        &self,
        store: &SqlStore<Self>,
        user_key: &str,
        except: &[u8],
    ) -> Result<Vec<Vec<u8>>>;
}

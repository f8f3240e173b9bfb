//! # session-store-sqlite
//!
//! A [`SessionInterface`] store on SQLite through sqlx (runtime queries:
//! nothing needs a database at compile time).
//!
//! - One table (default `sessions`): `id` (the 32-byte id, primary key),
//!   `record` (the core's encoded record), `expires_at` (Unix ms, indexed),
//!   `version`. [`SqliteStore::migrate`] creates or upgrades it, recording
//!   what it did in [`MIGRATIONS_TABLE`] (one per file, shared by the stores
//!   in it); the index is `<table>$expires_at`. Names with a `$` can never
//!   be another store's table.
//! - WAL journal, `synchronous=NORMAL`, a 5 s busy timeout, and **one writer
//!   connection** (behind an async mutex) beside a small pool of readers:
//!   SQLite has one write lock, so writers queueing in order beat many
//!   connections fighting for it (and sleeping in its busy handler).
//! - WAL checkpoints run on a background connection every
//!   [`SqliteConfig::checkpoint_every`] instead of inside a writer's commit,
//!   where they would stall every queued writer. They are *passive*: they
//!   never wait for readers and never hold writers off, so a reader keeping
//!   an old snapshot open only delays the reuse of the WAL until it is done.
//!   A WAL file that grew is cut back to 64 MiB when it is reused.
//! - A save that keeps the expiry leaves `expires_at` out of its `UPDATE`,
//!   so SQLite need not rewrite the index entry.
//! - **Clock:** expiry is judged by this machine's clock, as for every
//!   in-process store: the database is a local file, so there is no server
//!   clock to defer to. Reads bind `now_millis`; writes that need a live
//!   record (`update`, `delete_if`, `touch`) let SQLite read the same OS
//!   clock once they hold the write lock, so one that waited for another
//!   connection past a record's expiry does not revive it.
//! - `update` and `touch` never move a stored expiry earlier
//!   (`MAX(expires_at, ?)`); `get` reports the `expires_at` column, which is
//!   authoritative over the expiry inside the encoded record.
//! - A file path (`sqlite://sessions.db`, created if missing) or
//!   `sqlite::memory:` (one private database on one connection, for tests).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> session_store::Result<()> {
//! use session_store_sqlite::SqliteStore;
//! let store = SqliteStore::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use session_store::backend::{check_sql_identifier, next_version, storable_version, timed};
use session_store::time::OffsetDateTime;
use session_store::{
    codec, now_millis, unix_millis, DeleteOutcome, Error, Result, Session, SessionId,
    SessionInterface, UpdateOutcome,
};
use sqlx::sqlite::{SqliteArguments, SqliteQueryResult, SqliteRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::Row as _;
use tokio::sync::Mutex;

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, SqliteArguments<'q>>;
type SqliteScalar<'q, T> = sqlx::query::QueryScalar<'q, sqlx::Sqlite, T, SqliteArguments<'q>>;

pub use sqlx;
use sqlx::ConnectOptions as _;

const STORE: &str = "sqlite";

/// Rows deleted per statement in `flush` and `clear`, so no statement holds
/// the write lock for long.
const DELETE_BATCH: i64 = 1000;

/// The OS clock in Unix milliseconds, read by SQLite inside the statement
/// (`'now'` is fixed for one statement at its first use). A writing
/// statement takes SQLite's write lock before it evaluates anything, so
/// this is the time it got the lock, not the time it started waiting for
/// it: one that waited for another connection past a record's expiry
/// finds the record expired instead of reviving it. `julianday` counts
/// whole milliseconds; `ROUND` undoes the floating-point error of scaling.
const NOW: &str = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)";

/// The table, shared by every store in one database file, that records
/// which migrations ran on which session table (`table_name`, `version`,
/// `applied_at`). Like the index name `<table>$expires_at`, it holds a `$`,
/// which no table name may, so it can never be, or be taken by, another
/// store's session table.
pub const MIGRATIONS_TABLE: &str = "session_store$migrations";

/// Versioned DDL: each step runs once, in order, recorded in
/// [`MIGRATIONS_TABLE`]. `{t}` is the table, `{index}` the quoted index name.
const MIGRATIONS: &[(i64, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE IF NOT EXISTS {t} (
            id BLOB PRIMARY KEY NOT NULL,
            record BLOB NOT NULL,
            expires_at INTEGER NOT NULL,
            version INTEGER NOT NULL
        ) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at)",
    ],
)];

/// How to open the database and name the table.
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// `sqlite://path/to/file.db`, a plain path, or `sqlite::memory:`.
    pub url: String,
    /// Table name (default `sessions`): a plain SQL identifier.
    pub table: String,
    /// Reader connections beside the one writer (default 4; none for `:memory:`).
    pub readers: u32,
    /// How long a statement may wait for the database lock (default 5 s).
    pub busy_timeout: Duration,
    /// Longest time one operation may take before it is an error (default 10 s).
    pub operation_timeout: Duration,
    /// How often the background task copies the WAL back into the database
    /// (a passive checkpoint, which never blocks writers; default 500 ms).
    pub checkpoint_every: Duration,
}

impl SqliteConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        SqliteConfig {
            url: url.into(),
            table: "sessions".into(),
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(10),
            checkpoint_every: Duration::from_millis(500),
        }
    }
}

struct Queries {
    exists: String,
    get: String,
    set: String,
    delete: String,
    create: String,
    update_same_expiry: String,
    update: String,
    delete_if: String,
    state: String,
    touch: String,
    flush: String,
    clear: String,
    len: String,
}

impl Queries {
    fn new(t: &str) -> Self {
        Queries {
            exists: format!("SELECT EXISTS(SELECT 1 FROM {t} WHERE id = ?1)"),
            get: format!(
                "SELECT record, expires_at, version FROM {t} WHERE id = ?1 AND expires_at > ?2"
            ),
            set: format!(
                "INSERT INTO {t} (id, record, expires_at, version) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record,
                 expires_at = excluded.expires_at, version = excluded.version"
            ),
            delete: format!("DELETE FROM {t} WHERE id = ?1"),
            create: format!(
                "INSERT INTO {t} (id, record, expires_at, version) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO NOTHING"
            ),
            update_same_expiry: format!(
                "UPDATE {t} SET record = ?2, version = ?4
                 WHERE id = ?1 AND version = ?5 AND expires_at > {NOW} AND expires_at >= ?3"
            ),
            update: format!(
                "UPDATE {t} SET record = ?2, expires_at = MAX(expires_at, ?3), version = ?4
                 WHERE id = ?1 AND version = ?5 AND expires_at > {NOW}"
            ),
            delete_if: format!(
                "DELETE FROM {t} WHERE id = ?1 AND version = ?2 AND expires_at > {NOW}"
            ),
            state: format!(
                "SELECT EXISTS(SELECT 1 FROM {t} WHERE id = ?1 AND expires_at > {NOW})"
            ),
            touch: format!(
                "UPDATE {t} SET expires_at = MAX(expires_at, ?2) WHERE id = ?1 AND expires_at > {NOW}"
            ),
            // The outer expiry check is redundant in SQLite, where the whole
            // statement holds the write lock, but keeps the statement right
            // under any engine that re-checks only a DELETE's own conditions.
            flush: format!(
                "DELETE FROM {t} WHERE expires_at <= ?1
                 AND id IN (SELECT id FROM {t} WHERE expires_at <= ?1 LIMIT {DELETE_BATCH})"
            ),
            clear: format!("DELETE FROM {t} WHERE id IN (SELECT id FROM {t} LIMIT {DELETE_BATCH})"),
            len: format!("SELECT COUNT(*) FROM {t} WHERE expires_at > ?1"),
        }
    }
}

/// The SQLite store.
pub struct SqliteStore {
    /// The one connection that writes, held directly rather than in a pool
    /// of one: writers queue on this lock instead of on SQLite's, and no
    /// pool bookkeeping sits between two writes.
    writer: Mutex<SqliteConnection>,
    /// Readers; `None` for an in-memory database, whose only copy lives in
    /// the writer's connection.
    reader: Option<SqlitePool>,
    _checkpointer: Option<Checkpointer>,
    table: String,
    location: String,
    operation_timeout: Duration,
    sql: Queries,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens `url` with the default configuration (table `sessions`).
    /// Call [`migrate`](Self::migrate) before first use.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(SqliteConfig::new(url)).await
    }

    /// Opens the database described by `config`.
    pub async fn connect_with(config: SqliteConfig) -> Result<Self> {
        check_sql_identifier("table name", &config.table)?;
        let in_memory = config.url.contains(":memory:") || config.url.contains("mode=memory");
        let url = if config.url.starts_with("sqlite:") {
            config.url.clone()
        } else {
            format!("sqlite://{}", config.url)
        };
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(|e| Error::Config(format!("sqlite url {:?}: {e}", config.url)))?
            .create_if_missing(true)
            .journal_mode(if in_memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(config.busy_timeout);
        let location = config.url.clone();
        let context = || format!("opening {location}");
        // The writer never checkpoints: a checkpoint inside a commit stalls
        // every queued writer for milliseconds. A background task does it.
        let writer_options = options
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", "67108864");
        let writer = timed(
            STORE,
            config.operation_timeout,
            context,
            writer_options.connect(),
        )
        .await?;
        let reader = if in_memory || config.readers == 0 {
            None
        } else {
            let pool = SqlitePoolOptions::new()
                .max_connections(config.readers)
                .acquire_timeout(config.operation_timeout)
                .connect_with(options.clone());
            Some(timed(STORE, config.operation_timeout, context, pool).await?)
        };
        let checkpointer = if in_memory {
            None
        } else {
            let conn = timed(STORE, config.operation_timeout, context, options.connect()).await?;
            Some(Checkpointer::start(conn, config.checkpoint_every))
        };
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            reader,
            _checkpointer: checkpointer,
            sql: Queries::new(&config.table),
            table: config.table,
            location,
            operation_timeout: config.operation_timeout,
        })
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates or upgrades the table, idempotently. Safe to run twice or
    /// from two processes at once: each step runs in an `IMMEDIATE`
    /// transaction that holds SQLite's write lock.
    ///
    /// A table migrated by an earlier version of this crate, which kept its
    /// record in a table `<table>_migrations` and named its index
    /// `<table>_expires_at`, is adopted: its record moves to
    /// [`MIGRATIONS_TABLE`], the index is rebuilt under its new name, its
    /// sessions stay.
    pub async fn migrate(&self) -> Result<()> {
        let work = async {
            let mut conn = self.writer.lock().await;
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            let steps = migrate_steps(&mut conn, &self.table).await;
            let end = if steps.is_ok() { "COMMIT" } else { "ROLLBACK" };
            sqlx::query(end).execute(&mut *conn).await?;
            steps
        };
        timed(
            STORE,
            self.operation_timeout,
            || self.context("migrate"),
            work,
        )
        .await
    }

    fn context(&self, what: &str) -> String {
        format!("{what} on table {} in {}", self.table, self.location)
    }

    /// Runs a statement on the writer connection.
    async fn write(&self, what: &str, query: SqliteQuery<'_>) -> Result<SqliteQueryResult> {
        let work = async {
            let mut conn = self.writer.lock().await;
            query.execute(&mut *conn).await
        };
        self.run(what, work).await
    }

    /// Runs a one-value query on a reader (or the writer, in memory).
    async fn read_scalar<T>(&self, what: &str, query: SqliteScalar<'_, T>) -> Result<T>
    where
        T: Send + Unpin,
        (T,): for<'r> sqlx::FromRow<'r, SqliteRow>,
    {
        match &self.reader {
            Some(pool) => self.run(what, query.fetch_one(pool)).await,
            None => {
                let work = async {
                    let mut conn = self.writer.lock().await;
                    query.fetch_one(&mut *conn).await
                };
                self.run(what, work).await
            }
        }
    }

    /// Whether a live record is stored under `id`: what tells `Conflict`
    /// from `Gone` after a compare-and-set missed, asked on the connection
    /// (and under the lock) of the write that missed.
    async fn is_live(
        &self,
        conn: &mut SqliteConnection,
        id: &[u8],
    ) -> std::result::Result<bool, sqlx::Error> {
        sqlx::query_scalar(&self.sql.state)
            .bind(id)
            .fetch_one(conn)
            .await
    }

    async fn run<T, Fut>(&self, what: &str, work: Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        timed(STORE, self.operation_timeout, || self.context(what), work).await
    }
}

/// Applies the migrations not yet recorded; the caller holds the write lock.
async fn migrate_steps(
    conn: &mut SqliteConnection,
    t: &str,
) -> std::result::Result<(), sqlx::Error> {
    // SQLite compares names without regard to ASCII case: one key per table.
    let name = t.to_ascii_lowercase();
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS \"{MIGRATIONS_TABLE}\" (
            table_name TEXT NOT NULL,
            version INTEGER NOT NULL,
            applied_at INTEGER NOT NULL,
            PRIMARY KEY (table_name, version)
        ) WITHOUT ROWID"
    ))
    .execute(&mut *conn)
    .await?;
    let mut done: i64 = sqlx::query_scalar(&format!(
        "SELECT COALESCE(MAX(version), 0) FROM \"{MIGRATIONS_TABLE}\" WHERE table_name = ?1"
    ))
    .bind(&name)
    .fetch_one(&mut *conn)
    .await?;
    let index = format!("\"{name}$expires_at\"");
    if done == 0 {
        done = adopt_legacy(conn, t, &name, &index).await?;
    }
    for (version, statements) in MIGRATIONS {
        if *version <= done {
            continue;
        }
        for ddl in *statements {
            sqlx::query(&ddl.replace("{t}", t).replace("{index}", &index))
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(&format!(
            "INSERT INTO \"{MIGRATIONS_TABLE}\" (table_name, version, applied_at) VALUES (?1, ?2, ?3)"
        ))
        .bind(&name)
        .bind(version)
        .bind(now_millis())
        .execute(&mut *conn)
        .await?;
        tracing::info!(table = %t, version, "session table migrated");
    }
    Ok(())
}

/// Adopts a table migrated by an earlier version of this crate, which
/// recorded its migrations in `<table>_migrations` (columns `version` and
/// `applied_at`) and named its index `<table>_expires_at`; returns the
/// version it had reached (0 when there is nothing to adopt).
///
/// A table of that name is taken for such a record only by its shape: it may
/// as well be the session table of a store named `<table>_migrations`,
/// which is left alone. The record moves to [`MIGRATIONS_TABLE`] and its old
/// table is dropped, freeing the name for a store that wants it; the old
/// index, found by name among this table's own indexes only, is replaced
/// for the same reason (SQLite cannot rename an index).
async fn adopt_legacy(
    conn: &mut SqliteConnection,
    t: &str,
    name: &str,
    index: &str,
) -> std::result::Result<i64, sqlx::Error> {
    let legacy = format!("{name}_migrations");
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) ORDER BY name")
            .bind(&legacy)
            .fetch_all(&mut *conn)
            .await?;
    if columns != ["applied_at", "version"] {
        return Ok(0);
    }
    let table_exists: bool = sqlx::query_scalar(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE)",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    let mut done = 0;
    if table_exists {
        done = sqlx::query_scalar(&format!("SELECT COALESCE(MAX(version), 0) FROM {legacy}"))
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query(&format!(
            "INSERT OR IGNORE INTO \"{MIGRATIONS_TABLE}\" (table_name, version, applied_at)
             SELECT ?1, version, applied_at FROM {legacy}"
        ))
        .bind(name)
        .execute(&mut *conn)
        .await?;
        let old_index: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master
             WHERE type = 'index' AND name = ?1 COLLATE NOCASE AND tbl_name = ?2 COLLATE NOCASE",
        )
        .bind(format!("{name}_expires_at"))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(old) = old_index {
            // `old` matched a plain identifier, so it needs no quoting.
            sqlx::query(&format!("DROP INDEX {old}"))
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(&format!(
            "CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at)"
        ))
        .execute(&mut *conn)
        .await?;
    }
    // Without its table the record is stale (the table was dropped by hand).
    sqlx::query(&format!("DROP TABLE {legacy}"))
        .execute(&mut *conn)
        .await?;
    tracing::info!(table = %t, version = done, "adopted the migration record of an earlier version");
    Ok(done)
}

/// Runs passive WAL checkpoints on a connection of its own until dropped.
struct Checkpointer(tokio::task::JoinHandle<()>);

impl Checkpointer {
    fn start(mut conn: SqliteConnection, every: Duration) -> Self {
        Checkpointer(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                // PASSIVE copies what no reader still needs and never waits:
                // FULL or RESTART would hold new writers off until every
                // reader left its snapshot, so one slow reader would stall
                // (and, past the busy timeout, fail) every write.
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&mut conn)
                    .await
                {
                    tracing::warn!(error = %e, "sqlite checkpoint failed");
                }
            }
        }))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl SessionInterface for SqliteStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        let q = sqlx::query_scalar(&self.sql.exists).bind(&id.as_bytes()[..]);
        self.read_scalar("exists", q).await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let q = sqlx::query(&self.sql.get)
            .bind(&id.as_bytes()[..])
            .bind(now_millis());
        let row = match &self.reader {
            Some(pool) => self.run("get", q.fetch_optional(pool)).await?,
            None => {
                let work = async {
                    let mut conn = self.writer.lock().await;
                    q.fetch_optional(&mut *conn).await
                };
                self.run("get", work).await?
            }
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let record: Vec<u8> = row
            .try_get(0)
            .map_err(|e| Error::decode(self.context("get"), e))?;
        let expires_at: i64 = row
            .try_get(1)
            .map_err(|e| Error::decode(self.context("get"), e))?;
        let version: i64 = row
            .try_get(2)
            .map_err(|e| Error::decode(self.context("get"), e))?;
        let origin = format!("row {id} of table {}", self.table);
        let mut session = codec::decode(*id, &record, &origin)?;
        // The columns are authoritative: touch and update move only
        // `expires_at`, never the expiry in the record's header.
        session.set_expires_at_millis(expires_at);
        let version = u64::try_from(version)
            .map_err(|_| Error::decode(origin, format!("negative version {version}")))?;
        session.set_version(version);
        Ok(Some(session))
    }

    async fn set(&self, session: &Session) -> Result<()> {
        let version = storable_version(session.id(), session.version())?;
        let record = codec::encode(session, session.version())?;
        let q = sqlx::query(&self.sql.set)
            .bind(session.id().as_bytes().to_vec())
            .bind(record)
            .bind(session.expires_at_millis())
            .bind(version);
        self.write("set", q).await.map(drop)
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        let q = sqlx::query(&self.sql.delete).bind(&id.as_bytes()[..]);
        self.write("delete", q).await.map(drop)
    }

    async fn create(&self, session: &Session) -> Result<()> {
        let version = storable_version(session.id(), session.version())?;
        let record = codec::encode(session, session.version())?;
        let q = sqlx::query(&self.sql.create)
            .bind(session.id().as_bytes().to_vec())
            .bind(record)
            .bind(session.expires_at_millis())
            .bind(version);
        let done = self.write("create", q).await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(Error::IdCollision { id: session.id() })
        }
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        let next = next_version(session.id(), expected_version)?;
        // `next_version` keeps both versions within `i64`.
        let (version, expected) = (next as i64, expected_version as i64);
        let record = codec::encode(session, next)?;
        let id = session.id();
        let id = &id.as_bytes()[..];
        let expires_at = session.expires_at_millis();
        let work = async {
            let mut conn = self.writer.lock().await;
            // Most saves keep the expiry (or bring one no later than the
            // stored one, which must not shorten it). Leaving `expires_at`
            // out of the SET list spares SQLite rewriting its index entry, a
            // quarter of the cost of a save; a later expiry falls through to
            // the full UPDATE.
            for sql in [&self.sql.update_same_expiry, &self.sql.update] {
                let done = sqlx::query(sql)
                    .bind(id)
                    .bind(&record[..])
                    .bind(expires_at)
                    .bind(version)
                    .bind(expected)
                    .execute(&mut *conn)
                    .await?;
                if done.rows_affected() == 1 {
                    return Ok(UpdateOutcome::Updated { version: next });
                }
            }
            // Only a failed save pays this: live means Conflict.
            Ok(if self.is_live(&mut conn, id).await? {
                UpdateOutcome::Conflict
            } else {
                UpdateOutcome::Gone
            })
        };
        self.run("update", work).await
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        // A version no record can hold binds as NULL, which equals nothing.
        let expected = i64::try_from(expected_version).ok();
        let id = &id.as_bytes()[..];
        // Both statements run under the writer lock, so no other write of
        // this store comes between the delete and the look that explains a
        // miss; the delete itself is one statement, atomic for any process.
        let work = async {
            let mut conn = self.writer.lock().await;
            let done = sqlx::query(&self.sql.delete_if)
                .bind(id)
                .bind(expected)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 1 {
                return Ok(DeleteOutcome::Deleted);
            }
            Ok(if self.is_live(&mut conn, id).await? {
                DeleteOutcome::Conflict
            } else {
                DeleteOutcome::Gone
            })
        };
        self.run("delete_if", work).await
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let q = sqlx::query(&self.sql.touch)
            .bind(&id.as_bytes()[..])
            .bind(unix_millis(expires_at));
        Ok(self.write("touch", q).await?.rows_affected() == 1)
    }

    // A batch is one statement, which holds SQLite's write lock from finding
    // its rows to deleting them: no other writer (in this process or another)
    // can delete one in between, so a batch deletes exactly what it found,
    // and "deleted nothing" is "found nothing". Other writers can act only
    // between batches, which the next batch sees; so stop at the first
    // empty batch, never at a short one.
    async fn flush(&self) -> Result<u64> {
        let now = now_millis();
        let mut total = 0;
        loop {
            let q = sqlx::query(&self.sql.flush).bind(now);
            let deleted = self.write("flush", q).await?.rows_affected();
            total += deleted;
            if deleted == 0 {
                return Ok(total);
            }
        }
    }

    async fn clear(&self) -> Result<()> {
        loop {
            let q = sqlx::query(&self.sql.clear);
            if self.write("clear", q).await?.rows_affected() == 0 {
                return Ok(());
            }
        }
    }

    async fn len(&self) -> Result<u64> {
        let q = sqlx::query_scalar::<_, i64>(&self.sql.len).bind(now_millis());
        Ok(self.read_scalar("len", q).await?.max(0) as u64)
    }
}

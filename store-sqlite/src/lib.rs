//! # session-store-sqlite
//!
//! A [`SessionInterface`] store on SQLite through sqlx (runtime queries:
//! nothing needs a database at compile time).
//!
//! - One table (default `sessions`): `id` (the 32-byte id, primary key),
//!   `record` (the core's encoded record), `expires_at` (Unix ms, indexed),
//!   `version`, and `user_key` (the record's user key, NULL for a session
//!   bound to no user; a partial index `<table>$user_key` holds the bound
//!   ones), written in the same statement as the record. [`SqliteStore::migrate`] creates or upgrades it, recording
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
//! - A save that keeps the expiry and the user binding leaves `expires_at`
//!   and `user_key` out of its `UPDATE`, so SQLite need not rewrite their
//!   index entries; one that changes either runs a second `UPDATE`.
//! - `sessions_of` is one `SELECT` through the user index; `revoke_user`
//!   one `DELETE … RETURNING id`, which holds the write lock throughout, so
//!   the ids it answers are the rows it deleted.
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
//! What every SQL store does alike (batch loops, migrations bookkeeping,
//! decoding, error mapping) is `session-store-sql`'s; this crate is the
//! SQLite dialect: its statements, its connections and checkpoints, its
//! `BEGIN IMMEDIATE` migrations and the adoption of its earlier layout.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> session_store::Result<()> {
//! use session_store_sqlite::SqliteStore;
//! let store = SqliteStore::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//! # Ok(()) }
//! ```
//!
//! [`SessionInterface`]: session_store::SessionInterface
#![warn(missing_docs)]

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use session_store::backend::timed;
use session_store::{Error, Result};
use session_store_sql::{
    check_table_name, pool_options, session_interface, Batches, Clock, Connections, Dialect,
    Judged, LegacyLayout, MigrationStatements, Migrations, Setup, SqlStore, Statements, Update,
    DELETE_BATCH,
};
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::ConnectOptions as _;
use sqlx::Sqlite;
use tokio::sync::Mutex;

pub use session_store_sql::MIGRATIONS_TABLE;
pub use sqlx;

const STORE: &str = "sqlite";

/// The OS clock in Unix milliseconds, read by SQLite inside the statement
/// (`'now'` is fixed for one statement at its first use). A writing
/// statement takes SQLite's write lock before it evaluates anything, so
/// this is the time it got the lock, not the time it started waiting for
/// it: one that waited for another connection past a record's expiry
/// finds the record expired instead of reviving it. `julianday` counts
/// whole milliseconds; `ROUND` undoes the floating-point error of scaling.
const NOW: &str = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)";

/// Versioned DDL: each step runs once, in order, recorded in
/// [`MIGRATIONS_TABLE`]. `{t}` is the table, `{index}` the quoted expiry
/// index name, `{user_index}` the quoted user index name. Each migration
/// runs in one `IMMEDIATE` transaction with its records, so a step is
/// either done and recorded or neither.
///
/// Step 2 adds the user index. Every row already stored is bound to no
/// user (records bound to one are written only by code that also writes
/// `user_key`), so NULL is the truth for each of them and no row is
/// rewritten. `TEXT` compares with SQLite's default `BINARY` collation:
/// byte for byte, so `Ada` is not `ada` and `ada ` is not `ada`. The index
/// is partial: the sessions bound to no user, most of them, are not in it,
/// so their writes never touch it.
const MIGRATIONS: Migrations = &[
    (
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
    ),
    (
        2,
        &[
            "ALTER TABLE {t} ADD COLUMN user_key TEXT",
            "CREATE INDEX IF NOT EXISTS {user_index} ON {t} (user_key) WHERE user_key IS NOT NULL",
        ],
    ),
];

/// The statements every SQL store has, in SQLite, on the table `t` whose
/// key is `key`.
fn statements(t: &str, key: &str) -> Statements {
    let record_table = format!("{key}_migrations");
    Statements {
        exists: format!("SELECT EXISTS(SELECT 1 FROM {t} WHERE id = ?1)"),
        get: format!(
            "SELECT record, expires_at, version FROM {t} WHERE id = ?1 AND expires_at > ?2"
        ),
        set: format!(
            "INSERT INTO {t} (id, record, expires_at, version, user_key) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record,
             expires_at = excluded.expires_at, version = excluded.version,
             user_key = excluded.user_key"
        ),
        delete: format!("DELETE FROM {t} WHERE id = ?1"),
        create: format!(
            "INSERT INTO {t} (id, record, expires_at, version, user_key) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO NOTHING"
        ),
        len: format!("SELECT COUNT(*) FROM {t} WHERE expires_at > ?1"),
        // `user_key = ?1` implies `user_key IS NOT NULL`, so SQLite uses the
        // partial index.
        sessions_of: format!(
            "SELECT id, record, expires_at, version FROM {t} WHERE user_key = ?1 AND expires_at > ?2"
        ),
        clock: Clock::App,
        // A batch is one statement, which holds SQLite's write lock from
        // finding its rows to deleting them: no other writer (in this
        // process or another) can delete one in between. The outer expiry
        // check is redundant for that reason, but keeps the statement right
        // under any engine that re-checks only a DELETE's own conditions.
        batches: Batches::Locked {
            flush: format!(
                "DELETE FROM {t} WHERE expires_at <= ?1
                 AND id IN (SELECT id FROM {t} WHERE expires_at <= ?1 LIMIT {DELETE_BATCH})"
            ),
            clear: format!("DELETE FROM {t} WHERE id IN (SELECT id FROM {t} LIMIT {DELETE_BATCH})"),
        },
        migrations: MigrationStatements {
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS \"{MIGRATIONS_TABLE}\" (
                    table_name TEXT NOT NULL,
                    version INTEGER NOT NULL,
                    applied_at INTEGER NOT NULL,
                    PRIMARY KEY (table_name, version)
                ) WITHOUT ROWID"
            ),
            recorded: format!(
                "SELECT COALESCE(MAX(version), 0) FROM \"{MIGRATIONS_TABLE}\" WHERE table_name = ?1"
            ),
            record: format!(
                "INSERT INTO \"{MIGRATIONS_TABLE}\" (table_name, version, applied_at) VALUES (?1, ?2, ?3)"
            ),
        },
        // The earlier layout: `<table>_migrations` and an index named
        // `<table>_expires_at`, which is dropped (SQLite cannot rename an
        // index; `{old}` matched a plain identifier, so it needs no quoting).
        legacy: Some(LegacyLayout {
            columns: "SELECT name FROM pragma_table_info(?1) ORDER BY name".into(),
            table_ref: key.to_owned(),
            table_exists: "SELECT EXISTS(SELECT 1 FROM sqlite_master
                           WHERE type = 'table' AND name = ?1 COLLATE NOCASE)"
                .into(),
            copy: format!(
                "INSERT OR IGNORE INTO \"{MIGRATIONS_TABLE}\" (table_name, version, applied_at)
                 SELECT ?1, version, applied_at FROM {record_table}"
            ),
            record_table,
            old_index: format!("{key}_expires_at"),
            find_old_index: "SELECT name FROM sqlite_master
                             WHERE type = 'index' AND tbl_name = ?1 COLLATE NOCASE
                             AND name = ?2 COLLATE NOCASE"
                .into(),
            replace_old_index: "DROP INDEX {old}",
        }),
    }
}

/// The SQLite dialect: the table's key, the compare-and-set statements and
/// the checkpointer.
struct SqliteDialect {
    /// The key of this table's rows in [`MIGRATIONS_TABLE`]: SQLite compares
    /// names without regard to ASCII case, so one key per table.
    key: String,
    update_same_expiry: String,
    update: String,
    delete_if: String,
    state: String,
    touch: String,
    revoke_user: String,
    _checkpointer: Option<Checkpointer>,
}

impl SqliteDialect {
    // Each of these reads the clock inside the statement (`NOW`), which
    // SQLite evaluates after taking its write lock.
    fn new(t: &str, checkpointer: Option<Checkpointer>) -> Self {
        SqliteDialect {
            key: t.to_ascii_lowercase(),
            update_same_expiry: format!(
                "UPDATE {t} SET record = ?2, version = ?4
                 WHERE id = ?1 AND version = ?5 AND expires_at > {NOW} AND expires_at >= ?3
                 AND user_key IS ?6"
            ),
            update: format!(
                "UPDATE {t} SET record = ?2, expires_at = MAX(expires_at, ?3), version = ?4,
                 user_key = ?6
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
            revoke_user: format!("DELETE FROM {t} WHERE user_key = ?1 AND id <> ?2 RETURNING id"),
            _checkpointer: checkpointer,
        }
    }

    /// Runs `writes` on the writer connection until one affects the row
    /// `id`; if none does, looks whether a live record is stored under
    /// `id`, which tells `Conflict` from `Gone`. Everything runs under the
    /// writer's lock, so no other write of this store comes between a write
    /// and the look that explains its miss; each write is one statement,
    /// atomic for any process.
    async fn write_or_look<'q>(
        &self,
        store: &SqlStore<Self>,
        what: &str,
        id: &[u8],
        writes: impl IntoIterator<Item = Query<'q, Sqlite, SqliteArguments<'q>>>,
    ) -> Result<Judged> {
        let work = async {
            let mut conn = store.writer().await?;
            for write in writes {
                if write.execute(&mut *conn).await?.rows_affected() == 1 {
                    return Ok(Judged::DONE);
                }
            }
            // Only a write that missed pays this.
            let live = sqlx::query_scalar(&self.state)
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
            Ok(Judged::missed(live))
        };
        store.run(what, work).await
    }
}

#[async_trait]
impl Dialect for SqliteDialect {
    type Db = sqlx::Sqlite;
    const STORE: &'static str = STORE;
    const QUOTE: char = '"';
    const MIGRATIONS: Migrations = MIGRATIONS;

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn migrate(&self, store: &SqlStore<Self>) -> Result<()> {
        let work = async {
            let mut conn = store.writer().await?;
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            let steps = store.apply_migrations(&mut conn, &self.key).await;
            let end = if steps.is_ok() { "COMMIT" } else { "ROLLBACK" };
            sqlx::query(end).execute(&mut *conn).await?;
            steps
        };
        store.run_migration(work).await
    }

    fn bind_user_key<'q>(
        query: Query<'q, Sqlite, SqliteArguments<'q>>,
        user_key: Option<&'q str>,
    ) -> Query<'q, Sqlite, SqliteArguments<'q>> {
        query.bind(user_key)
    }

    async fn update(&self, store: &SqlStore<Self>, update: Update<'_>) -> Result<Judged> {
        // Most saves keep the expiry (or bring one no later than the stored
        // one, which must not shorten it) and the user binding. Leaving
        // `expires_at` and `user_key` out of the SET list spares SQLite
        // rewriting their index entries, a quarter of the cost of a save
        // each; a later expiry or a new binding (a login, a logout) falls
        // through to the full UPDATE.
        let writes = [&self.update_same_expiry, &self.update].map(|sql| {
            sqlx::query(sql)
                .bind(update.id)
                .bind(update.record)
                .bind(update.expires_at)
                .bind(update.version)
                .bind(update.expected)
                .bind(update.user_key)
        });
        self.write_or_look(store, "update", update.id, writes).await
    }

    async fn delete_if(
        &self,
        store: &SqlStore<Self>,
        id: &[u8],
        expected: Option<i64>,
    ) -> Result<Judged> {
        // `None` binds as NULL, which equals nothing.
        let write = sqlx::query(&self.delete_if).bind(id).bind(expected);
        self.write_or_look(store, "delete_if", id, [write]).await
    }

    async fn touch(&self, store: &SqlStore<Self>, id: &[u8], expires_at: i64) -> Result<bool> {
        let query = sqlx::query(&self.touch).bind(id).bind(expires_at);
        Ok(store.write("touch", query).await? == 1)
    }

    async fn revoke_user(
        &self,
        store: &SqlStore<Self>,
        user_key: &str,
        except: &[u8],
    ) -> Result<Vec<Vec<u8>>> {
        // One statement, holding SQLite's write lock from finding the rows
        // to deleting them: the ids it returns are the rows it deleted.
        let query = sqlx::query_scalar(&self.revoke_user)
            .bind(user_key)
            .bind(except);
        store.write_ids("revoke_user", query).await
    }
}

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

/// The SQLite store.
pub struct SqliteStore {
    engine: SqlStore<SqliteDialect>,
}

session_interface!(SqliteStore => engine);

impl SqliteStore {
    /// Opens `url` with the default configuration (table `sessions`).
    /// Call [`migrate`](Self::migrate) before first use.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(SqliteConfig::new(url)).await
    }

    /// Opens the database described by `config`.
    pub async fn connect_with(config: SqliteConfig) -> Result<Self> {
        check_table_name(&config.table, "SQLite", None)?;
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
        let busy = config.busy_timeout;
        let writer = timed(
            STORE,
            config.operation_timeout,
            context,
            open_retrying(busy, || writer_options.connect()),
        )
        .await?;
        let readers = if in_memory || config.readers == 0 {
            None
        } else {
            let pool = open_retrying(busy, || {
                pool_options::<Sqlite>(config.readers, config.operation_timeout)
                    .connect_with(options.clone())
            });
            Some(timed(STORE, config.operation_timeout, context, pool).await?)
        };
        let checkpointer = if in_memory {
            None
        } else {
            let conn = open_retrying(busy, || options.connect());
            let conn = timed(STORE, config.operation_timeout, context, conn).await?;
            Some(Checkpointer::start(conn, config.checkpoint_every))
        };
        let dialect = SqliteDialect::new(&config.table, checkpointer);
        let statements = statements(&config.table, &dialect.key);
        Ok(SqliteStore {
            engine: SqlStore::new(Setup {
                dialect,
                connections: Connections::OneWriter {
                    writer: Mutex::new(writer),
                    readers,
                },
                statements,
                table_sql: config.table.clone(),
                table_name: config.table,
                location: format!("in {location}"),
                operation_timeout: config.operation_timeout,
            }),
        })
    }

    /// The table name.
    pub fn table(&self) -> &str {
        self.engine.table()
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
        self.engine.migrate().await
    }
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

/// Opens a connection (or pool), retrying "database is locked" until
/// `busy_timeout`: two processes opening a new database at once race to
/// switch it to WAL, and SQLite answers the loser at once, without its
/// busy handler.
async fn open_retrying<T, F, Fut>(busy_timeout: Duration, mut open: F) -> sqlx::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + busy_timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match open().await {
            Err(e) if is_locked(&e) && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// SQLITE_BUSY, in its primary or an extended code.
fn is_locked(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => e
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| code & 0xff == 5),
        _ => false,
    }
}

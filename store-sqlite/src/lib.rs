//! # session-store-sqlite
//!
//! A [`SessionInterface`] store on SQLite through sqlx (runtime queries:
//! nothing needs a database at compile time).
//!
//! - One table (default `sessions`): `id` (the 32-byte id, primary key),
//!   `record` (the core's encoded record), `expires_at` (Unix ms, indexed),
//!   `version`. [`SqliteStore::migrate`] creates or upgrades it.
//! - WAL journal, `synchronous=NORMAL`, a 5 s busy timeout, and **one writer
//!   connection** beside a small pool of readers: SQLite has one write lock,
//!   so queueing writes in the pool beats many connections fighting for it.
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
use session_store::backend::{check_sql_identifier, timed};
use session_store::time::OffsetDateTime;
use session_store::{
    codec, now_millis, unix_millis, Error, Result, Session, SessionId, SessionInterface,
    UpdateOutcome,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::Row as _;

pub use sqlx;

const STORE: &str = "sqlite";

/// Rows deleted per statement in `flush` and `clear`, so no statement holds
/// the write lock for long.
const DELETE_BATCH: i64 = 1000;

/// Versioned DDL: each step runs once, in order, recorded in `<table>_migrations`.
const MIGRATIONS: &[(i64, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE IF NOT EXISTS {t} (
            id BLOB PRIMARY KEY NOT NULL,
            record BLOB NOT NULL,
            expires_at INTEGER NOT NULL,
            version INTEGER NOT NULL
        ) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)",
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
        }
    }
}

struct Queries {
    exists: String,
    get: String,
    set: String,
    delete: String,
    create: String,
    update: String,
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
            get: format!("SELECT record, expires_at, version FROM {t} WHERE id = ?1 AND expires_at > ?2"),
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
            update: format!(
                "UPDATE {t} SET record = ?2, expires_at = ?3, version = ?4
                 WHERE id = ?1 AND version = ?5 AND expires_at > ?6"
            ),
            state: format!("SELECT EXISTS(SELECT 1 FROM {t} WHERE id = ?1 AND expires_at > ?2)"),
            touch: format!("UPDATE {t} SET expires_at = ?2 WHERE id = ?1 AND expires_at > ?3"),
            flush: format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE expires_at <= ?1 LIMIT {DELETE_BATCH})"
            ),
            clear: format!("DELETE FROM {t} WHERE id IN (SELECT id FROM {t} LIMIT {DELETE_BATCH})"),
            len: format!("SELECT COUNT(*) FROM {t} WHERE expires_at > ?1"),
        }
    }
}

/// The SQLite store.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
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
        let open = |max: u32| {
            SqlitePoolOptions::new()
                .max_connections(max)
                .min_connections(1)
                // An in-memory database lives exactly as long as its connection.
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(config.operation_timeout)
                .connect_with(options.clone())
        };
        let context = || format!("opening {location}");
        let writer = timed(STORE, config.operation_timeout, context, open(1)).await?;
        let reader = if in_memory || config.readers == 0 {
            writer.clone()
        } else {
            timed(
                STORE,
                config.operation_timeout,
                context,
                open(config.readers),
            )
            .await?
        };
        Self::from_pools(
            writer,
            reader,
            &config.table,
            location,
            config.operation_timeout,
        )
    }

    /// A store over pools you already have: `writer` should hold a single
    /// connection; `reader` may be the same pool.
    pub fn new(writer: SqlitePool, reader: SqlitePool, table: &str) -> Result<Self> {
        Self::from_pools(
            writer,
            reader,
            table,
            "sqlite (pool)".into(),
            Duration::from_secs(10),
        )
    }

    fn from_pools(
        writer: SqlitePool,
        reader: SqlitePool,
        table: &str,
        location: String,
        operation_timeout: Duration,
    ) -> Result<Self> {
        check_sql_identifier("table name", table)?;
        Ok(SqliteStore {
            writer,
            reader,
            table: table.to_owned(),
            location,
            operation_timeout,
            sql: Queries::new(table),
        })
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates or upgrades the table, idempotently. Safe to run twice or
    /// from two processes at once: each step runs in an `IMMEDIATE`
    /// transaction that holds SQLite's write lock.
    pub async fn migrate(&self) -> Result<()> {
        let work = async {
            let mut conn = self.writer.acquire().await?;
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
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {t}_migrations (version INTEGER PRIMARY KEY NOT NULL, applied_at INTEGER NOT NULL)"
    ))
    .execute(&mut *conn)
    .await?;
    let done: i64 = sqlx::query_scalar(&format!(
        "SELECT COALESCE(MAX(version), 0) FROM {t}_migrations"
    ))
    .fetch_one(&mut *conn)
    .await?;
    for (version, statements) in MIGRATIONS {
        if *version <= done {
            continue;
        }
        for ddl in *statements {
            sqlx::query(&ddl.replace("{t}", t))
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(&format!(
            "INSERT INTO {t}_migrations (version, applied_at) VALUES (?1, ?2)"
        ))
        .bind(version)
        .bind(now_millis())
        .execute(&mut *conn)
        .await?;
        tracing::info!(table = %t, version, "session table migrated");
    }
    Ok(())
}

fn version_param(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

#[async_trait]
impl SessionInterface for SqliteStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        let q = sqlx::query_scalar(&self.sql.exists).bind(&id.as_bytes()[..]);
        self.run("exists", q.fetch_one(&self.reader)).await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let q = sqlx::query(&self.sql.get)
            .bind(&id.as_bytes()[..])
            .bind(now_millis());
        let Some(row) = self.run("get", q.fetch_optional(&self.reader)).await? else {
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
        let mut session =
            codec::decode(*id, &record, &format!("row {id} of table {}", self.table))?;
        // The columns are authoritative: touch moves only `expires_at`.
        session.set_expires_at_millis(expires_at);
        session.set_version(version as u64);
        Ok(Some(session))
    }

    async fn set(&self, session: &Session) -> Result<()> {
        let record = codec::encode(session, session.version())?;
        let q = sqlx::query(&self.sql.set)
            .bind(session.id().as_bytes().to_vec())
            .bind(record)
            .bind(session.expires_at_millis())
            .bind(version_param(session.version()));
        self.run("set", q.execute(&self.writer)).await.map(drop)
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        let q = sqlx::query(&self.sql.delete).bind(&id.as_bytes()[..]);
        self.run("delete", q.execute(&self.writer)).await.map(drop)
    }

    async fn create(&self, session: &Session) -> Result<()> {
        let record = codec::encode(session, session.version())?;
        let q = sqlx::query(&self.sql.create)
            .bind(session.id().as_bytes().to_vec())
            .bind(record)
            .bind(session.expires_at_millis())
            .bind(version_param(session.version()));
        let done = self.run("create", q.execute(&self.writer)).await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(Error::IdCollision { id: session.id() })
        }
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        let version = expected_version + 1;
        let record = codec::encode(session, version)?;
        let id = session.id();
        let id = &id.as_bytes()[..];
        let now = now_millis();
        let q = sqlx::query(&self.sql.update)
            .bind(id)
            .bind(record)
            .bind(session.expires_at_millis())
            .bind(version_param(version))
            .bind(version_param(expected_version))
            .bind(now);
        if self
            .run("update", q.execute(&self.writer))
            .await?
            .rows_affected()
            == 1
        {
            return Ok(UpdateOutcome::Updated { version });
        }
        // Only a failed save pays this second statement: live means Conflict.
        let q = sqlx::query_scalar(&self.sql.state).bind(id).bind(now);
        let live: bool = self.run("update", q.fetch_one(&self.writer)).await?;
        Ok(if live {
            UpdateOutcome::Conflict
        } else {
            UpdateOutcome::Gone
        })
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let q = sqlx::query(&self.sql.touch)
            .bind(&id.as_bytes()[..])
            .bind(unix_millis(expires_at))
            .bind(now_millis());
        Ok(self
            .run("touch", q.execute(&self.writer))
            .await?
            .rows_affected()
            == 1)
    }

    async fn flush(&self) -> Result<u64> {
        let now = now_millis();
        let mut total = 0;
        loop {
            let q = sqlx::query(&self.sql.flush).bind(now);
            let deleted = self
                .run("flush", q.execute(&self.writer))
                .await?
                .rows_affected();
            total += deleted;
            if deleted < DELETE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn clear(&self) -> Result<()> {
        loop {
            let q = sqlx::query(&self.sql.clear);
            let deleted = self
                .run("clear", q.execute(&self.writer))
                .await?
                .rows_affected();
            if deleted < DELETE_BATCH as u64 {
                return Ok(());
            }
        }
    }

    async fn len(&self) -> Result<u64> {
        let q = sqlx::query_scalar::<_, i64>(&self.sql.len).bind(now_millis());
        Ok(self.run("len", q.fetch_one(&self.reader)).await?.max(0) as u64)
    }
}

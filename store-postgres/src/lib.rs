//! # session-store-postgres
//!
//! A [`SessionInterface`] store on PostgreSQL through sqlx (runtime
//! queries: nothing needs a database at compile time).
//!
//! One table (default `sessions`, optionally in a schema): `id` (`bytea`,
//! the 32-byte id, primary key), `record` (`bytea`, the core's encoded
//! record), `expires_at` (`bigint` Unix ms, indexed), `version` (`bigint`).
//! [`PostgresStore::migrate`] creates or upgrades it, recording what it did
//! in [`MIGRATIONS_TABLE`] (one per schema, shared by the stores in it); the
//! index is `<table>$expires_at`. Names with a `$` can never be another
//! store's table, and table names are at most [`MAX_TABLE_NAME_LEN`] bytes
//! so the index name fits PostgreSQL's 63. Every operation is one statement
//! (`flush` and `clear`: one a batch).
//!
//! **Clock.** Expiry is judged by the PostgreSQL server's clock
//! (`clock_timestamp()`, in Unix milliseconds) in every statement that asks
//! whether a record is live (`get`, `update`, `delete_if`, `touch`, `len`)
//! and for the cutoff of `flush`, never by the app's clock: app servers
//! whose clocks disagree still agree on what has expired. The expiries
//! stored are the app's (`Session::expires_at`), so a skewed app clock moves
//! the expiries it writes, not the judgement of them. The statements that
//! write a live record (`update`, `delete_if`, `touch`) lock its row first
//! and read the clock only once they hold it, so one that waited for a
//! concurrent writer past the record's expiry finds it expired.
//!
//! `update` and `touch` never move a stored expiry earlier
//! (`GREATEST(expires_at, $new)`); `get` reports the `expires_at` column,
//! which is authoritative over the expiry inside the encoded record.
//! `flush` and `clear` delete in batches until a batch finds nothing, and
//! `flush` spares a row extended while it waited for that row's lock.
//!
//! ```no_run
//! # async fn demo() -> session_store::Result<()> {
//! use session_store_postgres::{PostgresConfig, PostgresStore};
//! let store = PostgresStore::connect_with(PostgresConfig {
//!     schema: Some("app".into()),
//!     ..PostgresConfig::new("postgres://postgres@127.0.0.1:5432/test")
//! })
//! .await?;
//! store.migrate().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use session_store::backend::{
    check_sql_identifier, next_version, redact_url, storable_version, timed_unsent_aware,
};
use session_store::time::OffsetDateTime;
use session_store::{
    codec, now_millis, unix_millis, DeleteOutcome, Error, Result, Session, SessionId,
    SessionInterface, UpdateOutcome,
};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::Row as _;

pub use sqlx;

const STORE: &str = "postgres";

/// The server's clock in Unix milliseconds. An uncorrelated scalar subquery
/// is evaluated once per statement, so every row of one statement is judged
/// against the same instant; `clock_timestamp()` (not `now()`) because
/// `now()` is frozen at the start of the transaction.
const NOW: &str = "(SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)";

/// The server's clock in Unix milliseconds, read where the expression is
/// evaluated. Statements that lock a row judge its expiry with this, in a
/// query level above the one that takes the lock: an expression in the
/// locking `SELECT` itself (or an uncorrelated subquery) may be evaluated
/// before the wait for a concurrent holder of the lock, and PostgreSQL does
/// not evaluate it again when that holder commits without changing the row,
/// so a record that expired during the wait would be judged live.
const CLOCK: &str = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Rows deleted per statement in `flush` and `clear`, so no statement holds
/// row locks for long.
const DELETE_BATCH: i64 = 1000;

/// The table, shared by every store in one schema, that records which
/// migrations ran on which session table (`table_name`, `version`,
/// `applied_at`). Like every name this crate derives (see
/// [`MAX_TABLE_NAME_LEN`]), it holds a `$`, which no table name may, so it
/// can never be, or be taken by, another store's session table.
pub const MIGRATIONS_TABLE: &str = "session_store$migrations";

/// Suffix of the expiry index's name, `<table>$expires_at`.
const INDEX_SUFFIX: &str = "$expires_at";

/// The longest table name accepted, in bytes: PostgreSQL cuts identifiers
/// to 63 bytes, and the index name `<table>$expires_at` must fit whole (cut
/// short, it would name the table itself).
pub const MAX_TABLE_NAME_LEN: usize = 63 - INDEX_SUFFIX.len();

/// Versioned DDL: each step runs once, in order, recorded in
/// [`MIGRATIONS_TABLE`]. `{t}` is the (qualified) table, `{index}` the
/// quoted index name.
///
/// `fillfactor = 70` leaves room on each page so that saves, which rewrite a
/// row without changing its indexed columns, stay heap-only (HOT) updates
/// and touch neither index.
const MIGRATIONS: &[(i64, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE IF NOT EXISTS {t} (
            id bytea PRIMARY KEY,
            record bytea NOT NULL,
            expires_at bigint NOT NULL,
            version bigint NOT NULL
        ) WITH (fillfactor = 70)",
        "CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at)",
    ],
)];

/// How to reach PostgreSQL and name the table.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Schema of the table (default none: the search path, usually `public`).
    pub schema: Option<String>,
    /// Table name (default `sessions`): a plain SQL identifier of at most
    /// [`MAX_TABLE_NAME_LEN`] bytes.
    pub table: String,
    /// Most pooled connections (default 16).
    pub pool_size: u32,
    /// Longest wait for a connection (default 3 s).
    pub connect_timeout: Duration,
    /// Longest time one operation may take before it is an error (default 5 s).
    pub operation_timeout: Duration,
}

impl PostgresConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            schema: None,
            table: "sessions".into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(3),
            operation_timeout: Duration::from_secs(5),
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
    delete_if: String,
    touch: String,
    now: String,
    flush: String,
    clear: String,
    len: String,
}

impl Queries {
    fn new(t: &str) -> Self {
        Queries {
            exists: format!("SELECT EXISTS(SELECT 1 FROM {t} WHERE id = $1)"),
            get: format!(
                "SELECT record, expires_at, version FROM {t} WHERE id = $1 AND expires_at > {NOW}"
            ),
            set: format!(
                "INSERT INTO {t} (id, record, expires_at, version) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record,
                 expires_at = excluded.expires_at, version = excluded.version"
            ),
            delete: format!("DELETE FROM {t} WHERE id = $1"),
            create: format!(
                "INSERT INTO {t} (id, record, expires_at, version) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO NOTHING"
            ),
            // Each of these locks the row first (`cur`), then judges its
            // expiry by the clock read after the lock is held (`judged`, a
            // level above the lock; see `CLOCK`), so an operation that waited
            // for a concurrent writer acts on that writer's result and on the
            // time it got the row, and one that waited past the expiry does
            // not revive the record. `live` and `version` are those of the
            // newest committed version of the row, and the write acts on
            // exactly what was judged.
            update: format!(
                "WITH cur AS MATERIALIZED (
                     SELECT id, version, expires_at FROM {t} WHERE id = $1 FOR UPDATE
                 ), judged AS MATERIALIZED (
                     SELECT id, version, expires_at > {CLOCK} AS live FROM cur
                 ), saved AS (
                     UPDATE {t} AS s SET record = $2, expires_at = GREATEST(s.expires_at, $3), version = $4
                     FROM judged WHERE s.id = judged.id AND judged.live AND judged.version = $5
                     RETURNING 1
                 )
                 SELECT COALESCE((SELECT live FROM judged), false), EXISTS(SELECT 1 FROM saved)"
            ),
            delete_if: format!(
                "WITH cur AS MATERIALIZED (
                     SELECT id, version, expires_at FROM {t} WHERE id = $1 FOR UPDATE
                 ), judged AS MATERIALIZED (
                     SELECT id, version, expires_at > {CLOCK} AS live FROM cur
                 ), gone AS (
                     DELETE FROM {t} AS s USING judged
                     WHERE s.id = judged.id AND judged.live AND judged.version = $2 RETURNING 1
                 )
                 SELECT COALESCE((SELECT live FROM judged), false), EXISTS(SELECT 1 FROM gone)"
            ),
            touch: format!(
                "WITH cur AS MATERIALIZED (
                     SELECT id, expires_at FROM {t} WHERE id = $1 FOR UPDATE
                 ), judged AS MATERIALIZED (
                     SELECT id, expires_at > {CLOCK} AS live FROM cur
                 )
                 UPDATE {t} AS s SET expires_at = GREATEST(s.expires_at, $2)
                 FROM judged WHERE s.id = judged.id AND judged.live"
            ),
            now: format!("SELECT {NOW}"),
            // A batch reports how many rows it found as well as how many it
            // deleted: rows found may be deleted by others meanwhile, so only
            // a batch that finds none proves the work is done. The expiry is
            // checked again on the deleted row itself because, after waiting
            // for a concurrent writer's lock, PostgreSQL re-checks only the
            // DELETE's own conditions against the new row version; a row
            // extended meanwhile must be spared.
            flush: format!(
                "WITH batch AS (
                     SELECT id FROM {t} WHERE expires_at <= $1 ORDER BY expires_at LIMIT {DELETE_BATCH}
                 ), gone AS (
                     DELETE FROM {t} AS s USING batch
                     WHERE s.id = batch.id AND s.expires_at <= $1 RETURNING 1
                 )
                 SELECT (SELECT COUNT(*) FROM batch), (SELECT COUNT(*) FROM gone)"
            ),
            clear: format!(
                "WITH batch AS (
                     SELECT id FROM {t} ORDER BY id LIMIT {DELETE_BATCH}
                 ), gone AS (
                     DELETE FROM {t} AS s USING batch WHERE s.id = batch.id
                 )
                 SELECT COUNT(*) FROM batch"
            ),
            len: format!("SELECT COUNT(*) FROM {t} WHERE expires_at > {NOW}"),
        }
    }
}

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: PgPool,
    schema: Option<String>,
    /// The table name as PostgreSQL stores it (unquoted names fold to lower
    /// case): the key of this table's rows in [`MIGRATIONS_TABLE`].
    name: String,
    qualified: String,
    address: String,
    operation_timeout: Duration,
    sql: Queries,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("address", &self.address)
            .field("table", &self.qualified)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` with the default configuration (table `sessions`).
    /// Call [`migrate`](Self::migrate) before first use.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(PostgresConfig::new(url)).await
    }

    /// Connects as `config` says, checking the server answers.
    pub async fn connect_with(config: PostgresConfig) -> Result<Self> {
        let address = redact_url(&config.url);
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size.max(1))
            .acquire_timeout(config.connect_timeout)
            .connect_lazy(&config.url)
            .map_err(|e| Error::Config(format!("postgres url {address}: {e}")))?;
        let mut store = Self::new(pool, config.schema.as_deref(), &config.table)?;
        store.address = address;
        store.operation_timeout = config.operation_timeout;
        let ping = sqlx::query("SELECT 1").execute(&store.pool);
        store.run("connect", ping).await?;
        Ok(store)
    }

    /// A store over a pool you already have.
    pub fn new(pool: PgPool, schema: Option<&str>, table: &str) -> Result<Self> {
        check_sql_identifier("table name", table)?;
        if table.len() > MAX_TABLE_NAME_LEN {
            return Err(Error::Config(format!(
                "table name {table:?} is {} bytes; PostgreSQL session tables are limited to {MAX_TABLE_NAME_LEN} bytes so that the index name {table}{INDEX_SUFFIX} fits PostgreSQL's 63-byte identifiers",
                table.len()
            )));
        }
        if let Some(schema) = schema {
            check_sql_identifier("schema name", schema)?;
        }
        let qualified = match schema {
            Some(schema) => format!("{schema}.{table}"),
            None => table.to_owned(),
        };
        Ok(PostgresStore {
            sql: Queries::new(&qualified),
            pool,
            schema: schema.map(str::to_owned),
            name: table.to_ascii_lowercase(),
            qualified,
            address: "postgres (pool)".into(),
            operation_timeout: Duration::from_secs(5),
        })
    }

    /// The table, schema-qualified when a schema was given.
    pub fn table(&self) -> &str {
        &self.qualified
    }

    /// The pool, e.g. to share it with the rest of the app.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates (or upgrades) the schema, the table and its index,
    /// idempotently. Safe to run twice or from two processes at once: the
    /// steps run in one transaction under a transaction-scoped advisory lock.
    ///
    /// A table migrated by an earlier version of this crate, which kept its
    /// record in a table `<table>_migrations` and named its index
    /// `<schema>_<table>_expires_at`, is adopted: its record moves to
    /// [`MIGRATIONS_TABLE`], the index is renamed, its sessions stay.
    pub async fn migrate(&self) -> Result<()> {
        let work = async {
            let mut tx = self.pool.begin().await?;
            migrate_steps(&mut tx, self).await?;
            tx.commit().await
        };
        self.run("migrate", work).await
    }

    /// Drops the table (with its index) and its rows in
    /// [`MIGRATIONS_TABLE`], and nothing else (for tests and teardown).
    pub async fn drop_table(&self) -> Result<()> {
        let work = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(&format!("DROP TABLE IF EXISTS {}", self.qualified))
                .execute(&mut *tx)
                .await?;
            let migrations = self.migrations_table();
            let recorded: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(&migrations)
                .fetch_one(&mut *tx)
                .await?;
            if recorded {
                sqlx::query(&format!("DELETE FROM {migrations} WHERE table_name = $1"))
                    .bind(&self.name)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        };
        self.run("drop table", work).await
    }

    /// [`MIGRATIONS_TABLE`], quoted and in this store's schema.
    fn migrations_table(&self) -> String {
        self.qualify(&format!("\"{MIGRATIONS_TABLE}\""))
    }

    /// `name` in this store's schema (or unqualified, on the search path).
    fn qualify(&self, name: &str) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{name}"),
            None => name.to_owned(),
        }
    }

    fn context(&self, what: &str) -> String {
        format!("{what} on table {} at {}", self.qualified, self.address)
    }

    async fn run<T, Fut>(&self, what: &str, work: Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        // No connection from the pool: nothing was sent, and the manager
        // knows it (`Error::Unavailable`).
        timed_unsent_aware(
            STORE,
            self.operation_timeout,
            || self.context(what),
            |e: &sqlx::Error| matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed),
            work,
        )
        .await
    }
}

/// PostgreSQL's cut of an identifier to 63 bytes (names here are ASCII).
fn pg_identifier(name: &str) -> &str {
    &name[..name.len().min(63)]
}

/// Applies the migrations not yet recorded, inside the caller's transaction.
async fn migrate_steps(
    conn: &mut PgConnection,
    store: &PostgresStore,
) -> std::result::Result<(), sqlx::Error> {
    let t = &store.qualified;
    // One lock for every session-store migration: schema creation races
    // too, and migrations are rare.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind("session-store migrate")
        .execute(&mut *conn)
        .await?;
    if let Some(schema) = &store.schema {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut *conn)
            .await?;
    }
    let migrations = store.migrations_table();
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {migrations} (
            table_name text NOT NULL,
            version bigint NOT NULL,
            applied_at bigint NOT NULL,
            PRIMARY KEY (table_name, version)
        )"
    ))
    .execute(&mut *conn)
    .await?;
    let mut done: i64 = sqlx::query_scalar(&format!(
        "SELECT COALESCE(MAX(version), 0) FROM {migrations} WHERE table_name = $1"
    ))
    .bind(&store.name)
    .fetch_one(&mut *conn)
    .await?;
    let index = format!("\"{}{INDEX_SUFFIX}\"", store.name);
    if done == 0 {
        done = adopt_legacy(conn, store, &migrations, &index).await?;
    }
    for (version, statements) in MIGRATIONS {
        if *version <= done {
            continue;
        }
        for ddl in *statements {
            let ddl = ddl.replace("{t}", t).replace("{index}", &index);
            sqlx::query(&ddl).execute(&mut *conn).await?;
        }
        sqlx::query(&format!(
            "INSERT INTO {migrations} (table_name, version, applied_at) VALUES ($1, $2, $3)"
        ))
        .bind(&store.name)
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
/// `applied_at`) and named its index `<schema>_<table>_expires_at`; returns
/// the version it had reached (0 when there is nothing to adopt).
///
/// A table of that name is taken for such a record only by its shape: it may
/// as well be the session table of a store named `<table>_migrations`,
/// which is left alone. The record moves to [`MIGRATIONS_TABLE`] and its old
/// table is dropped, freeing the name for a store that wants it; the index,
/// found by name among this table's own indexes only, is renamed for the
/// same reason.
async fn adopt_legacy(
    conn: &mut PgConnection,
    store: &PostgresStore,
    migrations: &str,
    index: &str,
) -> std::result::Result<i64, sqlx::Error> {
    let legacy = store.qualify(pg_identifier(&format!("{}_migrations", store.name)));
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
         ORDER BY attname",
    )
    .bind(&legacy)
    .fetch_all(&mut *conn)
    .await?;
    if columns != ["applied_at", "version"] {
        return Ok(0);
    }
    let table_exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&store.qualified)
        .fetch_one(&mut *conn)
        .await?;
    let mut done = 0;
    if table_exists {
        done = sqlx::query_scalar(&format!("SELECT COALESCE(MAX(version), 0) FROM {legacy}"))
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO {migrations} (table_name, version, applied_at)
             SELECT $1, version, applied_at FROM {legacy} ON CONFLICT DO NOTHING"
        ))
        .bind(&store.name)
        .execute(&mut *conn)
        .await?;
        let old_index = pg_identifier(&format!(
            "{}_expires_at",
            store.qualified.replace('.', "_").to_ascii_lowercase()
        ))
        .to_owned();
        let found: Option<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE i.indrelid = to_regclass($1) AND c.relname = $2",
        )
        .bind(&store.qualified)
        .bind(&old_index)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(old) = found {
            sqlx::query(&format!("ALTER INDEX {old} RENAME TO {index}"))
                .execute(&mut *conn)
                .await?;
        }
        // Whatever became of the old index, the table has one now.
        sqlx::query(&format!(
            "CREATE INDEX IF NOT EXISTS {index} ON {} (expires_at)",
            store.qualified
        ))
        .execute(&mut *conn)
        .await?;
    }
    // Without its table the record is stale (the table was dropped by hand).
    sqlx::query(&format!("DROP TABLE {legacy}"))
        .execute(&mut *conn)
        .await?;
    tracing::info!(table = %store.qualified, version = done, "adopted the migration record of an earlier version");
    Ok(done)
}

#[async_trait]
impl SessionInterface for PostgresStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        let q = sqlx::query_scalar(&self.sql.exists).bind(&id.as_bytes()[..]);
        self.run("exists", q.fetch_one(&self.pool)).await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let q = sqlx::query(&self.sql.get).bind(&id.as_bytes()[..]);
        let Some(row) = self.run("get", q.fetch_optional(&self.pool)).await? else {
            return Ok(None);
        };
        let columns = (|| {
            Ok::<_, sqlx::Error>((
                row.try_get::<Vec<u8>, _>(0)?,
                row.try_get::<i64, _>(1)?,
                row.try_get::<i64, _>(2)?,
            ))
        })();
        let (record, expires_at, version) =
            columns.map_err(|e| Error::decode(self.context("get"), e))?;
        let origin = format!("row {id} of table {}", self.qualified);
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
        self.run("set", q.execute(&self.pool)).await.map(drop)
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        let q = sqlx::query(&self.sql.delete).bind(&id.as_bytes()[..]);
        self.run("delete", q.execute(&self.pool)).await.map(drop)
    }

    async fn create(&self, session: &Session) -> Result<()> {
        let version = storable_version(session.id(), session.version())?;
        let record = codec::encode(session, session.version())?;
        let q = sqlx::query(&self.sql.create)
            .bind(session.id().as_bytes().to_vec())
            .bind(record)
            .bind(session.expires_at_millis())
            .bind(version);
        if self
            .run("create", q.execute(&self.pool))
            .await?
            .rows_affected()
            == 1
        {
            Ok(())
        } else {
            Err(Error::IdCollision { id: session.id() })
        }
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        // `next_version` keeps both versions within `i64`.
        let version = next_version(session.id(), expected_version)?;
        let record = codec::encode(session, version)?;
        let id = session.id();
        let id = &id.as_bytes()[..];
        let q = sqlx::query_as::<_, (bool, bool)>(&self.sql.update)
            .bind(id)
            .bind(record)
            .bind(session.expires_at_millis())
            .bind(version as i64)
            .bind(expected_version as i64);
        let (live, saved) = self.run("update", q.fetch_one(&self.pool)).await?;
        Ok(match (live, saved) {
            (_, true) => UpdateOutcome::Updated { version },
            (true, false) => UpdateOutcome::Conflict,
            (false, false) => UpdateOutcome::Gone,
        })
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        // A version no record can hold binds as NULL, which equals nothing.
        let expected = i64::try_from(expected_version).ok();
        let q = sqlx::query_as::<_, (bool, bool)>(&self.sql.delete_if)
            .bind(&id.as_bytes()[..])
            .bind(expected);
        let (live, deleted) = self.run("delete_if", q.fetch_one(&self.pool)).await?;
        Ok(match (live, deleted) {
            (_, true) => DeleteOutcome::Deleted,
            (true, false) => DeleteOutcome::Conflict,
            (false, false) => DeleteOutcome::Gone,
        })
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let q = sqlx::query(&self.sql.touch)
            .bind(&id.as_bytes()[..])
            .bind(unix_millis(expires_at));
        Ok(self
            .run("touch", q.execute(&self.pool))
            .await?
            .rows_affected()
            == 1)
    }

    async fn flush(&self) -> Result<u64> {
        // One cutoff, the server's now at the start: what expired later is
        // the next flush's work, so a steady trickle cannot keep this one
        // running.
        let cutoff: i64 = self
            .run(
                "flush",
                sqlx::query_scalar(&self.sql.now).fetch_one(&self.pool),
            )
            .await?;
        let mut total = 0;
        loop {
            let q = sqlx::query_as::<_, (i64, i64)>(&self.sql.flush).bind(cutoff);
            let (found, deleted) = self.run("flush", q.fetch_one(&self.pool)).await?;
            total += deleted.max(0) as u64;
            if found == 0 {
                return Ok(total);
            }
        }
    }

    async fn clear(&self) -> Result<()> {
        loop {
            let q = sqlx::query_scalar::<_, i64>(&self.sql.clear);
            let found = self.run("clear", q.fetch_one(&self.pool)).await?;
            if found == 0 {
                return Ok(());
            }
        }
    }

    async fn len(&self) -> Result<u64> {
        let q = sqlx::query_scalar::<_, i64>(&self.sql.len);
        Ok(self.run("len", q.fetch_one(&self.pool)).await?.max(0) as u64)
    }
}

/// A throwaway PostgreSQL in a Docker container, for users who have Docker.
#[cfg(feature = "testcontainers")]
pub mod container {
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::runners::AsyncRunner as _;
    use testcontainers_modules::testcontainers::ContainerAsync;

    use super::{PostgresStore, Result, STORE};
    use session_store::Error;

    /// Starts a PostgreSQL container, connects a store to it and migrates.
    /// Keep the container alive as long as the store is used.
    pub async fn start() -> Result<(ContainerAsync<Postgres>, PostgresStore)> {
        let container = Postgres::default()
            .start()
            .await
            .map_err(|e| Error::backend(STORE, "starting a PostgreSQL container", e))?;
        let port = container
            .get_host_port_ipv4(5432)
            .await
            .map_err(|e| Error::backend(STORE, "reading the container's port", e))?;
        let store = PostgresStore::connect(&format!(
            "postgres://postgres:postgres@127.0.0.1:{port}/postgres"
        ))
        .await?;
        store.migrate().await?;
        Ok((container, store))
    }
}

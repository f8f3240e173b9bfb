//! # session-store-postgres
//!
//! A [`SessionInterface`] store on PostgreSQL through sqlx (runtime
//! queries: nothing needs a database at compile time).
//!
//! One table (default `sessions`, optionally in a schema): `id` (`bytea`,
//! the 32-byte id, primary key), `record` (`bytea`, the core's encoded
//! record), `expires_at` (`bigint` Unix ms, indexed), `version` (`bigint`),
//! and `user_key` (`text`, the record's user key, NULL for a session bound to
//! no user, in a partial index `<table>$user_key` of the bound ones), which
//! `set`, `create` and `update` write in the same statement as the record.
//! [`PostgresStore::migrate`] creates or upgrades it, recording what it did
//! in [`MIGRATIONS_TABLE`] (one per schema, shared by the stores in it); the
//! index is `<table>$expires_at`. Names with a `$` can never be another
//! store's table, and table names are at most [`MAX_TABLE_NAME_LEN`] bytes
//! so the index name fits PostgreSQL's 63. Every operation is one statement
//! (`flush` and `clear`: one a batch): `sessions_of` a `SELECT` through the
//! user index, `revoke_user` a `DELETE … RETURNING id` (run again, up to 5
//! tries in all, when PostgreSQL undoes it to break a deadlock).
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
//! What every SQL store does alike (batch loops, migrations bookkeeping,
//! decoding, error mapping) is `session-store-sql`'s; this crate is the
//! PostgreSQL dialect: its statements, its migration lock, and the adoption
//! of its earlier layout.
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
//!
//! [`SessionInterface`]: session_store::SessionInterface
#![warn(missing_docs)]

use std::time::Duration;

use async_trait::async_trait;
use session_store::backend::{check_sql_identifier, redact_url};
use session_store::Result;
use session_store_sql::{
    check_table_name, lazy_pool, max_table_name_len, session_interface, Batches, Clock,
    Connections, DeadlockRetry, Dialect, Judged, LegacyLayout, MigrationStatements, Migrations,
    Setup, SqlStore, Statements, Update, DELETE_BATCH,
};
use sqlx::postgres::{PgArguments, PgPool, PgQueryResult};
use sqlx::query::Query;
use sqlx::Postgres;

pub use session_store_sql::{MIGRATIONS_TABLE, PING_AFTER_IDLE};
pub use sqlx;

const STORE: &str = "postgres";

/// PostgreSQL's `deadlock_detected`: the statement was undone to break a
/// deadlock.
const DEADLOCK_DETECTED: &str = "40P01";

/// Whether PostgreSQL undid the statement to break a deadlock.
fn deadlocked(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == DEADLOCK_DETECTED)
}

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

/// The longest table name accepted, in bytes: PostgreSQL cuts identifiers
/// to 63 bytes, and the index name `<table>$expires_at` must fit whole (cut
/// short, it would name the table itself).
pub const MAX_TABLE_NAME_LEN: usize = max_table_name_len(63);

/// Versioned DDL: each step runs once, in order, recorded in
/// [`MIGRATIONS_TABLE`]. `{t}` is the (qualified) table, `{index}` the
/// quoted index name.
///
/// `fillfactor = 70` leaves room on each page so that saves, which rewrite a
/// row without changing its indexed columns, stay heap-only (HOT) updates
/// and touch no index.
///
/// Step 2 adds the user index. Adding a nullable column rewrites no row,
/// and every row already stored is bound to no user (records bound to one
/// are written only by code that also writes `user_key`), so NULL is the
/// truth for each of them. `COLLATE "C"` compares byte for byte whatever
/// the database's collation (`Ada` is not `ada`, `ada ` is not `ada`). The
/// index is partial: the sessions bound to no user, most of them, are not
/// in it. A save that keeps the binding writes the same `user_key`, which
/// PostgreSQL sees as unchanged, so it stays a HOT update. Building the
/// index holds writes to the table off while it scans it, once.
const MIGRATIONS: Migrations = &[
    (
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
    ),
    (
        2,
        &[
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS user_key text COLLATE \"C\"",
            "CREATE INDEX IF NOT EXISTS {user_index} ON {t} (user_key) WHERE user_key IS NOT NULL",
        ],
    ),
];

/// The statements every SQL store has, in PostgreSQL, on the table `t`
/// (qualified by `schema`, if any) whose key is `key`.
fn statements(schema: Option<&str>, t: &str, key: &str) -> Statements {
    let migrations = migrations_table(schema);
    let record_table = qualify(schema, pg_identifier(&format!("{key}_migrations")));
    Statements {
        exists: format!("SELECT EXISTS(SELECT 1 FROM {t} WHERE id = $1)"),
        get: format!(
            "SELECT record, expires_at, version FROM {t} WHERE id = $1 AND expires_at > {NOW}"
        ),
        set: format!(
            "INSERT INTO {t} (id, record, expires_at, version, user_key) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record,
             expires_at = excluded.expires_at, version = excluded.version,
             user_key = excluded.user_key"
        ),
        delete: format!("DELETE FROM {t} WHERE id = $1"),
        create: format!(
            "INSERT INTO {t} (id, record, expires_at, version, user_key) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING"
        ),
        len: format!("SELECT COUNT(*) FROM {t} WHERE expires_at > {NOW}"),
        // `user_key = $1` implies `user_key IS NOT NULL` (`=` is strict), so
        // the planner may use the partial index.
        sessions_of: format!(
            "SELECT id, record, expires_at, version FROM {t}
             WHERE user_key = $1 AND expires_at > {NOW}"
        ),
        clock: Clock::Server {
            now: format!("SELECT {NOW}"),
        },
        // The expiry is checked again on the deleted row itself because,
        // after waiting for a concurrent writer's lock, PostgreSQL re-checks
        // only the DELETE's own conditions against the new row version; a
        // row extended meanwhile must be spared.
        batches: Batches::Counted {
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
                     DELETE FROM {t} AS s USING batch WHERE s.id = batch.id RETURNING 1
                 )
                 SELECT (SELECT COUNT(*) FROM batch), (SELECT COUNT(*) FROM gone)"
            ),
        },
        migrations: MigrationStatements {
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS {migrations} (
                    table_name text NOT NULL,
                    version bigint NOT NULL,
                    applied_at bigint NOT NULL,
                    PRIMARY KEY (table_name, version)
                )"
            ),
            recorded: format!(
                "SELECT COALESCE(MAX(version), 0) FROM {migrations} WHERE table_name = $1"
            ),
            record: format!(
                "INSERT INTO {migrations} (table_name, version, applied_at) VALUES ($1, $2, $3)"
            ),
        },
        // The earlier layout: `<table>_migrations` and an index named
        // `<schema>_<table>_expires_at`, which is renamed.
        legacy: Some(LegacyLayout {
            columns: "SELECT attname::text FROM pg_attribute
                      WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
                      ORDER BY attname"
                .into(),
            table_ref: t.to_owned(),
            table_exists: "SELECT to_regclass($1) IS NOT NULL".into(),
            copy: format!(
                "INSERT INTO {migrations} (table_name, version, applied_at)
                 SELECT $1, version, applied_at FROM {record_table} ON CONFLICT DO NOTHING"
            ),
            record_table,
            old_index: pg_identifier(&format!(
                "{}_expires_at",
                t.replace('.', "_").to_ascii_lowercase()
            ))
            .to_owned(),
            find_old_index: "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i
                             JOIN pg_class c ON c.oid = i.indexrelid
                             JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE i.indrelid = to_regclass($1) AND c.relname = $2"
                .into(),
            replace_old_index: "ALTER INDEX {old} RENAME TO {index}",
        }),
    }
}

/// The PostgreSQL dialect: the pool (for transactions), where the table
/// lives, and the compare-and-set statements.
struct PostgresDialect {
    pool: PgPool,
    schema: Option<String>,
    /// The table name as PostgreSQL stores it (unquoted names fold to lower
    /// case): the key of this table's rows in [`MIGRATIONS_TABLE`].
    key: String,
    /// Whether the record `$1` is live at a version other than `$2` (a
    /// conflict), as `1` or `0` (no row: gone).
    conflict: String,
    update: String,
    delete_if: String,
    touch: String,
    revoke_user: String,
}

impl PostgresDialect {
    fn new(pool: PgPool, schema: Option<&str>, table: &str, t: &str) -> Self {
        // Each write locks the row `$1` first (`cur`), then judges its
        // expiry by the clock read after the lock is held (`judged`, a level
        // above the lock; see `CLOCK`), so an operation that waited for a
        // concurrent writer acts on that writer's result and on the time it
        // got the row, and one that waited past the expiry does not revive
        // the record. `live` and `version` are those of the newest committed
        // version of the row, and the write acts on exactly what was judged.
        //
        // The judgement is an uncorrelated subquery of the write's `WHERE`:
        // PostgreSQL runs it once, as a one-time filter before the write's
        // own scan, so the lock is held and the row judged before the write
        // reads it. The write then finds the newest version (following a
        // concurrent writer's update, as ever) locked by its own
        // transaction: nothing can change it in between. This costs less
        // than joining the write to the judgement (one plan node instead of
        // a join and two more CTE scans). A write that does not apply
        // changes no row; `write_or_judge` then reads whether the record is
        // live at another version, which a miss alone cannot tell (a
        // conflict, or gone).
        let judged = format!(
            "WITH judged AS MATERIALIZED (
                 SELECT version, expires_at > {CLOCK} AS live FROM (
                     SELECT version, expires_at FROM {t} WHERE id = $1 FOR UPDATE
                 ) AS cur
             )"
        );
        PostgresDialect {
            pool,
            schema: schema.map(str::to_owned),
            key: table.to_ascii_lowercase(),
            // `IS DISTINCT FROM`: no expected version (NULL) differs from
            // every stored one.
            conflict: format!(
                "SELECT (expires_at > {CLOCK} AND version IS DISTINCT FROM $2)::int::bigint
                 FROM {t} WHERE id = $1"
            ),
            update: format!(
                "{judged}
                 UPDATE {t} AS s SET record = $2, expires_at = GREATEST(s.expires_at, $3),
                 version = $4, user_key = $6
                 WHERE s.id = $1 AND (SELECT live AND version = $5 FROM judged)"
            ),
            delete_if: format!(
                "{judged}
                 DELETE FROM {t} AS s
                 WHERE s.id = $1 AND (SELECT live AND version = $2 FROM judged)"
            ),
            touch: format!(
                "{judged}
                 UPDATE {t} AS s SET expires_at = GREATEST(s.expires_at, $2)
                 WHERE s.id = $1 AND (SELECT live FROM judged)"
            ),
            // A row a concurrent writer holds is deleted once that writer
            // commits, if it is still bound to the user then (PostgreSQL
            // checks the conditions again on the row's newest version), so
            // a row rebound meanwhile is spared and `RETURNING` names
            // exactly the rows deleted.
            revoke_user: format!("DELETE FROM {t} WHERE user_key = $1 AND id <> $2 RETURNING id"),
        }
    }
}

/// `name` in `schema` (or unqualified, on the search path).
fn qualify(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(schema) => format!("{schema}.{name}"),
        None => name.to_owned(),
    }
}

/// [`MIGRATIONS_TABLE`], quoted and in `schema`.
fn migrations_table(schema: Option<&str>) -> String {
    qualify(schema, &format!("\"{MIGRATIONS_TABLE}\""))
}

/// PostgreSQL's cut of an identifier to 63 bytes (names here are ASCII).
fn pg_identifier(name: &str) -> &str {
    &name[..name.len().min(63)]
}

#[async_trait]
impl Dialect for PostgresDialect {
    type Db = sqlx::Postgres;
    const STORE: &'static str = STORE;
    const QUOTE: char = '"';
    const MIGRATIONS: Migrations = MIGRATIONS;

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn bind_user_key<'q>(
        query: Query<'q, Postgres, PgArguments>,
        user_key: Option<&'q str>,
    ) -> Query<'q, Postgres, PgArguments> {
        query.bind(user_key)
    }

    async fn migrate(&self, store: &SqlStore<Self>) -> Result<()> {
        let work = async {
            let mut tx = self.pool.begin().await?;
            // One lock for every session-store migration: schema creation
            // races too, and migrations are rare. It ends with the
            // transaction.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind("session-store migrate")
                .execute(&mut *tx)
                .await?;
            if let Some(schema) = &self.schema {
                sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                    .execute(&mut *tx)
                    .await?;
            }
            store.apply_migrations(&mut tx, &self.key).await?;
            tx.commit().await
        };
        store.run_migration(work).await
    }

    async fn update(&self, store: &SqlStore<Self>, update: Update<'_>) -> Result<Judged> {
        let write = sqlx::query(&self.update)
            .bind(update.id)
            .bind(update.record)
            .bind(update.expires_at)
            .bind(update.version)
            .bind(update.expected)
            .bind(update.user_key);
        let judge = sqlx::query(&self.conflict)
            .bind(update.id)
            .bind(update.expected);
        store.write_or_judge("update", write, judge).await
    }

    async fn delete_if(
        &self,
        store: &SqlStore<Self>,
        id: &[u8],
        expected: Option<i64>,
    ) -> Result<Judged> {
        // `None` binds as NULL, which equals nothing.
        let write = sqlx::query(&self.delete_if).bind(id).bind(expected);
        let judge = sqlx::query(&self.conflict).bind(id).bind(expected);
        store.write_or_judge("delete_if", write, judge).await
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
        let work = async {
            let mut conn = store.writer().await?;
            let mut retry = DeadlockRetry::new("revoke_user", store.table());
            loop {
                let deleted = sqlx::query_scalar(&self.revoke_user)
                    .bind(user_key)
                    .bind(except)
                    .fetch_all(&mut *conn)
                    .await;
                match deleted {
                    // One statement, and PostgreSQL undid all of it: running
                    // it again cannot delete twice, and it judges each row
                    // afresh.
                    Err(e) if deadlocked(&e) && retry.left() => retry.pause().await,
                    deleted => return deleted,
                }
            }
        };
        store.run("revoke_user", work).await
    }
}

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

/// The PostgreSQL store.
pub struct PostgresStore {
    engine: SqlStore<PostgresDialect>,
}

session_interface!(PostgresStore => engine);

impl PostgresStore {
    /// Connects to `url` with the default configuration (table `sessions`).
    /// Call [`migrate`](Self::migrate) before first use.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(PostgresConfig::new(url)).await
    }

    /// Connects as `config` says, checking the server answers.
    pub async fn connect_with(config: PostgresConfig) -> Result<Self> {
        let pool = lazy_pool(STORE, &config.url, config.pool_size, config.connect_timeout)?;
        let store = Self::build(
            pool,
            config.schema.as_deref(),
            &config.table,
            redact_url(&config.url),
            config.operation_timeout,
        )?;
        store.engine.ping().await?;
        Ok(store)
    }

    /// A store over a pool you already have.
    pub fn new(pool: PgPool, schema: Option<&str>, table: &str) -> Result<Self> {
        Self::build(
            pool,
            schema,
            table,
            "postgres (pool)".into(),
            Duration::from_secs(5),
        )
    }

    fn build(
        pool: PgPool,
        schema: Option<&str>,
        table: &str,
        address: String,
        operation_timeout: Duration,
    ) -> Result<Self> {
        check_table_name(table, "PostgreSQL", Some(63))?;
        if let Some(schema) = schema {
            check_sql_identifier("schema name", schema)?;
        }
        let qualified = qualify(schema, table);
        let dialect = PostgresDialect::new(pool.clone(), schema, table, &qualified);
        let statements = statements(schema, &qualified, &dialect.key);
        Ok(PostgresStore {
            engine: SqlStore::new(Setup {
                dialect,
                connections: Connections::Pool(pool),
                table_sql: qualified.clone(),
                table_name: qualified,
                location: format!("at {address}"),
                operation_timeout,
                statements,
            }),
        })
    }

    /// The table, schema-qualified when a schema was given.
    pub fn table(&self) -> &str {
        self.engine.table()
    }

    /// The pool, e.g. to share it with the rest of the app.
    pub fn pool(&self) -> &PgPool {
        &self.engine.dialect().pool
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
        self.engine.migrate().await
    }

    /// Drops the table (with its index) and its rows in
    /// [`MIGRATIONS_TABLE`], and nothing else (for tests and teardown).
    pub async fn drop_table(&self) -> Result<()> {
        let dialect = self.engine.dialect();
        let work = async {
            let mut tx = dialect.pool.begin().await?;
            sqlx::query(&format!("DROP TABLE IF EXISTS {}", self.engine.table_sql()))
                .execute(&mut *tx)
                .await?;
            let migrations = migrations_table(dialect.schema.as_deref());
            let recorded: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(&migrations)
                .fetch_one(&mut *tx)
                .await?;
            if recorded {
                sqlx::query(&format!("DELETE FROM {migrations} WHERE table_name = $1"))
                    .bind(&dialect.key)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        };
        self.engine.run("drop table", work).await
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

//! # session-store-mysql
//!
//! A [`SessionInterface`] store on MySQL or MariaDB (InnoDB) through sqlx
//! (runtime queries: nothing needs a database at compile time).
//!
//! One table (default `sessions`, in the connection's database): `id`
//! (`BINARY(32)`, the session id, primary key), `record` (`LONGBLOB`, the
//! core's encoded record), `expires_at` (`BIGINT` Unix ms, indexed as
//! `expires_at`), `version` (`BIGINT`). [`MysqlStore::migrate`] creates or
//! upgrades it, recording what it did in [`MIGRATIONS_TABLE`] (one per
//! database, shared by the stores in it, keyed by table name). Names with a
//! `$` can never be another store's table: table names are plain SQL
//! identifiers (checked, then quoted with backticks, so reserved words work).
//!
//! | operation | statements | round trips |
//! | --- | --- | --- |
//! | `get`, `exists`, `len`, `set`, `delete` | one | 1 |
//! | `create` | `INSERT`; a duplicate key is [`Error::IdCollision`] | 1 |
//! | `update`, `delete_if`, `touch` | transaction: `SELECT … FOR UPDATE`, then the write when it applies, `COMMIT` | 3–4 |
//! | `flush`, `clear` | a clock read (`flush`), then per batch of 1000: `SELECT` ids, `DELETE` them | 2 per batch |
//! | `migrate` | `GET_LOCK`, then each missing step and its record | a few, once |
//!
//! **Clock.** Expiry is judged by the database server's clock, in Unix
//! milliseconds, never by the app's: app servers whose clocks disagree still
//! agree on what has expired. Plain reads (`get`, `len`) and `flush`'s cutoff
//! use `NOW(3)`, the start of their statement. The writes that need a live
//! record (`update`, `delete_if`, `touch`) lock its row with
//! `SELECT … FOR UPDATE` and read `SYSDATE(3)` in that same statement, which
//! the server evaluates when the row is returned, that is after the lock was
//! granted; so one that waited for a concurrent writer past the record's
//! expiry finds it expired and does not revive it. (A server started with
//! `--sysdate-is-now` makes `SYSDATE` the statement's start and loses that
//! property.) The expiries stored are the app's (`Session::expires_at`).
//! sqlx sets each connection's `time_zone` to `+00:00`, so
//! `UNIX_TIMESTAMP` never meets a daylight-saving gap.
//!
//! **Guarantees.** `create` never overwrites (the primary key decides).
//! `update` is a compare-and-set on the version under the row lock, stores
//! the next version ([`next_version`]) and never moves the stored expiry
//! earlier (`GREATEST(expires_at, ?)`); `touch` likewise, and never revives
//! an expired record. `get` reports the `expires_at` column, which is
//! authoritative over the expiry inside the encoded record. `flush` and
//! `clear` delete in batches until a batch *finds* nothing; `flush`'s
//! `DELETE` repeats the expiry condition, which InnoDB checks on the row
//! it locked, so a row extended meanwhile is spared. Migrations run under
//! `GET_LOCK`, so two processes migrating at once apply each step once.
//!
//! ```no_run
//! # async fn demo() -> session_store::Result<()> {
//! use session_store_mysql::{MysqlConfig, MysqlStore};
//! let store = MysqlStore::connect_with(MysqlConfig {
//!     table: "app_sessions".into(),
//!     ..MysqlConfig::new("mysql://root@127.0.0.1:3306/test")
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
    codec, now_millis, unix_millis, BoxError, DeleteOutcome, Error, Result, Session, SessionId,
    SessionInterface, UpdateOutcome,
};
use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::Row as _;

pub use sqlx;

const STORE: &str = "mysql";

/// The server's clock in Unix milliseconds at the start of the statement.
const NOW: &str = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)";

/// The server's clock in Unix milliseconds when the expression is evaluated:
/// in a locking read, after the row lock was granted (see the crate docs).
const CLOCK: &str = "CAST(UNIX_TIMESTAMP(SYSDATE(3)) * 1000 AS SIGNED)";

/// Rows deleted per statement in `flush` and `clear`, so no statement holds
/// row locks for long.
const DELETE_BATCH: usize = 1000;

/// The table, shared by every store in one database, that records which
/// migrations ran on which session table (`table_name`, `version`,
/// `applied_at`). Its `$` keeps it from ever being a session table.
pub const MIGRATIONS_TABLE: &str = "session_store$migrations";

/// The `GET_LOCK` name every migration of this crate takes: creating the
/// shared migrations table races too, and migrations are rare.
const MIGRATE_LOCK: &str = "session-store migrate";

/// Versioned DDL: each step runs once, in order, recorded in
/// [`MIGRATIONS_TABLE`]. `{t}` is the quoted table. MySQL DDL is not
/// transactional, so each step is idempotent by itself (`IF NOT EXISTS`)
/// in case a process dies between a step and its record.
const MIGRATIONS: &[(i64, &[&str])] = &[(
    1,
    &["CREATE TABLE IF NOT EXISTS {t} (
            id BINARY(32) NOT NULL PRIMARY KEY,
            record LONGBLOB NOT NULL,
            expires_at BIGINT NOT NULL,
            version BIGINT NOT NULL,
            INDEX expires_at (expires_at)
        ) ENGINE = InnoDB"],
)];

/// How to reach MySQL/MariaDB and name the table.
#[derive(Clone, Debug)]
pub struct MysqlConfig {
    /// `mysql://user:password@host:port/database`.
    pub url: String,
    /// Table name (default `sessions`): a plain SQL identifier.
    pub table: String,
    /// Most pooled connections (default 16).
    pub pool_size: u32,
    /// Longest wait for a connection (default 3 s).
    pub connect_timeout: Duration,
    /// Longest time one operation may take before it is an error (default 5 s).
    pub operation_timeout: Duration,
}

impl MysqlConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        MysqlConfig {
            url: url.into(),
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
    lock: String,
    update: String,
    delete_row: String,
    touch: String,
    now: String,
    flush_find: String,
    flush_delete: String,
    clear_find: String,
    clear_delete: String,
    len: String,
}

impl Queries {
    fn new(t: &str) -> Self {
        let ids = vec!["?"; DELETE_BATCH].join(", ");
        Queries {
            exists: format!("SELECT COUNT(*) FROM {t} WHERE id = ?"),
            get: format!(
                "SELECT record, expires_at, version FROM {t} WHERE id = ? AND expires_at > {NOW}"
            ),
            set: format!(
                "INSERT INTO {t} (id, record, expires_at, version) VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE record = VALUES(record),
                 expires_at = VALUES(expires_at), version = VALUES(version)"
            ),
            delete: format!("DELETE FROM {t} WHERE id = ?"),
            create: format!(
                "INSERT INTO {t} (id, record, expires_at, version) VALUES (?, ?, ?, ?)"
            ),
            // The clock is in the locking read itself: `SYSDATE` is evaluated
            // when the row is returned, after the lock was granted.
            lock: format!("SELECT version, expires_at, {CLOCK} FROM {t} WHERE id = ? FOR UPDATE"),
            update: format!(
                "UPDATE {t} SET record = ?, expires_at = GREATEST(expires_at, ?), version = ?
                 WHERE id = ?"
            ),
            delete_row: format!("DELETE FROM {t} WHERE id = ?"),
            touch: format!("UPDATE {t} SET expires_at = GREATEST(expires_at, ?) WHERE id = ?"),
            now: format!("SELECT {NOW}"),
            // A batch is found first and deleted by id: only a batch that
            // finds nothing proves the work done (rows found may be deleted
            // by others meanwhile). The `DELETE` always binds DELETE_BATCH
            // ids (a short batch repeats one) so it is one prepared
            // statement, and repeats the expiry condition, which InnoDB
            // checks on the newest version of the row it locked: a row
            // extended since it was found is spared.
            flush_find: format!(
                "SELECT id FROM {t} WHERE expires_at <= ? ORDER BY expires_at LIMIT {DELETE_BATCH}"
            ),
            flush_delete: format!("DELETE FROM {t} WHERE expires_at <= ? AND id IN ({ids})"),
            clear_find: format!("SELECT id FROM {t} ORDER BY id LIMIT {DELETE_BATCH}"),
            clear_delete: format!("DELETE FROM {t} WHERE id IN ({ids})"),
            len: format!("SELECT COUNT(*) FROM {t} WHERE expires_at > {NOW}"),
        }
    }
}

/// A row as the locking read saw it: its version, and whether it was live
/// by the server's clock read once the lock was held.
struct Locked {
    version: i64,
    live: bool,
}

/// The MySQL/MariaDB store.
pub struct MysqlStore {
    pool: MySqlPool,
    table: String,
    quoted: String,
    address: String,
    operation_timeout: Duration,
    sql: Queries,
}

impl fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlStore")
            .field("address", &self.address)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl MysqlStore {
    /// Connects to `url` with the default configuration (table `sessions`).
    /// Call [`migrate`](Self::migrate) before first use.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(MysqlConfig::new(url)).await
    }

    /// Connects as `config` says, checking the server answers.
    pub async fn connect_with(config: MysqlConfig) -> Result<Self> {
        let address = redact_url(&config.url);
        let pool = MySqlPoolOptions::new()
            .max_connections(config.pool_size.max(1))
            .acquire_timeout(config.connect_timeout)
            .connect_lazy(&config.url)
            .map_err(|e| Error::Config(format!("mysql url {address}: {e}")))?;
        let mut store = Self::new(pool, &config.table)?;
        store.address = address;
        store.operation_timeout = config.operation_timeout;
        let ping = sqlx::query("SELECT 1").execute(&store.pool);
        store.run("connect", ping).await?;
        Ok(store)
    }

    /// A store over a pool you already have, on `table` in the pool's
    /// database.
    pub fn new(pool: MySqlPool, table: &str) -> Result<Self> {
        check_sql_identifier("table name", table)?;
        let quoted = format!("`{table}`");
        Ok(MysqlStore {
            sql: Queries::new(&quoted),
            pool,
            table: table.to_owned(),
            quoted,
            address: "mysql (pool)".into(),
            operation_timeout: Duration::from_secs(5),
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The pool, e.g. to share it with the rest of the app.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Creates (or upgrades) the table and its index, idempotently. Safe to
    /// run twice or from two processes at once: the steps run while holding
    /// `GET_LOCK('session-store migrate')`, and each step not yet recorded
    /// in [`MIGRATIONS_TABLE`] runs and is recorded.
    pub async fn migrate(&self) -> Result<()> {
        let work = async {
            let mut conn = self.pool.acquire().await?;
            // `GET_LOCK` belongs to the connection: it must never go back to
            // the pool still holding it (an error or a timeout mid-way), so
            // this connection is closed, which releases the lock, instead.
            conn.close_on_drop();
            let wait = self.operation_timeout.as_secs().max(1);
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
                .bind(MIGRATE_LOCK)
                .bind(wait)
                .fetch_one(&mut *conn)
                .await?;
            if got != Some(1) {
                return Err(BoxError::from(format!(
                    "GET_LOCK({MIGRATE_LOCK:?}) not granted within {wait} s"
                )));
            }
            migrate_steps(&mut conn, self).await?;
            sqlx::query("SELECT RELEASE_LOCK(?)")
                .bind(MIGRATE_LOCK)
                .execute(&mut *conn)
                .await?;
            Ok::<_, BoxError>(())
        };
        self.run_boxed("migrate", work).await
    }

    /// Drops the table (with its index) and its rows in
    /// [`MIGRATIONS_TABLE`], and nothing else (for tests and teardown).
    pub async fn drop_table(&self) -> Result<()> {
        let work = async {
            let mut conn = self.pool.acquire().await?;
            sqlx::query(&format!("DROP TABLE IF EXISTS {}", self.quoted))
                .execute(&mut *conn)
                .await?;
            let recorded: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.tables
                 WHERE table_schema = DATABASE() AND table_name = ?",
            )
            .bind(MIGRATIONS_TABLE)
            .fetch_one(&mut *conn)
            .await?;
            if recorded > 0 {
                let key = table_key(&mut conn, &self.table).await?;
                sqlx::query(&format!(
                    "DELETE FROM `{MIGRATIONS_TABLE}` WHERE table_name = ?"
                ))
                .bind(key)
                .execute(&mut *conn)
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        };
        self.run("drop table", work).await
    }

    fn context(&self, what: &str) -> String {
        format!("{what} on table {} at {}", self.table, self.address)
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
            |e: &sqlx::Error| unsent(e),
            work,
        )
        .await
    }

    /// [`run`](Self::run) for work that fails with more than sqlx errors.
    async fn run_boxed<T, Fut>(&self, what: &str, work: Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = std::result::Result<T, BoxError>>,
    {
        timed_unsent_aware(
            STORE,
            self.operation_timeout,
            || self.context(what),
            |e: &BoxError| e.downcast_ref::<sqlx::Error>().is_some_and(unsent),
            work,
        )
        .await
    }

    /// Locks the row of `id` in `conn`'s transaction and judges it; `None`
    /// when there is no row.
    async fn lock(
        &self,
        conn: &mut MySqlConnection,
        id: &[u8],
    ) -> std::result::Result<Option<Locked>, sqlx::Error> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(&self.sql.lock)
            .bind(id)
            .fetch_optional(conn)
            .await?;
        Ok(row.map(|(version, expires_at, now)| Locked {
            version,
            live: expires_at > now,
        }))
    }
}

/// Whether `e` happened before anything was sent (no pooled connection).
fn unsent(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
}

/// The key of `table` in [`MIGRATIONS_TABLE`]: the name as the server
/// stores it, lower-cased where the server folds table names
/// (`lower_case_table_names` other than 0), so two spellings of one table
/// share one record.
async fn table_key(
    conn: &mut MySqlConnection,
    table: &str,
) -> std::result::Result<String, sqlx::Error> {
    let folds: i64 = sqlx::query_scalar("SELECT CAST(@@lower_case_table_names AS SIGNED)")
        .fetch_one(conn)
        .await?;
    Ok(if folds == 0 {
        table.to_owned()
    } else {
        table.to_ascii_lowercase()
    })
}

/// Applies the migrations not yet recorded; the caller holds the lock.
async fn migrate_steps(
    conn: &mut MySqlConnection,
    store: &MysqlStore,
) -> std::result::Result<(), sqlx::Error> {
    // `ascii_bin`: table names are case-sensitive where the server does
    // not fold them, so their keys must be too.
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS `{MIGRATIONS_TABLE}` (
            table_name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            version BIGINT NOT NULL,
            applied_at BIGINT NOT NULL,
            PRIMARY KEY (table_name, version)
        ) ENGINE = InnoDB"
    ))
    .execute(&mut *conn)
    .await?;
    let key = table_key(conn, &store.table).await?;
    let done: i64 = sqlx::query_scalar(&format!(
        "SELECT CAST(COALESCE(MAX(version), 0) AS SIGNED) FROM `{MIGRATIONS_TABLE}`
         WHERE table_name = ?"
    ))
    .bind(&key)
    .fetch_one(&mut *conn)
    .await?;
    for (version, statements) in MIGRATIONS {
        if *version <= done {
            continue;
        }
        for ddl in *statements {
            let ddl = ddl.replace("{t}", &store.quoted);
            sqlx::query(&ddl).execute(&mut *conn).await?;
        }
        sqlx::query(&format!(
            "INSERT INTO `{MIGRATIONS_TABLE}` (table_name, version, applied_at) VALUES (?, ?, ?)"
        ))
        .bind(&key)
        .bind(version)
        .bind(now_millis())
        .execute(&mut *conn)
        .await?;
        tracing::info!(table = %store.table, version, "session table migrated");
    }
    Ok(())
}

#[async_trait]
impl SessionInterface for MysqlStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        let q = sqlx::query_scalar::<_, i64>(&self.sql.exists).bind(&id.as_bytes()[..]);
        Ok(self.run("exists", q.fetch_one(&self.pool)).await? > 0)
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
        let origin = format!("row {id} of table {}", self.table);
        let mut session = codec::decode(*id, &record, &origin)?;
        // The columns are authoritative: touch and update move only
        // `expires_at`, never the expiry in the record's header.
        session.set_expires_at_millis(expires_at);
        let version = u64::try_from(version)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| Error::decode(origin, format!("version {version} out of range")))?;
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
        let insert = async {
            match q.execute(&self.pool).await {
                Ok(_) => Ok(true),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
                Err(e) => Err(e),
            }
        };
        if self.run("create", insert).await? {
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
        let work = async {
            let mut tx = self.pool.begin().await?;
            let outcome = match self.lock(&mut tx, id).await? {
                Some(row) if row.live && row.version == expected_version as i64 => {
                    sqlx::query(&self.sql.update)
                        .bind(record)
                        .bind(session.expires_at_millis())
                        .bind(version as i64)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    UpdateOutcome::Updated { version }
                }
                Some(row) if row.live => UpdateOutcome::Conflict,
                _ => UpdateOutcome::Gone,
            };
            tx.commit().await?;
            Ok(outcome)
        };
        self.run("update", work).await
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        // A version no record can hold matches no row.
        let expected = i64::try_from(expected_version).ok();
        let id = &id.as_bytes()[..];
        let work = async {
            let mut tx = self.pool.begin().await?;
            let outcome = match self.lock(&mut tx, id).await? {
                Some(row) if row.live && Some(row.version) == expected => {
                    sqlx::query(&self.sql.delete_row)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    DeleteOutcome::Deleted
                }
                Some(row) if row.live => DeleteOutcome::Conflict,
                _ => DeleteOutcome::Gone,
            };
            tx.commit().await?;
            Ok(outcome)
        };
        self.run("delete_if", work).await
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let id = &id.as_bytes()[..];
        let work = async {
            let mut tx = self.pool.begin().await?;
            let live = matches!(self.lock(&mut tx, id).await?, Some(row) if row.live);
            if live {
                sqlx::query(&self.sql.touch)
                    .bind(unix_millis(expires_at))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(live)
        };
        self.run("touch", work).await
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
            let find = sqlx::query_scalar::<_, Vec<u8>>(&self.sql.flush_find).bind(cutoff);
            let ids = self.run("flush", find.fetch_all(&self.pool)).await?;
            if ids.is_empty() {
                return Ok(total);
            }
            let q = sqlx::query(&self.sql.flush_delete).bind(cutoff);
            let q = bind_batch(q, &ids);
            total += self
                .run("flush", q.execute(&self.pool))
                .await?
                .rows_affected();
        }
    }

    async fn clear(&self) -> Result<()> {
        loop {
            let find = sqlx::query_scalar::<_, Vec<u8>>(&self.sql.clear_find);
            let ids = self.run("clear", find.fetch_all(&self.pool)).await?;
            if ids.is_empty() {
                return Ok(());
            }
            let q = bind_batch(sqlx::query(&self.sql.clear_delete), &ids);
            self.run("clear", q.execute(&self.pool)).await?;
        }
    }

    async fn len(&self) -> Result<u64> {
        let q = sqlx::query_scalar::<_, i64>(&self.sql.len);
        Ok(self.run("len", q.fetch_one(&self.pool)).await?.max(0) as u64)
    }
}

/// Binds exactly [`DELETE_BATCH`] ids: `ids` (non-empty, at most that many),
/// then the first again for the rest, which deletes nothing more.
fn bind_batch<'q>(
    mut q: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    ids: &'q [Vec<u8>],
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    for i in 0..DELETE_BATCH {
        q = q.bind(&ids[i.min(ids.len() - 1)][..]);
    }
    q
}

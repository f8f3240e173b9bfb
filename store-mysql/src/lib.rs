//! # session-store-mysql
//!
//! A [`SessionInterface`] store on MySQL or MariaDB (InnoDB) through sqlx
//! (runtime queries: nothing needs a database at compile time).
//!
//! One table (default `sessions`, in the connection's database): `id`
//! (`BINARY(32)`, the session id, primary key), `record` (`LONGBLOB`, the
//! core's encoded record), `expires_at` (`BIGINT` Unix ms, indexed as
//! `expires_at`), `version` (`BIGINT`), `user_key` (`VARBINARY(256)`, the
//! record's user key as UTF-8 bytes, compared byte for byte; NULL for a
//! session bound to no user; indexed as `user_key`), which `set`, `create`
//! and `update` write in the same statement as the record.
//! [`MysqlStore::migrate`] creates or upgrades it, recording what it did in
//! [`MIGRATIONS_TABLE`] (one per database, shared by the stores in it, keyed
//! by table name). Names with a `$` can never be another store's table:
//! table names are plain SQL identifiers (checked, then quoted with
//! backticks, so reserved words work).
//!
//! | operation | statements | round trips |
//! | --- | --- | --- |
//! | `get`, `exists`, `len`, `set`, `delete` | one | 1 |
//! | `create` | `INSERT`; a duplicate key is [`Error::IdCollision`] | 1 |
//! | `update`, `delete_if`, `touch` | one conditional `UPDATE`/`DELETE`; when `update` or `delete_if` matches nothing, a `SELECT` tells a conflict from a gone record | 1 (2 on a miss) |
//! | `flush`, `clear` | a clock read (`flush`), then per batch of 1000: `SELECT` ids, `DELETE` them | 2 per batch |
//! | `sessions_of` | one `SELECT` through the user index | 1 |
//! | `revoke_user` | `SELECT` the user's ids, then per batch of 100 a transaction: lock them by primary key (`FOR UPDATE`), `DELETE` those locked, `COMMIT`; the `DELETE` finds each row by primary key, so it never waits for another user's rows; a batch chosen as a deadlock's victim runs again, 5 tries in all | 1, then 4 per try of a batch |
//! | `migrate` | `GET_LOCK`, then each missing step and its record | a few, once |
//!
//! **Clock.** Expiry is judged by the database server's clock, in Unix
//! milliseconds, never by the app's: app servers whose clocks disagree still
//! agree on what has expired. Plain reads (`get`, `len`) and `flush`'s cutoff
//! use `NOW(3)`, the start of their statement. The writes that need a live
//! record (`update`, `delete_if`, `touch`) are one `UPDATE` or `DELETE`
//! whose `WHERE` reads `SYSDATE(3)`, which the server evaluates when InnoDB
//! hands it the row, that is after the row lock was granted; so one that
//! waited for a concurrent writer past the record's expiry finds it expired
//! and does not revive it. (A server started with
//! `--sysdate-is-now` makes `SYSDATE` the statement's start and loses that
//! property.) The expiries stored are the app's (`Session::expires_at`).
//! sqlx sets each connection's `time_zone` to `+00:00`, so
//! `UNIX_TIMESTAMP` never meets a daylight-saving gap.
//!
//! **Guarantees.** `create` never overwrites (the primary key decides).
//! `update` is a compare-and-set on the version in one statement, stores
//! the next version ([`next_version`]) and never moves the stored expiry
//! earlier (`GREATEST(expires_at, ?)`); `touch` likewise, and never revives
//! an expired record. `get` reports the `expires_at` column, which is
//! authoritative over the expiry inside the encoded record. `flush` and
//! `clear` delete in batches until a batch *finds* nothing; `flush`'s
//! `DELETE` repeats the expiry condition, which InnoDB checks on the row
//! it locked, so a row extended meanwhile is spared. Migrations run under
//! `GET_LOCK`, so two processes migrating at once apply each step once.
//!
//! What every SQL store does alike (batch loops, migrations bookkeeping,
//! decoding, error mapping) is `session-store-sql`'s; this crate is the
//! MySQL dialect: its statements, its `GET_LOCK`, and its conditional
//! `update`, `delete_if` and `touch`.
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
//!
//! [`SessionInterface`]: session_store::SessionInterface
//! [`Error::IdCollision`]: session_store::Error::IdCollision
//! [`next_version`]: session_store::backend::next_version
#![warn(missing_docs)]

use std::time::Duration;

use async_trait::async_trait;
use session_store::backend::redact_url;
use session_store::{BoxError, Result};
use session_store_sql::{
    check_table_name, lazy_pool, session_interface, Batches, Clock, Connections, DeadlockRetry,
    Dialect, Judged, MigrationStatements, Migrations, Setup, SqlStore, Statements, Update,
    DELETE_BATCH,
};
use sqlx::mysql::{
    MySqlArguments, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlQueryResult,
};
use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::{Connection, MySql};

pub use session_store_sql::{MIGRATIONS_TABLE, PING_AFTER_IDLE};
pub use sqlx;

const STORE: &str = "mysql";

/// The server's clock in Unix milliseconds at the start of the statement.
const NOW: &str = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)";

/// The server's clock in Unix milliseconds when the expression is evaluated:
/// in a locking read, after the row lock was granted (see the crate docs).
const CLOCK: &str = "CAST(UNIX_TIMESTAMP(SYSDATE(3)) * 1000 AS SIGNED)";

/// The `GET_LOCK` name every migration of this crate takes: creating the
/// shared migrations table races too, and migrations are rare.
const MIGRATE_LOCK: &str = "session-store migrate";

/// Versioned DDL: each step runs once, in order, recorded in
/// [`MIGRATIONS_TABLE`]. `{t}` is the quoted table. MySQL DDL is not
/// transactional, so each statement is idempotent by itself in case a
/// process dies between a step and its record: `IF NOT EXISTS`, or (for
/// `ADD COLUMN` and `CREATE INDEX`, which have no such clause in MySQL) an
/// error saying the column or index exists counts as done
/// ([`Dialect::already_applied`]).
///
/// Step 2 adds the user index, as two statements so that each takes the
/// cheapest algorithm the server has: adding a nullable column last is
/// instant on MySQL 8 and MariaDB 10.3+, and the index is built in place
/// while writes go on. Every row already stored is bound to no user
/// (records bound to one are written only by code that also writes
/// `user_key`), so NULL is the truth for each of them. `VARBINARY(256)`
/// holds a key's UTF-8 bytes (at most 256, the longest key) and compares
/// them byte for byte: `Ada` is not `ada`, and `ada ` is not `ada` (a
/// `VARCHAR` with a `_bin` collation pads with spaces when it compares).
/// Its index entries are at most 256 bytes, within every row format's
/// limit.
const MIGRATIONS: Migrations = &[
    (
        1,
        &["CREATE TABLE IF NOT EXISTS {t} (
            id BINARY(32) NOT NULL PRIMARY KEY,
            record LONGBLOB NOT NULL,
            expires_at BIGINT NOT NULL,
            version BIGINT NOT NULL,
            INDEX expires_at (expires_at)
        ) ENGINE = InnoDB"],
    ),
    (
        2,
        &[
            "ALTER TABLE {t} ADD COLUMN user_key VARBINARY(256) NULL",
            "CREATE INDEX user_key ON {t} (user_key)",
        ],
    ),
];

/// MySQL's `ER_DUP_FIELDNAME`: the column exists.
const DUPLICATE_COLUMN: u16 = 1060;
/// MySQL's `ER_DUP_KEYNAME`: an index of that name exists.
const DUPLICATE_INDEX: u16 = 1061;

/// The most rows [`revoke_user`](MysqlDialect::revoke_user) locks and
/// deletes in one transaction; its statements bind exactly this many ids
/// (a short batch repeats its last), so each is one prepared statement.
const REVOKE_BATCH: usize = 100;

/// MySQL's `ER_LOCK_DEADLOCK`: InnoDB rolled the transaction back to break
/// a deadlock.
const LOCK_DEADLOCK: u16 = 1213;

/// `n` placeholders, comma-separated.
fn ids(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// A derived table of `n` placeholders, one row each, in the column `id`.
/// Each is cast to the id's type: MySQL 8 types a bare `?` in a select list
/// as text in the connection's character set, which 32 random bytes are not.
fn id_rows(n: usize) -> String {
    let row = "SELECT CAST(? AS BINARY(32))";
    let mut rows = vec![row; n].join(" UNION ALL ");
    rows.insert_str(row.len(), " AS id");
    rows
}

/// The statements every SQL store has, in MySQL, on the quoted table `t`.
fn statements(t: &str) -> Statements {
    let ids = ids(DELETE_BATCH);
    let migrations = format!("`{MIGRATIONS_TABLE}`");
    Statements {
        exists: format!("SELECT EXISTS(SELECT 1 FROM {t} WHERE id = ?)"),
        get: format!(
            "SELECT record, expires_at, version FROM {t} WHERE id = ? AND expires_at > {NOW}"
        ),
        set: format!(
            "INSERT INTO {t} (id, record, expires_at, version, user_key) VALUES (?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE record = VALUES(record),
             expires_at = VALUES(expires_at), version = VALUES(version),
             user_key = VALUES(user_key)"
        ),
        delete: format!("DELETE FROM {t} WHERE id = ?"),
        // A taken id fails as a duplicate key, which the engine reads as a
        // collision.
        create: format!(
            "INSERT INTO {t} (id, record, expires_at, version, user_key) VALUES (?, ?, ?, ?, ?)"
        ),
        len: format!("SELECT COUNT(*) FROM {t} WHERE expires_at > {NOW}"),
        sessions_of: format!(
            "SELECT id, record, expires_at, version FROM {t}
             WHERE user_key = ? AND expires_at > {NOW}"
        ),
        clock: Clock::Server {
            now: format!("SELECT {NOW}"),
        },
        // InnoDB checks the `DELETE`'s expiry condition on the newest
        // version of the row it locked: a row extended since it was found
        // is spared.
        batches: Batches::FoundThenDeleted {
            flush_find: format!(
                "SELECT id FROM {t} WHERE expires_at <= ? ORDER BY expires_at LIMIT {DELETE_BATCH}"
            ),
            flush_delete: format!("DELETE FROM {t} WHERE expires_at <= ? AND id IN ({ids})"),
            clear_find: format!("SELECT id FROM {t} ORDER BY id LIMIT {DELETE_BATCH}"),
            clear_delete: format!("DELETE FROM {t} WHERE id IN ({ids})"),
        },
        migrations: MigrationStatements {
            // `ascii_bin`: table names are case-sensitive where the server
            // does not fold them, so their keys must be too.
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS {migrations} (
                    table_name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                    version BIGINT NOT NULL,
                    applied_at BIGINT NOT NULL,
                    PRIMARY KEY (table_name, version)
                ) ENGINE = InnoDB"
            ),
            recorded: format!(
                "SELECT CAST(COALESCE(MAX(version), 0) AS SIGNED) FROM {migrations}
                 WHERE table_name = ?"
            ),
            record: format!(
                "INSERT INTO {migrations} (table_name, version, applied_at) VALUES (?, ?, ?)"
            ),
        },
        // The first MySQL store already had this layout.
        legacy: None,
    }
}

/// The MySQL dialect: the pool (for `GET_LOCK` and `revoke_user`'s
/// transactions), the table's name, and the statements of its conditional
/// writes.
struct MysqlDialect {
    pool: MySqlPool,
    table: String,
    /// Whether the record is live at a version other than the one bound
    /// first (a conflict), as `1` or `0` (no row: gone).
    conflict: String,
    update: String,
    delete_if: String,
    touch: String,
    revoke_find: String,
    revoke_lock: String,
    revoke_delete: String,
}

impl MysqlDialect {
    fn new(pool: MySqlPool, table: &str, t: &str) -> Self {
        // Each conditional write judges the row in its own `WHERE`, which
        // InnoDB hands to the server only once it holds the row's lock (an
        // `UPDATE` or `DELETE` reads the newest committed version, waiting
        // for a writer that holds it); `SYSDATE` is evaluated there, so a
        // write that waited past the record's expiry finds it expired.
        let live_at = |version: &str| format!("id = ? AND {version}expires_at > {CLOCK}");
        MysqlDialect {
            pool,
            table: table.to_owned(),
            // `<=>` is equality that NULL takes part in: no expected version
            // (NULL) differs from every stored one.
            conflict: format!(
                "SELECT CAST(NOT (version <=> ?) AND expires_at > {CLOCK} AS SIGNED)
                 FROM {t} WHERE id = ?"
            ),
            // InnoDB leaves a secondary index alone when its column keeps
            // its value, so a save that keeps the binding does not touch the
            // user index.
            update: format!(
                "UPDATE {t} SET record = ?, expires_at = GREATEST(expires_at, ?), version = ?,
                 user_key = ? WHERE {}",
                live_at("version = ? AND ")
            ),
            // `version = NULL` (no expected version) matches nothing.
            delete_if: format!("DELETE FROM {t} WHERE {}", live_at("version = ? AND ")),
            // sqlx connects with `CLIENT_FOUND_ROWS`, so a live row whose
            // expiry stays counts as affected.
            touch: format!(
                "UPDATE {t} SET expires_at = GREATEST(expires_at, ?) WHERE {}",
                live_at("")
            ),
            revoke_find: format!("SELECT id FROM {t} WHERE user_key = ? AND id <> ?"),
            // By primary key, so only the listed ids are read and locked
            // (not the user's sessions created since the list was read); a
            // listed row rebound since stays locked, uncounted, until
            // `COMMIT`.
            revoke_lock: format!(
                "SELECT id FROM {t} FORCE INDEX (PRIMARY) WHERE user_key = ? AND id IN ({ids})
                 FOR UPDATE",
                ids = ids(REVOKE_BATCH)
            ),
            // Driven by the list, each row found by its primary key: as
            // `WHERE id IN (…)` the planner ran it as a full scan on a small
            // table (no hint changes that), which waits for every row
            // another transaction holds, and two users' revokes deadlocked
            // on each other's rows.
            revoke_delete: format!(
                "DELETE t FROM ({list}) AS l STRAIGHT_JOIN {t} AS t ON t.id = l.id",
                list = id_rows(REVOKE_BATCH)
            ),
        }
    }
}

/// The key of `table` in [`MIGRATIONS_TABLE`]: the name as the server
/// stores it, lower-cased where the server folds table names
/// (`lower_case_table_names` other than 0), so two spellings of one table
/// share one record.
async fn table_key(conn: &mut MySqlConnection, table: &str) -> sqlx::Result<String> {
    let folds: i64 = sqlx::query_scalar("SELECT CAST(@@lower_case_table_names AS SIGNED)")
        .fetch_one(conn)
        .await?;
    Ok(if folds == 0 {
        table.to_owned()
    } else {
        table.to_ascii_lowercase()
    })
}

#[async_trait]
impl Dialect for MysqlDialect {
    type Db = sqlx::MySql;
    const STORE: &'static str = STORE;
    const QUOTE: char = '`';
    const MIGRATIONS: Migrations = MIGRATIONS;

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }

    fn bind_user_key<'q>(
        query: Query<'q, MySql, MySqlArguments>,
        user_key: Option<&'q str>,
    ) -> Query<'q, MySql, MySqlArguments> {
        query.bind(user_key.map(str::as_bytes))
    }

    fn already_applied(error: &sqlx::Error) -> bool {
        error
            .as_database_error()
            .and_then(|e| e.try_downcast_ref::<MySqlDatabaseError>())
            .is_some_and(|e| matches!(e.number(), DUPLICATE_COLUMN | DUPLICATE_INDEX))
    }

    async fn migrate(&self, store: &SqlStore<Self>) -> Result<()> {
        let work = async {
            let mut conn = self.pool.acquire().await?;
            // `GET_LOCK` belongs to the connection: it must never go back to
            // the pool still holding it (an error or a timeout mid-way), so
            // this connection is closed, which releases the lock, instead.
            conn.close_on_drop();
            let wait = store.operation_timeout().as_secs().max(1);
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
            let key = table_key(&mut conn, &self.table).await?;
            store.apply_migrations(&mut conn, &key).await?;
            sqlx::query("SELECT RELEASE_LOCK(?)")
                .bind(MIGRATE_LOCK)
                .execute(&mut *conn)
                .await?;
            Ok::<_, BoxError>(())
        };
        store.run_migration(work).await
    }

    async fn update(&self, store: &SqlStore<Self>, update: Update<'_>) -> Result<Judged> {
        let write = sqlx::query(&self.update)
            .bind(update.record)
            .bind(update.expires_at)
            .bind(update.version)
            .bind(update.user_key.map(str::as_bytes))
            .bind(update.id)
            .bind(update.expected);
        let judge = sqlx::query(&self.conflict)
            .bind(update.expected)
            .bind(update.id);
        store.write_or_judge("update", write, judge).await
    }

    async fn delete_if(
        &self,
        store: &SqlStore<Self>,
        id: &[u8],
        expected: Option<i64>,
    ) -> Result<Judged> {
        let write = sqlx::query(&self.delete_if).bind(id).bind(expected);
        let judge = sqlx::query(&self.conflict).bind(expected).bind(id);
        store.write_or_judge("delete_if", write, judge).await
    }

    async fn touch(&self, store: &SqlStore<Self>, id: &[u8], expires_at: i64) -> Result<bool> {
        let write = sqlx::query(&self.touch).bind(expires_at).bind(id);
        Ok(store.write("touch", write).await? == 1)
    }

    /// Finds the user's rows (a plain read), then per batch, in one
    /// transaction: locks those still bound to the user, by primary key,
    /// and deletes exactly the rows locked. A row rebound or deleted after
    /// it was found is not counted (nor deleted); a locked row cannot
    /// change before the `DELETE`, so the ids answered are the rows
    /// deleted. A login finishing after the first read is spared.
    async fn revoke_user(
        &self,
        store: &SqlStore<Self>,
        user_key: &str,
        except: &[u8],
    ) -> Result<Vec<Vec<u8>>> {
        let key = user_key.as_bytes();
        let work = async {
            // One connection for the whole revoke: a pool timeout, which
            // the store reports as nothing done, can then only come first.
            let mut conn = ClosedUnlessReleased(Some(self.pool.acquire().await?));
            let found: Vec<Vec<u8>> = sqlx::query_scalar(&self.revoke_find)
                .bind(key)
                .bind(except)
                .fetch_all(conn.connection())
                .await?;
            let mut deleted = Vec::with_capacity(found.len());
            for batch in found.chunks(REVOKE_BATCH) {
                let mut retry = DeadlockRetry::new("revoke_user (a batch)", &self.table);
                loop {
                    match self.revoke_batch(conn.connection(), key, batch).await {
                        Ok(locked) => {
                            deleted.extend(locked);
                            break;
                        }
                        // A failed try is never committed (the dropped
                        // transaction rolls back), so nothing of this batch
                        // was deleted or counted, and the next try locks and
                        // judges each row afresh.
                        Err(e) if deadlocked(&e) && retry.left() => retry.pause().await,
                        Err(e) => return Err(e),
                    }
                }
            }
            conn.release();
            Ok(deleted)
        };
        store.run("revoke_user", work).await
    }
}

impl MysqlDialect {
    /// One batch of `revoke_user`, in one transaction: locks the rows of
    /// `batch` still bound to the user (`key`), deletes exactly those, and
    /// answers their ids.
    async fn revoke_batch(
        &self,
        conn: &mut MySqlConnection,
        key: &[u8],
        batch: &[Vec<u8>],
    ) -> sqlx::Result<Vec<Vec<u8>>> {
        let mut tx = conn.begin().await?;
        let mut lock = sqlx::query_scalar::<_, Vec<u8>>(&self.revoke_lock).bind(key);
        for i in 0..REVOKE_BATCH {
            lock = lock.bind(&batch[i.min(batch.len() - 1)][..]);
        }
        let locked = lock.fetch_all(&mut *tx).await?;
        if let Some(last) = locked.len().checked_sub(1) {
            let mut delete = sqlx::query(&self.revoke_delete);
            for i in 0..REVOKE_BATCH {
                delete = delete.bind(&locked[i.min(last)][..]);
            }
            let deleted = delete.execute(&mut *tx).await?.rows_affected();
            // Locked rows cannot go away; a shortfall means the statement
            // did not match the ids as bound, and answering them as revoked
            // would leave live sessions behind. Dropped, `tx` rolls back.
            if deleted != locked.len() as u64 {
                return Err(sqlx::Error::Protocol(format!(
                    "revoke_user deleted {deleted} of the {} rows it locked",
                    locked.len()
                )));
            }
        }
        tx.commit().await?;
        Ok(locked)
    }
}

/// A pooled connection that goes back to the pool only through
/// [`release`](Self::release); dropped before that (the operation's
/// timeout, or its caller, gave up on it) it is closed instead. Cut short
/// between `BEGIN` and the reply, or in the middle of a statement, sqlx
/// would otherwise return it inside a transaction it does not know of,
/// where the next operations' writes would be acknowledged and never
/// committed.
struct ClosedUnlessReleased(Option<PoolConnection<MySql>>);

impl ClosedUnlessReleased {
    fn connection(&mut self) -> &mut MySqlConnection {
        self.0.as_deref_mut().expect("held until released")
    }

    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for ClosedUnlessReleased {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.0 {
            conn.close_on_drop();
        }
    }
}

/// Whether InnoDB chose this transaction as a deadlock's victim
/// (`ER_LOCK_DEADLOCK`), which rolls the whole transaction back.
fn deadlocked(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<MySqlDatabaseError>())
        .is_some_and(|e| e.number() == LOCK_DEADLOCK)
}

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

/// The MySQL/MariaDB store.
pub struct MysqlStore {
    engine: SqlStore<MysqlDialect>,
}

session_interface!(MysqlStore => engine);

impl MysqlStore {
    /// Connects to `url` with the default configuration (table `sessions`).
    /// Call [`migrate`](Self::migrate) before first use.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(MysqlConfig::new(url)).await
    }

    /// Connects as `config` says, checking the server answers.
    pub async fn connect_with(config: MysqlConfig) -> Result<Self> {
        let pool = lazy_pool(STORE, &config.url, config.pool_size, config.connect_timeout)?;
        let store = Self::build(
            pool,
            &config.table,
            redact_url(&config.url),
            config.operation_timeout,
        )?;
        store.engine.ping().await?;
        Ok(store)
    }

    /// A store over a pool you already have, on `table` in the pool's
    /// database.
    pub fn new(pool: MySqlPool, table: &str) -> Result<Self> {
        Self::build(pool, table, "mysql (pool)".into(), Duration::from_secs(5))
    }

    fn build(
        pool: MySqlPool,
        table: &str,
        address: String,
        operation_timeout: Duration,
    ) -> Result<Self> {
        check_table_name(table, "MySQL", None)?;
        // Quoted, so reserved words (`order`) are usable table names.
        let quoted = format!("`{table}`");
        Ok(MysqlStore {
            engine: SqlStore::new(Setup {
                dialect: MysqlDialect::new(pool.clone(), table, &quoted),
                connections: Connections::Pool(pool),
                statements: statements(&quoted),
                table_sql: quoted,
                table_name: table.to_owned(),
                location: format!("at {address}"),
                operation_timeout,
            }),
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        self.engine.table()
    }

    /// The pool, e.g. to share it with the rest of the app.
    pub fn pool(&self) -> &MySqlPool {
        &self.engine.dialect().pool
    }

    /// Creates (or upgrades) the table and its index, idempotently. Safe to
    /// run twice or from two processes at once: the steps run while holding
    /// `GET_LOCK('session-store migrate')`, and each step not yet recorded
    /// in [`MIGRATIONS_TABLE`] runs and is recorded.
    pub async fn migrate(&self) -> Result<()> {
        self.engine.migrate().await
    }

    /// Drops the table (with its index) and its rows in
    /// [`MIGRATIONS_TABLE`], and nothing else (for tests and teardown).
    pub async fn drop_table(&self) -> Result<()> {
        let work = async {
            let mut conn = self.pool().acquire().await?;
            sqlx::query(&format!("DROP TABLE IF EXISTS {}", self.engine.table_sql()))
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
                let key = table_key(&mut conn, self.table()).await?;
                sqlx::query(&format!(
                    "DELETE FROM `{MIGRATIONS_TABLE}` WHERE table_name = ?"
                ))
                .bind(key)
                .execute(&mut *conn)
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        };
        self.engine.run("drop table", work).await
    }
}

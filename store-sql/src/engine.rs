//! [`SqlStore`]: what every SQL store does the same way.

use std::future::Future;
use std::time::Duration;

use session_store::backend::{next_version, redact_url, storable_version, timed_unsent_aware};
use session_store::time::OffsetDateTime;
use session_store::{
    codec, now_millis, unix_millis, BoxError, DeleteOutcome, Error, Result, Session, SessionId,
    UpdateOutcome,
};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use crate::{Batches, Clock, Connection, Connections, Dialect, Judged, Statements, Update};
use crate::{DELETE_BATCH, INDEX_SUFFIX, USER_INDEX_SUFFIX};

/// The least time a migration may take, its wait for the lock included.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The parts a dialect assembles a [`SqlStore`] from.
pub struct Setup<D: Dialect> {
    /// The dialect, with whatever state its own steps need.
    pub dialect: D,
    /// Where statements run.
    pub connections: Connections<D::Db>,
    /// The table as written into SQL (quoted or schema-qualified as the
    /// dialect needs): a checked identifier, never input spliced in.
    pub table_sql: String,
    /// The table as named in errors, logs and `table()`.
    pub table_name: String,
    /// Where the database is, with its preposition, for errors:
    /// `"at postgres://app@db:5432/app"`, `"in sessions.db"`.
    pub location: String,
    /// Longest time one operation may take before it is an error.
    pub operation_timeout: Duration,
    /// The dialect's statements for what every store does alike.
    pub statements: Statements,
}

/// A session store on one SQL table, in one dialect: the operations every
/// SQL store does alike, and the dialect's own steps where it does not.
pub struct SqlStore<D: Dialect> {
    dialect: D,
    connections: Connections<D::Db>,
    table_sql: String,
    table_name: String,
    location: String,
    operation_timeout: Duration,
    sql: Statements,
}

/// One batch of `flush` or `clear`.
struct Batch {
    found: u64,
    deleted: u64,
}

/// A pool of at most `size` connections to `url` that connects on first
/// use; an unparsable `url` is [`Error::Config`] naming `store` (with the
/// password redacted).
pub fn lazy_pool<DB: Database>(
    store: &str,
    url: &str,
    size: u32,
    connect_timeout: Duration,
) -> Result<Pool<DB>> {
    crate::pool_options::<DB>(size, connect_timeout)
        .connect_lazy(url)
        .map_err(|e| Error::Config(format!("{store} url {}: {e}", redact_url(url))))
}

/// Whether `e` happened before anything was sent (no pooled connection).
fn unsent(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
}

impl<D: Dialect> SqlStore<D> {
    /// A store from the parts its dialect assembled.
    pub fn new(setup: Setup<D>) -> Self {
        SqlStore {
            dialect: setup.dialect,
            connections: setup.connections,
            table_sql: setup.table_sql,
            table_name: setup.table_name,
            location: setup.location,
            operation_timeout: setup.operation_timeout,
            sql: setup.statements,
        }
    }

    /// The dialect.
    pub fn dialect(&self) -> &D {
        &self.dialect
    }

    /// The table as named in errors and logs.
    pub fn table(&self) -> &str {
        &self.table_name
    }

    /// The table as written into SQL.
    pub fn table_sql(&self) -> &str {
        &self.table_sql
    }

    /// Longest time one operation may take before it is an error.
    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout
    }

    /// Where the database is, with its preposition (`"at …"`, `"in …"`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// A connection for statements that write.
    pub async fn writer(&self) -> sqlx::Result<Connection<'_, D::Db>> {
        self.connections.writer().await
    }

    /// A connection for statements that only read.
    pub async fn reader(&self) -> sqlx::Result<Connection<'_, D::Db>> {
        self.connections.reader().await
    }

    /// What errors of `what` say they were doing: the operation, the table
    /// and where the database is.
    pub fn context(&self, what: &str) -> String {
        format!("{what} on table {} {}", self.table_name, self.location)
    }

    /// Runs `work`, the operation `what`, within the operation timeout: a
    /// driver error or a timeout is [`Error::Backend`] naming the store and
    /// [`context`](Self::context), an error before anything was sent (no
    /// connection from the pool) [`Error::Unavailable`], which the manager
    /// knows wrote nothing.
    pub async fn run<T>(
        &self,
        what: &str,
        work: impl Future<Output = sqlx::Result<T>>,
    ) -> Result<T> {
        timed_unsent_aware(
            D::STORE,
            self.operation_timeout,
            || self.context(what),
            unsent,
            work,
        )
        .await
    }

    /// [`run`](Self::run) for a migration, within [`MIGRATION_TIMEOUT`] (or
    /// the operation timeout, if longer): migrations queue on one lock per
    /// database, and many stores starting at once (a deploy, a test run)
    /// wait their turn rather than fail.
    pub async fn run_migration<T, E: Into<BoxError>>(
        &self,
        work: impl Future<Output = std::result::Result<T, E>>,
    ) -> Result<T> {
        let work = async { work.await.map_err(Into::into) };
        timed_unsent_aware(
            D::STORE,
            self.operation_timeout.max(MIGRATION_TIMEOUT),
            || self.context("migrate"),
            |e: &BoxError| e.downcast_ref::<sqlx::Error>().is_some_and(unsent),
            work,
        )
        .await
    }

    /// [`run`](Self::run) for work that fails with more than driver errors.
    pub async fn run_boxed<T>(
        &self,
        what: &str,
        work: impl Future<Output = std::result::Result<T, BoxError>>,
    ) -> Result<T> {
        timed_unsent_aware(
            D::STORE,
            self.operation_timeout,
            || self.context(what),
            |e: &BoxError| e.downcast_ref::<sqlx::Error>().is_some_and(unsent),
            work,
        )
        .await
    }

    /// Creates or upgrades the table, idempotently, as the dialect's
    /// [`migrate`](Dialect::migrate) locks it.
    pub async fn migrate(&self) -> Result<()> {
        self.dialect.migrate(self).await
    }

    /// Applies `update` (see [`Dialect::update`]).
    pub async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        // `next_version` keeps both versions within `i64`.
        let version = next_version(session.id(), expected_version)?;
        let record = codec::encode(session, version)?;
        let id = session.id();
        let update = Update {
            id: &id.as_bytes()[..],
            record: &record,
            expires_at: session.expires_at_millis(),
            version: version as i64,
            expected: expected_version as i64,
            user_key: session.user_key(),
        };
        let judged = self.dialect.update(self, update).await?;
        Ok(judged.update_outcome(version))
    }

    /// Applies `delete_if` (see [`Dialect::delete_if`]).
    pub async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        // A version no record can hold matches no row.
        let expected = i64::try_from(expected_version).ok();
        let judged = self
            .dialect
            .delete_if(self, &id.as_bytes()[..], expected)
            .await?;
        Ok(judged.delete_outcome())
    }

    /// Applies `touch` (see [`Dialect::touch`]).
    pub async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let expires_at = unix_millis(expires_at);
        self.dialect
            .touch(self, &id.as_bytes()[..], expires_at)
            .await
    }

    /// Applies `revoke_user` (see [`Dialect::revoke_user`]): the ids of the
    /// rows deleted.
    pub async fn revoke_user(
        &self,
        user_key: &str,
        except: Option<&SessionId>,
    ) -> Result<Vec<SessionId>> {
        let except = except.map_or(&[][..], |id| &id.as_bytes()[..]);
        let deleted = self.dialect.revoke_user(self, user_key, except).await?;
        Ok(deleted
            .into_iter()
            .filter_map(|id| self.row_id(&id, "revoke_user"))
            .collect())
    }

    /// The session id a row's `id` column holds; `None`, with a warning,
    /// for a column no id fits (a row written behind the store's back).
    fn row_id(&self, bytes: &[u8], what: &str) -> Option<SessionId> {
        match <[u8; 32]>::try_from(bytes) {
            Ok(bytes) => Some(SessionId::from_bytes(bytes)),
            Err(_) => {
                tracing::warn!(
                    store = D::STORE,
                    table = %self.table_name,
                    operation = what,
                    len = bytes.len(),
                    "skipped a row whose id is not 32 bytes"
                );
                None
            }
        }
    }
}

type Args<'q, DB> = <DB as Database>::Arguments<'q>;

impl<D: Dialect> SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> Args<'q, D::Db>: IntoArguments<'q, D::Db>,
    for<'q> &'q [u8]: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'r> Vec<u8>: Decode<'r, D::Db> + Type<D::Db>,
    for<'r> bool: Decode<'r, D::Db> + Type<D::Db>,
    for<'r> String: Decode<'r, D::Db> + Type<D::Db>,
    usize: ColumnIndex<<D::Db as Database>::Row>,
{
    /// Checks the server answers.
    pub async fn ping(&self) -> Result<()> {
        let work = async {
            let mut conn = self.writer().await?;
            sqlx::query("SELECT 1").execute(&mut *conn).await
        };
        self.run("connect", work).await.map(drop)
    }

    /// Runs one statement on a writer connection; the rows it affected.
    pub async fn write<'q>(
        &self,
        what: &str,
        query: Query<'q, D::Db, Args<'q, D::Db>>,
    ) -> Result<u64> {
        let work = async {
            let mut conn = self.writer().await?;
            query.execute(&mut *conn).await
        };
        Ok(D::rows_affected(&self.run(what, work).await?))
    }

    /// Runs one statement answering one row on a writer connection.
    pub async fn write_row<'q, O>(
        &self,
        what: &str,
        query: QueryAs<'q, D::Db, O, Args<'q, D::Db>>,
    ) -> Result<O>
    where
        O: Send + Unpin + for<'r> sqlx::FromRow<'r, <D::Db as Database>::Row>,
    {
        let work = async {
            let mut conn = self.writer().await?;
            query.fetch_one(&mut *conn).await
        };
        self.run(what, work).await
    }

    /// Runs `write`, a compare-and-set `what` that applies only to a live
    /// row at the expected version, as one statement (one round trip).
    /// When it matched nothing, `judge` tells why, on the same connection:
    /// it answers `1` when the row is live at a version other than the
    /// expected one (a conflict), and `0` or no row otherwise (gone).
    ///
    /// Whatever happened between the two statements is a write that came
    /// after this one's miss. A row found live at the expected version
    /// after a miss was deleted and stored again under the same id in
    /// between (or replaced while the write waited): the record the caller
    /// knew is gone, and answering a conflict would have the caller re-read
    /// the new record at the version it expects and write its changes onto
    /// it.
    pub async fn write_or_judge<'q>(
        &self,
        what: &str,
        write: Query<'q, D::Db, Args<'q, D::Db>>,
        judge: Query<'q, D::Db, Args<'q, D::Db>>,
    ) -> Result<Judged> {
        let work = async {
            let mut conn = self.writer().await?;
            if D::rows_affected(&write.execute(&mut *conn).await?) == 1 {
                return Ok(Judged::DONE);
            }
            let row = judge.fetch_optional(&mut *conn).await?;
            let conflict = match row {
                Some(row) => row.try_get::<i64, _>(0)? == 1,
                None => false,
            };
            Ok(Judged::missed(conflict))
        };
        self.run(what, work).await
    }

    /// Runs one query answering one value on a reader connection.
    async fn read<'q, O>(
        &self,
        what: &str,
        query: QueryScalar<'q, D::Db, O, Args<'q, D::Db>>,
    ) -> Result<O>
    where
        O: Send + Unpin,
        (O,): for<'r> sqlx::FromRow<'r, <D::Db as Database>::Row>,
    {
        let work = async {
            let mut conn = self.reader().await?;
            query.fetch_one(&mut *conn).await
        };
        self.run(what, work).await
    }

    /// Whether a row (live or not) has `id`.
    pub async fn exists(&self, id: &SessionId) -> Result<bool> {
        let query = sqlx::query_scalar(&self.sql.exists).bind(&id.as_bytes()[..]);
        self.read("exists", query).await
    }

    /// The live session `id`, with the expiry and version of its columns.
    pub async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let mut query = sqlx::query(&self.sql.get).bind(&id.as_bytes()[..]);
        if let Clock::App = self.sql.clock {
            query = query.bind(now_millis());
        }
        let work = async {
            let mut conn = self.reader().await?;
            query.fetch_optional(&mut *conn).await
        };
        let Some(row) = self.run("get", work).await? else {
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
        let origin = format_args!("row {id} of table {}", self.table_name);
        decode_session(*id, record, expires_at, version, origin).map(Some)
    }

    /// Stores `session` whatever is there.
    pub async fn set(&self, session: &Session) -> Result<()> {
        let version = storable_version(session.id(), session.version())?;
        let record = codec::encode(session, session.version())?;
        let id = session.id();
        let query = self.row_query(&self.sql.set, &id, &record, session, version);
        self.write("set", query).await.map(drop)
    }

    /// Deletes the row `id`, if any.
    pub async fn delete(&self, id: &SessionId) -> Result<()> {
        let query = sqlx::query(&self.sql.delete).bind(&id.as_bytes()[..]);
        self.write("delete", query).await.map(drop)
    }

    /// Stores `session` unless its id is taken ([`Error::IdCollision`]).
    pub async fn create(&self, session: &Session) -> Result<()> {
        let version = storable_version(session.id(), session.version())?;
        let record = codec::encode(session, session.version())?;
        let id = session.id();
        let query = self.row_query(&self.sql.create, &id, &record, session, version);
        let insert = async {
            let mut conn = self.writer().await?;
            match query.execute(&mut *conn).await {
                Ok(done) => Ok(D::rows_affected(&done) == 1),
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

    /// `sql` with a row's id, record, expiry, version and user key bound,
    /// for `set` and `create`.
    fn row_query<'q>(
        &self,
        sql: &'q str,
        id: &'q SessionId,
        record: &'q [u8],
        session: &'q Session,
        version: i64,
    ) -> Query<'q, D::Db, Args<'q, D::Db>> {
        let query = sqlx::query(sql)
            .bind(&id.as_bytes()[..])
            .bind(record)
            .bind(session.expires_at_millis())
            .bind(version);
        D::bind_user_key(query, session.user_key())
    }

    /// The live sessions bound to `user_key`: one query through the user
    /// index. A row that does not decode, or whose record is bound to
    /// another user than its `user_key` column says (written behind the
    /// store's back), is skipped with a warning: one bad row must not hide
    /// a user's other sessions from a "log out everywhere" page.
    pub async fn sessions_of(&self, user_key: &str) -> Result<Vec<Session>> {
        let mut query = D::bind_user_key(sqlx::query(&self.sql.sessions_of), Some(user_key));
        if let Clock::App = self.sql.clock {
            query = query.bind(now_millis());
        }
        let work = async {
            let mut conn = self.reader().await?;
            query.fetch_all(&mut *conn).await
        };
        let rows = self.run("sessions_of", work).await?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            let columns = (|| {
                Ok::<_, sqlx::Error>((
                    row.try_get::<Vec<u8>, _>(0)?,
                    row.try_get::<Vec<u8>, _>(1)?,
                    row.try_get::<i64, _>(2)?,
                    row.try_get::<i64, _>(3)?,
                ))
            })();
            let (id, record, expires_at, version) =
                columns.map_err(|e| Error::decode(self.context("sessions_of"), e))?;
            let Some(id) = self.row_id(&id, "sessions_of") else {
                continue;
            };
            let origin = format_args!("row {id} of table {}", self.table_name);
            match decode_session(id, record, expires_at, version, origin) {
                Ok(session) if session.user_key() == Some(user_key) => sessions.push(session),
                Ok(_) => tracing::warn!(
                    store = D::STORE,
                    table = %self.table_name,
                    %id,
                    "skipped a row whose record is bound to another user than its user_key column"
                ),
                Err(e) => tracing::warn!(
                    store = D::STORE,
                    table = %self.table_name,
                    %id,
                    error = %e,
                    "skipped a row that does not decode"
                ),
            }
        }
        Ok(sessions)
    }

    /// Runs one statement answering ids (a `DELETE … RETURNING id`) on a
    /// writer connection.
    pub async fn write_ids<'q>(
        &self,
        what: &str,
        query: QueryScalar<'q, D::Db, Vec<u8>, Args<'q, D::Db>>,
    ) -> Result<Vec<Vec<u8>>> {
        let work = async {
            let mut conn = self.writer().await?;
            query.fetch_all(&mut *conn).await
        };
        self.run(what, work).await
    }

    /// Counts the live rows.
    pub async fn len(&self) -> Result<u64> {
        let mut query = sqlx::query_scalar::<_, i64>(&self.sql.len);
        if let Clock::App = self.sql.clock {
            query = query.bind(now_millis());
        }
        Ok(self.read("len", query).await?.max(0) as u64)
    }

    /// Deletes the rows expired at the start, batch by batch; how many.
    pub async fn flush(&self) -> Result<u64> {
        // One cutoff, taken at the start: what expires later is the next
        // flush's work, so a steady trickle cannot keep this one running.
        let cutoff = match &self.sql.clock {
            Clock::App => now_millis(),
            Clock::Server { now } => self.read("flush", sqlx::query_scalar(now)).await?,
        };
        let mut total = 0;
        loop {
            let batch = self.batch("flush", Some(cutoff)).await?;
            total += batch.deleted;
            if batch.found == 0 {
                return Ok(total);
            }
        }
    }

    /// Deletes every row, batch by batch.
    pub async fn clear(&self) -> Result<()> {
        while self.batch("clear", None).await?.found > 0 {}
        Ok(())
    }

    /// One batch of `flush` (`cutoff`) or `clear` (`None`).
    async fn batch(&self, what: &str, cutoff: Option<i64>) -> Result<Batch> {
        let flush = cutoff.is_some();
        match &self.sql.batches {
            Batches::Counted { flush: f, clear: c } => {
                let mut query = sqlx::query_as::<_, (i64, i64)>(if flush { f } else { c });
                if let Some(cutoff) = cutoff {
                    query = query.bind(cutoff);
                }
                let (found, deleted) = self.write_row(what, query).await?;
                Ok(Batch {
                    found: found.max(0) as u64,
                    deleted: deleted.max(0) as u64,
                })
            }
            Batches::Locked { flush: f, clear: c } => {
                let mut query = sqlx::query(if flush { f } else { c });
                if let Some(cutoff) = cutoff {
                    query = query.bind(cutoff);
                }
                let deleted = self.write(what, query).await?;
                Ok(Batch {
                    found: deleted,
                    deleted,
                })
            }
            Batches::FoundThenDeleted {
                flush_find,
                flush_delete,
                clear_find,
                clear_delete,
            } => {
                let (find, delete) = if flush {
                    (flush_find, flush_delete)
                } else {
                    (clear_find, clear_delete)
                };
                let mut query = sqlx::query_scalar::<_, Vec<u8>>(find);
                if let Some(cutoff) = cutoff {
                    query = query.bind(cutoff);
                }
                let work = async {
                    let mut conn = self.writer().await?;
                    query.fetch_all(&mut *conn).await
                };
                let ids = self.run(what, work).await?;
                let Some(last) = ids.len().checked_sub(1) else {
                    return Ok(Batch {
                        found: 0,
                        deleted: 0,
                    });
                };
                let mut deletion = sqlx::query(delete);
                if let Some(cutoff) = cutoff {
                    deletion = deletion.bind(cutoff);
                }
                for i in 0..DELETE_BATCH {
                    deletion = deletion.bind(&ids[i.min(last)][..]);
                }
                let deleted = self.write(what, deletion).await?;
                Ok(Batch {
                    found: ids.len() as u64,
                    deleted,
                })
            }
        }
    }

    /// Applies the migrations not yet recorded for the table under `key`,
    /// on `conn`, which holds the dialect's migration lock; first adopts an
    /// earlier layout's record if the table has none.
    pub async fn apply_migrations(
        &self,
        conn: &mut <D::Db as Database>::Connection,
        key: &str,
    ) -> sqlx::Result<()> {
        let sql = &self.sql.migrations;
        sqlx::query(&sql.create_table).execute(&mut *conn).await?;
        let mut done: i64 = sqlx::query_scalar(&sql.recorded)
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        let index = format!("{q}{key}{INDEX_SUFFIX}{q}", q = D::QUOTE);
        let user_index = format!("{q}{key}{USER_INDEX_SUFFIX}{q}", q = D::QUOTE);
        if done == 0 {
            done = self.adopt_legacy(conn, key, &index).await?;
        }
        for (version, statements) in D::MIGRATIONS {
            if *version <= done {
                continue;
            }
            for ddl in *statements {
                let ddl = ddl
                    .replace("{t}", &self.table_sql)
                    .replace("{index}", &index)
                    .replace("{user_index}", &user_index);
                match sqlx::query(&ddl).execute(&mut *conn).await {
                    Err(e) if D::already_applied(&e) => {
                        tracing::info!(table = %self.table_name, version, error = %e, "migration step found already applied");
                    }
                    done => drop(done?),
                }
            }
            sqlx::query(&sql.record)
                .bind(key)
                .bind(*version)
                .bind(now_millis())
                .execute(&mut *conn)
                .await?;
            tracing::info!(table = %self.table_name, version, "session table migrated");
        }
        Ok(())
    }

    /// Adopts the record the dialect's earlier layout left for this table
    /// (see [`LegacyLayout`](crate::LegacyLayout)); the version it had
    /// reached (0 when there is nothing to adopt).
    async fn adopt_legacy(
        &self,
        conn: &mut <D::Db as Database>::Connection,
        key: &str,
        index: &str,
    ) -> sqlx::Result<i64> {
        let Some(legacy) = &self.sql.legacy else {
            return Ok(0);
        };
        let columns: Vec<String> = sqlx::query_scalar(&legacy.columns)
            .bind(legacy.record_table.as_str())
            .fetch_all(&mut *conn)
            .await?;
        if columns != ["applied_at", "version"] {
            return Ok(0);
        }
        let table_exists: bool = sqlx::query_scalar(&legacy.table_exists)
            .bind(legacy.table_ref.as_str())
            .fetch_one(&mut *conn)
            .await?;
        let mut done = 0;
        if table_exists {
            let highest = format!(
                "SELECT COALESCE(MAX(version), 0) FROM {}",
                legacy.record_table
            );
            done = sqlx::query_scalar(&highest).fetch_one(&mut *conn).await?;
            sqlx::query(&legacy.copy)
                .bind(key)
                .execute(&mut *conn)
                .await?;
            let old: Option<String> = sqlx::query_scalar(&legacy.find_old_index)
                .bind(legacy.table_ref.as_str())
                .bind(legacy.old_index.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            if let Some(old) = old {
                let replace = legacy
                    .replace_old_index
                    .replace("{old}", &old)
                    .replace("{index}", index);
                sqlx::query(&replace).execute(&mut *conn).await?;
            }
            // Whatever became of the old index, the table has one now.
            let create = format!(
                "CREATE INDEX IF NOT EXISTS {index} ON {} (expires_at)",
                self.table_sql
            );
            sqlx::query(&create).execute(&mut *conn).await?;
        }
        // Without its table the record is stale (the table was dropped by hand).
        let drop = format!("DROP TABLE {}", legacy.record_table);
        sqlx::query(&drop).execute(&mut *conn).await?;
        tracing::info!(table = %self.table_name, version = done, "adopted the migration record of an earlier version");
        Ok(done)
    }
}

/// The session a row holds: the record decoded, with the row's expiry and
/// version, which are authoritative (`touch` and `update` move only the
/// `expires_at` column, never the expiry in the record's header). A version
/// outside `1..=MAX_VERSION` is [`Error::Decode`] naming `origin`.
pub(crate) fn decode_session(
    id: SessionId,
    record: Vec<u8>,
    expires_at: i64,
    version: i64,
    origin: impl std::fmt::Display,
) -> Result<Session> {
    let mut session = codec::decode_owned(id, record, &origin)?;
    session.set_expires_at_millis(expires_at);
    let version = u64::try_from(version)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| Error::decode(origin, format!("version {version} out of range")))?;
    session.set_version(version);
    Ok(session)
}

//! Where a store's statements run.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::{Connection as _, Database, Pool};
use tokio::sync::{Mutex, MutexGuard};

/// A connection back in the pool for less than this is handed out again
/// without a round trip to check it (HikariCP's `aliveBypassWindowMs`
/// makes the same trade, with 500 ms).
///
/// sqlx checks every connection it takes from the pool by default, which
/// is one more round trip for every statement of a store, and the only
/// connections it catches are those the server or the network dropped
/// while they sat unused. Under load a connection sits for microseconds;
/// one that sat longer than this is checked as before. A connection that
/// broke within the window fails its next statement, with an error
/// ([`Error::Backend`](session_store::Error::Backend), or `Unavailable`
/// when nothing was sent), and sqlx closes it rather than pool it again.
pub const PING_AFTER_IDLE: Duration = Duration::from_millis(500);

/// The pool options every SQL store uses: at most `size` connections
/// (at least one), waiting at most `acquire_timeout` for one, and checking
/// a connection before use only once it sat idle for [`PING_AFTER_IDLE`].
pub fn pool_options<DB: Database>(size: u32, acquire_timeout: Duration) -> PoolOptions<DB> {
    PoolOptions::<DB>::new()
        .max_connections(size.max(1))
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// The connections a store runs its statements on.
pub enum Connections<DB: Database> {
    /// One pool for reads and writes alike.
    Pool(Pool<DB>),
    /// One connection for every write, held directly rather than in a pool
    /// of one, so writers queue in order on this lock instead of fighting
    /// for the database's (SQLite has one write lock), beside a pool of
    /// readers; `readers: None` reads on the writer too (an in-memory
    /// database, whose only copy lives in that connection).
    OneWriter {
        /// The connection every write runs on.
        writer: Mutex<DB::Connection>,
        /// Connections for reads, if any.
        readers: Option<Pool<DB>>,
    },
}

/// A connection taken from [`Connections`] for one operation: returned to
/// its pool, or the writer's lock released, when dropped.
pub enum Connection<'a, DB: Database> {
    /// A connection of a pool.
    Pooled(PoolConnection<DB>),
    /// The one writer, locked.
    Writer(MutexGuard<'a, DB::Connection>),
}

impl<DB: Database> Connections<DB> {
    /// A connection for statements that write (or must see what this
    /// store's writes left, under the same lock).
    pub async fn writer(&self) -> Result<Connection<'_, DB>, sqlx::Error> {
        match self {
            Connections::Pool(pool) => Ok(Connection::Pooled(pool.acquire().await?)),
            Connections::OneWriter { writer, .. } => Ok(Connection::Writer(writer.lock().await)),
        }
    }

    /// A connection for statements that only read.
    pub async fn reader(&self) -> Result<Connection<'_, DB>, sqlx::Error> {
        match self {
            Connections::Pool(pool)
            | Connections::OneWriter {
                readers: Some(pool),
                ..
            } => Ok(Connection::Pooled(pool.acquire().await?)),
            Connections::OneWriter {
                writer,
                readers: None,
            } => Ok(Connection::Writer(writer.lock().await)),
        }
    }
}

impl<DB: Database> Deref for Connection<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match self {
            Connection::Pooled(conn) => conn,
            Connection::Writer(conn) => conn,
        }
    }
}

impl<DB: Database> DerefMut for Connection<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match self {
            Connection::Pooled(conn) => conn,
            Connection::Writer(conn) => conn,
        }
    }
}

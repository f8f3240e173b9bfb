//! Where a store's statements run.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::sync::{Mutex, MutexGuard};

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

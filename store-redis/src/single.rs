//! The store on one Redis server, through a `deadpool-redis` pool.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use redis::aio::MultiplexedConnection;
use redis::RedisResult;
use session_store::backend::{redact_url, timed_unsent_aware, Unsent};
use session_store::time::OffsetDateTime;
use session_store::{
    BoxError, DeleteOutcome, Error, Result, Session, SessionId, SessionInterface, UpdateOutcome,
};

use crate::keyspace::{Keyspace, SeenKeys, Transport};
use crate::scripts::Scripts;
use crate::{Keys, SCAN_BATCH};

/// How to reach Redis and name keys. Its `Debug` output hides the URL's
/// password.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://` for TLS, if the redis crate has it).
    pub url: String,
    /// Prefix of every key of this store (default `session:`): its namespace.
    pub prefix: String,
    /// Most pooled connections (default 16).
    pub pool_size: usize,
    /// Longest wait for a free or new connection (default 2 s).
    pub connect_timeout: Duration,
    /// Longest time one operation may take before it is an error (default 2 s).
    pub operation_timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &session_store::backend::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

impl RedisConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "session:".into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(2),
        }
    }
}

/// The Redis store.
#[derive(Clone)]
pub struct RedisStore {
    server: Server,
    keyspace: Keyspace,
}

/// One server reached through a pool, each request on a lane's connection.
#[derive(Clone)]
pub(crate) struct Server {
    pool: Pool,
    lanes: Arc<Lanes>,
    address: String,
    operation_timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.server.address)
            .field("prefix", &self.keyspace.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store over an existing pool, with the default prefix `session:`
    /// and a 2 s operation timeout.
    pub fn new(pool: Pool) -> Self {
        Self::with_prefix(pool, "session:")
    }

    /// A store over an existing pool with its own key prefix.
    pub fn with_prefix(pool: Pool, prefix: impl Into<String>) -> Self {
        Self::over(
            pool,
            prefix.into(),
            "redis (pool)".into(),
            Duration::from_secs(2),
        )
    }

    fn over(pool: Pool, prefix: String, address: String, operation_timeout: Duration) -> Self {
        let server = Server {
            lanes: Arc::new(Lanes::for_pool(&pool)),
            pool,
            address,
            operation_timeout,
        };
        RedisStore {
            keyspace: Keyspace {
                transport: Transport::Server(server.clone()),
                prefix,
                scripts: Arc::new(Scripts::new()),
                replica_wait: None,
            },
            server,
        }
    }

    /// Connects to `url` with the default configuration. Fails with
    /// [`Error::Backend`] if the server does not answer a `PING`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(RedisConfig::new(url)).await
    }

    /// Connects with `config`, checking the server with a `PING`.
    pub async fn connect_with(config: RedisConfig) -> Result<Self> {
        let address = redact_url(&config.url);
        let mut pool_config = deadpool_redis::Config::from_url(config.url.clone());
        pool_config.pool = Some(PoolConfig {
            max_size: config.pool_size.max(1),
            timeouts: Timeouts {
                wait: Some(config.connect_timeout),
                create: Some(config.connect_timeout),
                recycle: Some(config.connect_timeout),
            },
            ..PoolConfig::default()
        });
        let pool = pool_config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| Error::Config(format!("redis pool for {address}: {e}")))?;
        let store = Self::over(pool, config.prefix, address, config.operation_timeout);
        store
            .server
            .run("ping", |mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await?;
        Ok(store)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.keyspace.prefix
    }

    /// The pool, e.g. to share it with other parts of the app.
    pub fn pool(&self) -> &Pool {
        &self.server.pool
    }

    /// Walks every session key of this namespace with `SCAN` until the
    /// cursor comes back to 0 (keys deleted meanwhile do not end the walk
    /// early), handing each non-empty batch to `each`. The `MATCH` pattern
    /// already asks for exactly [`is_own_key`] keys; the check is repeated
    /// here so nothing else is ever counted or deleted.
    async fn scan_batches<F, Fut>(&self, what: &'static str, each: F) -> Result<()>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        self.scan_keys(what, Keys::Sessions, each).await
    }

    /// [`scan_batches`](Self::scan_batches) over the keys `which` names.
    async fn scan_keys<F, Fut>(&self, what: &'static str, which: Keys, mut each: F) -> Result<()>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let prefix = &self.keyspace.prefix;
        let pattern = &which.pattern(prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .server
                .run(what, move |mut conn| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(SCAN_BATCH)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            let keys: Vec<String> = keys
                .into_iter()
                .filter(|k| which.is_own(prefix, k))
                .collect();
            if !keys.is_empty() {
                each(keys).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

impl Server {
    pub(crate) const STORE: &'static str = "redis";

    /// Runs `op` once on a lane's connection within the operation timeout.
    /// No connection from the pool is [`Error::Unavailable`] (nothing was
    /// sent); any other failure is [`Error::Backend`], and retires the
    /// lane's connection so the next use draws a checked one from the pool
    /// (that is how the store reconnects).
    pub(crate) async fn run<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T>
    where
        F: FnMut(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let lane = self.lanes.pick();
        let work = async {
            // No connection: the request never left, so the manager knows
            // nothing was written (`Error::Unavailable`).
            let conn = self
                .lanes
                .connection(lane, &self.pool)
                .await
                .map_err(|e| BoxError::from(Unsent(e)))?;
            op(conn).await.map_err(BoxError::from)
        };
        let result = timed_unsent_aware(
            Self::STORE,
            self.operation_timeout,
            || self.context(what),
            |e: &BoxError| e.is::<Unsent>(),
            work,
        )
        .await;
        if result.is_err() {
            self.lanes.retire(lane).await;
        }
        result
    }

    pub(crate) fn context(&self, what: &str) -> String {
        format!("{what} at {}", self.address)
    }
}

/// Connections drawn from the pool and kept out, one per lane, each shared
/// by many requests at once.
///
/// A redis `MultiplexedConnection` pipelines concurrent requests over one
/// socket, so it is meant to be shared rather than checked out per request.
/// Checking out per request would also cost a round trip each time:
/// deadpool-redis checks every connection with a `PING` when handing it out.
/// The pool still creates, checks and limits the connections; a lane whose
/// connection failed gives it up and draws a fresh, checked one on next use.
struct Lanes {
    slots: Vec<tokio::sync::Mutex<Option<Lane>>>,
    next: AtomicUsize,
}

/// The pooled object (kept out of the pool) and its shareable connection.
struct Lane {
    pooled: deadpool_redis::Connection,
    shared: MultiplexedConnection,
}

impl Lanes {
    /// One lane per core, at most the pool's size: more connections than
    /// cores only split the same requests into smaller batches, each paying
    /// its own system calls (measured: 2 lanes serve 1.5x what 8 do on 2 cores).
    fn for_pool(pool: &Pool) -> Self {
        let lanes = pool.status().max_size.min(crate::cores()).max(1);
        Lanes {
            slots: (0..lanes).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }

    /// The lane's connection, drawn from the pool if the lane has none. The
    /// lane is locked while it draws, so no more connections are checked
    /// out than there are lanes (the pool's size) and none waits forever.
    async fn connection(
        &self,
        lane: usize,
        pool: &Pool,
    ) -> std::result::Result<MultiplexedConnection, BoxError> {
        let mut slot = self.slots[lane].lock().await;
        if let Some(lane) = slot.as_ref() {
            return Ok(lane.shared.clone());
        }
        // Boxed: drawing a connection may create one, and that future is
        // some 14 KB, which would otherwise be part of every operation's
        // future (and copied whenever one is boxed) for a path taken once
        // per lane.
        let pooled = Box::pin(pool.get()).await.map_err(BoxError::from)?;
        let shared = MultiplexedConnection::clone(&pooled);
        *slot = Some(Lane {
            pooled,
            shared: shared.clone(),
        });
        Ok(shared)
    }

    async fn retire(&self, lane: usize) {
        if let Some(lane) = self.slots[lane].lock().await.take() {
            // Out of the pool for good: the pool makes a new one in its place.
            drop(deadpool_redis::Connection::take(lane.pooled));
        }
    }
}

#[async_trait]
impl SessionInterface for RedisStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.keyspace.exists(id).await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        self.keyspace.get(id).await
    }

    async fn set(&self, session: &Session) -> Result<()> {
        self.keyspace.set(session).await
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.keyspace.delete(id).await
    }

    async fn create(&self, session: &Session) -> Result<()> {
        self.keyspace.create(session).await
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        self.keyspace.update(session, expected_version).await
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        self.keyspace.delete_if(id, expected_version).await
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        self.keyspace.touch(id, expires_at).await
    }

    /// Returns 0: every record this store writes has its key expire
    /// (`PXAT`) exactly when its header says, so Redis drops it itself. A
    /// record whose header has expired while its key still has a TTL can
    /// only come from another writer; every operation treats it as expired
    /// already (never returned, counted, updated, touched or deleted by
    /// `delete_if`), and Redis drops it at its TTL.
    ///
    /// What it does is drop expired records' entries from this namespace's
    /// user index: it walks the index keys (`SCAN`, exactly this
    /// namespace's) and, per batch, one script removes from each set the
    /// entries whose score (their record's expiry) has passed.
    async fn flush(&self) -> Result<u64> {
        let lua = &self.keyspace.scripts.flush_index;
        let prefix = self.keyspace.prefix.as_bytes();
        self.scan_keys("flush", Keys::UserSets, |sets| async move {
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            let sets = &sets;
            self.server
                .run("flush", move |mut conn| async move {
                    lua.run::<_, i64>(&mut conn, sets, &[prefix]).await
                })
                .await
                .map(drop)
        })
        .await?;
        Ok(0)
    }

    /// Deletes this namespace's records (`SCAN` + `UNLINK` per batch),
    /// then walks its user sets and drops every entry whose record is no
    /// longer there (one script per batch). A session created meanwhile is
    /// written with its entry in one step, so it keeps it.
    async fn clear(&self) -> Result<()> {
        self.scan_batches("clear", |keys| async move {
            let keys = &keys;
            self.server
                .run("clear", move |mut conn| async move {
                    redis::cmd("UNLINK")
                        .arg(keys)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await
        })
        .await?;
        let lua = &self.keyspace.scripts.clear_index;
        let prefix = self.keyspace.prefix.as_bytes();
        self.scan_keys("clear", Keys::UserSets, |sets| async move {
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            let sets = &sets;
            self.server
                .run("clear", move |mut conn| async move {
                    lua.run::<_, i64>(&mut conn, sets, &[prefix]).await
                })
                .await
                .map(drop)
        })
        .await
    }

    /// One script: drops the user's entries whose records expired or are
    /// no longer bound to exactly that user, and answers the others'
    /// records.
    async fn sessions_of(&self, user_key: &str) -> Result<Vec<Session>> {
        let set = &self.keyspace.user_set(user_key);
        let lua = &self.keyspace.scripts.sessions_of;
        let args: &[&[u8]] = &[self.keyspace.prefix.as_bytes(), user_key.as_bytes()];
        let listed: Vec<Vec<u8>> = self
            .server
            .run("sessions_of", move |mut conn| async move {
                lua.run(&mut conn, &[set], args).await
            })
            .await?;
        let mut sessions = Vec::with_capacity(listed.len() / 2);
        for pair in listed.chunks_exact(2) {
            sessions.push(self.keyspace.decode_listed(&pair[0], &pair[1])?);
        }
        Ok(sessions)
    }

    /// One script: deletes each record in the user's set that is bound to
    /// exactly that user (checked in the record), but `except`.
    async fn revoke_user(
        &self,
        user_key: &str,
        except: Option<&SessionId>,
    ) -> Result<Vec<SessionId>> {
        let set = &self.keyspace.user_set(user_key);
        let lua = &self.keyspace.scripts.revoke;
        let except = except.map(SessionId::to_hex).unwrap_or_default();
        let args: &[&[u8]] = &[
            self.keyspace.prefix.as_bytes(),
            user_key.as_bytes(),
            except.as_bytes(),
        ];
        let revoked: Vec<String> = self
            .server
            .run("revoke_user", move |mut conn| async move {
                lua.run(&mut conn, &[set], args).await
            })
            .await?;
        revoked
            .iter()
            .map(|id| self.keyspace.listed_id(id.as_bytes()))
            .collect()
    }

    async fn len(&self) -> Result<u64> {
        let count = AtomicU64::new(0);
        let lua = &self.keyspace.scripts.count_live;
        let mut seen = SeenKeys::new();
        self.scan_batches("len", |keys| {
            let count = &count;
            let keys = seen.first_sightings(keys);
            async move {
                if keys.is_empty() {
                    return Ok(());
                }
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                let keys = &keys;
                let live: u64 = self
                    .server
                    .run("len", move |mut conn| async move {
                        lua.run(&mut conn, keys, &[]).await
                    })
                    .await?;
                count.fetch_add(live, Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
        Ok(count.into_inner())
    }
}

#[cfg(test)]
mod debug_tests {
    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", super::RedisConfig::new("redis://:hunter2@h:6379"));
        assert!(
            !shown.contains("hunter2") && shown.contains("h:6379"),
            "{shown}"
        );
    }
}

//! # session-store-redis
//!
//! A [`SessionInterface`] store on Redis, through a `deadpool-redis` pool.
//!
//! Each session is one string key, `<prefix><id>`, holding the core's
//! encoded record and expiring at the session's `expires_at` (absolute
//! `PXAT`), so Redis itself drops expired sessions and
//! [`flush`](SessionInterface::flush) has nothing to do (it returns 0).
//!
//! | operation | Redis | round trips |
//! | --- | --- | --- |
//! | `exists`, `has` | `EXISTS` | 1 |
//! | `get`, `is_valid` | `GET` | 1 |
//! | `set` | `SET PXAT` | 1 |
//! | `create` | `SET NX PXAT` | 1 |
//! | `update` | Lua compare-and-set on the record's version (`EVALSHA`) | 1 |
//! | `touch` | Lua: patch expiry if the key exists, `SET PXAT` | 1 |
//! | `delete` | `DEL` | 1 |
//! | `flush` | nothing: Redis expires keys itself | 0 |
//! | `clear`, `len` | `SCAN MATCH <prefix>*` in batches (+ `UNLINK`) | 1 per 1000 keys |
//!
//! `clear` and `len` only ever touch keys under this store's prefix; never
//! `KEYS` or `FLUSHDB`.
//!
//! ```no_run
//! # async fn demo() -> session_store::Result<()> {
//! use session_store_redis::{RedisConfig, RedisStore};
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! let custom = RedisStore::connect_with(RedisConfig {
//!     prefix: "myapp:session:".into(),
//!     pool_size: 32,
//!     ..RedisConfig::new("redis://127.0.0.1:6379")
//! })
//! .await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, AsyncCommands as _, Script};
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use session_store::backend::{redact_url, timed};
use session_store::time::OffsetDateTime;
use session_store::{
    codec, now_millis, unix_millis, BoxError, Error, Result, Session, SessionId, SessionInterface,
    UpdateOutcome,
};

pub use deadpool_redis;

const STORE: &str = "redis";

/// Keys read per `SCAN` step in `clear` and `len`.
const SCAN_BATCH: usize = 1000;

/// Compare-and-set on the version bytes of the record's header:
/// 0 = gone, 1 = conflict, 2 = updated.
const UPDATE_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if string.sub(cur, 2, 9) ~= ARGV[1] then return 1 end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
return 2
";

/// Moves the expiry of an existing record (header bytes 18..25 and the key's
/// TTL): 0 = missing, 1 = done, -1 = the record is too short to patch.
const TOUCH_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if string.len(cur) < 25 then return -1 end
redis.call('SET', KEYS[1], string.sub(cur, 1, 17) .. ARGV[1] .. string.sub(cur, 26), 'PXAT', ARGV[2])
return 1
";

/// How to reach Redis and name keys.
#[derive(Clone, Debug)]
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
    pool: Pool,
    lanes: Arc<Lanes>,
    prefix: String,
    address: String,
    operation_timeout: Duration,
    update_script: Script,
    touch_script: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("prefix", &self.prefix)
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
        RedisStore {
            lanes: Arc::new(Lanes::for_pool(&pool)),
            pool,
            prefix: prefix.into(),
            address: "redis (pool)".into(),
            operation_timeout: Duration::from_secs(2),
            update_script: Script::new(UPDATE_LUA),
            touch_script: Script::new(TOUCH_LUA),
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
        let store = RedisStore {
            lanes: Arc::new(Lanes::for_pool(&pool)),
            pool,
            prefix: config.prefix,
            address,
            operation_timeout: config.operation_timeout,
            update_script: Script::new(UPDATE_LUA),
            touch_script: Script::new(TOUCH_LUA),
        };
        store
            .run("ping", |mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await?;
        Ok(store)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pool, e.g. to share it with other parts of the app.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn key(&self, id: &SessionId) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 64);
        key.push_str(&self.prefix);
        id.push_hex(&mut key);
        key
    }

    /// Runs `op` on a lane's connection within the operation timeout; every
    /// failure becomes an [`Error::Backend`] naming the operation and the
    /// address, and retires the lane's connection so the next use draws a
    /// checked one from the pool (that is how the store reconnects).
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let lane = self.lanes.pick();
        let work = async {
            let conn = self.lanes.connection(lane, &self.pool).await?;
            op(conn).await.map_err(BoxError::from)
        };
        let result = timed(
            STORE,
            self.operation_timeout,
            || format!("{what} at {}", self.address),
            work,
        )
        .await;
        if result.is_err() {
            self.lanes.retire(lane).await;
        }
        result
    }

    /// Walks every key under the prefix with `SCAN`, handing each batch to `each`.
    async fn scan_batches<F, Fut>(&self, what: &str, mut each: F) -> Result<()>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let pattern = format!("{}*", escape_glob(&self.prefix));
        let mut cursor: u64 = 0;
        loop {
            let pattern = pattern.clone();
            let (next, keys): (u64, Vec<String>) = self
                .run(what, |mut conn| async move {
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
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let lanes = pool.status().max_size.min(cores).max(1);
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
        let pooled = pool.get().await.map_err(BoxError::from)?;
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

/// Escapes Redis glob metacharacters so a prefix matches only itself.
fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[async_trait]
impl SessionInterface for RedisStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        let key = self.key(id);
        self.run("exists", |mut conn| async move { conn.exists(key).await })
            .await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let key = self.key(id);
        let bytes: Option<Vec<u8>> = self
            .run("get", |mut conn| {
                let key = key.clone();
                async move { conn.get(key).await }
            })
            .await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let session = codec::decode(*id, &bytes, &key)?;
        // Redis drops the key at its PXAT; this guards the millisecond between.
        Ok((!session.is_expired()).then_some(session))
    }

    async fn set(&self, session: &Session) -> Result<()> {
        let key = self.key(&session.id());
        if session.is_expired() {
            return self.delete(&session.id()).await;
        }
        let bytes = codec::encode(session, session.version())?;
        let expires_at = session.expires_at_millis();
        self.run("set", |mut conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(bytes)
                .arg("PXAT")
                .arg(expires_at)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        let key = self.key(id);
        self.run(
            "delete",
            |mut conn| async move { conn.del::<_, ()>(key).await },
        )
        .await
    }

    async fn create(&self, session: &Session) -> Result<()> {
        let key = self.key(&session.id());
        let bytes = codec::encode(session, session.version())?;
        let expires_at = session.expires_at_millis();
        let stored: Option<String> = self
            .run("create", |mut conn| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(bytes)
                    .arg("NX")
                    .arg("PXAT")
                    .arg(expires_at)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        match stored {
            Some(_) => Ok(()),
            None => Err(Error::IdCollision { id: session.id() }),
        }
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        let key = self.key(&session.id());
        let version = expected_version + 1;
        let bytes = codec::encode(session, version)?;
        let expires_at = session.expires_at_millis();
        let script = &self.update_script;
        let outcome: i64 = self
            .run("update", |mut conn| async move {
                script
                    .key(key)
                    .arg(&expected_version.to_be_bytes()[..])
                    .arg(bytes)
                    .arg(expires_at)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match outcome {
            2 => UpdateOutcome::Updated { version },
            1 => UpdateOutcome::Conflict,
            _ => UpdateOutcome::Gone,
        })
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let key = self.key(id);
        let expires_at_ms = unix_millis(expires_at);
        if expires_at_ms <= now_millis() {
            // Touching to a past expiry ends a live session.
            let live = self.exists(id).await?;
            self.delete(id).await?;
            return Ok(live);
        }
        let script = &self.touch_script;
        let outcome: i64 = self
            .run("touch", |mut conn| {
                let key = key.clone();
                async move {
                    script
                        .key(key)
                        .arg(&expires_at_ms.to_be_bytes()[..])
                        .arg(expires_at_ms)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        match outcome {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(Error::decode(key, "record shorter than its header")),
        }
    }

    async fn flush(&self) -> Result<u64> {
        // Every key carries its PXAT: Redis has already dropped expired sessions.
        Ok(0)
    }

    async fn clear(&self) -> Result<()> {
        self.scan_batches("clear", |keys| async move {
            self.run("clear", |mut conn| async move {
                redis::cmd("UNLINK")
                    .arg(keys)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
        })
        .await
    }

    async fn len(&self) -> Result<u64> {
        let mut count = 0u64;
        self.scan_batches("len", |keys| {
            count += keys.len() as u64;
            async { Ok(()) }
        })
        .await?;
        Ok(count)
    }
}

/// A throwaway Redis in a Docker container, for users who have Docker.
#[cfg(feature = "testcontainers")]
pub mod container {
    use testcontainers_modules::redis::Redis;
    use testcontainers_modules::testcontainers::runners::AsyncRunner as _;
    use testcontainers_modules::testcontainers::ContainerAsync;

    use super::{RedisStore, Result, STORE};
    use session_store::Error;

    /// Starts a Redis container and connects a store to it. Keep the
    /// container alive as long as the store is used.
    pub async fn start() -> Result<(ContainerAsync<Redis>, RedisStore)> {
        let container = Redis::default()
            .start()
            .await
            .map_err(|e| Error::backend(STORE, "starting a Redis container", e))?;
        let port = container
            .get_host_port_ipv4(6379)
            .await
            .map_err(|e| Error::backend(STORE, "reading the container's port", e))?;
        let store = RedisStore::connect(&format!("redis://127.0.0.1:{port}")).await?;
        Ok((container, store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_in_prefixes_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}

//! # session-store-redis
//!
//! A [`SessionInterface`] store on Redis, through a `deadpool-redis` pool.
//!
//! Each session is one string key, `<prefix><id>` (the id as exactly 64
//! lowercase hex digits), holding the core's encoded record and expiring at
//! the session's `expires_at` (absolute `PXAT`), so Redis itself drops
//! expired sessions and [`flush`](SessionInterface::flush) has nothing to do
//! (it returns 0).
//!
//! **Clock.** Expiry is judged by Redis's clock (`TIME`) and the expiry in
//! the record's header, never by the app server's clock, so app servers
//! whose clocks disagree agree on what has expired. The key's TTL and the
//! header agree for every record this store writes; a record whose header
//! has expired while its key lives on (written by someone else) counts as
//! expired everywhere: `get` returns `None`, `update`/`delete_if` answer
//! `Gone`, `touch` `false`, `len` does not count it, and Redis drops it at
//! its TTL.
//!
//! **Expiry moves forward only.** `update` stores the later of the stored
//! and the new expiry (in the header and the `PXAT`); `touch` only ever
//! moves it later. `set` stores what it is given. Whatever expiry `update`
//! or `touch` leaves in the header, the key lives at least that long, even
//! if another writer had given it a shorter TTL. Expiries and versions are
//! compared and written exactly up to `i64::MAX` (the scripts never turn
//! them into Lua's doubles).
//!
//! **Corrupt records.** A value under a session key that is not a record
//! (no readable header, a version outside `1..=MAX_VERSION`, or a Redis
//! type other than string) is [`Error::Decode`] naming the key for `get`,
//! `update`, `touch` and `delete_if`, which leave it as it is; `clear`
//! deletes it; `len` counts a corrupt string (as `get` reports it) but not
//! a value of another type.
//!
//! Needs Redis 7.0 or later (`PEXPIREAT ... GT`).
//!
//! | operation | Redis | round trips |
//! | --- | --- | --- |
//! | `exists`, `has` | `EXISTS` | 1 |
//! | `get`, `is_valid` | `GET` and `TIME`, pipelined (WRONGTYPE taken as an answer) | 1 |
//! | `set` | `SET PXAT` | 1 |
//! | `create` | `SET NX PXAT` | 1 |
//! | `update` | Lua (`EVALSHA`): live by `TIME`, compare the header's version, `SET PXAT` the later expiry | 1 |
//! | `delete_if` | Lua (`EVALSHA`): live by `TIME`, compare the header's version, `DEL` | 1 |
//! | `touch` | Lua (`EVALSHA`): live by `TIME`, if later patch the header (`SETRANGE`) and `PEXPIREAT`, else `PEXPIREAT GT` the header's expiry | 1 |
//! | `delete` | `DEL` | 1 |
//! | `flush` | nothing: Redis expires keys itself | 0 |
//! | `clear` | `SCAN MATCH <prefix><64 hex digits>` + `UNLINK` per batch | 2 per 1000 keys |
//! | `len` | `SCAN MATCH <prefix><64 hex digits>` + Lua count of live headers per batch | 2 per 1000 keys |
//!
//! **Namespace.** `clear` and `len` only ever touch keys that are exactly
//! this store's prefix (glob-escaped) followed by 64 lowercase hex digits,
//! in the `SCAN` pattern and checked again on each returned key, so a store
//! whose prefix starts with this one's (`app:admin:` under `app:`) is left
//! alone. They walk until `SCAN`'s cursor returns to 0, so keys deleted
//! meanwhile never end the walk early; never `KEYS` or `FLUSHDB`.
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, AsyncCommands as _, Script};
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use session_store::backend::{
    next_version, redact_url, storable_version, timed_unsent_aware, Unsent,
};
use session_store::time::OffsetDateTime;
use session_store::{
    codec, unix_millis, BoxError, DeleteOutcome, Error, Result, Session, SessionId,
    SessionInterface, UpdateOutcome, MAX_VERSION,
};

pub use deadpool_redis;

const STORE: &str = "redis";

/// Keys read per `SCAN` step in `clear` and `len`.
const SCAN_BATCH: usize = 1000;

/// Hex digits of a session id in a key (see [`SessionId::push_hex`]).
const ID_HEX_LEN: usize = 64;

/// Lua helpers every script starts with. Redis 7 runs Lua 5.1: no
/// `string.unpack`, and numbers are doubles, which cannot tell apart
/// neighbouring integers above 2^53. So an i64 from a header is never made
/// one number: it is kept as two exact 32-bit halves, compared half by half,
/// and written out in decimal digit by digit, so versions and expiries up
/// to `i64::MAX` compare and store exactly (strings are not compared with
/// `<`, which Lua does by the server's collation locale).
///
/// * `be64(s, at)`: the big-endian two's-complement i64 at byte `at`
///   (1-based) as `{hi, lo}`: `hi` the signed upper half, `lo` the unsigned
///   lower one.
/// * `later(a, b)`: whether the pair `a` is greater than `b`.
/// * `dec(s, at)`: the non-negative big-endian i64 at byte `at` in decimal,
///   exactly (long division of the bytes by 10), for `PXAT`/`PEXPIREAT`.
/// * `now_ms()`: Redis's own clock (`TIME`), in Unix milliseconds, as a pair.
/// * `judge(h)`: `nil` when `h` (a value's first 25 bytes) is a readable
///   record header with a version in `1..=i64::MAX`; otherwise the script's
///   answer for it: -1 unreadable header, -2 version out of range.
/// * `header(key)`: the record's 25-byte header; `nil` when the key is
///   missing; `nil, code` when the value is no record: -1 or -2 as `judge`
///   says, -3 when it is not a string (the caller reports each as
///   undecodable rather than guessing).
macro_rules! lua {
    ($body:literal) => {
        concat!(
            r"
local function be64(s, at)
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(s, at, at + 7)
  local hi = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  if b1 >= 128 then hi = hi - 4294967296 end
  return {hi, ((b5 * 256 + b6) * 256 + b7) * 256 + b8}
end
local function later(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end
local function dec(s, at)
  local b = {string.byte(s, at, at + 7)}
  local digits = {}
  repeat
    local rest, more = 0, false
    for i = 1, 8 do
      local cur = rest * 256 + b[i]
      b[i] = math.floor(cur / 10)
      rest = cur - b[i] * 10
      if b[i] ~= 0 then more = true end
    end
    digits[#digits + 1] = rest
  until not more
  return string.reverse(table.concat(digits))
end
local function now_ms()
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local hi = math.floor(ms / 4294967296)
  return {hi, ms - hi * 4294967296}
end
local function judge(h)
  local f = string.byte(h, 1)
  if string.len(h) < 25 or (f ~= 1 and f ~= 2) then return -1 end
  if string.byte(h, 2) >= 128 or string.sub(h, 2, 9) == string.rep('\0', 8) then return -2 end
  return nil
end
local function header(key)
  local h = redis.pcall('GETRANGE', key, 0, 24)
  if type(h) ~= 'string' then
    if type(h) == 'table' and type(h.err) == 'string' and string.sub(h.err, 1, 9) == 'WRONGTYPE' then
      return nil, -3
    end
    error(h)
  end
  if h == '' and redis.call('EXISTS', key) == 0 then return nil end
  local bad = judge(h)
  if bad then return nil, bad end
  return h
end
",
            $body
        )
    };
}

/// Compare-and-set. KEYS[1] the record; ARGV[1] the expected version (8
/// bytes, as in the header); ARGV[2] the new record. Expired (by the header
/// and Redis's clock) is gone whatever its version. The stored expiry is
/// the later of the old and the new one, in the header (bytes 18..25) and
/// the key's `PXAT` alike, so the key lives as long as the header says even
/// if another writer had given it a shorter TTL.
/// 0 = gone, 1 = conflict, 2 = updated, negative = not a record (see `header`).
const UPDATE_LUA: &str = lua!(
    r"
local h, bad = header(KEYS[1])
if bad then return bad end
if h == nil then return 0 end
local stored = be64(h, 18)
if not later(stored, now_ms()) then return 0 end
if string.sub(h, 2, 9) ~= ARGV[1] then return 1 end
-- Both expiries are past now here, so positive: dec() applies.
if later(stored, be64(ARGV[2], 18)) then
  redis.call('SET', KEYS[1], ARGV[2], 'PXAT', dec(h, 18))
  redis.call('SETRANGE', KEYS[1], 17, string.sub(h, 18, 25))
else
  redis.call('SET', KEYS[1], ARGV[2], 'PXAT', dec(ARGV[2], 18))
end
return 2
"
);

/// Compare-and-delete. KEYS[1] the record; ARGV[1] the expected version.
/// 0 = gone (missing or expired), 1 = conflict, 2 = deleted, negative =
/// not a record (see `header`).
const DELETE_IF_LUA: &str = lua!(
    r"
local h, bad = header(KEYS[1])
if bad then return bad end
if h == nil then return 0 end
if not later(be64(h, 18), now_ms()) then return 0 end
if string.sub(h, 2, 9) ~= ARGV[1] then return 1 end
redis.call('DEL', KEYS[1])
return 2
"
);

/// Moves a live record's expiry forward only. KEYS[1] the record; ARGV[1]
/// the new expiry as 8 header bytes. A later expiry is patched into the
/// value in place (`SETRANGE` keeps the TTL) and the TTL follows it. An
/// expiry no later than the header's leaves the header alone, but the key
/// is still made to live at least as long as the header says (`GT` only
/// ever lengthens a TTL, and writes nothing when it already does): a
/// foreign writer may have given it a shorter TTL, and `true` promises the
/// record lives to its expiry.
/// 0 = missing or expired, 1 = live, negative = not a record (see `header`).
const TOUCH_LUA: &str = lua!(
    r"
local h, bad = header(KEYS[1])
if bad then return bad end
if h == nil then return 0 end
local stored = be64(h, 18)
if not later(stored, now_ms()) then return 0 end
-- Both expiries are past now here, so positive: dec() applies.
if later(be64(ARGV[1], 1), stored) then
  redis.call('SETRANGE', KEYS[1], 17, ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], dec(ARGV[1], 1))
else
  redis.call('PEXPIREAT', KEYS[1], dec(h, 18), 'GT')
end
return 1
"
);

/// How many of KEYS are not expired by their header (Redis's clock). A key
/// that vanished since the `SCAN` reads as empty and is not counted, nor is
/// a value of another type (no session store writes one). A string that is
/// no readable record is counted, as `get` reports it as an error rather
/// than as absent.
const COUNT_LIVE_LUA: &str = lua!(
    r"
local now = now_ms()
local n = 0
for i = 1, #KEYS do
  local h = redis.pcall('GETRANGE', KEYS[i], 0, 24)
  if type(h) == 'string' and h ~= '' then
    if judge(h) or later(be64(h, 18), now) then n = n + 1 end
  end
end
return n
"
);

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
    scripts: Arc<Scripts>,
}

/// The store's Lua scripts, each sent by `EVALSHA` (its body only when the
/// server does not know it yet).
struct Scripts {
    update: Script,
    delete_if: Script,
    touch: Script,
    count_live: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            update: Script::new(UPDATE_LUA),
            delete_if: Script::new(DELETE_IF_LUA),
            touch: Script::new(TOUCH_LUA),
            count_live: Script::new(COUNT_LIVE_LUA),
        }
    }
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
            scripts: Arc::new(Scripts::new()),
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
            scripts: Arc::new(Scripts::new()),
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
            STORE,
            self.operation_timeout,
            || format!("{what} at {}", self.address),
            |e: &BoxError| e.is::<Unsent>(),
            work,
        )
        .await;
        if result.is_err() {
            self.lanes.retire(lane).await;
        }
        result
    }

    /// Walks every key of this namespace with `SCAN` until the cursor comes
    /// back to 0 (keys deleted meanwhile do not end the walk early), handing
    /// each non-empty batch to `each`. The `MATCH` pattern already asks for
    /// exactly [`is_own_key`] keys; the check is repeated
    /// here so nothing else is ever counted or deleted.
    async fn scan_batches<F, Fut>(&self, what: &str, mut each: F) -> Result<()>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut pattern = escape_glob(&self.prefix);
        for _ in 0..ID_HEX_LEN {
            pattern.push_str("[0-9a-f]");
        }
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
            let keys: Vec<String> = keys
                .into_iter()
                .filter(|k| is_own_key(&self.prefix, k))
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

/// Whether `key` is a session key of the store with `prefix`: the prefix,
/// then exactly the 64 lowercase hex digits [`RedisStore::key`] writes. A
/// store whose prefix merely starts with this one's (`app:admin:` under
/// `app:`, or even `app:ab`) has longer keys and is left alone.
fn is_own_key(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|id| {
        id.len() == ID_HEX_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
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

/// The `PXAT` for a record expiring at `expires_at_ms`: Redis refuses a
/// non-positive one, and 1 (long past) makes it drop the key just the same.
fn pxat(expires_at_ms: i64) -> i64 {
    expires_at_ms.max(1)
}

/// What a script's negative answer says of the value under `key` (see the
/// `header` Lua helper); any other answer is not one the scripts give.
fn not_a_record(key: String, code: i64) -> Error {
    let reason = match code {
        -1 => "stored value has no readable record header",
        -2 => VERSION_OUT_OF_RANGE,
        -3 => WRONG_TYPE,
        _ => "unexpected answer from the store's script",
    };
    Error::decode(key, reason)
}

const VERSION_OUT_OF_RANGE: &str = "stored version is outside 1..=MAX_VERSION";
const WRONG_TYPE: &str = "stored value is not a string (another Redis type)";

#[async_trait]
impl SessionInterface for RedisStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        let key = self.key(id);
        self.run("exists", |mut conn| async move { conn.exists(key).await })
            .await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let key = self.key(id);
        // `GET` and `TIME` pipelined: one round trip, and the record is
        // judged by Redis's clock like every other operation, not the app's.
        // A value of another type answers `GET` with WRONGTYPE: a corrupt
        // record, not a failed connection, so it is taken as an answer here
        // (and the lane's connection kept) rather than failing the call.
        let fetched: std::result::Result<(Option<Vec<u8>>, i64), ()> = self
            .run("get", |mut conn| {
                let key = key.clone();
                async move {
                    let (value, (secs, micros)): (redis::RedisResult<Option<Vec<u8>>>, (i64, i64)) =
                        redis::pipe()
                            .ignore_errors()
                            .cmd("GET")
                            .arg(key)
                            .cmd("TIME")
                            .query_async(&mut conn)
                            .await?;
                    let now_ms = secs.saturating_mul(1000).saturating_add(micros / 1000);
                    match value {
                        Ok(bytes) => Ok(Ok((bytes, now_ms))),
                        Err(e) if e.code() == Some("WRONGTYPE") => Ok(Err(())),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        let Ok((bytes, now_ms)) = fetched else {
            return Err(Error::decode(key, WRONG_TYPE));
        };
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let header = codec::header(&bytes, &key)?;
        if !(1..=MAX_VERSION).contains(&header.version) {
            return Err(Error::decode(
                key,
                format!(
                    "stored version {} is outside 1..=MAX_VERSION",
                    header.version
                ),
            ));
        }
        if header.expires_at_ms <= now_ms {
            return Ok(None);
        }
        codec::decode(*id, &bytes, &key).map(Some)
    }

    async fn set(&self, session: &Session) -> Result<()> {
        let id = session.id();
        storable_version(id, session.version())?;
        let key = self.key(&id);
        let bytes = codec::encode(session, session.version())?;
        // An expiry already past by Redis's clock stores nothing: Redis
        // drops a key whose PXAT has passed.
        let expires_at = pxat(session.expires_at_millis());
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
        let id = session.id();
        storable_version(id, session.version())?;
        let key = self.key(&id);
        let bytes = codec::encode(session, session.version())?;
        let expires_at = pxat(session.expires_at_millis());
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
            None => Err(Error::IdCollision { id }),
        }
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        let id = session.id();
        let version = next_version(id, expected_version)?;
        let key = self.key(&id);
        let bytes = codec::encode(session, version)?;
        let script = &self.scripts.update;
        let outcome: i64 = self
            .run("update", |mut conn| {
                let key = key.clone();
                async move {
                    script
                        .key(key)
                        .arg(&expected_version.to_be_bytes()[..])
                        .arg(bytes)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        match outcome {
            2 => Ok(UpdateOutcome::Updated { version }),
            1 => Ok(UpdateOutcome::Conflict),
            0 => Ok(UpdateOutcome::Gone),
            code => Err(not_a_record(key, code)),
        }
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        let key = self.key(id);
        let script = &self.scripts.delete_if;
        let outcome: i64 = self
            .run("delete_if", |mut conn| {
                let key = key.clone();
                async move {
                    script
                        .key(key)
                        .arg(&expected_version.to_be_bytes()[..])
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        match outcome {
            2 => Ok(DeleteOutcome::Deleted),
            1 => Ok(DeleteOutcome::Conflict),
            0 => Ok(DeleteOutcome::Gone),
            code => Err(not_a_record(key, code)),
        }
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let key = self.key(id);
        let expires_at_ms = unix_millis(expires_at);
        let script = &self.scripts.touch;
        let outcome: i64 = self
            .run("touch", |mut conn| {
                let key = key.clone();
                async move {
                    script
                        .key(key)
                        .arg(&expires_at_ms.to_be_bytes()[..])
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        match outcome {
            1 => Ok(true),
            0 => Ok(false),
            code => Err(not_a_record(key, code)),
        }
    }

    /// Returns 0 without a round trip: every record this store writes has
    /// its key expire (`PXAT`) exactly when its header says, so Redis drops
    /// it itself. A record whose header has expired while its key still has
    /// a TTL can only come from another writer; every operation treats it
    /// as expired already (never returned, counted, updated, touched or
    /// deleted by `delete_if`), and Redis drops it at its TTL. Scanning the
    /// namespace on every `flush` to find such records early is not worth
    /// its cost.
    async fn flush(&self) -> Result<u64> {
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
        let count = AtomicU64::new(0);
        let script = &self.scripts.count_live;
        self.scan_batches("len", |keys| {
            let count = &count;
            async move {
                let live: u64 = self
                    .run("len", move |mut conn| async move {
                        let mut invocation = script.prepare_invoke();
                        for key in keys {
                            invocation.key(key);
                        }
                        invocation.invoke_async(&mut conn).await
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

    #[test]
    fn own_keys_are_the_prefix_and_exactly_one_id() {
        let id = "0123456789abcdef".repeat(4);
        assert!(is_own_key("app:", &format!("app:{id}")));
        for foreign in [
            format!("app:admin:{id}"),
            format!("app:ab{id}"),
            format!("app:{}", &id[1..]),
            format!("app:{}", id.to_uppercase()),
            format!("ap:{id}"),
            format!("x:app:{id}"),
            "app:".to_owned(),
        ] {
            assert!(!is_own_key("app:", &foreign), "{foreign}");
        }
    }
}

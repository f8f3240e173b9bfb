//! The per-session operations, written once for both stores. Each touches
//! exactly one key (`<prefix><64 hex digits>`), so it runs as it is on a
//! single Redis and on a cluster, where the client routes it to the master
//! of the key's slot. What differs between the two stores is how a
//! connection is had and how a failure is typed: the [`Transport`].

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt as _};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands as _, Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};
use session_store::backend::{next_version, storable_version};
use session_store::time::OffsetDateTime;
use session_store::{
    codec, now_millis, unix_millis, DeleteOutcome, Error, Result, Session, SessionId,
    UpdateOutcome, MAX_VERSION,
};

use crate::cluster::Cluster;
use crate::scripts::{Lua, Scripts};
use crate::single::Server;
use crate::{not_a_record, pxat, user_set_key, WRONG_TYPE};

/// How a store reaches Redis.
#[derive(Clone)]
pub(crate) enum Transport {
    /// One server, through a pool.
    Server(Server),
    /// A cluster, through the cluster client.
    Cluster(Cluster),
}

/// A connection of either transport (each shared by many requests at once).
#[derive(Clone)]
pub(crate) enum Conn {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Transport {
    /// The store's name in errors.
    fn store(&self) -> &'static str {
        match self {
            Transport::Server(_) => Server::STORE,
            Transport::Cluster(_) => Cluster::STORE,
        }
    }

    /// Runs `op` on a connection within the operation timeout and types its
    /// failure: [`Error::Unavailable`] when the request certainly did not
    /// run, [`Error::Backend`] (it may have) otherwise, both naming `what`
    /// and the address. `op` is called again only after an answer that says
    /// the request did not run (see each transport's `run`).
    async fn run<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match self {
            Transport::Server(server) => server.run(what, |conn| op(Conn::Server(conn))).await,
            Transport::Cluster(cluster) => cluster.run(what, |conn| op(Conn::Cluster(conn))).await,
        }
    }

    /// `what` and the store's address, as errors name them.
    fn context(&self, what: &str) -> String {
        match self {
            Transport::Server(server) => server.context(what),
            Transport::Cluster(cluster) => cluster.context(what),
        }
    }
}

/// The keys a `SCAN` walk has handed out so far. `SCAN` may hand out a key
/// more than once: when the server resizes its table during the walk (as
/// it shrinks it once many keys have expired at once), it returns what it
/// walks of both tables; in a cluster, a key moving to another master
/// during the walk can be handed out by both. A walk that counts keeps only
/// a key's first sighting. Keys are remembered by two 64-bit SipHash values
/// under different keys (std's `RandomState`, made twice), 16 bytes a key
/// whatever its length, 20–40 bytes with the set's own overhead (a million
/// sessions: 20–40 MB while `len` runs); for keys that are random ids, two
/// of a million taken for one is as likely as a 128-bit collision.
pub(crate) struct SeenKeys {
    seen: HashSet<(u64, u64)>,
    first: RandomState,
    second: RandomState,
}

impl SeenKeys {
    pub(crate) fn new() -> Self {
        SeenKeys {
            seen: HashSet::new(),
            first: RandomState::new(),
            second: RandomState::new(),
        }
    }

    /// `keys` without those seen before (or earlier in `keys`).
    pub(crate) fn first_sightings(&mut self, keys: Vec<String>) -> Vec<String> {
        let SeenKeys {
            seen,
            first,
            second,
        } = self;
        keys.into_iter()
            .filter(|key| seen.insert((first.hash_one(key), second.hash_one(key))))
            .collect()
    }
}

/// How many replicas must have a write before it is acknowledged, and for
/// how long to wait for them (`WAIT replicas timeout`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplicaWait {
    pub(crate) replicas: usize,
    pub(crate) timeout: Duration,
}

/// How close to its expiry, by the app's clock, a record `get` found must
/// be to be judged again by Redis's clock (`TIME`); see `fetch_live`.
const JUDGED_BY_REDIS_WITHIN_MS: i64 = 60_000;

/// What `fetch` read: the record's expiry, and Redis's clock when it was
/// asked for (`i64::MIN` when not).
struct Fetched {
    expires_at_ms: i64,
    now_ms: i64,
}

/// How many deleted records [`Keyspace::forget`] looks at again at once.
const RELIST_FAN_OUT: usize = 32;

/// What went wrong underneath `e`, for an error that says more.
fn source_of(e: Error) -> session_store::BoxError {
    match e {
        Error::Backend { source, .. } | Error::Unavailable { source, .. } => source,
        other => other.into(),
    }
}

/// One namespace (key prefix) of a Redis, single or clustered.
#[derive(Clone)]
pub(crate) struct Keyspace {
    pub(crate) transport: Transport,
    pub(crate) prefix: String,
    pub(crate) scripts: Arc<Scripts>,
    pub(crate) replica_wait: Option<ReplicaWait>,
}

/// Sends `write`, followed, when the store waits for replicas, by `WAIT`
/// on the same connection: `WAIT` covers every write its connection sent
/// before it, so this one too. Returns the write's reply and how many
/// replicas acknowledged it (`None` when not waiting).
async fn send<C, R>(
    conn: &mut C,
    write: Cmd,
    replica_wait: Option<ReplicaWait>,
) -> RedisResult<(R, Option<i64>)>
where
    C: ConnectionLike + Send,
    R: FromRedisValue,
{
    let Some(wait) = replica_wait else {
        return Ok((write.query_async(conn).await?, None));
    };
    // WAIT 0 would block for ever: at least 1 ms.
    let timeout_ms = wait.timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u64;
    let (reply, acked): (R, i64) = redis::pipe()
        .add_command(write)
        .cmd("WAIT")
        .arg(wait.replicas)
        .arg(timeout_ms)
        .query_async(conn)
        .await?;
    Ok((reply, Some(acked)))
}

/// [`send`]s a script call: by hash, and by body if the server does not
/// know the script (nothing ran then).
async fn send_script<C, R>(
    conn: &mut C,
    lua: &Lua,
    key: &str,
    args: &[&[u8]],
    replica_wait: Option<ReplicaWait>,
) -> RedisResult<(R, Option<i64>)>
where
    C: ConnectionLike + Send,
    R: FromRedisValue,
{
    match send(conn, lua.by_hash(&[key], args), replica_wait).await {
        Err(e) if e.code() == Some("NOSCRIPT") => {
            send(conn, lua.by_body(&[key], args), replica_wait).await
        }
        other => other,
    }
}

impl Keyspace {
    pub(crate) fn key(&self, id: &SessionId) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 64);
        key.push_str(&self.prefix);
        id.push_hex(&mut key);
        key
    }

    /// A write that landed on the master but on fewer replicas than asked
    /// within the wait is reported as a backend error: it may have been
    /// applied (it was, on the master), so the manager re-reads it rather
    /// than taking it for not done, and the caller learns it is not yet as
    /// durable as asked. `wrote` is whether the operation changed anything.
    fn check_replicas(&self, what: &'static str, wrote: bool, acked: Option<i64>) -> Result<()> {
        let (Some(wait), Some(acked)) = (self.replica_wait, acked) else {
            return Ok(());
        };
        if !wrote || acked >= wait.replicas as i64 {
            return Ok(());
        }
        tracing::warn!(
            operation = what,
            acked,
            wanted = wait.replicas,
            "a write was acknowledged by fewer replicas than asked"
        );
        Err(Error::backend(
            self.transport.store(),
            self.transport.context(what),
            format!(
                "applied on the master, but {acked} of the {} replicas asked acknowledged it \
                 within {:?}; a failover now could lose it",
                wait.replicas, wait.timeout
            ),
        ))
    }

    pub(crate) async fn exists(&self, id: &SessionId) -> Result<bool> {
        let key = &self.key(id);
        self.transport
            .run(
                "exists",
                move |mut conn| async move { conn.exists(key).await },
            )
            .await
    }

    pub(crate) async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let key = &self.key(id);
        match self.fetch_live(key).await? {
            Some(bytes) => codec::decode_owned(*id, bytes, key).map(Some),
            None => Ok(None),
        }
    }

    /// The record under `key` if it is live by Redis's clock (by the
    /// clock of the master that holds it, on a cluster); its header
    /// checked, its body not decoded.
    pub(crate) async fn fetch_live(&self, key: &str) -> Result<Option<Vec<u8>>> {
        // Redis answers `GET` only for a key whose TTL has not passed by
        // its own clock, and every record this store writes expires
        // (`PXAT`) when its header says: so a record `GET` answers is live
        // by Redis's clock, whatever the app's says, and one plain command
        // is the whole read. Only a record due by the app's clock within
        // `JUDGED_BY_REDIS_WITHIN_MS` is judged again by `TIME`, in case
        // its key outlives its header (a foreign writer) or the two clocks
        // disagree about the very millisecond of the expiry.
        let Some((bytes, header)) = self.fetch(key, false).await? else {
            return Ok(None);
        };
        if header.expires_at_ms > now_millis().saturating_add(JUDGED_BY_REDIS_WITHIN_MS) {
            return Ok(Some(bytes));
        }
        let Some((bytes, header)) = self.fetch(key, true).await? else {
            return Ok(None);
        };
        Ok((header.expires_at_ms > header.now_ms).then_some(bytes))
    }

    /// The value under `key` and its checked header: `GET` alone, or with
    /// `clock` pipelined with `TIME` (one round trip; on a cluster the
    /// pipeline goes to the key's master, whose clock the scripts read
    /// too). A value of another type answers `GET` with WRONGTYPE: a
    /// corrupt record, not a failed connection, so it is taken as an answer
    /// rather than failing the call.
    async fn fetch(&self, key: &str, clock: bool) -> Result<Option<(Vec<u8>, Fetched)>> {
        let fetched: std::result::Result<(Option<Vec<u8>>, i64), ()> = self
            .transport
            .run("get", move |mut conn| async move {
                let (value, now_ms) = if clock {
                    let (value, (secs, micros)): (RedisResult<Option<Vec<u8>>>, (i64, i64)) =
                        redis::pipe()
                            .ignore_errors()
                            .cmd("GET")
                            .arg(key)
                            .cmd("TIME")
                            .query_async(&mut conn)
                            .await?;
                    (
                        value,
                        secs.saturating_mul(1000).saturating_add(micros / 1000),
                    )
                } else {
                    let value = redis::cmd("GET").arg(key).query_async(&mut conn).await;
                    (value, i64::MIN)
                };
                match value {
                    Ok(bytes) => Ok(Ok((bytes, now_ms))),
                    Err(e) if e.code() == Some("WRONGTYPE") => Ok(Err(())),
                    Err(e) => Err(e),
                }
            })
            .await?;
        let Ok((bytes, now_ms)) = fetched else {
            return Err(Error::decode(key, WRONG_TYPE));
        };
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let header = codec::header(&bytes, key)?;
        if !(1..=MAX_VERSION).contains(&header.version) {
            return Err(Error::decode(
                key,
                format!(
                    "stored version {} is outside 1..=MAX_VERSION",
                    header.version
                ),
            ));
        }
        let expires_at_ms = header.expires_at_ms;
        Ok(Some((
            bytes,
            Fetched {
                expires_at_ms,
                now_ms,
            },
        )))
    }

    /// The prefix, when the index is kept inside the scripts (one server),
    /// `None` on a cluster, where a user's set lives in another slot than
    /// the session's key.
    fn indexed_here(&self) -> Option<&str> {
        match self.transport {
            Transport::Server(_) => Some(&self.prefix),
            Transport::Cluster(_) => None,
        }
    }

    /// The id a user set lists (64 hex digits) as a [`SessionId`].
    pub(crate) fn listed_id(&self, member: &[u8]) -> Result<SessionId> {
        std::str::from_utf8(member)
            .ok()
            .and_then(|hex| SessionId::from_hex(hex).ok())
            .ok_or_else(|| {
                Error::decode(
                    format!("{}user:...", self.prefix),
                    "a user index lists something that is no session id",
                )
            })
    }

    /// A record a user set lists, as a session.
    pub(crate) fn decode_listed(&self, member: &[u8], bytes: &[u8]) -> Result<Session> {
        let id = self.listed_id(member)?;
        codec::decode(id, bytes, format_args!("{}{id}", self.prefix))
    }

    /// The key of `user_key`'s set in this namespace.
    pub(crate) fn user_set(&self, user_key: &str) -> String {
        user_set_key(&self.prefix, user_key)
    }

    /// Cluster: lists `id` in `user_key`'s set with (at least) the expiry
    /// `expires_at_ms`, BEFORE the record bound to that user is written,
    /// so the index is a superset of the records at every moment (the set
    /// is in another slot, so no script can do both). The score only ever
    /// grows (`GT`): it is the latest expiry any write announced, which
    /// is what lets a cleaner tell an entry whose write may still land
    /// (score to come) from a stale one (see `DROP_DUE_LUA`). Waits for
    /// replicas as every write does. Any failure means the record was not
    /// written: [`Error::Unavailable`].
    async fn index_first(
        &self,
        what: &'static str,
        user_key: &str,
        id: &SessionId,
        expires_at_ms: i64,
    ) -> Result<()> {
        self.list(what, user_key, id, expires_at_ms)
            .await
            .map_err(|e| Error::Unavailable {
                store: self.transport.store(),
                context: self.transport.context(&format!(
                    "{what}: listing the session under its user before writing it \
                     (the session was not written)"
                )),
                source: source_of(e),
            })
    }

    /// Cluster: lists `id` again once the record bound to `user_key` was
    /// written by `set`, `create` or a rebinding `update`. A delete of the
    /// same id racing it can land between [`index_first`](Self::index_first)
    /// and the write, and take out the entry the write had just made (its
    /// record was deleted, then written again): without this, the record
    /// would live unlisted, and `revoke_user` would miss it. The other
    /// half of the race is the deleters' (see
    /// [`index_forget`](Self::index_forget)). A failure is
    /// [`Error::Backend`] saying the write was applied: a retried `set`
    /// lists the record again; a retried `create` answers `IdCollision`
    /// and a retried `update` `Conflict` (the record is there, listed
    /// unless a delete raced it).
    ///
    /// Tried twice: `ZADD GT` is idempotent, and the manager settles a
    /// failed save by reading the record back, finds it written, and does
    /// not list it again; so a failure here, after a racing delete took
    /// the first entry out, leaves the session unlisted, out of
    /// `revoke_user`'s reach for as long as it lives.
    async fn index_after(
        &self,
        what: &'static str,
        user_key: &str,
        id: &SessionId,
        expires_at_ms: i64,
    ) -> Result<()> {
        let (set, hex) = (&self.user_set(user_key), &id.to_hex());
        // Only the `ZADD` is tried again: when it ran and the replicas fell
        // short, the entry is there, and another wait would change nothing.
        let added = match self.add_entry(what, set, hex, expires_at_ms).await {
            Err(e) => {
                tracing::debug!(operation = what, error = %e, "listing a written session again failed; trying once more");
                self.add_entry(what, set, hex, expires_at_ms).await
            }
            added => added,
        };
        added
            .and_then(|acked| self.check_replicas(what, true, acked))
            .map_err(|e| {
                Error::backend(
                    self.transport.store(),
                    self.transport.context(&format!(
                        "{what}: listing the session under its user again after writing it \
                         (the session was written)"
                    )),
                    source_of(e),
                )
            })
    }

    /// `ZADD GT` of `id` in `user_key`'s set, waiting for replicas.
    async fn list(
        &self,
        what: &'static str,
        user_key: &str,
        id: &SessionId,
        expires_at_ms: i64,
    ) -> Result<()> {
        self.list_in(what, &self.user_set(user_key), &id.to_hex(), expires_at_ms)
            .await
    }

    /// `ZADD GT` of the member `hex` in `set`, waiting for replicas.
    async fn list_in(
        &self,
        what: &'static str,
        set: &str,
        hex: &str,
        expires_at_ms: i64,
    ) -> Result<()> {
        let acked = self.add_entry(what, set, hex, expires_at_ms).await?;
        self.check_replicas(what, true, acked)
    }

    /// `ZADD GT` of the member `hex` in `set`, with the replicas' count
    /// when the store waits for them.
    async fn add_entry(
        &self,
        what: &'static str,
        set: &str,
        hex: &str,
        expires_at_ms: i64,
    ) -> Result<Option<i64>> {
        let mut add = redis::cmd("ZADD");
        add.arg(set).arg("GT").arg(expires_at_ms).arg(hex);
        let (add, wait) = (&add, self.replica_wait);
        self.transport
            .run(what, move |mut conn| async move {
                send::<_, i64>(&mut conn, add.clone(), wait).await
            })
            .await
            .map(|(_, acked)| acked)
    }

    /// Cluster: takes `id` out of `user_key`'s set after its record was
    /// deleted (by `delete`, or by a script in another slot), as
    /// [`forget`](Self::forget) does. A failure leaves a stale entry, which
    /// every read checks against the record and `flush` drops once its
    /// score has passed, or (rarely: a racing write and a failure) a record
    /// unlisted; the delete itself happened, so it is only logged.
    async fn index_forget(&self, what: &'static str, user_key: &[u8], id: &SessionId) {
        let Ok(user_key) = std::str::from_utf8(user_key) else {
            return;
        };
        let forgotten = self
            .forget(what, &self.user_set(user_key), &[id.to_hex()])
            .await;
        if let Err(e) = forgotten {
            tracing::warn!(operation = what, error = %e, "a deleted session's entry in its user's index may be wrong");
        }
    }

    /// Cluster: the ids `set` lists; with `due`, only those whose score
    /// has passed by its master's clock.
    pub(crate) async fn listed(
        &self,
        what: &'static str,
        set: &str,
        due: bool,
    ) -> Result<Vec<String>> {
        let lua = &self.scripts.due;
        self.transport
            .run(what, move |mut conn| async move {
                if due {
                    lua.run(&mut conn, &[set], &[]).await
                } else {
                    redis::cmd("ZRANGE")
                        .arg(set)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await
    }

    /// Cluster: deletes the record of `id` if it is bound to exactly
    /// `user_key` (checked in the record, on its master), waiting for
    /// replicas as every delete does. Whether it did.
    pub(crate) async fn revoke_one(&self, id: &SessionId, user_key: &str) -> Result<bool> {
        let key = &self.key(id);
        let (lua, wait) = (&self.scripts.revoke_one, self.replica_wait);
        let user_key = user_key.as_bytes();
        let (deleted, acked): (i64, _) = self
            .transport
            .run("revoke_user", move |mut conn| async move {
                send_script(&mut conn, lua, key, &[user_key], wait).await
            })
            .await?;
        self.check_replicas("revoke_user", deleted == 1, acked)?;
        Ok(deleted == 1)
    }

    /// Cluster: takes `ids` out of `set` (their records were deleted),
    /// then lists again each whose record is there once more, bound to the
    /// set's user. The set is in another slot than the records, so a write
    /// binding the same id (`set`, `create`, a rebinding `update`) racing
    /// the delete can write its record after the delete and list it before
    /// this removal: looking at the record after the removal catches that
    /// order, and the writer's second listing after its write
    /// ([`index_after`](Self::index_after)) the other one (the write
    /// landing after this look). Every deleter that takes entries out
    /// (`delete`, `delete_if`, `revoke_user`, `clear`) comes through here.
    /// A `GET` per id, paid only by deletes of bound records. Only the
    /// removal's failure is returned.
    pub(crate) async fn forget(&self, what: &'static str, set: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut rem = redis::cmd("ZREM");
        rem.arg(set).arg(ids);
        let rem = &rem;
        self.transport
            .run(what, move |mut conn| async move {
                rem.query_async::<i64>(&mut conn).await
            })
            .await?;
        let relisted: Vec<Result<()>> = stream::iter(ids.iter().cloned())
            .map(|hex| async move {
                let Ok(id) = self.listed_id(hex.as_bytes()) else {
                    return Ok(());
                };
                let key = self.key(&id);
                let Some((bytes, header)) = self.fetch(&key, false).await? else {
                    return Ok(());
                };
                match codec::user_key(&bytes, &key) {
                    Ok(Some(bound_to)) if self.user_set(bound_to) == set => {
                        self.list_in(what, set, &hex, header.expires_at_ms).await
                    }
                    _ => Ok(()),
                }
            })
            .buffer_unordered(RELIST_FAN_OUT)
            .collect()
            .await;
        // The deletes happened, and the caller's answer (say, the ids
        // `revoke_user` revoked) is true: a failed look or listing only
        // matters if a write raced this one, so it is logged, not returned.
        for failed in relisted.into_iter().filter_map(Result::err) {
            tracing::warn!(operation = what, error = %failed, "a session written again while it was deleted may be missing from its user's index");
        }
        Ok(())
    }

    /// Cluster: drops from `set` those of `ids` whose score has passed by
    /// its master's clock (see `DROP_DUE_LUA`). The caller found each
    /// one's record not bound to the set's user.
    pub(crate) async fn drop_due(
        &self,
        what: &'static str,
        set: &str,
        ids: &[String],
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let lua = &self.scripts.drop_due;
        let ids: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes()).collect();
        let ids = &ids;
        self.transport
            .run(what, move |mut conn| async move {
                lua.run::<_, i64>(&mut conn, &[set], ids).await
            })
            .await
            .map(drop)
    }

    /// Cluster: raises the scores of `entries` (id, the record's expiry)
    /// in `set` to their records' expiries, for entries still there, so
    /// that the next `flush` passes them over until then.
    pub(crate) async fn raise(
        &self,
        what: &'static str,
        set: &str,
        entries: &[(String, i64)],
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut add = redis::cmd("ZADD");
        add.arg(set).arg("XX").arg("GT");
        for (id, at) in entries {
            add.arg(*at).arg(id);
        }
        let add = &add;
        self.transport
            .run(what, move |mut conn| async move {
                add.query_async::<i64>(&mut conn).await
            })
            .await
            .map(drop)
    }

    pub(crate) async fn set(&self, session: &Session) -> Result<()> {
        let id = session.id();
        storable_version(id, session.version())?;
        let key = &self.key(&id);
        let bytes = &codec::encode(session, session.version())?;
        // An expiry already past by Redis's clock stores nothing: Redis
        // drops a key whose PXAT has passed.
        let at = pxat(session.expires_at_millis());
        let wait = self.replica_wait;
        let acked = match self.indexed_here() {
            Some(prefix) => {
                let (lua, at) = (&self.scripts.set, at.to_string());
                let (at, prefix) = (at.as_bytes(), prefix.as_bytes());
                let ((), acked): ((), _) = self
                    .transport
                    .run("set", move |mut conn| async move {
                        send_script(&mut conn, lua, key, &[bytes, at, prefix], wait).await
                    })
                    .await?;
                acked
            }
            None => {
                if let Some(user) = session.user_key() {
                    self.index_first("set", user, &id, session.expires_at_millis())
                        .await?;
                }
                let mut write = redis::cmd("SET");
                write.arg(key).arg(bytes).arg("PXAT").arg(at);
                let write = &write;
                let ((), acked) = self
                    .transport
                    .run("set", move |mut conn| async move {
                        send(&mut conn, write.clone(), wait).await
                    })
                    .await?;
                if let Some(user) = session.user_key() {
                    self.index_after("set", user, &id, session.expires_at_millis())
                        .await?;
                }
                acked
            }
        };
        self.check_replicas("set", true, acked)
    }

    pub(crate) async fn delete(&self, id: &SessionId) -> Result<()> {
        let key = &self.key(id);
        let wait = self.replica_wait;
        // `GETDEL`: one plain command, no script, and the old record comes
        // back so that a bound one's index entry can be taken out after
        // (until then the entry is stale, which every read checks against
        // the record and `flush` drops). A value of another type is no
        // record and is deleted all the same.
        let (old, acked): (Option<Vec<u8>>, _) = self
            .transport
            .run("delete", move |mut conn| async move {
                let mut getdel = redis::cmd("GETDEL");
                getdel.arg(key);
                match send(&mut conn, getdel, wait).await {
                    Err(e) if e.code() == Some("WRONGTYPE") => {
                        let mut del = redis::cmd("DEL");
                        del.arg(key);
                        let (_, acked): (i64, _) = send(&mut conn, del, wait).await?;
                        Ok((None, acked))
                    }
                    other => other,
                }
            })
            .await?;
        self.check_replicas("delete", true, acked)?;
        // A record whose user key cannot be read is gone all the same.
        let Some(Ok(Some(user_key))) = old.as_deref().map(|old| codec::user_key(old, key)) else {
            return Ok(());
        };
        if self.indexed_here().is_none() {
            self.index_forget("delete", user_key.as_bytes(), id).await;
            return Ok(());
        }
        // One server: the set is checked against the key in one script, so
        // a `set` of the same session landing between the two steps keeps
        // the entry it wrote. A failure leaves a stale entry, as on a
        // cluster: every read checks it against the record, `sessions_of`
        // and `revoke_user` drop it, and `flush` once its score has passed.
        let set = &self.user_set(user_key);
        let (lua, hex) = (&self.scripts.unindex, id.to_hex());
        let args: &[&[u8]] = &[user_key.as_bytes(), hex.as_bytes()];
        let unindexed = self
            .transport
            .run("delete", move |mut conn| async move {
                lua.run::<_, i64>(&mut conn, &[key.as_str(), set.as_str()], args)
                    .await
            })
            .await;
        if let Err(e) = unindexed {
            tracing::warn!(operation = "delete", error = %e, "a deleted session is still listed in its user's index");
        }
        Ok(())
    }

    pub(crate) async fn create(&self, session: &Session) -> Result<()> {
        let id = session.id();
        storable_version(id, session.version())?;
        let key = &self.key(&id);
        let bytes = &codec::encode(session, session.version())?;
        let at = pxat(session.expires_at_millis());
        let wait = self.replica_wait;
        let (created, acked) = match (self.indexed_here(), session.user_key()) {
            // A bound record is created with its index entry in one step.
            (Some(prefix), Some(_)) => {
                let (lua, at) = (&self.scripts.create_bound, at.to_string());
                let (at, prefix) = (at.as_bytes(), prefix.as_bytes());
                let (created, acked): (i64, _) = self
                    .transport
                    .run("create", move |mut conn| async move {
                        send_script(&mut conn, lua, key, &[bytes, at, prefix], wait).await
                    })
                    .await?;
                (created == 1, acked)
            }
            (indexed_here, user) => {
                if let (None, Some(user)) = (indexed_here, user) {
                    self.index_first("create", user, &id, session.expires_at_millis())
                        .await?;
                }
                let mut write = redis::cmd("SET");
                write.arg(key).arg(bytes).arg("NX").arg("PXAT").arg(at);
                let write = &write;
                let (stored, acked): (Option<String>, _) = self
                    .transport
                    .run("create", move |mut conn| async move {
                        send(&mut conn, write.clone(), wait).await
                    })
                    .await?;
                if let (None, Some(user), Some(_)) = (indexed_here, user, &stored) {
                    self.index_after("create", user, &id, session.expires_at_millis())
                        .await?;
                }
                (stored.is_some(), acked)
            }
        };
        self.check_replicas("create", created, acked)?;
        if created {
            Ok(())
        } else {
            Err(Error::IdCollision { id })
        }
    }

    pub(crate) async fn update(
        &self,
        session: &Session,
        expected_version: u64,
    ) -> Result<UpdateOutcome> {
        let id = session.id();
        let version = next_version(id, expected_version)?;
        let key = &self.key(&id);
        let bytes = &codec::encode(session, version)?;
        let expected = &expected_version.to_be_bytes();
        let (lua, wait) = (&self.scripts.update, self.replica_wait);
        // Beyond this, by the app's clock, the script takes the record for
        // live without `TIME` (see `UPDATE_LUA`). Never negative, so that
        // what it passes on stays a positive `PXAT`.
        let judged_after = &now_millis()
            .saturating_add(JUDGED_BY_REDIS_WITHIN_MS)
            .max(0)
            .to_be_bytes();
        // The script's fast path writes it as the `PXAT` (a decimal made
        // here costs Redis nothing).
        let at = &pxat(session.expires_at_millis()).to_string();
        let at = at.as_bytes();
        // One server: the script keeps the index. A cluster: the script
        // asks for the entry first when the record changes user (then
        // this loops once, or again if a touch moved the expiry meanwhile).
        let mut announced: Option<[u8; 8]> = None;
        for _ in 0..4 {
            let (mode, extra): (&[u8], &[u8]) = match (self.indexed_here(), &announced) {
                (Some(prefix), _) => (b"s", prefix.as_bytes()),
                (None, None) => (b"c", b""),
                (None, Some(score)) => (b"x", score),
            };
            let (reply, acked): (Value, _) = self
                .transport
                .run("update", move |mut conn| async move {
                    send_script(
                        &mut conn,
                        lua,
                        key,
                        &[expected, bytes, mode, extra, judged_after, at],
                        wait,
                    )
                    .await
                })
                .await?;
            let outcome = match reply {
                Value::Int(outcome) => outcome,
                Value::BulkString(at) => {
                    let (Some(user), Some(at)) = (
                        session.user_key(),
                        std::str::from_utf8(&at)
                            .ok()
                            .and_then(|at| at.parse::<i64>().ok()),
                    ) else {
                        return Err(not_a_record(key.clone(), i64::MIN));
                    };
                    self.index_first("update", user, &id, at).await?;
                    announced = Some(at.to_be_bytes());
                    continue;
                }
                _ => return Err(not_a_record(key.clone(), i64::MIN)),
            };
            // A rebinding write landed: listed again, as `set` is, in case
            // a deleter took its entry out between the two steps. Before
            // the replicas are judged: a write they did not acknowledge is
            // still on the master, and a caller that settles its failure by
            // reading the record back would find it there, unlisted.
            if let (2, Some(score), Some(user)) = (outcome, announced, session.user_key()) {
                self.index_after("update", user, &id, i64::from_be_bytes(score))
                    .await?;
            }
            self.check_replicas("update", outcome == 2, acked)?;
            return match outcome {
                2 => Ok(UpdateOutcome::Updated { version }),
                1 => Ok(UpdateOutcome::Conflict),
                0 => Ok(UpdateOutcome::Gone),
                code => Err(not_a_record(key.clone(), code)),
            };
        }
        Err(Error::Unavailable {
            store: self.transport.store(),
            context: self.transport.context("update"),
            source: "the session's expiry kept moving while it was listed under its user; \
                     nothing was written"
                .into(),
        })
    }

    pub(crate) async fn delete_if(
        &self,
        id: &SessionId,
        expected_version: u64,
    ) -> Result<DeleteOutcome> {
        let key = &self.key(id);
        let expected = &expected_version.to_be_bytes();
        let (lua, wait) = (&self.scripts.delete_if, self.replica_wait);
        let (mode, prefix): (&[u8], &[u8]) = match self.indexed_here() {
            Some(prefix) => (b"s", prefix.as_bytes()),
            None => (b"c", b""),
        };
        let (reply, acked): (Value, _) = self
            .transport
            .run("delete_if", move |mut conn| async move {
                send_script(&mut conn, lua, key, &[expected, mode, prefix], wait).await
            })
            .await?;
        let outcome = match reply {
            Value::Int(outcome) => outcome,
            Value::BulkString(user_key) => {
                self.check_replicas("delete_if", true, acked)?;
                self.index_forget("delete_if", &user_key, id).await;
                return Ok(DeleteOutcome::Deleted);
            }
            _ => return Err(not_a_record(key.clone(), i64::MIN)),
        };
        self.check_replicas("delete_if", outcome == 2, acked)?;
        match outcome {
            2 => Ok(DeleteOutcome::Deleted),
            1 => Ok(DeleteOutcome::Conflict),
            0 => Ok(DeleteOutcome::Gone),
            code => Err(not_a_record(key.clone(), code)),
        }
    }

    pub(crate) async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let key = &self.key(id);
        let expires_at = unix_millis(expires_at).to_be_bytes();
        let (lua, wait) = (&self.scripts.touch, self.replica_wait);
        // One server: the prefix, so that a bound record's index entry
        // follows its expiry (a format-byte check for an unbound one).
        let prefix = self.indexed_here().map(str::as_bytes);
        let (outcome, acked): (i64, _) = self
            .transport
            .run("touch", move |mut conn| async move {
                match prefix {
                    Some(prefix) => {
                        send_script(&mut conn, lua, key, &[&expires_at, prefix], wait).await
                    }
                    None => send_script(&mut conn, lua, key, &[&expires_at], wait).await,
                }
            })
            .await?;
        self.check_replicas("touch", outcome == 1, acked)?;
        match outcome {
            1 => Ok(true),
            0 => Ok(false),
            code => Err(not_a_record(key.clone(), code)),
        }
    }
}

#[cfg(test)]
mod seen_keys_tests {
    use super::SeenKeys;

    #[test]
    fn a_key_handed_out_again_is_not_counted_again() {
        let mut seen = SeenKeys::new();
        let batch = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(
            seen.first_sightings(batch(&["p:a", "p:b"])),
            batch(&["p:a", "p:b"])
        );
        assert_eq!(
            seen.first_sightings(batch(&["p:b", "p:c", "p:c"])),
            batch(&["p:c"])
        );
        assert!(seen.first_sightings(batch(&["p:a"])).is_empty());
    }
}

//! The store on a Redis Cluster, through the redis crate's async cluster
//! client.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt as _};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};
use session_store::backend::{redact_url, timed_unsent_aware, Unsent};
use session_store::time::OffsetDateTime;
use session_store::{
    codec, BoxError, DeleteOutcome, Error, Result, Session, SessionId, SessionInterface,
    UpdateOutcome,
};

use crate::keyspace::{Keyspace, ReplicaWait, SeenKeys, Transport};
use crate::scripts::{Lua, Scripts};
use crate::{Keys, SCAN_BATCH};

/// The first pause before trying again a request the cluster did not run
/// (a `MOVED` or `CLUSTERDOWN` while a replica is being promoted), doubled
/// up to [`MAX_PAUSE`] until the operation timeout is near.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// How to reach a Redis Cluster and name keys. Its `Debug` output hides
/// the nodes' passwords.
#[derive(Clone)]
pub struct RedisClusterConfig {
    /// Some of the cluster's nodes, as `redis://[user:password@]host:port`
    /// (one is enough; the others are learnt from it, and more let the
    /// store start while one is down).
    pub nodes: Vec<String>,
    /// Prefix of every key of this store (default `session:`): its
    /// namespace. It may not hold a hash tag (`{...}`), which would put
    /// every session in one slot, on one master.
    pub prefix: String,
    /// Cluster connections kept (default one per core), requests taking
    /// them in turn. Each is one connection to every node, shared by all
    /// requests at once; a request waiting for its replicas (`WAIT`) holds
    /// up the requests queued behind it on its connection to that master.
    /// (Measured on 2 cores, 8 connections served fewer saves than 2, with
    /// the replica wait or without.)
    pub connections: usize,
    /// Longest wait for a connection to a node (default 2 s).
    pub connect_timeout: Duration,
    /// Longest time one operation may take before it is an error,
    /// including tries again while a slot moves or a replica is promoted
    /// (default 2 s).
    pub operation_timeout: Duration,
    /// How many replicas must acknowledge each write (`WAIT`) before the
    /// store acknowledges it (default 0: do not wait). See the crate docs
    /// for what it costs and guarantees.
    pub min_replica_acks: usize,
    /// Longest wait for those replicas (default 100 ms); shorter than
    /// `operation_timeout`. A write acknowledged by fewer replicas in that
    /// time is [`Error::Backend`]: it applied on the master, so it may
    /// have been applied.
    pub replica_ack_timeout: Duration,
}

impl std::fmt::Debug for RedisClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| session_store::backend::redact_url(node))
            .collect();
        f.debug_struct("RedisClusterConfig")
            .field("nodes", &nodes)
            .field("prefix", &self.prefix)
            .field("connections", &self.connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("min_replica_acks", &self.min_replica_acks)
            .field("replica_ack_timeout", &self.replica_ack_timeout)
            .finish()
    }
}

impl RedisClusterConfig {
    /// Defaults for the cluster whose nodes include `nodes`
    /// (`redis://host:port` each).
    pub fn new<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisClusterConfig {
            nodes: nodes.into_iter().map(Into::into).collect(),
            prefix: "session:".into(),
            connections: crate::cores(),
            connect_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(2),
            min_replica_acks: 0,
            replica_ack_timeout: Duration::from_millis(100),
        }
    }

    /// Defaults for a `redis+cluster://[user:password@]host:port,host:port,...`
    /// URL: the nodes it lists (port 6379 where none is given), each with
    /// its user info. A database other than 0 or a query string is
    /// [`Error::Config`]: a cluster has only database 0, and the store's
    /// options are the config's fields.
    pub fn from_url(url: &str) -> Result<Self> {
        let shown = redact_url(url);
        let refuse = |why: &str| Err(Error::Config(format!("redis cluster URL {shown}: {why}")));
        let Some((scheme, rest)) = url.trim().split_once("://") else {
            return refuse("not a URL (redis+cluster://host:port,host:port)");
        };
        if !scheme.eq_ignore_ascii_case("redis+cluster") {
            return refuse("the scheme must be redis+cluster");
        }
        if rest.contains('?') {
            return refuse("query parameters are not taken");
        }
        let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
        if !matches!(database, "" | "0") {
            return refuse("a cluster has only database 0");
        }
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
            None => (String::new(), authority),
        };
        let mut nodes = Vec::new();
        for host in hosts.split(',') {
            let host = host.trim();
            let has_port = host
                .rsplit_once(':')
                .is_some_and(|(name, port)| !name.is_empty() && !port.contains(']'));
            match (host, has_port) {
                ("", _) => return refuse("an empty host"),
                (host, true) => nodes.push(format!("redis://{userinfo}{host}")),
                (host, false) => nodes.push(format!("redis://{userinfo}{host}:6379")),
            }
        }
        Ok(Self::new(nodes))
    }
}

/// The Redis Cluster store.
#[derive(Clone)]
pub struct RedisClusterStore {
    cluster: Cluster,
    keyspace: Keyspace,
}

/// The cluster's connections, each request on one of them in turn.
#[derive(Clone)]
pub(crate) struct Cluster {
    connections: Arc<[ClusterConnection]>,
    next: Arc<AtomicUsize>,
    address: String,
    operation_timeout: Duration,
}

impl fmt::Debug for RedisClusterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterStore")
            .field("address", &self.cluster.address)
            .field("prefix", &self.keyspace.prefix)
            .field("replica_wait", &self.keyspace.replica_wait)
            .finish_non_exhaustive()
    }
}

impl RedisClusterStore {
    /// Connects with the defaults to the cluster a
    /// `redis+cluster://host:port,host:port` URL names (see
    /// [`RedisClusterConfig::from_url`]).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(RedisClusterConfig::from_url(url)?).await
    }

    /// Connects with `config`: learns the cluster's slots from the first
    /// node that answers and checks one node with a `PING`. No node
    /// reachable is [`Error::Unavailable`].
    pub async fn connect_with(config: RedisClusterConfig) -> Result<Self> {
        let address = cluster_address(&config.nodes);
        if config.nodes.is_empty() {
            return Err(Error::Config(
                "a redis cluster needs at least one node".into(),
            ));
        }
        check_prefix(&config.prefix)?;
        let replica_wait = match config.min_replica_acks {
            0 => None,
            replicas if config.replica_ack_timeout >= config.operation_timeout => {
                return Err(Error::Config(format!(
                    "redis cluster {address}: waiting up to {:?} for {replicas} replicas \
                     leaves nothing of the {:?} operation timeout",
                    config.replica_ack_timeout, config.operation_timeout
                )))
            }
            replicas => Some(ReplicaWait {
                replicas,
                timeout: config.replica_ack_timeout,
            }),
        };
        // No retries by the client: it would send again a request whose
        // connection dropped after it left, which may already have run (a
        // create would then find its own record, a compare-and-delete its
        // own deletion). `Cluster::run` tries again only what the cluster
        // says it did not run.
        let client = ClusterClientBuilder::new(config.nodes.iter().map(String::as_str))
            .retries(0)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.operation_timeout)
            .build()
            .map_err(|e| Error::Config(format!("redis cluster {address}: {e}")))?;
        let unavailable = |source: BoxError| Error::Unavailable {
            store: Cluster::STORE,
            context: format!("connect at {address}"),
            source,
        };
        let mut connections = Vec::new();
        for _ in 0..config.connections.max(1) {
            let connection =
                tokio::time::timeout(config.connect_timeout, client.get_async_connection())
                    .await
                    .map_err(|_| {
                        unavailable(format!("timed out after {:?}", config.connect_timeout).into())
                    })?
                    .map_err(|e| unavailable(e.into()))?;
            connections.push(connection);
        }
        let cluster = Cluster {
            connections: connections.into(),
            next: Arc::new(AtomicUsize::new(0)),
            address,
            operation_timeout: config.operation_timeout,
        };
        let store = RedisClusterStore {
            keyspace: Keyspace {
                transport: Transport::Cluster(cluster.clone()),
                prefix: config.prefix,
                scripts: Arc::new(Scripts::new()),
                replica_wait,
            },
            cluster,
        };
        store
            .cluster
            .run("ping", |mut conn| async move {
                conn.route_command(
                    redis::cmd("PING"),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await
            })
            .await?;
        Ok(store)
    }

    /// Another store on this one's connections (and replica wait), with
    /// its own prefix: its own namespace. [`Error::Config`] for a prefix
    /// with a hash tag.
    pub fn with_prefix(&self, prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        check_prefix(&prefix)?;
        Ok(RedisClusterStore {
            cluster: self.cluster.clone(),
            keyspace: Keyspace {
                prefix,
                ..self.keyspace.clone()
            },
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.keyspace.prefix
    }

    /// How many replicas each write waits for (0: none).
    pub fn min_replica_acks(&self) -> usize {
        self.keyspace.replica_wait.map_or(0, |wait| wait.replicas)
    }

    /// The masters `clear` and `len` visit, as `host:port`: the nodes that
    /// serve the cluster's slots now (`CLUSTER SLOTS`, asked of any node).
    pub async fn masters(&self) -> Result<Vec<String>> {
        Ok(self
            .masters_of("masters")
            .await?
            .into_iter()
            .map(|(host, port)| format!("{host}:{port}"))
            .collect())
    }

    async fn masters_of(&self, what: &'static str) -> Result<Vec<(String, u16)>> {
        let cluster = &self.cluster;
        let slots = cluster
            .run(what, |mut conn| async move {
                let mut slots = redis::cmd("CLUSTER");
                slots.arg("SLOTS");
                conn.route_command(
                    slots,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await
            })
            .await?;
        masters_in(slots).ok_or_else(|| {
            Error::backend(
                Cluster::STORE,
                cluster.context(what),
                "CLUSTER SLOTS gave no master addresses",
            )
        })
    }

    /// Walks every master, one after another, with `SCAN` until its cursor
    /// comes back to 0, handing each non-empty batch of this namespace's
    /// keys of the kind `which`, with the master that holds them, to
    /// `each`. Replicas are not walked: they hold copies of their master's
    /// keys. The `MATCH` pattern asks for exactly those keys (for
    /// sessions, [`is_own_key`](crate::is_own_key)), checked again here.
    async fn scan_batches<F, Fut>(&self, what: &'static str, which: Keys, mut each: F) -> Result<()>
    where
        F: FnMut((String, u16), Vec<String>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let prefix = &self.keyspace.prefix;
        let pattern = &which.pattern(prefix);
        for master in self.masters_of(what).await? {
            let master_ref = &master;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = self
                    .cluster
                    .run(what, move |mut conn| async move {
                        let mut scan = redis::cmd("SCAN");
                        scan.arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(SCAN_BATCH);
                        let reply = conn
                            .route_command(scan, RoutingInfo::SingleNode(at(master_ref)))
                            .await?;
                        Ok(redis::from_redis_value(reply)?)
                    })
                    .await?;
                let keys: Vec<String> = keys
                    .into_iter()
                    .filter(|k| which.is_own(prefix, k))
                    .collect();
                if !keys.is_empty() {
                    each(master.clone(), keys).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }
}

impl RedisClusterStore {
    /// Runs `lua` once per key of `keys` (a call's keys must share a slot),
    /// all in one pipeline to `master`, which holds them, with `args` for
    /// each; a master that does not know the script yet (a promoted
    /// replica) has it loaded and the calls sent again. The replies, in
    /// order, each a reply or the error it was.
    async fn script_per_key(
        &self,
        what: &'static str,
        master: &(String, u16),
        lua: &Lua,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<Vec<Value>> {
        self.cluster
            .run(what, move |mut conn| async move {
                let mut calls = redis::pipe();
                for key in keys {
                    calls.add_command(lua.by_hash(&[key], args));
                }
                let mut replies = conn
                    .route_pipeline(calls.clone(), 0, keys.len(), at(master))
                    .await?;
                let unknown =
                    |reply: &Value| matches!(reply, Value::ServerError(e) if e.code() == "NOSCRIPT");
                if replies.iter().any(unknown) {
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(lua.body());
                    conn.route_command(load, RoutingInfo::SingleNode(at(master)))
                        .await?;
                    replies = conn
                        .route_pipeline(calls, 0, keys.len(), at(master))
                        .await?;
                }
                Ok(replies)
            })
            .await
    }

    /// Tidies the user set `set` after the fact: each entry whose score
    /// has passed (by the set master's clock) is checked against its record, on the record's master. An entry whose
    /// record is live and bound to the set's user has its score raised to
    /// the record's expiry (a touch may have extended it), so the next
    /// walk passes it over until then; the others are dropped if their
    /// score has still passed when the set's master drops them (a write
    /// that binds the record to this user since announced a later expiry
    /// first, so its entry stays).
    async fn tidy_set(&self, what: &'static str, set: &str) -> Result<()> {
        let keyspace = &self.keyspace;
        let due = keyspace.listed(what, set, true).await?;
        if due.is_empty() {
            return Ok(());
        }
        let checked: Vec<(String, Result<Option<Vec<u8>>>)> = stream::iter(due)
            .map(|id| async move {
                let fetched = match keyspace.listed_id(id.as_bytes()) {
                    Ok(parsed) => keyspace.fetch_live(&keyspace.key(&parsed)).await,
                    Err(_) => Ok(None),
                };
                (id, fetched)
            })
            .buffer_unordered(FAN_OUT)
            .collect()
            .await;
        let (mut raise, mut stale) = (Vec::new(), Vec::new());
        for (id, fetched) in checked {
            let origin = format_args!("{}{id}", keyspace.prefix);
            match fetched {
                Ok(Some(bytes)) => match codec::user_key(&bytes, origin) {
                    Ok(Some(user)) if keyspace.user_set(user) == set => {
                        let at = codec::header(&bytes, origin).map(|h| h.expires_at_ms);
                        if let Ok(at) = at {
                            raise.push((id, at));
                        }
                    }
                    Ok(_) => stale.push(id),
                    // Not readable: neither listed nor dropped.
                    Err(e) => tracing::warn!(error = %e, "a user index lists an unreadable record"),
                },
                Ok(None) => stale.push(id),
                Err(Error::Decode { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        keyspace.raise(what, set, &raise).await?;
        keyspace.drop_due(what, set, &stale).await
    }

    /// Walks this namespace's user sets on every master and tidies each
    /// (as `flush` does), a few at a time.
    async fn tidy_index(&self, what: &'static str) -> Result<()> {
        self.scan_batches(what, Keys::UserSets, |_, sets| async move {
            let tidied: Vec<Result<()>> = stream::iter(sets)
                .map(|set| async move { self.tidy_set(what, &set).await })
                .buffer_unordered(FAN_OUT)
                .collect()
                .await;
            tidied.into_iter().collect()
        })
        .await
    }
}

/// How many requests of one operation a cluster store has in flight at
/// once when it fans out over many sessions (a user's, or a walk's).
const FAN_OUT: usize = 32;

/// The route to the node at `host:port`.
fn at((host, port): &(String, u16)) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::ByAddress {
        host: host.clone(),
        port: *port,
    }
}

/// The distinct masters in a `CLUSTER SLOTS` reply: each slot range is
/// `[first, last, [host, port, id, ...], replicas...]`. `None` for a reply
/// of another shape, or a master without an address.
fn masters_in(slots: Value) -> Option<Vec<(String, u16)>> {
    let Value::Array(ranges) = slots else {
        return None;
    };
    let mut masters = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let Value::Array(node) = fields.get(2)? else {
            return None;
        };
        let host = match node.first()? {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
            Value::SimpleString(host) => host.clone(),
            _ => return None,
        };
        let port = match node.get(1)? {
            Value::Int(port) => u16::try_from(*port).ok()?,
            _ => return None,
        };
        if host.is_empty() {
            return None;
        }
        if !masters.contains(&(host.clone(), port)) {
            masters.push((host, port));
        }
    }
    Some(masters)
}

/// `redis+cluster://host:port,...` for errors: the nodes without their
/// user info.
fn cluster_address(nodes: &[String]) -> String {
    let hosts: Vec<&str> = nodes
        .iter()
        .map(|node| {
            let rest = node
                .split_once("://")
                .map_or(node.as_str(), |(_, rest)| rest);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, hosts)| hosts);
            rest.split('/').next().unwrap_or(rest)
        })
        .collect();
    format!("redis+cluster://{}", hosts.join(","))
}

/// Refuses a prefix with a hash tag: Redis Cluster hashes only the part of
/// a key between the first `{` and the next `}` when that part is not
/// empty, so a tag inside the prefix would put every session of the store
/// in one slot, on one master. (A `{` whose `}` would come later never
/// does: session ids are hex.)
fn check_prefix(prefix: &str) -> Result<()> {
    let tagged = prefix
        .find('{')
        .and_then(|open| prefix[open + 1..].find('}'))
        .is_some_and(|len| len > 0);
    if tagged {
        return Err(Error::Config(format!(
            "redis cluster prefix {prefix:?} holds a hash tag {{...}}: every session would \
             live in one slot, on one master"
        )));
    }
    Ok(())
}

/// Whether the cluster certainly did not run a request, so sending it again
/// cannot apply it twice: a node's answer that it does not serve the key now
/// (`MOVED`, `ASK`, `READONLY` from a replica), that the slot cannot be
/// served yet (`CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `LOADING`), or no
/// connection to send it on.
fn not_run(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
            )
    ) || e.is_connection_refusal()
}

impl Cluster {
    pub(crate) const STORE: &'static str = "redis-cluster";

    /// Runs `op` on the next connection within the operation timeout. An
    /// answer that it did not run is tried again (the client has meanwhile
    /// learnt the slots anew) after a pause, while the operation timeout
    /// leaves room, and is [`Error::Unavailable`] after that: while a
    /// master is down, requests for its slots are so answered until its
    /// replica is promoted. Any other failure is [`Error::Backend`].
    pub(crate) async fn run<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T>
    where
        F: FnMut(ClusterConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let conn = &self.connections[lane];
        let deadline = Instant::now() + self.operation_timeout;
        let work = async {
            let mut pause = FIRST_PAUSE;
            loop {
                match op(conn.clone()).await {
                    Ok(value) => return Ok(value),
                    Err(e) if not_run(&e) && Instant::now() + pause < deadline => {
                        tracing::debug!(operation = what, error = %e, "not run by the cluster; trying again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                    Err(e) if not_run(&e) => return Err(BoxError::from(Unsent(BoxError::from(e)))),
                    Err(e) => return Err(BoxError::from(e)),
                }
            }
        };
        timed_unsent_aware(
            Self::STORE,
            self.operation_timeout,
            || self.context(what),
            |e: &BoxError| e.is::<Unsent>(),
            work,
        )
        .await
    }

    pub(crate) fn context(&self, what: &str) -> String {
        format!("{what} at {}", self.address)
    }
}

#[async_trait]
impl SessionInterface for RedisClusterStore {
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

    /// Returns 0, as the single-node store does: each key expires
    /// (`PXAT`) when its header says, on its master and, through
    /// replication, on the replicas.
    ///
    /// What it does is tidy this namespace's user index: it walks the user
    /// sets on every master, checks each entry whose score has passed
    /// against its record (on the record's master), raises the score of
    /// those still bound to the set's user to their record's expiry, and
    /// drops the others.
    async fn flush(&self) -> Result<u64> {
        self.tidy_index("flush").await?;
        Ok(0)
    }

    /// Deletes this namespace's records master by master: per `SCAN`
    /// batch, one pipeline of the delete script, one key per call (a
    /// multi-key call would span slots, which a cluster refuses), sent to
    /// the master that returned the batch; the records that were bound to
    /// a user are then taken out of their users' sets. Then the user sets
    /// are tidied as by `flush`.
    async fn clear(&self) -> Result<()> {
        let keyspace = &self.keyspace;
        let lua = &keyspace.scripts.delete;
        self.scan_batches("clear", Keys::Sessions, |master, keys| async move {
            let replies = self
                .script_per_key("clear", &master, lua, &keys, &[b"c"])
                .await?;
            let mut bound: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (key, reply) in keys.iter().zip(replies) {
                let reply = reply.extract_error().map_err(|e| {
                    Error::backend(Cluster::STORE, self.cluster.context("clear"), e)
                })?;
                let (Value::BulkString(user), Some(id)) =
                    (reply, key.strip_prefix(keyspace.prefix.as_str()))
                else {
                    continue;
                };
                if let Ok(user) = String::from_utf8(user) {
                    bound
                        .entry(keyspace.user_set(&user))
                        .or_default()
                        .push(id.to_owned());
                }
            }
            let forgotten: Vec<Result<()>> = stream::iter(bound)
                .map(|(set, ids)| async move { keyspace.forget("clear", &set, &ids).await })
                .buffer_unordered(FAN_OUT)
                .collect()
                .await;
            forgotten.into_iter().collect()
        })
        .await?;
        self.tidy_index("clear").await
    }

    /// The user's set (on its master), then every listed record on its
    /// own master, side by side; listed are those live and bound to
    /// exactly that user, in the set's order (by score, then id), as the
    /// single-node store lists them. The entries of the others are dropped
    /// if their score has passed (as `flush` does).
    async fn sessions_of(&self, user_key: &str) -> Result<Vec<Session>> {
        let keyspace = &self.keyspace;
        let set = &keyspace.user_set(user_key);
        let listed = keyspace.listed("sessions_of", set, false).await?;
        let fetched: Vec<(String, Result<Option<Vec<u8>>>)> = stream::iter(listed)
            .map(|id| async move {
                let fetched = match keyspace.listed_id(id.as_bytes()) {
                    Ok(parsed) => keyspace.fetch_live(&keyspace.key(&parsed)).await,
                    Err(_) => Ok(None),
                };
                (id, fetched)
            })
            .buffered(FAN_OUT)
            .collect()
            .await;
        let (mut sessions, mut stale) = (Vec::new(), Vec::new());
        for (id, fetched) in fetched {
            match fetched? {
                Some(bytes) => {
                    let session = keyspace.decode_listed(id.as_bytes(), &bytes)?;
                    if session.user_key() == Some(user_key) {
                        sessions.push(session);
                    } else {
                        stale.push(id);
                    }
                }
                None => stale.push(id),
            }
        }
        keyspace.drop_due("sessions_of", set, &stale).await?;
        Ok(sessions)
    }

    /// The user's set (on its master), then the checking delete script on
    /// each listed record's master, side by side: a record is deleted only
    /// if it is bound to exactly that user. The deleted ids are then taken
    /// out of the set (and listed again if a racing `set` wrote one back
    /// meanwhile), and the entries of records not bound to the user
    /// dropped if their score has passed.
    async fn revoke_user(
        &self,
        user_key: &str,
        except: Option<&SessionId>,
    ) -> Result<Vec<SessionId>> {
        let keyspace = &self.keyspace;
        let set = &keyspace.user_set(user_key);
        let kept = except.map(SessionId::to_hex);
        let listed = keyspace.listed("revoke_user", set, false).await?;
        let checked: Vec<Result<(String, Option<SessionId>)>> = stream::iter(listed)
            .filter(|id| std::future::ready(Some(id) != kept.as_ref()))
            .map(|id| async move {
                let Ok(parsed) = keyspace.listed_id(id.as_bytes()) else {
                    return Ok((id, None));
                };
                let deleted = keyspace.revoke_one(&parsed, user_key).await?;
                Ok((id, deleted.then_some(parsed)))
            })
            .buffered(FAN_OUT)
            .collect()
            .await;
        let (mut revoked, mut gone, mut stale) = (Vec::new(), Vec::new(), Vec::new());
        let mut failure = None;
        for checked in checked {
            match checked {
                Ok((id, Some(parsed))) => {
                    revoked.push(parsed);
                    gone.push(id);
                }
                Ok((id, None)) => stale.push(id),
                // One that may have applied wins: it is the truer answer.
                Err(e) => {
                    if failure
                        .as_ref()
                        .is_none_or(|kept: &Error| !kept.may_have_applied())
                    {
                        failure = Some(e);
                    }
                }
            }
        }
        // The entries of what was deleted go even if another delete
        // failed: they only point at nothing now.
        let tidied = match keyspace.forget("revoke_user", set, &gone).await {
            Ok(()) => keyspace.drop_due("revoke_user", set, &stale).await,
            failed => failed,
        };
        match (failure, tidied) {
            (None, Ok(())) => Ok(revoked),
            // Once a record is deleted, no failure may say that nothing
            // happened (`Unavailable`): a partial revoke is `Backend`, which
            // tells the caller that some of it may have applied. With none
            // revoked, a delete that may have applied was kept above.
            (Some(e), _) if !revoked.is_empty() => Err(Error::backend(
                Cluster::STORE,
                self.cluster.context(&format!(
                    "revoke_user: {} sessions were revoked before another could not be",
                    revoked.len()
                )),
                e,
            )),
            (Some(e), _) => Err(e),
            // A stale entry is harmless (every read checks it against the
            // record, `flush` drops it), and the sessions listed were revoked.
            (None, Err(e)) if !revoked.is_empty() => {
                tracing::warn!(operation = "revoke_user", error = %e, "revoked sessions' entries may stay in their user's index until flush");
                Ok(revoked)
            }
            (None, Err(e)) => Err(e),
        }
    }

    /// Counts this namespace's live records, master by master: per `SCAN`
    /// batch, one pipeline of the count script, one key per call (a call's
    /// keys must share a slot), sent to the master that returned the batch.
    async fn len(&self) -> Result<u64> {
        let count = AtomicU64::new(0);
        let lua = &self.keyspace.scripts.count_live;
        let mut seen = SeenKeys::new();
        self.scan_batches("len", Keys::Sessions, |master, keys| {
            let count = &count;
            let keys = seen.first_sightings(keys);
            async move {
                if keys.is_empty() {
                    return Ok(());
                }
                let replies = self.script_per_key("len", &master, lua, &keys, &[]).await?;
                let mut live = 0u64;
                for reply in replies {
                    let reply: u64 = reply
                        .extract_error()
                        .and_then(|reply| Ok(redis::from_redis_value(reply)?))
                        .map_err(|e| {
                            Error::backend(Cluster::STORE, self.cluster.context("len"), e)
                        })?;
                    live += reply;
                }
                count.fetch_add(live, Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
        Ok(count.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_with_a_hash_tag_are_refused() {
        for tagged in ["{app}:", "a:{b}:", "x{y}z{"] {
            assert!(
                matches!(check_prefix(tagged), Err(Error::Config(_))),
                "{tagged}"
            );
        }
        for plain in ["session:", "a{:", "a{}:", "}a{", "a}b:"] {
            assert!(check_prefix(plain).is_ok(), "{plain}");
        }
    }

    #[test]
    fn cluster_urls_list_their_nodes() {
        let config =
            RedisClusterConfig::from_url("redis+cluster://u:pw@127.0.0.1:7000,h2,[::1]:7002/0")
                .unwrap();
        assert_eq!(
            config.nodes,
            [
                "redis://u:pw@127.0.0.1:7000",
                "redis://u:pw@h2:6379",
                "redis://u:pw@[::1]:7002"
            ]
        );
        assert_eq!(
            cluster_address(&config.nodes),
            "redis+cluster://127.0.0.1:7000,h2:6379,[::1]:7002"
        );
        for bad in [
            "redis://127.0.0.1:7000",
            "redis+cluster://a:1/2",
            "redis+cluster://a:1?prefix=x",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://:pw@",
        ] {
            match RedisClusterConfig::from_url(bad) {
                Err(Error::Config(message)) => assert!(!message.contains("pw"), "{message}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn masters_are_read_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |first: i64, last: i64, master: Value, replica: Value| {
            Value::Array(vec![Value::Int(first), Value::Int(last), master, replica])
        };
        let slots = Value::Array(vec![
            range(0, 5460, node("127.0.0.1", 7000), node("127.0.0.1", 7003)),
            range(5461, 6000, node("127.0.0.1", 7001), node("127.0.0.1", 7004)),
            range(6001, 6001, node("127.0.0.1", 7000), node("127.0.0.1", 7003)),
        ]);
        assert_eq!(
            masters_in(slots),
            Some(vec![("127.0.0.1".into(), 7000), ("127.0.0.1".into(), 7001)])
        );
        assert_eq!(masters_in(Value::Int(1)), None);
        assert_eq!(
            masters_in(Value::Array(vec![range(0, 1, node("", 7000), Value::Nil)])),
            None
        );
    }
}

#[cfg(test)]
mod debug_tests {
    #[test]
    fn debug_hides_the_passwords() {
        let config = super::RedisClusterConfig::new(["redis://:hunter2@h:7000"]);
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("h:7000"),
            "{shown}"
        );
    }
}

//! The store on a Redis Cluster, through the redis crate's async cluster
//! client.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};
use session_store::backend::{redact_url, timed_unsent_aware, Unsent};
use session_store::time::OffsetDateTime;
use session_store::{
    BoxError, DeleteOutcome, Error, Result, Session, SessionId, SessionInterface, UpdateOutcome,
};

use crate::keyspace::{Keyspace, ReplicaWait, Transport};
use crate::scripts::Scripts;
use crate::{is_own_key, scan_pattern, SCAN_BATCH};

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
    /// keys, with the master that holds them, to `each`. Replicas are not
    /// walked: they hold copies of their master's keys. The `MATCH` pattern
    /// asks for exactly [`is_own_key`] keys, checked again here.
    async fn scan_batches<F, Fut>(&self, what: &'static str, mut each: F) -> Result<()>
    where
        F: FnMut((String, u16), Vec<String>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let pattern = &scan_pattern(&self.keyspace.prefix);
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
                    .filter(|k| is_own_key(&self.keyspace.prefix, k))
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

    /// Returns 0 without a round trip, as the single-node store does: each
    /// key expires (`PXAT`) when its header says, on its master and, through
    /// replication, on the replicas.
    async fn flush(&self) -> Result<u64> {
        Ok(0)
    }

    /// `UNLINK`s this namespace's keys, master by master: one pipeline of
    /// single-key `UNLINK`s per `SCAN` batch, sent to the master that
    /// returned the batch (a multi-key `UNLINK` would span slots, which a
    /// cluster refuses).
    async fn clear(&self) -> Result<()> {
        self.scan_batches("clear", |master, keys| async move {
            let (master, keys) = (&master, &keys);
            self.cluster
                .run("clear", move |mut conn| async move {
                    let mut unlink = redis::pipe();
                    for key in keys {
                        unlink.cmd("UNLINK").arg(key);
                    }
                    conn.route_pipeline(unlink, 0, keys.len(), at(master))
                        .await
                        .map(drop)
                })
                .await
        })
        .await
    }

    /// Counts this namespace's live records, master by master: per `SCAN`
    /// batch, one pipeline of the count script, one key per call (a call's
    /// keys must share a slot), sent to the master that returned the batch.
    async fn len(&self) -> Result<u64> {
        let count = AtomicU64::new(0);
        let lua = &self.keyspace.scripts.count_live;
        self.scan_batches("len", |master, keys| {
            let count = &count;
            async move {
                let (master, keys) = (&master, &keys);
                let live: u64 = self
                    .cluster
                    .run("len", move |mut conn| async move {
                        let mut calls = redis::pipe();
                        for key in keys {
                            calls.add_command(lua.by_hash(&[key], &[]));
                        }
                        let mut replies = conn
                            .route_pipeline(calls.clone(), 0, keys.len(), at(master))
                            .await?;
                        let unknown = |reply: &Value| {
                            matches!(reply, Value::ServerError(e) if e.code() == "NOSCRIPT")
                        };
                        if replies.iter().any(unknown) {
                            // A master that does not know the script yet (a
                            // promoted replica): load it there, count again.
                            let mut load = redis::cmd("SCRIPT");
                            load.arg("LOAD").arg(lua.body());
                            conn.route_command(load, RoutingInfo::SingleNode(at(master)))
                                .await?;
                            replies = conn
                                .route_pipeline(calls, 0, keys.len(), at(master))
                                .await?;
                        }
                        let mut live = 0u64;
                        for reply in replies {
                            let reply: u64 = redis::from_redis_value(reply.extract_error()?)?;
                            live += reply;
                        }
                        Ok(live)
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

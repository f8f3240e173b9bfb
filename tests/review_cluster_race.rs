//! Review of 584d193 (a set racing a delete on Redis Cluster): two
//! interleavings of the same race class that fix left open, a rebinding
//! `update` racing `revoke_user` and a `set` racing `clear` (both failed
//! every run until the next commit). Each test forces one
//! interleaving of real store calls on the shared cluster with no hook in
//! the store: `CLIENT PAUSE WRITE` on a replica holds up the `WAIT` of a
//! store that waits for replicas (the write itself has run on the master),
//! and `CLIENT PAUSE WRITE` on a master holds up writes sent to it (paused
//! clients run again in the order they were paused). The pauses stay well
//! under the cluster's node timeout. The tests pause nodes, so they take
//! turns (`TURN`).
#![cfg(feature = "redis")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use server_session::redis::deadpool_redis::redis;
use server_session::redis::{RedisClusterConfig, RedisClusterStore};
use server_session::{
    Session, SessionId, SessionInterface, SessionToken, UpdateOutcome, UserBinding,
};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A store on the shared cluster under `prefix`, waiting for
/// `min_replica_acks` replicas per write (up to 4 s), each request given 5 s.
async fn store(prefix: &str, min_replica_acks: usize) -> Option<RedisClusterStore> {
    store_waiting(prefix, min_replica_acks, Duration::from_secs(4)).await
}

/// As [`store`], waiting up to `replica_ack_timeout` for the replicas.
async fn store_waiting(
    prefix: &str,
    min_replica_acks: usize,
    replica_ack_timeout: Duration,
) -> Option<RedisClusterStore> {
    let url = common::redis_cluster_url();
    let config = RedisClusterConfig {
        prefix: prefix.to_owned(),
        min_replica_acks,
        replica_ack_timeout,
        operation_timeout: Duration::from_secs(5),
        ..RedisClusterConfig::from_url(&url).expect("REDIS_CLUSTER_URL is a redis+cluster URL")
    };
    match RedisClusterStore::connect_with(config).await {
        Ok(store) => Some(store),
        Err(e) => {
            common::unreachable("redis cluster", &url, e);
            None
        }
    }
}

/// The cluster's layout: per slot range, its master and replicas.
struct Layout {
    ranges: Vec<(u16, u16, String, Vec<String>)>,
    conn: redis::aio::MultiplexedConnection,
}

impl Layout {
    async fn read() -> Layout {
        let url = common::redis_cluster_url();
        let first = RedisClusterConfig::from_url(&url).unwrap().nodes[0].clone();
        let mut conn = redis::Client::open(first)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to a cluster node");
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .unwrap();
        let node = |v: &redis::Value| -> String {
            let redis::Value::Array(fields) = v else {
                panic!("node {v:?}")
            };
            let host: String = redis::from_redis_value(fields[0].clone()).unwrap();
            let port: i64 = redis::from_redis_value(fields[1].clone()).unwrap();
            format!("{host}:{port}")
        };
        let ranges = slots
            .iter()
            .map(|range| {
                let redis::Value::Array(f) = range else {
                    panic!("range {range:?}")
                };
                let first: i64 = redis::from_redis_value(f[0].clone()).unwrap();
                let last: i64 = redis::from_redis_value(f[1].clone()).unwrap();
                (
                    first as u16,
                    last as u16,
                    node(&f[2]),
                    f[3..].iter().map(node).collect(),
                )
            })
            .collect();
        Layout { ranges, conn }
    }

    fn masters(&self) -> Vec<String> {
        let mut masters: Vec<String> = self.ranges.iter().map(|r| r.2.clone()).collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// The master holding `key`, and its first replica.
    async fn holder(&mut self, key: &str) -> (String, String) {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        let (_, _, master, replicas) = self
            .ranges
            .iter()
            .find(|r| (r.0..=r.1).contains(&(slot as u16)))
            .expect("every slot is served");
        (
            master.clone(),
            replicas
                .first()
                .cloned()
                .expect("each master has a replica"),
        )
    }

    /// The key of `user`'s set under `prefix` (`redis.sha1hex`, as the
    /// scripts hash it), and its hash.
    async fn user_set(&mut self, prefix: &str, user: &str) -> (String, String) {
        let hash: String = redis::cmd("EVAL")
            .arg("return redis.sha1hex(ARGV[1])")
            .arg(0)
            .arg(user)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        (format!("{prefix}user:{hash}"), hash)
    }

    /// A session bound to `user` (none: unbound) whose record `master` holds.
    async fn session_on(&mut self, prefix: &str, master: &str, user: Option<&str>) -> Session {
        loop {
            let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
            if let Some(user) = user {
                s.set_user(Some(UserBinding::new(user, BTreeMap::new()).unwrap()));
            }
            if self.holder(&format!("{prefix}{}", s.id().to_hex())).await.0 == master {
                return s;
            }
        }
    }
}

/// `CLIENT PAUSE ms WRITE` on the node at `address`.
async fn pause_writes(address: &str, ms: u64) {
    let mut conn = redis::Client::open(format!("redis://{address}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn listed(store: &RedisClusterStore, user: &str) -> Vec<SessionId> {
    store
        .sessions_of(user)
        .await
        .unwrap()
        .iter()
        .map(Session::id)
        .collect()
}

/// The first half both rebinding races share: bob has sessions R (record
/// on master A) and Q (on master C), bob's set is on master B. Q's master's
/// writes are paused for 400 ms, `revoke_user(bob)` starts and deletes R
/// (Q's delete, and so its `ZREM`s, wait), then R is saved again unbound
/// and live longer than before (120 s against 60 s), so that a rebinding
/// update's `ZADD GT` raises its entry's score.
struct RevokeUnderWay {
    layout: Layout,
    /// bob's set's key, its master and that master's replica.
    bob_set: String,
    set_master: String,
    set_replica: String,
    /// R as created (bound to bob, version 1) and Q.
    r: Session,
    q: Session,
    /// The `revoke_user(bob)` under way.
    revoke: tokio::task::JoinHandle<server_session::Result<Vec<SessionId>>>,
}

async fn revoke_under_way(
    prefix: &str,
    revoker: &RedisClusterStore,
    setter: &RedisClusterStore,
) -> RevokeUnderWay {
    let mut layout = Layout::read().await;
    let (bob_set, _) = layout.user_set(prefix, "bob").await;
    let (set_master, set_replica) = layout.holder(&bob_set).await;
    let others: Vec<String> = layout
        .masters()
        .into_iter()
        .filter(|m| *m != set_master)
        .collect();
    assert!(others.len() >= 2, "needs three masters");
    let r = layout.session_on(prefix, &others[0], Some("bob")).await;
    let q = layout.session_on(prefix, &others[1], Some("bob")).await;
    let id = r.id();
    setter.create(&r).await.unwrap();
    setter.create(&q).await.unwrap();

    pause_writes(&others[1], 400).await;
    let revoke = tokio::spawn({
        let revoker = revoker.clone();
        async move { revoker.revoke_user("bob", None).await }
    });
    let gone = async {
        while setter.exists(&id).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(Duration::from_millis(300), gone)
        .await
        .expect("setup: revoke_user did not delete R");
    setter
        .set(&Session::new(id, Duration::from_secs(120)))
        .await
        .unwrap();
    RevokeUnderWay {
        layout,
        bob_set,
        set_master,
        set_replica,
        r,
        q,
        revoke,
    }
}

/// The fix lists again after `set`/`create` write, but not after the
/// rebinding `update` ('c', `ZADD GT`, 'x'), which has the same shape:
/// its entry is made before its record is written, so a deleter's `ZREM`
/// landing in between takes it out, and the deleter's look at the record
/// (`relist_written`) comes before the write.
///
/// bob has sessions R (record on master A) and Q (on master C); bob's set
/// is on master B.
/// 1. D = `revoke_user(bob)`: deletes R; Q's delete waits (C's writes
///    paused), so its `ZREM` waits too.
/// 2. S = `set(R unbound, version 1)` (a save of the same id, anonymous,
///    live a little longer).
/// 3. P = `update(R bound to bob, expected 1)` (a login): 'c' answers the
///    expiry, `ZADD GT` lists R in bob's set, and its `WAIT` is held (B's
///    replica paused).
/// 4. C resumes: D deletes Q, `ZREM`s R and Q (P's entry goes), `GET`s R:
///    unbound, no relist. D returns Ok([R, Q]).
/// 5. B's replica resumes: P's 'x' writes R bound to bob: `Updated`.
///
/// R is live, bound to bob, and bob's set does not list it: `sessions_of`
/// and a second `revoke_user` miss it.
#[tokio::test]
async fn rebinding_update_racing_revoke_user_stays_listed() {
    let _turn = TURN.lock().await;
    let prefix = common::unique("review:") + ":";
    let (Some(revoker), Some(setter), Some(updater)) = (
        store(&prefix, 0).await,
        store(&prefix, 0).await,
        store(&prefix, 1).await,
    ) else {
        return;
    };
    let RevokeUnderWay {
        set_replica,
        r,
        q,
        revoke: d,
        ..
    } = revoke_under_way(&prefix, &revoker, &setter).await;
    let id = r.id();
    pause_writes(&set_replica, 900).await;
    let p = tokio::spawn({
        let (updater, rebound) = (updater.clone(), r.clone());
        async move { updater.update(&rebound, 1).await }
    });
    let mut revoked = d.await.unwrap().expect("revoke_user");
    revoked.sort();
    let mut both = vec![r.id(), q.id()];
    both.sort();
    assert_eq!(revoked, both);
    assert_eq!(
        p.await.unwrap().expect("update"),
        UpdateOutcome::Updated { version: 2 }
    );

    let stored = setter.get(&id).await.unwrap().expect("R is live");
    assert_eq!(stored.user_key(), Some("bob"));
    let of_bob = listed(&setter, "bob").await;
    let revoked = setter.revoke_user("bob", None).await.unwrap();
    let survived = setter.get(&id).await.unwrap().is_some();
    setter.clear().await.unwrap();
    assert!(
        of_bob.contains(&id) && revoked.contains(&id) && !survived,
        "R is live and bound to bob after update returned Updated, but sessions_of(bob) = \
         {of_bob:?}, revoke_user(bob) = {revoked:?}, R still live after that revoke: {survived}"
    );
}

/// The fix gave `delete`, `delete_if` and `revoke_user` a look at the
/// record after their `ZREM`, but not `clear`, whose `ZREM`s (after each
/// batch of deletes) can take out the entry of a `set` that wrote its
/// record after the delete.
///
/// Session R bound to "u" on master A, u's set on master B; 40 sessions on
/// A bound to 40 other users whose sets are on master C and sort before
/// u's (so that `clear`'s `buffer_unordered(FAN_OUT = 32)` of `ZREM`s per
/// set reaches u's last).
/// 1. A's writes paused; `clear` reaches A: its batch of delete scripts waits.
/// 2. `set(R)`: `ZADD GT` on B; its `SET` waits on A, behind `clear`'s batch.
/// 3. A resumes: `clear` deletes R, then the `SET` writes R again; the set
///    lists R again (`ZADD GT` on B) and returns Ok.
/// 4. `clear`'s `ZREM`s: the 40 on C (paused longer) first, then u's on B
///    takes R out. Nothing looks at R again. `clear` returns Ok.
///
/// R is live, bound to u, and u's set does not list it.
#[tokio::test]
async fn set_racing_clear_stays_listed() {
    let _turn = TURN.lock().await;
    let prefix = common::unique("review:") + ":";
    let (Some(clearer), Some(setter)) = (store(&prefix, 0).await, store(&prefix, 0).await) else {
        return;
    };
    let mut layout = Layout::read().await;
    let masters = layout.masters();
    assert!(masters.len() >= 3, "needs three masters");
    let (records_on, user_on, fillers_on) = (&masters[0], &masters[1], &masters[2]);
    // u: a user whose set is on B and whose hash is high.
    let mut user = String::new();
    let mut user_hash = String::new();
    for n in 0.. {
        let candidate = format!("u{n}");
        let (set, hash) = layout.user_set(&prefix, &candidate).await;
        if hash.starts_with('f') && layout.holder(&set).await.0 == *user_on {
            (user, user_hash) = (candidate, hash);
            break;
        }
    }
    // 40 other users whose sets are on C and sort before u's.
    let mut fillers = Vec::new();
    for n in 0.. {
        if fillers.len() == 40 {
            break;
        }
        let candidate = format!("f{n}");
        let (set, hash) = layout.user_set(&prefix, &candidate).await;
        if hash < user_hash && layout.holder(&set).await.0 == *fillers_on {
            fillers.push(candidate);
        }
    }
    let r = layout.session_on(&prefix, records_on, Some(&user)).await;
    setter.create(&r).await.unwrap();
    for filler in &fillers {
        let s = layout.session_on(&prefix, records_on, Some(filler)).await;
        setter.create(&s).await.unwrap();
    }
    assert_eq!(listed(&setter, &user).await, vec![r.id()]);

    pause_writes(fillers_on, 1000).await;
    pause_writes(records_on, 300).await;
    let c = tokio::spawn({
        let clearer = clearer.clone();
        async move { clearer.clear().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let set = setter.set(&r).await;
    let cleared = c.await.unwrap();
    set.expect("set");
    cleared.expect("clear");

    let live = setter.get(&r.id()).await.unwrap().is_some();
    let of_user = listed(&setter, &user).await;
    setter.clear().await.unwrap();
    assert!(
        !live || of_user.contains(&r.id()),
        "R is live and bound to {user} after set returned Ok, but sessions_of({user}) = \
         {of_user:?}"
    );
    assert!(live, "setup: the set did not land after clear's delete");
}

/// The same order as `rebinding_update_racing_revoke_user_stays_listed`,
/// but the update's write is not acknowledged by its replica in time: the
/// record is on the master, bound to bob, and the update answers
/// `Error::Backend`. Its second listing must not depend on the replicas'
/// answer (it ran after it, and was skipped when the wait failed), since
/// the manager settles that failure by reading the record back and finds
/// it there.
///
/// Timeline (ms from the pauses): R's master's replica paused 1,800; bob's
/// set's replica 600; Q's master 250. P's `ZADD GT` waits for bob's
/// replica (about 600 < 800); D's `ZREM` and look come in between (at
/// about 250, R still unbound); P's write lands at about 600 and its
/// `WAIT` gives up at about 1,400, before R's replica resumes.
#[tokio::test]
async fn rebinding_update_unacknowledged_by_replicas_stays_listed() {
    let _turn = TURN.lock().await;
    let prefix = common::unique("review:") + ":";
    let (Some(revoker), Some(setter), Some(updater)) = (
        store(&prefix, 0).await,
        store(&prefix, 0).await,
        store_waiting(&prefix, 1, Duration::from_millis(800)).await,
    ) else {
        return;
    };
    let RevokeUnderWay {
        mut layout,
        bob_set,
        set_master,
        set_replica,
        r,
        revoke: d,
        ..
    } = revoke_under_way(&prefix, &revoker, &setter).await;
    let id = r.id();
    let (_, r_replica) = layout.holder(&format!("{prefix}{}", id.to_hex())).await;
    let mut set_conn = redis::Client::open(format!("redis://{set_master}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let member = id.to_hex();
    let score_of = |conn: &mut redis::aio::MultiplexedConnection| {
        let (mut conn, set, member) = (conn.clone(), bob_set.clone(), member.clone());
        async move {
            redis::cmd("ZSCORE")
                .arg(set)
                .arg(member)
                .query_async::<Option<f64>>(&mut conn)
                .await
                .unwrap()
                .unwrap_or(0.0)
        }
    };
    let created_score = score_of(&mut set_conn).await;
    assert!(created_score > 0.0, "setup: create listed R");

    pause_writes(&r_replica, 1800).await;
    pause_writes(&set_replica, 600).await;
    let p = tokio::spawn({
        let (updater, rebound) = (updater.clone(), r.clone());
        async move { updater.update(&rebound, 1).await }
    });
    // The order under test: P's first listing (scored by the 120 s record,
    // above the 60 s one's entry) lands while D still waits, so that D's
    // `ZREM` takes it out (else the test proves nothing).
    let first_listing = async {
        loop {
            if score_of(&mut set_conn).await > created_score {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(Duration::from_millis(300), first_listing)
        .await
        .expect("setup: the update did not list R in bob's set");
    assert!(
        !d.is_finished(),
        "setup: revoke_user finished before the update listed R; a slower machine needs longer pauses"
    );
    let revoked = d.await.unwrap().expect("revoke_user");
    assert_eq!(revoked.len(), 2, "setup: revoke_user revoked {revoked:?}");
    let updated = p.await.unwrap();
    assert!(
        matches!(updated, Err(server_session::Error::Backend { .. })),
        "setup: the update's write was to go unacknowledged by R's replica, got {updated:?}"
    );
    // R's replica resumes at 1,800 ms: wait it out before reading.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stored = setter.get(&id).await.unwrap().expect("R is live");
    assert_eq!(
        stored.user_key(),
        Some("bob"),
        "setup: the update's write landed"
    );
    let of_bob = listed(&setter, "bob").await;
    let revoked = setter.revoke_user("bob", None).await.unwrap();
    let survived = setter.get(&id).await.unwrap().is_some();
    setter.clear().await.unwrap();
    assert!(
        of_bob.contains(&id) && revoked.contains(&id) && !survived,
        "R is live and bound to bob after an update its replica did not acknowledge, but \
         sessions_of(bob) = {of_bob:?}, revoke_user(bob) = {revoked:?}, R still live after \
         that revoke: {survived}"
    );
}

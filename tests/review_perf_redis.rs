//! Adversarial review of store-redis's `get` (plain `GET`, judged by `TIME`
//! only near the expiry) and `delete` (`GETDEL`, then a script taking a
//! bound record's entry out of its user's set), against the real server.
//! The proxy holds or cuts that second step by the bytes only it sends, the
//! user set's key (`…user:<sha1>`).
#![cfg(feature = "redis")]

mod common;

use common::redis::raw;
use std::collections::BTreeMap;
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use server_session::redis::deadpool_redis::redis;
use server_session::{
    codec, now_millis, DeleteOutcome, RedisConfig, RedisStore, Session, SessionInterface,
    SessionToken, UpdateOutcome, UserBinding,
};

async fn store_at(url: String, prefix: String, timeout: Duration) -> Option<RedisStore> {
    common::redis::store(RedisConfig {
        prefix,
        connect_timeout: timeout,
        operation_timeout: timeout,
        ..RedisConfig::new(url)
    })
    .await
}

fn bound(user: &str, ttl: Duration) -> Session {
    let mut s = Session::new(SessionToken::generate().id(), ttl);
    s.set_user(Some(UserBinding::new(user, BTreeMap::new()).unwrap()));
    s
}

/// Every member of every user set of `prefix` (one test's namespace).
async fn index_members(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}user:*"))
        .query_async(conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    for key in keys {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await
            .unwrap();
        out.extend(members);
    }
    out
}

/// Two stores on one namespace: `slow` through a proxy, `fast` direct.
async fn pair(timeout: Duration) -> Option<(Proxy, RedisStore, RedisStore, String)> {
    let prefix = common::unique("review:perf:") + ":";
    let fast = store_at(common::redis_url(), prefix.clone(), Duration::from_secs(5)).await?;
    let proxy = Proxy::start(common::upstream(&common::redis_url(), 6379)).await;
    let slow = store_at(format!("redis://{}", proxy.addr), prefix.clone(), timeout).await?;
    // Warm the slow store's connection (and any script loading) before a
    // marker is armed.
    let _ = slow.len().await;
    let _ = slow.sessions_of("warm-up").await;
    Some((proxy, slow, fast, prefix))
}

/// `delete` is `GETDEL`, then the removal of the old record's index entry.
/// A `set` of the same bound id landing between the two (another request
/// re-saving the record it holds) must stay listed: were the entry removed
/// blindly, `sessions_of` would miss it and `revoke_user` ("log out
/// everywhere") would leave it alive. (Found by this review against a
/// plain `ZREM`; the removal now checks the key in the same script.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_landing_between_getdel_and_zrem_stays_indexed() {
    let Some((proxy, slow, fast, _prefix)) = pair(Duration::from_secs(5)).await else {
        return;
    };
    let user = common::unique("user-");
    let s = bound(&user, Duration::from_secs(3600));
    fast.create(&s).await.unwrap();

    let fired = proxy.switch().arm(b"user:".to_vec(), Mode::Stall);
    let deleting = tokio::spawn({
        let (slow, id) = (slow.clone(), s.id());
        async move { slow.delete(&id).await }
    });
    let _ = tokio::time::timeout(Duration::from_secs(2), fired)
        .await
        .expect("delete sends its index step after GETDEL");
    // The record is gone (GETDEL ran); a concurrent writer stores it again.
    assert!(fast.get(&s.id()).await.unwrap().is_none());
    fast.set(&s).await.unwrap();
    proxy.set(Mode::Pass);
    deleting.await.unwrap().unwrap();

    assert!(
        fast.get(&s.id()).await.unwrap().is_some(),
        "the set came after the delete's GETDEL, so the record is stored"
    );
    let listed: Vec<_> = fast
        .sessions_of(&user)
        .await
        .unwrap()
        .iter()
        .map(Session::id)
        .collect();
    let revoked = fast.revoke_user(&user, None).await.unwrap();
    let survives = fast.get(&s.id()).await.unwrap().is_some();
    fast.clear().await.ok();
    assert!(
        listed == vec![s.id()] && revoked == vec![s.id()] && !survives,
        "a live record bound to the user: sessions_of {listed:?}, revoke_user {revoked:?}, \
         still live after revoke_user: {survives}"
    );
}

/// The contract: an index entry of a record whose delete was cut short
/// between the record and its index may outlive it until the first `flush`
/// after the record would have expired, but never makes `sessions_of` or
/// `revoke_user` act on it; here the user's next `sessions_of` drops it.
/// First the index step's connection is cut after `GETDEL` answered (the
/// delete still succeeded); then `GETDEL`'s reply is lost past the timeout
/// (the delete may have applied, and a retry finds nothing to unindex).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_entry_left_by_a_cut_short_delete_acts_on_nothing() {
    let timeout = Duration::from_millis(500);
    let Some((proxy, slow, fast, prefix)) = pair(timeout).await else {
        return;
    };
    let cases = [
        (b"user:".to_vec(), Mode::Cut),
        (
            b"GETDEL".to_vec(),
            Mode::DelayReplies(timeout + Duration::from_millis(700)),
        ),
    ];
    for (marker, mode) in cases {
        let user = common::unique("user-");
        let s = bound(&user, Duration::from_secs(3600));
        fast.create(&s).await.unwrap();
        let fired = proxy.switch().arm(marker, mode);
        let first = slow.delete(&s.id()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), fired).await;
        proxy.set(Mode::Pass);
        if let Err(e) = &first {
            assert!(e.may_have_applied(), "{e:?}");
            // Retried, as a caller does after a may-have-applied error (on
            // the direct store: the proxy may still hold this connection).
            fast.delete(&s.id()).await.unwrap();
        }
        assert!(fast.get(&s.id()).await.unwrap().is_none());
        fast.flush().await.unwrap();
        assert!(fast.sessions_of(&user).await.unwrap().is_empty());
        assert!(fast.revoke_user(&user, None).await.unwrap().is_empty());
        let mut conn = raw().await;
        let left = index_members(&mut conn, &prefix).await;
        assert!(
            !left.contains(&s.id().to_hex()),
            "first delete {first:?}; sessions_of left the stale entry: {left:?}"
        );
    }
    fast.clear().await.ok();
}

/// After a `GETDEL` of a bound record, nothing brings it back or lists it:
/// update is Gone, touch false, delete_if Gone, sessions_of and revoke_user
/// see nothing, the index is empty.
#[tokio::test]
async fn after_getdel_of_a_bound_record_nothing_finds_it() {
    let prefix = common::unique("review:perf:") + ":";
    let Some(store) = store_at(common::redis_url(), prefix.clone(), Duration::from_secs(5)).await
    else {
        return;
    };
    let user = common::unique("user-");
    let mut s = bound(&user, Duration::from_secs(3600));
    store.create(&s).await.unwrap();
    store.delete(&s.id()).await.unwrap();
    s.insert("k", &1).unwrap();
    assert_eq!(store.update(&s, 1).await.unwrap(), UpdateOutcome::Gone);
    let later =
        server_session::time::OffsetDateTime::now_utc() + server_session::time::Duration::hours(2);
    assert!(!store.touch(&s.id(), later).await.unwrap());
    assert_eq!(
        store.delete_if(&s.id(), 1).await.unwrap(),
        DeleteOutcome::Gone
    );
    assert!(store.sessions_of(&user).await.unwrap().is_empty());
    assert!(store.revoke_user(&user, None).await.unwrap().is_empty());
    let mut conn = raw().await;
    assert!(index_members(&mut conn, &prefix).await.is_empty());
    // Deleting twice is fine and the second GETDEL finds nothing.
    store.delete(&s.id()).await.unwrap();
}

/// A key whose TTL someone shortened (PEXPIRE) below its header: `GET`
/// answers nothing once Redis expired it, whatever the header says; a key
/// made persistent with a header just past: judged by Redis's clock.
/// A header exactly at Redis's now is expired (`expires_at <= now`), though
/// Redis itself keeps a key until `now > PXAT`.
#[tokio::test]
async fn foreign_ttls_and_the_expiry_millisecond() {
    let prefix = common::unique("review:perf:") + ":";
    let Some(store) = store_at(common::redis_url(), prefix.clone(), Duration::from_secs(5)).await
    else {
        return;
    };
    let mut conn = raw().await;

    // Shortened TTL, header an hour ahead.
    let s = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    store.create(&s).await.unwrap();
    let key = format!("{prefix}{}", s.id());
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(50)
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(store.get(&s.id()).await.unwrap().is_none());

    // PERSIST on a record whose header expired a moment ago.
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    s.set_expires_at_millis(now_millis() + 150);
    store.create(&s).await.unwrap();
    let key = format!("{prefix}{}", s.id());
    let _: i64 = redis::cmd("PERSIST")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.get(&s.id()).await.unwrap().is_none());
    assert!(!store.is_valid(&s.id()).await.unwrap());

    // Header at exactly Redis's current millisecond, key kept alive longer.
    for _ in 0..20 {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        let now = secs * 1000 + micros / 1000;
        let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
        s.set_expires_at_millis(now);
        let key = format!("{prefix}{}", s.id());
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(codec::encode(&s, 1).unwrap())
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(store.get(&s.id()).await.unwrap().is_none());
    }
    store.clear().await.ok();
}

/// The update script answers the common save (a record bound to no user,
/// live by the app's clock plus a minute, the expected version, the new
/// expiry no earlier) before its helpers, writing the `PXAT` the store
/// passes in decimal. Every record just outside that case must fall
/// through to the full script and be answered as before: a later stored
/// expiry kept, a version 0 or an unreadable format refused untouched, a
/// header expired under a key that lives on gone, a record leaving its
/// user's index taken out of it; and the fast path's `PXAT` is the header's
/// expiry to the millisecond.
#[tokio::test]
async fn update_fast_path_and_its_edges() {
    let prefix = common::unique("review:perf:") + ":";
    let Some(store) = store_at(common::redis_url(), prefix.clone(), Duration::from_secs(5)).await
    else {
        return;
    };
    let mut conn = raw().await;
    let key_of = |s: &Session| format!("{prefix}{}", s.id());
    let stored_expiry = |conn: &mut redis::aio::MultiplexedConnection, key: String| {
        let mut conn = conn.clone();
        async move {
            let bytes: Vec<u8> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            let pexpiretime: i64 = redis::cmd("PEXPIRETIME")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            (
                codec::header(&bytes, &key).unwrap().expires_at_ms,
                pexpiretime,
                bytes,
            )
        }
    };
    let write = |conn: &mut redis::aio::MultiplexedConnection, key: String, bytes: Vec<u8>| {
        let mut conn = conn.clone();
        async move {
            let () = redis::cmd("SET")
                .arg(&key)
                .arg(bytes)
                .arg("PX")
                .arg(600_000)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };

    // The fast path: PXAT and header agree, to the millisecond.
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    store.create(&s).await.unwrap();
    s.set_expires_at_millis(now_millis() + 7_200_123);
    assert_eq!(
        store.update(&s, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    );
    let (header, pxat, _) = stored_expiry(&mut conn, key_of(&s)).await;
    assert_eq!(
        (header, pxat),
        (s.expires_at_millis(), s.expires_at_millis())
    );

    // A later stored expiry (a touch meanwhile) is kept, in both.
    let later = now_millis() + 9_000_000;
    let later_at = server_session::time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(later) * 1_000_000,
    )
    .unwrap();
    assert!(store.touch(&s.id(), later_at).await.unwrap());
    s.set_expires_at_millis(now_millis() + 3_600_000);
    assert_eq!(
        store.update(&s, 2).await.unwrap(),
        UpdateOutcome::Updated { version: 3 }
    );
    assert_eq!(stored_expiry(&mut conn, key_of(&s)).await.0, later);
    assert_eq!(stored_expiry(&mut conn, key_of(&s)).await.1, later);

    // Version 0 in the header, and expected 0: not a record, left as is.
    let zero = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    let mut bytes = codec::encode(&zero, 1).unwrap();
    bytes[codec::VERSION_RANGE].fill(0);
    write(&mut conn, key_of(&zero), bytes.clone()).await;
    let refused = store.update(&zero, 0).await;
    assert!(
        matches!(refused, Err(server_session::Error::Decode { .. })),
        "{refused:?}"
    );
    assert_eq!(stored_expiry(&mut conn, key_of(&zero)).await.2, bytes);

    // An unreadable format byte with the expected version: refused, untouched.
    let odd = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    let mut bytes = codec::encode(&odd, 1).unwrap();
    bytes[0] = 9;
    write(&mut conn, key_of(&odd), bytes.clone()).await;
    let refused = store.update(&odd, 1).await;
    assert!(
        matches!(refused, Err(server_session::Error::Decode { .. })),
        "{refused:?}"
    );
    let kept: Vec<u8> = redis::cmd("GET")
        .arg(key_of(&odd))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, bytes);

    // A header expired a second ago under a key that lives on: gone.
    let mut stale = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    stale.set_expires_at_millis(now_millis() - 1_000);
    write(&mut conn, key_of(&stale), codec::encode(&stale, 1).unwrap()).await;
    stale.set_expires_at_millis(now_millis() + 3_600_000);
    assert_eq!(store.update(&stale, 1).await.unwrap(), UpdateOutcome::Gone);

    // Due within the minute, but live: saved (the full script, by `TIME`).
    let mut due = Session::new(SessionToken::generate().id(), Duration::from_secs(30));
    store.create(&due).await.unwrap();
    due.set_expires_at_millis(now_millis() + 3_600_000);
    assert_eq!(
        store.update(&due, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    );
    assert_eq!(
        stored_expiry(&mut conn, key_of(&due)).await.1,
        due.expires_at_millis()
    );

    // Bound before, unbound after: out of the user's index.
    let mut was_bound = bound("fast-path-user", Duration::from_secs(3600));
    store.create(&was_bound).await.unwrap();
    assert_eq!(store.sessions_of("fast-path-user").await.unwrap().len(), 1);
    was_bound.set_user(None);
    assert_eq!(
        store.update(&was_bound, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    );
    assert!(store
        .sessions_of("fast-path-user")
        .await
        .unwrap()
        .is_empty());
    assert!(index_members(&mut conn, &prefix).await.is_empty());

    // The wrong version: a conflict, nothing written.
    let before = stored_expiry(&mut conn, key_of(&s)).await.2;
    assert_eq!(store.update(&s, 7).await.unwrap(), UpdateOutcome::Conflict);
    assert_eq!(stored_expiry(&mut conn, key_of(&s)).await.2, before);

    store.clear().await.ok();
    let _: i64 = redis::cmd("DEL")
        .arg(key_of(&zero))
        .arg(key_of(&odd))
        .arg(key_of(&stale))
        .query_async(&mut conn)
        .await
        .unwrap();
}

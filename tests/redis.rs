//! The Redis store against the real server (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`), each case under its own random prefix.
#![cfg(feature = "redis")]

mod common;

use common::redis::store_with_prefix;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use server_session::async_trait;
use server_session::conformance::StoreFactory;
use server_session::redis::deadpool_redis::redis;
use server_session::{
    codec, conformance_tests, from_unix_millis, now_millis, DeleteOutcome, Error, RedisConfig,
    RedisStore, Session, SessionInterface, SessionToken, UpdateOutcome, UserBinding, MAX_VERSION,
};

/// Makes Redis stores, remembering each one's prefix (by the address of
/// its `Arc`) so that `make_nested` can nest a store inside one it made.
#[derive(Default)]
struct Redis {
    prefixes: Mutex<Vec<(usize, String)>>,
}

impl Redis {
    fn remember(&self, store: RedisStore) -> Arc<dyn SessionInterface> {
        let prefix = store.prefix().to_owned();
        let store: Arc<dyn SessionInterface> = Arc::new(store);
        if let Ok(mut prefixes) = self.prefixes.lock() {
            prefixes.push((address(&store), prefix));
        }
        store
    }
}

fn address(store: &Arc<dyn SessionInterface>) -> usize {
    Arc::as_ptr(store) as *const () as usize
}

#[async_trait]
impl StoreFactory for Redis {
    async fn make(&self) -> Option<Arc<dyn SessionInterface>> {
        let store = store_with_prefix(common::unique("test:") + ":").await?;
        Some(self.remember(store))
    }

    /// `outer`'s prefix followed by `admin:`.
    async fn make_nested(
        &self,
        outer: &Arc<dyn SessionInterface>,
    ) -> Option<Arc<dyn SessionInterface>> {
        let prefix = self
            .prefixes
            .lock()
            .ok()?
            .iter()
            .find(|(at, _)| *at == address(outer))
            .map(|(_, prefix)| prefix.clone())?;
        let store = store_with_prefix(prefix + "admin:").await?;
        Some(self.remember(store))
    }
}

conformance_tests!(Redis::default());

async fn raw_connection() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(common::redis_url()).expect("REDIS_URL parses");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("raw redis connection")
}

#[tokio::test]
async fn clear_and_len_leave_foreign_keys_alone() {
    let prefix = common::unique("test:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut raw = raw_connection().await;
    let trimmed = prefix.trim_end_matches(':').to_owned();
    let foreign = [
        trimmed.clone(),            // the prefix without its colon
        format!("{trimmed}x:1"),    // a longer prefix
        format!("other:{prefix}1"), // the prefix inside another key
        common::unique("foreign:"),
    ];
    for key in &foreign {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("keep me")
            .arg("EX")
            .arg(60)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    for _ in 0..2500 {
        store
            .create(&Session::new(
                SessionToken::generate().id(),
                Duration::from_secs(60),
            ))
            .await
            .unwrap();
    }
    assert_eq!(store.len().await.unwrap(), 2500);
    store.clear().await.unwrap();
    assert_eq!(store.len().await.unwrap(), 0);
    for key in &foreign {
        let value: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(
            value.as_deref(),
            Some("keep me"),
            "clear removed foreign key {key}"
        );
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn glob_characters_in_the_prefix_match_only_themselves() {
    let base = common::unique("test:");
    let Some(store) = store_with_prefix(format!("{base}:*:")).await else {
        return;
    };
    let mut raw = raw_connection().await;
    let other = format!("{base}:x:1");
    let _: () = redis::cmd("SET")
        .arg(&other)
        .arg("keep")
        .arg("EX")
        .arg(60)
        .query_async(&mut raw)
        .await
        .unwrap();
    store.clear().await.unwrap();
    let value: Option<String> = redis::cmd("GET")
        .arg(&other)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("keep"));
    let _: () = redis::cmd("DEL")
        .arg(&other)
        .query_async(&mut raw)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_garbage_record_is_a_decode_error_not_a_panic() {
    let prefix = common::unique("test:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut raw = raw_connection().await;
    let id = SessionToken::generate().id();
    let key = format!("{prefix}{id}");
    for garbage in [&b"garbage"[..], &[][..], &[1u8; 25][..], &[9u8; 40][..]] {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(garbage)
            .arg("EX")
            .arg(60)
            .query_async(&mut raw)
            .await
            .unwrap();
        match store.get(&id).await {
            Err(Error::Decode { key: named, .. }) => assert_eq!(named, key),
            other => panic!("garbage {garbage:?} gave {other:?}"),
        }
    }
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("short")
        .arg("EX")
        .arg(60)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(matches!(
        store
            .touch(
                &id,
                server_session::from_unix_millis(server_session::now_millis() + 60_000)
            )
            .await,
        Err(Error::Decode { .. })
    ));
    store.clear().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_a_typed_error_naming_the_address() {
    let started = Instant::now();
    let result = RedisStore::connect_with(RedisConfig {
        connect_timeout: Duration::from_millis(500),
        operation_timeout: Duration::from_millis(500),
        ..RedisConfig::new("redis://127.0.0.1:1")
    })
    .await;
    // No connection could be had, so nothing was sent: Unavailable (which
    // the manager knows wrote nothing), not Backend.
    match result {
        Err(Error::Unavailable { store, context, .. }) => {
            assert_eq!(store, "redis");
            assert!(context.contains("127.0.0.1:1"), "{context}");
        }
        other => panic!("expected an unavailable error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn sessions(n: usize, ttl: Duration) -> Vec<Session> {
    (0..n)
        .map(|_| Session::new(SessionToken::generate().id(), ttl))
        .collect()
}

async fn create_all(store: &RedisStore, sessions: &[Session]) {
    for s in sessions {
        store.create(s).await.unwrap();
    }
}

async fn all_present(store: &RedisStore, sessions: &[Session]) -> bool {
    for s in sessions {
        if store.get(&s.id()).await.unwrap().is_none() {
            return false;
        }
    }
    true
}

/// A prefix that starts with another store's prefix is another namespace,
/// whether it goes on with `admin:` or with hex digits that look like the
/// start of a session id.
#[tokio::test]
async fn nested_prefixes_are_foreign_namespaces() {
    let outer_prefix = common::unique("test:") + ":";
    let Some(outer) = store_with_prefix(outer_prefix.clone()).await else {
        return;
    };
    let Some(admin) = store_with_prefix(format!("{outer_prefix}admin:")).await else {
        return;
    };
    let Some(hex) = store_with_prefix(format!("{outer_prefix}ab")).await else {
        return;
    };
    let ttl = Duration::from_secs(60);
    let (o, a, h) = (sessions(3, ttl), sessions(2, ttl), sessions(4, ttl));
    create_all(&outer, &o).await;
    create_all(&admin, &a).await;
    create_all(&hex, &h).await;

    assert_eq!(outer.len().await.unwrap(), 3, "outer counts only its own");
    assert_eq!(admin.len().await.unwrap(), 2);
    assert_eq!(hex.len().await.unwrap(), 4);

    outer.clear().await.unwrap();
    assert_eq!(outer.len().await.unwrap(), 0);
    assert!(all_present(&admin, &a).await, "outer clear took admin's");
    assert!(
        all_present(&hex, &h).await,
        "outer clear took the hex store's"
    );

    create_all(&outer, &o).await;
    admin.clear().await.unwrap();
    hex.clear().await.unwrap();
    assert_eq!(admin.len().await.unwrap(), 0);
    assert_eq!(hex.len().await.unwrap(), 0);
    assert!(
        all_present(&outer, &o).await,
        "inner clear took the outer's"
    );
    assert_eq!(outer.len().await.unwrap(), 3);
    outer.clear().await.unwrap();
}

async fn raw_get(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(raw).await.unwrap()
}

async fn raw_pttl(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(raw).await.unwrap()
}

/// A record whose header says it expired, while its key still has a TTL
/// (written by someone else, or judged by another clock), is expired for
/// every operation: nothing may revive it.
#[tokio::test]
async fn a_record_expired_by_its_header_is_gone_for_every_operation() {
    let prefix = common::unique("test:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut raw = raw_connection().await;
    let mut session = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    session.insert("user", "ada").unwrap();
    let key = format!("{prefix}{}", session.id().to_hex());
    let mut bytes = codec::encode(&session, 1).unwrap();
    codec::patch_expires_at(&mut bytes, now_millis() - 10_000, &key).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&bytes)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut raw)
        .await
        .unwrap();

    assert!(store.get(&session.id()).await.unwrap().is_none(), "get");
    assert_eq!(
        store.update(&session, 1).await.unwrap(),
        UpdateOutcome::Gone,
        "update revived an expired record"
    );
    assert_eq!(raw_get(&mut raw, &key).await, Some(bytes.clone()));
    let later = from_unix_millis(now_millis() + 120_000);
    assert!(!store.touch(&session.id(), later).await.unwrap(), "touch");
    assert_eq!(raw_get(&mut raw, &key).await, Some(bytes.clone()));
    assert_eq!(
        store.delete_if(&session.id(), 1).await.unwrap(),
        DeleteOutcome::Gone
    );
    assert_eq!(
        store.len().await.unwrap(),
        0,
        "len counted an expired record"
    );
    store.clear().await.unwrap();
}

/// `update` and `touch` with an earlier expiry than the stored one keep
/// the stored one, in the record and in the key's TTL.
#[tokio::test]
async fn update_and_touch_never_move_expiry_backwards() {
    let prefix = common::unique("test:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut raw = raw_connection().await;
    let long = Session::new(SessionToken::generate().id(), Duration::from_secs(3600));
    let key = format!("{prefix}{}", long.id().to_hex());
    store.create(&long).await.unwrap();

    let mut short = Session::from_parts(
        long.id(),
        long.data().clone(),
        long.flash().clone(),
        long.created_at_millis(),
        now_millis() + 60_000,
        long.version(),
    );
    short.insert("n", &1).unwrap();
    assert_eq!(
        store.update(&short, long.version()).await.unwrap(),
        UpdateOutcome::Updated {
            version: long.version() + 1
        }
    );
    let stored = store.get(&long.id()).await.unwrap().unwrap();
    assert_eq!(stored.expires_at_millis(), long.expires_at_millis());
    assert_eq!(stored.get::<i32>("n").unwrap(), Some(1), "data saved");
    assert!(raw_pttl(&mut raw, &key).await > 3_000_000, "TTL cut short");

    let soon = from_unix_millis(now_millis() + 30_000);
    assert!(store.touch(&long.id(), soon).await.unwrap(), "live");
    let stored = store.get(&long.id()).await.unwrap().unwrap();
    assert_eq!(stored.expires_at_millis(), long.expires_at_millis());
    assert!(raw_pttl(&mut raw, &key).await > 3_000_000, "TTL cut short");

    // Later still does move, in both places.
    let later_ms = long.expires_at_millis() + 3_600_000;
    assert!(store
        .touch(&long.id(), from_unix_millis(later_ms))
        .await
        .unwrap());
    let stored = store.get(&long.id()).await.unwrap().unwrap();
    assert_eq!(stored.expires_at_millis(), later_ms);
    assert!(raw_pttl(&mut raw, &key).await > 6_000_000);
    store.clear().await.unwrap();
}

/// Versions stay in `1..=MAX_VERSION`: out-of-range versions are refused,
/// and `update` at the top errors instead of overflowing or wrapping.
#[tokio::test]
async fn versions_stay_in_range() {
    let prefix = common::unique("test:") + ":";
    let Some(store) = store_with_prefix(prefix).await else {
        return;
    };
    let fresh = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    let with_version = |version: u64| {
        Session::from_parts(
            fresh.id(),
            fresh.data().clone(),
            fresh.flash().clone(),
            fresh.created_at_millis(),
            fresh.expires_at_millis(),
            version,
        )
    };
    for bad in [0, MAX_VERSION + 1, u64::MAX] {
        assert!(
            matches!(
                store.set(&with_version(bad)).await,
                Err(Error::VersionOutOfRange { .. })
            ),
            "set {bad}"
        );
        assert!(
            matches!(
                store.create(&with_version(bad)).await,
                Err(Error::VersionOutOfRange { .. })
            ),
            "create {bad}"
        );
    }
    assert!(store.get(&fresh.id()).await.unwrap().is_none());

    store.set(&with_version(MAX_VERSION)).await.unwrap();
    for expected in [MAX_VERSION, u64::MAX] {
        assert!(
            matches!(
                store.update(&with_version(MAX_VERSION), expected).await,
                Err(Error::VersionOutOfRange { .. })
            ),
            "update from {expected}"
        );
    }
    let stored = store.get(&fresh.id()).await.unwrap().unwrap();
    assert_eq!(stored.version(), MAX_VERSION);
    assert_eq!(
        store.delete_if(&fresh.id(), MAX_VERSION - 1).await.unwrap(),
        DeleteOutcome::Conflict
    );
    assert_eq!(
        store.delete_if(&fresh.id(), MAX_VERSION).await.unwrap(),
        DeleteOutcome::Deleted
    );
    assert_eq!(
        store.delete_if(&fresh.id(), MAX_VERSION).await.unwrap(),
        DeleteOutcome::Gone
    );
    store.clear().await.unwrap();
}

/// `clear` walks the whole namespace even while another client deletes
/// keys under it: a batch that finds fewer keys never ends the walk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_finishes_while_keys_vanish() {
    let prefix = common::unique("test:") + ":";
    let Some(store) = store_with_prefix(prefix).await else {
        return;
    };
    let all = sessions(3000, Duration::from_secs(60));
    create_all(&store, &all).await;
    let deleter = {
        let store = store.clone();
        let ids: Vec<_> = all.iter().rev().step_by(2).map(Session::id).collect();
        tokio::spawn(async move {
            for id in ids {
                store.delete(&id).await?;
            }
            Ok::<_, Error>(())
        })
    };
    store.clear().await.unwrap();
    deleter.await.unwrap().unwrap();
    assert_eq!(store.len().await.unwrap(), 0);
    assert!(!all_present(&store, &all[..1]).await);
}

/// A session bound to `user`, live for `ttl`.
fn bound(user: &str, ttl: Duration) -> Session {
    let mut s = Session::new(SessionToken::generate().id(), ttl);
    s.set_user(Some(
        UserBinding::new(user, std::collections::BTreeMap::new()).unwrap(),
    ));
    s
}

/// The key of `user`'s index in the namespace `prefix`, hashed by Redis
/// itself (`redis.sha1hex`, as the scripts do).
async fn user_set(raw: &mut redis::aio::MultiplexedConnection, prefix: &str, user: &str) -> String {
    let hash: String = redis::cmd("EVAL")
        .arg("return redis.sha1hex(ARGV[1])")
        .arg(0)
        .arg(user)
        .query_async(raw)
        .await
        .unwrap();
    format!("{prefix}user:{hash}")
}

async fn raw_score(
    raw: &mut redis::aio::MultiplexedConnection,
    set: &str,
    id: &str,
) -> Option<i64> {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(set)
        .arg(id)
        .query_async(raw)
        .await
        .unwrap();
    score.map(|s| s as i64)
}

async fn raw_exists(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(raw)
        .await
        .unwrap()
}

async fn raw_pexpiretime(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(raw)
        .await
        .unwrap()
}

/// The keys under `prefix` that are not session records.
async fn non_session_keys(
    raw: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(raw)
        .await
        .unwrap();
    keys.into_iter()
        .filter(|k| k.len() != prefix.len() + 64)
        .collect()
}

/// The last millisecond of the index window (2^17 ms) holding `expires_at`:
/// the score a bound record's entry gets, covering its expiry.
fn window_end(expires_at: i64) -> i64 {
    (expires_at / 131_072 + 1) * 131_072 - 1
}

/// The index is kept by the same script as the write: each bound record
/// is in its user's set, scored by its expiry's window, the set living at least as
/// long; a rebinding moves it, unbinding and deleting take it out, and
/// sessions bound to no user never make an index key.
#[tokio::test]
async fn the_user_index_follows_every_write_in_the_same_step() {
    let prefix = common::unique("test:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut raw = raw_connection().await;
    let (ada, bob) = (
        user_set(&mut raw, &prefix, "ada").await,
        user_set(&mut raw, &prefix, "bob").await,
    );

    let plain = sessions(1, Duration::from_secs(60)).remove(0);
    store.create(&plain).await.unwrap();
    store.update(&plain, 1).await.unwrap();
    store
        .touch(&plain.id(), from_unix_millis(now_millis() + 120_000))
        .await
        .unwrap();
    store.set(&plain).await.unwrap();
    assert!(
        non_session_keys(&mut raw, &prefix).await.is_empty(),
        "an unbound session made index keys"
    );

    let mut s = bound("ada", Duration::from_secs(60));
    let id = s.id().to_hex();
    store.create(&s).await.unwrap();
    assert_eq!(
        raw_score(&mut raw, &ada, &id).await,
        Some(window_end(s.expires_at_millis()))
    );
    assert!(raw_pexpiretime(&mut raw, &ada).await >= s.expires_at_millis());

    let later = now_millis() + 600_000;
    assert!(store.touch(&s.id(), from_unix_millis(later)).await.unwrap());
    assert_eq!(
        raw_score(&mut raw, &ada, &id).await,
        Some(window_end(later))
    );
    assert!(raw_pexpiretime(&mut raw, &ada).await >= later);

    s.set_user(Some(
        UserBinding::new("bob", std::collections::BTreeMap::new()).unwrap(),
    ));
    assert!(matches!(
        store.update(&s, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    ));
    assert!(!raw_exists(&mut raw, &ada).await, "ada still lists it");
    // The stored expiry (the touch's, later than the session's) is kept.
    assert_eq!(
        raw_score(&mut raw, &bob, &id).await,
        Some(window_end(later))
    );
    assert!(raw_pexpiretime(&mut raw, &bob).await >= later);

    s.set_user(None);
    store.update(&s, 2).await.unwrap();
    assert!(
        !raw_exists(&mut raw, &bob).await,
        "unbinding left it listed"
    );

    let (a, b, c) = (
        bound("ada", Duration::from_secs(60)),
        bound("ada", Duration::from_secs(60)),
        bound("ada", Duration::from_secs(60)),
    );
    create_all(&store, &[a.clone(), b.clone(), c.clone()]).await;
    store.delete(&a.id()).await.unwrap();
    assert_eq!(
        store.delete_if(&b.id(), 1).await.unwrap(),
        DeleteOutcome::Deleted
    );
    let mut c_unbound = c.clone();
    c_unbound.set_user(None);
    store.set(&c_unbound).await.unwrap();
    assert!(
        !raw_exists(&mut raw, &ada).await,
        "delete, delete_if or set left entries"
    );
    store.clear().await.unwrap();
}

/// A busy session's saves and touches move its expiry a little each time:
/// within one index window they leave its entry alone (no index write on
/// the hot path), and it still covers the record's expiry.
#[tokio::test]
async fn saves_within_one_window_leave_the_index_entry_alone() {
    let prefix = common::unique("test:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut raw = raw_connection().await;
    let ada = user_set(&mut raw, &prefix, "ada").await;
    // Expiring at the start of a window, so the saves below stay inside it.
    let start = window_end(now_millis() + 600_000) + 1;
    let mut s = bound("ada", Duration::from_secs(60));
    s.set_expires_at_millis(start);
    let id = s.id().to_hex();
    store.create(&s).await.unwrap();
    let created = raw_score(&mut raw, &ada, &id).await;
    assert_eq!(created, Some(window_end(start)));
    // Make the entry's score recognisably stale: a save that rewrote it
    // would put it back.
    redis::cmd("ZADD")
        .arg(&ada)
        .arg(window_end(start) + 5)
        .arg(&id)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    let mut version = 1;
    for step in 1..=5 {
        s.set_expires_at_millis(start + step * 1000);
        version = match store.update(&s, version).await.unwrap() {
            UpdateOutcome::Updated { version } => version,
            other => panic!("{other:?}"),
        };
        assert!(store
            .touch(&s.id(), from_unix_millis(start + step * 1000 + 500))
            .await
            .unwrap());
    }
    assert_eq!(
        raw_score(&mut raw, &ada, &id).await,
        Some(window_end(start) + 5),
        "a save inside the window wrote the index"
    );
    // Past the window: the entry moves to cover the new expiry.
    s.set_expires_at_millis(start + 200_000);
    store.update(&s, version).await.unwrap();
    assert_eq!(
        raw_score(&mut raw, &ada, &id).await,
        Some(window_end(start + 200_000))
    );
    store.clear().await.unwrap();
}

/// `flush` drops the entries of expired records (the set itself lives as
/// long as its latest record); `clear` drops this namespace's index keys
/// and no other's, not even those of a namespace nested as `<prefix>user:`,
/// whose session keys look like `<prefix>user:<hex>`.
#[tokio::test]
async fn flush_and_clear_keep_the_index_tidy_and_apart() {
    let prefix = common::unique("test:") + ":";
    let Some(outer) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let Some(nested) = store_with_prefix(format!("{prefix}user:")).await else {
        return;
    };
    let mut raw = raw_connection().await;
    let ada = user_set(&mut raw, &prefix, "ada").await;

    let short = bound("ada", Duration::from_millis(200));
    let long = bound("ada", Duration::from_secs(60));
    create_all(&outer, &[short.clone(), long.clone()]).await;
    let theirs = bound("ada", Duration::from_secs(60));
    nested.create(&theirs).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(raw_score(&mut raw, &ada, &short.id().to_hex())
        .await
        .is_some());
    assert_eq!(outer.flush().await.unwrap(), 0);
    assert!(
        raw_score(&mut raw, &ada, &short.id().to_hex())
            .await
            .is_none(),
        "flush left an expired session's entry"
    );
    assert!(raw_score(&mut raw, &ada, &long.id().to_hex())
        .await
        .is_some());

    assert_eq!(outer.len().await.unwrap(), 1, "index keys were counted");
    assert_eq!(nested.len().await.unwrap(), 1);
    nested.clear().await.unwrap();
    assert!(
        raw_exists(&mut raw, &ada).await,
        "a nested clear took our index"
    );
    assert_eq!(outer.sessions_of("ada").await.unwrap().len(), 1);

    nested.create(&theirs).await.unwrap();
    outer.clear().await.unwrap();
    // Left: the nested namespace's record and index key, no index key of
    // ours (`<prefix>user:` and 40 hex digits).
    let left = non_session_keys(&mut raw, &prefix).await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .all(|k| k.starts_with(&format!("{prefix}user:")) && k.len() != prefix.len() + 45),
        "clear left index keys of its own: {left:?}"
    );
    assert_eq!(
        nested.sessions_of("ada").await.unwrap().len(),
        1,
        "the outer clear took the nested namespace's index"
    );
    assert_eq!(nested.len().await.unwrap(), 1);
    nested.clear().await.unwrap();
    assert!(non_session_keys(&mut raw, &prefix).await.is_empty());
}

/// `SCAN` hands out a key again when Redis resizes its table during the
/// walk, as it shrinks it once many keys are gone at once (many sessions
/// expiring together, say): `len` counts each session once all the same.
/// Other keys of the database (another prefix's, deleted here in bulk)
/// make the table grow and then shrink under the walk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn len_counts_each_session_once_while_the_table_shrinks() {
    let prefix = common::unique("test:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let live = sessions(3000, Duration::from_secs(60));
    create_all(&store, &live).await;
    let mut raw = raw_connection().await;
    let others = format!("{prefix}others:");
    for round in 0..6 {
        for chunk in 0..20 {
            let mut fill = redis::pipe();
            for i in 0..10_000 {
                fill.cmd("SET")
                    .arg(format!("{others}{round}:{chunk}:{i}"))
                    .arg(1)
                    .ignore();
            }
            fill.query_async::<()>(&mut raw).await.unwrap();
        }
        let drop_all = {
            let mut raw = raw.clone();
            let others = others.clone();
            tokio::spawn(async move {
                for chunk in 0..20 {
                    let mut unlink = redis::cmd("UNLINK");
                    for i in 0..10_000 {
                        unlink.arg(format!("{others}{round}:{chunk}:{i}"));
                    }
                    unlink.query_async::<()>(&mut raw).await.unwrap();
                }
            })
        };
        let mut counted = Vec::new();
        while !drop_all.is_finished() || counted.len() < 3 {
            counted.push(store.len().await.unwrap());
        }
        drop_all.await.unwrap();
        // Let the server shrink its table while walks go on.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            counted.push(store.len().await.unwrap());
        }
        let wrong: Vec<u64> = counted.into_iter().filter(|&n| n != 3000).collect();
        assert!(
            wrong.is_empty(),
            "round {round}: len() answered {wrong:?}, not 3000"
        );
    }
    store.clear().await.unwrap();
}

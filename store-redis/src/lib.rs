//! # session-store-redis
//!
//! [`SessionInterface`](session_store::SessionInterface) stores on Redis: [`RedisStore`] on one server,
//! through a `deadpool-redis` pool, and [`RedisClusterStore`] on a Redis
//! Cluster, through the redis crate's cluster client. Both run the same
//! code for every operation on a session (see [Redis Cluster](#redis-cluster)
//! for what differs).
//!
//! Each session is one string key, `<prefix><id>` (the id as exactly 64
//! lowercase hex digits), holding the core's encoded record and expiring at
//! the session's `expires_at` (absolute `PXAT`), so Redis itself drops
//! expired sessions and [`flush`](session_store::SessionInterface::flush) returns 0 (it only
//! tidies the user index, below).
//!
//! **Clock.** Expiry is judged by Redis's clock (`TIME`) and the expiry in
//! the record's header, never by the app server's clock, so app servers
//! whose clocks disagree agree on what has expired. The key's TTL and the
//! header agree for every record this store writes; a record whose header
//! has expired while its key lives on (written by someone else) counts as
//! expired everywhere: `get` returns `None`, `update`/`delete_if` answer
//! `Gone`, `touch` `false`, `len` does not count it, and Redis drops it at
//! its TTL. (`get` is a plain `GET`, which Redis answers only for keys
//! whose TTL has not passed by its clock, and `update`'s script takes a
//! record whose header expires more than a minute after the app's clock for
//! live; each reads `TIME` only for a record due within that minute. So for
//! such a foreign record alone, an app clock more than a minute behind
//! Redis's could still see it, or save over it.)
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
//! **Sessions by user.** A session bound to a user (record format 3, its
//! user key right after the header) is also listed in that user's sorted
//! set, `<prefix>user:<SHA-1 of the user key, 40 hex digits>`: member the
//! id, score the record's expiry, and the set lives at least as long as
//! its latest session. On one server the scripts keep it in the same step
//! as the write (but `delete`, a plain `GETDEL` that takes a bound record's
//! entry out after: stale meanwhile, or until the first `flush` after the
//! session's expiry if that step is lost, and checked against the record
//! by every read): they read the old record's user key from its stored bytes
//! (so a rebinding moves the id between sets) and the new one's from the
//! record they write. A session bound to no user costs a format-byte check.
//! The key is hashed (`redis.sha1hex`, the one hash Redis's Lua offers, so
//! a script can name the old user's set): no user key reaches a key or a
//! glob, and since every read checks the record's own user key, keys whose
//! hashes collided would only share a set. Index keys are neither session
//! keys of any namespace nor another namespace's index keys (see
//! `user_set_key`), so `len` never counts them and `clear` of a nested
//! namespace never reaches them.
//!
//! Needs Redis 7.0 or later (`PEXPIREAT ... GT`).
//!
//! | operation | Redis | round trips |
//! | --- | --- | --- |
//! | `exists`, `has` | `EXISTS` | 1 |
//! | `get`, `is_valid` | `GET` (Redis answers only keys live by its clock, and each key expires when its header says); a record due within a minute by the app's clock is read again with `TIME`, pipelined (WRONGTYPE taken as an answer) | 1 (2 near expiry) |
//! | `set` | Lua: `SET PXAT`, and the user index | 1 |
//! | `create` | `SET NX PXAT`; Lua for a bound session (and its index entry) | 1 |
//! | `update` | Lua (`EVALSHA`): live (by `TIME` for a record due within a minute by the app's clock; Redis has dropped every key of ours past its `PXAT`), compare the header's version, `SET PXAT` the later expiry, and the user index | 1 |
//! | `delete_if` | Lua (`EVALSHA`): live by `TIME`, compare the header's version, `DEL`, and the user index | 1 |
//! | `touch` | Lua (`EVALSHA`): live by `TIME`, if later patch the header (`SETRANGE`) and `PEXPIREAT` (and a bound session's index score), else `PEXPIREAT GT` the header's expiry | 1 |
//! | `delete` | `GETDEL`; a bound record's index entry is then removed by a script, unless a `set` of that session bound to the same user landed in between | 1 (2 if bound) |
//! | `sessions_of` | Lua: drop the user's expired entries, answer the live records bound to exactly that user | 1 |
//! | `revoke_user` | Lua: delete the listed records bound to exactly that user (their own key checked), but the one kept | 1 |
//! | `flush` | `SCAN MATCH <prefix>user:<40 hex digits>` + Lua dropping expired entries per batch (Redis expires the records itself) | 2 per 1000 users |
//! | `clear` | `SCAN MATCH <prefix><64 hex digits>` + `UNLINK` per batch, then the user sets: drop entries whose record is gone | 2 per 1000 keys |
//! | `len` | `SCAN MATCH <prefix><64 hex digits>` + Lua count of live headers per batch, each key counted once (20–40 bytes of memory a key while it runs) | 2 per 1000 keys |
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
//!
//! # Redis Cluster
//!
//! [`RedisClusterStore`] stores each session exactly as [`RedisStore`]
//! does: one key, `<prefix><id>`, so every operation on a session is one
//! request to the master of that key's slot, with the same scripts, round
//! trips and guarantees as above (each judged by the clock of the master
//! that holds the key). Sessions spread over the masters by their ids; a
//! prefix with a hash tag (`{...}`), which would pin them all to one slot,
//! is refused.
//!
//! | operation | Redis Cluster | round trips |
//! | --- | --- | --- |
//! | per session (`get` ... `touch`) | as above, on the key's master | 1 |
//! | with `min_replica_acks` = n | the write, then `WAIT n timeout` on the same connection, pipelined | 1, plus the replicas' acknowledgement |
//! | `clear` | `CLUSTER SLOTS`, then per master: `SCAN` + a pipeline of single-key `UNLINK`s per batch | 1 + 2 per 1000 keys |
//! | `len` | `CLUSTER SLOTS`, then per master: `SCAN` + a pipeline of the count script, one key per call, per batch, each key counted once across masters (20–40 bytes of memory a key while it runs) | 1 + 2 per 1000 keys |
//!
//! **Namespace.** `clear` and `len` visit every master that serves slots
//! (replicas hold copies), one after another, with the same exact-prefix
//! `SCAN` pattern and check as the single-node store: other stores' keys,
//! on any node, are never touched.
//!
//! **Sessions by user.** A user's set hashes to another slot than the
//! user's sessions, so no script can write both; and a session is found by
//! its id alone, so its key cannot carry its user's hash tag. The index is
//! therefore a superset of the records: a write that binds a session to a
//! user first lists it in the user's set (`ZADD GT`, the score being the
//! latest expiry any write announced, with the replica wait), then writes
//! the record, whose own user key is the truth, checked on every read. An
//! `update` asks for the entry only when the record changes user (its
//! script compares the stored user key and, if so, answers the expiry the
//! entry needs, writing nothing), so a save that keeps the binding costs
//! no extra round trip. An entry whose record is gone or bound elsewhere is
//! dropped only once its score has passed by the set master's clock: until
//! then the write that added it may still land. Entries do not follow a
//! `touch`; a reader finds the record live and keeps the entry, and `flush`
//! raises its score.
//!
//! A deleter takes its entry out after deleting the record, so a write
//! binding the same id (`create`, `set`, a rebinding `update`) racing it
//! could have its entry removed after listing it, and its record written
//! after the delete: live, unlisted, and out of `revoke_user`'s reach.
//! Both halves close that: those writes list the record again after
//! writing it, and every deleter (`delete`, `delete_if`, `revoke_user`,
//! `clear`) looks at each record again after taking its entry out,
//! listing it back if it is there, bound to that user (conformance case
//! `user_index_set_racing_deletes`; `tests/review_cluster_race.rs` forces
//! the rebinding and `clear` orders with `CLIENT PAUSE`).
//!
//! | operation | Redis Cluster, user index | round trips |
//! | --- | --- | --- |
//! | `create`, `set` of a bound session | `ZADD GT` on the user's master, the write, `ZADD GT` again | 3 |
//! | `update` changing the binding | the script (answers the expiry), `ZADD GT`, the script again, `ZADD GT` again | 4 |
//! | `delete`, `delete_if` of a bound session | the script (answers the user key), `ZREM`, then `GET` of the record | 3 |
//! | `sessions_of` | `ZRANGE`, then `GET`+`TIME` per record on its master, side by side, then dropping stale entries | 3 |
//! | `revoke_user` | `ZRANGE`, then the checking delete script per record, side by side, then `ZREM`, a `GET` per revoked record (side by side) and dropping stale entries | 5 |
//! | `flush` | per master: `SCAN` the user sets, per set the due entries, their records, and drop or raise | 1 + 2 per 1000 sets + 3 per set with due entries |
//! | `clear` | per master: `SCAN` + the delete script per key (pipelined), `ZREM` from the sets and a `GET` per bound record, then as `flush` | as `flush`, + 2 per 1000 keys + 1 per bound record |
//!
//! **Failover.** The cluster client is told not to retry by itself: it
//! would send again a request whose connection dropped after it left. The
//! store tries again, until the operation timeout, only requests the
//! cluster says it did not run (`MOVED`, `ASK`, `READONLY`,
//! `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `LOADING`, no connection to
//! the slot's node), so while a master is down its slots answer
//! [`Error::Unavailable`] (nothing was
//! done) until its replica is promoted, and a request cut off in flight
//! answers [`Error::Backend`] (it may have
//! been done), which the `SessionManager` resolves by re-reading.
//! Operations on a slot being migrated wait (trying again) for it to
//! settle.
//!
//! **Replica wait.** Redis replicates asynchronously: a master that dies
//! right after acknowledging a write can lose it when its replica takes
//! over. With [`RedisClusterConfig::min_replica_acks`] = n, every write
//! (`set`, `create`, `update`, `delete`, `delete_if`, `touch`) is followed
//! by `WAIT n timeout` on the same connection and acknowledged only once n
//! replicas have it. It then survives the loss of its master whenever the
//! replica promoted in its place is one of those n (with one replica per
//! master and n = 1, always; with more, Redis lets the most up-to-date
//! replica try first). It costs each write a round trip from the master
//! to its replicas, and a `WAIT` holds up the requests queued behind it on
//! that connection to that master. A write that fewer replicas acknowledge
//! within [`replica_ack_timeout`](RedisClusterConfig::replica_ack_timeout)
//! (a replica down or behind, or a promoted replica not yet replaced) is
//! [`Error::Backend`]: it applied on the
//! master, so it is reported as possibly applied, never as not done. A
//! `SessionManager` then re-reads the record, finds the write and
//! acknowledges it: while a master lacks its replicas, saves through the
//! manager keep working at the durability of no wait, each after the
//! timeout. `clear` does not wait.
//!
//! ```no_run
//! # async fn demo() -> session_store::Result<()> {
//! use std::time::Duration;
//! use session_store_redis::{RedisClusterConfig, RedisClusterStore};
//! let store =
//!     RedisClusterStore::connect("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").await?;
//! let durable = RedisClusterStore::connect_with(RedisClusterConfig {
//!     prefix: "myapp:session:".into(),
//!     min_replica_acks: 1,
//!     replica_ack_timeout: Duration::from_millis(100),
//!     ..RedisClusterConfig::from_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")?
//! })
//! .await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod cluster;
mod keyspace;
mod scripts;
mod single;

use session_store::Error;

pub use cluster::{RedisClusterConfig, RedisClusterStore};
pub use deadpool_redis;
pub use single::{RedisConfig, RedisStore};

/// Keys read per `SCAN` step in `clear` and `len`.
const SCAN_BATCH: usize = 1000;

/// Hex digits of a session id in a key (see [`SessionId::push_hex`](session_store::SessionId::push_hex)).
const ID_HEX_LEN: usize = 64;

/// The machine's cores: how many connections the stores share requests
/// over by default.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Whether `key` is a session key of the store with `prefix`: the prefix,
/// then exactly the 64 lowercase hex digits the stores write. A
/// store whose prefix merely starts with this one's (`app:admin:` under
/// `app:`, or even `app:ab`) has longer keys and is left alone.
fn is_own_key(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|id| {
        id.len() == ID_HEX_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The `SCAN MATCH` pattern of exactly [`is_own_key`]'s keys: the prefix,
/// glob-escaped, then 64 lowercase hex digits.
fn scan_pattern(prefix: &str) -> String {
    let mut pattern = escape_glob(prefix);
    for _ in 0..ID_HEX_LEN {
        pattern.push_str("[0-9a-f]");
    }
    pattern
}
/// Between the prefix and the user key's hash in a user's index key.
const USER_INFIX: &str = "user:";

/// Hex digits of a user key's hash in an index key (SHA-1, which the Lua
/// scripts compute with `redis.sha1hex`).
const USER_HASH_LEN: usize = 40;

/// The key of the index of `user_key`'s sessions in the namespace
/// `prefix`: `<prefix>user:<SHA-1 of the user key, 40 lowercase hex>`. A
/// user key never appears in a key as it is: hashed, no glob or hash-tag
/// character of it can reach a pattern or a slot. The scripts compute the
/// same name (`uset`); the hash only names the set: every member is
/// checked against the user key in its record, so keys that collided
/// would only share a set.
///
/// It is no session key of any namespace: those end in 64 hex digits,
/// and the last 64 characters here hold the `user:`. It is not another
/// namespace's index key either: those are their prefix, `user:` and
/// exactly 40 hex digits, so equal keys have equal prefixes.
fn user_set_key(prefix: &str, user_key: &str) -> String {
    use sha1::Digest as _;
    let digest = sha1::Sha1::digest(user_key.as_bytes());
    let mut key = String::with_capacity(prefix.len() + USER_INFIX.len() + USER_HASH_LEN);
    key.push_str(prefix);
    key.push_str(USER_INFIX);
    for byte in digest {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `key` is a user index key of the store with `prefix` (see
/// [`user_set_key`]): the prefix, `user:`, then exactly 40 lowercase hex
/// digits. A nested namespace's index keys (`app:admin:user:...` under
/// `app:`) and its session keys never are.
fn is_own_index_key(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(USER_INFIX))
        .is_some_and(|hash| {
            hash.len() == USER_HASH_LEN
                && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// The `SCAN MATCH` pattern of exactly [`is_own_index_key`]'s keys.
fn index_scan_pattern(prefix: &str) -> String {
    let mut pattern = escape_glob(prefix);
    pattern.push_str(USER_INFIX);
    for _ in 0..USER_HASH_LEN {
        pattern.push_str("[0-9a-f]");
    }
    pattern
}

/// Which keys of a namespace a walk (`SCAN`) visits.
#[derive(Clone, Copy)]
enum Keys {
    /// The sessions' records.
    Sessions,
    /// The user index's sets.
    UserSets,
}

impl Keys {
    /// The `SCAN MATCH` pattern of exactly these keys.
    fn pattern(self, prefix: &str) -> String {
        match self {
            Keys::Sessions => scan_pattern(prefix),
            Keys::UserSets => index_scan_pattern(prefix),
        }
    }

    /// Whether `key` is one of them (checked again on what `SCAN` returns).
    fn is_own(self, prefix: &str, key: &str) -> bool {
        match self {
            Keys::Sessions => is_own_key(prefix, key),
            Keys::UserSets => is_own_index_key(prefix, key),
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

/// The `PXAT` for a record expiring at `expires_at_ms`: Redis refuses a
/// non-positive one, and 1 (long past) makes it drop the key just the same.
pub(crate) fn pxat(expires_at_ms: i64) -> i64 {
    expires_at_ms.max(1)
}

/// What a script's negative answer says of the value under `key` (see the
/// `header` Lua helper); any other answer is not one the scripts give.
pub(crate) fn not_a_record(key: String, code: i64) -> Error {
    let reason = match code {
        -1 => "stored value has no readable record header",
        -2 => VERSION_OUT_OF_RANGE,
        -3 => WRONG_TYPE,
        _ => "unexpected answer from the store's script",
    };
    Error::decode(key, reason)
}

const VERSION_OUT_OF_RANGE: &str = "stored version is outside 1..=MAX_VERSION";
pub(crate) const WRONG_TYPE: &str = "stored value is not a string (another Redis type)";

/// A throwaway Redis in a Docker container, for users who have Docker.
#[cfg(feature = "testcontainers")]
pub mod container {
    use testcontainers_modules::redis::Redis;
    use testcontainers_modules::testcontainers::runners::AsyncRunner as _;
    use testcontainers_modules::testcontainers::ContainerAsync;

    use super::RedisStore;
    use session_store::{Error, Result};

    const STORE: &str = "redis";

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
    fn index_keys_are_exact_and_never_session_keys() {
        // SHA-1 of "ada", as redis.sha1hex gives it.
        let key = user_set_key("app:", "ada");
        assert_eq!(key, "app:user:e4ea294c062c525643df036a35ca579b905fa400");
        assert!(is_own_index_key("app:", &key));
        assert_ne!(user_set_key("app:", "ada2"), key);
        for prefix in [
            "",
            "app:",
            "app:user:",
            "app:admin:",
            "a*[",
            "app:user:0123",
        ] {
            let key = user_set_key(prefix, "ada");
            assert!(is_own_index_key(prefix, &key), "{key}");
            // No namespace's session key, whatever its prefix.
            for cut in 0..=key.len() {
                if key.is_char_boundary(cut) {
                    assert!(!is_own_key(&key[..cut], &key), "{key} under {cut}");
                }
            }
        }
        for (prefix, foreign) in [
            ("app:", format!("app:admin:user:{}", "a".repeat(40))),
            ("app:", format!("app:user:{}", "a".repeat(39))),
            ("app:", format!("app:user:{}", "a".repeat(41))),
            ("app:", format!("app:user:{}", "A".repeat(40))),
            ("app:", format!("app:{}", "a".repeat(64))),
            ("app:", format!("app:user:user:{}", "a".repeat(40))),
        ] {
            assert!(!is_own_index_key(prefix, &foreign), "{foreign}");
        }
        assert_eq!(
            index_scan_pattern("a*:"),
            format!("a\\*:user:{}", "[0-9a-f]".repeat(40))
        );
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

//! Adversarial review of the Redis store against the real server: nested
//! and glob prefixes, records written behind the store's back (raw bytes,
//! disagreeing TTLs), version bounds, forward-only expiry through every
//! path, and races between compare-and-set, compare-and-delete and expiry.
#![cfg(feature = "redis")]

mod common;

use common::redis::{raw, store_with_prefix};
use std::sync::Arc;
use std::time::Duration;

use server_session::redis::deadpool_redis::redis;
use server_session::{
    codec, from_unix_millis, now_millis, unix_millis, DeleteOutcome, Error, Session, SessionId,
    SessionInterface, SessionToken, UpdateOutcome, MAX_VERSION,
};

async fn raw_set(conn: &mut redis::aio::MultiplexedConnection, key: &str, bytes: &[u8], px: i64) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(bytes)
        .arg("PX")
        .arg(px)
        .query_async(conn)
        .await
        .unwrap();
}

async fn raw_get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

fn session(ttl_ms: i64) -> Session {
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    s.set_expires_at_millis(now_millis() + ttl_ms);
    s
}

fn session_with_first_byte(first: u8) -> Session {
    let mut bytes = *SessionToken::generate().id().as_bytes();
    bytes[0] = first;
    Session::new(SessionId::from_bytes(bytes), Duration::from_secs(600))
}

/// Prefixes with every glob metacharacter, and prefixes that end in the
/// middle of what could be an id: each store counts and clears only its own.
#[tokio::test]
async fn glob_and_mid_hex_prefixes_are_separate_namespaces() {
    let base = common::unique("review:");
    let prefixes = [
        format!("{base}:"),
        format!("{base}:ab"),
        format!("{base}:a"),
        format!("{base}:*"),
        format!("{base}:?"),
        format!("{base}:[ab]"),
        format!("{base}:\\"),
        format!("{base}:\\*"),
        format!("{base}:]"),
        format!("{base}:[^a]"),
        format!("{base}:admin:"),
    ];
    let mut stores = Vec::new();
    for prefix in &prefixes {
        let Some(store) = store_with_prefix(prefix.clone()).await else {
            return;
        };
        stores.push(store);
    }
    // Store i holds i + 1 sessions, and the ids start with "ab" or "a" so
    // that "<base>:" + id could look like a key of "<base>:ab" / "<base>:a".
    for (i, store) in stores.iter().enumerate() {
        for n in 0..=i {
            let first = if n % 2 == 0 { 0xab } else { 0xa0 };
            store.create(&session_with_first_byte(first)).await.unwrap();
        }
    }
    for (i, store) in stores.iter().enumerate() {
        assert_eq!(store.len().await.unwrap(), i as u64 + 1, "{}", prefixes[i]);
    }
    // Clearing each in turn leaves every store not yet cleared intact.
    for (i, store) in stores.iter().enumerate() {
        store.clear().await.unwrap();
        assert_eq!(store.len().await.unwrap(), 0, "{}", prefixes[i]);
        for (j, other) in stores.iter().enumerate().skip(i + 1) {
            assert_eq!(
                other.len().await.unwrap(),
                j as u64 + 1,
                "clearing {:?} touched {:?}",
                prefixes[i],
                prefixes[j]
            );
        }
    }
}

/// A record whose header has expired while its key still lives (a foreign
/// writer) is expired for every operation, and none of them revives it.
#[tokio::test]
async fn a_header_expired_record_with_a_live_ttl_is_expired_everywhere() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut conn = raw().await;
    let s = session(-1);
    let key = format!("{prefix}{}", s.id());
    let bytes = codec::encode(&s, 1).unwrap();
    raw_set(&mut conn, &key, &bytes, 60_000).await;

    assert!(store.get(&s.id()).await.unwrap().is_none());
    assert!(!store.is_valid(&s.id()).await.unwrap());
    assert_eq!(store.len().await.unwrap(), 0);
    let mut newer = s.clone();
    newer.set_expires_at_millis(now_millis() + 600_000);
    assert_eq!(store.update(&newer, 1).await.unwrap(), UpdateOutcome::Gone);
    assert_eq!(
        store.delete_if(&s.id(), 1).await.unwrap(),
        DeleteOutcome::Gone
    );
    assert!(!store
        .touch(&s.id(), from_unix_millis(now_millis() + 600_000))
        .await
        .unwrap());
    assert_eq!(raw_get(&mut conn, &key).await.as_deref(), Some(&bytes[..]));
    assert!(matches!(
        store.create(&s).await,
        Err(Error::IdCollision { .. })
    ));
    store.clear().await.unwrap();
    assert!(raw_get(&mut conn, &key).await.is_none());
}

/// update with an earlier expiry after a touch: the header the store keeps
/// (patched by SETRANGE) is the touched expiry, the key's TTL follows it,
/// and the body (data, write ids) is the new session's.
#[tokio::test]
async fn update_after_touch_keeps_the_later_expiry_in_header_and_ttl() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut conn = raw().await;
    let s = session(60_000);
    store.create(&s).await.unwrap();
    let touched = now_millis() + 3_600_000;
    assert!(store
        .touch(&s.id(), from_unix_millis(touched))
        .await
        .unwrap());

    let mut next = s.clone();
    next.insert("user", "ada").unwrap();
    next.flash_mut().insert("note".into(), vec![7]);
    next.stamp_write(41);
    next.stamp_write(42);
    next.set_expires_at_millis(now_millis() + 1_000);
    assert_eq!(
        store.update(&next, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    );
    let got = store.get(&s.id()).await.unwrap().expect("live");
    assert_eq!(got.expires_at_millis(), touched);
    assert_eq!(got.version(), 2);
    assert_eq!(got.recent_writes(), [42, 41]);
    assert_eq!(got.data(), next.data());
    assert_eq!(got.flash(), next.flash());
    assert_eq!(got.created_at_millis(), s.created_at_millis());

    let key = format!("{prefix}{}", s.id());
    let bytes = raw_get(&mut conn, &key).await.unwrap();
    assert_eq!(codec::header(&bytes, &key).unwrap().expires_at_ms, touched);
    let pexpiretime: i64 = redis::cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pexpiretime, touched, "the key's TTL follows the header");

    // And a second update with an earlier expiry still keeps it.
    next.set_expires_at_millis(now_millis() + 2_000);
    assert_eq!(
        store.update(&next, 2).await.unwrap(),
        UpdateOutcome::Updated { version: 3 }
    );
    let got = store.get(&s.id()).await.unwrap().expect("live");
    assert_eq!(got.expires_at_millis(), touched);
    store.clear().await.unwrap();
}

/// Versions at the bounds: nothing out of range is written, and the
/// record at MAX_VERSION cannot be updated past it.
#[tokio::test]
async fn versions_at_the_bounds() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix).await else {
        return;
    };
    let mut s = session(60_000);
    for bad in [0, MAX_VERSION + 1, u64::MAX] {
        s.set_version(bad);
        assert!(matches!(
            store.set(&s).await,
            Err(Error::VersionOutOfRange { .. })
        ));
        assert!(matches!(
            store.create(&s).await,
            Err(Error::VersionOutOfRange { .. })
        ));
        assert!(!store.exists(&s.id()).await.unwrap());
    }
    s.set_version(MAX_VERSION);
    store.set(&s).await.unwrap();
    assert_eq!(
        store.get(&s.id()).await.unwrap().unwrap().version(),
        MAX_VERSION
    );
    for expected in [MAX_VERSION, u64::MAX] {
        assert!(matches!(
            store.update(&s, expected).await,
            Err(Error::VersionOutOfRange { .. })
        ));
    }
    assert_eq!(
        store.update(&s, MAX_VERSION - 1).await.unwrap(),
        UpdateOutcome::Conflict
    );
    for other in [0, 1, u64::MAX, MAX_VERSION - 1] {
        assert_eq!(
            store.delete_if(&s.id(), other).await.unwrap(),
            DeleteOutcome::Conflict,
            "{other}"
        );
    }
    assert_eq!(
        store.delete_if(&s.id(), MAX_VERSION).await.unwrap(),
        DeleteOutcome::Deleted
    );
    store.clear().await.unwrap();
}

/// Corrupt values under the store's own key names: typed decode errors
/// from every operation that must read the header, and nothing deleted or
/// overwritten on their account.
#[tokio::test]
async fn corrupt_values_are_decode_errors_and_are_left_alone() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut conn = raw().await;
    let good = codec::encode(&session(60_000), 1).unwrap();
    let mut unknown_format = good.clone();
    // 3 is the format of a session bound to a user: 4 is unknown.
    unknown_format[0] = 4;
    let corrupt: [Vec<u8>; 4] = [
        Vec::new(),
        good[..24].to_vec(),
        unknown_format,
        vec![0xff; 4096],
    ];
    for bytes in &corrupt {
        let s = session(60_000);
        let key = format!("{prefix}{}", s.id());
        raw_set(&mut conn, &key, bytes, 60_000).await;
        assert!(
            matches!(store.get(&s.id()).await, Err(Error::Decode { .. })),
            "get {bytes:?}"
        );
        assert!(
            matches!(store.update(&s, 1).await, Err(Error::Decode { .. })),
            "update {bytes:?}"
        );
        assert!(
            matches!(store.delete_if(&s.id(), 1).await, Err(Error::Decode { .. })),
            "delete_if {bytes:?}"
        );
        assert!(
            matches!(
                store
                    .touch(&s.id(), from_unix_millis(now_millis() + 600_000))
                    .await,
                Err(Error::Decode { .. })
            ),
            "touch {bytes:?}"
        );
        assert_eq!(raw_get(&mut conn, &key).await.as_deref(), Some(&bytes[..]));
    }
    // A readable header with a corrupt body: get reports it, and the
    // compare-and-set (which only reads the header) may replace it.
    let s = session(60_000);
    let key = format!("{prefix}{}", s.id());
    let mut torn = codec::encode(&s, 1).unwrap();
    torn.extend_from_slice(&[0xff; 8]);
    raw_set(&mut conn, &key, &torn, 60_000).await;
    assert!(matches!(
        store.get(&s.id()).await,
        Err(Error::Decode { .. })
    ));
    assert_eq!(
        store.update(&s, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    );
    assert_eq!(store.get(&s.id()).await.unwrap().unwrap().version(), 2);
    store.clear().await.unwrap();
}

/// Many tasks race update and delete_if on one record at version 1:
/// exactly one of them wins; the rest see Conflict (or Gone after a win by
/// delete), and the record ends in the winner's state.
#[tokio::test]
async fn update_and_delete_if_races_have_one_winner() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix).await else {
        return;
    };
    let store = Arc::new(store);
    for round in 0..10 {
        let s = session(60_000);
        store.create(&s).await.unwrap();
        let mut tasks = Vec::new();
        for n in 0..16 {
            let (store, s) = (store.clone(), s.clone());
            tasks.push(tokio::spawn(async move {
                if (n + round) % 2 == 0 {
                    match store.update(&s, 1).await.unwrap() {
                        UpdateOutcome::Updated { .. } => "updated",
                        UpdateOutcome::Conflict => "conflict",
                        UpdateOutcome::Gone => "gone",
                    }
                } else {
                    match store.delete_if(&s.id(), 1).await.unwrap() {
                        DeleteOutcome::Deleted => "deleted",
                        DeleteOutcome::Conflict => "conflict",
                        DeleteOutcome::Gone => "gone",
                    }
                }
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let winners: Vec<_> = outcomes
            .iter()
            .filter(|o| matches!(**o, "updated" | "deleted"))
            .collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        let stored = store.get(&s.id()).await.unwrap();
        if *winners[0] == "updated" {
            assert_eq!(stored.map(|s| s.version()), Some(2), "{outcomes:?}");
            assert!(!outcomes.contains(&"gone"), "{outcomes:?}");
        } else {
            assert!(stored.is_none(), "{outcomes:?}");
            assert!(!outcomes.contains(&"conflict") || outcomes.contains(&"gone"));
        }
    }
    store.clear().await.unwrap();
}

/// touch racing the moment of expiry: whatever touch answers, the record
/// agrees afterwards (true: live at the touched expiry; false: gone).
#[tokio::test]
async fn touch_at_the_moment_of_expiry_agrees_with_get() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix).await else {
        return;
    };
    let (mut yes, mut no) = (0, 0);
    for n in 0..60 {
        let s = session(5 + (n % 5));
        store.set(&s).await.unwrap();
        tokio::time::sleep(Duration::from_millis(4)).await;
        let target = now_millis() + 600_000;
        let touched = store
            .touch(&s.id(), from_unix_millis(target))
            .await
            .unwrap();
        let got = store.get(&s.id()).await.unwrap();
        if touched {
            yes += 1;
            assert_eq!(got.map(|g| g.expires_at_millis()), Some(target), "{n}");
        } else {
            no += 1;
            assert!(got.is_none(), "{n}: touch said gone but get found it");
        }
    }
    assert!(yes + no == 60);
    store.clear().await.unwrap();
}

/// set with an expiry already past replaces a live record with nothing:
/// "set stores exactly what it is given", even the past.
#[tokio::test]
async fn set_in_the_past_over_a_live_record_leaves_nothing_live() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix).await else {
        return;
    };
    let mut s = session(600_000);
    store.set(&s).await.unwrap();
    for past in [now_millis() - 1, 0, -5_000, i64::MIN] {
        s.set_expires_at_millis(past);
        store.set(&s).await.unwrap();
        assert!(store.get(&s.id()).await.unwrap().is_none(), "{past}");
        assert_eq!(store.len().await.unwrap(), 0, "{past}");
        s.set_expires_at_millis(now_millis() + 600_000);
        store.set(&s).await.unwrap();
    }
    store.clear().await.unwrap();
}

// ---- findings of the review, fixed ----

/// A record whose header says later than its key's TTL (written raw with a
/// short PX): touch answers true for a later expiry, so the session must
/// live to that expiry. answers true for a later expiry, so the session must
/// live to that expiry.
#[tokio::test]
async fn f_touch_true_means_live_until_the_touched_expiry_even_with_a_short_ttl() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut conn = raw().await;
    let s = session(3_600_000);
    let key = format!("{prefix}{}", s.id());
    raw_set(&mut conn, &key, &codec::encode(&s, 1).unwrap(), 400).await;
    let target = now_millis() + 600_000;
    assert!(store
        .touch(&s.id(), from_unix_millis(target))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        store.get(&s.id()).await.unwrap().is_some(),
        "touch said live until {target}, but the key expired at its old TTL"
    );
    store.clear().await.unwrap();
}

/// Forward-only expiry at the top of the range: a stored expiry of
/// i64::MAX must not move back to i64::MAX - 1000 on update.
#[tokio::test]
async fn f_update_never_moves_a_huge_expiry_back() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix).await else {
        return;
    };
    let mut results = Vec::new();
    for (stored, offered) in [((1 << 53) + 1, 1 << 53), (i64::MAX, i64::MAX - 10)] {
        let mut s = Session::new(SessionToken::generate().id(), Duration::MAX);
        s.set_expires_at_millis(stored);
        store.set(&s).await.unwrap();
        let mut next = s.clone();
        next.set_expires_at_millis(offered);
        let outcome = store.update(&next, 1).await.unwrap();
        let kept = store
            .get(&s.id())
            .await
            .unwrap()
            .map(|g| g.expires_at_millis());
        results.push((stored, outcome, kept));
    }
    store.clear().await.unwrap();
    for (stored, outcome, kept) in results {
        assert_eq!(outcome, UpdateOutcome::Updated { version: 2 });
        assert_eq!(kept, Some(stored), "update moved the stored expiry earlier");
    }
}

/// A key of another type under the store's key name is a corrupt record:
/// Error::Decode, like any other undecodable value.
#[tokio::test]
async fn f_a_non_string_value_is_a_decode_error() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut conn = raw().await;
    let s = session(60_000);
    let key = format!("{prefix}{}", s.id());
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let got = store.get(&s.id()).await;
    store.clear().await.unwrap();
    assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
}

/// A stored header version outside 1..=MAX_VERSION is corrupt (the SQL
/// stores report a negative version column as Error::Decode).
#[tokio::test]
async fn f_a_stored_version_out_of_range_is_a_decode_error() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut conn = raw().await;
    let s = session(60_000);
    let key = format!("{prefix}{}", s.id());
    let mut results = Vec::new();
    for version in [u64::MAX, 0] {
        raw_set(
            &mut conn,
            &key,
            &codec::encode(&s, version).unwrap(),
            60_000,
        )
        .await;
        results.push((version, store.get(&s.id()).await));
    }
    store.clear().await.unwrap();
    for (version, got) in results {
        assert!(
            matches!(got, Err(Error::Decode { .. })),
            "version {version}: {got:?}"
        );
    }
}

async fn raw_pexpiretime(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// The same as above for a touch to an expiry earlier than the header's
/// and for an update whose expiry is earlier than the stored one: both
/// answer that the record lives to the header's expiry, so its key must.
#[tokio::test]
async fn f_touch_and_update_keep_the_key_alive_to_the_stored_expiry() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut conn = raw().await;
    let (touched, updated) = (session(3_600_000), session(3_600_000));
    for s in [&touched, &updated] {
        let key = format!("{prefix}{}", s.id());
        raw_set(&mut conn, &key, &codec::encode(s, 1).unwrap(), 400).await;
    }
    let earlier = now_millis() + 600_000;
    assert!(store
        .touch(&touched.id(), from_unix_millis(earlier))
        .await
        .unwrap());
    let mut next = updated.clone();
    next.set_expires_at_millis(earlier);
    assert_eq!(
        store.update(&next, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    );
    let mut kept = Vec::new();
    for s in [&touched, &updated] {
        let key = format!("{prefix}{}", s.id());
        kept.push(raw_pexpiretime(&mut conn, &key).await);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let live = [
        store.get(&touched.id()).await.unwrap().is_some(),
        store.get(&updated.id()).await.unwrap().is_some(),
    ];
    store.clear().await.unwrap();
    assert_eq!(
        kept,
        [touched.expires_at_millis(), updated.expires_at_millis()]
    );
    assert_eq!(live, [true, true]);
}

/// Expiries above 2^53 ms, where Lua's doubles cannot tell neighbours
/// apart: update keeps the later one to the millisecond, touch (whose
/// `OffsetDateTime` saturates at year 9999) leaves a later stored one
/// alone, and the key's TTL is the header's exactly.
#[tokio::test]
async fn f_huge_expiries_are_compared_and_stored_exactly() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut conn = raw().await;
    let cases = [
        // Either side of 2^53, where dec() changes from printing a double
        // to long division.
        ((1i64 << 53) - 2, (1i64 << 53) - 1),
        ((1i64 << 53) - 1, (1i64 << 53) - 2),
        ((1i64 << 53) - 1, 1i64 << 53),
        (1i64 << 53, (1i64 << 53) + 1),
        ((1 << 53) + 1, 1 << 53),
        (i64::MAX - 10, i64::MAX),
        (i64::MAX, i64::MAX - 1),
    ];
    let mut results = Vec::new();
    for (stored, offered) in cases {
        for op in ["touch", "update"] {
            let mut s = Session::new(SessionToken::generate().id(), Duration::MAX);
            s.set_expires_at_millis(stored);
            store.set(&s).await.unwrap();
            if op == "touch" {
                assert!(store
                    .touch(&s.id(), from_unix_millis(offered))
                    .await
                    .unwrap());
            } else {
                let mut next = s.clone();
                next.set_expires_at_millis(offered);
                assert_eq!(
                    store.update(&next, 1).await.unwrap(),
                    UpdateOutcome::Updated { version: 2 }
                );
            }
            let got = store
                .get(&s.id())
                .await
                .unwrap()
                .map(|g| g.expires_at_millis());
            let ttl = raw_pexpiretime(&mut conn, &format!("{prefix}{}", s.id())).await;
            results.push((op, stored, offered, got, ttl));
        }
    }
    store.clear().await.unwrap();
    for (op, stored, offered, got, ttl) in results {
        let later = if op == "touch" {
            stored.max(unix_millis(from_unix_millis(offered)))
        } else {
            stored.max(offered)
        };
        assert_eq!(got, Some(later), "{op} {stored} -> {offered}: header");
        assert_eq!(ttl, later, "{op} {stored} -> {offered}: key's TTL");
    }
}

/// A stored version outside 1..=MAX_VERSION: update, touch and delete_if
/// report it as Error::Decode too, and leave the record as it was.
#[tokio::test]
async fn f_writes_refuse_a_stored_version_out_of_range() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut conn = raw().await;
    let mut failures = Vec::new();
    for version in [u64::MAX, MAX_VERSION + 1, 0] {
        let s = session(60_000);
        let key = format!("{prefix}{}", s.id());
        let bytes = codec::encode(&s, version).unwrap();
        raw_set(&mut conn, &key, &bytes, 60_000).await;
        let far = from_unix_millis(now_millis() + 600_000);
        let outcomes = [
            format!("{:?}", store.update(&s, 1).await),
            format!("{:?}", store.touch(&s.id(), far).await),
            format!("{:?}", store.delete_if(&s.id(), version).await),
        ];
        for outcome in outcomes {
            if !outcome.starts_with("Err(Decode") || !outcome.contains(&key) {
                failures.push(format!("version {version}: {outcome}"));
            }
        }
        if raw_get(&mut conn, &key).await.as_deref() != Some(&bytes[..]) {
            failures.push(format!("version {version}: record changed"));
        }
    }
    store.clear().await.unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A non-string value under a session key: every operation that reads it
/// reports Error::Decode naming the key (not a backend failure), len does
/// not count it, and clear deletes it (it has this namespace's key shape).
#[tokio::test]
async fn f_a_non_string_value_is_corrupt_for_every_operation() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut conn = raw().await;
    let s = session(60_000);
    let key = format!("{prefix}{}", s.id());
    let _: () = redis::cmd("RPUSH")
        .arg(&key)
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let far = from_unix_millis(now_millis() + 600_000);
    let outcomes = [
        format!("{:?}", store.get(&s.id()).await),
        format!("{:?}", store.update(&s, 1).await),
        format!("{:?}", store.touch(&s.id(), far).await),
        format!("{:?}", store.delete_if(&s.id(), 1).await),
    ];
    let counted = store.len().await;
    store.clear().await.unwrap();
    let left: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    for outcome in &outcomes {
        assert!(
            outcome.starts_with("Err(Decode") && outcome.contains(&key),
            "{outcome}"
        );
    }
    assert_eq!(counted.unwrap(), 0);
    assert_eq!(left, 0, "clear deletes it");

    // `delete` (a `GETDEL`, which a list answers with WRONGTYPE) deletes
    // it all the same.
    let _: () = redis::cmd("RPUSH")
        .arg(&key)
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    store.delete(&s.id()).await.unwrap();
    let left: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "delete deletes it");
}

/// `get` reads a record far from its expiry with `GET` alone, trusting the
/// key's TTL; one due within the minute is judged by Redis's clock. A
/// foreign record whose header expired a moment ago but whose key lives on
/// is expired, and one whose header is half a minute from expiry is live.
#[tokio::test]
async fn get_judges_records_near_their_expiry_by_redis_clock() {
    let prefix = common::unique("review:") + ":";
    let Some(store) = store_with_prefix(prefix.clone()).await else {
        return;
    };
    let mut conn = raw().await;
    for (ttl_ms, live) in [
        (-5, false),
        (-30_000, false),
        (30_000, true),
        (3_600_000, true),
    ] {
        let s = session(ttl_ms);
        let key = format!("{prefix}{}", s.id());
        raw_set(&mut conn, &key, &codec::encode(&s, 1).unwrap(), 7_200_000).await;
        assert_eq!(
            store.get(&s.id()).await.unwrap().is_some(),
            live,
            "header expiring in {ttl_ms} ms"
        );
        assert_eq!(store.is_valid(&s.id()).await.unwrap(), live);
    }
}

//! The Redis store against the real server (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`), each case under its own random prefix.
#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use server_session::async_trait;
use server_session::conformance::StoreFactory;
use server_session::redis::deadpool_redis::redis;
use server_session::{
    conformance_tests, Error, RedisConfig, RedisStore, Session, SessionInterface, SessionToken,
};

struct Redis;

async fn store_with_prefix(prefix: String) -> Option<RedisStore> {
    let url = common::redis_url();
    match RedisStore::connect_with(RedisConfig {
        prefix,
        ..RedisConfig::new(url.clone())
    })
    .await
    {
        Ok(store) => Some(store),
        Err(e) => {
            common::unreachable("redis", &url, e);
            None
        }
    }
}

#[async_trait]
impl StoreFactory for Redis {
    async fn make(&self) -> Option<Arc<dyn SessionInterface>> {
        let store = store_with_prefix(common::unique("test:") + ":").await?;
        Some(Arc::new(store))
    }
}

conformance_tests!(Redis);

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
    match result {
        Err(Error::Backend { store, context, .. }) => {
            assert_eq!(store, "redis");
            assert!(context.contains("127.0.0.1:1"), "{context}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

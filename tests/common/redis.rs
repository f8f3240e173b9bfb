//! Redis helpers of the backend tests: a store, and a raw connection to
//! look behind it.

use server_session::redis::deadpool_redis::redis;
use server_session::{RedisConfig, RedisStore};

/// A store made with `config`, or `None` (said, and failing under CI) when
/// the server cannot be reached.
pub async fn store(config: RedisConfig) -> Option<RedisStore> {
    let url = config.url.clone();
    match RedisStore::connect_with(config).await {
        Ok(store) => Some(store),
        Err(e) => {
            super::unreachable("redis", &url, e);
            None
        }
    }
}

/// A store on `REDIS_URL` with its own key prefix.
pub async fn store_with_prefix(prefix: String) -> Option<RedisStore> {
    store(RedisConfig {
        prefix,
        ..RedisConfig::new(super::redis_url())
    })
    .await
}

/// A plain connection to `REDIS_URL`, beside the store.
pub async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(super::redis_url())
        .expect("REDIS_URL parses")
        .get_multiplexed_async_connection()
        .await
        .expect("raw redis connection")
}

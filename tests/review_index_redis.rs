//! Review of the Redis stores' user index (issue 13) on one server and on
//! the cluster: hostile user keys (globs, hash tags, colons) never leak
//! across users, rebinding through set/update moves the listing, revoke
//! and `except`, expiry, racing writers leave an index that agrees with
//! the records, and a namespace nested as `<prefix>user:` keeps its own
//! sessions through the other's clear and flush. Each run has its own
//! prefix, cleared at the end. A server that cannot be reached fails the
//! test when CI is set, else prints a SKIPPED line.
#![cfg(feature = "redis")]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use server_session::redis::{RedisClusterConfig, RedisClusterStore};
use server_session::{RedisConfig, RedisStore, SessionInterface};

// ---- battery shared (copied) by the review_index tests of every store ----
// The battery every store's review_index test runs.
use session_store::conformance::index_battery::*;

/// Runs every battery case on `store`, then the nested-namespace check
/// with `nested` (a store whose prefix is `store`'s plus `user:`).
async fn battery(store: Arc<dyn SessionInterface>, nested: Arc<dyn SessionInterface>) {
    keys_never_leak(&*store).await;
    rebinding_moves_the_listing(&*store).await;
    store.clear().await.expect("clear");
    revoke_and_except(&*store).await;
    store.clear().await.expect("clear");
    expired_are_not_listed(&*store).await;
    store.clear().await.expect("clear");
    racing_writers_leave_an_exact_index(store.clone(), 40).await;
    store.clear().await.expect("clear");

    let (outer, inner) = (bound("ada"), bound("ada"));
    store.create(&outer).await.expect("create");
    nested.create(&inner).await.expect("create");
    store.flush().await.expect("flush");
    store.clear().await.expect("clear");
    assert_eq!(ids_of(&*nested, "ada").await, BTreeSet::from([inner.id()]));
    store.create(&outer).await.expect("create");
    nested.clear().await.expect("clear");
    nested.flush().await.expect("flush");
    assert_eq!(ids_of(&*store, "ada").await, BTreeSet::from([outer.id()]));
    assert_eq!(
        store.revoke_user("ada", None).await.expect("revoke"),
        vec![outer.id()]
    );
    store.clear().await.expect("clear");
}

async fn single(prefix: String) -> Option<Arc<dyn SessionInterface>> {
    let url = common::redis_url();
    match RedisStore::connect_with(RedisConfig {
        prefix,
        ..RedisConfig::new(url.clone())
    })
    .await
    {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            common::unreachable("redis", &url, e);
            None
        }
    }
}

async fn cluster(prefix: String) -> Option<Arc<dyn SessionInterface>> {
    let url = common::redis_cluster_url();
    let config = RedisClusterConfig {
        prefix,
        ..RedisClusterConfig::from_url(&url).expect("REDIS_CLUSTER_URL is a redis+cluster URL")
    };
    match RedisClusterStore::connect_with(config).await {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            common::unreachable("redis cluster", &url, e);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_user_index() {
    let prefix = format!("{}:", common::unique("review-index-"));
    let (Some(store), Some(nested)) = (
        single(prefix.clone()).await,
        single(format!("{prefix}user:")).await,
    ) else {
        return;
    };
    battery(store, nested.clone()).await;
    nested.clear().await.expect("clear");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_user_index() {
    let prefix = format!("{}:", common::unique("review-index-"));
    let (Some(store), Some(nested)) = (
        cluster(prefix.clone()).await,
        cluster(format!("{prefix}user:")).await,
    ) else {
        return;
    };
    battery(store, nested.clone()).await;
    nested.clear().await.expect("clear");
}

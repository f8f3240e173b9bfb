//! Review of the memory store's user index (issue 13): hostile user keys
//! never leak across users, rebinding through set/update moves the
//! listing, revoke and `except`, expiry, and racing writers leave an index
//! that agrees with the records (checked through the public API).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use session_store::SessionInterface;
use session_store_memory::MemoryStore;

// ---- battery shared (copied) by the review_index tests of every store ----
// The battery every store's review_index test runs.
use session_store::conformance::index_battery::*;

#[tokio::test]
async fn hostile_user_keys_never_leak() {
    keys_never_leak(&MemoryStore::new()).await;
}

#[tokio::test]
async fn rebinding_through_set_and_update_moves_the_listing() {
    rebinding_moves_the_listing(&MemoryStore::new()).await;
}

#[tokio::test]
async fn revoke_stays_and_except_spares_exactly_its_id() {
    revoke_and_except(&MemoryStore::new()).await;
}

#[tokio::test]
async fn expired_sessions_are_not_listed() {
    expired_are_not_listed(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_leave_an_index_that_agrees_with_the_records() {
    for _ in 0..5 {
        racing_writers_leave_an_exact_index(Arc::new(MemoryStore::new()), 300).await;
    }
}

/// `clear` of one store leaves another store's index whole, and a revoke
/// on one never reaches the other.
#[tokio::test]
async fn two_stores_keep_separate_indexes() {
    let (a, b) = (MemoryStore::new(), MemoryStore::new());
    let (sa, sb) = (bound("ada"), bound("ada"));
    a.create(&sa).await.expect("create");
    b.create(&sb).await.expect("create");
    a.clear().await.expect("clear");
    assert!(ids_of(&a, "ada").await.is_empty());
    assert_eq!(ids_of(&b, "ada").await, BTreeSet::from([sb.id()]));
    a.create(&sa).await.expect("create");
    assert_eq!(
        a.revoke_user("ada", None).await.expect("revoke"),
        vec![sa.id()]
    );
    assert_eq!(ids_of(&b, "ada").await, BTreeSet::from([sb.id()]));
}

/// flush_reporting names each expired session with its user, and the
/// listing after it is exact.
#[tokio::test]
async fn flush_reports_the_user_of_each_expired_session() {
    let store = MemoryStore::new();
    let mut gone = fresh(50);
    bind(&mut gone, Some("ada"));
    store.create(&gone).await.expect("create");
    let stays = bound("ada");
    store.create(&stays).await.expect("create");
    tokio::time::sleep(Duration::from_millis(120)).await;
    let report = store.flush_reporting().await.expect("flush");
    assert_eq!(report.deleted, 1);
    assert_eq!(report.expired, vec![(gone.id(), Some("ada".to_owned()))]);
    assert_eq!(ids_of(&store, "ada").await, BTreeSet::from([stays.id()]));
}

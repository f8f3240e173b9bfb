//! The suite passes a correct store and fails deliberately broken ones, so
//! we know it can fail.
#![cfg(feature = "conformance")]

use std::sync::Arc;

use async_trait::async_trait;
use session_store::conformance::{factory, run_all, ReferenceStore, StoreFactory};
use session_store::time::OffsetDateTime;
use session_store::{
    conformance_tests, DeleteOutcome, Result, Session, SessionId, SessionInterface, UpdateOutcome,
};

conformance_tests!(factory(|| async {
    Some(Arc::new(ReferenceStore::new()) as Arc<dyn SessionInterface>)
}));

/// How a broken store misbehaves.
#[derive(Debug, Clone, Copy)]
enum Bug {
    /// Stores every session as if it never expired.
    IgnoresExpiry,
    /// `update` always succeeds, whatever the version or state.
    NeverConflicts,
    /// `touch` of a missing or expired session creates one.
    TouchRevives,
    /// `create` overwrites instead of reporting a collision.
    CreateOverwrites,
}

#[derive(Debug)]
struct Broken {
    inner: ReferenceStore,
    bug: Bug,
}

impl Broken {
    fn far_future(session: &Session) -> Session {
        let mut s = session.clone();
        s.set_expires_at_millis(i64::MAX / 2);
        s
    }
}

#[async_trait]
impl SessionInterface for Broken {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        self.inner.get(id).await
    }
    async fn set(&self, session: &Session) -> Result<()> {
        match self.bug {
            Bug::IgnoresExpiry => self.inner.set(&Self::far_future(session)).await,
            _ => self.inner.set(session).await,
        }
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Session) -> Result<()> {
        match self.bug {
            Bug::IgnoresExpiry => self.inner.create(&Self::far_future(session)).await,
            Bug::CreateOverwrites => self.inner.set(session).await,
            _ => self.inner.create(session).await,
        }
    }
    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        match self.bug {
            Bug::NeverConflicts => {
                let mut next = session.clone();
                next.set_version(expected_version + 1);
                self.inner.set(&next).await?;
                Ok(UpdateOutcome::Updated {
                    version: expected_version + 1,
                })
            }
            Bug::IgnoresExpiry => {
                self.inner
                    .update(&Self::far_future(session), expected_version)
                    .await
            }
            _ => self.inner.update(session, expected_version).await,
        }
    }
    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        self.inner.delete_if(id, expected_version).await
    }
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        if self.inner.touch(id, expires_at).await? {
            return Ok(true);
        }
        if let Bug::TouchRevives = self.bug {
            let mut s = Session::new(*id, std::time::Duration::from_secs(1));
            s.set_expires_at(expires_at);
            self.inner.set(&s).await?;
            return Ok(true);
        }
        Ok(false)
    }
    async fn flush(&self) -> Result<u64> {
        self.inner.flush().await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
    async fn len(&self) -> Result<u64> {
        self.inner.len().await
    }
}

fn broken(bug: Bug) -> Arc<dyn StoreFactory> {
    Arc::new(factory(move || async move {
        Some(Arc::new(Broken {
            inner: ReferenceStore::new(),
            bug,
        }) as Arc<dyn SessionInterface>)
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_fails_a_store_that_ignores_expiry() {
    let report = run_all(broken(Bug::IgnoresExpiry)).await;
    for case in [
        "expiry_subsecond_honoured",
        "expiry_one_second_honoured",
        "get_never_returns_expired",
        "update_expired_is_gone",
        "flush_removes_exactly_expired",
    ] {
        assert!(
            report.failed(case),
            "{case} passed a store that ignores expiry"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_fails_a_store_whose_update_never_conflicts() {
    let report = run_all(broken(Bug::NeverConflicts)).await;
    for case in [
        "update_stale_version_conflicts",
        "update_conflict_writes_nothing",
        "update_after_delete_is_gone",
        "update_never_created_is_gone",
        "concurrent_updates_one_wins_per_version",
        "manager_concurrent_increments_exact",
        "manager_save_after_destroy_not_resurrected",
    ] {
        assert!(
            report.failed(case),
            "{case} passed a store that never conflicts"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_fails_a_store_whose_touch_revives() {
    let report = run_all(broken(Bug::TouchRevives)).await;
    assert!(report.failed("touch_missing_creates_nothing"));
    assert!(report.failed("touch_never_revives_expired"));
    assert!(!report.failed("touch_extends_expiry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_fails_a_store_whose_create_overwrites() {
    let report = run_all(broken(Bug::CreateOverwrites)).await;
    assert!(report.failed("create_collision_is_error"));
    assert!(report.failed("create_collision_keeps_original"));
    assert!(report.failed("concurrent_creates_one_wins"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_fails_stores_that_share_a_namespace() {
    let shared = Arc::new(ReferenceStore::new());
    let report = run_all(Arc::new(factory(move || {
        let shared = shared.clone();
        async move { Some(shared as Arc<dyn SessionInterface>) }
    })))
    .await;
    assert!(report.failed("clear_leaves_other_namespace"));
    assert!(report.failed("namespaces_are_isolated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_has_at_least_forty_cases_and_passes_the_reference() {
    let report = run_all(Arc::new(factory(|| async {
        Some(Arc::new(ReferenceStore::new()) as Arc<dyn SessionInterface>)
    })))
    .await;
    assert!(
        report.passed.len() >= 40,
        "only {} cases",
        report.passed.len()
    );
    assert!(
        report.failed.is_empty(),
        "reference failed: {:?}",
        report.failed
    );
}

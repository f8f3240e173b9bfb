//! The conformance suite against the memory store, through the facade.
#![cfg(feature = "memory")]

use std::sync::Arc;

use server_session::conformance::StoreFactory;
use server_session::{async_trait, conformance_tests, MemoryStore, SessionInterface};

/// Fresh stores. A memory store's namespace is its instance, so the
/// "nested" store is simply another instance: the nested-namespace cases
/// then check that one instance's `clear`, `flush`, `len` and user index
/// never reach another's.
struct Fresh;

#[async_trait]
impl StoreFactory for Fresh {
    async fn make(&self) -> Option<Arc<dyn SessionInterface>> {
        Some(Arc::new(MemoryStore::new()))
    }

    async fn make_nested(
        &self,
        _outer: &Arc<dyn SessionInterface>,
    ) -> Option<Arc<dyn SessionInterface>> {
        Some(Arc::new(MemoryStore::new()))
    }
}

conformance_tests!(Fresh);

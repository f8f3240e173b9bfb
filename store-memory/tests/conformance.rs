use std::sync::Arc;

use session_store::conformance::StoreFactory;
use session_store::{async_trait, conformance_tests, SessionInterface};
use session_store_memory::MemoryStore;

/// Fresh stores. A memory store's namespace is its instance, so the
/// "nested" store is simply another instance: the nested-namespace cases
/// then check that one instance's `clear`, `flush`, `len` and user index
/// never reach another's (no state shared between instances).
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

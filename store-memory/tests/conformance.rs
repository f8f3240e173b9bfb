use std::sync::Arc;

use session_store::conformance::factory;
use session_store::{conformance_tests, SessionInterface};
use session_store_memory::MemoryStore;

conformance_tests!(factory(|| async {
    Some(Arc::new(MemoryStore::new()) as Arc<dyn SessionInterface>)
}));

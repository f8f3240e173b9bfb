//! The conformance suite against the memory store, through the facade.
#![cfg(feature = "memory")]

use std::sync::Arc;

use server_session::conformance::factory;
use server_session::{conformance_tests, MemoryStore, SessionInterface};

conformance_tests!(factory(|| async {
    Some(Arc::new(MemoryStore::new()) as Arc<dyn SessionInterface>)
}));

//! Test stores that wrap a real store: one counts, one is down, one fails
//! its writes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use session_store::time::OffsetDateTime;
use session_store::{
    async_trait, DeleteOutcome, Error, Result, Session, SessionId, SessionInterface, UpdateOutcome,
};
use session_store_memory::MemoryStore;

/// Wraps a store and counts every [`SessionInterface`] call made to it,
/// the provided methods (`has`, `is_valid`, `is_empty`) included.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn SessionInterface>,
    calls: AtomicU64,
}

impl CountingStore {
    /// Counts the calls made to `inner`.
    pub fn new(inner: Arc<dyn SessionInterface>) -> Self {
        CountingStore {
            inner,
            calls: AtomicU64::new(0),
        }
    }

    /// Counts the calls made to a fresh memory store.
    pub fn memory() -> Self {
        Self::new(Arc::new(MemoryStore::new()))
    }

    /// How many calls were made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The wrapped store (calls to it directly are not counted).
    pub fn inner(&self) -> &Arc<dyn SessionInterface> {
        &self.inner
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl SessionInterface for CountingStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.count();
        self.inner.exists(id).await
    }
    async fn has(&self, id: &SessionId) -> Result<bool> {
        self.count();
        self.inner.has(id).await
    }
    async fn is_valid(&self, id: &SessionId) -> Result<bool> {
        self.count();
        self.inner.is_valid(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        self.count();
        self.inner.get(id).await
    }
    async fn set(&self, session: &Session) -> Result<()> {
        self.count();
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.count();
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Session) -> Result<()> {
        self.count();
        self.inner.create(session).await
    }
    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        self.count();
        self.inner.update(session, expected_version).await
    }
    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        self.count();
        self.inner.delete_if(id, expected_version).await
    }
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        self.count();
        self.inner.touch(id, expires_at).await
    }
    async fn flush(&self) -> Result<u64> {
        self.count();
        self.inner.flush().await
    }
    async fn clear(&self) -> Result<()> {
        self.count();
        self.inner.clear().await
    }
    async fn len(&self) -> Result<u64> {
        self.count();
        self.inner.len().await
    }
    async fn is_empty(&self) -> Result<bool> {
        self.count();
        self.inner.is_empty().await
    }
}

/// A store whose backend cannot be reached: every call fails with
/// [`Error::Unavailable`].
#[derive(Debug, Default)]
pub struct DownStore;

fn down() -> Error {
    Error::Unavailable {
        store: "down",
        context: "connecting to the test store".into(),
        source: "connection refused (the test store is down)".into(),
    }
}

#[async_trait]
impl SessionInterface for DownStore {
    async fn exists(&self, _: &SessionId) -> Result<bool> {
        Err(down())
    }
    async fn has(&self, _: &SessionId) -> Result<bool> {
        Err(down())
    }
    async fn is_valid(&self, _: &SessionId) -> Result<bool> {
        Err(down())
    }
    async fn get(&self, _: &SessionId) -> Result<Option<Session>> {
        Err(down())
    }
    async fn set(&self, _: &Session) -> Result<()> {
        Err(down())
    }
    async fn delete(&self, _: &SessionId) -> Result<()> {
        Err(down())
    }
    async fn create(&self, _: &Session) -> Result<()> {
        Err(down())
    }
    async fn update(&self, _: &Session, _: u64) -> Result<UpdateOutcome> {
        Err(down())
    }
    async fn delete_if(&self, _: &SessionId, _: u64) -> Result<DeleteOutcome> {
        Err(down())
    }
    async fn touch(&self, _: &SessionId, _: OffsetDateTime) -> Result<bool> {
        Err(down())
    }
    async fn flush(&self) -> Result<u64> {
        Err(down())
    }
    async fn clear(&self) -> Result<()> {
        Err(down())
    }
    async fn len(&self) -> Result<u64> {
        Err(down())
    }
    async fn is_empty(&self) -> Result<bool> {
        Err(down())
    }
}

/// Wraps a store; while failing is on, every write (`set`, `create`,
/// `update`, `delete`, `delete_if`, `touch`) fails with [`Error::Backend`]
/// without reaching the wrapped store, and reads pass through.
#[derive(Debug)]
pub struct FailingWrites {
    inner: Arc<dyn SessionInterface>,
    failing: AtomicBool,
}

impl FailingWrites {
    /// Wraps `inner`, failing writes from the start when `failing`.
    pub fn new(inner: Arc<dyn SessionInterface>, failing: bool) -> Self {
        FailingWrites {
            inner,
            failing: AtomicBool::new(failing),
        }
    }

    /// Turns the write failures on or off.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            Err(Error::backend(
                "failing-writes",
                format!("{what} (writes are failing)"),
                "injected write failure",
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl SessionInterface for FailingWrites {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        self.inner.get(id).await
    }
    async fn set(&self, session: &Session) -> Result<()> {
        self.check("set")?;
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.check("delete")?;
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Session) -> Result<()> {
        self.check("create")?;
        self.inner.create(session).await
    }
    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        self.check("update")?;
        self.inner.update(session, expected_version).await
    }
    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        self.check("delete_if")?;
        self.inner.delete_if(id, expected_version).await
    }
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        self.check("touch")?;
        self.inner.touch(id, expires_at).await
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

//! # session-store-memory
//!
//! An in-memory [`SessionInterface`] store for tests, development and
//! single-process apps.
//!
//! It keeps each session encoded (the core's envelope) in a sharded map
//! ([`dashmap`]), so parallel requests on different sessions rarely share a
//! lock and a live session costs little more than its encoded bytes. Expiry
//! is honoured on every read; [`flush`](SessionInterface::flush) drops
//! expired records.
//!
//! ```
//! use std::sync::Arc;
//! use session_store_memory::MemoryStore;
//! use session_store::{SessionConfig, SessionManager};
//!
//! let manager = SessionManager::new(Arc::new(MemoryStore::new()), SessionConfig::default()).unwrap();
//! ```
#![warn(missing_docs)]

use std::hash::BuildHasherDefault;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use session_store::backend::{next_version, storable_version};
use session_store::time::OffsetDateTime;
use session_store::{
    codec, now_millis, unix_millis, DeleteOutcome, Error, Result, Session, SessionId,
    SessionInterface, UpdateOutcome,
};

/// A stored record: the expiry and version are kept beside the encoded bytes
/// so that checks need no decoding.
#[derive(Debug)]
struct Record {
    expires_at_ms: i64,
    version: u64,
    bytes: Box<[u8]>,
}

impl Record {
    fn encode(session: &Session, version: u64) -> Result<Self> {
        Self::encode_expiring(session, version, session.expires_at_millis())
    }

    fn encode_expiring(session: &Session, version: u64, expires_at_ms: i64) -> Result<Self> {
        let mut bytes = codec::encode(session, version)?;
        codec::patch_expires_at(&mut bytes, expires_at_ms, "memory record")?;
        Ok(Record {
            expires_at_ms,
            version,
            bytes: bytes.into_boxed_slice(),
        })
    }

    fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at_ms > now_ms
    }
}

/// The in-memory store. Each instance is its own namespace.
#[derive(Debug)]
pub struct MemoryStore {
    map: DashMap<SessionId, Record, BuildHasherDefault<IdHasher>>,
}

/// Hashes a [`SessionId`] by its first eight bytes. An id is already a
/// SHA-256 digest, uniform and not chosen by clients, so hashing it again
/// (SipHash, the default) buys nothing.
#[derive(Clone, Copy, Debug, Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
}

/// Lock shards. `flush` and `len` walk the map one shard at a time, holding
/// that shard's lock: with 128 shards a million sessions make ~8,000 per
/// shard, so other requests wait about a millisecond at most, not 20.
const SHARDS: usize = 128;

/// Deletions between two yields in `flush`.
const FLUSH_BATCH: usize = 1024;

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            map: DashMap::with_capacity_and_hasher_and_shard_amount(
                0,
                BuildHasherDefault::default(),
                SHARDS,
            ),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SessionInterface for MemoryStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        Ok(self.map.contains_key(id))
    }

    async fn is_valid(&self, id: &SessionId) -> Result<bool> {
        let now = now_millis();
        Ok(self.map.get(id).is_some_and(|r| r.is_live(now)))
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let now = now_millis();
        match self.map.get(id) {
            Some(record) if record.is_live(now) => {
                let mut session = codec::decode(*id, &record.bytes, "memory record")?;
                session.set_expires_at_millis(record.expires_at_ms);
                Ok(Some(session))
            }
            _ => Ok(None),
        }
    }

    async fn set(&self, session: &Session) -> Result<()> {
        storable_version(session.id(), session.version())?;
        let record = Record::encode(session, session.version())?;
        self.map.insert(session.id(), record);
        Ok(())
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.map.remove(id);
        Ok(())
    }

    async fn create(&self, session: &Session) -> Result<()> {
        storable_version(session.id(), session.version())?;
        let record = Record::encode(session, session.version())?;
        match self.map.entry(session.id()) {
            MapEntry::Occupied(_) => Err(Error::IdCollision { id: session.id() }),
            MapEntry::Vacant(slot) => {
                slot.insert(record);
                Ok(())
            }
        }
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        let version = next_version(session.id(), expected_version)?;
        let now = now_millis();
        let Some(mut stored) = self.map.get_mut(&session.id()) else {
            return Ok(UpdateOutcome::Gone);
        };
        if !stored.is_live(now) {
            return Ok(UpdateOutcome::Gone);
        }
        if stored.version != expected_version {
            return Ok(UpdateOutcome::Conflict);
        }
        let expires_at_ms = stored.expires_at_ms.max(session.expires_at_millis());
        *stored = Record::encode_expiring(session, version, expires_at_ms)?;
        Ok(UpdateOutcome::Updated { version })
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        let now = now_millis();
        let mut outcome = DeleteOutcome::Gone;
        // Decided under the shard's write lock, so no save slips in between.
        self.map.remove_if(id, |_, record| {
            if !record.is_live(now) {
                outcome = DeleteOutcome::Gone;
                false
            } else if record.version != expected_version {
                outcome = DeleteOutcome::Conflict;
                false
            } else {
                outcome = DeleteOutcome::Deleted;
                true
            }
        });
        Ok(outcome)
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let now = now_millis();
        let Some(mut stored) = self.map.get_mut(id) else {
            return Ok(false);
        };
        if !stored.is_live(now) {
            return Ok(false);
        }
        let expires_at_ms = stored.expires_at_ms.max(unix_millis(expires_at));
        codec::patch_expires_at(&mut stored.bytes, expires_at_ms, "memory record")?;
        stored.expires_at_ms = expires_at_ms;
        Ok(true)
    }

    async fn flush(&self) -> Result<u64> {
        let now = now_millis();
        // Find under read locks, then delete in small batches, yielding in
        // between: a million-session sweep never holds a lock, or a runtime
        // thread, for long.
        let expired: Vec<SessionId> = self
            .map
            .iter()
            .filter(|entry| !entry.is_live(now))
            .map(|entry| *entry.key())
            .collect();
        let mut removed = 0u64;
        for batch in expired.chunks(FLUSH_BATCH) {
            for id in batch {
                // Re-checked: it may have been touched since.
                if self
                    .map
                    .remove_if(id, |_, record| !record.is_live(now))
                    .is_some()
                {
                    removed += 1;
                }
            }
            tokio::task::yield_now().await;
        }
        Ok(removed)
    }

    async fn clear(&self) -> Result<()> {
        self.map.clear();
        Ok(())
    }

    async fn len(&self) -> Result<u64> {
        let now = now_millis();
        Ok(self.map.iter().filter(|r| r.is_live(now)).count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher as _;
    use std::time::Duration;

    use session_store::SessionToken;

    use super::*;

    #[test]
    fn ids_hash_apart() {
        let hasher = BuildHasherDefault::<IdHasher>::default();
        let hashes: HashSet<u64> = (0..1000)
            .map(|_| hasher.hash_one(SessionToken::generate().id()))
            .collect();
        assert_eq!(
            hashes.len(),
            1000,
            "ids share hashes: one shard, long chains"
        );
    }

    #[tokio::test]
    async fn flush_counts_what_it_removed() {
        let store = MemoryStore::new();
        for idle in [50, 50, 60_000] {
            let session = Session::new(SessionToken::generate().id(), Duration::from_millis(idle));
            store.create(&session).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(store.flush().await.unwrap(), 2);
        assert_eq!(store.len().await.unwrap(), 1);
    }
}

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
//! ## User index
//!
//! A second sharded map lists, per user key, the ids of the records bound
//! to it ([`sessions_of`](SessionInterface::sessions_of),
//! [`revoke_user`](SessionInterface::revoke_user)). It is changed only
//! while the record's own shard lock is held, by the same call that writes
//! or removes the record, so it always agrees with the records: no
//! interleaving of writers leaves a bound record unlisted or a removed one
//! listed. A write of a session that is bound to no user, or whose binding
//! did not change, does no index work (one comparison).
//!
//! ```
//! use std::sync::Arc;
//! use session_store_memory::MemoryStore;
//! use session_store::{SessionConfig, SessionManager};
//!
//! let manager = SessionManager::new(Arc::new(MemoryStore::new()), SessionConfig::default()).unwrap();
//! ```
#![warn(missing_docs)]

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use session_store::backend::{next_version, storable_version};
use session_store::time::OffsetDateTime;
use session_store::{
    codec, now_millis, unix_millis, DeleteOutcome, Error, FlushReport, Result, Session, SessionId,
    SessionInterface, UpdateOutcome,
};

/// Names a record in error messages.
const ORIGIN: &str = "memory record";

/// A stored record: the expiry and version are kept beside the encoded bytes
/// so that checks need no decoding. These fields are the truth: `touch`
/// moves only `expires_at_ms`, and the expiry in the bytes' header, which
/// loaded sessions share, is never read.
#[derive(Debug)]
struct Record {
    expires_at_ms: i64,
    version: u64,
    /// Shared with the sessions loaded from it: a load copies nothing.
    bytes: Bytes,
}

impl Record {
    /// The user key this record is bound to, read from the encoded bytes
    /// (format 3); `None` for an unbound record, at the cost of one byte
    /// comparison.
    fn user_key(&self) -> Option<&str> {
        if self.bytes.first() != Some(&codec::FORMAT_V3) {
            return None;
        }
        // The store encoded these bytes itself, so the key is readable; a
        // record that were not would simply be treated as unbound.
        codec::user_key(&self.bytes, ORIGIN).ok().flatten()
    }

    fn encode(session: &Session, version: u64) -> Result<Self> {
        Self::encode_expiring(session, version, session.expires_at_millis())
    }

    fn encode_expiring(session: &Session, version: u64, expires_at_ms: i64) -> Result<Self> {
        let mut bytes = codec::encode(session, version)?;
        codec::patch_expires_at(&mut bytes, expires_at_ms, ORIGIN)?;
        Ok(Record {
            expires_at_ms,
            version,
            bytes: Bytes::from(bytes.into_boxed_slice()),
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
    /// The user index: user key to the ids of the records bound to it.
    /// Lock order: a record's shard, then an index shard (never the other
    /// way round), and every change of an id's entry happens under that
    /// id's record shard lock.
    users: DashMap<String, HashSet<SessionId, BuildHasherDefault<IdHasher>>>,
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
            users: DashMap::with_shard_amount(SHARDS),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists `id` under `user`. Call with `id`'s record shard locked.
    fn index(&self, user: &str, id: SessionId) {
        // Looked up first so that a known user costs no key allocation.
        if let Some(mut ids) = self.users.get_mut(user) {
            ids.insert(id);
            return;
        }
        self.users.entry(user.to_owned()).or_default().insert(id);
    }

    /// Takes `id` off `user`'s list, dropping the list once empty. Call
    /// with `id`'s record shard locked.
    fn unindex(&self, user: &str, id: &SessionId) {
        let now_empty = match self.users.get_mut(user) {
            Some(mut ids) => {
                ids.remove(id);
                ids.is_empty()
            }
            None => false,
        };
        if now_empty {
            // Re-checked under the index shard's lock: another record of
            // the user may have been listed meanwhile.
            self.users.remove_if(user, |_, ids| ids.is_empty());
        }
    }

    /// Moves `id` from the user of the record it replaces to the user of
    /// its new record. Call with `id`'s record shard locked. Nothing to do
    /// (one comparison) when the binding did not change.
    fn reindex(&self, id: SessionId, old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        if let Some(new) = new {
            self.index(new, id);
        }
        if let Some(old) = old {
            self.unindex(old, &id);
        }
    }

    /// The ids listed under `user`, copied so that no index lock is held
    /// while records are read (the lock order is record, then index).
    fn listed(&self, user: &str) -> Vec<SessionId> {
        self.users
            .get(user)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
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
                let mut session = codec::decode_owned(*id, record.bytes.clone(), ORIGIN)?;
                session.set_expires_at_millis(record.expires_at_ms);
                Ok(Some(session))
            }
            _ => Ok(None),
        }
    }

    async fn set(&self, session: &Session) -> Result<()> {
        storable_version(session.id(), session.version())?;
        let record = Record::encode(session, session.version())?;
        match self.map.entry(session.id()) {
            MapEntry::Occupied(mut slot) => {
                self.reindex(session.id(), slot.get().user_key(), session.user_key());
                slot.insert(record);
            }
            MapEntry::Vacant(slot) => {
                if let Some(user) = session.user_key() {
                    self.index(user, session.id());
                }
                slot.insert(record);
            }
        }
        Ok(())
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.map.remove_if(id, |id, record| {
            if let Some(user) = record.user_key() {
                self.unindex(user, id);
            }
            true
        });
        Ok(())
    }

    async fn create(&self, session: &Session) -> Result<()> {
        storable_version(session.id(), session.version())?;
        let record = Record::encode(session, session.version())?;
        match self.map.entry(session.id()) {
            MapEntry::Occupied(_) => Err(Error::IdCollision { id: session.id() }),
            MapEntry::Vacant(slot) => {
                if let Some(user) = session.user_key() {
                    self.index(user, session.id());
                }
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
        let record = Record::encode_expiring(session, version, expires_at_ms)?;
        // Still under the record's lock: the index moves with the record.
        self.reindex(session.id(), stored.user_key(), session.user_key());
        *stored = record;
        Ok(UpdateOutcome::Updated { version })
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        let now = now_millis();
        let mut outcome = DeleteOutcome::Gone;
        // Decided under the shard's write lock, so no save slips in between.
        self.map.remove_if(id, |id, record| {
            if !record.is_live(now) {
                outcome = DeleteOutcome::Gone;
                false
            } else if record.version != expected_version {
                outcome = DeleteOutcome::Conflict;
                false
            } else {
                outcome = DeleteOutcome::Deleted;
                if let Some(user) = record.user_key() {
                    self.unindex(user, id);
                }
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
        // Only the record's field moves: a load takes the expiry from it,
        // never from the header in the bytes, which loaded sessions share.
        stored.expires_at_ms = stored.expires_at_ms.max(unix_millis(expires_at));
        Ok(true)
    }

    async fn flush(&self) -> Result<u64> {
        Ok(self.flush_reporting().await?.deleted)
    }

    async fn flush_reporting(&self) -> Result<FlushReport> {
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
        let mut report = FlushReport::default();
        for batch in expired.chunks(FLUSH_BATCH) {
            for id in batch {
                // Re-checked: it may have been touched since.
                let expired = |id: &SessionId, record: &Record| {
                    if record.is_live(now) {
                        return false;
                    }
                    if let Some(user) = record.user_key() {
                        self.unindex(user, id);
                    }
                    true
                };
                if let Some((id, record)) = self.map.remove_if(id, expired) {
                    report.deleted += 1;
                    report
                        .expired
                        .push((id, record.user_key().map(str::to_owned)));
                }
            }
            tokio::task::yield_now().await;
        }
        Ok(report)
    }

    async fn clear(&self) -> Result<()> {
        // Shard by shard under its write lock, so each record leaves the
        // index in the same step (a wholesale clear of the index could drop
        // a record written between the two clears).
        self.map.retain(|id, record| {
            if let Some(user) = record.user_key() {
                self.unindex(user, id);
            }
            false
        });
        Ok(())
    }

    async fn len(&self) -> Result<u64> {
        let now = now_millis();
        Ok(self.map.iter().filter(|r| r.is_live(now)).count() as u64)
    }

    async fn sessions_of(&self, user_key: &str) -> Result<Vec<Session>> {
        let now = now_millis();
        let mut sessions = Vec::new();
        for id in self.listed(user_key) {
            let Some(record) = self.map.get(&id) else {
                continue;
            };
            // The record is the truth: it may have been rebound since the
            // listing was copied.
            if record.is_live(now) && record.user_key() == Some(user_key) {
                let mut session = codec::decode_owned(id, record.bytes.clone(), ORIGIN)?;
                session.set_expires_at_millis(record.expires_at_ms);
                sessions.push(session);
            }
        }
        Ok(sessions)
    }

    async fn revoke_user(
        &self,
        user_key: &str,
        except: Option<&SessionId>,
    ) -> Result<Vec<SessionId>> {
        let mut revoked = Vec::new();
        for id in self.listed(user_key) {
            if Some(&id) == except {
                continue;
            }
            // Decided under the record's lock: a rebinding save cannot slip
            // between the check and the delete.
            let bound_here = |id: &SessionId, record: &Record| {
                if record.user_key() != Some(user_key) {
                    return false;
                }
                self.unindex(user_key, id);
                true
            };
            if self.map.remove_if(&id, bound_here).is_some() {
                revoked.push(id);
            }
        }
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;
    use std::time::Duration;

    use std::collections::{BTreeSet, HashMap};
    use std::sync::Arc;

    use session_store::{SessionToken, UserBinding};

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

    fn bound_to(user: Option<&str>) -> Session {
        let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
        s.set_user(user.map(|u| UserBinding::new(u, Default::default()).unwrap()));
        s
    }

    /// The index lists exactly the records bound to each user: no bound
    /// record missing, no entry for a record that is gone or rebound, no
    /// empty list.
    fn assert_index_agrees(store: &MemoryStore) {
        let mut expected: HashMap<String, BTreeSet<SessionId>> = HashMap::new();
        for entry in store.map.iter() {
            if let Some(user) = entry.user_key() {
                expected
                    .entry(user.to_owned())
                    .or_default()
                    .insert(*entry.key());
            }
        }
        let actual: HashMap<String, BTreeSet<SessionId>> = store
            .users
            .iter()
            .map(|e| (e.key().clone(), e.value().iter().copied().collect()))
            .collect();
        assert_eq!(actual, expected, "the index disagrees with the records");
    }

    /// Many tasks rebinding, deleting, revoking, creating and clearing at
    /// once over a few shared sessions and users: afterwards the index and
    /// the records agree exactly, and every revoke returned only ids whose
    /// records it took away.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_index_agrees_with_the_records_after_racing_writers() {
        const USERS: [Option<&str>; 4] = [Some("ada"), Some("bob"), Some("ada2"), None];
        let store = Arc::new(MemoryStore::new());
        let shared: Vec<Session> = (0..16).map(|i| bound_to(USERS[i % 4])).collect();
        for s in &shared {
            store.create(s).await.unwrap();
        }
        let mut tasks = Vec::new();
        for worker in 0..8usize {
            let (store, shared) = (store.clone(), shared.clone());
            tasks.push(tokio::spawn(async move {
                for round in 0..400usize {
                    let pick = (worker * 7 + round * 13) % shared.len();
                    let mut s = shared[pick].clone();
                    let user = USERS[(worker + round) % USERS.len()];
                    s.set_user(user.map(|u| UserBinding::new(u, Default::default()).unwrap()));
                    match round % 8 {
                        0..=2 => {
                            // A rebinding save at whatever version is there.
                            if let Some(stored) = store.get(&s.id()).await.unwrap() {
                                let _ = store.update(&s, stored.version()).await.unwrap();
                            }
                        }
                        3 => store.set(&s).await.unwrap(),
                        4 => {
                            let _ = store.create(&s).await;
                        }
                        5 => store.delete(&s.id()).await.unwrap(),
                        6 => {
                            let victim = USERS[round % 3].unwrap();
                            let except = (round % 2 == 0).then_some(s.id());
                            store.revoke_user(victim, except.as_ref()).await.unwrap();
                        }
                        _ => {
                            let fresh = bound_to(user);
                            store.create(&fresh).await.unwrap();
                            if round % 16 == 7 {
                                store.delete_if(&fresh.id(), 1).await.unwrap();
                            }
                        }
                    }
                    if round % 100 == 99 && worker == 0 {
                        store.clear().await.unwrap();
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_index_agrees(&store);
        for user in USERS.iter().flatten() {
            let listed = store.sessions_of(user).await.unwrap();
            assert!(listed.iter().all(|s| s.user_key() == Some(*user)));
            let revoked = store.revoke_user(user, None).await.unwrap();
            assert_eq!(revoked.len(), listed.len(), "{user}");
        }
        assert_index_agrees(&store);
        assert!(store.users.is_empty(), "lists left for revoked users");
    }

    #[tokio::test]
    async fn expired_records_leave_the_index_with_flush() {
        let store = MemoryStore::new();
        let mut gone = bound_to(Some("ada"));
        gone.set_expires_at_millis(now_millis() - 1);
        store.set(&gone).await.unwrap();
        let stays = bound_to(Some("ada"));
        store.create(&stays).await.unwrap();
        let unbound = bound_to(None);
        let mut gone_too = unbound.clone();
        gone_too.set_expires_at_millis(now_millis() - 1);
        store.set(&gone_too).await.unwrap();
        let report = store.flush_reporting().await.unwrap();
        assert_eq!(report.deleted, 2);
        let named: HashMap<SessionId, Option<String>> = report.expired.into_iter().collect();
        assert_eq!(
            named,
            HashMap::from([(gone.id(), Some("ada".to_owned())), (unbound.id(), None)])
        );
        assert_index_agrees(&store);
        assert_eq!(store.listed("ada"), vec![stays.id()]);
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

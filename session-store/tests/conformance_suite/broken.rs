//! Deliberately broken stores: thin wrappers over `ReferenceStore`, each
//! breaking one sentence of the contract the way real stores have.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use session_store::conformance::{factory, ReferenceStore, StoreFactory};
use session_store::time::OffsetDateTime;
use session_store::{
    from_unix_millis, unix_millis, DeleteOutcome, Result, Session, SessionId, SessionInterface,
    UpdateOutcome, MAX_VERSION,
};

/// How a broken store misbehaves.
#[derive(Debug, Clone, Copy)]
pub enum Bug {
    /// Stores every session as if it never expired.
    IgnoresExpiry,
    /// `update` always succeeds, whatever the version or state.
    NeverConflicts,
    /// `touch` of a missing or expired session creates one.
    TouchRevives,
    /// `create` overwrites instead of reporting a collision.
    CreateOverwrites,
    /// `create` overwrites an expired record (while `exists` still sees it).
    CreateOverwritesExpired,
    /// `exists` answers false for an expired record that `create` still
    /// collides with.
    ExistsIgnoresExpired,
    /// `update` keeps stored keys the new session removed.
    UpdateMerges,
    /// `update` stores no flash values.
    UpdateDropsFlash,
    /// `update` keeps the old flash values when the new session has none.
    UpdateKeepsOldFlash,
    /// `update` stores no write ids.
    UpdateDropsWriteIds,
    /// `touch` rewrites the record without its write ids.
    TouchDropsWriteIds,
    /// `set` and `create` store no write ids.
    WritesDropWriteIds,
    /// `get` answers from a cache that `delete`, `delete_if` and `clear` do
    /// not invalidate.
    CacheNotInvalidatedByDelete,
    /// `len` counts expired records.
    LenCountsExpired,
    /// Judges expiry by a clock this many milliseconds off (negative:
    /// behind).
    ClockSkewMillis(i64),
    /// `update` stores the session's expiry even when earlier.
    UpdateStoresGivenExpiry,
    /// `touch` stores the given expiry even when earlier.
    TouchStoresGivenExpiry,
    /// `touch` returns false when it did not move the expiry.
    TouchFalseWhenNotMoved,
    /// `set` and `create` store any version.
    AcceptsAnyVersion,
    /// `update` at `MAX_VERSION` stores `MAX_VERSION` again.
    UpdateCapsAtMax,
    /// `update` at `MAX_VERSION` wraps to 1.
    UpdateWraps,
    /// Versions pass through an `f64` (a Lua number).
    VersionsAsDoubles,
    /// `update` reads, awaits, then writes: not atomic.
    NonAtomicUpdate,
    /// `delete_if` reads, awaits, then deletes: not atomic.
    NonAtomicDeleteIf,
    /// `delete_if` deletes a live record whatever its version.
    DeleteIfIgnoresVersion,
    /// `delete_if` of an expired record deletes it and says `Deleted`.
    DeleteIfExpiredSaysDeleted,
    /// `update` of an expired record at the expected version succeeds.
    UpdateRevivesExpired,
    /// `set` keeps the stored record when its version is higher.
    SetKeepsHigherVersion,
    /// `flush` also deletes records expiring within 2 s.
    FlushDeletesSoonExpiring,
    /// `flush` deletes one batch of 1000 and stops.
    FlushOneBatch,
    /// `flush` stops when a batch deleted fewer than the batch size.
    FlushStopsOnShortBatch,
    /// `flush` picks the expired ids, then deletes them by id without
    /// checking that they are still expired.
    FlushWithoutRecheck,
    /// `clear` stops when a batch deleted fewer than the batch size.
    ClearStopsOnShortBatch,
    /// `clear` deletes only live records.
    ClearKeepsExpired,
    /// `sessions_of` and `revoke_user` match user keys by prefix (`ada`
    /// finds `ada2`), like a careless `LIKE 'ada%'` or `SCAN user:ada*`.
    UserIndexByPrefix,
    /// `revoke_user` ignores `except`.
    RevokeIgnoresExcept,
    /// The index keeps the user a session was created with, whatever later
    /// writes bind it to.
    UserIndexKeepsFirstBinding,
    /// `sessions_of` lists expired sessions too.
    UserIndexListsExpired,
}

/// A `ReferenceStore` with one bug. It remembers every id it was given, so
/// that its batched `flush` and `clear` can walk them the way a SQL store
/// walks rows.
#[derive(Debug)]
pub struct Broken {
    inner: ReferenceStore,
    bug: Bug,
    ids: Mutex<Vec<SessionId>>,
    cache: Mutex<HashMap<SessionId, Session>>,
    /// What `set` and `create` were last given per id, expired or not.
    written: Mutex<HashMap<SessionId, Session>>,
}

/// A factory of fresh stores with `bug`.
pub fn broken(bug: Bug) -> Arc<dyn StoreFactory> {
    Arc::new(factory(move || async move {
        Some(Arc::new(Broken {
            inner: ReferenceStore::new(),
            bug,
            ids: Mutex::new(Vec::new()),
            cache: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
        }) as Arc<dyn SessionInterface>)
    }))
}

/// The batch of `FlushOneBatch`, like the SQL stores'.
const BATCH: usize = 1000;
/// The batch of the stores that stop on a short batch: small, so that the
/// concurrent deletes of the cases land in some batch's window.
const SMALL_BATCH: usize = 100;

async fn pause() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

impl Broken {
    fn skew(&self) -> i64 {
        match self.bug {
            Bug::ClockSkewMillis(ms) => ms,
            _ => 0,
        }
    }

    /// What goes into the inner store. A clock `skew` ms behind sees every
    /// expiry `skew` ms later: stored expiries are shifted instead of the
    /// reference's clock.
    fn inbound(&self, session: &Session) -> Session {
        let mut s = session.clone();
        match self.bug {
            Bug::IgnoresExpiry => s.set_expires_at_millis(i64::MAX / 2),
            Bug::ClockSkewMillis(ms) => s.set_expires_at_millis(s.expires_at_millis() - ms),
            Bug::WritesDropWriteIds => s.set_recent_writes(Vec::new()),
            Bug::VersionsAsDoubles => s.set_version(s.version() as f64 as u64),
            _ => {}
        }
        s
    }

    fn outbound(&self, session: Session) -> Session {
        let mut s = session;
        if self.skew() != 0 {
            s.set_expires_at_millis(s.expires_at_millis() + self.skew());
        }
        s
    }

    fn remember(&self, id: SessionId) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.push(id);
        }
    }

    fn note(&self, session: &Session) {
        if let Ok(mut written) = self.written.lock() {
            match written.get(&session.id()) {
                // The first binding stays for `UserIndexKeepsFirstBinding`.
                Some(first) if first.user().is_some() => {
                    let first = first.user().cloned();
                    let mut s = session.clone();
                    if matches!(self.bug, Bug::UserIndexKeepsFirstBinding) {
                        s.set_user(first);
                    }
                    written.insert(session.id(), s);
                }
                _ => {
                    written.insert(session.id(), session.clone());
                }
            }
        }
    }

    /// The record last written under `id` if one is stored, expired or not.
    async fn raw(&self, id: &SessionId) -> Result<Option<Session>> {
        if !self.inner.exists(id).await? {
            return Ok(None);
        }
        Ok(self.written.lock().ok().and_then(|w| w.get(id).cloned()))
    }

    fn first_binding(&self, id: &SessionId) -> Option<String> {
        self.written
            .lock()
            .ok()
            .and_then(|w| w.get(id).and_then(|s| s.user_key().map(str::to_owned)))
    }

    fn known(&self) -> Vec<SessionId> {
        self.ids.lock().map(|ids| ids.clone()).unwrap_or_default()
    }

    fn forget_cache(&self, id: &SessionId) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(id);
        }
    }

    fn cache(&self, session: &Session) {
        if let Bug::CacheNotInvalidatedByDelete = self.bug {
            if let Ok(mut cache) = self.cache.lock() {
                cache.insert(session.id(), session.clone());
            }
        }
    }

    /// Stored and expired, judged through the reference's own answers.
    async fn expired(&self, id: &SessionId) -> Result<bool> {
        Ok(self.inner.exists(id).await? && self.inner.get(id).await?.is_none())
    }

    /// The stored record, expired or not (read through a far-future touch
    /// would change it, so through `get` only when live).
    async fn live(&self, id: &SessionId) -> Result<Option<Session>> {
        self.inner.get(id).await
    }

    /// Deletes `ids` one by one, counting those still there.
    async fn delete_counting(&self, ids: &[SessionId]) -> Result<u64> {
        let mut deleted = 0;
        for id in ids {
            if self.inner.exists(id).await? {
                self.inner.delete(id).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn expired_ids(&self, limit: usize) -> Result<Vec<SessionId>> {
        let mut out = Vec::new();
        for id in self.known() {
            if out.len() == limit {
                break;
            }
            if self.expired(&id).await? {
                out.push(id);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl SessionInterface for Broken {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        if let Bug::ExistsIgnoresExpired = self.bug {
            return Ok(self.inner.get(id).await?.is_some());
        }
        self.inner.exists(id).await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        if let Bug::CacheNotInvalidatedByDelete = self.bug {
            if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(id).cloned()) {
                return Ok(Some(hit));
            }
        }
        let got = self.inner.get(id).await?.map(|s| self.outbound(s));
        if let Some(s) = &got {
            self.cache(s);
        }
        Ok(got)
    }

    async fn set(&self, session: &Session) -> Result<()> {
        self.remember(session.id());
        self.note(session);
        self.forget_cache(&session.id());
        match self.bug {
            Bug::AcceptsAnyVersion => {
                let mut s = session.clone();
                s.set_version(1);
                self.inner.set(&s).await?;
                // Report the given version back, as a store that kept it would.
                return Ok(());
            }
            Bug::SetKeepsHigherVersion => {
                if let Some(stored) = self.live(&session.id()).await? {
                    if stored.version() > session.version() {
                        return Ok(());
                    }
                }
            }
            _ => {}
        }
        self.inner.set(&self.inbound(session)).await
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.inner.delete(id).await
    }

    async fn create(&self, session: &Session) -> Result<()> {
        self.remember(session.id());
        if !self.inner.exists(&session.id()).await? {
            self.note(session);
        }
        self.forget_cache(&session.id());
        match self.bug {
            Bug::CreateOverwrites => return self.inner.set(session).await,
            Bug::CreateOverwritesExpired if self.expired(&session.id()).await? => {
                return self.inner.set(session).await
            }
            Bug::AcceptsAnyVersion => {
                let mut s = session.clone();
                s.set_version(1);
                return self.inner.create(&s).await;
            }
            _ => {}
        }
        self.inner.create(&self.inbound(session)).await
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        self.forget_cache(&session.id());
        let id = session.id();
        match self.bug {
            Bug::NeverConflicts => {
                let mut next = session.clone();
                next.set_version(expected_version + 1);
                self.inner.set(&next).await?;
                return Ok(UpdateOutcome::Updated {
                    version: expected_version + 1,
                });
            }
            Bug::UpdateCapsAtMax | Bug::UpdateWraps if expected_version == MAX_VERSION => {
                let Some(_) = self.live(&id).await? else {
                    return Ok(UpdateOutcome::Gone);
                };
                let version = if let Bug::UpdateWraps = self.bug {
                    1
                } else {
                    MAX_VERSION
                };
                let mut next = session.clone();
                next.set_version(version);
                self.inner.set(&next).await?;
                return Ok(UpdateOutcome::Updated { version });
            }
            Bug::NonAtomicUpdate => {
                let Some(stored) = self.live(&id).await? else {
                    return Ok(UpdateOutcome::Gone);
                };
                if stored.version() != expected_version {
                    return Ok(UpdateOutcome::Conflict);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                let mut next = session.clone();
                next.set_version(expected_version + 1);
                next.set_expires_at_millis(
                    next.expires_at_millis().max(stored.expires_at_millis()),
                );
                self.inner.set(&next).await?;
                return Ok(UpdateOutcome::Updated {
                    version: expected_version + 1,
                });
            }
            Bug::UpdateRevivesExpired if self.expired(&id).await? => {
                // A store reading the version from a row it never checked
                // the expiry of.
                let mut next = session.clone();
                next.set_version(expected_version + 1);
                self.inner.set(&next).await?;
                return Ok(UpdateOutcome::Updated {
                    version: expected_version + 1,
                });
            }
            _ => {}
        }
        let stored = self.live(&id).await?;
        let mut next = self.inbound(session);
        if let Some(stored) = &stored {
            match self.bug {
                Bug::UpdateMerges => {
                    for (k, v) in stored.data() {
                        next.data_mut()
                            .entry(k.clone())
                            .or_insert_with(|| v.clone());
                    }
                }
                Bug::UpdateKeepsOldFlash if next.flash().is_empty() => {
                    *next.flash_mut() = stored.flash().clone();
                }
                _ => {}
            }
        }
        match self.bug {
            Bug::UpdateDropsFlash => next.flash_mut().clear(),
            Bug::UpdateDropsWriteIds => next.set_recent_writes(Vec::new()),
            _ => {}
        }
        let outcome = self.inner.update(&next, expected_version).await?;
        if let (Bug::UpdateStoresGivenExpiry, UpdateOutcome::Updated { version }) =
            (self.bug, outcome)
        {
            next.set_version(version);
            self.inner.set(&next).await?;
        }
        Ok(outcome)
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        match self.bug {
            Bug::NonAtomicDeleteIf => {
                let Some(stored) = self.live(id).await? else {
                    return Ok(DeleteOutcome::Gone);
                };
                if stored.version() != expected_version {
                    return Ok(DeleteOutcome::Conflict);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                self.inner.delete(id).await?;
                Ok(DeleteOutcome::Deleted)
            }
            Bug::DeleteIfIgnoresVersion => {
                if self.live(id).await?.is_none() {
                    return Ok(DeleteOutcome::Gone);
                }
                self.inner.delete(id).await?;
                Ok(DeleteOutcome::Deleted)
            }
            Bug::DeleteIfExpiredSaysDeleted if self.expired(id).await? => {
                self.inner.delete(id).await?;
                Ok(DeleteOutcome::Deleted)
            }
            _ => self.inner.delete_if(id, expected_version).await,
        }
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        self.forget_cache(id);
        let wanted = unix_millis(expires_at) - self.skew();
        let before = self.live(id).await?;
        match (self.bug, &before) {
            (Bug::TouchStoresGivenExpiry, Some(stored)) => {
                let mut s = stored.clone();
                s.set_expires_at_millis(wanted);
                self.inner.set(&s).await?;
                return Ok(true);
            }
            (Bug::TouchDropsWriteIds, Some(stored)) => {
                let mut s = stored.clone();
                s.set_recent_writes(Vec::new());
                s.set_expires_at_millis(s.expires_at_millis().max(wanted));
                self.inner.set(&s).await?;
                return Ok(true);
            }
            (Bug::TouchFalseWhenNotMoved, Some(stored)) if stored.expires_at_millis() >= wanted => {
                return Ok(false);
            }
            (Bug::IgnoresExpiry, _) => {
                return self.inner.touch(id, from_unix_millis(i64::MAX / 2)).await;
            }
            _ => {}
        }
        if self.inner.touch(id, from_unix_millis(wanted)).await? {
            return Ok(true);
        }
        if let Bug::TouchRevives = self.bug {
            let mut s = Session::new(*id, Duration::from_secs(1));
            s.set_expires_at(expires_at);
            self.inner.set(&s).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn flush(&self) -> Result<u64> {
        match self.bug {
            Bug::FlushDeletesSoonExpiring => {
                let mut deleted = 0;
                for id in self.known() {
                    let soon = self.live(&id).await?.is_some_and(|s| {
                        s.expires_at_millis() < session_store::now_millis() + 2000
                    });
                    if soon || self.expired(&id).await? {
                        self.inner.delete(&id).await?;
                        deleted += 1;
                    }
                }
                Ok(deleted)
            }
            Bug::FlushOneBatch => {
                let batch = self.expired_ids(BATCH).await?;
                self.delete_counting(&batch).await
            }
            Bug::FlushStopsOnShortBatch => {
                let mut total = 0;
                loop {
                    let batch = self.expired_ids(SMALL_BATCH).await?;
                    pause().await;
                    let deleted = self.delete_counting(&batch).await?;
                    total += deleted;
                    if deleted < SMALL_BATCH as u64 {
                        return Ok(total);
                    }
                }
            }
            Bug::FlushWithoutRecheck => {
                let all = self.expired_ids(usize::MAX).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.delete_counting(&all).await
            }
            _ => self.inner.flush().await,
        }
    }

    async fn clear(&self) -> Result<()> {
        if let Ok(mut cache) = self.cache.lock() {
            if !matches!(self.bug, Bug::CacheNotInvalidatedByDelete) {
                cache.clear();
            }
        }
        match self.bug {
            Bug::ClearStopsOnShortBatch => loop {
                let mut batch = Vec::new();
                for id in self.known() {
                    if batch.len() == SMALL_BATCH {
                        break;
                    }
                    if self.inner.exists(&id).await? {
                        batch.push(id);
                    }
                }
                pause().await;
                if self.delete_counting(&batch).await? < SMALL_BATCH as u64 {
                    return Ok(());
                }
            },
            Bug::ClearKeepsExpired => {
                for id in self.known() {
                    if self.live(&id).await?.is_some() {
                        self.inner.delete(&id).await?;
                    }
                }
                Ok(())
            }
            _ => self.inner.clear().await,
        }
    }

    async fn sessions_of(&self, user_key: &str) -> Result<Vec<Session>> {
        match self.bug {
            Bug::UserIndexByPrefix
            | Bug::UserIndexKeepsFirstBinding
            | Bug::UserIndexListsExpired => {
                let mut out = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for id in self.known() {
                    if !seen.insert(id) {
                        continue;
                    }
                    let record = match self.bug {
                        Bug::UserIndexListsExpired => self.raw(&id).await?,
                        _ => self.inner.get(&id).await?,
                    };
                    let Some(record) = record else { continue };
                    let indexed_under = match self.bug {
                        Bug::UserIndexKeepsFirstBinding => self.first_binding(&id),
                        _ => record.user_key().map(str::to_owned),
                    };
                    let matches = match (&indexed_under, self.bug) {
                        (Some(key), Bug::UserIndexByPrefix) => key.starts_with(user_key),
                        (Some(key), _) => key == user_key,
                        (None, _) => false,
                    };
                    if matches {
                        out.push(record);
                    }
                }
                Ok(out)
            }
            _ => self.inner.sessions_of(user_key).await,
        }
    }

    async fn revoke_user(
        &self,
        user_key: &str,
        except: Option<&SessionId>,
    ) -> Result<Vec<SessionId>> {
        match self.bug {
            Bug::RevokeIgnoresExcept => self.inner.revoke_user(user_key, None).await,
            Bug::UserIndexByPrefix => {
                let mut revoked = Vec::new();
                for s in self.sessions_of(user_key).await? {
                    if Some(&s.id()) != except {
                        self.inner.delete(&s.id()).await?;
                        revoked.push(s.id());
                    }
                }
                Ok(revoked)
            }
            _ => self.inner.revoke_user(user_key, except).await,
        }
    }

    async fn len(&self) -> Result<u64> {
        if let Bug::LenCountsExpired = self.bug {
            let mut n = 0;
            let mut seen = std::collections::HashSet::new();
            for id in self.known() {
                if seen.insert(id) && self.inner.exists(&id).await? {
                    n += 1;
                }
            }
            return Ok(n);
        }
        self.inner.len().await
    }
}

//! A store shaped like the Redis one: every namespace is a key prefix in
//! one shared key space, so namespaces can nest (`app:` and `app:admin:`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use session_store::backend::{next_version, storable_version};
use session_store::conformance::StoreFactory;
use session_store::time::OffsetDateTime;
use session_store::{
    now_millis, unix_millis, DeleteOutcome, Error, Result, Session, SessionId, SessionInterface,
    UpdateOutcome,
};

/// How a prefixed store misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixBug {
    /// `clear` deletes every key starting with the prefix (nested
    /// namespaces included).
    ClearStartsWith,
    /// `len` counts every live key starting with the prefix.
    LenStartsWith,
}

type Space = Arc<Mutex<BTreeMap<String, Session>>>;

/// One namespace of a shared key space.
#[derive(Debug)]
pub struct PrefixStore {
    space: Space,
    prefix: String,
    bug: Option<PrefixBug>,
}

impl PrefixStore {
    fn key(&self, id: &SessionId) -> String {
        format!("{}{id}", self.prefix)
    }

    /// Whether `key` belongs to this namespace: the prefix followed by an
    /// id alone, not by a nested namespace's prefix. With `loose`, any key
    /// starting with the prefix (the bug).
    fn mine(&self, key: &str, loose: bool) -> bool {
        match key.strip_prefix(&self.prefix) {
            Some(rest) => loose || !rest.contains(':'),
            None => false,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Session>) -> R) -> Result<R> {
        let mut guard = self
            .space
            .lock()
            .map_err(|_| Error::backend("prefixed", "lock", "poisoned lock"))?;
        Ok(f(&mut guard))
    }
}

#[async_trait]
impl SessionInterface for PrefixStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        let key = self.key(id);
        self.with(|m| m.contains_key(&key))
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let (key, now) = (self.key(id), now_millis());
        self.with(|m| m.get(&key).filter(|s| !s.is_expired_at(now)).cloned())
    }

    async fn set(&self, session: &Session) -> Result<()> {
        storable_version(session.id(), session.version())?;
        let key = self.key(&session.id());
        self.with(|m| {
            m.insert(key, session.clone());
        })
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        let key = self.key(id);
        self.with(|m| {
            m.remove(&key);
        })
    }

    async fn create(&self, session: &Session) -> Result<()> {
        storable_version(session.id(), session.version())?;
        let key = self.key(&session.id());
        self.with(|m| {
            if m.contains_key(&key) {
                return Err(Error::IdCollision { id: session.id() });
            }
            m.insert(key, session.clone());
            Ok(())
        })?
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        let version = next_version(session.id(), expected_version)?;
        let (key, now) = (self.key(&session.id()), now_millis());
        self.with(|m| match m.get(&key) {
            None => UpdateOutcome::Gone,
            Some(stored) if stored.is_expired_at(now) => UpdateOutcome::Gone,
            Some(stored) if stored.version() != expected_version => UpdateOutcome::Conflict,
            Some(stored) => {
                let mut next = session.clone();
                next.set_version(version);
                next.set_expires_at_millis(
                    stored.expires_at_millis().max(session.expires_at_millis()),
                );
                m.insert(key, next);
                UpdateOutcome::Updated { version }
            }
        })
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        let (key, now) = (self.key(id), now_millis());
        self.with(|m| match m.get(&key) {
            None => DeleteOutcome::Gone,
            Some(stored) if stored.is_expired_at(now) => DeleteOutcome::Gone,
            Some(stored) if stored.version() != expected_version => DeleteOutcome::Conflict,
            Some(_) => {
                m.remove(&key);
                DeleteOutcome::Deleted
            }
        })
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let (key, now) = (self.key(id), now_millis());
        self.with(|m| match m.get_mut(&key) {
            Some(s) if !s.is_expired_at(now) => {
                let later = s.expires_at_millis().max(unix_millis(expires_at));
                s.set_expires_at_millis(later);
                true
            }
            _ => false,
        })
    }

    async fn flush(&self) -> Result<u64> {
        let now = now_millis();
        self.with(|m| {
            let before = m.len();
            m.retain(|k, s| !(self.mine(k, false) && s.is_expired_at(now)));
            (before - m.len()) as u64
        })
    }

    async fn clear(&self) -> Result<()> {
        let loose = self.bug == Some(PrefixBug::ClearStartsWith);
        self.with(|m| m.retain(|k, _| !self.mine(k, loose)))
    }

    async fn sessions_of(&self, user_key: &str) -> Result<Vec<Session>> {
        let now = now_millis();
        self.with(|m| {
            m.iter()
                .filter(|(k, s)| {
                    self.mine(k, false) && s.user_key() == Some(user_key) && !s.is_expired_at(now)
                })
                .map(|(_, s)| s.clone())
                .collect()
        })
    }

    async fn revoke_user(
        &self,
        user_key: &str,
        except: Option<&SessionId>,
    ) -> Result<Vec<SessionId>> {
        self.with(|m| {
            let mut revoked = Vec::new();
            m.retain(|k, s| {
                let revoke = self.mine(k, false)
                    && s.user_key() == Some(user_key)
                    && Some(&s.id()) != except;
                if revoke {
                    revoked.push(s.id());
                }
                !revoke
            });
            revoked
        })
    }

    async fn len(&self) -> Result<u64> {
        let (loose, now) = (self.bug == Some(PrefixBug::LenStartsWith), now_millis());
        self.with(|m| {
            m.iter()
                .filter(|(k, s)| self.mine(k, loose) && !s.is_expired_at(now))
                .count() as u64
        })
    }
}

/// Makes prefixed stores in one shared key space: `app<n>:` for `make`,
/// the outer prefix + `admin:` for `make_nested`.
#[derive(Debug)]
pub struct Prefixed {
    space: Space,
    next: AtomicU64,
    bug: Option<PrefixBug>,
    made: Mutex<Vec<Arc<PrefixStore>>>,
}

impl Prefixed {
    /// A factory of correct prefixed stores.
    pub fn correct() -> Self {
        Self::with_bug(None)
    }

    /// A factory of prefixed stores with `bug`.
    pub fn broken(bug: PrefixBug) -> Self {
        Self::with_bug(Some(bug))
    }

    fn with_bug(bug: Option<PrefixBug>) -> Self {
        Prefixed {
            space: Arc::default(),
            next: AtomicU64::new(0),
            bug,
            made: Mutex::new(Vec::new()),
        }
    }

    fn store(&self, prefix: String) -> Arc<PrefixStore> {
        let store = Arc::new(PrefixStore {
            space: self.space.clone(),
            prefix,
            bug: self.bug,
        });
        if let Ok(mut made) = self.made.lock() {
            made.push(store.clone());
        }
        store
    }
}

#[async_trait]
impl StoreFactory for Prefixed {
    async fn make(&self) -> Option<Arc<dyn SessionInterface>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.store(format!("app{n}:")))
    }

    async fn make_nested(
        &self,
        outer: &Arc<dyn SessionInterface>,
    ) -> Option<Arc<dyn SessionInterface>> {
        // Find the outer store among those made, by address.
        let outer_ptr = Arc::as_ptr(outer) as *const ();
        let prefix = self.made.lock().ok().and_then(|made| {
            made.iter()
                .find(|s| Arc::as_ptr(s) as *const () == outer_ptr)
                .map(|s| s.prefix.clone())
        })?;
        Some(self.store(format!("{prefix}admin:")))
    }
}

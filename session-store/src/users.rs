//! Sessions by user: listing a user's sessions, revoking them ("log out
//! everywhere", "log out other devices") and the per-user cap.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::active::{ActiveSession, State};
use crate::config::millis;
use crate::error::Result;
use crate::events::SessionEvent;
use crate::id::SessionId;
use crate::manager::SessionManager;
use crate::session::{from_unix_millis, now_millis, Session};
use crate::store::DeleteOutcome;

/// One live session of a user, as [`SessionManager::sessions_of`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSession {
    /// The store id (a hash of the cookie's token; safe to show and log).
    /// Compare it with [`ActiveSession::id`] to mark the current session.
    pub id: SessionId,
    /// When the session was created (a login keeps it: see
    /// [`ActiveSession::regenerate`]).
    pub created_at: OffsetDateTime,
    /// When the session was bound to the user (the login).
    pub signed_in_at: OffsetDateTime,
    /// When the session was last used, as far as the store knows: each
    /// request moves the expiry, written once it moved by
    /// [`touch_after`](crate::SessionConfig::touch_after), so this can be up
    /// to that much behind. Derived from the expiry and the idle timeout;
    /// near the absolute timeout it reads earlier than the real activity.
    pub last_active_at: OffsetDateTime,
    /// When the session expires unless used again.
    pub expires_at: OffsetDateTime,
    /// The metadata given to [`ActiveSession::set_user`].
    pub metadata: BTreeMap<String, String>,
}

impl SessionManager {
    /// The live sessions of `user_key`, most recently active first.
    /// [`Error::Unsupported`](crate::Error::Unsupported) when the store
    /// keeps no user index.
    pub async fn sessions_of(&self, user_key: &str) -> Result<Vec<UserSession>> {
        let (now, idle) = (now_millis(), millis(self.config().idle_timeout));
        let mut listed: Vec<UserSession> = self
            .store()
            .sessions_of(user_key)
            .await?
            .into_iter()
            .filter(|s| s.user_key() == Some(user_key) && !s.is_expired_at(now))
            .map(|s| {
                let last_active = s
                    .expires_at_millis()
                    .saturating_sub(idle)
                    .clamp(s.created_at_millis(), now.max(s.created_at_millis()));
                UserSession {
                    id: s.id(),
                    created_at: s.created_at(),
                    signed_in_at: from_unix_millis(
                        s.user().map_or(s.created_at_millis(), |u| u.bound_at_ms),
                    ),
                    last_active_at: from_unix_millis(last_active),
                    expires_at: s.expires_at(),
                    metadata: s.user().map(|u| u.metadata.clone()).unwrap_or_default(),
                }
            })
            .collect();
        listed.sort_by_key(|s| std::cmp::Reverse(s.last_active_at));
        Ok(listed)
    }

    /// Deletes every session of `user_key`, or every one but `except` ("log
    /// out other devices": pass the current session's
    /// [`id`](ActiveSession::id)), and returns how many. A request of a
    /// revoked session that is in flight cannot bring it back: its save
    /// finds the record gone, saves nothing and sends no cookie; the
    /// browser's next request starts a fresh session. A login finishing
    /// while this runs may survive it. Emits
    /// [`SessionEvent::Revoked`] per session.
    pub async fn revoke_user(&self, user_key: &str, except: Option<&SessionId>) -> Result<u64> {
        let revoked = self.store().revoke_user(user_key, except).await?;
        tracing::info!(revoked = revoked.len(), "sessions of a user revoked");
        if let Some(events) = &self.config().events {
            for id in &revoked {
                events.emit(SessionEvent::Revoked {
                    id: *id,
                    user_key: user_key.to_owned(),
                });
            }
        }
        Ok(revoked.len() as u64)
    }
}

impl ActiveSession {
    /// The events of a successful commit that started in state `before`.
    pub(crate) fn announce(&mut self, before: &State) {
        let Some(events) = &self.config.events else {
            return;
        };
        let user_key = self.session.user_key().map(str::to_owned);
        let event = match (before, &self.state) {
            (State::New, State::Loaded { .. }) => SessionEvent::Created {
                id: self.session.id(),
                user_key,
            },
            (State::Regenerating { old_id, .. }, State::Loaded { .. }) => {
                SessionEvent::Regenerated {
                    old_id: *old_id,
                    new_id: self.session.id(),
                    user_key,
                }
            }
            // Once: a second commit of the logout deletes nothing more.
            (State::Destroyed { .. }, State::Destroyed { .. }) => match self.ended.take() {
                Some(id) => SessionEvent::Destroyed { id, user_key },
                None => return,
            },
            _ => return,
        };
        events.emit(event);
    }

    /// After a commit that bound the session to a user: revokes the least
    /// recently active other sessions of that user beyond
    /// [`max_sessions_per_user`](crate::SessionConfig::max_sessions_per_user),
    /// the least recently signed-in first.
    /// The login itself succeeded whatever happens here: failures are
    /// logged, not returned.
    pub(crate) async fn enforce_user_cap(&self) {
        let (Some(cap), Some(user_key), State::Loaded { .. }) = (
            self.config.max_sessions_per_user,
            self.session.user_key(),
            &self.state,
        ) else {
            return;
        };
        let me = self.session.id();
        let mut listed = match self.store.sessions_of(user_key).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(%me, error = %e, "could not list the user's sessions to enforce max_sessions_per_user");
                return;
            }
        };
        if listed.len() <= cap {
            return;
        }
        // Latest login first (then latest expiry, then id): one total order,
        // so logins racing each other agree on which `cap` sessions stay and
        // never evict those (a session in the top `cap` of all is in the top
        // `cap` of any listing that holds it). The login time, not the
        // expiry: a login from an old anonymous session keeps its
        // `created_at`, so its expiry can be capped by the absolute timeout
        // below older logins'. This login stays even when it ranks lower; a
        // racing login that ranks above it may evict it.
        let bound_at = |s: &Session| s.user().map_or(i64::MIN, |u| u.bound_at_ms);
        listed.sort_by(|a, b| {
            bound_at(b)
                .cmp(&bound_at(a))
                .then_with(|| b.expires_at_millis().cmp(&a.expires_at_millis()))
                .then_with(|| b.id().cmp(&a.id()))
        });
        for evicted in listed.into_iter().skip(cap).filter(|s| s.id() != me) {
            if self.evict(&evicted, user_key).await {
                if let Some(events) = &self.config.events {
                    events.emit(SessionEvent::Revoked {
                        id: evicted.id(),
                        user_key: user_key.to_owned(),
                    });
                }
            }
        }
    }

    /// Deletes `session` if it is still bound to `user_key` (a save since
    /// the listing is no reason to spare it; a rebinding is).
    async fn evict(&self, session: &Session, user_key: &str) -> bool {
        let id = session.id();
        let mut version = session.version();
        for _ in 0..self.config.max_commit_attempts {
            match self.store.delete_if(&id, version).await {
                Ok(DeleteOutcome::Deleted) => return true,
                Ok(DeleteOutcome::Gone) => return false,
                Ok(DeleteOutcome::Conflict) => match self.store.get(&id).await {
                    Ok(Some(now)) if now.user_key() == Some(user_key) => version = now.version(),
                    Ok(_) => return false,
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "could not evict a session over the per-user cap");
                        return false;
                    }
                },
                Err(e) => {
                    tracing::warn!(%id, error = %e, "could not evict a session over the per-user cap");
                    return false;
                }
            }
        }
        false
    }
}

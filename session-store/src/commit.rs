//! Committing an [`ActiveSession`]: the save state machine.
//!
//! Three rules shape it:
//! - **Compare-and-set everywhere.** Every write is conditional on the
//!   version this request last saw, so no save overwrites another and no
//!   save or regeneration brings back a session someone else ended.
//! - **Replay, never re-apply.** After a `Conflict` the fresh record is
//!   loaded and this request's change log is replayed on it. Each save is
//!   stamped with a random write id stored in the record; after a lost
//!   reply (a timeout after the backend applied the write) the record is
//!   re-read, and finding the id there means the save landed: it is never
//!   applied a second time, by this commit or by a retried one.
//! - **Leave the cookie alone unless we know.** A request whose session
//!   was deleted, expired or regenerated meanwhile sends no cookie at all: a
//!   removal cookie could land after, and erase, the cookie of the login
//!   that replaced it. Only `destroy` sends a removal cookie.

use std::time::{Duration, Instant};

use cookie::Cookie;
use rand::RngCore as _;

use crate::active::{ActiveSession, State};
use crate::changes::replay;
use crate::cookies::{removal_cookie, session_cookie};
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::session::Session;
use crate::store::{DeleteOutcome, UpdateOutcome};

/// How often `create` may collide before the generator is deemed broken.
const MAX_ID_COLLISIONS: u32 = 3;

/// What re-reading a record says about a save of ours.
enum Verdict {
    /// Our write id is in the record: the save landed.
    Landed(Session),
    /// It did not land; this is the record as it is now.
    NotLanded(Session),
    /// The record is gone (deleted or expired).
    Missing,
    /// Too many saves followed ours to tell.
    Unknown,
}

impl ActiveSession {
    /// Saves what changed and returns the `Set-Cookie` to send, if any.
    ///
    /// - a new session is stored (`create`) only if it received data;
    /// - a loaded session is saved with a compare-and-set `update`; on
    ///   `Conflict` the fresh record is loaded, this request's changes are
    ///   re-applied to it (only the keys it changed; [`modify`](Self::modify)
    ///   closures run again) and the save is retried;
    /// - if the session was deleted, expired or regenerated meanwhile
    ///   (`Gone`), nothing is saved and no cookie is sent (see
    ///   [`is_gone`](Self::is_gone)): a slow request never undoes a logout,
    ///   and never erases the cookie of the login that replaced its session;
    /// - an unchanged session only has its expiry moved (`touch`);
    /// - a destroyed session is deleted and its cookie expired;
    /// - a regenerated session is created under its new id and the old
    ///   record is retired with a compare-and-delete (see
    ///   [`regenerate`](Self::regenerate)).
    ///
    /// When the store fails with a backend error (a timeout, a dropped
    /// connection), the write may still have landed: the commit re-reads the
    /// record for up to [`SessionConfig::resolve_timeout`](crate::SessionConfig::resolve_timeout)
    /// and reports success if it did. If it cannot tell, it returns the
    /// error and keeps its state: calling `commit` again finishes the job
    /// and never applies the changes twice. After a successful commit the
    /// handle reflects what is stored; committing again writes nothing
    /// unless something changed since.
    pub async fn commit(&mut self) -> Result<Option<Cookie<'static>>> {
        self.drop_discarded().await;
        match self.state.clone() {
            State::Gone => Ok(None),
            State::Destroyed { mut pending } => {
                while let Some(id) = pending.last().copied() {
                    if let Err(e) = self.store.delete(&id).await {
                        self.state = State::Destroyed { pending };
                        return Err(e);
                    }
                    pending.pop();
                }
                self.state = State::Destroyed {
                    pending: Vec::new(),
                };
                // Once: a second commit has nothing left to say.
                Ok(std::mem::take(&mut self.had_cookie).then(|| removal_cookie(&self.config)))
            }
            State::New => {
                if self.session.is_empty() {
                    return Ok(None);
                }
                self.create_private().await?;
                self.saved(self.session.version());
                Ok(Some(self.cookie()?))
            }
            State::Regenerating {
                old_id,
                old_version,
                created,
            } => self.commit_regeneration(old_id, old_version, created).await,
            State::Loaded { version } => {
                if !self.changes.is_empty() {
                    return self.save(version).await;
                }
                if self.expiry_moved {
                    let id = self.session.id();
                    if !self.store.touch(&id, self.session.expires_at()).await? {
                        return Ok(self.mark_gone());
                    }
                    self.expiry_moved = false;
                }
                self.cookie_if_due()
            }
        }
    }

    fn write_id(&mut self) -> u64 {
        *self.write_id.get_or_insert_with(|| rand::rng().next_u64())
    }

    /// The save landed at `version`: the handle now mirrors the store.
    fn saved(&mut self, version: u64) {
        self.session.set_version(version);
        self.state = State::Loaded { version };
        self.changes.clear();
        self.expiry_moved = false;
        self.write_id = None;
        self.in_doubt_since = None;
    }

    fn mark_gone(&mut self) -> Option<Cookie<'static>> {
        tracing::debug!(id = %self.session.id(), "session was ended elsewhere meanwhile; not saving");
        self.state = State::Gone;
        self.changes.clear();
        self.write_id = None;
        self.send_cookie = false;
        None
    }

    fn cookie(&mut self) -> Result<Cookie<'static>> {
        self.send_cookie = false;
        session_cookie(
            &self.config,
            self.token.as_str(),
            self.session.remaining_seconds(),
        )
    }

    fn cookie_if_due(&mut self) -> Result<Option<Cookie<'static>>> {
        if self.send_cookie {
            Ok(Some(self.cookie()?))
        } else {
            Ok(None)
        }
    }

    async fn drop_discarded(&mut self) {
        while let Some(id) = self.discarded.last().copied() {
            if let Err(e) = self.store.delete(&id).await {
                tracing::warn!(%id, error = %e, "could not delete an abandoned regenerated record");
                return;
            }
            self.discarded.pop();
        }
    }

    /// Re-reads `id` after a conflict or a lost reply. Backend errors are
    /// retried with backoff for up to `resolve_timeout`.
    async fn reread(&self, id: &SessionId) -> Result<Option<Session>> {
        let deadline = Instant::now() + self.config.resolve_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.store.get(id).await {
                Err(e) if e.may_have_applied() && Instant::now() + pause < deadline => {
                    tracing::debug!(%id, error = %e, "re-reading after a failed save");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// Whether a save stamped `write_id` is in `fresh`.
    fn judge(&self, fresh: Option<Session>, write_id: u64) -> Verdict {
        let Some(fresh) = fresh else {
            return Verdict::Missing;
        };
        if fresh.recent_writes().contains(&write_id) {
            return Verdict::Landed(fresh);
        }
        if let Some(doubted) = self.in_doubt_since {
            // The record names the writers of its last `len` versions. A
            // lost save attempted on version `doubted` could only have
            // produced `doubted + 1`; if that version's writer has already
            // scrolled out of the list, we cannot tell.
            let known = fresh.recent_writes().len() as u64;
            let oldest_known = fresh.version().saturating_sub(known).saturating_add(1);
            if fresh.version() > doubted && doubted.saturating_add(1) < oldest_known {
                return Verdict::Unknown;
            }
        }
        Verdict::NotLanded(fresh)
    }

    fn doubt(&mut self, version: u64) {
        self.in_doubt_since = Some(self.in_doubt_since.map_or(version, |v| v.min(version)));
    }

    fn unknown(&self) -> Error {
        Error::OutcomeUnknown {
            id: self.session.id(),
            reason: "more saves followed it than the record remembers".into(),
        }
    }

    /// Replays this request's changes on `fresh`, which becomes the session.
    fn rebase(&mut self, mut fresh: Session) -> Result<()> {
        let ours = self.session.expires_at_millis();
        replay(&self.changes, &mut fresh)?;
        fresh.set_expires_at_millis(fresh.expires_at_millis().max(ours));
        self.session = fresh;
        Ok(())
    }

    /// Saves the change log on top of `version`, replaying it after
    /// conflicts and resolving lost replies.
    async fn save(&mut self, mut version: u64) -> Result<Option<Cookie<'static>>> {
        let write_id = self.write_id();
        let id = self.session.id();
        for _ in 0..self.config.max_commit_attempts {
            self.session.stamp_write(write_id);
            let failure = match self.store.update(&self.session, version).await {
                Ok(UpdateOutcome::Updated { version }) => {
                    self.saved(version);
                    return self.cookie_if_due();
                }
                Ok(UpdateOutcome::Gone) => return Ok(self.mark_gone()),
                Ok(UpdateOutcome::Conflict) => None,
                Err(e) if e.may_have_applied() => {
                    self.doubt(version);
                    Some(e)
                }
                Err(e) => return Err(e),
            };
            let fresh = match self.reread(&id).await {
                Ok(fresh) => fresh,
                Err(e) => return Err(failure.unwrap_or(e)),
            };
            match self.judge(fresh, write_id) {
                Verdict::Landed(stored) => {
                    tracing::debug!(%id, "a save whose reply was lost had landed");
                    let version = stored.version();
                    self.session = stored;
                    self.saved(version);
                    return self.cookie_if_due();
                }
                Verdict::Missing => return Ok(self.mark_gone()),
                Verdict::Unknown => return Err(self.unknown()),
                Verdict::NotLanded(fresh) => {
                    if fresh.version() != version {
                        tracing::debug!(%id, version, "save conflicted; re-applying changes");
                        if self
                            .in_doubt_since
                            .is_some_and(|doubted| fresh.version() > doubted)
                        {
                            // The record moved past every version a lost
                            // save was attempted on, and it is not ours:
                            // versions only grow, so it can never land now.
                            self.in_doubt_since = None;
                        }
                        version = fresh.version();
                        self.rebase(fresh)?;
                        // A retried commit starts from here, not from the
                        // version first loaded.
                        self.state = State::Loaded { version };
                    }
                }
            }
        }
        Err(Error::Contention {
            id,
            attempts: self.config.max_commit_attempts,
        })
    }

    /// Stores the session under an id only this request knows (a new
    /// session, or the new id of a regeneration), drawing another id on a
    /// collision and recognising its own earlier attempt after a lost reply.
    async fn create_private(&mut self) -> Result<()> {
        let write_id = self.write_id();
        let mut collisions = 0;
        let mut in_doubt = self.in_doubt_since.is_some();
        for _ in 0..self.config.max_commit_attempts {
            self.session.stamp_write(write_id);
            let id = self.session.id();
            let failure = match self.store.create(&self.session).await {
                Ok(()) => return Ok(()),
                Err(Error::IdCollision { .. }) if !in_doubt => None,
                Err(e @ Error::IdCollision { .. }) => Some(e),
                Err(e) if e.may_have_applied() => {
                    in_doubt = true;
                    self.in_doubt_since = Some(0);
                    Some(e)
                }
                Err(e) => return Err(e),
            };
            if let Some(e) = failure {
                match self.reread(&id).await {
                    Ok(Some(stored)) if stored.recent_writes().contains(&write_id) => {
                        tracing::debug!(%id, "a create whose reply was lost had landed");
                        self.in_doubt_since = None;
                        return Ok(());
                    }
                    // Not there yet: try again; a late landing shows up as a
                    // collision with our own write id.
                    Ok(None) if !matches!(e, Error::IdCollision { .. }) => continue,
                    Ok(_) => {}
                    Err(read_error) => {
                        return Err(if e.may_have_applied() { e } else { read_error })
                    }
                }
            }
            // Someone else's record holds this id: draw another.
            collisions += 1;
            if collisions > MAX_ID_COLLISIONS {
                return Err(Error::IdCollision { id });
            }
            tracing::warn!(%id, "session id collision; drawing another");
            let token = self.config.new_token()?;
            self.session.set_id(token.id());
            self.token = token;
            in_doubt = false;
            self.in_doubt_since = None;
        }
        Err(Error::Contention {
            id: self.session.id(),
            attempts: self.config.max_commit_attempts,
        })
    }

    async fn commit_regeneration(
        &mut self,
        old_id: SessionId,
        mut old_version: u64,
        mut created: Option<u64>,
    ) -> Result<Option<Cookie<'static>>> {
        if created.is_none() {
            // A fresh record: version 1, and only this request's write ids.
            self.session.set_version(1);
            self.session.set_recent_writes(Vec::new());
            self.create_private().await?;
            created = Some(self.session.version());
            self.state = State::Regenerating {
                old_id,
                old_version,
                created,
            };
        }
        let mut new_version = created.unwrap_or(1);
        for _ in 0..self.config.max_commit_attempts {
            let lost_reply = match self.store.delete_if(&old_id, old_version).await {
                Ok(DeleteOutcome::Deleted) => {
                    self.saved(new_version);
                    return Ok(Some(self.cookie()?));
                }
                Ok(DeleteOutcome::Gone) => return Ok(self.abandon_regeneration().await),
                Ok(DeleteOutcome::Conflict) => None,
                Err(e) if e.may_have_applied() => Some(e),
                Err(e) => return Err(e),
            };
            let fresh = match self.reread(&old_id).await {
                Ok(fresh) => fresh,
                Err(e) => return Err(lost_reply.unwrap_or(e)),
            };
            let Some(fresh) = fresh else {
                self.abandon_regeneration().await;
                return match lost_reply {
                    // Our delete may have landed, or a logout's: without
                    // knowing, resurrecting is the worse mistake.
                    Some(_) => Err(Error::OutcomeUnknown {
                        id: old_id,
                        reason: "the old record vanished while it was being retired; the new one was dropped".into(),
                    }),
                    None => Ok(None),
                };
            };
            if fresh.version() == old_version {
                continue;
            }
            // Another request saved to the old record: carry its data over,
            // with this request's changes on top, into the new record.
            tracing::debug!(id = %old_id, "the session changed while regenerating; carrying it over");
            old_version = fresh.version();
            let new_id = self.session.id();
            let write_ids = self.session.recent_writes().to_vec();
            self.rebase(fresh)?;
            self.session.set_id(new_id);
            self.session.set_recent_writes(write_ids);
            new_version = self.update_private(new_version).await?;
            self.state = State::Regenerating {
                old_id,
                old_version,
                created: Some(new_version),
            };
        }
        Err(Error::Contention {
            id: old_id,
            attempts: self.config.max_commit_attempts,
        })
    }

    /// Saves the session to a record only this request knows (the new id of
    /// a regeneration, not yet sent to the browser): nobody else writes it,
    /// so after a lost reply its version alone tells whether the save landed.
    async fn update_private(&mut self, version: u64) -> Result<u64> {
        let id = self.session.id();
        for _ in 0..self.config.max_commit_attempts {
            let failure = match self.store.update(&self.session, version).await {
                Ok(UpdateOutcome::Updated { version }) => return Ok(version),
                Ok(outcome) => {
                    return Err(Error::backend(
                        "manager",
                        format!("saving regenerated session {id}"),
                        format!("its new record answered {outcome:?}"),
                    ))
                }
                Err(e) if e.may_have_applied() => e,
                Err(e) => return Err(e),
            };
            match self.reread(&id).await {
                Ok(Some(stored)) if stored.version() > version => return Ok(stored.version()),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(failure),
                Err(_) => return Err(failure),
            }
        }
        Err(Error::Contention {
            id,
            attempts: self.config.max_commit_attempts,
        })
    }

    /// The old record was ended elsewhere: drop the new one, send nothing.
    async fn abandon_regeneration(&mut self) -> Option<Cookie<'static>> {
        let new_id = self.session.id();
        if let Err(e) = self.store.delete(&new_id).await {
            // Nobody holds its token; it expires on its own.
            tracing::warn!(id = %new_id, error = %e, "could not delete an abandoned regenerated record");
        }
        self.mark_gone()
    }
}

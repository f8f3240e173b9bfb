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

use std::time::Duration;

// Tokio's clock, so the re-read backoff can be tested on a paused clock.
use tokio::time::Instant;

use cookie::Cookie;
use rand::RngCore as _;

use crate::active::{ActiveSession, PendingWrite, Regeneration, State};
use crate::changes::{replay, Change};
use crate::cookies::{removal_cookie, session_cookie};
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::session::{now_millis, Session};
use crate::store::{DeleteOutcome, UpdateOutcome};

/// How often `create` may collide before the generator is deemed broken.
const MAX_ID_COLLISIONS: u32 = 3;

/// What re-reading a record says about this request's pending saves.
enum Verdict {
    /// One of our write ids is in the record: that save landed, carrying
    /// this many leading changes.
    Landed(Session, usize),
    /// None landed; this is the record as it is now.
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
    /// error and keeps its state: calling `commit` again (with or without
    /// further changes made meanwhile) finishes the job and never applies a
    /// change twice. After a successful commit the handle reflects what is
    /// stored; committing again writes nothing unless something changed.
    ///
    /// With a [cookie-only](crate::SessionManager::cookie_only) manager
    /// there is no store: the commit seals the session into the returned
    /// cookie when it changed (or its expiry moved by `touch_after`, or it
    /// was opened with a retired key), fails with
    /// [`Error::CookieTooLarge`] leaving the handle as it was, and a
    /// `destroy` returns the removal cookie.
    pub async fn commit(&mut self) -> Result<Option<Cookie<'static>>> {
        let before = self.state.clone();
        let binds = self
            .changes
            .iter()
            .any(|change| matches!(change, Change::SetUser(Some(_))));
        let committed = match self.cookie_seal.clone() {
            Some(seal) => self.commit_to_cookie(&seal),
            None => self.commit_to_store().await,
        };
        if committed.is_ok() {
            self.announce(&before);
            if binds && self.cookie_seal.is_none() {
                self.enforce_user_cap().await;
            }
        }
        committed
    }

    /// Whether [`commit`](Self::commit) has anything to do: a write, an
    /// expiry touch, a delete, or a cookie to send. When `false`, `commit`
    /// would return `Ok(None)` without calling the store, so a framework
    /// layer may drop the handle instead (a request that only read its
    /// session, before `touch_after` is due). Conservative: `true` does not
    /// promise that `commit` writes.
    pub fn needs_commit(&self) -> bool {
        if !self.changes.is_empty() || !self.discarded.is_empty() {
            return true;
        }
        match &self.state {
            State::Gone => false,
            State::New => !self.session.is_empty() || self.create_in_doubt.is_some(),
            State::Loaded { .. } => self.expiry_moved || self.send_cookie,
            State::Destroyed { pending } => !pending.is_empty() || self.had_cookie,
            State::Regenerating { .. } => true,
        }
    }

    async fn commit_to_store(&mut self) -> Result<Option<Cookie<'static>>> {
        self.drop_discarded().await;
        match self.state.clone() {
            State::Gone => Ok(None),
            State::Destroyed { pending } => self.commit_destroy(pending).await,
            State::New => {
                if self.session.is_empty() && self.create_in_doubt.is_none() {
                    return Ok(None);
                }
                let covers = self.create_private().await?;
                let version = self.session.version();
                self.changes.drain(..covers.min(self.changes.len()));
                self.pending.clear();
                self.base_writes = self.session.recent_writes().to_vec();
                self.state = State::Loaded { version };
                self.send_cookie = true;
                if self.changes.is_empty() {
                    self.saved(version);
                    return Ok(Some(self.cookie()?));
                }
                // Changes made after an earlier attempt whose create landed.
                self.save(version).await
            }
            State::Regenerating {
                old_id,
                old_version,
            } => self.commit_regeneration(old_id, old_version).await,
            State::Loaded { version } => {
                if !self.changes.is_empty() {
                    return self.save(version).await;
                }
                if self.expiry_moved {
                    if !self.touch().await? {
                        return Ok(self.mark_gone());
                    }
                    self.expiry_moved = false;
                } else if self.send_cookie && !self.store.exists(&self.session.id()).await? {
                    // A cookie re-signed with the current key, for a session
                    // a login or logout ended meanwhile: sending it could
                    // overwrite the login's cookie.
                    return Ok(self.mark_gone());
                }
                self.cookie_if_due()
            }
        }
    }

    async fn commit_destroy(
        &mut self,
        mut pending: Vec<SessionId>,
    ) -> Result<Option<Cookie<'static>>> {
        while let Some(id) = pending.last().copied() {
            if let Err(e) = self.store.delete(&id).await {
                // A delete whose reply was lost may have landed: gone is
                // gone, whoever did it.
                let gone = e.may_have_applied() && matches!(self.reread(&id).await, Ok(None));
                if !gone {
                    self.state = State::Destroyed { pending };
                    return Err(e);
                }
            }
            pending.pop();
        }
        self.state = State::Destroyed {
            pending: Vec::new(),
        };
        // Once: a second commit has nothing left to say.
        Ok(std::mem::take(&mut self.had_cookie).then(|| removal_cookie(&self.config)))
    }

    /// Moves the expiry forward; `false` when the session is gone.
    async fn touch(&mut self) -> Result<bool> {
        let id = self.session.id();
        match self.store.touch(&id, self.session.expires_at()).await {
            Ok(live) => Ok(live),
            Err(e) if e.may_have_applied() => match self.reread(&id).await {
                // Touch only moves forward: an expiry at or past ours means
                // it landed (or someone moved it further; either is fine).
                Ok(Some(stored))
                    if stored.expires_at_millis() >= self.session.expires_at_millis() =>
                {
                    Ok(true)
                }
                Ok(None) => Ok(false),
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// A new write id for the next save of the change log as it is now,
    /// remembered with how many changes that save carries. Every attempt
    /// gets its own id: an id names one exact change log, so a save found
    /// in the record later says precisely which changes are done.
    fn write_id(&mut self) -> u64 {
        let write_id = rand::rng().next_u64();
        self.pending.push(PendingWrite {
            write_id,
            covers: self.changes.len(),
        });
        write_id
    }

    /// Stamps `write_id` on the session, on top of the write ids of the
    /// version it is based on.
    fn stamp(&mut self, write_id: u64) {
        self.session.set_recent_writes(self.base_writes.clone());
        self.session.stamp_write(write_id);
    }

    /// The save landed at `version`: the handle now mirrors the store.
    fn saved(&mut self, version: u64) {
        self.session.set_version(version);
        self.state = State::Loaded { version };
        self.changes.clear();
        self.expiry_moved = false;
        self.pending.clear();
        self.in_doubt_since = None;
        self.base_writes = self.session.recent_writes().to_vec();
    }

    fn mark_gone(&mut self) -> Option<Cookie<'static>> {
        tracing::debug!(id = %self.session.id(), "session was ended elsewhere meanwhile; not saving");
        self.state = State::Gone;
        self.changes.clear();
        self.pending.clear();
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
                tracing::warn!(%id, error = %e, "could not delete an abandoned record");
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
                Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                    tracing::debug!(%id, error = %e, "re-reading after a failed save");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// What `fresh` (the shared record, re-read) says about our pending saves.
    fn judge(&self, fresh: Option<Session>) -> Verdict {
        let Some(fresh) = fresh else {
            return Verdict::Missing;
        };
        let landed = self
            .pending
            .iter()
            .rev()
            .find(|p| fresh.recent_writes().contains(&p.write_id));
        if let Some(p) = landed {
            return Verdict::Landed(fresh, p.covers);
        }
        if let Some(doubted) = self.in_doubt_since {
            // The record names the writers of its last `len` versions. A
            // lost save attempted on version `doubted` could only have
            // produced `doubted + 1`; if that version's writer has already
            // scrolled out of the list, we cannot tell.
            // (When the record has not moved past `doubted`, `oldest_known`
            // is at most `doubted`: nothing scrolled out.)
            let known = fresh.recent_writes().len() as u64;
            let oldest_known = fresh.version().saturating_sub(known).saturating_add(1);
            if doubted.saturating_add(1) < oldest_known {
                return Verdict::Unknown;
            }
        }
        Verdict::NotLanded(fresh)
    }

    fn doubt(&mut self, version: u64) {
        self.in_doubt_since = Some(self.in_doubt_since.map_or(version, |v| v.min(version)));
    }

    fn unknown(&self, id: SessionId) -> Error {
        Error::OutcomeUnknown {
            id,
            reason: "more saves followed it than the record remembers".into(),
        }
    }

    /// Our save carrying `covers` changes is in `stored`: those changes are
    /// done; the rest are replayed on it. The session keeps its own id (a
    /// regeneration absorbs the old record into the new id).
    fn absorb(&mut self, stored: Session, covers: usize) -> Result<()> {
        let id = self.session.id();
        self.changes.drain(..covers.min(self.changes.len()));
        self.pending.clear();
        self.in_doubt_since = None;
        self.base_writes = stored.recent_writes().to_vec();
        let ours = self.session.expires_at_millis();
        let mut next = stored;
        replay(&self.changes, &mut next)?;
        next.set_expires_at_millis(next.expires_at_millis().max(ours));
        next.set_id(id);
        self.session = next;
        Ok(())
    }

    /// None of our saves is in `fresh`: replay every change on it. Once the
    /// record has moved past every version a lost save was attempted on, that
    /// save can never land (versions only grow): the doubt is over.
    fn rebase(&mut self, fresh: Session) -> Result<()> {
        if self
            .in_doubt_since
            .is_some_and(|doubted| fresh.version() > doubted)
        {
            self.in_doubt_since = None;
            self.pending.clear();
        }
        let id = self.session.id();
        let ours = self.session.expires_at_millis();
        self.base_writes = fresh.recent_writes().to_vec();
        let mut next = fresh;
        replay(&self.changes, &mut next)?;
        next.set_expires_at_millis(next.expires_at_millis().max(ours));
        next.set_id(id);
        self.session = next;
        Ok(())
    }

    /// Saves the change log on top of `version`, replaying it after
    /// conflicts and resolving lost replies.
    async fn save(&mut self, mut version: u64) -> Result<Option<Cookie<'static>>> {
        let id = self.session.id();
        for attempt in 0..self.config.max_commit_attempts {
            contention_pause(attempt).await;
            let write_id = self.write_id();
            self.stamp(write_id);
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
            match self.judge(fresh) {
                Verdict::Landed(stored, covers) => {
                    tracing::debug!(%id, "a save whose reply was lost had landed");
                    self.absorb(stored, covers)?;
                    version = self.session.version();
                    self.state = State::Loaded { version };
                    if self.changes.is_empty() {
                        self.saved(version);
                        return self.cookie_if_due();
                    }
                }
                Verdict::Missing => return Ok(self.mark_gone()),
                Verdict::Unknown => return Err(self.unknown(id)),
                Verdict::NotLanded(fresh) => {
                    if fresh.version() != version {
                        tracing::debug!(%id, version, "save conflicted; re-applying changes");
                        version = fresh.version();
                        self.rebase(fresh)?;
                        // A retried commit starts from here.
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

    /// Draws a new id for the record this request is about to create.
    fn fresh_id(&mut self) -> Result<()> {
        let token = self.config.new_token()?;
        self.session.set_id(token.id());
        self.token = token;
        self.create_in_doubt = None;
        Ok(())
    }

    /// Stores the session under an id only this request knows (a new
    /// session, or the new id of a regeneration) and returns how many
    /// leading changes the stored record carries.
    ///
    /// After a lost reply the record is re-read: our write id there means
    /// the create landed. If it is not there, the id is never used again:
    /// the lost create may still land later, and it must land under an id
    /// no browser was given, so a logout in between cannot be undone by it.
    async fn create_private(&mut self) -> Result<usize> {
        let mut collisions = 0;
        let mut failure: Option<Error> = None;
        for attempt in 0..self.config.max_commit_attempts {
            contention_pause(attempt).await;
            if let Some(doubt) = self.create_in_doubt {
                let id = self.session.id();
                match self.reread(&id).await {
                    Err(e) => return Err(failure.unwrap_or(e)),
                    Ok(Some(stored)) if stored.recent_writes().contains(&doubt.write_id) => {
                        tracing::debug!(%id, "a create whose reply was lost had landed");
                        self.create_in_doubt = None;
                        let ours = self.session.expires_at_millis();
                        let mut next = stored;
                        replay(
                            &self.changes[doubt.covers.min(self.changes.len())..],
                            &mut next,
                        )?;
                        next.set_expires_at_millis(next.expires_at_millis().max(ours));
                        self.session = next;
                        return Ok(doubt.covers);
                    }
                    Ok(Some(_)) => {
                        // Another writer's record under this id (only a
                        // colliding custom token generator makes one): not
                        // ours to use or to delete.
                        tracing::warn!(%id, "a create whose reply was lost found another session under its id; using another id");
                        self.fresh_id()?;
                    }
                    Ok(None) => {
                        tracing::debug!(%id, "a create whose reply was lost is not there; using another id");
                        self.discarded.push(id);
                        self.fresh_id()?;
                    }
                }
            }
            let covers = self.changes.len();
            let write_id = rand::rng().next_u64();
            self.session.set_recent_writes(Vec::new());
            self.session.stamp_write(write_id);
            match self.store.create(&self.session).await {
                Ok(()) => return Ok(covers),
                Err(Error::IdCollision { id }) => {
                    collisions += 1;
                    if collisions > MAX_ID_COLLISIONS {
                        return Err(Error::IdCollision { id });
                    }
                    tracing::warn!(%id, "session id collision; drawing another");
                    self.fresh_id()?;
                }
                Err(e) if e.may_have_applied() => {
                    self.create_in_doubt = Some(PendingWrite { write_id, covers });
                    failure = Some(e);
                }
                Err(e) => return Err(e),
            }
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
    ) -> Result<Option<Cookie<'static>>> {
        // A request that touched the old record after this one loaded it
        // wrote a later expiry without a new version, which the
        // compare-and-delete cannot see: computing ours now (forward only)
        // keeps the login from cutting it short.
        let now_expiry = self
            .config
            .expiry(self.session.created_at_millis(), now_millis());
        self.session
            .set_expires_at_millis(now_expiry.max(self.session.expires_at_millis()));
        // 1. A save of this request to the old record may be in doubt
        //    (regenerate() after a failed commit): settle it first, so the
        //    new record starts from what is really stored.
        if !self.pending.is_empty() {
            let fresh = self.reread(&old_id).await?;
            match self.judge(fresh) {
                Verdict::Landed(stored, covers) => {
                    old_version = stored.version();
                    self.absorb(stored, covers)?;
                }
                Verdict::NotLanded(fresh) => {
                    old_version = fresh.version();
                    self.rebase(fresh)?;
                }
                Verdict::Missing => return Ok(self.abandon_regeneration().await),
                Verdict::Unknown => return Err(self.unknown(old_id)),
            }
            // The session changed under the new record (if it exists yet):
            // rewrite it whole, even if this commit fails before doing so
            // and the next one has no doubt left to settle.
            self.regen.stale = true;
            self.state = State::Regenerating {
                old_id,
                old_version,
            };
        }
        // 2. The new record: created, then kept up to date with changes
        //    made after an earlier attempt.
        if self.regen.created_version.is_none() {
            // Settling an earlier commit's create yields that record, which
            // predates a rebuild: keep the rebuilt session and rewrite it.
            let rebuilt = self.regen.stale.then(|| self.session.clone());
            self.session.set_version(1);
            self.regen.covers = self.create_private().await?;
            self.regen.created_version = Some(self.session.version());
            match rebuilt {
                Some(mut rebuilt) => {
                    rebuilt.set_id(self.session.id());
                    rebuilt.set_version(self.session.version());
                    self.session = rebuilt;
                }
                None => self.regen.stale = false,
            }
        }
        if self.regen.stale || self.regen.covers < self.changes.len() {
            self.update_private().await?;
        }
        // 3. Retire the old record, carrying over saves that beat us to it.
        for attempt in 0..self.config.max_commit_attempts {
            contention_pause(attempt).await;
            let lost_reply = match self.store.delete_if(&old_id, old_version).await {
                Ok(DeleteOutcome::Deleted) => {
                    let version = self.regen.created_version.unwrap_or(1);
                    self.regen = Regeneration::default();
                    self.base_writes = self.session.recent_writes().to_vec();
                    self.saved(version);
                    return Ok(Some(self.cookie()?));
                }
                Ok(DeleteOutcome::Gone) => return self.old_record_gone(old_id).await,
                Ok(DeleteOutcome::Conflict) => None,
                Err(e) if e.may_have_applied() => {
                    self.regen.retire_in_doubt = true;
                    Some(e)
                }
                Err(e) => return Err(e),
            };
            let fresh = match self.reread(&old_id).await {
                Ok(fresh) => fresh,
                Err(e) => return Err(lost_reply.unwrap_or(e)),
            };
            match self.judge(fresh) {
                Verdict::Missing => return self.old_record_gone(old_id).await,
                Verdict::Unknown => return Err(self.unknown(old_id)),
                Verdict::NotLanded(fresh) if fresh.version() == old_version => continue,
                verdict => {
                    // Another request (or our own earlier save) moved the
                    // old record on: carry it into the new one.
                    tracing::debug!(id = %old_id, "the session changed while regenerating; carrying it over");
                    self.regen.retire_in_doubt = false;
                    match verdict {
                        Verdict::Landed(stored, covers) => {
                            old_version = stored.version();
                            self.absorb(stored, covers)?;
                        }
                        Verdict::NotLanded(fresh) => {
                            old_version = fresh.version();
                            self.rebase(fresh)?;
                        }
                        Verdict::Missing | Verdict::Unknown => {}
                    }
                    self.state = State::Regenerating {
                        old_id,
                        old_version,
                    };
                    // Stale until the rewrite lands, so a retried commit
                    // that finds no doubt left still makes it.
                    self.regen.stale = true;
                    self.update_private().await?;
                }
            }
        }
        Err(Error::Contention {
            id: old_id,
            attempts: self.config.max_commit_attempts,
        })
    }

    /// The old record is gone. If our own compare-and-delete may have done
    /// it, we cannot tell that from a logout: resurrecting would be the
    /// worse mistake, so the new record is dropped and the doubt reported.
    async fn old_record_gone(&mut self, old_id: SessionId) -> Result<Option<Cookie<'static>>> {
        let in_doubt = self.regen.retire_in_doubt;
        self.abandon_regeneration().await;
        if in_doubt {
            Err(Error::OutcomeUnknown {
                id: old_id,
                reason:
                    "the old record vanished while it was being retired; the new one was dropped"
                        .into(),
            })
        } else {
            Ok(None)
        }
    }

    /// Saves the session to the regeneration's new record, which only this
    /// request writes. After a lost reply the record is re-read: our write
    /// id there means this attempt landed. A version bump alone proves
    /// nothing: an attempt of an earlier commit, carrying fewer changes,
    /// may have landed late. Every attempt writes the whole session, so
    /// writing again on top of whatever landed is always right.
    async fn update_private(&mut self) -> Result<()> {
        let id = self.session.id();
        let mut version = self.regen.created_version.unwrap_or(1);
        for attempt in 0..self.config.max_commit_attempts {
            contention_pause(attempt).await;
            let covers = self.changes.len();
            let write_id = rand::rng().next_u64();
            self.session.set_recent_writes(Vec::new());
            self.session.stamp_write(write_id);
            let failure = match self.store.update(&self.session, version).await {
                Ok(UpdateOutcome::Updated { version }) => {
                    self.regen.created_version = Some(version);
                    self.regen.covers = covers;
                    self.regen.stale = false;
                    return Ok(());
                }
                Ok(UpdateOutcome::Conflict) => None,
                Ok(UpdateOutcome::Gone) => {
                    return Err(Error::backend(
                        "manager",
                        format!("regenerating into session {id}"),
                        "the new record expired before the old one was retired",
                    ))
                }
                Err(e) if e.may_have_applied() => Some(e),
                Err(e) => return Err(e),
            };
            match self.reread(&id).await {
                Ok(Some(stored)) if stored.recent_writes().contains(&write_id) => {
                    self.regen.created_version = Some(stored.version());
                    self.regen.covers = covers;
                    self.regen.stale = false;
                    return Ok(());
                }
                Ok(Some(stored)) => {
                    version = stored.version();
                    self.regen.created_version = Some(version);
                }
                Ok(None) | Err(_) => {
                    return Err(failure.unwrap_or_else(|| {
                        Error::backend(
                            "manager",
                            format!("regenerating into session {id}"),
                            "the new record could not be re-read",
                        )
                    }))
                }
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
        if self.regen.created_version.is_some() || self.create_in_doubt.is_some() {
            if let Err(e) = self.store.delete(&new_id).await {
                // Nobody holds its token; it expires on its own.
                tracing::warn!(id = %new_id, error = %e, "could not delete an abandoned regenerated record");
            }
        }
        self.regen = Regeneration::default();
        self.create_in_doubt = None;
        self.mark_gone()
    }
}

/// Waits before attempt `attempt` (0-based) of a commit loop. The first two
/// go at once; later ones, which only happen when other writers keep
/// winning the same record, first yield and then sleep a random share of a
/// window that doubles up to 16 ms. Without it, writers that lost together
/// retry together and lose together again: 16 requests incrementing one
/// SQLite session used to exhaust 128 attempts now and then.
async fn contention_pause(attempt: u32) {
    match attempt {
        0 | 1 => {}
        2..=4 => tokio::task::yield_now().await,
        _ => {
            let window_us = 1000u64 << (attempt - 5).min(4);
            let pause = Duration::from_micros(rand::rng().next_u64() % window_us);
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::contention_pause;
    use std::time::Duration;
    use tokio::time::Instant;

    /// The first retries go at once; later ones spread out, but never wait
    /// longer than the 16 ms window, whatever the attempt number.
    #[tokio::test(start_paused = true)]
    async fn contention_pauses_start_at_zero_and_stay_bounded() {
        for attempt in 0..5 {
            let start = Instant::now();
            contention_pause(attempt).await;
            assert_eq!(start.elapsed(), Duration::ZERO, "attempt {attempt} waited");
        }
        let mut total = Duration::ZERO;
        for attempt in 5..200 {
            let start = Instant::now();
            contention_pause(attempt).await;
            let waited = start.elapsed();
            assert!(
                waited <= Duration::from_millis(17),
                "attempt {attempt} waited {waited:?}"
            );
            total += waited;
        }
        // 195 draws from windows of 1..16 ms: all zero would mean no spread.
        assert!(
            total > Duration::from_millis(100),
            "retries did not spread: {total:?}"
        );
    }
}

//! Cases for the user index: [`SessionInterface::sessions_of`] and
//! [`SessionInterface::revoke_user`]. A store without one (they answer
//! `Unsupported`) skips them all, visibly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{in_ms, joined, live, sleep_ms, R};
use crate::__check as check;
use crate::conformance::{CaseResult, Ctx, Failure};
use crate::id::SessionId;
use crate::session::{Session, UserBinding};
use crate::store::{SessionInterface, UpdateOutcome};

/// A live session bound to `user` with a `device` label.
fn bound(user: &str) -> R<Session> {
    let mut s = live();
    bind(&mut s, Some(user))?;
    Ok(s)
}

fn bind(s: &mut Session, user: Option<&str>) -> R<()> {
    let binding = match user {
        Some(user) => {
            let metadata = BTreeMap::from([("device".to_owned(), format!("laptop of {user}"))]);
            Some(UserBinding::new(user, metadata)?)
        }
        None => None,
    };
    s.set_user(binding);
    Ok(())
}

async fn ids_of(store: &dyn SessionInterface, user: &str) -> R<BTreeSet<SessionId>> {
    let listed = store.sessions_of(user).await?;
    for s in &listed {
        check!(
            s.user_key() == Some(user),
            "sessions_of({user:?}) listed {} bound to {:?}",
            s.id(),
            s.user_key()
        );
    }
    let ids: BTreeSet<SessionId> = listed.iter().map(Session::id).collect();
    check!(
        ids.len() == listed.len(),
        "sessions_of({user:?}) listed a session twice"
    );
    Ok(ids)
}

fn set_of(sessions: &[&Session]) -> BTreeSet<SessionId> {
    sessions.iter().map(|s| s.id()).collect()
}

/// `sessions_of` lists exactly the live sessions bound to the user, with
/// their metadata and times.
pub async fn user_index_lists_bound_sessions(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let store = &*ctx.store;
    let (a1, a2, b1, unbound) = (bound("ada")?, bound("ada")?, bound("bob")?, live());
    for s in [&a1, &a2, &b1, &unbound] {
        store.create(s).await?;
    }
    let ada = store.sessions_of("ada").await?;
    check!(
        ada.iter().map(Session::id).collect::<BTreeSet<_>>() == set_of(&[&a1, &a2]),
        "sessions_of(ada) listed {:?}",
        ada.iter().map(Session::id).collect::<Vec<_>>()
    );
    let first = ada
        .iter()
        .find(|s| s.id() == a1.id())
        .ok_or_else(|| Failure("a1 missing".into()))?;
    check!(
        first.user() == a1.user(),
        "the binding's metadata changed: {:?}",
        first.user()
    );
    check!(
        first.created_at_millis() == a1.created_at_millis()
            && first.expires_at_millis() == a1.expires_at_millis(),
        "the listed times differ from the stored ones"
    );
    check!(
        ids_of(store, "bob").await? == set_of(&[&b1]),
        "sessions_of(bob) is wrong"
    );
    check!(
        ids_of(store, "nobody").await?.is_empty(),
        "an unknown user has sessions"
    );
    Ok(())
}

/// User keys are compared exactly: prefixes, case, glob and hash-tag
/// characters, separators and unicode never match another key.
pub async fn user_index_keys_are_exact(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let keys = [
        "ada", "ada2", "ad", "Ada", "ada*", "ad?", "[ada]", "{ada}", "ada:x", "ada/..", "a%da",
        "ädä", "ada ", " ada", "42", "4",
    ];
    let mut made = Vec::new();
    for key in keys {
        let s = bound(key)?;
        ctx.store.create(&s).await?;
        made.push((key, s.id()));
    }
    for (key, id) in &made {
        let ids = ids_of(&*ctx.store, key).await?;
        check!(
            ids == BTreeSet::from([*id]),
            "sessions_of({key:?}) listed {} sessions, not exactly its one",
            ids.len()
        );
    }
    Ok(())
}

/// An `update` that binds the record to another user (or to none) moves it
/// in the index; so does a `set`.
pub async fn user_index_follows_rebinding(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let store = &*ctx.store;
    let mut s = bound("ada")?;
    store.create(&s).await?;
    bind(&mut s, Some("bob"))?;
    let version = match store.update(&s, 1).await? {
        UpdateOutcome::Updated { version } => version,
        other => return Err(Failure(format!("update gave {other:?}"))),
    };
    check!(
        ids_of(store, "ada").await?.is_empty(),
        "the old user still lists a rebound session"
    );
    check!(
        ids_of(store, "bob").await? == set_of(&[&s]),
        "the new user does not list it"
    );
    bind(&mut s, None)?;
    check!(
        matches!(
            store.update(&s, version).await?,
            UpdateOutcome::Updated { .. }
        ),
        "unbinding update failed"
    );
    check!(
        ids_of(store, "bob").await?.is_empty(),
        "an unbound session is still listed"
    );
    bind(&mut s, Some("cy"))?;
    store.set(&s).await?;
    check!(
        ids_of(store, "cy").await? == set_of(&[&s]),
        "set did not index the binding"
    );
    Ok(())
}

/// `delete`, `delete_if` and `clear` take records out of the index.
pub async fn user_index_forgets_deleted(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let store = &*ctx.store;
    let (a, b, c) = (bound("ada")?, bound("ada")?, bound("ada")?);
    for s in [&a, &b, &c] {
        store.create(s).await?;
    }
    store.delete(&a.id()).await?;
    store.delete_if(&b.id(), 1).await?;
    check!(
        ids_of(store, "ada").await? == set_of(&[&c]),
        "deleted sessions are still listed"
    );
    store.clear().await?;
    check!(
        ids_of(store, "ada").await?.is_empty(),
        "clear left sessions in the index"
    );
    // A fresh record under a deleted one's id is listed for its own user only.
    let mut again = a.clone();
    bind(&mut again, Some("bob"))?;
    store.create(&again).await?;
    check!(
        ids_of(store, "ada").await?.is_empty() && ids_of(store, "bob").await? == set_of(&[&a]),
        "a re-created id is listed under its old user"
    );
    Ok(())
}

/// Expired sessions are never listed, and `flush` clears them out.
pub async fn user_index_never_lists_expired(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let store = &*ctx.store;
    let mut gone = bound("ada")?;
    gone.set_expires_at(in_ms(-1000));
    store.set(&gone).await?;
    let mut soon = bound("ada")?;
    soon.set_expires_at(in_ms(300));
    store.create(&soon).await?;
    let stays = bound("ada")?;
    store.create(&stays).await?;
    check!(
        ids_of(store, "ada").await? == set_of(&[&soon, &stays]),
        "an expired session is listed"
    );
    sleep_ms(450).await;
    check!(
        ids_of(store, "ada").await? == set_of(&[&stays]),
        "a session that expired meanwhile is listed"
    );
    store.flush().await?;
    check!(
        ids_of(store, "ada").await? == set_of(&[&stays]),
        "flush disturbed the live session's listing"
    );
    Ok(())
}

/// `revoke_user` deletes every session of the user and nobody else's.
pub async fn user_index_revoke_all(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let store = &*ctx.store;
    let ada: Vec<Session> = (0..3).map(|_| bound("ada")).collect::<R<_>>()?;
    let (bob, ada2, unbound) = (bound("bob")?, bound("ada2")?, live());
    for s in ada.iter().chain([&bob, &ada2, &unbound]) {
        store.create(s).await?;
    }
    let revoked: BTreeSet<SessionId> = store.revoke_user("ada", None).await?.into_iter().collect();
    check!(
        revoked == ada.iter().map(Session::id).collect(),
        "revoke_user returned {} ids, not ada's 3",
        revoked.len()
    );
    for s in &ada {
        check!(
            store.get(&s.id()).await?.is_none(),
            "a revoked session is still live"
        );
    }
    for s in [&bob, &ada2, &unbound] {
        check!(
            store.get(&s.id()).await?.is_some(),
            "revoke_user deleted another user's session"
        );
    }
    check!(
        ids_of(store, "ada").await?.is_empty(),
        "a revoked user still lists sessions"
    );
    check!(
        store.revoke_user("ada", None).await?.is_empty(),
        "a second revoke found more"
    );
    Ok(())
}

/// `revoke_user` with `except` keeps that one session ("log out other
/// devices").
pub async fn user_index_revoke_all_but_one(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let store = &*ctx.store;
    let ada: Vec<Session> = (0..3).map(|_| bound("ada")).collect::<R<_>>()?;
    for s in &ada {
        store.create(s).await?;
    }
    let keep = ada[1].id();
    let revoked = store.revoke_user("ada", Some(&keep)).await?;
    check!(
        revoked.len() == 2,
        "revoked {} sessions, not 2",
        revoked.len()
    );
    check!(!revoked.contains(&keep), "the excepted session was revoked");
    check!(
        ids_of(store, "ada").await? == BTreeSet::from([keep]),
        "the kept session is not the only one listed"
    );
    check!(
        store.get(&keep).await?.is_some(),
        "the kept session is gone"
    );
    Ok(())
}

/// A revoked session stays revoked: an update or touch from a request that
/// loaded it before is `Gone`/`false`, never a resurrection.
pub async fn user_index_revoke_then_save_is_gone(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let store = &*ctx.store;
    let s = bound("ada")?;
    store.create(&s).await?;
    store.revoke_user("ada", None).await?;
    check!(
        store.update(&s, 1).await? == UpdateOutcome::Gone,
        "an update brought a revoked session back"
    );
    check!(
        !store.touch(&s.id(), in_ms(60_000)).await?,
        "touch revived a revoked session"
    );
    check!(
        store.get(&s.id()).await?.is_none() && ids_of(store, "ada").await?.is_empty(),
        "the revoked session is back"
    );
    Ok(())
}

/// Saves racing a revoke: when it returns, every session of the user that
/// existed before it is gone for good, whatever order the saves landed in.
pub async fn user_index_revoke_racing_saves(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let sessions: Vec<Session> = (0..4).map(|_| bound("ada")).collect::<R<_>>()?;
    for s in &sessions {
        ctx.store.create(s).await?;
    }
    let mut tasks = Vec::new();
    for s in sessions.clone() {
        let store = ctx.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut version = 1;
            for _ in 0..20 {
                match store.update(&s, version).await? {
                    UpdateOutcome::Updated { version: v } => version = v,
                    UpdateOutcome::Gone => return Ok(()),
                    UpdateOutcome::Conflict => {
                        return Err(Failure("nobody else saves this session".into()))
                    }
                }
            }
            Ok(())
        }));
    }
    sleep_ms(2).await;
    ctx.store.revoke_user("ada", None).await?;
    joined(tasks).await?;
    for s in &sessions {
        check!(
            ctx.store.get(&s.id()).await?.is_none(),
            "a save racing revoke_user brought {} back",
            s.id()
        );
    }
    check!(
        ids_of(&*ctx.store, "ada").await?.is_empty(),
        "revoked sessions are still listed"
    );
    Ok(())
}

/// Logins (creates) racing a revoke: afterwards the index and the records
/// agree, for every session created, and everything created before the
/// revoke started is gone.
pub async fn user_index_revoke_racing_logins(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let before: Vec<Session> = (0..3).map(|_| bound("ada")).collect::<R<_>>()?;
    for s in &before {
        ctx.store.create(s).await?;
    }
    let during: Vec<Session> = (0..12).map(|_| bound("ada")).collect::<R<_>>()?;
    let mut tasks = Vec::new();
    for s in during.clone() {
        let store = ctx.store.clone();
        tasks.push(tokio::spawn(async move { Ok(store.create(&s).await?) }));
    }
    ctx.store.revoke_user("ada", None).await?;
    joined(tasks).await?;
    for s in &before {
        check!(
            ctx.store.get(&s.id()).await?.is_none(),
            "a session created before the revoke survived it"
        );
    }
    let listed = ids_of(&*ctx.store, "ada").await?;
    for s in &during {
        let live = ctx.store.get(&s.id()).await?.is_some();
        check!(
            live == listed.contains(&s.id()),
            "session {} is {} but {} listed",
            s.id(),
            if live { "live" } else { "gone" },
            if live { "not" } else { "still" }
        );
    }
    Ok(())
}

/// An unconditional `set` of a bound session racing its deletion (by
/// `delete`, `delete_if` or `revoke_user`): whichever wins, a session
/// live afterwards is listed under its user (else a later `revoke_user`
/// would miss it). Each round starts one side a few round trips late (an
/// `exists` of another id), so the deleter's steps land before, between
/// and after the set's. Where the index lives apart from the records (a
/// Redis Cluster), a deleter taking the entry out after a racing set
/// listed and wrote the record again had left it live and unlisted.
pub async fn user_index_set_racing_deletes(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    const ROUNDS: usize = 96;
    let store = &*ctx.store;
    let elsewhere = live().id();
    let after = |round_trips: usize| async move {
        for _ in 0..round_trips {
            store.exists(&elsewhere).await?;
        }
        R::Ok(())
    };
    let mut unlisted = Vec::new();
    for round in 0..ROUNDS {
        let s = bound("ada")?;
        let id = s.id();
        store.create(&s).await?;
        // The deleter by round % 3; by (round / 3) % 8, the set starts
        // 0-3 round trips late (0..4) or the deleter does (4..8).
        let lag = (round / 3) % 4;
        let (set_lag, delete_lag) = if (round / 3) % 8 < 4 {
            (lag, 0)
        } else {
            (0, lag)
        };
        let set = async {
            after(set_lag).await?;
            R::Ok(store.set(&s).await?)
        };
        let deleted = async {
            after(delete_lag).await?;
            match round % 3 {
                0 => store.delete(&id).await?,
                1 => drop(store.delete_if(&id, 1).await?),
                _ => drop(store.revoke_user("ada", None).await?),
            }
            R::Ok(())
        };
        let (set, deleted) = tokio::join!(set, deleted);
        set?;
        deleted?;
        if store.get(&id).await?.is_some() {
            if !ids_of(store, "ada").await?.contains(&id) {
                unlisted.push(round);
            }
            store.delete(&id).await?;
        }
    }
    check!(
        unlisted.is_empty(),
        "rounds {unlisted:?} of {ROUNDS}: a session live after a set raced its deletion is not \
         listed under its user"
    );
    Ok(())
}

/// Two namespaces of one backend keep separate indexes, and `clear` of one
/// leaves the other's index whole.
pub async fn user_index_namespaces_are_separate(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let other = ctx.another_store().await?;
    let (mine, theirs) = (bound("ada")?, bound("ada")?);
    ctx.store.create(&mine).await?;
    other.create(&theirs).await?;
    check!(
        ids_of(&*ctx.store, "ada").await? == set_of(&[&mine]),
        "sessions_of lists another namespace's session"
    );
    check!(
        other.revoke_user("ada", None).await?.len() == 1,
        "revoke reached across namespaces"
    );
    check!(
        ctx.store.get(&mine.id()).await?.is_some(),
        "another namespace's revoke deleted our session"
    );
    let again = bound("ada")?;
    other.create(&again).await?;
    other.clear().await?;
    check!(
        ids_of(&*ctx.store, "ada").await? == set_of(&[&mine]),
        "clear of another namespace emptied our index"
    );
    Ok(())
}

/// A namespace nested inside this one (Redis: a longer prefix) keeps its
/// own index: not listed or revoked by the outer store, not emptied by its
/// `clear`.
pub async fn user_index_nested_namespace_is_foreign(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let Some(inner) = ctx.nested_store(&ctx.store).await else {
        return Ok(());
    };
    let (mine, nested) = (bound("ada")?, bound("ada")?);
    ctx.store.create(&mine).await?;
    inner.create(&nested).await?;
    check!(
        ids_of(&*ctx.store, "ada").await? == set_of(&[&mine]),
        "a nested namespace's session is listed by the outer one"
    );
    check!(
        ids_of(&*inner, "ada").await? == set_of(&[&nested]),
        "the outer namespace's session is listed by the nested one"
    );
    let revoked = ctx.store.revoke_user("ada", None).await?;
    check!(
        revoked == vec![mine.id()],
        "the outer revoke reached into the nested namespace"
    );
    ctx.store.clear().await?;
    check!(
        ids_of(&*inner, "ada").await? == set_of(&[&nested]),
        "clear of the outer namespace emptied the nested one's index"
    );
    Ok(())
}

/// Many sessions of one user: all listed, all revoked.
pub async fn user_index_many_sessions(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let store: Arc<dyn SessionInterface> = ctx.store.clone();
    let all: Vec<Session> = (0..150).map(|_| bound("ada")).collect::<R<_>>()?;
    let mut tasks = Vec::new();
    for chunk in all.chunks(15) {
        let (store, chunk) = (store.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for s in &chunk {
                store.create(s).await?;
            }
            Ok(())
        }));
    }
    joined(tasks).await?;
    let listed = ids_of(&*store, "ada").await?;
    check!(listed.len() == 150, "listed {} of 150", listed.len());
    let revoked = store.revoke_user("ada", None).await?;
    check!(revoked.len() == 150, "revoked {} of 150", revoked.len());
    check!(store.len().await? == 0, "sessions left after revoking all");
    Ok(())
}

/// A login through the manager: binds, regenerates, commits; the cookie.
async fn manager_login(manager: &crate::SessionManager, user: &str) -> R<cookie::Cookie<'static>> {
    let mut session = manager.start(&cookie::CookieJar::new()).await?;
    session.insert("cart", &1u8)?;
    session.set_user(user, BTreeMap::new())?;
    session.regenerate()?;
    session
        .commit()
        .await?
        .ok_or_else(|| Failure("a login sent no cookie".into()))
}

/// Through the manager: a request of a session that `revoke_user` deleted
/// while it ran saves nothing, sends no cookie, and the session stays gone.
pub async fn manager_revoke_not_undone_by_in_flight_save(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let manager = super::manager(&ctx, super::dev_config())?;
    let cookie = manager_login(&manager, "ada").await?;
    let mut in_flight = manager.start(&super::jar_with(&cookie)).await?;
    check!(!in_flight.is_new(), "the login did not load");
    check!(
        manager.revoke_user("ada", None).await? == 1,
        "revoke_user did not count the login"
    );
    in_flight.insert("late", &true)?;
    check!(
        in_flight.commit().await?.is_none(),
        "a revoked session's request sent a cookie"
    );
    check!(
        ctx.store.get(&in_flight.id()).await?.is_none(),
        "the in-flight save brought the revoked session back"
    );
    check!(
        manager.start(&super::jar_with(&cookie)).await?.is_new(),
        "the revoked cookie still loads a session"
    );
    Ok(())
}

/// Through the manager, with `max_sessions_per_user = 2`: eight logins at
/// once leave the user with at most three sessions (the cap plus one).
pub async fn manager_user_cap_under_concurrent_logins(ctx: Ctx) -> CaseResult {
    if !ctx.has_user_index().await? {
        return Ok(());
    }
    let manager = Arc::new(super::manager(
        &ctx,
        crate::SessionConfig {
            max_sessions_per_user: Some(2),
            ..super::dev_config()
        },
    )?);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let manager = manager.clone();
        tasks.push(tokio::spawn(async move {
            manager_login(&manager, "ada").await.map(|_| ())
        }));
    }
    joined(tasks).await?;
    let left = manager.sessions_of("ada").await?.len();
    check!(
        (1..=3).contains(&left),
        "{left} sessions left under a cap of 2"
    );
    Ok(())
}

//! A battery of user-index checks over the public API, for store tests
//! beside the conformance cases: hostile user keys (prefixes, globs, hash
//! tags, path pieces, SQL wildcards, case, padding, Unicode, the longest
//! key) never leak across users, rebinding through `set`/`update` moves the
//! listing, revoke and `except`, expiry, and racing writers leave an index
//! that agrees with the records. Each check panics with what broke.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::session::{now_millis, Session, UserBinding, MAX_USER_KEY_LEN};
use crate::store::{DeleteOutcome, SessionInterface, UpdateOutcome};
use crate::{SessionId, SessionToken};

/// User keys that collide in naive indexes: prefixes, globs, hash tags,
/// path pieces, SQL wildcards, case, padding, Unicode, the longest key.
pub fn hostile_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "ada",
        "ada2",
        "ad",
        "ada ",
        " ada",
        "ADA",
        "a?a",
        "ad*",
        "*",
        "[ab]da",
        "{ada}",
        "{ada}2",
        "ada:",
        "ada:sessions",
        "user:ada",
        "../ada",
        "ada/..",
        "/",
        ".",
        "..",
        "%",
        "_",
        "a%",
        "a_a",
        "a\\a",
        "'; DROP TABLE x; --",
        "\"",
        "ädä",
        "a\u{0308}da",
        "ａｄａ",
        "🦀",
        "a b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    keys.push("x".repeat(MAX_USER_KEY_LEN));
    keys.push(format!("{}y", "x".repeat(MAX_USER_KEY_LEN - 1)));
    keys
}

/// A new, unbound session expiring `ttl_ms` from now (negative: expired).
pub fn fresh(ttl_ms: i64) -> Session {
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(600));
    s.set_expires_at_millis(now_millis() + ttl_ms);
    s
}

/// Binds `s` to `user` (with a `device` label), or unbinds it.
pub fn bind(s: &mut Session, user: Option<&str>) {
    s.set_user(user.map(|u| {
        UserBinding::new(u, BTreeMap::from([("device".to_owned(), u.to_owned())]))
            .expect("a valid user key")
    }));
}

/// A live session bound to `user`.
pub fn bound(user: &str) -> Session {
    let mut s = fresh(600_000);
    bind(&mut s, Some(user));
    s
}

/// The ids `sessions_of(user)` lists, checking each is bound to `user` and
/// none is listed twice.
pub async fn ids_of(store: &dyn SessionInterface, user: &str) -> BTreeSet<SessionId> {
    let listed = store.sessions_of(user).await.expect("sessions_of");
    for s in &listed {
        assert_eq!(
            s.user_key(),
            Some(user),
            "sessions_of({user:?}) listed another user's"
        );
    }
    let ids: BTreeSet<SessionId> = listed.iter().map(Session::id).collect();
    assert_eq!(
        ids.len(),
        listed.len(),
        "sessions_of({user:?}) listed one twice"
    );
    ids
}

/// Every hostile key finds exactly its own session, and revoking it takes
/// exactly that one.
pub async fn keys_never_leak(store: &dyn SessionInterface) {
    let keys = hostile_keys();
    let mut mine = BTreeMap::new();
    for key in &keys {
        let s = bound(key);
        store.create(&s).await.expect("create");
        mine.insert(key.clone(), s.id());
    }
    for key in &keys {
        assert_eq!(
            ids_of(store, key).await,
            BTreeSet::from([mine[key]]),
            "sessions_of({key:?})"
        );
    }
    for (n, key) in keys.iter().enumerate() {
        let revoked = store.revoke_user(key, None).await.expect("revoke");
        assert_eq!(revoked, vec![mine[key]], "revoke_user({key:?})");
        for later in &keys[n + 1..] {
            assert!(
                store.get(&mine[later]).await.expect("get").is_some(),
                "revoke_user({key:?}) took {later:?}'s session"
            );
        }
    }
    assert_eq!(store.len().await.expect("len"), 0);
}

/// Rebinding and unbinding through set and update move the listing; a
/// failed update (conflict, gone) moves nothing.
pub async fn rebinding_moves_the_listing(store: &dyn SessionInterface) {
    let mut s = bound("ada");
    store.create(&s).await.expect("create");
    bind(&mut s, Some("bob"));
    assert_eq!(
        store.update(&s, 1).await.expect("update"),
        UpdateOutcome::Updated { version: 2 }
    );
    assert!(ids_of(store, "ada").await.is_empty());
    assert_eq!(ids_of(store, "bob").await, BTreeSet::from([s.id()]));
    // A conflicting update that would rebind to carol changes nothing.
    bind(&mut s, Some("carol"));
    assert_eq!(
        store.update(&s, 1).await.expect("update"),
        UpdateOutcome::Conflict
    );
    assert!(ids_of(store, "carol").await.is_empty());
    assert_eq!(ids_of(store, "bob").await, BTreeSet::from([s.id()]));
    // set rebinds too (back to ada), and unbinds.
    bind(&mut s, Some("ada"));
    s.set_version(5);
    store.set(&s).await.expect("set");
    assert_eq!(ids_of(store, "ada").await, BTreeSet::from([s.id()]));
    assert!(ids_of(store, "bob").await.is_empty());
    bind(&mut s, None);
    assert_eq!(
        store.update(&s, 5).await.expect("update"),
        UpdateOutcome::Updated { version: 6 }
    );
    assert!(ids_of(store, "ada").await.is_empty());
    // Bound again, then deleted by delete_if: listed nowhere; an update of
    // the deleted record (a revoked request in flight) is Gone and lists
    // nothing.
    bind(&mut s, Some("ada"));
    assert!(matches!(
        store.update(&s, 6).await.expect("update"),
        UpdateOutcome::Updated { .. }
    ));
    assert_eq!(
        store.delete_if(&s.id(), 7).await.expect("delete_if"),
        DeleteOutcome::Deleted
    );
    assert!(ids_of(store, "ada").await.is_empty());
    bind(&mut s, Some("dave"));
    assert_eq!(
        store.update(&s, 7).await.expect("update"),
        UpdateOutcome::Gone
    );
    assert!(ids_of(store, "dave").await.is_empty());
    assert!(!store.touch(&s.id(), s.expires_at()).await.expect("touch"));
}

/// A revoked session stays revoked against update, touch and an unbound
/// create under another id; `except` spares exactly its id, and an
/// `except` of another user's session spares nothing.
pub async fn revoke_and_except(store: &dyn SessionInterface) {
    let (a1, a2, a3, b1) = (bound("ada"), bound("ada"), bound("ada"), bound("bob"));
    for s in [&a1, &a2, &a3, &b1] {
        store.create(s).await.expect("create");
    }
    let revoked: BTreeSet<SessionId> = store
        .revoke_user("ada", Some(&b1.id()))
        .await
        .expect("revoke")
        .into_iter()
        .collect();
    assert_eq!(revoked, BTreeSet::from([a1.id(), a2.id(), a3.id()]));
    assert!(store.get(&b1.id()).await.expect("get").is_some());
    for s in [&a1, &a2, &a3] {
        assert_eq!(
            store.update(s, 1).await.expect("update"),
            UpdateOutcome::Gone
        );
        assert!(!store.touch(&s.id(), s.expires_at()).await.expect("touch"));
        assert!(store.get(&s.id()).await.expect("get").is_none());
    }
    let (c1, c2) = (bound("ada"), bound("ada"));
    store.create(&c1).await.expect("create");
    store.create(&c2).await.expect("create");
    assert_eq!(
        store
            .revoke_user("ada", Some(&c2.id()))
            .await
            .expect("revoke"),
        vec![c1.id()]
    );
    assert_eq!(ids_of(store, "ada").await, BTreeSet::from([c2.id()]));
    assert_eq!(
        store
            .revoke_user("ada", Some(&c2.id()))
            .await
            .expect("revoke"),
        Vec::<SessionId>::new()
    );
    assert_eq!(ids_of(store, "bob").await, BTreeSet::from([b1.id()]));
}

/// Expired sessions are never listed; after a flush, revoke finds nothing
/// for them, and a live one of the same user is untouched.
pub async fn expired_are_not_listed(store: &dyn SessionInterface) {
    let mut gone = fresh(150);
    bind(&mut gone, Some("ada"));
    store.create(&gone).await.expect("create");
    let stays = bound("ada");
    store.create(&stays).await.expect("create");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids_of(store, "ada").await, BTreeSet::from([stays.id()]));
    store.flush().await.expect("flush");
    assert_eq!(ids_of(store, "ada").await, BTreeSet::from([stays.id()]));
    assert_eq!(
        store
            .revoke_user("ada", Some(&stays.id()))
            .await
            .expect("revoke"),
        Vec::<SessionId>::new()
    );
    assert!(store.get(&stays.id()).await.expect("get").is_some());
}

/// Many tasks rebinding, deleting, revoking and creating over a few shared
/// sessions at once: afterwards, for every user, sessions_of lists exactly
/// the live records bound to that user (checked record by record).
pub async fn racing_writers_leave_an_exact_index(store: Arc<dyn SessionInterface>, rounds: usize) {
    const USERS: [Option<&str>; 4] = [Some("ada"), Some("ada2"), Some("{ada}"), None];
    let shared: Vec<Session> = (0..12)
        .map(|i| {
            let mut s = fresh(600_000);
            bind(&mut s, USERS[i % 4]);
            s
        })
        .collect();
    for s in &shared {
        store.create(s).await.expect("create");
    }
    let mut tasks = Vec::new();
    for worker in 0..6usize {
        let (store, shared) = (store.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for round in 0..rounds {
                let pick = (worker * 5 + round * 7) % shared.len();
                let mut s = shared[pick].clone();
                let user = USERS[(worker + round) % USERS.len()];
                bind(&mut s, user);
                match round % 7 {
                    0..=2 => {
                        if let Some(stored) = store.get(&s.id()).await.expect("get") {
                            store.update(&s, stored.version()).await.expect("update");
                        }
                    }
                    3 => {
                        s.set_version(1 + round as u64);
                        store.set(&s).await.expect("set");
                    }
                    4 => store.delete(&s.id()).await.expect("delete"),
                    5 => {
                        let victim = USERS[round % 3].expect("a user");
                        store
                            .revoke_user(victim, Some(&s.id()))
                            .await
                            .expect("revoke");
                    }
                    _ => {
                        let mut n = fresh(600_000);
                        bind(&mut n, user);
                        store.create(&n).await.expect("create");
                        made.push(n.id());
                    }
                }
            }
            made
        }));
    }
    let mut all: Vec<SessionId> = shared.iter().map(Session::id).collect();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    for user in USERS.iter().flatten() {
        let mut truth = BTreeSet::new();
        for id in &all {
            if let Some(s) = store.get(id).await.expect("get") {
                if s.user_key() == Some(*user) {
                    truth.insert(*id);
                }
            }
        }
        assert_eq!(ids_of(&*store, user).await, truth, "the index of {user:?}");
        let revoked: BTreeSet<SessionId> = store
            .revoke_user(user, None)
            .await
            .expect("revoke")
            .into_iter()
            .collect();
        assert_eq!(revoked, truth, "revoke_user({user:?})");
    }
}

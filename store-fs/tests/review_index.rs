//! Review of the file store's user index (issue 13): hostile user keys
//! never leak across users or become paths, rebinding moves the listing,
//! revoke and `except`, expiry, racing writers on two instances, markers
//! after flush and clear, corrupt records, and a store nested under
//! another's `users` directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use session_store::{
    now_millis, DeleteOutcome, Session, SessionId, SessionInterface, SessionToken, UpdateOutcome,
    UserBinding, MAX_USER_KEY_LEN,
};
use session_store_fs::FsStore;

/// A temporary directory removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let tail: String = SessionToken::generate()
            .as_str()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        TempDir(std::env::temp_dir().join(format!("session-store-fs-review-{tag}-{tail}")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn open(root: &Path) -> FsStore {
    FsStore::open(root).await.expect("store in a temp dir")
}

/// Every file under `dir`, recursively (paths relative to `dir`).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out
}

/// The index's marker files (under `<root>/users`).
fn markers(root: &Path) -> Vec<PathBuf> {
    files_under(&root.join("users"))
}

// ---- battery shared (copied) by the review_index tests of every store ----

/// User keys that collide in naive indexes: prefixes, globs, hash tags,
/// path pieces, SQL wildcards, case, padding, Unicode, the longest key.
fn hostile_keys() -> Vec<String> {
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

fn fresh(ttl_ms: i64) -> Session {
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(600));
    s.set_expires_at_millis(now_millis() + ttl_ms);
    s
}

fn bind(s: &mut Session, user: Option<&str>) {
    s.set_user(user.map(|u| {
        UserBinding::new(u, BTreeMap::from([("device".to_owned(), u.to_owned())]))
            .expect("a valid user key")
    }));
}

fn bound(user: &str) -> Session {
    let mut s = fresh(600_000);
    bind(&mut s, Some(user));
    s
}

async fn ids_of(store: &dyn SessionInterface, user: &str) -> BTreeSet<SessionId> {
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
async fn keys_never_leak(store: &dyn SessionInterface) {
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
async fn rebinding_moves_the_listing(store: &dyn SessionInterface) {
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
async fn revoke_and_except(store: &dyn SessionInterface) {
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
async fn expired_are_not_listed(store: &dyn SessionInterface) {
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
async fn racing_writers_leave_an_exact_index(store: Arc<dyn SessionInterface>, rounds: usize) {
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

#[tokio::test]
async fn hostile_user_keys_never_leak_or_become_paths() {
    let dir = TempDir::new("keys");
    let store = open(&dir.0).await;
    keys_never_leak(&store).await;
    // Nothing was made outside the root, and every name under users/ is
    // 64 hex digits (a hash, an id).
    let outside = dir.0.parent().expect("parent").join("ada");
    assert!(!outside.exists());
    for entry in std::fs::read_dir(dir.0.join("users"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name:?} under users/"
        );
    }
    store.flush().await.expect("flush");
    assert!(markers(&dir.0).is_empty(), "{:?}", markers(&dir.0));
}

#[tokio::test]
async fn rebinding_through_set_and_update_moves_the_listing() {
    let dir = TempDir::new("rebind");
    let store = open(&dir.0).await;
    rebinding_moves_the_listing(&store).await;
    store.flush().await.expect("flush");
    assert!(markers(&dir.0).is_empty(), "{:?}", markers(&dir.0));
}

#[tokio::test]
async fn revoke_stays_and_except_spares_exactly_its_id() {
    let dir = TempDir::new("revoke");
    revoke_and_except(&open(&dir.0).await).await;
}

#[tokio::test]
async fn expired_sessions_are_not_listed_and_flush_drops_their_markers() {
    let dir = TempDir::new("expired");
    let store = open(&dir.0).await;
    expired_are_not_listed(&store).await;
    // One marker left: the live session's.
    assert_eq!(markers(&dir.0).len(), 1, "{:?}", markers(&dir.0));
}

/// Two store instances on one root, writing at once: the index agrees
/// with the records, and a flush leaves exactly one marker per bound
/// record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_on_two_instances_leave_an_exact_index() {
    let dir = TempDir::new("race");
    let store: Arc<dyn SessionInterface> = Arc::new(open(&dir.0).await);
    racing_writers_leave_an_exact_index(store.clone(), 60).await;
    let twin: Arc<dyn SessionInterface> = Arc::new(open(&dir.0).await);
    let s = bound("ada");
    twin.create(&s).await.expect("create");
    assert_eq!(ids_of(&*store, "ada").await, BTreeSet::from([s.id()]));
    store.flush().await.expect("flush");
    assert_eq!(markers(&dir.0).len(), 1, "{:?}", markers(&dir.0));
}

/// clear leaves no marker and no user directory.
#[tokio::test]
async fn clear_leaves_no_marker() {
    let dir = TempDir::new("clear");
    let store = open(&dir.0).await;
    for user in ["ada", "bob", "ada"] {
        store.create(&bound(user)).await.expect("create");
    }
    store.create(&fresh(60_000)).await.expect("create");
    store.clear().await.expect("clear");
    assert!(ids_of(&store, "ada").await.is_empty());
    assert!(files_under(&dir.0.join("users")).is_empty());
    let user_dirs = std::fs::read_dir(dir.0.join("users"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(user_dirs, 0, "user directories survived clear");
}

/// A store rooted at another store's `users` directory: neither's clear,
/// flush or revoke touches the other's sessions or index.
#[tokio::test]
async fn a_store_nested_in_the_users_directory_is_foreign() {
    let dir = TempDir::new("nested");
    let outer = open(&dir.0).await;
    let a = bound("ada");
    outer.create(&a).await.expect("create");
    let inner = open(&dir.0.join("users")).await;
    let b = bound("ada");
    inner.create(&b).await.expect("create");
    assert_eq!(ids_of(&outer, "ada").await, BTreeSet::from([a.id()]));
    assert_eq!(ids_of(&inner, "ada").await, BTreeSet::from([b.id()]));
    outer.flush().await.expect("flush");
    inner.flush().await.expect("flush");
    assert_eq!(ids_of(&outer, "ada").await, BTreeSet::from([a.id()]));
    assert_eq!(ids_of(&inner, "ada").await, BTreeSet::from([b.id()]));
    inner.clear().await.expect("clear");
    assert_eq!(ids_of(&outer, "ada").await, BTreeSet::from([a.id()]));
    outer.clear().await.expect("clear");
    let c = bound("ada");
    inner.create(&c).await.expect("create");
    outer.clear().await.expect("clear");
    assert_eq!(ids_of(&inner, "ada").await, BTreeSet::from([c.id()]));
}

/// A bound record whose body is garbage (header and user key intact) is
/// skipped by sessions_of, still revoked by revoke_user (its key is
/// readable), and a record whose bytes are all garbage crashes neither.
#[tokio::test]
async fn corrupt_records_crash_neither_listing_nor_revoking() {
    let dir = TempDir::new("corrupt");
    let store = open(&dir.0).await;
    let (good, body, garbage) = (bound("ada"), bound("ada"), bound("ada"));
    for s in [&good, &body, &garbage] {
        store.create(s).await.expect("create");
    }
    let path = store.path_of(&body.id());
    let mut bytes = std::fs::read(&path).expect("read");
    let keep = 27 + "ada".len();
    for b in &mut bytes[keep..] {
        *b = 0xFF;
    }
    std::fs::write(&path, &bytes).expect("corrupt the body");
    std::fs::write(store.path_of(&garbage.id()), b"not a record").expect("garbage");
    assert_eq!(ids_of(&store, "ada").await, BTreeSet::from([good.id()]));
    let revoked: BTreeSet<SessionId> = store
        .revoke_user("ada", None)
        .await
        .expect("revoke")
        .into_iter()
        .collect();
    assert_eq!(revoked, BTreeSet::from([good.id(), body.id()]));
    assert!(ids_of(&store, "ada").await.is_empty());
}

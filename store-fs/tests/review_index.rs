//! Review of the file store's user index (issue 13): hostile user keys
//! never leak across users or become paths, rebinding moves the listing,
//! revoke and `except`, expiry, racing writers on two instances, markers
//! after flush and clear, corrupt records, and a store nested under
//! another's `users` directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use session_store::{SessionId, SessionInterface, SessionToken};
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
// The battery every store's review_index test runs.
use session_store::conformance::index_battery::*;

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

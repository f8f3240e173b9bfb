//! The file store on real temporary directories.
#![cfg(feature = "fs")]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use server_session::conformance::StoreFactory;
use server_session::{
    async_trait, conformance_tests, jar_from_cookie_headers, Error, FsConfig, FsStore, Session,
    SessionConfig, SessionId, SessionInterface, SessionManager, SessionToken,
};

fn temp_root() -> PathBuf {
    std::env::temp_dir().join(common::unique("session-fs-"))
}

/// A fresh directory per store, removed after the case. Each store's root
/// is remembered by the address of its `Arc`, so that `make_nested` can
/// nest a store inside one it made.
#[derive(Default)]
struct TempDirs {
    made: common::Made<PathBuf>,
    roots: Mutex<Vec<(usize, PathBuf)>>,
}

fn address(store: &Arc<dyn SessionInterface>) -> usize {
    Arc::as_ptr(store) as *const () as usize
}

impl TempDirs {
    async fn open(&self, root: PathBuf) -> Option<Arc<dyn SessionInterface>> {
        let store: Arc<dyn SessionInterface> =
            Arc::new(FsStore::open(&root).await.expect("temp dir store"));
        if let Ok(mut roots) = self.roots.lock() {
            roots.push((address(&store), root));
        }
        Some(store)
    }
}

#[async_trait]
impl StoreFactory for TempDirs {
    async fn make(&self) -> Option<Arc<dyn SessionInterface>> {
        let root = temp_root();
        self.made.keep(root.clone());
        self.open(root).await
    }

    /// Nested under a two-hex-digit name, so that the outer store sees the
    /// inner root where it keeps a shard: the most confusable nesting.
    async fn make_nested(
        &self,
        outer: &Arc<dyn SessionInterface>,
    ) -> Option<Arc<dyn SessionInterface>> {
        let outer_root = self
            .roots
            .lock()
            .ok()?
            .iter()
            .find(|(at, _)| *at == address(outer))
            .map(|(_, root)| root.clone())?;
        self.open(outer_root.join("ab")).await
    }

    async fn cleanup(&self, _store: Arc<dyn SessionInterface>) {
        for root in self.made.take() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

conformance_tests!(TempDirs::default());

fn session() -> Session {
    Session::new(SessionToken::generate().id(), Duration::from_secs(60))
}

#[tokio::test]
async fn files_stay_under_the_root_whatever_the_id() {
    let root = temp_root();
    let store = FsStore::open(&root).await.unwrap();
    let mut ids = vec![
        SessionId::from_bytes([0; 32]),
        SessionId::from_bytes([0xff; 32]),
        SessionId::from_bytes(*b"../../../../etc/passwd\0\0\0\0\0\0\0\0\0\0"),
    ];
    ids.extend((0..100).map(|_| SessionToken::generate().id()));
    for id in &ids {
        let path = store.path_of(id);
        assert!(
            path.starts_with(&root),
            "{} escapes {}",
            path.display(),
            root.display()
        );
        let rel = path.strip_prefix(&root).unwrap();
        assert_eq!(rel.components().count(), 2);
        assert!(rel
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'/'));
    }
    for hostile in ["../../etc/passwd", "/etc/passwd", "..", "aa/../../x"] {
        assert!(
            SessionId::from_hex(hostile).is_err(),
            "{hostile} parsed as an id"
        );
        assert!(
            SessionToken::parse(hostile).is_err(),
            "{hostile} parsed as a token"
        );
    }
    // Hostile cookies through the manager create nothing anywhere.
    let manager = SessionManager::new(Arc::new(store.clone()), SessionConfig::default()).unwrap();
    for cookie in [
        "id=../../../../tmp/x",
        "id=/etc/passwd",
        "id=%2e%2e%2f%2e%2e%2fx",
    ] {
        let mut s = manager
            .start(&jar_from_cookie_headers([cookie]))
            .await
            .unwrap();
        assert!(s.is_new());
        assert!(s.commit().await.unwrap().is_none());
    }
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "files appeared under the root"
    );
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn a_torn_temp_file_is_ignored_by_reads_and_removed_by_flush() {
    let root = temp_root();
    let store = FsStore::open_with(FsConfig {
        temp_grace: Duration::ZERO,
        ..FsConfig::new(&root)
    })
    .await
    .unwrap();
    let mut s = session();
    s.insert("k", "saved").unwrap();
    store.create(&s).await.unwrap();
    let path = store.path_of(&s.id());
    // A crash mid-write leaves a half-written temporary file beside the record.
    let encoded = std::fs::read(&path).unwrap();
    let torn = path.parent().unwrap().join(".tmp-crashed");
    std::fs::write(&torn, &encoded[..encoded.len() / 2]).unwrap();
    let back = store.get(&s.id()).await.unwrap().expect("record readable");
    assert_eq!(back.get::<String>("k").unwrap().as_deref(), Some("saved"));
    assert_eq!(store.len().await.unwrap(), 1);
    assert_eq!(
        store.flush().await.unwrap(),
        0,
        "debris counted as a session"
    );
    assert!(!torn.exists(), "flush left the torn temporary file");
    assert!(store.get(&s.id()).await.unwrap().is_some());
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn a_corrupt_session_file_is_a_decode_error_naming_it() {
    let root = temp_root();
    let store = FsStore::open(&root).await.unwrap();
    let s = session();
    store.create(&s).await.unwrap();
    let path = store.path_of(&s.id());
    for garbage in [&b"garbage"[..], &[][..], &[1u8; 40][..]] {
        std::fs::write(&path, garbage).unwrap();
        match store.get(&s.id()).await {
            Err(Error::Decode { key, .. }) => assert!(key.contains(&s.id().to_hex()), "{key}"),
            other => panic!("{garbage:?} gave {other:?}"),
        }
    }
    // flush and len skip it rather than fail or panic.
    store.flush().await.unwrap();
    store.len().await.unwrap();
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_holds_across_two_instances_on_one_directory() {
    let root = temp_root();
    let a = Arc::new(FsStore::open(&root).await.unwrap());
    let b = Arc::new(FsStore::open(&root).await.unwrap());
    let config = SessionConfig {
        secure: false,
        ..SessionConfig::default()
    };
    let ma = Arc::new(SessionManager::new(a.clone(), config.clone()).unwrap());
    let mb = Arc::new(SessionManager::new(b.clone(), config).unwrap());
    let mut first = ma.start(&jar_from_cookie_headers([])).await.unwrap();
    first.insert("count", &0u64).unwrap();
    let cookie = first.commit().await.unwrap().unwrap();
    let header = format!("id={}", cookie.value());
    let mut tasks = Vec::new();
    for i in 0..32 {
        let m = if i % 2 == 0 { ma.clone() } else { mb.clone() };
        let header = header.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = m
                .start(&jar_from_cookie_headers([header.as_str()]))
                .await
                .unwrap();
            tokio::task::yield_now().await;
            s.modify("count", |n: Option<u64>| n.unwrap_or(0) + 1)
                .unwrap();
            s.commit().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = mb
        .start(&jar_from_cookie_headers([header.as_str()]))
        .await
        .unwrap();
    assert_eq!(s.get::<u64>("count").unwrap(), Some(32));
    // And a raw update race between the instances: exactly one winner.
    let stored = a.get(&s.id()).await.unwrap().unwrap();
    let (ra, rb) = tokio::join!(
        a.update(&stored, stored.version()),
        b.update(&stored, stored.version())
    );
    let wins = [ra.unwrap(), rb.unwrap()]
        .iter()
        .filter(|o| matches!(o, server_session::UpdateOutcome::Updated { .. }))
        .count();
    assert_eq!(wins, 1);
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn clear_removes_only_session_files() {
    let root = temp_root();
    let store = FsStore::open(&root).await.unwrap();
    let s = session();
    store.create(&s).await.unwrap();
    let shard = store.path_of(&s.id()).parent().unwrap().to_owned();
    let foreign = [root.join("README.txt"), shard.join("notes.txt")];
    for f in &foreign {
        std::fs::write(f, "keep").unwrap();
    }
    store.clear().await.unwrap();
    assert_eq!(store.len().await.unwrap(), 0);
    for f in &foreign {
        assert!(f.exists(), "clear removed {}", f.display());
    }
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn an_unusable_root_is_a_backend_error_naming_the_path() {
    let file = std::env::temp_dir().join(common::unique("session-fs-file-"));
    std::fs::write(&file, "not a directory").unwrap();
    let root = file.join("sessions");
    match FsStore::open(&root).await {
        Err(Error::Backend { store, context, .. }) => {
            assert_eq!(store, "fs");
            assert!(context.contains(&file.display().to_string()), "{context}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    std::fs::remove_file(file).ok();
}

//! Adversarial review of the file store: a shard lock held through another
//! file descriptor, timeouts, crash debris, raw files and races.
#![cfg(feature = "fs")]

mod common;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use server_session::{
    codec, from_unix_millis, now_millis, DeleteOutcome, Error, FsConfig, FsStore, Session,
    SessionInterface, SessionToken, UpdateOutcome,
};

struct Root(PathBuf);

impl Root {
    fn new() -> Self {
        Root(std::env::temp_dir().join(common::unique("review-fs-")))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn session(ttl_ms: i64) -> Session {
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
    s.set_expires_at_millis(now_millis() + ttl_ms);
    s
}

async fn open(root: &Root, op_timeout: Duration) -> FsStore {
    FsStore::open_with(FsConfig {
        op_timeout,
        temp_grace: Duration::from_secs(1),
        ..FsConfig::new(&root.0)
    })
    .await
    .unwrap()
}

/// A shard lock held through another open file description (as another
/// process would): every locking write fails with a typed Backend error
/// within about op_timeout and writes nothing; reads still work; once the
/// lock is released everything proceeds.
#[tokio::test]
async fn a_lock_held_elsewhere_times_out_writes_and_changes_nothing() {
    let root = Root::new();
    // Only the writes that meet the held lock get the short timeout: the
    // setup and the writes after release fsync, which on a busy CI disk can
    // itself take longer than 300 ms.
    let store = open(&root, Duration::from_millis(300)).await;
    let patient = open(&root, Duration::from_secs(30)).await;
    let s = session(60_000);
    patient.create(&s).await.unwrap();
    let path = store.path_of(&s.id());
    let before = std::fs::read(&path).unwrap();
    let lock = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path.parent().unwrap().join(".lock"))
        .unwrap();
    lock.try_lock().unwrap();

    let later = from_unix_millis(now_millis() + 3_600_000);
    let mut next = s.clone();
    next.insert("x", &1u8).unwrap();
    let started = Instant::now();
    let results = [
        format!("{:?}", store.update(&next, 1).await),
        format!("{:?}", store.delete_if(&s.id(), 1).await),
        format!("{:?}", store.touch(&s.id(), later).await),
        format!("{:?}", store.set(&next).await),
        format!("{:?}", store.delete(&s.id()).await),
    ];
    let took = started.elapsed();
    for r in &results {
        assert!(r.starts_with("Err(Backend"), "{r}");
        assert!(r.contains(".lock"), "names the lock: {r}");
    }
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(store.get(&s.id()).await.unwrap().is_some());

    lock.unlock().unwrap();
    assert_eq!(
        patient.update(&next, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    );
    assert_eq!(
        patient.delete_if(&s.id(), 2).await.unwrap(),
        DeleteOutcome::Deleted
    );
}

/// Crash debris: an old temp file goes at flush, a young one (a create in
/// flight) stays at flush and clear; neither is ever read as a session.
#[tokio::test]
async fn crash_debris_is_removed_only_when_old() {
    let root = Root::new();
    let store = open(&root, Duration::from_secs(5)).await;
    let s = session(60_000);
    store.create(&s).await.unwrap();
    let shard = store.path_of(&s.id()).parent().unwrap().to_path_buf();
    let old = shard.join(".tmp-old");
    let young = shard.join(".tmp-young");
    std::fs::write(&old, b"half a record").unwrap();
    std::fs::write(&young, b"half a record").unwrap();
    File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(120))
        .unwrap();
    assert_eq!(store.len().await.unwrap(), 1);
    assert_eq!(store.flush().await.unwrap(), 0);
    assert!(!old.exists());
    assert!(young.exists());
    store.clear().await.unwrap();
    assert!(young.exists(), "clear removed a young temp file");
    assert_eq!(store.len().await.unwrap(), 0);
}

/// Corrupt and truncated files: typed decode errors, never counted, never
/// deleted by flush, and the compare-and-set refuses a short header.
#[tokio::test]
async fn corrupt_files_are_decode_errors_and_survive_flush() {
    let root = Root::new();
    let store = open(&root, Duration::from_secs(5)).await;
    let good = codec::encode(&session(-60_000), 1).unwrap();
    for bytes in [Vec::new(), good[..10].to_vec(), vec![7u8; 100]] {
        let s = session(60_000);
        store.create(&s).await.unwrap();
        let path = store.path_of(&s.id());
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            store.get(&s.id()).await,
            Err(Error::Decode { .. })
        ));
        assert!(matches!(
            store.update(&s, 1).await,
            Err(Error::Decode { .. })
        ));
        assert!(matches!(
            store.delete_if(&s.id(), 1).await,
            Err(Error::Decode { .. })
        ));
        assert!(matches!(
            store
                .touch(&s.id(), from_unix_millis(now_millis() + 1_000))
                .await,
            Err(Error::Decode { .. })
        ));
        assert_eq!(store.len().await.unwrap(), 0);
        assert_eq!(store.flush().await.unwrap(), 0);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        store.delete(&s.id()).await.unwrap();
    }
}

/// Many tasks race update and delete_if on one record: one winner.
#[tokio::test]
async fn update_and_delete_if_races_have_one_winner() {
    let root = Root::new();
    let store = Arc::new(open(&root, Duration::from_secs(5)).await);
    for round in 0..8 {
        let s = session(60_000);
        store.create(&s).await.unwrap();
        let mut tasks = Vec::new();
        for n in 0..10 {
            let (store, s) = (store.clone(), s.clone());
            tasks.push(tokio::spawn(async move {
                if (n + round) % 2 == 0 {
                    matches!(
                        store.update(&s, 1).await.unwrap(),
                        UpdateOutcome::Updated { .. }
                    )
                } else {
                    store.delete_if(&s.id(), 1).await.unwrap() == DeleteOutcome::Deleted
                }
            }));
        }
        let mut wins = 0;
        for task in tasks {
            wins += usize::from(task.await.unwrap());
        }
        assert_eq!(wins, 1, "round {round}");
    }
}

/// touch racing expiry: whatever it answers, get agrees afterwards.
#[tokio::test]
async fn touch_at_the_moment_of_expiry_agrees_with_get() {
    let root = Root::new();
    let store = open(&root, Duration::from_secs(5)).await;
    for n in 0..40 {
        let s = session(3 + (n % 4));
        store.set(&s).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
        let target = now_millis() + 600_000;
        let touched = store
            .touch(&s.id(), from_unix_millis(target))
            .await
            .unwrap();
        let got = store.get(&s.id()).await.unwrap();
        if touched {
            assert_eq!(got.map(|g| g.expires_at_millis()), Some(target), "{n}");
        } else {
            assert!(got.is_none(), "{n}");
        }
    }
}

// ---- findings of the review, fixed ----

/// A stored header version outside 1..=MAX_VERSION is corrupt (the SQL
/// stores report a negative version column as Error::Decode).
#[tokio::test]
async fn f_a_stored_version_out_of_range_is_a_decode_error() {
    let root = Root::new();
    let store = open(&root, Duration::from_secs(5)).await;
    let s = session(60_000);
    store.create(&s).await.unwrap();
    std::fs::write(store.path_of(&s.id()), codec::encode(&s, u64::MAX).unwrap()).unwrap();
    let got = store.get(&s.id()).await;
    assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
}

/// A stored version outside 1..=MAX_VERSION: get, update, touch and
/// delete_if report Error::Decode naming the file and leave it as it was.
#[tokio::test]
async fn f_every_operation_refuses_a_stored_version_out_of_range() {
    let root = Root::new();
    let store = open(&root, Duration::from_secs(5)).await;
    let mut failures = Vec::new();
    for version in [u64::MAX, 1 << 63, 0] {
        let s = session(60_000);
        let path = store.path_of(&s.id());
        store.create(&s).await.unwrap();
        let bytes = codec::encode(&s, version).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let far = from_unix_millis(now_millis() + 600_000);
        let outcomes = [
            format!("{:?}", store.get(&s.id()).await),
            format!("{:?}", store.update(&s, 1).await),
            format!("{:?}", store.touch(&s.id(), far).await),
            format!("{:?}", store.delete_if(&s.id(), version).await),
        ];
        let name = path.display().to_string();
        for outcome in outcomes {
            if !outcome.starts_with("Err(Decode") || !outcome.contains(&name) {
                failures.push(format!("version {version}: {outcome}"));
            }
        }
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            failures.push(format!("version {version}: file changed"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

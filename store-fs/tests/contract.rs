//! The file store against the store contract, on real files: one temporary
//! directory per test (tests run in parallel).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use session_store::time::OffsetDateTime;
use session_store::{
    codec, now_millis, DeleteOutcome, Error, Session, SessionInterface, SessionToken,
    UpdateOutcome, MAX_VERSION,
};
use session_store_fs::{FsConfig, FsStore};

/// A temporary directory removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let token = SessionToken::generate();
        let tail: String = token
            .as_str()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        TempDir(std::env::temp_dir().join(format!("session-store-fs-{tag}-{tail}")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn open(dir: &TempDir) -> FsStore {
    FsStore::open(&dir.0).await.expect("store in a temp dir")
}

async fn open_with_timeout(dir: &TempDir, timeout: Duration) -> FsStore {
    FsStore::open_with(FsConfig {
        op_timeout: timeout,
        ..FsConfig::new(&dir.0)
    })
    .await
    .expect("store in a temp dir")
}

fn session() -> Session {
    Session::new(SessionToken::generate().id(), Duration::from_secs(60))
}

fn expiring_in(ms: i64) -> Session {
    let mut s = session();
    s.set_expires_at_millis(now_millis() + ms);
    s
}

/// Takes the exclusive advisory lock the store takes for `record`, from a
/// file descriptor of the test's own: another writer holding it.
fn hold_lock_of(record: &Path) -> File {
    let lock = record.parent().expect("sharded path").join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .expect("lock file");
    file.lock().expect("lock");
    file
}

fn stored_header(path: &Path) -> codec::Header {
    codec::header(&std::fs::read(path).expect("record file"), "test").expect("header")
}

#[tokio::test]
async fn delete_if_deletes_only_a_live_record_at_the_expected_version() {
    let dir = TempDir::new("delete-if");
    let store = open(&dir).await;
    let s = session();
    store.create(&s).await.unwrap();
    let path = store.path_of(&s.id());

    assert_eq!(
        store.delete_if(&s.id(), 2).await.unwrap(),
        DeleteOutcome::Conflict
    );
    assert!(path.exists(), "a conflicting delete_if deleted the record");
    assert_eq!(
        store.delete_if(&s.id(), 1).await.unwrap(),
        DeleteOutcome::Deleted
    );
    assert!(!path.exists(), "delete_if left the file");
    assert_eq!(
        store.delete_if(&s.id(), 1).await.unwrap(),
        DeleteOutcome::Gone
    );

    let expired = expiring_in(-1_000);
    store.set(&expired).await.unwrap();
    assert_eq!(
        store.delete_if(&expired.id(), 1).await.unwrap(),
        DeleteOutcome::Gone
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_decides_under_the_record_lock() {
    let dir = TempDir::new("delete-if-lock");
    let store = open(&dir).await;
    let s = session();
    store.create(&s).await.unwrap();
    let path = store.path_of(&s.id());

    // Another writer holds the lock and saves version 2 meanwhile: delete_if
    // must wait for it and then see version 2, not the version 1 it would
    // have read without the lock.
    let holder = hold_lock_of(&path);
    let pending = tokio::spawn({
        let store = store.clone();
        let id = s.id();
        async move { store.delete_if(&id, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !pending.is_finished(),
        "delete_if did not wait for the lock"
    );
    std::fs::write(&path, codec::encode(&s, 2).unwrap()).unwrap();
    drop(holder);
    assert_eq!(pending.await.unwrap().unwrap(), DeleteOutcome::Conflict);
    assert_eq!(stored_header(&path).version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_racing_update_has_one_winner_and_never_resurrects() {
    let dir = TempDir::new("delete-if-race");
    let a = open(&dir).await;
    let b = open(&dir).await;
    for _ in 0..20 {
        let s = session();
        a.create(&s).await.unwrap();
        let (deleted, updated) = tokio::join!(
            tokio::spawn({
                let a = a.clone();
                let id = s.id();
                async move { a.delete_if(&id, 1).await }
            }),
            tokio::spawn({
                let b = b.clone();
                let s = s.clone();
                async move { b.update(&s, 1).await }
            })
        );
        let stored = a.get(&s.id()).await.unwrap();
        match (deleted.unwrap().unwrap(), updated.unwrap().unwrap()) {
            (DeleteOutcome::Deleted, UpdateOutcome::Gone) => assert!(stored.is_none()),
            (DeleteOutcome::Conflict, UpdateOutcome::Updated { version: 2 }) => {
                assert_eq!(stored.map(|s| s.version()), Some(2))
            }
            other => panic!("impossible interleaving {other:?}"),
        }
    }
}

#[tokio::test]
async fn update_never_moves_the_expiry_backwards() {
    let dir = TempDir::new("update-expiry");
    let store = open(&dir).await;
    let s = session();
    store.create(&s).await.unwrap();
    let path = store.path_of(&s.id());

    // A slow request that computed a shorter expiry saves after a faster one.
    let mut slow = s.clone();
    slow.insert("k", "slow").unwrap();
    slow.set_expires_at_millis(now_millis() + 5_000);
    assert_eq!(
        store.update(&slow, 1).await.unwrap(),
        UpdateOutcome::Updated { version: 2 }
    );
    let back = store.get(&s.id()).await.unwrap().expect("live");
    assert_eq!(back.expires_at_millis(), s.expires_at_millis());
    assert_eq!(back.get::<String>("k").unwrap().as_deref(), Some("slow"));
    assert_eq!(stored_header(&path).expires_at_ms, s.expires_at_millis());

    // A later expiry does move it.
    let mut later = back.clone();
    later.set_expires_at_millis(s.expires_at_millis() + 60_000);
    store.update(&later, 2).await.unwrap();
    let back = store.get(&s.id()).await.unwrap().expect("live");
    assert_eq!(back.expires_at_millis(), later.expires_at_millis());
    assert_eq!(
        stored_header(&path).expires_at_ms,
        later.expires_at_millis()
    );
}

#[tokio::test]
async fn touch_never_moves_the_expiry_backwards() {
    let dir = TempDir::new("touch-expiry");
    let store = open(&dir).await;
    let s = session();
    store.create(&s).await.unwrap();
    let earlier = OffsetDateTime::now_utc() + Duration::from_secs(5);
    assert!(store.touch(&s.id(), earlier).await.unwrap(), "live");
    let back = store.get(&s.id()).await.unwrap().expect("live");
    assert_eq!(back.expires_at_millis(), s.expires_at_millis());

    let later = back.expires_at() + Duration::from_secs(60);
    assert!(store.touch(&s.id(), later).await.unwrap());
    let back = store.get(&s.id()).await.unwrap().expect("live");
    assert_eq!(back.expires_at(), later);
    assert_eq!(back.version(), 1, "touch changed the version");
}

#[tokio::test]
async fn versions_stay_in_range() {
    let dir = TempDir::new("versions");
    let store = open(&dir).await;
    for bad in [0, MAX_VERSION + 1, u64::MAX] {
        let mut s = session();
        s.set_version(bad);
        assert!(
            matches!(store.set(&s).await, Err(Error::VersionOutOfRange { version, .. }) if version == bad),
            "set accepted version {bad}"
        );
        assert!(
            matches!(store.create(&s).await, Err(Error::VersionOutOfRange { .. })),
            "create accepted version {bad}"
        );
        assert!(
            !store.path_of(&s.id()).exists(),
            "version {bad} was written"
        );
    }
    // The last storable version cannot be updated past.
    let mut top = session();
    top.set_version(MAX_VERSION);
    store.set(&top).await.unwrap();
    for expected in [MAX_VERSION, u64::MAX] {
        assert!(
            matches!(
                store.update(&top, expected).await,
                Err(Error::VersionOutOfRange { .. })
            ),
            "update after {expected}"
        );
    }
    assert_eq!(
        stored_header(&store.path_of(&top.id())).version,
        MAX_VERSION
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_a_backend_error_naming_the_path_within_the_timeout() {
    let dir = TempDir::new("lock-timeout");
    let store = open_with_timeout(&dir, Duration::from_millis(300)).await;
    let s = session();
    // Created with the default timeout: the create fsyncs, which on a busy
    // CI disk can alone take longer than 300 ms.
    open(&dir).await.create(&s).await.unwrap();
    let path = store.path_of(&s.id());
    let holder = hold_lock_of(&path);

    let id = s.id();
    let later = OffsetDateTime::now_utc() + Duration::from_secs(600);
    let mut outcomes = Vec::new();
    for op in ["update", "touch", "delete", "delete_if", "set", "clear"] {
        let started = Instant::now();
        let run = async {
            match op {
                "update" => store.update(&s, 1).await.map(drop),
                "touch" => store.touch(&id, later).await.map(drop),
                "delete" => store.delete(&id).await,
                "delete_if" => store.delete_if(&id, 1).await.map(drop),
                "set" => store.set(&s).await,
                _ => store.clear().await,
            }
        };
        // The bound of the test itself, so that a hang fails instead.
        let outcome = tokio::time::timeout(Duration::from_secs(3), run).await;
        outcomes.push((op, started.elapsed(), outcome));
    }
    // Released before asserting, so that a blocked file task can finish.
    drop(holder);
    for (op, took, outcome) in outcomes {
        match outcome {
            Ok(Err(Error::Backend {
                store,
                context,
                source,
            })) => {
                assert_eq!(store, "fs");
                let message = format!("{context}: {source}");
                assert!(
                    message.contains(&path.parent().unwrap().display().to_string()),
                    "{op}: {message}"
                );
                assert!(message.contains("timed out"), "{op}: {message}");
                assert!(took < Duration::from_secs(2), "{op} took {took:?}");
            }
            other => panic!("{op} with the lock held gave {other:?} after {took:?}"),
        }
    }
    // Nothing was written while the lock was held.
    assert_eq!(stored_header(&path).version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_keeps_a_record_extended_while_it_waits_for_the_lock() {
    let dir = TempDir::new("flush-extended");
    let store = open(&dir).await;
    let s = expiring_in(-1_000);
    store.set(&s).await.unwrap();
    let path = store.path_of(&s.id());

    let holder = hold_lock_of(&path);
    let flush = tokio::spawn({
        let store = store.clone();
        async move { store.flush().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // flush takes a shard's lock only when it found an expired record there:
    // still running means it saw this one expired and waits to delete it.
    assert!(!flush.is_finished(), "flush did not wait for the lock");
    let mut extended = s.clone();
    extended.set_expires_at_millis(now_millis() + 60_000);
    std::fs::write(&path, codec::encode(&extended, 1).unwrap()).unwrap();
    drop(holder);
    assert_eq!(flush.await.unwrap().unwrap(), 0);
    assert!(
        store.get(&s.id()).await.unwrap().is_some(),
        "flush deleted it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_removes_every_expired_record_while_others_delete() {
    let dir = TempDir::new("flush-all");
    let store = open(&dir).await;
    let mut ids = Vec::new();
    for _ in 0..300 {
        let s = expiring_in(-1_000);
        store.set(&s).await.unwrap();
        ids.push(s.id());
    }
    let live = session();
    store.create(&live).await.unwrap();
    let deleter = tokio::spawn({
        let store = store.clone();
        let ids = ids.clone();
        async move {
            for id in ids.iter().step_by(2) {
                store.delete(id).await?;
            }
            Ok::<(), Error>(())
        }
    });
    let removed = store.flush().await.unwrap();
    deleter.await.unwrap().unwrap();
    assert!(removed <= 300, "{removed}");
    for id in &ids {
        assert!(!store.path_of(id).exists(), "flush left an expired record");
    }
    assert!(store.get(&live.id()).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_finishes_while_others_delete_and_spares_writes_in_flight() {
    let dir = TempDir::new("clear");
    let store = open(&dir).await;
    let mut ids = Vec::new();
    for _ in 0..300 {
        let s = session();
        store.create(&s).await.unwrap();
        ids.push(s.id());
    }
    // A create in flight: its complete temporary file, not yet linked.
    let shard = store.path_of(&ids[0]).parent().unwrap().to_owned();
    let in_flight = shard.join(".tmp-inflight");
    std::fs::write(&in_flight, b"being created").unwrap();

    let deleter = tokio::spawn({
        let store = store.clone();
        let ids = ids.clone();
        async move {
            for id in ids.iter().rev().step_by(2) {
                store.delete(id).await?;
            }
            Ok::<(), Error>(())
        }
    });
    store.clear().await.unwrap();
    deleter.await.unwrap().unwrap();
    for id in &ids {
        assert!(!store.path_of(id).exists(), "clear left a record");
    }
    assert_eq!(store.len().await.unwrap(), 0);
    assert!(
        in_flight.exists(),
        "clear deleted a concurrent create's temporary file"
    );
}

#[tokio::test]
async fn corrupt_and_truncated_files_are_decode_errors_naming_the_file() {
    let dir = TempDir::new("corrupt");
    let store = open(&dir).await;
    let s = session();
    let mut with_data = s.clone();
    with_data.insert("k", &"v".repeat(100)).unwrap();
    let good = codec::encode(&with_data, 1).unwrap();
    let path = store.path_of(&s.id());
    let hex = s.id().to_hex();
    let later = OffsetDateTime::now_utc() + Duration::from_secs(600);
    let mut unknown_format = good.clone();
    unknown_format[0] = 0xee;
    for (what, bytes) in [
        ("empty", &[][..]),
        ("cut in the header", &good[..10]),
        ("cut in the body", &good[..good.len() - 40]),
        ("unknown format", &unknown_format[..]),
    ] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let is_decode = |r: &session_store::Result<()>| match r {
            Err(Error::Decode { key, .. }) => key.contains(&hex),
            _ => false,
        };
        let got = store.get(&s.id()).await.map(drop);
        assert!(is_decode(&got), "get of a file {what}: {got:?}");
        let header_ok = bytes.len() >= codec::HEADER_LEN && bytes[0] != 0xee;
        if !header_ok {
            let got = store.update(&s, 1).await.map(drop);
            assert!(is_decode(&got), "update of a file {what}: {got:?}");
            let got = store.touch(&s.id(), later).await.map(drop);
            assert!(is_decode(&got), "touch of a file {what}: {got:?}");
            let got = store.delete_if(&s.id(), 1).await.map(drop);
            assert!(is_decode(&got), "delete_if of a file {what}: {got:?}");
        }
        // Scans skip it rather than fail.
        store.flush().await.unwrap();
        let live = store.len().await.unwrap();
        if !header_ok {
            assert_eq!(live, 0, "a file {what} counted as live");
        }
    }
}

//! # session-store-fs
//!
//! A [`SessionInterface`] store that keeps sessions as files under a root
//! directory: persistence for single-machine apps without a server.
//!
//! ## Layout
//!
//! `<root>/<aa>/<id>`: one file per session, named by the 64-hex-digit
//! [`SessionId`] (itself a SHA-256 hash of the cookie token) and sharded
//! into 256 subdirectories by its first two digits, so no directory grows
//! past a few thousand entries at a million sessions. A file name is always
//! 64 hex digits made by the store: nothing a client sends becomes a path.
//! Each shard also holds `.lock` (the shard's advisory lock) and, briefly,
//! `.tmp-*` files being written.
//!
//! ## Durability
//!
//! Every write goes to a temporary file in the same directory, is fsynced,
//! and is renamed over the target (then the directory is fsynced): a crash
//! leaves the old version or the new one, never a torn file. Readers ignore
//! temporary files; [`flush`](SessionInterface::flush) deletes those older
//! than [`FsConfig::temp_grace`].
//!
//! ## Concurrency
//!
//! `create` links a fully written temporary file to its name (`link(2)`
//! fails if the name exists), so it is exclusive without a check-then-write
//! race. `update`, `touch`, `delete` and `flush` take the shard's exclusive
//! advisory lock (`flock` on `<shard>/.lock`) around read-check-write, so
//! compare-and-set is correct across tasks, across store instances and
//! across processes sharing the directory on one machine (not over NFS).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> session_store::Result<()> {
//! let dir = std::env::temp_dir().join("session-store-fs-doc");
//! let store = session_store_fs::FsStore::open(&dir).await?;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rand::RngCore as _;
use session_store::time::OffsetDateTime;
use session_store::{
    codec, now_millis, unix_millis, Error, Result, Session, SessionId, SessionInterface,
    UpdateOutcome,
};

const STORE: &str = "fs";
const TEMP_PREFIX: &str = ".tmp-";
const LOCK_FILE: &str = ".lock";

/// Where and how to keep session files.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// The root directory; created (with parents) if missing.
    pub root: PathBuf,
    /// fsync files and directories on every write (default `true`). Off
    /// trades crash durability for speed.
    pub sync: bool,
    /// Temporary files older than this are debris of a crashed write and
    /// are deleted by `flush` (default 60 s).
    pub temp_grace: Duration,
}

impl FsConfig {
    /// Defaults for `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsConfig {
            root: root.into(),
            sync: true,
            temp_grace: Duration::from_secs(60),
        }
    }
}

/// The file store.
#[derive(Clone, Debug)]
pub struct FsStore {
    inner: Arc<FsConfig>,
}

fn io_error(what: &str, path: &Path, e: io::Error) -> Error {
    Error::backend(STORE, format!("{what} {}", path.display()), e)
}

/// Whether a directory entry is a session file: exactly 64 lowercase hex digits.
fn session_file_id(name: &str) -> Option<SessionId> {
    if name.len() == 64 {
        SessionId::from_hex(name).ok()
    } else {
        None
    }
}

impl FsStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(FsConfig::new(root)).await
    }

    /// Opens a store as `config` says. A root that cannot be created or
    /// written is [`Error::Backend`] naming the path.
    pub async fn open_with(config: FsConfig) -> Result<Self> {
        let store = FsStore {
            inner: Arc::new(config),
        };
        store
            .blocking(|c| {
                fs::create_dir_all(&c.root).map_err(|e| io_error("creating", &c.root, e))?;
                // Prove the root is writable now rather than at the first save.
                let probe = c
                    .root
                    .join(format!("{TEMP_PREFIX}probe-{}", random_suffix()));
                File::create(&probe).map_err(|e| io_error("writing in", &c.root, e))?;
                fs::remove_file(&probe).map_err(|e| io_error("writing in", &c.root, e))
            })
            .await?;
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The file a session lives in: `<root>/<first two hex digits>/<id>`.
    pub fn path_of(&self, id: &SessionId) -> PathBuf {
        let hex = id.to_hex();
        self.inner.root.join(&hex[..2]).join(hex)
    }

    /// Runs blocking file work on tokio's blocking pool. One hop per
    /// operation (rather than one per `tokio::fs` call) also keeps each
    /// read-check-write inside a single locked section.
    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&FsConfig) -> Result<T> + Send + 'static,
    {
        let config = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&config))
            .await
            .map_err(|e| Error::backend(STORE, "a file task", e))?
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Holds a shard's exclusive advisory lock until dropped.
struct ShardLock(File);

impl ShardLock {
    fn take(shard: &Path) -> Result<Self> {
        fs::create_dir_all(shard).map_err(|e| io_error("creating", shard, e))?;
        let path = shard.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("opening lock", &path, e))?;
        file.lock().map_err(|e| io_error("locking", &path, e))?;
        Ok(ShardLock(file))
    }
}

impl Drop for ShardLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first is explicit.
        let _ = self.0.unlock();
    }
}

fn shard_of(path: &Path) -> &Path {
    path.parent().unwrap_or(path)
}

/// Reads a file; `None` when it does not exist.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("reading", path, e)),
    }
}

/// Reads just the fixed header; `None` when the file does not exist.
fn read_header(path: &Path) -> Result<Option<codec::Header>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("reading", path, e)),
    };
    let mut header = [0u8; codec::HEADER_LEN];
    let mut filled = 0;
    while filled < header.len() {
        match file.read(&mut header[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(io_error("reading", path, e)),
        }
    }
    codec::header(&header[..filled], &path.display().to_string()).map(Some)
}

/// Writes a complete temporary file next to `target` and returns its path.
fn write_temp(config: &FsConfig, target: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let shard = shard_of(target);
    fs::create_dir_all(shard).map_err(|e| io_error("creating", shard, e))?;
    let temp = shard.join(format!("{TEMP_PREFIX}{}", random_suffix()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        if config.sync {
            file.sync_all()?;
        }
        Ok(())
    })();
    match written {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Err(io_error("writing", target, e))
        }
    }
}

fn sync_dir(config: &FsConfig, dir: &Path) -> Result<()> {
    if config.sync {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("syncing", dir, e))?;
    }
    Ok(())
}

/// Replaces `target` atomically with `bytes`.
fn write_atomic(config: &FsConfig, target: &Path, bytes: &[u8]) -> Result<()> {
    let temp = write_temp(config, target, bytes)?;
    if let Err(e) = fs::rename(&temp, target) {
        let _ = fs::remove_file(&temp);
        return Err(io_error("replacing", target, e));
    }
    sync_dir(config, shard_of(target))
}

/// Removes a file; a missing file is fine.
fn remove_if_present(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("deleting", path, e)),
    }
}

/// Every shard directory under the root.
fn shards(root: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => return Err(io_error("listing", root, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("listing", root, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit()) && entry.path().is_dir() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// The entries of a shard: session files and temporary files.
fn shard_entries(shard: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(shard) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("listing", shard, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("listing", shard, e))?;
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    Ok(out)
}

fn is_stale_temp(config: &FsConfig, name: &str, path: &Path) -> bool {
    name.starts_with(TEMP_PREFIX)
        && fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .is_some_and(|age| age >= config.temp_grace)
}

#[async_trait]
impl SessionInterface for FsStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        let path = self.path_of(id);
        tokio::fs::try_exists(&path)
            .await
            .map_err(|e| io_error("checking", &path, e))
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let path = self.path_of(id);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("reading", &path, e)),
        };
        let session = codec::decode(*id, &bytes, &path.display().to_string())?;
        Ok((!session.is_expired()).then_some(session))
    }

    async fn set(&self, session: &Session) -> Result<()> {
        let path = self.path_of(&session.id());
        let bytes = codec::encode(session, session.version())?;
        self.blocking(move |c| {
            let _lock = ShardLock::take(shard_of(&path))?;
            write_atomic(c, &path, &bytes)
        })
        .await
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        let path = self.path_of(id);
        self.blocking(move |_| {
            // Locked, so a concurrent update cannot rename a new version in
            // after the delete: a save never resurrects.
            let _lock = ShardLock::take(shard_of(&path))?;
            remove_if_present(&path).map(drop)
        })
        .await
    }

    async fn create(&self, session: &Session) -> Result<()> {
        let id = session.id();
        let path = self.path_of(&id);
        let bytes = codec::encode(session, session.version())?;
        self.blocking(move |c| {
            let temp = write_temp(c, &path, &bytes)?;
            // link(2) fails if the name exists: an exclusive create of a
            // complete file.
            let linked = fs::hard_link(&temp, &path);
            let _ = fs::remove_file(&temp);
            match linked {
                Ok(()) => sync_dir(c, shard_of(&path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    Err(Error::IdCollision { id })
                }
                Err(e) => Err(io_error("creating", &path, e)),
            }
        })
        .await
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        let path = self.path_of(&session.id());
        let version = expected_version + 1;
        let bytes = codec::encode(session, version)?;
        self.blocking(move |c| {
            let _lock = ShardLock::take(shard_of(&path))?;
            let Some(header) = read_header(&path)? else {
                return Ok(UpdateOutcome::Gone);
            };
            if header.expires_at_ms <= now_millis() {
                return Ok(UpdateOutcome::Gone);
            }
            if header.version != expected_version {
                return Ok(UpdateOutcome::Conflict);
            }
            write_atomic(c, &path, &bytes)?;
            Ok(UpdateOutcome::Updated { version })
        })
        .await
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let path = self.path_of(id);
        let expires_at_ms = unix_millis(expires_at);
        self.blocking(move |c| {
            let _lock = ShardLock::take(shard_of(&path))?;
            let Some(mut bytes) = read_file(&path)? else {
                return Ok(false);
            };
            let origin = path.display().to_string();
            if codec::header(&bytes, &origin)?.expires_at_ms <= now_millis() {
                return Ok(false);
            }
            codec::patch_expires_at(&mut bytes, expires_at_ms, &origin)?;
            write_atomic(c, &path, &bytes)?;
            Ok(true)
        })
        .await
    }

    async fn flush(&self) -> Result<u64> {
        self.blocking(|c| {
            let now = now_millis();
            let mut removed = 0;
            for shard in shards(&c.root)? {
                let mut expired = Vec::new();
                for (name, path) in shard_entries(&shard)? {
                    if is_stale_temp(c, &name, &path) {
                        tracing::info!(path = %path.display(), "removing debris of an interrupted write");
                        remove_if_present(&path)?;
                    } else if session_file_id(&name).is_some() {
                        match read_header(&path) {
                            Ok(Some(h)) if h.expires_at_ms <= now => expired.push(path),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "flush skips an unreadable session file"),
                        }
                    }
                }
                if expired.is_empty() {
                    continue;
                }
                let _lock = ShardLock::take(&shard)?;
                for path in expired {
                    // Re-checked under the lock: it may have been touched meanwhile.
                    if matches!(read_header(&path), Ok(Some(h)) if h.expires_at_ms <= now)
                        && remove_if_present(&path)?
                    {
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn clear(&self) -> Result<()> {
        self.blocking(|c| {
            for shard in shards(&c.root)? {
                let _lock = ShardLock::take(&shard)?;
                for (name, path) in shard_entries(&shard)? {
                    if session_file_id(&name).is_some() || name.starts_with(TEMP_PREFIX) {
                        remove_if_present(&path)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn len(&self) -> Result<u64> {
        self.blocking(|c| {
            let now = now_millis();
            let mut live = 0;
            for shard in shards(&c.root)? {
                for (name, path) in shard_entries(&shard)? {
                    if session_file_id(&name).is_some()
                        && matches!(read_header(&path), Ok(Some(h)) if h.expires_at_ms > now)
                    {
                        live += 1;
                    }
                }
            }
            Ok(live)
        })
        .await
    }
}

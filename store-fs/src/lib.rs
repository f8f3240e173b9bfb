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
//! `.tmp-*` files being written. A file holds the [`codec`] envelope; its
//! header's expiry is the stored expiry.
//!
//! ## Corrupt files
//!
//! A session file that is no record (an unreadable header, a version
//! outside `1..=MAX_VERSION`, a corrupt body) is [`Error::Decode`] naming
//! the file for `get`, and for `update`, `touch` and `delete_if` as far as
//! they read it (the header), which then leave it as it is. `len` and
//! `flush` go by the header alone: a file whose header is unreadable or out
//! of range is neither counted nor flushed. `clear` deletes it.
//!
//! ## Clock
//!
//! Expiry is judged by this process's clock (the system clock), like the
//! other in-process stores. Processes sharing a directory must have
//! agreeing clocks; on one machine they do.
//!
//! ## Durability
//!
//! With [`FsConfig::sync`] on (the default), every change is durable when
//! the operation returns:
//!
//! - a write goes to a temporary file in the record's shard, which is
//!   fsynced, then renamed over the record (`set`, `update`, `touch`) or
//!   linked to its name (`create`), then the shard directory is fsynced: a
//!   crash leaves the old record or the new one, never a torn file;
//! - a delete (`delete`, `delete_if`, `flush`, `clear`) unlinks, then
//!   fsyncs the shard directory: a logout does not come back after a crash;
//! - a shard directory made for the first time is fsynced into the root.
//!
//! Readers ignore temporary files; [`flush`](SessionInterface::flush) and
//! [`clear`](SessionInterface::clear) delete those older than
//! [`FsConfig::temp_grace`] (younger ones may be a `create` in flight).
//!
//! ## Concurrency
//!
//! `create` links a fully written temporary file to its name (`link(2)`
//! fails if the name exists), so it is exclusive without a check-then-write
//! race. `set`, `update`, `delete_if`, `touch`, `delete`, `flush` and
//! `clear` take the exclusive advisory lock of the record's shard (`flock`
//! on `<shard>/.lock`) around read-check-write, so compare-and-set and
//! compare-and-delete are correct across tasks, across store instances and
//! across processes sharing the directory on one machine (not over NFS).
//!
//! ## Timeout
//!
//! No operation waits forever. A lock is taken with non-blocking attempts
//! and a short backoff until [`FsConfig::op_timeout`] (default 5 s) has
//! passed, then the operation fails with [`Error::Backend`] naming the path
//! and nothing is written. Single-record operations as a whole (file I/O
//! included) are bounded by the same timeout; as with every store, a
//! timed-out operation may still complete ([`Error::may_have_applied`]) if
//! the disk itself stalled after the lock was taken. `flush`, `clear` and
//! `len` scan every shard, so their total time grows with the number of
//! sessions: only each lock they take is bounded.
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

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rand::RngCore as _;
use session_store::backend::{next_version, storable_version};
use session_store::time::OffsetDateTime;
use session_store::{
    codec, now_millis, unix_millis, DeleteOutcome, Error, Result, Session, SessionId,
    SessionInterface, UpdateOutcome, MAX_VERSION,
};

const STORE: &str = "fs";
const TEMP_PREFIX: &str = ".tmp-";
const LOCK_FILE: &str = ".lock";
/// The longest pause between two attempts at a held lock: short enough that
/// a released lock is taken soon, long enough not to spin.
const MAX_LOCK_PAUSE: Duration = Duration::from_millis(16);

/// Where and how to keep session files.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// The root directory; created (with parents) if missing.
    pub root: PathBuf,
    /// fsync files and directories on every write and delete (default
    /// `true`). Off trades crash durability for speed.
    pub sync: bool,
    /// Temporary files older than this are debris of a crashed write and
    /// are deleted by `flush` and `clear` (default 60 s). Keep it well above
    /// the time one write takes.
    pub temp_grace: Duration,
    /// How long one operation may take, waiting for a record's lock
    /// included, before it fails with [`Error::Backend`] (default 5 s; must
    /// not be zero). `flush`, `clear` and `len` bound each lock they take by
    /// it, not their whole scan.
    pub op_timeout: Duration,
}

impl FsConfig {
    /// Defaults for `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsConfig {
            root: root.into(),
            sync: true,
            temp_grace: Duration::from_secs(60),
            op_timeout: Duration::from_secs(5),
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

/// When an operation gives up.
#[derive(Clone, Debug)]
struct Deadline {
    at: Instant,
    limit: Duration,
    /// The lock the operation is waiting for, if it is: the operation's
    /// own timer and the lock wait end at the same instant, and whichever
    /// reports the timeout must say that another writer held the lock.
    waiting_for: Arc<Mutex<Option<PathBuf>>>,
}

impl Deadline {
    fn after(limit: Duration) -> Self {
        Deadline {
            at: Instant::now() + limit,
            limit,
            waiting_for: Arc::default(),
        }
    }

    fn note_waiting(&self, lock: Option<&Path>) {
        if let Ok(mut waiting) = self.waiting_for.lock() {
            *waiting = lock.map(Path::to_path_buf);
        }
    }

    /// The timeout of a whole operation: a lock wait if it was in one.
    fn op_timed_out(&self, what: &str, path: &Path) -> Error {
        match self.waiting_for.lock().ok().and_then(|w| w.clone()) {
            Some(lock) => self.lock_timed_out(&lock),
            None => self.timed_out(what, path),
        }
    }

    fn lock_timed_out(&self, lock: &Path) -> Error {
        Error::backend(
            STORE,
            format!("locking {}", lock.display()),
            format!(
                "timed out after {:?}: another writer holds the lock",
                self.limit
            ),
        )
    }

    fn timed_out(&self, what: &str, path: &Path) -> Error {
        Error::backend(
            STORE,
            format!("{what} {}", path.display()),
            format!("timed out after {:?}", self.limit),
        )
    }

    /// Fails once the deadline has passed: the caller has been told of the
    /// timeout already, so a late write must not happen either.
    fn check(&self, what: &str, path: &Path) -> Result<()> {
        if Instant::now() >= self.at {
            Err(self.timed_out(what, path))
        } else {
            Ok(())
        }
    }
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
    /// written is [`Error::Backend`] naming the path; a zero
    /// [`op_timeout`](FsConfig::op_timeout) is [`Error::Config`].
    pub async fn open_with(config: FsConfig) -> Result<Self> {
        if config.op_timeout.is_zero() {
            return Err(Error::Config(
                "the file store's op_timeout must be above zero".into(),
            ));
        }
        let root = config.root.clone();
        let store = FsStore {
            inner: Arc::new(config),
        };
        store
            .op("opening", root, |_, root, _| {
                fs::create_dir_all(root).map_err(|e| io_error("creating", root, e))?;
                // Prove the root is writable now rather than at the first save.
                let probe = root.join(format!("{TEMP_PREFIX}probe-{}", random_suffix()));
                File::create(&probe).map_err(|e| io_error("writing in", root, e))?;
                fs::remove_file(&probe).map_err(|e| io_error("writing in", root, e))
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

    /// Runs one operation's blocking file work on tokio's blocking pool,
    /// within [`FsConfig::op_timeout`]. One hop per operation (rather than
    /// one per `tokio::fs` call) also keeps each read-check-write inside a
    /// single locked section. `what` and `path` name the operation in errors.
    ///
    /// On timeout the task is abandoned, which is safe: it fails at its own
    /// lock wait or [`Deadline::check`] before writing anything, unless the
    /// disk stalled in the middle of a write (then the write may land, as a
    /// timed-out command to a server may).
    async fn op<T, F>(&self, what: &'static str, path: PathBuf, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&FsConfig, &Path, Deadline) -> Result<T> + Send + 'static,
    {
        let config = self.inner.clone();
        let deadline = Deadline::after(config.op_timeout);
        let task = tokio::task::spawn_blocking({
            let path = path.clone();
            let deadline = deadline.clone();
            move || work(&config, &path, deadline)
        });
        match tokio::time::timeout(deadline.limit, task).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => Err(Error::backend(
                STORE,
                format!("{what} {}", path.display()),
                e,
            )),
            Err(_) => Err(deadline.op_timed_out(what, &path)),
        }
    }

    /// Runs a scan of every shard on the blocking pool, without an overall
    /// bound (it grows with the number of sessions); each lock it takes is
    /// bounded by [`FsConfig::op_timeout`].
    async fn scan<T, F>(&self, what: &'static str, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&FsConfig) -> Result<T> + Send + 'static,
    {
        let config = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&config))
            .await
            .map_err(|e| Error::backend(STORE, format!("{what} {}", self.root().display()), e))?
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the tests of this crate observe of the durability steps.
#[cfg(test)]
mod trace {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Step {
        SyncFile(PathBuf),
        SyncDir(PathBuf),
        Unlink(PathBuf),
    }

    static STEPS: Mutex<Vec<Step>> = Mutex::new(Vec::new());

    pub fn note(step: Step) {
        if let Ok(mut steps) = STEPS.lock() {
            steps.push(step);
        }
    }

    /// Takes the steps that touched paths under `root` (tests run in
    /// parallel, each in its own directory).
    pub fn take_under(root: &Path) -> Vec<Step> {
        let Ok(mut steps) = STEPS.lock() else {
            return Vec::new();
        };
        let (mine, others) = steps.drain(..).partition(|step| {
            let (Step::SyncFile(p) | Step::SyncDir(p) | Step::Unlink(p)) = step;
            p.starts_with(root)
        });
        *steps = others;
        mine
    }
}

macro_rules! note {
    ($step:ident, $path:expr) => {
        #[cfg(test)]
        trace::note(trace::Step::$step($path.to_path_buf()));
    };
}

/// Holds a shard's exclusive advisory lock until dropped.
struct ShardLock(File);

impl ShardLock {
    /// Locks the shard of a record about to be written, making the shard if
    /// needed.
    fn take_new(config: &FsConfig, shard: &Path, deadline: &Deadline) -> Result<Self> {
        ensure_shard(config, shard)?;
        match Self::take_existing(shard, deadline)? {
            Some(lock) => Ok(lock),
            None => Err(io_error(
                "locking",
                &shard.join(LOCK_FILE),
                io::Error::from(io::ErrorKind::NotFound),
            )),
        }
    }

    /// Locks an existing shard; `None` when the shard does not exist, so
    /// that no record can be in it either.
    fn take_existing(shard: &Path, deadline: &Deadline) -> Result<Option<Self>> {
        let path = shard.join(LOCK_FILE);
        let file = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("opening lock", &path, e)),
        };
        // Never a blocking flock: a holder that hangs (or a stopped process)
        // must not hang this operation past its deadline.
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => {
                    deadline.note_waiting(None);
                    return Ok(Some(ShardLock(file)));
                }
                Err(TryLockError::WouldBlock) => deadline.note_waiting(Some(&path)),
                Err(TryLockError::Error(e)) => return Err(io_error("locking", &path, e)),
            }
            let left = deadline.at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(deadline.lock_timed_out(&path));
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(MAX_LOCK_PAUSE);
        }
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

/// Makes a record's shard directory if it is missing. A new shard is
/// fsynced into the root, or the first record written into it could vanish
/// with it in a crash.
fn ensure_shard(config: &FsConfig, shard: &Path) -> Result<()> {
    match fs::create_dir(shard) {
        Ok(()) => sync_dir(config, &config.root),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        // The root itself is gone (removed under a running store): remake it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(shard).map_err(|e| io_error("creating", shard, e))?;
            sync_dir(config, &config.root)
        }
        Err(e) => Err(io_error("creating", shard, e)),
    }
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
    record_header(&header[..filled], &path.display().to_string()).map(Some)
}

/// The header of a record, refusing a version outside `1..=MAX_VERSION` as
/// [`Error::Decode`] naming `origin`: no store writes one, so the file is
/// corrupt, and taking it at its word would let `update` and `delete_if`
/// act on a version no caller can hold.
fn record_header(bytes: &[u8], origin: &str) -> Result<codec::Header> {
    let header = codec::header(bytes, origin)?;
    if (1..=MAX_VERSION).contains(&header.version) {
        Ok(header)
    } else {
        Err(Error::decode(
            origin,
            format!(
                "stored version {} is outside 1..={MAX_VERSION}",
                header.version
            ),
        ))
    }
}

/// Writes a complete (and, with `sync`, durable) temporary file in the
/// shard of `target`, which must exist, and returns its path.
fn write_temp(config: &FsConfig, target: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let temp = shard_of(target).join(format!("{TEMP_PREFIX}{}", random_suffix()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        if config.sync {
            file.sync_all()?;
            note!(SyncFile, temp);
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

/// Makes the renames, links and unlinks in `dir` durable.
fn sync_dir(config: &FsConfig, dir: &Path) -> Result<()> {
    if config.sync {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("syncing", dir, e))?;
        note!(SyncDir, dir);
    }
    Ok(())
}

/// Replaces `target` atomically and durably with `bytes`.
fn write_atomic(config: &FsConfig, target: &Path, bytes: &[u8]) -> Result<()> {
    let temp = write_temp(config, target, bytes)?;
    if let Err(e) = fs::rename(&temp, target) {
        let _ = fs::remove_file(&temp);
        return Err(io_error("replacing", target, e));
    }
    sync_dir(config, shard_of(target))
}

/// Removes a file; a missing file is fine (`false`). The caller syncs the
/// directory.
fn remove_if_present(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            note!(Unlink, path);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("deleting", path, e)),
    }
}

/// Removes a file durably; `false` when it was already missing.
fn remove_durably(config: &FsConfig, path: &Path) -> Result<bool> {
    let removed = remove_if_present(path)?;
    if removed {
        sync_dir(config, shard_of(path))?;
    }
    Ok(removed)
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

/// A temporary file old enough to be debris of a crashed write rather than
/// a write in flight (a `create` writes its temporary file without the
/// shard's lock). A file that vanished meanwhile is not stale.
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
        self.op("checking", self.path_of(id), |_, path, _| {
            path.try_exists().map_err(|e| io_error("checking", path, e))
        })
        .await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let id = *id;
        self.op("reading", self.path_of(&id), move |_, path, _| {
            let Some(bytes) = read_file(path)? else {
                return Ok(None);
            };
            let origin = path.display().to_string();
            record_header(&bytes, &origin)?;
            let session = codec::decode(id, &bytes, &origin)?;
            Ok((!session.is_expired()).then_some(session))
        })
        .await
    }

    async fn set(&self, session: &Session) -> Result<()> {
        storable_version(session.id(), session.version())?;
        let bytes = codec::encode(session, session.version())?;
        self.op(
            "saving",
            self.path_of(&session.id()),
            move |c, path, deadline| {
                let _lock = ShardLock::take_new(c, shard_of(path), &deadline)?;
                deadline.check("saving", path)?;
                write_atomic(c, path, &bytes)
            },
        )
        .await
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.op("deleting", self.path_of(id), |c, path, deadline| {
            // Locked, so a concurrent update cannot rename a new version in
            // after the delete: a save never resurrects.
            let Some(_lock) = ShardLock::take_existing(shard_of(path), &deadline)? else {
                return Ok(());
            };
            deadline.check("deleting", path)?;
            remove_durably(c, path).map(drop)
        })
        .await
    }

    async fn create(&self, session: &Session) -> Result<()> {
        let id = session.id();
        storable_version(id, session.version())?;
        let bytes = codec::encode(session, session.version())?;
        self.op("creating", self.path_of(&id), move |c, path, deadline| {
            ensure_shard(c, shard_of(path))?;
            let temp = write_temp(c, path, &bytes)?;
            let linked = match deadline.check("creating", path) {
                // link(2) fails if the name exists: an exclusive create of a
                // complete file.
                Ok(()) => fs::hard_link(&temp, path),
                Err(e) => {
                    let _ = fs::remove_file(&temp);
                    return Err(e);
                }
            };
            let _ = fs::remove_file(&temp);
            match linked {
                // One directory sync covers the link and the temp's unlink.
                Ok(()) => sync_dir(c, shard_of(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    Err(Error::IdCollision { id })
                }
                Err(e) => Err(io_error("creating", path, e)),
            }
        })
        .await
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        let version = next_version(session.id(), expected_version)?;
        let mut bytes = codec::encode(session, version)?;
        let wanted_expiry = session.expires_at_millis();
        self.op(
            "updating",
            self.path_of(&session.id()),
            move |c, path, deadline| {
                let Some(_lock) = ShardLock::take_existing(shard_of(path), &deadline)? else {
                    return Ok(UpdateOutcome::Gone);
                };
                let Some(header) = read_header(path)? else {
                    return Ok(UpdateOutcome::Gone);
                };
                if header.expires_at_ms <= now_millis() {
                    return Ok(UpdateOutcome::Gone);
                }
                if header.version != expected_version {
                    return Ok(UpdateOutcome::Conflict);
                }
                // A slower request that computed an earlier expiry must not
                // cut short what a faster one extended.
                if header.expires_at_ms > wanted_expiry {
                    codec::patch_expires_at(
                        &mut bytes,
                        header.expires_at_ms,
                        &path.display().to_string(),
                    )?;
                }
                deadline.check("updating", path)?;
                write_atomic(c, path, &bytes)?;
                Ok(UpdateOutcome::Updated { version })
            },
        )
        .await
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        self.op("deleting", self.path_of(id), move |c, path, deadline| {
            // The same lock `update` decides under: no save lands between
            // the version check and the unlink.
            let Some(_lock) = ShardLock::take_existing(shard_of(path), &deadline)? else {
                return Ok(DeleteOutcome::Gone);
            };
            let Some(header) = read_header(path)? else {
                return Ok(DeleteOutcome::Gone);
            };
            if header.expires_at_ms <= now_millis() {
                return Ok(DeleteOutcome::Gone);
            }
            if header.version != expected_version {
                return Ok(DeleteOutcome::Conflict);
            }
            deadline.check("deleting", path)?;
            Ok(if remove_durably(c, path)? {
                DeleteOutcome::Deleted
            } else {
                DeleteOutcome::Gone
            })
        })
        .await
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let expires_at_ms = unix_millis(expires_at);
        self.op("touching", self.path_of(id), move |c, path, deadline| {
            let Some(_lock) = ShardLock::take_existing(shard_of(path), &deadline)? else {
                return Ok(false);
            };
            let Some(mut bytes) = read_file(path)? else {
                return Ok(false);
            };
            let origin = path.display().to_string();
            let stored = record_header(&bytes, &origin)?.expires_at_ms;
            if stored <= now_millis() {
                return Ok(false);
            }
            if stored >= expires_at_ms {
                // Live, and already expiring no earlier: nothing to write.
                return Ok(true);
            }
            codec::patch_expires_at(&mut bytes, expires_at_ms, &origin)?;
            deadline.check("touching", path)?;
            write_atomic(c, path, &bytes)?;
            Ok(true)
        })
        .await
    }

    async fn flush(&self) -> Result<u64> {
        self.scan("flushing", |c| {
            let now = now_millis();
            let mut removed = 0;
            for shard in shards(&c.root)? {
                let mut expired = Vec::new();
                let mut unlinked = false;
                for (name, path) in shard_entries(&shard)? {
                    if is_stale_temp(c, &name, &path) {
                        tracing::info!(path = %path.display(), "removing debris of an interrupted write");
                        unlinked |= remove_if_present(&path)?;
                    } else if session_file_id(&name).is_some() {
                        match read_header(&path) {
                            Ok(Some(h)) if h.expires_at_ms <= now => expired.push(path),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "flush skips an unreadable session file"),
                        }
                    }
                }
                if !expired.is_empty() {
                    let deadline = Deadline::after(c.op_timeout);
                    if let Some(_lock) = ShardLock::take_existing(&shard, &deadline)? {
                        for path in expired {
                            // Re-checked under the lock: it may have been
                            // extended (or replaced) since the listing.
                            if matches!(read_header(&path), Ok(Some(h)) if h.expires_at_ms <= now)
                                && remove_if_present(&path)?
                            {
                                removed += 1;
                                unlinked = true;
                            }
                        }
                    }
                }
                if unlinked {
                    sync_dir(c, &shard)?;
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn clear(&self) -> Result<()> {
        self.scan("clearing", |c| {
            for shard in shards(&c.root)? {
                let deadline = Deadline::after(c.op_timeout);
                let Some(_lock) = ShardLock::take_existing(&shard, &deadline)? else {
                    continue;
                };
                let mut unlinked = false;
                for (name, path) in shard_entries(&shard)? {
                    // A young temporary file may be a create in flight (it
                    // links without the lock): only debris goes.
                    if session_file_id(&name).is_some() || is_stale_temp(c, &name, &path) {
                        // Already gone (another writer deleted it) is fine.
                        unlinked |= remove_if_present(&path)?;
                    }
                }
                if unlinked {
                    sync_dir(c, &shard)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn len(&self) -> Result<u64> {
        self.scan("counting", |c| {
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

#[cfg(test)]
mod tests {
    use super::trace::{take_under, Step};
    use super::*;
    use session_store::SessionToken;

    struct TempRoot(PathBuf);

    impl TempRoot {
        fn new(tag: &str) -> Self {
            TempRoot(
                std::env::temp_dir()
                    .join(format!("session-store-fs-unit-{tag}-{}", random_suffix())),
            )
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn session(ttl_ms: i64) -> Session {
        let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
        s.set_expires_at_millis(now_millis() + ttl_ms);
        s
    }

    fn is_temp_sync(step: &Step, shard: &Path) -> bool {
        matches!(step, Step::SyncFile(p) if p.parent() == Some(shard)
            && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX)))
    }

    #[tokio::test]
    async fn writes_sync_the_file_then_the_directory() {
        let root = TempRoot::new("writes");
        let store = FsStore::open(&root.0).await.unwrap();
        let s = session(60_000);
        let path = store.path_of(&s.id());
        let shard = shard_of(&path).to_path_buf();
        take_under(&root.0);

        store.create(&s).await.unwrap();
        let steps = take_under(&root.0);
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert_eq!(
            steps[0],
            Step::SyncDir(root.0.clone()),
            "new shard: {steps:?}"
        );
        assert!(is_temp_sync(&steps[1], &shard), "{steps:?}");
        assert_eq!(steps[2], Step::SyncDir(shard.clone()), "{steps:?}");

        for write in ["set", "update", "touch"] {
            match write {
                "set" => store.set(&s).await.unwrap(),
                "update" => drop(store.update(&s, 1).await.unwrap()),
                _ => drop(
                    store
                        .touch(
                            &s.id(),
                            OffsetDateTime::now_utc() + Duration::from_secs(600),
                        )
                        .await
                        .unwrap(),
                ),
            }
            let steps = take_under(&root.0);
            assert_eq!(steps.len(), 2, "{write}: {steps:?}");
            assert!(is_temp_sync(&steps[0], &shard), "{write}: {steps:?}");
            assert_eq!(steps[1], Step::SyncDir(shard.clone()), "{write}: {steps:?}");
        }
    }

    #[tokio::test]
    async fn deletes_sync_the_directory_after_unlinking() {
        let root = TempRoot::new("deletes");
        let store = FsStore::open(&root.0).await.unwrap();
        for delete in ["delete", "delete_if", "flush", "clear"] {
            let s = session(if delete == "flush" { -1_000 } else { 60_000 });
            store.set(&s).await.unwrap();
            let path = store.path_of(&s.id());
            take_under(&root.0);
            match delete {
                "delete" => store.delete(&s.id()).await.unwrap(),
                "delete_if" => assert_eq!(
                    store.delete_if(&s.id(), 1).await.unwrap(),
                    DeleteOutcome::Deleted
                ),
                "flush" => assert_eq!(store.flush().await.unwrap(), 1),
                _ => store.clear().await.unwrap(),
            }
            assert_eq!(
                take_under(&root.0),
                [
                    Step::Unlink(path.clone()),
                    Step::SyncDir(shard_of(&path).into())
                ],
                "{delete}"
            );
        }
    }

    #[tokio::test]
    async fn without_sync_nothing_is_synced() {
        let root = TempRoot::new("nosync");
        let store = FsStore::open_with(FsConfig {
            sync: false,
            ..FsConfig::new(&root.0)
        })
        .await
        .unwrap();
        let s = session(60_000);
        store.create(&s).await.unwrap();
        store.delete(&s.id()).await.unwrap();
        let steps = take_under(&root.0);
        assert!(
            steps.iter().all(|s| matches!(s, Step::Unlink(_))),
            "{steps:?}"
        );
    }

    /// The operation's timer and its lock wait end at the same instant;
    /// when the timer wins (a loaded machine), the error still names the
    /// lock another writer held, as the lock wait's own error does.
    #[test]
    fn an_operation_timing_out_in_a_lock_wait_names_the_lock() {
        let deadline = Deadline::after(Duration::from_millis(1));
        let record = Path::new("/root/ab/ab01");
        let context = |e: Error| match e {
            Error::Backend { context, .. } => context,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            context(deadline.op_timed_out("updating", record)),
            "updating /root/ab/ab01"
        );
        deadline.note_waiting(Some(Path::new("/root/ab/.lock")));
        assert_eq!(
            context(deadline.op_timed_out("updating", record)),
            "locking /root/ab/.lock"
        );
    }

    #[tokio::test]
    async fn a_zero_timeout_is_a_config_error() {
        let root = TempRoot::new("zero");
        let config = FsConfig {
            op_timeout: Duration::ZERO,
            ..FsConfig::new(&root.0)
        };
        assert!(matches!(
            FsStore::open_with(config).await,
            Err(Error::Config(_))
        ));
    }
}

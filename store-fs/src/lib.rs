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
//! ## User index
//!
//! `<root>/users/<h>/<id>`: an empty marker file per session bound to a
//! user, where `<h>` is the SHA-256 (hex) of the user key, so no user key
//! ever becomes part of a path. The markers are a superset of the truth:
//! a write that binds a record makes (and, with `sync`, fsyncs) its marker
//! before the record, under the record's shard lock, and a marker is only
//! removed under that lock after seeing its record gone or bound to
//! someone else. The record's own user key is the truth:
//! [`sessions_of`](SessionInterface::sessions_of) loads each listed record
//! and keeps the live ones bound to exactly that key, dropping stale
//! markers; [`revoke_user`](SessionInterface::revoke_user) deletes, shard
//! by shard under its lock, the records bound to the user. `delete`,
//! `delete_if`, a rebinding save and `flush` of an expired record drop the
//! marker they make stale; `flush` and `clear` then sweep every marker left
//! without its record (a crash, a failed write) and the empty user
//! directories, reading the head of each bound record. A save of a session
//! bound to no user, or whose binding did not change, reads the user key
//! with the header (the same `read`) and does nothing more.
//!
//! ## Corrupt files
//!
//! A session file that is no record (an unreadable header, a version
//! outside `1..=MAX_VERSION`, a corrupt body) is [`Error::Decode`] naming
//! the file for `get`, and for `update`, `touch` and `delete_if` as far as
//! they read it (the header, and the user key of a bound record), which
//! then leave it as it is. `len` and `flush` go by the header alone: a file
//! whose header is unreadable or out of range is neither counted nor
//! flushed. `clear` deletes it. `sessions_of` skips it (with a warning),
//! and `revoke_user` leaves a file whose user key it cannot read.
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
//! - a delete (`delete`, `delete_if`, `flush`, `clear`, `revoke_user`)
//!   unlinks, then fsyncs the shard directory: a logout does not come back
//!   after a crash;
//! - a user-index marker is fsynced into its directory before the record
//!   it lists is written; removing one is not synced (a marker a crash
//!   brings back is stale, which readers tolerate and `flush` removes);
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
//! race; a `create` of a session bound to a user also takes the shard's
//! lock, around its marker and the link. `set`, `update`, `delete_if`,
//! `touch`, `delete`, `flush`, `clear` and `revoke_user` take the exclusive
//! advisory lock of the record's shard (`flock` on `<shard>/.lock`) around
//! read-check-write, so compare-and-set and
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
//! `len` scan every shard, and `sessions_of` and `revoke_user` every
//! session of the user, so their total time grows with the number of
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

use std::collections::BTreeMap;
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
    codec, now_millis, unix_millis, DeleteOutcome, Error, FlushReport, Result, Session, SessionId,
    SessionInterface, UpdateOutcome, MAX_USER_KEY_LEN, MAX_VERSION,
};
use sha2::{Digest as _, Sha256};

const STORE: &str = "fs";
const TEMP_PREFIX: &str = ".tmp-";
const LOCK_FILE: &str = ".lock";
/// The directory of the user index, beside the shards.
const USERS_DIR: &str = "users";
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
        record_path(&self.inner.root, id)
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
    record_header(&header[..filled], &path.display()).map(Some)
}

/// The header of a record, refusing a version outside `1..=MAX_VERSION` as
/// [`Error::Decode`] naming `origin`: no store writes one, so the file is
/// corrupt, and taking it at its word would let `update` and `delete_if`
/// act on a version no caller can hold.
fn record_header(bytes: &[u8], origin: &dyn std::fmt::Display) -> Result<codec::Header> {
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

/// The bytes [`read_head`] may need: the header, the key length, the
/// longest key.
const HEAD_MAX: usize = codec::HEADER_LEN + 2 + MAX_USER_KEY_LEN;

/// How many bytes of `bytes`, a record's beginning, hold its header and
/// (format 3) user key, as far as `bytes` tells.
fn head_len(bytes: &[u8]) -> usize {
    let key_len_at = codec::HEADER_LEN;
    if bytes.len() < key_len_at || bytes[0] != codec::FORMAT_V3 {
        key_len_at
    } else if bytes.len() < key_len_at + 2 {
        key_len_at + 2
    } else {
        let len = usize::from(u16::from_be_bytes([
            bytes[key_len_at],
            bytes[key_len_at + 1],
        ]));
        (key_len_at + 2 + len).min(HEAD_MAX)
    }
}

/// A record's header and the user key it is bound to, read without the
/// body: usually one `read`, as for the header alone. `None` when the file
/// does not exist.
fn read_head(path: &Path) -> Result<Option<(codec::Header, Option<String>)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("reading", path, e)),
    };
    let mut head = [0u8; HEAD_MAX];
    let mut filled = 0;
    while filled < head_len(&head[..filled]) {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error("reading", path, e)),
        }
    }
    let origin = path.display();
    let header = record_header(&head[..filled], &origin)?;
    let user = codec::user_key(&head[..filled], &origin)?.map(str::to_owned);
    Ok(Some((header, user)))
}

/// The directory name of a user key: its SHA-256 in hex, so that no user
/// key, whatever it holds (`/`, `..`, unicode), becomes part of a path.
fn user_hash(user_key: &str) -> String {
    Sha256::digest(user_key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a user's markers live: `<root>/users/<sha256 of the key>`.
fn user_dir(root: &Path, user_hash: &str) -> PathBuf {
    root.join(USERS_DIR).join(user_hash)
}

/// A session's file under `root`: `<root>/<first two hex digits>/<id>`.
fn record_path(root: &Path, id: &SessionId) -> PathBuf {
    let hex = id.to_hex();
    root.join(&hex[..2]).join(hex)
}

/// Makes a directory if it is missing, syncing it into its parent when
/// made.
fn ensure_dir(config: &FsConfig, dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(config, shard_of(dir)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error("creating", dir, e)),
    }
}

/// Lists `id` under `user_key`: creates its empty marker file, durably,
/// before the record is written (the caller holds the record's shard
/// lock), so the index never lacks a stored record.
fn add_marker(config: &FsConfig, user_key: &str, id: &SessionId) -> Result<()> {
    let users = config.root.join(USERS_DIR);
    let dir = user_dir(&config.root, &user_hash(user_key));
    let marker = dir.join(id.to_hex());
    // A sweep removes empty user directories without the record's lock:
    // one that vanished between making it and the marker is made again.
    for _ in 0..8 {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
        {
            Ok(_) => return sync_dir(config, &dir),
            // Made by an earlier write of this record, under this lock.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                ensure_dir(config, &users)?;
                ensure_dir(config, &dir)?;
            }
            Err(e) => return Err(io_error("indexing", &marker, e)),
        }
    }
    Err(io_error(
        "indexing",
        &marker,
        io::Error::other("the user directory kept vanishing"),
    ))
}

/// Takes `id` off the list of the user whose key hashes to `user_hash`.
/// Call with the record's shard lock held, having seen that the record is
/// not bound to that user. Not synced: a marker a crash brings back is
/// stale, which readers tolerate and `flush` removes.
fn drop_marker(root: &Path, user_hash: &str, id: &SessionId) -> Result<()> {
    let marker = user_dir(root, user_hash).join(id.to_hex());
    match fs::remove_file(&marker) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("unindexing", &marker, e)),
    }
}

/// Moves the index entry of the record at `path` (whose shard lock the
/// caller holds) from `old` to `new`, around `write`: the new marker is
/// made before the write, the old one dropped after it. Nothing but a
/// comparison when the binding did not change.
fn rebind<T>(
    config: &FsConfig,
    id: &SessionId,
    old: Option<&str>,
    new: Option<&str>,
    write: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if old == new {
        return write();
    }
    if let Some(new) = new {
        add_marker(config, new, id)?;
    }
    let written = write()?;
    if let Some(old) = old {
        drop_marker(&config.root, &user_hash(old), id)?;
    }
    Ok(written)
}

/// The markers of one user: the ids listed under `user_hash`.
fn markers(root: &Path, user_hash: &str) -> Result<Vec<SessionId>> {
    let dir = user_dir(root, user_hash);
    Ok(shard_entries(&dir)?
        .into_iter()
        .filter_map(|(name, _)| session_file_id(&name))
        .collect())
}

/// Whether the record of `id` exists and is bound to the user whose key
/// hashes to `user_hash`; an unreadable record counts as bound (it cannot
/// be told apart, and a stale marker is harmless).
fn bound_to_hash(root: &Path, id: &SessionId, user_hash: &str) -> bool {
    match read_head(&record_path(root, id)) {
        Ok(Some((_, Some(key)))) => self::user_hash(&key) == user_hash,
        Ok(_) => false,
        Err(_) => true,
    }
}

/// Ids grouped by the shard their records live in, so that each shard's
/// lock is taken once.
fn by_shard(
    root: &Path,
    ids: impl IntoIterator<Item = SessionId>,
) -> BTreeMap<PathBuf, Vec<SessionId>> {
    let mut shards: BTreeMap<PathBuf, Vec<SessionId>> = BTreeMap::new();
    for id in ids {
        let path = record_path(root, &id);
        shards
            .entry(shard_of(&path).to_path_buf())
            .or_default()
            .push(id);
    }
    shards
}

/// Locks a record shard for index upkeep, making it if missing: a marker
/// may only be dropped under the lock a writer of its record would take.
fn lock_shard(config: &FsConfig, shard: &Path) -> Result<ShardLock> {
    ShardLock::take_new(config, shard, &Deadline::after(config.op_timeout))
}

/// Removes every marker whose record is gone or bound to another user
/// (checked under the record's shard lock), then the user directories
/// left empty: what `flush` and `clear` leave of the index is the truth.
fn sweep_markers(config: &FsConfig) -> Result<()> {
    let users = config.root.join(USERS_DIR);
    let mut stale: Vec<(String, SessionId)> = Vec::new();
    let mut user_dirs = Vec::new();
    for (name, path) in shard_entries(&users)? {
        if session_file_id(&name).is_none() || !path.is_dir() {
            continue;
        }
        for id in markers(&config.root, &name)? {
            // Read without the lock first: most markers are true.
            if !bound_to_hash(&config.root, &id, &name) {
                stale.push((name.clone(), id));
            }
        }
        user_dirs.push(path);
    }
    let mut hashes: BTreeMap<SessionId, Vec<String>> = BTreeMap::new();
    for (hash, id) in stale {
        hashes.entry(id).or_default().push(hash);
    }
    for (shard, ids) in by_shard(&config.root, hashes.keys().copied()) {
        let _lock = lock_shard(config, &shard)?;
        for id in ids {
            for hash in hashes.get(&id).into_iter().flatten() {
                // Re-checked under the lock: the record may have been
                // written for this user meanwhile.
                if !bound_to_hash(&config.root, &id, hash) {
                    drop_marker(&config.root, hash, &id)?;
                }
            }
        }
    }
    for dir in user_dirs {
        // Fails, harmlessly, unless empty: a writer listing a session now
        // keeps it (and one that lost it makes it again).
        let _ = fs::remove_dir(dir);
    }
    Ok(())
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
            let origin = path.display();
            record_header(&bytes, &origin)?;
            let session = codec::decode_owned(id, bytes, &origin)?;
            Ok((!session.is_expired()).then_some(session))
        })
        .await
    }

    async fn set(&self, session: &Session) -> Result<()> {
        storable_version(session.id(), session.version())?;
        let bytes = codec::encode(session, session.version())?;
        let (id, user) = (session.id(), session.user_key().map(str::to_owned));
        self.op(
            "saving",
            self.path_of(&session.id()),
            move |c, path, deadline| {
                let _lock = ShardLock::take_new(c, shard_of(path), &deadline)?;
                // `set` overwrites whatever is there, a corrupt file too:
                // one whose user cannot be read leaves a stale marker at
                // worst, which `flush` removes.
                let old = read_head(path).ok().flatten().and_then(|(_, user)| user);
                deadline.check("saving", path)?;
                rebind(c, &id, old.as_deref(), user.as_deref(), || {
                    write_atomic(c, path, &bytes)
                })
            },
        )
        .await
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        let id = *id;
        self.op("deleting", self.path_of(&id), move |c, path, deadline| {
            // Locked, so a concurrent update cannot rename a new version in
            // after the delete: a save never resurrects.
            let Some(_lock) = ShardLock::take_existing(shard_of(path), &deadline)? else {
                return Ok(());
            };
            // A corrupt file is deleted all the same; a marker of it is
            // left to `flush`.
            let user = read_head(path).ok().flatten().and_then(|(_, user)| user);
            deadline.check("deleting", path)?;
            remove_durably(c, path)?;
            match user {
                Some(user) => drop_marker(&c.root, &user_hash(&user), &id),
                None => Ok(()),
            }
        })
        .await
    }

    async fn create(&self, session: &Session) -> Result<()> {
        let id = session.id();
        storable_version(id, session.version())?;
        let bytes = codec::encode(session, session.version())?;
        let user = session.user_key().map(str::to_owned);
        self.op("creating", self.path_of(&id), move |c, path, deadline| {
            // An unbound create needs no lock (the link is exclusive). A
            // bound one lists its marker first, under the lock a sweep
            // would take to drop it, so the marker cannot vanish between
            // being made and the record appearing.
            let lock = match &user {
                Some(user) => {
                    let lock = ShardLock::take_new(c, shard_of(path), &deadline)?;
                    add_marker(c, user, &id)?;
                    Some(lock)
                }
                None => {
                    ensure_shard(c, shard_of(path))?;
                    None
                }
            };
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
                    // Our marker may list a record of someone else: drop
                    // it unless the record there is this user's too.
                    if let (Some(user), Some(_lock)) = (&user, &lock) {
                        let hash = user_hash(user);
                        if !bound_to_hash(&c.root, &id, &hash) {
                            drop_marker(&c.root, &hash, &id)?;
                        }
                    }
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
        let (id, user) = (session.id(), session.user_key().map(str::to_owned));
        self.op(
            "updating",
            self.path_of(&session.id()),
            move |c, path, deadline| {
                let Some(_lock) = ShardLock::take_existing(shard_of(path), &deadline)? else {
                    return Ok(UpdateOutcome::Gone);
                };
                // The user key comes with the header in the same read.
                let Some((header, old_user)) = read_head(path)? else {
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
                    codec::patch_expires_at(&mut bytes, header.expires_at_ms, path.display())?;
                }
                deadline.check("updating", path)?;
                rebind(c, &id, old_user.as_deref(), user.as_deref(), || {
                    write_atomic(c, path, &bytes)
                })?;
                Ok(UpdateOutcome::Updated { version })
            },
        )
        .await
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        let id = *id;
        self.op("deleting", self.path_of(&id), move |c, path, deadline| {
            // The same lock `update` decides under: no save lands between
            // the version check and the unlink.
            let Some(_lock) = ShardLock::take_existing(shard_of(path), &deadline)? else {
                return Ok(DeleteOutcome::Gone);
            };
            let Some((header, user)) = read_head(path)? else {
                return Ok(DeleteOutcome::Gone);
            };
            if header.expires_at_ms <= now_millis() {
                return Ok(DeleteOutcome::Gone);
            }
            if header.version != expected_version {
                return Ok(DeleteOutcome::Conflict);
            }
            deadline.check("deleting", path)?;
            if !remove_durably(c, path)? {
                return Ok(DeleteOutcome::Gone);
            }
            if let Some(user) = user {
                drop_marker(&c.root, &user_hash(&user), &id)?;
            }
            Ok(DeleteOutcome::Deleted)
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
            let origin = path.display();
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
        Ok(self.flush_reporting().await?.deleted)
    }

    async fn flush_reporting(&self) -> Result<FlushReport> {
        self.scan("flushing", |c| {
            let now = now_millis();
            let mut report = FlushReport::default();
            for shard in shards(&c.root)? {
                let mut expired = Vec::new();
                let mut unlinked = false;
                for (name, path) in shard_entries(&shard)? {
                    if is_stale_temp(c, &name, &path) {
                        tracing::info!(path = %path.display(), "removing debris of an interrupted write");
                        unlinked |= remove_if_present(&path)?;
                    } else if let Some(id) = session_file_id(&name) {
                        match read_header(&path) {
                            Ok(Some(h)) if h.expires_at_ms <= now => expired.push((id, path)),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "flush skips an unreadable session file"),
                        }
                    }
                }
                if !expired.is_empty() {
                    let deadline = Deadline::after(c.op_timeout);
                    if let Some(_lock) = ShardLock::take_existing(&shard, &deadline)? {
                        for (id, path) in expired {
                            // Re-checked under the lock: it may have been
                            // extended (or replaced) since the listing.
                            let (h, user) = match read_head(&path) {
                                Ok(Some(head)) => head,
                                Ok(None) => continue,
                                // Flushed by its header all the same; a
                                // marker of it is left to the sweep.
                                Err(_) => match read_header(&path) {
                                    Ok(Some(h)) => (h, None),
                                    _ => continue,
                                },
                            };
                            if h.expires_at_ms <= now && remove_if_present(&path)? {
                                unlinked = true;
                                if let Some(user) = &user {
                                    drop_marker(&c.root, &user_hash(user), &id)?;
                                }
                                report.deleted += 1;
                                report.expired.push((id, user));
                            }
                        }
                    }
                }
                if unlinked {
                    sync_dir(c, &shard)?;
                }
            }
            sweep_markers(c)?;
            Ok(report)
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
            sweep_markers(c)
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

    async fn sessions_of(&self, user_key: &str) -> Result<Vec<Session>> {
        let user = user_key.to_owned();
        self.scan("listing sessions in", move |c| {
            let hash = user_hash(&user);
            let now = now_millis();
            let mut sessions = Vec::new();
            let mut stale = Vec::new();
            // Read without locks: a record is replaced by rename, so each
            // read sees one whole version.
            for id in markers(&c.root, &hash)? {
                let path = record_path(&c.root, &id);
                let Some(bytes) = read_file(&path)? else {
                    stale.push(id);
                    continue;
                };
                let origin = path.display();
                let header = match record_header(&bytes, &origin) {
                    Ok(header) => header,
                    Err(e) => {
                        tracing::warn!(error = %e, "sessions_of skips an unreadable session file");
                        continue;
                    }
                };
                // The record is the truth: the marker may be stale, or a
                // hash may collide.
                match codec::user_key(&bytes, &origin) {
                    Ok(Some(key)) if key == user => {}
                    Ok(_) => {
                        stale.push(id);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sessions_of skips an unreadable session file");
                        continue;
                    }
                }
                if header.expires_at_ms <= now {
                    continue;
                }
                match codec::decode(id, &bytes, &origin) {
                    Ok(session) => sessions.push(session),
                    Err(e) => {
                        tracing::warn!(error = %e, "sessions_of skips an unreadable session file")
                    }
                }
            }
            for (shard, ids) in by_shard(&c.root, stale) {
                let _lock = lock_shard(c, &shard)?;
                for id in ids {
                    // Re-checked under the lock: a save may have bound the
                    // record to this user meanwhile.
                    if !bound_to_hash(&c.root, &id, &hash) {
                        drop_marker(&c.root, &hash, &id)?;
                    }
                }
            }
            Ok(sessions)
        })
        .await
    }

    async fn revoke_user(
        &self,
        user_key: &str,
        except: Option<&SessionId>,
    ) -> Result<Vec<SessionId>> {
        let (user, except) = (user_key.to_owned(), except.copied());
        self.scan("revoking sessions in", move |c| {
            let hash = user_hash(&user);
            let mut revoked = Vec::new();
            for (shard, ids) in by_shard(&c.root, markers(&c.root, &hash)?) {
                // The lock every save of these records takes: a save
                // decided after the delete finds the record gone.
                let _lock = lock_shard(c, &shard)?;
                let mut unlinked = false;
                for id in ids {
                    let path = record_path(&c.root, &id);
                    match read_head(&path) {
                        Ok(Some((_, Some(key)))) if key == user => {
                            if Some(id) != except && remove_if_present(&path)? {
                                unlinked = true;
                                revoked.push(id);
                                drop_marker(&c.root, &hash, &id)?;
                            }
                        }
                        // Gone, unbound or another user's (a hash
                        // collision, or a stale marker).
                        Ok(_) => {
                            if !bound_to_hash(&c.root, &id, &hash) {
                                drop_marker(&c.root, &hash, &id)?;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "revoke_user skips an unreadable session file"),
                    }
                }
                if unlinked {
                    sync_dir(c, &shard)?;
                }
            }
            Ok(revoked)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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

    fn bound(user: Option<&str>, ttl_ms: i64) -> Session {
        let mut s = session(ttl_ms);
        s.set_user(user.map(|u| session_store::UserBinding::new(u, Default::default()).unwrap()));
        s
    }

    /// Every marker under the store's root: (user hash, id).
    fn all_markers(root: &Path) -> BTreeSet<(String, SessionId)> {
        let mut out = BTreeSet::new();
        for (hash, path) in shard_entries(&root.join(USERS_DIR)).unwrap() {
            assert!(
                session_file_id(&hash).is_some() && path.is_dir(),
                "{} in the users directory",
                path.display()
            );
            for id in markers(root, &hash).unwrap() {
                out.insert((hash.clone(), id));
            }
        }
        out
    }

    /// What the markers must list: every stored record bound to a user.
    fn bound_records(root: &Path) -> BTreeSet<(String, SessionId)> {
        let mut out = BTreeSet::new();
        for shard in shards(root).unwrap() {
            for (name, path) in shard_entries(&shard).unwrap() {
                if let Some(id) = session_file_id(&name) {
                    if let Some((_, Some(user))) = read_head(&path).unwrap() {
                        out.insert((user_hash(&user), id));
                    }
                }
            }
        }
        out
    }

    /// A bound create makes its marker durable before the record's data:
    /// a crash never leaves a bound record the index does not list.
    #[tokio::test]
    async fn a_bound_create_syncs_its_marker_before_the_record() {
        let root = TempRoot::new("marker-order");
        let store = FsStore::open(&root.0).await.unwrap();
        let s = bound(Some("ada"), 60_000);
        take_under(&root.0);
        store.create(&s).await.unwrap();
        let steps = take_under(&root.0);
        let user_dir = user_dir(&root.0, &user_hash("ada"));
        let marker_synced = steps
            .iter()
            .position(|step| *step == Step::SyncDir(user_dir.clone()))
            .unwrap_or_else(|| panic!("the marker was not synced: {steps:?}"));
        let shard = shard_of(&store.path_of(&s.id())).to_path_buf();
        let record_synced = steps
            .iter()
            .position(|step| is_temp_sync(step, &shard))
            .unwrap_or_else(|| panic!("the record was not synced: {steps:?}"));
        assert!(marker_synced < record_synced, "{steps:?}");
        assert!(user_dir.join(s.id().to_hex()).exists());
    }

    /// Sessions bound to no user never touch the index: no users directory,
    /// no extra sync.
    #[tokio::test]
    async fn unbound_sessions_do_no_index_work() {
        let root = TempRoot::new("unbound");
        let store = FsStore::open(&root.0).await.unwrap();
        let s = session(60_000);
        store.create(&s).await.unwrap();
        take_under(&root.0);
        for version in 1..4 {
            store.update(&s, version).await.unwrap();
        }
        assert_eq!(take_under(&root.0).len(), 6, "two syncs per update");
        store.delete(&s.id()).await.unwrap();
        store.flush().await.unwrap();
        assert!(!root.0.join(USERS_DIR).exists());
    }

    /// User keys with separators and dots are hashed, never joined into a
    /// path.
    #[tokio::test]
    async fn user_keys_never_become_paths() {
        let root = TempRoot::new("user-paths");
        let store = FsStore::open(&root.0).await.unwrap();
        for user in ["../../etc", "/abs", "a/b", "..", "ädä", "{x}*?"] {
            store.create(&bound(Some(user), 60_000)).await.unwrap();
        }
        let listed = all_markers(&root.0);
        assert_eq!(listed.len(), 6);
        for (hash, id) in listed {
            assert_eq!(hash.len(), 64);
            assert!(user_dir(&root.0, &hash)
                .join(id.to_hex())
                .starts_with(&root.0));
        }
        assert_eq!(store.sessions_of("../../etc").await.unwrap().len(), 1);
    }

    /// Markers left behind by crashes or writes that failed half way (a
    /// record deleted behind the store's back, a marker of a rebound
    /// record) are swept by one `flush`, empty user directories with them;
    /// true markers stay.
    #[tokio::test]
    async fn flush_sweeps_stale_markers() {
        let root = TempRoot::new("sweep");
        let store = FsStore::open(&root.0).await.unwrap();
        let kept = bound(Some("ada"), 60_000);
        let vanished = bound(Some("ada"), 60_000);
        let rebound = bound(Some("bob"), 60_000);
        for s in [&kept, &vanished, &rebound] {
            store.create(s).await.unwrap();
        }
        fs::remove_file(store.path_of(&vanished.id())).unwrap();
        // A rebinding that crashed before dropping its old marker.
        let ghost = user_dir(&root.0, &user_hash("cy"));
        fs::create_dir_all(&ghost).unwrap();
        fs::write(ghost.join(rebound.id().to_hex()), b"").unwrap();
        assert_ne!(all_markers(&root.0), bound_records(&root.0));

        let expired = bound(Some("ada"), -1_000);
        store.set(&expired).await.unwrap();
        let report = store.flush_reporting().await.unwrap();
        assert_eq!(report.deleted, 1);
        assert_eq!(report.expired, vec![(expired.id(), Some("ada".to_owned()))]);
        assert_eq!(all_markers(&root.0), bound_records(&root.0));
        assert!(!ghost.exists(), "an empty user directory stayed");
        assert_eq!(all_markers(&root.0).len(), 2);
    }

    /// Many tasks on two store instances sharing the directory rebind,
    /// save, delete, revoke and clear the same sessions at once: at every
    /// quiet point the markers list every bound record, and after one
    /// `flush` they list exactly the bound records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn markers_stay_a_superset_under_racing_writers_and_flush_makes_them_exact() {
        const USERS: [Option<&str>; 4] = [Some("ada"), Some("bob"), Some("ada2"), None];
        let root = TempRoot::new("race");
        let config = FsConfig {
            sync: false,
            ..FsConfig::new(&root.0)
        };
        let a = FsStore::open_with(config.clone()).await.unwrap();
        let b = FsStore::open_with(config).await.unwrap();
        let shared: Vec<Session> = (0..12).map(|i| bound(USERS[i % 4], 60_000)).collect();
        for s in &shared {
            a.create(s).await.unwrap();
        }
        let mut tasks = Vec::new();
        for worker in 0..6usize {
            let store = if worker % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..60usize {
                    let mut s = shared[(worker * 5 + round * 7) % shared.len()].clone();
                    let user = USERS[(worker + round) % USERS.len()];
                    s.set_user(
                        user.map(|u| {
                            session_store::UserBinding::new(u, Default::default()).unwrap()
                        }),
                    );
                    match round % 7 {
                        0..=2 => {
                            if let Some(stored) = store.get(&s.id()).await.unwrap() {
                                store.update(&s, stored.version()).await.unwrap();
                            }
                        }
                        3 => store.set(&s).await.unwrap(),
                        4 => {
                            let _ = store.create(&s).await;
                        }
                        5 => store.delete(&s.id()).await.unwrap(),
                        _ => {
                            let victim = USERS[round % 3].unwrap();
                            let except = (round % 2 == 0).then_some(s.id());
                            for id in store.revoke_user(victim, except.as_ref()).await.unwrap() {
                                assert!(Some(id) != except, "revoked the excepted session");
                            }
                        }
                    }
                    if worker == 1 && round % 20 == 19 {
                        store.clear().await.unwrap();
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let (listed, truth) = (all_markers(&root.0), bound_records(&root.0));
        assert!(
            truth.is_subset(&listed),
            "bound records without a marker: {:?}",
            truth.difference(&listed).collect::<Vec<_>>()
        );
        a.flush().await.unwrap();
        assert_eq!(all_markers(&root.0), bound_records(&root.0));
        for user in USERS.iter().flatten() {
            let listed = b.sessions_of(user).await.unwrap();
            assert!(listed.iter().all(|s| s.user_key() == Some(*user)));
            let revoked = a.revoke_user(user, None).await.unwrap();
            assert_eq!(revoked.len(), listed.len(), "{user}");
        }
        assert!(all_markers(&root.0).is_empty());
        assert!(bound_records(&root.0).is_empty());
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

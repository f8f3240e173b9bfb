//! The conformance suite: one set of cases every [`SessionInterface`] store
//! must pass (feature `conformance`).
//!
//! Run it against your own store from your own tests:
//!
//! ```
//! // tests/conformance.rs of your store crate; dev-dependencies:
//! // session-store = { version = "0.1", features = ["conformance"] }, tokio
//! # use session_store::conformance::ReferenceStore as MyStore;
//! use std::sync::Arc;
//! use session_store::conformance::{factory, conformance_tests};
//!
//! conformance_tests!(factory(|| async {
//!     Some(Arc::new(MyStore::new()) as Arc<dyn session_store::SessionInterface>)
//! }));
//! ```
//!
//! The macro expands into one `#[tokio::test]` per case, so each case shows
//! by name in `cargo test` output. The factory must give every call a fresh
//! store in its own namespace (prefix, table, directory): cases run in
//! parallel, and some make two stores to check that namespaces stay apart.
//! A factory may return `None` to skip (say, a server that is unreachable
//! outside CI); it should print why.
//!
//! [`run_all`] runs every case in one go and reports which failed: the
//! suite's own tests use it to prove that broken stores fail.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::backend::{next_version, storable_version};
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::session::{now_millis, unix_millis, Session};
use crate::store::{DeleteOutcome, FlushReport, SessionInterface, UpdateOutcome};

pub mod cases;
pub mod index_battery;

pub use crate::conformance_tests;

/// Gives each conformance case fresh, isolated stores.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// A fresh, empty store in a namespace of its own; `None` skips the case.
    async fn make(&self) -> Option<Arc<dyn SessionInterface>>;

    /// A fresh, empty store whose namespace nests inside `outer`'s (Redis:
    /// `outer`'s prefix followed by `"admin:"`), sharing its backend, so the
    /// suite can check that `clear`, `len` and `flush` of `outer` leave it
    /// alone. `outer` is a store this factory made. The default `None` skips
    /// the cases that need it (visibly, on stderr); stores whose namespaces
    /// cannot nest (separate tables, directories) may keep it.
    async fn make_nested(
        &self,
        outer: &Arc<dyn SessionInterface>,
    ) -> Option<Arc<dyn SessionInterface>> {
        let _ = outer;
        None
    }

    /// Called after each case with every store it made, to release what
    /// they hold (drop a table, remove a directory). The default clears it.
    async fn cleanup(&self, store: Arc<dyn SessionInterface>) {
        if let Err(e) = store.clear().await {
            eprintln!("conformance cleanup failed: {e}");
        }
    }
}

/// A [`StoreFactory`] from an async closure (see [`factory`]).
pub struct FnFactory<F>(F);

/// Wraps an async closure returning `Option<Arc<dyn SessionInterface>>` as a
/// [`StoreFactory`].
pub fn factory<F, Fut>(make: F) -> FnFactory<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Arc<dyn SessionInterface>>> + Send,
{
    FnFactory(make)
}

#[async_trait]
impl<F, Fut> StoreFactory for FnFactory<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Arc<dyn SessionInterface>>> + Send,
{
    async fn make(&self) -> Option<Arc<dyn SessionInterface>> {
        (self.0)().await
    }
}

/// Why a case failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(format!("unexpected error: {e}"))
    }
}

/// What a case returns.
pub type CaseResult = std::result::Result<(), Failure>;

/// What a case gets: its store, and the factory for more.
#[derive(Clone)]
pub struct Ctx {
    /// The store under test.
    pub store: Arc<dyn SessionInterface>,
    factory: Arc<dyn StoreFactory>,
    made: Arc<Mutex<Vec<Arc<dyn SessionInterface>>>>,
    skipped: Arc<std::sync::atomic::AtomicBool>,
}

impl Ctx {
    /// Another fresh store of the same kind, in a namespace of its own.
    pub async fn another_store(&self) -> std::result::Result<Arc<dyn SessionInterface>, Failure> {
        let store = self
            .factory
            .make()
            .await
            .ok_or_else(|| Failure("the factory gave no second store".into()))?;
        if let Ok(mut made) = self.made.lock() {
            made.push(store.clone());
        }
        Ok(store)
    }

    /// Whether the store under test keeps a user index
    /// ([`SessionInterface::sessions_of`]); when it answers
    /// [`Error::Unsupported`] the case counts as skipped (it should return
    /// `Ok(())`).
    pub async fn has_user_index(&self) -> std::result::Result<bool, Failure> {
        match self.store.sessions_of("conformance probe").await {
            Ok(_) => Ok(true),
            Err(Error::Unsupported { .. }) => {
                self.skipped
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A store nested inside `outer`'s namespace (see
    /// [`StoreFactory::make_nested`]); `None` when the factory has none,
    /// and the case then counts as skipped (it should return `Ok(())`).
    pub async fn nested_store(
        &self,
        outer: &Arc<dyn SessionInterface>,
    ) -> Option<Arc<dyn SessionInterface>> {
        let Some(store) = self.factory.make_nested(outer).await else {
            self.skipped
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return None;
        };
        if let Ok(mut made) = self.made.lock() {
            made.push(store.clone());
        }
        Some(store)
    }
}

/// Prints `line` to the process's real stderr, which libtest does not
/// capture, so that a skipped case shows in `cargo test` output.
pub fn say_skipped(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {line}");
}

/// A case: an async function of its context.
pub type CaseFn = fn(Ctx) -> Pin<Box<dyn Future<Output = CaseResult> + Send>>;

/// Fails the case with a message unless `cond` holds.
#[macro_export]
#[doc(hidden)]
macro_rules! __check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::conformance::Failure(format!($($msg)+)));
        }
    };
}

/// Runs one case against a fresh store from `factory`: `Ok(false)` when the
/// factory skipped (no store, or not the nested store the case needs),
/// `Ok(true)` when it passed.
pub async fn run_case(
    case: CaseFn,
    factory: Arc<dyn StoreFactory>,
) -> std::result::Result<bool, Failure> {
    let Some(store) = factory.make().await else {
        return Ok(false);
    };
    let made = Arc::new(Mutex::new(vec![store.clone()]));
    let skipped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ctx = Ctx {
        store,
        factory: factory.clone(),
        made: made.clone(),
        skipped: skipped.clone(),
    };
    // A panicking case (a store that panics) is a failure, not an abort.
    let outcome = tokio::spawn(case(ctx)).await;
    let stores: Vec<_> = made.lock().map(|m| m.clone()).unwrap_or_default();
    for store in stores {
        factory.cleanup(store).await;
    }
    match outcome {
        Ok(Ok(())) => Ok(!skipped.load(std::sync::atomic::Ordering::SeqCst)),
        Ok(Err(failure)) => Err(failure),
        Err(join) => Err(Failure(format!("the case panicked: {join}"))),
    }
}

/// Runs one case and panics with its failure (what the generated tests call).
pub async fn run_test(name: &str, case: CaseFn, factory: Arc<dyn StoreFactory>) {
    match run_case(case, factory).await {
        Ok(true) => {}
        Ok(false) => say_skipped(&format!(
            "conformance case {name}: the factory gave no store, or no nested store (StoreFactory::make_nested), or the store keeps no user index (sessions_of is Unsupported)"
        )),
        Err(failure) => panic!("conformance case {name} failed: {failure}"),
    }
}

/// What [`run_all`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases that passed.
    pub passed: Vec<&'static str>,
    /// Cases that failed, with why.
    pub failed: Vec<(&'static str, Failure)>,
    /// Cases the factory skipped.
    pub skipped: Vec<&'static str>,
}

impl Report {
    /// Whether the named case failed.
    pub fn failed(&self, name: &str) -> bool {
        self.failed.iter().any(|(n, _)| *n == name)
    }
}

/// How many cases [`run_all`] runs at once: enough that the sleeping cases
/// overlap, few enough that the timing cases keep their margins on a
/// small machine.
const RUN_ALL_AT_ONCE: usize = 12;

/// Runs every case (a few at a time, each on fresh stores) and reports, in
/// the order of [`all_cases`].
pub async fn run_all(factory: Arc<dyn StoreFactory>) -> Report {
    let limit = Arc::new(tokio::sync::Semaphore::new(RUN_ALL_AT_ONCE));
    let mut running = Vec::new();
    for (name, case) in all_cases() {
        let (factory, limit) = (factory.clone(), limit.clone());
        running.push((
            name,
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                run_case(case, factory).await
            }),
        ));
    }
    let mut report = Report::default();
    for (name, task) in running {
        match task.await {
            Ok(Ok(true)) => report.passed.push(name),
            Ok(Ok(false)) => report.skipped.push(name),
            Ok(Err(failure)) => report.failed.push((name, failure)),
            Err(join) => report
                .failed
                .push((name, Failure(format!("the case panicked: {join}")))),
        }
    }
    report
}

/// Expands into one `#[tokio::test]` per conformance case, each running
/// against a fresh store from `$factory` (an expression implementing
/// [`StoreFactory`], evaluated once per case).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__conformance_cases!(@tests $factory);
    };
}

/// Every case by name: the one list both the macro and [`run_all`] use.
#[macro_export]
#[doc(hidden)]
macro_rules! __conformance_cases {
    (@tests $factory:expr) => {
        $crate::__conformance_cases!(@each [$factory]);
    };
    (@list) => {
        $crate::__conformance_cases!(@each list);
    };
    (@each $($how:tt)*) => {
        $crate::__conformance_cases!(@expand [$($how)*]
            roundtrip_unicode_strings,
            roundtrip_empty_values,
            roundtrip_one_megabyte,
            roundtrip_numbers_and_structs,
            roundtrip_many_keys,
            roundtrip_keeps_times_and_version,
            roundtrip_session_without_data,
            get_missing_is_none,
            exists_and_has_agree,
            is_valid_live_and_missing,
            expiry_subsecond_honoured,
            expiry_one_second_honoured,
            get_never_returns_expired,
            len_counts_only_live,
            len_zero_when_empty,
            set_inserts,
            set_overwrites,
            set_stores_expiry,
            set_keeps_given_version,
            delete_removes,
            delete_is_idempotent,
            delete_leaves_others,
            create_starts_at_its_version,
            create_collision_is_error,
            create_collision_keeps_original,
            update_bumps_version,
            update_persists_data_and_expiry,
            update_stale_version_conflicts,
            update_future_version_conflicts,
            update_conflict_writes_nothing,
            update_after_delete_is_gone,
            update_never_created_is_gone,
            update_expired_is_gone,
            touch_extends_expiry,
            touch_keeps_data_and_version,
            touch_missing_creates_nothing,
            touch_never_revives_expired,
            flush_removes_exactly_expired,
            flush_empty_is_zero,
            flush_keeps_live,
            clear_removes_all,
            clear_leaves_other_namespace,
            namespaces_are_isolated,
            concurrent_distinct_ids,
            concurrent_creates_one_wins,
            concurrent_updates_one_wins_per_version,
            manager_concurrent_increments_exact,
            manager_concurrent_keys_merge,
            manager_empty_session_not_stored,
            manager_cookie_round_trip,
            manager_regenerate_keeps_data,
            manager_destroy_deletes_and_expires_cookie,
            manager_save_after_destroy_not_resurrected,
            manager_flash_read_once,
            manager_never_adopts_foreign_token,
            manager_hostile_cookies_start_fresh,
            manager_idle_touch_extends,
            manager_absolute_timeout,
            manager_signed_cookie_rotation,
            remaining_seconds_never_negative,
            roundtrip_flash_values,
            write_ids_survive_create,
            write_ids_survive_set,
            update_replaces_write_ids,
            touch_keeps_write_ids,
            update_replaces_whole_record,
            update_clears_flash,
            set_is_unconditional,
            set_refuses_version_out_of_range,
            create_refuses_version_out_of_range,
            max_version_round_trips,
            update_at_max_version_refused,
            versions_beyond_float_precision,
            update_never_shortens_expiry,
            update_with_past_expiry_stays_live,
            update_after_touch_keeps_later_expiry,
            touch_never_shortens_expiry,
            touch_with_past_expiry_stays_live,
            recently_expired_is_gone_everywhere,
            soon_expiring_is_live_everywhere,
            delete_if_deletes_at_version,
            delete_if_conflict_deletes_nothing,
            delete_if_missing_is_gone,
            delete_if_expired_is_gone,
            delete_if_follows_update_and_touch,
            concurrent_delete_ifs_one_wins,
            delete_if_racing_update_one_wins,
            create_on_expired_agrees_with_exists,
            is_empty_ignores_expired,
            clear_removes_expired_records,
            clear_with_concurrent_deletes_removes_all,
            flush_with_concurrent_deletes_removes_all_expired,
            flush_spares_records_set_meanwhile,
            clear_leaves_nested_namespace,
            nested_namespace_is_foreign,
            manager_save_after_expiry_commits_nothing,
            manager_regenerate_after_destroy_creates_nothing,
            manager_regenerate_keeps_concurrent_save,
            manager_overlapping_login_commits_nothing,
            manager_overlapping_login_due_touch_commits_nothing,
            manager_flash_consumed_by_value,
            manager_flash_consumed_by_value_after_conflict,
            manager_unread_flash_stays,
            manager_stale_key_cookie_reissued,
            manager_duplicate_cookies_start_fresh,
            manager_expiry_never_moves_backwards,
            manager_second_commit_writes_nothing,
            user_index_lists_bound_sessions,
            user_index_keys_are_exact,
            user_index_follows_rebinding,
            user_index_forgets_deleted,
            user_index_never_lists_expired,
            user_index_revoke_all,
            user_index_revoke_all_but_one,
            user_index_revoke_then_save_is_gone,
            user_index_revoke_racing_saves,
            user_index_revoke_racing_logins,
            user_index_set_racing_deletes,
            user_index_namespaces_are_separate,
            user_index_nested_namespace_is_foreign,
            user_index_many_sessions,
            manager_revoke_not_undone_by_in_flight_save,
            manager_user_cap_under_concurrent_logins,
        );
    };
    (@expand [[$factory:expr]] $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory: ::std::sync::Arc<dyn $crate::conformance::StoreFactory> =
                    ::std::sync::Arc::new($factory);
                $crate::conformance::run_test(
                    stringify!($case),
                    |ctx| ::std::boxed::Box::pin($crate::conformance::cases::$case(ctx)),
                    factory,
                )
                .await;
            }
        )*
    };
    (@expand [list] $($case:ident),* $(,)?) => {
        /// Every case, by name.
        pub fn all_cases() -> Vec<(&'static str, CaseFn)> {
            vec![$(
                (stringify!($case), (|ctx| Box::pin(cases::$case(ctx))) as CaseFn),
            )*]
        }
    };
}

__conformance_cases!(@list);

/// A plain, obviously correct store (a mutex around a map) that passes the
/// suite. It is the reference model for model-based tests and the base of
/// the deliberately broken stores that prove the suite can fail.
#[derive(Debug, Default)]
pub struct ReferenceStore {
    records: Mutex<HashMap<SessionId, Session>>,
}

impl ReferenceStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<SessionId, Session>) -> R) -> Result<R> {
        let mut guard = self
            .records
            .lock()
            .map_err(|_| Error::backend("reference", "lock", "poisoned lock"))?;
        Ok(f(&mut guard))
    }
}

#[async_trait]
impl SessionInterface for ReferenceStore {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.with(|m| m.contains_key(id))
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        let now = now_millis();
        self.with(|m| m.get(id).filter(|s| !s.is_expired_at(now)).cloned())
    }

    async fn set(&self, session: &Session) -> Result<()> {
        storable_version(session.id(), session.version())?;
        self.with(|m| {
            m.insert(session.id(), session.clone());
        })
    }

    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.with(|m| {
            m.remove(id);
        })
    }

    async fn create(&self, session: &Session) -> Result<()> {
        storable_version(session.id(), session.version())?;
        self.with(|m| {
            if m.contains_key(&session.id()) {
                return Err(Error::IdCollision { id: session.id() });
            }
            m.insert(session.id(), session.clone());
            Ok(())
        })?
    }

    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        let version = next_version(session.id(), expected_version)?;
        let now = now_millis();
        self.with(|m| match m.get(&session.id()) {
            None => UpdateOutcome::Gone,
            Some(stored) if stored.is_expired_at(now) => UpdateOutcome::Gone,
            Some(stored) if stored.version() != expected_version => UpdateOutcome::Conflict,
            Some(stored) => {
                let mut next = session.clone();
                next.set_version(version);
                next.set_expires_at_millis(
                    stored.expires_at_millis().max(session.expires_at_millis()),
                );
                m.insert(session.id(), next);
                UpdateOutcome::Updated { version }
            }
        })
    }

    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        let now = now_millis();
        self.with(|m| match m.get(id) {
            None => DeleteOutcome::Gone,
            Some(stored) if stored.is_expired_at(now) => DeleteOutcome::Gone,
            Some(stored) if stored.version() != expected_version => DeleteOutcome::Conflict,
            Some(_) => {
                m.remove(id);
                DeleteOutcome::Deleted
            }
        })
    }

    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        let now = now_millis();
        self.with(|m| match m.get_mut(id) {
            Some(s) if !s.is_expired_at(now) => {
                let later = s.expires_at_millis().max(unix_millis(expires_at));
                s.set_expires_at_millis(later);
                true
            }
            _ => false,
        })
    }

    async fn flush(&self) -> Result<u64> {
        Ok(self.flush_reporting().await?.deleted)
    }

    async fn flush_reporting(&self) -> Result<FlushReport> {
        let now = now_millis();
        self.with(|m| {
            let expired: Vec<(SessionId, Option<String>)> = m
                .values()
                .filter(|s| s.is_expired_at(now))
                .map(|s| (s.id(), s.user_key().map(str::to_owned)))
                .collect();
            for (id, _) in &expired {
                m.remove(id);
            }
            FlushReport {
                deleted: expired.len() as u64,
                expired,
            }
        })
    }

    async fn clear(&self) -> Result<()> {
        self.with(|m| m.clear())
    }

    async fn len(&self) -> Result<u64> {
        let now = now_millis();
        self.with(|m| m.values().filter(|s| !s.is_expired_at(now)).count() as u64)
    }

    async fn sessions_of(&self, user_key: &str) -> Result<Vec<Session>> {
        let now = now_millis();
        self.with(|m| {
            m.values()
                .filter(|s| s.user_key() == Some(user_key) && !s.is_expired_at(now))
                .cloned()
                .collect()
        })
    }

    async fn revoke_user(
        &self,
        user_key: &str,
        except: Option<&SessionId>,
    ) -> Result<Vec<SessionId>> {
        self.with(|m| {
            let revoked: Vec<SessionId> = m
                .values()
                .filter(|s| s.user_key() == Some(user_key) && Some(&s.id()) != except)
                .map(Session::id)
                .collect();
            for id in &revoked {
                m.remove(id);
            }
            revoked
        })
    }
}

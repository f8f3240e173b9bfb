//! Faults, with nothing lost: connections cut and stalled through a proxy,
//! replies delayed past the operation timeout (ambiguous timeouts, through
//! the `SessionManager`), Redis killed mid-load, a full disk under the file
//! store. Each scenario runs 32 tasks doing load-modify-save and prints one
//! summary line.
// The load-modify-save machinery below serves the Redis and PostgreSQL
// scenarios; a build with neither (each feature alone, in CI) leaves it
// unused, not wrong.
#![cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]

mod common;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy, Switch};
use server_session::cookie::{Cookie, CookieJar};
use server_session::time::OffsetDateTime;
use server_session::{
    async_trait, DeleteOutcome, Error, Session, SessionConfig, SessionId, SessionInterface,
    SessionManager, SessionToken, UpdateOutcome,
};

const TASKS: usize = 32;

#[derive(Default)]
struct Tally {
    tried: AtomicU64,
    errors: AtomicU64,
    acked: AtomicU64,
    /// Errors that were not `Error::Backend` or `Error::Unavailable` (a bug:
    /// faults must be typed).
    untyped: AtomicU64,
    /// Longest time one operation took while the fault was on, in ms.
    slowest_ms: AtomicU64,
    /// When an operation last succeeded, in ms since the scenario started.
    last_ok_ms: AtomicU64,
}

impl Tally {
    fn summary(&self, scenario: &str, lost: u64) {
        println!(
            "{scenario}: ops tried {}, errors {}, acknowledged writes {}, writes lost {lost}",
            self.tried.load(Relaxed),
            self.errors.load(Relaxed),
            self.acked.load(Relaxed)
        );
    }
}

/// One load-modify-save of the counter in `id`; returns the value written.
async fn bump(store: &dyn SessionInterface, id: &SessionId) -> Result<Option<u64>, Error> {
    let Some(mut session) = store.get(id).await? else {
        return Ok(None);
    };
    let next = session.get::<u64>("n")?.unwrap_or(0) + 1;
    session.insert("n", &next)?;
    match store.update(&session, session.version()).await? {
        UpdateOutcome::Updated { .. } => Ok(Some(next)),
        UpdateOutcome::Conflict | UpdateOutcome::Gone => Ok(None),
    }
}

async fn seed(store: &dyn SessionInterface) -> Vec<SessionId> {
    let mut ids = Vec::new();
    for _ in 0..TASKS {
        let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(600));
        s.insert("n", &0u64).expect("encode");
        store.create(&s).await.expect("seed session");
        ids.push(s.id());
    }
    ids
}

/// Runs 32 load-modify-save loops while `fault` plays out; returns the tally
/// and the last acknowledged value per session.
async fn under_load<F, Fut>(
    store: Arc<dyn SessionInterface>,
    ids: &[SessionId],
    fault: F,
) -> (Arc<Tally>, Vec<u64>)
where
    F: FnOnce(Arc<Tally>, Instant) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (store, tally, stop, id) = (store.clone(), tally.clone(), stop.clone(), *id);
            tokio::spawn(async move {
                let mut last_acked = 0;
                while !stop.load(Relaxed) {
                    let t = Instant::now();
                    let result = bump(&*store, &id).await;
                    let took = t.elapsed().as_millis() as u64;
                    tally.tried.fetch_add(1, Relaxed);
                    tally.slowest_ms.fetch_max(took, Relaxed);
                    match result {
                        Ok(Some(n)) => {
                            last_acked = n;
                            tally.acked.fetch_add(1, Relaxed);
                            tally
                                .last_ok_ms
                                .store(started.elapsed().as_millis() as u64, Relaxed);
                        }
                        Ok(None) => {}
                        Err(Error::Backend { .. } | Error::Unavailable { .. }) => {
                            tally.errors.fetch_add(1, Relaxed);
                        }
                        Err(other) => {
                            eprintln!("untyped fault error: {other}");
                            tally.errors.fetch_add(1, Relaxed);
                            tally.untyped.fetch_add(1, Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                last_acked
            })
        })
        .collect();
    fault(tally.clone(), started).await;
    stop.store(true, Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.expect("no task panicked"));
    }
    (tally, acked)
}

/// Counts sessions whose stored counter is below the last acknowledged write.
async fn lost_writes(store: &dyn SessionInterface, ids: &[SessionId], acked: &[u64]) -> u64 {
    let mut lost = 0;
    for (id, acked) in ids.iter().zip(acked) {
        let stored = match store.get(id).await {
            Ok(Some(s)) => s.get::<u64>("n").ok().flatten().unwrap_or(0),
            _ => 0,
        };
        if stored < *acked {
            lost += 1;
        }
    }
    lost
}

/// Waits until some operation succeeds after `since_ms`; returns how long it took.
async fn recovery(tally: &Tally, started: Instant, since_ms: u64, limit: Duration) -> Duration {
    let deadline = Instant::now() + limit;
    while tally.last_ok_ms.load(Relaxed) <= since_ms && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Duration::from_millis(tally.last_ok_ms.load(Relaxed).saturating_sub(since_ms))
        .min(started.elapsed())
}

/// Cut for 2 s, then restore: typed errors within the timeout during the
/// outage, the same store serving again within 2 s after it.
async fn cut_and_restore(
    name: &str,
    store: Arc<dyn SessionInterface>,
    proxy: &Proxy,
    timeout: Duration,
) {
    let ids = seed(&*store).await;
    let (tally, acked) = under_load(store.clone(), &ids, |tally, started| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tally.slowest_ms.store(0, Relaxed);
        proxy.set(Mode::Cut);
        let errors_before = tally.errors.load(Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let slowest = tally.slowest_ms.load(Relaxed);
        assert!(
            tally.errors.load(Relaxed) > errors_before,
            "{name}: no operation failed during a 2 s outage"
        );
        assert!(
            slowest <= (timeout.as_millis() as u64) * 2 + 500,
            "{name}: an operation took {slowest} ms during the outage (timeout {timeout:?})"
        );
        proxy.set(Mode::Pass);
        let restored_ms = started.elapsed().as_millis() as u64;
        let took = recovery(&tally, started, restored_ms, Duration::from_secs(5)).await;
        assert!(
            took <= Duration::from_secs(2),
            "{name}: served again only after {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    })
    .await;
    assert_eq!(tally.untyped.load(Relaxed), 0, "{name}: untyped errors");
    let lost = lost_writes(&*store, &ids, &acked).await;
    tally.summary(&format!("{name} cut 2 s"), lost);
    assert_eq!(lost, 0, "{name}: acknowledged writes were lost");
}

/// The proxy accepts but forwards nothing: operations time out with a clear error.
async fn stall(name: &str, store: Arc<dyn SessionInterface>, proxy: &Proxy, timeout: Duration) {
    let ids = seed(&*store).await;
    let probe = ids[0];
    let (tally, acked) = under_load(store.clone(), &ids, |tally, started| {
        let store = store.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            proxy.set(Mode::Stall);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let t = Instant::now();
            let error = store
                .get(&probe)
                .await
                .expect_err("a stalled server answered");
            let took = t.elapsed();
            assert!(
                error.to_string().contains("timed out"),
                "{name}: unclear stall error: {error}"
            );
            assert!(
                took <= timeout * 2 + Duration::from_millis(500),
                "{name}: stall error after {took:?}"
            );
            tokio::time::sleep(Duration::from_millis(1500)).await;
            proxy.set(Mode::Pass);
            let restored_ms = started.elapsed().as_millis() as u64;
            let took = recovery(&tally, started, restored_ms, Duration::from_secs(5)).await;
            assert!(
                took <= Duration::from_secs(2),
                "{name}: served again only after {took:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    assert_eq!(tally.untyped.load(Relaxed), 0, "{name}: untyped errors");
    let lost = lost_writes(&*store, &ids, &acked).await;
    tally.summary(&format!("{name} stall"), lost);
    assert_eq!(lost, 0, "{name}: acknowledged writes were lost");
}

/// What the store did for the request running on this task: whether one
/// of its updates failed with an error that may hide an applied write,
/// whether its latest one did, and whether it opened the fault window.
#[derive(Default)]
struct RequestLog {
    update_failed: Cell<bool>,
    last_update_failed: Cell<bool>,
    triggered: Cell<bool>,
}

tokio::task_local! {
    static REQUEST: RequestLog;
}

/// The real store, unchanged, noting each `update`'s outcome in the
/// [`REQUEST`] log of the task that called it, so a test can tell a commit
/// that succeeded after a timed-out update from one that never saw a fault.
///
/// Once armed, it opens the fault window on an update that is sure to
/// land: it holds back other updates, lets in-flight ones finish, checks
/// that the record is still at the update's expected version, and arms the
/// proxy to delay replies from the moment that update's bytes go out. The
/// server applies it; its reply is held past the timeout. Without this the
/// window would only catch whatever happened to be in flight, usually
/// updates doomed to conflict, or (PostgreSQL) a pool's health check.
#[derive(Debug)]
struct Observed {
    inner: Arc<dyn SessionInterface>,
    trigger: std::sync::Mutex<Option<Trigger>>,
    /// Updates hold it shared; the trigger holds it alone until its own
    /// update has gone out.
    updates: tokio::sync::RwLock<()>,
    /// Counts the re-reads (`get`s) of the request that opened the window.
    trigger_reads: tokio::sync::watch::Sender<u32>,
}

struct Trigger {
    switch: Switch,
    mode: Mode,
    fired: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trigger").field("mode", &self.mode).finish()
    }
}

impl Observed {
    fn new(inner: Arc<dyn SessionInterface>) -> Self {
        Observed {
            inner,
            trigger: Default::default(),
            updates: Default::default(),
            trigger_reads: tokio::sync::watch::channel(0).0,
        }
    }

    /// Switches `switch` to `mode` as the next update that will land goes
    /// out; the receiver hears of it.
    fn arm(&self, switch: Switch, mode: Mode) -> tokio::sync::oneshot::Receiver<()> {
        let (fired, heard) = tokio::sync::oneshot::channel();
        if let Ok(mut trigger) = self.trigger.lock() {
            *trigger = Some(Trigger {
                switch,
                mode,
                fired,
            });
        }
        heard
    }

    fn armed(&self) -> bool {
        self.trigger.lock().is_ok_and(|t| t.is_some())
    }

    /// The armed update: alone, at the stored version, its bytes arming
    /// the proxy. `None` (and still armed) when the record moved on first.
    async fn triggered_update(
        &self,
        session: &Session,
        expected: u64,
    ) -> Option<Result<UpdateOutcome, Error>> {
        let alone = self.updates.write().await;
        if !self.armed() {
            // Another update fired it while this one waited.
            return None;
        }
        let current = self.inner.get(&session.id()).await.ok().flatten()?;
        if current.version() != expected {
            return None;
        }
        let trigger = self.trigger.lock().ok().and_then(|mut t| t.take())?;
        let marker = server_session::codec::encode(session, expected + 1).ok()?;
        let mut sent = trigger.switch.arm(marker, trigger.mode);
        let update = self.inner.update(session, expected);
        tokio::pin!(update);
        let result = tokio::select! {
            result = &mut update => result,
            _ = &mut sent => {
                drop(alone);
                let _ = REQUEST.try_with(|log| log.triggered.set(true));
                let _ = trigger.fired.send(());
                return Some(update.await);
            }
        };
        // Answered before its bytes went out (a pool timeout): try again
        // with a later update.
        trigger.switch.disarm();
        if let Ok(mut slot) = self.trigger.lock() {
            *slot = Some(trigger);
        }
        Some(result)
    }
}

#[async_trait]
impl SessionInterface for Observed {
    async fn exists(&self, id: &SessionId) -> Result<bool, Error> {
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>, Error> {
        if REQUEST.try_with(|log| log.triggered.get()).unwrap_or(false) {
            self.trigger_reads.send_modify(|n| *n += 1);
        }
        self.inner.get(id).await
    }
    async fn set(&self, session: &Session) -> Result<(), Error> {
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Session) -> Result<(), Error> {
        self.inner.create(session).await
    }
    async fn update(&self, session: &Session, expected: u64) -> Result<UpdateOutcome, Error> {
        let triggered = match self.armed() {
            true => self.triggered_update(session, expected).await,
            false => None,
        };
        let result = match triggered {
            Some(result) => result,
            None => {
                let _shared = self.updates.read().await;
                self.inner.update(session, expected).await
            }
        };
        let failed = matches!(&result, Err(e) if e.may_have_applied());
        let _ = REQUEST.try_with(|log| {
            log.update_failed.set(log.update_failed.get() || failed);
            log.last_update_failed.set(failed);
        });
        result
    }
    async fn delete_if(&self, id: &SessionId, expected: u64) -> Result<DeleteOutcome, Error> {
        self.inner.delete_if(id, expected).await
    }
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool, Error> {
        self.inner.touch(id, expires_at).await
    }
    async fn flush(&self) -> Result<u64, Error> {
        self.inner.flush().await
    }
    async fn clear(&self) -> Result<(), Error> {
        self.inner.clear().await
    }
    async fn len(&self) -> Result<u64, Error> {
        self.inner.len().await
    }
}

#[derive(Default)]
struct Doubts {
    /// Requests started (each one increment).
    tried: AtomicU64,
    /// Calls (`start` or `commit`) that returned an error.
    errors: AtomicU64,
    /// Errors other than `Backend`, `OutcomeUnknown` or `Contention`.
    untyped: AtomicU64,
    /// Requests whose increment some `commit` call acknowledged.
    acked: AtomicU64,
    /// First commit calls that returned `Ok` although an update of theirs
    /// timed out.
    resolved: AtomicU64,
    /// Of those, the ones whose last update was the timed-out one: the
    /// write had landed and re-reading found it (success is not reported
    /// as failure).
    landed: AtomicU64,
    /// Whether the request whose update switched the fault on (its write
    /// surely landed, its reply surely lost) was acknowledged by its first
    /// commit call.
    trigger_landed: AtomicBool,
    /// Requests acknowledged by a retried `commit` call.
    retried_ok: AtomicU64,
    /// Requests given up after the retries, and of those the ones whose
    /// last error was `OutcomeUnknown` (the increment may have landed).
    gave_up: AtomicU64,
    gave_up_unknown: AtomicU64,
    /// Commits that returned `Ok` with the session gone: an increment
    /// silently dropped.
    gone: AtomicU64,
}

/// How often a request calls `commit` again after an error, and how long
/// it waits between calls: together they outlast the delay window.
const COMMIT_CALLS: u32 = 12;
const COMMIT_PAUSE: Duration = Duration::from_millis(200);

/// One request: load the shared session, add 1 to `n`, commit; on an error
/// commit the same `ActiveSession` again, the documented way to resolve.
async fn increment(manager: &SessionManager, cookie: &Cookie<'static>, doubts: &Doubts) {
    let mut jar = CookieJar::new();
    jar.add_original(cookie.clone());
    doubts.tried.fetch_add(1, Relaxed);
    let note = |e: &Error| {
        doubts.errors.fetch_add(1, Relaxed);
        if !matches!(
            e,
            Error::Backend { .. }
                | Error::Unavailable { .. }
                | Error::OutcomeUnknown { .. }
                | Error::Contention { .. }
        ) {
            eprintln!("untyped ambiguous-timeout error: {e}");
            doubts.untyped.fetch_add(1, Relaxed);
        }
    };
    let mut active = match manager.start(&jar).await {
        Ok(active) => active,
        Err(e) => return note(&e),
    };
    assert!(!active.is_new(), "the shared session vanished");
    if let Err(e) = active.modify("n", |n: Option<u64>| n.unwrap_or(0) + 1) {
        return note(&e);
    }
    for call in 0..COMMIT_CALLS {
        match active.commit().await {
            Ok(_) if active.is_gone() => {
                doubts.gone.fetch_add(1, Relaxed);
                return;
            }
            Ok(_) => {
                doubts.acked.fetch_add(1, Relaxed);
                if call > 0 {
                    doubts.retried_ok.fetch_add(1, Relaxed);
                } else if REQUEST.with(|log| log.update_failed.get()) {
                    doubts.resolved.fetch_add(1, Relaxed);
                    if REQUEST.with(|log| log.last_update_failed.get()) {
                        doubts.landed.fetch_add(1, Relaxed);
                        if REQUEST.with(|log| log.triggered.get()) {
                            doubts.trigger_landed.store(true, Relaxed);
                        }
                    }
                }
                return;
            }
            Err(e) => {
                note(&e);
                if call + 1 == COMMIT_CALLS {
                    doubts.gave_up.fetch_add(1, Relaxed);
                    if matches!(e, Error::OutcomeUnknown { .. }) {
                        doubts.gave_up_unknown.fetch_add(1, Relaxed);
                    }
                    return;
                }
                tokio::time::sleep(COMMIT_PAUSE).await;
            }
        }
    }
}

/// Replies delayed past the operation timeout for a window in the middle
/// of a run of 32 requests incrementing one shared session through a
/// `SessionManager`: the server applies writes whose clients time out.
/// Every increment is acknowledged or given up, none is applied twice, none
/// acknowledged is lost, and the commit whose update opened the window
/// learns that its write landed.
async fn ambiguous_timeouts(
    name: &str,
    store: Arc<dyn SessionInterface>,
    proxy: &Proxy,
    timeout: Duration,
) {
    let observed = Arc::new(Observed::new(store));
    let manager = SessionManager::new(
        observed.clone(),
        SessionConfig {
            secure: false,
            ..SessionConfig::default()
        },
    )
    .expect("a valid config");
    let mut seed = manager.start(&CookieJar::new()).await.expect("start");
    seed.insert("n", &0u64).expect("encode");
    let cookie = seed
        .commit()
        .await
        .expect("seed the shared session")
        .expect("a new session with data sends a cookie");

    let manager = Arc::new(manager);
    let doubts = Arc::new(Doubts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (manager, cookie, doubts, stop) = (
                manager.clone(),
                cookie.clone(),
                doubts.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    REQUEST
                        .scope(RequestLog::default(), increment(&manager, &cookie, &doubts))
                        .await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fired = observed.arm(
        proxy.switch(),
        Mode::DelayReplies(timeout + Duration::from_millis(500)),
    );
    tokio::time::timeout(Duration::from_secs(5), fired)
        .await
        .expect("an update within 5 s")
        .expect("the trigger fired");
    // Keep replies held for a second, then end the window 100 ms into a
    // re-read of the triggering commit: that re-read is answered (well
    // within its timeout) with the record as it was while the window was
    // open, when no other write could land.
    let mut reads = observed.trigger_reads.subscribe();
    tokio::time::sleep(Duration::from_secs(1)).await;
    reads.borrow_and_update();
    let _ = tokio::time::timeout(Duration::from_secs(3), reads.changed()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set(Mode::Pass);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Relaxed);
    for t in tasks {
        t.await.expect("no task panicked");
    }

    let mut jar = CookieJar::new();
    jar.add_original(cookie.clone());
    let stored: u64 = manager
        .start(&jar)
        .await
        .expect("read back")
        .get("n")
        .expect("decode n")
        .unwrap_or(0);
    let get = |counter: &AtomicU64| counter.load(Relaxed);
    let acked = get(&doubts.acked);
    let lost = acked.saturating_sub(stored);
    let unacked = stored.saturating_sub(acked);
    println!(
        "{name} ambiguous timeouts: ops tried {}, errors {}, acknowledged writes {acked}, \
         in doubt resolved {} (landed {}, by a retried commit {}), given up {} \
         (outcome unknown {}), writes lost {lost}, applied but unacknowledged {unacked}",
        get(&doubts.tried),
        get(&doubts.errors),
        get(&doubts.resolved),
        get(&doubts.landed),
        get(&doubts.retried_ok),
        get(&doubts.gave_up),
        get(&doubts.gave_up_unknown),
    );
    assert_eq!(get(&doubts.untyped), 0, "{name}: untyped errors");
    assert_eq!(get(&doubts.gone), 0, "{name}: commits dropped increments");
    assert_eq!(
        stored, acked,
        "{name}: the counter is not the number of acknowledged increments"
    );
    assert!(
        doubts.trigger_landed.load(Relaxed),
        "{name}: the commit whose update landed with its reply lost was not acknowledged \
         by its first call"
    );
}

#[cfg(feature = "redis")]
mod redis_faults {
    use super::*;
    use server_session::{RedisConfig, RedisStore};

    const TIMEOUT: Duration = Duration::from_millis(500);

    async fn through(proxy: &Proxy) -> Option<Arc<dyn SessionInterface>> {
        let url = format!("redis://{}", proxy.addr);
        match RedisStore::connect_with(RedisConfig {
            prefix: common::unique("test:fault:") + ":",
            connect_timeout: TIMEOUT,
            operation_timeout: TIMEOUT,
            ..RedisConfig::new(url)
        })
        .await
        {
            Ok(store) => Some(Arc::new(store)),
            Err(e) => {
                common::unreachable("redis", &common::redis_url(), e);
                None
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_survives_a_cut() {
        let proxy = Proxy::start(common::upstream(&common::redis_url(), 6379)).await;
        let Some(store) = through(&proxy).await else {
            return;
        };
        cut_and_restore("redis", store.clone(), &proxy, TIMEOUT).await;
        store.clear().await.ok();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_stall_times_out() {
        let proxy = Proxy::start(common::upstream(&common::redis_url(), 6379)).await;
        let Some(store) = through(&proxy).await else {
            return;
        };
        stall("redis", store.clone(), &proxy, TIMEOUT).await;
        store.clear().await.ok();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_ambiguous_timeouts_resolve_without_double_writes() {
        let proxy = Proxy::start(common::upstream(&common::redis_url(), 6379)).await;
        let Some(store) = through(&proxy).await else {
            return;
        };
        ambiguous_timeouts("redis", store.clone(), &proxy, TIMEOUT).await;
        store.clear().await.ok();
    }
}

#[cfg(feature = "postgres")]
mod postgres_faults {
    use super::*;
    use server_session::{PostgresConfig, PostgresStore};

    const TIMEOUT: Duration = Duration::from_millis(800);

    async fn through(proxy: &Proxy) -> Option<Arc<PostgresStore>> {
        let url = common::database_url();
        let proxied = url
            .replacen(
                &common::upstream(&url, 5432).to_string(),
                &proxy.addr.to_string(),
                1,
            )
            .replacen("localhost:5432", &proxy.addr.to_string(), 1);
        let store = PostgresStore::connect_with(PostgresConfig {
            schema: Some("session_tests".into()),
            table: common::unique("fault_"),
            pool_size: 8,
            connect_timeout: TIMEOUT,
            operation_timeout: TIMEOUT,
            ..PostgresConfig::new(proxied)
        })
        .await;
        match store {
            Ok(store) => {
                store.migrate().await.expect("migrate");
                Some(Arc::new(store))
            }
            Err(e) => {
                common::unreachable("postgres", &url, e);
                None
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_survives_a_cut() {
        let proxy = Proxy::start(common::upstream(&common::database_url(), 5432)).await;
        let Some(store) = through(&proxy).await else {
            return;
        };
        cut_and_restore("postgres", store.clone(), &proxy, TIMEOUT).await;
        store.drop_table().await.ok();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_stall_times_out() {
        let proxy = Proxy::start(common::upstream(&common::database_url(), 5432)).await;
        let Some(store) = through(&proxy).await else {
            return;
        };
        stall("postgres", store.clone(), &proxy, TIMEOUT).await;
        store.drop_table().await.ok();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_ambiguous_timeouts_resolve_without_double_writes() {
        let proxy = Proxy::start(common::upstream(&common::database_url(), 5432)).await;
        let Some(store) = through(&proxy).await else {
            return;
        };
        ambiguous_timeouts("postgres", store.clone(), &proxy, TIMEOUT).await;
        store.drop_table().await.ok();
    }
}

/// A Redis of the test's own, with every write fsynced to its append-only
/// file: killed with SIGKILL mid-load and started again, it must still hold
/// every write it acknowledged.
#[cfg(feature = "redis")]
mod redis_kill {
    use super::*;
    use server_session::{RedisConfig, RedisStore};
    use std::process::Stdio;
    use tokio::process::{Child, Command};

    fn start(port: u16, dir: &std::path::Path) -> std::io::Result<Child> {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    }

    async fn wait_up(port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_sigkill_loses_no_acknowledged_write() {
        if which("redis-server").is_none() {
            if std::env::var_os("CI").is_some() {
                panic!("redis-server is not installed and CI is set");
            }
            common::say_skipped("the redis kill test: redis-server is not installed");
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(common::unique("redis-kill-"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = start(port, &dir).expect("start redis-server");
        wait_up(port).await;
        let timeout = Duration::from_millis(500);
        let store: Arc<dyn SessionInterface> = Arc::new(
            RedisStore::connect_with(RedisConfig {
                connect_timeout: timeout,
                operation_timeout: timeout,
                ..RedisConfig::new(format!("redis://127.0.0.1:{port}"))
            })
            .await
            .expect("connect to our redis"),
        );
        let ids = seed(&*store).await;
        let dir_for_restart = dir.clone();
        let (tally, acked) = under_load(store.clone(), &ids, |tally, started| async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            server.start_kill().expect("SIGKILL redis");
            let _ = server.wait().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut restarted = start(port, &dir_for_restart).expect("restart redis-server");
            wait_up(port).await;
            let restarted_ms = started.elapsed().as_millis() as u64;
            let took = recovery(&tally, started, restarted_ms, Duration::from_secs(5)).await;
            assert!(
                took <= Duration::from_secs(2),
                "served again only after {took:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            // Keep the restarted server alive past the read-back below.
            std::mem::forget(restarted.stdin.take());
            std::mem::forget(restarted);
        })
        .await;
        assert_eq!(tally.untyped.load(Relaxed), 0, "untyped errors");
        let lost = lost_writes(&*store, &ids, &acked).await;
        tally.summary("redis SIGKILL + restart (appendfsync always)", lost);
        assert!(tally.acked.load(Relaxed) > 0);
        assert_eq!(lost, 0, "acknowledged writes were lost");
        let _ = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "shutdown", "nosave"])
            .output();
        std::fs::remove_dir_all(dir).ok();
    }

    fn which(program: &str) -> Option<std::path::PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(program))
                .find(|p| p.is_file())
        })
    }
}

/// The file store on a 1 MiB tmpfs: filling it gives typed errors and every
/// session saved before stays readable at its last acknowledged version.
#[cfg(feature = "fs")]
mod fs_full_disk {
    use super::*;
    use server_session::FsStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_is_a_typed_error_and_loses_nothing() {
        let mount = std::env::temp_dir().join(common::unique("full-disk-"));
        std::fs::create_dir_all(&mount).expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&mount)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !mounted {
            std::fs::remove_dir(&mount).ok();
            if std::env::var_os("CI").is_some() {
                panic!("could not mount a small tmpfs (not root?) and CI is set");
            }
            common::say_skipped("the full-disk test: cannot mount a tmpfs here");
            return;
        }
        let outcome = std::panic::AssertUnwindSafe(fill_and_check(mount.clone()));
        let result = futures_catch(outcome).await;
        let _ = std::process::Command::new("umount").arg(&mount).output();
        std::fs::remove_dir(&mount).ok();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    async fn futures_catch<F: std::future::Future<Output = ()> + Send + 'static>(
        f: std::panic::AssertUnwindSafe<F>,
    ) -> std::thread::Result<()> {
        tokio::spawn(f.0).await.map_err(|e| e.into_panic())
    }

    async fn fill_and_check(root: std::path::PathBuf) {
        let store = Arc::new(FsStore::open(root.clone()).await.expect("store on tmpfs"));
        let tally = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (store, tally, root) = (store.clone(), tally.clone(), root.clone());
            tasks.push(tokio::spawn(async move {
                let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(600));
                s.insert("blob", &Vec::<u8>::new()).expect("encode");
                if store.create(&s).await.is_err() {
                    return None;
                }
                // Grow the record until the disk is full.
                let mut acked = 0usize;
                for size in (1..).map(|i| i * 1024) {
                    tally.tried.fetch_add(1, Relaxed);
                    let mut next = s.clone();
                    next.insert("blob", &vec![7u8; size]).expect("encode");
                    match store.update(&next, s.version()).await {
                        Ok(UpdateOutcome::Updated { version }) => {
                            tally.acked.fetch_add(1, Relaxed);
                            next.set_version(version);
                            s = next;
                            acked = size;
                        }
                        Ok(other) => panic!("unexpected {other:?}"),
                        Err(Error::Backend { context, .. }) => {
                            assert!(context.contains(&root.display().to_string()), "{context}");
                            tally.errors.fetch_add(1, Relaxed);
                            break;
                        }
                        Err(other) => panic!("untyped full-disk error: {other}"),
                    }
                }
                Some((s.id(), acked))
            }));
        }
        let mut saved = Vec::new();
        for t in tasks {
            if let Some(done) = t.await.expect("no task panicked") {
                saved.push(done);
            }
        }
        assert!(tally.errors.load(Relaxed) > 0, "the disk never filled");
        let mut lost = 0;
        for (id, acked) in &saved {
            match store.get(id).await {
                Ok(Some(s)) => {
                    let blob: Vec<u8> = s.get("blob").ok().flatten().unwrap_or_default();
                    if blob.len() != *acked {
                        lost += 1;
                    }
                }
                _ => lost += 1,
            }
        }
        tally.summary("fs full disk (1 MiB tmpfs)", lost);
        assert_eq!(lost, 0, "a full disk lost or tore saved sessions");
    }
}

//! Model-based tests, against every backend:
//!
//! - **store model**: random sequences of store operations against a simple
//!   reference model of one namespace, with identical outcomes required;
//! - **manager model**: random interleavings of the starts and commits of
//!   up to three concurrent requests of one browser (inserts, increments,
//!   logins that regenerate, logouts that destroy), against a model of what
//!   each commit must answer and leave in the store; the races the
//!   manager's rules name (logout vs login, two logins, a save vs a login,
//!   commits at the same instant) are also replayed by name on every backend.
//!
//! Cases per backend: `PROPTEST_CASES` (defaults are lean for CI; raise it
//! for long local runs, e.g. `PROPTEST_CASES=2000 cargo test --features
//! sqlite --test model`). Expiries are long past or one or two hours
//! ahead, so outcomes do not depend on timing.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use server_session::cookie::{Cookie, CookieJar};
use server_session::{
    from_unix_millis, now_millis, DeleteOutcome, Error, Session, SessionConfig, SessionId,
    SessionInterface, SessionManager, SessionToken, UpdateOutcome, MAX_VERSION,
};
use tokio::runtime::Runtime;

// ---------------------------------------------------------------------------
// Store model
// ---------------------------------------------------------------------------

const IDS: usize = 4;

/// An expiry relative to the moment the operation runs. Two future choices,
/// so that "expiry moves forward only" is visible.
#[derive(Clone, Copy, Debug)]
enum Expiry {
    Past,
    Hour,
    TwoHours,
}

fn expiry_strategy(past: f64) -> impl Strategy<Value = Expiry> {
    let past = (past * 100.0) as u32;
    prop_oneof![
        past => Just(Expiry::Past),
        (100 - past) / 2 => Just(Expiry::Hour),
        (100 - past) / 2 => Just(Expiry::TwoHours),
    ]
}

fn expiry(at: Expiry) -> i64 {
    match at {
        Expiry::Past => now_millis() - 60_000,
        Expiry::Hour => now_millis() + 3_600_000,
        Expiry::TwoHours => now_millis() + 7_200_000,
    }
}

/// Mostly small versions, sometimes the edges of `1..=MAX_VERSION` and
/// beyond (which `set` and `create` must refuse).
fn version_strategy(usual: impl Strategy<Value = u64> + 'static) -> BoxedStrategy<u64> {
    prop_oneof![
        12 => usual,
        1 => Just(MAX_VERSION - 1),
        1 => Just(MAX_VERSION),
        1 => Just(0u64),
        1 => Just(MAX_VERSION + 1),
        1 => Just(u64::MAX),
    ]
    .boxed()
}

fn version_offset() -> impl Strategy<Value = i64> {
    prop_oneof![4 => Just(0i64), 1 => Just(-1i64), 1 => Just(1i64)]
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        id: usize,
        value: u32,
        expiry: Expiry,
        version: u64,
    },
    Set {
        id: usize,
        value: u32,
        expiry: Expiry,
        version: u64,
    },
    Get {
        id: usize,
    },
    Exists {
        id: usize,
    },
    IsValid {
        id: usize,
    },
    Update {
        id: usize,
        value: u32,
        version_offset: i64,
        expiry: Expiry,
    },
    DeleteIf {
        id: usize,
        version_offset: i64,
    },
    Touch {
        id: usize,
        expiry: Expiry,
    },
    Delete {
        id: usize,
    },
    Flush,
    Clear,
    Len,
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..IDS;
    prop_oneof![
        3 => (id.clone(), any::<u32>(), expiry_strategy(0.2), prop_oneof![9 => Just(1u64), 1 => version_strategy(Just(1u64))])
            .prop_map(|(id, value, expiry, version)| Op::Create { id, value, expiry, version }),
        2 => (id.clone(), any::<u32>(), expiry_strategy(0.3), version_strategy(1..5u64))
            .prop_map(|(id, value, expiry, version)| Op::Set { id, value, expiry, version }),
        3 => id.clone().prop_map(|id| Op::Get { id }),
        1 => id.clone().prop_map(|id| Op::Exists { id }),
        1 => id.clone().prop_map(|id| Op::IsValid { id }),
        4 => (id.clone(), any::<u32>(), version_offset(), expiry_strategy(0.1))
            .prop_map(|(id, value, version_offset, expiry)| Op::Update { id, value, version_offset, expiry }),
        2 => (id.clone(), version_offset()).prop_map(|(id, version_offset)| Op::DeleteIf { id, version_offset }),
        2 => (id.clone(), expiry_strategy(0.2)).prop_map(|(id, expiry)| Op::Touch { id, expiry }),
        2 => id.prop_map(|id| Op::Delete { id }),
        1 => Just(Op::Flush),
        1 => Just(Op::Clear),
        1 => Just(Op::Len),
    ]
}

/// What the model knows of one id.
#[derive(Clone, Debug, PartialEq)]
enum Slot {
    Missing,
    Live {
        value: u32,
        version: u64,
        expires_at_ms: i64,
    },
    /// Stored but expired. Stores may or may not still hold the record
    /// (Redis drops it at once), so `exists` and `create` may go either way.
    Expired,
}

fn session(id: SessionId, value: u32, expires_at_ms: i64, version: u64) -> Session {
    let mut s = Session::new(id, Duration::from_secs(60));
    s.insert("v", &value).expect("encode");
    s.set_expires_at_millis(expires_at_ms);
    s.set_version(version);
    s
}

fn slot_after_write(value: u32, version: u64, expires_at_ms: i64) -> Slot {
    if expires_at_ms <= now_millis() {
        Slot::Expired
    } else {
        Slot::Live {
            value,
            version,
            expires_at_ms,
        }
    }
}

fn storable(version: u64) -> bool {
    (1..=MAX_VERSION).contains(&version)
}

/// The version an `update`/`delete_if` expects: the live one (1 for a
/// missing record) moved by `offset`, possibly past `MAX_VERSION`.
fn expected_version(slot: &Slot, offset: i64) -> u64 {
    let current = match slot {
        Slot::Live { version, .. } => *version,
        _ => 1,
    };
    current.saturating_add_signed(offset)
}

async fn check_sequence(store: &dyn SessionInterface, ops: &[Op]) -> Result<(), String> {
    store.clear().await.map_err(|e| e.to_string())?;
    let ids: Vec<SessionId> = (0..IDS).map(|_| SessionToken::generate().id()).collect();
    let mut model: HashMap<usize, Slot> = (0..IDS).map(|i| (i, Slot::Missing)).collect();
    for (step, op) in ops.iter().enumerate() {
        let fail = |what: String| Err(format!("step {step} {op:?}: {what}"));
        let e = |err: Error| format!("step {step} {op:?}: unexpected error {err}");
        match op.clone() {
            Op::Create {
                id,
                value,
                expiry: at,
                version,
            } => {
                let s = session(ids[id], value, expiry(at), version);
                let result = store.create(&s).await;
                let slot = model[&id].clone();
                match (&slot, result) {
                    (_, Err(Error::VersionOutOfRange { .. })) if !storable(version) => {}
                    (Slot::Missing | Slot::Expired, Ok(())) if storable(version) => {
                        model.insert(id, slot_after_write(value, version, s.expires_at_millis()));
                    }
                    // Which refusal comes first is the store's choice.
                    (Slot::Live { .. } | Slot::Expired, Err(Error::IdCollision { .. })) => {}
                    (slot, other) => return fail(format!("model {slot:?}, store {other:?}")),
                }
            }
            Op::Set {
                id,
                value,
                expiry: at,
                version,
            } => {
                let s = session(ids[id], value, expiry(at), version);
                match store.set(&s).await {
                    Ok(()) if storable(version) => {
                        model.insert(id, slot_after_write(value, version, s.expires_at_millis()));
                    }
                    Err(Error::VersionOutOfRange { .. }) if !storable(version) => {}
                    other => return fail(format!("set answered {other:?}")),
                }
            }
            Op::Get { id } => {
                let got = store.get(&ids[id]).await.map_err(e)?;
                match (&model[&id], got) {
                    (
                        Slot::Live {
                            value,
                            version,
                            expires_at_ms,
                        },
                        Some(s),
                    ) => {
                        let stored: Option<u32> = s.get("v").map_err(e)?;
                        if stored != Some(*value)
                            || s.version() != *version
                            || s.expires_at_millis() != *expires_at_ms
                        {
                            return fail(format!(
                                "model value {value} v{version} exp {expires_at_ms}, store {stored:?} v{} exp {}",
                                s.version(),
                                s.expires_at_millis()
                            ));
                        }
                    }
                    (Slot::Missing | Slot::Expired, None) => {}
                    (slot, got) => return fail(format!("model {slot:?}, store {got:?}")),
                }
            }
            Op::Exists { id } => {
                let exists = store.exists(&ids[id]).await.map_err(e)?;
                let has = store.has(&ids[id]).await.map_err(e)?;
                if exists != has {
                    return fail(format!("exists {exists} but has {has}"));
                }
                match (&model[&id], exists) {
                    (Slot::Live { .. }, true) | (Slot::Missing, false) | (Slot::Expired, _) => {}
                    (slot, exists) => return fail(format!("model {slot:?}, exists {exists}")),
                }
            }
            Op::IsValid { id } => {
                let valid = store.is_valid(&ids[id]).await.map_err(e)?;
                let live = matches!(model[&id], Slot::Live { .. });
                if valid != live {
                    return fail(format!("model live {live}, is_valid {valid}"));
                }
            }
            Op::Update {
                id,
                value,
                version_offset,
                expiry: at,
            } => {
                let slot = model[&id].clone();
                let expected = expected_version(&slot, version_offset);
                let s = session(ids[id], value, expiry(at), 0);
                let result = store.update(&s, expected).await;
                let want = match slot {
                    Slot::Live { version, .. } if version == expected => UpdateOutcome::Updated {
                        version: expected.wrapping_add(1),
                    },
                    Slot::Live { .. } => UpdateOutcome::Conflict,
                    Slot::Missing | Slot::Expired => UpdateOutcome::Gone,
                };
                let outcome = match result {
                    // The version after MAX_VERSION cannot be stored: a store
                    // may refuse before or after looking at the record, but
                    // must never write it.
                    Err(Error::VersionOutOfRange { .. }) if expected >= MAX_VERSION => continue,
                    Ok(UpdateOutcome::Updated { .. }) if expected >= MAX_VERSION => {
                        return fail(format!("model {slot:?}: updated past MAX_VERSION"))
                    }
                    Ok(outcome) => outcome,
                    Err(err) => return Err(e(err)),
                };
                if outcome != want {
                    return fail(format!("model {slot:?} wants {want:?}, store {outcome:?}"));
                }
                if let (UpdateOutcome::Updated { version }, Slot::Live { expires_at_ms, .. }) =
                    (outcome, &slot)
                {
                    // Expiry moves forward only.
                    let kept = s.expires_at_millis().max(*expires_at_ms);
                    model.insert(id, slot_after_write(value, version, kept));
                }
            }
            Op::DeleteIf { id, version_offset } => {
                let slot = model[&id].clone();
                let expected = expected_version(&slot, version_offset);
                let outcome = store.delete_if(&ids[id], expected).await.map_err(e)?;
                let want = match slot {
                    Slot::Live { version, .. } if version == expected => DeleteOutcome::Deleted,
                    Slot::Live { .. } => DeleteOutcome::Conflict,
                    Slot::Missing | Slot::Expired => DeleteOutcome::Gone,
                };
                if outcome != want {
                    return fail(format!("model {slot:?} wants {want:?}, store {outcome:?}"));
                }
                if outcome == DeleteOutcome::Deleted {
                    model.insert(id, Slot::Missing);
                }
            }
            Op::Touch { id, expiry: at } => {
                let until = expiry(at);
                let touched = store
                    .touch(&ids[id], from_unix_millis(until))
                    .await
                    .map_err(e)?;
                let slot = model[&id].clone();
                match (&slot, touched) {
                    (
                        Slot::Live {
                            value,
                            version,
                            expires_at_ms,
                        },
                        true,
                    ) => {
                        let kept = until.max(*expires_at_ms);
                        model.insert(id, slot_after_write(*value, *version, kept));
                    }
                    (Slot::Missing | Slot::Expired, false) => {}
                    (slot, touched) => return fail(format!("model {slot:?}, touch {touched}")),
                }
            }
            Op::Delete { id } => {
                store.delete(&ids[id]).await.map_err(e)?;
                model.insert(id, Slot::Missing);
            }
            Op::Flush => {
                let flushed = store.flush().await.map_err(e)?;
                let expired = model.values().filter(|s| **s == Slot::Expired).count() as u64;
                if flushed > expired {
                    return fail(format!("flushed {flushed} of {expired} expired"));
                }
                for (i, slot) in model.iter_mut() {
                    if *slot == Slot::Expired {
                        if store.exists(&ids[*i]).await.map_err(e)? {
                            return fail(format!("id {i} survived flush"));
                        }
                        *slot = Slot::Missing;
                    }
                }
            }
            Op::Clear => {
                store.clear().await.map_err(e)?;
                for slot in model.values_mut() {
                    *slot = Slot::Missing;
                }
            }
            Op::Len => {
                let len = store.len().await.map_err(e)?;
                let live = model
                    .values()
                    .filter(|s| matches!(s, Slot::Live { .. }))
                    .count() as u64;
                if len != live {
                    return fail(format!("model {live} live, len {len}"));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Manager model
// ---------------------------------------------------------------------------

/// Concurrent requests (slots) of one browser.
const REQUESTS: usize = 3;
/// Keys `insert` writes, and counters `modify` increments; disjoint.
const KEYS: [&str; 2] = ["k0", "k1"];
const COUNTERS: [&str; 2] = ["c0", "c1"];

/// What a handler does to its session between `start` and `commit`.
#[derive(Clone, Debug)]
enum Action {
    Insert { key: usize, value: u64 },
    Increment { counter: usize },
    Regenerate,
    Destroy,
}

/// One step of the interleaving. Starting a request that is running, or
/// committing one that is not, does nothing (so shrinking can drop steps
/// freely). Requests still running at the end are committed in slot order.
#[derive(Clone, Debug)]
enum Step {
    Start {
        request: usize,
        actions: Vec<Action>,
    },
    Commit {
        request: usize,
    },
    /// Commits two requests at once (`a != b`), on separate tasks.
    CommitTogether {
        a: usize,
        b: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..KEYS.len(), 0..3u64).prop_map(|(key, value)| Action::Insert { key, value }),
        4 => (0..COUNTERS.len()).prop_map(|counter| Action::Increment { counter }),
        2 => Just(Action::Regenerate),
        1 => Just(Action::Destroy),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..REQUESTS, prop::collection::vec(action(), 0..4))
            .prop_map(|(request, actions)| Step::Start { request, actions }),
        (0..REQUESTS).prop_map(|request| Step::Commit { request }),
        (0..REQUESTS, 1..REQUESTS).prop_map(|(a, d)| Step::CommitTogether {
            a,
            b: (a + d) % REQUESTS
        }),
    ]
}

/// The data of one stored session, as the model sees it.
type Data = BTreeMap<String, u64>;

/// What a request's actions amount to at commit.
#[derive(Debug, Default)]
struct Plan {
    /// Inserts and increments before any `destroy`, in order.
    changes: Vec<Action>,
    regenerate: bool,
    destroy: bool,
}

impl Plan {
    fn of(actions: &[Action]) -> Plan {
        let mut plan = Plan::default();
        for action in actions {
            match action {
                // After `destroy` nothing else counts.
                _ if plan.destroy => {}
                Action::Insert { .. } | Action::Increment { .. } => {
                    plan.changes.push(action.clone())
                }
                Action::Regenerate => plan.regenerate = true,
                Action::Destroy => plan.destroy = true,
            }
        }
        plan
    }

    /// `data` with this plan's changes on top: every insert is the last
    /// word on its key, every increment counts once.
    fn apply(&self, mut data: Data) -> Data {
        for change in &self.changes {
            match change {
                Action::Insert { key, value } => {
                    data.insert(KEYS[*key].to_owned(), *value);
                }
                Action::Increment { counter } => {
                    *data.entry(COUNTERS[*counter].to_owned()).or_insert(0) += 1;
                }
                Action::Regenerate | Action::Destroy => {}
            }
        }
        data
    }
}

/// A request between its start and its commit.
struct Running {
    active: server_session::ActiveSession,
    /// The browser's cookie when it started.
    cookie: Option<String>,
    /// The record it loaded, if any.
    loaded: Option<SessionId>,
    actions: Vec<Action>,
}

/// The model: every live record, and the browser's cookie.
#[derive(Clone, Debug, Default)]
struct World {
    records: HashMap<SessionId, Data>,
    cookie: Option<String>,
    /// Every id a cookie ever named: those not in `records` must not load.
    seen: HashSet<SessionId>,
}

fn manager_config() -> SessionConfig {
    SessionConfig {
        secure: false,
        ..SessionConfig::default()
    }
}

fn jar_with(name: &str, token: Option<&str>) -> CookieJar {
    let mut jar = CookieJar::new();
    if let Some(token) = token {
        jar.add_original(Cookie::new(name.to_owned(), token.to_owned()));
    }
    jar
}

fn id_of(token: &str) -> Result<SessionId, String> {
    SessionToken::parse(token)
        .map(|t| t.id())
        .map_err(|e| format!("cookie {token:?} is no token: {e}"))
}

/// The data of a stored session as the model spells it.
fn data_of(session: &Session) -> Result<Data, String> {
    session
        .keys()
        .map(|key| match session.get::<u64>(key) {
            Ok(Some(value)) => Ok((key.to_owned(), value)),
            other => Err(format!("key {key}: {other:?}")),
        })
        .collect()
}

/// The store holds exactly the model's records: each loads with its data,
/// no retired id loads, and `len` agrees.
async fn check_store(store: &dyn SessionInterface, world: &World) -> Result<(), String> {
    for (id, want) in &world.records {
        match store.get(id).await.map_err(|e| e.to_string())? {
            Some(session) => {
                let got = data_of(&session)?;
                if &got != want {
                    return Err(format!("record {id}: model {want:?}, store {got:?}"));
                }
            }
            None => return Err(format!("record {id} (model {want:?}) does not load")),
        }
    }
    for id in world
        .seen
        .iter()
        .filter(|id| !world.records.contains_key(id))
    {
        if let Some(session) = store.get(id).await.map_err(|e| e.to_string())? {
            return Err(format!(
                "retired record {id} still loads: {:?}",
                data_of(&session)
            ));
        }
    }
    let len = store.len().await.map_err(|e| e.to_string())?;
    if len != world.records.len() as u64 {
        return Err(format!(
            "len {len}, model holds {} records",
            world.records.len()
        ));
    }
    Ok(())
}

async fn start(
    manager: &SessionManager,
    world: &World,
    actions: Vec<Action>,
) -> Result<Running, String> {
    let name = manager.config().effective_cookie_name();
    let mut active = manager
        .start(&jar_with(&name, world.cookie.as_deref()))
        .await
        .map_err(|e| format!("start: {e}"))?;
    let named = world.cookie.as_deref().map(id_of).transpose()?;
    let loaded = named.filter(|id| world.records.contains_key(id));
    match loaded {
        Some(id) => {
            if active.is_new() || active.id() != id {
                return Err(format!("start did not load live record {id}"));
            }
            let got = data_of(active.session())?;
            if got != world.records[&id] {
                return Err(format!(
                    "start loaded {got:?}, model {:?}",
                    world.records[&id]
                ));
            }
        }
        None if !active.is_new() => {
            return Err(format!("start loaded {} which is not live", active.id()))
        }
        None => {}
    }
    for action in &actions {
        match action {
            Action::Insert { key, value } => active.insert(KEYS[*key], value),
            Action::Increment { counter } => active
                .modify(COUNTERS[*counter], |n: Option<u64>| n.unwrap_or(0) + 1)
                .map(drop),
            Action::Regenerate => active.regenerate(),
            Action::Destroy => {
                active.destroy();
                Ok(())
            }
        }
        .map_err(|e| format!("{action:?}: {e}"))?;
    }
    Ok(Running {
        active,
        cookie: world.cookie.clone(),
        loaded,
        actions,
    })
}

/// What a commit answered.
#[derive(Debug)]
struct Answer {
    cookie: Option<Cookie<'static>>,
    /// `is_gone()` after the commit.
    gone: bool,
    /// `is_modified()` before it.
    modified: bool,
}

impl Answer {
    fn removal(&self) -> bool {
        self.cookie
            .as_ref()
            .is_some_and(|c| c.max_age() == Some(server_session::time::Duration::ZERO))
    }

    /// The token of a session cookie (not a removal).
    fn token(&self) -> Option<String> {
        self.cookie
            .as_ref()
            .filter(|_| !self.removal())
            .map(|c| c.value().to_owned())
    }
}

async fn perform(request: &mut Running) -> Result<Answer, String> {
    let modified = request.active.is_modified();
    let cookie = request
        .active
        .commit()
        .await
        .map_err(|e| format!("commit: {e}"))?;
    Ok(Answer {
        cookie,
        gone: request.active.is_gone(),
        modified,
    })
}

/// Checks `answer` against what the model says `request`'s commit must
/// answer, and moves `world` past it. Returns the cookie a successful
/// regeneration retired (checked afterwards not to load).
fn judge(world: &mut World, request: &Running, answer: &Answer) -> Result<Option<String>, String> {
    let plan = Plan::of(&request.actions);
    let (removal, token, gone) = (answer.removal(), answer.token(), answer.gone);
    let said = format!("answered {:?}, gone {gone}", answer.cookie);
    let live = request
        .loaded
        .filter(|id| world.records.contains_key(id))
        .map(|id| (id, world.records[&id].clone()));
    if plan.destroy {
        // A plain delete of the record it loaded; if that was regenerated
        // meanwhile, the new record is not this request's to end.
        if let Some(id) = request.loaded {
            world.records.remove(&id);
        }
        if removal != request.cookie.is_some() || token.is_some() || gone {
            return Err(format!(
                "destroy (browser had a cookie: {}) {said}",
                request.cookie.is_some()
            ));
        }
        world.cookie = None;
    } else if request.loaded.is_none() {
        // A new session: stored only if it received data.
        let data = plan.apply(Data::new());
        match (token, data.is_empty()) {
            (None, true) if !removal && !gone => {}
            (Some(token), false) if !gone => {
                let id = id_of(&token)?;
                if !world.seen.insert(id) {
                    return Err(format!("new session reuses id {id}"));
                }
                world.records.insert(id, data);
                world.cookie = Some(token);
            }
            _ => return Err(format!("new session with {data:?} {said}")),
        }
    } else if let Some((old, stored)) = live {
        let data = plan.apply(stored);
        if plan.regenerate {
            let Some(token) = token.filter(|_| !gone) else {
                return Err(format!("regenerate of live {old} {said}"));
            };
            let id = id_of(&token)?;
            if !world.seen.insert(id) {
                return Err(format!("regenerate reuses id {id}"));
            }
            world.records.remove(&old);
            world.records.insert(id, data);
            world.cookie = Some(token);
            return Ok(request.cookie.clone());
        }
        if answer.cookie.is_some() || gone {
            return Err(format!("save to live {old} {said}"));
        }
        world.records.insert(old, data);
    } else if answer.cookie.is_some() || (answer.modified && !gone) {
        // Its session was ended or regenerated meanwhile: nothing is saved,
        // no cookie is sent, and a request that had something to save
        // learns that it was gone.
        return Err(format!(
            "request on a session ended meanwhile (modified {}) {said}",
            answer.modified
        ));
    }
    Ok(None)
}

/// What must hold after commits the model judged: the retired cookies no
/// longer load a session, and the store holds exactly the model's records.
async fn check_after(
    manager: &SessionManager,
    world: &World,
    retired: &[Option<String>],
) -> Result<(), String> {
    let name = manager.config().effective_cookie_name();
    for old in retired.iter().flatten() {
        let again = manager
            .start(&jar_with(&name, Some(old)))
            .await
            .map_err(|e| format!("start with a retired cookie: {e}"))?;
        if !again.is_new() {
            return Err(format!("a retired cookie still loads {}", again.id()));
        }
    }
    check_store(&*manager.store(), world).await
}

/// Commits `request` and checks its answer, and the store, against the model.
async fn commit(
    manager: &SessionManager,
    world: &mut World,
    mut request: Running,
) -> Result<(), String> {
    let answer = perform(&mut request).await?;
    let retired = judge(world, &request, &answer)?;
    check_after(manager, world, &[retired])
        .await
        .map_err(|e| format!("after the commit ({answer:?}): {e}"))
}

/// Commits two requests at the same time (each on its own task): the
/// outcome must be that of one of the two serial orders.
async fn commit_together(
    manager: &SessionManager,
    world: &mut World,
    a: Running,
    b: Running,
) -> Result<(), String> {
    let run = |mut r: Running| {
        tokio::spawn(async move {
            let answer = perform(&mut r).await;
            (r, answer)
        })
    };
    let (first, second) = (run(a), run(b));
    let (a, answer_a) = first.await.map_err(|e| e.to_string())?;
    let (b, answer_b) = second.await.map_err(|e| e.to_string())?;
    let (answer_a, answer_b) = (answer_a?, answer_b?);
    let mut errors = Vec::new();
    for ((x, ax), (y, ay)) in [
        ((&a, &answer_a), (&b, &answer_b)),
        ((&b, &answer_b), (&a, &answer_a)),
    ] {
        let mut after = world.clone();
        let outcome = async {
            let rx = judge(&mut after, x, ax)?;
            let ry = judge(&mut after, y, ay)?;
            check_after(manager, &after, &[rx, ry]).await
        }
        .await;
        match outcome {
            Ok(()) => {
                *world = after;
                return Ok(());
            }
            Err(e) => errors.push(e),
        }
    }
    Err(format!(
        "no serial order explains {answer_a:?} and {answer_b:?}: {errors:?}"
    ))
}

async fn check_interleaving(
    store: Arc<dyn SessionInterface>,
    steps: &[Step],
) -> Result<(), String> {
    store.clear().await.map_err(|e| e.to_string())?;
    let manager = SessionManager::new(store, manager_config()).map_err(|e| e.to_string())?;
    let mut world = World::default();
    // A logged-in browser to race on.
    let setup = start(&manager, &world, vec![Action::Insert { key: 0, value: 0 }]).await?;
    commit(&manager, &mut world, setup).await?;
    let mut running: Vec<Option<Running>> = (0..REQUESTS).map(|_| None).collect();
    for (n, step) in steps.iter().enumerate() {
        let at = |e: String| format!("step {n} {step:?}: {e}");
        match *step {
            Step::Start {
                request,
                ref actions,
            } => {
                if running[request].is_none() {
                    let r = start(&manager, &world, actions.clone()).await.map_err(at)?;
                    running[request] = Some(r);
                }
            }
            Step::Commit { request } => {
                if let Some(r) = running[request].take() {
                    commit(&manager, &mut world, r).await.map_err(at)?;
                }
            }
            Step::CommitTogether { a, b } => match (running[a].take(), running[b].take()) {
                (Some(x), Some(y)) => commit_together(&manager, &mut world, x, y)
                    .await
                    .map_err(at)?,
                (Some(r), None) | (None, Some(r)) => {
                    commit(&manager, &mut world, r).await.map_err(at)?
                }
                (None, None) => {}
            },
        }
    }
    for (request, slot) in running.iter_mut().enumerate() {
        if let Some(r) = slot.take() {
            commit(&manager, &mut world, r)
                .await
                .map_err(|e| format!("final commit of request {request}: {e}"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Runners and backends
// ---------------------------------------------------------------------------

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Runs random store-operation sequences against `store`; a failure is
/// shrunk to a minimal sequence.
fn run_model(runtime: &Runtime, name: &str, store: Arc<dyn SessionInterface>, default_cases: u32) {
    let result = runner(default_cases).run(&prop::collection::vec(op(), 1..40), |ops| {
        runtime
            .block_on(check_sequence(&*store, &ops))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{name} differs from the store model: {e}");
    }
}

/// The races named in the manager's rules, replayed on every backend
/// before the random interleavings (which find them only by luck). Each
/// starts from the logged-in session of `check_interleaving`.
fn known_races() -> Vec<(&'static str, Vec<Step>)> {
    use Action::*;
    let start = |request: usize, actions: Vec<Action>| Step::Start { request, actions };
    let commit = |request: usize| Step::Commit { request };
    let together = Step::CommitTogether { a: 0, b: 1 };
    vec![
        (
            "an insert of the value the request loaded, after another request changed it",
            vec![
                start(0, vec![Insert { key: 0, value: 1 }]),
                start(1, vec![Insert { key: 0, value: 0 }]),
                commit(0),
                commit(1),
            ],
        ),
        (
            "a logout racing a login, logout first",
            vec![
                start(0, vec![Insert { key: 1, value: 1 }, Regenerate]),
                start(1, vec![Destroy]),
                commit(1),
                commit(0),
            ],
        ),
        (
            "a login racing a logout, login first",
            vec![
                start(0, vec![Insert { key: 1, value: 1 }, Regenerate]),
                start(1, vec![Destroy]),
                commit(0),
                commit(1),
            ],
        ),
        (
            "two logins",
            vec![
                start(0, vec![Insert { key: 1, value: 1 }, Regenerate]),
                start(1, vec![Regenerate, Increment { counter: 0 }]),
                commit(0),
                commit(1),
            ],
        ),
        (
            "a save landing while a login regenerates",
            vec![
                start(0, vec![Regenerate, Increment { counter: 0 }]),
                start(
                    1,
                    vec![Increment { counter: 0 }, Insert { key: 1, value: 2 }],
                ),
                commit(1),
                commit(0),
            ],
        ),
        (
            "increments committed at once",
            vec![
                start(0, vec![Increment { counter: 0 }]),
                start(
                    1,
                    vec![Increment { counter: 0 }, Insert { key: 1, value: 1 }],
                ),
                start(2, vec![Increment { counter: 0 }, Increment { counter: 1 }]),
                together.clone(),
                commit(2),
            ],
        ),
        (
            "a logout and a save at once",
            vec![
                start(0, vec![Destroy]),
                start(1, vec![Insert { key: 1, value: 1 }]),
                together.clone(),
                start(2, vec![Increment { counter: 0 }]),
            ],
        ),
        (
            "a login and a save at once",
            vec![
                start(0, vec![Regenerate]),
                start(1, vec![Increment { counter: 0 }]),
                together.clone(),
                start(2, vec![Increment { counter: 0 }]),
            ],
        ),
        (
            "a login and a logout at once",
            vec![
                start(0, vec![Regenerate, Insert { key: 1, value: 1 }]),
                start(1, vec![Destroy]),
                together,
                start(2, vec![Increment { counter: 0 }]),
            ],
        ),
    ]
}

/// Replays [`known_races`], then random request interleavings, through a
/// `SessionManager` over `store`; a random failure is shrunk to a minimal
/// interleaving.
fn run_manager_model(
    runtime: &Runtime,
    name: &str,
    store: Arc<dyn SessionInterface>,
    default_cases: u32,
) {
    let failed: Vec<String> = known_races()
        .into_iter()
        .filter_map(|(race, steps)| {
            runtime
                .block_on(check_interleaving(store.clone(), &steps))
                .err()
                .map(|e| format!("{race}: {e}"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "the manager on {name} differs from the model in known races:\n{}",
        failed.join("\n")
    );
    let result = runner(default_cases).run(&prop::collection::vec(step(), 1..16), |steps| {
        runtime
            .block_on(check_interleaving(store.clone(), &steps))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("the manager on {name} differs from the model: {e}");
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn reference_store_matches_the_model() {
    let store = Arc::new(server_session::conformance::ReferenceStore::new());
    run_model(&runtime(), "reference", store, 64);
}

#[test]
fn manager_on_the_reference_store_matches_the_model() {
    let store = Arc::new(server_session::conformance::ReferenceStore::new());
    run_manager_model(&runtime(), "reference", store, 32);
}

/// A deliberately broken store: the reference store with one rule of the
/// contract broken, to prove the models notice.
#[derive(Debug)]
struct Mutant {
    inner: server_session::conformance::ReferenceStore,
    flaw: Flaw,
}

#[derive(Clone, Copy, Debug)]
enum Flaw {
    /// `delete_if` deletes a live record whatever its version.
    BlindDeleteIf,
    /// `update` overwrites a live record whatever its version.
    BlindUpdate,
    /// `update` of a missing record creates it (a destroyed session returns).
    ResurrectingUpdate,
    /// `touch` stores the expiry it is given, even an earlier one.
    BackwardTouch,
}

#[server_session::async_trait]
impl SessionInterface for Mutant {
    async fn exists(&self, id: &SessionId) -> server_session::Result<bool> {
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> server_session::Result<Option<Session>> {
        self.inner.get(id).await
    }
    async fn set(&self, session: &Session) -> server_session::Result<()> {
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> server_session::Result<()> {
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Session) -> server_session::Result<()> {
        self.inner.create(session).await
    }
    async fn update(
        &self,
        session: &Session,
        expected: u64,
    ) -> server_session::Result<UpdateOutcome> {
        match (self.flaw, self.inner.get(&session.id()).await?) {
            (Flaw::BlindUpdate, Some(stored)) => self.inner.update(session, stored.version()).await,
            (Flaw::ResurrectingUpdate, None) => {
                let mut revived = session.clone();
                revived.set_version(expected + 1);
                self.inner.set(&revived).await?;
                Ok(UpdateOutcome::Updated {
                    version: expected + 1,
                })
            }
            _ => self.inner.update(session, expected).await,
        }
    }
    async fn delete_if(
        &self,
        id: &SessionId,
        expected: u64,
    ) -> server_session::Result<DeleteOutcome> {
        match (self.flaw, self.inner.get(id).await?) {
            (Flaw::BlindDeleteIf, Some(stored)) => self.inner.delete_if(id, stored.version()).await,
            _ => self.inner.delete_if(id, expected).await,
        }
    }
    async fn touch(
        &self,
        id: &SessionId,
        expires_at: server_session::time::OffsetDateTime,
    ) -> server_session::Result<bool> {
        match (self.flaw, self.inner.get(id).await?) {
            (Flaw::BackwardTouch, Some(mut stored)) => {
                stored.set_expires_at_millis(server_session::unix_millis(expires_at));
                self.inner.set(&stored).await?;
                Ok(true)
            }
            _ => self.inner.touch(id, expires_at).await,
        }
    }
    async fn flush(&self) -> server_session::Result<u64> {
        self.inner.flush().await
    }
    async fn clear(&self) -> server_session::Result<()> {
        self.inner.clear().await
    }
    async fn len(&self) -> server_session::Result<u64> {
        self.inner.len().await
    }
}

/// Each flaw must make one of the models fail within `cases` (the models
/// are only worth running against real stores if they can).
#[test]
fn the_models_catch_broken_stores() {
    let runtime = runtime();
    for flaw in [
        Flaw::BlindDeleteIf,
        Flaw::BlindUpdate,
        Flaw::ResurrectingUpdate,
        Flaw::BackwardTouch,
    ] {
        let store = || {
            Arc::new(Mutant {
                inner: server_session::conformance::ReferenceStore::new(),
                flaw,
            })
        };
        let by_store = runner(256)
            .run(&prop::collection::vec(op(), 1..40), |ops| {
                runtime
                    .block_on(check_sequence(&*store(), &ops))
                    .map_err(TestCaseError::fail)
            })
            .is_err();
        let by_manager = runner(256)
            .run(&prop::collection::vec(step(), 1..16), |steps| {
                runtime
                    .block_on(check_interleaving(store(), &steps))
                    .map_err(TestCaseError::fail)
            })
            .is_err();
        assert!(by_store, "the store model missed {flaw:?}");
        // The manager never moves an expiry back through `touch` in a
        // model run (expiries only grow), so that flaw is the store model's.
        if !matches!(flaw, Flaw::BackwardTouch) {
            assert!(by_manager, "the manager model missed {flaw:?}");
        }
    }
}

#[cfg(feature = "memory")]
#[test]
fn memory_store_matches_the_model() {
    run_model(
        &runtime(),
        "memory",
        Arc::new(server_session::MemoryStore::new()),
        64,
    );
}

#[cfg(feature = "memory")]
#[test]
fn manager_on_memory_matches_the_model() {
    run_manager_model(
        &runtime(),
        "memory",
        Arc::new(server_session::MemoryStore::new()),
        32,
    );
}

#[cfg(feature = "sqlite")]
fn on_sqlite(run: impl FnOnce(&Runtime, Arc<dyn SessionInterface>)) {
    let runtime = runtime();
    let store = runtime.block_on(async {
        let store = server_session::SqliteStore::connect("sqlite::memory:")
            .await
            .expect("sqlite");
        store.migrate().await.expect("migrate");
        store
    });
    run(&runtime, Arc::new(store));
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_store_matches_the_model() {
    on_sqlite(|runtime, store| run_model(runtime, "sqlite", store, 24));
}

#[cfg(feature = "sqlite")]
#[test]
fn manager_on_sqlite_matches_the_model() {
    on_sqlite(|runtime, store| run_manager_model(runtime, "sqlite", store, 32));
}

#[cfg(feature = "fs")]
fn on_fs(run: impl FnOnce(&Runtime, Arc<dyn SessionInterface>)) {
    let root = std::env::temp_dir().join(common::unique("session-model-"));
    let runtime = runtime();
    let store = runtime
        .block_on(server_session::FsStore::open(&root))
        .expect("fs store");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&runtime, Arc::new(store))
    }));
    std::fs::remove_dir_all(root).ok();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(feature = "fs")]
#[test]
fn fs_store_matches_the_model() {
    on_fs(|runtime, store| run_model(runtime, "fs", store, 24));
}

#[cfg(feature = "fs")]
#[test]
fn manager_on_fs_matches_the_model() {
    on_fs(|runtime, store| run_manager_model(runtime, "fs", store, 32));
}

/// Runs `run` on a Redis store with a prefix of its own; skips (or fails
/// under `CI`) when the server is unreachable.
#[cfg(feature = "redis")]
fn on_redis(run: impl FnOnce(&Runtime, Arc<dyn SessionInterface>)) {
    let url = common::redis_url();
    let runtime = runtime();
    let store = runtime.block_on(server_session::RedisStore::connect_with(
        server_session::RedisConfig {
            prefix: common::unique("test:model:") + ":",
            ..server_session::RedisConfig::new(url.clone())
        },
    ));
    match store {
        Ok(store) => {
            let store: Arc<dyn SessionInterface> = Arc::new(store);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&runtime, store.clone())
            }));
            runtime.block_on(store.clear()).ok();
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
        Err(e) => common::unreachable("redis", &url, e),
    }
}

#[cfg(feature = "redis")]
#[test]
fn redis_store_matches_the_model() {
    on_redis(|runtime, store| run_model(runtime, "redis", store, 24));
}

#[cfg(feature = "redis")]
#[test]
fn manager_on_redis_matches_the_model() {
    on_redis(|runtime, store| run_manager_model(runtime, "redis", store, 32));
}

/// Runs `run` on a Redis Cluster store (`REDIS_CLUSTER_URL`) with a prefix
/// of its own; skips (or fails under `CI`) when the cluster is unreachable.
#[cfg(feature = "redis")]
fn on_redis_cluster(run: impl FnOnce(&Runtime, Arc<dyn SessionInterface>)) {
    use server_session::redis::{RedisClusterConfig, RedisClusterStore};
    let url = common::redis_cluster_url();
    let runtime = runtime();
    let store = runtime.block_on(async {
        RedisClusterStore::connect_with(RedisClusterConfig {
            prefix: common::unique("test:model:") + ":",
            ..RedisClusterConfig::from_url(&url)?
        })
        .await
    });
    match store {
        Ok(store) => {
            let store: Arc<dyn SessionInterface> = Arc::new(store);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&runtime, store.clone())
            }));
            runtime.block_on(store.clear()).ok();
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
        Err(e) => common::unreachable("redis cluster", &url, e),
    }
}

#[cfg(feature = "redis")]
#[test]
fn redis_cluster_store_matches_the_model() {
    on_redis_cluster(|runtime, store| run_model(runtime, "redis cluster", store, 24));
}

#[cfg(feature = "redis")]
#[test]
fn manager_on_redis_cluster_matches_the_model() {
    on_redis_cluster(|runtime, store| run_manager_model(runtime, "redis cluster", store, 32));
}

/// Runs `run` on a PostgreSQL table of its own, dropped afterwards; skips
/// (or fails under `CI`) when the server is unreachable.
#[cfg(feature = "postgres")]
fn on_postgres(run: impl FnOnce(&Runtime, Arc<dyn SessionInterface>)) {
    let url = common::database_url();
    let runtime = runtime();
    let store = runtime.block_on(async {
        let store = server_session::PostgresStore::connect_with(server_session::PostgresConfig {
            schema: Some("session_tests".into()),
            table: common::unique("model_"),
            ..server_session::PostgresConfig::new(url.clone())
        })
        .await?;
        store.migrate().await?;
        Ok::<_, Error>(store)
    });
    match store {
        Ok(store) => {
            let store = Arc::new(store);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&runtime, store.clone())
            }));
            runtime.block_on(store.drop_table()).ok();
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
        Err(e) => common::unreachable("postgres", &url, e),
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_store_matches_the_model() {
    on_postgres(|runtime, store| run_model(runtime, "postgres", store, 24));
}

#[cfg(feature = "postgres")]
#[test]
fn manager_on_postgres_matches_the_model() {
    on_postgres(|runtime, store| run_manager_model(runtime, "postgres", store, 32));
}

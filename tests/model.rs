//! Model-based tests: random sequences of store operations against every
//! backend and a simple reference model, with identical outcomes required.
//!
//! Cases per backend: `PROPTEST_CASES` (default 24 here; raise it for long
//! local runs, e.g. `PROPTEST_CASES=2000 cargo test --all-features --test model`).
//! Expiries are either long past or an hour ahead, so outcomes do not depend
//! on timing.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use server_session::{
    from_unix_millis, now_millis, Error, Session, SessionId, SessionInterface, SessionToken,
    UpdateOutcome,
};

const IDS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Create {
        id: usize,
        value: u32,
        expired: bool,
    },
    Set {
        id: usize,
        value: u32,
        expired: bool,
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
        expired: bool,
    },
    Touch {
        id: usize,
        expired: bool,
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
        3 => (id.clone(), any::<u32>(), prop::bool::weighted(0.2)).prop_map(|(id, value, expired)| Op::Create { id, value, expired }),
        2 => (id.clone(), any::<u32>(), prop::bool::weighted(0.3), 1..5u64).prop_map(|(id, value, expired, version)| Op::Set { id, value, expired, version }),
        3 => id.clone().prop_map(|id| Op::Get { id }),
        1 => id.clone().prop_map(|id| Op::Exists { id }),
        1 => id.clone().prop_map(|id| Op::IsValid { id }),
        4 => (id.clone(), any::<u32>(), prop_oneof![4 => Just(0i64), 1 => Just(-1i64), 1 => Just(1i64)], prop::bool::weighted(0.1))
            .prop_map(|(id, value, version_offset, expired)| Op::Update { id, value, version_offset, expired }),
        2 => (id.clone(), prop::bool::weighted(0.2)).prop_map(|(id, expired)| Op::Touch { id, expired }),
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

fn expiry(expired: bool) -> i64 {
    if expired {
        now_millis() - 60_000
    } else {
        now_millis() + 3_600_000
    }
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

async fn check_sequence(store: &dyn SessionInterface, ops: &[Op]) -> Result<(), String> {
    store.clear().await.map_err(|e| e.to_string())?;
    let ids: Vec<SessionId> = (0..IDS).map(|_| SessionToken::generate().id()).collect();
    let mut model: HashMap<usize, Slot> = (0..IDS).map(|i| (i, Slot::Missing)).collect();
    for (step, op) in ops.iter().enumerate() {
        let fail = |what: String| Err(format!("step {step} {op:?}: {what}"));
        let e = |err: Error| format!("step {step} {op:?}: unexpected error {err}");
        match op.clone() {
            Op::Create { id, value, expired } => {
                let s = session(ids[id], value, expiry(expired), 1);
                let result = store.create(&s).await;
                let slot = model[&id].clone();
                match (&slot, result) {
                    (Slot::Missing, Ok(())) => {
                        model.insert(id, slot_after_write(value, 1, s.expires_at_millis()));
                    }
                    (Slot::Live { .. }, Err(Error::IdCollision { .. })) => {}
                    (Slot::Expired, Ok(())) => {
                        model.insert(id, slot_after_write(value, 1, s.expires_at_millis()));
                    }
                    (Slot::Expired, Err(Error::IdCollision { .. })) => {}
                    (slot, other) => return fail(format!("model {slot:?}, store {other:?}")),
                }
            }
            Op::Set {
                id,
                value,
                expired,
                version,
            } => {
                let s = session(ids[id], value, expiry(expired), version);
                store.set(&s).await.map_err(e)?;
                model.insert(id, slot_after_write(value, version, s.expires_at_millis()));
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
                expired,
            } => {
                let slot = model[&id].clone();
                let current = match slot {
                    Slot::Live { version, .. } => version,
                    _ => 1,
                };
                let expected = current.saturating_add_signed(version_offset).max(1);
                let s = session(ids[id], value, expiry(expired), 0);
                let outcome = store.update(&s, expected).await.map_err(e)?;
                let want = match slot {
                    Slot::Live { version, .. } if version == expected => UpdateOutcome::Updated {
                        version: expected + 1,
                    },
                    Slot::Live { .. } => UpdateOutcome::Conflict,
                    Slot::Missing | Slot::Expired => UpdateOutcome::Gone,
                };
                if outcome != want {
                    return fail(format!("model {slot:?} wants {want:?}, store {outcome:?}"));
                }
                if let UpdateOutcome::Updated { version } = outcome {
                    model.insert(id, slot_after_write(value, version, s.expires_at_millis()));
                }
            }
            Op::Touch { id, expired } => {
                let until = expiry(expired);
                let touched = store
                    .touch(&ids[id], from_unix_millis(until))
                    .await
                    .map_err(e)?;
                let slot = model[&id].clone();
                match (&slot, touched) {
                    (Slot::Live { value, version, .. }, true) => {
                        model.insert(id, slot_after_write(*value, *version, until));
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

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs random sequences against `store`; a failure is shrunk to a minimal sequence.
fn run_model(name: &str, store: Arc<dyn SessionInterface>, default_cases: u32) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        runtime
            .block_on(check_sequence(&*store, &ops))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{name} differs from the model: {e}");
    }
}

#[test]
fn reference_store_matches_the_model() {
    run_model(
        "reference",
        Arc::new(server_session::conformance::ReferenceStore::new()),
        64,
    );
}

#[cfg(feature = "memory")]
#[test]
fn memory_store_matches_the_model() {
    run_model("memory", Arc::new(server_session::MemoryStore::new()), 64);
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_store_matches_the_model() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = runtime.block_on(async {
        let store = server_session::SqliteStore::connect("sqlite::memory:")
            .await
            .expect("sqlite");
        store.migrate().await.expect("migrate");
        store
    });
    run_model("sqlite", Arc::new(store), 24);
}

#[cfg(feature = "fs")]
#[test]
fn fs_store_matches_the_model() {
    let root = std::env::temp_dir().join(common::unique("session-model-"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = runtime
        .block_on(server_session::FsStore::open(&root))
        .expect("fs store");
    run_model("fs", Arc::new(store), 24);
    std::fs::remove_dir_all(root).ok();
}

#[cfg(feature = "redis")]
#[test]
fn redis_store_matches_the_model() {
    let url = common::redis_url();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = runtime.block_on(server_session::RedisStore::connect_with(
        server_session::RedisConfig {
            prefix: common::unique("test:model:") + ":",
            ..server_session::RedisConfig::new(url.clone())
        },
    ));
    match store {
        Ok(store) => run_model("redis", Arc::new(store), 24),
        Err(e) => common::unreachable("redis", &url, e),
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_store_matches_the_model() {
    let url = common::database_url();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
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
                run_model("postgres", store.clone(), 24)
            }));
            runtime.block_on(store.drop_table()).ok();
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
        Err(e) => common::unreachable("postgres", &url, e),
    }
}

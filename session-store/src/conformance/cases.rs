//! The cases. Each checks one sentence of the [`SessionInterface`] contract
//! or of the [`SessionManager`] commit rules.

use std::sync::Arc;
use std::time::Duration;

use cookie::{Cookie, CookieJar, Key};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{CaseResult, Ctx, Failure};
use crate::__check as check;
use crate::error::Error;
use crate::id::SessionToken;
use crate::session::{from_unix_millis, now_millis, Session};
use crate::store::{SessionInterface, UpdateOutcome};
use crate::{SessionConfig, SessionManager};

mod contract;
mod manager_rules;
mod user_index;

pub use contract::*;
pub use manager_rules::*;
pub use user_index::*;

type R<T> = std::result::Result<T, Failure>;

fn session(ttl: Duration) -> Session {
    Session::new(SessionToken::generate().id(), ttl)
}

fn live() -> Session {
    session(Duration::from_secs(3600))
}

fn in_ms(ms: i64) -> OffsetDateTime {
    from_unix_millis(now_millis() + ms)
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn stored(store: &dyn SessionInterface, s: &Session) -> R<Session> {
    store.get(&s.id()).await?.ok_or_else(|| {
        Failure(format!(
            "session {} should be live but get gave None",
            s.id()
        ))
    })
}

async fn round_trip(store: &dyn SessionInterface, s: &Session) -> CaseResult {
    store.create(s).await?;
    let back = stored(store, s).await?;
    check!(back.data() == s.data(), "data changed in the round trip");
    check!(
        back.flash() == s.flash(),
        "flash values changed in the round trip"
    );
    Ok(())
}

/// Waits for every task; a panic or a failure in any fails the case.
async fn joined<T>(tasks: Vec<tokio::task::JoinHandle<R<T>>>) -> R<Vec<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(
            task.await
                .map_err(|e| Failure(format!("task panicked: {e}")))??,
        );
    }
    Ok(out)
}

fn manager(ctx: &Ctx, config: SessionConfig) -> R<SessionManager> {
    Ok(SessionManager::new(ctx.store.clone(), config)?)
}

fn dev_config() -> SessionConfig {
    SessionConfig {
        secure: false,
        ..SessionConfig::default()
    }
}

fn jar_with(cookie: &Cookie<'static>) -> CookieJar {
    let mut jar = CookieJar::new();
    jar.add_original(cookie.clone());
    jar
}

/// Starts a session, stores `key = value` and returns the cookie.
async fn issued_cookie(m: &SessionManager, key: &str, value: u64) -> R<Cookie<'static>> {
    let mut s = m.start(&CookieJar::new()).await?;
    s.insert(key, &value)?;
    s.commit()
        .await?
        .ok_or_else(|| Failure("a new session with data sent no cookie".into()))
}

/// Unicode keys and values survive.
pub async fn roundtrip_unicode_strings(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("naïve 🔑", "héllo 世界 🎉 \u{0} \u{202e}")?;
    s.insert("κλειδί", &String::from("Ωμέγα"))?;
    round_trip(&*ctx.store, &s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<String>("naïve 🔑")?.as_deref() == Some("héllo 世界 🎉 \u{0} \u{202e}"),
        "unicode value changed"
    );
    Ok(())
}

/// Empty strings, empty byte vectors and the empty key survive.
pub async fn roundtrip_empty_values(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("", "")?;
    s.insert("bytes", &Vec::<u8>::new())?;
    s.insert("unit", &())?;
    round_trip(&*ctx.store, &s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<String>("")?.as_deref() == Some(""),
        "empty string under empty key lost"
    );
    check!(
        back.get::<Vec<u8>>("bytes")? == Some(vec![]),
        "empty bytes lost"
    );
    check!(back.contains_key("unit"), "unit value lost");
    Ok(())
}

/// A 1 MB value survives byte for byte.
pub async fn roundtrip_one_megabyte(ctx: Ctx) -> CaseResult {
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut s = live();
    s.insert("big", &big)?;
    round_trip(&*ctx.store, &s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<Vec<u8>>("big")?.as_ref() == Some(&big),
        "1 MB value changed"
    );
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    age: Option<u8>,
    tags: Vec<String>,
    score: f64,
    nested: (i64, bool),
}

/// Extreme numbers, options and nested structs survive.
pub async fn roundtrip_numbers_and_structs(ctx: Ctx) -> CaseResult {
    let profile = Profile {
        name: "Ada".into(),
        age: None,
        tags: vec!["a".into(), "".into()],
        score: -0.5,
        nested: (i64::MIN, true),
    };
    let mut s = live();
    s.insert("max", &u64::MAX)?;
    s.insert("min", &i64::MIN)?;
    s.insert("float", &f64::MAX)?;
    s.insert("profile", &profile)?;
    s.insert("none", &Option::<String>::None)?;
    round_trip(&*ctx.store, &s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<u64>("max")? == Some(u64::MAX),
        "u64::MAX changed"
    );
    check!(
        back.get::<i64>("min")? == Some(i64::MIN),
        "i64::MIN changed"
    );
    check!(
        back.get::<f64>("float")? == Some(f64::MAX),
        "f64::MAX changed"
    );
    check!(
        back.get::<Profile>("profile")? == Some(profile),
        "struct changed"
    );
    check!(
        back.get::<Option<String>>("none")? == Some(None),
        "None changed"
    );
    Ok(())
}

/// 500 keys survive, in order.
pub async fn roundtrip_many_keys(ctx: Ctx) -> CaseResult {
    let mut s = live();
    for i in 0..500u32 {
        s.insert(format!("key-{i:04}"), &i)?;
    }
    round_trip(&*ctx.store, &s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.keys().count() == 500,
        "expected 500 keys, got {}",
        back.keys().count()
    );
    check!(back.get::<u32>("key-0499")? == Some(499), "last key lost");
    Ok(())
}

/// `created_at`, `expires_at` (ms precision) and the version survive.
pub async fn roundtrip_keeps_times_and_version(ctx: Ctx) -> CaseResult {
    let s = live();
    ctx.store.create(&s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.created_at_millis() == s.created_at_millis(),
        "created_at changed"
    );
    check!(
        back.expires_at_millis() == s.expires_at_millis(),
        "expires_at changed: {} != {}",
        back.expires_at_millis(),
        s.expires_at_millis()
    );
    check!(
        back.version() == 1,
        "version after create is {}, not 1",
        back.version()
    );
    check!(back.id() == s.id(), "id changed");
    Ok(())
}

/// A session with no data can still be stored and read.
pub async fn roundtrip_session_without_data(ctx: Ctx) -> CaseResult {
    let s = live();
    round_trip(&*ctx.store, &s).await?;
    check!(
        stored(&*ctx.store, &s).await?.is_empty(),
        "empty session gained data"
    );
    Ok(())
}

/// `get` of a never-stored id is `None`.
pub async fn get_missing_is_none(ctx: Ctx) -> CaseResult {
    check!(
        ctx.store.get(&live().id()).await?.is_none(),
        "get of a missing id gave Some"
    );
    Ok(())
}

/// `exists` and `has` are false for a missing id and true for a stored one.
pub async fn exists_and_has_agree(ctx: Ctx) -> CaseResult {
    let s = live();
    check!(!ctx.store.exists(&s.id()).await?, "exists before create");
    check!(!ctx.store.has(&s.id()).await?, "has before create");
    ctx.store.create(&s).await?;
    check!(
        ctx.store.exists(&s.id()).await?,
        "exists false after create"
    );
    check!(ctx.store.has(&s.id()).await?, "has false after create");
    Ok(())
}

/// `is_valid` is true for a live session and false for a missing one.
pub async fn is_valid_live_and_missing(ctx: Ctx) -> CaseResult {
    let s = live();
    check!(!ctx.store.is_valid(&s.id()).await?, "missing id is valid");
    ctx.store.create(&s).await?;
    check!(
        ctx.store.is_valid(&s.id()).await?,
        "live session is not valid"
    );
    Ok(())
}

/// A 300 ms session is live at once and gone (get, is_valid, len) after 500 ms.
pub async fn expiry_subsecond_honoured(ctx: Ctx) -> CaseResult {
    let s = session(Duration::from_millis(300));
    ctx.store.create(&s).await?;
    check!(
        ctx.store.get(&s.id()).await?.is_some(),
        "300 ms session not live at once"
    );
    sleep_ms(500).await;
    check!(
        ctx.store.get(&s.id()).await?.is_none(),
        "get returned an expired session"
    );
    check!(
        !ctx.store.is_valid(&s.id()).await?,
        "expired session is valid"
    );
    check!(ctx.store.len().await? == 0, "len counts an expired session");
    Ok(())
}

/// A 1 s session is live after 400 ms and gone after 1.3 s.
pub async fn expiry_one_second_honoured(ctx: Ctx) -> CaseResult {
    let s = session(Duration::from_secs(1));
    ctx.store.create(&s).await?;
    sleep_ms(400).await;
    check!(
        ctx.store.is_valid(&s.id()).await?,
        "1 s session expired after 400 ms"
    );
    sleep_ms(900).await;
    check!(
        ctx.store.get(&s.id()).await?.is_none(),
        "1 s session live after 1.3 s"
    );
    check!(
        !ctx.store.is_valid(&s.id()).await?,
        "1 s session valid after 1.3 s"
    );
    Ok(())
}

/// A record `set` with an expiry in the past is never returned.
pub async fn get_never_returns_expired(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.set_expires_at(in_ms(-1000));
    ctx.store.set(&s).await?;
    check!(
        ctx.store.get(&s.id()).await?.is_none(),
        "get returned a session expired 1 s ago"
    );
    check!(
        !ctx.store.is_valid(&s.id()).await?,
        "a session expired 1 s ago is valid"
    );
    Ok(())
}

/// `len` counts live sessions only.
pub async fn len_counts_only_live(ctx: Ctx) -> CaseResult {
    for _ in 0..3 {
        ctx.store.create(&live()).await?;
    }
    for _ in 0..2 {
        let mut s = live();
        s.set_expires_at(in_ms(-5000));
        ctx.store.set(&s).await?;
    }
    let len = ctx.store.len().await?;
    check!(len == 3, "len is {len}, expected 3 live sessions");
    Ok(())
}

/// An empty store has length 0.
pub async fn len_zero_when_empty(ctx: Ctx) -> CaseResult {
    let len = ctx.store.len().await?;
    check!(len == 0, "fresh store has len {len}");
    Ok(())
}

/// `set` inserts a missing session.
pub async fn set_inserts(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("k", "v")?;
    ctx.store.set(&s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<String>("k")?.as_deref() == Some("v"),
        "set did not store data"
    );
    Ok(())
}

/// `set` replaces an existing session.
pub async fn set_overwrites(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("k", "old")?;
    ctx.store.create(&s).await?;
    s.insert("k", "new")?;
    s.insert("extra", &1u8)?;
    ctx.store.set(&s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<String>("k")?.as_deref() == Some("new"),
        "set did not overwrite"
    );
    check!(back.contains_key("extra"), "set lost a new key");
    Ok(())
}

/// `set` stores the session's expiry, in both directions.
pub async fn set_stores_expiry(ctx: Ctx) -> CaseResult {
    let mut s = live();
    ctx.store.create(&s).await?;
    s.set_expires_at(in_ms(5000));
    ctx.store.set(&s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.expires_at_millis() == s.expires_at_millis(),
        "set did not store the expiry"
    );
    s.set_expires_at(in_ms(-10));
    ctx.store.set(&s).await?;
    check!(
        ctx.store.get(&s.id()).await?.is_none(),
        "set with a past expiry left it live"
    );
    Ok(())
}

/// `set` stores the session's own version, and `update` continues from it.
pub async fn set_keeps_given_version(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.set_version(7);
    ctx.store.set(&s).await?;
    check!(
        stored(&*ctx.store, &s).await?.version() == 7,
        "set did not keep version 7"
    );
    let outcome = ctx.store.update(&s, 7).await?;
    check!(
        outcome == UpdateOutcome::Updated { version: 8 },
        "update after set: {outcome:?}"
    );
    Ok(())
}

/// `delete` removes the record (also from any cache a read filled).
pub async fn delete_removes(ctx: Ctx) -> CaseResult {
    let s = live();
    ctx.store.create(&s).await?;
    stored(&*ctx.store, &s).await?;
    ctx.store.delete(&s.id()).await?;
    check!(
        ctx.store.get(&s.id()).await?.is_none(),
        "get after delete gave Some"
    );
    check!(!ctx.store.exists(&s.id()).await?, "exists after delete");
    Ok(())
}

/// `delete` of a missing id, or twice, is fine.
pub async fn delete_is_idempotent(ctx: Ctx) -> CaseResult {
    let s = live();
    ctx.store.delete(&s.id()).await?;
    ctx.store.create(&s).await?;
    ctx.store.delete(&s.id()).await?;
    ctx.store.delete(&s.id()).await?;
    check!(
        !ctx.store.exists(&s.id()).await?,
        "record survived two deletes"
    );
    Ok(())
}

/// `delete` leaves other sessions alone.
pub async fn delete_leaves_others(ctx: Ctx) -> CaseResult {
    let (a, b) = (live(), live());
    ctx.store.create(&a).await?;
    ctx.store.create(&b).await?;
    ctx.store.delete(&a.id()).await?;
    check!(
        ctx.store.get(&b.id()).await?.is_some(),
        "delete removed another session"
    );
    Ok(())
}

/// `create` stores the session at its own version.
pub async fn create_starts_at_its_version(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.set_version(3);
    ctx.store.create(&s).await?;
    check!(
        stored(&*ctx.store, &s).await?.version() == 3,
        "create did not keep version 3"
    );
    Ok(())
}

/// A second `create` on the same id is `IdCollision` naming that id.
pub async fn create_collision_is_error(ctx: Ctx) -> CaseResult {
    let s = live();
    ctx.store.create(&s).await?;
    match ctx.store.create(&s).await {
        Err(Error::IdCollision { id }) => {
            check!(id == s.id(), "IdCollision names {id}, not {}", s.id());
            Ok(())
        }
        other => Err(Failure(format!(
            "second create gave {other:?}, not IdCollision"
        ))),
    }
}

/// A colliding `create` leaves the stored record untouched.
pub async fn create_collision_keeps_original(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("who", "first")?;
    ctx.store.create(&s).await?;
    let mut intruder = s.clone();
    intruder.insert("who", "second")?;
    let _ = ctx.store.create(&intruder).await;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<String>("who")?.as_deref() == Some("first"),
        "a colliding create overwrote the record"
    );
    Ok(())
}

/// Each `update` at the current version stores version + 1.
pub async fn update_bumps_version(ctx: Ctx) -> CaseResult {
    let s = live();
    ctx.store.create(&s).await?;
    for expected in 1..=3u64 {
        let outcome = ctx.store.update(&s, expected).await?;
        check!(
            outcome
                == UpdateOutcome::Updated {
                    version: expected + 1
                },
            "update at {expected} gave {outcome:?}"
        );
    }
    check!(
        stored(&*ctx.store, &s).await?.version() == 4,
        "stored version is not 4"
    );
    Ok(())
}

/// `update` stores the new data and the new expiry.
pub async fn update_persists_data_and_expiry(ctx: Ctx) -> CaseResult {
    let mut s = live();
    ctx.store.create(&s).await?;
    s.insert("k", &42u32)?;
    s.set_expires_at(in_ms(7_200_000));
    ctx.store.update(&s, 1).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(back.get::<u32>("k")? == Some(42), "update lost data");
    check!(
        back.expires_at_millis() == s.expires_at_millis(),
        "update lost the expiry"
    );
    Ok(())
}

/// `update` with an older version is `Conflict`.
pub async fn update_stale_version_conflicts(ctx: Ctx) -> CaseResult {
    let s = live();
    ctx.store.create(&s).await?;
    ctx.store.update(&s, 1).await?;
    let outcome = ctx.store.update(&s, 1).await?;
    check!(
        outcome == UpdateOutcome::Conflict,
        "stale update gave {outcome:?}"
    );
    Ok(())
}

/// `update` with a version that was never stored is `Conflict`.
pub async fn update_future_version_conflicts(ctx: Ctx) -> CaseResult {
    let s = live();
    ctx.store.create(&s).await?;
    let outcome = ctx.store.update(&s, 5).await?;
    check!(
        outcome == UpdateOutcome::Conflict,
        "update at an unseen version gave {outcome:?}"
    );
    Ok(())
}

/// A conflicting `update` writes nothing.
pub async fn update_conflict_writes_nothing(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("k", "kept")?;
    ctx.store.create(&s).await?;
    ctx.store.update(&s, 1).await?;
    let mut stale = s.clone();
    stale.insert("k", "lost")?;
    ctx.store.update(&stale, 1).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<String>("k")?.as_deref() == Some("kept"),
        "a conflicting update wrote"
    );
    check!(
        back.version() == 2,
        "a conflicting update moved the version to {}",
        back.version()
    );
    Ok(())
}

/// `update` after `delete` is `Gone` and does not bring the session back.
pub async fn update_after_delete_is_gone(ctx: Ctx) -> CaseResult {
    let s = live();
    ctx.store.create(&s).await?;
    ctx.store.delete(&s.id()).await?;
    let outcome = ctx.store.update(&s, 1).await?;
    check!(
        outcome == UpdateOutcome::Gone,
        "update after delete gave {outcome:?}"
    );
    check!(
        !ctx.store.exists(&s.id()).await?,
        "update resurrected a deleted session"
    );
    Ok(())
}

/// `update` of a never-created id is `Gone` and creates nothing.
pub async fn update_never_created_is_gone(ctx: Ctx) -> CaseResult {
    let s = live();
    let outcome = ctx.store.update(&s, 1).await?;
    check!(
        outcome == UpdateOutcome::Gone,
        "update of a missing id gave {outcome:?}"
    );
    check!(
        ctx.store.get(&s.id()).await?.is_none(),
        "update created a session"
    );
    Ok(())
}

/// `update` of an expired session is `Gone` and does not revive it.
pub async fn update_expired_is_gone(ctx: Ctx) -> CaseResult {
    let mut s = session(Duration::from_millis(200));
    ctx.store.create(&s).await?;
    sleep_ms(350).await;
    s.set_expires_at(in_ms(60_000));
    let outcome = ctx.store.update(&s, 1).await?;
    check!(
        outcome == UpdateOutcome::Gone,
        "update of an expired session gave {outcome:?}"
    );
    check!(
        ctx.store.get(&s.id()).await?.is_none(),
        "update revived an expired session"
    );
    Ok(())
}

/// `touch` moves the expiry of a live session and returns true.
pub async fn touch_extends_expiry(ctx: Ctx) -> CaseResult {
    let s = session(Duration::from_millis(800));
    ctx.store.create(&s).await?;
    let until = in_ms(60_000);
    check!(
        ctx.store.touch(&s.id(), until).await?,
        "touch of a live session returned false"
    );
    sleep_ms(1000).await;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.expires_at_millis() == crate::session::unix_millis(until),
        "touch stored expiry {} not {}",
        back.expires_at_millis(),
        crate::session::unix_millis(until)
    );
    Ok(())
}

/// `touch` leaves data and version alone.
pub async fn touch_keeps_data_and_version(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("k", "v")?;
    ctx.store.create(&s).await?;
    ctx.store.touch(&s.id(), in_ms(90_000)).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<String>("k")?.as_deref() == Some("v"),
        "touch changed data"
    );
    check!(
        back.version() == 1,
        "touch changed the version to {}",
        back.version()
    );
    let outcome = ctx.store.update(&s, 1).await?;
    check!(
        outcome == UpdateOutcome::Updated { version: 2 },
        "update after touch: {outcome:?}"
    );
    Ok(())
}

/// `touch` of a missing id returns false and creates nothing.
pub async fn touch_missing_creates_nothing(ctx: Ctx) -> CaseResult {
    let s = live();
    check!(
        !ctx.store.touch(&s.id(), in_ms(60_000)).await?,
        "touch of a missing id returned true"
    );
    check!(!ctx.store.exists(&s.id()).await?, "touch created a record");
    check!(ctx.store.len().await? == 0, "touch created a live session");
    Ok(())
}

/// `touch` of an expired session returns false and never revives it.
pub async fn touch_never_revives_expired(ctx: Ctx) -> CaseResult {
    let s = session(Duration::from_millis(200));
    ctx.store.create(&s).await?;
    sleep_ms(350).await;
    check!(
        !ctx.store.touch(&s.id(), in_ms(60_000)).await?,
        "touch of an expired session returned true"
    );
    check!(
        ctx.store.get(&s.id()).await?.is_none(),
        "touch revived an expired session"
    );
    check!(
        ctx.store.len().await? == 0,
        "touch revived an expired session (len)"
    );
    Ok(())
}

/// `flush` deletes the expired records (returning at most their number) and
/// keeps every live one.
pub async fn flush_removes_exactly_expired(ctx: Ctx) -> CaseResult {
    let live_ones: Vec<Session> = (0..3).map(|_| live()).collect();
    let short: Vec<Session> = (0..3)
        .map(|_| session(Duration::from_millis(200)))
        .collect();
    for s in live_ones.iter().chain(&short) {
        ctx.store.create(s).await?;
    }
    sleep_ms(350).await;
    let flushed = ctx.store.flush().await?;
    check!(
        flushed <= 3,
        "flush reported {flushed} deletions of 3 expired records"
    );
    for s in &live_ones {
        check!(
            ctx.store.get(&s.id()).await?.is_some(),
            "flush removed a live session"
        );
    }
    for s in &short {
        check!(
            !ctx.store.exists(&s.id()).await?,
            "an expired record survived flush"
        );
    }
    check!(ctx.store.len().await? == 3, "len after flush is not 3");
    Ok(())
}

/// `flush` of an empty store deletes nothing.
pub async fn flush_empty_is_zero(ctx: Ctx) -> CaseResult {
    let flushed = ctx.store.flush().await?;
    check!(flushed == 0, "flush of an empty store reported {flushed}");
    Ok(())
}

/// `flush` with only live sessions deletes nothing.
pub async fn flush_keeps_live(ctx: Ctx) -> CaseResult {
    for _ in 0..5 {
        ctx.store.create(&live()).await?;
    }
    let flushed = ctx.store.flush().await?;
    check!(flushed == 0, "flush of live sessions reported {flushed}");
    check!(ctx.store.len().await? == 5, "flush removed live sessions");
    Ok(())
}

/// `clear` deletes every session of the store.
pub async fn clear_removes_all(ctx: Ctx) -> CaseResult {
    let all: Vec<Session> = (0..10).map(|_| live()).collect();
    for s in &all {
        ctx.store.create(s).await?;
    }
    ctx.store.clear().await?;
    check!(ctx.store.len().await? == 0, "len after clear is not 0");
    for s in &all {
        check!(!ctx.store.exists(&s.id()).await?, "a record survived clear");
    }
    Ok(())
}

/// `clear` leaves another store's namespace alone.
pub async fn clear_leaves_other_namespace(ctx: Ctx) -> CaseResult {
    let other = ctx.another_store().await?;
    let (mine, theirs) = (live(), live());
    ctx.store.create(&mine).await?;
    other.create(&theirs).await?;
    ctx.store.clear().await?;
    check!(
        other.get(&theirs.id()).await?.is_some(),
        "clear deleted another namespace's session"
    );
    check!(
        other.len().await? == 1,
        "clear changed another namespace's len"
    );
    Ok(())
}

/// Two stores never see each other's sessions.
pub async fn namespaces_are_isolated(ctx: Ctx) -> CaseResult {
    let other = ctx.another_store().await?;
    let s = live();
    ctx.store.create(&s).await?;
    check!(
        !other.exists(&s.id()).await?,
        "another namespace sees the session"
    );
    check!(
        other.len().await? == 0,
        "another namespace counts the session"
    );
    other.create(&s).await?;
    other.delete(&s.id()).await?;
    check!(
        ctx.store.get(&s.id()).await?.is_some(),
        "a delete crossed namespaces"
    );
    Ok(())
}

/// 64 tasks, each on its own id: create, update, read, delete.
pub async fn concurrent_distinct_ids(ctx: Ctx) -> CaseResult {
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let store = ctx.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = live();
            s.insert("n", &i)?;
            store.create(&s).await?;
            s.insert("n", &(i * 2))?;
            let outcome = store.update(&s, 1).await?;
            check!(
                outcome == UpdateOutcome::Updated { version: 2 },
                "task {i}: {outcome:?}"
            );
            let back = stored(&*store, &s).await?;
            check!(
                back.get::<u64>("n")? == Some(i * 2),
                "task {i} read another's data"
            );
            Ok::<_, Failure>(s)
        }));
    }
    let sessions = joined(tasks).await?;
    check!(
        ctx.store.len().await? == 64,
        "len is not 64 after 64 creates"
    );
    for s in &sessions {
        ctx.store.delete(&s.id()).await?;
    }
    check!(ctx.store.len().await? == 0, "len is not 0 after 64 deletes");
    Ok(())
}

/// 16 tasks create the same id at once: exactly one succeeds.
pub async fn concurrent_creates_one_wins(ctx: Ctx) -> CaseResult {
    let s = live();
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let store = ctx.store.clone();
        let mut mine = s.clone();
        tasks.push(tokio::spawn(async move {
            mine.insert("winner", &i)?;
            match store.create(&mine).await {
                Ok(()) => Ok(Some(i)),
                Err(Error::IdCollision { .. }) => Ok(None),
                Err(e) => Err(Failure::from(e)),
            }
        }));
    }
    let winners: Vec<u32> = joined(tasks).await?.into_iter().flatten().collect();
    check!(
        winners.len() == 1,
        "{} creates of one id succeeded",
        winners.len()
    );
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<u32>("winner")? == Some(winners[0]),
        "the stored record is not the winner's"
    );
    Ok(())
}

/// 16 tasks update the same version at once: exactly one succeeds.
pub async fn concurrent_updates_one_wins_per_version(ctx: Ctx) -> CaseResult {
    let s = live();
    ctx.store.create(&s).await?;
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let store = ctx.store.clone();
        let mut mine = s.clone();
        tasks.push(tokio::spawn(async move {
            mine.insert("winner", &i)?;
            Ok::<_, Failure>((i, store.update(&mine, 1).await?))
        }));
    }
    let mut winners = Vec::new();
    for (i, outcome) in joined(tasks).await? {
        match outcome {
            UpdateOutcome::Updated { version } => {
                check!(version == 2, "winner stored version {version}");
                winners.push(i);
            }
            UpdateOutcome::Conflict => {}
            UpdateOutcome::Gone => return Err(Failure("a live session was Gone".into())),
        }
    }
    check!(
        winners.len() == 1,
        "{} updates of version 1 succeeded",
        winners.len()
    );
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<u32>("winner")? == Some(winners[0]),
        "the stored record is not the winner's"
    );
    Ok(())
}

/// 64 parallel requests increment one counter through the manager's retry
/// path: the count is exact.
///
/// Exact means every acknowledged increment is counted once and nothing
/// else is. A save whose reply a loaded machine lost (a backend timeout)
/// may honestly end as "outcome unknown" rather than be retried into a
/// double count: such an increment may or may not be in the count. So the
/// check is exact when nothing is in doubt (the usual run), and within the
/// number in doubt otherwise.
pub async fn manager_concurrent_increments_exact(ctx: Ctx) -> CaseResult {
    let m = Arc::new(manager(&ctx, dev_config())?);
    let cookie = issued_cookie(&m, "count", 0).await?;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let m = m.clone();
        let jar = jar_with(&cookie);
        tasks.push(tokio::spawn(async move {
            let mut s = m.start(&jar).await?;
            check!(!s.is_new(), "the issued cookie did not load its session");
            // Let the other requests load too, as real handlers would.
            tokio::task::yield_now().await;
            s.modify("count", |n: Option<u64>| n.unwrap_or(0) + 1)?;
            match s.commit().await {
                Ok(_) => Ok::<_, Failure>(true),
                Err(e @ Error::OutcomeUnknown { .. }) => {
                    tracing::warn!(error = %e, "an increment's outcome is unknown");
                    Ok(false)
                }
                Err(e) if e.may_have_applied() => {
                    tracing::warn!(error = %e, "an increment's save may have applied");
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        }));
    }
    let acknowledged = joined(tasks).await?;
    let acked = acknowledged.iter().filter(|ok| **ok).count() as u64;
    let in_doubt = 64 - acked;
    let s = m.start(&jar_with(&cookie)).await?;
    let count = s.get::<u64>("count")?.unwrap_or(0);
    check!(
        acked <= count && count <= acked + in_doubt,
        "{acked} acknowledged increments and {in_doubt} in doubt counted {count}"
    );
    // The doubt is for loaded machines; most increments must still land.
    check!(
        acked >= 32,
        "only {acked} of 64 increments were acknowledged"
    );
    Ok(())
}

/// 16 parallel requests each set their own key: all 16 keys are kept.
pub async fn manager_concurrent_keys_merge(ctx: Ctx) -> CaseResult {
    let m = Arc::new(manager(&ctx, dev_config())?);
    let cookie = issued_cookie(&m, "base", 1).await?;
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let m = m.clone();
        let jar = jar_with(&cookie);
        tasks.push(tokio::spawn(async move {
            let mut s = m.start(&jar).await?;
            tokio::task::yield_now().await;
            s.insert(&format!("k{i}"), &i)?;
            s.commit().await?;
            Ok::<_, Failure>(())
        }));
    }
    joined(tasks).await?;
    let s = m.start(&jar_with(&cookie)).await?;
    for i in 0..16u64 {
        check!(
            s.get::<u64>(&format!("k{i}"))? == Some(i),
            "key k{i} was lost in a race"
        );
    }
    check!(
        s.get::<u64>("base")? == Some(1),
        "the original key was lost"
    );
    Ok(())
}

/// A new session that receives no data is neither stored nor sent.
pub async fn manager_empty_session_not_stored(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let mut s = m.start(&CookieJar::new()).await?;
    check!(s.is_new(), "no cookie but not a new session");
    let cookie = s.commit().await?;
    check!(cookie.is_none(), "an empty new session sent a cookie");
    check!(
        ctx.store.len().await? == 0,
        "an empty new session was stored"
    );
    Ok(())
}

/// A cookie from one request loads the session in the next.
pub async fn manager_cookie_round_trip(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let cookie = issued_cookie(&m, "n", 5).await?;
    check!(cookie.name() == "id", "cookie named {}", cookie.name());
    check!(cookie.http_only() == Some(true), "cookie is not HttpOnly");
    check!(
        cookie.same_site() == Some(cookie::SameSite::Lax),
        "cookie is not SameSite=Lax"
    );
    let mut s = m.start(&jar_with(&cookie)).await?;
    check!(!s.is_new(), "the cookie did not load the session");
    check!(s.get::<u64>("n")? == Some(5), "value lost between requests");
    s.insert("n", &6u64)?;
    check!(
        s.commit().await?.is_none(),
        "an update of a loaded session re-sent the cookie"
    );
    let s = m.start(&jar_with(&cookie)).await?;
    check!(
        s.get::<u64>("n")? == Some(6),
        "update lost between requests"
    );
    Ok(())
}

/// `regenerate` issues a new id, keeps the data and deletes the old record.
pub async fn manager_regenerate_keeps_data(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let old = issued_cookie(&m, "cart", 3).await?;
    let mut s = m.start(&jar_with(&old)).await?;
    let old_id = s.id();
    s.regenerate()?;
    s.insert("user", "ada")?;
    let new = s
        .commit()
        .await?
        .ok_or_else(|| Failure("regenerate sent no cookie".into()))?;
    check!(
        new.value() != old.value(),
        "regenerate kept the cookie value"
    );
    check!(
        !ctx.store.exists(&old_id).await?,
        "regenerate left the old record"
    );
    let s = m.start(&jar_with(&new)).await?;
    check!(s.get::<u64>("cart")? == Some(3), "regenerate lost the data");
    check!(
        s.get::<String>("user")?.as_deref() == Some("ada"),
        "regenerate lost a new value"
    );
    let stale = m.start(&jar_with(&old)).await?;
    check!(stale.is_new(), "the old cookie still loads a session");
    Ok(())
}

/// `destroy` deletes the record and expires the cookie.
pub async fn manager_destroy_deletes_and_expires_cookie(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let cookie = issued_cookie(&m, "n", 1).await?;
    let mut s = m.start(&jar_with(&cookie)).await?;
    let id = s.id();
    s.destroy();
    let removal = s
        .commit()
        .await?
        .ok_or_else(|| Failure("destroy sent no cookie".into()))?;
    check!(
        removal.max_age() == Some(time::Duration::ZERO),
        "destroy cookie has Max-Age {:?}",
        removal.max_age()
    );
    check!(
        removal.value().is_empty(),
        "destroy cookie still carries a value"
    );
    check!(!ctx.store.exists(&id).await?, "destroy left the record");
    Ok(())
}

/// A slow request that saves after a logout does not bring the session back
/// and leaves the cookie alone.
pub async fn manager_save_after_destroy_not_resurrected(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let cookie = issued_cookie(&m, "n", 1).await?;
    let mut slow = m.start(&jar_with(&cookie)).await?;
    let mut logout = m.start(&jar_with(&cookie)).await?;
    logout.destroy();
    logout.commit().await?;
    slow.insert("n", &2u64)?;
    let answer = slow.commit().await?;
    // A removal cookie here could erase the cookie of a newer login.
    check!(
        answer.is_none(),
        "a save after logout sent a cookie: {answer:?}"
    );
    check!(
        !ctx.store.exists(&slow.id()).await?,
        "a save after logout resurrected the session"
    );
    check!(
        ctx.store.len().await? == 0,
        "a save after logout stored something"
    );
    Ok(())
}

/// A flash value is readable on the next request only.
pub async fn manager_flash_read_once(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let mut s = m.start(&CookieJar::new()).await?;
    s.flash("notice", "Saved")?;
    check!(
        s.get_flash::<String>("notice")?.is_none(),
        "a flash is readable in its own request"
    );
    let cookie = s
        .commit()
        .await?
        .ok_or_else(|| Failure("a session with a flash sent no cookie".into()))?;
    let mut next = m.start(&jar_with(&cookie)).await?;
    check!(
        next.get_flash::<String>("notice")?.as_deref() == Some("Saved"),
        "the flash did not reach the next request"
    );
    next.commit().await?;
    let mut third = m.start(&jar_with(&cookie)).await?;
    check!(
        third.get_flash::<String>("notice")?.is_none(),
        "the flash was shown twice"
    );
    third.commit().await?;
    Ok(())
}

/// A well-formed token the server never issued is not adopted.
pub async fn manager_never_adopts_foreign_token(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let forged = SessionToken::generate();
    let jar = jar_with(&Cookie::new("id", forged.as_str().to_owned()));
    let mut s = m.start(&jar).await?;
    check!(s.is_new(), "a forged token loaded a session");
    check!(
        s.id() != forged.id(),
        "the forged token was adopted as the id"
    );
    s.insert("k", &1u8)?;
    let cookie = s
        .commit()
        .await?
        .ok_or_else(|| Failure("no cookie".into()))?;
    check!(
        cookie.value() != forged.as_str(),
        "the forged token was sent back"
    );
    check!(
        !ctx.store.exists(&forged.id()).await?,
        "the forged id was stored"
    );
    Ok(())
}

/// Hostile cookie values are refused by `parse` and start fresh sessions.
pub async fn manager_hostile_cookies_start_fresh(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let long = "A".repeat(10_240);
    for value in [
        "",
        "../../etc/passwd",
        "a\0b",
        "\"quoted\"",
        "ünïcödé",
        long.as_str(),
    ] {
        check!(
            SessionToken::parse(value).is_err(),
            "parse accepted {value:?}"
        );
        let jar = jar_with(&Cookie::new("id", value.to_owned()));
        let s = m.start(&jar).await?;
        check!(
            s.is_new(),
            "hostile cookie {value:?} did not start a new session"
        );
    }
    check!(
        ctx.store.len().await? == 0,
        "hostile cookies stored something"
    );
    Ok(())
}

/// A read-only request slides the expiry forward (`touch`).
pub async fn manager_idle_touch_extends(ctx: Ctx) -> CaseResult {
    let config = SessionConfig {
        idle_timeout: Duration::from_millis(1500),
        touch_after: Duration::ZERO,
        ..dev_config()
    };
    let m = manager(&ctx, config)?;
    let cookie = issued_cookie(&m, "n", 1).await?;
    for _ in 0..3 {
        sleep_ms(700).await;
        let mut s = m.start(&jar_with(&cookie)).await?;
        check!(!s.is_new(), "the idle timeout did not slide");
        s.commit().await?;
    }
    sleep_ms(1800).await;
    let s = m.start(&jar_with(&cookie)).await?;
    check!(s.is_new(), "a session idle past its timeout still loads");
    Ok(())
}

/// The absolute timeout ends a session however active it is.
pub async fn manager_absolute_timeout(ctx: Ctx) -> CaseResult {
    let config = SessionConfig {
        idle_timeout: Duration::from_secs(60),
        absolute_timeout: Some(Duration::from_millis(1200)),
        touch_after: Duration::ZERO,
        ..dev_config()
    };
    let m = manager(&ctx, config)?;
    let cookie = issued_cookie(&m, "n", 1).await?;
    // Created no later than now: the deadline below is past its timeout
    // however slow the machine is; the first check has 900 ms of slack.
    let issued = std::time::Instant::now();
    sleep_ms(300).await;
    let mut s = m.start(&jar_with(&cookie)).await?;
    check!(!s.is_new(), "session ended before its absolute timeout");
    s.commit().await?;
    let past = Duration::from_millis(1300).saturating_sub(issued.elapsed());
    tokio::time::sleep(past).await;
    let s = m.start(&jar_with(&cookie)).await?;
    check!(s.is_new(), "session outlived its absolute timeout");
    Ok(())
}

/// Signed cookies: the first key signs, all keys verify, a tampered or
/// retired-key signature starts a fresh session.
pub async fn manager_signed_cookie_rotation(ctx: Ctx) -> CaseResult {
    let (old_key, new_key) = (Key::generate(), Key::generate());
    let signed_with = |keys: Vec<Key>| SessionConfig {
        signing_keys: keys,
        ..dev_config()
    };
    let old = manager(&ctx, signed_with(vec![old_key.clone()]))?;
    let cookie = issued_cookie(&old, "n", 9).await?;
    check!(cookie.value().len() > 43, "the cookie does not look signed");
    let rotated = manager(&ctx, signed_with(vec![new_key.clone(), old_key.clone()]))?;
    let s = rotated.start(&jar_with(&cookie)).await?;
    check!(
        s.get::<u64>("n")? == Some(9),
        "a cookie signed by a verifying key did not load"
    );
    let retired = manager(&ctx, signed_with(vec![new_key]))?;
    check!(
        retired.start(&jar_with(&cookie)).await?.is_new(),
        "a retired key still verifies"
    );
    let mut tampered = cookie.clone();
    let mut value = tampered.value().to_owned();
    let last = if value.ends_with('A') { 'B' } else { 'A' };
    value.pop();
    value.push(last);
    tampered.set_value(value);
    check!(
        old.start(&jar_with(&tampered)).await?.is_new(),
        "a tampered cookie loaded"
    );
    let unsigned = manager(&ctx, dev_config())?;
    let plain = issued_cookie(&unsigned, "n", 1).await?;
    check!(
        old.start(&jar_with(&plain)).await?.is_new(),
        "an unsigned cookie loaded under signing"
    );
    Ok(())
}

/// A stored session's `remaining_seconds` counts down and never goes below 0.
pub async fn remaining_seconds_never_negative(ctx: Ctx) -> CaseResult {
    let s = session(Duration::from_secs(90));
    ctx.store.create(&s).await?;
    let mut back = stored(&*ctx.store, &s).await?;
    check!(
        (89..=90).contains(&back.remaining_seconds()),
        "remaining {}",
        back.remaining_seconds()
    );
    back.set_expires_at(in_ms(-60_000));
    check!(
        back.remaining_seconds() == 0,
        "remaining seconds went below zero"
    );
    Ok(())
}

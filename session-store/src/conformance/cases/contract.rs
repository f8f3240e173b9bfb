//! Cases for the contract sentences added with `delete_if`, bounded
//! versions, forward-only expiry, write ids and nested namespaces.

use std::sync::Arc;
use std::time::Duration;

use super::{in_ms, joined, live, session, sleep_ms, stored, R};
use crate::__check as check;
use crate::conformance::{CaseResult, Ctx, Failure};
use crate::error::Error;
use crate::session::{unix_millis, Session};
use crate::store::{DeleteOutcome, SessionInterface, UpdateOutcome, MAX_VERSION};

/// Expects `Error::VersionOutOfRange` naming `version`.
fn out_of_range(what: &str, version: u64, result: crate::Result<()>) -> CaseResult {
    match result {
        Err(Error::VersionOutOfRange { version: v, .. }) if v == version => Ok(()),
        other => Err(Failure(format!(
            "{what} at version {version} gave {other:?}, not VersionOutOfRange"
        ))),
    }
}

/// Creates `count` sessions (16 writers at once) expiring at `expires_ms`
/// from now (negative: already expired) with `set`, and returns them.
async fn many(store: &Arc<dyn SessionInterface>, count: usize, expires_ms: i64) -> R<Vec<Session>> {
    let all: Vec<Session> = (0..count)
        .map(|_| {
            let mut s = live();
            s.set_expires_at(in_ms(expires_ms));
            s
        })
        .collect();
    let mut tasks = Vec::new();
    for chunk in all.chunks(count.div_ceil(16).max(1)) {
        let store = store.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for s in &chunk {
                store.set(s).await?;
            }
            Ok::<_, Failure>(())
        }));
    }
    joined(tasks).await?;
    Ok(all)
}

/// The nested store; `None` marks the case skipped (the runner says so).
async fn nested(ctx: &Ctx) -> Option<Arc<dyn SessionInterface>> {
    ctx.nested_store(&ctx.store).await
}

/// Flash values survive `create` byte for byte.
pub async fn roundtrip_flash_values(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("k", &1u8)?;
    s.flash_mut().insert("notice".into(), b"Saved".to_vec());
    s.flash_mut().insert("".into(), Vec::new());
    ctx.store.create(&s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.flash() == s.flash(),
        "flash changed in the round trip: {:?}",
        back.flash()
    );
    Ok(())
}

fn stamped(writes: &[u64]) -> Session {
    let mut s = live();
    for w in writes.iter().rev() {
        s.stamp_write(*w);
    }
    s
}

/// `create` keeps the session's write ids.
pub async fn write_ids_survive_create(ctx: Ctx) -> CaseResult {
    let s = stamped(&[3, 2, 1]);
    ctx.store.create(&s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.recent_writes() == [3, 2, 1],
        "create kept write ids {:?}, not [3, 2, 1]",
        back.recent_writes()
    );
    Ok(())
}

/// `set` stores the session's write ids, replacing the stored ones.
pub async fn write_ids_survive_set(ctx: Ctx) -> CaseResult {
    let s = stamped(&[7, 6]);
    ctx.store.create(&s).await?;
    let again = stamped(&[u64::MAX]);
    let mut again_same_id = s.clone();
    again_same_id.set_recent_writes(again.recent_writes().to_vec());
    ctx.store.set(&again_same_id).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.recent_writes() == [u64::MAX],
        "set stored write ids {:?}, not [u64::MAX]",
        back.recent_writes()
    );
    Ok(())
}

/// After `update` the write ids are exactly the saved session's, even
/// when that list is shorter or empty.
pub async fn update_replaces_write_ids(ctx: Ctx) -> CaseResult {
    let mut s = stamped(&[5, 4, 3]);
    ctx.store.create(&s).await?;
    s.stamp_write(9);
    ctx.store.update(&s, 1).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.recent_writes() == [9, 5, 4, 3],
        "update stored write ids {:?}, not [9, 5, 4, 3]",
        back.recent_writes()
    );
    s.set_recent_writes(vec![1]);
    ctx.store.update(&s, 2).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.recent_writes() == [1],
        "update stored write ids {:?}, not [1]",
        back.recent_writes()
    );
    Ok(())
}

/// `touch` leaves the write ids alone.
pub async fn touch_keeps_write_ids(ctx: Ctx) -> CaseResult {
    let s = stamped(&[42, 41]);
    ctx.store.create(&s).await?;
    check!(
        ctx.store.touch(&s.id(), in_ms(7_200_000)).await?,
        "touch of a live session returned false"
    );
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.recent_writes() == [42, 41],
        "touch changed write ids to {:?}",
        back.recent_writes()
    );
    Ok(())
}

/// `update` replaces the whole record: a key the new session removed is
/// gone (no merge), flash values are the new session's.
pub async fn update_replaces_whole_record(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("kept", "old")?;
    s.insert("removed", &1u8)?;
    s.flash_mut().insert("old-flash".into(), b"x".to_vec());
    ctx.store.create(&s).await?;
    s.insert("kept", "new")?;
    s.remove("removed");
    s.flash_mut().clear();
    s.flash_mut().insert("new-flash".into(), b"y".to_vec());
    let outcome = ctx.store.update(&s, 1).await?;
    check!(
        outcome == UpdateOutcome::Updated { version: 2 },
        "update gave {outcome:?}"
    );
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<String>("kept")?.as_deref() == Some("new"),
        "update did not store the new value"
    );
    check!(
        !back.contains_key("removed"),
        "a key removed by the update is still stored (merged, not replaced)"
    );
    check!(
        back.flash() == s.flash(),
        "update stored flash {:?}, not the session's",
        back.flash().keys().collect::<Vec<_>>()
    );
    Ok(())
}

/// `update` with no flash values leaves none stored.
pub async fn update_clears_flash(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.flash_mut().insert("notice".into(), b"Saved".to_vec());
    ctx.store.create(&s).await?;
    s.flash_mut().clear();
    s.insert("k", &1u8)?;
    ctx.store.update(&s, 1).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.flash().is_empty(),
        "update kept flash values the session no longer has"
    );
    Ok(())
}

/// `set` is unconditional: it replaces a record at a higher version, drops
/// keys the new session lacks, and overwrites an expired record.
pub async fn set_is_unconditional(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("gone", &1u8)?;
    s.set_version(5);
    ctx.store.create(&s).await?;
    let mut older = live();
    older.set_id(s.id());
    older.insert("k", "v")?;
    ctx.store.set(&older).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.version() == 1,
        "set over version 5 stored version {}, not the given 1",
        back.version()
    );
    check!(
        !back.contains_key("gone"),
        "set merged a key of the replaced record"
    );
    let mut expired = live();
    expired.set_expires_at(in_ms(-1000));
    ctx.store.set(&expired).await?;
    let mut revived = expired.clone();
    revived.set_expires_at(in_ms(60_000));
    ctx.store.set(&revived).await?;
    check!(
        ctx.store.get(&revived.id()).await?.is_some(),
        "set did not overwrite an expired record"
    );
    Ok(())
}

/// `set` refuses versions outside `1..=MAX_VERSION` and stores nothing.
pub async fn set_refuses_version_out_of_range(ctx: Ctx) -> CaseResult {
    for version in [0, MAX_VERSION + 1, u64::MAX] {
        let mut s = live();
        s.set_version(version);
        out_of_range("set", version, ctx.store.set(&s).await)?;
        check!(
            !ctx.store.exists(&s.id()).await?,
            "set at version {version} stored a record"
        );
    }
    let mut s = live();
    s.insert("k", "kept")?;
    ctx.store.create(&s).await?;
    let mut bad = s.clone();
    bad.insert("k", "lost")?;
    bad.set_version(0);
    out_of_range("set", 0, ctx.store.set(&bad).await)?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<String>("k")?.as_deref() == Some("kept") && back.version() == 1,
        "a refused set changed the stored record"
    );
    Ok(())
}

/// `create` refuses versions outside `1..=MAX_VERSION` and stores nothing.
pub async fn create_refuses_version_out_of_range(ctx: Ctx) -> CaseResult {
    for version in [0, MAX_VERSION + 1, u64::MAX] {
        let mut s = live();
        s.set_version(version);
        out_of_range("create", version, ctx.store.create(&s).await)?;
        check!(
            !ctx.store.exists(&s.id()).await?,
            "create at version {version} stored a record"
        );
    }
    check!(ctx.store.len().await? == 0, "a refused create is counted");
    Ok(())
}

/// `MAX_VERSION` is stored exactly, and `update` reaches it from one below.
pub async fn max_version_round_trips(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.set_version(MAX_VERSION);
    ctx.store.set(&s).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.version() == MAX_VERSION,
        "set at MAX_VERSION stored {}",
        back.version()
    );
    let mut t = live();
    t.set_version(MAX_VERSION - 1);
    ctx.store.create(&t).await?;
    let outcome = ctx.store.update(&t, MAX_VERSION - 1).await?;
    check!(
        outcome
            == UpdateOutcome::Updated {
                version: MAX_VERSION
            },
        "update at MAX_VERSION - 1 gave {outcome:?}"
    );
    t.set_version(MAX_VERSION);
    check!(
        stored(&*ctx.store, &t).await?.version() == MAX_VERSION,
        "update to MAX_VERSION stored another version"
    );
    Ok(())
}

/// `update` of a record at `MAX_VERSION` is refused with
/// `VersionOutOfRange` and the record is unchanged (no wrap, no capping).
pub async fn update_at_max_version_refused(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("k", "kept")?;
    s.set_version(MAX_VERSION);
    ctx.store.set(&s).await?;
    let mut next = s.clone();
    next.insert("k", "lost")?;
    let result = ctx.store.update(&next, MAX_VERSION).await.map(|_| ());
    out_of_range("update", MAX_VERSION, result)?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.get::<String>("k")?.as_deref() == Some("kept"),
        "a refused update wrote data"
    );
    check!(
        back.version() == MAX_VERSION,
        "a refused update moved the version to {}",
        back.version()
    );
    Ok(())
}

/// Versions above 2^53 (where doubles lose integers) stay exact through
/// `set`, `update` and `delete_if`.
pub async fn versions_beyond_float_precision(ctx: Ctx) -> CaseResult {
    let base = (1u64 << 53) + 1;
    let mut s = live();
    s.set_version(base);
    ctx.store.set(&s).await?;
    check!(
        stored(&*ctx.store, &s).await?.version() == base,
        "version 2^53 + 1 was not stored exactly"
    );
    let outcome = ctx.store.update(&s, base - 1).await?;
    check!(
        outcome == UpdateOutcome::Conflict,
        "update at 2^53 for a record at 2^53 + 1 gave {outcome:?}"
    );
    let outcome = ctx.store.update(&s, base).await?;
    check!(
        outcome == UpdateOutcome::Updated { version: base + 1 },
        "update at 2^53 + 1 gave {outcome:?}"
    );
    let outcome = ctx.store.delete_if(&s.id(), base + 2).await?;
    check!(
        outcome == DeleteOutcome::Conflict,
        "delete_if at 2^53 + 3 for a record at 2^53 + 2 gave {outcome:?}"
    );
    Ok(())
}

/// `update` with an earlier expiry keeps the stored, later one (as `get`
/// reports it too).
pub async fn update_never_shortens_expiry(ctx: Ctx) -> CaseResult {
    let mut s = live();
    let later = s.expires_at_millis();
    ctx.store.create(&s).await?;
    s.set_expires_at(in_ms(20_000));
    s.insert("k", &1u8)?;
    ctx.store.update(&s, 1).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.expires_at_millis() == later,
        "update moved the expiry back from {later} to {}",
        back.expires_at_millis()
    );
    check!(back.get::<u8>("k")? == Some(1), "update lost data");
    Ok(())
}

/// `update` with an expiry already past leaves the session live at its
/// stored expiry.
pub async fn update_with_past_expiry_stays_live(ctx: Ctx) -> CaseResult {
    let mut s = session(Duration::from_secs(60));
    let stored_expiry = s.expires_at_millis();
    ctx.store.create(&s).await?;
    s.set_expires_at(in_ms(-2000));
    let outcome = ctx.store.update(&s, 1).await?;
    check!(
        outcome == UpdateOutcome::Updated { version: 2 },
        "update gave {outcome:?}"
    );
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.expires_at_millis() == stored_expiry,
        "update with a past expiry stored expiry {}, not {stored_expiry}",
        back.expires_at_millis()
    );
    check!(
        ctx.store.len().await? == 1,
        "len does not count the session"
    );
    Ok(())
}

/// An `update` after a `touch` that moved the expiry further keeps the
/// touched expiry.
pub async fn update_after_touch_keeps_later_expiry(ctx: Ctx) -> CaseResult {
    let mut s = session(Duration::from_secs(60));
    ctx.store.create(&s).await?;
    let touched = in_ms(3_600_000);
    ctx.store.touch(&s.id(), touched).await?;
    s.set_expires_at(in_ms(120_000));
    ctx.store.update(&s, 1).await?;
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.expires_at_millis() == unix_millis(touched),
        "update after touch moved the expiry back to {} from {}",
        back.expires_at_millis(),
        unix_millis(touched)
    );
    Ok(())
}

/// `touch` to an earlier expiry changes nothing but returns true.
pub async fn touch_never_shortens_expiry(ctx: Ctx) -> CaseResult {
    let s = live();
    ctx.store.create(&s).await?;
    check!(
        ctx.store.touch(&s.id(), in_ms(20_000)).await?,
        "touch of a live session to an earlier expiry returned false"
    );
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.expires_at_millis() == s.expires_at_millis(),
        "touch moved the expiry back from {} to {}",
        s.expires_at_millis(),
        back.expires_at_millis()
    );
    Ok(())
}

/// `touch` with an expiry already past returns true (the session is live)
/// and leaves it live.
pub async fn touch_with_past_expiry_stays_live(ctx: Ctx) -> CaseResult {
    let s = session(Duration::from_secs(60));
    ctx.store.create(&s).await?;
    check!(
        ctx.store.touch(&s.id(), in_ms(-2000)).await?,
        "touch of a live session returned false"
    );
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.expires_at_millis() == s.expires_at_millis(),
        "touch with a past expiry stored {}",
        back.expires_at_millis()
    );
    Ok(())
}

/// A record that expired a second ago (shortened by `set`) is gone for
/// every operation: get, is_valid, len, is_empty, update, touch, delete_if.
pub async fn recently_expired_is_gone_everywhere(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("k", "v")?;
    ctx.store.create(&s).await?;
    s.set_expires_at(in_ms(-1000));
    ctx.store.set(&s).await?;
    check!(ctx.store.get(&s.id()).await?.is_none(), "get returned it");
    check!(!ctx.store.is_valid(&s.id()).await?, "is_valid is true");
    check!(ctx.store.len().await? == 0, "len counts it");
    check!(ctx.store.is_empty().await?, "is_empty is false");
    let mut later = s.clone();
    later.set_expires_at(in_ms(60_000));
    let outcome = ctx.store.update(&later, 1).await?;
    check!(outcome == UpdateOutcome::Gone, "update gave {outcome:?}");
    check!(
        !ctx.store.touch(&s.id(), in_ms(60_000)).await?,
        "touch returned true"
    );
    let outcome = ctx.store.delete_if(&s.id(), 1).await?;
    check!(outcome == DeleteOutcome::Gone, "delete_if gave {outcome:?}");
    check!(
        ctx.store.get(&s.id()).await?.is_none(),
        "an operation revived it"
    );
    Ok(())
}

/// A record expiring in 1.5 s is live for every operation (a store whose
/// clock runs ahead thinks it expired).
pub async fn soon_expiring_is_live_everywhere(ctx: Ctx) -> CaseResult {
    let mut s = session(Duration::from_millis(1500));
    ctx.store.create(&s).await?;
    check!(ctx.store.get(&s.id()).await?.is_some(), "get gave None");
    check!(ctx.store.len().await? == 1, "len does not count it");
    check!(!ctx.store.is_empty().await?, "is_empty is true");
    check!(
        ctx.store.flush().await? == 0,
        "flush deleted a live session"
    );
    check!(
        ctx.store.touch(&s.id(), in_ms(1500)).await?,
        "touch returned false"
    );
    s.insert("k", &1u8)?;
    let outcome = ctx.store.update(&s, 1).await?;
    check!(
        outcome == UpdateOutcome::Updated { version: 2 },
        "update gave {outcome:?}"
    );
    let outcome = ctx.store.delete_if(&s.id(), 2).await?;
    check!(
        outcome == DeleteOutcome::Deleted,
        "delete_if gave {outcome:?}"
    );
    Ok(())
}

/// `delete_if` at the stored version deletes the record.
pub async fn delete_if_deletes_at_version(ctx: Ctx) -> CaseResult {
    let (s, other) = (live(), live());
    ctx.store.create(&s).await?;
    ctx.store.create(&other).await?;
    stored(&*ctx.store, &s).await?;
    let outcome = ctx.store.delete_if(&s.id(), 1).await?;
    check!(
        outcome == DeleteOutcome::Deleted,
        "delete_if at the stored version gave {outcome:?}"
    );
    check!(
        !ctx.store.exists(&s.id()).await? && ctx.store.get(&s.id()).await?.is_none(),
        "delete_if left the record"
    );
    check!(
        ctx.store.get(&other.id()).await?.is_some(),
        "delete_if removed another session"
    );
    let outcome = ctx.store.delete_if(&s.id(), 1).await?;
    check!(
        outcome == DeleteOutcome::Gone,
        "a second delete_if gave {outcome:?}"
    );
    Ok(())
}

/// `delete_if` at another version (older or newer) is `Conflict` and
/// deletes nothing.
pub async fn delete_if_conflict_deletes_nothing(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("k", "kept")?;
    ctx.store.create(&s).await?;
    ctx.store.update(&s, 1).await?;
    for version in [1, 3, 0] {
        let outcome = ctx.store.delete_if(&s.id(), version).await?;
        check!(
            outcome == DeleteOutcome::Conflict,
            "delete_if at version {version} of a record at 2 gave {outcome:?}"
        );
    }
    let back = stored(&*ctx.store, &s).await?;
    check!(
        back.version() == 2 && back.get::<String>("k")?.as_deref() == Some("kept"),
        "a conflicting delete_if changed the record"
    );
    Ok(())
}

/// `delete_if` of a never-stored id is `Gone` and creates nothing.
pub async fn delete_if_missing_is_gone(ctx: Ctx) -> CaseResult {
    let s = live();
    let outcome = ctx.store.delete_if(&s.id(), 1).await?;
    check!(
        outcome == DeleteOutcome::Gone,
        "delete_if of a missing id gave {outcome:?}"
    );
    check!(!ctx.store.exists(&s.id()).await?, "delete_if created it");
    Ok(())
}

/// `delete_if` of a record that expired by itself is `Gone`, whatever the
/// version, and nothing comes back.
pub async fn delete_if_expired_is_gone(ctx: Ctx) -> CaseResult {
    let s = session(Duration::from_millis(200));
    ctx.store.create(&s).await?;
    sleep_ms(350).await;
    for version in [1, 2] {
        let outcome = ctx.store.delete_if(&s.id(), version).await?;
        check!(
            outcome == DeleteOutcome::Gone,
            "delete_if at {version} of an expired record gave {outcome:?}"
        );
    }
    check!(
        ctx.store.get(&s.id()).await?.is_none(),
        "the expired record came back"
    );
    Ok(())
}

/// `delete_if` follows the versions `update` stores and ignores `touch`.
pub async fn delete_if_follows_update_and_touch(ctx: Ctx) -> CaseResult {
    let s = live();
    ctx.store.create(&s).await?;
    ctx.store.update(&s, 1).await?;
    ctx.store.touch(&s.id(), in_ms(7_200_000)).await?;
    let outcome = ctx.store.delete_if(&s.id(), 1).await?;
    check!(
        outcome == DeleteOutcome::Conflict,
        "delete_if at the version before an update gave {outcome:?}"
    );
    let outcome = ctx.store.delete_if(&s.id(), 2).await?;
    check!(
        outcome == DeleteOutcome::Deleted,
        "delete_if at the version after update and touch gave {outcome:?}"
    );
    Ok(())
}

/// 16 tasks `delete_if` the same version at once: exactly one deletes, the
/// others find it `Gone`.
pub async fn concurrent_delete_ifs_one_wins(ctx: Ctx) -> CaseResult {
    for _ in 0..4 {
        let s = live();
        ctx.store.create(&s).await?;
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let store = ctx.store.clone();
            let id = s.id();
            tasks.push(tokio::spawn(async move {
                Ok::<_, Failure>(store.delete_if(&id, 1).await?)
            }));
        }
        let outcomes = joined(tasks).await?;
        let deleted = outcomes
            .iter()
            .filter(|o| **o == DeleteOutcome::Deleted)
            .count();
        check!(
            deleted == 1,
            "{deleted} of 16 concurrent delete_ifs said Deleted"
        );
        check!(
            outcomes
                .iter()
                .all(|o| matches!(o, DeleteOutcome::Deleted | DeleteOutcome::Gone)),
            "a concurrent delete_if gave {outcomes:?}"
        );
    }
    Ok(())
}

/// `delete_if` and `update` of the same version race: exactly one of them
/// succeeds, and the store shows the winner's result.
pub async fn delete_if_racing_update_one_wins(ctx: Ctx) -> CaseResult {
    for round in 0..8u32 {
        let s = live();
        ctx.store.create(&s).await?;
        let mut tasks = Vec::new();
        // Odd rounds start the deletes first, even rounds the updates.
        for n in 0..16u32 {
            let i = if round % 2 == 1 { n ^ 1 } else { n };
            let store = ctx.store.clone();
            let mut mine = s.clone();
            tasks.push(tokio::spawn(async move {
                if i.is_multiple_of(2) {
                    mine.insert("winner", &i)?;
                    let outcome = store.update(&mine, 1).await?;
                    Ok::<_, Failure>((i, matches!(outcome, UpdateOutcome::Updated { .. })))
                } else {
                    let outcome = store.delete_if(&mine.id(), 1).await?;
                    Ok((i, outcome == DeleteOutcome::Deleted))
                }
            }));
        }
        let winners: Vec<u32> = joined(tasks)
            .await?
            .into_iter()
            .filter(|(_, won)| *won)
            .map(|(i, _)| i)
            .collect();
        check!(
            winners.len() == 1,
            "round {round}: {} updates and delete_ifs of version 1 succeeded: {winners:?}",
            winners.len()
        );
        let back = ctx.store.get(&s.id()).await?;
        if winners[0].is_multiple_of(2) {
            let back = back.ok_or_else(|| Failure("the winning update was deleted".into()))?;
            check!(
                back.get::<u32>("winner")? == Some(winners[0]) && back.version() == 2,
                "the stored record is not the winning update's"
            );
        } else {
            check!(back.is_none(), "the winning delete_if left the record");
        }
    }
    Ok(())
}

/// `create` on an expired record agrees with `exists`: if the record is
/// still stored it is a collision and stays untouched; if the store already
/// dropped it, `create` succeeds.
pub async fn create_on_expired_agrees_with_exists(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.insert("who", "first")?;
    s.set_expires_at(in_ms(-1000));
    ctx.store.set(&s).await?;
    let still_there = ctx.store.exists(&s.id()).await?;
    let mut fresh = live();
    fresh.set_id(s.id());
    fresh.insert("who", "second")?;
    match (still_there, ctx.store.create(&fresh).await) {
        (true, Err(Error::IdCollision { .. })) => {
            check!(
                ctx.store.get(&s.id()).await?.is_none(),
                "a colliding create revived the expired record"
            );
            check!(
                ctx.store.exists(&s.id()).await?,
                "a colliding create removed the record"
            );
        }
        (false, Ok(())) => {
            let back = stored(&*ctx.store, &fresh).await?;
            check!(
                back.get::<String>("who")?.as_deref() == Some("second"),
                "create stored another record"
            );
        }
        (exists, other) => {
            return Err(Failure(format!(
                "exists said {exists} for an expired record but create gave {other:?}"
            )))
        }
    }
    Ok(())
}

/// `is_empty` ignores expired records.
pub async fn is_empty_ignores_expired(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.set_expires_at(in_ms(-1000));
    ctx.store.set(&s).await?;
    check!(
        ctx.store.is_empty().await?,
        "is_empty is false with only an expired record"
    );
    ctx.store.create(&live()).await?;
    check!(
        !ctx.store.is_empty().await?,
        "is_empty is true with a live session"
    );
    Ok(())
}

/// `clear` deletes expired records too.
pub async fn clear_removes_expired_records(ctx: Ctx) -> CaseResult {
    let mut s = live();
    s.set_expires_at(in_ms(-1000));
    ctx.store.set(&s).await?;
    ctx.store.create(&live()).await?;
    ctx.store.clear().await?;
    check!(
        !ctx.store.exists(&s.id()).await?,
        "an expired record survived clear"
    );
    check!(ctx.store.len().await? == 0, "len after clear is not 0");
    Ok(())
}

/// `clear` of 2100 records (past a 1000-row batch) does not stop early
/// while another writer deletes records of the same namespace.
pub async fn clear_with_concurrent_deletes_removes_all(ctx: Ctx) -> CaseResult {
    let all = many(&ctx.store, 2100, 3_600_000).await?;
    let deleter = {
        let store = ctx.store.clone();
        let ids: Vec<_> = all.iter().step_by(3).map(Session::id).collect();
        tokio::spawn(async move {
            // Paced, so that the deletes overlap the whole clear or flush.
            for (n, id) in ids.iter().enumerate() {
                store.delete(id).await?;
                if n % 10 == 9 {
                    sleep_ms(1).await;
                }
            }
            Ok::<_, Failure>(())
        })
    };
    tokio::task::yield_now().await;
    ctx.store.clear().await?;
    joined(vec![deleter]).await?;
    let left = ctx.store.len().await?;
    check!(left == 0, "{left} records survived clear");
    for s in all.iter().step_by(97) {
        check!(!ctx.store.exists(&s.id()).await?, "a record survived clear");
    }
    Ok(())
}

/// `flush` of 2100 expired records (past a 1000-row batch) removes them
/// all while another writer deletes some of them, and keeps live ones.
pub async fn flush_with_concurrent_deletes_removes_all_expired(ctx: Ctx) -> CaseResult {
    let expired = many(&ctx.store, 2100, -1000).await?;
    let keep = many(&ctx.store, 5, 3_600_000).await?;
    let deleter = {
        let store = ctx.store.clone();
        let ids: Vec<_> = expired.iter().step_by(3).map(Session::id).collect();
        tokio::spawn(async move {
            // Paced, so that the deletes overlap the whole clear or flush.
            for (n, id) in ids.iter().enumerate() {
                store.delete(id).await?;
                if n % 10 == 9 {
                    sleep_ms(1).await;
                }
            }
            Ok::<_, Failure>(())
        })
    };
    tokio::task::yield_now().await;
    let flushed = ctx.store.flush().await?;
    joined(vec![deleter]).await?;
    check!(
        flushed <= 2100,
        "flush reported {flushed} deletions of 2100 expired records"
    );
    let mut left = 0;
    for s in &expired {
        if ctx.store.exists(&s.id()).await? {
            left += 1;
        }
    }
    check!(left == 0, "{left} expired records survived flush");
    for s in &keep {
        check!(
            ctx.store.get(&s.id()).await?.is_some(),
            "flush removed a live session"
        );
    }
    Ok(())
}

/// Records revived with `set` while `flush` runs stay: after both finish
/// every revived record is live.
pub async fn flush_spares_records_set_meanwhile(ctx: Ctx) -> CaseResult {
    let expired = many(&ctx.store, 1200, -1000).await?;
    let flush = {
        let store = ctx.store.clone();
        tokio::spawn(async move { Ok::<_, Failure>(store.flush().await?) })
    };
    sleep_ms(2).await;
    let revived: Vec<Session> = expired
        .iter()
        .step_by(2)
        .map(|s| {
            let mut s = s.clone();
            s.set_expires_at(in_ms(3_600_000));
            s
        })
        .collect();
    let mut tasks = Vec::new();
    for chunk in revived.chunks(75) {
        let store = ctx.store.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for s in &chunk {
                store.set(s).await?;
            }
            Ok::<_, Failure>(())
        }));
    }
    joined(tasks).await?;
    joined(vec![flush]).await?;
    let mut lost = 0;
    for s in &revived {
        if ctx.store.get(&s.id()).await?.is_none() {
            lost += 1;
        }
    }
    check!(
        lost == 0,
        "flush deleted {lost} of {} records set live while it ran",
        revived.len()
    );
    Ok(())
}

/// `clear` leaves a namespace nested inside this one (Redis prefix
/// `app:admin:` inside `app:`) alone.
pub async fn clear_leaves_nested_namespace(ctx: Ctx) -> CaseResult {
    let Some(inner) = nested(&ctx).await else {
        return Ok(());
    };
    let (mine, theirs) = (live(), live());
    ctx.store.create(&mine).await?;
    inner.create(&theirs).await?;
    ctx.store.clear().await?;
    check!(
        inner.get(&theirs.id()).await?.is_some(),
        "clear deleted a nested namespace's session"
    );
    check!(
        !ctx.store.exists(&mine.id()).await?,
        "clear left its own session"
    );
    Ok(())
}

/// `len`, `get` and `delete` of a store never reach a namespace nested
/// inside its own, and the other way round.
pub async fn nested_namespace_is_foreign(ctx: Ctx) -> CaseResult {
    let Some(inner) = nested(&ctx).await else {
        return Ok(());
    };
    let (a, b, shared) = (live(), live(), live());
    inner.create(&a).await?;
    inner.create(&b).await?;
    inner.create(&shared).await?;
    let len = ctx.store.len().await?;
    check!(len == 0, "len counts {len} sessions of a nested namespace");
    check!(
        ctx.store.is_empty().await?,
        "is_empty sees a nested namespace"
    );
    check!(
        !ctx.store.exists(&a.id()).await?,
        "exists sees a nested namespace's session"
    );
    let mut mine = shared.clone();
    mine.insert("whose", "outer")?;
    ctx.store.create(&mine).await?;
    ctx.store.delete(&a.id()).await?;
    ctx.store.flush().await?;
    check!(
        inner.get(&a.id()).await?.is_some(),
        "delete crossed into a nested namespace"
    );
    check!(
        !inner
            .get(&shared.id())
            .await?
            .map(|s| s.contains_key("whose"))
            .unwrap_or(true),
        "the nested namespace sees the outer record under the same id"
    );
    check!(ctx.store.len().await? == 1, "outer len is not 1");
    check!(inner.len().await? == 3, "nested len is not 3");
    inner.clear().await?;
    check!(
        ctx.store.get(&mine.id()).await?.is_some(),
        "a nested namespace's clear deleted the outer session"
    );
    Ok(())
}

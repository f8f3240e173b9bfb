//! Cases for the manager's commit rules: a request that lost its session
//! to another one commits nothing, regenerate is a compare-and-set, flash
//! values are consumed by value, cookies are re-signed and never trusted
//! twice, expiry never moves backwards.

use std::time::Duration;

use cookie::{CookieJar, Key};

use super::{dev_config, issued_cookie, jar_with, manager, sleep_ms};
use crate::__check as check;
use crate::conformance::{CaseResult, Ctx, Failure};
use crate::{jar_from_cookie_headers, SessionConfig};

/// A request that saves after its session expired commits nothing and
/// leaves the cookie alone.
pub async fn manager_save_after_expiry_commits_nothing(ctx: Ctx) -> CaseResult {
    let config = SessionConfig {
        idle_timeout: Duration::from_millis(300),
        touch_after: Duration::ZERO,
        ..dev_config()
    };
    let m = manager(&ctx, config)?;
    let cookie = issued_cookie(&m, "n", 1).await?;
    let mut slow = m.start(&jar_with(&cookie)).await?;
    check!(!slow.is_new(), "the cookie did not load the session");
    sleep_ms(450).await;
    slow.insert("n", &2u64)?;
    let answer = slow.commit().await?;
    check!(
        answer.is_none(),
        "a save after expiry sent a cookie: {answer:?}"
    );
    check!(
        ctx.store.get(&slow.id()).await?.is_none(),
        "a save after expiry revived the session"
    );
    check!(
        ctx.store.len().await? == 0,
        "a save after expiry stored something"
    );
    Ok(())
}

/// A login (regenerate) racing a logout: the logout wins, nothing is
/// created, no cookie is sent.
pub async fn manager_regenerate_after_destroy_creates_nothing(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let cookie = issued_cookie(&m, "cart", 3).await?;
    let mut login = m.start(&jar_with(&cookie)).await?;
    let old_id = login.id();
    let mut logout = m.start(&jar_with(&cookie)).await?;
    logout.destroy();
    logout.commit().await?;
    login.regenerate()?;
    login.insert("user", "ada")?;
    let answer = login.commit().await?;
    check!(
        answer.is_none(),
        "a login after logout sent a cookie: {answer:?}"
    );
    check!(
        !ctx.store.exists(&old_id).await?,
        "the logged-out record came back"
    );
    check!(
        !ctx.store.exists(&login.id()).await?,
        "a login after logout created a record"
    );
    check!(
        ctx.store.len().await? == 0,
        "a login after logout stored something"
    );
    Ok(())
}

/// A save that lands between a login's load and its commit is carried
/// into the new record, with the login's own changes; the old id is gone.
pub async fn manager_regenerate_keeps_concurrent_save(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let cookie = issued_cookie(&m, "cart", 3).await?;
    let mut login = m.start(&jar_with(&cookie)).await?;
    let old_id = login.id();
    let mut other = m.start(&jar_with(&cookie)).await?;
    other.insert("theme", "dark")?;
    other.insert("cart", &4u64)?;
    other.commit().await?;
    login.regenerate()?;
    login.insert("user", "ada")?;
    let new = login
        .commit()
        .await?
        .ok_or_else(|| Failure("regenerate sent no cookie".into()))?;
    check!(
        !ctx.store.exists(&old_id).await?,
        "regenerate left the old record"
    );
    let s = m.start(&jar_with(&new)).await?;
    check!(!s.is_new(), "the new cookie loads nothing");
    check!(
        s.get::<String>("theme")?.as_deref() == Some("dark"),
        "regenerate dropped a save that landed meanwhile"
    );
    check!(
        s.get::<u64>("cart")? == Some(4),
        "regenerate overwrote a value saved meanwhile"
    );
    check!(
        s.get::<String>("user")?.as_deref() == Some("ada"),
        "regenerate lost its own change"
    );
    check!(ctx.store.len().await? == 1, "more than one record stored");
    Ok(())
}

/// A request that loaded the old id before a login, then commits a change:
/// nothing stored under either id, no cookie.
pub async fn manager_overlapping_login_commits_nothing(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let cookie = issued_cookie(&m, "n", 1).await?;
    let mut slow = m.start(&jar_with(&cookie)).await?;
    let old_id = slow.id();
    let mut login = m.start(&jar_with(&cookie)).await?;
    login.regenerate()?;
    let new = login
        .commit()
        .await?
        .ok_or_else(|| Failure("regenerate sent no cookie".into()))?;
    slow.insert("n", &2u64)?;
    slow.insert("stray", &1u8)?;
    let answer = slow.commit().await?;
    check!(
        answer.is_none(),
        "a save overlapping a login sent a cookie: {answer:?}"
    );
    check!(
        !ctx.store.exists(&old_id).await?,
        "a save overlapping a login recreated the old id"
    );
    let s = m.start(&jar_with(&new)).await?;
    check!(
        s.get::<u64>("n")? == Some(1) && !s.contains_key("stray"),
        "a save overlapping a login wrote into the new record"
    );
    check!(ctx.store.len().await? == 1, "more than one record stored");
    Ok(())
}

/// A read-only request whose touch is due, overlapping a login: no cookie,
/// the old id stays gone.
pub async fn manager_overlapping_login_due_touch_commits_nothing(ctx: Ctx) -> CaseResult {
    let config = SessionConfig {
        touch_after: Duration::ZERO,
        ..dev_config()
    };
    let m = manager(&ctx, config)?;
    let cookie = issued_cookie(&m, "n", 1).await?;
    sleep_ms(20).await;
    let mut slow = m.start(&jar_with(&cookie)).await?;
    let old_id = slow.id();
    let mut login = m.start(&jar_with(&cookie)).await?;
    login.regenerate()?;
    login.commit().await?;
    let answer = slow.commit().await?;
    check!(
        answer.is_none(),
        "a touch overlapping a login sent a cookie: {answer:?}"
    );
    check!(
        !ctx.store.exists(&old_id).await?,
        "a touch overlapping a login recreated the old id"
    );
    check!(ctx.store.len().await? == 1, "more than one record stored");
    Ok(())
}

/// Sets flash `msg = "first"` and returns the cookie.
async fn with_flash(
    ctx: &Ctx,
) -> Result<(crate::SessionManager, cookie::Cookie<'static>), Failure> {
    let m = manager(ctx, dev_config())?;
    let mut s = m.start(&CookieJar::new()).await?;
    s.flash("msg", "first")?;
    let cookie = s
        .commit()
        .await?
        .ok_or_else(|| Failure("a session with a flash sent no cookie".into()))?;
    Ok((m, cookie))
}

async fn flash_by_value(ctx: Ctx, reader_changes: bool) -> CaseResult {
    let (m, cookie) = with_flash(&ctx).await?;
    let mut reader = m.start(&jar_with(&cookie)).await?;
    check!(
        reader.get_flash::<String>("msg")?.as_deref() == Some("first"),
        "the flash did not reach the next request"
    );
    let mut writer = m.start(&jar_with(&cookie)).await?;
    writer.flash("msg", "second")?;
    writer.commit().await?;
    if reader_changes {
        reader.insert("k", &1u8)?;
    }
    reader.commit().await?;
    let mut next = m.start(&jar_with(&cookie)).await?;
    check!(
        next.get_flash::<String>("msg")?.as_deref() == Some("second"),
        "reading one flash value consumed a newer one set meanwhile"
    );
    if reader_changes {
        check!(
            next.get::<u8>("k")? == Some(1),
            "the reader's change was lost"
        );
    }
    Ok(())
}

/// Reading a flash consumes only the value read: a newer value set
/// meanwhile by another request survives a commit with no other changes.
pub async fn manager_flash_consumed_by_value(ctx: Ctx) -> CaseResult {
    flash_by_value(ctx, false).await
}

/// Same, when the reader also changes data (its commit conflicts and is
/// re-applied on the newer record).
pub async fn manager_flash_consumed_by_value_after_conflict(ctx: Ctx) -> CaseResult {
    flash_by_value(ctx, true).await
}

/// A flash value nobody reads stays for a later request, even across
/// commits that change data.
pub async fn manager_unread_flash_stays(ctx: Ctx) -> CaseResult {
    let (m, cookie) = with_flash(&ctx).await?;
    let mut busy = m.start(&jar_with(&cookie)).await?;
    busy.insert("k", &1u8)?;
    busy.commit().await?;
    let mut later = m.start(&jar_with(&cookie)).await?;
    check!(
        later.get_flash::<String>("msg")?.as_deref() == Some("first"),
        "an unread flash was dropped by a commit"
    );
    Ok(())
}

/// A cookie verified by an older key is re-issued signed with the first
/// key, even by a request with no changes, and that cookie works under a
/// manager that holds only the new key.
pub async fn manager_stale_key_cookie_reissued(ctx: Ctx) -> CaseResult {
    let (old_key, new_key) = (Key::generate(), Key::generate());
    let signed_with = |keys: Vec<Key>| SessionConfig {
        signing_keys: keys,
        ..dev_config()
    };
    let old = manager(&ctx, signed_with(vec![old_key.clone()]))?;
    let cookie = issued_cookie(&old, "n", 9).await?;
    let rotated = manager(&ctx, signed_with(vec![new_key.clone(), old_key]))?;
    let mut s = rotated.start(&jar_with(&cookie)).await?;
    check!(
        !s.is_new(),
        "a cookie signed by a verifying key did not load"
    );
    let reissued = s
        .commit()
        .await?
        .ok_or_else(|| Failure("a cookie signed by an older key was not re-issued".into()))?;
    check!(
        reissued.value() != cookie.value(),
        "the re-issued cookie is the old one"
    );
    let only_new = manager(&ctx, signed_with(vec![new_key]))?;
    let s = only_new.start(&jar_with(&reissued)).await?;
    check!(
        s.get::<u64>("n")? == Some(9),
        "the re-issued cookie does not load under the new key alone"
    );
    Ok(())
}

/// Two session cookies with different values: neither is trusted.
pub async fn manager_duplicate_cookies_start_fresh(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let a = issued_cookie(&m, "who", 1).await?;
    let b = issued_cookie(&m, "who", 2).await?;
    let header = format!("id={}; id={}", a.value(), b.value());
    let jar = jar_from_cookie_headers([header.as_str()]);
    let s = m.start(&jar).await?;
    check!(
        s.is_new(),
        "one of two different session cookies was trusted"
    );
    let split = [format!("id={}", a.value()), format!("id={}", b.value())];
    let jar = jar_from_cookie_headers(split.iter().map(String::as_str));
    let s = m.start(&jar).await?;
    check!(
        s.is_new(),
        "one of two session cookies in separate headers was trusted"
    );
    Ok(())
}

/// A request that loaded early and commits a change after a later request
/// moved the expiry further does not move it back.
pub async fn manager_expiry_never_moves_backwards(ctx: Ctx) -> CaseResult {
    let config = SessionConfig {
        idle_timeout: Duration::from_secs(60),
        touch_after: Duration::ZERO,
        ..dev_config()
    };
    let m = manager(&ctx, config)?;
    let cookie = issued_cookie(&m, "n", 1).await?;
    let mut early = m.start(&jar_with(&cookie)).await?;
    sleep_ms(300).await;
    let mut later = m.start(&jar_with(&cookie)).await?;
    later.commit().await?;
    let extended = ctx
        .store
        .get(&early.id())
        .await?
        .ok_or_else(|| Failure("the session is gone after a touch".into()))?
        .expires_at_millis();
    early.insert("n", &2u64)?;
    early.commit().await?;
    let back = ctx
        .store
        .get(&early.id())
        .await?
        .ok_or_else(|| Failure("the session is gone after a save".into()))?;
    check!(
        back.expires_at_millis() >= extended,
        "a slow save moved the expiry back from {extended} to {}",
        back.expires_at_millis()
    );
    check!(back.get::<u64>("n")? == Some(2), "the slow save was lost");
    Ok(())
}

/// `commit` again after a successful commit writes nothing.
pub async fn manager_second_commit_writes_nothing(ctx: Ctx) -> CaseResult {
    let m = manager(&ctx, dev_config())?;
    let cookie = issued_cookie(&m, "n", 1).await?;
    let mut s = m.start(&jar_with(&cookie)).await?;
    s.modify("n", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    s.commit().await?;
    let first = ctx
        .store
        .get(&s.id())
        .await?
        .ok_or_else(|| Failure("the session is gone after a commit".into()))?;
    let _ = s.commit().await?;
    let second = ctx
        .store
        .get(&s.id())
        .await?
        .ok_or_else(|| Failure("the session is gone after a second commit".into()))?;
    check!(
        second.version() == first.version(),
        "a second commit wrote again (version {} -> {})",
        first.version(),
        second.version()
    );
    check!(
        second.get::<u64>("n")? == Some(2),
        "a second commit applied the increment twice"
    );
    Ok(())
}

//! Adversarial review of lazy session values with the memory store, whose
//! records share their bytes with the sessions loaded from them: later
//! writes to the store never change what a loaded session reads, a loaded
//! session's changes never reach the store without a save, `touch` still
//! moves the expiry `get` reports, and the manager's conflict path replays
//! changes (flash consumption included) over a freshly loaded copy.

use std::sync::Arc;
use std::time::Duration;

use session_store::cookie::{Cookie, CookieJar};
use session_store::time::OffsetDateTime;
use session_store::{
    from_unix_millis, now_millis, Session, SessionConfig, SessionInterface, SessionManager,
    SessionToken, UpdateOutcome,
};
use session_store_memory::MemoryStore;

fn fresh() -> Session {
    let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(600));
    s.insert("a", &1u64).unwrap();
    s.insert("big", &"x".repeat(400)).unwrap();
    s.insert("z", &26u64).unwrap();
    s.insert_flash_bytes("notice", vec![1, 2, 3]);
    s
}

#[tokio::test]
async fn a_loaded_session_reads_the_same_after_the_record_is_updated_set_touched_or_deleted() {
    let store = MemoryStore::new();
    let s = fresh();
    store.create(&s).await.unwrap();
    let loaded = store.get(&s.id()).await.unwrap().unwrap();
    let snapshot_data = loaded.data().clone();
    let snapshot_flash = loaded.flash().clone();
    // A second copy that has built nothing yet: it reads the shared bytes.
    let lazy = store.get(&s.id()).await.unwrap().unwrap();

    let mut other = store.get(&s.id()).await.unwrap().unwrap();
    other.insert("a", &999u64).unwrap();
    other.remove("z");
    other.remove_flash("notice");
    other.insert_bytes("new", vec![9; 300]);
    assert!(matches!(
        store.update(&other, other.version()).await.unwrap(),
        UpdateOutcome::Updated { .. }
    ));
    let mut replaced = Session::new(s.id(), Duration::from_secs(600));
    replaced.insert("only", &1u8).unwrap();
    store.set(&replaced).await.unwrap();
    assert!(store
        .touch(
            &s.id(),
            OffsetDateTime::now_utc() + Duration::from_secs(3600)
        )
        .await
        .unwrap());
    store.delete(&s.id()).await.unwrap();

    for copy in [&loaded, &lazy] {
        assert_eq!(copy.get::<u64>("a").unwrap(), Some(1));
        assert_eq!(copy.get::<u64>("z").unwrap(), Some(26));
        assert_eq!(copy.get::<String>("big").unwrap(), Some("x".repeat(400)));
        assert_eq!(copy.value_bytes("new"), None);
        assert_eq!(copy.value_bytes("only"), None);
        assert_eq!(copy.flash_bytes("notice"), Some(&[1u8, 2, 3][..]));
        assert_eq!(copy.data(), &snapshot_data);
        assert_eq!(copy.flash(), &snapshot_flash);
        assert_eq!(copy.keys().collect::<Vec<_>>(), ["a", "big", "z"]);
    }
}

#[tokio::test]
async fn a_loaded_sessions_changes_do_not_reach_the_store_without_a_save() {
    let store = MemoryStore::new();
    let s = fresh();
    store.create(&s).await.unwrap();
    let before = store.get(&s.id()).await.unwrap().unwrap();

    let mut loaded = store.get(&s.id()).await.unwrap().unwrap();
    loaded.insert("a", &2u64).unwrap();
    loaded.remove("z");
    loaded.remove_flash("notice");
    loaded.insert_flash_bytes("other", vec![4]);
    let _ = loaded.data();
    loaded.data_mut().insert("m".into(), vec![5]);
    loaded.flash_mut().clear();
    let mut clone = loaded.clone();
    clone.data_mut().clear();

    let after = store.get(&s.id()).await.unwrap().unwrap();
    assert_eq!(after, before);
    assert_eq!(after.get::<u64>("a").unwrap(), Some(1));
    assert_eq!(after.get::<u64>("z").unwrap(), Some(26));
    assert_eq!(after.flash_bytes("notice"), Some(&[1u8, 2, 3][..]));
    assert_eq!(after.value_bytes("m"), None);

    // And the save writes exactly the loaded session's content.
    assert!(matches!(
        store.update(&loaded, loaded.version()).await.unwrap(),
        UpdateOutcome::Updated { .. }
    ));
    let saved = store.get(&s.id()).await.unwrap().unwrap();
    assert_eq!(saved.data(), loaded.data());
    assert_eq!(saved.flash(), loaded.flash());
    assert_eq!(saved.get::<u64>("a").unwrap(), Some(2));
    assert!(saved.flash().is_empty());
}

#[tokio::test]
async fn touch_moves_the_expiry_that_get_and_sessions_of_report_and_that_a_save_keeps() {
    let store = MemoryStore::new();
    let mut s = fresh();
    s.set_user(Some(
        session_store::UserBinding::new("ada", Default::default()).unwrap(),
    ));
    store.create(&s).await.unwrap();
    let stale = store.get(&s.id()).await.unwrap().unwrap();
    let later = now_millis() + 3_600_000;
    assert!(store.touch(&s.id(), from_unix_millis(later)).await.unwrap());
    let got = store.get(&s.id()).await.unwrap().unwrap();
    assert_eq!(got.expires_at_millis(), later);
    let listed = store.sessions_of("ada").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].expires_at_millis(), later);
    // An earlier touch never shortens it.
    assert!(store
        .touch(&s.id(), from_unix_millis(now_millis() + 1_000))
        .await
        .unwrap());
    assert_eq!(
        store
            .get(&s.id())
            .await
            .unwrap()
            .unwrap()
            .expires_at_millis(),
        later
    );
    // A save of a copy loaded before the touch keeps the later expiry.
    let mut stale = stale;
    stale.insert("a", &3u64).unwrap();
    assert!(matches!(
        store.update(&stale, stale.version()).await.unwrap(),
        UpdateOutcome::Updated { .. }
    ));
    let saved = store.get(&s.id()).await.unwrap().unwrap();
    assert_eq!(saved.expires_at_millis(), later);
    assert_eq!(saved.get::<u64>("a").unwrap(), Some(3));
    // An untouched re-save of the loaded copy (its bytes copied verbatim)
    // still reports the record's expiry.
    assert!(matches!(
        store.update(&saved, saved.version()).await.unwrap(),
        UpdateOutcome::Updated { .. }
    ));
    assert_eq!(
        store
            .get(&s.id())
            .await
            .unwrap()
            .unwrap()
            .expires_at_millis(),
        later
    );
}

fn dev() -> SessionConfig {
    SessionConfig {
        secure: false,
        ..SessionConfig::default()
    }
}

fn jar(cookie: &Cookie<'static>) -> CookieJar {
    let mut jar = CookieJar::new();
    jar.add_original(cookie.clone());
    jar
}

/// Two requests on one loaded session: the first consumes a flash value,
/// increments a counter, removes a key and sets one; the second (saved
/// first) sets a newer flash under the same key, increments too and adds a
/// key. The first's commit conflicts and replays its changes over a fresh
/// copy loaded from the store.
#[tokio::test]
async fn a_conflicting_commit_replays_flash_consumption_and_changes_over_the_fresh_copy() {
    let manager = SessionManager::new(Arc::new(MemoryStore::new()), dev()).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("count", &0u64).unwrap();
    s.insert("drop-me", &"x".repeat(300)).unwrap();
    s.insert("keep", &"k".to_owned()).unwrap();
    s.flash("notice", &"first").unwrap();
    s.flash("untouched", &"stays").unwrap();
    let cookie = s.commit().await.unwrap().expect("cookie");

    let mut a = manager.start(&jar(&cookie)).await.unwrap();
    let mut b = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(
        a.get_flash::<String>("notice").unwrap().as_deref(),
        Some("first")
    );
    a.modify("count", |n: Option<u64>| n.unwrap_or(0) + 1)
        .unwrap();
    assert!(a.remove("drop-me"));
    a.insert("from-a", &1u8).unwrap();

    b.flash("notice", &"second").unwrap();
    b.modify("count", |n: Option<u64>| n.unwrap_or(0) + 10)
        .unwrap();
    b.insert("from-b", &2u8).unwrap();
    b.commit().await.unwrap();

    a.commit().await.unwrap();
    assert_eq!(a.get::<u64>("count").unwrap(), Some(11));

    let mut c = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(c.get::<u64>("count").unwrap(), Some(11));
    assert_eq!(c.get::<String>("drop-me").unwrap(), None);
    assert_eq!(c.get::<String>("keep").unwrap().as_deref(), Some("k"));
    assert_eq!(c.get::<u8>("from-a").unwrap(), Some(1));
    assert_eq!(c.get::<u8>("from-b").unwrap(), Some(2));
    assert_eq!(c.keys(), ["count", "from-a", "from-b", "keep"]);
    // The newer flash survives the first request's consumption of the old.
    assert_eq!(
        c.get_flash::<String>("notice").unwrap().as_deref(),
        Some("second")
    );
    assert_eq!(
        c.get_flash::<String>("untouched").unwrap().as_deref(),
        Some("stays")
    );
    c.commit().await.unwrap();
    let mut d = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(d.get_flash::<String>("notice").unwrap(), None);
    assert_eq!(d.get_flash::<String>("untouched").unwrap(), None);
    assert_eq!(d.get::<u64>("count").unwrap(), Some(11));
}

/// A flash value consumed by one request and re-set (equal bytes) by a
/// racing one that saved first survives: consumption removes only the
/// value read, on a loaded copy whose flash map is still stored bytes.
#[tokio::test]
async fn an_equal_flash_set_by_a_racing_request_is_consumed_only_once() {
    let manager = SessionManager::new(Arc::new(MemoryStore::new()), dev()).unwrap();
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.flash("notice", &"same").unwrap();
    s.insert("n", &0u64).unwrap();
    let cookie = s.commit().await.unwrap().expect("cookie");

    let mut a = manager.start(&jar(&cookie)).await.unwrap();
    let mut b = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(
        a.get_flash::<String>("notice").unwrap().as_deref(),
        Some("same")
    );
    b.flash("notice", &"same").unwrap();
    b.commit().await.unwrap();
    a.commit().await.unwrap();
    let mut c = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(
        c.get_flash::<String>("notice").unwrap().as_deref(),
        Some("same"),
        "the flash set by the racing request was consumed by the earlier read"
    );
}

/// Many requests incrementing one counter at once through the memory
/// store's shared bytes: every increment counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_modifies_over_loaded_sessions_all_count() {
    let manager = Arc::new(SessionManager::new(Arc::new(MemoryStore::new()), dev()).unwrap());
    let mut s = manager.start(&CookieJar::new()).await.unwrap();
    s.insert("count", &0u64).unwrap();
    for n in 0..300 {
        s.insert(&format!("pad{n:03}"), &n).unwrap();
    }
    let cookie = s.commit().await.unwrap().expect("cookie");
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let (manager, cookie) = (manager.clone(), cookie.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..25u64 {
                let mut s = manager.start(&jar(&cookie)).await.unwrap();
                s.modify("count", |n: Option<u64>| n.unwrap_or(0) + 1)
                    .unwrap();
                let key = format!("w{worker}r{round}");
                s.insert(&key, &round).unwrap();
                if round % 3 == 0 {
                    s.remove(&format!("pad{:03}", worker * 25 + round));
                }
                s.commit().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let s = manager.start(&jar(&cookie)).await.unwrap();
    assert_eq!(s.get::<u64>("count").unwrap(), Some(200));
    for worker in 0..8u64 {
        for round in 0..25u64 {
            assert_eq!(
                s.get::<u64>(&format!("w{worker}r{round}")).unwrap(),
                Some(round)
            );
            let pad = format!("pad{:03}", worker * 25 + round);
            assert_eq!(s.contains_key(&pad), round % 3 != 0, "{pad}");
        }
    }
}

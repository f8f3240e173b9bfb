//! Adversarial review of e07cbc3 (contention pause in the commit loops,
//! relaxed increments conformance case) and 08177ab
//! (`session_jar_from_cookie_headers`).
#![cfg(feature = "conformance")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use session_store::conformance::{cases, factory, run_case, ReferenceStore};
use session_store::cookie::CookieJar;
use session_store::time::OffsetDateTime;
use session_store::{
    jar_from_cookie_headers, session_jar_from_cookie_headers, DeleteOutcome, Error, Result,
    Session, SessionConfig, SessionId, SessionInterface, SessionManager, UpdateOutcome,
};

/// A tiny deterministic PRNG so the header fuzz is reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

fn session_value(jar: &CookieJar, name: &str) -> Option<String> {
    jar.get(name).map(|c| c.value().to_owned())
}

/// Random header sets built from fragments that stress the prefilter
/// (`raw_name != name && !contains('%')`): encoded spellings of the name,
/// whitespace of every kind, `=` and `"` in odd places, unicode, empty
/// pieces, and the `__Host-` prefixed name.
#[test]
fn session_jar_agrees_with_full_jar_on_random_headers() {
    let fragments = [
        "id",
        "i",
        "d",
        "%69",
        "%64",
        "%6",
        "%",
        "%%",
        "%25",
        "=",
        "==",
        "a",
        "b",
        "%61",
        "\"",
        " ",
        "\t",
        "\u{a0}",
        "\u{2003}",
        ";",
        "; ",
        "__Host-",
        "__Host%2D",
        "%5F%5FHost-",
        "__host-",
        "\u{e9}",
        "%C3%A9",
        "%ff",
        "x",
        "-",
        "_",
        ".",
    ];
    let names = ["id", "__Host-id", "a", "i.d", "sess_id"];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut checked = 0;
    for _ in 0..60_000 {
        let header_count = 1 + rng.next() % 3;
        let mut headers = Vec::new();
        for _ in 0..header_count {
            let len = rng.next() % 14;
            let mut h = String::new();
            for _ in 0..len {
                h.push_str(rng.pick(&fragments));
            }
            headers.push(h);
        }
        for name in names {
            let full = jar_from_cookie_headers(headers.iter().map(String::as_str));
            let ours = session_jar_from_cookie_headers(headers.iter().map(String::as_str), name);
            assert_eq!(
                session_value(&full, name),
                session_value(&ours, name),
                "name {name:?}, headers {headers:?}"
            );
            assert!(ours.iter().count() <= 1, "extra cookies: {headers:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 300_000);
}

/// Hand-picked spellings: the same cookie sent as `id` and as `%69%64`
/// (with equal and with different values), the prefixed name spelt with an
/// encoded `-` or `_`, names padded with tabs and NBSP.
#[test]
fn session_jar_agrees_on_hand_picked_spellings() {
    let cases: &[&[&str]] = &[
        &["id=a; %69%64=a"],
        &["id=a; %69%64=b"],
        &["%69%64=a", "id=b"],
        &["%69%64=a", "id=a"],
        &["__Host-id=t; __Host%2Did=t"],
        &["__Host-id=t; __Host%2Did=u"],
        &["%5F%5FHost-id=u", "__Host-id=t"],
        &["\tid\t=\ta\t"],
        &["\u{a0}id\u{a0}=a"],
        &["id\u{a0}=a; id=a"],
        &["id\u{a0}=a; id=b"],
        &["id=\"a\"; id=a"],
        &["id==a; id=%3Da"],
        &["id=a b; id=a%20b"],
        &["id=a b; id=a%20c"],
        &["i%64=; id="],
        &["%69d", "id"],
        &["id=%ff; id=a"],
        &["%69%64=%ff; id=a"],
        &["id=a;;;; ;id=a"],
        &["id%=a; id=b"],
        &["%=a; id=b"],
    ];
    for headers in cases {
        for name in ["id", "__Host-id"] {
            let full = jar_from_cookie_headers(headers.iter().copied());
            let ours = session_jar_from_cookie_headers(headers.iter().copied(), name);
            assert_eq!(
                session_value(&full, name),
                session_value(&ours, name),
                "name {name:?}, headers {headers:?}"
            );
        }
    }
}

/// The manager reads nothing but the session cookie, in every mode the
/// layers use: store-backed with signing (including a rotated key) and
/// cookie-only. The only-session-cookie jar starts the same session as
/// the full jar even with many other cookies around it.
#[tokio::test]
async fn manager_needs_only_the_session_cookie() {
    use session_store::cookie::Key;
    let old = Key::generate();
    let new = Key::generate();
    let secure = |keys: Vec<Key>| SessionConfig {
        secure: true,
        host_prefix: true,
        signing_keys: keys,
        ..SessionConfig::default()
    };
    // Store-backed, signed with the old key, read after rotation.
    let store: Arc<dyn SessionInterface> = Arc::new(ReferenceStore::new());
    let before = SessionManager::new(store.clone(), secure(vec![old.clone()])).expect("config");
    let mut s = before.start(&CookieJar::new()).await.expect("start");
    s.insert("k", &7u32).expect("insert");
    let cookie = s.commit().await.expect("commit").expect("cookie");
    assert_eq!(cookie.name(), "__Host-id");
    let after = SessionManager::new(store, secure(vec![new.clone(), old.clone()])).expect("config");
    let header = format!("a=1; {}={}; b=2; id=zz", cookie.name(), cookie.value());
    let name = after.config().effective_cookie_name();
    let jar = session_jar_from_cookie_headers([header.as_str()], &name);
    let mut s = after.start(&jar).await.expect("start");
    assert!(!s.is_new());
    assert_eq!(s.get::<u32>("k").expect("get"), Some(7));
    s.insert("k", &8u32).expect("insert");
    let reissued = s.commit().await.expect("commit");
    assert!(reissued.is_some(), "a stale-key cookie is re-issued");

    // Cookie-only, sealed with the old key, read after rotation.
    let before = SessionManager::cookie_only(vec![old.clone()], secure(vec![])).expect("config");
    let mut s = before.start(&CookieJar::new()).await.expect("start");
    s.insert("k", &9u32).expect("insert");
    let cookie = s.commit().await.expect("commit").expect("cookie");
    let after = SessionManager::cookie_only(vec![new, old], secure(vec![])).expect("config");
    let header = format!("x=y; {}={}; __Host-other=1", cookie.name(), cookie.value());
    let name = after.config().effective_cookie_name();
    let jar = session_jar_from_cookie_headers([header.as_str()], &name);
    let mut s = after.start(&jar).await.expect("start");
    assert!(!s.is_new());
    assert_eq!(s.get::<u32>("k").expect("get"), Some(9));
    s.insert("k", &10u32).expect("insert");
    assert!(s.commit().await.expect("commit").is_some());
}

/// A reference store that applies every update and then loses the reply.
/// The manager re-reads, finds its write id and acknowledges: the relaxed
/// increments case must still see 64 acknowledged, not 64 "in doubt".
#[derive(Debug, Default)]
struct AppliedThenLost {
    inner: ReferenceStore,
    updates: AtomicU64,
    /// Instead of losing replies, yield before every update and read, as
    /// any networked store does (so writers interleave on one thread).
    yielding: bool,
    /// Answer every update with `Conflict` (a record other writers always
    /// win), applying nothing.
    always_conflict: bool,
}

#[async_trait]
impl SessionInterface for AppliedThenLost {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        if self.yielding {
            tokio::task::yield_now().await;
        }
        self.inner.get(id).await
    }
    async fn set(&self, session: &Session) -> Result<()> {
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Session) -> Result<()> {
        self.inner.create(session).await
    }
    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        if self.always_conflict {
            self.updates.fetch_add(1, Ordering::SeqCst);
            return Ok(UpdateOutcome::Conflict);
        }
        if self.yielding {
            tokio::task::yield_now().await;
            return self.inner.update(session, expected_version).await;
        }
        let outcome = self.inner.update(session, expected_version).await?;
        if matches!(outcome, UpdateOutcome::Updated { .. }) {
            self.updates.fetch_add(1, Ordering::SeqCst);
            return Err(Error::backend("lossy", "update", "timed out after 1ms"));
        }
        Ok(outcome)
    }
    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        self.inner.delete_if(id, expected_version).await
    }
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        self.inner.touch(id, expires_at).await
    }
    async fn flush(&self) -> Result<u64> {
        self.inner.flush().await
    }
    async fn len(&self) -> Result<u64> {
        self.inner.len().await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_case_passes_a_store_that_loses_every_reply() {
    let outcome = run_case(
        |ctx| Box::pin(cases::manager_concurrent_increments_exact(ctx)),
        Arc::new(factory(|| async {
            Some(Arc::new(AppliedThenLost::default()) as Arc<dyn SessionInterface>)
        })),
    )
    .await;
    assert_eq!(outcome, Ok(true));
}

/// How long a commit that never wins now holds its request before
/// `Error::Contention`: 128 attempts, of which 123 sleep a random share of
/// 1..16 ms windows. Measured on tokio's paused clock (which auto-advances,
/// so the pause cannot hang there); before e07cbc3 this was no time at all.
#[tokio::test(start_paused = true)]
async fn a_commit_that_never_wins_waits_about_a_second() {
    let store = Arc::new(AppliedThenLost::default());
    let m = SessionManager::new(
        store.clone() as Arc<dyn SessionInterface>,
        SessionConfig {
            secure: false,
            ..SessionConfig::default()
        },
    )
    .expect("config");
    let mut s = m.start(&CookieJar::new()).await.expect("start");
    s.insert("n", &0u64).expect("insert");
    let cookie = s.commit().await.expect("commit").expect("cookie");
    let mut jar = CookieJar::new();
    jar.add_original(cookie);
    let mut s = m.start(&jar).await.expect("start");
    s.insert("n", &1u64).expect("insert");
    // Swap in the losing behaviour only now, through a second manager.
    let losing = Arc::new(AppliedThenLost {
        always_conflict: true,
        ..AppliedThenLost::default()
    });
    drop(s);
    let record = store
        .get(&jar_id(&m, &jar).await)
        .await
        .expect("get")
        .expect("live");
    losing.inner.set(&record).await.expect("set");
    let m = SessionManager::new(
        losing.clone() as Arc<dyn SessionInterface>,
        SessionConfig {
            secure: false,
            ..SessionConfig::default()
        },
    )
    .expect("config");
    let mut s = m.start(&jar).await.expect("start");
    assert!(!s.is_new());
    s.insert("n", &2u64).expect("insert");
    let start = tokio::time::Instant::now();
    let outcome = s.commit().await;
    let waited = start.elapsed();
    assert!(
        matches!(outcome, Err(Error::Contention { attempts: 128, .. })),
        "{outcome:?}"
    );
    assert_eq!(losing.updates.load(Ordering::SeqCst), 128);
    eprintln!("a commit that never wins waited {waited:?} before Contention");
    assert!(
        waited > Duration::from_millis(500) && waited < Duration::from_millis(2000),
        "waited {waited:?}"
    );
}

async fn jar_id(m: &SessionManager, jar: &CookieJar) -> SessionId {
    m.start(jar).await.expect("start").id()
}

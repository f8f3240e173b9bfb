//! Hostile input, table-driven, through the SessionManager and the axum
//! layer: every row gets a fresh session (never a 500, never a panic), and a
//! counting wrapper store proves no malformed id ever reached a store.
#![cfg(all(feature = "memory", feature = "axum"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header::COOKIE, HeaderValue, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use server_session::axum::{Session as AxumSession, SessionLayer, SessionRejection};
use server_session::cookie::{Cookie, CookieJar, Key};
use server_session::time::OffsetDateTime;
use server_session::{
    async_trait, jar_from_cookie_headers, DeleteOutcome, MemoryStore, Result, Session,
    SessionConfig, SessionId, SessionInterface, SessionManager, SessionToken, UpdateOutcome,
};
use tower::ServiceExt as _;

/// Records every id any operation received.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryStore,
    seen: common::Made<SessionId>,
}

#[async_trait]
impl SessionInterface for Counting {
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        self.seen.keep(*id);
        self.inner.exists(id).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>> {
        self.seen.keep(*id);
        self.inner.get(id).await
    }
    async fn set(&self, session: &Session) -> Result<()> {
        self.seen.keep(session.id());
        self.inner.set(session).await
    }
    async fn delete(&self, id: &SessionId) -> Result<()> {
        self.seen.keep(*id);
        self.inner.delete(id).await
    }
    async fn create(&self, session: &Session) -> Result<()> {
        self.seen.keep(session.id());
        self.inner.create(session).await
    }
    async fn update(&self, session: &Session, expected_version: u64) -> Result<UpdateOutcome> {
        self.seen.keep(session.id());
        self.inner.update(session, expected_version).await
    }
    async fn delete_if(&self, id: &SessionId, expected_version: u64) -> Result<DeleteOutcome> {
        self.seen.keep(*id);
        self.inner.delete_if(id, expected_version).await
    }
    async fn touch(&self, id: &SessionId, expires_at: OffsetDateTime) -> Result<bool> {
        self.seen.keep(*id);
        self.inner.touch(id, expires_at).await
    }
    async fn flush(&self) -> Result<u64> {
        self.inner.flush().await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
    async fn len(&self) -> Result<u64> {
        self.inner.len().await
    }
}

fn signed(key: &Key, value: &str) -> String {
    let mut jar = CookieJar::new();
    jar.signed_mut(key).add(Cookie::new("id", value.to_owned()));
    format!(
        "id={}",
        jar.get("id")
            .map(|c| c.value().to_owned())
            .unwrap_or_default()
    )
}

/// What a row may make the store see.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reaches {
    /// Nothing: refused before any store call.
    Nothing,
    /// Only a lookup of this well-formed, server-side unknown id.
    LookupOf(SessionId),
}

struct Row {
    name: &'static str,
    headers: Vec<String>,
    reaches: Reaches,
}

async fn rows(store: &Counting, current: &Key, retired: &Key) -> Vec<Row> {
    // An expired session the server really issued.
    let expired_token = SessionToken::generate();
    let mut old = Session::new(expired_token.id(), Duration::from_secs(1));
    old.set_expires_at_millis(server_session::now_millis() - 1000);
    store.inner.set(&old).await.expect("seed expired");
    // A live session, for the signature rows.
    let live_token = SessionToken::generate();
    let live = Session::new(live_token.id(), Duration::from_secs(600));
    store.inner.create(&live).await.expect("seed live");
    let never_issued = SessionToken::generate();
    let tampered = {
        let good = signed(current, live_token.as_str());
        let mut bytes = good.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).expect("ascii")
    };
    vec![
        Row {
            name: "10 KB value",
            headers: vec![format!("id={}", "A".repeat(10_240))],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "invalid base64",
            headers: vec!["id=!!!not*base64~~~~~~~~~~~".into()],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "NUL bytes",
            headers: vec!["id=AAAAAAAAAA\0AAAAAAAAAAAAAAAAAAAAAA".into()],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "unicode",
            headers: vec!["id=ééééééééééééééééééééééééééééé🎉".into()],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "path traversal",
            headers: vec!["id=../../../../etc/passwd".into()],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "empty",
            headers: vec!["id=".into()],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "unsigned valid token",
            headers: vec![format!("id={}", live_token.as_str())],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "bad signature",
            headers: vec![tampered],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "retired key's signature",
            headers: vec![signed(retired, live_token.as_str())],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "signed garbage",
            headers: vec![signed(current, "../../etc/passwd")],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "expired session's id",
            headers: vec![signed(current, expired_token.as_str())],
            reaches: Reaches::LookupOf(expired_token.id()),
        },
        Row {
            name: "id the server never issued (signed by a stolen key)",
            headers: vec![signed(current, never_issued.as_str())],
            reaches: Reaches::LookupOf(never_issued.id()),
        },
        Row {
            // A sibling subdomain planted a second `id` (cookie tossing):
            // neither value is trusted, not even the one we issued.
            name: "duplicate session cookies, one genuine",
            headers: vec![format!(
                "{}; {}",
                signed(current, live_token.as_str()),
                signed(current, never_issued.as_str())
            )],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "duplicate session cookies in two headers",
            headers: vec![
                signed(current, never_issued.as_str()),
                signed(current, live_token.as_str()),
            ],
            reaches: Reaches::Nothing,
        },
        Row {
            name: "many Cookie headers at once",
            headers: (0..200).map(|i| format!("id=junk{i}; other=x")).collect(),
            reaches: Reaches::Nothing,
        },
    ]
}

fn config(current: &Key, previous: &Key) -> SessionConfig {
    SessionConfig {
        secure: false,
        signing_keys: vec![current.clone(), previous.clone()],
        ..SessionConfig::default()
    }
}

#[tokio::test]
async fn hostile_cookies_through_the_manager() {
    let store = Arc::new(Counting::default());
    let (current, previous, retired) = (Key::generate(), Key::generate(), Key::generate());
    let manager = SessionManager::new(store.clone(), config(&current, &previous)).expect("manager");
    for row in rows(&store, &current, &retired).await {
        store.seen.take();
        let jar = jar_from_cookie_headers(row.headers.iter().map(String::as_str));
        let mut session = manager
            .start(&jar)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", row.name));
        assert!(session.is_new(), "{}: loaded a session", row.name);
        let seen = store.seen.take();
        match row.reaches {
            Reaches::Nothing => assert!(
                seen.is_empty(),
                "{}: reached the store with {seen:?}",
                row.name
            ),
            Reaches::LookupOf(id) => assert_eq!(seen, vec![id], "{}", row.name),
        }
        session.insert("k", &1u8).expect("insert");
        let cookie = session
            .commit()
            .await
            .expect("commit")
            .expect("a new cookie");
        for sent in &row.headers {
            assert!(
                !sent.contains(cookie.value()),
                "{}: the client's value was adopted",
                row.name
            );
        }
        let created = store.seen.take();
        assert_eq!(
            created,
            vec![session.id()],
            "{}: stored under an unexpected id",
            row.name
        );
        if let Reaches::LookupOf(id) = row.reaches {
            assert_ne!(session.id(), id, "{}: the unknown id was adopted", row.name);
        }
    }
}

async fn touch_session(
    session: AxumSession,
) -> std::result::Result<&'static str, SessionRejection> {
    session.modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    Ok("ok")
}

#[tokio::test]
async fn hostile_cookies_through_the_axum_layer() {
    let store = Arc::new(Counting::default());
    let (current, previous, retired) = (Key::generate(), Key::generate(), Key::generate());
    let manager = SessionManager::new(store.clone(), config(&current, &previous)).expect("manager");
    let rows = rows(&store, &current, &retired).await;
    through_axum(manager, &store, rows).await;
}

/// Every row through the layer answers 200 with a fresh session's cookie,
/// and the store sees at most the row's one lookup and the fresh id.
async fn through_axum(manager: SessionManager, store: &Counting, rows: Vec<Row>) {
    let app = Router::new()
        .route("/", get(touch_session))
        .layer(SessionLayer::new(Arc::new(manager)));
    for row in rows {
        store.seen.take();
        let mut request = Request::get("/");
        let values: Vec<_> = row
            .headers
            .iter()
            .map(|h| HeaderValue::from_bytes(h.as_bytes()))
            .collect();
        if values.iter().any(Result::is_err) {
            // Not a valid header value (a NUL byte): the HTTP server rejects
            // the request before any application code sees it.
            continue;
        }
        for value in values.into_iter().flatten() {
            request = request.header(COOKIE, value);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "{}", row.name);
        assert!(
            response.headers().contains_key("set-cookie"),
            "{}: no fresh session",
            row.name
        );
        let seen = store.seen.take();
        let lookups: Vec<_> = seen
            .iter()
            .filter(|id| matches!(row.reaches, Reaches::LookupOf(x) if x == **id))
            .collect();
        // Besides the one lookup allowed, the store saw only the fresh session's id.
        assert!(seen.len() - lookups.len() <= 1, "{}: {seen:?}", row.name);
    }
}

/// Cookie-only sessions: a sealed session that was really issued, then
/// ways to spoil it.
async fn sealed_rows(current: &Key, retired: &Key) -> Vec<Row> {
    async fn issued(key: &Key) -> String {
        let manager =
            SessionManager::cookie_only(vec![key.clone()], cookie_only_config()).expect("manager");
        let mut session = manager.start(&CookieJar::new()).await.expect("start");
        session.insert("role", "admin").expect("insert");
        let cookie = session.commit().await.expect("commit").expect("cookie");
        cookie.value().to_owned()
    }
    let genuine = issued(current).await;
    let flipped = {
        let mut bytes = genuine.clone().into_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).expect("ascii")
    };
    let sealed_garbage = {
        let mut jar = CookieJar::new();
        jar.private_mut(current).add(Cookie::new(
            "id",
            format!("{}.////not-a-record", SessionToken::generate().as_str()),
        ));
        url_safe(jar.get("id").map(|c| c.value()).unwrap_or_default())
    };
    let sealed_without_record = {
        let mut jar = CookieJar::new();
        jar.private_mut(current).add(Cookie::new(
            "id",
            SessionToken::generate().as_str().to_owned(),
        ));
        url_safe(jar.get("id").map(|c| c.value()).unwrap_or_default())
    };
    let row = |name, value: String| Row {
        name,
        headers: vec![format!("id={value}")],
        reaches: Reaches::Nothing,
    };
    vec![
        row("sealed, one byte flipped", flipped),
        row("sealed, truncated", genuine[..genuine.len() / 2].to_owned()),
        row("sealed with a retired key", issued(retired).await),
        row("sealed garbage record", sealed_garbage),
        row("sealed token without a record", sealed_without_record),
        row(
            "sealed, oversized",
            format!("{genuine}{}", "A".repeat(4096)),
        ),
        Row {
            name: "sealed, duplicated with another value",
            headers: vec![format!("id={genuine}; id={}", issued(current).await)],
            reaches: Reaches::Nothing,
        },
    ]
}

/// The private jar's standard base64 re-encoded URL-safe, as the manager
/// sends sealed cookies.
fn url_safe(sealed: &str) -> String {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    URL_SAFE_NO_PAD.encode(STANDARD.decode(sealed).expect("the jar writes base64"))
}

fn cookie_only_config() -> SessionConfig {
    SessionConfig {
        secure: false,
        ..SessionConfig::default()
    }
}

#[tokio::test]
async fn hostile_cookies_through_a_cookie_only_manager() {
    let store = Counting::default();
    let (current, previous, retired) = (Key::generate(), Key::generate(), Key::generate());
    let manager =
        SessionManager::cookie_only(vec![current.clone(), previous], cookie_only_config())
            .expect("manager");
    let mut all = rows(&store, &current, &retired).await;
    all.extend(sealed_rows(&current, &retired).await);
    for row in all {
        let jar = jar_from_cookie_headers(row.headers.iter().map(String::as_str));
        let mut session = manager
            .start(&jar)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", row.name));
        assert!(session.is_new(), "{}: loaded a session", row.name);
        assert_eq!(
            session.get::<String>("role").expect("get"),
            None,
            "{}",
            row.name
        );
        session.insert("k", &1u8).expect("insert");
        let cookie = session
            .commit()
            .await
            .expect("commit")
            .expect("a new cookie");
        for sent in &row.headers {
            assert!(
                !sent.contains(cookie.value()),
                "{}: the client's value was adopted",
                row.name
            );
        }
    }
}

#[tokio::test]
async fn hostile_cookies_through_the_axum_layer_on_cookie_only_sessions() {
    let store = Counting::default();
    let (current, retired) = (Key::generate(), Key::generate());
    let manager =
        SessionManager::cookie_only(vec![current.clone()], cookie_only_config()).expect("manager");
    let mut all = rows(&store, &current, &retired).await;
    all.extend(sealed_rows(&current, &retired).await);
    for row in &mut all {
        // The manager has no store: nothing can reach one.
        row.reaches = Reaches::Nothing;
    }
    through_axum(manager, &store, all).await;
}

//! A tiny HTTP client for the scenarios: plain `GET`s over loopback, and a
//! [`Browser`] that keeps a cookie jar like a browser would.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::Server;

/// How long one request may take before the scenario fails: generous for a
/// loaded machine, short enough that a hung server fails the test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What a server answered.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// Every `Set-Cookie` header, as sent.
    pub set_cookies: Vec<String>,
    /// The `Cache-Control` header, if any.
    pub cache_control: Option<String>,
    /// The body, as (lossy) UTF-8.
    pub body: String,
}

impl Reply {
    /// The value a `Set-Cookie` header gives cookie `name`, if one does.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies
            .iter()
            .filter_map(|header| parse_set_cookie(header))
            .find(|set| set.name == name)
            .map(|set| set.value)
    }

    /// Whether any `Set-Cookie` header was sent.
    pub fn sets_cookie(&self) -> bool {
        !self.set_cookies.is_empty()
    }

    /// Whether the response may not be stored by caches.
    pub fn is_no_store(&self) -> bool {
        self.cache_control
            .as_deref()
            .is_some_and(|cc| cc.split(',').any(|d| d.trim() == "no-store"))
    }
}

struct SetCookie {
    name: String,
    value: String,
    /// `Max-Age` of zero or less: the browser deletes the cookie.
    removal: bool,
}

fn parse_set_cookie(header: &str) -> Option<SetCookie> {
    let mut parts = header.split(';');
    let (name, value) = parts.next()?.trim().split_once('=')?;
    let removal = parts.any(|attr| {
        attr.trim().split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("max-age")
                && v.trim().parse::<i64>().is_ok_and(|s| s <= 0)
        })
    });
    Some(SetCookie {
        name: name.trim().to_owned(),
        value: value.trim().to_owned(),
        removal,
    })
}

async fn send(client: &HttpClient, url: &str, cookies: &[Vec<u8>]) -> Result<Reply, String> {
    let mut request = Request::get(url);
    for cookie in cookies {
        let value = HeaderValue::from_bytes(cookie)
            .map_err(|e| format!("not a valid header value {cookie:?}: {e}"))?;
        request = request.header(COOKIE, value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {url}: reading the body: {e}"))?
            .to_bytes();
        Ok::<_, String>(Reply {
            status,
            set_cookies: headers
                .get_all(SET_COOKIE)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect(),
            cache_control: headers
                .get(CACHE_CONTROL)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("GET {url}: no answer within {REQUEST_TIMEOUT:?}"))?
}

/// One `GET` of `path` with exactly the given `Cookie` header values (raw
/// bytes, one header each), outside any browser's jar. `Err` on a
/// transport failure (the server dropped the connection, a timeout).
pub async fn get_with_cookies(
    server: &Server,
    path: &str,
    cookies: &[Vec<u8>],
) -> Result<Reply, String> {
    send(&client(), &format!("{}{path}", server.base), cookies).await
}

/// A simulated browser: sends its cookies with each request and keeps what
/// `Set-Cookie` answers (a `Max-Age=0` deletes). Requests may run
/// concurrently (`&self`).
pub struct Browser {
    base: String,
    client: HttpClient,
    jar: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("base", &self.base).finish()
    }
}

impl Browser {
    /// A browser with an empty jar, talking to `server`.
    pub fn new(server: &Server) -> Self {
        Browser {
            base: server.base.clone(),
            client: client(),
            jar: Mutex::new(BTreeMap::new()),
        }
    }

    fn jar(&self) -> MutexGuard<'_, BTreeMap<String, String>> {
        // Only this module writes the jar, without panicking in between.
        self.jar.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET path` with the jar's cookies; panics on a transport failure.
    pub async fn get(&self, path: &str) -> Reply {
        match self.try_get(path).await {
            Ok(reply) => reply,
            Err(e) => panic!("{e}"),
        }
    }

    /// `GET path` with the jar's cookies; the jar takes the answer's
    /// cookies. `Err` on a transport failure.
    pub async fn try_get(&self, path: &str) -> Result<Reply, String> {
        let header = self.cookie_header();
        let cookies: Vec<Vec<u8>> = header.into_iter().map(String::into_bytes).collect();
        let reply = send(&self.client, &format!("{}{path}", self.base), &cookies).await?;
        let mut jar = self.jar();
        for set in reply.set_cookies.iter().filter_map(|h| parse_set_cookie(h)) {
            if set.removal {
                jar.remove(&set.name);
            } else {
                jar.insert(set.name, set.value);
            }
        }
        Ok(reply)
    }

    /// The `Cookie` header this browser sends now, if it holds any cookie.
    pub fn cookie_header(&self) -> Option<String> {
        let jar = self.jar();
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// The value of cookie `name` in the jar.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar().get(name).cloned()
    }

    /// Puts cookie `name` = `value` in the jar (an old cookie replayed).
    pub fn set_cookie(&self, name: &str, value: &str) {
        self.jar().insert(name.to_owned(), value.to_owned());
    }

    /// Empties the jar.
    pub fn forget(&self) {
        self.jar().clear();
    }
}

//! Reading the session cookie from a request and writing it back: the
//! duplicate-cookie rule, signature checks and key rotation.

use std::borrow::Cow;
use std::collections::HashMap;

use cookie::{Cookie, CookieJar};

use crate::config::SessionConfig;
use crate::error::{Error, Result};

/// Builds a cookie jar from the values of a request's `Cookie` headers.
/// Pieces that do not parse are skipped.
///
/// **Duplicates.** A name sent twice with the same value is kept once. A
/// name sent twice with *different* values is dropped altogether: a browser
/// sends two cookies of one name when another site under the same parent
/// domain planted one ("cookie tossing"), and neither "first wins" nor "last
/// wins" can tell which is ours. The request then starts a fresh session;
/// the `__Host-` prefix (on by default whenever the cookie is `Secure`, see
/// [`SessionConfig::host_prefix`]) keeps such cookies out in the first place.
pub fn jar_from_cookie_headers<'a>(headers: impl IntoIterator<Item = &'a str>) -> CookieJar {
    let mut seen: HashMap<String, Option<Cookie<'static>>> = HashMap::new();
    let mut order = Vec::new();
    for header in headers {
        for cookie in Cookie::split_parse_encoded(header.to_owned()).flatten() {
            let cookie = cookie.into_owned();
            match seen.get_mut(cookie.name()) {
                None => {
                    order.push(cookie.name().to_owned());
                    seen.insert(cookie.name().to_owned(), Some(cookie));
                }
                Some(slot) => {
                    if slot
                        .as_ref()
                        .is_some_and(|kept| kept.value() != cookie.value())
                    {
                        *slot = None;
                    }
                }
            }
        }
    }
    let mut jar = CookieJar::new();
    for name in order {
        match seen.remove(&name).flatten() {
            Some(cookie) => jar.add_original(cookie),
            None => {
                tracing::debug!(cookie = %name, "cookie sent twice with different values; ignored")
            }
        }
    }
    jar
}

/// What [`jar_from_cookie_headers`] would build, but holding only the
/// cookie called `name` (the session cookie): the same parsing and the same
/// duplicate rule, without parsing, copying and hashing every other cookie
/// of the request.
pub fn session_jar_from_cookie_headers<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    name: &str,
) -> CookieJar {
    let mut jar = CookieJar::new();
    if let Some(value) = session_cookie_value(headers, name) {
        jar.add_original(Cookie::new(name.to_owned(), value.into_owned()));
    }
    jar
}

/// The value of the cookie called `name` (the session cookie) in a
/// request's `Cookie` headers, percent-decoded, as
/// [`jar_from_cookie_headers`] would hold it: `None` when absent, and when
/// sent twice with different values (see there). This is what the
/// framework layers use on every request, with
/// [`SessionManager::start_from_value`](crate::SessionManager::start_from_value):
/// a value with nothing to decode (a token) is borrowed from the header,
/// and no other cookie is parsed.
pub fn session_cookie_value<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    name: &str,
) -> Option<Cow<'a, str>> {
    // `None`: not seen; `Some(None)`: seen with two different values.
    let mut found: Option<Option<Cow<'a, str>>> = None;
    for header in headers {
        for piece in header.split(';') {
            // As the cookie parser splits a pair: at the first `=`, both
            // sides trimmed; a piece without `=` is no cookie.
            let Some((raw_name, raw_value)) = piece.split_once('=') else {
                continue;
            };
            let (raw_name, raw_value) = (raw_name.trim(), raw_value.trim());
            // Nor is one without a name.
            if raw_name.is_empty() {
                continue;
            }
            let encoded_name = raw_name.contains('%');
            let value = if !encoded_name && raw_name == name && !raw_value.contains('%') {
                Cow::Borrowed(raw_value)
            } else if encoded_name || raw_name == name {
                // Percent-encoded: the name may decode to ours, and the
                // value decodes. Let the parser say.
                match Cookie::parse_encoded(piece.trim()) {
                    Ok(cookie) if cookie.name() == name => Cow::Owned(cookie.value().to_owned()),
                    _ => continue,
                }
            } else {
                continue;
            };
            match &mut found {
                None => found = Some(Some(value)),
                Some(slot) => {
                    if slot.as_ref().is_some_and(|kept| *kept != value) {
                        *slot = None;
                    }
                }
            }
        }
    }
    match found {
        Some(Some(value)) => Some(value),
        Some(None) => {
            tracing::debug!(cookie = %name, "cookie sent twice with different values; ignored");
            None
        }
        None => None,
    }
}

/// The session cookie's value as this request presented it.
pub(crate) struct Presented<'a> {
    /// The token, verified when signing is on.
    pub token: Cow<'a, str>,
    /// Verified by a signing key other than the first: re-issue it.
    pub stale_key: bool,
}

/// The token in the value of the session cookie called `name` (the
/// signature covers the name too), verified when signing is on.
pub(crate) fn presented_token<'a>(
    config: &SessionConfig,
    name: &str,
    value: &'a str,
) -> Option<Presented<'a>> {
    if config.signing_keys.is_empty() {
        return Some(Presented {
            token: Cow::Borrowed(value),
            stale_key: false,
        });
    }
    // The cookie crate checks the signature; its parent jar stays empty.
    let jar = CookieJar::new();
    config
        .signing_keys
        .iter()
        .enumerate()
        .find_map(|(index, key)| {
            let cookie = Cookie::new(name.to_owned(), value.to_owned());
            jar.signed(key).verify(cookie).map(|c| Presented {
                token: Cow::Owned(c.value().to_owned()),
                stale_key: index > 0,
            })
        })
}

pub(crate) fn base_cookie(config: &SessionConfig, value: String) -> Cookie<'static> {
    let mut cookie = Cookie::build((config.effective_cookie_name().into_owned(), value))
        .http_only(config.http_only)
        .same_site(config.same_site)
        .secure(config.secure)
        .path(config.path.clone());
    if let Some(domain) = &config.domain {
        cookie = cookie.domain(domain.clone());
    }
    cookie.build()
}

/// The cookie carrying `token`, signed with the first key when signing is
/// on, with a `Max-Age` of `remaining_seconds` when the config is persistent.
pub(crate) fn session_cookie(
    config: &SessionConfig,
    token: &str,
    remaining_seconds: u64,
) -> Result<Cookie<'static>> {
    let mut cookie = base_cookie(config, token.to_owned());
    if config.persistent {
        cookie.set_max_age(time::Duration::seconds(
            remaining_seconds.min(i64::MAX as u64) as i64,
        ));
    }
    let Some(key) = config.signing_keys.first() else {
        return Ok(cookie);
    };
    let name = cookie.name().to_owned();
    let mut jar = CookieJar::new();
    jar.signed_mut(key).add(cookie);
    jar.get(&name)
        .cloned()
        .ok_or_else(|| Error::Config("signing the session cookie failed".into()))
}

/// A cookie that makes the browser forget the session cookie.
pub(crate) fn removal_cookie(config: &SessionConfig) -> Cookie<'static> {
    let mut cookie = base_cookie(config, String::new());
    cookie.make_removal();
    cookie
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_sent_twice_with_different_values_is_dropped() {
        let jar = jar_from_cookie_headers(["id=a; other=1", "id=b"]);
        assert!(jar.get("id").is_none());
        assert_eq!(jar.get("other").map(|c| c.value()), Some("1"));
        let jar = jar_from_cookie_headers(["id=a; id=a"]);
        assert_eq!(jar.get("id").map(|c| c.value()), Some("a"));
        let jar = jar_from_cookie_headers(["id=a; id=b; id=a"]);
        assert!(jar.get("id").is_none(), "a third copy does not revive it");
    }

    /// A token needs no decoding: it is read in place, not copied.
    #[test]
    fn a_plain_value_is_borrowed_and_an_encoded_one_decoded() {
        let header = "other=1; id=tok_en-1; x=%41";
        assert!(matches!(
            session_cookie_value([header], "id"),
            Some(Cow::Borrowed("tok_en-1"))
        ));
        assert_eq!(
            session_cookie_value(["id=t%6Fk"], "id").as_deref(),
            Some("tok")
        );
        assert_eq!(
            session_cookie_value(["%69d=tok"], "id").as_deref(),
            Some("tok")
        );
        assert_eq!(
            session_cookie_value(["id=tok; %69d=tok"], "id").as_deref(),
            Some("tok")
        );
        assert_eq!(session_cookie_value(["id=tok; %69d=other"], "id"), None);
        assert_eq!(session_cookie_value(["x=1"], "id"), None);
    }

    /// The session-cookie-only jar agrees with the full jar on the session
    /// cookie for every header set here: duplicates, encodings, garbage.
    #[test]
    fn the_session_jar_agrees_with_the_full_jar() {
        let pieces = [
            "id=a",
            "id=b",
            " id = a ",
            "%69d=a",
            "%69d=b",
            "i%64=a",
            "id=%61",
            "id=a%",
            "id",
            "id=",
            "=a",
            "other=1",
            "idx=a",
            "xid=a",
            "ID=a",
            "id=\"a\"",
            "id=a=b",
            "%=x",
            "",
            " ",
            ";",
            "id=a;id=a",
            "id=\u{e9}",
        ];
        let mut cases: Vec<Vec<String>> = Vec::new();
        for a in pieces {
            cases.push(vec![a.to_owned()]);
            for b in pieces {
                cases.push(vec![format!("{a}; {b}")]);
                cases.push(vec![a.to_owned(), b.to_owned()]);
                for c in ["id=a", "%69d=c", "x=1"] {
                    cases.push(vec![format!("{a};{b}"), c.to_owned()]);
                }
            }
        }
        for headers in &cases {
            let full = jar_from_cookie_headers(headers.iter().map(String::as_str));
            let ours = session_jar_from_cookie_headers(headers.iter().map(String::as_str), "id");
            assert_eq!(
                full.get("id").map(|c| c.value().to_owned()),
                ours.get("id").map(|c| c.value().to_owned()),
                "headers {headers:?}"
            );
            assert_eq!(ours.iter().count(), usize::from(ours.get("id").is_some()));
        }
    }
}

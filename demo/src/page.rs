//! The quote page itself, written once for every web framework: each
//! framework's module turns a [`Reply`] into its own response type.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use server_session::time::OffsetDateTime;
use server_session::{Error, SessionId, SessionManager};

pub const DEFAULT_QUOTE: &str = "initial quote";
pub const MAX_QUOTE: usize = 10_000;
pub const MAX_NAME: usize = 64;

/// The session operations the page uses; both frameworks' `Session`
/// extractors have them under the same names.
pub trait PageSession {
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error>;
    fn insert<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error>;
    fn modify<T, F>(&self, key: &str, f: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> T + Send + Sync + 'static;
    fn flash<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error>;
    fn get_flash<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error>;
    fn regenerate(&self) -> Result<(), Error>;
    fn destroy(&self) -> Result<(), Error>;
    fn id(&self) -> Option<SessionId>;
    fn user_key(&self) -> Option<String>;
    fn set_user(&self, user_key: &str, metadata: BTreeMap<String, String>) -> Result<(), Error>;
}

/// Implements [`PageSession`] for a framework's `Session` by forwarding.
#[macro_export]
macro_rules! page_session {
    ($session:ty) => {
        impl $crate::page::PageSession for $session {
            fn get<T: serde::de::DeserializeOwned>(
                &self,
                key: &str,
            ) -> Result<Option<T>, server_session::Error> {
                <$session>::get(self, key)
            }
            fn insert<T: serde::Serialize + ?Sized>(
                &self,
                key: &str,
                value: &T,
            ) -> Result<(), server_session::Error> {
                <$session>::insert(self, key, value)
            }
            fn modify<T, F>(&self, key: &str, f: F) -> Result<T, server_session::Error>
            where
                T: serde::Serialize + serde::de::DeserializeOwned,
                F: Fn(Option<T>) -> T + Send + Sync + 'static,
            {
                <$session>::modify(self, key, f)
            }
            fn flash<T: serde::Serialize + ?Sized>(
                &self,
                key: &str,
                value: &T,
            ) -> Result<(), server_session::Error> {
                <$session>::flash(self, key, value)
            }
            fn get_flash<T: serde::de::DeserializeOwned>(
                &self,
                key: &str,
            ) -> Result<Option<T>, server_session::Error> {
                <$session>::get_flash(self, key)
            }
            fn regenerate(&self) -> Result<(), server_session::Error> {
                <$session>::regenerate(self)
            }
            fn destroy(&self) -> Result<(), server_session::Error> {
                <$session>::destroy(self)
            }
            fn id(&self) -> Option<server_session::SessionId> {
                <$session>::id(self)
            }
            fn user_key(&self) -> Option<String> {
                <$session>::user_key(self)
            }
            fn set_user(
                &self,
                user_key: &str,
                metadata: std::collections::BTreeMap<String, String>,
            ) -> Result<(), server_session::Error> {
                <$session>::set_user(self, user_key, metadata)
            }
        }
    };
}

/// What a page handler answers, whatever the framework.
#[derive(Debug)]
pub enum Reply {
    Html(String),
    RedirectHome,
    NoContent,
    /// A client error with a plain-text reason.
    Refused(u16, &'static str),
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A short label for the device a browser runs on, from its User-Agent.
pub fn device_label(user_agent: &str) -> String {
    let browser = [
        ("Edg/", "Edge"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .into_iter()
    .find(|(mark, _)| user_agent.contains(mark))
    .map_or("A browser", |(_, name)| name);
    let system = [
        ("Android", "Android"),
        ("iPhone", "iPhone"),
        ("Windows", "Windows"),
        ("Mac OS", "macOS"),
        ("Linux", "Linux"),
    ]
    .into_iter()
    .find(|(mark, _)| user_agent.contains(mark))
    .map(|(_, name)| format!(" on {name}"))
    .unwrap_or_default();
    format!("{browser}{system}")
}

fn when(at: OffsetDateTime) -> String {
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        at.date(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// The "Your sessions" card: one row per device of `user`, the current
/// one marked, and a button to log the others out.
async fn sessions_card(manager: &SessionManager, user: &str, current: Option<SessionId>) -> String {
    let listed = match manager.sessions_of(user).await {
        Ok(listed) => listed,
        Err(Error::Unsupported { .. }) => {
            return r#"<div class="card" id="sessions"><h2>Your sessions</h2><p class="muted" id="no-index">Listing your devices needs a server-side store; cookie-only sessions cannot.</p></div>"#.to_owned();
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not list the user's sessions");
            return r#"<div class="card" id="sessions"><h2>Your sessions</h2><p class="muted">Your devices cannot be listed right now.</p></div>"#.to_owned();
        }
    };
    let rows: String = listed
        .iter()
        .map(|s| {
            let is_current = Some(s.id) == current;
            let device = s.metadata.get("device").map_or("A device", String::as_str);
            format!(
                r#"<tr class="session-row{class}"><td>{device}{mark}</td><td>{created}</td><td>{active}</td></tr>"#,
                class = if is_current { " current" } else { "" },
                device = escape(device),
                mark = if is_current { r#" <strong id="current-session">(this device)</strong>"# } else { "" },
                created = when(s.signed_in_at),
                active = when(s.last_active_at),
            )
        })
        .collect();
    let others = listed.iter().filter(|s| Some(s.id) != current).count();
    let button = if others > 0 {
        r#"<form method="post" action="/sessions/logout-others"><button id="logout-others" type="submit">Log out other devices</button></form>"#
    } else {
        ""
    };
    format!(
        r#"<div class="card" id="sessions"><h2>Your sessions</h2>
<table><thead><tr><th>Device</th><th>Signed in</th><th>Last active</th></tr></thead><tbody>{rows}</tbody></table>
{button}</div>"#
    )
}

/// `GET /`: the quote, the visit counter, the account card, the user's
/// sessions and a flash.
pub async fn index(
    session: &impl PageSession,
    manager: &SessionManager,
    storage: &str,
) -> Result<Reply, Error> {
    let visits = session.modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    let quote: String = session
        .get("quote")?
        .unwrap_or_else(|| DEFAULT_QUOTE.to_owned());
    let user: Option<String> = session.get("user")?;
    let flash: Option<String> = session.get_flash("notice")?;
    let flash = flash
        .map(|text| format!(r#"<p class="flash" id="flash">{}</p>"#, escape(&text)))
        .unwrap_or_default();
    let sessions = match &user {
        Some(name) => sessions_card(manager, name, session.id()).await,
        None => String::new(),
    };
    let account = match user {
        Some(name) => format!(
            r#"<p id="greeting">Hello, <strong>{}</strong>!</p>
            <form method="post" action="/logout"><button id="logout" type="submit">Log out</button></form>"#,
            escape(&name)
        ),
        None => format!(
            r#"<form method="post" action="/login" class="row">
            <input id="name" name="name" placeholder="Your name" maxlength="{MAX_NAME}" required>
            <button id="login" type="submit">Log in</button></form>"#
        ),
    };
    Ok(Reply::Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>server-session demo</title>
<style>
  body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; color: #222; background: #fafafa; }}
  h1 {{ font-size: 1.6rem; margin-bottom: .2rem; }}
  .card {{ background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 1rem 1.2rem; margin: 1rem 0; }}
  textarea {{ width: 100%; box-sizing: border-box; min-height: 6rem; font: inherit; padding: .5rem; }}
  button {{ font: inherit; padding: .35rem 1rem; border-radius: 6px; border: 1px solid #2b6cb0; background: #3182ce; color: #fff; cursor: pointer; }}
  input {{ font: inherit; padding: .3rem .5rem; }}
  .row {{ display: flex; gap: .5rem; }}
  .flash {{ background: #e6ffed; border: 1px solid #34d058; border-radius: 6px; padding: .5rem 1rem; }}
  .muted {{ color: #777; font-size: .85rem; }}
  h2 {{ font-size: 1.1rem; margin: 0 0 .5rem; }}
  table {{ width: 100%; border-collapse: collapse; margin-bottom: .6rem; font-size: .9rem; }}
  th, td {{ text-align: left; padding: .25rem .4rem; border-bottom: 1px solid #eee; }}
  tr.current td {{ background: #f0f7ff; }}
</style></head>
<body>
<h1>server-session demo</h1>
<p class="muted" id="storage">A quote kept in your session ({storage}).</p>
{flash}
<div class="card">{account}</div>
{sessions}
<div class="card">
  <form id="quote-form" method="post" action="/session/quote">
    <label for="quote">Your quote</label>
    <textarea id="quote" name="quote" maxlength="{MAX_QUOTE}">{quote}</textarea>
    <p><button id="save" type="submit">Save</button></p>
  </form>
</div>
<p class="muted">You have visited this page <strong id="visits">{visits}</strong> time(s).</p>
<script>
  document.getElementById('quote-form').addEventListener('submit', async (event) => {{
    event.preventDefault();
    const response = await fetch('/session/quote', {{
      method: 'PUT',
      headers: {{ 'Content-Type': 'text/plain; charset=utf-8' }},
      body: document.getElementById('quote').value,
    }});
    if (response.ok) {{ location.reload(); }} else {{ alert('Saving failed: ' + response.status); }}
  }});
</script>
</body></html>"#,
        quote = escape(&quote),
        storage = escape(storage),
    )))
}

/// `PUT /session/quote` (from the page's script): 204, or 413 when too long.
pub fn put_quote(session: &impl PageSession, quote: &str) -> Result<Reply, Error> {
    if quote.chars().count() > MAX_QUOTE {
        return Ok(Reply::Refused(413, "quote too long"));
    }
    session.insert("quote", quote)?;
    session.flash("notice", "Saved")?;
    Ok(Reply::NoContent)
}

/// `POST /session/quote` (the form without script): back to the page.
pub fn post_quote(session: &impl PageSession, quote: &str) -> Result<Reply, Error> {
    match put_quote(session, quote)? {
        Reply::NoContent => Ok(Reply::RedirectHome),
        refused => Ok(refused),
    }
}

/// `POST /login`: binds the session to the name (the demo's user key) with
/// the device label, so the user's other devices can list and revoke it.
pub fn login(session: &impl PageSession, name: &str, user_agent: &str) -> Result<Reply, Error> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Ok(Reply::Refused(400, "a name of 1 to 64 characters, please"));
    }
    // A new id on privilege change: session fixation protection.
    session.regenerate()?;
    session.insert("user", name)?;
    let device = BTreeMap::from([("device".to_owned(), device_label(user_agent))]);
    session.set_user(name, device)?;
    session.flash("notice", &format!("Welcome, {name}"))?;
    Ok(Reply::RedirectHome)
}

/// `POST /sessions/logout-others`: revokes every other session of the
/// logged-in user ("log out other devices").
pub async fn logout_others(
    session: &impl PageSession,
    manager: &SessionManager,
) -> Result<Reply, Error> {
    let (Some(user), Some(current)) = (session.user_key(), session.id()) else {
        return Ok(Reply::RedirectHome);
    };
    let revoked = manager.revoke_user(&user, Some(&current)).await?;
    session.flash("notice", &format!("Logged out {revoked} other device(s)"))?;
    Ok(Reply::RedirectHome)
}

/// `POST /logout`: a page of its own rather than a redirect, since the
/// redirected page would count a visit and so start a new session at once.
pub fn logout(session: &impl PageSession) -> Result<Reply, Error> {
    session.destroy()?;
    Ok(Reply::Html(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Logged out</title>
<style>body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; }</style>
</head><body><h1 id="logged-out">You are logged out.</h1><p><a id="home" href="/">Back to the quote page</a></p></body></html>"#
            .to_owned(),
    ))
}

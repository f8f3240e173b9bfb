//! The quote page itself, written once for every web framework: each
//! framework's module turns a [`Reply`] into its own response type.

use serde::de::DeserializeOwned;
use serde::Serialize;
use server_session::Error;

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

/// `GET /`: the quote, the visit counter, the account card and a flash.
pub fn index(session: &impl PageSession, storage: &str) -> Result<Reply, Error> {
    let visits = session.modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    let quote: String = session
        .get("quote")?
        .unwrap_or_else(|| DEFAULT_QUOTE.to_owned());
    let user: Option<String> = session.get("user")?;
    let flash: Option<String> = session.get_flash("notice")?;
    let flash = flash
        .map(|text| format!(r#"<p class="flash" id="flash">{}</p>"#, escape(&text)))
        .unwrap_or_default();
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
</style></head>
<body>
<h1>server-session demo</h1>
<p class="muted" id="storage">A quote kept in your session ({storage}).</p>
{flash}
<div class="card">{account}</div>
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

/// `POST /login`.
pub fn login(session: &impl PageSession, name: &str) -> Result<Reply, Error> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Ok(Reply::Refused(400, "a name of 1 to 64 characters, please"));
    }
    // A new id on privilege change: session fixation protection.
    session.regenerate()?;
    session.insert("user", name)?;
    session.flash("notice", &format!("Welcome, {name}"))?;
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

//! The server-session demo: the original library's quote page, in Rust.
//!
//! `cargo run -p server-session-demo` serves http://127.0.0.1:3000 with
//! sessions in `./sessions.db` (SQLite). `--store` picks another backend by
//! URL (`server_session::open`): `memory`, `fs://DIR`, `redis://HOST:PORT`,
//! `postgres://USER@HOST/DB`, `mysql://USER@HOST/DB`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Form;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use serde::Deserialize;
use server_session::axum::{Session, SessionLayer, SessionRejection};
use server_session::{OpenOptions, SessionConfig, SessionInterface, SessionManager};

const DEFAULT_QUOTE: &str = "initial quote";
const MAX_QUOTE: usize = 10_000;

/// Serve the quote page.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Session store URL: sqlite://PATH, memory, fs://DIR, redis://..., postgres://..., mysql://...
    #[arg(long, default_value = "sqlite://sessions.db")]
    store: String,
    /// Mark cookies Secure (serve behind HTTPS then).
    #[arg(long)]
    secure_cookies: bool,
    /// Seconds between sweeps of expired sessions.
    #[arg(long, default_value_t = 60)]
    flush_every: u64,
}

/// Opens the store `--store` names (see `server_session::open` for the
/// URLs). The demo keeps its Redis keys under `demo:session:` and, on a
/// database server it may share, its rows in `demo_sessions`, unless the
/// URL says otherwise (`?prefix=`, `?table=`); a SQLite file is its own,
/// with the default table.
async fn open_store(url: &str) -> Result<Arc<dyn SessionInterface>, String> {
    let mut options = OpenOptions::new().default_prefix("demo:session:");
    if !url.trim_start().to_ascii_lowercase().starts_with("sqlite:") {
        options = options.default_table("demo_sessions");
    }
    server_session::open_with(url, &options)
        .await
        .map_err(|e| e.to_string())
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

async fn index(session: Session) -> Result<Html<String>, SessionRejection> {
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
        None => r#"<form method="post" action="/login" class="row">
            <input id="name" name="name" placeholder="Your name" maxlength="64" required>
            <button id="login" type="submit">Log in</button></form>"#
            .to_owned(),
    };
    Ok(Html(format!(
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
<p class="muted">A quote kept in your server-side session.</p>
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
    )))
}

fn save_quote(session: &Session, quote: &str) -> Result<Response, SessionRejection> {
    if quote.chars().count() > MAX_QUOTE {
        return Ok((StatusCode::PAYLOAD_TOO_LARGE, "quote too long").into_response());
    }
    session.insert("quote", quote)?;
    session.flash("notice", "Saved")?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn put_quote(session: Session, body: String) -> Result<Response, SessionRejection> {
    save_quote(&session, &body)
}

#[derive(Deserialize)]
struct QuoteForm {
    quote: String,
}

async fn post_quote(
    session: Session,
    Form(form): Form<QuoteForm>,
) -> Result<Response, SessionRejection> {
    let saved = save_quote(&session, &form.quote)?;
    if saved.status().is_success() {
        Ok(Redirect::to("/").into_response())
    } else {
        Ok(saved)
    }
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
}

async fn login(
    session: Session,
    Form(form): Form<LoginForm>,
) -> Result<Response, SessionRejection> {
    let name = form.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Ok((
            StatusCode::BAD_REQUEST,
            "a name of 1 to 64 characters, please",
        )
            .into_response());
    }
    // A new id on privilege change: session fixation protection.
    session.regenerate()?;
    session.insert("user", name)?;
    session.flash("notice", &format!("Welcome, {name}"))?;
    Ok(Redirect::to("/").into_response())
}

async fn logout(session: Session) -> Result<Html<&'static str>, SessionRejection> {
    session.destroy()?;
    // A page of its own rather than a redirect: the redirected page would
    // count a visit and so start a new session at once.
    Ok(Html(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Logged out</title>
<style>body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; }</style>
</head><body><h1 id="logged-out">You are logged out.</h1><p><a id="home" href="/">Back to the quote page</a></p></body></html>"#,
    ))
}

fn app(manager: Arc<SessionManager>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/session/quote",
            axum::routing::put(put_quote).post(post_quote),
        )
        .route("/login", post(login))
        .route("/logout", post(logout))
        .layer(SessionLayer::new(manager))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("server-session-demo: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let store = open_store(&args.store).await?;
    let config = SessionConfig {
        secure: args.secure_cookies,
        ..SessionConfig::default()
    };
    let manager = Arc::new(SessionManager::new(store, config).map_err(|e| e.to_string())?);
    let sweeper = manager.clone();
    let every = Duration::from_secs(args.flush_every.max(1));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            match sweeper.flush().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(flushed = n, "expired sessions removed"),
                Err(e) => tracing::warn!(error = %e, "flush failed"),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "listening on http://{addr} (store: {})",
        server_session::open::redact_url(&args.store)
    );
    axum::serve(listener, app(manager))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))
}

//! The server-session demo: the original library's quote page, in Rust.
//!
//! `cargo run -p server-session-demo` serves http://127.0.0.1:3000 with
//! sessions in `./sessions.db` (SQLite). `--store` picks another backend by
//! URL (`server_session::open`): `memory`, `fs://DIR`, `redis://HOST:PORT`,
//! `postgres://USER@HOST/DB`, `mysql://USER@HOST/DB`, or `cookie` for
//! cookie-only sessions (no store; the key comes from `DEMO_COOKIE_KEY`).
//! `--framework actix` serves the same page through actix-web instead of axum.

mod page;
mod with_actix;
mod with_axum;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use server_session::cookie::Key;
use server_session::{OpenOptions, SessionConfig, SessionInterface, SessionManager};

/// The web framework serving the page.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Framework {
    Axum,
    Actix,
}

/// Serve the quote page.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Session store URL: sqlite://PATH, memory, fs://DIR, redis://..., postgres://..., mysql://...,
    /// or `cookie` for cookie-only sessions (encrypted with the key in DEMO_COOKIE_KEY, at least
    /// 64 characters; without it a key made at start, so sessions end with the process).
    #[arg(long, default_value = "sqlite://sessions.db")]
    store: String,
    /// The web framework serving the page.
    #[arg(long, value_enum, default_value_t = Framework::Axum)]
    framework: Framework,
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

/// The key cookie-only sessions are encrypted with.
fn cookie_key() -> Result<Key, String> {
    match std::env::var("DEMO_COOKIE_KEY") {
        Ok(secret) => Key::try_from(secret.as_bytes())
            .map_err(|_| "DEMO_COOKIE_KEY must be at least 64 characters".to_owned()),
        Err(_) => {
            tracing::warn!(
                "DEMO_COOKIE_KEY is not set: cookie sessions use a key made now and end with this process"
            );
            Ok(Key::generate())
        }
    }
}

/// The manager and a label saying where sessions live.
async fn manager(args: &Args, config: SessionConfig) -> Result<(SessionManager, String), String> {
    if args.store.trim().eq_ignore_ascii_case("cookie") {
        let manager =
            SessionManager::cookie_only(vec![cookie_key()?], config).map_err(|e| e.to_string())?;
        return Ok((manager, "an encrypted cookie".to_owned()));
    }
    let store = open_store(&args.store).await?;
    let manager = SessionManager::new(store, config).map_err(|e| e.to_string())?;
    Ok((manager, "a server-side store".to_owned()))
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
    let config = SessionConfig {
        secure: args.secure_cookies,
        ..SessionConfig::default()
    };
    let (manager, storage) = manager(&args, config).await?;
    let manager = Arc::new(manager);
    if !manager.is_cookie_only() {
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
    }
    let listener = std::net::TcpListener::bind(args.addr)
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "listening on http://{addr} (store: {}, framework: {:?})",
        server_session::open::redact_url(&args.store),
        args.framework
    );
    match args.framework {
        Framework::Axum => {
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
            axum::serve(listener, with_axum::app(manager, storage))
                .with_graceful_shutdown(shutdown_signal())
                .await
                .map_err(|e| format!("server error: {e}"))
        }
        Framework::Actix => with_actix::serve(listener, manager, storage)
            .await
            .map_err(|e| format!("server error: {e}")),
    }
}

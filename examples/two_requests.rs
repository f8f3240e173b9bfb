//! A session across two simulated requests on the memory store.
//!
//! `cargo run --example two_requests`

use std::sync::Arc;

use server_session::{jar_from_cookie_headers, MemoryStore, SessionConfig, SessionManager};

#[tokio::main(flavor = "current_thread")]
async fn main() -> server_session::Result<()> {
    let config = SessionConfig {
        secure: false, // plain http in development
        ..SessionConfig::default()
    };
    let manager = SessionManager::new(Arc::new(MemoryStore::new()), config)?;

    // Request 1: no cookie, so a new session; storing a value issues a cookie.
    let mut session = manager.start(&jar_from_cookie_headers([])).await?;
    session.insert("quote", "initial quote")?;
    session.modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    let cookie = session
        .commit()
        .await?
        .expect("a new session with data sets a cookie");
    println!("request 1 -> Set-Cookie: {}", cookie.encoded());

    // Request 2: the browser sends the cookie back.
    let header = format!("{}={}", cookie.name(), cookie.value());
    let mut session = manager
        .start(&jar_from_cookie_headers([header.as_str()]))
        .await?;
    let visits = session.modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    let quote: Option<String> = session.get("quote")?;
    println!("request 2 -> quote {quote:?}, visit number {visits}");
    session.commit().await?;
    Ok(())
}

//! A visit counter on actix-web, sessions in the memory store.
//!
//! `cargo run --example actix --features actix`, then open
//! <http://127.0.0.1:8080> (another address: `-- 127.0.0.1:9000`). Each
//! reload counts one visit of your session; "Forget me" destroys it.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::LOCATION;
use actix_web::{web, App, HttpResponse, HttpServer};
use server_session::actix::{Session, SessionMiddleware, SessionRejection};
use server_session::{MemoryStore, SessionConfig, SessionManager};

async fn counter(session: Session) -> Result<HttpResponse, SessionRejection> {
    let visits = session.modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    let greeting = if session.is_new() {
        "Welcome: this is a new session."
    } else {
        "Welcome back."
    };
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><title>Visits</title>\
             <p>{greeting} Visit number {visits}.</p>\
             <form method=post action=/forget><button>Forget me</button></form>"
        )))
}

async fn forget(session: Session) -> Result<HttpResponse, SessionRejection> {
    session.destroy()?; // record deleted, cookie expired
    Ok(HttpResponse::SeeOther()
        .insert_header((LOCATION, "/"))
        .finish())
}

/// No `Session` here: no store I/O and no cookie.
async fn health() -> &'static str {
    "ok"
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let config = SessionConfig {
        secure: false, // plain http in development
        ..SessionConfig::default()
    };
    let manager =
        SessionManager::new(Arc::new(MemoryStore::new()), config).map_err(std::io::Error::other)?;
    let manager = Arc::new(manager);

    // Expired sessions stay in memory until flushed.
    let flusher = manager.clone();
    actix_web::rt::spawn(async move {
        let mut every = actix_web::rt::time::interval(Duration::from_secs(300));
        loop {
            every.tick().await;
            if let Err(e) = flusher.flush().await {
                eprintln!("flush failed: {e}");
            }
        }
    });

    println!("serving on http://{addr}");
    HttpServer::new(move || {
        App::new()
            .wrap(SessionMiddleware::new(manager.clone()))
            .route("/", web::get().to(counter))
            .route("/forget", web::post().to(forget))
            .route("/health", web::get().to(health))
    })
    .bind(addr)?
    .run()
    .await
}

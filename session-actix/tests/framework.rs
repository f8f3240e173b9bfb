//! The shared web-framework scenarios (`framework-tests`) against actix-web.

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use framework_tests::{Framework, Server};
use session_actix::{Session, SessionMiddleware, SessionRejection};
use session_store::SessionManager;

async fn none() -> &'static str {
    "none"
}

async fn get(session: Session, key: web::Path<String>) -> Result<String, SessionRejection> {
    Ok(session.get::<String>(&key)?.unwrap_or_default())
}

async fn set(
    session: Session,
    path: web::Path<(String, String)>,
) -> Result<&'static str, SessionRejection> {
    // Slow enough that two requests overlap between load and save.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (key, value) = path.into_inner();
    session.insert(&key, &value)?;
    Ok("ok")
}

async fn incr(session: Session) -> Result<String, SessionRejection> {
    let n = session.modify("n", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    Ok(n.to_string())
}

async fn login(
    session: Session,
    user: web::Path<String>,
) -> Result<&'static str, SessionRejection> {
    session.insert("user", user.as_str())?;
    session.regenerate()?;
    Ok("ok")
}

async fn logout(session: Session) -> Result<&'static str, SessionRejection> {
    session.destroy()?;
    Ok("bye")
}

async fn flash(
    session: Session,
    value: web::Path<String>,
) -> Result<&'static str, SessionRejection> {
    session.flash("notice", value.as_str())?;
    Ok("ok")
}

async fn read_flash(session: Session) -> Result<String, SessionRejection> {
    Ok(session.get_flash::<String>("notice")?.unwrap_or_default())
}

async fn panics(session: Session) -> &'static str {
    session.insert("a", "x").expect("insert");
    panic!("handler bug after a session change");
}

async fn status(session: Session, code: web::Path<u16>) -> Result<HttpResponse, SessionRejection> {
    session.insert("a", "x")?;
    let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_REQUEST);
    Ok(HttpResponse::build(status).finish())
}

fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/none", web::get().to(none))
        .route("/get/{key}", web::get().to(get))
        .route("/set/{key}/{value}", web::get().to(set))
        .route("/incr", web::get().to(incr))
        .route("/login/{user}", web::get().to(login))
        .route("/logout", web::get().to(logout))
        .route("/flash/{value}", web::get().to(flash))
        .route("/read-flash", web::get().to(read_flash))
        .route("/panic", web::get().to(panics))
        .route("/status/{code}", web::get().to(status));
}

struct Actix;

impl Framework for Actix {
    async fn serve(manager: Arc<SessionManager>, save_on_server_error: bool) -> Server {
        let middleware = SessionMiddleware::new(manager).save_on_server_error(save_on_server_error);
        let (base, running) = common::serve(middleware, routes).await;
        Server::new(base, running)
    }
}

framework_tests::framework_tests!(Actix);

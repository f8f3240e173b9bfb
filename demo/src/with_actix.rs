//! The same quote page served by actix-web, on `SessionMiddleware`.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::http::header::{LOCATION, USER_AGENT};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Deserialize;
use server_session::actix::{Session, SessionMiddleware, SessionRejection};
use server_session::{Error, SessionManager};

use crate::page::{self, Reply};

crate::page_session!(Session);

fn respond(result: Result<Reply, Error>) -> Result<HttpResponse, SessionRejection> {
    Ok(match result? {
        Reply::Html(body) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(body),
        // 303 like axum's `Redirect::to`: the browser follows with a GET.
        Reply::RedirectHome => HttpResponse::SeeOther()
            .insert_header((LOCATION, "/"))
            .finish(),
        Reply::NoContent => HttpResponse::NoContent().finish(),
        Reply::Refused(status, reason) => {
            HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
                .content_type("text/plain; charset=utf-8")
                .body(reason)
        }
    })
}

#[derive(Deserialize)]
struct QuoteForm {
    quote: String,
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
}

async fn index(
    session: Session,
    storage: web::Data<String>,
    manager: web::Data<Arc<SessionManager>>,
) -> Result<HttpResponse, SessionRejection> {
    respond(page::index(&session, &manager, &storage).await)
}

async fn logout_others(
    session: Session,
    manager: web::Data<Arc<SessionManager>>,
) -> Result<HttpResponse, SessionRejection> {
    respond(page::logout_others(&session, &manager).await)
}

async fn put_quote(session: Session, body: String) -> Result<HttpResponse, SessionRejection> {
    respond(page::put_quote(&session, &body))
}

async fn post_quote(
    session: Session,
    form: web::Form<QuoteForm>,
) -> Result<HttpResponse, SessionRejection> {
    respond(page::post_quote(&session, &form.quote))
}

async fn login(
    session: Session,
    request: HttpRequest,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, SessionRejection> {
    let agent = request
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    respond(page::login(&session, &form.name, agent))
}

async fn logout(session: Session) -> Result<HttpResponse, SessionRejection> {
    respond(page::logout(&session))
}

/// Serves the page on `listener` until the process is told to stop
/// (actix-web handles SIGINT and SIGTERM itself).
pub async fn serve(
    listener: TcpListener,
    manager: Arc<SessionManager>,
    storage: String,
) -> std::io::Result<()> {
    let storage = web::Data::new(storage);
    let shared = web::Data::new(manager.clone());
    HttpServer::new(move || {
        App::new()
            .app_data(storage.clone())
            .app_data(shared.clone())
            // The quote may be up to 10,000 characters of 4 bytes each.
            .app_data(web::PayloadConfig::new(64 * 1024))
            .app_data(web::FormConfig::default().limit(64 * 1024))
            .wrap(SessionMiddleware::new(manager.clone()))
            .route("/", web::get().to(index))
            .route("/session/quote", web::put().to(put_quote))
            .route("/session/quote", web::post().to(post_quote))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/sessions/logout-others", web::post().to(logout_others))
    })
    .workers(2)
    .listen(listener)?
    .run()
    .await
}

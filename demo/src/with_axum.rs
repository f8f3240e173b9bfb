//! The quote page served by axum, on `SessionLayer`.

use std::sync::Arc;

use axum::extract::Form;
use axum::http::header::USER_AGENT;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::Deserialize;
use server_session::axum::{Session, SessionLayer, SessionRejection};
use server_session::{Error, SessionManager};

use crate::page::{self, Reply};

crate::page_session!(Session);

fn respond(result: Result<Reply, Error>) -> Response {
    match result {
        Ok(Reply::Html(body)) => Html(body).into_response(),
        Ok(Reply::RedirectHome) => Redirect::to("/").into_response(),
        Ok(Reply::NoContent) => StatusCode::NO_CONTENT.into_response(),
        Ok(Reply::Refused(status, reason)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            reason,
        )
            .into_response(),
        Err(e) => SessionRejection::Session(e).into_response(),
    }
}

#[derive(Deserialize)]
struct QuoteForm {
    quote: String,
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
}

pub fn app(manager: Arc<SessionManager>, storage: String) -> Router {
    let storage: Arc<str> = storage.into();
    let (for_index, for_others) = (manager.clone(), manager.clone());
    Router::new()
        .route(
            "/",
            get(move |session: Session| async move {
                respond(page::index(&session, &for_index, &storage).await)
            }),
        )
        .route(
            "/session/quote",
            put(|session: Session, body: String| async move {
                respond(page::put_quote(&session, &body))
            })
            .post(|session: Session, Form(form): Form<QuoteForm>| async move {
                respond(page::post_quote(&session, &form.quote))
            }),
        )
        .route(
            "/login",
            post(
                |session: Session, headers: HeaderMap, Form(form): Form<LoginForm>| async move {
                    let agent = headers
                        .get(USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    respond(page::login(&session, &form.name, agent))
                },
            ),
        )
        .route(
            "/sessions/logout-others",
            post(move |session: Session| async move {
                respond(page::logout_others(&session, &for_others).await)
            }),
        )
        .route(
            "/logout",
            post(|session: Session| async move { respond(page::logout(&session)) }),
        )
        .layer(SessionLayer::new(manager))
}

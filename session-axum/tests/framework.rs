//! The shared framework scenarios (crate `framework-tests`) against axum,
//! served over real loopback HTTP.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use framework_tests::{Framework, Server};
use session_axum::{Session, SessionLayer, SessionRejection};
use session_store::SessionManager;
use tower_http::catch_panic::CatchPanicLayer;

type Answer<T> = Result<T, SessionRejection>;

async fn none() -> &'static str {
    "none"
}

async fn get_key(session: Session, Path(key): Path<String>) -> Answer<String> {
    Ok(session.get::<String>(&key)?.unwrap_or_default())
}

async fn set_key(
    session: Session,
    Path((key, value)): Path<(String, String)>,
) -> Answer<&'static str> {
    // Slow enough that two requests overlap between load and save.
    tokio::time::sleep(Duration::from_millis(50)).await;
    session.insert(&key, &value)?;
    Ok("ok")
}

async fn incr(session: Session) -> Answer<String> {
    Ok(session
        .modify("n", |n: Option<u64>| n.unwrap_or(0) + 1)?
        .to_string())
}

async fn login(session: Session, Path(user): Path<String>) -> Answer<&'static str> {
    session.insert("user", &user)?;
    session.regenerate()?;
    Ok("ok")
}

async fn logout(session: Session) -> Answer<&'static str> {
    session.destroy()?;
    Ok("bye")
}

async fn flash(session: Session, Path(value): Path<String>) -> Answer<&'static str> {
    session.flash("notice", &value)?;
    Ok("ok")
}

async fn read_flash(session: Session) -> Answer<String> {
    Ok(session.get_flash::<String>("notice")?.unwrap_or_default())
}

async fn panics(session: Session) -> Answer<&'static str> {
    session.insert("a", "x")?;
    panic!("a handler bug after a session change");
}

async fn status(session: Session, Path(code): Path<u16>) -> Answer<StatusCode> {
    session.insert("a", "x")?;
    Ok(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST))
}

/// Aborts the server task when the test drops its `Server`.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Axum;

impl Framework for Axum {
    async fn serve(manager: Arc<SessionManager>, save_on_server_error: bool) -> Server {
        let app = Router::new()
            .route("/none", get(none))
            .route("/get/{key}", get(get_key))
            .route("/set/{key}/{value}", get(set_key))
            .route("/incr", get(incr))
            .route("/login/{user}", get(login))
            .route("/logout", get(logout))
            .route("/flash/{value}", get(flash))
            .route("/read-flash", get(read_flash))
            .route("/panic", get(panics))
            .route("/status/{code}", get(status))
            // Inside the session layer: a panic reaches it as a 500.
            .layer(CatchPanicLayer::new())
            .layer(SessionLayer::new(manager).save_on_server_error(save_on_server_error));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("the bound address");
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                panic!("the test server failed: {e}");
            }
        });
        Server::new(format!("http://{address}"), AbortOnDrop(task))
    }
}

framework_tests::framework_tests!(Axum);

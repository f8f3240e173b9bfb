//! Shared by the test files: an actix-web server on a loopback port, in a
//! thread of its own with its own actix `System`.

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use session_actix::SessionMiddleware;

/// Stops its server when dropped.
pub struct Running {
    handle: ServerHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The stop command is sent at once; the returned future only waits
        // for it to complete, which the server's own thread does.
        drop(self.handle.stop(false));
    }
}

/// Serves `routes` behind `middleware` on 127.0.0.1 at a free port; returns
/// the base URL (`http://127.0.0.1:PORT`) and the guard.
pub async fn serve<F>(middleware: SessionMiddleware, routes: F) -> (String, Running)
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let (started, running) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(middleware.clone())
                    .configure(routes.clone())
            })
            .workers(2)
            .disable_signals()
            .shutdown_timeout(0)
            .bind(("127.0.0.1", 0))
            .expect("bind a loopback port");
            let addr = server.addrs()[0];
            let server = server.run();
            if started.send((addr, server.handle())).is_ok() {
                let _ = server.await;
            }
        })
    });
    let (addr, handle) = running.await.expect("the server thread failed to start");
    (format!("http://{addr}"), Running { handle })
}

//! # framework-tests
//!
//! The web-framework scenarios every server-session integration must pass,
//! written once and run against each integration (axum in `session-axum`,
//! actix-web in `session-actix`) over real loopback HTTP.
//!
//! An integration's test file implements [`Framework`] by serving these
//! routes (all `GET`) with the given manager, then calls
//! [`framework_tests!`]:
//!
//! | route                | handler                                                     |
//! |----------------------|-------------------------------------------------------------|
//! | `/none`              | answers `none`; never uses the session (no extractor)       |
//! | `/get/{key}`         | answers the string stored under key, or `""` when absent    |
//! | `/set/{key}/{value}` | sleeps 50 ms (so two requests overlap), inserts, answers `ok` |
//! | `/incr`              | `modify("n", +1)` on a `u64`, answers the new value         |
//! | `/login/{user}`      | inserts `"user"` = user, then `regenerate()`, answers `ok`  |
//! | `/logout`            | `destroy()`, answers `bye`                                  |
//! | `/flash/{value}`     | `flash("notice", value)`, answers `ok`                      |
//! | `/read-flash`        | `get_flash::<String>("notice")`, answers it or `""`         |
//! | `/panic`             | inserts `"a"` = `"x"`, then panics                          |
//! | `/status/{code}`     | inserts `"a"` = `"x"`, answers with that HTTP status        |
//!
//! A session operation error answers 500; a store failure at load answers
//! 503 (the integration's rejection).
//!
//! ```ignore
//! struct Axum;
//! impl framework_tests::Framework for Axum {
//!     async fn serve(manager: Arc<SessionManager>, save_on_server_error: bool) -> Server {
//!         // bind 127.0.0.1:0, spawn the server, return its base URL and a guard
//!     }
//! }
//! framework_tests::framework_tests!(Axum);
//! ```
//!
//! The test crate needs `tokio` with the `macros` and `rt-multi-thread`
//! features: the macro expands to `#[tokio::test]` functions.
#![warn(missing_docs)]

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use session_store::{SessionConfig, SessionInterface, SessionManager};

pub mod client;
pub mod scenarios;
pub mod stores;

pub use client::{Browser, Reply};
pub use stores::{CountingStore, DownStore, FailingWrites};

/// A running server: its base URL (`http://127.0.0.1:PORT`, no trailing
/// slash) and a guard that stops it when dropped.
pub struct Server {
    /// Base URL the routes are served under.
    pub base: String,
    _guard: Box<dyn Any + Send>,
}

impl Server {
    /// A server at `base`, stopped when `guard` is dropped (an abort-on-drop
    /// task handle, a server handle, a shutdown sender, ...).
    pub fn new(base: String, guard: impl Any + Send) -> Self {
        Server {
            base,
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("base", &self.base).finish()
    }
}

/// A web integration under test.
pub trait Framework: Send + Sync + 'static {
    /// Serves the routes of the [crate docs](crate) on `127.0.0.1:<free port>`
    /// with `manager` and `save_on_server_error`; the server stops when the
    /// `Server` is dropped.
    fn serve(
        manager: Arc<SessionManager>,
        save_on_server_error: bool,
    ) -> impl Future<Output = Server> + Send;
}

/// The configuration every scenario uses: defaults, but cookies not
/// `Secure` so that they travel over plain loopback HTTP.
pub fn config() -> SessionConfig {
    SessionConfig {
        secure: false,
        ..SessionConfig::default()
    }
}

/// A manager over `store` with [`config`].
pub fn manager(store: Arc<dyn SessionInterface>) -> Arc<SessionManager> {
    match SessionManager::new(store, config()) {
        Ok(manager) => Arc::new(manager),
        Err(e) => panic!("the scenarios' configuration is refused: {e}"),
    }
}

/// Expands into one `#[tokio::test(flavor = "multi_thread")]` per scenario
/// of [`scenarios`], each running against framework `$f` (a type
/// implementing [`Framework`]).
#[macro_export]
macro_rules! framework_tests {
    ($f:ty) => {
        $crate::__framework_scenarios!(@expand [$f]);
    };
}

/// Every scenario by name: the one list the macro expands.
#[macro_export]
#[doc(hidden)]
macro_rules! __framework_scenarios {
    (@expand [$f:ty]) => {
        $crate::__framework_scenarios!(@each [$f]
            racing_sets_keep_both_keys,
            slow_set_does_not_undo_logout,
            hostile_cookies_start_fresh,
            responses_setting_the_cookie_are_no_store,
            none_route_does_no_store_io,
            down_store_fails_only_session_routes,
            failing_save_answers_500,
            panic_commits_nothing,
            server_error_without_save_commits_nothing,
            concurrent_increments_are_exact,
            flash_is_read_once,
            login_replaces_the_cookie,
            cookie_only_sessions_round_trip,
            cookie_only_too_large_answers_500_and_keeps_the_cookie,
            cookie_only_tampered_cookies_start_fresh,
        );
    };
    (@each [$f:ty] $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $scenario() {
                $crate::scenarios::$scenario::<$f>().await;
            }
        )*
    };
}

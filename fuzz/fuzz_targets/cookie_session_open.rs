//! Cookie-only sessions: whatever the client sends as its session cookie,
//! opening it never panics, never fails the request, and never loads a
//! session unless the value was sealed with one of our keys.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use session_store::cookie::Key;
use session_store::{jar_from_cookie_headers, SessionConfig, SessionManager};

fuzz_target!(|data: &[u8]| {
    let header = String::from_utf8_lossy(data);
    let jar = jar_from_cookie_headers(header.split('\n'));
    // Fixed keys, so crashes reproduce.
    let config = SessionConfig {
        secure: false,
        ..SessionConfig::default()
    };
    let Ok(manager) =
        SessionManager::cookie_only(vec![Key::from(&[7u8; 64]), Key::from(&[9u8; 64])], config)
    else {
        panic!("a valid configuration was refused");
    };
    // A cookie-only start awaits nothing: one poll finishes it.
    let mut start = pin!(manager.start(&jar));
    let mut context = Context::from_waker(Waker::noop());
    match start.as_mut().poll(&mut context) {
        Poll::Ready(Ok(session)) => {
            // Random bytes cannot forge AES-GCM: whatever was sent, the
            // session is a fresh one.
            assert!(session.is_new());
        }
        Poll::Ready(Err(e)) => panic!("client input failed the start: {e}"),
        Poll::Pending => panic!("a cookie-only start waited on something"),
    }
});

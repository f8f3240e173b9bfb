//! Cookie headers from the wire: parsing, signature verification with key
//! rotation, then token validation. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_store::cookie::Key;
use session_store::{jar_from_cookie_headers, SessionToken};

fuzz_target!(|data: &[u8]| {
    let header = String::from_utf8_lossy(data);
    let jar = jar_from_cookie_headers(header.split('\n'));
    // Fixed keys, so crashes reproduce.
    let keys = [Key::from(&[7u8; 64]), Key::from(&[9u8; 64])];
    for key in &keys {
        if let Some(cookie) = jar.signed(key).get("id") {
            let _ = SessionToken::parse(cookie.value());
        }
    }
    if let Some(cookie) = jar.get("id") {
        if let Ok(token) = SessionToken::parse(cookie.value()) {
            assert!(token.as_str().len() >= 22 && token.as_str().len() <= 128);
            let _ = token.id();
        }
    }
});

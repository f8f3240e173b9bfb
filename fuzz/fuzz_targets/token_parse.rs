//! Session token and id parsing: never panics, and what parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_store::{SessionId, SessionToken};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(token) = SessionToken::parse(&text) {
        assert_eq!(token.as_str(), text);
        assert!(token
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
    if let Ok(id) = SessionId::from_hex(&text) {
        assert_eq!(id.to_hex(), text);
    }
});

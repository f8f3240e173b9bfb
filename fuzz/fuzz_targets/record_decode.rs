//! Stored records from a backend or a file: decoding never panics, and a
//! record that decodes encodes back to something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_store::{codec, SessionId};

fuzz_target!(|data: &[u8]| {
    let id = SessionId::from_bytes([1; 32]);
    if let Ok(session) = codec::decode(id, data, "fuzz") {
        let again = codec::encode(&session, session.version()).expect("re-encode");
        let back = codec::decode(id, &again, "fuzz").expect("decode re-encoded");
        assert_eq!(back, session);
        for key in session.keys() {
            let _ = session.get::<String>(key);
            let _ = session.get::<u64>(key);
        }
    }
});

//! Inputs that once crashed a fuzz target (`scripts/fuzz`), kept so they
//! never crash again. Each file in `tests/fuzz-regressions/` is named after
//! its target.

use session_store::{codec, SessionId};

/// What the `record_decode` target does with an input.
fn record_decode(data: &[u8]) {
    let id = SessionId::from_bytes([1; 32]);
    if let Ok(session) = codec::decode(id, data, "regression") {
        let again = codec::encode(&session, session.version()).expect("re-encode");
        let back = codec::decode(id, &again, "regression").expect("decode re-encoded");
        assert_eq!(back, session);
        for key in session.keys() {
            let _ = session.get::<String>(key);
            let _ = session.get::<u64>(key);
        }
    }
}

#[test]
fn record_decode_regressions_do_not_crash() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("regression inputs") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("record_decode") {
            record_decode(&std::fs::read(&path).expect("read input"));
            seen += 1;
        }
    }
    assert!(
        seen > 0,
        "no record_decode regression inputs found in {}",
        dir.display()
    );
}

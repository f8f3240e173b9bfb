//! Adversarial review of the lazy session values (a loaded session keeps
//! its data and flash maps as the stored bytes, with a change map beside
//! them). Every check compares a loaded session against a session built in
//! memory with the same content: reads, keys, maps, equality, Debug and the
//! encoded record must not tell them apart.

use std::collections::BTreeMap;
use std::time::Duration;

use session_store::{codec, Session, SessionId, SessionToken};

type Map = BTreeMap<String, Vec<u8>>;

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn id() -> SessionId {
    SessionToken::generate().id()
}

/// A session built in memory with exactly these parts.
fn built(id: SessionId, data: &Map, flash: &Map, version: u64) -> Session {
    Session::from_parts(
        id,
        data.clone(),
        flash.clone(),
        1_000,
        2_000_000_000_000,
        version,
    )
}

/// The same session, encoded and decoded: its maps are kept as stored.
fn loaded(id: SessionId, data: &Map, flash: &Map, version: u64) -> Session {
    let s = built(id, data, flash, version);
    codec::decode(id, &codec::encode(&s, version).unwrap(), "t").unwrap()
}

fn value(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1 => 250,
        2 => 251,
        3 => 252,
        4 => 300 + rng.below(400),
        5 if rng.chance(30) => 65_536,
        _ => rng.below(40),
    };
    let byte = rng.next() as u8;
    vec![byte; len]
}

const KEYS: &[&str] = &[
    "",
    "a",
    "aa",
    "aaa",
    "ab",
    "b",
    "Z",
    "z",
    "~",
    "\u{7f}",
    "é",
    "e\u{301}",
    "\u{FFFF}",
    "\u{10000}",
    "\u{FF61}",
    "k",
    "k\0",
    "k0",
    "k00",
];

fn key(rng: &mut Rng) -> String {
    if rng.chance(30) {
        format!("n{:03}", rng.below(300))
    } else {
        KEYS[rng.below(KEYS.len())].to_owned()
    }
}

/// Everything observable of `s` agrees with the built model `m`.
fn assert_same(s: &Session, m: &Session, context: &str) {
    assert_eq!(s, m, "loaded != built: {context}");
    assert_eq!(m, s, "built != loaded: {context}");
    assert_eq!(s.data(), m.data(), "data(): {context}");
    assert_eq!(s.flash(), m.flash(), "flash(): {context}");
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        m.keys().collect::<Vec<_>>(),
        "keys(): {context}"
    );
    assert_eq!(s.is_empty(), m.is_empty(), "is_empty(): {context}");
    assert_eq!(format!("{s:?}"), format!("{m:?}"), "Debug: {context}");
    for k in KEYS {
        assert_eq!(
            s.value_bytes(k),
            m.value_bytes(k),
            "value_bytes({k:?}): {context}"
        );
        assert_eq!(
            s.contains_key(k),
            m.contains_key(k),
            "contains_key({k:?}): {context}"
        );
        assert_eq!(
            s.flash_bytes(k),
            m.flash_bytes(k),
            "flash_bytes({k:?}): {context}"
        );
    }
    for k in m.data().keys().chain(m.flash().keys()) {
        assert_eq!(
            s.value_bytes(k),
            m.value_bytes(k),
            "value_bytes({k:?}): {context}"
        );
        assert_eq!(
            s.flash_bytes(k),
            m.flash_bytes(k),
            "flash_bytes({k:?}): {context}"
        );
    }
    let v = m.version();
    assert_eq!(
        codec::encode(s, v).unwrap(),
        codec::encode(m, v).unwrap(),
        "encoded record: {context}"
    );
}

#[test]
fn random_changes_over_loaded_sessions_read_and_encode_like_built_sessions() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..120 {
        let id = id();
        let mut data = Map::new();
        let mut flash = Map::new();
        for _ in 0..rng.below(if round % 10 == 0 { 300 } else { 12 }) {
            data.insert(key(&mut rng), value(&mut rng));
        }
        for _ in 0..rng.below(4) {
            flash.insert(key(&mut rng), value(&mut rng));
        }
        let mut s = loaded(id, &data, &flash, 3);
        let mut m = built(id, &data, &flash, 3);
        assert_same(&s, &m, &format!("round {round}, as loaded"));
        for step in 0..40 {
            let k = key(&mut rng);
            let what = rng.below(14);
            match what {
                0..=3 => {
                    let v = value(&mut rng);
                    s.insert_bytes(k.clone(), v.clone());
                    m.insert_bytes(k.clone(), v);
                }
                4..=6 => assert_eq!(s.remove(&k), m.remove(&k), "remove({k:?})"),
                7 => {
                    let v = value(&mut rng);
                    s.insert_flash_bytes(k.clone(), v.clone());
                    m.insert_flash_bytes(k.clone(), v);
                }
                8 => assert_eq!(
                    s.remove_flash(&k),
                    m.remove_flash(&k),
                    "remove_flash({k:?})"
                ),
                9 => {
                    // Build the merged map, then change the session: the
                    // next read must not see the old map.
                    let _ = s.data().len() + s.flash().len();
                    let v = value(&mut rng);
                    s.insert_bytes(k.clone(), v.clone());
                    m.insert_bytes(k.clone(), v);
                    assert_eq!(s.data(), m.data());
                    s.remove(&k);
                    m.remove(&k);
                    assert_eq!(s.data(), m.data());
                }
                10 if rng.chance(20) => {
                    let v = value(&mut rng);
                    s.data_mut().insert(k.clone(), v.clone());
                    m.data_mut().insert(k.clone(), v);
                }
                10 => {
                    s.flash_mut().remove(&k);
                    m.flash_mut().remove(&k);
                }
                11 => {
                    // A clone is independent of the original.
                    let mut c = s.clone();
                    c.insert_bytes("clone-only", vec![7]);
                    c.remove_flash(&k);
                    assert_eq!(s.value_bytes("clone-only"), m.value_bytes("clone-only"));
                }
                12 => {
                    // A new generation: save and load again.
                    let v = m.version();
                    s = codec::decode(id, &codec::encode(&s, v).unwrap(), "t").unwrap();
                }
                _ => {
                    // Insert then remove a key that may not be stored.
                    let v = value(&mut rng);
                    s.insert_bytes(k.clone(), v.clone());
                    m.insert_bytes(k.clone(), v);
                    assert_eq!(s.remove(&k), m.remove(&k));
                    assert_eq!(s.remove(&k), m.remove(&k));
                }
            }
            assert_same(
                &s,
                &m,
                &format!("round {round}, step {step}, op {what}, key {k:?}"),
            );
        }
    }
}

/// The entry count's varint changes length at 251 (1 to 3 bytes) and at
/// 65,536 (3 to 5 bytes): inserts and removals across those lines.
#[test]
fn an_entry_count_crossing_a_varint_boundary_encodes_exactly() {
    for (stored, inserts, removes) in [
        (250usize, 1usize, 0usize),
        (250, 3, 0),
        (251, 0, 1),
        (252, 0, 2),
        (251, 1, 1),
        (260, 0, 260),
        (0, 251, 0),
        (65_535, 1, 0),
        (65_536, 0, 1),
    ] {
        let id = id();
        let data: Map = (0..stored)
            .map(|n| (format!("k{n:06}"), vec![n as u8]))
            .collect();
        let mut s = loaded(id, &data, &Map::new(), 1);
        let mut m = built(id, &data, &Map::new(), 1);
        for n in 0..inserts {
            // Before, between and after the stored keys.
            let k = match n % 3 {
                0 => format!("a{n}"),
                1 => format!("k{n:06}x"),
                _ => format!("z{n}"),
            };
            s.insert_bytes(k.clone(), vec![1; n % 300]);
            m.insert_bytes(k, vec![1; n % 300]);
        }
        for n in 0..removes {
            let k = format!("k{:06}", (n * 7) % stored.max(1));
            let k = if removes == stored {
                format!("k{n:06}")
            } else {
                k
            };
            assert_eq!(s.remove(&k), m.remove(&k), "{k}");
        }
        let a = codec::encode(&s, 1).unwrap();
        let b = codec::encode(&m, 1).unwrap();
        assert!(
            a == b,
            "stored {stored}, +{inserts}, -{removes}: records differ"
        );
        let back = codec::decode(id, &a, "t").unwrap();
        assert!(
            back == m,
            "stored {stored}, +{inserts}, -{removes}: reloaded differs"
        );
        assert_eq!(back.data().len(), m.data().len());
    }
}

#[test]
fn data_read_then_changed_then_read_again_is_not_stale() {
    let id = id();
    let data: Map = [("a".into(), vec![1]), ("c".into(), vec![3])].into();
    let mut s = loaded(id, &data, &Map::new(), 1);
    assert_eq!(s.data().len(), 2);
    s.insert_bytes("b", vec![2]);
    assert_eq!(s.data().get("b"), Some(&vec![2]));
    assert!(s.remove("a"));
    assert_eq!(s.data().keys().collect::<Vec<_>>(), ["b", "c"]);
    // A mutable borrow after a merged read keeps every change, and later
    // changes go on top.
    s.data_mut().insert("d".into(), vec![4]);
    s.insert_bytes("e", vec![5]);
    assert!(s.remove("c"));
    assert_eq!(s.keys().collect::<Vec<_>>(), ["b", "d", "e"]);
    assert_eq!(s.value_bytes("a"), None);
}

#[test]
fn a_clone_with_pending_changes_is_independent_of_its_original() {
    let id = id();
    let data: Map = [("a".into(), vec![1]), ("b".into(), vec![2])].into();
    let mut s = loaded(id, &data, &data, 1);
    s.insert_bytes("c", vec![3]);
    let _ = s.data();
    let mut c = s.clone();
    c.remove("a");
    c.insert_bytes("b", vec![22]);
    c.remove_flash("a");
    assert_eq!(s.value_bytes("a"), Some(&[1u8][..]));
    assert_eq!(s.value_bytes("b"), Some(&[2u8][..]));
    assert_eq!(s.flash_bytes("a"), Some(&[1u8][..]));
    assert_eq!(s.data().len(), 3);
    assert_eq!(c.data().len(), 2);
    assert_ne!(s, c);
    // The clone encodes as its own content.
    let back = codec::decode(id, &codec::encode(&c, 1).unwrap(), "t").unwrap();
    assert_eq!(back, c);
}

/// A change that cancels out (insert of a new key then its removal, or
/// a value set back to what was stored) leaves a session equal to, and
/// encoded like, the untouched one.
#[test]
fn changes_that_cancel_out_leave_an_equal_session_and_record() {
    let id = id();
    let data: Map = [("a".into(), vec![1]), ("m".into(), vec![2; 300])].into();
    let original = loaded(id, &data, &Map::new(), 1);
    let mut s = original.clone();
    s.insert_bytes("b", vec![9]);
    assert!(s.remove("b"));
    s.insert_bytes("m", vec![0]);
    s.insert_bytes("m", vec![2; 300]);
    s.insert_bytes("", vec![]);
    assert!(s.remove(""));
    assert!(!s.remove(""));
    assert_eq!(s, original);
    assert_eq!(s, built(id, &data, &Map::new(), 1));
    assert_eq!(
        codec::encode(&s, 1).unwrap(),
        codec::encode(&original, 1).unwrap()
    );
    assert!(!s.is_empty());
    assert!(s.remove("a") && s.remove("m"));
    assert!(s.is_empty());
    assert_eq!(s, built(id, &Map::new(), &Map::new(), 1));
}

/// Keys compare as bytes (as `String`s do), not as chars or UTF-16: "é"
/// (0xC3 0xA9) sorts after "z", "\u{FFFF}" before "\u{10000}", a key
/// before the keys it prefixes.
#[test]
fn non_ascii_and_prefix_keys_are_found_and_ordered_as_strings() {
    let id = id();
    let keys = [
        "",
        "k",
        "k\0",
        "k0",
        "z",
        "é",
        "\u{FF61}",
        "\u{FFFF}",
        "\u{10000}",
    ];
    let data: Map = keys
        .iter()
        .enumerate()
        .map(|(n, k)| (k.to_string(), vec![n as u8; n * 60]))
        .collect();
    let mut s = loaded(id, &data, &Map::new(), 1);
    for (n, k) in keys.iter().enumerate() {
        assert_eq!(s.value_bytes(k), Some(&vec![n as u8; n * 60][..]), "{k:?}");
    }
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        data.keys().map(String::as_str).collect::<Vec<_>>()
    );
    s.insert_bytes("\u{FFFE}", vec![1]);
    s.insert_bytes("k\0\0", vec![2]);
    s.remove("k0");
    let mut m = built(id, &data, &Map::new(), 1);
    m.insert_bytes("\u{FFFE}", vec![1]);
    m.insert_bytes("k\0\0", vec![2]);
    m.remove("k0");
    assert_same(&s, &m, "non-ASCII");
}

/// A record header for `format` (1 or 2) at version 4.
fn header(format: u8) -> Vec<u8> {
    let mut out = vec![format];
    out.extend_from_slice(&4u64.to_be_bytes());
    out.extend_from_slice(&1_000i64.to_be_bytes());
    out.extend_from_slice(&2_000_000_000_000i64.to_be_bytes());
    out
}

/// A record whose lengths are valid but not the shortest varints (another
/// encoder's, or a mangled one): it loads, reads, changes and round-trips.
#[test]
fn a_record_with_overlong_varints_loads_changes_and_round_trips() {
    let mut record = header(2);
    // data: count 2 as a u16 varint; "a" with its key length as a u32
    // varint and value [1, 2]; "b" with value length as a u64 varint.
    record.extend_from_slice(&[251, 2, 0]);
    record.extend_from_slice(&[252, 1, 0, 0, 0, b'a', 2, 1, 2]);
    record.extend_from_slice(&[1, b'b', 253, 1, 0, 0, 0, 0, 0, 0, 0, 9]);
    // flash: empty, the count as a u16 varint; no write ids.
    record.extend_from_slice(&[251, 0, 0, 0]);
    let id = id();
    let s = codec::decode(id, &record, "t").unwrap();
    let data: Map = [("a".into(), vec![1, 2]), ("b".into(), vec![9])].into();
    let m = built(id, &data, &Map::new(), 4);
    assert_eq!(s.value_bytes("a"), Some(&[1u8, 2][..]));
    assert_eq!(s.value_bytes("b"), Some(&[9u8][..]));
    assert_eq!(s, m);
    assert!(!s.is_empty());
    let back = codec::decode(id, &codec::encode(&s, 4).unwrap(), "t").unwrap();
    assert_eq!(back, s);
    let mut changed = s.clone();
    let mut mc = m.clone();
    for c in [&mut changed, &mut mc] {
        c.insert_bytes("ab", vec![3]);
        c.remove("a");
        c.insert_flash_bytes("f", vec![4]);
    }
    let back = codec::decode(id, &codec::encode(&changed, 4).unwrap(), "t").unwrap();
    assert_eq!(back, mc);
    assert_eq!(changed, mc);
}

/// Format 1 (data and flash only) still loads as it did, and a loaded
/// format 1 session saves as format 2 with the same content.
#[test]
fn a_format_one_record_loads_identically_and_saves_with_changes() {
    let id = id();
    let data: Map = (0..260)
        .map(|n| (format!("k{n:03}"), vec![n as u8; n]))
        .collect();
    let flash: Map = [("notice".into(), b"saved".to_vec())].into();
    let mut record = header(1);
    record.extend(bincode::encode_to_vec(&data, bincode::config::standard()).unwrap());
    record.extend(bincode::encode_to_vec(&flash, bincode::config::standard()).unwrap());
    let mut s = codec::decode(id, &record, "t").unwrap();
    let mut m = built(id, &data, &flash, 4);
    assert_same(&s, &m, "format 1 as loaded");
    for c in [&mut s, &mut m] {
        c.remove("k000");
        c.insert_bytes("k1000", vec![1; 251]);
        assert!(c.remove_flash("notice"));
    }
    assert_same(&s, &m, "format 1 changed");
}

/// Keys out of order and repeated (no encoder of ours writes them) load
/// as a map would (the last of duplicates wins), and stay that way
/// through changes and a save.
#[test]
fn a_record_with_repeated_and_unordered_keys_loads_as_a_map_would() {
    let mut record = header(2);
    // data: 4 entries: "b"=[1], "a"=[2], "b"=[3], ""=[4]
    record.extend_from_slice(&[4, 1, b'b', 1, 1, 1, b'a', 1, 2, 1, b'b', 1, 3, 0, 1, 4]);
    // flash: 2 entries: "x"=[5], "x"=[6]
    record.extend_from_slice(&[2, 1, b'x', 1, 5, 1, b'x', 1, 6]);
    record.push(0);
    let id = id();
    let mut s = codec::decode(id, &record, "t").unwrap();
    let data: Map = [
        ("".into(), vec![4]),
        ("a".into(), vec![2]),
        ("b".into(), vec![3]),
    ]
    .into();
    let flash: Map = [("x".into(), vec![6])].into();
    let mut m = built(id, &data, &flash, 4);
    assert_same(&s, &m, "as loaded");
    for c in [&mut s, &mut m] {
        c.remove("b");
        c.insert_bytes("c", vec![7]);
    }
    assert_same(&s, &m, "changed");
    let back = codec::decode(id, &codec::encode(&s, 4).unwrap(), "t").unwrap();
    assert_eq!(back, m);
}

/// What the `record_decode` fuzz target states, on mangled records of a
/// session with many entries and long values, with changes before
/// re-encoding: no panic, and what decodes round-trips.
#[test]
fn mangled_records_with_many_long_entries_never_panic_and_round_trip() {
    let mut rng = Rng(42);
    let id = id();
    let data: Map = (0..40)
        .map(|n| (format!("k{n:02}"), vec![n as u8; n * 13]))
        .collect();
    let flash: Map = [("f".into(), vec![1; 260])].into();
    let mut s = built(id, &data, &flash, 3);
    s.stamp_write(5);
    let good = codec::encode(&s, 3).unwrap();
    let mut decoded = 0;
    for round in 0..20_000 {
        let mut bytes = good.clone();
        for _ in 0..1 + rng.below(3) {
            let at = codec::HEADER_LEN + rng.below(bytes.len() - codec::HEADER_LEN);
            match rng.below(4) {
                0 => bytes[at] = rng.next() as u8,
                1 => bytes[at] = [0, 250, 251, 252, 253, 255][rng.below(6)],
                2 => bytes.truncate(at),
                _ => bytes.insert(at, rng.next() as u8),
            }
            if bytes.len() <= codec::HEADER_LEN {
                break;
            }
        }
        let Ok(mut session) = codec::decode(id, &bytes, "t") else {
            continue;
        };
        decoded += 1;
        let keys: Vec<String> = session.keys().map(str::to_owned).collect();
        for k in &keys {
            assert!(
                session.value_bytes(k).is_some(),
                "listed key {k:?} not readable"
            );
        }
        assert_eq!(session.data().len(), keys.len());
        if round % 2 == 0 {
            session.insert_bytes("k05", vec![1]);
            session.remove("k07");
            session.insert_bytes("zz", vec![2; 300]);
            session.remove_flash("f");
        }
        let again = codec::encode(&session, session.version()).unwrap();
        let back = codec::decode(id, &again, "t").unwrap();
        assert_eq!(back, session, "{bytes:?}");
        assert_eq!(back.data(), session.data());
        assert_eq!(back.flash(), session.flash());
    }
    assert!(decoded > 100, "{decoded} decoded");
}

/// A corrupt entry count far beyond the input is refused quickly, without
/// allocating per claimed entry.
#[test]
fn a_huge_entry_count_is_an_error_not_an_allocation() {
    for count in [
        vec![253, 255, 255, 255, 255, 255, 255, 255, 255],
        vec![252, 255, 255, 255, 255],
        vec![251, 255, 255],
    ] {
        let mut record = header(2);
        record.extend_from_slice(&count);
        record.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let err = codec::decode(id(), &record, "t");
        assert!(
            matches!(err, Err(session_store::Error::Decode { .. })),
            "{count:?}: {err:?}"
        );
    }
}

/// Saving a loaded session sizes the record buffer from what it writes,
/// not from what it loaded: replacing a large stored value with a small
/// one must not reserve the large value's size again (the encoder's
/// stated property: room for varint prefixes, never a multiple of the
/// record).
#[test]
fn saving_a_loaded_session_after_shrinking_a_value_does_not_reserve_the_old_size() {
    let id = id();
    let data: Map = [("big".into(), vec![7; 1 << 20]), ("small".into(), vec![1])].into();
    let mut s = loaded(id, &data, &Map::new(), 1);
    s.insert_bytes("big", vec![1]);
    let bytes = codec::encode(&s, 2).unwrap();
    let spare = bytes.capacity() - bytes.len();
    assert!(
        spare <= 18 * 3 + 64,
        "{spare} spare bytes reserved for a record of {} bytes",
        bytes.len()
    );
}

#[test]
fn a_loaded_session_with_duration_helpers_keeps_its_times() {
    let id = id();
    let mut s = Session::new(id, Duration::from_secs(60));
    s.insert("n", &5u64).unwrap();
    let back = codec::decode(id, &codec::encode(&s, 1).unwrap(), "t").unwrap();
    assert_eq!(back.get::<u64>("n").unwrap(), Some(5));
    assert_eq!(back.expires_at_millis(), s.expires_at_millis());
    assert_eq!(back.created_at_millis(), s.created_at_millis());
}

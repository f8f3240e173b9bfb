//! The stored form of a session: a versioned envelope.
//!
//! ```text
//! [0]      format byte (2; 1 is still read)
//! [1..9]   version, u64 big-endian
//! [9..17]  created_at, i64 big-endian Unix milliseconds
//! [17..25] expires_at, i64 big-endian Unix milliseconds
//! [25..]   bincode 2 body: data and flash maps, then (format 2) the
//!          record's recent write ids
//! ```
//!
//! Format 3, written only for a session bound to a user, puts the user key
//! between the header and the body, so a backend can read it without
//! decoding the body (the Redis scripts maintain their user index from it):
//!
//! ```text
//! [25..27]     user key length n, u16 big-endian (1..=256)
//! [27..27+n]   user key, UTF-8
//! [27+n..]     the format 2 body, then the binding's metadata map and
//!              when it was bound (i64 Unix milliseconds)
//! ```
//!
//! The fixed header lets a backend read or patch the version and expiry
//! without decoding the body (the Redis store's compare-and-set script does).
//! An unknown format byte is [`Error::Decode`], so the format can evolve
//! without breaking stored sessions.

use std::collections::BTreeMap;
use std::fmt::Display;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::session::{Session, UserBinding, MAX_USER_KEY_LEN};
use crate::values::Values;

/// The first format: data and flash only. Still decoded, never written.
pub const FORMAT_V1: u8 = 1;
/// The format written for sessions bound to no user: format 1 plus the
/// record's recent write ids.
pub const FORMAT_V2: u8 = 2;
/// The format written for sessions bound to a user: format 2 plus the user
/// key (after the fixed header) and its metadata (after the body).
pub const FORMAT_V3: u8 = 3;
/// Length of the fixed header before the body.
pub const HEADER_LEN: usize = 25;
/// Byte range of the big-endian version in the header.
pub const VERSION_RANGE: std::ops::Range<usize> = 1..9;
/// Byte range of the big-endian expiry in the header.
pub const EXPIRES_AT_RANGE: std::ops::Range<usize> = 17..25;

/// A body larger than this is refused as corrupt rather than allocated.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Encodes `session` with `version` in the header (which may differ from
/// `session.version()`: `update` writes the next version).
pub fn encode(session: &Session, version: u64) -> Result<Vec<u8>> {
    // Sized up front (lengths plus room for the varint prefixes) so the
    // encoder never reallocates.
    let (data, flash) = session.values();
    let body = data.encoded_len_hint() + flash.encoded_len_hint();
    let mut out = Vec::with_capacity(HEADER_LEN + body + 9 * session.recent_writes().len());
    out.push(FORMAT_V2);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&session.created_at_millis().to_be_bytes());
    out.extend_from_slice(&session.expires_at_millis().to_be_bytes());
    if let Some(user) = session.user() {
        out[0] = FORMAT_V3;
        let len = u16::try_from(user.key.len())
            .ok()
            .filter(|len| (1..=MAX_USER_KEY_LEN as u16).contains(len))
            .ok_or_else(|| Error::Encode {
                key: "user key".into(),
                reason: format!("{} bytes is outside 1..={MAX_USER_KEY_LEN}", user.key.len()),
            })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(user.key.as_bytes());
    }
    let encode_error = |e: bincode::error::EncodeError| Error::Encode {
        key: "record".into(),
        reason: e.to_string(),
    };
    data.encode_into(&mut out).map_err(encode_error)?;
    flash.encode_into(&mut out).map_err(encode_error)?;
    bincode::encode_into_std_write(
        session.recent_writes(),
        &mut out,
        bincode::config::standard(),
    )
    .map_err(encode_error)?;
    if let Some(user) = session.user() {
        bincode::encode_into_std_write(
            (&user.metadata, user.bound_at_ms),
            &mut out,
            bincode::config::standard(),
        )
        .map_err(encode_error)?;
    }
    Ok(out)
}

/// Decodes a record stored under `id`. `origin` names where the bytes came
/// from (a key, a row, a file) for the error message; it is written out
/// only for an error, so `format_args!` costs nothing on success.
///
/// The record is copied once; a caller that owns it should prefer
/// [`decode_owned`], which keeps it without copying.
pub fn decode(id: SessionId, bytes: &[u8], origin: impl Display) -> Result<Session> {
    // Refused before the copy, not after.
    body_within_limit(bytes.len(), &origin)?;
    decode_bytes(id, Bytes::copy_from_slice(bytes), &origin)
}

/// [`Error::Decode`] for a record whose body could be over [`MAX_BODY`].
fn body_within_limit(record_len: usize, origin: &dyn Display) -> Result<()> {
    if record_len > HEADER_LEN + 2 + MAX_USER_KEY_LEN + MAX_BODY {
        return Err(Error::decode(
            origin,
            format!("a record of {record_len} bytes is over the limit"),
        ));
    }
    Ok(())
}

/// [`decode`] for a record the caller owns (`Vec<u8>` and `Box<[u8]>`
/// convert into [`Bytes`] without copying, and a `Bytes` clone shares its
/// buffer). The session keeps the record's data and flash maps as they are
/// and decodes each value when it is read.
pub fn decode_owned(
    id: SessionId,
    bytes: impl Into<Bytes>,
    origin: impl Display,
) -> Result<Session> {
    decode_bytes(id, bytes.into(), &origin)
}

fn decode_bytes(id: SessionId, bytes: Bytes, origin: &dyn Display) -> Result<Session> {
    let header = header(&bytes, origin)?;
    let config = bincode::config::standard().with_limit::<MAX_BODY>();
    let (user_key, body_start) = user_key_at(&bytes, header.format, origin)?;
    let body = bytes.slice(body_start..);
    if body.len() > MAX_BODY {
        return Err(Error::decode(
            origin,
            format!("a body of {} bytes is over the limit", body.len()),
        ));
    }
    let (data, data_len) = Values::check(&body).map_err(|e| Error::decode(origin, e))?;
    let (flash, flash_len) =
        Values::check(&body.slice(data_len..)).map_err(|e| Error::decode(origin, e))?;
    let body_bytes = &body[..];
    let mut read = data_len + flash_len;
    let mut recent_writes = Vec::new();
    if header.format >= FORMAT_V2 {
        let (writes, more): (Vec<u64>, usize) =
            bincode::decode_from_slice(&body_bytes[read..], config.with_limit::<1024>())
                .map_err(|e| Error::decode(origin, e))?;
        recent_writes = writes;
        read += more;
    }
    let mut user = None;
    if let Some(key) = user_key {
        let ((metadata, bound_at_ms), more): ((BTreeMap<String, String>, i64), usize) =
            bincode::decode_from_slice(&body_bytes[read..], config.with_limit::<65536>())
                .map_err(|e| Error::decode(origin, e))?;
        read += more;
        user = Some(UserBinding {
            key: key.to_owned(),
            metadata,
            bound_at_ms,
        });
    }
    if body_start + read != bytes.len() {
        return Err(Error::decode(origin, "trailing bytes after the record"));
    }
    let mut session = Session::from_values(
        id,
        data,
        flash,
        header.created_at_ms,
        header.expires_at_ms,
        header.version,
    );
    session.set_recent_writes(recent_writes);
    session.set_user(user);
    Ok(session)
}

/// The user key of an encoded record (`None` for a session bound to no
/// user), read without decoding the body: for stores that keep a user index.
pub fn user_key(bytes: &[u8], origin: impl Display) -> Result<Option<&str>> {
    let header = header(bytes, &origin)?;
    Ok(user_key_at(bytes, header.format, &origin)?.0)
}

/// The user key of a record of `format`, and where its body starts.
fn user_key_at<'a>(
    bytes: &'a [u8],
    format: u8,
    origin: &dyn Display,
) -> Result<(Option<&'a str>, usize)> {
    if format != FORMAT_V3 {
        return Ok((None, HEADER_LEN));
    }
    let len = bytes
        .get(HEADER_LEN..HEADER_LEN + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or_else(|| Error::decode(origin, "record ends inside its user key length"))?;
    if !(1..=MAX_USER_KEY_LEN).contains(&len) {
        return Err(Error::decode(
            origin,
            format!("user key length {len} is out of range"),
        ));
    }
    let start = HEADER_LEN + 2;
    let key = bytes
        .get(start..start + len)
        .ok_or_else(|| Error::decode(origin, "record ends inside its user key"))?;
    let key = std::str::from_utf8(key).map_err(|e| Error::decode(origin, e))?;
    Ok((Some(key), start + len))
}

/// The fixed header of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The format byte ([`FORMAT_V1`] or [`FORMAT_V2`]).
    pub format: u8,
    /// Stored version.
    pub version: u64,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// Reads only the header of a record.
pub fn header(bytes: &[u8], origin: impl Display) -> Result<Header> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::decode(
            origin,
            format!("record of {} bytes is shorter than its header", bytes.len()),
        ));
    }
    if !matches!(bytes[0], FORMAT_V1 | FORMAT_V2 | FORMAT_V3) {
        return Err(Error::decode(
            origin,
            format!("unknown record format {}", bytes[0]),
        ));
    }
    let be8 = |range: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[range]);
        b
    };
    Ok(Header {
        format: bytes[0],
        version: u64::from_be_bytes(be8(VERSION_RANGE)),
        created_at_ms: i64::from_be_bytes(be8(9..17)),
        expires_at_ms: i64::from_be_bytes(be8(EXPIRES_AT_RANGE)),
    })
}

/// Rewrites the expiry in an encoded record, leaving everything else alone.
pub fn patch_expires_at(bytes: &mut [u8], expires_at_ms: i64, origin: impl Display) -> Result<()> {
    header(bytes, origin)?;
    bytes[EXPIRES_AT_RANGE].copy_from_slice(&expires_at_ms.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionToken;
    use std::time::Duration;

    fn sample() -> Session {
        let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
        s.insert("user", "ada").unwrap();
        s.flash_mut().insert("msg".into(), vec![1, 2, 3]);
        s
    }

    #[test]
    fn a_body_of_several_mebibytes_is_not_taken_for_corrupt() {
        let mut s = sample();
        let big = "x".repeat(3 * 1024 * 1024);
        s.insert("big", &big).unwrap();
        let bytes = encode(&s, 1).unwrap();
        let back = decode(s.id(), &bytes, "test").unwrap();
        assert_eq!(back.get::<String>("big").unwrap(), Some(big));
    }

    #[test]
    fn the_encoder_sizes_its_buffer_once_without_waste() {
        let mut s = sample();
        for n in 0..20u64 {
            s.insert(format!("key{n}"), &n).unwrap();
            s.stamp_write(n);
        }
        s.insert("k".repeat(100), &"v".repeat(1000)).unwrap();
        let entries = s.data().len() + s.flash().len();
        let bytes = encode(&s, 1).unwrap();
        // Room is reserved for the longest varint prefixes: a few bytes per
        // entry and per write id, never a multiple of the record.
        let spare = bytes.capacity() - bytes.len();
        assert!(
            spare <= 18 * (entries + 1) + 9 * s.recent_writes().len(),
            "{spare} spare bytes for a record of {}",
            bytes.len()
        );
    }

    #[test]
    fn a_header_alone_is_read() {
        let s = sample();
        let bytes = encode(&s, 5).unwrap();
        let header = header(&bytes[..HEADER_LEN], "test").unwrap();
        assert_eq!(header.version, 5);
        assert_eq!(header.expires_at_ms, s.expires_at_millis());
        assert!(super::header(&bytes[..HEADER_LEN - 1], "test").is_err());
    }

    #[test]
    fn round_trip_keeps_everything_and_takes_the_given_version() {
        let s = sample();
        let bytes = encode(&s, 7).unwrap();
        let back = decode(s.id(), &bytes, "test").unwrap();
        assert_eq!(back.version(), 7);
        assert_eq!(back.data(), s.data());
        assert_eq!(back.flash(), s.flash());
        assert_eq!(back.expires_at_millis(), s.expires_at_millis());
        assert_eq!(back.created_at_millis(), s.created_at_millis());
        assert_eq!(back.recent_writes(), s.recent_writes());
    }

    #[test]
    fn write_ids_round_trip_and_format_one_still_decodes() {
        let mut s = sample();
        s.stamp_write(7);
        s.stamp_write(9);
        s.stamp_write(9);
        assert_eq!(s.recent_writes(), [9, 7]);
        let back = decode(s.id(), &encode(&s, 2).unwrap(), "t").unwrap();
        assert_eq!(back.recent_writes(), [9, 7]);

        // A record written by v0.1 (format 1: no write ids) still loads.
        let mut v1 = encode(&sample(), 4).unwrap();
        v1[0] = FORMAT_V1;
        v1.pop(); // the empty write-id list
        let old = decode(s.id(), &v1, "t").unwrap();
        assert_eq!(old.version(), 4);
        assert!(old.recent_writes().is_empty());
        assert_eq!(old.data(), sample().data());
    }

    #[test]
    fn corrupt_records_are_decode_errors() {
        let s = sample();
        let good = encode(&s, 1).unwrap();
        let mut unknown = good.clone();
        unknown[0] = 9;
        let mut too_many_writes = good[..good.len() - 1].to_vec();
        too_many_writes.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0x7f]);
        let mut huge_len = good[..HEADER_LEN].to_vec();
        huge_len.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0x7f]);
        let mut trailing = good.clone();
        trailing.push(0);
        for bad in [
            vec![],
            vec![1, 2, 3],
            unknown,
            huge_len,
            trailing,
            too_many_writes,
            good[..good.len() - 1].to_vec(),
        ] {
            assert!(
                matches!(decode(s.id(), &bad, "k"), Err(Error::Decode { .. })),
                "{bad:?}"
            );
        }
    }

    /// What the `record_decode` fuzz target checks, on records mangled
    /// here: none panics, and one that decodes, changed or not, encodes to
    /// a record that decodes to the same session.
    #[test]
    fn mangled_records_never_panic_and_what_decodes_round_trips() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut s = bound("ada");
        for n in 0..8u64 {
            s.insert(format!("k{n}"), &"v".repeat(n as usize * 40))
                .unwrap();
        }
        let good = encode(&s, 3).unwrap();
        let mut decoded = 0;
        for round in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..rng.random_range(1..4) {
                if bytes.len() <= HEADER_LEN {
                    break;
                }
                let at = rng.random_range(HEADER_LEN..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] = rng.random(),
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, rng.random()),
                }
            }
            let Ok(mut session) = decode(s.id(), &bytes, "t") else {
                continue;
            };
            decoded += 1;
            if round % 2 == 0 {
                session.insert_bytes("k3", vec![1]);
                session.remove("k5");
                session.insert_flash_bytes("zz", vec![2]);
            }
            let again = encode(&session, session.version()).unwrap();
            let back = decode(s.id(), &again, "t").unwrap();
            assert_eq!(back, session, "{bytes:?}");
            assert_eq!(back.data(), session.data());
        }
        // Most mangled records are refused, some are not: both paths ran.
        assert!(decoded > 100, "{decoded} of 20000 decoded");
    }

    #[test]
    fn a_loaded_session_reads_and_changes_values_without_building_its_maps() {
        let mut s = sample();
        s.insert("a", &1u64).unwrap();
        s.insert("z", &26u64).unwrap();
        let mut back = decode(s.id(), &encode(&s, 1).unwrap(), "t").unwrap();
        assert_eq!(back.get::<u64>("z").unwrap(), Some(26));
        assert_eq!(back.get::<String>("user").unwrap().as_deref(), Some("ada"));
        assert!(back.contains_key("a") && !back.contains_key("b"));
        back.insert("b", &2u64).unwrap();
        assert!(back.remove("a"));
        assert!(!back.remove("a"));
        assert_eq!(back.keys().collect::<Vec<_>>(), ["b", "user", "z"]);
        assert_eq!(back.flash_bytes("msg"), Some(&[1u8, 2, 3][..]));
        assert!(back.remove_flash("msg"));
        assert!(back.flash().is_empty());
        let again = decode(s.id(), &encode(&back, back.version()).unwrap(), "t").unwrap();
        assert_eq!(again, back);
        assert_eq!(again.get::<u64>("b").unwrap(), Some(2));
        assert_eq!(again.get::<u64>("a").unwrap(), None);
        // A mutable borrow of the map keeps what came before it.
        let mut owned = again.clone();
        owned.data_mut().insert("c".into(), vec![3]);
        assert_eq!(owned.keys().collect::<Vec<_>>(), ["b", "c", "user", "z"]);
    }

    #[test]
    fn patching_expiry_changes_only_expiry() {
        let s = sample();
        let mut bytes = encode(&s, 3).unwrap();
        patch_expires_at(&mut bytes, 1234, "t").unwrap();
        let back = decode(s.id(), &bytes, "t").unwrap();
        assert_eq!(back.expires_at_millis(), 1234);
        assert_eq!(back.version(), 3);
        assert_eq!(back.data(), s.data());
    }

    fn bound(user: &str) -> Session {
        let mut s = sample();
        let metadata = BTreeMap::from([("device".to_owned(), "laptop".to_owned())]);
        s.set_user(Some(UserBinding::new(user, metadata).unwrap()));
        s.stamp_write(7);
        s
    }

    #[test]
    fn a_bound_session_round_trips_in_format_three() {
        let s = bound("ädä:{42}");
        let bytes = encode(&s, 5).unwrap();
        assert_eq!(bytes[0], FORMAT_V3);
        assert_eq!(user_key(&bytes, "test").unwrap(), Some("ädä:{42}"));
        let back = decode(s.id(), &bytes, "test").unwrap();
        assert_eq!(back.user(), s.user());
        assert_eq!(back.data(), s.data());
        assert_eq!(back.flash(), s.flash());
        assert_eq!(back.recent_writes(), s.recent_writes());
        assert_eq!(back.version(), 5);
        // The fixed header stays where the Redis scripts read it.
        assert_eq!(header(&bytes, "test").unwrap().version, 5);
        let mut patched = bytes.clone();
        patch_expires_at(&mut patched, 99, "test").unwrap();
        assert_eq!(
            decode(s.id(), &patched, "test")
                .unwrap()
                .expires_at_millis(),
            99
        );
        assert_eq!(decode(s.id(), &patched, "test").unwrap().user(), s.user());
    }

    #[test]
    fn an_unbound_session_is_still_written_in_format_two() {
        let s = sample();
        let bytes = encode(&s, 1).unwrap();
        assert_eq!(bytes[0], FORMAT_V2);
        assert_eq!(user_key(&bytes, "test").unwrap(), None);
        assert_eq!(decode(s.id(), &bytes, "test").unwrap().user(), None);
    }

    #[test]
    fn corrupt_user_keys_are_decode_errors() {
        let s = bound("ada");
        let good = encode(&s, 1).unwrap();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = good.clone();
            f(&mut bytes);
            bytes
        };
        let cases = [
            (
                "length zero",
                with(&|b| b[25..27].copy_from_slice(&0u16.to_be_bytes())),
            ),
            (
                "length over the limit",
                with(&|b| b[25..27].copy_from_slice(&257u16.to_be_bytes())),
            ),
            (
                "length past the end",
                with(&|b| b[25..27].copy_from_slice(&200u16.to_be_bytes())),
            ),
            ("cut inside the length", good[..26].to_vec()),
            ("cut inside the key", good[..28].to_vec()),
            ("not UTF-8", with(&|b| b[27] = 0xFF)),
            ("cut inside the metadata", good[..good.len() - 1].to_vec()),
            ("trailing bytes", with(&|b| b.push(0))),
        ];
        for (name, bytes) in cases {
            assert!(
                matches!(decode(s.id(), &bytes, "test"), Err(Error::Decode { .. })),
                "{name}"
            );
        }
        let too_long = "x".repeat(MAX_USER_KEY_LEN + 1);
        let mut s = sample();
        s.set_user(Some(UserBinding {
            key: too_long,
            metadata: BTreeMap::new(),
            bound_at_ms: 0,
        }));
        assert!(matches!(encode(&s, 1), Err(Error::Encode { .. })));
    }
}

//! One map of a session's encoded values (its data, or its flash values),
//! kept as the backend stored it until something needs it otherwise.
//!
//! Most requests read a value or two and change one. Decoding every entry
//! of a loaded record into its own `String` and `Vec<u8>`, and encoding them
//! all again on save, cost more than the memory store's whole lookup and
//! were most of a load's allocations on every backend. So a loaded map stays
//! the slice of the record it came in (checked once, when loaded); reads scan
//! it, writes go to a small change map beside it, and the encoder copies
//! every untouched entry straight from the stored bytes.

use std::collections::{btree_map, BTreeMap};
use std::fmt;
use std::iter::Peekable;
use std::sync::OnceLock;

use bincode::config::Configuration;
use bincode::de::read::SliceReader;
use bincode::de::{BorrowDecode, BorrowDecoder, Decode, DecoderImpl};
use bincode::error::{DecodeError, EncodeError};
use bytes::Bytes;

/// The largest stored map whose encoded size is bounded without decoding
/// it ([`Values::encoded_len_hint`]): the most spare room a save's buffer
/// may get from entries it replaces or removes.
const CHEAP_HINT_MAX: usize = 1024;

/// The bincode configuration of the record body.
fn config() -> Configuration {
    bincode::config::standard()
}

/// Encoded values under string keys, in key order.
#[derive(Clone)]
pub(crate) enum Values {
    /// Built in memory (a new session, or one whose map was borrowed
    /// mutably).
    Owned(BTreeMap<String, Vec<u8>>),
    /// As loaded, with this request's changes beside it.
    Stored(Stored),
}

#[derive(Clone)]
pub(crate) struct Stored {
    /// bincode's encoding of a `BTreeMap<String, Vec<u8>>`: the entry count,
    /// then each key and value, keys strictly increasing. Checked by
    /// [`Values::check`] before it was kept here.
    bytes: Bytes,
    /// Changes over `bytes`: a value set, or `None` for a key removed.
    changes: BTreeMap<String, Option<Vec<u8>>>,
    /// The whole map, built the first time someone asks for it as a map.
    merged: OnceLock<BTreeMap<String, Vec<u8>>>,
}

impl Default for Values {
    fn default() -> Self {
        Values::Owned(BTreeMap::new())
    }
}

/// What [`Values::check`] found in an encoded map.
struct Shape {
    /// Keys strictly increasing: the entries can be kept as they are.
    ordered: bool,
}

impl<'de, Context> BorrowDecode<'de, Context> for Shape {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        let count = u64::decode(decoder)?;
        let mut ordered = true;
        let mut previous: Option<&'de str> = None;
        // Every entry takes at least two bytes, so a corrupt count ends at
        // the end of the input, having allocated nothing.
        for _ in 0..count {
            let key = <&'de str>::borrow_decode(decoder)?;
            <&'de [u8]>::borrow_decode(decoder)?;
            ordered &= previous.is_none_or(|previous| previous < key);
            previous = Some(key);
        }
        Ok(Shape { ordered })
    }
}

/// The entries of a checked encoded map, in order, keys as bytes (they
/// were checked to be UTF-8 when loaded; comparing bytes orders them as
/// strings).
struct Entries<'a> {
    decoder: DecoderImpl<SliceReader<'a>, Configuration, ()>,
    /// Entries not yet read.
    left: u64,
    /// Where the first entry starts (after the count).
    start: usize,
}

impl<'a> Entries<'a> {
    fn of(bytes: &'a [u8]) -> Self {
        let (left, start) = bincode::decode_from_slice::<u64, _>(bytes, config()).unwrap_or((0, 0));
        let rest = bytes.get(start..).unwrap_or_default();
        Entries {
            decoder: DecoderImpl::new(SliceReader::new(rest), config(), ()),
            left,
            start,
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let key = <&'a [u8]>::borrow_decode(&mut self.decoder);
        let value = <&'a [u8]>::borrow_decode(&mut self.decoder);
        match (key, value) {
            (Ok(key), Ok(value)) => Some((key, value)),
            // Checked when loaded, so this does not happen; should it, the
            // map ends here rather than panicking.
            _ => {
                self.left = 0;
                None
            }
        }
    }
}

impl Values {
    /// Checks the encoded map at the start of `body` and keeps it: returns
    /// the map and how many bytes it took. `body` is shared, not copied.
    /// Keys out of order (no encoder of ours writes them) are decoded into
    /// an owned map, which keeps the last of duplicates, as a map would.
    pub(crate) fn check(body: &Bytes) -> Result<(Values, usize), DecodeError> {
        let (shape, read) = bincode::borrow_decode_from_slice::<Shape, _>(body, config())?;
        let stored = Values::Stored(Stored {
            bytes: body.slice(..read),
            changes: BTreeMap::new(),
            merged: OnceLock::new(),
        });
        let values = if shape.ordered {
            stored
        } else {
            Values::Owned(stored.to_map())
        };
        Ok((values, read))
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&[u8]> {
        match self {
            Values::Owned(map) => map.get(key).map(Vec::as_slice),
            Values::Stored(stored) => match stored.changes.get(key) {
                Some(changed) => changed.as_deref(),
                None => Entries::of(&stored.bytes)
                    .take_while(|(stored_key, _)| *stored_key <= key.as_bytes())
                    .find(|(stored_key, _)| *stored_key == key.as_bytes())
                    .map(|(_, value)| value),
            },
        }
    }

    /// Sets `key` to `value`.
    pub(crate) fn insert(&mut self, key: String, value: Vec<u8>) {
        match self {
            Values::Owned(map) => {
                map.insert(key, value);
            }
            Values::Stored(stored) => {
                stored.merged.take();
                stored.changes.insert(key, Some(value));
            }
        }
    }

    /// Removes `key`; returns whether it was there.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        if self.get(key).is_none() {
            return false;
        }
        match self {
            Values::Owned(map) => {
                map.remove(key);
            }
            Values::Stored(stored) => {
                stored.merged.take();
                stored.changes.insert(key.to_owned(), None);
            }
        }
        true
    }

    /// The entries, in key order, keys as bytes.
    fn entries(&self) -> Iter<'_> {
        match self {
            Values::Owned(map) => Iter::Owned(map.iter()),
            Values::Stored(stored) if stored.changes.is_empty() => {
                Iter::Stored(Entries::of(&stored.bytes))
            }
            Values::Stored(stored) => Iter::Merged(Merge {
                stored: Entries::of(&stored.bytes).peekable(),
                changes: stored.changes.iter().peekable(),
            }),
        }
    }

    /// The entries, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        // Every key was checked to be UTF-8 when it was loaded or set.
        self.entries()
            .filter_map(|(key, value)| Some((std::str::from_utf8(key).ok()?, value)))
    }

    /// Whether no key holds a value.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries().next().is_none()
    }

    /// The map as a map.
    pub(crate) fn map(&self) -> &BTreeMap<String, Vec<u8>> {
        match self {
            Values::Owned(map) => map,
            Values::Stored(stored) => stored.merged.get_or_init(|| self.to_map()),
        }
    }

    /// The map, mutable: from here on it is kept in memory.
    pub(crate) fn map_mut(&mut self) -> &mut BTreeMap<String, Vec<u8>> {
        if let Values::Stored(stored) = self {
            let map = match stored.merged.take() {
                Some(map) => map,
                None => self.to_map(),
            };
            *self = Values::Owned(map);
        }
        match self {
            Values::Owned(map) => map,
            // Made owned just above.
            Values::Stored(_) => unreachable!("values were just made owned"),
        }
    }

    fn to_map(&self) -> BTreeMap<String, Vec<u8>> {
        self.iter()
            .map(|(key, value)| (key.to_owned(), value.to_vec()))
            .collect()
    }

    /// An upper bound of the encoded size, to size the encoder's buffer:
    /// each entry written, with room for its two varint lengths.
    ///
    /// A small stored map with changes is bounded by its stored bytes plus
    /// each change, without decoding it: walking the merged entries only to
    /// size the buffer cost as much as encoding them (about 1,500 of a
    /// memory-store save's 10,000 instructions), and what it saves is at
    /// most [`CHEAP_HINT_MAX`] bytes of spare room in a buffer that is sent
    /// and dropped, or shrunk by the store that keeps it. A larger map is
    /// walked, so entries a change replaces or removes do not count (review:
    /// a large value replaced by a small one sized the buffer, 1 MiB spare
    /// for a 42-byte record).
    pub(crate) fn encoded_len_hint(&self) -> usize {
        match self {
            Values::Stored(stored) if stored.changes.is_empty() => stored.bytes.len(),
            Values::Stored(stored) if stored.bytes.len() <= CHEAP_HINT_MAX => {
                let added: usize = stored
                    .changes
                    .iter()
                    .filter_map(|(key, value)| {
                        Some(entry_len_bound(key.len(), value.as_ref()?.len()))
                    })
                    .sum();
                MAX_COUNT_LEN + stored.bytes.len() + added
            }
            _ => {
                MAX_COUNT_LEN
                    + self
                        .entries()
                        .map(|(key, value)| entry_len_bound(key.len(), value.len()))
                        .sum::<usize>()
            }
        }
    }

    /// Appends the map's encoding (bincode's, of a `BTreeMap<String,
    /// Vec<u8>>`) to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let stored = match self {
            Values::Owned(map) => {
                return bincode::encode_into_std_write(map, out, config()).map(drop)
            }
            Values::Stored(stored) => stored,
        };
        if stored.changes.is_empty() {
            // Untouched since loaded: the stored bytes are the encoding.
            out.extend_from_slice(&stored.bytes);
            return Ok(());
        }
        // The entry count comes first but is known only at the end: leave
        // room for the longest count, and close the gap once it is known.
        let start = out.len();
        out.extend_from_slice(&[0; MAX_COUNT_LEN]);
        let bytes = &stored.bytes[..];
        let offset_after =
            |value: &[u8]| value.as_ptr() as usize - bytes.as_ptr() as usize + value.len();
        let mut entries = Entries::of(bytes);
        let mut count = entries.left;
        let mut changes = stored.changes.iter().peekable();
        // Unchanged entries are copied in runs, straight from `bytes`.
        let mut run_start = entries.start;
        let mut entry_start = run_start;
        let write_change = |out: &mut Vec<u8>, key: &str, value: &Option<Vec<u8>>| match value {
            Some(value) => {
                bincode::encode_into_std_write((key, value.as_slice()), out, config()).map(drop)
            }
            None => Ok(()),
        };
        for (key, value) in entries.by_ref() {
            let entry_end = offset_after(value);
            while let Some((changed_key, change)) =
                changes.next_if(|(changed_key, _)| changed_key.as_bytes() <= key)
            {
                out.extend_from_slice(&bytes[run_start..entry_start]);
                write_change(out, changed_key, change)?;
                if changed_key.as_bytes() == key {
                    // The change replaces the stored entry, or removes it.
                    run_start = entry_end;
                    count -= u64::from(change.is_none());
                } else {
                    run_start = entry_start;
                    count += u64::from(change.is_some());
                }
            }
            entry_start = entry_end;
        }
        out.extend_from_slice(&bytes[run_start..entry_start]);
        for (changed_key, change) in changes {
            write_change(out, changed_key, change)?;
            count += u64::from(change.is_some());
        }
        let mut prefix = [0u8; MAX_COUNT_LEN];
        let prefix_len = bincode::encode_into_slice(count, &mut prefix, config())?;
        out.splice(
            start..start + MAX_COUNT_LEN,
            prefix[..prefix_len].iter().copied(),
        );
        Ok(())
    }
}

/// The longest varint bincode writes for a `u64`.
const MAX_COUNT_LEN: usize = 9;

/// The most bytes an entry of `key_len` and `value_len` bytes encodes to:
/// both, each after a varint length of at most [`MAX_COUNT_LEN`] bytes.
fn entry_len_bound(key_len: usize, value_len: usize) -> usize {
    key_len + value_len + 2 * MAX_COUNT_LEN
}

impl PartialEq for Values {
    fn eq(&self, other: &Self) -> bool {
        self.entries().eq(other.entries())
    }
}

impl Eq for Values {}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// An iterator over [`Values::entries`].
enum Iter<'a> {
    Owned(btree_map::Iter<'a, String, Vec<u8>>),
    Stored(Entries<'a>),
    Merged(Merge<'a>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Owned(map) => map
                .next()
                .map(|(key, value)| (key.as_bytes(), value.as_slice())),
            Iter::Stored(entries) => entries.next(),
            Iter::Merged(merge) => merge.next(),
        }
    }
}

/// Stored entries with changes laid over them, in key order.
struct Merge<'a> {
    stored: Peekable<Entries<'a>>,
    changes: Peekable<btree_map::Iter<'a, String, Option<Vec<u8>>>>,
}

impl<'a> Iterator for Merge<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_change = match (self.stored.peek(), self.changes.peek()) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((stored_key, _)), Some((changed_key, _))) => {
                    if *stored_key == changed_key.as_bytes() {
                        // The change replaces (or removes) the stored entry.
                        self.stored.next();
                        true
                    } else {
                        changed_key.as_bytes() < *stored_key
                    }
                }
            };
            if !take_change {
                return self.stored.next();
            }
            if let Some((key, Some(value))) = self.changes.next() {
                return Some((key.as_bytes(), value.as_slice()));
            }
            // A removal: nothing to yield for it.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(pairs: &[(&str, &[u8])]) -> Values {
        let map: BTreeMap<String, Vec<u8>> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        let bytes = Bytes::from(bincode::encode_to_vec(&map, config()).unwrap());
        let (values, read) = Values::check(&bytes).unwrap();
        assert_eq!(read, bytes.len());
        assert!(matches!(values, Values::Stored(_)));
        values
    }

    fn encoded(values: &Values) -> Vec<u8> {
        let mut out = Vec::new();
        values.encode_into(&mut out).unwrap();
        out
    }

    #[test]
    fn stored_values_read_change_and_encode_like_a_map() {
        let mut values = stored(&[("a", b"1"), ("c", b"3"), ("e", b"5")]);
        let mut model: BTreeMap<String, Vec<u8>> = values.map().clone();
        assert_eq!(values.get("c"), Some(&b"3"[..]));
        assert_eq!(values.get("b"), None);
        assert_eq!(values.get("z"), None);

        values.insert("b".into(), b"2".to_vec());
        model.insert("b".into(), b"2".to_vec());
        values.insert("e".into(), b"55".to_vec());
        model.insert("e".into(), b"55".to_vec());
        assert!(values.remove("a"));
        model.remove("a");
        assert!(!values.remove("zz"));
        values.insert("f".into(), Vec::new());
        model.insert("f".into(), Vec::new());

        assert_eq!(values.map(), &model);
        assert_eq!(values.get("e"), Some(&b"55"[..]));
        assert_eq!(values.get("a"), None);
        assert_eq!(
            encoded(&values),
            bincode::encode_to_vec(&model, config()).unwrap()
        );
        assert!(values.encoded_len_hint() >= encoded(&values).len());

        // Removing every entry leaves an empty map, encoded as one.
        for key in ["b", "c", "e", "f"] {
            assert!(values.remove(key), "{key}");
        }
        assert!(values.is_empty());
        assert_eq!(encoded(&values), [0]);
    }

    #[test]
    fn any_changes_over_any_stored_map_encode_as_the_same_map_would() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let keys = ["", "a", "ab", "b", "k1", "k2", "z", "é"];
        for _ in 0..2000 {
            let mut stored_pairs: Vec<(&str, Vec<u8>)> = Vec::new();
            for key in keys {
                if rng.random_bool(0.5) {
                    let len = rng.random_range(0..300);
                    stored_pairs.push((key, vec![rng.random::<u8>(); len]));
                }
            }
            let borrowed: Vec<(&str, &[u8])> = stored_pairs
                .iter()
                .map(|(k, v)| (*k, v.as_slice()))
                .collect();
            let mut values = stored(&borrowed);
            let mut model = values.map().clone();
            for _ in 0..rng.random_range(0..6) {
                let key = keys[rng.random_range(0..keys.len())];
                if rng.random_bool(0.6) {
                    let value = vec![rng.random::<u8>(); rng.random_range(0..300)];
                    values.insert(key.into(), value.clone());
                    model.insert(key.into(), value);
                } else {
                    assert_eq!(values.remove(key), model.remove(key).is_some());
                }
                assert_eq!(values.get(key), model.get(key).map(Vec::as_slice));
            }
            let expected = bincode::encode_to_vec(&model, config()).unwrap();
            assert_eq!(encoded(&values), expected, "{model:?}");
            let hint = values.encoded_len_hint();
            assert!(hint >= expected.len());
            assert!(
                hint - expected.len() <= MAX_COUNT_LEN + CHEAP_HINT_MAX + 18 * keys.len(),
                "{hint} bytes reserved for {}",
                expected.len()
            );
            assert_eq!(values.is_empty(), model.is_empty());
            assert_eq!(values.map(), &model);
        }
    }

    #[test]
    fn a_replaced_value_reserves_its_old_size_only_in_a_small_map() {
        // Small: bounded without decoding, so the replaced value's room is
        // reserved again, and that is at most CHEAP_HINT_MAX.
        let old = vec![7u8; CHEAP_HINT_MAX - 100];
        let mut values = stored(&[("big", &old), ("n", b"1")]);
        values.insert("big".into(), b"x".to_vec());
        let written = encoded(&values).len();
        let spare = values.encoded_len_hint() - written;
        assert!(spare >= old.len() && spare <= CHEAP_HINT_MAX + MAX_COUNT_LEN + 18);

        // Just over: walked, so what the change replaced does not count.
        let old = vec![7u8; CHEAP_HINT_MAX + 1];
        let mut values = stored(&[("big", &old), ("n", b"1")]);
        values.insert("big".into(), b"x".to_vec());
        let written = encoded(&values).len();
        let spare = values.encoded_len_hint() - written;
        assert!(spare <= MAX_COUNT_LEN + 2 * 18, "{spare} spare bytes");
    }

    #[test]
    fn an_untouched_map_is_encoded_as_the_bytes_it_came_in() {
        let values = stored(&[("k", b"v"), ("x", b"")]);
        let Values::Stored(inner) = &values else {
            unreachable!()
        };
        assert_eq!(encoded(&values), inner.bytes.as_ref());
    }

    #[test]
    fn a_mutable_borrow_keeps_every_change() {
        let mut values = stored(&[("a", b"1"), ("b", b"2")]);
        values.insert("c".into(), b"3".to_vec());
        assert!(values.remove("a"));
        values.map_mut().insert("d".into(), b"4".to_vec());
        assert!(matches!(values, Values::Owned(_)));
        assert_eq!(
            values.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["b", "c", "d"]
        );
    }

    #[test]
    fn keys_out_of_order_or_repeated_are_kept_as_a_map_would() {
        // Count 3, then ("b", [2]), ("a", [1]), ("b", [3]).
        let body = Bytes::from_static(&[3, 1, b'b', 1, 2, 1, b'a', 1, 1, 1, b'b', 1, 3, 9]);
        let (values, read) = Values::check(&body).unwrap();
        assert_eq!(read, body.len() - 1);
        assert!(matches!(values, Values::Owned(_)));
        assert_eq!(values.get("b"), Some(&[3u8][..]));
        assert_eq!(values.iter().count(), 2);
    }

    #[test]
    fn a_corrupt_map_is_an_error_not_a_panic_or_an_allocation() {
        for body in [
            &[][..],
            &[1],
            &[1, 1, b'a'],
            &[1, 1, 0xff, 0],
            &[1, 1, b'a', 5, 1],
            &[253, 255, 255, 255, 255, 255, 255, 255, 255],
        ] {
            assert!(
                Values::check(&Bytes::copy_from_slice(body)).is_err(),
                "{body:?}"
            );
        }
    }
}

//! The session record and its typed data.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::values::Values;

/// The bincode configuration of every stored value.
pub(crate) const VALUE_CONFIG: bincode::config::Configuration = bincode::config::standard();

/// Encodes one value the way [`Session::insert`] stores it (serde + bincode 2).
pub fn encode_value<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, VALUE_CONFIG).map_err(|e| Error::Encode {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Decodes one value stored by [`encode_value`]; trailing bytes are an error,
/// so reading a value back as a narrower type fails instead of guessing.
///
/// A corrupt length prefix must not make the decoder allocate whatever it
/// claims (found by fuzzing: a 300-byte record asked for 1.4 EB). Decoded
/// sizes are capped at 64 times the encoded size (room for varint-packed
/// numbers widening in memory), at least 1 MiB and at most 64 MiB.
pub fn decode_value<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    let budget = bytes.len().saturating_mul(64);
    let decoded = if budget <= 1 << 20 {
        decode_within::<T, { 1 << 20 }>(bytes)
    } else if budget <= 4 << 20 {
        decode_within::<T, { 4 << 20 }>(bytes)
    } else if budget <= 16 << 20 {
        decode_within::<T, { 16 << 20 }>(bytes)
    } else {
        decode_within::<T, { 64 << 20 }>(bytes)
    };
    let (value, read) = decoded.map_err(|e| Error::decode(key, e))?;
    if read != bytes.len() {
        return Err(Error::decode(
            key,
            format!("{} trailing bytes after the value", bytes.len() - read),
        ));
    }
    Ok(value)
}

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice::<T, _>(bytes, VALUE_CONFIG.with_limit::<LIMIT>())
}

/// Milliseconds since the Unix epoch: the precision of every stored time.
pub fn unix_millis(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The inverse of [`unix_millis`]; out-of-range values saturate.
pub fn from_unix_millis(millis: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(millis as i128 * 1_000_000).unwrap_or(if millis < 0 {
        OffsetDateTime::UNIX_EPOCH
    } else {
        time::PrimitiveDateTime::MAX.assume_utc()
    })
}

/// Now, in stored precision.
pub fn now_millis() -> i64 {
    // Straight from the system clock: this runs on every store operation,
    // and going through `OffsetDateTime` costs a 128-bit division.
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => since.as_millis().min(i64::MAX as u128) as i64,
        Err(before) => -(before.duration().as_millis().min(i64::MAX as u128) as i64),
    }
}

/// A session: its id, typed data, flash values, times and version.
///
/// Values are stored as bytes (serde + bincode 2) under string keys and read
/// back typed with [`get`](Self::get). bincode is not self-describing, so read
/// a value back as the type it was written as; `serde_json::Value` and other
/// `deserialize_any` types cannot be stored.
///
/// Times have millisecond precision, which is what every store keeps.
///
/// A loaded session keeps its values as the record stored them: reading a
/// value decodes only that value, and saving copies every value this
/// request did not change straight from the loaded bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    id: SessionId,
    data: Values,
    flash: Values,
    created_at_ms: i64,
    expires_at_ms: i64,
    version: u64,
    recent_writes: Vec<u64>,
    user: Option<UserBinding>,
}

/// The application user a session is bound to (see
/// [`ActiveSession::set_user`](crate::ActiveSession::set_user)), kept in the
/// record so that each store can index sessions by user in the same write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserBinding {
    /// The application's key for the user (a user id; never a secret).
    pub key: String,
    /// Small app-chosen labels set at login (a device name, an IP range).
    pub metadata: BTreeMap<String, String>,
    /// When the session was bound (the login), Unix milliseconds: unlike
    /// `created_at`, which a login from an older anonymous session keeps.
    pub bound_at_ms: i64,
}

/// The longest user key, in bytes.
pub const MAX_USER_KEY_LEN: usize = 256;
/// The most metadata entries a binding may carry.
pub const MAX_USER_METADATA_ENTRIES: usize = 16;
/// The longest metadata key or value, in bytes.
pub const MAX_USER_METADATA_LEN: usize = 256;

impl UserBinding {
    /// A binding to `key` with `metadata`, or [`Error::Encode`] when the key
    /// is empty, too long or holds control characters, or the metadata is
    /// too large (the index keeps them small and storable everywhere).
    pub fn new(key: impl Into<String>, metadata: BTreeMap<String, String>) -> Result<Self> {
        let key = key.into();
        if key.is_empty() || key.len() > MAX_USER_KEY_LEN || key.chars().any(char::is_control) {
            return Err(Error::Encode {
                key: "user key".into(),
                reason: format!(
                    "a user key must be 1 to {MAX_USER_KEY_LEN} bytes without control characters; this one has {} bytes",
                    key.len()
                ),
            });
        }
        if metadata.len() > MAX_USER_METADATA_ENTRIES
            || metadata
                .iter()
                .any(|(k, v)| k.len() > MAX_USER_METADATA_LEN || v.len() > MAX_USER_METADATA_LEN)
        {
            return Err(Error::Encode {
                key: "user metadata".into(),
                reason: format!(
                    "at most {MAX_USER_METADATA_ENTRIES} entries of at most {MAX_USER_METADATA_LEN} bytes each"
                ),
            });
        }
        Ok(UserBinding {
            key,
            metadata,
            bound_at_ms: now_millis(),
        })
    }
}

/// How many write ids a record remembers (see [`Session::recent_writes`]).
pub const RECENT_WRITES: usize = 8;

impl Session {
    /// A new, empty session created now, expiring after `ttl`, at version 1.
    pub fn new(id: SessionId, ttl: Duration) -> Self {
        let now = now_millis();
        Session {
            id,
            data: Values::default(),
            flash: Values::default(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64),
            version: 1,
            recent_writes: Vec::new(),
            user: None,
        }
    }

    /// Rebuilds a session from stored parts (for store implementations and the codec).
    pub fn from_parts(
        id: SessionId,
        data: BTreeMap<String, Vec<u8>>,
        flash: BTreeMap<String, Vec<u8>>,
        created_at_ms: i64,
        expires_at_ms: i64,
        version: u64,
    ) -> Self {
        Self::from_values(
            id,
            Values::Owned(data),
            Values::Owned(flash),
            created_at_ms,
            expires_at_ms,
            version,
        )
    }

    /// [`from_parts`](Self::from_parts) for the codec, which keeps the
    /// maps as loaded.
    pub(crate) fn from_values(
        id: SessionId,
        data: Values,
        flash: Values,
        created_at_ms: i64,
        expires_at_ms: i64,
        version: u64,
    ) -> Self {
        Session {
            id,
            data,
            flash,
            created_at_ms,
            expires_at_ms,
            version,
            recent_writes: Vec::new(),
            user: None,
        }
    }

    /// The data and flash maps, for the encoder.
    pub(crate) fn values(&self) -> (&Values, &Values) {
        (&self.data, &self.flash)
    }

    /// The user this session is bound to, if any.
    pub fn user(&self) -> Option<&UserBinding> {
        self.user.as_ref()
    }

    /// The key of the user this session is bound to, if any.
    pub fn user_key(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.key.as_str())
    }

    /// Binds the session to a user, or unbinds it (for the manager, the
    /// codec and store implementations).
    pub fn set_user(&mut self, user: Option<UserBinding>) {
        self.user = user;
    }

    /// The ids of the last saves that wrote this record, newest first (at
    /// most [`RECENT_WRITES`]).
    ///
    /// The manager stamps every save with a random write id. When a save's
    /// reply is lost (a timeout after the backend applied it), re-reading
    /// the record and finding the id here proves the save landed, so it is
    /// never applied a second time. Stores keep this list as part of the
    /// encoded record; they never interpret it.
    pub fn recent_writes(&self) -> &[u64] {
        &self.recent_writes
    }

    /// Replaces the write-id history (for the codec and store implementations).
    pub fn set_recent_writes(&mut self, mut writes: Vec<u64>) {
        writes.truncate(RECENT_WRITES);
        self.recent_writes = writes;
    }

    /// Records `write_id` as the newest write, unless it already is.
    pub fn stamp_write(&mut self, write_id: u64) {
        if self.recent_writes.first() != Some(&write_id) {
            self.recent_writes.insert(0, write_id);
            self.recent_writes.truncate(RECENT_WRITES);
        }
    }

    /// The store key.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Gives the session another id (used by regeneration).
    pub fn set_id(&mut self, id: SessionId) {
        self.id = id;
    }

    /// Reads `key` as a `T`: `Ok(None)` when absent, [`Error::Decode`] when the
    /// stored bytes are not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.data
            .get(key)
            .map(|bytes| decode_value(key, bytes))
            .transpose()
    }

    /// The encoded value under `key` (as [`encode_value`] made it).
    pub fn value_bytes(&self, key: &str) -> Option<&[u8]> {
        self.data.get(key)
    }

    /// Stores an already encoded value under `key`.
    pub fn insert_bytes(&mut self, key: impl Into<String>, bytes: Vec<u8>) {
        self.data.insert(key.into(), bytes);
    }

    /// The encoded flash value under `key`.
    pub fn flash_bytes(&self, key: &str) -> Option<&[u8]> {
        self.flash.get(key)
    }

    /// Sets an encoded flash value under `key`.
    pub fn insert_flash_bytes(&mut self, key: impl Into<String>, bytes: Vec<u8>) {
        self.flash.insert(key.into(), bytes);
    }

    /// Removes the flash value under `key`; returns whether it was there.
    pub fn remove_flash(&mut self, key: &str) -> bool {
        self.flash.remove(key)
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub fn insert<T: Serialize + ?Sized>(
        &mut self,
        key: impl Into<String>,
        value: &T,
    ) -> Result<()> {
        let key = key.into();
        let bytes = encode_value(&key, value)?;
        self.data.insert(key, bytes);
        Ok(())
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        self.data.remove(key)
    }

    /// Whether `key` holds a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.data.get(key).is_some()
    }

    /// The data keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.data.iter().map(|(key, _)| key)
    }

    /// Whether the session holds no data, no flash values and no user
    /// binding: nothing worth storing.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && self.flash.is_empty() && self.user.is_none()
    }

    /// The encoded data, key by key. For a loaded session the map is
    /// built on the first call; [`value_bytes`](Self::value_bytes) and
    /// [`get`](Self::get) read one value without building it.
    pub fn data(&self) -> &BTreeMap<String, Vec<u8>> {
        self.data.map()
    }

    /// The encoded data, mutable. [`insert_bytes`](Self::insert_bytes) and
    /// [`remove`](Self::remove) change one value without building the map.
    pub fn data_mut(&mut self) -> &mut BTreeMap<String, Vec<u8>> {
        self.data.map_mut()
    }

    /// Flash values waiting for the next request, encoded (built on the
    /// first call, like [`data`](Self::data)).
    pub fn flash(&self) -> &BTreeMap<String, Vec<u8>> {
        self.flash.map()
    }

    pub(crate) fn flash_values(&self) -> &Values {
        &self.flash
    }

    /// Flash values, mutable.
    pub fn flash_mut(&mut self) -> &mut BTreeMap<String, Vec<u8>> {
        self.flash.map_mut()
    }

    /// When the session was first created.
    pub fn created_at(&self) -> OffsetDateTime {
        from_unix_millis(self.created_at_ms)
    }

    /// [`created_at`](Self::created_at) in Unix milliseconds.
    pub fn created_at_millis(&self) -> i64 {
        self.created_at_ms
    }

    /// When the session stops being valid.
    pub fn expires_at(&self) -> OffsetDateTime {
        from_unix_millis(self.expires_at_ms)
    }

    /// [`expires_at`](Self::expires_at) in Unix milliseconds.
    pub fn expires_at_millis(&self) -> i64 {
        self.expires_at_ms
    }

    /// Moves the expiry (truncated to milliseconds).
    pub fn set_expires_at(&mut self, expires_at: OffsetDateTime) {
        self.expires_at_ms = unix_millis(expires_at);
    }

    /// Moves the expiry, in Unix milliseconds.
    pub fn set_expires_at_millis(&mut self, expires_at_ms: i64) {
        self.expires_at_ms = expires_at_ms;
    }

    /// Whole seconds until expiry, never below 0 (the seed's `getRemainingSeconds`).
    pub fn remaining_seconds(&self) -> u64 {
        let left = self.expires_at_ms.saturating_sub(now_millis());
        if left <= 0 {
            0
        } else {
            left as u64 / 1000
        }
    }

    /// Whether the session has expired at `now_ms` (Unix milliseconds).
    pub fn is_expired_at(&self, now_ms: i64) -> bool {
        self.expires_at_ms <= now_ms
    }

    /// Whether the session has expired now.
    pub fn is_expired(&self) -> bool {
        self.is_expired_at(now_millis())
    }

    /// The version the store last saved (1 after `create`, +1 per `update`).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the version (for store implementations that keep it apart from the record).
    pub fn set_version(&mut self, version: u64) {
        self.version = version;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionToken;

    /// A string value of `len` bytes whose length prefix claims `claim`
    /// bytes (bincode's varint: 252, then a little-endian u32).
    fn claiming(claim: u32, len: usize) -> Vec<u8> {
        let mut bytes = vec![252];
        bytes.extend_from_slice(&claim.to_le_bytes());
        bytes.resize(len, b'x');
        bytes
    }

    #[test]
    fn decoded_sizes_are_capped_by_the_tier_of_the_encoded_size() {
        // (encoded size, its cap): 64 times the size, rounded up to a tier.
        for (len, cap) in [(100, 1 << 20), (20 << 10, 4 << 20), (100 << 10, 16 << 20)] {
            // A value of that size decodes...
            let value = "y".repeat(len);
            let bytes = encode_value("v", &value).unwrap();
            assert_eq!(decode_value::<String>("v", &bytes).unwrap(), value);
            // ...and one claiming more than its cap is refused by the cap,
            // before anything is allocated or read.
            let err = decode_value::<String>("v", &claiming(cap as u32 + 1, len)).unwrap_err();
            assert!(err.to_string().contains("LimitExceeded"), "{len}: {err}");
        }
    }

    #[test]
    fn stored_times_out_of_range_saturate_on_their_own_side() {
        let at = from_unix_millis(1_700_000_000_123);
        assert_eq!(unix_millis(at), 1_700_000_000_123);
        assert_eq!(from_unix_millis(i64::MIN), OffsetDateTime::UNIX_EPOCH);
        assert_eq!(
            from_unix_millis(i64::MAX),
            time::PrimitiveDateTime::MAX.assume_utc()
        );
    }

    #[test]
    fn a_session_is_expired_once_its_expiry_has_passed() {
        let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
        assert!(!s.is_expired());
        s.set_expires_at_millis(now_millis() - 1);
        assert!(s.is_expired());
    }

    #[test]
    fn typed_values_round_trip_and_wrong_types_fail() {
        let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
        s.insert("n", &42u64).unwrap();
        s.insert("s", "héllo").unwrap();
        assert_eq!(s.get::<u64>("n").unwrap(), Some(42));
        assert_eq!(s.get::<String>("s").unwrap().as_deref(), Some("héllo"));
        assert_eq!(s.get::<u8>("missing").unwrap(), None);
        assert!(matches!(s.get::<u64>("s"), Err(Error::Decode { .. })));
        assert!(s.remove("n"));
        assert!(!s.contains_key("n"));
        assert_eq!(s.keys().collect::<Vec<_>>(), ["s"]);
    }

    #[test]
    fn a_corrupt_length_prefix_is_an_error_not_a_huge_allocation() {
        // From the record_decode fuzz target: a string claiming ~1.4 EB.
        let claim = [0xffu8, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, b'x'];
        assert!(matches!(
            decode_value::<String>("k", &claim),
            Err(Error::Decode { .. })
        ));
        assert!(matches!(
            decode_value::<Vec<u64>>("k", &claim),
            Err(Error::Decode { .. })
        ));
        // Just past the cap for a small value: refused, not allocated.
        let mut big_claim = vec![0xfc];
        big_claim.extend_from_slice(&(2u32 << 20).to_le_bytes());
        assert!(matches!(
            decode_value::<String>("k", &big_claim),
            Err(Error::Decode { .. })
        ));
    }

    #[test]
    fn remaining_seconds_never_negative() {
        let mut s = Session::new(SessionToken::generate().id(), Duration::from_secs(60));
        assert!((59..=60).contains(&s.remaining_seconds()));
        s.set_expires_at_millis(0);
        assert_eq!(s.remaining_seconds(), 0);
        assert!(s.is_expired());
    }
}

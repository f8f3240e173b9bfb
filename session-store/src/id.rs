//! Session tokens (what the cookie carries) and session ids (what stores see).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Bytes of entropy in a generated token: 256 bits.
const TOKEN_BYTES: usize = 32;
/// Shortest accepted token: 22 base64url characters carry 128 bits.
pub const MIN_TOKEN_LEN: usize = 22;
/// Longest accepted token, so hostile 10 KB cookies stop here.
pub const MAX_TOKEN_LEN: usize = 128;

/// Which bytes are in the base64url alphabet (`A-Z a-z 0-9 - _`): one
/// lookup per byte, since every request checks its cookie's token.
const BASE64URL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        b += 1;
    }
    table
};

/// The secret a client holds in its cookie.
///
/// 256 bits from a CSPRNG seeded by the operating system, rendered as
/// base64url without padding (43 characters). Stores never see it: they see
/// its [`SessionId`], a SHA-256 hash, so a leaked database, Redis dump or log
/// yields no usable cookie.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// Draws a fresh token from rand's thread-local generator
    /// ([`rand::rng`]: ChaCha12, seeded from the operating system and
    /// reseeded after every 64 KiB), as tower-sessions and actix-session do.
    ///
    /// Why not a `getrandom` system call per token: that call was about 650 ns
    /// on our benchmark machine, a third of a whole in-memory `create`; the
    /// generator takes about 25 ns and is as unpredictable.
    ///
    /// The one thing it does not survive is `fork()`. Each thread has its
    /// own generator, seeded on first use; a child process inherits the
    /// forking thread's, if that thread had used `rand::rng()` before the
    /// fork (for tokens or anything else). If both processes then draw
    /// tokens on that thread, they issue the same tokens in the same order,
    /// and a cookie from one process opens the session the other issues
    /// under the same token once the first record is gone: a stolen-session
    /// risk. Threads started after the fork (a tokio multi-thread runtime
    /// built in the child) seed afresh and are safe. A server that forks
    /// so must call `rand::rng().reseed()` in the child first, or set
    /// [`SessionConfig::token_generator`](crate::SessionConfig::token_generator)
    /// to one that reads `rand::rngs::OsRng` for every token.
    ///
    /// # Panics
    /// Only if the operating system cannot seed the generator at all, in
    /// which case no secure session can be issued.
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        SessionToken(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Validates a token that came from a client or a custom generator.
    ///
    /// Accepts only the base64url alphabet (`A-Z a-z 0-9 - _`) and a length
    /// of 22 to 128 characters; anything else (empty, NUL, `../`, quotes,
    /// 10 KB strings) is [`Error::InvalidId`].
    pub fn parse(input: &str) -> Result<Self> {
        if input.len() < MIN_TOKEN_LEN {
            return Err(Error::invalid_id(input, "shorter than 22 characters"));
        }
        if input.len() > MAX_TOKEN_LEN {
            return Err(Error::invalid_id(input, "longer than 128 characters"));
        }
        if !input.bytes().all(|b| BASE64URL[usize::from(b)]) {
            return Err(Error::invalid_id(
                input,
                "characters outside the base64url alphabet",
            ));
        }
        Ok(SessionToken(input.to_owned()))
    }

    /// The token as it goes into the cookie.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The store key for this token.
    pub fn id(&self) -> SessionId {
        let digest = Sha256::digest(self.0.as_bytes());
        SessionId(digest.into())
    }
}

impl fmt::Debug for SessionToken {
    // The token is a bearer secret: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionToken(<redacted>, id={})", self.id())
    }
}

/// The key a store files a session under: the SHA-256 of its token.
///
/// Displayed (and used in keys, rows and file names) as 64 lowercase hex
/// digits. It is safe to log.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 32]);

impl SessionId {
    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Rebuilds an id from its 32 raw bytes (as a store read them back).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SessionId(bytes)
    }

    /// Parses the 64-hex-digit form (as a store listed it), or
    /// [`Error::InvalidId`].
    pub fn from_hex(input: &str) -> Result<Self> {
        let raw = input.as_bytes();
        if raw.len() != 64 {
            return Err(Error::invalid_id(input, "not 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]);
            let lo = hex_value(pair[1]);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
                _ => return Err(Error::invalid_id(input, "not 64 lowercase hex digits")),
            }
        }
        Ok(SessionId(out))
    }

    /// The 64-hex-digit form.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        self.push_hex(&mut out);
        out
    }

    /// Appends the 64-hex-digit form to `out` (stores build keys with it
    /// without a formatting pass).
    pub fn push_hex(&self, out: &mut String) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        // Written as bytes and appended once: pushing 64 chars one by one
        // checked capacity and encoded UTF-8 for each (about 12
        // instructions a digit, on every Redis key built).
        let mut hex = [0u8; 64];
        for (pair, b) in hex.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
        // Always ASCII, so this never falls back.
        out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_the_boundary_lengths_parse() {
        for len in [MIN_TOKEN_LEN, MAX_TOKEN_LEN] {
            assert!(
                SessionToken::parse(&"a".repeat(len)).is_ok(),
                "length {len}"
            );
        }
        for len in [MIN_TOKEN_LEN - 1, MAX_TOKEN_LEN + 1] {
            assert!(
                SessionToken::parse(&"a".repeat(len)).is_err(),
                "length {len}"
            );
        }
    }

    #[test]
    fn an_id_is_its_tokens_digest_in_bytes_and_hex() {
        let token = SessionToken::generate();
        let id = token.id();
        let digest: [u8; 32] = Sha256::digest(token.as_str().as_bytes()).into();
        assert_eq!(id.as_bytes(), &digest);
        assert_eq!(
            SessionId::from_hex(&id.to_hex()).unwrap().as_bytes(),
            &digest
        );
        assert_eq!(SessionId::from_bytes(digest), id);
        assert!(format!("{token:?}").starts_with("SessionToken(<redacted>"));
    }

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = SessionToken::generate();
        let b = SessionToken::generate();
        assert_eq!(a.as_str().len(), 43);
        assert_ne!(a, b);
        assert_eq!(SessionToken::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn hostile_tokens_are_refused() {
        let long = "a".repeat(10_000);
        for bad in [
            "",
            "short",
            "../../../../etc/passwd/aaaaaaaaaa",
            "aaaaaaaaaaaaaaaaaaaaaa\0",
            "\"aaaaaaaaaaaaaaaaaaaaaaaaaa\"",
            "ééééééééééééééééééééééé",
            "aaaaaaaaaaaaaaaaaaaaaa=",
            long.as_str(),
        ] {
            assert!(
                matches!(SessionToken::parse(bad), Err(Error::InvalidId { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn id_is_a_hash_not_the_token() {
        let t = SessionToken::generate();
        let id = t.id();
        assert_eq!(id.to_hex().len(), 64);
        assert!(!id.to_hex().contains(t.as_str()));
        assert_eq!(SessionId::from_hex(&id.to_hex()).unwrap(), id);
        let by_format: String = id.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id.to_hex(), by_format);
        let mut appended = String::from("prefix:");
        id.push_hex(&mut appended);
        assert_eq!(appended, format!("prefix:{by_format}"));
        assert!(SessionId::from_hex("../etc").is_err());
        assert!(SessionId::from_hex(&"G".repeat(64)).is_err());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = SessionToken::generate();
        assert!(!format!("{t:?}").contains(t.as_str()));
    }
}

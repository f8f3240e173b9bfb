//! What the bench binaries share: the record shape of the peer drivers in `bench/peer`.

use std::time::Duration;

use server_session::{Session, SessionToken};

/// A fresh session shaped like the peer's record: a user id, a 64-char
/// CSRF token and four small fields (about 200 B encoded); `large` adds a
/// 3.9 KB string.
pub fn peer_record(ttl: Duration, large: bool) -> server_session::Result<Session> {
    let mut s = Session::new(SessionToken::generate().id(), ttl);
    s.insert("user_id", &4_815_162_342u64)?;
    s.insert(
        "csrf_token",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    )?;
    s.insert("locale", "en-US")?;
    s.insert("theme", "dark")?;
    s.insert("last_path", "/account/settings/notifications")?;
    s.insert("visits", &0u64)?;
    if large {
        s.insert("blob", &"x".repeat(3900))?;
    }
    Ok(s)
}

//! What the bench binaries share: the record shape of the peer drivers in
//! `bench/peer`, and where the servers are.

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

/// The value of the first of the environment variables `keys` that is set,
/// else `default`.
pub fn env_or(keys: &[&str], default: &str) -> String {
    keys.iter()
        .find_map(|k| std::env::var(k).ok())
        .unwrap_or_else(|| default.into())
}

/// A server's URL, as [`env_or`] finds it. Anything but a loopback host
/// ends the process (exit status 2) with the reason: these tools only ever
/// load, fill and empty local servers.
pub fn loopback_url(keys: &[&str], default: &str) -> String {
    let url = env_or(keys, default);
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let auth = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = auth.rsplit('@').next().unwrap_or("");
    let host = match hostport.strip_prefix('[') {
        Some(h) => h.split(']').next().unwrap_or(""),
        None => hostport.split(':').next().unwrap_or(""),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        let program = std::env::args().next().unwrap_or_default();
        let program = program.rsplit('/').next().unwrap_or("bench");
        eprintln!("{program}: refusing non-loopback host {host:?} in {url}");
        std::process::exit(2);
    }
    url
}

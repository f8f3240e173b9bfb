//! Shared by the backend tests: reaching servers, skipping, unique names.
#![allow(dead_code)]

pub mod proxy;

/// What to do when a backend's server cannot be reached: with `CI` set,
/// fail loudly; otherwise skip with one clear line.
pub fn unreachable(backend: &str, address: &str, error: impl std::fmt::Display) {
    if std::env::var_os("CI").is_some() {
        panic!("{backend} at {address} is unreachable and CI is set: {error}");
    }
    println!("skipping {backend} tests: {address} is unreachable ({error})");
}

/// A short random name, unique per test case, safe in keys, tables and paths.
pub fn unique(prefix: &str) -> String {
    let token = server_session::SessionToken::generate();
    let tail: String = token
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("{prefix}{}", tail.to_ascii_lowercase())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

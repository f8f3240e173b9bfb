//! Opening a store from one URL: [`open`] and [`open_with`].
//!
//! | URL | store | feature |
//! | --- | --- | --- |
//! | `memory`, `memory:` or `memory://` | [`MemoryStore`](crate::MemoryStore) | `memory` |
//! | `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:` | `SqliteStore` | `sqlite` |
//! | `postgres://USER:PASSWORD@HOST:PORT/DB` (or `postgresql://`) | `PostgresStore` | `postgres` |
//! | `mysql://USER:PASSWORD@HOST:PORT/DB` (or `mariadb://`) | `MysqlStore` | `mysql` |
//! | `redis://[:PASSWORD@]HOST:PORT[/DB]` (or `rediss://`) | `RedisStore` | `redis` |
//! | `redis+cluster://[:PASSWORD@]HOST:PORT,HOST:PORT,...` (some of the nodes) | `RedisClusterStore` | `redis` |
//! | `fs:///ABSOLUTE/DIR` or `fs://RELATIVE/DIR` | `FsStore` | `fs` |
//!
//! Schemes are case-insensitive. A SQLite path or an `fs://` directory
//! not starting with `/` is relative to the working directory
//! (`sqlite://sessions.db`, `fs://sessions`); `fs://` paths are
//! percent-decoded, so `%3F` stands for a `?` in a directory name and `%23`
//! for a `#` (a raw `#` is refused: drivers would drop what follows it).
//!
//! Query parameters of our own, removed before the URL reaches the driver:
//!
//! | parameter | schemes | meaning | default |
//! | --- | --- | --- | --- |
//! | `table` | `sqlite`, `postgres`, `mysql` | table name (a plain SQL identifier) | `sessions` |
//! | `schema` | `postgres` | schema of the table, created by the migration | the search path |
//! | `prefix` | `redis`, `redis+cluster` | key prefix: the store's namespace | `session:` |
//! | `sync` | `fs` | `true` or `false`: fsync every write and delete | `true` |
//!
//! Values are percent-decoded (`+` stays a plus sign) and may not be empty
//! or given twice. The drivers' own parameters pass through unchanged:
//! sqlx's for SQLite (`mode`, `cache`, `immutable`, `vfs`), PostgreSQL
//! (`sslmode`, `application_name`, `options`, ...) and MySQL (`sslmode`,
//! `charset`, `timezone`, ...), listed in [`parameters`]. Any other
//! parameter is [`Error::Config`]: a misspelt `tabel=` would otherwise
//! silently use the default table.
//!
//! SQL stores are migrated ([`OpenOptions::migrate`]), which is
//! idempotent and safe from several processes at once.
//!
//! Errors name the URL's scheme and the parameter at fault, never the URL
//! itself; errors from the stores name the address with its password
//! redacted (also a `password=` query parameter). [`redact_url`] gives the
//! same redaction for logs.

// Which helpers, fields and arguments a build uses depends on the backends
// compiled in; the build with all of them (CI's clippy) checks for the rest.
#![cfg_attr(
    not(all(
        feature = "memory",
        feature = "sqlite",
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "fs"
    )),
    allow(dead_code, unused_mut, unused_variables)
)]

use std::sync::Arc;

use crate::{Error, Result, SessionInterface};

/// Every scheme this crate knows, with the feature that compiles it in
/// and whether this build has it.
const BACKENDS: &[(&str, &[&str], bool)] = &[
    ("memory", &["memory"], cfg!(feature = "memory")),
    ("sqlite", &["sqlite"], cfg!(feature = "sqlite")),
    (
        "postgres",
        &["postgres", "postgresql"],
        cfg!(feature = "postgres"),
    ),
    ("mysql", &["mysql", "mariadb"], cfg!(feature = "mysql")),
    (
        "redis",
        &["redis", "rediss", "redis+cluster"],
        cfg!(feature = "redis"),
    ),
    ("fs", &["fs"], cfg!(feature = "fs")),
];

/// sqlx 0.8's own SQLite URL parameters, passed on unchanged.
const SQLITE_DRIVER: &[&str] = &["mode", "cache", "immutable", "vfs"];

/// sqlx 0.8's own PostgreSQL URL parameters, passed on unchanged
/// (`options[NAME]` stands for any name in the brackets).
const POSTGRES_DRIVER: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
    "options[NAME]",
];

/// sqlx 0.8's own MySQL URL parameters, passed on unchanged.
const MYSQL_DRIVER: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslca",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "charset",
    "collation",
    "statement-cache-capacity",
    "socket",
    "timezone",
    "time-zone",
];

/// Query parameters whose values are secrets, redacted like a password.
const SECRET_PARAMETERS: &[&str] = &["password", "pass", "passwd"];

/// What the URL's store is made with, beyond the URL: defaults for what
/// the URL does not say, and whether to migrate.
///
/// ```
/// let options = server_session::OpenOptions::new()
///     .default_prefix("myapp:session:")
///     .default_table("myapp_sessions");
/// ```
#[derive(Clone, Debug)]
pub struct OpenOptions {
    default_prefix: Option<String>,
    default_table: Option<String>,
    migrate: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            default_prefix: None,
            default_table: None,
            migrate: true,
        }
    }
}

impl OpenOptions {
    /// The defaults: each store's own prefix and table, migrations run.
    pub fn new() -> Self {
        Self::default()
    }

    /// The Redis key prefix when the URL has no `prefix` parameter
    /// (otherwise the store's default, `session:`).
    pub fn default_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.default_prefix = Some(prefix.into());
        self
    }

    /// The SQL table when the URL has no `table` parameter (otherwise
    /// the store's default, `sessions`).
    pub fn default_table(mut self, table: impl Into<String>) -> Self {
        self.default_table = Some(table.into());
        self
    }

    /// Whether to create or upgrade a SQL store's table before returning it
    /// (default `true`). Turn it off where the schema is managed elsewhere;
    /// the store then fails on first use if the table is missing.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }
}

/// Opens the store `url` names, with the default [`OpenOptions`]: each
/// store's default prefix or table unless the URL says otherwise, and SQL
/// tables migrated. See the [module docs](self) for the schemes and
/// parameters.
///
/// An unknown scheme, a scheme whose feature this build lacks, a malformed
/// URL or an unknown parameter is [`Error::Config`] naming the scheme (and
/// the compiled-in schemes); a server that cannot be reached is the
/// store's [`Error::Backend`] or [`Error::Unavailable`].
pub async fn open(url: &str) -> Result<Arc<dyn SessionInterface>> {
    open_with(url, &OpenOptions::default()).await
}

/// Opens the store `url` names with `options` (see [`open`]).
pub async fn open_with(url: &str, options: &OpenOptions) -> Result<Arc<dyn SessionInterface>> {
    let url = url.trim();
    let secrets = secrets(url);
    connect(url, options).await.map_err(|e| scrub(e, &secrets))
}

/// The schemes this build can open, for help texts (`memory`, `sqlite`, ...).
pub fn compiled_schemes() -> Vec<&'static str> {
    BACKENDS
        .iter()
        .filter(|(_, _, compiled)| *compiled)
        .flat_map(|(_, schemes, _)| schemes.iter().copied())
        .collect()
}

/// The query parameters `scheme` accepts: ours, then the driver's that are
/// passed on. Empty for a scheme this crate does not know.
pub fn parameters(scheme: &str) -> Vec<&'static str> {
    let (ours, driver) = parameters_of(&scheme.to_ascii_lowercase());
    ours.iter().chain(driver).copied().collect()
}

/// `url` with its password (in the user info or a `password=` parameter)
/// replaced, for logs and messages.
pub fn redact_url(url: &str) -> String {
    let url = url.trim();
    scrub_text(&session_store::backend::redact_url(url), &secrets(url))
}

fn parameters_of(scheme: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match scheme {
        "sqlite" => (&["table"], SQLITE_DRIVER),
        "postgres" | "postgresql" => (&["table", "schema"], POSTGRES_DRIVER),
        "mysql" | "mariadb" => (&["table"], MYSQL_DRIVER),
        "redis" | "rediss" | "redis+cluster" => (&["prefix"], &[]),
        "fs" => (&["sync"], &[]),
        _ => (&[], &[]),
    }
}

fn compiled_list() -> String {
    let schemes = compiled_schemes();
    if schemes.is_empty() {
        "none (enable a backend feature of server-session)".to_owned()
    } else {
        schemes.join(", ")
    }
}

async fn connect(url: &str, options: &OpenOptions) -> Result<Arc<dyn SessionInterface>> {
    // A bare `memory` is the one URL without a colon.
    let url = if url.eq_ignore_ascii_case("memory") {
        "memory:"
    } else {
        url
    };
    let Some((scheme, rest)) = url.split_once(':') else {
        return Err(Error::Config(format!(
            "store URL has no scheme (SCHEME://...); compiled-in schemes: {}",
            compiled_list()
        )));
    };
    let plain_scheme = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !plain_scheme {
        return Err(Error::Config(format!(
            "store URL has no valid scheme before its first ':' (letters, digits, '+', '-', '.'); compiled-in schemes: {}",
            compiled_list()
        )));
    }
    let scheme = scheme.to_ascii_lowercase();
    if url.contains('#') {
        // Drivers drop a fragment silently: `fs:///srv/a#b` would open
        // `/srv/a`. The URL is not echoed: a `#` may sit in a password.
        return Err(Error::Config(format!(
            "{scheme} store URL contains '#': a store URL has no fragment; write a '#' in a path or password as %23"
        )));
    }
    let Some((feature, _, compiled)) = BACKENDS
        .iter()
        .find(|(_, schemes, _)| schemes.contains(&scheme.as_str()))
    else {
        return Err(Error::Config(format!(
            "unknown store URL scheme {scheme:?}; compiled-in schemes: {}",
            compiled_list()
        )));
    };
    if !compiled {
        return Err(Error::Config(format!(
            "store URL scheme {scheme:?} needs the `{feature}` feature of server-session, which this build lacks; compiled-in schemes: {}",
            compiled_list()
        )));
    }
    let target = Target::parse(&scheme, rest)?;
    dispatch(target, options).await
}

/// A URL taken apart: its scheme (lower case), what follows the scheme's
/// colon up to the query, our parameters decoded, and the URL for the
/// driver (the scheme in lower case, our parameters removed).
struct Target {
    scheme: String,
    body: String,
    ours: Vec<(&'static str, String)>,
    driver_url: String,
}

impl Target {
    fn parse(scheme: &str, rest: &str) -> Result<Target> {
        let (before_fragment, fragment) = match rest.split_once('#') {
            Some((before, fragment)) => (before, Some(fragment)),
            None => (rest, None),
        };
        let (body, query) = match before_fragment.split_once('?') {
            Some((body, query)) => (body, query),
            None => (before_fragment, ""),
        };
        let (our_names, driver_names) = parameters_of(scheme);
        let mut ours: Vec<(&'static str, String)> = Vec::new();
        let mut passed: Vec<&str> = Vec::new();
        for piece in query.split('&').filter(|piece| !piece.is_empty()) {
            let (raw_name, raw_value) = piece.split_once('=').unwrap_or((piece, ""));
            let name = percent_decode(raw_name)
                .map_err(|e| Error::Config(format!("{scheme} store URL: a parameter name {e}")))?;
            if let Some(&known) = our_names.iter().find(|&&known| known == name) {
                let value = percent_decode(raw_value).map_err(|e| {
                    Error::Config(format!("{scheme} store URL: parameter `{known}` {e}"))
                })?;
                if value.is_empty() {
                    return Err(Error::Config(format!(
                        "{scheme} store URL: parameter `{known}` is empty"
                    )));
                }
                if ours.iter().any(|(seen, _)| *seen == known) {
                    return Err(Error::Config(format!(
                        "{scheme} store URL: parameter `{known}` is given twice"
                    )));
                }
                ours.push((known, value));
            } else if driver_names.contains(&name.as_str())
                || (scheme.starts_with("postgres")
                    && name.starts_with("options[")
                    && name.ends_with(']'))
            {
                passed.push(piece);
            } else {
                return Err(unknown_parameter(scheme, &name, our_names, driver_names));
            }
        }
        let mut driver_url = format!("{scheme}:{body}");
        if !passed.is_empty() {
            driver_url.push('?');
            driver_url.push_str(&passed.join("&"));
        }
        if let Some(fragment) = fragment {
            driver_url.push('#');
            driver_url.push_str(fragment);
        }
        Ok(Target {
            scheme: scheme.to_owned(),
            body: body.to_owned(),
            ours,
            driver_url,
        })
    }

    /// Our parameter `name`, if the URL gave it.
    fn take(&mut self, name: &str) -> Option<String> {
        let at = self.ours.iter().position(|(known, _)| *known == name)?;
        Some(self.ours.swap_remove(at).1)
    }
}

fn unknown_parameter(scheme: &str, name: &str, ours: &[&str], driver: &[&str]) -> Error {
    // A name is shown only when it is plainly a name: text after a stray
    // '?' inside a password would otherwise reach the message.
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'[' | b']'));
    let shown = if plain {
        format!("`{name}`")
    } else {
        "(a name that is not plain text, not shown)".to_owned()
    };
    let takes = match (ours.is_empty(), driver.is_empty()) {
        (true, _) => "takes no query parameters".to_owned(),
        (false, true) => format!("takes: {}", ours.join(", ")),
        (false, false) => format!(
            "takes: {}; and the driver's own, passed on: {}",
            ours.join(", "),
            driver.join(", ")
        ),
    };
    Error::Config(format!(
        "{scheme} store URL: unknown query parameter {shown}; {scheme}:// {takes}"
    ))
}

/// Decodes `%XX` escapes; `+` is left as it is.
fn percent_decode(text: &str) -> std::result::Result<String, &'static str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or("has a '%' not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once percent-decoded")
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn table(target: &mut Target, options: &OpenOptions) -> Option<String> {
    target
        .take("table")
        .or_else(|| options.default_table.clone())
}

async fn dispatch(mut target: Target, options: &OpenOptions) -> Result<Arc<dyn SessionInterface>> {
    match target.scheme.as_str() {
        #[cfg(feature = "memory")]
        "memory" => {
            if !matches!(target.body.as_str(), "" | "//") {
                return Err(Error::Config(
                    "memory store URL takes no host or path (write `memory://`)".into(),
                ));
            }
            Ok(Arc::new(crate::MemoryStore::new()))
        }
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            if matches!(target.body.as_str(), "" | "//") {
                return Err(Error::Config(
                    "sqlite store URL names no database (sqlite://PATH or sqlite::memory:)".into(),
                ));
            }
            let mut config = crate::SqliteConfig::new(target.driver_url.clone());
            if let Some(table) = table(&mut target, options) {
                config.table = table;
            }
            let store = crate::SqliteStore::connect_with(config).await?;
            if options.migrate {
                store.migrate().await?;
            }
            Ok(Arc::new(store))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let mut config = crate::PostgresConfig::new(target.driver_url.clone());
            if let Some(table) = table(&mut target, options) {
                config.table = table;
            }
            config.schema = target.take("schema");
            let store = crate::PostgresStore::connect_with(config).await?;
            if options.migrate {
                store.migrate().await?;
            }
            Ok(Arc::new(store))
        }
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => {
            let mut config = crate::MysqlConfig::new(target.driver_url.clone());
            if let Some(table) = table(&mut target, options) {
                config.table = table;
            }
            let store = crate::MysqlStore::connect_with(config).await?;
            if options.migrate {
                store.migrate().await?;
            }
            Ok(Arc::new(store))
        }
        #[cfg(feature = "redis")]
        "redis+cluster" => {
            let mut config = crate::RedisClusterConfig::from_url(&target.driver_url)?;
            if let Some(prefix) = target
                .take("prefix")
                .or_else(|| options.default_prefix.clone())
            {
                config.prefix = prefix;
            }
            Ok(Arc::new(
                crate::RedisClusterStore::connect_with(config).await?,
            ))
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            let mut config = crate::RedisConfig::new(target.driver_url.clone());
            if let Some(prefix) = target
                .take("prefix")
                .or_else(|| options.default_prefix.clone())
            {
                config.prefix = prefix;
            }
            Ok(Arc::new(crate::RedisStore::connect_with(config).await?))
        }
        #[cfg(feature = "fs")]
        "fs" => {
            let Some(path) = target.body.strip_prefix("//") else {
                return Err(Error::Config(
                    "fs store URL is fs:///ABSOLUTE/DIR or fs://RELATIVE/DIR".into(),
                ));
            };
            let path = percent_decode(path)
                .map_err(|e| Error::Config(format!("fs store URL: the directory {e}")))?;
            if path.is_empty() {
                return Err(Error::Config(
                    "fs store URL names no directory (fs:///ABSOLUTE/DIR or fs://RELATIVE/DIR)"
                        .into(),
                ));
            }
            let mut config = crate::FsConfig::new(path);
            if let Some(sync) = target.take("sync") {
                config.sync = match sync.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Error::Config(format!(
                            "fs store URL: parameter `sync` is {sync:?}, not true or false"
                        )))
                    }
                };
            }
            Ok(Arc::new(crate::FsStore::open_with(config).await?))
        }
        // Only schemes of compiled-in backends get here (see `connect`).
        other => Err(Error::Config(format!(
            "store URL scheme {other:?} is not compiled in; compiled-in schemes: {}",
            compiled_list()
        ))),
    }
}

/// The secrets `url` may carry: the password of its user info (as the
/// stores' redaction finds it, and up to the first '@') and the values of
/// password-like query parameters, each as written and percent-decoded.
fn secrets(url: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    // With or without the `//` (a mistyped `redis:/:pw@host` or
    // `redis:pw@host` still carries a password): the user info is what
    // comes before an `@`. Without the `//` it is not clear which part is
    // the password, so the whole user info counts as one.
    let after_scheme = url.split_once(':').map(|(_, rest)| rest);
    if let Some(rest) = after_scheme {
        let slashes = rest.starts_with("//");
        let rest = rest.trim_start_matches('/');
        let userinfos = [rest.find('@'), rest.rfind('@')];
        for at in userinfos.into_iter().flatten() {
            let userinfo = &rest[..at];
            if let Some((_, password)) = userinfo.split_once(':') {
                found.push(password.to_owned());
            }
            if !slashes {
                found.push(userinfo.trim_start_matches(':').to_owned());
            }
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for piece in query.split(['&', '#']) {
            if let Some((name, value)) = piece.split_once('=') {
                let name = percent_decode(name).unwrap_or_default();
                if SECRET_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) {
                    found.push(value.to_owned());
                }
            }
        }
    }
    let decoded: Vec<String> = found
        .iter()
        .filter_map(|secret| percent_decode(secret).ok())
        .collect();
    found.extend(decoded);
    found.retain(|secret| !secret.is_empty());
    // Longest first, so a secret containing another is replaced whole.
    found.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    found.dedup();
    found
}

fn scrub_text(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "<redacted>");
        }
    }
    text
}

/// `error` with every secret of the URL taken out of its messages (the
/// stores redact the user info's password, not a `password=` parameter).
fn scrub(error: Error, secrets: &[String]) -> Error {
    if secrets.is_empty() {
        return error;
    }
    match error {
        Error::Config(message) => Error::Config(scrub_text(&message, secrets)),
        Error::Backend {
            store,
            context,
            source,
        } => {
            let shown = source.to_string();
            let clean = scrub_text(&shown, secrets);
            Error::Backend {
                store,
                context: scrub_text(&context, secrets),
                source: if clean == shown { source } else { clean.into() },
            }
        }
        Error::Unavailable {
            store,
            context,
            source,
        } => {
            let shown = source.to_string();
            let clean = scrub_text(&shown, secrets);
            Error::Unavailable {
                store,
                context: scrub_text(&context, secrets),
                source: if clean == shown { source } else { clean.into() },
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab+c").unwrap(), "a:b+c");
        assert!(percent_decode("a%3").is_err());
        assert!(percent_decode("a%zz").is_err());
        assert!(percent_decode("%ff").is_err());
    }

    #[test]
    fn passwords_of_urls_missing_their_slashes_are_secrets_too() {
        for url in [
            "redis:/:hunter2@127.0.0.1:1",
            "redis::hunter2@127.0.0.1:1",
            "redis:hunter2@127.0.0.1:1",
            "redis+cluster::hunter2@127.0.0.1:1",
            "postgres:u:hunter2@h/db",
        ] {
            let found = secrets(url);
            assert!(
                found.iter().any(|s| s.contains("hunter2")),
                "{url}: {found:?}"
            );
            assert!(!redact_url(url).contains("hunter2"), "{url}");
        }
    }

    #[tokio::test]
    async fn a_fragment_is_refused_without_echoing_the_url() {
        for url in [
            "fs:///tmp/sessions#b",
            "redis://default:hun#ter2@127.0.0.1:6379",
            "memory:#x",
        ] {
            match open(url).await {
                Err(Error::Config(message)) => {
                    assert!(message.contains("'#'"), "{message}");
                    assert!(!message.contains("ter2") && !message.contains("sessions"));
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn secrets_of_user_info_and_parameters() {
        let found = secrets("postgres://u:p%40ss@h/db?application_name=a@b&password=q%2Fr");
        for secret in ["p%40ss", "p@ss", "q%2Fr", "q/r"] {
            assert!(found.iter().any(|s| s == secret), "{secret} in {found:?}");
        }
        assert!(secrets("redis://127.0.0.1:6379/0").is_empty());
        assert_eq!(
            redact_url("postgres://u:hunter2@h/db?password=hunter3"),
            "postgres://u@h/db?password=<redacted>"
        );
    }

    #[test]
    fn our_parameters_are_taken_out_and_the_drivers_passed_on() {
        let mut target = Target::parse(
            "postgres",
            "//u@h/db?sslmode=disable&table=t%5F1&options[search_path]=x#frag",
        )
        .unwrap();
        assert_eq!(target.take("table").as_deref(), Some("t_1"));
        assert_eq!(
            target.driver_url,
            "postgres://u@h/db?sslmode=disable&options[search_path]=x#frag"
        );
        for bad in [
            "table=",
            "table=a&table=b",
            "tabel=x",
            "table=%zz",
            "table%3=x",
        ] {
            assert!(
                matches!(
                    Target::parse("sqlite", &format!("x.db?{bad}")),
                    Err(Error::Config(_))
                ),
                "{bad}"
            );
        }
    }
}

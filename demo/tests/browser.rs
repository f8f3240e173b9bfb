//! End to end in headless Chromium: the demo on a free loopback port,
//! driven through chromedriver, against the SQLite and Redis backends, on
//! cookie-only sessions, and served by actix-web instead of axum.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}{}-{nanos}", std::process::id())
}

/// Without Chromium: skip with one line, or fail when CI is set.
fn browser_available() -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{CHROMIUM} or {CHROMEDRIVER} is missing and CI is set (apt-get install chromium chromium-driver)");
    }
    say_skipped(&format!(
        "the browser test: {CHROMIUM} or {CHROMEDRIVER} is not installed"
    ));
    false
}

/// Prints `SKIPPED <line>` to the real stderr: libtest captures `println!`
/// of a passing test, so a skip printed that way would look like a plain "ok".
fn say_skipped(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {line}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// Starts the demo with `store` (and any further arguments) and returns it
/// with its base URL.
async fn start_demo(store: &str, more: &[&str]) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server-session-demo"))
        .args(["--addr", "127.0.0.1:0", "--store", store])
        .args(more)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the demo");
    let stdout = child.stdout.take().expect("demo stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the demo printed its address in time")
        .expect("read the demo's stdout")
        .expect("the demo printed a line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (Running(child), url)
}

async fn start_chromedriver() -> (Running, String) {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (Running(child), url)
}

/// A browser with its own profile, so its own cookies.
async fn browser(driver: &str, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a chromium session")
}

async fn quote(client: &Client) -> String {
    let area = client
        .find(Locator::Id("quote"))
        .await
        .expect("the quote textarea");
    area.prop("value")
        .await
        .expect("its value")
        .unwrap_or_default()
}

async fn session_cookie(client: &Client) -> Option<String> {
    client
        .get_named_cookie("id")
        .await
        .ok()
        .map(|c| c.value().to_owned())
}

async fn wait_for(client: &Client, id: &str) {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id} never appeared: {e}"));
}

/// The whole scenario against one running demo.
async fn scenario(base: &str) {
    let (_driver, driver_url) = start_chromedriver().await;
    let profiles: Vec<PathBuf> = (0..2)
        .map(|_| std::env::temp_dir().join(unique("demo-browser-")))
        .collect();
    let alice = browser(&driver_url, &profiles[0]).await;
    let bob = browser(&driver_url, &profiles[1]).await;

    // Type a quote, save, reload: kept, with a one-time "Saved" flash.
    alice.goto(base).await.unwrap();
    assert_eq!(quote(&alice).await, "initial quote");
    let text = "To be, or not to be — ☃ <b>not bold</b>";
    let area = alice.find(Locator::Id("quote")).await.unwrap();
    area.clear().await.unwrap();
    area.send_keys(text).await.unwrap();
    alice
        .find(Locator::Id("save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&alice, "flash").await;
    let flash = alice
        .find(Locator::Id("flash"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(flash, "Saved");
    assert_eq!(quote(&alice).await, text);
    alice.refresh().await.unwrap();
    assert_eq!(
        quote(&alice).await,
        text,
        "the quote was not kept across a reload"
    );
    assert!(
        alice.find(Locator::Id("flash")).await.is_err(),
        "the flash showed twice"
    );

    // Another browser, other cookies: the default quote.
    bob.goto(base).await.unwrap();
    assert_eq!(quote(&bob).await, "initial quote");

    // Log in: a new session id (fixation protection), the quote survives.
    let before = session_cookie(&alice).await.expect("a session cookie");
    let name = alice.find(Locator::Id("name")).await.unwrap();
    name.send_keys("Ada").await.unwrap();
    alice
        .find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&alice, "greeting").await;
    let after = session_cookie(&alice)
        .await
        .expect("a session cookie after login");
    assert_ne!(before, after, "login kept the session id");
    assert_eq!(quote(&alice).await, text, "login lost the quote");
    let greeting = alice
        .find(Locator::Id("greeting"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(greeting.contains("Ada"), "{greeting}");

    // Log out: the cookie is expired and the quote is back to the default.
    alice
        .find(Locator::Id("logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&alice, "logged-out").await;
    assert_eq!(session_cookie(&alice).await, None, "logout left the cookie");
    alice
        .find(Locator::Id("home"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&alice, "quote").await;
    assert_eq!(quote(&alice).await, "initial quote");
    assert_ne!(
        session_cookie(&alice).await.as_deref(),
        Some(after.as_str())
    );

    alice.close().await.ok();
    bob.close().await.ok();
    for profile in profiles {
        std::fs::remove_dir_all(profile).ok();
    }
}

async fn rows(client: &Client) -> usize {
    client
        .find_all(Locator::Css("#sessions tr.session-row"))
        .await
        .map(|rows| rows.len())
        .unwrap_or(0)
}

async fn log_in_as(client: &Client, base: &str, name: &str) {
    client.goto(base).await.unwrap();
    let field = client.find(Locator::Id("name")).await.unwrap();
    field.send_keys(name).await.unwrap();
    client
        .find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(client, "greeting").await;
}

/// "Your sessions": two browser profiles log in as one user, each sees
/// both devices; one logs the other out, which is logged out on its next
/// request while the first stays logged in.
async fn sessions_scenario(base: &str) {
    let (_driver, driver_url) = start_chromedriver().await;
    let profiles: Vec<PathBuf> = (0..2)
        .map(|_| std::env::temp_dir().join(unique("demo-devices-")))
        .collect();
    let laptop = browser(&driver_url, &profiles[0]).await;
    let phone = browser(&driver_url, &profiles[1]).await;
    let user = unique("ada-");

    log_in_as(&laptop, base, &user).await;
    assert_eq!(rows(&laptop).await, 1, "one device after the first login");
    assert!(laptop.find(Locator::Id("current-session")).await.is_ok());
    assert!(
        laptop.find(Locator::Id("logout-others")).await.is_err(),
        "no other device to log out yet"
    );
    log_in_as(&phone, base, &user).await;
    assert_eq!(rows(&phone).await, 2, "the phone sees both devices");
    laptop.refresh().await.unwrap();
    wait_for(&laptop, "sessions").await;
    assert_eq!(rows(&laptop).await, 2, "the laptop sees both devices");
    let current = laptop
        .find(Locator::Css("#sessions tr.current"))
        .await
        .expect("the current device is marked");
    assert!(current.text().await.unwrap().contains("this device"));

    laptop
        .find(Locator::Id("logout-others"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&laptop, "flash").await;
    let flash = laptop
        .find(Locator::Id("flash"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(flash, "Logged out 1 other device(s)");
    assert_eq!(rows(&laptop).await, 1);

    phone.refresh().await.unwrap();
    wait_for(&phone, "name").await;
    assert!(
        phone.find(Locator::Id("greeting")).await.is_err(),
        "the revoked phone is still logged in"
    );
    laptop.refresh().await.unwrap();
    wait_for(&laptop, "greeting").await;

    laptop.close().await.ok();
    phone.close().await.ok();
    for profile in profiles {
        std::fs::remove_dir_all(profile).ok();
    }
}

#[tokio::test]
async fn your_sessions_card_logs_out_other_devices_on_sqlite() {
    if !browser_available() {
        return;
    }
    let dir = std::env::temp_dir().join(unique("demo-devices-sqlite-"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite://{}", dir.join("sessions.db").display());
    let (_demo, base) = start_demo(&store, &[]).await;
    sessions_scenario(&base).await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn your_sessions_card_logs_out_other_devices_through_actix_on_memory() {
    if !browser_available() {
        return;
    }
    let (_demo, base) = start_demo("memory", &["--framework", "actix"]).await;
    sessions_scenario(&base).await;
}

#[tokio::test]
async fn quote_page_in_chromium_on_sqlite() {
    if !browser_available() {
        return;
    }
    let dir = std::env::temp_dir().join(unique("demo-sqlite-"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite://{}", dir.join("sessions.db").display());
    let (_demo, base) = start_demo(&store, &[]).await;
    scenario(&base).await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn quote_page_in_chromium_on_cookie_only_sessions() {
    if !browser_available() {
        return;
    }
    let (_demo, base) = start_demo("cookie", &[]).await;
    scenario(&base).await;
}

#[tokio::test]
async fn quote_page_in_chromium_through_actix_web() {
    if !browser_available() {
        return;
    }
    let dir = std::env::temp_dir().join(unique("demo-actix-"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite://{}", dir.join("sessions.db").display());
    let (_demo, base) = start_demo(&store, &["--framework", "actix"]).await;
    scenario(&base).await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn quote_page_in_chromium_through_actix_web_on_cookie_only_sessions() {
    if !browser_available() {
        return;
    }
    let (_demo, base) = start_demo("cookie", &["--framework", "actix"]).await;
    scenario(&base).await;
}

#[tokio::test]
async fn quote_page_in_chromium_on_redis() {
    if !browser_available() {
        return;
    }
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let reachable = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .map(|hostport| std::net::TcpStream::connect(hostport).is_ok())
        .unwrap_or(false);
    if !reachable {
        if std::env::var_os("CI").is_some() {
            panic!("redis at {url} is unreachable and CI is set");
        }
        say_skipped(&format!("the redis browser test: {url} unreachable"));
        return;
    }
    let (_demo, base) = start_demo(&url, &[]).await;
    scenario(&base).await;
}

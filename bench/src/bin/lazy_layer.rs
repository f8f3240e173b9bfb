//! What `SessionLayer` costs a route that never uses the session: the same
//! axum router with and without the layer, in interleaved rounds.
//!
//! `lazy_layer [--rounds 21] [-n 200000] [--http-n 20000] [--mode all|inproc|http]`
//!
//! - `inproc`: the `Router` called in-process (`ServiceExt::ready` +
//!   `call`, no sockets) with a handler that returns a constant, so the
//!   layer's cost is compared with axum's routing alone. An identity layer
//!   (`MapRequestLayer`) is measured too: what any `Router::layer` costs;
//!   and `SessionLayer` wrapped around the whole `Router` (one layer for
//!   all routes, as `ServiceBuilder` does) rather than each route.
//! - `http`: both apps served by `axum::serve` on loopback, a blocking
//!   keep-alive HTTP/1.1 client on its own thread: the layer's cost in a
//!   served request. A second plain server is the A/A control (how far two
//!   identical servers differ on this machine); the layer around the whole
//!   `Router` is served too.
//!
//! Each is run without and with a valid session cookie. Prints one line per
//! case on stderr (median ns/request per app, median of the per-round
//! ratios app / plain and their interquartile range, and the ratio of the
//! best rounds) and one JSON object per case on stdout.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::Request;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use server_session::{MemoryStore, SessionConfig, SessionManager};
use session_axum::{Session, SessionLayer, SessionRejection};
use tower::util::MapRequestLayer;
use tower::{Layer, Service, ServiceExt};

async fn none() -> &'static str {
    "none"
}

async fn visits(session: Session) -> Result<String, SessionRejection> {
    let n = session.modify("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    Ok(n.to_string())
}

/// Every app has the same route table; only the layer differs.
fn routes() -> Router {
    Router::new()
        .route("/none", get(none))
        .route("/visits", get(visits))
}

fn die(message: &str) -> ! {
    eprintln!("lazy_layer: {message}");
    std::process::exit(2);
}

fn request(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    request
        .body(Body::empty())
        .unwrap_or_else(|e| die(&e.to_string()))
}

async fn call<S>(app: &mut S, request: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    let ready = match ServiceExt::<Request<Body>>::ready(app).await {
        Ok(ready) => ready,
        Err(never) => match never {},
    };
    match ready.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// `n` in-process requests to `/none`; ns per request.
async fn inproc_batch<S>(app: &mut S, n: u32, cookie: Option<&str>) -> f64
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    let started = Instant::now();
    for _ in 0..n {
        let response = call(app, request("/none", cookie)).await;
        if !response.status().is_success() || response.headers().contains_key(SET_COOKIE) {
            die(&format!("unexpected answer {response:?}"));
        }
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

/// A keep-alive HTTP/1.1 connection that sends `GET /none` and reads the
/// answer (headers, then `Content-Length` bytes of body).
struct Connection {
    stream: TcpStream,
    request: Vec<u8>,
    buffer: Vec<u8>,
}

impl Connection {
    fn open(address: SocketAddr, cookie: Option<&str>) -> Connection {
        let stream = TcpStream::connect(address).unwrap_or_else(|e| die(&e.to_string()));
        stream
            .set_nodelay(true)
            .unwrap_or_else(|e| die(&e.to_string()));
        let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
        let request = format!("GET /none HTTP/1.1\r\nHost: bench\r\n{cookie}\r\n").into_bytes();
        Connection {
            stream,
            request,
            buffer: Vec::with_capacity(1024),
        }
    }

    fn get(&mut self) {
        self.stream
            .write_all(&self.request)
            .unwrap_or_else(|e| die(&e.to_string()));
        self.buffer.clear();
        let mut chunk = [0u8; 1024];
        loop {
            let read = self
                .stream
                .read(&mut chunk)
                .unwrap_or_else(|e| die(&e.to_string()));
            if read == 0 {
                die("the server closed the connection");
            }
            self.buffer.extend_from_slice(&chunk[..read]);
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") || head.contains("set-cookie") {
                    die(&format!("unexpected answer {head:?}"));
                }
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| die("no content-length"));
                if self.buffer.len() >= end + 4 + length {
                    return;
                }
            }
        }
    }
}

/// `n` requests over `connection`; ns per request.
fn http_batch(connection: &mut Connection, n: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        connection.get();
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Runs `rounds` rounds of `batch(app)` for every app (the first is the
/// baseline), rotating which app goes first; reports each app against the
/// baseline.
fn report(
    mode: &str,
    case: &str,
    names: &[&str],
    rounds: usize,
    n: u32,
    mut batch: impl FnMut(usize) -> f64,
) {
    let apps = names.len();
    for app in 0..apps {
        batch(app); // warm-up, not counted
    }
    let mut times = vec![Vec::new(); apps];
    for round in 0..rounds {
        for k in 0..apps {
            let app = (round + k) % apps;
            times[app].push(batch(app));
        }
    }
    for app in 1..apps {
        let mut ratios: Vec<f64> = (0..rounds).map(|r| times[app][r] / times[0][r]).collect();
        let ratio = median(&mut ratios);
        let (low, high) = (ratios[rounds / 4], ratios[rounds * 3 / 4]);
        let base = median(&mut times[0].clone());
        let this = median(&mut times[app].clone());
        // Best rounds: the least disturbed by other load on the machine.
        let best = |t: &[f64]| t.iter().copied().fold(f64::INFINITY, f64::min);
        let (base_best, this_best) = (best(&times[0]), best(&times[app]));
        eprintln!(
            "{mode}, {case}: {} {base:.0} ns/request, {} {this:.0} ns/request (+{:.0} ns), \
             ratio {ratio:.3} (median of {rounds} rounds of {n}; interquartile {low:.3}..{high:.3}; \
             best rounds {base_best:.0} vs {this_best:.0} ns, {:.3})",
            names[0],
            names[app],
            this - base,
            this_best / base_best,
        );
        println!(
            "{}",
            serde_json::json!({
                "mode": mode,
                "case": case,
                "baseline": names[0],
                "app": names[app],
                "baseline_ns": (base * 10.0).round() / 10.0,
                "app_ns": (this * 10.0).round() / 10.0,
                "ratio": (ratio * 1000.0).round() / 1000.0,
                "ratio_p25": (low * 1000.0).round() / 1000.0,
                "ratio_p75": (high * 1000.0).round() / 1000.0,
                "baseline_best_ns": (base_best * 10.0).round() / 10.0,
                "app_best_ns": (this_best * 10.0).round() / 10.0,
                "ratio_best": (this_best / base_best * 1000.0).round() / 1000.0,
                "rounds": rounds,
                "n": n,
            })
        );
    }
}

fn main() {
    let mut rounds: usize = 21;
    let mut n: u32 = 200_000;
    let mut http_n: u32 = 20_000;
    let mut mode = String::from("all");
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let v = args.next().unwrap_or_default();
        match k.as_str() {
            "--rounds" => rounds = v.parse().unwrap_or_else(|_| die("--rounds N")),
            "-n" => n = v.parse().unwrap_or_else(|_| die("-n N")),
            "--http-n" => http_n = v.parse().unwrap_or_else(|_| die("--http-n N")),
            "--mode" => mode = v,
            _ => die("usage: lazy_layer [--rounds R] [-n N] [--http-n N] [--mode all|inproc|http]"),
        }
    }
    if rounds < 4 {
        die("--rounds must be at least 4");
    }
    let config = SessionConfig {
        secure: false,
        ..SessionConfig::default()
    };
    let manager = SessionManager::new(Arc::new(MemoryStore::new()), config)
        .unwrap_or_else(|e| die(&e.to_string()));
    let layer = SessionLayer::new(Arc::new(manager));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&e.to_string()));

    // A real session cookie, so that the cookie case carries one an eager
    // layer would load.
    let response = runtime.block_on(call(
        &mut routes().layer(layer.clone()),
        request("/visits", None),
    ));
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .unwrap_or_else(|| die("the session route set no cookie"));
    let cases = [
        ("no cookie", None),
        ("session cookie", Some(cookie.as_str())),
    ];

    if mode == "all" || mode == "inproc" {
        let mut apps = [
            routes(),
            routes().layer(layer.clone()),
            routes().layer(MapRequestLayer::new(|r: Request<Body>| r)),
        ];
        // The layer around the whole router instead of each route.
        let mut outer = layer.layer(routes());
        for (case, cookie) in cases {
            let names = [
                "plain",
                "SessionLayer",
                "identity layer",
                "SessionLayer around the Router",
            ];
            report("in-process", case, &names, rounds, n, |app| match app {
                3 => runtime.block_on(inproc_batch(&mut outer, n, cookie)),
                _ => runtime.block_on(inproc_batch(&mut apps[app], n, cookie)),
            });
        }
    }

    if mode == "all" || mode == "http" {
        // The servers get their own thread and runtime; the client blocks
        // on this one.
        let server = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| die(&e.to_string()));
        let bind = || {
            server.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .unwrap_or_else(|e| die(&e.to_string()));
                let address = listener
                    .local_addr()
                    .unwrap_or_else(|e| die(&e.to_string()));
                (listener, address)
            })
        };
        let mut addresses: Vec<SocketAddr> = Vec::new();
        // A second plain app is the A/A control: how far two identical
        // servers differ on this machine.
        for app in [routes(), routes().layer(layer.clone()), routes()] {
            let (listener, address) = bind();
            server.spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    die(&e.to_string());
                }
            });
            addresses.push(address);
        }
        let (listener, address) = bind();
        let outer = layer.layer(routes());
        server.spawn(async move {
            if let Err(e) = axum::serve(
                listener,
                axum::ServiceExt::<Request<Body>>::into_make_service(outer),
            )
            .await
            {
                die(&e.to_string());
            }
        });
        addresses.push(address);
        std::thread::spawn(move || server.block_on(std::future::pending::<()>()));
        for (case, cookie) in cases {
            let mut connections: Vec<Connection> = addresses
                .iter()
                .map(|&address| Connection::open(address, cookie))
                .collect();
            let names = [
                "plain",
                "SessionLayer",
                "plain again (control)",
                "SessionLayer around the Router",
            ];
            report("loopback HTTP", case, &names, rounds, http_n, |app| {
                http_batch(&mut connections[app], http_n)
            });
        }
    }
}

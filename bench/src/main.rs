//! server-session-bench: drives every server-session store through the
//! `SessionInterface` trait (and, for `request`, through the whole
//! `SessionManager` path), with the options, workloads, record shape and
//! JSON output of the peer drivers in `bench/peer`, so the two can be
//! compared cell by cell. One JSON object per cell on stdout; progress on stderr.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use server_session::cookie::{Cookie, CookieJar, Key};
use server_session::{
    jar_from_cookie_headers, FsConfig, FsStore, MemoryStore, MysqlConfig, MysqlStore,
    PostgresConfig, PostgresStore, RedisConfig, RedisStore, Session, SessionConfig, SessionId,
    SessionInterface, SessionManager, SessionToken, SqliteConfig, SqliteStore, UpdateOutcome,
};
use server_session_bench::{env_or, loopback_url, peer_record};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "usage: server-session-bench [--backend memory|redis|sqlite|postgres|mysql|fs]
  [--op load_save,create,load,delete,request] [-c 1,32] [-n OPS] [--secs S]
  [--size small|large] [--pool CONNS] [--prefill N] [--bound yes|no|bytes]
--bound yes binds every session to one of 1000 users (the user index at work),
rows labelled server-session+index; --bound bytes stores the same user key and
label as plain data instead (same record size, no index), rows labelled
server-session+bytes.
Lists run as a matrix (for each -c, each --op) in one process; each cell stops after
n ops or S seconds, whichever comes first.
env: REDIS_URL (redis://127.0.0.1:6379), DATABASE_URL or PG_URL
     (postgres://postgres@127.0.0.1:5432/test), MYSQL_URL (mysql://root@127.0.0.1:3306/test),
     SQLITE_PATH (/tmp/server-session-bench.sqlite),
     FS_PATH (/tmp/server-session-bench-fs)";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Op {
    Create,
    LoadSave,
    Load,
    Delete,
    Request,
}

impl Op {
    fn parse(s: &str) -> Op {
        match s {
            "create" => Op::Create,
            "load_save" => Op::LoadSave,
            "load" => Op::Load,
            "delete" => Op::Delete,
            "request" => Op::Request,
            _ => die(&format!("unknown op {s:?}")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::LoadSave => "load_save",
            Op::Load => "load",
            Op::Delete => "delete",
            Op::Request => "request",
        }
    }
}

struct Args {
    backend: String,
    ops: Vec<Op>,
    conc: Vec<usize>,
    n: usize,
    secs: f64,
    size: String,
    pool: u32,
    prefill: usize,
}

/// `--bound`: 0 = no (the peer's record), 1 = yes (bound to a user), 2 =
/// bytes (unbound, but carrying the same user key and label as data
/// entries: the baseline that isolates what the index itself costs).
static BOUND: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn die(msg: &str) -> ! {
    eprintln!("server-session-bench: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(k: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| die(&format!("bad value {v:?} for {k}")))
}

fn parse_args() -> Args {
    let mut a = Args {
        backend: "memory".into(),
        ops: vec![Op::LoadSave],
        conc: vec![1],
        n: 100_000,
        secs: 2.0,
        size: "small".into(),
        pool: 8,
        prefill: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "-h" || k == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it
            .next()
            .unwrap_or_else(|| die(&format!("missing value for {k}")));
        match k.as_str() {
            "-b" | "--backend" => a.backend = v,
            "-o" | "--op" => a.ops = v.split(',').map(Op::parse).collect(),
            "-c" | "--concurrency" => a.conc = v.split(',').map(|s| num(&k, s)).collect(),
            "-n" | "--ops" => a.n = num(&k, &v),
            "--secs" => a.secs = num(&k, &v),
            "--size" if v == "small" || v == "large" => a.size = v,
            "--pool" => a.pool = num(&k, &v),
            "--prefill" => a.prefill = num(&k, &v),
            "--bound" => BOUND.store(
                match v.as_str() {
                    "no" => 0,
                    "yes" => 1,
                    "bytes" => 2,
                    _ => die("--bound yes|no|bytes"),
                },
                Relaxed,
            ),
            _ => die(&format!("bad argument {k} {v}")),
        }
    }
    if a.conc.contains(&0) || a.pool == 0 || a.n == 0 || a.prefill == 0 {
        die("-c, --pool, -n and --prefill must be > 0");
    }
    a
}

/// The peer's record (see [`peer_record`]), expiring in an hour.
fn new_session(large: bool) -> Session {
    let mut session = peer_record(Duration::from_secs(3600), large)
        .unwrap_or_else(|e| die(&format!("building the record: {e}")));
    let mode = BOUND.load(Relaxed);
    if mode != 0 {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let user = format!("user-{}", NEXT.fetch_add(1, Relaxed) % 1000);
        if mode == 1 {
            let device =
                std::collections::BTreeMap::from([("device".to_owned(), "bench".to_owned())]);
            let binding = server_session::UserBinding::new(user, device)
                .unwrap_or_else(|e| die(&format!("binding the record: {e}")));
            session.set_user(Some(binding));
        } else {
            let same_bytes = session
                .insert("user_key", &user)
                .and_then(|()| session.insert("device", "bench"));
            same_bytes.unwrap_or_else(|e| die(&format!("building the record: {e}")));
        }
    }
    session
}

async fn connect(a: &Args) -> Res<Arc<dyn SessionInterface>> {
    Ok(match a.backend.as_str() {
        "memory" => Arc::new(MemoryStore::new()),
        "redis" => {
            let url = loopback_url(&["REDIS_URL"], "redis://127.0.0.1:6379");
            let store = RedisStore::connect_with(RedisConfig {
                prefix: format!("bench:{}:", std::process::id()),
                pool_size: a.pool as usize,
                ..RedisConfig::new(url)
            })
            .await?;
            Arc::new(store)
        }
        "sqlite" => {
            let path = env_or(&["SQLITE_PATH"], "/tmp/server-session-bench.sqlite");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
            let store = SqliteStore::connect_with(SqliteConfig {
                readers: a.pool,
                ..SqliteConfig::new(format!("sqlite://{path}"))
            })
            .await?;
            store.migrate().await?;
            Arc::new(store)
        }
        "postgres" => {
            let url = loopback_url(
                &["DATABASE_URL", "PG_URL"],
                "postgres://postgres@127.0.0.1:5432/test",
            );
            let store = PostgresStore::connect_with(PostgresConfig {
                schema: Some("server_session_bench".into()),
                table: "sessions".into(),
                pool_size: a.pool,
                ..PostgresConfig::new(url)
            })
            .await?;
            store.migrate().await?;
            store.clear().await?;
            Arc::new(store)
        }
        "mysql" => {
            let url = loopback_url(&["MYSQL_URL"], "mysql://root@127.0.0.1:3306/test");
            let store = MysqlStore::connect_with(MysqlConfig {
                table: "server_session_bench".into(),
                pool_size: a.pool,
                ..MysqlConfig::new(url)
            })
            .await?;
            store.migrate().await?;
            store.clear().await?;
            Arc::new(store)
        }
        "fs" => {
            let path = env_or(&["FS_PATH"], "/tmp/server-session-bench-fs");
            let _ = std::fs::remove_dir_all(&path);
            Arc::new(FsStore::open_with(FsConfig::new(path)).await?)
        }
        b => die(&format!("unknown backend {b:?}")),
    })
}

struct Ctx {
    store: Arc<dyn SessionInterface>,
    manager: SessionManager,
    key: Key,
    large: bool,
}

/// A prefilled session: its id, and the `Cookie` header a browser would send.
#[derive(Clone)]
struct Live {
    id: SessionId,
    cookie: String,
}

impl Ctx {
    async fn create(&self, session: Session) -> Res<Live> {
        self.store.create(&session).await?;
        Ok(Live {
            id: session.id(),
            cookie: String::new(),
        })
    }

    /// Creates a session under a fresh token and returns its signed cookie.
    async fn create_with_cookie(&self) -> Res<Live> {
        let token = SessionToken::generate();
        let mut session = new_session(self.large);
        session.set_id(token.id());
        self.store.create(&session).await?;
        // `__Host-id` with the default (Secure) configuration.
        let name = self.manager.cookie_name().to_owned();
        let mut jar = CookieJar::new();
        jar.signed_mut(&self.key)
            .add(Cookie::new(name.clone(), token.as_str().to_owned()));
        let signed = jar.get(&name).ok_or("signing failed")?;
        Ok(Live {
            id: session.id(),
            cookie: format!("{name}={}", signed.value()),
        })
    }

    async fn load(&self, id: &SessionId) -> Res<Session> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| "session not found".into())
    }

    /// Load, change one field, compare-and-set save (re-loading on conflict).
    async fn load_save(&self, id: &SessionId, k: usize) -> Res<()> {
        for _ in 0..100 {
            let mut session = self.load(id).await?;
            session.insert("visits", &(k as u64))?;
            match self.store.update(&session, session.version()).await? {
                UpdateOutcome::Updated { .. } => return Ok(()),
                UpdateOutcome::Conflict => continue,
                UpdateOutcome::Gone => return Err("session gone".into()),
            }
        }
        Err("gave up after 100 conflicts".into())
    }

    /// One web request: parse the cookie, verify its signature, load,
    /// change one value, save, produce `Set-Cookie`.
    async fn request(&self, cookie: &str, k: usize) -> Res<()> {
        let jar = jar_from_cookie_headers([cookie]);
        let mut session = self.manager.start(&jar).await?;
        if session.is_new() {
            return Err("the cookie did not load its session".into());
        }
        session.insert("visits", &(k as u64))?;
        // A rolling session answers with a fresh Max-Age, unless a request
        // that started later has already moved the expiry further: then
        // there is nothing to send, and that is right.
        if let Some(set_cookie) = session.commit().await? {
            std::hint::black_box(set_cookie.encoded().to_string());
        }
        Ok(())
    }
}

struct Outcome {
    secs: f64,
    lat_ns: Vec<u64>,
    errors: usize,
    created: Vec<Live>,
    claimed: usize,
}

/// Run `op` with `c` tasks sharing the store until `n` ops are done or `secs` pass.
async fn run(
    ctx: &Arc<Ctx>,
    op: Op,
    c: usize,
    n: usize,
    secs: f64,
    ids: Arc<Vec<Live>>,
) -> Outcome {
    let n = if op == Op::Delete {
        n.min(ids.len())
    } else {
        n
    };
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..c)
        .map(|_| {
            let (ctx, ids, next) = (ctx.clone(), ids.clone(), next.clone());
            tokio::spawn(async move {
                let (mut lat, mut created, mut errors) = (Vec::new(), Vec::new(), 0usize);
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= n {
                        break;
                    }
                    let fresh = (op == Op::Create).then(|| new_session(ctx.large));
                    let t = Instant::now();
                    let r = match (op, fresh) {
                        (Op::Create, Some(s)) => ctx.create(s).await.map(Some),
                        (Op::LoadSave, _) => {
                            ctx.load_save(&ids[i % ids.len()].id, i).await.map(|_| None)
                        }
                        (Op::Load, _) => ctx.load(&ids[i % ids.len()].id).await.map(|_| None),
                        (Op::Delete, _) => ctx
                            .store
                            .delete(&ids[i].id)
                            .await
                            .map(|_| None)
                            .map_err(Into::into),
                        (Op::Request, _) => ctx
                            .request(&ids[i % ids.len()].cookie, i)
                            .await
                            .map(|_| None),
                        (Op::Create, None) => Err("no record".into()),
                    };
                    lat.push(t.elapsed().as_nanos() as u64);
                    match r {
                        Ok(live) => created.extend(live),
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("server-session-bench: {} error: {e}", op.name());
                            }
                            errors += 1;
                        }
                    }
                }
                (lat, created, errors)
            })
        })
        .collect();
    let mut out = Outcome {
        secs: 0.0,
        lat_ns: Vec::new(),
        errors: 0,
        created: Vec::new(),
        claimed: 0,
    };
    for t in tasks {
        match t.await {
            Ok((lat, created, errors)) => {
                out.lat_ns.extend(lat);
                out.created.extend(created);
                out.errors += errors;
            }
            Err(e) => die(&format!("bench task panicked: {e}")),
        }
    }
    out.secs = start.elapsed().as_secs_f64();
    out.claimed = next.load(Relaxed).min(n);
    out
}

/// One output line; field order is the JSON key order (as the peer's).
#[derive(serde::Serialize)]
struct Row<'a> {
    r#impl: &'a str,
    backend: &'a str,
    op: &'a str,
    size: &'a str,
    concurrency: usize,
    ops: usize,
    secs: f64,
    ops_per_sec: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    errors: usize,
    record_bytes: usize,
    pool: u32,
}

fn pct_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    (sorted[i] as f64 / 100.0).round() / 10.0
}

/// Prefills with cookies (so `request` can use the same pool), 16 at a time.
async fn prefill(ctx: &Arc<Ctx>, n: usize, what: &str) -> Vec<Live> {
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (ctx, next) = (ctx.clone(), next.clone());
            tokio::spawn(async move {
                let mut made = Vec::new();
                while next.fetch_add(1, Relaxed) < n {
                    match ctx.create_with_cookie().await {
                        Ok(live) => made.push(live),
                        Err(e) => die(&format!("prefill failed: {e}")),
                    }
                }
                made
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await.unwrap_or_default());
    }
    eprintln!(
        "server-session-bench: {what}: {} sessions in {:.1}s",
        all.len(),
        t.elapsed().as_secs_f64()
    );
    all
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    let store = connect(&a)
        .await
        .unwrap_or_else(|e| die(&format!("{} setup failed: {e}", a.backend)));
    let key = Key::generate();
    let config = SessionConfig {
        signing_keys: vec![key.clone()],
        // Every save answers with a fresh Max-Age, as a rolling session would.
        persistent: true,
        touch_after: Duration::ZERO,
        ..SessionConfig::default()
    };
    let manager = SessionManager::new(store.clone(), config)
        .unwrap_or_else(|e| die(&format!("manager: {e}")));
    let large = a.size == "large";
    let record_bytes = server_session::codec::encode(&new_session(large), 1)
        .map(|b| b.len())
        .unwrap_or(0);
    let ctx = Arc::new(Ctx {
        store,
        manager,
        key,
        large,
    });

    let mut pool = Vec::new();
    if a.ops
        .iter()
        .any(|o| matches!(o, Op::Load | Op::LoadSave | Op::Request))
    {
        pool = prefill(&ctx, a.prefill, "prefill").await;
    }
    let pool = Arc::new(pool);
    let mut spare: Vec<Live> = Vec::new();

    for &c in &a.conc {
        for &op in &a.ops {
            let ids = match op {
                Op::Load | Op::LoadSave | Op::Request => pool.clone(),
                Op::Create => Arc::new(vec![]),
                Op::Delete => {
                    if spare.is_empty() {
                        spare = prefill(&ctx, a.n.min(a.prefill), "prefill for delete").await;
                    }
                    Arc::new(std::mem::take(&mut spare))
                }
            };
            let mut out = run(&ctx, op, c, a.n, a.secs, ids.clone()).await;
            match op {
                Op::Create => spare.append(&mut out.created),
                Op::Delete => spare = ids[out.claimed..].to_vec(),
                _ => {}
            }
            out.lat_ns.sort_unstable();
            let ops = out.lat_ns.len();
            let row = Row {
                r#impl: match BOUND.load(Relaxed) {
                    1 => "server-session+index",
                    2 => "server-session+bytes",
                    _ => "server-session",
                },
                backend: &a.backend,
                op: op.name(),
                size: &a.size,
                concurrency: c,
                ops,
                secs: (out.secs * 1000.0).round() / 1000.0,
                ops_per_sec: (ops as f64 / out.secs).round() as u64,
                p50_us: pct_us(&out.lat_ns, 0.50),
                p99_us: pct_us(&out.lat_ns, 0.99),
                max_us: pct_us(&out.lat_ns, 1.0),
                errors: out.errors,
                record_bytes,
                pool: a.pool,
            };
            match serde_json::to_string(&row) {
                Ok(line) => println!("{line}"),
                Err(e) => die(&format!("serialize row: {e}")),
            }
        }
    }

    // Leave nothing behind in shared servers.
    if matches!(a.backend.as_str(), "redis" | "postgres" | "mysql") {
        if let Err(e) = ctx.store.clear().await {
            eprintln!("server-session-bench: cleanup failed: {e}");
        }
    }
}

//! server-session-peer-bench: the peer side of `scripts/bench`. Drives the
//! tower-sessions 0.14 stores through the `SessionStore` trait only (no HTTP
//! layer), and does the same work with raw clients (redis GET+SET, sqlx single
//! statements) as the "physical limit". Same options, workloads, record shape
//! and JSON lines as `server-session-bench`, so the two compare cell by cell.
//! Ported from the reference harness `../shared/peer-bench`, with MySQL added.
//! Prints one JSON object per measured cell on stdout; progress goes to stderr.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::{MemoryStore, SessionStore};
use tower_sessions_redis_store::{
    fred::prelude::{self as fred, ClientLike},
    RedisStore,
};
use tower_sessions_sqlx_store::{MySqlStore, PostgresStore, SqliteStore};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "usage: server-session-peer-bench
  [--backend memory|redis|sqlite|postgres|mysql|raw-redis|raw-sqlite|raw-postgres|raw-mysql]
  [--op load_save,create,load,delete] [-c 1,32] [-n OPS] [--secs S] [--size small|large]
  [--pool CONNS] [--prefill N]
Lists run as a matrix (for each -c, each --op) in one process; each cell stops after
n ops or S seconds, whichever comes first.
env: REDIS_URL (redis://127.0.0.1:6379), DATABASE_URL or PG_URL
     (postgres://postgres@127.0.0.1:5432/test), MYSQL_URL (mysql://root@127.0.0.1:3306/test),
     SQLITE_PATH (/tmp/server-session-peer-bench.sqlite)";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Op {
    Create,
    LoadSave,
    Load,
    Delete,
}

impl Op {
    fn parse(s: &str) -> Op {
        match s {
            "create" => Op::Create,
            "load_save" => Op::LoadSave,
            "load" => Op::Load,
            "delete" => Op::Delete,
            _ => die(&format!("unknown op {s:?}")),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::LoadSave => "load_save",
            Op::Load => "load",
            Op::Delete => "delete",
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

fn die(msg: &str) -> ! {
    eprintln!("server-session-peer-bench: {msg}\n{USAGE}");
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
            _ => die(&format!("bad argument {k} {v}")),
        }
    }
    if a.conc.contains(&0) || a.pool == 0 || a.n == 0 || a.prefill == 0 {
        die("-c, --pool, -n and --prefill must be > 0");
    }
    a
}

/// Session payload: a user id, a CSRF token and small fields (≈200 B as JSON);
/// "large" adds a ≈3.9 KB string field (≈4 KB in all).
fn session_data(large: bool) -> HashMap<String, Value> {
    let mut d: HashMap<String, Value> = [
        ("user_id", json!(4_815_162_342u64)),
        (
            "csrf_token",
            json!("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        ),
        ("locale", json!("en-US")),
        ("theme", json!("dark")),
        ("last_path", json!("/account/settings/notifications")),
        ("visits", json!(0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if large {
        d.insert("blob".into(), json!("x".repeat(3900)));
    }
    d
}

fn new_record(data: &HashMap<String, Value>) -> Record {
    Record {
        id: Id::default(),
        data: data.clone(),
        expiry_date: OffsetDateTime::now_utc() + time::Duration::hours(1),
    }
}

/// Refuse anything but loopback: this tool only ever loads local servers.
fn check_loopback(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let auth = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = auth.rsplit('@').next().unwrap_or("");
    let host = match hostport.strip_prefix('[') {
        Some(h) => h.split(']').next().unwrap_or(""),
        None => hostport.split(':').next().unwrap_or(""),
    };
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !ok {
        die(&format!("refusing non-loopback host {host:?} in {url}"));
    }
    url.to_string()
}

fn env_url(keys: &[&str], default: &str) -> String {
    let url = keys
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .unwrap_or_else(|| default.into());
    check_loopback(&url)
}

#[derive(Clone)]
enum Store {
    Ts(Arc<dyn SessionStore>),
    RawRedis(redis::aio::MultiplexedConnection),
    RawSqlite(SqlitePool),
    RawPg(PgPool),
    RawMysql(MySqlPool),
}

/// The raw tables hold what the tower-sessions stores hold: the id, the
/// MessagePack record and an expiry an hour ahead, one statement per op.
const PG_SETUP: [&str; 3] = [
    "create schema if not exists peer_bench",
    "create table if not exists peer_bench.raw_session \
     (id text primary key not null, data bytea not null, expiry_date timestamptz not null)",
    "truncate peer_bench.raw_session",
];
const PG_INSERT: &str = "insert into peer_bench.raw_session (id, data, expiry_date) \
    values ($1, $2, now() + interval '1 hour')";
const PG_SELECT: &str = "select data from peer_bench.raw_session where id = $1";
const PG_UPSERT: &str = "insert into peer_bench.raw_session (id, data, expiry_date) \
    values ($1, $2, now() + interval '1 hour') \
    on conflict (id) do update set data = excluded.data, expiry_date = excluded.expiry_date";
const PG_DELETE: &str = "delete from peer_bench.raw_session where id = $1";

/// MySQL/MariaDB: a schema is a database; the key is the 22-character id, as
/// in tower-sessions' `MySqlStore`.
const MYSQL_SETUP: [&str; 3] = [
    "create database if not exists peer_bench",
    "create table if not exists peer_bench.raw_session \
     (id char(22) primary key not null, data blob not null, expiry_date timestamp(6) not null)",
    "truncate table peer_bench.raw_session",
];
const MYSQL_INSERT: &str = "insert into peer_bench.raw_session (id, data, expiry_date) \
    values (?, ?, now(6) + interval 1 hour)";
const MYSQL_SELECT: &str = "select data from peer_bench.raw_session where id = ?";
const MYSQL_UPSERT: &str = "insert into peer_bench.raw_session (id, data, expiry_date) \
    values (?, ?, now(6) + interval 1 hour) \
    on duplicate key update data = values(data), expiry_date = values(expiry_date)";
const MYSQL_DELETE: &str = "delete from peer_bench.raw_session where id = ?";

/// SQLite: the file is new at each start, so no truncate.
const SQLITE_SETUP: [&str; 1] = ["create table if not exists raw_session \
     (id text primary key not null, data blob not null, expiry_date integer not null)"];
const SQLITE_INSERT: &str = "insert into raw_session (id, data, expiry_date) \
    values (?, ?, unixepoch() + 3600)";
const SQLITE_SELECT: &str = "select data from raw_session where id = ?";
const SQLITE_UPSERT: &str = "insert into raw_session (id, data, expiry_date) \
    values (?, ?, unixepoch() + 3600) \
    on conflict (id) do update set data = excluded.data, expiry_date = excluded.expiry_date";
const SQLITE_DELETE: &str = "delete from raw_session where id = ?";

/// Runs one statement binding `id` (and `data` when given) on any raw SQL pool.
macro_rules! raw_exec {
    ($pool:expr, $q:expr, $id:expr $(, $data:expr)?) => {
        sqlx::query($q)
            .bind($id)
            $(.bind($data))?
            .execute($pool)
            .await
            .map(drop)
    };
}

/// Fetches the `data` column of the row `id`, if any.
macro_rules! raw_fetch {
    ($pool:expr, $q:expr, $id:expr) => {
        sqlx::query_scalar::<_, Vec<u8>>($q)
            .bind($id)
            .fetch_optional($pool)
            .await
    };
}

fn sqlite_path() -> String {
    let path = std::env::var("SQLITE_PATH")
        .unwrap_or_else(|_| "/tmp/server-session-peer-bench.sqlite".into());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    path
}

/// The pool tower-sessions' documentation suggests for SQLite, used by both
/// the store and the raw floor: WAL, synchronous NORMAL.
async fn sqlite_pool(a: &Args) -> Res<SqlitePool> {
    let opts = SqliteConnectOptions::new()
        .filename(sqlite_path())
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    Ok(SqlitePoolOptions::new()
        .max_connections(a.pool)
        .connect_with(opts)
        .await?)
}

impl Store {
    async fn connect(a: &Args) -> Res<Store> {
        let redis_url = || env_url(&["REDIS_URL"], "redis://127.0.0.1:6379");
        let pg_url = || {
            env_url(
                &["DATABASE_URL", "PG_URL"],
                "postgres://postgres@127.0.0.1:5432/test",
            )
        };
        let mysql_url = || env_url(&["MYSQL_URL"], "mysql://root@127.0.0.1:3306/test");
        let pg = |url: String| {
            PgPoolOptions::new()
                .max_connections(a.pool)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy(&url)
        };
        let mysql = |url: String| {
            MySqlPoolOptions::new()
                .max_connections(a.pool)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy(&url)
        };
        Ok(match a.backend.as_str() {
            "memory" => Store::Ts(Arc::new(MemoryStore::default())),
            "redis" => {
                let cfg = fred::Config::from_url(&redis_url())?;
                let pool = fred::Pool::new(cfg, None, None, None, a.pool as usize)?;
                let _conn_task = pool.init().await?;
                Store::Ts(Arc::new(RedisStore::new(pool)))
            }
            "sqlite" => {
                let store = SqliteStore::new(sqlite_pool(a).await?);
                store.migrate().await?;
                Store::Ts(Arc::new(store))
            }
            "postgres" => {
                let pool = pg(pg_url())?;
                let store = PostgresStore::new(pool.clone())
                    .with_schema_name("peer_bench")?
                    .with_table_name("ts_session")?;
                store.migrate().await?;
                sqlx::query("truncate peer_bench.ts_session")
                    .execute(&pool)
                    .await?;
                Store::Ts(Arc::new(store))
            }
            "mysql" => {
                let pool = mysql(mysql_url())?;
                let store = MySqlStore::new(pool.clone())
                    .with_schema_name("peer_bench")?
                    .with_table_name("ts_session")?;
                store.migrate().await?;
                sqlx::query("truncate table peer_bench.ts_session")
                    .execute(&pool)
                    .await?;
                Store::Ts(Arc::new(store))
            }
            "raw-redis" => {
                let client = redis::Client::open(redis_url())?;
                Store::RawRedis(client.get_multiplexed_async_connection().await?)
            }
            "raw-sqlite" => {
                let pool = sqlite_pool(a).await?;
                for q in SQLITE_SETUP {
                    sqlx::query(q).execute(&pool).await?;
                }
                Store::RawSqlite(pool)
            }
            "raw-postgres" => {
                let pool = pg(pg_url())?;
                for q in PG_SETUP {
                    sqlx::query(q).execute(&pool).await?;
                }
                Store::RawPg(pool)
            }
            "raw-mysql" => {
                let pool = mysql(mysql_url())?;
                for q in MYSQL_SETUP {
                    sqlx::query(q).execute(&pool).await?;
                }
                Store::RawMysql(pool)
            }
            b => die(&format!("unknown backend {b:?}")),
        })
    }

    /// `rec` is built before the clock starts; raw backends write `blob`, which is the
    /// MessagePack encoding of such a record (what the tower-sessions stores write).
    async fn create(&mut self, mut rec: Record, blob: &[u8]) -> Res<Id> {
        let id = rec.id.to_string();
        match self {
            Store::Ts(s) => s.create(&mut rec).await?,
            Store::RawRedis(con) => {
                let cmd = redis::cmd("SET")
                    .arg(id)
                    .arg(blob)
                    .arg("EX")
                    .arg(3600)
                    .clone();
                cmd.exec_async(con).await?
            }
            Store::RawSqlite(pool) => raw_exec!(&*pool, SQLITE_INSERT, id, blob)?,
            Store::RawPg(pool) => raw_exec!(&*pool, PG_INSERT, id, blob)?,
            Store::RawMysql(pool) => raw_exec!(&*pool, MYSQL_INSERT, id, blob)?,
        }
        Ok(rec.id)
    }

    async fn load_bytes(&mut self, id: &Id) -> Res<Vec<u8>> {
        let id = id.to_string();
        let got: Option<Vec<u8>> = match self {
            Store::Ts(_) => return Err("a tower-sessions store loads records, not bytes".into()),
            Store::RawRedis(con) => redis::cmd("GET").arg(id).query_async(con).await?,
            Store::RawSqlite(pool) => raw_fetch!(&*pool, SQLITE_SELECT, id)?,
            Store::RawPg(pool) => raw_fetch!(&*pool, PG_SELECT, id)?,
            Store::RawMysql(pool) => raw_fetch!(&*pool, MYSQL_SELECT, id)?,
        };
        got.ok_or_else(|| "session not found".into())
    }

    async fn load(&mut self, id: &Id) -> Res<()> {
        match self {
            Store::Ts(s) => s
                .load(id)
                .await?
                .map(drop)
                .ok_or_else(|| "session not found".into()),
            _ => self.load_bytes(id).await.map(drop),
        }
    }

    /// The typical request: load, change one field, save back.
    async fn load_save(&mut self, id: &Id, k: usize) -> Res<()> {
        if let Store::Ts(s) = self {
            let mut rec = s.load(id).await?.ok_or("session not found")?;
            rec.data.insert("visits".into(), json!(k));
            return Ok(s.save(&rec).await?);
        }
        let mut bytes = self.load_bytes(id).await?;
        let n = bytes.len().min(8);
        bytes[..n].copy_from_slice(&k.to_le_bytes()[..n]);
        let id = id.to_string();
        match self {
            Store::Ts(_) => Err("unreachable: handled above".into()),
            Store::RawRedis(con) => {
                let cmd = redis::cmd("SET")
                    .arg(id)
                    .arg(bytes)
                    .arg("EX")
                    .arg(3600)
                    .clone();
                Ok(cmd.exec_async(con).await?)
            }
            Store::RawSqlite(pool) => Ok(raw_exec!(&*pool, SQLITE_UPSERT, id, bytes)?),
            Store::RawPg(pool) => Ok(raw_exec!(&*pool, PG_UPSERT, id, bytes)?),
            Store::RawMysql(pool) => Ok(raw_exec!(&*pool, MYSQL_UPSERT, id, bytes)?),
        }
    }

    async fn delete(&mut self, id: &Id) -> Res<()> {
        match self {
            Store::Ts(s) => Ok(s.delete(id).await?),
            Store::RawRedis(con) => Ok(redis::cmd("DEL")
                .arg(id.to_string())
                .exec_async(con)
                .await?),
            Store::RawSqlite(pool) => Ok(raw_exec!(&*pool, SQLITE_DELETE, id.to_string())?),
            Store::RawPg(pool) => Ok(raw_exec!(&*pool, PG_DELETE, id.to_string())?),
            Store::RawMysql(pool) => Ok(raw_exec!(&*pool, MYSQL_DELETE, id.to_string())?),
        }
    }
}

struct Ctx {
    store: Store,
    data: HashMap<String, Value>,
    blob: Vec<u8>,
}

struct Outcome {
    secs: f64,
    lat_ns: Vec<u64>,
    errors: usize,
    created: Vec<Id>,
    claimed: usize,
}

/// Run `op` with `c` tasks sharing the store until `n` ops are done or `secs` pass.
/// `ids` are the sessions to load / load_save (round-robin) or delete (each once).
async fn run(ctx: &Arc<Ctx>, op: Op, c: usize, n: usize, secs: f64, ids: Arc<Vec<Id>>) -> Outcome {
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
                let mut store = ctx.store.clone();
                let (mut lat, mut created, mut errors) = (Vec::new(), Vec::new(), 0usize);
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= n {
                        break;
                    }
                    let rec = (op == Op::Create).then(|| new_record(&ctx.data));
                    let t = Instant::now();
                    let r = match (op, rec) {
                        (Op::Create, Some(rec)) => store.create(rec, &ctx.blob).await.map(Some),
                        (Op::Create, None) => Err("no record".into()),
                        (Op::LoadSave, _) => {
                            store.load_save(&ids[i % ids.len()], i).await.map(|_| None)
                        }
                        (Op::Load, _) => store.load(&ids[i % ids.len()]).await.map(|_| None),
                        (Op::Delete, _) => store.delete(&ids[i]).await.map(|_| None),
                    };
                    lat.push(t.elapsed().as_nanos() as u64);
                    match r {
                        Ok(id) => created.extend(id),
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("server-session-peer-bench: {} error: {e}", op.name());
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
        let (lat, created, errors) = t
            .await
            .unwrap_or_else(|e| die(&format!("bench task panicked: {e}")));
        out.lat_ns.extend(lat);
        out.created.extend(created);
        out.errors += errors;
    }
    out.secs = start.elapsed().as_secs_f64();
    out.claimed = next.load(Relaxed).min(n);
    out
}

/// One output line; field order is the JSON key order.
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

/// Unmeasured setup/teardown work: bounded by count and by 20 s.
async fn untimed(ctx: &Arc<Ctx>, op: Op, n: usize, ids: Vec<Id>, what: &str) -> Outcome {
    let t = Instant::now();
    let out = run(ctx, op, 16, n, 20.0, Arc::new(ids)).await;
    eprintln!(
        "server-session-peer-bench: {what}: {} ops in {:.1}s ({} errors)",
        out.claimed,
        t.elapsed().as_secs_f64(),
        out.errors
    );
    out
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    let store = Store::connect(&a)
        .await
        .unwrap_or_else(|e| die(&format!("{} setup failed: {e}", a.backend)));
    let data = session_data(a.size == "large");
    let blob = rmp_serde::to_vec(&new_record(&data))
        .unwrap_or_else(|e| die(&format!("encode record: {e}")));
    let ctx = Arc::new(Ctx { store, data, blob });
    let (imp, backend) = match a.backend.strip_prefix("raw-") {
        Some(b) => ("raw", b),
        None => ("tower-sessions", a.backend.as_str()),
    };

    // Pool of live sessions for load / load_save; `spare` = created and not yet deleted.
    let mut pool = Vec::new();
    if a.ops.iter().any(|o| matches!(o, Op::Load | Op::LoadSave)) {
        pool = untimed(&ctx, Op::Create, a.prefill, vec![], "prefill")
            .await
            .created;
    }
    let pool = Arc::new(pool);
    let mut spare: Vec<Id> = Vec::new();

    for &c in &a.conc {
        for &op in &a.ops {
            let ids = match op {
                Op::Load | Op::LoadSave => pool.clone(),
                Op::Create => Arc::new(vec![]),
                Op::Delete => {
                    if spare.is_empty() {
                        spare = untimed(
                            &ctx,
                            Op::Create,
                            a.n.min(a.prefill),
                            vec![],
                            "prefill for delete",
                        )
                        .await
                        .created;
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
                r#impl: imp,
                backend,
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
                record_bytes: ctx.blob.len(),
                pool: a.pool,
            };
            match serde_json::to_string(&row) {
                Ok(line) => println!("{line}"),
                Err(e) => die(&format!("serialize row: {e}")),
            }
        }
    }

    // Redis has no table to truncate: delete what this run left behind (SQL tables
    // are truncated at the next start, the SQLite file is removed then).
    if backend == "redis" {
        let leftover: Vec<Id> = pool.iter().chain(&spare).copied().collect();
        untimed(&ctx, Op::Delete, leftover.len(), leftover, "cleanup").await;
    }
}

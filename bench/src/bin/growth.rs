//! growth: does the cost of an operation stay flat as the store grows?
//! (issue 15 §5, "Scale, not just speed"; `scripts/bench-growth` runs it and
//! prints the table.)
//!
//! For one backend (memory, redis, postgres) the store is grown step by step
//! to each of `--sizes` live sessions (the peer's ~200 B record, expiring in
//! an hour). At each size:
//!
//! - `load_save` (load, change one field, compare-and-set save) at each
//!   `-c`, on session ids drawn uniformly at random from *every* stored
//!   session, so a bigger store also means a bigger working set (caches,
//!   index depth), as in production; best of `--rounds` runs of `--secs`.
//! - `flush` with `--flush-n` expired sessions added next to the live
//!   ones: they are created with an expiry a few seconds ahead, the run
//!   waits until it has passed, then times `SessionInterface::flush` and
//!   checks that `len` is back to the live count.
//!
//! How the store is filled: memory and Redis through the store's own
//! `create`, many at a time (Redis pipelines them over its multiplexed
//! connections). PostgreSQL: the first 2,000 of each step through the store,
//! the rest copied from those rows by one `INSERT ... SELECT` per 100,000
//! over `generate_series`, with fresh ids (`sha256` of a per-run seed and the
//! row number: 32 bytes, like every id) and the template's `record`,
//! `expires_at`, `version` and `user_key` unchanged. The record does not
//! contain its id, so each copy is exactly the row the store would have
//! written for a session with that content; a sample of copies is loaded
//! through the store to prove it, and the table is `ANALYZE`d after each
//! bulk step (as autovacuum would, soon after).
//!
//! Everything lives in its own namespace (Redis prefix `growth_bench:<pid>:`,
//! PostgreSQL schema `growth_bench_<pid>`), removed at the end, also after
//! an error. One JSON object per measurement on stdout; progress on stderr.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use server_session::postgres::sqlx::{self, PgPool};
use server_session::{
    now_millis, PostgresConfig, PostgresStore, RedisConfig, RedisStore, Session, SessionId,
    SessionInterface, UpdateOutcome,
};
use server_session_bench::{loopback_url, peer_record};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "usage: growth [--backend memory|redis|postgres]
  [--sizes 10000,100000,1000000] [-c 32,1] [--secs S] [--rounds R]
  [--flush-n N] [--pool CONNS]
Grows the store to each size in turn; at each: load_save at each -c on ids drawn
from all stored sessions (best of R runs of S seconds), then flush of N expired
sessions added next to the live ones (--flush-n 0 skips it).
env: REDIS_URL (redis://127.0.0.1:6379), DATABASE_URL or PG_URL
     (postgres://postgres@127.0.0.1:5432/test)";

/// PostgreSQL rows written through the store per growth step; the rest of
/// the step is copied from them.
const TEMPLATES: usize = 2_000;
/// Rows per bulk `INSERT ... SELECT`.
const BULK_CHUNK: usize = 100_000;
/// Live sessions expire this far ahead: far beyond any run.
const LIVE_TTL: Duration = Duration::from_secs(6 * 3600);

/// Set on SIGINT: every worker stops at its next operation, so that the
/// cleanup that follows is not racing creates still in flight.
static STOP: AtomicBool = AtomicBool::new(false);

struct Args {
    backend: String,
    sizes: Vec<usize>,
    conc: Vec<usize>,
    secs: f64,
    rounds: usize,
    flush_n: usize,
    pool: u32,
}

fn die(msg: &str) -> ! {
    eprintln!("growth: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(k: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| die(&format!("bad value {v:?} for {k}")))
}

fn parse_args() -> Args {
    let mut a = Args {
        backend: "memory".into(),
        sizes: vec![10_000, 100_000, 1_000_000],
        conc: vec![32, 1],
        secs: 3.0,
        rounds: 2,
        flush_n: 100_000,
        pool: 8,
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
            "--sizes" => a.sizes = v.split(',').map(|s| num(&k, s)).collect(),
            "-c" | "--concurrency" => a.conc = v.split(',').map(|s| num(&k, s)).collect(),
            "--secs" => a.secs = num(&k, &v),
            "--rounds" => a.rounds = num(&k, &v),
            "--flush-n" => a.flush_n = num(&k, &v),
            "--pool" => a.pool = num(&k, &v),
            _ => die(&format!("bad argument {k} {v}")),
        }
    }
    a.sizes.sort_unstable();
    a.sizes.dedup();
    if a.sizes.is_empty() || a.sizes[0] == 0 || a.conc.contains(&0) || a.rounds == 0 {
        die("--sizes, -c and --rounds must be > 0");
    }
    if a.pool == 0 || a.secs <= 0.0 {
        die("--pool and --secs must be > 0");
    }
    a
}

/// The PostgreSQL side the bulk path needs.
struct Pg {
    pool: PgPool,
    schema: String,
    table: String,
    store: Arc<PostgresStore>,
}

struct Target {
    store: Arc<dyn SessionInterface>,
    pg: Option<Pg>,
    /// How the store was filled, for the output.
    fill: &'static str,
    /// Creates in flight at once while filling through the store.
    create_tasks: usize,
}

async fn connect(a: &Args) -> Res<Target> {
    let pid = std::process::id();
    Ok(match a.backend.as_str() {
        "memory" => Target {
            store: Arc::new(server_session::MemoryStore::new()),
            pg: None,
            fill: "store create",
            create_tasks: 4,
        },
        "redis" => {
            let url = loopback_url(&["REDIS_URL"], "redis://127.0.0.1:6379");
            let store = RedisStore::connect_with(RedisConfig {
                prefix: format!("growth_bench:{pid}:"),
                pool_size: a.pool as usize,
                // Filling keeps 64 creates in flight on a shared 2-core
                // machine: the default 5 s let a fill fail under load.
                operation_timeout: Duration::from_secs(30),
                ..RedisConfig::new(url)
            })
            .await?;
            Target {
                store: Arc::new(store),
                pg: None,
                fill: "store create, pipelined",
                create_tasks: 64,
            }
        }
        "postgres" => {
            let url = loopback_url(
                &["DATABASE_URL", "PG_URL"],
                "postgres://postgres@127.0.0.1:5432/test",
            );
            let schema = format!("growth_bench_{pid}");
            let store = Arc::new(
                PostgresStore::connect_with(PostgresConfig {
                    schema: Some(schema.clone()),
                    table: "sessions".into(),
                    pool_size: a.pool,
                    ..PostgresConfig::new(url)
                })
                .await?,
            );
            store.migrate().await?;
            let pg = Pg {
                pool: store.pool().clone(),
                table: store.table().to_owned(),
                schema,
                store: store.clone(),
            };
            Target {
                store,
                pg: Some(pg),
                fill: "store create + INSERT ... SELECT copies",
                create_tasks: 32,
            }
        }
        b => die(&format!("unknown backend {b:?}")),
    })
}

/// `Err` once [`STOP`] is set.
fn go_on() -> Res<()> {
    if STOP.load(Relaxed) {
        return Err("interrupted".into());
    }
    Ok(())
}

/// A small fast generator for picking ids (splitmix64).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Creates `n` sessions through the store, `tasks` at a time; each expires
/// at `expires_at` (Unix ms) if given, else after [`LIVE_TTL`].
async fn create_many(
    store: &Arc<dyn SessionInterface>,
    n: usize,
    tasks: usize,
    expires_at: Option<i64>,
) -> Res<Vec<SessionId>> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move {
                let mut made = Vec::new();
                while next.fetch_add(1, Relaxed) < n {
                    go_on()?;
                    let mut session: Session = peer_record(LIVE_TTL, false)?;
                    if let Some(at) = expires_at {
                        session.set_expires_at_millis(at);
                    }
                    // A create that timed out may have landed: on the retry
                    // its (random, 256-bit) id colliding means it did.
                    let mut tries = 0;
                    loop {
                        match store.create(&session).await {
                            Ok(()) => break,
                            Err(server_session::Error::IdCollision { .. }) if tries > 0 => break,
                            Err(e) if tries < 3 => {
                                eprintln!("growth: create failed, retrying: {e}");
                                tries += 1;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    made.push(session.id());
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(made)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.await??);
    }
    Ok(all)
}

/// Copies the rows `templates` into `n` new rows with fresh ids (see the
/// module docs), `BULK_CHUNK` per statement; returns the new ids.
async fn pg_copy(pg: &Pg, templates: &[SessionId], n: usize, seed: &str) -> Res<Vec<SessionId>> {
    let tpl: Vec<Vec<u8>> = templates.iter().map(|id| id.as_bytes().to_vec()).collect();
    let sql = format!(
        "WITH tpl AS (
             SELECT record, expires_at, version, user_key,
                    row_number() OVER (ORDER BY id) - 1 AS k
             FROM {t} WHERE id = ANY($4)
         )
         INSERT INTO {t} (id, record, expires_at, version, user_key)
         SELECT sha256(convert_to($1 || g::text, 'UTF8')),
                tpl.record, tpl.expires_at, tpl.version, tpl.user_key
         FROM generate_series($2::bigint, $3::bigint) AS g JOIN tpl ON tpl.k = g % $5
         RETURNING id",
        t = pg.table
    );
    let mut ids = Vec::with_capacity(n);
    let mut done = 0;
    while done < n {
        go_on()?;
        let chunk = BULK_CHUNK.min(n - done);
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(&sql)
            .bind(seed)
            .bind(done as i64)
            .bind((done + chunk - 1) as i64)
            .bind(&tpl)
            .bind(tpl.len() as i64)
            .fetch_all(&pg.pool)
            .await?;
        if rows.len() != chunk {
            return Err(format!("bulk copy wrote {} rows, not {chunk}", rows.len()).into());
        }
        for row in rows {
            let bytes: [u8; 32] = row
                .try_into()
                .map_err(|_| "bulk copy returned an id that is not 32 bytes")?;
            ids.push(SessionId::from_bytes(bytes));
        }
        done += chunk;
    }
    sqlx::query(&format!("ANALYZE {}", pg.table))
        .execute(&pg.pool)
        .await?;
    Ok(ids)
}

/// Adds `n` sessions (expiring at `expires_at`, or live): through the store,
/// or for PostgreSQL [`TEMPLATES`] through the store and copies of them.
async fn add(
    target: &Target,
    n: usize,
    expires_at: Option<i64>,
    seed: &str,
) -> Res<Vec<SessionId>> {
    let Some(pg) = &target.pg else {
        return create_many(&target.store, n, target.create_tasks, expires_at).await;
    };
    let via_store = n.min(TEMPLATES);
    let mut ids = create_many(&target.store, via_store, target.create_tasks, expires_at).await?;
    if n > via_store {
        let copies = pg_copy(pg, &ids, n - via_store, seed).await?;
        // The copies load through the store: they are valid rows.
        if expires_at.is_none() {
            let mut mix = Mix(copies.len() as u64);
            for _ in 0..100 {
                let id = &copies[(mix.next() % copies.len() as u64) as usize];
                if pg.store.get(id).await?.is_none() {
                    return Err(format!("copied row {id} does not load").into());
                }
            }
        }
        ids.extend(copies);
    }
    Ok(ids)
}

/// Load, change one field, compare-and-set save (re-loading on conflict).
async fn load_save(store: &dyn SessionInterface, id: &SessionId, k: u64) -> Res<()> {
    for _ in 0..100 {
        let mut session = store.get(id).await?.ok_or("session not found")?;
        session.insert("visits", &k)?;
        match store.update(&session, session.version()).await? {
            UpdateOutcome::Updated { .. } => return Ok(()),
            UpdateOutcome::Conflict => continue,
            UpdateOutcome::Gone => return Err("session gone".into()),
        }
    }
    Err("gave up after 100 conflicts".into())
}

struct Cell {
    secs: f64,
    lat_ns: Vec<u64>,
    errors: usize,
}

/// `load_save` with `c` tasks for `secs`, each on ids drawn at random from `ids`.
async fn run(
    store: &Arc<dyn SessionInterface>,
    ids: &Arc<Vec<SessionId>>,
    c: usize,
    secs: f64,
    seed: u64,
) -> Cell {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..c)
        .map(|t| {
            let (store, ids) = (store.clone(), ids.clone());
            tokio::spawn(async move {
                let mut mix = Mix(seed ^ (t as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                while Instant::now() < deadline && !STOP.load(Relaxed) {
                    let r = mix.next();
                    let id = &ids[(r % ids.len() as u64) as usize];
                    let t = Instant::now();
                    let outcome = load_save(&*store, id, r).await;
                    lat.push(t.elapsed().as_nanos() as u64);
                    if let Err(e) = outcome {
                        if errors == 0 {
                            eprintln!("growth: load_save error: {e}");
                        }
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut cell = Cell {
        secs: 0.0,
        lat_ns: Vec::new(),
        errors: 0,
    };
    for t in tasks {
        match t.await {
            Ok((lat, errors)) => {
                cell.lat_ns.extend(lat);
                cell.errors += errors;
            }
            Err(e) => die(&format!("bench task panicked: {e}")),
        }
    }
    cell.secs = start.elapsed().as_secs_f64();
    cell.lat_ns.sort_unstable();
    cell
}

fn pct_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    (sorted[i] as f64 / 100.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn emit(value: serde_json::Value) {
    println!("{value}");
}

async fn measure(a: &Args, target: &Target, seed: &str) -> Res<()> {
    let mut ids: Vec<SessionId> = Vec::new();
    for &size in &a.sizes {
        let n = size - ids.len();
        let t = Instant::now();
        let added = add(target, n, None, &format!("{seed}live:{}:", ids.len())).await?;
        let fill_secs = t.elapsed().as_secs_f64();
        // Sessions per second of this step: sizes the wait before the flush.
        let rate = n as f64 / fill_secs.max(1e-3);
        ids.extend(added);
        eprintln!(
            "growth: {}: +{n} sessions in {fill_secs:.1}s ({rate:.0}/s), {} stored",
            a.backend,
            ids.len()
        );
        emit(serde_json::json!({
            "kind": "fill", "backend": a.backend, "stored": ids.len(), "added": n,
            "secs": round3(fill_secs), "method": target.fill,
        }));

        let shared = Arc::new(std::mem::take(&mut ids));
        for &c in &a.conc {
            let mut best: Option<Cell> = None;
            for round in 0..a.rounds {
                let cell = run(
                    &target.store,
                    &shared,
                    c,
                    a.secs,
                    (size * 31 + c * 7 + round) as u64,
                )
                .await;
                let better = best.as_ref().is_none_or(|b| {
                    cell.lat_ns.len() as f64 / cell.secs > b.lat_ns.len() as f64 / b.secs
                });
                if better {
                    best = Some(cell);
                }
            }
            go_on()?;
            let Some(cell) = best else { continue };
            let ops = cell.lat_ns.len();
            let ops_per_sec = (ops as f64 / cell.secs).round() as u64;
            eprintln!(
                "growth: {} {size} load_save c={c}: {ops_per_sec} ops/s, p99 {} µs",
                a.backend,
                pct_us(&cell.lat_ns, 0.99)
            );
            emit(serde_json::json!({
                "kind": "load_save", "backend": a.backend, "stored": shared.len(),
                "concurrency": c, "ops": ops, "secs": round3(cell.secs),
                "ops_per_sec": ops_per_sec, "p50_us": pct_us(&cell.lat_ns, 0.5),
                "p99_us": pct_us(&cell.lat_ns, 0.99), "max_us": pct_us(&cell.lat_ns, 1.0),
                "errors": cell.errors, "rounds": a.rounds,
            }));
        }
        ids = Arc::try_unwrap(shared).unwrap_or_else(|shared| shared.to_vec());

        if a.flush_n > 0 {
            flush_step(
                a,
                target,
                ids.len(),
                rate,
                &format!("{seed}expired:{size}:"),
            )
            .await?;
        }
    }
    Ok(())
}

/// Adds `flush_n` sessions that expire a few seconds ahead, waits until
/// they have, and times `flush`.
async fn flush_step(a: &Args, target: &Target, live: usize, rate: f64, seed: &str) -> Res<()> {
    // Long enough for the creates to finish before the expiry (a late one
    // would merely be created expired), short enough not to waste the run.
    let ahead_ms = (1000.0 + 1500.0 * a.flush_n as f64 / rate).min(60_000.0) as i64;
    let expires_at = now_millis() + ahead_ms;
    let t = Instant::now();
    let expired = add(target, a.flush_n, Some(expires_at), seed).await?;
    let fill_secs = t.elapsed().as_secs_f64();
    // The server clocks (Redis TIME, PostgreSQL clock_timestamp()) are this
    // machine's; half a second covers the rounding to milliseconds and more.
    while now_millis() < expires_at + 500 {
        go_on()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    let deleted = target.store.flush().await?;
    let flush_secs = t.elapsed().as_secs_f64();
    let len = target.store.len().await?;
    if len != live as u64 {
        return Err(format!("after flush len() is {len}, not the {live} live sessions").into());
    }
    // Redis drops expired keys itself: its flush deletes none.
    if a.backend != "redis" && deleted != expired.len() as u64 {
        return Err(format!("flush deleted {deleted} of {} expired", expired.len()).into());
    }
    let per_100k = flush_secs * 100_000.0 / a.flush_n as f64;
    eprintln!(
        "growth: {} {live} live: flush of {} expired (made in {fill_secs:.1}s) took {flush_secs:.3}s, deleted {deleted}",
        a.backend,
        expired.len()
    );
    emit(serde_json::json!({
        "kind": "flush", "backend": a.backend, "stored": live, "expired": expired.len(),
        "deleted": deleted, "secs": round3(flush_secs), "secs_per_100k": round3(per_100k),
        "fill_secs": round3(fill_secs),
    }));
    Ok(())
}

async fn cleanup(target: &Target) -> Res<()> {
    match &target.pg {
        Some(pg) => {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", pg.schema))
                .execute(&pg.pool)
                .await?;
        }
        None => {
            target.store.clear().await?;
            // A create that timed out on this side may still land after
            // the first pass: a second one, a moment later, gets it.
            tokio::time::sleep(Duration::from_secs(1)).await;
            target.store.clear().await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    let target = connect(&a)
        .await
        .unwrap_or_else(|e| die(&format!("{} setup failed: {e}", a.backend)));
    let seed = format!("growth:{}:{}:", std::process::id(), now_millis());
    // Interrupted (scripts/bench-growth's timeout sends SIGINT), it stops
    // its workers, lets the statement in flight finish, and cleans up.
    let measuring = measure(&a, &target, &seed);
    tokio::pin!(measuring);
    let outcome = tokio::select! {
        outcome = &mut measuring => outcome,
        _ = tokio::signal::ctrl_c() => {
            STOP.store(true, Relaxed);
            match tokio::time::timeout(Duration::from_secs(20), &mut measuring).await {
                Ok(Err(e)) => Err(e),
                _ => Err("interrupted".into()),
            }
        }
    };
    // Leave nothing behind in shared servers, error or not.
    let t = Instant::now();
    if let Err(e) = cleanup(&target).await {
        eprintln!("growth: cleanup failed: {e}");
    }
    eprintln!(
        "growth: {}: cleanup in {:.1}s",
        a.backend,
        t.elapsed().as_secs_f64()
    );
    if let Err(e) = outcome {
        eprintln!("growth: {} failed: {e}", a.backend);
        std::process::exit(1);
    }
}

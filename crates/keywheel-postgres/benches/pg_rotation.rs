//! Postgres rotation throughput: seeds N rows × 2 encrypted `bytea` columns,
//! then measures in the same run (a) the raw batched rewrite of the same rows
//! with fresh random bytes (`UPDATE … FROM UNNEST(…)`, one connection, rows
//! found through the primary key like the record source finds them: the
//! ceiling set by the database) and (b) a keywheel rotation of them
//! (`Rotator` + `PgRecordSource`: scan, decrypt, encrypt, compare-and-set
//! write, verify) and (c) the same rotation of a third copy through the sqlx
//! driver (`SqlxRecordSource` and an sqlx pool: the same statements), and
//! prints rows/s for each, the ratios (b)/(a) and (c)/(a), the CPU time of
//! this process, of the Postgres processes (a local server) and of everything
//! else (other load: compare runs with little of it), and the peak RSS of the
//! rotation. `KEYWHEEL_BENCH_PROFILE=1` adds a census, a full scan and a
//! decryption of every value before (b), and after it the time spent in the
//! source and before, during and after the writes.
//!
//! ```text
//! cargo bench -p keywheel-postgres --bench pg_rotation -- --rows 1000000
//! KEYWHEEL_BENCH_ROWS=20000 cargo bench -p keywheel-postgres --bench pg_rotation
//! ```
//!
//! Options: `--rows N` (default 1,000,000, or `KEYWHEEL_BENCH_ROWS`),
//! `--batch ROWS` (rows per batch, default 2000), `--parallel N` (batches in
//! flight, default 3), `--min-ratio R` (exit non-zero if (b)/(a) or (c)/(a)
//! is below R).
//! Finds Postgres like the tests do (`KEYWHEEL_TEST_DATABASE_URL`, a local
//! server, or a throwaway cluster) and works in a database of its own.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../keywheel-sqlx/tests/sqlx_pool/mod.rs"]
mod sqlx_pool;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestDb, XorShift};
use keywheel_core::{
    Algorithm, Context, Form, KeyVersion, KeyringId, Keywheel, Purpose, RecordSource, RotateOptions, Rotator,
};
use keywheel_postgres::{PgRecordSource, TableSpec};
use keywheel_sqlx::SqlxRecordSource;

use support::{Args, args};

/// CPU seconds (user + system) of a process from its `/proc/…/stat` text.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let tick = 100.0; // USER_HZ on Linux
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / tick)
}

/// CPU seconds used so far by the processes named `postgres` that this user
/// can see (a local server: its backends, WAL writer, checkpointer, …).
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| s.contains(" (postgres) "))
        .filter_map(|s| stat_cpu_seconds(&s))
        .sum()
}

/// CPU seconds used so far: (this process, the whole machine, Postgres processes).
fn cpu_seconds() -> (f64, f64, f64) {
    let tick = 100.0; // USER_HZ on Linux
    let own = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| stat_cpu_seconds(&s)).unwrap_or(0.0);
    let all = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let cpu = s.lines().next()?;
            let v: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system (idle iowait excluded) irq softirq steal
            Some((v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?) / tick)
        })
        .unwrap_or(0.0);
    (own, all, postgres_cpu_seconds())
}

/// CPU used since `before`: this process, the Postgres server's processes (when
/// local and visible) and everything else on the machine (other load, I/O
/// threads); the figures of a run are only comparable with little other load.
fn print_cpu(what: &str, before: (f64, f64, f64), wall: Duration) {
    let after = cpu_seconds();
    let (own, all, postgres) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    println!(
        "    {what} CPU: this process {own:.2} s, Postgres processes {postgres:.2} s, everything else {:.2} s, \
         over {:.2} s wall on {} CPUs",
        (all - own - postgres).max(0.0),
        wall.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
}

/// Peak resident set size of this process in KiB since the last reset.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reset the peak RSS counter (Linux: write 5 to clear_refs).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Sums of the time spent in each source call (calls overlap: these are busy times).
#[derive(Debug, Default)]
struct Stats {
    scan: Duration,
    scans: u32,
    replace: Duration,
    replaces: u32,
    census: Duration,
    /// When the first replace began and the last one ended.
    writes: Option<(Instant, Instant)>,
    /// When the first scan began.
    first_scan: Option<Instant>,
}

#[derive(Debug)]
struct Timed {
    inner: Arc<dyn RecordSource>,
    stats: std::sync::Mutex<Stats>,
}

#[keywheel_core::async_trait]
impl RecordSource for Timed {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn covers(&self, keyring: &keywheel_core::KeyringId) -> bool {
        self.inner.covers(keyring)
    }
    async fn scan(&self, r: &keywheel_core::ScanRequest) -> keywheel_core::Result<Vec<keywheel_core::StoredValue>> {
        let t = Instant::now();
        self.stats.lock().expect("stats").first_scan.get_or_insert(t);
        let out = self.inner.scan(r).await;
        let mut s = self.stats.lock().expect("stats");
        s.scan += t.elapsed();
        s.scans += 1;
        out
    }
    async fn replace(
        &self,
        b: &[keywheel_core::Replacement],
    ) -> keywheel_core::Result<Vec<keywheel_core::ReplaceOutcome>> {
        let t = Instant::now();
        let out = self.inner.replace(b).await;
        let mut s = self.stats.lock().expect("stats");
        s.replace += t.elapsed();
        s.replaces += 1;
        let first = s.writes.map_or(t, |(first, _)| first.min(t));
        s.writes = Some((first, Instant::now()));
        out
    }
    async fn census(&self, k: Option<&KeyringId>) -> keywheel_core::Result<keywheel_core::Census> {
        let t = Instant::now();
        let out = self.inner.census(k).await;
        self.stats.lock().expect("stats").census += t.elapsed();
        out
    }
}

fn ctx(column: &str, id: i64) -> Context {
    Context::field("bench", column, &id.to_string())
}

fn main() {
    support::block_on(run(args()));
}

async fn run(args: Args) {
    let Some(db) = TestDb::create().await else { return };
    let n = args.rows;
    println!(
        "pg_rotation: {n} rows x 2 encrypted columns, batches of {} rows, {} in flight",
        args.batch, args.parallel
    );
    let pool = db.pool(args.parallel + 3);
    let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
    let id = KeyringId::new("bench", Purpose::Database).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("keyring");
    let ring = kw.keyring(&id).await.expect("ring");

    // Seed: two identical tables, one per contender.
    let t = Instant::now();
    let client = db.client().await;
    for table in ["bench_raw", "bench_kw", "bench_sqlx"] {
        client
            .batch_execute(&format!("CREATE TABLE {table} (id bigint PRIMARY KEY, email bytea, token bytea)"))
            .await
            .expect("create");
    }
    let chunk = 20_000i64;
    let mut start = 1;
    while start <= n {
        let ids: Vec<i64> = (start..=(start + chunk - 1).min(n)).collect();
        let email: Vec<Vec<u8>> = ids
            .iter()
            .map(|i| ring.encrypt(format!("user{i}@example.com").as_bytes(), &ctx("email", *i)).expect("encrypt"))
            .collect();
        let token: Vec<Vec<u8>> = ids
            .iter()
            .map(|i| {
                ring.encrypt(format!("ya29.token-{i:016x}-abcdefghijklmnopqrstuvwxyz").as_bytes(), &ctx("token", *i))
                    .expect("encrypt")
            })
            .collect();
        client
            .execute(
                "INSERT INTO bench_raw SELECT * FROM UNNEST($1::int8[], $2::bytea[], $3::bytea[])",
                &[&ids, &email, &token],
            )
            .await
            .expect("seed");
        start += chunk;
    }
    for sql in [
        "INSERT INTO bench_kw SELECT * FROM bench_raw",
        "INSERT INTO bench_sqlx SELECT * FROM bench_raw",
        "VACUUM ANALYZE bench_raw",
        "VACUUM ANALYZE bench_kw",
        "VACUUM ANALYZE bench_sqlx",
        "CHECKPOINT",
    ] {
        client.batch_execute(sql).await.expect(sql);
    }
    println!("seeded in {:.1} s", t.elapsed().as_secs_f64());

    // (a) Raw batched rewrite with fresh random bytes of the same lengths. The
    // rows are found through the primary key, as the record source finds them:
    // on a table of a few hundred thousand rows the planner would rather hash
    // (or merge) the whole table against every batch, five times slower.
    client.batch_execute("SET enable_hashjoin = off; SET enable_mergejoin = off").await.expect("plan settings");
    let mut rng = XorShift::seeded();
    let cpu = cpu_seconds();
    let t = Instant::now();
    let mut start = 1;
    let batch = i64::try_from(args.batch).expect("batch");
    let (email_len, token_len) = (29 + 16 + 20, 57 + 16 + 20);
    while start <= n {
        let ids: Vec<i64> = (start..=(start + batch - 1).min(n)).collect();
        let mut random = |len: usize| -> Vec<u8> { (0..len).map(|_| rng.next_u64() as u8).collect() };
        let email: Vec<Vec<u8>> = ids.iter().map(|_| random(email_len)).collect();
        let token: Vec<Vec<u8>> = ids.iter().map(|_| random(token_len)).collect();
        client
            .execute(
                "UPDATE bench_raw AS t SET email = v.email, token = v.token \
                 FROM UNNEST($1::int8[], $2::bytea[], $3::bytea[]) AS v(id, email, token) WHERE t.id = v.id",
                &[&ids, &email, &token],
            )
            .await
            .expect("raw update");
        start += batch;
    }
    let raw = t.elapsed();
    print_cpu("(a)", cpu, raw);
    let raw_rate = n as f64 / raw.as_secs_f64();
    println!("(a) raw UNNEST rewrite:  {:>9.0} rows/s  ({:.2} s)", raw_rate, raw.as_secs_f64());
    client.batch_execute("CHECKPOINT").await.expect("checkpoint");

    // (b) keywheel rotation through tokio-postgres, (c) through sqlx.
    let spec = |table: &str| {
        TableSpec::new("public", table)
            .keyring(id.clone())
            .context_table("bench")
            .column("email", Form::Binary)
            .column("token", Form::Binary)
    };
    let tokio_source: Arc<dyn RecordSource> =
        Arc::new(PgRecordSource::open(pool.clone(), spec("bench_kw")).await.expect("open"));
    let kw_rate = rotation(&args, &kw, &id, tokio_source, "(b) keywheel rotation:  ", KeyVersion::new(2)).await;
    let sqlx_pool = sqlx_pool::sqlx_pool(&db, args.parallel + 3);
    let sqlx_source: Arc<dyn RecordSource> =
        Arc::new(SqlxRecordSource::open(sqlx_pool, spec("bench_sqlx")).await.expect("open"));
    let sqlx_rate = rotation(&args, &kw, &id, sqlx_source, "(c) same through sqlx: ", KeyVersion::new(3)).await;
    let ratios = [("(b)/(a), tokio-postgres", kw_rate / raw_rate), ("(c)/(a), sqlx", sqlx_rate / raw_rate)];
    for (what, ratio) in ratios {
        println!("ratio {what}: {ratio:.2}");
    }
    if let Some(min) = args.min_ratio {
        for (what, ratio) in ratios {
            assert!(ratio >= min, "ratio {what} {ratio:.2} below the required {min}");
        }
    }
}

/// Rotate `id`'s values in `source` (a fresh copy of the seeded table, on
/// the version before `to`) to `to`, print rows/s, CPU, peak RSS (and with
/// `KEYWHEEL_BENCH_PROFILE` the profile); the rate in rows/s.
async fn rotation(
    args: &Args,
    kw: &Keywheel,
    id: &KeyringId,
    source: Arc<dyn RecordSource>,
    label: &str,
    to: keywheel_core::Result<KeyVersion>,
) -> f64 {
    let (n, to) = (args.rows, to.expect("version"));
    let ring = kw.keyring(id).await.expect("ring");
    // (b) keywheel rotation.
    if std::env::var_os("KEYWHEEL_BENCH_PROFILE").is_some() {
        let t = Instant::now();
        let census = source.census(Some(id)).await.expect("census");
        println!("    census: {:.2} s ({census:?})", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut request = keywheel_core::ScanRequest {
            after: None,
            limit: args.batch * 2,
            keyring: Some(id.clone()),
            skip_version: Some(to),
        };
        let mut batches = Vec::new();
        loop {
            let batch = source.scan(&request).await.expect("scan");
            let Some(last) = batch.last() else { break };
            request.after = Some(last.cursor.clone());
            batches.push(batch);
        }
        println!("    full scan: {:.2} s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut crypto = 0usize;
        for batch in &batches {
            for v in batch {
                crypto += ring.decrypt(&v.value, &v.context).expect("decrypt").len();
            }
        }
        println!("    decrypt all (1 thread): {:.2} s ({crypto} bytes)", t.elapsed().as_secs_f64());
    }
    let timed = Arc::new(Timed { inner: Arc::clone(&source), stats: Default::default() });
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(timed.clone());
    let opts = RotateOptions {
        batch_size: args.batch * 2,
        parallel_batches: args.parallel,
        estimate_total: false,
        ..RotateOptions::default()
    };
    let rss_reset = reset_peak_rss();
    let cpu = cpu_seconds();
    let t = Instant::now();
    let report =
        rotator.rotate(id, &rotator.keywheel().policy(id).await.expect("policy"), &opts).await.expect("rotate");
    let rotation = t.elapsed();
    print_cpu(&label[..3], cpu, rotation);
    let peak = peak_rss_kib();
    let kw_rate = n as f64 / rotation.as_secs_f64();
    println!(
        "{label} {:>9.0} rows/s  ({:.2} s, {} values rewritten, phase {:?})",
        kw_rate,
        rotation.as_secs_f64(),
        report.counts.rewritten,
        report.phase
    );
    if std::env::var_os("KEYWHEEL_BENCH_PROFILE").is_some() {
        let stats = timed.stats.lock().expect("stats");
        println!("    time inside the source: {stats:?}");
        if let Some((first, last)) = stats.writes {
            let end = t + rotation;
            println!(
                "    before the first scan {:.2} s, before the first write {:.2} s, writing {:.2} s, \
                 after the last write {:.2} s",
                stats.first_scan.map_or(0.0, |f| f.duration_since(t).as_secs_f64()),
                first.duration_since(t).as_secs_f64(),
                last.duration_since(first).as_secs_f64(),
                end.saturating_duration_since(last).as_secs_f64()
            );
        }
    }
    match (rss_reset, peak) {
        (true, Some(kib)) => println!("peak RSS during the rotation: {:.1} MiB", kib as f64 / 1024.0),
        _ => println!("peak RSS during the rotation: unavailable"),
    }
    let census = source.census(Some(id)).await.expect("census");
    assert_eq!(report.counts.rewritten, 2 * n as u64, "every value rewritten");
    assert_eq!(census.count(id, to), 2 * n as u64, "{census:?}");
    kw_rate
}

//! In-memory rotation throughput and peak memory.
//!
//! * `rotation/engine`: a full `Rotator::rotate` of N values (default 1,000,000;
//!   `KEYWHEEL_BENCH_ROWS` overrides) on the memory key store, from a synthetic
//!   source that streams values instead of holding a table, next to
//!   `rotation/raw`: the same decrypt + re-encrypt work in a plain loop over the
//!   same values with cached keyring snapshots (no engine, no source, no
//!   checkpoints). Criterion reports values/s for both; the target is ≥ 1M
//!   values/s for the engine.
//! * Peak memory: the bench re-runs itself in a child process per size (100k
//!   and 1M values) and reads the child's peak RSS (`VmHWM`); the target is
//!   peak(1M) ≤ 1.2 × peak(100k): batches stream, nothing holds the whole table.
//!
//! Run: `cargo bench --bench rotation` (figures printed at the end).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use keywheel::memory::{MemoryAuditSink, MemoryKeyStore};
use keywheel::{
    Algorithm, Census, Context, Cursor, Keyring, KeyringId, Keywheel, LocalKek, Policy, Purpose, RecordSource,
    ReplaceOutcome, Replacement, RotateOptions, Rotator, ScanRequest, StoredValue, async_trait, version_of,
};

/// Distinct (context, value) pairs the synthetic rows cycle through.
const POOL: usize = 1024;
const PEAK_ENV: &str = "KEYWHEEL_BENCH_PEAK_ROWS";

/// A table of `rows` values that exists only as a bitmap of which rows were
/// rewritten: scans synthesise each row from a small pool of real ciphertexts.
#[derive(Debug)]
struct SyntheticSource {
    keyring: KeyringId,
    rows: u64,
    pool: Vec<(Context, Vec<u8>)>,
    rewritten: Mutex<Vec<u64>>,
    rewritten_count: AtomicU64,
}

impl SyntheticSource {
    fn new(keyring: KeyringId, rows: u64, pool: Vec<(Context, Vec<u8>)>) -> Self {
        let words = usize::try_from(rows.div_ceil(64)).expect("fits");
        SyntheticSource {
            keyring,
            rows,
            pool,
            rewritten: Mutex::new(vec![0; words]),
            rewritten_count: AtomicU64::new(0),
        }
    }

    fn row_of(cursor: &Cursor) -> u64 {
        cursor.0.parse().expect("synthetic cursors are numbers")
    }

    /// The cursor of a row: its number in 12 zero-padded digits, the same
    /// string as `format!("{row:012}")` without the formatting machinery (about
    /// 1,000 instructions and a reallocation per row, a cost of this synthetic
    /// table that no real source pays and that would otherwise be billed to
    /// the engine).
    fn cursor_of(row: u64) -> Cursor {
        let mut digits = [b'0'; 20];
        let mut rest = row;
        let mut start = digits.len();
        while rest > 0 {
            start -= 1;
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let text = std::str::from_utf8(&digits[start.min(digits.len() - 12)..]).expect("ASCII digits");
        Cursor(text.to_owned())
    }
}

#[async_trait]
impl RecordSource for SyntheticSource {
    fn name(&self) -> &str {
        "synthetic"
    }

    fn covers(&self, _keyring: &KeyringId) -> bool {
        true
    }

    async fn scan(&self, request: &ScanRequest) -> keywheel::Result<Vec<StoredValue>> {
        let mut row = request.after.as_ref().map_or(0, |c| Self::row_of(c) + 1);
        let bitmap = self.rewritten.lock().expect("lock");
        let mut out = Vec::with_capacity(request.limit);
        while row < self.rows && out.len() < request.limit {
            let skipped = request.skip_version.is_some() && bitmap[(row / 64) as usize] & (1u64 << (row % 64)) != 0;
            if !skipped {
                let (context, value) = &self.pool[(row % POOL as u64) as usize];
                out.push(StoredValue {
                    cursor: Self::cursor_of(row),
                    keyring: self.keyring.clone(),
                    context: context.clone(),
                    value: value.clone(),
                    index: None,
                });
            }
            row += 1;
        }
        Ok(out)
    }

    async fn replace(&self, batch: &[Replacement]) -> keywheel::Result<Vec<ReplaceOutcome>> {
        let mut bitmap = self.rewritten.lock().expect("lock");
        let mut outcomes = Vec::with_capacity(batch.len());
        for r in batch {
            let row = Self::row_of(&r.cursor);
            let (word, bit) = ((row / 64) as usize, 1u64 << (row % 64));
            if bitmap[word] & bit == 0 {
                // A real source compares old bytes; here the row is unchanged until rewritten.
                version_of(&r.new)?;
                bitmap[word] |= bit;
                self.rewritten_count.fetch_add(1, Ordering::Relaxed);
                outcomes.push(ReplaceOutcome::Replaced);
            } else {
                outcomes.push(ReplaceOutcome::Changed);
            }
        }
        Ok(outcomes)
    }

    async fn census(&self, keyring: Option<&KeyringId>) -> keywheel::Result<Census> {
        let mut census = Census::default();
        if keyring.is_none_or(|k| k == &self.keyring) {
            let done = self.rewritten_count.load(Ordering::Relaxed);
            let old = keywheel::KeyVersion::FIRST;
            let new = keywheel::KeyVersion::new(2)?;
            census.add(&self.keyring, old, self.rows - done);
            census.add(&self.keyring, new, done);
        }
        Ok(census)
    }
}

/// A fresh keyring with `rows` synthetic values under version 1.
async fn setup(rows: u64) -> (Rotator, KeyringId, Arc<SyntheticSource>) {
    for row in [0, 7, 999_999, 123_456_789_012, u64::MAX] {
        assert_eq!(SyntheticSource::cursor_of(row).0, format!("{row:012}"));
    }
    let kw = Keywheel::builder()
        .store(Arc::new(MemoryKeyStore::new()))
        .kek(Arc::new(LocalKek::from_bytes(&[9; 32])))
        .audit(Arc::new(MemoryAuditSink::new()))
        .build()
        .expect("builder");
    let id = KeyringId::new("bench", Purpose::Database).expect("id");
    let ring = kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let pool = (0..POOL)
        .map(|i| {
            let ctx = Context::field("users", "email", &i.to_string());
            let value = ring.encrypt(format!("user{i}@example.com").as_bytes(), &ctx).expect("encrypt");
            (ctx, value)
        })
        .collect();
    let source = Arc::new(SyntheticSource::new(id.clone(), rows, pool));
    let rotator = Rotator::new(kw).expect("rng").source(source.clone());
    (rotator, id, source)
}

fn options() -> RotateOptions {
    RotateOptions { batch_size: 2000, parallel_batches: 4, estimate_total: false, ..RotateOptions::default() }
}

async fn rotate_once(rows: u64) -> Duration {
    let (rotator, id, source) = setup(rows).await;
    let start = Instant::now();
    let report = rotator.rotate(&id, &Policy::for_purpose(id.purpose()), &options()).await.expect("rotate");
    let elapsed = start.elapsed();
    assert_eq!(report.counts.rewritten, rows, "{report:?}");
    assert_eq!(source.rewritten_count.load(Ordering::Relaxed), rows);
    elapsed
}

/// The same decrypt + re-encrypt work without the engine.
fn raw_reencrypt(old: &Keyring, new: &Keyring, pool: &[(Context, Vec<u8>)], rows: u64) {
    for row in 0..rows {
        let (ctx, value) = &pool[(row % POOL as u64) as usize];
        let plaintext = old.decrypt(value, ctx).expect("decrypt");
        std::hint::black_box(new.encrypt(&plaintext, ctx).expect("encrypt"));
    }
}

fn rows() -> u64 {
    std::env::var("KEYWHEEL_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn throughput(c: &mut Criterion) {
    let rows = rows();
    let rt = runtime();
    let mut group = c.benchmark_group("rotation");
    group.throughput(Throughput::Elements(rows));
    group.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(2));
    group.bench_function("engine", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(rotate_once(rows))).sum());
    });
    let (old, new, pool) = rt.block_on(async {
        let (rotator, id, source) = setup(1).await;
        let old = rotator.keywheel().keyring(&id).await.expect("ring");
        let v2 = rotator.keywheel().add_version(&id).await.expect("add");
        rotator.keywheel().activate(&id, v2).await.expect("activate");
        let new = rotator.keywheel().refresh(&id).await.expect("ring");
        (old, new, source.pool.clone())
    });
    group.bench_function("raw", |b| b.iter(|| raw_reencrypt(&old, &new, &pool, rows)));
    group.finish();
}

/// Peak RSS of this process in KiB (Linux `VmHWM`).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn peak_in_child(rows: u64) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe).env(PEAK_ENV, rows.to_string()).arg("--bench").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("peak_rss_kib=")).and_then(|v| v.trim().parse().ok())
}

fn main() {
    if let Some(rows) = std::env::var(PEAK_ENV).ok().and_then(|v| v.parse::<u64>().ok()) {
        let elapsed = runtime().block_on(rotate_once(rows));
        println!("rows={rows} seconds={:.3}", elapsed.as_secs_f64());
        println!("peak_rss_kib={}", peak_rss_kib().unwrap_or(0));
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    throughput(&mut criterion);
    criterion.final_summary();
    match (peak_in_child(100_000), peak_in_child(1_000_000)) {
        (Some(small), Some(large)) if small > 0 => println!(
            "peak RSS: 100k values {small} KiB, 1M values {large} KiB, ratio {:.2} (target ≤ 1.20)",
            large as f64 / small as f64
        ),
        other => println!("peak RSS: could not measure ({other:?})"),
    }
}

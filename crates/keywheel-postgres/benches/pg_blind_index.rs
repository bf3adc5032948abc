//! Lookup latency by email through a blind index on Postgres, idle and during
//! a rotation, in the same run: seeds N rows `users(id, email bytea,
//! email_bidx bytea)` with a btree on `email_bidx`, then, `--repeat` times:
//!
//! * **idle**: lookups of random rows for a few seconds, one term (the
//!   keyring has one usable version: the previous one is retired);
//! * **during a rotation**: the same lookups while a rotation runs in the
//!   background at its default speed (`RotateOptions::default()`), two terms
//!   (the old and the new version).
//!
//! A lookup is what an application does: the terms from its keyring snapshot
//! (`Keyring::index_terms`, refreshed by a listener), then `SELECT id, email
//! FROM users WHERE email_bidx = ANY($1)` with an [`IndexParam`] on one
//! connection, one lookup after the other; every lookup must find exactly
//! its row. Prints p50/p99 latency of each window, their ratios, and the
//! medians over the repeats.
//!
//! ```text
//! cargo bench -p keywheel-postgres --bench pg_blind_index -- --rows 1000000
//! KEYWHEEL_BENCH_ROWS=50000 cargo bench -p keywheel-postgres --bench pg_blind_index -- --repeat 3
//! ```
//!
//! Options: `--rows N` (default 1,000,000, or `KEYWHEEL_BENCH_ROWS`),
//! `--repeat N` (default 3), `--idle-secs S` (default 5). Finds Postgres like
//! the tests do (`KEYWHEEL_TEST_DATABASE_URL`, a local server, or a throwaway
//! cluster) and works in a database of its own.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::{TestDb, XorShift, email, email_ctx as ctx, email_index};
use keywheel_core::{Algorithm, Form, KeyVersion, KeyringId, Keywheel, Policy, Purpose, RotateOptions, Rotator};
use keywheel_postgres::tokio_postgres::Client;
use keywheel_postgres::{IndexParam, PgRecordSource, PgSchema, TableSpec, spawn_listener};

struct Args {
    rows: i64,
    repeat: usize,
    idle: Duration,
}

fn args() -> Args {
    let argv = support::Argv::new();
    Args {
        rows: argv.rows(),
        repeat: argv.get("--repeat", "N").unwrap_or(3_usize).max(1),
        idle: Duration::from_secs_f64(argv.get("--idle-secs", "S").unwrap_or(5.0)),
    }
}

/// Latencies of one window, sorted.
struct Window(Vec<Duration>);

impl Window {
    fn percentile(&self, p: f64) -> Duration {
        let i = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len().max(1)) - 1;
        self.0.get(i).copied().unwrap_or_default()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Lookups of random rows until `done` says so, each with the terms of the
/// application's current snapshot; only those made with `terms` terms count.
/// Panics unless every lookup finds exactly its row.
async fn lookups(
    client: &Client,
    kw: &Keywheel,
    id: &KeyringId,
    rows: i64,
    terms: usize,
    done: impl Fn() -> bool,
) -> Window {
    let mut rng = XorShift::seeded();
    let index = email_index();
    let mut latencies = Vec::new();
    while !done() {
        let row = 1 + rng.below(rows as u64) as i64;
        let typed = format!(" {} ", email(row).to_uppercase());
        let started = Instant::now();
        let ring = kw.keyring(id).await.expect("keyring");
        let param = IndexParam::new(&ring.index_terms(typed.as_bytes(), &index).expect("terms"), Form::Binary);
        let found =
            client.query("SELECT id, email FROM users WHERE email_bidx = ANY($1)", &[&param]).await.expect("lookup");
        let elapsed = started.elapsed();
        assert!(found.len() == 1 && found[0].get::<_, i64>(0) == row, "row {row} not found exactly once");
        if param.terms().len() == terms {
            latencies.push(elapsed);
        }
    }
    latencies.sort();
    Window(latencies)
}

fn main() {
    support::block_on(run(args()));
}

async fn run(args: Args) {
    let Some(db) = TestDb::create().await else { return };
    let n = args.rows;
    println!("pg_blind_index: {n} rows, btree on email_bidx, {} repeats, idle windows of {:?}", args.repeat, args.idle);
    let pool = db.pool(6);
    let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
    let id = KeyringId::new("bench", Purpose::Database).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("keyring");
    // No grace period: each old version retires right after its rotation, so
    // that idle lookups have one term.
    let policy = Policy { grace_period: Duration::ZERO, ..kw.policy(&id).await.expect("policy") };
    kw.set_policy(&id, &policy).await.expect("policy");
    let ring = kw.keyring(&id).await.expect("ring");
    let index = email_index();

    let t = Instant::now();
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, email bytea, email_bidx bytea)")
        .await
        .expect("create");
    let chunk = 20_000i64;
    let mut start = 1;
    while start <= n {
        let ids: Vec<i64> = (start..=(start + chunk - 1).min(n)).collect();
        let emails: Vec<Vec<u8>> =
            ids.iter().map(|i| ring.encrypt(email(*i).as_bytes(), &ctx(*i)).expect("encrypt")).collect();
        let tags: Vec<Vec<u8>> =
            ids.iter().map(|i| ring.blind_index(email(*i).as_bytes(), &index).expect("tag")).collect();
        client
            .execute(
                "INSERT INTO users SELECT * FROM UNNEST($1::int8[], $2::bytea[], $3::bytea[])",
                &[&ids, &emails, &tags],
            )
            .await
            .expect("seed");
        start += chunk;
    }
    for sql in ["CREATE INDEX users_email_bidx ON users (email_bidx)", "VACUUM ANALYZE users", "CHECKPOINT"] {
        client.batch_execute(sql).await.expect(sql);
    }
    println!("seeded in {:.1} s", t.elapsed().as_secs_f64());

    // The application: its own Keywheel, kept fresh by a listener.
    let app_pool = db.pool(2);
    let app_kw = common::keywheel_on(&app_pool, Duration::from_secs(3600)).await;
    let listener = spawn_listener(&app_pool, &PgSchema::default(), app_kw.clone()).await.expect("listener");
    let app = db.client().await;
    let source = PgRecordSource::open(
        pool.clone(),
        TableSpec::new("public", "users").keyring(id.clone()).column("email", Form::Binary).index(
            "email",
            "email_bidx",
            Form::Binary,
            index.clone(),
        ),
    )
    .await
    .expect("open");
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(std::sync::Arc::new(source));

    let mut ratios = (Vec::new(), Vec::new());
    let mut figures = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.repeat {
        // Idle: one term.
        let until = Instant::now() + args.idle;
        let idle = lookups(&app, &app_kw, &id, n, 1, || Instant::now() >= until).await;
        // During a rotation: two terms.
        let (rotator_bg, id_bg, policy_bg) = (rotator.clone(), id.clone(), policy.clone());
        let rotation =
            tokio::spawn(async move { rotator_bg.rotate(&id_bg, &policy_bg, &RotateOptions::default()).await });
        let started = Instant::now();
        let during = lookups(&app, &app_kw, &id, n, 2, || rotation.is_finished()).await;
        let report = rotation.await.expect("rotation task").expect("rotate");
        let took = started.elapsed();
        let (from, to) = (report.from.expect("from"), report.to.expect("to"));
        assert_eq!(report.counts.rewritten, n as u64, "{report:?}");
        rotator.retire(&id, from, &policy, None).await.expect("retire the old version");
        // Wait for the application to see the retirement (one term again).
        while app_kw.keyring(&id).await.expect("keyring").index_terms(b"x", &index).expect("terms").len() != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (i50, i99, d50, d99) = (
            ms(idle.percentile(0.5)),
            ms(idle.percentile(0.99)),
            ms(during.percentile(0.5)),
            ms(during.percentile(0.99)),
        );
        println!(
            "round {round}: idle (1 term) p50 {i50:.3} ms p99 {i99:.3} ms over {} lookups; during the rotation \
             v{}→v{} ({:.1} s, 2 terms) p50 {d50:.3} ms p99 {d99:.3} ms over {} lookups; ratio p50 {:.2}× p99 {:.2}×",
            idle.0.len(),
            from.get(),
            to.get(),
            took.as_secs_f64(),
            during.0.len(),
            d50 / i50,
            d99 / i99,
        );
        ratios.0.push(d50 / i50);
        ratios.1.push(d99 / i99);
        figures.0.push(i50);
        figures.1.push(i99);
        figures.2.push(d50);
        figures.3.push(d99);
    }
    println!(
        "median of {} rounds: idle p50 {:.3} ms p99 {:.3} ms; during a rotation p50 {:.3} ms p99 {:.3} ms; \
         ratio p50 {:.2}× p99 {:.2}×",
        args.repeat,
        median(figures.0),
        median(figures.1),
        median(figures.2),
        median(figures.3),
        median(ratios.0),
        median(ratios.1),
    );
    let last = KeyVersion::new(1 + args.repeat as u32).expect("version");
    let census = rotator.census(Some(&id)).await.expect("census");
    assert_eq!(census.index_tag_count(&id, last), n as u64, "every tag on the last version: {census:?}");
    listener.abort();
}

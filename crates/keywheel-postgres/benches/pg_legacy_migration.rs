//! Migrating Fernet values in Postgres (issue #14): N Fernet tokens (made by
//! Python's `cryptography` in one process; not measured) in a `text` column,
//! copied into two identical tables, then measured in the same run:
//!
//! (a) keywheel: one rotation (`Rotator` + `PgRecordSource` wrapped in
//!     `LegacyColumns` with a `FernetFormat`) that decrypts every token and
//!     writes it as a keywheel value (scan, decrypt, encrypt, compare-and-set
//!     write, verify);
//! (b) what the field does today: a Python loop (psycopg 3) reading the rows
//!     with a server-side cursor, `MultiFernet([new, old]).rotate(token)` per
//!     value, one batched `UPDATE … FROM unnest(…)` per batch on a second
//!     connection, committed per batch.
//!
//! (c) the writes alone: the raw batched rewrite of a third copy (text of the
//!     length keywheel writes, one `UPDATE … FROM unnest(…)` per batch on one
//!     connection, no crypto, no compare-and-set, as `pg_rotation` measures
//!     it), so (c)/(b) is about the ratio a client with free crypto and no
//!     overhead would reach on this server.
//!
//! It prints rows/s of all three and the ratios (the target is (a)/(b) ≥ 20).
//!
//! ```text
//! cargo bench -p keywheel-postgres --bench pg_legacy_migration -- --rows 1000000
//! ```
//!
//! Options: `--rows N` (default 1,000,000, or `KEYWHEEL_BENCH_ROWS`),
//! `--batch ROWS` (rows per batch for both, default 2000), `--parallel N`
//! (keywheel batches in flight, default 3), `--min-ratio R` (exit non-zero if
//! (a)/(b) is below R). Needs `python3` with `cryptography` and `psycopg`
//! (`pip install cryptography 'psycopg[binary]'`). Finds Postgres like the
//! tests do and works in a database of its own.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDb;
use keywheel_core::{
    Algorithm, Context, FernetFormat, Form, JobPhase, KeyringId, LegacyColumns, LegacyFormats, Purpose, RecordSource,
    RotateOptions, Rotator,
};
use keywheel_postgres::{PgRecordSource, TableSpec};

mod support;
use support::{Args, args};

/// The Python loop of (b): prints the number of rows it rotated.
const PYTHON_LOOP: &str = r#"
import os, sys
import psycopg
from cryptography.fernet import Fernet, MultiFernet
old = Fernet(os.environ["KEYWHEEL_BENCH_OLD_KEY"].encode())
multi = MultiFernet([Fernet(Fernet.generate_key()), old])
conninfo, batch = sys.argv[1], int(sys.argv[2])
done = 0
with psycopg.connect(conninfo) as read, psycopg.connect(conninfo) as write:
    # Rows found through the primary key, as keywheel's source finds them.
    write.execute("SET enable_hashjoin = off; SET enable_mergejoin = off")
    with read.cursor(name="scan") as cur:
        cur.itersize = batch
        cur.execute("SELECT id, secret FROM fernet_py ORDER BY id")
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                break
            ids = [r[0] for r in rows]
            rotated = [multi.rotate(r[1].encode()).decode() for r in rows]
            write.execute(
                "UPDATE fernet_py t SET secret = v.s FROM unnest(%s::bigint[], %s::text[]) AS v(id, s) WHERE t.id = v.id",
                (ids, rotated),
            )
            write.commit()
            done += len(rows)
print(done)
"#;

fn ctx(id: i64) -> Context {
    Context::field("fernet_kw", "secret", &id.to_string())
}

fn plaintext(id: i64) -> Vec<u8> {
    format!("user{id}@example.com").into_bytes()
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let Some(db) = TestDb::create().await else { return };
    let n = args.rows;
    println!(
        "pg_legacy_migration: {n} Fernet values, batches of {} rows, {} keywheel batches in flight",
        args.batch, args.parallel
    );
    let t = Instant::now();
    let plaintexts: Vec<Vec<u8>> = (1..=n).map(plaintext).collect();
    let Some(made) = keywheel_conformance::legacy_tools::fernet_tokens("pg_legacy_migration", &plaintexts) else {
        return;
    };
    drop(plaintexts);
    println!("{n} Fernet tokens made by Python in {:.1} s (not measured)", t.elapsed().as_secs_f64());

    let pool = db.pool(args.parallel + 3);
    let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
    let id = KeyringId::new("bench", Purpose::Database).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("keyring");

    // Seed: two identical tables, one per contender.
    let t = Instant::now();
    let client = db.client().await;
    for table in ["fernet_kw", "fernet_py", "fernet_raw"] {
        client
            .batch_execute(&format!("CREATE TABLE {table} (id bigint PRIMARY KEY, secret text)"))
            .await
            .expect("create");
    }
    for (i, chunk) in made.values.chunks(20_000).enumerate() {
        let first = (i * 20_000) as i64 + 1;
        let ids: Vec<i64> = (first..first + chunk.len() as i64).collect();
        client
            .execute("INSERT INTO fernet_kw SELECT * FROM UNNEST($1::int8[], $2::text[])", &[&ids, &chunk])
            .await
            .expect("seed");
    }
    for sql in [
        "INSERT INTO fernet_py SELECT * FROM fernet_kw",
        "INSERT INTO fernet_raw SELECT * FROM fernet_kw",
        "VACUUM ANALYZE fernet_kw",
        "VACUUM ANALYZE fernet_py",
        "VACUUM ANALYZE fernet_raw",
        "CHECKPOINT",
    ] {
        client.batch_execute(sql).await.expect(sql);
    }
    println!("seeded in {:.1} s", t.elapsed().as_secs_f64());

    // (a) keywheel.
    let spec = TableSpec::new("public", "fernet_kw").keyring(id.clone()).column("secret", Form::Text);
    let source = PgRecordSource::open(pool.clone(), spec).await.expect("source");
    let formats = LegacyFormats::new().with(FernetFormat::new([&made.key]).expect("Fernet key"));
    let source: Arc<dyn RecordSource> = Arc::new(LegacyColumns::new(Arc::new(source)).column("secret", formats));
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(source);
    let policy = keywheel_core::Policy { activation_delay: Duration::ZERO, ..kw.policy(&id).await.expect("policy") };
    let opts = RotateOptions {
        batch_size: args.batch,
        parallel_batches: args.parallel,
        estimate_total: false,
        ..RotateOptions::default()
    };
    let t = Instant::now();
    let report = rotator.rotate(&id, &policy, &opts).await.expect("rotate");
    let kw_secs = t.elapsed().as_secs_f64();
    assert_eq!(report.phase, JobPhase::Completed, "{:?}", report.failures.first());
    assert_eq!(report.legacy.get("fernet").copied(), Some(n as u64), "every token migrated");
    let kw_rate = n as f64 / kw_secs;
    println!("(a) keywheel rotation (Fernet -> keywheel): {kw_secs:.2} s, {kw_rate:.0} rows/s");

    // Check: every row is a keywheel value of its plaintext (a sample decrypts).
    let migrated: i64 = client
        .query_one("SELECT count(*) FROM fernet_kw WHERE secret LIKE 'kw:v2:%'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(migrated, n);
    let ring = kw.keyring(&id).await.expect("ring");
    for row in client.query("SELECT id, secret FROM fernet_kw ORDER BY random() LIMIT 1000", &[]).await.expect("sample")
    {
        let (i, secret): (i64, String) = (row.get(0), row.get(1));
        assert_eq!(&ring.decrypt(secret.as_bytes(), &ctx(i)).expect("decrypt")[..], &plaintext(i)[..]);
    }

    // (b) the Python loop.
    let t = Instant::now();
    let out = Command::new("python3")
        .args(["-c", PYTHON_LOOP, &db.url, &args.batch.to_string()])
        .env("KEYWHEEL_BENCH_OLD_KEY", &made.key)
        .output()
        .expect("run python3");
    let py_secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        panic!(
            "the Python loop failed (needs `pip install cryptography 'psycopg[binary]'`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rotated: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("rows rotated");
    assert_eq!(rotated, n);
    let py_rate = n as f64 / py_secs;
    println!("(b) Python MultiFernet.rotate per value, batched UPDATEs: {py_secs:.2} s, {py_rate:.0} rows/s");

    // (c) The raw rewrite, the server's ceiling for this table and batch size.
    client.batch_execute("CHECKPOINT; SET enable_hashjoin = off; SET enable_mergejoin = off").await.expect("settings");
    let new_len = ring.encrypt_text(&plaintext(n), &ctx(n)).expect("encrypt").len();
    let filler: String = "kwAB0123456789+/".chars().cycle().take(new_len).collect();
    let batch = i64::try_from(args.batch).expect("batch");
    let t = Instant::now();
    let mut start = 1;
    while start <= n {
        let ids: Vec<i64> = (start..=(start + batch - 1).min(n)).collect();
        let values: Vec<String> = ids.iter().map(|id| format!("{id}{filler}")[..new_len].to_owned()).collect();
        client
            .execute(
                "UPDATE fernet_raw AS t SET secret = v.s FROM UNNEST($1::int8[], $2::text[]) AS v(id, s) WHERE t.id = v.id",
                &[&ids, &values],
            )
            .await
            .expect("raw update");
        start += batch;
    }
    let raw_secs = t.elapsed().as_secs_f64();
    let raw_rate = n as f64 / raw_secs;
    println!("(c) raw UNNEST rewrite of the same rows (no crypto): {raw_secs:.2} s, {raw_rate:.0} rows/s");

    let ratio = kw_rate / py_rate;
    println!("ratio (a)/(b): {ratio:.1}x (target >= 20x)");
    println!(
        "ratio (a)/(c): {:.2}x of the raw rewrite; (c)/(b), the writes alone against the Python loop: {:.1}x",
        kw_rate / raw_rate,
        raw_rate / py_rate
    );
    if let Some(min) = args.min_ratio
        && ratio < min
    {
        eprintln!("ratio {ratio:.1} is below --min-ratio {min}");
        std::process::exit(1);
    }
}

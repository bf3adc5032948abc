//! A rotation process killed with SIGKILL at random points, then resumed from
//! another process: every row decrypts, none is lost, and the census ends on
//! the new version only. The killed process is this test binary re-executed
//! to run `sigkill_child` (which does nothing unless `KEYWHEEL_SIGKILL_CHILD`
//! is set).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestDb, XorShift, plaintext};
use keywheel_core::{
    Algorithm, Context, Form, JobPhase, KeyringId, Keywheel, Purpose, RecordSource, RotateOptions, Rotator, version_of,
};
use keywheel_postgres::{PgPool, PgRecordSource, TableSpec};

const TRIALS: usize = 24;
const ROWS: i64 = 1200;
const HOLDER: &str = "sigkill-rotator";
const CHILD_ENV: &str = "KEYWHEEL_SIGKILL_CHILD";

fn table(trial: usize) -> String {
    format!("trial_{trial}")
}

fn keyring(trial: usize) -> KeyringId {
    KeyringId::new(format!("trial-{trial}"), Purpose::Database).expect("id")
}

fn ctx(trial: usize, id: i64) -> Context {
    Context::field(&table(trial), "secret", &id.to_string())
}

async fn rotator(pool: &PgPool, kw: &Keywheel, trial: usize) -> Rotator {
    let spec = TableSpec::new("public", table(trial)).keyring(keyring(trial)).column("secret", Form::Binary);
    let source = PgRecordSource::open(pool.clone(), spec).await.expect("open source");
    Rotator::new(kw.clone()).expect("rotator").source(Arc::new(source)).holder(HOLDER)
}

fn options() -> RotateOptions {
    // Throttled so a run lasts a few hundred milliseconds: kills land in every phase.
    RotateOptions {
        batch_size: 40,
        parallel_batches: 2,
        max_records_per_second: Some(4000),
        lease_ttl: Duration::from_secs(600),
        ..RotateOptions::default()
    }
}

/// The child: rotate the trial's keyring (or resume its job) until killed.
#[test]
fn sigkill_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (url, trial) = spec.rsplit_once('|').expect("url|trial");
    let trial: usize = trial.parse().expect("trial");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(async {
        let pool = PgPool::without_tls(url).expect("pool");
        let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
        let rotator = rotator(&pool, &kw, trial).await;
        let id = keyring(trial);
        println!("ROTATING");
        let policy = rotator.keywheel().policy(&id).await.expect("policy");
        match rotator.resume(&id, &options()).await.expect("resume") {
            Some(_) => {}
            None => {
                rotator.rotate(&id, &policy, &options()).await.expect("rotate");
            }
        }
        println!("DONE");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_resumes_after_sigkill_at_random_points() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(6);
    let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
    let client = db.client().await;
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = XorShift::seeded();
    let mut killed_mid_job = 0;
    let started = Instant::now();
    for trial in 0..TRIALS {
        let id = keyring(trial);
        kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("keyring");
        db.execute(&format!("CREATE TABLE public.{} (id bigint PRIMARY KEY, secret bytea NOT NULL)", table(trial)))
            .await;
        let ring = kw.keyring(&id).await.expect("ring");
        let ids: Vec<i64> = (1..=ROWS).collect();
        let values: Vec<Vec<u8>> =
            ids.iter().map(|n| ring.encrypt(&plaintext(*n, 0), &ctx(trial, *n)).expect("encrypt")).collect();
        client
            .execute(
                &format!("INSERT INTO public.{} SELECT * FROM UNNEST($1::int8[], $2::bytea[])", table(trial)),
                &[&ids, &values],
            )
            .await
            .expect("seed");

        let mut child = Command::new(&exe)
            .args(["--exact", "sigkill_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}|{trial}", db.url))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Wait for the child to start rotating, then kill it somewhere in the run
        // (a full run takes ~0.3-0.4 s; some trials also kill just before the job or after its end).
        let mut seen = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
            let ready = line.contains("ROTATING");
            seen.push(line);
            if ready {
                break;
            }
        }
        assert!(seen.iter().any(|l| l.contains("ROTATING")), "trial {trial}: the child did not start: {seen:?}");
        let delay = Duration::from_millis(rng.below(420));
        tokio::time::sleep(delay).await;
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");

        // The killed child's lease is never taken over while live: resume as
        // another process would once it expired (a clock past its time-to-live).
        let later = keywheel_core::ManualClock::new(
            keywheel_core::Clock::now(&keywheel_core::SystemClock).plus(options().lease_ttl + Duration::from_secs(1)),
        );
        let resumer = keywheel_core::Keywheel::builder()
            .store(Arc::new(keywheel_postgres::PgKeyStore::new(pool.clone(), keywheel_postgres::PgSchema::default())))
            .audit(Arc::new(keywheel_postgres::PgAuditSink::new(pool.clone(), keywheel_postgres::PgSchema::default())))
            .kek(Arc::new(keywheel_core::LocalKek::from_bytes(&[7; 32])))
            .clock(Arc::new(later))
            .build()
            .expect("keywheel");
        let rotator = rotator(&pool, &resumer, trial).await;
        let unfinished = rotator.last_job(&id).await.expect("jobs").is_some_and(|j| !j.phase.is_finished());
        if unfinished {
            killed_mid_job += 1;
        }
        let has_job = rotator.last_job(&id).await.expect("jobs").is_some();
        eprintln!(
            "trial {trial}: killed after {delay:?}: {}",
            if unfinished {
                "inside the job"
            } else if has_job {
                "after the job"
            } else {
                "before the job"
            }
        );
        // Resume in this process (another process than the killed one).
        let report = match rotator.resume(&id, &options()).await.expect("resume") {
            Some(report) => report,
            None => match rotator.last_job(&id).await.expect("jobs") {
                Some(job) if job.phase.is_finished() => {
                    let source = rotator.census(Some(&id)).await.expect("census");
                    assert_eq!(source.total(&id), ROWS as u64);
                    assert_eq!(job.phase, JobPhase::Completed, "trial {trial}");
                    verify(&db, &kw, trial).await;
                    continue;
                }
                _ => rotator
                    .rotate(&id, &rotator.keywheel().policy(&id).await.expect("policy"), &options())
                    .await
                    .expect("rotate"),
            },
        };
        assert_eq!(report.phase, JobPhase::Completed, "trial {trial} (killed after {delay:?}): {report:?}");
        verify(&db, &kw, trial).await;
    }
    eprintln!("{TRIALS} trials, {killed_mid_job} killed in the middle of a job, in {:?}", started.elapsed());
    assert!(killed_mid_job >= TRIALS / 2, "too few kills landed inside a job ({killed_mid_job}/{TRIALS})");
}

/// Every row is there, decrypts to its plaintext, and is on the Active version.
async fn verify(db: &TestDb, kw: &Keywheel, trial: usize) {
    let id = keyring(trial);
    let active = kw.record(&id).await.expect("record").active_version().expect("active");
    let rows = db
        .client()
        .await
        .query(&format!("SELECT id, secret FROM public.{} ORDER BY id", table(trial)), &[])
        .await
        .expect("rows");
    assert_eq!(rows.len(), ROWS as usize, "trial {trial}: rows lost");
    for row in rows {
        let (n, secret): (i64, Vec<u8>) = (row.get(0), row.get(1));
        let plain = kw
            .decrypt(&id, &secret, &ctx(trial, n))
            .await
            .unwrap_or_else(|e| panic!("trial {trial}: row {n} does not decrypt: {e}"));
        assert_eq!(&plain[..], &plaintext(n, 0)[..], "trial {trial}: row {n}");
        assert_eq!(version_of(&secret), Ok(active), "trial {trial}: row {n} is not on the active version");
    }
    let source = PgRecordSource::open(
        kw_pool(db),
        TableSpec::new("public", table(trial)).keyring(id.clone()).column("secret", Form::Binary),
    )
    .await
    .expect("open");
    let census = source.census(Some(&id)).await.expect("census");
    assert_eq!(census.count(&id, active), ROWS as u64, "trial {trial}: census {census:?}");
}

fn kw_pool(db: &TestDb) -> PgPool {
    db.pool(2)
}

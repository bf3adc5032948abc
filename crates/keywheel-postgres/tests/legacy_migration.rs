//! Issue #14 in Postgres: 100 000 rows of one `text` column mixing Fernet
//! tokens (made by Python's `cryptography`), Lockbox values (made by Ruby's
//! `lockbox`), plaintext inside its window and keywheel values are migrated
//! by one resumable rotation that is cancelled, or killed (its future
//! dropped mid-batch, without a checkpoint), at random points and resumed.
//! Afterwards every row decrypts under keywheel to its original plaintext,
//! no row is lost, and a plaintext row written after the end date is
//! refused (a listed failure, left untouched).
//!
//! The tools run at test time (`keywheel_conformance::legacy_tools`); without
//! them the test prints a loud SKIP, or fails under `CI=true`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TestDb, XorShift};
use keywheel_conformance::legacy_tools;
use keywheel_core::{
    Algorithm, CancelToken, Clock, Context, FernetFormat, Form, JobPhase, KeyringId, Keywheel, LegacyColumns,
    LegacyFormats, LocalKek, LockboxFormat, ManualClock, Purpose, RecordSource, RotateOptions, Rotator, SystemClock,
};
use keywheel_postgres::{PgAuditSink, PgKeyStore, PgPool, PgRecordSource, TableSpec};

const ROWS: i64 = 100_000;
const KINDS: [&str; 4] = ["fernet", "lockbox", "plaintext", "keywheel"];

fn kind_of(id: i64) -> &'static str {
    KINDS[(id % 4) as usize]
}

fn plaintext_of(id: i64) -> Vec<u8> {
    format!("{}-{id}-ünïcödé@example.com", kind_of(id)).into_bytes()
}

fn ctx(id: i64) -> Context {
    Context::field("people", "email", &id.to_string())
}

fn id() -> KeyringId {
    KeyringId::new("acme", Purpose::Database).expect("id")
}

async fn rotator(pool: &PgPool, kw: &Keywheel, formats: &LegacyFormats) -> Rotator {
    let spec = TableSpec::new("public", "people").keyring(id()).column("email", Form::Text);
    let source = PgRecordSource::open(pool.clone(), spec).await.expect("open source");
    let source = LegacyColumns::new(Arc::new(source)).column("email", formats.clone());
    Rotator::new(kw.clone()).expect("rotator").source(Arc::new(source) as Arc<dyn RecordSource>).holder("legacy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_legacy_column_of_100k_rows_migrates_through_kills_and_resumes() {
    let Some(db) = TestDb::create().await else { return };
    let started = Instant::now();
    let of = |kind: &str| -> Vec<i64> { (1..=ROWS).filter(|i| kind_of(*i) == kind).collect() };
    let fernet_ids = of("fernet");
    let lockbox_ids = of("lockbox");
    let test = "a_mixed_legacy_column_of_100k_rows";
    let Some(fernet) =
        legacy_tools::fernet_tokens(test, &fernet_ids.iter().map(|i| plaintext_of(*i)).collect::<Vec<_>>())
    else {
        return;
    };
    let Some(lockbox) =
        legacy_tools::lockbox_values(test, &lockbox_ids.iter().map(|i| plaintext_of(*i)).collect::<Vec<_>>())
    else {
        return;
    };
    eprintln!("values made by python and ruby in {:?}", started.elapsed());

    let pool = db.pool(6);
    let clock = ManualClock::new(SystemClock.now());
    let kw = {
        let schema = common::migrated(&db, &pool).await;
        Keywheel::builder()
            .store(Arc::new(PgKeyStore::new(pool.clone(), schema.clone())))
            .audit(Arc::new(PgAuditSink::new(pool.clone(), schema)))
            .kek(Arc::new(LocalKek::from_bytes(&[7; 32])))
            .clock(Arc::new(clock.clone()))
            .refresh_interval(Duration::ZERO)
            .build()
            .expect("keywheel")
    };
    kw.create_keyring(&id(), Algorithm::Aes256Gcm).await.expect("keyring");
    let ring = kw.keyring(&id()).await.expect("ring");

    db.execute("CREATE TABLE public.people (id bigint PRIMARY KEY, email text)").await;
    let mut values: BTreeMap<i64, String> = BTreeMap::new();
    values.extend(fernet_ids.iter().copied().zip(fernet.values.iter().cloned()));
    values.extend(lockbox_ids.iter().copied().zip(lockbox.values.iter().cloned()));
    for i in of("plaintext") {
        values.insert(i, String::from_utf8(plaintext_of(i)).expect("utf-8"));
    }
    for i in of("keywheel") {
        values.insert(i, ring.encrypt_text(&plaintext_of(i), &ctx(i)).expect("encrypt"));
    }
    let client = db.client().await;
    let all: Vec<(i64, String)> = values.into_iter().collect();
    for chunk in all.chunks(10_000) {
        let ids: Vec<i64> = chunk.iter().map(|(i, _)| *i).collect();
        let texts: Vec<&str> = chunk.iter().map(|(_, v)| v.as_str()).collect();
        client
            .execute("INSERT INTO public.people SELECT * FROM UNNEST($1::int8[], $2::text[])", &[&ids, &texts])
            .await
            .expect("seed");
    }
    let before: BTreeMap<i64, String> = all.iter().cloned().collect();
    eprintln!("{ROWS} rows seeded after {:?}", started.elapsed());

    let until = clock.now().plus(Duration::from_secs(30 * 24 * 3600));
    let formats = LegacyFormats::new()
        .with(FernetFormat::new([&fernet.key]).expect("fernet key"))
        .with(LockboxFormat::new(&lockbox.key).expect("lockbox key"))
        .accept_plaintext_until(until);
    let rotator = rotator(&pool, &kw, &formats).await;
    let census = rotator.legacy_census(Some(&id())).await.expect("census");
    let quarter = (ROWS / 4) as u64;
    let expected: BTreeMap<String, u64> = ["fernet", "lockbox", "plaintext"].map(|k| (k.to_owned(), quarter)).into();
    assert_eq!((census.keywheel, census.legacy.clone(), census.unrecognized), (quarter, expected.clone(), 0));

    // One rotation, interrupted at random points until it completes.
    let policy = keywheel_core::Policy { activation_delay: Duration::ZERO, ..kw.policy(&id()).await.expect("policy") };
    let mut rng = XorShift::seeded();
    let (mut cancels, mut kills) = (0, 0);
    let mut report = None;
    for run in 0..100 {
        let cancel = CancelToken::new();
        let batches = Arc::new(AtomicU64::new(0));
        let stop_after = 1 + rng.below(12);
        let kill = rng.below(2) == 0;
        let (counter, trigger) = (Arc::clone(&batches), cancel.clone());
        let opts = RotateOptions {
            batch_size: 500 + rng.below(1500) as usize,
            parallel_batches: 1 + rng.below(3) as usize,
            cancel: cancel.clone(),
            lease_ttl: Duration::from_secs(60),
            progress: Some(Arc::new(move |_: &keywheel_core::Progress| {
                if counter.fetch_add(1, Ordering::SeqCst) + 1 == stop_after {
                    trigger.cancel();
                }
            })),
            ..RotateOptions::default()
        };
        let go = async {
            if run == 0 {
                rotator.rotate(&id(), &policy, &opts).await.map(Some)
            } else {
                rotator.resume(&id(), &opts).await
            }
        };
        let outcome = if kill {
            // Killed a random moment after the batch that asked for it: the
            // future is dropped mid-pipeline, batches in flight abort.
            let after = Duration::from_millis(rng.below(40));
            let killer = async {
                cancel.cancelled().await;
                tokio::time::sleep(after).await;
            };
            tokio::select! {
                r = go => Some(r),
                () = killer => None,
            }
        } else {
            Some(go.await)
        };
        match outcome {
            None => {
                kills += 1;
                // The killed run's lease expires before anyone resumes.
                clock.advance(opts.lease_ttl + Duration::from_secs(1));
            }
            Some(r) => {
                let r = r.expect("rotation").expect("a job");
                if r.phase == JobPhase::Cancelled {
                    cancels += 1;
                    continue;
                }
                report = Some(r);
                break;
            }
        }
    }
    let report = report.expect("the rotation completes");
    eprintln!("completed after {cancels} cancellations and {kills} kills, {:?} in all", started.elapsed());
    assert!(cancels + kills >= 3, "interrupted {cancels} + {kills} times");
    assert_eq!(report.phase, JobPhase::Completed, "{:?}", report.failures);
    assert!(report.legacy.values().all(|n| *n <= quarter), "{:?}", report.legacy);

    // Every row is a keywheel value of its original plaintext; none lost.
    let ring = kw.keyring(&id()).await.expect("ring");
    let rows = client.query("SELECT id, email FROM public.people ORDER BY id", &[]).await.expect("rows");
    assert_eq!(rows.len(), ROWS as usize, "no row lost");
    for row in &rows {
        let (i, email): (i64, String) = (row.get(0), row.get(1));
        assert!(email.starts_with("kw:v2:"), "row {i} ({}) is on the new version", kind_of(i));
        let got = ring.decrypt(email.as_bytes(), &ctx(i)).unwrap_or_else(|e| panic!("row {i}: {e}"));
        assert_eq!(&got[..], &plaintext_of(i)[..], "row {i} ({})", kind_of(i));
        assert_ne!(before[&i], email, "row {i} rewritten");
    }
    let census = rotator.legacy_census(Some(&id())).await.expect("census");
    assert_eq!((census.keywheel, census.legacy_total(), census.unrecognized), (ROWS as u64, 0, 0));
    let verify = rotator.verify(&id()).await.expect("verify");
    assert!(verify.ok, "{verify:?}");

    // After the end date plaintext is refused: a listed failure, untouched.
    clock.set(until);
    client
        .execute("INSERT INTO public.people VALUES ($1, $2)", &[&(ROWS + 1), &"late@example.com"])
        .await
        .expect("late plaintext");
    let report = rotator.rotate(&id(), &policy, &RotateOptions::default()).await.expect("rotate");
    assert_eq!((report.phase, report.counts.failed), (JobPhase::CompletedWithFailures, 1));
    assert!(report.legacy.is_empty(), "{:?}", report.legacy);
    let failure = &report.failures[0];
    assert!(failure.reason.contains("plaintext is no longer accepted"), "{}", failure.reason);
    assert_eq!(failure.location.as_ref().map(|l| l.key.as_str()), Some("100001"));
    let late: String =
        client.query_one("SELECT email FROM public.people WHERE id = $1", &[&(ROWS + 1)]).await.expect("row").get(0);
    assert_eq!(late, "late@example.com");
    let total: i64 = client.query_one("SELECT count(*) FROM public.people", &[]).await.expect("count").get(0);
    assert_eq!(total, ROWS + 1);
    eprintln!("done in {:?}", started.elapsed());
}

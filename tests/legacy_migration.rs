//! Migration of legacy data through a rotation (issue #14) on the memory
//! backend: Fernet tokens made by Python's `cryptography`, Lockbox values
//! made by Ruby's `lockbox`, plaintext inside and after its window, values of
//! an async format (a stand-in Vault transit) and keywheel values in one
//! column; dry run, counts per format in the report and the audit, census and
//! verify, and a rotation cancelled or dropped at random points and resumed.
//!
//! The tools run at test time (see `keywheel_conformance::legacy_tools`);
//! without them the tests print a loud SKIP, or fail under `CI=true`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keywheel::memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
use keywheel::{
    Algorithm, AuditKind, CancelToken, Context, Error, FernetFormat, JobPhase, KeyringId, Keywheel, LegacyColumns,
    LegacyFormats, LocalKek, LockboxFormat, ManualClock, Policy, Purpose, RecordSource, RotateOptions, Rotator,
    Timestamp, VaultTransitFormat,
};
use keywheel_conformance::legacy_tools;

const T0: i64 = 1_800_000_000_000;
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Fernet,
    Lockbox,
    Plaintext,
    Vault,
    Keywheel,
}

struct World {
    kw: Keywheel,
    audit: Arc<MemoryAuditSink>,
    clock: ManualClock,
    table: Arc<MemoryRecordSource>,
    source: Arc<dyn RecordSource>,
    id: KeyringId,
    /// Row → (what it was written as, its plaintext).
    rows: BTreeMap<u64, (Kind, Vec<u8>)>,
    plaintext_until: Timestamp,
}

fn ctx(row: u64) -> Context {
    Context::field("users", "email", &row.to_string())
}

fn plaintext_of(kind: Kind, row: u64) -> Vec<u8> {
    // Distinct per row, unicode included; never empty (an empty value would be
    // both a Lockbox value and plaintext).
    format!("{kind:?}-{row}-ünïcödé@example.com").into_bytes()
}

/// A stand-in Vault transit engine: `vault:v1:` + base64(plaintext); counts calls.
fn stand_in_vault(calls: Arc<AtomicU64>) -> VaultTransitFormat {
    VaultTransitFormat::new(move |batch: Vec<String>| {
        let calls = Arc::clone(&calls);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            // Yield once, as a real request would.
            tokio::task::yield_now().await;
            Ok(batch
                .iter()
                .map(|c| STANDARD.decode(c.splitn(3, ':').nth(2).unwrap_or_default()).map_err(|_| Error::Decrypt))
                .collect())
        }
    })
}

/// `per_kind` rows of each kind, interleaved; `None` when a tool is missing.
async fn world(test: &str, per_kind: u64, vault_calls: Arc<AtomicU64>) -> Option<World> {
    let kinds = [Kind::Fernet, Kind::Lockbox, Kind::Plaintext, Kind::Vault, Kind::Keywheel];
    let n = per_kind * kinds.len() as u64;
    let mut rows = BTreeMap::new();
    for row in 0..n {
        let kind = kinds[(row % kinds.len() as u64) as usize];
        rows.insert(row, (kind, plaintext_of(kind, row)));
    }
    let of =
        |kind: Kind| -> Vec<Vec<u8>> { rows.values().filter(|(k, _)| *k == kind).map(|(_, p)| p.clone()).collect() };
    let fernet = legacy_tools::fernet_tokens(test, &of(Kind::Fernet))?;
    let lockbox = legacy_tools::lockbox_values(test, &of(Kind::Lockbox))?;

    let audit = Arc::new(MemoryAuditSink::new());
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let kw = Keywheel::builder()
        .store(Arc::new(MemoryKeyStore::new()))
        .kek(Arc::new(LocalKek::from_bytes(&[1; 32])))
        .audit(Arc::clone(&audit) as Arc<dyn keywheel::AuditSink>)
        .clock(Arc::new(clock.clone()))
        .refresh_interval(Duration::from_millis(0))
        .build()
        .expect("builder");
    let id = KeyringId::new("acme", Purpose::Database).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let table = Arc::new(MemoryRecordSource::new("users.email"));
    let (mut f, mut l) = (fernet.values.iter(), lockbox.values.iter());
    for (row, (kind, plaintext)) in &rows {
        let value = match kind {
            Kind::Fernet => f.next().expect("token").clone().into_bytes(),
            Kind::Lockbox => l.next().expect("value").clone().into_bytes(),
            Kind::Plaintext => plaintext.clone(),
            Kind::Vault => format!("vault:v1:{}", STANDARD.encode(plaintext)).into_bytes(),
            Kind::Keywheel => kw.encrypt_text(&id, plaintext, &ctx(*row)).await.expect("encrypt").into_bytes(),
        };
        table.insert_row(*row, id.clone(), ctx(*row), value);
    }
    let plaintext_until = Timestamp::from_millis(T0).plus(30 * DAY);
    let formats = LegacyFormats::new()
        .with(FernetFormat::new([&fernet.key]).expect("fernet key"))
        .with(LockboxFormat::new(&lockbox.key).expect("lockbox key"))
        .with(stand_in_vault(vault_calls))
        .accept_plaintext_until(plaintext_until);
    let source: Arc<dyn RecordSource> =
        Arc::new(LegacyColumns::new(Arc::clone(&table) as Arc<dyn RecordSource>).every_column(formats));
    Some(World { kw, audit, clock, table, source, id, rows, plaintext_until })
}

impl World {
    fn rotator(&self) -> Rotator {
        Rotator::new(self.kw.clone()).expect("rng").holder("legacy-test").source(Arc::clone(&self.source))
    }

    fn policy(&self) -> Policy {
        Policy { activation_delay: Duration::ZERO, ..Policy::for_purpose(self.id.purpose()) }
    }

    fn count(&self, kind: Kind) -> u64 {
        self.rows.values().filter(|(k, _)| *k == kind).count() as u64
    }

    fn legacy_expected(&self, plaintext: bool) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::from([
            ("fernet".to_owned(), self.count(Kind::Fernet)),
            ("lockbox".to_owned(), self.count(Kind::Lockbox)),
            ("vault".to_owned(), self.count(Kind::Vault)),
        ]);
        if plaintext {
            m.insert("plaintext".to_owned(), self.count(Kind::Plaintext));
        }
        m
    }

    /// Every row is a keywheel value decrypting to its plaintext (`except`:
    /// rows of that kind are still their original value).
    async fn check_all_keywheel(&self, except: Option<Kind>) {
        assert_eq!(self.table.len(), self.rows.len(), "no row lost or added");
        for (row, (kind, plaintext)) in &self.rows {
            let value = self.table.get(&MemoryRecordSource::row_cursor(*row)).expect("row");
            if Some(*kind) == except {
                assert_eq!(&value, plaintext, "row {row} untouched");
                continue;
            }
            assert!(value.starts_with(b"kw:v"), "row {row} ({kind:?}) is a keywheel value in text form");
            let got = self.kw.decrypt(&self.id, &value, &ctx(*row)).await.unwrap_or_else(|e| panic!("row {row}: {e}"));
            assert_eq!(&got[..], &plaintext[..], "row {row} ({kind:?})");
        }
    }

    /// Legacy rows migrated according to the audit trail, per format.
    fn audited(&self) -> BTreeMap<String, u64> {
        let mut total = BTreeMap::new();
        for e in self.audit.events() {
            if let AuditKind::LegacyMigrated { counts, source, .. } = &e.kind {
                assert_eq!(source, "users.email");
                for (format, n) in counts {
                    *total.entry(format.clone()).or_default() += n;
                }
            }
        }
        total
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_migrates_every_legacy_format_with_counts_in_report_and_audit() {
    let calls = Arc::new(AtomicU64::new(0));
    let Some(w) = world("a_rotation_migrates_every_legacy_format", 40, Arc::clone(&calls)).await else { return };
    let rotator = w.rotator();

    // Census and verify see the legacy values per format.
    let census = rotator.legacy_census(Some(&w.id)).await.expect("legacy census");
    assert_eq!((census.keywheel, census.unrecognized), (w.count(Kind::Keywheel), 0));
    assert_eq!(census.legacy, w.legacy_expected(true));
    let verify = rotator.verify(&w.id).await.expect("verify");
    assert_eq!((verify.legacy.clone(), verify.unparseable, verify.ok), (w.legacy_expected(true), 0, false));

    // A dry run counts them and writes nothing.
    let before = w.table.values();
    let dry = rotator.dry_run(&w.id, &RotateOptions { batch_size: 17, ..RotateOptions::default() }).await.expect("dry");
    assert_eq!((dry.phase, dry.counts.failed), (JobPhase::Completed, 0), "{:?}", dry.failures);
    assert_eq!(dry.legacy, w.legacy_expected(true));
    assert_eq!(dry.counts.processed, w.rows.len() as u64);
    assert_eq!(w.table.values(), before, "a dry run writes nothing");
    assert!(w.audited().is_empty());

    let opts = RotateOptions { batch_size: 17, ..RotateOptions::default() };
    let report = rotator.rotate(&w.id, &w.policy(), &opts).await.expect("rotate");
    assert_eq!(report.phase, JobPhase::Completed, "{:?}", report.failures);
    assert_eq!(report.legacy, w.legacy_expected(true));
    assert_eq!((report.counts.processed, report.counts.rewritten), (w.rows.len() as u64, w.rows.len() as u64));
    assert_eq!(w.audited(), w.legacy_expected(true), "every migrated value is audited, plaintext included");
    assert!(calls.load(Ordering::SeqCst) > 0, "the async format was awaited");
    w.check_all_keywheel(None).await;

    // Nothing legacy is left: the legacy key material can go.
    let census = rotator.legacy_census(Some(&w.id)).await.expect("legacy census");
    assert_eq!((census.legacy_total(), census.keywheel), (0, w.rows.len() as u64));
    let verify = rotator.verify(&w.id).await.expect("verify");
    assert!(verify.ok && verify.legacy.is_empty(), "{verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_after_its_end_date_is_a_listed_failure_and_left_alone() {
    let Some(w) = world("plaintext_after_its_end_date", 12, Arc::new(AtomicU64::new(0))).await else { return };
    w.clock.set(w.plaintext_until);
    let rotator = w.rotator();
    let dry = rotator.dry_run(&w.id, &RotateOptions::default()).await.expect("dry");
    assert_eq!((dry.counts.failed, dry.legacy.clone()), (w.count(Kind::Plaintext), w.legacy_expected(false)));
    let report = rotator.rotate(&w.id, &w.policy(), &RotateOptions::default()).await.expect("rotate");
    assert_eq!(report.phase, JobPhase::CompletedWithFailures);
    assert_eq!(report.legacy, w.legacy_expected(false));
    assert_eq!(report.counts.failed, w.count(Kind::Plaintext));
    assert_eq!(report.failures.len() as u64, w.count(Kind::Plaintext));
    for f in &report.failures {
        assert!(f.reason.starts_with("plaintext value: ") && f.reason.contains("no longer accepted"), "{}", f.reason);
        assert_eq!(f.version, None);
        let row: u64 = f.cursor.0.parse().expect("row cursor");
        assert_eq!(w.rows[&row].0, Kind::Plaintext);
        // The reason never shows the value.
        assert!(!f.reason.contains("example.com"), "{}", f.reason);
    }
    w.check_all_keywheel(Some(Kind::Plaintext)).await;
    assert!(!w.audited().contains_key("plaintext"));
    let verify = rotator.verify(&w.id).await.expect("verify");
    assert_eq!(verify.legacy.get("plaintext"), Some(&w.count(Kind::Plaintext)));
    assert!(!verify.ok);
}

/// A small deterministic generator (no extra dependency).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_cancelled_or_dropped_at_random_points_resumes_to_the_same_end() {
    let Some(w) = world("a_migration_cancelled_or_dropped", 60, Arc::new(AtomicU64::new(0))).await else { return };
    let rotator = w.rotator();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut interruptions = 0;
    let mut report = None;
    for attempt in 0..50 {
        let cancel = CancelToken::new();
        let stop_after = 1 + next(&mut seed) % 4;
        let drop_it = next(&mut seed).is_multiple_of(2);
        let batches = Arc::new(AtomicU64::new(0));
        let (counter, trigger) = (Arc::clone(&batches), cancel.clone());
        let opts = RotateOptions {
            batch_size: 1 + (next(&mut seed) % 23) as usize,
            parallel_batches: 1 + (next(&mut seed) % 3) as usize,
            cancel: cancel.clone(),
            progress: Some(Arc::new(move |_: &keywheel::Progress| {
                if counter.fetch_add(1, Ordering::SeqCst) + 1 == stop_after {
                    trigger.cancel();
                }
            })),
            ..RotateOptions::default()
        };
        let run = async {
            if attempt == 0 {
                rotator.rotate(&w.id, &w.policy(), &opts).await.map(Some)
            } else {
                rotator.resume(&w.id, &opts).await
            }
        };
        let outcome = if drop_it {
            // Killed: the future is dropped as soon as cancellation is asked
            // for, mid-batch, without its checkpoint; the lease then expires.
            tokio::select! {
                r = run => Some(r),
                () = cancel.cancelled() => None,
            }
        } else {
            Some(run.await)
        };
        match outcome {
            None => {
                interruptions += 1;
                w.clock.advance(opts.lease_ttl + Duration::from_secs(1));
            }
            Some(r) => {
                let r = r.expect("rotation").expect("a job");
                if r.phase == JobPhase::Cancelled {
                    interruptions += 1;
                    continue;
                }
                report = Some(r);
                break;
            }
        }
    }
    let report = report.expect("the rotation completes within 50 runs");
    assert!(interruptions >= 2, "interrupted {interruptions} times");
    assert_eq!(report.phase, JobPhase::Completed, "{:?}", report.failures);
    w.check_all_keywheel(None).await;
    // Values migrated by a run that was killed before its checkpoint are on
    // the new version and are not migrated again: the counts never exceed
    // the rows, and every legacy row was migrated once by some run.
    let legacy_rows = w.rows.len() as u64 - w.count(Kind::Keywheel);
    let audited: u64 = w.audited().values().sum();
    assert!(audited <= legacy_rows, "audited {audited} of {legacy_rows}");
    assert!(report.legacy.values().sum::<u64>() <= legacy_rows);
    let census = rotator.legacy_census(Some(&w.id)).await.expect("census");
    assert_eq!((census.legacy_total(), census.unrecognized), (0, 0));
}

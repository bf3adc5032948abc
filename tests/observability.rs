//! Observability (manual, "Observability: tracing and metrics"): a real
//! rotation over the memory backend with a metrics recorder and a tracing
//! subscriber installed, asserting that the metrics move by exactly what the
//! rotation did, that the job and batch spans carry their fields, and that
//! nothing captured (span fields, events, metric labels) holds key bytes,
//! plaintext, ciphertext or context values.
//!
//! The recorder and the subscriber are process-wide (the rotation engine
//! re-encrypts on blocking threads, where thread-local ones would miss
//! records), so every test here works on keyrings of its own tenant.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use keywheel::memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
use keywheel::observability as names;
use keywheel::{
    Algorithm, Context, Error, KeyMaterial, KeyVersion, KeyringId, Keywheel, LocalKek, ManualClock, Policy, Purpose,
    RotateOptions, Rotator, Timestamp,
};
use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

// ---------------------------------------------------------------- recorder

/// A histogram that keeps its observations.
#[derive(Default)]
struct Observations(Mutex<Vec<f64>>);

impl HistogramFn for Observations {
    fn record(&self, value: f64) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(value);
    }
}

/// A metric's identity: name and sorted labels.
type Series = (String, Vec<(String, String)>);

/// A recorder that keeps every series in memory.
#[derive(Default)]
struct TestRecorder {
    counters: Mutex<HashMap<Series, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<Series, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<Series, Arc<Observations>>>,
    described: Mutex<Vec<String>>,
}

fn series(key: &Key) -> Series {
    let mut labels: Vec<(String, String)> = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
    labels.sort();
    (key.name().to_owned(), labels)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        lock(&self.described).push(key.as_str().to_owned());
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        lock(&self.described).push(key.as_str().to_owned());
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        lock(&self.described).push(key.as_str().to_owned());
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::clone(lock(&self.counters).entry(series(key)).or_default()))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::clone(lock(&self.gauges).entry(series(key)).or_default()))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::clone(lock(&self.histograms).entry(series(key)).or_default()))
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    v.sort();
    v
}

impl TestRecorder {
    fn counter(&self, name: &str, pairs: &[(&str, &str)]) -> u64 {
        lock(&self.counters).get(&(name.to_owned(), labels(pairs))).map_or(0, |c| c.load(Ordering::SeqCst))
    }
    fn gauge(&self, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        lock(&self.gauges).get(&(name.to_owned(), labels(pairs))).map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
    }
    fn histogram(&self, name: &str, pairs: &[(&str, &str)]) -> Vec<f64> {
        lock(&self.histograms).get(&(name.to_owned(), labels(pairs))).map(|h| lock(&h.0).clone()).unwrap_or_default()
    }
    /// Every series (names and label values), as text.
    fn rendered(&self) -> String {
        let mut out = String::new();
        for map in [&*lock(&self.counters), &*lock(&self.gauges)] {
            for key in map.keys() {
                let _ = writeln!(out, "{key:?}");
            }
        }
        for key in lock(&self.histograms).keys() {
            let _ = writeln!(out, "{key:?}");
        }
        out
    }
}

// ---------------------------------------------------------------- subscriber

/// One closed span or one event, with its fields as rendered.
#[derive(Debug, Clone)]
struct Captured {
    span: bool,
    /// The span's name, or the event's message.
    name: String,
    fields: BTreeMap<String, String>,
    /// The enclosing span's name and fields.
    parent: Option<(String, BTreeMap<String, String>)>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Span data kept in the registry until the span closes.
struct SpanData {
    name: String,
    fields: BTreeMap<String, String>,
}

static CAPTURED: Mutex<Vec<Captured>> = Mutex::new(Vec::new());

struct Capture;

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanData { name: attrs.metadata().name().to_owned(), fields: fields.0 });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(data) = span.extensions_mut().get_mut::<SpanData>()
        {
            let mut fields = Fields::default();
            values.record(&mut fields);
            data.fields.extend(fields.0);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let name = fields.0.remove("message").unwrap_or_default();
        let parent = ctx
            .event_span(event)
            .and_then(|s| s.extensions().get::<SpanData>().map(|d| (d.name.clone(), d.fields.clone())));
        lock(&CAPTURED).push(Captured { span: false, name, fields: fields.0, parent });
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let parent =
            span.parent().and_then(|p| p.extensions().get::<SpanData>().map(|d| (d.name.clone(), d.fields.clone())));
        let Some(data) = span.extensions_mut().remove::<SpanData>() else { return };
        lock(&CAPTURED).push(Captured { span: true, name: data.name, fields: data.fields, parent });
    }
}

/// Install the recorder and the subscriber once for this test binary.
fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).expect("the only recorder of this binary");
        let subscriber = tracing_subscriber::registry().with(Capture);
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this binary");
        recorder
    })
}

/// What was captured about `keyring` (by span or parent span field).
fn captured_for(keyring: &KeyringId) -> Vec<Captured> {
    let id = keyring.to_string();
    lock(&CAPTURED)
        .iter()
        .filter(|c| {
            c.field("keyring") == Some(id.as_str())
                || c.parent.as_ref().is_some_and(|(_, f)| f.get("keyring") == Some(&id))
        })
        .cloned()
        .collect()
}

// ---------------------------------------------------------------- the world

/// Distinctive key material, imported as version 2.
const MATERIAL: [u8; 32] = [0xA7; 32];
/// A non-uniform master key.
fn master() -> [u8; 32] {
    std::array::from_fn(|i| 0x3C ^ (i as u8).wrapping_mul(0x2B))
}

const ROWS: u64 = 250;
const BATCH: usize = 100;

fn plaintext(row: u64) -> String {
    format!("plaintext-SECRET-{row:04}-zq")
}

fn row_id(row: u64) -> String {
    format!("row-PII-{row:04}-xk")
}

fn ctx(row: u64) -> Context {
    Context::field("users", "email", &row_id(row))
}

/// A facade over fresh memory backends, on a manual clock.
fn keywheel(master: &[u8; 32]) -> (Keywheel, ManualClock) {
    let clock = ManualClock::new(Timestamp::from_millis(1_800_000_000_000));
    let kw = Keywheel::builder()
        .store(Arc::new(MemoryKeyStore::new()))
        .kek(Arc::new(LocalKek::from_bytes(master)))
        .audit(Arc::new(MemoryAuditSink::new()))
        .clock(Arc::new(clock.clone()))
        .build()
        .expect("builder");
    (kw, clock)
}

fn renderings(bytes: &[u8]) -> Vec<String> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        hex.clone(),
        hex.to_uppercase(),
        format!("{bytes:?}"),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_moves_the_metrics_by_what_it_did_and_traces_its_job_and_batches_without_secrets() {
    let rec = recorder();
    keywheel::observability::describe_metrics();
    for m in names::METRICS {
        assert!(lock(&rec.described).iter().any(|d| d == m.name), "{} not described", m.name);
    }

    let (kw, _) = keywheel(&master());
    let id = KeyringId::new("obs-rotation", Purpose::Database).expect("id");
    let ring_label = id.to_string();
    let k = ring_label.as_str();
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let v2 = kw.import_version(&id, KeyMaterial::from_slice(&MATERIAL).expect("32 bytes")).await.expect("import");
    kw.activate(&id, v2).await.expect("activate");
    assert_eq!(v2, KeyVersion::new(2).expect("2"));

    let table = Arc::new(MemoryRecordSource::new("users.email"));
    let mut stored = Vec::new();
    for row in 0..ROWS {
        let value = kw.encrypt(&id, plaintext(row).as_bytes(), &ctx(row)).await.expect("encrypt");
        table.insert_row(row, id.clone(), ctx(row), value.clone());
        stored.push(value);
    }
    assert_eq!(rec.counter(names::ENCRYPTIONS_TOTAL, &[("keyring", k), ("version", "2")]), ROWS);
    assert_eq!(rec.counter(names::ENCRYPTIONS_TOTAL, &[("keyring", k), ("version", "1")]), 0);
    for row in 0..5 {
        let back = kw.decrypt(&id, &stored[row as usize], &ctx(row)).await.expect("decrypt");
        assert_eq!(back.as_bytes(), plaintext(row).as_bytes());
    }
    // Moved to another row: authentication fails, counted by reason.
    assert!(matches!(kw.decrypt(&id, &stored[0], &ctx(1)).await, Err(Error::Decrypt)));
    assert!(kw.decrypt(&id, b"not a value", &ctx(0)).await.is_err());
    assert_eq!(rec.counter(names::DECRYPTIONS_TOTAL, &[("keyring", k), ("version", "2")]), 5);
    assert_eq!(rec.counter(names::DECRYPT_FAILURES_TOTAL, &[("keyring", k), ("reason", "decrypt")]), 1);
    assert_eq!(rec.counter(names::DECRYPT_FAILURES_TOTAL, &[("keyring", k), ("reason", "format")]), 1);
    assert_eq!(rec.gauge(names::ACTIVE_VERSION, &[("keyring", k)]), Some(2.0));

    // The rotation: 250 values on v2, batches of 100, to v3.
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(table.clone());
    let policy = Policy { activation_delay: Duration::ZERO, ..Policy::for_purpose(id.purpose()) };
    let opts = RotateOptions { batch_size: BATCH, ..RotateOptions::default() };
    let report = rotator.rotate(&id, &policy, &opts).await.expect("rotate");
    assert_eq!((report.counts.processed, report.counts.rewritten, report.counts.failed), (ROWS, ROWS, 0));
    let src = [("keyring", k), ("source", "users.email")];
    assert_eq!(rec.counter(names::ROTATION_VALUES_REWRITTEN_TOTAL, &src), ROWS);
    assert_eq!(rec.counter(names::ROTATION_VALUES_SKIPPED_TOTAL, &src), 0);
    assert_eq!(rec.counter(names::ROTATION_VALUES_FAILED_TOTAL, &src), 0);
    let batches = ROWS.div_ceil(BATCH as u64) as usize;
    let durations = rec.histogram(names::ROTATION_BATCH_DURATION_SECONDS, &src);
    assert_eq!(durations.len(), batches, "one observation per batch");
    assert!(durations.iter().all(|d| *d >= 0.0 && *d < 60.0), "{durations:?}");
    assert_eq!(rec.counter(names::ENCRYPTIONS_TOTAL, &[("keyring", k), ("version", "3")]), ROWS);
    assert_eq!(rec.counter(names::ENCRYPTIONS_TOTAL, &[("keyring", k), ("version", "2")]), ROWS, "unchanged");
    assert_eq!(rec.counter(names::DECRYPTIONS_TOTAL, &[("keyring", k), ("version", "2")]), 5 + ROWS);
    assert_eq!(rec.gauge(names::CENSUS_VALUES, &[("keyring", k), ("version", "2")]), Some(0.0));
    assert_eq!(rec.gauge(names::CENSUS_VALUES, &[("keyring", k), ("version", "3")]), Some(ROWS as f64));
    assert_eq!(rec.gauge(names::ACTIVE_VERSION, &[("keyring", k)]), Some(3.0));
    let job = [("keyring", k), ("kind", "rotation"), ("outcome", "completed")];
    assert_eq!(rec.counter(names::ROTATION_JOBS_TOTAL, &job), 1);
    let op = |operation: &str, outcome: &str| {
        rec.counter(
            names::LIFECYCLE_OPERATIONS_TOTAL,
            &[("keyring", k), ("operation", operation), ("outcome", outcome)],
        )
    };
    assert_eq!((op("create_keyring", "ok"), op("import_version", "ok"), op("activate", "ok")), (1, 1, 1));
    assert_eq!(op("rotate", "ok"), 1);
    assert!(
        rec.counter(names::KEYRING_RELOADS_TOTAL, &[("keyring", k), ("reason", "first_load"), ("outcome", "ok")]) >= 1
    );

    // A refusal: v2 is inside its grace period.
    let refused = rotator.retire(&id, v2, &policy, None).await;
    assert!(matches!(refused, Err(Error::GracePeriodNotOver { .. })), "{refused:?}");
    assert_eq!(op("retire", "refused"), 1);

    // The spans: one job span, one batch span per batch inside it.
    let captured = captured_for(&id);
    let jobs: Vec<&Captured> = captured.iter().filter(|c| c.span && c.name == "keywheel.rotation.job").collect();
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    let job = jobs[0];
    let job_id = report.job_id.clone().expect("a job id");
    assert_eq!(job.field("job_id"), Some(job_id.as_str()));
    assert_eq!(job.field("kind"), Some("rotation"));
    assert_eq!((job.field("from"), job.field("to")), (Some("2"), Some("3")));
    assert_eq!(job.field("outcome"), Some("completed"));
    assert_eq!(job.field("rewritten"), Some(ROWS.to_string().as_str()));
    assert_eq!(job.field("resumed"), Some("false"));
    assert_eq!(
        job.parent.as_ref().map(|(name, f)| (name.as_str(), f.get("operation").map(String::as_str))),
        Some(("keywheel.lifecycle", Some("rotate")))
    );
    let batch_spans: Vec<&Captured> =
        captured.iter().filter(|c| c.span && c.name == "keywheel.rotation.batch").collect();
    assert_eq!(batch_spans.len(), batches, "{batch_spans:#?}");
    let mut rows = 0;
    let mut rewritten = 0;
    for b in &batch_spans {
        assert_eq!(b.parent.as_ref().map(|(name, _)| name.as_str()), Some("keywheel.rotation.job"));
        assert_eq!(b.field("job_id"), Some(job_id.as_str()));
        assert_eq!((b.field("source"), b.field("to")), (Some("users.email"), Some("3")));
        assert!(b.field("duration_ms").is_some_and(|d| d.parse::<u64>().is_ok()), "{b:?}");
        rows += b.field("rows").and_then(|r| r.parse::<u64>().ok()).expect("rows");
        rewritten += b.field("rewritten").and_then(|r| r.parse::<u64>().ok()).expect("rewritten");
    }
    assert_eq!((rows, rewritten), (ROWS, ROWS));
    let refusal =
        captured.iter().find(|c| !c.span && c.name == "lifecycle operation refused").expect("the refusal is an event");
    assert_eq!(refusal.field("error_kind"), Some("grace_period_not_over"));
    assert_eq!(refusal.field("operation"), Some("retire"));
    let lifecycle: Vec<&str> = captured
        .iter()
        .filter(|c| c.span && c.name == "keywheel.lifecycle")
        .filter_map(|c| c.field("operation"))
        .collect();
    for expected in ["create_keyring", "import_version", "activate", "rotate", "retire"] {
        assert!(lifecycle.contains(&expected), "no {expected} span in {lifecycle:?}");
    }

    // Security: nothing captured holds a secret, a plaintext, a ciphertext or a context value.
    let mut everything: String = lock(&CAPTURED).iter().map(|c| format!("{c:?}\n")).collect();
    everything.push_str(&rec.rendered());
    assert!(everything.contains(k), "the capture is not empty: {everything}");
    let mut needles: Vec<(String, String)> = Vec::new();
    for r in renderings(&MATERIAL).into_iter().chain(renderings(&master())) {
        needles.push(("key material".into(), r));
    }
    for row in 0..ROWS {
        needles.push(("plaintext".into(), plaintext(row)));
        needles.push(("row id".into(), row_id(row)));
    }
    for value in stored.iter().take(20).chain(table.values().iter().map(|v| &v.value).take(20)) {
        // The bytes after the header (nonce, ciphertext, tag).
        for r in renderings(&value[8..]) {
            needles.push(("ciphertext".into(), r));
        }
    }
    needles.push(("plaintext fragment".into(), "SECRET".into()));
    needles.push(("row id fragment".into(), "row-PII".into()));
    for (what, needle) in &needles {
        assert!(!everything.contains(needle.as_str()), "the capture holds a {what}: {needle}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_counts_no_encryption_and_failures_and_refusals_are_counted_by_kind() {
    let rec = recorder();
    let (kw, clock) = keywheel(&[7; 32]);
    let id = KeyringId::new("obs-dry-run", Purpose::Token).expect("id");
    let ring_label = id.to_string();
    let k = ring_label.as_str();
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let table = Arc::new(MemoryRecordSource::new("sessions.token"));
    for row in 0..10 {
        let value = kw.encrypt(&id, plaintext(row).as_bytes(), &ctx(row)).await.expect("encrypt");
        table.insert_row(row, id.clone(), ctx(row), value);
    }
    // A value that fails: bound to another row.
    let misplaced = kw.encrypt(&id, b"misplaced", &ctx(99)).await.expect("encrypt");
    table.insert_row(10, id.clone(), ctx(10), misplaced);
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(table.clone());
    let report = rotator.dry_run(&id, &RotateOptions::default()).await.expect("dry run");
    assert_eq!((report.counts.processed, report.counts.failed), (11, 1));
    // Only the application's eleven encryptions, under v1; the throwaway v2 has no series.
    assert_eq!(rec.counter(names::ENCRYPTIONS_TOTAL, &[("keyring", k), ("version", "1")]), 11);
    assert_eq!(rec.counter(names::ENCRYPTIONS_TOTAL, &[("keyring", k), ("version", "2")]), 0);

    // A real rotation counts the failure per source, and the job completes with failures.
    let policy = Policy { activation_delay: Duration::ZERO, ..Policy::for_purpose(id.purpose()) };
    let report = rotator.rotate(&id, &policy, &RotateOptions::default()).await.expect("rotate");
    assert_eq!((report.counts.rewritten, report.counts.failed), (10, 1));
    let src = [("keyring", k), ("source", "sessions.token")];
    assert_eq!(rec.counter(names::ROTATION_VALUES_REWRITTEN_TOTAL, &src), 10);
    assert!(rec.counter(names::ROTATION_VALUES_FAILED_TOTAL, &src) >= 1);
    let job = [("keyring", k), ("kind", "rotation"), ("outcome", "completed_with_failures")];
    assert_eq!(rec.counter(names::ROTATION_JOBS_TOTAL, &job), 1);
    // The dry run's throwaway version counted nothing: the rotation's ten alone.
    assert_eq!(rec.counter(names::ENCRYPTIONS_TOTAL, &[("keyring", k), ("version", "2")]), 10);

    // A rollback after its window is refused, and the event names the rule.
    clock.advance(Duration::from_secs(1));
    let closed = Policy { rollback_window: Duration::ZERO, ..policy };
    let refused = rotator.rollback(&id, &closed, None, false, &RotateOptions::default()).await;
    assert!(matches!(refused, Err(Error::RollbackWindowClosed { .. })), "{refused:?}");
    let outcome = [("keyring", k), ("operation", "rollback"), ("outcome", "refused")];
    assert_eq!(rec.counter(names::LIFECYCLE_OPERATIONS_TOTAL, &outcome), 1);
    let captured = captured_for(&id);
    let event = captured
        .iter()
        .find(|c| !c.span && c.name == "lifecycle operation refused" && c.field("operation") == Some("rollback"))
        .expect("the refused rollback is an event");
    assert_eq!(event.field("error_kind"), Some("rollback_window_closed"));
    let rendered = format!("{captured:?}");
    assert!(!rendered.contains("misplaced") && !rendered.contains("row-PII"), "a plaintext or row id was captured");
}

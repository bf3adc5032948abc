//! Time per durable change of the file backend, on the disk that holds the
//! cargo target directory (`CARGO_TARGET_TMPDIR`), not on a tmpfs.
//!
//! * `file_store/save_policy`: one document replaced atomically (temporary
//!   file, write, fsync, rename, fsync of the directory) under the lock.
//! * `file_store/update_keyring`: the compare-and-set of a 3-version keyring
//!   (lock, read and parse, `KeyringRecord::apply`, atomic replacement).
//! * `file_store/acquire_lease`: a lease re-entry (read, grant, replace).
//! * `file_store/load_keyring`: a read, for comparison (no fsync).
//! * `file_audit/record`: one audit event appended and fsynced (`fdatasync`).
//!
//! Run: `cargo bench -p keywheel-file --bench durable_change` (about 20 s).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keywheel_core::{
    Algorithm, AuditEvent, AuditKind, AuditSink, KeyStore, KeyVersion, KeyringChange, KeyringId, Keywheel, LocalKek,
    Outcome, Policy, Purpose, Timestamp,
};
use keywheel_file::{FileAuditSink, FileKeyStore};

fn config() -> Criterion {
    Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

fn durable_change(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a directory on the target disk");
    let store = Arc::new(FileKeyStore::open(tmp.path().join("store")).expect("store"));
    let audit_path = tmp.path().join("audit.jsonl");
    let id = KeyringId::new("bench", Purpose::Token).expect("id");
    rt.block_on(async {
        let kw = Keywheel::builder()
            .store(store.clone())
            .audit(Arc::new(FileAuditSink::open(tmp.path().join("setup.jsonl")).expect("audit")))
            .kek(Arc::new(LocalKek::from_bytes(&[3; 32])))
            .build()
            .expect("keywheel");
        kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
        for _ in 0..2 {
            let v = kw.add_version(&id).await.expect("add");
            kw.activate(&id, v).await.expect("activate");
        }
    });

    let mut group = c.benchmark_group("file_store");
    let mut policy = Policy::for_purpose(id.purpose());
    group.bench_function("save_policy", |b| {
        b.iter(|| {
            policy.priority = policy.priority.wrapping_add(1);
            rt.block_on(store.save_policy(&id, &policy)).expect("save");
        })
    });
    let mut generation = rt.block_on(store.load_keyring(&id)).expect("load").expect("keyring").generation;
    let change = [KeyringChange::MarkCompromised { version: KeyVersion::FIRST }];
    group.bench_function("update_keyring", |b| {
        b.iter(|| {
            generation = rt.block_on(store.update_keyring(&id, generation, &change)).expect("update").generation;
        })
    });
    let ttl = Duration::from_secs(60);
    group.bench_function("acquire_lease", |b| {
        b.iter(|| rt.block_on(store.acquire_lease(&id, "bench", ttl, Timestamp::EPOCH)).expect("lease"))
    });
    group.bench_function("load_keyring", |b| b.iter(|| black_box(rt.block_on(store.load_keyring(&id)).expect("load"))));
    group.finish();

    let sink = FileAuditSink::open(&audit_path).expect("audit");
    let event = AuditEvent {
        at: Timestamp::from_millis(1_750_000_000_000),
        actor: "bench".into(),
        keyring: Some(id.clone()),
        kind: AuditKind::PolicyChanged { summary: "interval 90 d → 30 d".into() },
        reason: Some("benchmark".into()),
        correlation_id: "0123456789abcdef0123456789abcdef".into(),
        outcome: Outcome::Success,
    };
    let key = keywheel_core::IntegrityKey::derive(&[7; 32], b"bench");
    let mut group = c.benchmark_group("file_audit");
    group.bench_function("record", |b| b.iter(|| rt.block_on(sink.record(&event, &key)).expect("record")));
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = durable_change
}
criterion_main!(benches);

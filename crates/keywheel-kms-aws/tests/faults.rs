//! The KMS server stopped while an application reads and writes through a
//! loaded snapshot: no error; refresh reports the typed retryable error;
//! the server restarted, refresh recovers.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keywheel_conformance::{block_on, services};
use keywheel_core::{Algorithm, Context, Error, KeyEncryptionKey, KeyringId, Keywheel, Purpose};
use keywheel_memory::{MemoryAuditSink, MemoryKeyStore};

/// Reads and writes through `kw` until `stop`: values written are read
/// back; returns (operations, errors).
async fn application(kw: Keywheel, id: KeyringId, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (ops, errors) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let ctx = Context::field("users", "email", &n.to_string());
        let plain = format!("user{n}@example.com");
        match kw.encrypt(&id, plain.as_bytes(), &ctx).await {
            Ok(value) => match kw.decrypt(&id, &value, &ctx).await {
                Ok(back) if back[..] == *plain.as_bytes() => {}
                other => {
                    eprintln!("read failed: {other:?}");
                    errors.fetch_add(1, Ordering::SeqCst);
                }
            },
            Err(e) => {
                eprintln!("write failed: {e}");
                errors.fetch_add(1, Ordering::SeqCst);
            }
        }
        ops.fetch_add(2, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ops.load(Ordering::SeqCst), errors.load(Ordering::SeqCst))
}

#[test]
fn a_stopped_kms_server_costs_a_loaded_snapshot_nothing_and_refresh_recovers() {
    // Its own server: this test stops it.
    let Some(server) = services::MotoServer::start() else { return };
    block_on(async {
        let keys = support::base(server.endpoint()).create_keys("keywheel fault test").await.expect("KMS keys");
        // One attempt of at most 2 s per call, so a stopped server shows fast.
        let config = keys.max_attempts(1).timeouts(Duration::from_millis(500), Duration::from_secs(2));
        let kek = Arc::new(keywheel_kms_aws::AwsKmsKek::connect(config).await.expect("connect"));
        let kw = Keywheel::builder()
            .store(Arc::new(MemoryKeyStore::new()))
            .audit(Arc::new(MemoryAuditSink::new()))
            .kek(Arc::clone(&kek) as Arc<dyn KeyEncryptionKey>)
            .refresh_interval(Duration::from_millis(300))
            .kek_outage_grace(Duration::from_secs(120))
            .build()
            .expect("keywheel");
        let id = KeyringId::new("acme", Purpose::Database).expect("id");
        kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
        let v2 = kw.add_version(&id).await.expect("v2");
        kw.activate(&id, v2).await.expect("activate");
        let ctx = Context::field("users", "email", "0");
        let old = kw.encrypt(&id, b"old@example.com", &ctx).await.expect("encrypt");

        let stop = Arc::new(AtomicBool::new(false));
        let app = tokio::spawn(application(kw.clone(), id.clone(), Arc::clone(&stop)));
        tokio::time::sleep(Duration::from_millis(500)).await;

        server.stop();
        let stopped_at = Instant::now();
        // Several refresh intervals pass with the server stopped.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let err = kw.refresh(&id).await.expect_err("the KMS server is stopped");
        assert!(matches!(err, Error::KekUnavailable { .. }) && err.is_retryable(), "{err:?}");
        assert!(kw.outage_serves() > 0, "reloads failed and the loaded snapshot served");
        assert_eq!(&kw.decrypt(&id, &old, &ctx).await.expect("old value")[..], b"old@example.com");
        eprintln!("server stopped for {:?}", stopped_at.elapsed());

        server.resume();
        // Refresh recovers (the first call after the restart may still meet
        // a connection the stopped server left hanging: retry with backoff).
        let mut wait = Duration::from_millis(100);
        let recovered = loop {
            match kw.refresh(&id).await {
                Ok(ring) => break ring,
                Err(e) if e.is_retryable() && wait < Duration::from_secs(10) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => panic!("refresh did not recover: {e}"),
            }
        };
        assert_eq!(recovered.active_version(), Some(v2));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let serves = kw.outage_serves();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(kw.outage_serves(), serves, "no more outage serving once recovered");

        stop.store(true, Ordering::SeqCst);
        let (ops, errors) = app.await.expect("application task");
        assert!(ops > 100, "the application kept working: {ops} operations");
        assert_eq!(errors, 0, "0 errors in {ops} reads and writes");
        assert_eq!(&kw.decrypt(&id, &old, &ctx).await.expect("old value")[..], b"old@example.com");
    });
}

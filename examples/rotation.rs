//! The rotation runbook on the memory backend with 100,000 stored values:
//! census, dry run, a rotation with progress, rollback, a refused and then a
//! successful retirement, an emergency rotation, and the census after.
//!
//! Run with `cargo run --release --example rotation`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keywheel::memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
use keywheel::{
    Algorithm, Census, Context, KeyVersion, KeyringId, Keywheel, LocalKek, ManualClock, Policy, Progress, Purpose,
    RotateOptions, Rotator, SystemClock,
};

const ROWS: u64 = 100_000;

fn print_census(label: &str, census: &Census, id: &KeyringId) {
    let per_version: Vec<String> =
        census.counts.get(id).map(|m| m.iter().map(|(v, n)| format!("{v}: {n}")).collect()).unwrap_or_default();
    println!("census {label}: {}", per_version.join(", "));
}

fn progress_printer() -> RotateOptions {
    let last_decile = Arc::new(AtomicU64::new(0));
    RotateOptions {
        batch_size: 2_000,
        progress: Some(Arc::new(move |p: &Progress| {
            let Some(total) = p.total.filter(|t| *t > 0) else { return };
            let decile = p.processed * 10 / total;
            if decile > last_decile.swap(decile, Ordering::SeqCst) {
                println!(
                    "  {:>3}%  {:>7}/{total}  {:>9.0} values/s  eta {:.1?}",
                    decile * 10,
                    p.processed,
                    p.rate_per_sec,
                    p.eta.unwrap_or_default()
                );
            }
        })),
        ..RotateOptions::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An injected clock lets the example step over grace periods; in production
    // leave the default system clock.
    let clock = ManualClock::new(keywheel::Clock::now(&SystemClock));
    let audit = Arc::new(MemoryAuditSink::new());
    let kw = Keywheel::builder()
        .store(Arc::new(MemoryKeyStore::new()))
        .kek(Arc::new(LocalKek::from_bytes(&[42; 32])))
        .audit(audit.clone())
        .clock(Arc::new(clock.clone()))
        .actor("rotation-example")
        .build()?;
    let id = KeyringId::new("acme", Purpose::Database)?;
    let ring = kw.create_keyring(&id, Algorithm::Aes256Gcm).await?;

    let table = Arc::new(MemoryRecordSource::new("customers.ssn"));
    for row in 0..ROWS {
        let ctx = Context::field("customers", "ssn", &row.to_string());
        table.insert_row(row, id.clone(), ctx.clone(), ring.encrypt(format!("{row:09}").as_bytes(), &ctx)?);
    }
    let rotator = Rotator::new(kw.clone())?.holder("example").source(table.clone());
    let policy = Policy::for_purpose(id.purpose());
    println!(
        "keyring {id}: policy interval {} d, grace {} d, rollback window {} h",
        policy.interval.as_secs() / 86_400,
        policy.grace_period.as_secs() / 86_400,
        policy.rollback_window.as_secs() / 3_600
    );
    print_census("before", &rotator.census(Some(&id)).await?, &id);

    // 1. Dry run: everything but the writes.
    let dry = rotator.dry_run(&id, &RotateOptions::default()).await?;
    println!(
        "dry run: would rewrite {} values to {:?}, {} failures, took {:.2?}",
        dry.counts.rewritten,
        dry.to.map(KeyVersion::get),
        dry.counts.failed,
        dry.duration
    );

    // 2. The rotation, with progress.
    println!("rotating {id}:");
    let report = rotator.rotate(&id, &policy, &progress_printer()).await?;
    println!(
        "rotation {:?}: v{} -> v{}, processed {}, rewritten {}, skipped {}, failed {}, {:.2?} ({:.0} values/s)",
        report.phase,
        report.from.map_or(0, KeyVersion::get),
        report.to.map_or(0, KeyVersion::get),
        report.counts.processed,
        report.counts.rewritten,
        report.counts.skipped,
        report.counts.failed,
        report.duration,
        report.counts.processed as f64 / report.duration.as_secs_f64().max(1e-9)
    );
    print_census("after rotation", &rotator.census(Some(&id)).await?, &id);

    // 3. Something is wrong with v2: roll back within the window. Nothing
    //    becomes unreadable: v2 is Deprecated and still decrypts.
    clock.advance(Duration::from_secs(20 * 60));
    let back =
        rotator.rollback(&id, &policy, Some("reporting job cannot read v2"), false, &RotateOptions::default()).await?;
    println!("rollback: v{} is active again, v{} deprecated", back.to.get(), back.from.get());
    let sample = table.get(&MemoryRecordSource::row_cursor(7)).ok_or("row 7")?;
    let plain = kw.decrypt(&id, &sample, &Context::field("customers", "ssn", "7")).await?;
    println!("row 7 (still on v2) decrypts to {:?}", plain.as_str()?);

    // 4. Retiring v2 is refused while values use it, even after its grace period.
    clock.advance(policy.grace_period);
    let v2 = KeyVersion::new(2)?;
    match rotator.retire(&id, v2, &policy, None).await {
        Err(e) => println!("retire v2 refused: {e}"),
        Ok(_) => return Err("retirement should have been refused".into()),
    }

    // 5. Rotate again (v3): every value moves off v2, so v2 may go now.
    let report = rotator.rotate(&id, &policy, &RotateOptions::default()).await?;
    println!(
        "rotation {:?} to v{}: rewritten {}",
        report.phase,
        report.to.map_or(0, KeyVersion::get),
        report.counts.rewritten
    );
    let record = rotator.retire(&id, v2, &policy, None).await?;
    let until = record.version(v2).and_then(|v| v.destroy_after).ok_or("a quarantine end")?;
    println!("retired v2: no value uses it and its grace period is over; disabled, destroyed after {until}");
    // v1 was deprecated just now (by the rotation to v3): its grace period runs.
    match rotator.retire(&id, KeyVersion::FIRST, &policy, None).await {
        Err(e) => println!("retire v1 refused: {e}"),
        Ok(_) => return Err("v1 was deprecated too recently to retire".into()),
    }
    clock.advance(policy.grace_period);
    rotator.retire(&id, KeyVersion::FIRST, &policy, None).await?;
    println!("retired v1 after its grace period (census zero): disabled for the quarantine");
    // Still needed after all (an export reads it): re-enabled inside the quarantine.
    kw.enable(&id, KeyVersion::FIRST, Some("the nightly export still reads v1")).await?;
    println!("re-enabled v1: it decrypts again until it is retired once more");

    // 6. v3 leaked: emergency rotation, no delay, v3 retired as soon as unused.
    let report = rotator.emergency(&id, "v3 found in a debug log", &RotateOptions::default()).await?;
    let record = kw.record(&id).await?;
    let v3 = record.version(KeyVersion::new(3)?).ok_or("v3")?;
    println!(
        "emergency rotation {:?} to v{}: rewritten {}; v3 compromised={} state={}",
        report.phase,
        report.to.map_or(0, KeyVersion::get),
        report.counts.rewritten,
        v3.compromised,
        v3.state
    );
    print_census("after emergency", &rotator.census(Some(&id)).await?, &id);
    let verify = rotator.verify(&id).await?;
    println!("verify: ok={} (all {} values on the active version)", verify.ok, verify.census.values().sum::<u64>());
    println!("audit trail: {} events, chain verifies", audit.verify()?);
    Ok(())
}

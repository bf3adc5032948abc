//! A simulated year of scheduled rotations on an injected clock: five keyrings
//! with the five purpose presets, a nightly maintenance window for the database
//! keys, rotations and retirements printed as they happen, and the final status
//! report as JSON.
//!
//! Run with `cargo run --example scheduler`.

use std::sync::Arc;
use std::time::Duration;

use keywheel::memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
use keywheel::{
    Algorithm, Context, Cursor, KeyringId, Keywheel, LocalKek, MaintenanceWindow, ManualClock, Policy, Purpose,
    RotateOptions, Rotator, Scheduler, SchedulerConfig, Timestamp,
};

const HOUR: Duration = Duration::from_secs(60 * 60);
/// 2026-12-31T20:30:00Z, so that the 6-hourly ticks fall at 02:30, 08:30, 14:30
/// and 20:30 — one of them inside the database keys' 02:00–04:00 window.
const START: i64 = 1_798_761_600_000 - 12_600_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let clock = ManualClock::new(Timestamp::from_millis(START));
    let audit = Arc::new(MemoryAuditSink::new());
    let kw = Keywheel::builder()
        .store(Arc::new(MemoryKeyStore::new()))
        .kek(Arc::new(LocalKek::from_bytes(&[5; 32])))
        .audit(audit.clone())
        .clock(Arc::new(clock.clone()))
        .refresh_interval(Duration::ZERO)
        .actor("scheduler-example")
        .build()?;

    let table = Arc::new(MemoryRecordSource::new("app.secrets"));
    let presets = [
        (Purpose::Token, Algorithm::Aes256Gcm, 500),
        (Purpose::Database, Algorithm::Aes256Gcm, 500),
        (Purpose::File, Algorithm::XChaCha20Poly1305, 200),
        (Purpose::Session, Algorithm::ChaCha20Poly1305, 300),
        // Signatures are not stored, so there is nothing to re-encrypt.
        (Purpose::ApiSignature, Algorithm::HmacSha256, 0),
    ];
    for (purpose, algorithm, values) in presets {
        let id = KeyringId::new("acme", purpose)?;
        let ring = kw.create_keyring(&id, algorithm).await?;
        let mut policy = Policy::for_purpose(id.purpose());
        if id.purpose() == &Purpose::Database {
            // Scheduled database rotations only run 02:00–04:00 UTC.
            policy.maintenance_window = Some(MaintenanceWindow { start: 2 * HOUR, duration: 2 * HOUR });
            policy.priority = 10;
        }
        kw.set_policy(&id, &policy).await?;
        for row in 0..values {
            let ctx = Context::field(id.purpose().as_str(), "secret", &row.to_string());
            table.insert(Cursor(format!("{id}/{row:06}")), id.clone(), ctx.clone(), ring.encrypt(b"s3cret", &ctx)?);
        }
        println!(
            "{:<20} {:<18} interval {:>3} d, grace {:>3} d, {values} values",
            id.to_string(),
            algorithm.to_string(),
            policy.interval.as_secs() / 86_400,
            policy.grace_period.as_secs() / 86_400
        );
    }

    let rotator = Rotator::new(kw.clone())?.holder("example-instance").source(table.clone());
    let scheduler = Scheduler::new(
        rotator,
        SchedulerConfig {
            max_concurrent: 2,
            rotate: RotateOptions { batch_size: 250, ..RotateOptions::default() },
            ..SchedulerConfig::default()
        },
    );

    // One tick every 6 hours for a year.
    println!("\nsimulating 2027 (a tick every 6 h):");
    for _ in 0..365 * 4 {
        clock.advance(6 * HOUR);
        let tick = scheduler.tick().await?;
        for (due, rotation) in tick.due.iter().zip(&tick.rotations) {
            println!(
                "{}  rotated {:<20} v{} -> v{}  ({:?}, {} values re-encrypted)",
                &tick.at.to_string()[..16],
                rotation.keyring.to_string(),
                rotation.from.map_or(0, |v| v.get()),
                rotation.to.map_or(0, |v| v.get()),
                due.reason,
                rotation.counts.rewritten
            );
        }
        for (id, version) in &tick.retired {
            println!("{}  retired {:<20} {version}", &tick.at.to_string()[..16], id.to_string());
        }
        if let Some((id, error)) = tick.failed.first() {
            return Err(format!("rotation of {id} failed: {error}").into());
        }
    }

    let status = scheduler.status(true).await?;
    println!("\nstatus report:\n{}", serde_json::to_string_pretty(&status)?);
    println!("audit trail: {} events, chain verifies", audit.verify()?);
    Ok(())
}

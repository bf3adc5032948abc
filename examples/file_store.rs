//! The file backend end to end: a key store in a directory, values encrypted,
//! a rotation, then the store reopened (as another process would), the master
//! key checked, every value decrypted, the audit log verified, the on-disk
//! layout listed, and the time per durable change measured.
//!
//! Run with `cargo run --example file_store --features file [-- <directory>]`.
//! Without a directory it works in a fresh one under the system temporary
//! directory and removes it at the end.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keywheel::file::{FileAuditSink, FileKeyStore, verify_log};
use keywheel::{
    Algorithm, ChainVerifier, Context, Error, KeyEncryptionKey, KeyVersion, KeyringId, Keywheel, LocalKek, Policy,
    Purpose, RotateOptions, Rotator, version_of,
};

fn keywheel(store: FileKeyStore, audit: &Path, kek: Arc<LocalKek>) -> keywheel::Result<Keywheel> {
    Keywheel::builder()
        .store(Arc::new(store))
        .audit(Arc::new(FileAuditSink::open(audit)?))
        .kek(kek)
        .actor("file-store-example")
        .build()
}

/// Every file under `dir`, with its mode, sorted.
fn layout(dir: &Path, base: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = entry.metadata()?;
        let rel = path.strip_prefix(base).unwrap_or(&path).display().to_string();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            out.push(format!("{mode:04o}  {rel}/"));
            layout(&path, base, out)?;
        } else {
            out.push(format!("{mode:04o}  {rel}  ({} bytes)", meta.len()));
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (dir, temporary) = match std::env::args_os().nth(1) {
        Some(dir) => (PathBuf::from(dir), false),
        None => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
            (std::env::temp_dir().join(format!("keywheel-file-example-{}-{nanos}", std::process::id())), true)
        }
    };
    let store_dir = dir.join("keys");
    let audit = dir.join("audit.jsonl");
    // A fixed demo master key. In production: LocalKek::from_env("KEYWHEEL_MASTER_KEY")
    // or from_file, or a KMS-backed KeyEncryptionKey.
    let kek = Arc::new(LocalKek::from_bytes(&[0x42; 32]));
    let id = KeyringId::new("acme", Purpose::Database)?;
    let ctx = |row: usize| Context::field("customers", "email", &row.to_string());

    // 1. First process: a store in a directory, values encrypted, a rotation.
    let values = {
        let store = FileKeyStore::open(&store_dir)?;
        let kw = keywheel(store, &audit, kek.clone())?;
        if kw.store().load_keyring(&id).await?.is_none() {
            kw.create_keyring(&id, Algorithm::Aes256Gcm).await?;
        }
        let mut values = Vec::new();
        for row in 0..3 {
            values.push(kw.encrypt_text(&id, format!("customer{row}@example.com").as_bytes(), &ctx(row)).await?);
        }
        let policy = Policy { activation_delay: Duration::ZERO, ..Policy::for_purpose(id.purpose()) };
        let report = Rotator::new(kw.clone())?
            .holder("file-store-example")
            .rotate(&id, &policy, &RotateOptions::default())
            .await?;
        let name = |v: Option<KeyVersion>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        println!("rotated {id}: {} -> {} ({:?})", name(report.from), name(report.to), report.phase);
        values.push(kw.encrypt_text(&id, b"customer3@example.com", &ctx(3)).await?);
        values
    };

    // 2. Reopen as a new process: only an existing store, and check the master
    //    key before anything can be written under a wrong one.
    let store = FileKeyStore::options().create(false).open(&store_dir)?;
    let summary = store.check()?;
    println!(
        "reopened {}: {} keyring(s), {} job(s), {} lease file(s), {} policy file(s)",
        store_dir.display(),
        summary.keyrings,
        summary.jobs,
        summary.leases,
        summary.policies
    );
    match store.check_kek(&LocalKek::from_bytes(&[0; 32])).await {
        Err(Error::WrongMasterKey { kek_id, expected_key_check, .. }) => {
            println!(
                "a wrong master key is refused up front (KEK {kek_id}; the store needs key check value {expected_key_check})"
            )
        }
        other => return Err(format!("a wrong master key must be refused, got {other:?}").into()),
    }
    println!("master key checked against {} stored key version(s)", store.check_kek(kek.as_ref()).await?);
    // The integrity keys that authenticate the audit entries (derived from the master key).
    let keys = kek.integrity_keys().await?;
    let kw = keywheel(store, &audit, kek)?;
    for (row, value) in values.iter().enumerate() {
        let plain = kw.decrypt(&id, value.as_bytes(), &ctx(row)).await?;
        println!("  row {row} ({}): {}", version_of(value.as_bytes())?, plain.as_str()?);
    }

    // 3. The audit log: every lifecycle step, hash-chained and MACed under a
    //    key derived from the master key, verified by line.
    let report = verify_log(&audit, &ChainVerifier::new().keys(&keys))?;
    println!("{report}");
    if !report.is_intact() {
        return Err("the audit log does not verify".into());
    }

    // 4. What is on disk.
    let mut files = Vec::new();
    layout(&dir, &dir, &mut files)?;
    println!("on disk under {}:", dir.display());
    for line in &files {
        println!("  {line}");
    }

    // 5. Time per durable change (write, fsync, rename, fsync of the directory).
    const CHANGES: u32 = 50;
    let mut policy = Policy::for_purpose(id.purpose());
    let started = Instant::now();
    for n in 0..CHANGES {
        policy.priority = i32::try_from(n)?;
        kw.store().save_policy(&id, &policy).await?;
    }
    println!("{CHANGES} durable changes: {:.2?} per change", started.elapsed() / CHANGES);

    if temporary {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

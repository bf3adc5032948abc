//! Quickstart: encrypt fields under a versioned key, rotate the key, read old
//! and new values, and inspect stored values without a key.
//!
//! Run with `cargo run --example quickstart`.

use std::sync::Arc;

use keywheel::memory::{MemoryAuditSink, MemoryKeyStore};
use keywheel::{Algorithm, Context, Form, KeyringId, Keywheel, LocalKek, Purpose, parse};
use secrecy::ExposeSecret;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In production the master key comes from a secret manager, e.g.
    // `LocalKek::from_env("KEYWHEEL_MASTER_KEY")`. Here we make a throwaway one.
    let master = LocalKek::generate_master_key()?;
    let kek = LocalKek::from_base64(master.expose_secret())?;

    let audit = Arc::new(MemoryAuditSink::new());
    let kw = Keywheel::builder()
        .store(Arc::new(MemoryKeyStore::new()))
        .kek(Arc::new(kek))
        .audit(audit.clone())
        .actor("quickstart")
        .build()?;

    // One keyring per (tenant, purpose); version 1 is generated and Active.
    let tokens = KeyringId::new("acme", Purpose::Token)?;
    kw.create_keyring(&tokens, Algorithm::Aes256Gcm).await?;

    // Encrypt a few fields, each bound to its table / column / row.
    let rows = [("1", "ya29.alice-token"), ("2", "ya29.bob-token"), ("3", "ya29.carol-token")];
    let mut stored = Vec::new();
    for (row, token) in rows {
        let ctx = Context::field("users", "oauth_token", row);
        // Binary form for bytea columns; row 3 uses the text form for a text column.
        let value = if row == "3" {
            kw.encrypt_text(&tokens, token.as_bytes(), &ctx).await?.into_bytes()
        } else {
            kw.encrypt(&tokens, token.as_bytes(), &ctx).await?
        };
        stored.push((row, ctx, value));
    }

    // Rotate: add version 2 (Pending, already decrypts), then activate it
    // (v2 Active and v1 Deprecated, in one atomic update).
    let v2 = kw.add_version(&tokens).await?;
    kw.activate(&tokens, v2).await?;
    let ctx4 = Context::field("users", "oauth_token", "4");
    stored.push(("4", ctx4.clone(), kw.encrypt(&tokens, b"ya29.dave-token", &ctx4).await?));

    let ring = kw.keyring(&tokens).await?;
    println!("keyring {} — active version {:?}", ring.id(), ring.active_version().map(|v| v.get()));
    println!("row  form    algorithm    version  needs_rotation  bytes  plaintext");
    for (row, ctx, value) in &stored {
        let info = parse(value)?;
        let plaintext = kw.decrypt(&tokens, value, ctx).await?;
        println!(
            "{:<4} {:<7} {:<12} {:<8} {:<15} {:<6} {}",
            row,
            format!("{:?}", info.form),
            info.algorithm.to_string(),
            info.version.to_string(),
            ring.needs_rotation(value)?,
            value.len(),
            String::from_utf8_lossy(&plaintext),
        );
        // The header is the wire format of the manual (keywheel::manual): magic "kw", format 1, algorithm id, version.
        let binary = match info.form {
            Form::Binary => value.clone(),
            Form::Text => {
                let text = std::str::from_utf8(value)?;
                assert!(text.starts_with(&format!("kw:v{}:", info.version.get())));
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(&text[text.rfind(':').map_or(0, |i| i + 1)..])?
            }
        };
        assert_eq!(&binary[..2], b"kw");
        assert_eq!(binary[2], 0x01);
        assert_eq!(binary[3], Algorithm::Aes256Gcm.id());
        assert_eq!(u32::from_be_bytes([binary[4], binary[5], binary[6], binary[7]]), info.version.get());
        assert_eq!(ring.needs_rotation(value)?, info.version != v2);
    }

    // A value moved to another row does not decrypt.
    let (_, _, alice) = &stored[0];
    let moved = kw.decrypt(&tokens, alice, &Context::field("users", "oauth_token", "2")).await;
    println!("alice's token pasted into row 2: {}", moved.expect_err("bound to row 1"));

    // Re-encrypting an old value moves it to the Active version, keeping its form.
    let (_, ctx3, carol) = &stored[2];
    let fresh = ring.reencrypt(carol, ctx3)?;
    println!("row 3 re-encrypted: {}…", String::from_utf8_lossy(&fresh[..12]));
    assert!(!ring.needs_rotation(&fresh)?);

    let entries = audit.verify()?;
    println!("audit trail: {entries} hash-chained events, chain verifies");

    // Shutting down: write this process's encryption counts to the store, so
    // the usage-limit policy sees them (see the manual, "Usage limits").
    kw.flush_all_usage().await?;
    let used = kw.record(&tokens).await?.version(v2).map_or(0, |v| v.encryptions);
    println!("encryptions under {v2}: {used}, all recorded");
    Ok(())
}

//! Keyring load time with each KEK provider: a keyring of 1, 10 and 100
//! versions loaded (`Keywheel::refresh`) with the local KEK, AWS KMS (a moto
//! server on 127.0.0.1) and PKCS#11 (a SoftHSM2 token); prints the unwrap
//! calls per load and the median of 5 loads as a Markdown table (the
//! README's table).
//!
//! ```text
//! cargo run --release --all-features --example kek_load_times
//! ```
//!
//! Starts its own moto server unless `KEYWHEEL_TEST_KMS_ENDPOINT` names one,
//! and initialises a SoftHSM2 token unless `KEYWHEEL_TEST_PKCS11_*` name one;
//! a provider whose service is missing is reported as skipped (an error when
//! `CI=true`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keywheel::aws_kms::{AwsKmsConfig, AwsKmsKek};
use keywheel::memory::{MemoryAuditSink, MemoryKeyStore};
use keywheel::pkcs11::{Pkcs11Config, Pkcs11Kek};
use keywheel::{KeyEncryptionKey, Keywheel, LocalKek};
use keywheel_conformance::kek::{CountingKek, keyring_with_versions};
use keywheel_conformance::services;

const LOADS: usize = 5;

async fn measure(name: &str, kek: Arc<dyn KeyEncryptionKey>) -> Result<(), keywheel::Error> {
    let counting = Arc::new(CountingKek::new(kek));
    let kw = Keywheel::builder()
        .store(Arc::new(MemoryKeyStore::new()))
        .audit(Arc::new(MemoryAuditSink::new()))
        .kek(Arc::clone(&counting) as Arc<dyn KeyEncryptionKey>)
        .build()?;
    for versions in [1u32, 10, 100] {
        let id = keyring_with_versions(&kw, &format!("load-{versions}"), versions).await;
        let before = counting.unwraps();
        let mut times: Vec<Duration> = Vec::with_capacity(LOADS);
        for _ in 0..LOADS {
            let start = Instant::now();
            kw.refresh(&id).await?;
            times.push(start.elapsed());
        }
        times.sort();
        let calls = (counting.unwraps() - before) / LOADS as u64;
        let median = times[LOADS / 2].as_secs_f64() * 1000.0;
        println!("| {name} | {versions} | {calls} | {median:.2} |");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), keywheel::Error> {
    println!("| KEK | versions | unwrap calls per load | load time, median of {LOADS} (ms) |");
    println!("|---|---:|---:|---:|");
    measure("local", Arc::new(LocalKek::from_bytes(&[7; 32]))).await?;

    match services::kms_endpoint() {
        Some(endpoint) => {
            let base = AwsKmsConfig::new("", "")
                .endpoint(endpoint)
                .region("us-east-1")
                .static_credentials("testing", zeroize::Zeroizing::new("testing".to_owned()));
            let kek = AwsKmsKek::connect(base.create_keys("keywheel load times").await?).await?;
            measure("AWS KMS (moto, 127.0.0.1)", Arc::new(kek)).await?;
        }
        None => println!("| AWS KMS | skipped: no moto server | | |"),
    }

    match services::softhsm_token() {
        Some(token) => {
            let config = Pkcs11Config::new(&token.module, &token.label, services::unique_label("load-times"))
                .pin(secrecy::SecretString::from(token.pin.clone()));
            Pkcs11Kek::generate_key(&config)?;
            measure("PKCS#11 (SoftHSM2)", Arc::new(Pkcs11Kek::open(config).await?)).await?;
        }
        None => println!("| PKCS#11 | skipped: no SoftHSM2 | | |"),
    }
    Ok(())
}

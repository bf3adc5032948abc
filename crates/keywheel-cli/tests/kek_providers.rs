//! KEKs in a KMS and an HSM through the real `keywheel` binary: a KEK
//! rotation local → AWS KMS (a moto server) → PKCS#11 (a SoftHSM2 token) on a
//! populated Postgres store, under live applications that follow the
//! manual's zero-downtime procedure (stage the new KEK, rotate, restart with
//! it as current, drop the old one): not one operation fails, and every value
//! written still decrypts under the HSM key alone.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
#[path = "support/postgres.rs"]
mod pg;
mod support;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keywheel_conformance::services::{self, SoftHsmToken};
use keywheel_core::{Context, KekRing, KeyEncryptionKey, KeyringId, Keywheel, LocalKek};
use keywheel_kms_aws::{AwsKmsConfig, AwsKmsKek};
use keywheel_pkcs11::{Pkcs11Config, Pkcs11Kek};
use keywheel_postgres::{PgAuditSink, PgKeyStore, PgPool, PgSchema};
use serde_json::Value;
use support::{Cli, Output};

const KEYRINGS: [&str; 3] = ["acme/token", "globex/token", "initech/database"];
const MIN_OPS: u64 = 40;
const PIN_VAR: &str = "KEYWHEEL_TEST_HSM_PIN";

/// What the live applications share: every value written (keyring, row,
/// value) and their error counts.
#[derive(Default)]
struct Written {
    values: Mutex<Vec<(KeyringId, String, Vec<u8>)>>,
}

/// One application instance: a task encrypting, decrypting (its own values
/// and everyone's) and reloading its keyrings until stopped.
struct App {
    name: &'static str,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

fn plain(row: &str) -> Vec<u8> {
    format!("secret of {row}").into_bytes()
}

impl App {
    fn start(name: &'static str, kw: Keywheel, written: Arc<Written>) -> App {
        let (stop, ok, errors) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::default());
        let (s, o, e): (_, _, Arc<Mutex<Vec<String>>>) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&errors));
        let task = tokio::spawn(async move {
            let ids: Vec<KeyringId> = KEYRINGS.iter().map(|k| k.parse().expect("id")).collect();
            let mut i = 0usize;
            let fail = |what: String| e.lock().expect("errors").push(what);
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let id = &ids[i % ids.len()];
                let row = format!("{name}-{i}");
                let ctx = Context::field("users", "secret", &row);
                match kw.encrypt(id, &plain(&row), &ctx).await {
                    Ok(value) => match kw.decrypt(id, &value, &ctx).await {
                        Ok(p) if p[..] == plain(&row)[..] => {
                            o.fetch_add(1, Ordering::SeqCst);
                            written.values.lock().expect("values").push((id.clone(), row, value));
                        }
                        other => fail(format!("{name}: read own {row}: {:?}", other.map(|p| p.len()))),
                    },
                    Err(err) => fail(format!("{name}: write {row}: {err}")),
                }
                // A value written earlier, by this instance or another.
                let earlier = {
                    let values = written.values.lock().expect("values");
                    values.get((i * 7919) % values.len().max(1)).cloned()
                };
                if let Some((id, row, value)) = earlier {
                    let ctx = Context::field("users", "secret", &row);
                    match kw.decrypt(&id, &value, &ctx).await {
                        Ok(p) if p[..] == plain(&row)[..] => {
                            o.fetch_add(1, Ordering::SeqCst);
                        }
                        other => fail(format!("{name}: read {row}: {:?}", other.map(|p| p.len()))),
                    }
                }
                if i.is_multiple_of(5)
                    && let Err(err) = kw.refresh(id).await
                {
                    fail(format!("{name}: reload {id}: {err}"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        App { name, stop, ok, errors, task }
    }

    /// Wait for `more` successful operations, failing on the first error.
    async fn progress(&self, more: u64, phase: &str) {
        let target = self.ok.load(Ordering::SeqCst) + more;
        let start = Instant::now();
        while self.ok.load(Ordering::SeqCst) < target {
            self.assert_no_errors(phase);
            assert!(!self.task.is_finished(), "{phase}: {} stopped", self.name);
            assert!(start.elapsed() < Duration::from_secs(120), "{phase}: {} made no progress", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.assert_no_errors(phase);
    }

    fn assert_no_errors(&self, phase: &str) {
        let errors = self.errors.lock().expect("errors");
        assert!(
            errors.is_empty(),
            "{phase}: {} saw {} errors: {:?}",
            self.name,
            errors.len(),
            &errors[..errors.len().min(5)]
        );
    }

    async fn stop(mut self, phase: &str) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        (&mut self.task).await.expect("application task");
        self.assert_no_errors(phase);
        self.ok.load(Ordering::SeqCst)
    }
}

fn app_keywheel(pool: &PgPool, kek: Arc<dyn KeyEncryptionKey>, name: &str) -> Keywheel {
    Keywheel::builder()
        .store(Arc::new(PgKeyStore::new(pool.clone(), PgSchema::default())))
        .audit(Arc::new(PgAuditSink::new(pool.clone(), PgSchema::default())))
        .kek(kek)
        .actor(format!("app:{name}"))
        .refresh_interval(Duration::from_millis(300))
        .reload_cooldown(Duration::ZERO)
        .build()
        .expect("keywheel")
}

fn ring(primary: Arc<dyn KeyEncryptionKey>, staged: Arc<dyn KeyEncryptionKey>) -> Arc<dyn KeyEncryptionKey> {
    Arc::new(KekRing::new(primary, vec![staged]))
}

/// Run the CLI on a blocking thread (the applications keep running), with
/// moto's dummy AWS credentials and the token PIN in its environment.
async fn keywheel(cli: &Arc<Cli>, pin: &str, args: &[&str]) -> Output {
    let (cli, pin) = (Arc::clone(cli), pin.to_owned());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli
            .command(&args)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env(PIN_VAR, pin)
            .output()
            .expect("run keywheel");
        Output::from_std(&args, out)
    })
    .await
    .expect("cli task")
}

fn pkcs11_uri(token: &SoftHsmToken, object: &str) -> String {
    format!(
        "pkcs11:token={};object={object}?module-path={}&pin-source=env:{PIN_VAR}",
        token.label,
        token.module.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_rotation_local_to_aws_kms_to_pkcs11_under_live_applications_has_no_errors() {
    let Some(db) = common::TestDb::create().await else { return };
    let (Some(endpoint), Some(token)) = (services::kms_endpoint(), services::softhsm_token()) else { return };
    let cli = Arc::new(Cli::new(Some(pg::postgres_url(&db))));
    let pool = PgPool::without_tls(&db.url).expect("pool");

    // A populated store under a local master key: three keyrings of two versions.
    keywheel(&cli, &token.pin, &["init"]).await.assert_code(0);
    for keyring in KEYRINGS {
        keywheel(&cli, &token.pin, &["keyring", "create", keyring]).await.assert_code(0);
    }
    let local: Arc<dyn KeyEncryptionKey> = Arc::new(LocalKek::from_file(cli.key_file()).expect("master key"));
    let setup = app_keywheel(&pool, Arc::clone(&local), "setup");
    for keyring in KEYRINGS {
        let id: KeyringId = keyring.parse().expect("id");
        let v2 = setup.add_version(&id).await.expect("v2");
        setup.activate(&id, v2).await.expect("activate");
    }

    // The new KEKs: a KMS key pair, and an AES key inside the token.
    let kms_config = AwsKmsConfig::new("", "")
        .endpoint(endpoint)
        .region("us-east-1")
        .static_credentials("testing", zeroize::Zeroizing::new("testing".to_owned()));
    let kms_config = kms_config.create_keys("keywheel live rotation").await.expect("KMS keys");
    let kms_uri = kms_config.to_uri();
    let kms: Arc<dyn KeyEncryptionKey> = Arc::new(AwsKmsKek::connect(kms_config).await.expect("KMS KEK"));
    let object = services::unique_label("live-kek");
    let hsm_config =
        Pkcs11Config::new(&token.module, &token.label, &object).pin(secrecy::SecretString::from(token.pin.clone()));
    Pkcs11Kek::generate_key(&hsm_config).expect("HSM key");
    let hsm: Arc<dyn KeyEncryptionKey> = Arc::new(Pkcs11Kek::open(hsm_config).await.expect("HSM KEK"));
    let hsm_uri = pkcs11_uri(&token, &object);

    let written = Arc::new(Written::default());
    // 1. The applications run with the KMS KEK staged next to the master key.
    let first = App::start(
        "first",
        app_keywheel(&pool, ring(Arc::clone(&local), Arc::clone(&kms)), "first"),
        Arc::clone(&written),
    );
    first.progress(MIN_OPS, "local, KMS staged").await;

    // 2. local → AWS KMS, while they run.
    let out = keywheel(&cli, &token.pin, &["--json", "--kek", "local:", "kek", "rotate", "--new-kek", &kms_uri]).await;
    let report: Value = serde_json::from_str(&out.assert_code(0).stdout).expect("json");
    assert_eq!(report["report"]["keys"], 6, "every version rewrapped: {report}");
    first.progress(MIN_OPS, "rewrapped under KMS").await;

    // 3. Rolling restart: KMS current, the HSM key staged; then the old instance stops.
    let second = App::start(
        "second",
        app_keywheel(&pool, ring(Arc::clone(&kms), Arc::clone(&hsm)), "second"),
        Arc::clone(&written),
    );
    second.progress(MIN_OPS, "KMS current, HSM staged").await;
    let first_ops = first.stop("KMS promoted").await;

    // 4. AWS KMS → PKCS#11, while the second instance runs.
    let out = keywheel(&cli, &token.pin, &["--json", "--kek", &kms_uri, "kek", "rotate", "--new-kek", &hsm_uri]).await;
    let report: Value = serde_json::from_str(&out.assert_code(0).stdout).expect("json");
    assert_eq!(report["report"]["keys"], 6, "every version rewrapped: {report}");
    second.progress(MIN_OPS, "rewrapped under the HSM key").await;

    // 5. Rolling restart with the HSM key alone; the master key is dropped.
    let third = App::start("third", app_keywheel(&pool, Arc::clone(&hsm), "third"), Arc::clone(&written));
    third.progress(MIN_OPS, "HSM current").await;
    let second_ops = second.stop("HSM promoted").await;
    std::fs::remove_file(cli.key_file()).expect("drop the master key");
    third.progress(MIN_OPS, "master key dropped").await;
    let third_ops = third.stop("done").await;
    eprintln!("operations without error: first {first_ops}, second {second_ops}, third {third_ops}");

    // The operator's view under the HSM key alone; the old KEKs no longer open the store.
    keywheel(&cli, &token.pin, &["--kek", &hsm_uri, "keyring", "list"]).await.assert_code(0);
    keywheel(&cli, &token.pin, &["--kek", &hsm_uri, "audit", "verify"]).await.assert_code(0);
    keywheel(&cli, &token.pin, &["--kek", &kms_uri, "keyring", "list"])
        .await
        .assert_code(1)
        .assert_stderr_contains("wrapped under KEK pkcs11");

    // Every value written during the whole procedure decrypts under the HSM key alone.
    let fresh = app_keywheel(&pool, hsm, "check");
    let values = written.values.lock().expect("values").clone();
    assert!(values.len() as u64 >= 3 * MIN_OPS, "values written: {}", values.len());
    for (id, row, value) in &values {
        let back = fresh.decrypt(id, value, &Context::field("users", "secret", row)).await;
        assert_eq!(back.expect("decrypts")[..], plain(row)[..], "{row}");
    }
}

#[test]
fn bad_kek_uris_are_refused_with_the_syntax() {
    let cli = Cli::new(None);
    cli.run(&["--kek", "vault://k", "keyring", "list"])
        .assert_code(2)
        .assert_stderr_contains("unknown KEK URI scheme")
        .assert_stderr_contains("pkcs11:token=");
    cli.write_config("kek = \"aws-kms://alias/k\"\n");
    cli.run(&["keyring", "list"])
        .assert_code(1)
        .assert_stderr_contains("keywheel.toml:1: kek:")
        .assert_stderr_contains("mac-key");
}

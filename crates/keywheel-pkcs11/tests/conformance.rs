//! The KEK checks against a real SoftHSM2 token: round trip, AAD binding,
//! wrong key, the load bound, and the typed errors.

use std::sync::Arc;

use keywheel_conformance::services::{SoftHsmToken, softhsm_token, unique_label};
use keywheel_conformance::{block_on, kek};
use keywheel_core::{AuditSink, Error, KeyEncryptionKey, KeyStore};
use keywheel_memory::{MemoryAuditSink, MemoryKeyStore};
use keywheel_pkcs11::{Pkcs11Config, Pkcs11Kek};
use secrecy::SecretString;

fn config(token: &SoftHsmToken, object: &str) -> Pkcs11Config {
    Pkcs11Config::new(&token.module, &token.label, object).pin(SecretString::from(token.pin.clone()))
}

/// A new key in the token, and a KEK on it.
async fn new_kek(token: &SoftHsmToken) -> Arc<Pkcs11Kek> {
    let config = config(token, &unique_label("kek"));
    Pkcs11Kek::generate_key(&config).expect("generate a key in the token");
    Arc::new(Pkcs11Kek::open(config).await.expect("open"))
}

#[test]
fn pkcs11_kek_passes_the_kek_checks() {
    let Some(token) = softhsm_token() else { return };
    block_on(async {
        let (a, b) = (new_kek(&token).await, new_kek(&token).await);
        kek::run_all(a, b).await;
    });
}

#[test]
fn pkcs11_kek_unwraps_once_per_version_per_load() {
    let Some(token) = softhsm_token() else { return };
    block_on(async {
        kek::unwraps_once_per_version_per_load(
            new_kek(&token).await,
            Arc::new(MemoryKeyStore::new()) as Arc<dyn KeyStore>,
            Arc::new(MemoryAuditSink::new()) as Arc<dyn AuditSink>,
        )
        .await;
    });
}

#[test]
fn key_check_and_integrity_key_are_stable_across_opens_and_differ_between_keys() {
    let Some(token) = softhsm_token() else { return };
    block_on(async {
        let a = new_kek(&token).await;
        let again = Pkcs11Kek::open(a.config().clone()).await.expect("open again");
        assert_eq!(a.key_check(), again.key_check());
        let ia = a.integrity_key().await.expect("integrity key");
        assert_eq!(ia.id(), again.integrity_key().await.expect("integrity key").id());
        let b = new_kek(&token).await;
        assert_ne!(a.key_check(), b.key_check());
        assert_ne!(ia.id(), b.integrity_key().await.expect("integrity key").id());
    });
}

#[test]
fn token_refusals_are_typed_errors() {
    let Some(token) = softhsm_token() else { return };
    block_on(async {
        let label = unique_label("kek");
        Pkcs11Kek::generate_key(&config(&token, &label)).expect("generate");
        // A label in use is refused; a missing label is a clear error.
        assert!(Pkcs11Kek::generate_key(&config(&token, &label)).is_err(), "a label names one key");
        let err = Pkcs11Kek::open(config(&token, "no-such-key")).await.expect_err("no such key");
        assert!(err.to_string().contains("no AES key labelled \"no-such-key\""), "{err}");
        // A wrong PIN: access denied with a hint, and the PIN is nowhere in it.
        let wrong = config(&token, &label).pin(SecretString::from("00000000".to_owned()));
        let err = Pkcs11Kek::open(wrong).await.expect_err("wrong PIN");
        assert!(matches!(&err, Error::KekAccessDenied { hint, .. } if hint.contains("PIN")), "{err:?}");
        assert!(!format!("{err}{err:?}").contains("00000000"));
        // No such token: unavailable (a token can be plugged back in).
        let mut absent = config(&token, &label);
        absent.token_label = Some("no-such-token".into());
        let err = Pkcs11Kek::open(absent).await.expect_err("no such token");
        assert!(matches!(err, Error::KekUnavailable { .. }), "{err:?}");
    });
}

//! The KEK checks against a real KMS server (moto): round trip, AAD binding,
//! wrong key, the load bound, and the typed errors.

mod support;

use std::sync::Arc;

use keywheel_conformance::{block_on, kek, services};
use keywheel_core::{AuditSink, Error, KeyEncryptionKey, KeyStore};
use keywheel_kms_aws::{AwsKmsConfig, AwsKmsKek};
use keywheel_memory::{MemoryAuditSink, MemoryKeyStore};

fn base() -> Option<AwsKmsConfig> {
    services::kms_endpoint().map(support::base)
}

#[test]
fn aws_kms_kek_passes_the_kek_checks() {
    let Some(base) = base() else { return };
    block_on(async {
        let (a, b) = (support::new_kek(&base).await, support::new_kek(&base).await);
        kek::run_all(a, b).await;
    });
}

#[test]
fn aws_kms_kek_unwraps_once_per_version_per_load() {
    let Some(base) = base() else { return };
    block_on(async {
        kek::unwraps_once_per_version_per_load(
            support::new_kek(&base).await,
            Arc::new(MemoryKeyStore::new()) as Arc<dyn KeyStore>,
            Arc::new(MemoryAuditSink::new()) as Arc<dyn AuditSink>,
        )
        .await;
    });
}

#[test]
fn the_integrity_key_comes_from_the_mac_key_and_is_stable_across_connections() {
    let Some(base) = base() else { return };
    block_on(async {
        let a = support::new_kek(&base).await;
        let again = AwsKmsKek::connect(a.config().clone()).await.expect("connect again");
        let ia = a.integrity_key().await.expect("integrity key");
        assert_eq!(ia.id(), again.integrity_key().await.expect("integrity key").id());
        assert_eq!(a.key_check(), again.key_check(), "same key, same key check value");
        let b = support::new_kek(&base).await;
        assert_ne!(ia.id(), b.integrity_key().await.expect("integrity key").id(), "another MAC key, another key");
        // An alias resolves to the same key (DescribeKey gives the ARN).
        let alias = format!("alias/{}", keywheel_conformance::services::unique_label("kw"));
        a.client().create_alias().alias_name(&alias).target_key_id(a.key_arn()).send().await.expect("alias");
        let mut by_alias = a.config().clone();
        by_alias.key_id = alias;
        let by_alias = AwsKmsKek::connect(by_alias).await.expect("connect by alias");
        assert_eq!(by_alias.key_check(), a.key_check());
    });
}

#[test]
fn kms_refusals_are_typed_errors_with_hints() {
    let Some(base) = base() else { return };
    block_on(async {
        // An unknown key: not found, not retryable.
        let mut missing = base.clone();
        missing.key_id = "alias/no-such-key".into();
        missing.mac_key_id = "alias/no-such-key".into();
        let err = AwsKmsKek::connect(missing).await.expect_err("no such key");
        assert!(matches!(&err, Error::Kek { retryable: false, .. }) && err.to_string().contains("not found"), "{err}");

        // A disabled key: KekDisabled with a hint.
        let kek = support::new_kek(&base).await;
        // (moto's DisableKey takes the bare key id, not the ARN.)
        let key_id = kek.key_arn().rsplit('/').next().expect("an ARN ends in the key id").to_owned();
        kek.client().disable_key().key_id(&key_id).send().await.expect("disable");
        let err = AwsKmsKek::connect(kek.config().clone()).await.expect_err("disabled");
        assert!(matches!(&err, Error::KekDisabled { hint, .. } if hint.contains("enable-key")), "{err:?}");
        assert!(!err.is_retryable());
        kek.client().enable_key().key_id(&key_id).send().await.expect("enable");

        // A ciphertext of another KMS key presented under this key's check
        // value: KMS refuses access to it (moto answers AccessDeniedException).
        let other = support::new_kek(&base).await;
        let (id, v1) = (
            keywheel_core::KeyringId::new("t", keywheel_core::Purpose::Token).expect("id"),
            keywheel_core::KeyVersion::FIRST,
        );
        let mut wrapped =
            other.wrap(&id, v1, &keywheel_core::KeyMaterial::generate().expect("rng")).await.expect("wrap");
        wrapped.key_check = kek.key_check().to_owned();
        let err = kek.unwrap(&id, v1, &wrapped).await.expect_err("another key's ciphertext");
        assert!(
            matches!(&err, Error::KekAccessDenied { hint, .. } if hint.contains("kms:Decrypt"))
                || matches!(err, Error::WrongMasterKey { .. }),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    });
}

#[test]
fn an_unreachable_kms_is_a_retryable_error() {
    let Some(mut server) = services::MotoServer::start() else { return };
    let base = support::base(server.endpoint());
    block_on(async {
        let kek = support::new_kek(&base).await;
        let (id, v1) = (
            keywheel_core::KeyringId::new("t", keywheel_core::Purpose::Token).expect("id"),
            keywheel_core::KeyVersion::FIRST,
        );
        let wrapped = kek.wrap(&id, v1, &keywheel_core::KeyMaterial::generate().expect("rng")).await.expect("wrap");
        server.kill();
        let err = kek.unwrap(&id, v1, &wrapped).await.expect_err("server gone");
        assert!(matches!(err, Error::KekUnavailable { .. }) && err.is_retryable(), "{err:?}");
    });
}

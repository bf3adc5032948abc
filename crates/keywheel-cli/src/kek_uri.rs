//! KEK URIs: which key-encryption key opens the store (`--kek`, `kek =` in
//! keywheel.toml, `KEYWHEEL_KEK`): `local:` (the master key, as before),
//! `aws-kms://…` or `pkcs11:…`.

use std::sync::Arc;

use keywheel_core::KeyEncryptionKey;
use keywheel_kms_aws::{AwsKmsConfig, AwsKmsKek};
use keywheel_pkcs11::{Pkcs11Config, Pkcs11Kek};

use crate::error::CliError;

/// The hint every refused KEK URI carries.
const SYNTAX: &str = "a KEK URI is `local:` (the master key from KEYWHEEL_MASTER_KEY or --master-key-file), \
    `aws-kms://<key id, alias or ARN>?mac-key=<HMAC key>[&region=…][&endpoint=…]`, or \
    `pkcs11:token=<label>;object=<label>?module-path=<library>&pin-source=env:<VAR>`";

/// A parsed KEK URI.
#[derive(Debug, Clone)]
pub(crate) enum KekUri {
    /// The local master key (`local:`).
    Local,
    /// A key in AWS KMS.
    AwsKms(Box<AwsKmsConfig>),
    /// A key in a PKCS#11 token.
    Pkcs11(Box<Pkcs11Config>),
}

impl KekUri {
    /// Parse `uri`; `what` names where it came from in errors (`--kek`, …).
    pub(crate) fn parse(uri: &str, what: &str) -> Result<KekUri, CliError> {
        let refused = |e: keywheel_core::Error| CliError::usage(format!("{what}: {e}")).with_hint(SYNTAX);
        let uri = uri.trim();
        if uri == "local:" || uri == "local" {
            Ok(KekUri::Local)
        } else if uri.starts_with(keywheel_kms_aws::URI_SCHEME) {
            Ok(KekUri::AwsKms(Box::new(AwsKmsConfig::from_uri(uri).map_err(refused)?)))
        } else if uri.starts_with(keywheel_pkcs11::URI_SCHEME) {
            Ok(KekUri::Pkcs11(Box::new(Pkcs11Config::from_uri(uri).map_err(refused)?)))
        } else {
            Err(CliError::usage(format!("{what}: unknown KEK URI scheme in {uri:?}")).with_hint(SYNTAX))
        }
    }

    /// Whether this is the local master key.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, KekUri::Local)
    }

    /// Open a KMS or HSM KEK (one `DescribeKey`, or a token login and two
    /// CMACs); `None` for `local:`, which the caller reads from the master key.
    pub(crate) async fn open_remote(&self) -> Result<Option<Arc<dyn KeyEncryptionKey>>, CliError> {
        let hint = |e: keywheel_core::Error, what: &str| {
            let retry = e.is_retryable();
            let err = CliError::from(e);
            if retry { err.or_hint(format!("{what} is unreachable: retry when it answers again")) } else { err }
        };
        Ok(match self {
            KekUri::Local => None,
            KekUri::AwsKms(config) => {
                Some(Arc::new(AwsKmsKek::connect((**config).clone()).await.map_err(|e| hint(e, "AWS KMS"))?))
            }
            KekUri::Pkcs11(config) => {
                Some(Arc::new(Pkcs11Kek::open((**config).clone()).await.map_err(|e| hint(e, "the PKCS#11 token"))?))
            }
        })
    }

    /// What to show the operator (never a PIN).
    pub(crate) fn describe(&self) -> String {
        match self {
            KekUri::Local => "local master key".into(),
            KekUri::AwsKms(c) => format!("AWS KMS key {}", c.key_id),
            KekUri::Pkcs11(c) => format!(
                "PKCS#11 key {:?} on token {:?}",
                c.object_label,
                c.token_label.as_deref().unwrap_or("(by slot)")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_parses_and_others_are_refused_with_the_syntax() {
        assert!(KekUri::parse("local:", "--kek").expect("local").is_local());
        let kms = KekUri::parse("aws-kms://alias/k?mac-key=alias/m", "--kek").expect("kms");
        assert_eq!(kms.describe(), "AWS KMS key alias/k");
        let hsm = KekUri::parse("pkcs11:token=t;object=o?module-path=/m.so", "--kek").expect("pkcs11");
        assert_eq!(hsm.describe(), "PKCS#11 key \"o\" on token \"t\"");
        for (uri, says) in [("vault://x", "unknown KEK URI scheme"), ("aws-kms://k", "mac-key")] {
            let err = KekUri::parse(uri, "--kek").expect_err(uri);
            assert!(err.message.contains(says) && err.message.starts_with("--kek"), "{uri}: {}", err.message);
            assert!(err.hint.as_deref().is_some_and(|h| h.contains("pkcs11:token=")), "{uri}: {:?}", err.hint);
        }
    }
}

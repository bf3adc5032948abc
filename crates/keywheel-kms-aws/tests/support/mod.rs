//! A KMS configuration for the tests: the moto server's endpoint, a region
//! and moto's dummy credentials (given to the SDK, not to the environment).
#![allow(dead_code)]

use std::sync::Arc;

use keywheel_kms_aws::{AwsKmsConfig, AwsKmsKek};
use zeroize::Zeroizing;

/// A configuration pointing at `endpoint`, without keys yet.
pub(crate) fn base(endpoint: String) -> AwsKmsConfig {
    AwsKmsConfig::new("", "")
        .endpoint(endpoint)
        .region("us-east-1")
        .static_credentials("testing", Zeroizing::new("testing".to_owned()))
}

/// A KEK on a fresh pair of keys at `base`'s endpoint.
pub(crate) async fn new_kek(base: &AwsKmsConfig) -> Arc<AwsKmsKek> {
    let config = base.create_keys("keywheel test").await.expect("create KMS keys");
    Arc::new(AwsKmsKek::connect(config).await.expect("connect"))
}

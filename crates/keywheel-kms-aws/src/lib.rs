//! # keywheel-kms-aws
//!
//! A [`KeyEncryptionKey`] whose master key never leaves AWS KMS: version
//! material is wrapped with KMS `Encrypt` and unwrapped with KMS `Decrypt`,
//! the keyring id and version bound as the encryption context; the
//! [`IntegrityKey`] that authenticates keyring records and the audit chain is
//! derived from a KMS `GenerateMac` of a fixed label under an HMAC KMS key
//! (see the [manual](keywheel_core::manual#kms-and-hsm-master-keys)).
//!
//! Region, endpoint and credentials come from the standard AWS configuration
//! chain (`AWS_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_KMS`,
//! `AWS_ACCESS_KEY_ID`…, profiles, IMDS, SSO), unless the KEK URI names them.
//! HTTPS goes through rustls with the ring provider.
//!
//! ```no_run
//! use std::sync::Arc;
//! use keywheel_kms_aws::{AwsKmsConfig, AwsKmsKek};
//!
//! # async fn demo() -> keywheel_core::Result<()> {
//! let config = AwsKmsConfig::from_uri(
//!     "aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab\
//!      ?mac-key=alias/keywheel-integrity",
//! )?;
//! let kek = Arc::new(AwsKmsKek::connect(config).await?);
//! // Then: Keywheel::builder().kek(kek)…
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::Credentials;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType, MacAlgorithmSpec};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use keywheel_core::{Error, IntegrityKey, KeyEncryptionKey, KeyMaterial, KeyVersion, KeyringId, Result, WrappedKey};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

/// The URI scheme of an AWS KMS KEK: `aws-kms://<key id, alias or ARN>?mac-key=<…>`.
pub const URI_SCHEME: &str = "aws-kms://";

/// The label whose KMS HMAC is the integrity key's secret.
const INTEGRITY_LABEL: &[u8] = b"keywheel/integrity/aws-kms/v1";

/// Where the KMS keys are and how to reach them. Build one with
/// [`AwsKmsConfig::new`] or [`AwsKmsConfig::from_uri`]; anything left unset
/// comes from the standard AWS configuration chain.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AwsKmsConfig {
    /// The symmetric encryption KMS key that wraps (key id, alias or ARN).
    pub key_id: String,
    /// The HMAC KMS key (`HMAC_256`, usage `GENERATE_VERIFY_MAC`) whose MAC of
    /// a fixed label derives the integrity key (key id, alias or ARN).
    pub mac_key_id: String,
    /// An endpoint URL overriding the configuration chain's (a KMS-compatible
    /// server, a VPC endpoint).
    pub endpoint: Option<String>,
    /// A region overriding the configuration chain's.
    pub region: Option<String>,
    /// The id recorded with every wrapped key (default `aws-kms`). Two KEKs of
    /// the same id are told apart by their key check values (of the key ARN).
    pub kek_id: String,
    /// Connect timeout of one KMS call (default 3 s).
    pub connect_timeout: Duration,
    /// Timeout of one KMS operation, retries included (default 10 s).
    pub operation_timeout: Duration,
    /// Attempts per KMS call, the first included (default 3; the SDK's
    /// standard retry with exponential backoff and jitter).
    pub max_attempts: u32,
    /// Fixed credentials overriding the configuration chain's (a
    /// KMS-compatible test server); `None`: the chain.
    credentials: Option<Credentials>,
}

impl fmt::Debug for AwsKmsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsConfig")
            .field("key_id", &self.key_id)
            .field("mac_key_id", &self.mac_key_id)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("kek_id", &self.kek_id)
            .field("credentials", &self.credentials.as_ref().map(|_| "<fixed>"))
            .finish_non_exhaustive()
    }
}

fn config_error(message: impl Into<String>) -> Error {
    Error::Kek { kek_id: AwsKmsKek::DEFAULT_ID.into(), message: message.into(), retryable: false }
}

impl AwsKmsConfig {
    /// Wrap with `key_id`, derive the integrity key with `mac_key_id`; the
    /// rest from the AWS configuration chain.
    pub fn new(key_id: impl Into<String>, mac_key_id: impl Into<String>) -> Self {
        AwsKmsConfig {
            key_id: key_id.into(),
            mac_key_id: mac_key_id.into(),
            endpoint: None,
            region: None,
            kek_id: AwsKmsKek::DEFAULT_ID.into(),
            connect_timeout: Duration::from_secs(3),
            operation_timeout: Duration::from_secs(10),
            max_attempts: 3,
            credentials: None,
        }
    }

    /// Parse a KEK URI:
    /// `aws-kms://<key id, alias or ARN>?mac-key=<key id, alias or ARN>[&region=<region>][&endpoint=<url>]`.
    /// Values are taken literally (no percent-decoding; none of them holds
    /// `?` or `&`). Errors name the part that is wrong.
    ///
    /// ```
    /// let c = keywheel_kms_aws::AwsKmsConfig::from_uri(
    ///     "aws-kms://alias/app?mac-key=alias/app-mac&region=eu-west-1&endpoint=http://127.0.0.1:5000",
    /// )?;
    /// assert_eq!((c.key_id.as_str(), c.mac_key_id.as_str()), ("alias/app", "alias/app-mac"));
    /// assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
    /// # Ok::<(), keywheel_core::Error>(())
    /// ```
    pub fn from_uri(uri: &str) -> Result<Self> {
        let rest = uri
            .strip_prefix(URI_SCHEME)
            .ok_or_else(|| config_error(format!("a KMS KEK URI starts with {URI_SCHEME}, not {uri:?}")))?;
        let (key, query) = rest.split_once('?').unwrap_or((rest, ""));
        if key.is_empty() {
            return Err(config_error("the KEK URI names no KMS key: aws-kms://<key id, alias or ARN>?mac-key=<…>"));
        }
        let (mut mac, mut region, mut endpoint) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if value.is_empty() {
                return Err(config_error(format!("KEK URI parameter {name:?} has no value")));
            }
            let slot = match name {
                "mac-key" => &mut mac,
                "region" => &mut region,
                "endpoint" => &mut endpoint,
                other => {
                    return Err(config_error(format!(
                        "unknown KEK URI parameter {other:?} (known: mac-key, region, endpoint)"
                    )));
                }
            };
            *slot = Some(value.to_owned());
        }
        let mac = mac.ok_or_else(|| {
            config_error(
                "the KEK URI needs ?mac-key=<HMAC_256 KMS key>: its MAC of a fixed label derives the integrity key \
                 that authenticates keyring records and the audit trail",
            )
        })?;
        let mut config = AwsKmsConfig::new(key, mac);
        config.region = region;
        config.endpoint = endpoint;
        Ok(config)
    }

    /// Override the configuration chain's endpoint.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Override the configuration chain's region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Record another id with the wrapped keys than `aws-kms`.
    pub fn kek_id(mut self, id: impl Into<String>) -> Self {
        self.kek_id = id.into();
        self
    }

    /// Attempts per KMS call, the first included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Use these fixed credentials instead of the configuration chain's (for
    /// a KMS-compatible server such as a local test server; production
    /// processes should use the chain: roles, profiles, SSO).
    pub fn static_credentials(mut self, access_key_id: &str, secret_access_key: Zeroizing<String>) -> Self {
        self.credentials =
            Some(Credentials::new(access_key_id, secret_access_key.as_str(), None, None, "keywheel-static"));
        self
    }

    /// Timeouts of one KMS call: connecting, and the whole operation with
    /// its retries.
    pub fn timeouts(mut self, connect: Duration, operation: Duration) -> Self {
        self.connect_timeout = connect;
        self.operation_timeout = operation;
        self
    }

    /// A KMS client for this configuration (the chain with its overrides).
    async fn client(&self) -> Client {
        let sdk = self.sdk_config().await;
        let mut builder = aws_sdk_kms::config::Builder::from(&sdk);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        Client::from_conf(builder.build())
    }

    /// Provision a new pair of KMS keys, where this configuration points: a
    /// symmetric encryption key and an `HMAC_256` key (for a first setup and
    /// for tests). Returns this configuration naming the new keys by ARN.
    pub async fn create_keys(&self, description: &str) -> Result<AwsKmsConfig> {
        let client = self.client().await;
        let create = |spec: KeySpec, usage: KeyUsageType| {
            client.create_key().key_spec(spec).key_usage(usage).description(description).send()
        };
        let arn = |out: aws_sdk_kms::operation::create_key::CreateKeyOutput| {
            out.key_metadata.and_then(|m| m.arn).ok_or_else(|| config_error("CreateKey answered without an ARN"))
        };
        let key = create(KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt)
            .await
            .map_err(|e| classify(&self.kek_id, "CreateKey", "(new key)", e))?;
        let mac = create(KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac)
            .await
            .map_err(|e| classify(&self.kek_id, "CreateKey", "(new HMAC key)", e))?;
        let mut config = self.clone();
        config.key_id = arn(key)?;
        config.mac_key_id = arn(mac)?;
        Ok(config)
    }

    /// The URI of this configuration (what [`from_uri`](Self::from_uri) reads).
    pub fn to_uri(&self) -> String {
        let mut uri = format!("{URI_SCHEME}{}?mac-key={}", self.key_id, self.mac_key_id);
        if let Some(region) = &self.region {
            uri.push_str(&format!("&region={region}"));
        }
        if let Some(endpoint) = &self.endpoint {
            uri.push_str(&format!("&endpoint={endpoint}"));
        }
        uri
    }

    /// The AWS SDK configuration: the chain, with this configuration's overrides.
    async fn sdk_config(&self) -> aws_config::SdkConfig {
        let http =
            aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.connect_timeout)
                    .operation_timeout(self.operation_timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(self.max_attempts));
        if let Some(credentials) = &self.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        loader.load().await
    }
}

/// A KEK in AWS KMS. See the [crate documentation](crate).
///
/// * `wrap`: KMS `Encrypt` of the 32-byte material under the encryption key,
///   encryption context `{"keywheel:keyring": <canonical id>, "keywheel:version": <n>}`.
/// * `unwrap`: KMS `Decrypt` with the key id pinned and the same context, so a
///   wrapped key moved to another keyring or version fails
///   (`InvalidCiphertextException`). One call per version per load; the
///   plaintext lives in the snapshot only.
/// * key check value: a SHA-256 fingerprint of the encryption key's ARN
///   (resolved once with `DescribeKey`), so a key wrapped under another KMS
///   key is [`Error::WrongMasterKey`] before any call.
/// * integrity key: `GenerateMac(HMAC_SHA_256)` of a fixed label under the
///   HMAC key, fetched once per process and kept in memory.
///
/// Errors are typed: [`Error::KekUnavailable`] (unreachable, throttled,
/// KMS-internal: retryable), [`Error::KekAccessDenied`],
/// [`Error::KekDisabled`] (disabled or pending deletion),
/// [`Error::WrongMasterKey`] (`IncorrectKeyException`).
pub struct AwsKmsKek {
    config: AwsKmsConfig,
    client: Client,
    key_arn: String,
    key_check: String,
    integrity: OnceCell<IntegrityKey>,
}

impl fmt::Debug for AwsKmsKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsKek")
            .field("id", &self.config.kek_id)
            .field("key_arn", &self.key_arn)
            .field("key_check", &self.key_check)
            .finish_non_exhaustive()
    }
}

impl AwsKmsKek {
    /// The default id of an AWS KMS KEK.
    pub const DEFAULT_ID: &'static str = "aws-kms";

    /// Connect: load the AWS configuration and resolve the encryption key
    /// with `DescribeKey` (it must exist, be enabled and be a symmetric
    /// encryption key). One KMS call.
    pub async fn connect(config: AwsKmsConfig) -> Result<Self> {
        let client = config.client().await;
        let described = client.describe_key().key_id(&config.key_id).send().await;
        let metadata = described
            .map_err(|e| classify(&config.kek_id, "DescribeKey", &config.key_id, e))?
            .key_metadata
            .ok_or_else(|| config_error("DescribeKey answered without key metadata"))?;
        let kek_id = config.kek_id.clone();
        match metadata.key_state() {
            Some(KeyState::Enabled) | None => {}
            Some(state) => {
                return Err(Error::KekDisabled {
                    kek_id,
                    message: format!("KMS key {} is {}", config.key_id, state.as_str()),
                    hint: disabled_hint(&config.key_id),
                });
            }
        }
        if metadata.key_usage().is_some_and(|u| *u != KeyUsageType::EncryptDecrypt) {
            return Err(config_error(format!(
                "KMS key {} is not an encryption key (KeyUsage ENCRYPT_DECRYPT, KeySpec SYMMETRIC_DEFAULT)",
                config.key_id
            )));
        }
        let key_arn = metadata.arn().unwrap_or(metadata.key_id()).to_owned();
        let key_check = key_check_of(&key_arn);
        Ok(AwsKmsKek { config, client, key_arn, key_check, integrity: OnceCell::new() })
    }

    /// The ARN of the encryption key (as `DescribeKey` resolved it).
    pub fn key_arn(&self) -> &str {
        &self.key_arn
    }

    /// This KEK's key check value (hex; a fingerprint of the key ARN).
    pub fn key_check(&self) -> &str {
        &self.key_check
    }

    /// The configuration it was connected with.
    pub fn config(&self) -> &AwsKmsConfig {
        &self.config
    }

    /// The SDK client, for KMS operations keywheel does not wrap (key
    /// policies, enabling and disabling keys).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn context(keyring: &KeyringId, version: KeyVersion) -> [(&'static str, String); 2] {
        [("keywheel:keyring", keyring.canonical()), ("keywheel:version", version.get().to_string())]
    }

    fn corrupt(&self, keyring: &KeyringId, version: KeyVersion) -> Error {
        Error::Kek {
            kek_id: self.config.kek_id.clone(),
            message: format!(
                "KMS refused the wrapped key of {keyring} {version}: it is corrupt or belongs to another \
                 keyring/version"
            ),
            retryable: false,
        }
    }
}

/// The key check value of a KMS key: the first 16 bytes of a SHA-256 of its
/// ARN, hex (an ARN is no secret; this only names the key).
fn key_check_of(arn: &str) -> String {
    let digest = Sha256::new().chain_update(b"keywheel/aws-kms/key-check/v1\0").chain_update(arn.as_bytes()).finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn disabled_hint(key: &str) -> String {
    format!("enable the KMS key ({key}) with `aws kms enable-key`, or cancel its scheduled deletion")
}

/// A KMS failure as a typed keywheel error: unreachable and throttled calls
/// are [`Error::KekUnavailable`] (retryable), access and key-state refusals
/// their own variants with a hint. Never key bytes (KMS messages hold none).
fn classify<E, R>(kek_id: &str, operation: &str, key: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug,
{
    let kek_id = kek_id.to_owned();
    let code = err.code().map(str::to_owned);
    let detail = err.message().map(str::to_owned).unwrap_or_else(|| code.clone().unwrap_or_default());
    match (&err, code.as_deref()) {
        (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_), _) => {
            Error::KekUnavailable {
                kek_id,
                message: format!("{operation} on {key}: {}", aws_sdk_kms::error::DisplayErrorContext(&err)),
            }
        }
        (
            _,
            Some(
                "KeyUnavailableException"
                | "KMSInternalException"
                | "DependencyTimeoutException"
                | "ThrottlingException"
                | "LimitExceededException"
                | "ServiceUnavailableException",
            ),
        ) => Error::KekUnavailable { kek_id, message: format!("{operation} on {key}: {detail}") },
        (_, Some("AccessDeniedException" | "UnrecognizedClientException" | "InvalidSignatureException")) => {
            Error::KekAccessDenied {
                kek_id,
                message: format!("{operation} on {key}: {detail}"),
                hint: format!(
                    "allow this principal kms:Encrypt, kms:Decrypt and kms:DescribeKey on {key} and \
                     kms:GenerateMac on the mac-key (key policy or IAM), and check its credentials"
                ),
            }
        }
        (_, Some("DisabledException" | "KMSInvalidStateException")) => {
            Error::KekDisabled { kek_id, message: format!("{operation} on {key}: {detail}"), hint: disabled_hint(key) }
        }
        (_, Some("NotFoundException")) => Error::Kek {
            kek_id,
            message: format!("{operation}: KMS key {key} not found (check the key id and the region): {detail}"),
            retryable: false,
        },
        _ => Error::Kek {
            kek_id,
            message: format!("{operation} on {key} failed: {}", aws_sdk_kms::error::DisplayErrorContext(&err)),
            retryable: false,
        },
    }
}

#[async_trait]
impl KeyEncryptionKey for AwsKmsKek {
    fn id(&self) -> &str {
        &self.config.kek_id
    }

    async fn wrap(&self, keyring: &KeyringId, version: KeyVersion, material: &KeyMaterial) -> Result<WrappedKey> {
        let mut request =
            self.client.encrypt().key_id(&self.key_arn).plaintext(Blob::new(material.expose_secret().to_vec()));
        for (name, value) in Self::context(keyring, version) {
            request = request.encryption_context(name, value);
        }
        let out = request.send().await.map_err(|e| classify(&self.config.kek_id, "Encrypt", &self.config.key_id, e))?;
        let ciphertext =
            out.ciphertext_blob.ok_or_else(|| config_error("KMS Encrypt answered without a ciphertext"))?.into_inner();
        Ok(WrappedKey { kek_id: self.config.kek_id.clone(), key_check: self.key_check.clone(), ciphertext })
    }

    async fn unwrap(&self, keyring: &KeyringId, version: KeyVersion, wrapped: &WrappedKey) -> Result<KeyMaterial> {
        if wrapped.kek_id != self.config.kek_id {
            return Err(Error::KekMismatch { expected: self.config.kek_id.clone(), found: wrapped.kek_id.clone() });
        }
        let expected = wrapped.key_check.as_bytes();
        if expected.len() != self.key_check.len() || expected != self.key_check.as_bytes() {
            return Err(Error::wrong_master_key(&self.config.kek_id, &wrapped.key_check, &self.key_check));
        }
        let mut request =
            self.client.decrypt().key_id(&self.key_arn).ciphertext_blob(Blob::new(wrapped.ciphertext.clone()));
        for (name, value) in Self::context(keyring, version) {
            request = request.encryption_context(name, value);
        }
        let out = request.send().await.map_err(|e| match e.code() {
            Some("InvalidCiphertextException") => self.corrupt(keyring, version),
            Some("IncorrectKeyException") => {
                Error::wrong_master_key(&self.config.kek_id, &wrapped.key_check, &self.key_check)
            }
            _ => classify(&self.config.kek_id, "Decrypt", &self.config.key_id, e),
        })?;
        let plain = Zeroizing::new(
            out.plaintext.ok_or_else(|| config_error("KMS Decrypt answered without a plaintext"))?.into_inner(),
        );
        KeyMaterial::from_slice(&plain).map_err(|_| self.corrupt(keyring, version))
    }

    async fn integrity_key(&self) -> Result<IntegrityKey> {
        let key = self
            .integrity
            .get_or_try_init(|| async {
                let out = self
                    .client
                    .generate_mac()
                    .key_id(&self.config.mac_key_id)
                    .mac_algorithm(MacAlgorithmSpec::HmacSha256)
                    .message(Blob::new(INTEGRITY_LABEL))
                    .send()
                    .await
                    .map_err(|e| classify(&self.config.kek_id, "GenerateMac", &self.config.mac_key_id, e))?;
                let mac = Zeroizing::new(
                    out.mac.ok_or_else(|| config_error("KMS GenerateMac answered without a MAC"))?.into_inner(),
                );
                Ok::<_, Error>(IntegrityKey::derive(&mac, b"aws-kms"))
            })
            .await?;
        Ok(key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_print_back() {
        let uri = "aws-kms://arn:aws:kms:eu-west-1:111122223333:key/abcd?mac-key=alias/mac&region=eu-west-1";
        let c = AwsKmsConfig::from_uri(uri).expect("parses");
        assert_eq!(c.key_id, "arn:aws:kms:eu-west-1:111122223333:key/abcd");
        assert_eq!(c.mac_key_id, "alias/mac");
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.to_uri(), uri);
        assert_eq!(AwsKmsConfig::from_uri(&c.to_uri()).expect("again"), c);
    }

    #[test]
    fn bad_uris_are_refused_naming_the_part() {
        for (uri, says) in [
            ("kms://k?mac-key=m", "starts with aws-kms://"),
            ("aws-kms://?mac-key=m", "names no KMS key"),
            ("aws-kms://k", "mac-key"),
            ("aws-kms://k?mac-key=m&colour=blue", "unknown KEK URI parameter \"colour\""),
            ("aws-kms://k?mac-key=", "has no value"),
        ] {
            let message = AwsKmsConfig::from_uri(uri).expect_err(uri).to_string();
            assert!(message.contains(says), "{uri}: {message}");
        }
    }

    #[test]
    fn key_check_values_name_the_key() {
        let a = key_check_of("arn:aws:kms:eu-west-1:1:key/a");
        assert_eq!(a.len(), 32);
        assert_eq!(a, key_check_of("arn:aws:kms:eu-west-1:1:key/a"));
        assert_ne!(a, key_check_of("arn:aws:kms:eu-west-1:1:key/b"));
    }
}

//! HashiCorp Vault transit values, decrypted through the application's Vault client.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::future::BoxFuture;

use super::{AsyncLegacyDecrypt, LegacyDecryptor, LegacyFormat, LegacyValue, malformed};
use crate::{Error, Plaintext, Result, Timestamp};

const PREFIX: &[u8] = b"vault:v";

/// Whether `value` starts like a transit ciphertext (`vault:v`). Loose on
/// purpose: a damaged transit value is a Vault failure, not plaintext.
pub(super) fn has_signature(value: &[u8]) -> bool {
    value.starts_with(PREFIX)
}

/// Whether `value` is a well-formed transit ciphertext: `vault:v<digits>:<base64>`.
fn is_well_formed(value: &[u8]) -> bool {
    let Some(rest) = value.strip_prefix(PREFIX) else { return false };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let Some(payload) = rest[digits..].strip_prefix(b":") else { return false };
    digits > 0 && !payload.is_empty() && STANDARD.decode(payload).is_ok()
}

/// The caller's batch decryption: transit ciphertexts in, one result per
/// ciphertext out (in order), each the raw plaintext bytes. The outer
/// `Result` is for a failure of the whole call (Vault unreachable, denied).
pub type VaultDecryptFn = Arc<dyn Fn(Vec<String>) -> BoxFuture<'static, Result<Vec<Result<Vec<u8>>>>> + Send + Sync>;

/// Values encrypted by [HashiCorp Vault's transit engine](https://developer.hashicorp.com/vault/docs/secrets/transit)
/// (`vault:v<key version>:<base64>`), decrypted by the application's own
/// Vault client through a function given here: keywheel depends on no Vault
/// server nor client, and never sees a Vault token.
///
/// The function receives a batch of ciphertexts (one rotation batch, the
/// shape of transit's `batch_input`) and returns one result per ciphertext,
/// in order: the raw plaintext bytes (transit answers base64;
/// [`decode_plaintext`](Self::decode_plaintext) decodes it) or an error for
/// that item. A failure of the whole call is returned as the outer error and
/// becomes every value's error; use [`Error::backend`] with `retryable` set
/// for transient faults. A result count that differs from the number of
/// ciphertexts is an [`Error::Backend`] for every value.
///
/// Only well-formed values reach the function: a value that starts with
/// `vault:v` but is not `vault:v<digits>:<base64>` is
/// [`Error::MalformedLegacy`]. This format is
/// [async](crate::LegacyDecryptor::Async): it is awaited, never run on a
/// blocking thread.
///
/// ```
/// use keywheel_core::{Context, Error, LegacyFormat, LegacyValue, Timestamp, VaultTransitFormat};
/// // Stands in for a Vault client's transit batch decrypt.
/// let vault = VaultTransitFormat::new(|ciphertexts: Vec<String>| async move {
///     Ok(ciphertexts
///         .iter()
///         .map(|c| match c.as_str() {
///             "vault:v1:AAAA" => VaultTransitFormat::decode_plaintext("aGVsbG8="),
///             _ => Err(Error::backend("vault transit", "cipher: message authentication failed", false)),
///         })
///         .collect())
/// });
/// let ctx = Context::empty();
/// let values = [LegacyValue::new(b"vault:v1:AAAA", &ctx), LegacyValue::new(b"vault:v1:BBBB", &ctx)];
/// # futures::executor::block_on(async {
/// let results = vault.decrypt_batch(&values, Timestamp::EPOCH).await;
/// assert_eq!(results[0].as_ref().map(|p| p.as_bytes()).ok(), Some(&b"hello"[..]));
/// assert!(matches!(results[1], Err(Error::Backend { .. })));
/// # });
/// ```
#[derive(Clone)]
pub struct VaultTransitFormat {
    decrypt: VaultDecryptFn,
}

impl fmt::Debug for VaultTransitFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultTransitFormat").finish_non_exhaustive()
    }
}

impl VaultTransitFormat {
    /// The format's name in reports and configuration.
    pub const NAME: &'static str = "vault";

    /// Transit values decrypted by `decrypt` (see the type's documentation).
    pub fn new<F, Fut>(decrypt: F) -> Self
    where
        F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Result<Vec<u8>>>>> + Send + 'static,
    {
        VaultTransitFormat { decrypt: Arc::new(move |batch| Box::pin(decrypt(batch))) }
    }

    /// From an already boxed function.
    pub fn from_fn(decrypt: VaultDecryptFn) -> Self {
        VaultTransitFormat { decrypt }
    }

    /// The plaintext bytes of transit's answer (its `plaintext` field is
    /// base64); a bad answer is an [`Error::Backend`].
    pub fn decode_plaintext(base64: &str) -> Result<Vec<u8>> {
        STANDARD
            .decode(base64)
            .map_err(|_| Error::backend("vault transit", "the plaintext Vault returned is not base64", false))
    }
}

impl LegacyFormat for VaultTransitFormat {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn recognizes(&self, value: &[u8]) -> bool {
        has_signature(value)
    }

    fn decryptor(&self) -> LegacyDecryptor<'_> {
        LegacyDecryptor::Async(self)
    }
}

/// An error for one more value of a batch whose call failed as a whole.
fn replicate(e: &Error) -> Error {
    match e {
        Error::Backend { backend, message, retryable } => {
            Error::Backend { backend, message: message.clone(), retryable: *retryable }
        }
        Error::Decrypt => Error::Decrypt,
        Error::Kek { kek_id, message, retryable } => {
            Error::Kek { kek_id: kek_id.clone(), message: message.clone(), retryable: *retryable }
        }
        Error::InvalidArgument(message) => Error::InvalidArgument(message.clone()),
        other => Error::backend("vault transit", other.to_string(), other.is_retryable()),
    }
}

#[async_trait]
impl AsyncLegacyDecrypt for VaultTransitFormat {
    async fn decrypt_batch(&self, values: &[LegacyValue<'_>], _at: Timestamp) -> Vec<Result<Plaintext>> {
        let mut results: Vec<Option<Result<Plaintext>>> = Vec::with_capacity(values.len());
        let mut batch = Vec::new();
        let mut slots = Vec::new();
        for (i, value) in values.iter().enumerate() {
            match std::str::from_utf8(value.bytes) {
                Ok(text) if is_well_formed(value.bytes) => {
                    batch.push(text.to_owned());
                    slots.push(i);
                    results.push(None);
                }
                _ => results.push(Some(Err(malformed(Self::NAME, "expected vault:v<version>:<base64>")))),
            }
        }
        if !batch.is_empty() {
            let asked = batch.len();
            match (self.decrypt)(batch).await {
                Ok(answers) if answers.len() == asked => {
                    for (slot, answer) in slots.iter().zip(answers) {
                        results[*slot] = Some(answer.map(Plaintext::from_legacy));
                    }
                }
                Ok(answers) => {
                    let message =
                        format!("the decrypt function returned {} results for {asked} ciphertexts", answers.len());
                    for slot in &slots {
                        results[*slot] = Some(Err(Error::backend("vault transit", message.clone(), false)));
                    }
                }
                Err(e) => {
                    for slot in slots.iter().skip(1) {
                        results[*slot] = Some(Err(replicate(&e)));
                    }
                    results[slots[0]] = Some(Err(e));
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Err(Error::Decrypt))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        assert!(is_well_formed(b"vault:v1:AAAA"));
        assert!(is_well_formed(b"vault:v12:aGVsbG8="));
        assert!(!is_well_formed(b"vault:v:AAAA"));
        assert!(!is_well_formed(b"vault:vx:AAAA"));
        assert!(!is_well_formed(b"vault:v1:"));
        assert!(!is_well_formed(b"vault:v1:***"));
        assert!(!is_well_formed(b"vault:v1AAAA"));
    }
}

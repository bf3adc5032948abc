//! Plaintext as an explicit legacy format, always with an end date.

use super::{BlockingLegacyDecrypt, LegacyDecryptor, LegacyFormat, LegacyValue, fernet, looks_like_keywheel, vault};
use crate::{Error, Plaintext, Result, Timestamp};

/// Unencrypted values in a column being migrated to keywheel, accepted until
/// an end date.
///
/// Recognises every value that does not [look like keywheel](super::looks_like_keywheel)
/// and does not carry the signature of an encrypted format with an
/// unmistakable one (a Fernet token's `gAAAAA…`, Vault's `vault:v…`): a
/// ciphertext of a format the caller forgot to configure is a failure, never
/// taken for plaintext. (Lockbox values have no signature, only base64, so
/// they cannot be told apart from plaintext: configure
/// [`LockboxFormat`](crate::LockboxFormat) before accepting plaintext in a
/// Lockbox column.) [`LegacyFormats`](crate::LegacyFormats) tries it last.
///
/// Decryption returns the bytes as they are while `at < until`, and
/// [`Error::PlaintextNotAccepted`] from `until` on. The only constructor
/// takes the end date: plaintext is never accepted open-ended, and once the
/// date has passed a forgotten configuration fails loudly instead of letting
/// plaintext in for ever.
///
/// ```
/// use keywheel_core::{Context, Error, LegacyFormat, LegacyValue, PlaintextFormat, Timestamp};
/// let until = Timestamp::from_millis(1_800_000_000_000);
/// let format = PlaintextFormat::until(until);
/// let ctx = Context::field("users", "email", "42");
/// let value = [LegacyValue::new(b"alice@example.com", &ctx)];
/// # futures::executor::block_on(async {
/// let before = format.decrypt_batch(&value, until.minus(std::time::Duration::from_secs(1))).await;
/// assert_eq!(before[0].as_ref().map(|p| p.as_bytes()).ok(), Some(&b"alice@example.com"[..]));
/// let after = format.decrypt_batch(&value, until).await;
/// assert!(matches!(after[0], Err(Error::PlaintextNotAccepted { .. })));
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaintextFormat {
    until: Timestamp,
}

impl PlaintextFormat {
    /// The format's name in reports and configuration.
    pub const NAME: &'static str = "plaintext";

    /// Accept plaintext before `until` (exclusive).
    pub fn until(until: Timestamp) -> Self {
        PlaintextFormat { until }
    }

    /// The end date: from this instant on, plaintext is refused.
    pub fn accepted_until(&self) -> Timestamp {
        self.until
    }

    /// Whether plaintext is accepted at `at`.
    pub fn accepts_at(&self, at: Timestamp) -> bool {
        at < self.until
    }
}

impl LegacyFormat for PlaintextFormat {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn recognizes(&self, value: &[u8]) -> bool {
        !looks_like_keywheel(value) && !fernet::has_signature(value) && !vault::has_signature(value)
    }

    fn decryptor(&self) -> LegacyDecryptor<'_> {
        LegacyDecryptor::Blocking(self)
    }
}

impl BlockingLegacyDecrypt for PlaintextFormat {
    fn decrypt_one(&self, value: &LegacyValue<'_>, at: Timestamp) -> Result<Plaintext> {
        if !self.accepts_at(at) {
            return Err(Error::PlaintextNotAccepted { until: self.until });
        }
        if !self.recognizes(value.bytes) {
            return Err(Error::MalformedLegacy {
                format: Self::NAME.to_owned(),
                reason: "the value looks like keywheel or like an encrypted format, not like plaintext",
            });
        }
        Ok(Plaintext::new(value.bytes.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;

    #[test]
    fn end_date_is_exclusive() {
        let until = Timestamp::from_millis(1000);
        let f = PlaintextFormat::until(until);
        let ctx = Context::empty();
        let v = LegacyValue::new(b"x", &ctx);
        assert_eq!(
            f.decrypt_one(&v, Timestamp::from_millis(999)).map(|p| p.as_bytes().to_vec()).ok(),
            Some(b"x".to_vec())
        );
        assert!(matches!(f.decrypt_one(&v, until), Err(Error::PlaintextNotAccepted { until: u }) if u == until));
    }

    #[test]
    fn encrypted_looking_values_are_not_plaintext() {
        let f = PlaintextFormat::until(Timestamp::from_millis(i64::MAX));
        assert!(f.recognizes(b"alice@example.com"));
        assert!(f.recognizes(b""));
        assert!(!f.recognizes(b"vault:v2:abcd"));
        assert!(!f.recognizes(b"gAAAAABpLx1w"));
        assert!(!f.recognizes(b"kw:v1:whatever"));
    }
}

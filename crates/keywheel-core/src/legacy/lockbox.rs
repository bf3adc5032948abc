//! Lockbox (Ruby): AES-256-GCM boxes, base64 in text columns.

use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use base64::engine::general_purpose::STANDARD;
use sha2::Sha384;
use zeroize::Zeroizing;

use super::{BlockingLegacyDecrypt, LegacyDecryptor, LegacyFormat, LegacyValue, decode_base64, fernet, malformed};
use crate::{Error, Plaintext, Result, Timestamp};

const NONCE: usize = 12;
const TAG: usize = 16;

/// Values encrypted by Ruby's [Lockbox](https://github.com/ankane/lockbox)
/// with its default algorithm, AES-256-GCM.
///
/// A Lockbox value is `nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`;
/// Lockbox's model integration (`has_encrypted`, `encrypts`) stores it in a
/// text column as strict base64 with padding (`encode: true`, its default
/// for models), which is what this format reads unless
/// [`binary`](Self::binary) says the column holds the raw bytes. Keys can be
/// given as Lockbox's 64 hex digits ([`new`](Self::new)) or derived from the
/// master key as a Rails application holds it, `LOCKBOX_MASTER_KEY`
/// ([`from_master_key`](Self::from_master_key)). Older keys (Lockbox's
/// `previous_versions`) are tried after the first.
///
/// Recognition: strict base64 of at least 28 bytes (nonce and tag) that
/// does not start like a Fernet token (`gAAAAA`, one Lockbox value in 2^36),
/// or in binary mode any value of at least 28 bytes. Lockbox has no signature, so
/// this is loose: configure Lockbox only for the columns Lockbox wrote.
/// Lockbox leaves the empty string unencrypted (unless padding is on), so the
/// empty value is recognised too and reads as empty.
///
/// A wrong key, a tampered value, wrong associated data or bad padding are
/// the opaque [`Error::Decrypt`]; a value too short or not base64 is
/// [`Error::MalformedLegacy`]. Keys live in zeroize-on-drop memory and
/// never appear in `Debug`.
///
/// ```
/// use keywheel_core::{BlockingLegacyDecrypt, Context, LegacyDecryptor, LegacyFormat, LegacyValue, LockboxFormat, Timestamp};
/// // Made once with Ruby: Lockbox.new(key: KEY, encode: true).encrypt("hello from rails")
/// const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// const VALUE: &str = "PCHiNL5DpAW4xrvhZvIBah73J1EScWxoNEpMqdvJQgKpFy5Zr1q8E5WmT8s=";
/// let format = LockboxFormat::new(KEY)?;
/// assert!(format.recognizes(VALUE.as_bytes()));
/// let LegacyDecryptor::Blocking(d) = format.decryptor() else { unreachable!() };
/// let ctx = Context::empty();
/// let plaintext = d.decrypt_one(&LegacyValue::new(VALUE.as_bytes(), &ctx), Timestamp::EPOCH)?;
/// assert_eq!(plaintext.as_bytes(), b"hello from rails");
/// # Ok::<(), keywheel_core::Error>(())
/// ```
pub struct LockboxFormat {
    keys: Vec<Aes256Gcm>,
    binary: bool,
    padding: Option<usize>,
    associated_data: Option<String>,
}

impl fmt::Debug for LockboxFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockboxFormat")
            .field("keys", &self.keys.len())
            .field("binary", &self.binary)
            .field("padding", &self.padding)
            .field("associated_data", &self.associated_data)
            .finish()
    }
}

impl LockboxFormat {
    /// The format's name in reports and configuration.
    pub const NAME: &'static str = "lockbox";

    /// A Lockbox key as Lockbox takes it: 64 hex digits (`Lockbox.generate_key`),
    /// the `key:` option of `has_encrypted` or `Lockbox.new`.
    pub fn new(hex_key: &str) -> Result<Self> {
        Ok(Self::with_cipher(cipher(decode_hex_key(hex_key, "a Lockbox key must be 64 hex digits")?)))
    }

    /// The key Lockbox derives for one attribute from the master key
    /// (`LOCKBOX_MASTER_KEY`, 64 hex digits), as `Lockbox.attribute_key`
    /// does: HKDF-SHA384 with the table name as salt and
    /// `0xB4 × 32 ‖ attribute` as info (the CipherSweet key hierarchy).
    ///
    /// `table` is the model's table name and `attribute` the name of the
    /// encrypted column: for `has_encrypted :email` on `User`, `"users"` and
    /// `"email_ciphertext"` (or the model's `key_table`/`key_attribute` options).
    pub fn from_master_key(master_key_hex: &str, table: &str, attribute: &str) -> Result<Self> {
        Ok(Self::with_cipher(cipher(attribute_key(master_key_hex, table, attribute)?)))
    }

    fn with_cipher(c: Aes256Gcm) -> Self {
        LockboxFormat { keys: vec![c], binary: false, padding: None, associated_data: None }
    }

    /// Also try this older key (64 hex digits) after the ones given so far,
    /// as Lockbox's `previous_versions: [{key: …}]`.
    pub fn previous_key(mut self, hex_key: &str) -> Result<Self> {
        self.keys.push(cipher(decode_hex_key(hex_key, "a Lockbox key must be 64 hex digits")?));
        Ok(self)
    }

    /// Also try the key derived from an older master key (or another
    /// table/attribute), as `previous_versions: [{master_key: …}]`.
    pub fn previous_master_key(mut self, master_key_hex: &str, table: &str, attribute: &str) -> Result<Self> {
        self.keys.push(cipher(attribute_key(master_key_hex, table, attribute)?));
        Ok(self)
    }

    /// The column holds the raw bytes (Lockbox's `encode: false`, binary columns).
    pub fn binary(mut self) -> Self {
        self.binary = true;
        self
    }

    /// Values were padded before encryption (Lockbox's `padding: true`, size
    /// 16, or `padding: size`): ISO/IEC 7816-4, removed after decryption.
    pub fn padding(mut self, size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::InvalidArgument("Lockbox padding size must be at least 1".into()));
        }
        self.padding = Some(size);
        Ok(self)
    }

    /// Values were encrypted with Lockbox's `associated_data:` option: take it
    /// from the value's [`Context`](crate::Context), the pair named `name`
    /// (for instance a context built with a `"row"` pair when the associated
    /// data was the record id). A value whose context lacks the pair is
    /// [`Error::InvalidContext`].
    pub fn associated_data_from(mut self, name: &str) -> Self {
        self.associated_data = Some(name.to_owned());
        self
    }

    fn associated_data(&self, value: &LegacyValue<'_>) -> Result<Vec<u8>> {
        let Some(name) = &self.associated_data else { return Ok(Vec::new()) };
        value
            .context
            .pairs()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or(Error::InvalidContext("the context lacks the pair that holds Lockbox's associated data"))
    }

    fn unpad(&self, plaintext: &mut Plaintext) -> Result<()> {
        let Some(size) = self.padding else { return Ok(()) };
        let bytes = &plaintext.0;
        for i in 1..=size.min(bytes.len()) {
            match bytes[bytes.len() - i] {
                0x00 => continue,
                0x80 => {
                    let len = bytes.len() - i;
                    plaintext.0.truncate(len);
                    return Ok(());
                }
                _ => break,
            }
        }
        Err(Error::Decrypt)
    }
}

fn cipher(key: Zeroizing<[u8; 32]>) -> Aes256Gcm {
    Aes256Gcm::new((&*key).into())
}

/// 64 hex digits to 32 bytes, in zeroize-on-drop memory.
fn decode_hex_key(hex: &str, what: &'static str) -> Result<Zeroizing<[u8; 32]>> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return Err(Error::InvalidKeyMaterial(what));
    }
    let nibble = |c: u8| -> Result<u8> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(Error::InvalidKeyMaterial(what)),
        }
    };
    let mut key = Zeroizing::new([0u8; 32]);
    for (byte, pair) in key.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Ok(key)
}

/// `Lockbox.attribute_key(table:, attribute:, master_key:)`.
fn attribute_key(master_key_hex: &str, table: &str, attribute: &str) -> Result<Zeroizing<[u8; 32]>> {
    if table.is_empty() || attribute.is_empty() {
        return Err(Error::InvalidArgument("Lockbox key derivation needs a table and an attribute".into()));
    }
    let master = decode_hex_key(master_key_hex, "a Lockbox master key must be 64 hex digits")?;
    let info = [&[0xB4u8; 32][..], attribute.as_bytes()].concat();
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<Sha384>::new(Some(table.as_bytes()), master.as_ref())
        .expand(&info, key.as_mut())
        .map_err(|_| Error::InvalidKeyMaterial("HKDF output length"))?;
    Ok(key)
}

/// Strict standard base64 with padding, at least `min` decoded bytes; no allocation.
fn is_strict_base64(value: &[u8], min: usize) -> bool {
    if !value.len().is_multiple_of(4) {
        return false;
    }
    let body = value.strip_suffix(b"==").or_else(|| value.strip_suffix(b"=")).unwrap_or(value);
    value.len() / 4 * 3 - (value.len() - body.len()) >= min
        && body.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

impl LegacyFormat for LockboxFormat {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn recognizes(&self, value: &[u8]) -> bool {
        (value.is_empty() && self.padding.is_none())
            || if self.binary {
                value.len() >= NONCE + TAG
            } else {
                is_strict_base64(value, NONCE + TAG) && !fernet::has_signature(value)
            }
    }

    fn decryptor(&self) -> LegacyDecryptor<'_> {
        LegacyDecryptor::Blocking(self)
    }
}

impl BlockingLegacyDecrypt for LockboxFormat {
    fn decrypt_one(&self, value: &LegacyValue<'_>, _at: Timestamp) -> Result<Plaintext> {
        if value.bytes.is_empty() && self.padding.is_none() {
            // Lockbox stores the empty string as is.
            return Ok(Plaintext::new(Vec::new()));
        }
        let decoded;
        let raw = if self.binary {
            value.bytes
        } else {
            decoded = decode_base64(&STANDARD, Self::NAME, value.bytes)?;
            &decoded[..]
        };
        if raw.len() < NONCE + TAG {
            return Err(malformed(Self::NAME, "value shorter than nonce and tag"));
        }
        let aad = self.associated_data(value)?;
        let (nonce, rest) = raw.split_at(NONCE);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG);
        let nonce = aes_gcm::aead::Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| Error::Decrypt)?;
        let tag = aes_gcm::aead::Tag::<Aes256Gcm>::try_from(tag).map_err(|_| Error::Decrypt)?;
        for key in &self.keys {
            let mut buf = Plaintext::new(ciphertext.to_vec());
            if key.decrypt_inout_detached(&nonce, &aad, buf.0.as_mut_slice().into(), &tag).is_ok() {
                self.unpad(&mut buf)?;
                return Ok(buf);
            }
        }
        Err(Error::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_are_checked() {
        assert!(decode_hex_key(&"ab".repeat(32), "x").is_ok());
        assert!(decode_hex_key(&"AB".repeat(32), "x").is_ok());
        assert!(decode_hex_key(&"ab".repeat(31), "x").is_err());
        assert!(decode_hex_key(&"zz".repeat(32), "x").is_err());
        assert!(decode_hex_key("é", "x").is_err());
    }

    #[test]
    fn debug_shows_no_key() {
        let f = LockboxFormat::new(&"ab".repeat(32)).expect("key");
        let shown = format!("{f:?}");
        assert!(!shown.contains("ab"), "{shown}");
    }

    #[test]
    fn master_key_derivation_matches_lockbox() {
        // ruby: Lockbox.attribute_key(table: "users", attribute: "email_ciphertext", master_key: "1" * 64)
        let key = attribute_key(&"1".repeat(64), "users", "email_ciphertext").expect("derive");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "6941b36fe3ba611fc9a4274bec047660e8f997d3e94b7a03a01f19d37b6297b8");
    }

    #[test]
    fn strict_base64_shape() {
        assert!(is_strict_base64(&[b'A'; 40], 28));
        assert!(!is_strict_base64(&[b'A'; 36], 28));
        assert!(!is_strict_base64(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-_", 28));
        assert!(is_strict_base64(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", 27));
    }
}

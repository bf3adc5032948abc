//! Column types: keywheel values as sqlx reads and writes them, the header
//! checked on the way in.

use std::fmt;

use keywheel_core::{FormatError, ValueInfo, parse};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

/// Why a column value is not a keywheel value: the typed
/// [`FormatError`] of [`keywheel_core::parse`]. It is the source of the
/// [`sqlx::Error::ColumnDecode`] a query returns for such a row
/// (`error.source()` downcasts to it).
pub type ValueError = FormatError;

/// A keywheel value (ciphertext, signature or blind index tag) as stored in a
/// `bytea` column: normally the binary form; whatever
/// [`keywheel_core::parse`] accepts (a text form stored as bytes too).
///
/// Implements sqlx's [`Type`], [`Encode`] and [`Decode`] for Postgres
/// (`bytea`, and `bytea[]` through [`PgHasArrayType`]): decoding checks the
/// header without any key, so `SELECT email … ` into an `Encrypted` fails
/// with a [`ValueError`] for a value keywheel did not write, before any
/// decryption. Its `Debug` shows the header only.
///
/// ```
/// use keywheel_core::{Algorithm, Context, Form, KeyMaterial, KeyState, Keyring, KeyringId, Purpose};
/// use keywheel_sqlx::{Encrypted, ValueError};
///
/// let ring = Keyring::builder(KeyringId::new("acme", Purpose::Database)?)
///     .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate()?)
///     .build()?;
/// let value = Encrypted::new(ring.encrypt(b"ann@example.org", &Context::field("users", "email", "42"))?)?;
/// assert_eq!((value.info().form, value.info().version.get()), (Form::Binary, 1));
/// assert!(matches!(Encrypted::new(b"plain text".to_vec()), Err(ValueError::BadMagic)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Encrypted {
    bytes: Vec<u8>,
    info: ValueInfo,
}

impl Encrypted {
    /// A stored value, if [`keywheel_core::parse`] accepts it.
    pub fn new(bytes: Vec<u8>) -> Result<Self, ValueError> {
        let info = parse(&bytes)?;
        Ok(Encrypted { bytes, info })
    }

    /// What its header says: form, algorithm, key version, lengths.
    pub fn info(&self) -> ValueInfo {
        self.info
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The stored bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl AsRef<[u8]> for Encrypted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl TryFrom<Vec<u8>> for Encrypted {
    type Error = ValueError;
    fn try_from(bytes: Vec<u8>) -> Result<Self, ValueError> {
        Encrypted::new(bytes)
    }
}

impl fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_value(f, "Encrypted", &self.info)
    }
}

/// A keywheel value as stored in a `text` or `varchar` column: normally the
/// text form `kw:v{N}:{base64}`; whatever [`keywheel_core::parse`] accepts.
///
/// Implements sqlx's [`Type`], [`Encode`] and [`Decode`] for Postgres
/// (`text`, accepting `varchar` too, and `text[]`), checking the header on
/// decode like [`Encrypted`]. Its `Debug` shows the header only.
///
/// ```
/// use keywheel_core::{Algorithm, Context, Form, KeyMaterial, KeyState, Keyring, KeyringId, Purpose};
/// use keywheel_sqlx::{EncryptedText, ValueError};
///
/// let ring = Keyring::builder(KeyringId::new("acme", Purpose::Token)?)
///     .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate()?)
///     .build()?;
/// let token = EncryptedText::new(ring.encrypt_text(b"s3cret", &Context::field("users", "api_token", "42"))?)?;
/// assert!(token.as_str().starts_with("kw:v1:"));
/// assert_eq!(token.info().form, Form::Text);
/// assert!(matches!(EncryptedText::new("kw:v2:AAAA".into()), Err(ValueError::Truncated { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptedText {
    text: String,
    info: ValueInfo,
}

impl EncryptedText {
    /// A stored value, if [`keywheel_core::parse`] accepts it.
    pub fn new(text: String) -> Result<Self, ValueError> {
        let info = parse(text.as_bytes())?;
        Ok(EncryptedText { text, info })
    }

    /// What its header says: form, algorithm, key version, lengths.
    pub fn info(&self) -> ValueInfo {
        self.info
    }

    /// The stored text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The stored text, owned.
    pub fn into_string(self) -> String {
        self.text
    }
}

impl AsRef<[u8]> for EncryptedText {
    fn as_ref(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

impl TryFrom<String> for EncryptedText {
    type Error = ValueError;
    fn try_from(text: String) -> Result<Self, ValueError> {
        EncryptedText::new(text)
    }
}

impl fmt::Debug for EncryptedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_value(f, "EncryptedText", &self.info)
    }
}

/// The header of a value, never its bytes (a blind index tag is
/// deterministic in the plaintext and must not end up in logs).
fn debug_value(f: &mut fmt::Formatter<'_>, name: &str, info: &ValueInfo) -> fmt::Result {
    f.debug_struct(name)
        .field("form", &info.form)
        .field("algorithm", &info.algorithm)
        .field("version", &info.version.get())
        .field("len", &info.binary_len)
        .finish()
}

impl Type<Postgres> for Encrypted {
    fn type_info() -> PgTypeInfo {
        <Vec<u8> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <Vec<u8> as Type<Postgres>>::compatible(ty)
    }
}

impl PgHasArrayType for Encrypted {
    fn array_type_info() -> PgTypeInfo {
        <Vec<u8> as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for Encrypted {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&[u8] as Encode<'_, Postgres>>::encode(self.bytes.as_slice(), buf)
    }
}

impl<'r> Decode<'r, Postgres> for Encrypted {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let bytes = <&[u8] as Decode<'r, Postgres>>::decode(value)?;
        Ok(Encrypted::new(bytes.to_vec())?)
    }
}

impl Type<Postgres> for EncryptedText {
    fn type_info() -> PgTypeInfo {
        <String as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <String as Type<Postgres>>::compatible(ty)
    }
}

impl PgHasArrayType for EncryptedText {
    fn array_type_info() -> PgTypeInfo {
        <String as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for EncryptedText {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as Encode<'_, Postgres>>::encode(self.text.as_str(), buf)
    }
}

impl<'r> Decode<'r, Postgres> for EncryptedText {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<'r, Postgres>>::decode(value)?;
        Ok(EncryptedText::new(text.to_owned())?)
    }
}

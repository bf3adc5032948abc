//! Wire format v1 (the [manual](crate::manual#2-wire-format-v1)): header, binary and text forms, the parser.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::Serialize;

use crate::{Algorithm, FormatError, KeyVersion};

/// Magic bytes `kw` at offset 0.
pub const MAGIC: [u8; 2] = *b"kw";
/// Format version byte at offset 2.
pub const FORMAT_V1: u8 = 0x01;
/// Length of the fixed header: magic, format, algorithm, version.
pub const HEADER_LEN: usize = 8;
/// Prefix of the text form.
pub const TEXT_PREFIX: &str = "kw:v";

/// Whether a value is stored as raw bytes or as `kw:v{N}:{base64}` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// Binary form (for `bytea`/`BLOB` columns).
    Binary,
    /// Text form (for `text`/`varchar` columns).
    Text,
}

/// What [`parse`] reads from a stored value without any key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ValueInfo {
    /// Binary or text form.
    pub form: Form,
    /// Format version (1).
    pub format_version: u8,
    /// Algorithm named by the header.
    pub algorithm: Algorithm,
    /// Key version named by the header.
    pub version: KeyVersion,
    /// Length of the binary form in bytes.
    pub binary_len: usize,
    /// Length of the encrypted payload (plaintext length), excluding nonce and tag;
    /// 0 for signatures and blind index tags.
    pub payload_len: usize,
}

/// Parse any stored value, binary or text, and return its form, algorithm and
/// key version without needing a key. Every malformed input is a typed
/// [`FormatError`]; this function never panics.
///
/// ```
/// use keywheel_core::{parse, Form, FormatError};
/// let info = parse(b"kw:v3:a3cBAQAAAAMAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")?;
/// assert_eq!((info.form, info.version.get()), (Form::Text, 3));
/// assert_eq!(parse(b"hello"), Err(FormatError::Truncated { needed: 8, actual: 5 }));
/// # Ok::<(), FormatError>(())
/// ```
pub fn parse(value: &[u8]) -> Result<ValueInfo, FormatError> {
    Ok(decode(value)?.info)
}

/// Just the key version of a stored value, with the same checks as [`parse`].
pub fn version_of(value: &[u8]) -> Result<KeyVersion, FormatError> {
    Ok(decode(value)?.info.version)
}

/// A value decoded to its binary form (borrowed for binary input, decoded for text).
pub(crate) struct Decoded<'a> {
    pub(crate) info: ValueInfo,
    pub(crate) bytes: std::borrow::Cow<'a, [u8]>,
}

impl Decoded<'_> {
    pub(crate) fn header(&self) -> &[u8] {
        &self.bytes[..HEADER_LEN]
    }
    pub(crate) fn nonce(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..HEADER_LEN + self.info.algorithm.nonce_len()]
    }
    /// Ciphertext followed by the tag.
    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN + self.info.algorithm.nonce_len()..]
    }
}

pub(crate) fn decode(value: &[u8]) -> Result<Decoded<'_>, FormatError> {
    if value.len() >= 3 && value[..2] == MAGIC && value[2] == b':' {
        decode_text(value)
    } else {
        let info = parse_binary(value, Form::Binary)?;
        Ok(Decoded { info, bytes: std::borrow::Cow::Borrowed(value) })
    }
}

fn decode_text(value: &[u8]) -> Result<Decoded<'static>, FormatError> {
    let rest =
        value.strip_prefix(TEXT_PREFIX.as_bytes()).ok_or(FormatError::MalformedText("expected the prefix kw:v"))?;
    let colon =
        rest.iter().position(|&b| b == b':').ok_or(FormatError::MalformedText("expected ':' after the version"))?;
    let digits = &rest[..colon];
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(FormatError::MalformedText("the version must be decimal digits"));
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return Err(FormatError::MalformedText("the version must not have leading zeros"));
    }
    let text_version = digits
        .iter()
        .try_fold(0u32, |acc, d| acc.checked_mul(10)?.checked_add(u32::from(d - b'0')))
        .ok_or(FormatError::MalformedText("the version does not fit in 32 bits"))?;
    let bytes = STANDARD_NO_PAD.decode(&rest[colon + 1..]).map_err(|_| FormatError::Base64)?;
    let info = parse_binary(&bytes, Form::Text)?;
    if info.version.get() != text_version {
        return Err(FormatError::VersionMismatch { text: text_version, binary: info.version.get() });
    }
    Ok(Decoded { info, bytes: std::borrow::Cow::Owned(bytes) })
}

fn parse_binary(value: &[u8], form: Form) -> Result<ValueInfo, FormatError> {
    if value.len() < HEADER_LEN {
        return Err(FormatError::Truncated { needed: HEADER_LEN, actual: value.len() });
    }
    if value[..2] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if value[2] != FORMAT_V1 {
        return Err(FormatError::UnsupportedFormat(value[2]));
    }
    let algorithm = Algorithm::from_id(value[3])?;
    let version = u32::from_be_bytes([value[4], value[5], value[6], value[7]]);
    let version = KeyVersion::new(version).map_err(|_| FormatError::ZeroVersion)?;
    let (needed, longest) = algorithm.binary_len_range();
    if value.len() < needed {
        return Err(FormatError::Truncated { needed, actual: value.len() });
    }
    if let Some(expected) = longest.filter(|longest| value.len() > *longest) {
        return Err(FormatError::TrailingBytes { expected, actual: value.len() });
    }
    Ok(ValueInfo {
        form,
        format_version: FORMAT_V1,
        algorithm,
        version,
        binary_len: value.len(),
        payload_len: if algorithm.is_aead() { value.len() - needed } else { 0 },
    })
}

/// The 8-byte header for an algorithm and version.
pub(crate) fn header(algorithm: Algorithm, version: KeyVersion) -> [u8; HEADER_LEN] {
    let v = version.get().to_be_bytes();
    [MAGIC[0], MAGIC[1], FORMAT_V1, algorithm.id(), v[0], v[1], v[2], v[3]]
}

/// The text form of a binary value: `kw:v{version}:{base64 without padding}`.
pub(crate) fn to_text(version: KeyVersion, binary: &[u8]) -> String {
    let mut out = format!("{TEXT_PREFIX}{}:", version.get());
    STANDARD_NO_PAD.encode_string(binary, &mut out);
    out
}

/// Length prefix and canonical keyring id as they enter the associated data:
/// `u16-BE len(id) ‖ id`. Ids are at most 511 bytes, so the cast cannot truncate.
pub(crate) fn keyring_aad_part(canonical_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + canonical_id.len());
    out.extend_from_slice(&(canonical_id.len() as u16).to_be_bytes());
    out.extend_from_slice(canonical_id.as_bytes());
    out
}

/// Call `f` with the associated data `header ‖ keyring part ‖ context`, built in
/// a stack buffer when it fits (the usual case) so the hot path does not allocate.
pub(crate) fn with_aad<R>(header: &[u8], keyring: &[u8], context: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    const STACK: usize = 384;
    let len = header.len() + keyring.len() + context.len();
    if len <= STACK {
        let mut buf = [0u8; STACK];
        buf[..header.len()].copy_from_slice(header);
        buf[header.len()..header.len() + keyring.len()].copy_from_slice(keyring);
        buf[header.len() + keyring.len()..len].copy_from_slice(context);
        f(&buf[..len])
    } else {
        f(&[header, keyring, context].concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(alg: Algorithm, version: u32, payload: usize) -> Vec<u8> {
        let mut v = header(alg, KeyVersion::new(version).expect("nonzero")).to_vec();
        v.resize(HEADER_LEN + alg.nonce_len() + payload + alg.tag_len(), 0xAB);
        v
    }

    #[test]
    fn parses_binary_and_text() {
        for alg in Algorithm::ALL {
            let payload = if alg.is_aead() { 5 } else { 0 };
            let bin = value(alg, 9, payload);
            let info = parse(&bin).expect("valid");
            assert_eq!((info.form, info.algorithm, info.version.get()), (Form::Binary, alg, 9));
            assert_eq!(info.payload_len, payload);
            let text = to_text(info.version, &bin);
            assert!(text.starts_with("kw:v9:"));
            let info = parse(text.as_bytes()).expect("valid");
            assert_eq!((info.form, info.algorithm, info.version.get()), (Form::Text, alg, 9));
        }
    }

    #[test]
    fn malformed_inputs_are_typed() {
        let good = value(Algorithm::Aes256Gcm, 1, 0);
        assert_eq!(parse(&[]), Err(FormatError::Truncated { needed: 8, actual: 0 }));
        assert_eq!(parse(&good[..20]), Err(FormatError::Truncated { needed: 36, actual: 20 }));
        let mut bad = good.clone();
        bad[0] = b'x';
        assert_eq!(parse(&bad), Err(FormatError::BadMagic));
        let mut bad = good.clone();
        bad[2] = 2;
        assert_eq!(parse(&bad), Err(FormatError::UnsupportedFormat(2)));
        let mut bad = good.clone();
        bad[3] = 0x05;
        assert_eq!(parse(&bad), Err(FormatError::UnknownAlgorithm(5)));
        let mut bad = good.clone();
        bad[4..8].fill(0);
        assert_eq!(parse(&bad), Err(FormatError::ZeroVersion));
        let text = to_text(KeyVersion::FIRST, &good);
        let lying = text.replacen("kw:v1:", "kw:v2:", 1);
        assert_eq!(parse(lying.as_bytes()), Err(FormatError::VersionMismatch { text: 2, binary: 1 }));
        assert!(matches!(parse(b"kw:v01:AAAA"), Err(FormatError::MalformedText(_))));
        assert!(matches!(parse(b"kw:v99999999999:AAAA"), Err(FormatError::MalformedText(_))));
        assert!(matches!(parse(b"kw:x1:AAAA"), Err(FormatError::MalformedText(_))));
        assert!(matches!(parse(b"kw:v1"), Err(FormatError::MalformedText(_))));
        assert_eq!(parse(b"kw:v1:!!"), Err(FormatError::Base64));
        assert_eq!(parse(format!("{text}=").as_bytes()), Err(FormatError::Base64));
        let mut sig = value(Algorithm::HmacSha256, 1, 0);
        sig.push(0);
        assert!(matches!(parse(&sig), Err(FormatError::TrailingBytes { .. })));
        // Blind index tags: 8 to 32 tag bytes.
        let mut tag = value(Algorithm::BlindIndex, 1, 0);
        assert_eq!(parse(&tag).map(|i| i.binary_len), Ok(16));
        tag.pop();
        assert_eq!(parse(&tag), Err(FormatError::Truncated { needed: 16, actual: 15 }));
        tag.resize(40, 0);
        assert_eq!(parse(&tag).map(|i| i.binary_len), Ok(40));
        tag.push(0);
        assert_eq!(parse(&tag), Err(FormatError::TrailingBytes { expected: 40, actual: 41 }));
    }
}

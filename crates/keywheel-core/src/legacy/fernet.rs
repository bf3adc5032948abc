//! Fernet and MultiFernet (Python `cryptography`, Django encrypted fields).

use std::fmt;

use aes::Aes128;
use aes::cipher::{Array, BlockCipherDecrypt, KeyInit};
use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{BlockingLegacyDecrypt, LegacyDecryptor, LegacyFormat, LegacyValue, decode_base64, malformed};
use crate::{Error, Plaintext, Result, Timestamp};

/// Urlsafe base64, padding optional (Python writes it; some stores strip it).
const URLSAFE: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Version byte ‖ u64 timestamp ‖ IV.
const HEADER: usize = 1 + 8 + 16;
const MAC_LEN: usize = 32;
const BLOCK: usize = 16;
/// The smallest token: header, one ciphertext block (PKCS7 always pads), MAC.
const MIN_TOKEN: usize = HEADER + BLOCK + MAC_LEN;

/// Every Fernet token starts with these characters: the version byte 0x80
/// and the high bytes of the timestamp, zero until the year 4147.
const SIGNATURE: &[u8] = b"gAAAAA";

/// Whether `value` carries a Fernet token's signature: `gAAAAA` and only
/// urlsafe base64 characters. Loose on purpose (a truncated token still has
/// it), so that a damaged token is a Fernet failure, not plaintext.
pub(super) fn has_signature(value: &[u8]) -> bool {
    let body = value.strip_suffix(b"==").or_else(|| value.strip_suffix(b"=")).unwrap_or(value);
    value.starts_with(SIGNATURE) && body.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// One Fernet key: the HMAC-SHA256 signing half and the AES-128 half.
struct FernetKey {
    signing: Zeroizing<[u8; 16]>,
    /// Zeroized on drop (the `aes` crate's `zeroize` feature).
    encryption: Aes128,
}

/// Values encrypted with [Fernet](https://github.com/fernet/spec/blob/master/Spec.md)
/// (Python `cryptography`'s `Fernet` and `MultiFernet`, as used by Django
/// encrypted-field libraries), with one key or a list of keys tried in order
/// (MultiFernet; the list a Django setting such as `FERNET_KEYS` holds).
///
/// A token is urlsafe base64 of `0x80 ‖ u64-BE timestamp ‖ 16-byte IV ‖
/// AES-128-CBC ciphertext (PKCS7) ‖ HMAC-SHA256` over everything before the
/// MAC, under the key `signing key (16 bytes) ‖ encryption key (16 bytes)`.
/// The MAC is checked in constant time before anything is decrypted; a
/// wrong key, a tampered token or bad padding are all the opaque
/// [`Error::Decrypt`]. A token without the structure (truncated, bad base64,
/// wrong version byte) is [`Error::MalformedLegacy`].
///
/// The timestamp is not checked: Fernet's optional TTL limits how old a
/// token may be when read, which a migration of stored data must ignore.
///
/// Recognition: a value starting with `gAAAAA` (the version byte and the
/// zero high bytes of the timestamp) made only of urlsafe base64 characters.
///
/// Keys are held in zeroize-on-drop memory and never printed (`Debug` shows
/// only how many there are).
///
/// ```
/// use keywheel_core::{BlockingLegacyDecrypt, Context, FernetFormat, LegacyDecryptor, LegacyFormat, LegacyValue, Timestamp};
/// // Made once with Python: Fernet(KEY).encrypt(b"hello from django")
/// const KEY: &str = "zIEL3PGhXrKfmjfiFoJUHjpzUz0wIWC-ccEp3Ft-5ZY=";
/// const TOKEN: &str = "gAAAAABrEB0zmayo9G5Xau14n8KYx59c3JXhJZ09_tq1Y6wOQIXkTpvSYTy_GoxZO22sabPqBADLTUT5jlnxEUcojz41-Ys_s1zS73IX2ynEb4TDwUPf6v8=";
/// // MultiFernet: a newer key first, the old one after it.
/// let format = FernetFormat::new(["3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", KEY])?;
/// assert!(format.recognizes(TOKEN.as_bytes()));
/// let LegacyDecryptor::Blocking(d) = format.decryptor() else { unreachable!() };
/// let ctx = Context::empty();
/// let plaintext = d.decrypt_one(&LegacyValue::new(TOKEN.as_bytes(), &ctx), Timestamp::EPOCH)?;
/// assert_eq!(plaintext.as_bytes(), b"hello from django");
/// # Ok::<(), keywheel_core::Error>(())
/// ```
pub struct FernetFormat {
    keys: Vec<FernetKey>,
}

impl fmt::Debug for FernetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FernetFormat").field("keys", &self.keys.len()).finish()
    }
}

impl FernetFormat {
    /// The format's name in reports and configuration.
    pub const NAME: &'static str = "fernet";

    /// Fernet keys as Python and Django settings hold them: urlsafe base64 of
    /// 32 bytes (`Fernet.generate_key()`), tried in the order given (the
    /// MultiFernet order). At least one key; a key that does not decode to 32
    /// bytes is [`Error::InvalidKeyMaterial`]. The caller should wipe its own
    /// copies of the strings.
    pub fn new<K: AsRef<[u8]>>(keys: impl IntoIterator<Item = K>) -> Result<Self> {
        let keys =
            keys.into_iter()
                .map(|k| {
                    let raw =
                        Zeroizing::new(URLSAFE.decode(k.as_ref()).map_err(|_| {
                            Error::InvalidKeyMaterial("a Fernet key must be urlsafe base64 of 32 bytes")
                        })?);
                    Self::key_from_bytes(&raw)
                })
                .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            return Err(Error::InvalidKeyMaterial("Fernet needs at least one key"));
        }
        Ok(FernetFormat { keys })
    }

    /// The keys of [django-fernet-fields](https://github.com/orcasgit/django-fernet-fields):
    /// each entry of its `FERNET_KEYS` setting (by default `[SECRET_KEY]`) is
    /// an arbitrary secret turned into a Fernet key by HKDF-SHA256 with salt
    /// `django-fernet-fields-hkdf-salt` and info `django-fernet-fields`
    /// (`FERNET_USE_HKDF`, its default). Tried in order, like [`new`](Self::new).
    pub fn from_django_fernet_fields<S: AsRef<[u8]>>(secrets: impl IntoIterator<Item = S>) -> Result<Self> {
        Self::hkdf_derived(b"django-fernet-fields", secrets)
    }

    /// Keys derived from arbitrary secrets the way the Django libraries of
    /// the django-fernet-fields family do: HKDF-SHA256, salt `{prefix}-hkdf-salt`,
    /// info `{prefix}`, 32 bytes. `prefix` is `django-fernet-fields` for that
    /// library, `djfernet` for its fork of that name (its `DJFERNET_PREFIX`).
    pub fn hkdf_derived<S: AsRef<[u8]>>(prefix: &[u8], secrets: impl IntoIterator<Item = S>) -> Result<Self> {
        let salt = [prefix, b"-hkdf-salt"].concat();
        let keys = secrets
            .into_iter()
            .map(|secret| {
                let mut okm = Zeroizing::new([0u8; 32]);
                hkdf::Hkdf::<Sha256>::new(Some(&salt), secret.as_ref())
                    .expand(prefix, okm.as_mut())
                    .map_err(|_| Error::InvalidKeyMaterial("HKDF output length"))?;
                Self::key_from_bytes(okm.as_ref())
            })
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            return Err(Error::InvalidKeyMaterial("Fernet needs at least one key"));
        }
        Ok(FernetFormat { keys })
    }

    fn key_from_bytes(raw: &[u8]) -> Result<FernetKey> {
        if raw.len() != 32 {
            return Err(Error::InvalidKeyMaterial("a Fernet key must be urlsafe base64 of 32 bytes"));
        }
        let mut signing = Zeroizing::new([0u8; 16]);
        signing.copy_from_slice(&raw[..16]);
        let encryption =
            Aes128::new_from_slice(&raw[16..]).map_err(|_| Error::InvalidKeyMaterial("Fernet encryption key"))?;
        Ok(FernetKey { signing, encryption })
    }

    /// How many keys are tried.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Check the structure of a decoded token; returns the MAC'd part and the MAC.
    fn split(token: &[u8]) -> Result<(&[u8], &[u8])> {
        if token.len() < MIN_TOKEN {
            return Err(malformed(Self::NAME, "token truncated"));
        }
        if token[0] != 0x80 {
            return Err(malformed(Self::NAME, "unknown Fernet version byte"));
        }
        if !(token.len() - HEADER - MAC_LEN).is_multiple_of(BLOCK) {
            return Err(malformed(Self::NAME, "ciphertext is not a whole number of AES blocks"));
        }
        Ok(token.split_at(token.len() - MAC_LEN))
    }

    /// Try one key: `None` when its MAC does not match (try the next key).
    fn open_with(key: &FernetKey, signed: &[u8], mac: &[u8]) -> Option<Result<Plaintext>> {
        let mut hmac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.signing.as_ref()).ok()?;
        hmac.update(signed);
        let expected = hmac.finalize().into_bytes();
        if !bool::from(expected.as_slice().ct_eq(mac)) {
            return None;
        }
        // CBC decryption in place, in the plaintext's own (wiped on drop) buffer:
        // P[i] = D(C[i]) ^ C[i-1], with C[-1] the IV.
        let (iv, ciphertext) = signed[9..].split_at(BLOCK);
        let mut out = Plaintext::new(ciphertext.to_vec());
        for (i, block) in out.0.chunks_exact_mut(BLOCK).enumerate() {
            let previous = if i == 0 { iv } else { &ciphertext[(i - 1) * BLOCK..i * BLOCK] };
            let Ok(array) = <&mut Array<u8, _>>::try_from(&mut *block) else { return Some(Err(Error::Decrypt)) };
            key.encryption.decrypt_block(array);
            block.iter_mut().zip(previous).for_each(|(b, p)| *b ^= p);
        }
        // PKCS7, checked after the MAC (no padding oracle); a bad padding under a
        // valid MAC means the token was made with the key but malformed: opaque too.
        let pad = usize::from(out.0.last().copied().unwrap_or(0));
        if pad == 0
            || pad > BLOCK
            || pad > out.0.len()
            || out.0[out.0.len() - pad..].iter().any(|&b| usize::from(b) != pad)
        {
            return Some(Err(Error::Decrypt));
        }
        let len = out.0.len() - pad;
        out.0.truncate(len);
        Some(Ok(out))
    }
}

impl LegacyFormat for FernetFormat {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn recognizes(&self, value: &[u8]) -> bool {
        has_signature(value)
    }

    fn decryptor(&self) -> LegacyDecryptor<'_> {
        LegacyDecryptor::Blocking(self)
    }
}

impl BlockingLegacyDecrypt for FernetFormat {
    fn decrypt_one(&self, value: &LegacyValue<'_>, _at: Timestamp) -> Result<Plaintext> {
        let token = decode_base64(&URLSAFE, Self::NAME, value.bytes)?;
        let (signed, mac) = Self::split(&token)?;
        self.keys.iter().find_map(|key| Self::open_with(key, signed, mac)).unwrap_or(Err(Error::Decrypt))
    }
}

//! Per-version key derivation (HKDF-SHA256) and ready-to-use cipher instances.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::Aes256GcmSiv;
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{Algorithm, Error, KeyMaterial, KeyVersion, Result};

/// HKDF salt of the [key derivation](crate::manual#2-wire-format-v1).
pub const KDF_SALT: &[u8] = b"keywheel/v1";

/// The per-version key: `HKDF-SHA256(salt = "keywheel/v1", ikm = material,
/// info = label ‖ alg id ‖ u16-BE len(keyring id) ‖ keyring id ‖ u32-BE version)`.
pub(crate) fn derive_key(
    material: &KeyMaterial,
    algorithm: Algorithm,
    keyring_aad_part: &[u8],
    version: KeyVersion,
) -> Zeroizing<[u8; 32]> {
    let label = algorithm.kdf_label();
    let mut info = Vec::with_capacity(label.len() + 1 + keyring_aad_part.len() + 4);
    info.extend_from_slice(label);
    info.push(algorithm.id());
    info.extend_from_slice(keyring_aad_part);
    info.extend_from_slice(&version.get().to_be_bytes());
    let hk = Hkdf::<Sha256>::new(Some(KDF_SALT), material.expose_secret());
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
    #[allow(clippy::expect_used)]
    hk.expand(&info, okm.as_mut_slice()).expect("32 bytes is a valid HKDF output length");
    okm
}

/// A cipher keyed for one version. The RustCrypto cipher types zeroize their key
/// schedules on drop (their `zeroize` feature); the HMAC key is kept in `Zeroizing`.
pub(crate) enum VersionCipher {
    Aes256Gcm(Box<Aes256Gcm>),
    ChaCha20Poly1305(Box<ChaCha20Poly1305>),
    XChaCha20Poly1305(Box<XChaCha20Poly1305>),
    Aes256GcmSiv(Box<Aes256GcmSiv>),
    HmacSha256(Zeroizing<[u8; 32]>),
}

fn init<C: KeyInit>(key: &[u8; 32]) -> Box<C> {
    // Every algorithm here takes a 32-byte key.
    #[allow(clippy::expect_used)]
    Box::new(C::new_from_slice(key).expect("all keywheel ciphers take 32-byte keys"))
}

impl VersionCipher {
    /// The cipher of a version of a key algorithm; [`Algorithm::BlindIndex`]
    /// names tags, not keys, and is refused.
    pub(crate) fn new(
        material: &KeyMaterial,
        algorithm: Algorithm,
        keyring_aad_part: &[u8],
        version: KeyVersion,
    ) -> Result<Self> {
        let key = derive_key(material, algorithm, keyring_aad_part, version);
        Ok(match algorithm {
            Algorithm::Aes256Gcm => VersionCipher::Aes256Gcm(init(&key)),
            Algorithm::ChaCha20Poly1305 => VersionCipher::ChaCha20Poly1305(init(&key)),
            Algorithm::XChaCha20Poly1305 => VersionCipher::XChaCha20Poly1305(init(&key)),
            Algorithm::Aes256GcmSiv => VersionCipher::Aes256GcmSiv(init(&key)),
            Algorithm::HmacSha256 => VersionCipher::HmacSha256(key),
            Algorithm::BlindIndex => {
                return Err(Error::InvalidArgument(format!(
                    "version {version} cannot have the algorithm blind-index: it names index tags, not keys"
                )));
            }
        })
    }

    /// Encrypt `buf` in place; return the 16-byte tag.
    pub(crate) fn seal(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16]> {
        fn go<C: AeadInOut>(c: &C, nonce: &[u8], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16]> {
            let nonce = aes_gcm::aead::Nonce::<C>::try_from(nonce).map_err(|_| Error::Decrypt)?;
            let tag = c
                .encrypt_inout_detached(&nonce, aad, buf.into())
                .map_err(|_| Error::InvalidArgument("plaintext or context too long for the algorithm".into()))?;
            let mut out = [0u8; 16];
            out.copy_from_slice(tag.as_slice());
            Ok(out)
        }
        match self {
            VersionCipher::Aes256Gcm(c) => go(c.as_ref(), nonce, aad, buf),
            VersionCipher::ChaCha20Poly1305(c) => go(c.as_ref(), nonce, aad, buf),
            VersionCipher::XChaCha20Poly1305(c) => go(c.as_ref(), nonce, aad, buf),
            VersionCipher::Aes256GcmSiv(c) => go(c.as_ref(), nonce, aad, buf),
            VersionCipher::HmacSha256(_) => Err(Error::WrongValueKind("an HMAC key signs; it does not encrypt")),
        }
    }

    /// Decrypt `buf` in place after checking `tag`; any failure is the opaque [`Error::Decrypt`].
    pub(crate) fn open(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8], tag: &[u8]) -> Result<()> {
        fn go<C: AeadInOut>(c: &C, nonce: &[u8], aad: &[u8], buf: &mut [u8], tag: &[u8]) -> Result<()> {
            let nonce = aes_gcm::aead::Nonce::<C>::try_from(nonce).map_err(|_| Error::Decrypt)?;
            let tag = aes_gcm::aead::Tag::<C>::try_from(tag).map_err(|_| Error::Decrypt)?;
            c.decrypt_inout_detached(&nonce, aad, buf.into(), &tag).map_err(|_| Error::Decrypt)
        }
        match self {
            VersionCipher::Aes256Gcm(c) => go(c.as_ref(), nonce, aad, buf, tag),
            VersionCipher::ChaCha20Poly1305(c) => go(c.as_ref(), nonce, aad, buf, tag),
            VersionCipher::XChaCha20Poly1305(c) => go(c.as_ref(), nonce, aad, buf, tag),
            VersionCipher::Aes256GcmSiv(c) => go(c.as_ref(), nonce, aad, buf, tag),
            VersionCipher::HmacSha256(_) => {
                Err(Error::WrongValueKind("an HMAC key verifies signatures; it does not decrypt"))
            }
        }
    }

    /// HMAC-SHA256 over `data` (only for HMAC versions).
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> Result<[u8; 32]> {
        let VersionCipher::HmacSha256(key) = self else {
            return Err(Error::WrongValueKind("an AEAD key encrypts; it does not sign"));
        };
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.as_slice())
            .map_err(|_| Error::InvalidKeyMaterial("HMAC key"))?;
        for part in parts {
            mac.update(part);
        }
        Ok(mac.finalize().into_bytes().into())
    }
}

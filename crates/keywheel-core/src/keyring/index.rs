//! Blind index tags of a snapshot (see [`BlindIndex`]): under the Active
//! version for writes, under every version that can hold values for lookups.

use super::{Keyring, Slot};
use crate::index::{self, BlindIndex, IndexMac, IndexTerms};
use crate::{Algorithm, Error, KeyMaterial, KeyState, KeyVersion, Result, wire};

/// The keyed HMAC of a version's index key: HKDF with the label `"index"`
/// and the algorithm id `0x11`, so it is never the encryption key.
pub(super) fn index_key(material: &KeyMaterial, keyring_aad_part: &[u8], version: KeyVersion) -> Box<IndexMac> {
    let key = crate::cipher::derive_key(material, Algorithm::BlindIndex, keyring_aad_part, version);
    Box::new(index::index_mac(&key))
}

impl Keyring {
    /// The blind index tag of `plaintext` under the Active version, binary
    /// form: store it beside the encrypted value (in the same write), in the
    /// column that lookups search with [`index_terms`](Self::index_terms).
    ///
    /// Errors: those of [`encrypt`](Self::encrypt) when there is no usable
    /// Active version, [`Error::WrongValueKind`] for a keyring that signs
    /// (HMAC) instead of encrypting, [`Error::NotIndexable`] when the
    /// normalisation refuses the plaintext.
    ///
    /// ```
    /// use keywheel_core::{Algorithm, BlindIndex, KeyMaterial, KeyState, Keyring, KeyringId, Purpose};
    /// let ring = Keyring::builder(KeyringId::new("acme", Purpose::Database)?)
    ///     .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate()?)
    ///     .build()?;
    /// let email = BlindIndex::new("users", "email");
    /// let tag = ring.blind_index(b"ann@example.org", &email)?;
    /// assert_eq!(tag.len(), 8 + 16); // header and a 16-byte tag
    /// assert_eq!(tag, ring.blind_index(b"ann@example.org", &email)?); // deterministic
    /// assert_ne!(tag, ring.blind_index(b"ann@example.org", &BlindIndex::new("admins", "email"))?);
    /// # Ok::<(), keywheel_core::Error>(())
    /// ```
    pub fn blind_index(&self, plaintext: &[u8], index: &BlindIndex) -> Result<Vec<u8>> {
        self.tag_under(self.active_slot()?, index, plaintext)
    }

    /// [`blind_index`](Self::blind_index) in the text form `kw:v{N}:{base64}`
    /// (for text columns).
    pub fn blind_index_text(&self, plaintext: &[u8], index: &BlindIndex) -> Result<String> {
        let tag = self.blind_index(plaintext, index)?;
        let version = self.active_slot()?.summary.version;
        Ok(wire::to_text(version, &tag))
    }

    /// The lookup terms of `plaintext`: its tag under every version that can
    /// still hold values (Pending, Active and Deprecated; not Disabled or
    /// Retired ones), newest first. During a rotation a row's tag is on the
    /// old or the new version; the terms match either, so lookups find every
    /// row throughout. See [`IndexTerms`].
    pub fn index_terms(&self, plaintext: &[u8], index: &BlindIndex) -> Result<IndexTerms> {
        let live: Vec<&Slot> = self
            .slots
            .iter()
            .rev()
            .filter(|s| matches!(s.summary.state, KeyState::Pending | KeyState::Active | KeyState::Deprecated))
            .collect();
        if live.is_empty() {
            // Nothing can hold values: say why, as encrypt would.
            self.active_slot()?;
        }
        let normalized = index.normalization_of().normalize(plaintext)?;
        let tags =
            live.into_iter().map(|slot| self.tag_normalized(slot, index, &normalized)).collect::<Result<Vec<_>>>()?;
        Ok(IndexTerms::new(tags))
    }

    /// The tag of `plaintext` (normalised here) under `slot`'s version: the
    /// rotation engine's path, from the plaintext it decrypted.
    pub(super) fn tag_under(&self, slot: &Slot, index: &BlindIndex, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.tag_normalized(slot, index, &index.normalization_of().normalize(plaintext)?)
    }

    /// The tag of an already normalised plaintext under `slot`'s version.
    fn tag_normalized(&self, slot: &Slot, index: &BlindIndex, normalized: &[u8]) -> Result<Vec<u8>> {
        let mac = slot.index.as_deref().ok_or(match (slot.summary.state, slot.summary.algorithm.is_aead()) {
            (_, false) => Error::WrongValueKind(
                "this keyring signs (HMAC); blind index tags are made by a keyring whose versions encrypt",
            ),
            (KeyState::Disabled, _) => Error::KeyDisabled { version: slot.summary.version },
            _ => Error::KeyRetired { version: slot.summary.version },
        })?;
        index::tag(mac, slot.summary.version, &self.id_aad, index, normalized)
    }
}

//! The runtime keyring: an immutable snapshot of one keyring's versions with
//! ready-to-use ciphers. Encrypt and decrypt are synchronous and allocate only
//! their output.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use subtle::ConstantTimeEq;

use crate::cipher::VersionCipher;
use crate::wire::{self, Form, HEADER_LEN};
use crate::{Algorithm, Context, Error, KeyMaterial, KeyState, KeyVersion, KeyringId, Plaintext, Result};

/// Public view of one version in a snapshot (no key material).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionSummary {
    /// The version number.
    pub version: KeyVersion,
    /// Its lifecycle state.
    pub state: KeyState,
    /// Its algorithm.
    pub algorithm: Algorithm,
}

struct Slot {
    summary: VersionSummary,
    /// `None` exactly when the version is retired (material destroyed).
    cipher: Option<VersionCipher>,
    /// Encryptions under this version in this process; shared with later
    /// snapshots of the same keyring so reloads do not reset the count.
    encryptions: Arc<AtomicU64>,
}

/// An immutable snapshot of one keyring (DESIGN §2).
///
/// Encrypts with the Active version; decrypts with Pending, Active or
/// Deprecated versions. Obtain one from [`Keywheel::keyring`](crate::Keywheel::keyring)
/// (cached, refreshed) or build one directly with [`Keyring::builder`] (tests,
/// tools, known-answer checks).
///
/// ```
/// use keywheel_core::{Algorithm, Context, KeyMaterial, KeyState, Keyring, KeyringId, Purpose};
/// let id = KeyringId::new("acme", Purpose::Token)?;
/// let ring = Keyring::builder(id)
///     .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate()?)
///     .build()?;
/// let ctx = Context::field("users", "oauth_token", "42");
/// let value = ring.encrypt(b"ya29.secret", &ctx)?;
/// assert_eq!(&ring.decrypt(&value, &ctx)?[..], b"ya29.secret");
/// assert!(ring.decrypt(&value, &Context::field("users", "oauth_token", "43")).is_err());
/// # Ok::<(), keywheel_core::Error>(())
/// ```
pub struct Keyring {
    id: KeyringId,
    /// `u16-BE len ‖ canonical id`, precomputed for the associated data.
    id_aad: Vec<u8>,
    generation: u64,
    active: Option<usize>,
    /// Indexed by `version - 1`: versions are dense from 1 (never reused).
    slots: Vec<Slot>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("active", &self.active_version())
            .field("versions", &self.slots.iter().map(|s| s.summary).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Start building a snapshot by hand. Versions are numbered 1, 2, … in the
    /// order they are added.
    pub fn builder(id: KeyringId) -> KeyringBuilder {
        KeyringBuilder { id, generation: 0, versions: Vec::new(), usage_from: None }
    }

    /// The keyring's id.
    pub fn id(&self) -> &KeyringId {
        &self.id
    }

    /// The store generation this snapshot was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The Active version, if any.
    pub fn active_version(&self) -> Option<KeyVersion> {
        self.active.map(|i| self.slots[i].summary.version)
    }

    /// All versions, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = VersionSummary> + '_ {
        self.slots.iter().map(|s| s.summary)
    }

    /// State of one version, if the keyring has it.
    pub fn state_of(&self, version: KeyVersion) -> Option<KeyState> {
        self.slot(version).map(|s| s.summary.state)
    }

    /// Encryptions made under `version` by this process (see the usage-limit policy).
    pub fn encryptions(&self, version: KeyVersion) -> u64 {
        self.slot(version).map_or(0, |s| s.encryptions.load(Ordering::Relaxed))
    }

    fn slot(&self, version: KeyVersion) -> Option<&Slot> {
        self.slots.get(version.get() as usize - 1)
    }

    fn active_slot(&self) -> Result<&Slot> {
        self.active.map(|i| &self.slots[i]).ok_or_else(|| Error::NoActiveVersion { keyring: self.id.clone() })
    }

    /// The cipher for decrypting/verifying a value of `algorithm` under `version`.
    fn reading_cipher(&self, version: KeyVersion, algorithm: Algorithm) -> Result<&VersionCipher> {
        let slot = self.slot(version).ok_or(Error::UnknownKeyVersion { version })?;
        let cipher = slot.cipher.as_ref().ok_or(Error::KeyRetired { version })?;
        if slot.summary.algorithm != algorithm {
            return Err(Error::AlgorithmMismatch { version, expected: slot.summary.algorithm, found: algorithm });
        }
        Ok(cipher)
    }

    fn count_use(slot: &Slot) -> Result<()> {
        let used = slot.encryptions.fetch_add(1, Ordering::Relaxed);
        match slot.summary.algorithm.encryption_limit() {
            Some(limit) if used >= limit => Err(Error::UsageLimitReached { version: slot.summary.version, limit }),
            _ => Ok(()),
        }
    }

    /// Encrypt `plaintext` bound to `context` under the Active version; binary form.
    pub fn encrypt(&self, plaintext: &[u8], context: &Context) -> Result<Vec<u8>> {
        let slot = self.active_slot()?;
        let Some(cipher) = slot.cipher.as_ref() else {
            return Err(Error::KeyRetired { version: slot.summary.version });
        };
        let algorithm = slot.summary.algorithm;
        if !algorithm.is_aead() {
            return Err(Error::WrongValueKind("this keyring signs (HMAC); use sign()"));
        }
        let ctx = context.encoded()?;
        Self::count_use(slot)?;
        let header = wire::header(algorithm, slot.summary.version);
        let nonce_len = algorithm.nonce_len();
        let mut out = Vec::with_capacity(HEADER_LEN + nonce_len + plaintext.len() + algorithm.tag_len());
        out.extend_from_slice(&header);
        out.resize(HEADER_LEN + nonce_len, 0);
        crate::nonce::fill_nonce(&mut out[HEADER_LEN..])?;
        out.extend_from_slice(plaintext);
        let (head, body) = out.split_at_mut(HEADER_LEN + nonce_len);
        let tag = wire::with_aad(&header, &self.id_aad, ctx, |aad| cipher.seal(&head[HEADER_LEN..], aad, body))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Encrypt into the text form `kw:v{N}:{base64}` (for text columns).
    pub fn encrypt_text(&self, plaintext: &[u8], context: &Context) -> Result<String> {
        let binary = self.encrypt(plaintext, context)?;
        // `encrypt` succeeded, so there is an Active version and it wrote this header.
        let version = self.active_slot()?.summary.version;
        Ok(wire::to_text(version, &binary))
    }

    /// Decrypt a value (binary or text form) bound to `context`.
    ///
    /// Errors: [`Error::Format`] for malformed input, [`Error::UnknownKeyVersion`]
    /// and [`Error::KeyRetired`] for versions this snapshot cannot use, and the
    /// opaque [`Error::Decrypt`] for every authentication failure.
    pub fn decrypt(&self, value: &[u8], context: &Context) -> Result<Plaintext> {
        self.open(&wire::decode(value)?, context)
    }

    fn open(&self, decoded: &wire::Decoded<'_>, context: &Context) -> Result<Plaintext> {
        let algorithm = decoded.info.algorithm;
        if !algorithm.is_aead() {
            return Err(Error::WrongValueKind("this value is a signature; use verify()"));
        }
        let cipher = self.reading_cipher(decoded.info.version, algorithm)?;
        let ctx = context.encoded()?;
        let body = decoded.body();
        let (ciphertext, tag) = body.split_at(body.len() - algorithm.tag_len());
        let mut out = Plaintext::new(ciphertext.to_vec());
        wire::with_aad(decoded.header(), &self.id_aad, ctx, |aad| cipher.open(decoded.nonce(), aad, &mut out.0, tag))?;
        Ok(out)
    }

    /// Whether a stored value was written under another version than the
    /// Active one (and so should be re-encrypted). Needs no key.
    pub fn needs_rotation(&self, value: &[u8]) -> Result<bool> {
        let version = wire::version_of(value)?;
        Ok(self.active_version() != Some(version))
    }

    /// Decrypt a value and encrypt it again under the Active version, keeping
    /// its form (binary stays binary, text stays text). The plaintext lives
    /// only in a zeroizing buffer.
    pub fn reencrypt(&self, value: &[u8], context: &Context) -> Result<Vec<u8>> {
        let decoded = wire::decode(value)?;
        let plaintext = self.open(&decoded, context)?;
        match decoded.info.form {
            Form::Binary => self.encrypt(&plaintext, context),
            Form::Text => self.encrypt_text(&plaintext, context).map(String::into_bytes),
        }
    }

    /// Sign `message` bound to `context` with the Active HMAC-SHA256 version.
    /// The signature is `header ‖ 32-byte tag` over
    /// `header ‖ u16-BE len(keyring id) ‖ keyring id ‖ context ‖ message`.
    pub fn sign(&self, message: &[u8], context: &Context) -> Result<Vec<u8>> {
        let slot = self.active_slot()?;
        let Some(cipher) = slot.cipher.as_ref() else {
            return Err(Error::KeyRetired { version: slot.summary.version });
        };
        let header = wire::header(slot.summary.algorithm, slot.summary.version);
        let tag = cipher.mac(&[&header, &self.id_aad, context.encoded()?, message])?;
        Ok([&header[..], &tag].concat())
    }

    /// Verify a signature made by [`Keyring::sign`]; the comparison is constant-time.
    pub fn verify(&self, message: &[u8], signature: &[u8], context: &Context) -> Result<()> {
        let decoded = wire::decode(signature)?;
        if decoded.info.algorithm.is_aead() {
            return Err(Error::WrongValueKind("this value is encrypted; use decrypt()"));
        }
        let cipher = self.reading_cipher(decoded.info.version, decoded.info.algorithm)?;
        let expected = cipher.mac(&[decoded.header(), &self.id_aad, context.encoded()?, message])?;
        if bool::from(expected.ct_eq(decoded.body())) { Ok(()) } else { Err(Error::Decrypt) }
    }
}

/// Builds a [`Keyring`] snapshot; see [`Keyring::builder`].
pub struct KeyringBuilder {
    id: KeyringId,
    generation: u64,
    versions: Vec<(KeyState, Algorithm, Option<KeyMaterial>)>,
    usage_from: Option<Arc<Keyring>>,
}

impl fmt::Debug for KeyringBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringBuilder").field("id", &self.id).finish_non_exhaustive()
    }
}

impl KeyringBuilder {
    /// The store generation to record in the snapshot.
    pub fn generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// Add the next version (1, 2, …) with its state, algorithm and material.
    pub fn version(mut self, state: KeyState, algorithm: Algorithm, material: KeyMaterial) -> Self {
        self.versions.push((state, algorithm, Some(material)));
        self
    }

    /// Add the next version as Retired (no material).
    pub fn retired_version(mut self, algorithm: Algorithm) -> Self {
        self.versions.push((KeyState::Retired, algorithm, None));
        self
    }

    /// Carry the per-version encryption counters over from an earlier snapshot
    /// of the same keyring, so a reload does not reset usage counting.
    pub fn inherit_usage(mut self, previous: Arc<Keyring>) -> Self {
        self.usage_from = Some(previous);
        self
    }

    pub(crate) fn push(&mut self, state: KeyState, algorithm: Algorithm, material: Option<KeyMaterial>) {
        self.versions.push((state, algorithm, material));
    }

    /// Derive every version's key and build the snapshot.
    ///
    /// Errors: more than one Active version, or a live version without material
    /// ([`Error::InvalidArgument`]), or more versions than `u32` can number.
    pub fn build(self) -> Result<Keyring> {
        let id_aad = wire::keyring_aad_part(&self.id.canonical());
        let mut slots = Vec::with_capacity(self.versions.len());
        let mut active = None;
        for (index, (state, algorithm, material)) in self.versions.into_iter().enumerate() {
            let number = u32::try_from(index + 1).map_err(|_| Error::InvalidArgument("too many versions".into()))?;
            let version = KeyVersion::new(number)?;
            let cipher = match (state, material) {
                (KeyState::Retired, _) => None,
                (_, Some(material)) => Some(VersionCipher::new(&material, algorithm, &id_aad, version)),
                (_, None) => {
                    return Err(Error::InvalidArgument(format!("{state} version {version} has no key material")));
                }
            };
            if state == KeyState::Active {
                if active.is_some() {
                    return Err(Error::InvalidArgument("a keyring has at most one Active version".into()));
                }
                active = Some(index);
            }
            let encryptions = self
                .usage_from
                .as_ref()
                .and_then(|prev| prev.slot(version))
                .map(|s| Arc::clone(&s.encryptions))
                .unwrap_or_default();
            slots.push(Slot { summary: VersionSummary { version, state, algorithm }, cipher, encryptions });
        }
        Ok(Keyring { id: self.id, id_aad, generation: self.generation, active, slots })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Purpose;

    fn ring(states: &[KeyState], algorithm: Algorithm) -> Keyring {
        let mut b = Keyring::builder(KeyringId::new("t", Purpose::Token).expect("id"));
        for &s in states {
            b = if s == KeyState::Retired {
                b.retired_version(algorithm)
            } else {
                b.version(s, algorithm, KeyMaterial::generate().expect("rng"))
            };
        }
        b.build().expect("valid")
    }

    #[test]
    fn decrypts_pending_active_deprecated_not_retired_or_unknown() {
        use KeyState::*;
        let full = ring(&[Retired, Deprecated, Active, Pending], Algorithm::Aes256Gcm);
        let ctx = Context::field("t", "c", "1");
        // Build one value per version by activating each in its own snapshot with the same material.
        let v = full.encrypt(b"x", &ctx).expect("encrypt");
        assert_eq!(wire::version_of(&v).expect("parse").get(), 3);
        assert!(!full.needs_rotation(&v).expect("parse"));
        let mut retired = v.clone();
        retired[4..8].copy_from_slice(&1u32.to_be_bytes());
        assert!(matches!(full.decrypt(&retired, &ctx), Err(Error::KeyRetired { version }) if version.get() == 1));
        assert!(full.needs_rotation(&retired).expect("parse"));
        let mut unknown = v.clone();
        unknown[4..8].copy_from_slice(&9u32.to_be_bytes());
        assert!(
            matches!(full.decrypt(&unknown, &ctx), Err(Error::UnknownKeyVersion { version }) if version.get() == 9)
        );
        let mut other = v;
        other[4..8].copy_from_slice(&2u32.to_be_bytes());
        assert!(matches!(full.decrypt(&other, &ctx), Err(Error::Decrypt)));
    }

    #[test]
    fn every_algorithm_round_trips_in_both_forms() {
        for alg in Algorithm::AEAD {
            let r = ring(&[KeyState::Active], alg);
            let ctx = Context::field("t", "c", "1");
            let bin = r.encrypt(b"hello", &ctx).expect("encrypt");
            assert_eq!(bin[3], alg.id());
            assert_eq!(&r.decrypt(&bin, &ctx).expect("decrypt")[..], b"hello");
            let text = r.encrypt_text(b"hello", &ctx).expect("encrypt");
            assert!(text.starts_with("kw:v1:"));
            assert_eq!(&r.decrypt(text.as_bytes(), &ctx).expect("decrypt")[..], b"hello");
            let again = r.reencrypt(text.as_bytes(), &ctx).expect("reencrypt");
            assert!(again.starts_with(b"kw:v1:"));
            assert!(matches!(r.sign(b"m", &ctx), Err(Error::WrongValueKind(_))));
        }
    }

    #[test]
    fn hmac_signatures_verify_and_bind_context() {
        let r = ring(&[KeyState::Active], Algorithm::HmacSha256);
        let ctx = Context::field("api", "req", "1");
        let sig = r.sign(b"GET /", &ctx).expect("sign");
        assert_eq!(sig.len(), 40);
        r.verify(b"GET /", &sig, &ctx).expect("verify");
        assert!(matches!(r.verify(b"GET /x", &sig, &ctx), Err(Error::Decrypt)));
        assert!(matches!(r.verify(b"GET /", &sig, &Context::empty()), Err(Error::Decrypt)));
        assert!(matches!(r.encrypt(b"x", &ctx), Err(Error::WrongValueKind(_))));
    }

    #[test]
    fn no_active_version_and_two_actives() {
        let r = ring(&[KeyState::Pending], Algorithm::Aes256Gcm);
        assert!(matches!(r.encrypt(b"x", &Context::empty()), Err(Error::NoActiveVersion { .. })));
        let id = KeyringId::new("t", Purpose::Token).expect("id");
        let two = Keyring::builder(id)
            .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate().expect("rng"))
            .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate().expect("rng"))
            .build();
        assert!(two.is_err());
    }

    #[test]
    fn counts_encryptions_across_snapshots() {
        let id = KeyringId::new("t", Purpose::Token).expect("id");
        let m = [3u8; 32];
        let first = Arc::new(
            Keyring::builder(id.clone())
                .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&m).expect("32"))
                .build()
                .expect("valid"),
        );
        for _ in 0..5 {
            first.encrypt(b"x", &Context::empty()).expect("encrypt");
        }
        let second = Keyring::builder(id)
            .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&m).expect("32"))
            .inherit_usage(Arc::clone(&first))
            .build()
            .expect("valid");
        second.encrypt(b"x", &Context::empty()).expect("encrypt");
        assert_eq!(second.encryptions(KeyVersion::FIRST), 6);
    }
}

//! The runtime keyring: an immutable snapshot of one keyring's versions with
//! ready-to-use ciphers. Encrypt and decrypt are synchronous and allocate only
//! their output.

use std::fmt;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

mod batch;
mod index;

pub(crate) use batch::BatchItem;

use crate::cipher::VersionCipher;
use crate::observability::{KeyringMeter, VersionMeter};
use crate::usage::{KeyringUsage, UsageCell};
use crate::wire::{self, HEADER_LEN};
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
    /// `None` exactly when the version is retired (material destroyed) or
    /// disabled (material kept in the store, never unwrapped into a snapshot).
    cipher: Option<VersionCipher>,
    /// The keyed HMAC of the version's blind index key: present exactly when
    /// `cipher` is an AEAD cipher (index tags are made by encrypting keyrings).
    index: Option<Box<crate::index::IndexMac>>,
    /// Encryptions under this version: stored as last seen plus counted here
    /// and not yet flushed. Shared with the other snapshots of the same
    /// keyring (and, under a [`Keywheel`](crate::Keywheel), with the instance),
    /// so reloads and invalidation do not reset the count.
    usage: Arc<UsageCell>,
    /// The version's encryption and decryption counters (the
    /// [manual](crate::manual#15-observability-tracing-and-metrics)),
    /// registered when the snapshot is built.
    meter: VersionMeter,
}

/// An immutable snapshot of one keyring (the [manual](crate::manual#1-concepts)).
///
/// Encrypts with the Active version; decrypts with Pending, Active or
/// Deprecated versions (a Disabled version is refused with
/// [`Error::KeyDisabled`], a Retired one with [`Error::KeyRetired`]). Obtain one from [`Keywheel::keyring`](crate::Keywheel::keyring)
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
    /// When the keyring was erased: it then encrypts nothing ([`Error::KeyringErased`]).
    erased_at: Option<crate::Timestamp>,
    /// Indexed by `version - 1`: versions are dense from 1 (never reused).
    slots: Vec<Slot>,
    /// The decryption-failure counters.
    meter: KeyringMeter,
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
        KeyringBuilder {
            id,
            generation: 0,
            versions: Vec::new(),
            usage_from: None,
            usage: None,
            stored: Vec::new(),
            erased_at: None,
            metered: true,
        }
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

    /// Encryptions under `version` as far as this snapshot knows: the count in
    /// the store when its [`Keywheel`](crate::Keywheel) last loaded or flushed
    /// the keyring, plus the encryptions that instance counted since and has
    /// not flushed yet (its own; other processes' unflushed encryptions reach
    /// it with their next flush and its next reload). A snapshot built by hand
    /// with [`Keyring::builder`] counts from zero.
    /// Never lower than the truth as far as this process can know it: see the
    /// [manual](crate::manual), section 3, "Usage limits". This is the count
    /// that [`encrypt`](Self::encrypt) checks against the algorithm's limit.
    pub fn encryptions(&self, version: KeyVersion) -> u64 {
        self.slot(version).map_or(0, |s| s.usage.total())
    }

    fn slot(&self, version: KeyVersion) -> Option<&Slot> {
        self.slots.get(version.get() as usize - 1)
    }

    fn active_slot(&self) -> Result<&Slot> {
        // An erased keyring has no Active version (the builder refuses one), so
        // erasure is only told apart on the way out, not on every encryption.
        self.active.map(|i| &self.slots[i]).ok_or_else(|| match self.erased_at {
            Some(erased_at) => Error::KeyringErased { keyring: self.id.clone(), erased_at },
            None => Error::NoActiveVersion { keyring: self.id.clone() },
        })
    }

    /// When the keyring was erased, if it was: it then encrypts nothing.
    pub fn erased_at(&self) -> Option<crate::Timestamp> {
        self.erased_at
    }

    /// The cipher for decrypting/verifying a value of `algorithm` under `version`.
    fn reading_cipher(&self, version: KeyVersion, algorithm: Algorithm) -> Result<&VersionCipher> {
        let slot = self.slot(version).ok_or(Error::UnknownKeyVersion { version })?;
        let cipher = slot.cipher.as_ref().ok_or(match slot.summary.state {
            KeyState::Disabled => Error::KeyDisabled { version },
            _ => Error::KeyRetired { version },
        })?;
        if slot.summary.algorithm != algorithm {
            return Err(Error::AlgorithmMismatch { version, expected: slot.summary.algorithm, found: algorithm });
        }
        Ok(cipher)
    }

    /// The Active version, ready to encrypt.
    fn sealer(&self) -> Result<Sealer<'_>> {
        let slot = self.active_slot()?;
        let Some(cipher) = slot.cipher.as_ref() else {
            return Err(Error::KeyRetired { version: slot.summary.version });
        };
        let algorithm = slot.summary.algorithm;
        if !algorithm.is_aead() {
            return Err(Error::WrongValueKind("this keyring signs (HMAC); use sign()"));
        }
        Ok(Sealer { slot, cipher, algorithm, header: wire::header(algorithm, slot.summary.version) })
    }

    /// Encrypt `plaintext` bound to `context` under the Active version; binary form.
    ///
    /// One call is one fork-checked nonce operation (one `getpid`, see the
    /// [manual](crate::manual#4-nonces)); to encrypt many values at once, re-encrypt
    /// them with [`reencrypt_many`](Self::reencrypt_many).
    pub fn encrypt(&self, plaintext: &[u8], context: &Context) -> Result<Vec<u8>> {
        let sealer = self.sealer()?;
        let ctx = context.encoded()?;
        let mut quota = Quota::reserve(sealer.slot, 1);
        crate::nonce::protected(|nonces| {
            quota.restart();
            quota.take()?;
            let mut out = sealer.begin(plaintext.len());
            nonces.fill(&mut out[HEADER_LEN..sealer.prefix_len()])?;
            out.extend_from_slice(plaintext);
            let sealed = wire::with_aad(&sealer.header, &self.id_aad, ctx, |aad| sealer.seal(aad, &mut out));
            if sealed.is_err() {
                // `out` holds the plaintext.
                out.zeroize();
            }
            sealed.map(|()| out)
        })?
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
    /// Errors: [`Error::Format`] for malformed input, [`Error::UnknownKeyVersion`],
    /// [`Error::KeyDisabled`] and [`Error::KeyRetired`] for versions this
    /// snapshot cannot use, and the
    /// opaque [`Error::Decrypt`] for every authentication failure.
    pub fn decrypt(&self, value: &[u8], context: &Context) -> Result<Plaintext> {
        let decoded = wire::decode(value).map_err(|e| self.meter.failed(e.into()))?;
        let plaintext = self.open(&decoded, context).map_err(|e| self.meter.failed(e))?;
        self.count_decryption(decoded.info.version);
        Ok(plaintext)
    }

    /// Count a successful decryption under `version` (a stored counter handle:
    /// one atomic add with a metrics recorder installed, a branch without).
    fn count_decryption(&self, version: KeyVersion) {
        if let Some(slot) = self.slot(version) {
            slot.meter.decryptions.increment(1);
        }
    }

    fn open(&self, decoded: &wire::Decoded<'_>, context: &Context) -> Result<Plaintext> {
        let cipher = self.opener(decoded)?;
        let ctx = context.encoded()?;
        let body = decoded.body();
        let (ciphertext, tag) = body.split_at(body.len() - decoded.info.algorithm.tag_len());
        let mut out = Plaintext::new(ciphertext.to_vec());
        wire::with_aad(decoded.header(), &self.id_aad, ctx, |aad| cipher.open(decoded.nonce(), aad, &mut out.0, tag))?;
        Ok(out)
    }

    /// The cipher that decrypts `decoded` (an AEAD value of a usable version).
    fn opener(&self, decoded: &wire::Decoded<'_>) -> Result<&VersionCipher> {
        let algorithm = decoded.info.algorithm;
        if algorithm == Algorithm::BlindIndex {
            return Err(Error::WrongValueKind(
                "this value is a blind index tag, which cannot be decrypted: tags are recomputed from the \
                 encrypted value they are stored beside",
            ));
        }
        if !algorithm.is_aead() {
            return Err(Error::WrongValueKind("this value is a signature; use verify()"));
        }
        self.reading_cipher(decoded.info.version, algorithm)
    }

    /// Whether a stored value was written under another version than the
    /// Active one (and so should be re-encrypted). Needs no key.
    pub fn needs_rotation(&self, value: &[u8]) -> Result<bool> {
        let version = wire::version_of(value)?;
        Ok(self.active_version() != Some(version))
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
        if decoded.info.algorithm != Algorithm::HmacSha256 {
            return Err(Error::WrongValueKind("this value is not a signature (encrypted value or blind index tag)"));
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
    usage: Option<Arc<KeyringUsage>>,
    /// Stored counts by `version - 1`, to seed the counters with.
    stored: Vec<u64>,
    erased_at: Option<crate::Timestamp>,
    /// Whether the snapshot registers metrics (not for a dry run's throwaway keyring).
    metered: bool,
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

    /// Add the next version as Disabled (no material in the snapshot: a
    /// Disabled version decrypts nothing).
    pub fn disabled_version(mut self, algorithm: Algorithm) -> Self {
        self.versions.push((KeyState::Disabled, algorithm, None));
        self
    }

    /// Mark the keyring erased at `at`: the snapshot encrypts nothing
    /// ([`Error::KeyringErased`]) and may have no Active version.
    pub fn erased(mut self, at: crate::Timestamp) -> Self {
        self.erased_at = Some(at);
        self
    }

    /// Carry the per-version encryption counters over from an earlier snapshot
    /// of the same keyring, so a reload does not reset usage counting.
    pub fn inherit_usage(mut self, previous: Arc<Keyring>) -> Self {
        self.usage_from = Some(previous);
        self
    }

    /// Seed the count of `version` with the encryptions already stored for it
    /// (a count is only ever raised).
    pub(crate) fn seed(&mut self, version: KeyVersion, encryptions: u64) {
        let index = version.get() as usize - 1;
        if self.stored.len() <= index {
            self.stored.resize(index + 1, 0);
        }
        self.stored[index] = encryptions;
    }

    pub(crate) fn push(&mut self, state: KeyState, algorithm: Algorithm, material: Option<KeyMaterial>) {
        self.versions.push((state, algorithm, material));
    }

    /// Count in `usage` (a [`Keywheel`](crate::Keywheel)'s counters of this
    /// keyring), which outlives every snapshot; takes precedence over
    /// [`inherit_usage`](Self::inherit_usage).
    pub(crate) fn share_usage(&mut self, usage: Arc<KeyringUsage>) {
        self.usage = Some(usage);
    }

    /// Register no metrics: the snapshot counts nothing in the metrics
    /// (a dry run's keyring, whose Active version is a throwaway).
    pub(crate) fn unmetered(&mut self) {
        self.metered = false;
    }

    /// Derive every version's key and build the snapshot.
    ///
    /// Errors: more than one Active version, or a live version without material
    /// ([`Error::InvalidArgument`]), or more versions than `u32` can number.
    pub fn build(self) -> Result<Keyring> {
        let canonical = self.id.canonical();
        let id_aad = wire::keyring_aad_part(&canonical);
        let mut slots = Vec::with_capacity(self.versions.len());
        let mut active = None;
        for (index, (state, algorithm, material)) in self.versions.into_iter().enumerate() {
            let number = u32::try_from(index + 1).map_err(|_| Error::InvalidArgument("too many versions".into()))?;
            let version = KeyVersion::new(number)?;
            let mut index_mac = None;
            let cipher = match (state, material) {
                // A Disabled version's material is never turned into a cipher.
                (KeyState::Retired | KeyState::Disabled, _) => None,
                (_, Some(material)) => {
                    let cipher = VersionCipher::new(&material, algorithm, &id_aad, version)?;
                    index_mac = algorithm.is_aead().then(|| index::index_key(&material, &id_aad, version));
                    Some(cipher)
                }
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
            let usage = match (&self.usage, &self.usage_from) {
                (Some(shared), _) => shared.cell(version),
                (None, Some(prev)) => prev.slot(version).map(|s| Arc::clone(&s.usage)).unwrap_or_default(),
                (None, None) => Arc::default(),
            };
            usage.seed(self.stored.get(index).copied().unwrap_or(0));
            // Versions without a cipher neither encrypt nor decrypt: no series for them.
            let meter = if self.metered && cipher.is_some() {
                VersionMeter::new(&canonical, version)
            } else {
                VersionMeter::noop()
            };
            let summary = VersionSummary { version, state, algorithm };
            slots.push(Slot { summary, cipher, index: index_mac, usage, meter });
        }
        let meter = if self.metered { KeyringMeter::new(&canonical) } else { KeyringMeter::default() };
        if self.erased_at.is_some() && active.is_some() {
            return Err(Error::InvalidArgument("an erased keyring has no Active version".into()));
        }
        Ok(Keyring {
            id: self.id,
            id_aad,
            generation: self.generation,
            active,
            erased_at: self.erased_at,
            slots,
            meter,
        })
    }
}

/// The Active version, ready to encrypt.
struct Sealer<'a> {
    slot: &'a Slot,
    cipher: &'a VersionCipher,
    algorithm: Algorithm,
    header: [u8; HEADER_LEN],
}

impl Sealer<'_> {
    /// Header and nonce length.
    fn prefix_len(&self) -> usize {
        HEADER_LEN + self.algorithm.nonce_len()
    }

    /// `header ‖ zeroed nonce`, with room for `payload` more bytes and the tag.
    fn begin(&self, payload: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix_len() + payload + self.algorithm.tag_len());
        out.extend_from_slice(&self.header);
        out.resize(self.prefix_len(), 0);
        out
    }

    /// Encrypt `out` after the prefix in place, under the nonce in the prefix,
    /// and append the tag.
    fn seal(&self, aad: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let (head, body) = out.split_at_mut(self.prefix_len());
        let tag = self.cipher.seal(&head[HEADER_LEN..], aad, body)?;
        out.extend_from_slice(&tag);
        Ok(())
    }
}

/// Usage counting (the [manual](crate::manual), section 3, "Usage limits") for
/// one encrypting call: one atomic add reserves a range of the version's
/// counter for all the call's encryptions; each encryption takes the next
/// number of the range (stored count as last seen + unflushed) and is refused
/// from the version's limit on; what was not taken is given back on drop.
/// Counts are exact once the call returns and never too low while it runs.
struct Quota<'a> {
    counter: &'a UsageCell,
    /// The version's encryption counter in the metrics, raised by what was taken.
    metric: &'a metrics::Counter,
    version: KeyVersion,
    limit: Option<u64>,
    base: u64,
    reserved: u64,
    taken: u64,
}

impl<'a> Quota<'a> {
    fn reserve(slot: &'a Slot, n: u64) -> Self {
        let base = if n == 0 { slot.usage.total() } else { slot.usage.reserve(n) };
        Quota {
            counter: &slot.usage,
            metric: &slot.meter.encryptions,
            version: slot.summary.version,
            limit: slot.summary.algorithm.encryption_limit(),
            base,
            reserved: n,
            taken: 0,
        }
    }

    /// Start a new attempt of the call (the previous one was dropped after a
    /// `fork`, its ciphertexts never released).
    fn restart(&mut self) {
        self.taken = 0;
    }

    /// Count one encryption.
    fn take(&mut self) -> Result<()> {
        debug_assert!(self.taken < self.reserved, "more encryptions than reserved");
        let number = self.base + self.taken;
        if let Some(limit) = self.limit
            && number >= limit
        {
            return Err(Error::UsageLimitReached { version: self.version, limit });
        }
        self.taken += 1;
        Ok(())
    }
}

impl Drop for Quota<'_> {
    fn drop(&mut self) {
        let unused = self.reserved.saturating_sub(self.taken);
        if unused > 0 {
            self.counter.give_back(unused);
        }
        if self.taken > 0 {
            self.metric.increment(self.taken);
        }
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
            } else if s == KeyState::Disabled {
                b.disabled_version(algorithm)
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
    fn disabled_versions_refuse_decryption_with_their_own_error_and_erased_keyrings_encrypt_nothing() {
        use KeyState::*;
        let id = KeyringId::new("t", Purpose::Token).expect("id");
        let m = [9u8; 32];
        let before = Keyring::builder(id.clone())
            .version(Active, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&m).expect("32"))
            .build()
            .expect("valid");
        let ctx = Context::field("t", "c", "1");
        let value = before.encrypt(b"x", &ctx).expect("encrypt");
        let sig_ring = ring(&[Disabled, Active], Algorithm::HmacSha256);
        let after = Keyring::builder(id.clone())
            .disabled_version(Algorithm::Aes256Gcm)
            .version(Active, Algorithm::Aes256Gcm, KeyMaterial::generate().expect("rng"))
            .build()
            .expect("valid");
        assert!(matches!(after.decrypt(&value, &ctx), Err(Error::KeyDisabled { version }) if version.get() == 1));
        // Same error whatever the context: no oracle beyond the version number.
        assert!(matches!(after.decrypt(&value, &Context::empty()), Err(Error::KeyDisabled { .. })));
        assert!(matches!(after.reencrypt(&value, &ctx), Err(Error::KeyDisabled { .. })));
        let mut sig = sig_ring.sign(b"m", &ctx).expect("sign");
        sig[4..8].copy_from_slice(&1u32.to_be_bytes());
        assert!(matches!(sig_ring.verify(b"m", &sig, &ctx), Err(Error::KeyDisabled { .. })));

        let erased = Keyring::builder(id.clone())
            .disabled_version(Algorithm::Aes256Gcm)
            .erased(crate::Timestamp::from_millis(5))
            .build()
            .expect("valid");
        assert!(matches!(erased.encrypt(b"x", &ctx), Err(Error::KeyringErased { .. })));
        assert!(matches!(erased.decrypt(&value, &ctx), Err(Error::KeyDisabled { .. })));
        assert_eq!(erased.erased_at(), Some(crate::Timestamp::from_millis(5)));
        let active_and_erased = Keyring::builder(id)
            .version(Active, Algorithm::Aes256Gcm, KeyMaterial::generate().expect("rng"))
            .erased(crate::Timestamp::from_millis(5))
            .build();
        assert!(active_and_erased.is_err());
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

    /// Version 1 Deprecated and version 2 Active, with known material for v1.
    fn rotated_pair() -> (Keyring, Keyring) {
        let id = KeyringId::new("t", Purpose::Token).expect("id");
        let m1 = [5u8; 32];
        let old = Keyring::builder(id.clone())
            .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&m1).expect("32"))
            .build()
            .expect("valid");
        let new = Keyring::builder(id)
            .version(KeyState::Deprecated, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&m1).expect("32"))
            .version(KeyState::Active, Algorithm::XChaCha20Poly1305, KeyMaterial::generate().expect("rng"))
            .build()
            .expect("valid");
        (old, new)
    }

    #[test]
    fn reencrypt_many_matches_reencrypt_value_by_value() {
        let (old, new) = rotated_pair();
        let ctx: Vec<Context> = (0..6).map(|i| Context::field("t", "c", &i.to_string())).collect();
        let values: Vec<Vec<u8>> = vec![
            old.encrypt(b"binary", &ctx[0]).expect("encrypt"),
            old.encrypt_text(b"text", &ctx[1]).expect("encrypt").into_bytes(),
            b"not a value".to_vec(),
            old.encrypt(b"moved", &ctx[0]).expect("encrypt"), // bound to row 0, paired with row 3
            new.encrypt(b"already current", &ctx[4]).expect("encrypt"),
            Vec::new(),
        ];
        let batch: Vec<(&[u8], &Context)> = values.iter().map(Vec::as_slice).zip(&ctx).collect();
        let before = new.encryptions(KeyVersion::new(2).expect("2"));
        let many = new.reencrypt_many(&batch);
        assert_eq!(many.len(), batch.len());
        for ((value, ctx), got) in batch.iter().zip(&many) {
            let one = new.reencrypt(value, ctx);
            match (got, &one) {
                (Ok(a), Ok(b)) => {
                    // Fresh nonces: different bytes, same plaintext, same form.
                    assert_ne!(a, b);
                    assert_eq!(a.starts_with(b"kw:v2:"), b.starts_with(b"kw:v2:"));
                    assert_eq!(new.decrypt(a, ctx).expect("decrypt")[..], new.decrypt(b, ctx).expect("decrypt")[..]);
                    assert!(!new.needs_rotation(a).expect("parse"));
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                other => panic!("batch and single-value results differ: {other:?}"),
            }
        }
        assert_eq!(&new.decrypt(many[1].as_ref().expect("text"), &ctx[1]).expect("decrypt")[..], b"text");
        assert!(matches!(many[2], Err(Error::Format(_))));
        assert!(matches!(many[3], Err(Error::Decrypt)));
        assert!(matches!(many[5], Err(Error::Format(_))));
        // Three successes in the batch and three in the single-value loop: the
        // reservation for the failures was given back.
        assert_eq!(new.encryptions(KeyVersion::new(2).expect("2")) - before, 6);
    }

    #[test]
    fn reencrypt_many_on_a_keyring_that_cannot_encrypt_reports_each_value() {
        let id = KeyringId::new("t", Purpose::Token).expect("id");
        let m = [6u8; 32];
        let active = Keyring::builder(id.clone())
            .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&m).expect("32"))
            .build()
            .expect("valid");
        let pending_only = Keyring::builder(id)
            .version(KeyState::Pending, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&m).expect("32"))
            .build()
            .expect("valid");
        let ctx = Context::field("t", "c", "1");
        let good = active.encrypt(b"x", &ctx).expect("encrypt");
        let results = pending_only.reencrypt_many(&[(&good, &ctx), (&good, &Context::empty()), (b"junk", &ctx)]);
        assert!(matches!(results[0], Err(Error::NoActiveVersion { .. })));
        assert!(matches!(results[1], Err(Error::Decrypt)), "a value that does not decrypt says so first");
        assert!(matches!(results[2], Err(Error::Format(_))));
    }

    #[test]
    fn batch_skips_values_on_the_skip_version() {
        let (old, new) = rotated_pair();
        let ctx = Context::field("t", "c", "1");
        let values = [old.encrypt(b"a", &ctx).expect("encrypt"), new.encrypt(b"b", &ctx).expect("encrypt")];
        let done = new
            .reencrypt_batch(&values, KeyVersion::new(2).ok(), Vec::new(), |v| {
                Some(BatchItem::value(v.as_slice(), &ctx))
            })
            .expect("batch");
        assert_eq!(done.skipped, vec![1]);
        assert!(done.errors.is_empty());
        assert!(!done.values[0].is_empty() && done.values[1].is_empty());
    }

    #[test]
    fn usage_limit_is_enforced_and_unused_reservations_given_back() {
        let (old, new) = rotated_pair();
        let ctx = Context::field("t", "c", "1");
        let value = old.encrypt(b"x", &ctx).expect("encrypt");
        // `old`'s Active version (AES-GCM) two encryptions short of its limit.
        let limit = Algorithm::Aes256Gcm.encryption_limit().expect("GCM has a limit");
        old.slots[0].usage.set_pending(limit - 2);
        let seal = old.sealer().expect("active");
        let mut quota = Quota::reserve(seal.slot, 5);
        let taken: Vec<bool> = (0..5).map(|_| quota.take().is_ok()).collect();
        assert_eq!(taken, [true, true, false, false, false]);
        drop(quota);
        assert_eq!(old.encryptions(KeyVersion::FIRST), limit, "refused encryptions are not counted");
        assert!(matches!(old.encrypt(b"y", &ctx), Err(Error::UsageLimitReached { .. })));
        assert_eq!(old.encryptions(KeyVersion::FIRST), limit);
        // A failed re-encryption (wrong context) gives its reservation back.
        let before = new.encryptions(KeyVersion::new(2).expect("2"));
        assert!(new.reencrypt(&value, &Context::empty()).is_err());
        assert_eq!(new.encryptions(KeyVersion::new(2).expect("2")), before);
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

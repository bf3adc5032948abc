//! The one error type of keywheel, and the typed format errors of the wire parser.

use crate::{KeyState, KeyVersion, KeyringId};

/// Result alias used throughout keywheel.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a stored value is not a well-formed keywheel value (the [wire format](crate::manual#2-wire-format-v1)).
///
/// Returned by [`parse`](crate::parse) and by every call that reads a value.
/// None of these variants carry key material; they only describe bytes that the
/// caller already holds.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The value is shorter than its header or its algorithm's minimum length.
    #[error("value truncated: needs at least {needed} bytes, has {actual}")]
    Truncated {
        /// Minimum length for this value's form and algorithm.
        needed: usize,
        /// Length actually present.
        actual: usize,
    },
    /// The first two bytes are not the magic `kw` (0x6B 0x77).
    #[error("not a keywheel value: bad magic bytes")]
    BadMagic,
    /// The format version byte is not one this build understands.
    #[error("unsupported keywheel format version {0}")]
    UnsupportedFormat(u8),
    /// The algorithm byte is not one of the registered algorithm ids.
    #[error("unknown algorithm id 0x{0:02x}")]
    UnknownAlgorithm(u8),
    /// The key version field is zero (versions start at 1).
    #[error("key version 0 is invalid (versions start at 1)")]
    ZeroVersion,
    /// The text form does not match `kw:v{version}:{base64}`.
    #[error("malformed text form: {0}")]
    MalformedText(&'static str),
    /// The base64 part of the text form does not decode.
    #[error("malformed text form: base64 payload does not decode")]
    Base64,
    /// A signature or blind index tag longer than its algorithm allows.
    #[error("value has {actual} bytes where at most {expected} are allowed")]
    TrailingBytes {
        /// Longest length for this kind of value.
        expected: usize,
        /// Length actually present.
        actual: usize,
    },
    /// The version in the text prefix differs from the one in the binary header.
    #[error("text form says version {text} but the binary header says {binary}")]
    VersionMismatch {
        /// Version written in the `kw:v{N}:` prefix.
        text: u32,
        /// Version in the decoded binary header.
        binary: u32,
    },
}

/// Everything that can go wrong in keywheel.
///
/// The enum is `#[non_exhaustive]`: match the variants you handle and keep a
/// wildcard arm. [`Error::is_retryable`] tells whether the same call may succeed
/// if repeated. No variant ever carries key material, and an authentication
/// failure is a single opaque [`Error::Decrypt`] (no oracle about which check failed).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The value is malformed; see [`FormatError`].
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Authentication failed: wrong key, wrong context, wrong keyring or a
    /// tampered value. Deliberately says nothing more.
    #[error("decryption failed: the value is not authentic for this keyring and context")]
    Decrypt,
    /// A plaintext could not be normalised for a blind index (e.g. bytes that
    /// are not UTF-8 under a text normalisation). Names the normalisation,
    /// never the plaintext.
    #[error("cannot index this plaintext with normalisation {normalization}: {reason}")]
    NotIndexable {
        /// The normalisation's name, e.g. `trim-lowercase/1`.
        normalization: String,
        /// Why, e.g. "the plaintext is not UTF-8".
        reason: &'static str,
    },
    /// The value was written under a version whose material has been destroyed.
    #[error("key version {version} is retired: its key material has been destroyed")]
    KeyRetired {
        /// The retired version named in the value's header.
        version: KeyVersion,
    },
    /// The value was written under a version that is disabled: retired
    /// reversibly, its material kept wrapped in the store until its quarantine
    /// ends, decryption under it refused. Says nothing beyond the version
    /// named in the value's header. An operator can re-enable the version
    /// inside the quarantine ([`Keywheel::enable`](crate::Keywheel::enable)).
    #[error("key version {version} is disabled: decryption under it is refused until it is re-enabled")]
    KeyDisabled {
        /// The disabled version named in the value's header.
        version: KeyVersion,
    },
    /// The value names a version the keyring does not have (even after a reload).
    #[error("unknown key version {version}")]
    UnknownKeyVersion {
        /// The version named in the value's header.
        version: KeyVersion,
    },
    /// The value's algorithm byte differs from the algorithm of its key version.
    #[error("value uses {found} but key version {version} is {expected}")]
    AlgorithmMismatch {
        /// The version named in the value.
        version: KeyVersion,
        /// Algorithm of that key version.
        expected: crate::Algorithm,
        /// Algorithm named in the value's header.
        found: crate::Algorithm,
    },
    /// The operation needs a value of another kind (an AEAD value vs a signature).
    #[error("wrong kind of value: {0}")]
    WrongValueKind(&'static str),
    /// The keyring has no Active version yet, so nothing can be encrypted.
    #[error("keyring {keyring} has no active key version")]
    NoActiveVersion {
        /// The keyring.
        keyring: KeyringId,
    },
    /// A lifecycle transition that [`KeyState`] does not allow.
    #[error("illegal transition of key version {version} from {from} to {to}")]
    IllegalTransition {
        /// The version concerned.
        version: KeyVersion,
        /// Its current state.
        from: KeyState,
        /// The requested state.
        to: KeyState,
    },
    /// The keyring does not exist in the store.
    #[error("keyring {0} not found")]
    KeyringNotFound(KeyringId),
    /// A keyring with this id already exists.
    #[error("keyring {0} already exists")]
    KeyringExists(KeyringId),
    /// The version is not part of the keyring.
    #[error("keyring {keyring} has no version {version}")]
    VersionNotFound {
        /// The keyring.
        keyring: KeyringId,
        /// The missing version.
        version: KeyVersion,
    },
    /// A version with this number already exists (versions are never reused).
    #[error("keyring {keyring} already has version {version}")]
    DuplicateVersion {
        /// The keyring.
        keyring: KeyringId,
        /// The version that exists already.
        version: KeyVersion,
    },
    /// The compare-and-set lost: someone else changed the keyring first.
    /// Reload and retry.
    #[error("keyring {keyring} changed concurrently: expected generation {expected}, found {actual}")]
    GenerationConflict {
        /// The keyring.
        keyring: KeyringId,
        /// Generation the caller based its change on.
        expected: u64,
        /// Generation found in the store.
        actual: u64,
    },
    /// Another holder owns the keyring's lease.
    #[error("keyring {keyring} is leased by {holder} until {expires_at}")]
    LeaseHeld {
        /// The keyring.
        keyring: KeyringId,
        /// Who holds the lease.
        holder: String,
        /// When the lease expires unless renewed.
        expires_at: crate::Timestamp,
    },
    /// The lease presented is no longer the current one (expired and taken over, or released).
    #[error("lease on keyring {keyring} was lost")]
    LeaseLost {
        /// The keyring.
        keyring: KeyringId,
    },
    /// The keyring id is not in canonical form (the [wire format](crate::manual#2-wire-format-v1)).
    #[error("invalid keyring id: {0}")]
    InvalidKeyringId(&'static str),
    /// A context is not encodable (duplicate name, over-long name or value).
    #[error("invalid context: {0}")]
    InvalidContext(&'static str),
    /// Caller-supplied key material is unusable (e.g. not 32 bytes).
    #[error("invalid key material: {0}")]
    InvalidKeyMaterial(&'static str),
    /// Key material is wrapped under a KEK with another id than the one configured.
    #[error("key is wrapped under KEK {found}, but the configured KEK is {expected}")]
    KekMismatch {
        /// Id of the configured KEK.
        expected: String,
        /// Id recorded with the wrapped key.
        found: String,
    },
    /// The configured master key is not the one the keys were wrapped with
    /// (the key check value does not match). Reported once per load, before any
    /// key is unwrapped. Names both key check values (one-way fingerprints,
    /// safe to show), so an operator can tell which master key opens the store.
    #[error(
        "wrong master key for KEK {kek_id}: the stored keys need the master key with key check value \
         {expected_key_check}, the given master key has {}",
        given_key_checks.join(", ")
    )]
    #[non_exhaustive]
    WrongMasterKey {
        /// Id of the KEK whose master key is wrong.
        kek_id: String,
        /// Key check value recorded with the wrapped key: that of the master key that opens it.
        expected_key_check: String,
        /// Key check values of the master keys that were tried (several for a
        /// [`KekRing`](crate::KekRing)), none of them the expected one.
        given_key_checks: Vec<String>,
    },
    /// A KEK could not be used (configuration, KMS failure, unwrap failure).
    #[error("key-encryption key {kek_id}: {message}")]
    Kek {
        /// The KEK.
        kek_id: String,
        /// What went wrong (never key bytes).
        message: String,
        /// Whether repeating the call may succeed (e.g. a KMS timeout).
        retryable: bool,
    },
    /// The KEK's KMS or HSM cannot be reached, timed out or is overloaded.
    /// Retryable: snapshots already loaded keep serving (up to
    /// [`KeywheelBuilder::kek_outage_grace`](crate::KeywheelBuilder::kek_outage_grace)
    /// past their refresh), and the next load retries with backoff. See the
    /// [manual](crate::manual#kms-and-hsm-master-keys).
    #[error("key-encryption key {kek_id} is unavailable: {message} (retryable; loaded snapshots keep working)")]
    KekUnavailable {
        /// The KEK.
        kek_id: String,
        /// What failed (never key bytes).
        message: String,
    },
    /// The KMS or HSM refused this process the use of the KEK (missing
    /// permission, failed login). Not retryable until the access is granted.
    #[error("key-encryption key {kek_id}: access denied: {message}; hint: {hint}")]
    KekAccessDenied {
        /// The KEK.
        kek_id: String,
        /// What the KMS or HSM said (never key bytes).
        message: String,
        /// What to grant or fix.
        hint: String,
    },
    /// The KEK exists but is disabled (or scheduled for deletion) in its KMS
    /// or HSM. Not retryable until an operator enables it again.
    #[error("key-encryption key {kek_id} is disabled: {message}; hint: {hint}")]
    KekDisabled {
        /// The KEK.
        kek_id: String,
        /// What the KMS or HSM said (never key bytes).
        message: String,
        /// How to enable it again.
        hint: String,
    },
    /// The key version reached its safe encryption limit in this process
    /// (2^32 for random 96-bit nonces); rotate the keyring.
    #[error("key version {version} reached its encryption limit of {limit}; rotate the keyring")]
    UsageLimitReached {
        /// The exhausted version.
        version: KeyVersion,
        /// The limit.
        limit: u64,
    },
    /// The operating system's random number generator failed.
    #[error("the OS random number generator failed")]
    Rng,
    /// A backend (key store, record source, audit sink) failed.
    #[error("{backend}: {message}")]
    Backend {
        /// Which backend, e.g. `"postgres key store"`.
        backend: &'static str,
        /// What went wrong.
        message: String,
        /// Whether repeating the call may succeed.
        retryable: bool,
    },
    /// The audit sink refused the event; the operation it recorded did not complete
    /// (keywheel fails closed).
    #[error("audit sink failed: {0}")]
    Audit(String),
    /// Another rotation of this keyring is running or unfinished.
    #[error("a rotation of keyring {keyring} is in progress ({detail})")]
    RotationInProgress {
        /// The keyring.
        keyring: KeyringId,
        /// Who holds it, or which job to resume.
        detail: String,
        /// `true`: someone holds the keyring's lease right now (wait for it);
        /// `false`: an unfinished job waits for a resume.
        running: bool,
    },
    /// The rotation was asked for on the assumption that `expected` is Active,
    /// but another rotation already replaced it (e.g. by another scheduler instance).
    #[error("keyring {keyring} was already rotated: {active:?} is active, not {expected:?}")]
    AlreadyRotated {
        /// The keyring.
        keyring: KeyringId,
        /// The Active version the caller expected.
        expected: Option<KeyVersion>,
        /// The Active version found.
        active: Option<KeyVersion>,
    },
    /// Retirement refused: values (or unresolved job failures) still use the version.
    #[error("retirement of {version} refused: {remaining} values still use it")]
    RetirementRefused {
        /// The version.
        version: KeyVersion,
        /// Values (and failed values) still on it.
        remaining: u64,
    },
    /// Retirement refused: the grace period has not ended.
    #[error("retirement of {version} refused: its grace period ends at {until}")]
    GracePeriodNotOver {
        /// The version.
        version: KeyVersion,
        /// When the grace period ends.
        until: crate::Timestamp,
    },
    /// Rollback refused: the policy's rollback window has closed.
    #[error("rollback of keyring {keyring} refused: the rollback window closed at {closed_at}")]
    RollbackWindowClosed {
        /// The keyring.
        keyring: KeyringId,
        /// When the window closed.
        closed_at: crate::Timestamp,
    },
    /// Rollback refused: there is no Deprecated version to return to (none yet, or retired).
    #[error("rollback of keyring {keyring} refused: no deprecated version to return to")]
    NothingToRollBack {
        /// The keyring.
        keyring: KeyringId,
    },

    /// A version flagged compromised (by an emergency rotation) can never be
    /// Active again: not by rollback, not by a direct activation.
    #[error("key version {version} of keyring {keyring} is flagged compromised and can never become active again")]
    CompromisedVersion {
        /// The keyring.
        keyring: KeyringId,
        /// The compromised version.
        version: KeyVersion,
    },

    /// A rollback that would not undo the most recent rotation (a second
    /// rollback, or a re-activation of another version).
    #[error("rollback of keyring {keyring} refused: {reason}")]
    RollbackRefused {
        /// The keyring.
        keyring: KeyringId,
        /// Why, with what to do instead.
        reason: String,
    },

    /// Retirement refused because no registered record source covers the
    /// keyring: nothing could prove the version unused. Register the sources
    /// that hold the keyring's values, or force the retirement with a reason.
    #[error(
        "retirement of {version} of keyring {keyring} refused: no registered record source covers this keyring, so nothing proves the version unused"
    )]
    RetirementUnproven {
        /// The keyring.
        keyring: KeyringId,
        /// The version.
        version: KeyVersion,
    },

    /// A forced operation needs a non-empty reason.
    #[error("a forced {0} needs a reason (it is audited)")]
    ReasonRequired(&'static str),
    /// A keyring record failed its integrity check: it carries no seal, or its
    /// lifecycle fields (states, flags, algorithms, wrapped keys, timestamps) do
    /// not match the seal made under the KEK's integrity key. The record was
    /// changed outside keywheel (or predates record authentication); nothing
    /// was written. Not retryable.
    #[error("keyring {keyring} failed its integrity check: {detail}")]
    RecordTampered {
        /// The keyring.
        keyring: KeyringId,
        /// What did not match (never key bytes).
        detail: String,
    },
    /// Re-enabling refused: the version's quarantine has ended, so its
    /// destruction can no longer be undone (the scheduler destroys it, or did).
    #[error("key version {version} of keyring {keyring} cannot be re-enabled: its quarantine ended at {ended_at}")]
    QuarantineOver {
        /// The keyring.
        keyring: KeyringId,
        /// The disabled version.
        version: KeyVersion,
        /// When the quarantine ended.
        ended_at: crate::Timestamp,
    },
    /// Re-enabling refused: only a Disabled version can be re-enabled.
    #[error("key version {version} of keyring {keyring} is {state}, not disabled: there is nothing to re-enable")]
    NotDisabled {
        /// The keyring.
        keyring: KeyringId,
        /// The version.
        version: KeyVersion,
        /// Its current state.
        state: KeyState,
    },
    /// The keyring was erased (crypto-shredded): every version was retired
    /// at once, so nothing encrypts under it and no version is added or
    /// activated again.
    #[error("keyring {keyring} was erased at {erased_at}: nothing encrypts under it any more")]
    KeyringErased {
        /// The keyring.
        keyring: KeyringId,
        /// When it was erased.
        erased_at: crate::Timestamp,
    },
    /// No such job.
    #[error("rotation job {0} not found")]
    JobNotFound(String),
    /// An argument outside its allowed range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A value recognised as a legacy format (the
    /// [migration of legacy data](crate::manual#14-migrating-legacy-data)) is
    /// malformed: truncated, bad base64, wrong structure. Describes only the
    /// bytes the caller holds; an authentication failure is [`Error::Decrypt`].
    #[error("malformed {format} value: {reason}")]
    MalformedLegacy {
        /// The legacy format's name, e.g. `"fernet"`.
        format: String,
        /// What is wrong with the value.
        reason: &'static str,
    },
    /// A plaintext value was met after the end date of its column's
    /// plaintext acceptance ([`PlaintextFormat`](crate::PlaintextFormat)):
    /// from then on plaintext is a failure again.
    #[error("plaintext is no longer accepted: its acceptance ended at {until}")]
    PlaintextNotAccepted {
        /// The end date that passed.
        until: crate::Timestamp,
    },
}

impl Error {
    /// Whether repeating the same call may succeed without any other change:
    /// lost compare-and-set races, held leases, transient backend or KMS faults.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::GenerationConflict { .. } | Error::LeaseHeld { .. } => true,
            Error::Backend { retryable, .. } | Error::Kek { retryable, .. } => *retryable,
            Error::KekUnavailable { .. } => true,
            _ => false,
        }
    }

    /// A stable, snake_case name of the variant (`"decrypt"`,
    /// `"unknown_key_version"`, `"retirement_refused"` …): what keywheel's
    /// trace events and the `reason` label of its metrics carry instead of
    /// the message, which may name holders, backends' messages or other
    /// details (see the [manual](crate::manual#15-observability-tracing-and-metrics)).
    /// Never changes for a variant once released.
    ///
    /// ```
    /// use keywheel_core::{Error, FormatError};
    /// assert_eq!(Error::Decrypt.kind(), "decrypt");
    /// assert_eq!(Error::from(FormatError::BadMagic).kind(), "format");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Format(_) => "format",
            Error::Decrypt => "decrypt",
            Error::NotIndexable { .. } => "not_indexable",
            Error::KeyRetired { .. } => "key_retired",
            Error::KeyDisabled { .. } => "key_disabled",
            Error::UnknownKeyVersion { .. } => "unknown_key_version",
            Error::AlgorithmMismatch { .. } => "algorithm_mismatch",
            Error::WrongValueKind(_) => "wrong_value_kind",
            Error::NoActiveVersion { .. } => "no_active_version",
            Error::IllegalTransition { .. } => "illegal_transition",
            Error::KeyringNotFound(_) => "keyring_not_found",
            Error::KeyringExists(_) => "keyring_exists",
            Error::VersionNotFound { .. } => "version_not_found",
            Error::DuplicateVersion { .. } => "duplicate_version",
            Error::GenerationConflict { .. } => "generation_conflict",
            Error::LeaseHeld { .. } => "lease_held",
            Error::LeaseLost { .. } => "lease_lost",
            Error::InvalidKeyringId(_) => "invalid_keyring_id",
            Error::InvalidContext(_) => "invalid_context",
            Error::InvalidKeyMaterial(_) => "invalid_key_material",
            Error::KekMismatch { .. } => "kek_mismatch",
            Error::WrongMasterKey { .. } => "wrong_master_key",
            Error::Kek { .. } => "kek",
            Error::KekUnavailable { .. } => "kek_unavailable",
            Error::KekAccessDenied { .. } => "kek_access_denied",
            Error::KekDisabled { .. } => "kek_disabled",
            Error::UsageLimitReached { .. } => "usage_limit_reached",
            Error::Rng => "rng",
            Error::Backend { .. } => "backend",
            Error::Audit(_) => "audit",
            Error::RotationInProgress { .. } => "rotation_in_progress",
            Error::AlreadyRotated { .. } => "already_rotated",
            Error::RetirementRefused { .. } => "retirement_refused",
            Error::GracePeriodNotOver { .. } => "grace_period_not_over",
            Error::RollbackWindowClosed { .. } => "rollback_window_closed",
            Error::NothingToRollBack { .. } => "nothing_to_roll_back",
            Error::CompromisedVersion { .. } => "compromised_version",
            Error::RollbackRefused { .. } => "rollback_refused",
            Error::RetirementUnproven { .. } => "retirement_unproven",
            Error::ReasonRequired(_) => "reason_required",
            Error::RecordTampered { .. } => "record_tampered",
            Error::QuarantineOver { .. } => "quarantine_over",
            Error::NotDisabled { .. } => "not_disabled",
            Error::KeyringErased { .. } => "keyring_erased",
            Error::JobNotFound(_) => "job_not_found",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::MalformedLegacy { .. } => "malformed_legacy",
            Error::PlaintextNotAccepted { .. } => "plaintext_not_accepted",
        }
    }

    /// Whether this error is a lifecycle rule refusing the operation (a
    /// precondition, nothing broken): held leases, unfinished jobs, grace
    /// periods, windows, illegal transitions, values still in use. Trace
    /// events and the `outcome` label tell refusals from failures with it.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::IllegalTransition { .. }
                | Error::KeyringExists(_)
                | Error::NoActiveVersion { .. }
                | Error::LeaseHeld { .. }
                | Error::RotationInProgress { .. }
                | Error::AlreadyRotated { .. }
                | Error::RetirementRefused { .. }
                | Error::GracePeriodNotOver { .. }
                | Error::RollbackWindowClosed { .. }
                | Error::NothingToRollBack { .. }
                | Error::CompromisedVersion { .. }
                | Error::RollbackRefused { .. }
                | Error::RetirementUnproven { .. }
                | Error::ReasonRequired(_)
                | Error::QuarantineOver { .. }
                | Error::NotDisabled { .. }
                | Error::KeyringErased { .. }
        )
    }

    /// [`Error::WrongMasterKey`]: the master key of KEK `kek_id`, with key check
    /// value `given`, is not the one (`expected`, as recorded with the wrapped
    /// key) that opens the key. For [`KeyEncryptionKey`](crate::KeyEncryptionKey)
    /// implementations in other crates, which cannot build the variant directly.
    ///
    /// ```
    /// let e = keywheel_core::Error::wrong_master_key("local", "aa11", "bb22");
    /// assert!(e.to_string().contains("key check value aa11, the given master key has bb22"));
    /// ```
    pub fn wrong_master_key(kek_id: impl Into<String>, expected: impl Into<String>, given: impl Into<String>) -> Self {
        Error::WrongMasterKey {
            kek_id: kek_id.into(),
            expected_key_check: expected.into(),
            given_key_checks: vec![given.into()],
        }
    }

    /// A backend error with the given name and message.
    pub fn backend(backend: &'static str, message: impl Into<String>, retryable: bool) -> Self {
        Error::Backend { backend, message: message.into(), retryable }
    }
}

//! Typed audit events, the `AuditSink` trait, and the keyed hash chain.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Algorithm, IntegrityKey, KeyOrigin, KeyVersion, KeyringId, Result, Timestamp};

/// The [`IntegrityKey::mac`] label of audit entry MACs.
pub const AUDIT_MAC_LABEL: &str = "audit-entry";

/// Whether the step an event records succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The step happened.
    Success,
    /// The step was refused by a rule (e.g. retirement with values left).
    Refused,
    /// The step failed (e.g. a lost compare-and-set after the event was written).
    Failed,
}

/// What happened. Key bytes never appear here, only versions and counts.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuditKind {
    /// A keyring was created.
    KeyringCreated {
        /// Its algorithm for new versions.
        algorithm: Algorithm,
    },
    /// A new version was stored as Pending (generated or imported).
    KeyCreated {
        /// The version.
        version: KeyVersion,
        /// Its algorithm.
        algorithm: Algorithm,
        /// Generated or imported.
        origin: KeyOrigin,
    },
    /// A version became Active.
    KeyActivated {
        /// The new Active version.
        version: KeyVersion,
        /// The version it replaced, now Deprecated.
        previous: Option<KeyVersion>,
    },
    /// A version became Deprecated.
    KeyDeprecated {
        /// The version.
        version: KeyVersion,
    },
    /// A version was retired and its material destroyed.
    KeyRetired {
        /// The version.
        version: KeyVersion,
        /// Whether the safety checks were overridden.
        forced: bool,
    },
    /// A version was disabled (retired reversibly): decryption under it is
    /// refused, its material kept wrapped until `destroy_after`.
    KeyDisabled {
        /// The version.
        version: KeyVersion,
        /// Whether the safety checks were overridden.
        forced: bool,
        /// End of its quarantine: when its material may be destroyed.
        destroy_after: Timestamp,
    },
    /// A Disabled version was re-enabled (Deprecated again, decrypting) inside
    /// its quarantine.
    KeyEnabled {
        /// The version.
        version: KeyVersion,
    },
    /// A keyring was erased (crypto-shredding): every version not retired yet
    /// was disabled at once, the Active one included, and nothing encrypts
    /// under the keyring again. The reason is in the event's `reason`.
    KeyringErased {
        /// The versions it disabled.
        versions: Vec<KeyVersion>,
        /// End of their quarantine (equal to the event time when destroyed at once).
        destroy_after: Timestamp,
    },
    /// A retirement was refused.
    RetirementRefused {
        /// The version.
        version: KeyVersion,
        /// Values still using it.
        remaining: u64,
    },
    /// A rotation job started.
    RotationStarted {
        /// The job.
        job_id: String,
        /// Version being rotated away from.
        from: Option<KeyVersion>,
        /// Version being rotated to.
        to: KeyVersion,
        /// Whether this is a dry run.
        dry_run: bool,
    },
    /// Periodic progress of a rotation job.
    RotationProgress {
        /// The job.
        job_id: String,
        /// Values processed so far.
        processed: u64,
        /// Estimated total.
        total: Option<u64>,
    },
    /// A rotation job completed.
    RotationCompleted {
        /// The job.
        job_id: String,
        /// Values examined.
        processed: u64,
        /// Values rewritten.
        rewritten: u64,
        /// Values skipped because the application changed them concurrently.
        skipped: u64,
        /// Values that could not be decrypted.
        failed: u64,
        /// Wall time in milliseconds.
        duration_ms: u64,
    },
    /// A batch of a rotation job migrated legacy values (values in a legacy
    /// format, plaintext included) to keywheel values; one event per
    /// checkpointed batch that migrated any (the
    /// [migration of legacy data](crate::manual#14-migrating-legacy-data)).
    LegacyMigrated {
        /// The job.
        job_id: String,
        /// The record source.
        source: String,
        /// Values rewritten, per legacy format name.
        counts: std::collections::BTreeMap<String, u64>,
    },
    /// A rotation job failed.
    RotationFailed {
        /// The job.
        job_id: String,
        /// Why (never key bytes).
        error: String,
    },
    /// A rollback made an older version Active again.
    Rollback {
        /// The version that was Active.
        from: KeyVersion,
        /// The version that is Active again.
        to: KeyVersion,
    },
    /// An emergency rotation away from a compromised version.
    EmergencyRotation {
        /// The compromised version.
        compromised: KeyVersion,
    },
    /// A policy changed.
    PolicyChanged {
        /// Human-readable summary of the change.
        summary: String,
    },
    /// The key-encryption key was rotated.
    KekRotated {
        /// Id(s) of the KEK(s) the keys were wrapped under, comma-separated.
        from: String,
        /// New KEK id.
        to: String,
        /// Number of versions rewrapped.
        keys: u64,
    },
    /// A durable sink found and set aside damage (e.g. a torn last line) on open.
    LogRecovered {
        /// What was found.
        detail: String,
    },
    /// A keyring record written before record authentication was sealed as it
    /// stood, after an operator's review (the reason says whose).
    KeyringSealed {
        /// Id of the integrity key that sealed it.
        key_id: String,
    },
}

/// One lifecycle event. Deserializing refuses unknown fields (here and in
/// [`AuditKind`]): a stored event with a field keywheel did not write is not
/// an event keywheel recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// When.
    pub at: Timestamp,
    /// Who (the `Keywheel` actor name, an operator, a scheduler instance).
    pub actor: String,
    /// Which keyring, if any.
    pub keyring: Option<KeyringId>,
    /// What.
    pub kind: AuditKind,
    /// Why, when a reason was given (forced retirement, emergency, rollback).
    pub reason: Option<String>,
    /// Ties together the events of one operation or job.
    pub correlation_id: String,
    /// Whether it happened.
    pub outcome: Outcome,
}

/// Receives audit events. Keywheel fails closed: an operation whose event the
/// sink refuses does not take effect (events are recorded before the change
/// they describe; a change that then fails is followed by a `Failed` event).
///
/// Durable sinks chain their entries with [`AuditChain`], authenticating each
/// one with the [`IntegrityKey`] passed to [`record`](Self::record), and expose
/// them through [`entries`](Self::entries) so [`verify_chain`] can check them.
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Record one event durably, authenticated under `key` (the integrity key
    /// of the [`Keywheel`](crate::Keywheel)'s KEK, see
    /// [`KeyEncryptionKey::integrity_key`](crate::KeyEncryptionKey::integrity_key)).
    /// An error fails the operation being audited. A sink must never store or
    /// print the key; [`IntegrityKey::id`] names it in entries.
    async fn record(&self, event: &AuditEvent, key: &IntegrityKey) -> Result<()>;

    /// The chained entries recorded so far, oldest first, or `None` for sinks
    /// that do not keep them (e.g. forwarding to syslog).
    async fn entries(&self) -> Result<Option<Vec<AuditEntry>>> {
        Ok(None)
    }
}

/// A chained audit entry: the event, its sequence number, the previous entry's
/// hash, its own hash (lower-case hex SHA-256, see [`entry_hash`]), and a MAC
/// of that hash under a KEK-derived [`IntegrityKey`].
///
/// The hash chain can be checked by anyone (an auditor without the master
/// key); the MAC makes it keyed: since each hash covers the previous one, the
/// MAC of an entry authenticates the entry and everything before it, and
/// rewriting the log (even re-hashing it consistently) needs the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// 0 for the first entry, +1 per entry.
    pub seq: u64,
    /// Hash of the previous entry (all zeros for the first).
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
    /// [`IntegrityKey::id`] of the key that made [`mac`](Self::mac).
    pub key_id: String,
    /// `HMAC-SHA256` of the hash (its hex text) under the integrity key, label
    /// [`AUDIT_MAC_LABEL`], lower-case hex ([`entry_mac`]).
    pub mac: String,
    /// The event.
    pub event: AuditEvent,
}

impl AuditEntry {
    /// This entry as a chain head (its sequence number and hash).
    pub fn head(&self) -> ChainHead {
        ChainHead { seq: self.seq, hash: self.hash.clone() }
    }
}

/// Hash of the entry before the first one.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `SHA-256("keywheel/audit/v1" ‖ u64-BE seq ‖ prev_hash (hex text) ‖ JSON(event))`, hex.
/// The event's JSON is serde_json's output for [`AuditEvent`], whose field
/// order is fixed, so the hash is reproducible from a stored entry.
pub fn entry_hash(seq: u64, prev_hash: &str, event: &AuditEvent) -> Result<String> {
    let json = serde_json::to_vec(event).map_err(|e| crate::Error::Audit(format!("cannot encode audit event: {e}")))?;
    let mut h = Sha256::new();
    h.update(b"keywheel/audit/v1");
    h.update(seq.to_be_bytes());
    h.update(prev_hash.as_bytes());
    h.update(&json);
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The MAC of an entry whose hash is `hash`: `key.mac_hex(AUDIT_MAC_LABEL, hash)`.
pub fn entry_mac(key: &IntegrityKey, hash: &str) -> String {
    key.mac_hex(AUDIT_MAC_LABEL, hash.as_bytes())
}

/// The last entry of a chain as seen at some point: its sequence number and
/// hash. Anchor it outside the log (a ticket, another system, a printout):
/// a log later found shorter than it, or with another entry at its place,
/// was truncated or rewritten ([`ChainVerifier::expect_head`]).
///
/// Its text form is `SEQ:HASH`, e.g. `41:9f86d0…`.
///
/// ```
/// use keywheel_core::ChainHead;
/// let head: ChainHead = format!("41:{}", "ab".repeat(32)).parse()?;
/// assert_eq!(head.seq, 41);
/// assert_eq!(head.to_string(), format!("41:{}", "ab".repeat(32)));
/// assert!("41".parse::<ChainHead>().is_err());
/// # Ok::<(), keywheel_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChainHead {
    /// Sequence number of the last entry.
    pub seq: u64,
    /// Hash of the last entry (64 lower-case hex digits).
    pub hash: String,
}

impl fmt::Display for ChainHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl FromStr for ChainHead {
    type Err = crate::Error;

    /// Parse `SEQ:HASH` (the hash: 64 hex digits, upper case accepted).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            crate::Error::InvalidArgument(format!(
                "{s:?} is not an audit chain head (expected SEQ:HASH, the hash 64 hex digits)"
            ))
        };
        let (seq, hash) = s.trim().split_once(':').ok_or_else(bad)?;
        let seq = seq.parse::<u64>().map_err(|_| bad())?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(ChainHead { seq, hash: hash.to_ascii_lowercase() })
    }
}

/// The head of a hash chain: appends entries for a durable sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditChain {
    next_seq: u64,
    last_hash: String,
}

impl Default for AuditChain {
    fn default() -> Self {
        AuditChain { next_seq: 0, last_hash: GENESIS_HASH.to_owned() }
    }
}

impl AuditChain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// A chain continuing after `last` (e.g. when a sink reopens its log).
    pub fn after(last: &AuditEntry) -> Self {
        Self::after_head(&last.head())
    }

    /// A chain continuing after the entry whose head is `head`.
    pub fn after_head(head: &ChainHead) -> Self {
        AuditChain { next_seq: head.seq + 1, last_hash: head.hash.clone() }
    }

    /// The head: the last entry committed, `None` for an empty chain.
    pub fn head(&self) -> Option<ChainHead> {
        self.next_seq.checked_sub(1).map(|seq| ChainHead { seq, hash: self.last_hash.clone() })
    }

    /// Chain `event` and authenticate it under `key`; the returned entry is
    /// the next to store. The head only advances through
    /// [`commit`](Self::commit), once the entry is durable.
    pub fn entry(&self, event: AuditEvent, key: &IntegrityKey) -> Result<AuditEntry> {
        let hash = entry_hash(self.next_seq, &self.last_hash, &event)?;
        Ok(AuditEntry {
            seq: self.next_seq,
            prev_hash: self.last_hash.clone(),
            mac: entry_mac(key, &hash),
            key_id: key.id().to_owned(),
            hash,
            event,
        })
    }

    /// Advance the head past `entry` (which [`entry`](Self::entry) produced).
    pub fn commit(&mut self, entry: &AuditEntry) {
        self.next_seq = entry.seq + 1;
        self.last_hash = entry.hash.clone();
    }
}

/// What is wrong at the first bad entry.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChainViolationKind {
    /// The entry's content does not match its hash (edited).
    Altered,
    /// Entries before this one are missing (its sequence number jumps ahead).
    Missing {
        /// The sequence number that should have come here.
        expected_seq: u64,
    },
    /// The entry is out of order (its sequence number goes back or repeats).
    Reordered {
        /// The sequence number that should have come here.
        expected_seq: u64,
    },
    /// The entry's `prev_hash` does not match the previous entry's hash
    /// (the previous entry was replaced, or this one was moved).
    BrokenLink,
    /// The entry's MAC does not verify under the key it names: the entry (or
    /// the chain before it) was rewritten by someone without the key.
    BadMac,
    /// The entry names an integrity key the verifier does not hold, and no
    /// later entry under a known key vouches for it (a log forged under
    /// another key, or cut back to before a KEK rotation).
    UnknownKey {
        /// The key id the entry names.
        key_id: String,
    },
    /// The chain ends before an expected head: entries were deleted from the
    /// end (or the log was wiped). `index` is the number of entries found.
    Truncated {
        /// The sequence number of the expected head.
        expected_seq: u64,
    },
    /// The entry at the expected head's sequence number has another hash:
    /// the log was rewritten or replaced since the head was anchored.
    HeadMismatch {
        /// The hash the expected head has.
        expected_hash: String,
    },
}

impl fmt::Display for ChainViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainViolationKind::Altered => f.write_str("entry altered (its content does not match its hash)"),
            ChainViolationKind::Missing { expected_seq } => {
                write!(f, "entries missing before it (expected seq {expected_seq})")
            }
            ChainViolationKind::Reordered { expected_seq } => {
                write!(f, "entry out of order (expected seq {expected_seq})")
            }
            ChainViolationKind::BrokenLink => f.write_str("entry does not link to the entry before it"),
            ChainViolationKind::BadMac => {
                f.write_str("entry not authenticated (its MAC does not verify: rewritten without the key)")
            }
            ChainViolationKind::UnknownKey { key_id } => {
                write!(f, "entry authenticated under unknown integrity key {key_id} and vouched for by no later entry")
            }
            ChainViolationKind::Truncated { expected_seq } => {
                write!(f, "log ends before the expected head seq {expected_seq} (entries deleted from the end)")
            }
            ChainViolationKind::HeadMismatch { expected_hash } => {
                write!(f, "entry differs from the expected head (expected hash {expected_hash}): log rewritten")
            }
        }
    }
}

/// The first place where a chain fails verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("audit chain broken at entry index {index} (seq {seq}): {kind}")]
pub struct ChainViolation {
    /// 0-based position in the list given to [`verify_chain`] (a file sink adds 1 for a line number).
    pub index: usize,
    /// The sequence number found there ([`ChainViolationKind::Truncated`]:
    /// the expected head's, since no entry is there).
    pub seq: u64,
    /// What is wrong.
    pub kind: ChainViolationKind,
}

/// Verifies a chain of [`AuditEntry`]s: structure always (sequence numbers,
/// hashes, links from seq 0), MACs when given keys, and expected heads.
///
/// * **Structure** needs no key: an auditor without the master key can check
///   that the entries form one chain, but anyone who can write the log can
///   also re-hash it, so structure alone does not prove who wrote it.
/// * **MACs** ([`keys`](Self::keys)): an entry under a known key must carry a
///   valid MAC ([`ChainViolationKind::BadMac`] otherwise). An entry under a
///   key the verifier does not hold (made before a KEK rotation, with a master
///   key since destroyed) is accepted only if a later entry carries a valid
///   MAC under a known key: that MAC covers its hash, which covers every entry
///   before it. The last entries must therefore be under a known key
///   ([`ChainViolationKind::UnknownKey`] otherwise).
/// * **Expected heads** ([`expect_head`](Self::expect_head)): a head seen or
///   anchored earlier must still be in the chain, with the same hash
///   ([`ChainViolationKind::Truncated`], [`ChainViolationKind::HeadMismatch`]).
///
/// ```
/// use keywheel_core::{AuditChain, AuditEvent, AuditKind, ChainVerifier, ChainViolationKind, IntegrityKey, Outcome, Timestamp};
/// let key = IntegrityKey::derive(&[7; 32], b"example");
/// let event = AuditEvent {
///     at: Timestamp::from_millis(0), actor: "ops".into(), keyring: None,
///     kind: AuditKind::PolicyChanged { summary: "interval 30 d".into() },
///     reason: None, correlation_id: "c1".into(), outcome: Outcome::Success,
/// };
/// let mut chain = AuditChain::new();
/// let mut entries = Vec::new();
/// for _ in 0..3 {
///     let e = chain.entry(event.clone(), &key)?;
///     chain.commit(&e);
///     entries.push(e);
/// }
/// let keys = [key];
/// let verifier = ChainVerifier::new().keys(&keys).expect_head(entries[2].head());
/// assert_eq!(verifier.verify(&entries), Ok(3));
/// let v = verifier.verify(&entries[..2]).expect_err("cut");
/// assert_eq!(v.kind, ChainViolationKind::Truncated { expected_seq: 2 });
/// # Ok::<(), keywheel_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ChainVerifier<'a> {
    keys: Option<&'a [IntegrityKey]>,
    heads: Vec<ChainHead>,
}

impl<'a> ChainVerifier<'a> {
    /// A verifier of structure only (no key, no expected head).
    pub fn new() -> Self {
        Self::default()
    }

    /// Also check MACs with these keys (e.g. from
    /// [`KeyEncryptionKey::integrity_keys`](crate::KeyEncryptionKey::integrity_keys)).
    pub fn keys(mut self, keys: &'a [IntegrityKey]) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Also require `head` (seen or anchored earlier) to be in the chain.
    /// May be given several times; each is checked.
    pub fn expect_head(mut self, head: ChainHead) -> Self {
        self.heads.push(head);
        self
    }

    /// Whether MACs are checked (keys were given).
    pub fn checks_macs(&self) -> bool {
        self.keys.is_some()
    }

    /// The expected heads.
    pub fn expected_heads(&self) -> &[ChainHead] {
        &self.heads
    }

    /// Verify a whole chain from its first entry (seq 0). Returns the number
    /// of entries, or the first violation. Without an expected head, a
    /// deleted tail cannot be detected from the entries alone.
    pub fn verify(&self, entries: &[AuditEntry]) -> std::result::Result<u64, ChainViolation> {
        let mut expected_prev = GENESIS_HASH.to_owned();
        // The first entry under an unknown key not yet vouched for by a later one.
        let mut unvouched: Option<usize> = None;
        for (index, e) in entries.iter().enumerate() {
            let expected_seq = index as u64;
            let violation = |kind| ChainViolation { index, seq: e.seq, kind };
            if e.seq > expected_seq {
                // The expected entry further on means entries were moved, not removed.
                let moved = entries[index + 1..].iter().any(|later| later.seq == expected_seq);
                return Err(violation(if moved {
                    ChainViolationKind::Reordered { expected_seq }
                } else {
                    ChainViolationKind::Missing { expected_seq }
                }));
            }
            if e.seq < expected_seq {
                return Err(violation(ChainViolationKind::Reordered { expected_seq }));
            }
            let recomputed =
                entry_hash(e.seq, &e.prev_hash, &e.event).map_err(|_| violation(ChainViolationKind::Altered))?;
            if recomputed != e.hash {
                return Err(violation(ChainViolationKind::Altered));
            }
            if e.prev_hash != expected_prev {
                return Err(violation(ChainViolationKind::BrokenLink));
            }
            if let Some(keys) = self.keys {
                match keys.iter().find(|k| k.id() == e.key_id) {
                    Some(key) if key.verify_hex(AUDIT_MAC_LABEL, e.hash.as_bytes(), &e.mac) => unvouched = None,
                    Some(_) => return Err(violation(ChainViolationKind::BadMac)),
                    None => {
                        unvouched.get_or_insert(index);
                    }
                }
            }
            expected_prev = e.hash.clone();
        }
        if let Some(index) = unvouched {
            let e = &entries[index];
            return Err(ChainViolation {
                index,
                seq: e.seq,
                kind: ChainViolationKind::UnknownKey { key_id: e.key_id.clone() },
            });
        }
        for head in &self.heads {
            match usize::try_from(head.seq).ok().and_then(|i| entries.get(i).map(|e| (i, e))) {
                None => {
                    return Err(ChainViolation {
                        index: entries.len(),
                        seq: head.seq,
                        kind: ChainViolationKind::Truncated { expected_seq: head.seq },
                    });
                }
                Some((index, e)) if e.hash != head.hash => {
                    return Err(ChainViolation {
                        index,
                        seq: e.seq,
                        kind: ChainViolationKind::HeadMismatch { expected_hash: head.hash.clone() },
                    });
                }
                Some(_) => {}
            }
        }
        Ok(entries.len() as u64)
    }
}

/// Verify a whole chain from its first entry (seq 0): structure always, MACs
/// when `keys` is `Some` (see [`ChainVerifier`], which also checks expected
/// heads). Returns the number of entries, or the first violation. A deleted
/// tail cannot be detected from the entries alone; compare the last entry
/// with an anchored [`ChainHead`].
pub fn verify_chain(entries: &[AuditEntry], keys: Option<&[IntegrityKey]>) -> std::result::Result<u64, ChainViolation> {
    let verifier = ChainVerifier::new();
    match keys {
        Some(keys) => verifier.keys(keys).verify(entries),
        None => verifier.verify(entries),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> AuditEvent {
        AuditEvent {
            at: Timestamp::from_millis(n.into()),
            actor: "test".into(),
            keyring: None,
            kind: AuditKind::KeyDeprecated { version: KeyVersion::new(n + 1).expect("nonzero") },
            reason: None,
            correlation_id: format!("c{n}"),
            outcome: Outcome::Success,
        }
    }

    fn key(n: u8) -> IntegrityKey {
        IntegrityKey::derive(&[n; 32], b"test")
    }

    fn chain(n: u32) -> Vec<AuditEntry> {
        chain_under(n, &key(1))
    }

    fn chain_under(n: u32, k: &IntegrityKey) -> Vec<AuditEntry> {
        let mut c = AuditChain::new();
        (0..n)
            .map(|i| {
                let e = c.entry(event(i), k).expect("hash");
                c.commit(&e);
                e
            })
            .collect()
    }

    /// What an attacker without the key can do: recompute every hash from `from` on.
    fn rehash(entries: &mut [AuditEntry], from: usize) {
        let mut prev = if from == 0 { GENESIS_HASH.to_owned() } else { entries[from - 1].hash.clone() };
        for e in &mut entries[from..] {
            e.prev_hash = prev;
            e.hash = entry_hash(e.seq, &e.prev_hash, &e.event).expect("hash");
            prev = e.hash.clone();
        }
    }

    #[test]
    fn detects_edit_delete_swap() {
        let good = chain(5);
        assert_eq!(verify_chain(&good, None), Ok(5));
        let mut edited = good.clone();
        edited[2].event.actor = "mallory".into();
        assert_eq!(verify_chain(&edited, None).expect_err("edited").index, 2);
        assert_eq!(verify_chain(&edited, None).expect_err("edited").kind, ChainViolationKind::Altered);
        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(
            verify_chain(&deleted, None).expect_err("deleted"),
            ChainViolation { index: 1, seq: 2, kind: ChainViolationKind::Missing { expected_seq: 1 } }
        );
        let mut swapped = good.clone();
        swapped.swap(1, 3);
        assert_eq!(
            verify_chain(&swapped, None).expect_err("swapped"),
            ChainViolation { index: 1, seq: 3, kind: ChainViolationKind::Reordered { expected_seq: 1 } }
        );
        let mut adjacent = good;
        adjacent.swap(3, 4);
        let err = verify_chain(&adjacent, None).expect_err("swapped");
        assert_eq!((err.index, err.kind), (3, ChainViolationKind::Reordered { expected_seq: 3 }));
    }

    #[test]
    fn a_rehashed_chain_verifies_structurally_but_not_with_the_key() {
        let keys = [key(1)];
        let mut forged = chain(5);
        assert_eq!(verify_chain(&forged, Some(&keys)), Ok(5));
        forged[2].event.actor = "mallory".into();
        rehash(&mut forged, 2);
        assert_eq!(verify_chain(&forged, None), Ok(5), "structure alone cannot tell");
        let v = verify_chain(&forged, Some(&keys)).expect_err("keyed");
        assert_eq!((v.index, v.seq, v.kind), (2, 2, ChainViolationKind::BadMac));
        // A forger who also replaces the MACs with their own key is not trusted either.
        let mallory = key(9);
        let mut own = chain_under(5, &mallory);
        own[0].event.actor = "mallory".into();
        rehash(&mut own, 0);
        for e in &mut own {
            e.mac = entry_mac(&mallory, &e.hash);
        }
        let v = verify_chain(&own, Some(&keys)).expect_err("unknown key");
        assert_eq!((v.index, v.kind), (0, ChainViolationKind::UnknownKey { key_id: mallory.id().to_owned() }));
        // Same key id, wrong MAC.
        let mut bad = chain(3);
        bad[1].mac = entry_mac(&key(2), &bad[1].hash);
        assert_eq!(verify_chain(&bad, Some(&keys)).expect_err("bad mac").kind, ChainViolationKind::BadMac);
    }

    #[test]
    fn entries_under_a_retired_key_are_vouched_for_by_a_later_authenticated_entry() {
        let (old, new) = (key(1), key(2));
        let mut c = AuditChain::new();
        let mut entries = Vec::new();
        for i in 0..4 {
            let e = c.entry(event(i), if i < 2 { &old } else { &new }).expect("entry");
            c.commit(&e);
            entries.push(e);
        }
        let both = [old.clone(), new.clone()];
        let only_new = [new];
        assert_eq!(verify_chain(&entries, Some(&both)), Ok(4));
        assert_eq!(verify_chain(&entries, Some(&only_new)), Ok(4), "the new key's MACs cover the old entries");
        // Cut back to before the KEK rotation: nothing under a known key is left.
        let v = verify_chain(&entries[..2], Some(&only_new)).expect_err("unvouched");
        assert_eq!((v.index, v.kind), (0, ChainViolationKind::UnknownKey { key_id: old.id().to_owned() }));
    }

    #[test]
    fn expected_heads_catch_truncation_and_rewrites() {
        let good = chain(5);
        let head = good[3].head();
        let verifier = ChainVerifier::new().expect_head(head.clone());
        assert_eq!(verifier.verify(&good), Ok(5));
        let v = verifier.verify(&good[..3]).expect_err("cut");
        assert_eq!(v, ChainViolation { index: 3, seq: 3, kind: ChainViolationKind::Truncated { expected_seq: 3 } });
        assert_eq!(verifier.verify(&[]).expect_err("wiped").kind, ChainViolationKind::Truncated { expected_seq: 3 });
        let other = chain_under(5, &key(3));
        let mut replaced = other.clone();
        replaced[0].event.actor = "someone else".into();
        rehash(&mut replaced, 0);
        let v = verifier.verify(&replaced).expect_err("replaced");
        assert_eq!((v.index, v.kind), (3, ChainViolationKind::HeadMismatch { expected_hash: head.hash.clone() }));
        assert!(!verifier.checks_macs());
        assert_eq!(head.to_string().parse::<ChainHead>().expect("parse"), head);
        assert_eq!(
            format!("{}", ChainViolationKind::BadMac),
            "entry not authenticated (its MAC does not verify: rewritten without the key)"
        );
    }

    #[test]
    fn unknown_fields_do_not_deserialize() {
        let e = &chain(1)[0];
        let mut json: serde_json::Value = serde_json::to_value(e).expect("json");
        assert_eq!(serde_json::from_value::<AuditEntry>(json.clone()).expect("round trip"), *e);
        json["event"]["injected"] = serde_json::json!(true);
        assert!(serde_json::from_value::<AuditEntry>(json.clone()).is_err(), "event level");
        json["event"].as_object_mut().expect("object").remove("injected");
        json["event"]["kind"]["injected"] = serde_json::json!(1);
        assert!(serde_json::from_value::<AuditEntry>(json.clone()).is_err(), "kind level");
        json["event"]["kind"].as_object_mut().expect("object").remove("injected");
        json["injected"] = serde_json::json!("x");
        assert!(serde_json::from_value::<AuditEntry>(json).is_err(), "entry level");
    }
}

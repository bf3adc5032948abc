//! Typed audit events, the `AuditSink` trait, and the hash chain (DESIGN §4).

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Algorithm, KeyOrigin, KeyVersion, KeyringId, Result, Timestamp};

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
#[serde(tag = "type", rename_all = "snake_case")]
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

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
/// Durable sinks should chain their entries with [`AuditChain`] and expose
/// them through [`entries`](Self::entries) so [`verify_chain`] can check them.
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Record one event durably. An error fails the operation being audited.
    async fn record(&self, event: &AuditEvent) -> Result<()>;

    /// The chained entries recorded so far, oldest first, or `None` for sinks
    /// that do not keep them (e.g. forwarding to syslog).
    async fn entries(&self) -> Result<Option<Vec<AuditEntry>>> {
        Ok(None)
    }
}

/// A chained audit entry: the event, its sequence number, the previous entry's
/// hash and its own hash (lower-case hex SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 0 for the first entry, +1 per entry.
    pub seq: u64,
    /// Hash of the previous entry (all zeros for the first).
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
    /// The event.
    pub event: AuditEvent,
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
        AuditChain { next_seq: last.seq + 1, last_hash: last.hash.clone() }
    }

    /// Chain `event`; the returned entry is the next to store. The head only
    /// advances through [`commit`](Self::commit), once the entry is durable.
    pub fn entry(&self, event: AuditEvent) -> Result<AuditEntry> {
        let hash = entry_hash(self.next_seq, &self.last_hash, &event)?;
        Ok(AuditEntry { seq: self.next_seq, prev_hash: self.last_hash.clone(), hash, event })
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
}

/// The first place where a chain fails verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("audit chain broken at entry index {index} (seq {seq}): {kind:?}")]
pub struct ChainViolation {
    /// 0-based position in the list given to [`verify_chain`] (a file sink adds 1 for a line number).
    pub index: usize,
    /// The sequence number found there.
    pub seq: u64,
    /// What is wrong.
    pub kind: ChainViolationKind,
}

/// Verify a whole chain from its first entry (seq 0). Returns the number of
/// entries, or the first violation. A deleted tail cannot be detected from the
/// entries alone; compare the count or last hash with an external anchor.
pub fn verify_chain(entries: &[AuditEntry]) -> std::result::Result<u64, ChainViolation> {
    let mut expected_prev = GENESIS_HASH.to_owned();
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
        expected_prev = e.hash.clone();
    }
    Ok(entries.len() as u64)
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

    fn chain(n: u32) -> Vec<AuditEntry> {
        let mut c = AuditChain::new();
        (0..n)
            .map(|i| {
                let e = c.entry(event(i)).expect("hash");
                c.commit(&e);
                e
            })
            .collect()
    }

    #[test]
    fn detects_edit_delete_swap() {
        let good = chain(5);
        assert_eq!(verify_chain(&good), Ok(5));
        let mut edited = good.clone();
        edited[2].event.actor = "mallory".into();
        assert_eq!(verify_chain(&edited).expect_err("edited").index, 2);
        assert_eq!(verify_chain(&edited).expect_err("edited").kind, ChainViolationKind::Altered);
        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(
            verify_chain(&deleted).expect_err("deleted"),
            ChainViolation { index: 1, seq: 2, kind: ChainViolationKind::Missing { expected_seq: 1 } }
        );
        let mut swapped = good.clone();
        swapped.swap(1, 3);
        assert_eq!(
            verify_chain(&swapped).expect_err("swapped"),
            ChainViolation { index: 1, seq: 3, kind: ChainViolationKind::Reordered { expected_seq: 1 } }
        );
        let mut adjacent = good;
        adjacent.swap(3, 4);
        let err = verify_chain(&adjacent).expect_err("swapped");
        assert_eq!((err.index, err.kind), (3, ChainViolationKind::Reordered { expected_seq: 3 }));
    }
}

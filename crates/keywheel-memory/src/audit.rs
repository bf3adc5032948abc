//! [`MemoryAuditSink`]: a hash-chained audit trail in a `Vec`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use keywheel_core::{
    AuditChain, AuditEntry, AuditEvent, AuditSink, ChainViolation, Error, IntegrityKey, Result, async_trait,
    verify_chain,
};

#[derive(Default)]
struct State {
    chain: AuditChain,
    entries: Vec<AuditEntry>,
    /// The integrity keys entries were recorded under (in memory only), for [`MemoryAuditSink::verify`].
    keys: Vec<IntegrityKey>,
}

/// An in-memory [`AuditSink`] that hash-chains and authenticates its entries
/// with [`AuditChain`], exactly like a durable sink, so the chain verifier can
/// be exercised.
///
/// Test extras: [`set_failing`](Self::set_failing) makes `record` fail (to test
/// that operations fail closed), [`events`](Self::events) lists what was
/// recorded, [`verify`](Self::verify) checks the chain and its MACs under the
/// keys the sink was given (it keeps them in memory for that), and
/// [`tamper`](Self::tamper) edits the stored entries to simulate an attacker.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> keywheel_core::Result<()> {
/// use keywheel_core::{AuditEvent, AuditKind, AuditSink, ChainViolationKind, IntegrityKey, Outcome, Timestamp};
/// use keywheel_memory::MemoryAuditSink;
///
/// let key = IntegrityKey::derive(&[7; 32], b"example");
/// let sink = MemoryAuditSink::new();
/// for n in 0..3 {
///     let kind = AuditKind::PolicyChanged { summary: format!("change {n}") };
///     let event = AuditEvent {
///         at: Timestamp::from_millis(n), actor: "ops".into(), keyring: None, kind,
///         reason: None, correlation_id: format!("c{n}"), outcome: Outcome::Success,
///     };
///     sink.record(&event, &key).await?;
/// }
/// assert_eq!(sink.verify(), Ok(3));
///
/// sink.tamper(|entries| entries[1].event.actor = "mallory".into());
/// let violation = sink.verify().expect_err("the edit is detected");
/// assert_eq!((violation.index, violation.kind), (1, ChainViolationKind::Altered));
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct MemoryAuditSink {
    state: Mutex<State>,
    failing: AtomicBool,
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `failing` is true, [`record`](AuditSink::record) returns
    /// [`Error::Audit`] and appends nothing (to test fail-closed behaviour).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Whether the sink is currently set to fail.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    /// A copy of the chained entries, oldest first.
    pub fn snapshot(&self) -> Vec<AuditEntry> {
        self.lock().entries.clone()
    }

    /// Just the recorded events, oldest first.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.lock().entries.iter().map(|e| e.event.clone()).collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// Verify the stored chain with [`verify_chain`], MACs included (under
    /// the keys given to `record`): the number of entries, or the first violation.
    pub fn verify(&self) -> std::result::Result<u64, ChainViolation> {
        let state = self.lock();
        verify_chain(&state.entries, Some(&state.keys))
    }

    /// **Test hook**: edit the stored entries in place to simulate tampering
    /// (editing an event, deleting, inserting or reordering entries), then check
    /// that [`verify`](Self::verify) or [`verify_chain`] pinpoints it.
    ///
    /// The chain head is not touched: events recorded afterwards are chained
    /// to the last entry recorded *before* the tampering, as a durable sink
    /// that keeps its head would do.
    pub fn tamper(&self, f: impl FnOnce(&mut Vec<AuditEntry>)) {
        f(&mut self.lock().entries);
    }

    /// Entries are pushed whole and the head advanced afterwards, so a
    /// poisoned lock still guards a consistent chain: recover from poisoning.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryAuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAuditSink").field("entries", &self.len()).field("failing", &self.is_failing()).finish()
    }
}

#[async_trait]
impl AuditSink for MemoryAuditSink {
    async fn record(&self, event: &AuditEvent, key: &IntegrityKey) -> Result<()> {
        if self.is_failing() {
            return Err(Error::Audit("memory audit sink is set to fail".into()));
        }
        let mut state = self.lock();
        if !state.keys.iter().any(|k| k.id() == key.id()) {
            state.keys.push(key.clone());
        }
        let entry = state.chain.entry(event.clone(), key)?;
        state.chain.commit(&entry);
        state.entries.push(entry);
        Ok(())
    }

    async fn entries(&self) -> Result<Option<Vec<AuditEntry>>> {
        Ok(Some(self.snapshot()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keywheel_core::{AuditKind, ChainViolationKind, Outcome, Timestamp, entry_hash};

    fn key() -> IntegrityKey {
        IntegrityKey::derive(&[1; 32], b"test")
    }

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            at: Timestamp::from_millis(n),
            actor: "test".into(),
            keyring: None,
            kind: AuditKind::PolicyChanged { summary: format!("change {n}") },
            reason: None,
            correlation_id: format!("c{n}"),
            outcome: Outcome::Success,
        }
    }

    #[tokio::test]
    async fn failing_sink_appends_nothing() {
        let sink = MemoryAuditSink::new();
        sink.record(&event(0), &key()).await.expect("record");
        sink.set_failing(true);
        assert!(sink.is_failing());
        assert!(matches!(sink.record(&event(1), &key()).await, Err(Error::Audit(_))));
        assert_eq!(sink.len(), 1);
        sink.set_failing(false);
        sink.record(&event(2), &key()).await.expect("record");
        assert_eq!(sink.events(), vec![event(0), event(2)]);
        assert_eq!(sink.verify(), Ok(2));
        assert_eq!(sink.entries().await.expect("entries"), Some(sink.snapshot()));
        assert_eq!(format!("{sink:?}"), "MemoryAuditSink { entries: 2, failing: false }");
    }

    #[tokio::test]
    async fn tampering_is_detected_and_later_entries_keep_the_old_head() {
        let sink = MemoryAuditSink::new();
        for n in 0..4 {
            sink.record(&event(n), &key()).await.expect("record");
        }
        sink.tamper(|entries| {
            entries.remove(3);
        });
        // The deleted tail alone is not detectable from the entries...
        assert_eq!(sink.verify(), Ok(3));
        // ...but the next entry still chains to it, which exposes the gap.
        sink.record(&event(4), &key()).await.expect("record");
        let violation = sink.verify().expect_err("gap");
        assert_eq!((violation.index, violation.kind), (3, ChainViolationKind::Missing { expected_seq: 3 }));
    }

    #[tokio::test]
    async fn a_rehashed_chain_fails_the_mac_check() {
        let sink = MemoryAuditSink::new();
        for n in 0..3 {
            sink.record(&event(n), &key()).await.expect("record");
        }
        sink.tamper(|entries| {
            entries[1].event.actor = "mallory".into();
            for i in 1..entries.len() {
                entries[i].prev_hash = entries[i - 1].hash.clone();
                let e = &entries[i];
                entries[i].hash = entry_hash(e.seq, &e.prev_hash, &e.event).expect("hash");
            }
        });
        assert_eq!(verify_chain(&sink.snapshot(), None), Ok(3), "the hashes are consistent again");
        let violation = sink.verify().expect_err("but the MACs are not");
        assert_eq!((violation.index, violation.kind), (1, ChainViolationKind::BadMac));
    }
}

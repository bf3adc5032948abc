//! [`MemoryAuditSink`]: a hash-chained audit trail in a `Vec`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use keywheel_core::{
    AuditChain, AuditEntry, AuditEvent, AuditSink, ChainViolation, Error, Result, async_trait, verify_chain,
};

#[derive(Default)]
struct State {
    chain: AuditChain,
    entries: Vec<AuditEntry>,
}

/// An in-memory [`AuditSink`] that hash-chains its entries with [`AuditChain`],
/// exactly like a durable sink, so the chain verifier can be exercised.
///
/// Test extras: [`set_failing`](Self::set_failing) makes `record` fail (to test
/// that operations fail closed), [`events`](Self::events) lists what was
/// recorded, [`verify`](Self::verify) checks the chain, and
/// [`tamper`](Self::tamper) edits the stored entries to simulate an attacker.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> keywheel_core::Result<()> {
/// use keywheel_core::{AuditEvent, AuditKind, AuditSink, ChainViolationKind, Outcome, Timestamp};
/// use keywheel_memory::MemoryAuditSink;
///
/// let sink = MemoryAuditSink::new();
/// for n in 0..3 {
///     let kind = AuditKind::PolicyChanged { summary: format!("change {n}") };
///     let event = AuditEvent {
///         at: Timestamp::from_millis(n), actor: "ops".into(), keyring: None, kind,
///         reason: None, correlation_id: format!("c{n}"), outcome: Outcome::Success,
///     };
///     sink.record(&event).await?;
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

    /// Verify the stored chain with [`verify_chain`]: the number of entries,
    /// or the first violation.
    pub fn verify(&self) -> std::result::Result<u64, ChainViolation> {
        verify_chain(&self.lock().entries)
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
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        if self.is_failing() {
            return Err(Error::Audit("memory audit sink is set to fail".into()));
        }
        let mut state = self.lock();
        let entry = state.chain.entry(event.clone())?;
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
    use keywheel_core::{AuditKind, ChainViolationKind, Outcome, Timestamp};

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
        sink.record(&event(0)).await.expect("record");
        sink.set_failing(true);
        assert!(sink.is_failing());
        assert!(matches!(sink.record(&event(1)).await, Err(Error::Audit(_))));
        assert_eq!(sink.len(), 1);
        sink.set_failing(false);
        sink.record(&event(2)).await.expect("record");
        assert_eq!(sink.events(), vec![event(0), event(2)]);
        assert_eq!(sink.verify(), Ok(2));
        assert_eq!(sink.entries().await.expect("entries"), Some(sink.snapshot()));
        assert_eq!(format!("{sink:?}"), "MemoryAuditSink { entries: 2, failing: false }");
    }

    #[tokio::test]
    async fn tampering_is_detected_and_later_entries_keep_the_old_head() {
        let sink = MemoryAuditSink::new();
        for n in 0..4 {
            sink.record(&event(n)).await.expect("record");
        }
        sink.tamper(|entries| {
            entries.remove(3);
        });
        // The deleted tail alone is not detectable from the entries...
        assert_eq!(sink.verify(), Ok(3));
        // ...but the next entry still chains to it, which exposes the gap.
        sink.record(&event(4)).await.expect("record");
        let violation = sink.verify().expect_err("gap");
        assert_eq!((violation.index, violation.kind), (3, ChainViolationKind::Missing { expected_seq: 3 }));
    }
}

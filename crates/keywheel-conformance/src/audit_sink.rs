//! Checks for hash-chaining [`AuditSink`] implementations, through an [`AuditFixture`].
//!
//! The checks are for sinks that keep their entries and return them from
//! [`AuditSink::entries`] (durable, chained sinks); a forwarding sink whose
//! `entries` is `None` has nothing to verify. Each check takes a fixture
//! around a fresh, **empty** sink and panics with a message naming the
//! broken rule. Run them all with [`audit_sink_tests!`](crate::audit_sink_tests).

use std::collections::HashSet;
use std::sync::Arc;

use keywheel_core::{
    AUDIT_MAC_LABEL, Algorithm, AuditEntry, AuditEvent, AuditKind, AuditSink, ChainViolation, ChainViolationKind,
    GENESIS_HASH, IntegrityKey, KeyOrigin, KeyringId, Outcome, Purpose, Timestamp, async_trait, entry_hash,
    verify_chain,
};

use crate::{race, version};

/// An edit an attacker makes to a sink's durable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Change the event of the entry at this 0-based index (e.g. its actor or
    /// reason) without updating the stored hash.
    Edit(usize),
    /// Remove the entry at this index; later entries move up by one.
    Delete(usize),
    /// Exchange the entries at these two indexes, each kept intact.
    Swap(usize, usize),
}

/// What the audit checks need beyond the [`AuditSink`] trait: the sink, and a
/// way to tamper with what it stored.
///
/// Implement it in your backend's test crate around a fresh, empty sink;
/// methods may panic on backend failure (it is a test helper).
#[async_trait]
pub trait AuditFixture: Send + Sync {
    /// The sink under test.
    fn sink(&self) -> Arc<dyn AuditSink>;

    /// Apply `tamper` to the sink's durable storage (file lines, table rows,
    /// the in-memory list), so that the next [`AuditSink::entries`] sees it.
    async fn tamper(&self, tamper: Tamper);
}

#[async_trait]
impl<T: AuditFixture + ?Sized> AuditFixture for Arc<T> {
    fn sink(&self) -> Arc<dyn AuditSink> {
        (**self).sink()
    }
    async fn tamper(&self, tamper: Tamper) {
        (**self).tamper(tamper).await;
    }
}

/// The integrity key the checks record under (a fixed test key; a backend's
/// own tests may use it to verify what the checks recorded).
pub fn test_key() -> IntegrityKey {
    IntegrityKey::derive(&[0x5a; 32], b"keywheel-conformance")
}

/// A second key, standing for the integrity key of a new KEK after a KEK rotation.
fn rotated_key() -> IntegrityKey {
    IntegrityKey::derive(&[0xa5; 32], b"keywheel-conformance")
}

/// The `n`th sample event: kinds, keyrings, reasons and outcomes vary, and
/// strings include quotes, newlines and non-ASCII so storage must be exact.
fn event(n: u32) -> AuditEvent {
    let keyring = KeyringId::new(format!("tenant-{}", n % 3), Purpose::Token).expect("valid id");
    let kind = match n % 6 {
        0 => AuditKind::KeyCreated {
            version: version(n + 1),
            algorithm: Algorithm::Aes256Gcm,
            origin: KeyOrigin::Generated,
        },
        1 => AuditKind::KeyActivated { version: version(n + 1), previous: Some(version(n.max(1))) },
        2 => AuditKind::RotationCompleted {
            job_id: format!("job-{n}"),
            processed: u64::from(n) * 1000,
            rewritten: u64::from(n) * 990,
            skipped: 7,
            failed: 3,
            duration_ms: 12_345,
        },
        3 => AuditKind::KeyRetired { version: version(n), forced: true },
        4 => AuditKind::PolicyChanged { summary: format!("interval \"90d\" → 30d\nline two ({n})") },
        _ => AuditKind::RetirementRefused { version: version(n), remaining: 42 },
    };
    AuditEvent {
        at: Timestamp::from_millis(1_750_000_000_000 + i64::from(n) * 1000),
        actor: format!("scheduler-{n}"),
        keyring: (n % 4 != 3).then_some(keyring),
        kind,
        reason: n.is_multiple_of(2).then(|| format!("reason {n}: ünïcode, \"quotes\", \\backslash")),
        correlation_id: format!("corr-{n:04}"),
        outcome: [Outcome::Success, Outcome::Refused, Outcome::Failed][(n % 3) as usize],
    }
}

async fn record(sink: &Arc<dyn AuditSink>, event: &AuditEvent) {
    record_under(sink, event, &test_key()).await;
}

async fn record_under(sink: &Arc<dyn AuditSink>, event: &AuditEvent, key: &IntegrityKey) {
    sink.record(event, key).await.unwrap_or_else(|e| panic!("record failed: {e}"));
}

fn keys() -> [IntegrityKey; 1] {
    [test_key()]
}

async fn entries(sink: &Arc<dyn AuditSink>) -> Vec<AuditEntry> {
    sink.entries()
        .await
        .unwrap_or_else(|e| panic!("entries failed: {e}"))
        .expect("a chaining sink must return Some(entries) from AuditSink::entries")
}

async fn record_n(fixture: &dyn AuditFixture, n: u32) -> Vec<AuditEvent> {
    let sink = fixture.sink();
    let events: Vec<AuditEvent> = (0..n).map(event).collect();
    for e in &events {
        record(&sink, e).await;
    }
    events
}

async fn violation_after(fixture: &dyn AuditFixture, tamper: Tamper) -> ChainViolation {
    fixture.tamper(tamper).await;
    let tampered = entries(&fixture.sink()).await;
    match verify_chain(&tampered, Some(&keys())) {
        Ok(n) => panic!("{tamper:?} must be detected by verify_chain, but the chain of {n} entries verified"),
        Err(violation) => violation,
    }
}

/// Recording N events yields N chained entries, oldest first: sequence
/// numbers 0..N, each `prev_hash` the previous entry's hash (genesis for the
/// first), the events stored exactly, each entry naming the key it was recorded
/// under with a valid MAC, and [`verify_chain`] passes with the key; recording
/// after reading continues the same chain.
pub async fn records_chained_entries(fixture: impl AuditFixture) {
    let fixture: &dyn AuditFixture = &fixture;
    let sink = fixture.sink();
    assert_eq!(entries(&sink).await, Vec::new(), "a fresh sink must have no entries");
    let mut events = record_n(fixture, 6).await;
    let stored = entries(&sink).await;
    assert_eq!(stored.len(), events.len(), "one entry per recorded event");
    let mut prev = GENESIS_HASH.to_owned();
    for (i, (entry, event)) in stored.iter().zip(&events).enumerate() {
        assert_eq!(entry.seq, i as u64, "entry {i} must have sequence number {i}");
        assert_eq!(entry.prev_hash, prev, "entry {i} must chain to the previous entry's hash");
        assert_eq!(&entry.event, event, "entry {i} must hold the recorded event exactly");
        assert_eq!(entry.key_id, test_key().id(), "entry {i} must name the integrity key it was recorded under");
        assert!(
            test_key().verify_hex(AUDIT_MAC_LABEL, entry.hash.as_bytes(), &entry.mac),
            "entry {i} must carry the MAC of its hash under the key passed to record"
        );
        prev.clone_from(&entry.hash);
    }
    assert_eq!(verify_chain(&stored, Some(&keys())), Ok(6), "the chain of recorded entries must verify");

    for n in 6..9 {
        let e = event(n);
        record(&sink, &e).await;
        events.push(e);
    }
    let stored = entries(&sink).await;
    assert_eq!(verify_chain(&stored, Some(&keys())), Ok(9), "recording after reading must continue the same chain");
    let recorded: Vec<AuditEvent> = stored.into_iter().map(|e| e.event).collect();
    assert_eq!(recorded, events, "entries must list all events in recording order");
}

/// An edited entry is detected at its index as [`ChainViolationKind::Altered`].
pub async fn detects_edited_entry(fixture: impl AuditFixture) {
    let fixture: &dyn AuditFixture = &fixture;
    record_n(fixture, 6).await;
    let v = violation_after(fixture, Tamper::Edit(3)).await;
    assert_eq!(
        (v.index, v.seq, v.kind),
        (3, 3, ChainViolationKind::Altered),
        "an edited entry 3 must be reported as Altered at index 3"
    );
}

/// A deleted entry is detected where it is missing, as
/// [`ChainViolationKind::Missing`] with the expected sequence number.
pub async fn detects_deleted_entry(fixture: impl AuditFixture) {
    let fixture: &dyn AuditFixture = &fixture;
    record_n(fixture, 6).await;
    let v = violation_after(fixture, Tamper::Delete(2)).await;
    assert_eq!(
        (v.index, v.seq, v.kind),
        (2, 3, ChainViolationKind::Missing { expected_seq: 2 }),
        "deleting entry 2 must be reported at index 2 as Missing {{ expected_seq: 2 }}"
    );
    assert_eq!(entries(&fixture.sink()).await.len(), 5, "the deletion must be visible through entries()");
}

/// Swapped entries are detected at the first moved position, as a sequence
/// violation expecting that position's number. (`verify_chain` reports a
/// forward jump as [`ChainViolationKind::Missing`] and a backward one as
/// [`ChainViolationKind::Reordered`]; either names the right place.)
pub async fn detects_swapped_entries(fixture: impl AuditFixture) {
    let fixture: &dyn AuditFixture = &fixture;
    record_n(fixture, 6).await;
    let v = violation_after(fixture, Tamper::Swap(1, 4)).await;
    assert_eq!((v.index, v.seq), (1, 4), "swapping entries 1 and 4 must be reported at index 1 (holding seq 4)");
    assert!(
        matches!(
            v.kind,
            ChainViolationKind::Missing { expected_seq: 1 } | ChainViolationKind::Reordered { expected_seq: 1 }
        ),
        "swapping entries 1 and 4 must be reported as a sequence violation expecting seq 1, got {:?}",
        v.kind
    );
}

/// Concurrent `record` calls still form one valid chain holding every event
/// exactly once (no fork, no lost or duplicated entry).
pub async fn concurrent_records_form_one_chain(fixture: impl AuditFixture) {
    const TASKS: u32 = 4;
    const EACH: u32 = 10;
    let fixture: &dyn AuditFixture = &fixture;
    let sink = fixture.sink();
    let shared = Arc::clone(&sink);
    race(TASKS as usize, move |t| {
        let sink = Arc::clone(&shared);
        let t = u32::try_from(t).expect("few tasks");
        async move {
            for i in 0..EACH {
                record(&sink, &event(t * EACH + i)).await;
            }
        }
    })
    .await;
    let stored = entries(&sink).await;
    assert_eq!(
        verify_chain(&stored, Some(&keys())),
        Ok(u64::from(TASKS * EACH)),
        "concurrent records must form one valid chain"
    );
    let ids: HashSet<String> = stored.iter().map(|e| e.event.correlation_id.clone()).collect();
    assert_eq!(ids.len(), (TASKS * EACH) as usize, "every concurrently recorded event must be stored exactly once");
}

/// The chain is keyed: an attacker who edits an entry and recomputes every
/// hash after it (no key needed for that) gets a chain whose structure
/// verifies but whose MACs do not ([`ChainViolationKind::BadMac`] at the
/// edited entry); and a sink records each entry under the key it is given, so
/// after a KEK rotation the new key's MACs vouch for the entries before it.
pub async fn chain_is_keyed(fixture: impl AuditFixture) {
    let fixture: &dyn AuditFixture = &fixture;
    let sink = fixture.sink();
    record_n(fixture, 4).await;
    for n in 4..6 {
        record_under(&sink, &event(n), &rotated_key()).await;
    }
    let stored = entries(&sink).await;
    assert_eq!(
        stored.iter().map(|e| e.key_id.as_str()).collect::<Vec<_>>(),
        [test_key().id(), test_key().id(), test_key().id(), test_key().id(), rotated_key().id(), rotated_key().id()],
        "each entry must name the key it was recorded under"
    );
    assert_eq!(verify_chain(&stored, Some(&[test_key(), rotated_key()])), Ok(6), "both keys known");
    assert_eq!(verify_chain(&stored, Some(&[rotated_key()])), Ok(6), "the later MACs vouch for earlier entries");
    let v = verify_chain(&stored[..4], Some(&[rotated_key()])).expect_err("no entry under a known key");
    assert_eq!((v.index, v.kind), (0, ChainViolationKind::UnknownKey { key_id: test_key().id().to_owned() }));

    let mut forged = stored;
    forged[2].event.actor = "mallory".into();
    for i in 2..forged.len() {
        forged[i].prev_hash = forged[i - 1].hash.clone();
        let e = &forged[i];
        forged[i].hash = entry_hash(e.seq, &e.prev_hash, &e.event).expect("hash");
    }
    assert_eq!(verify_chain(&forged, None), Ok(6), "the re-hashed chain is structurally sound");
    let v = verify_chain(&forged, Some(&[test_key(), rotated_key()])).expect_err("but not authenticated");
    assert_eq!((v.index, v.seq, v.kind), (2, 2, ChainViolationKind::BadMac), "the re-hashed entry 2 must fail its MAC");
}

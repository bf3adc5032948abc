//! Runs the whole keywheel conformance suite against the in-memory backends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keywheel_conformance::{AuditFixture, IndexedSourceFixture, RecordSourceFixture, Tamper};
use keywheel_core::{
    AuditSink, BlindIndex, Context, Cursor, Form, KeyStore, KeyringId, Normalization, RecordSource, async_trait,
};
use keywheel_memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};

keywheel_conformance::key_store_tests!(async { Arc::new(MemoryKeyStore::new()) as Arc<dyn KeyStore> });

/// A memory source whose rows are inserted out of cursor order, so scan
/// order really comes from the source and not from insertion order.
struct SourceFixture {
    source: Arc<MemoryRecordSource>,
    inserted: AtomicU64,
}

impl SourceFixture {
    fn new() -> Self {
        SourceFixture { source: Arc::new(MemoryRecordSource::new("users.email")), inserted: AtomicU64::new(0) }
    }
}

#[async_trait]
impl RecordSourceFixture for SourceFixture {
    fn source(&self) -> Arc<dyn RecordSource> {
        Arc::clone(&self.source) as Arc<dyn RecordSource>
    }

    async fn insert(&self, keyring: &KeyringId, context: &Context, value: Vec<u8>) -> Cursor {
        let n = self.inserted.fetch_add(1, Ordering::SeqCst);
        // Multiplying by an odd number is a bijection modulo 2^20: distinct, scrambled row ids.
        let row = n.wrapping_mul(0x9E37_79B1) % (1 << 20);
        self.source.insert_row(row, keyring.clone(), context.clone(), value)
    }

    async fn app_write(&self, cursor: &Cursor, value: Vec<u8>) {
        self.source.set(cursor, value).expect("the application writes an existing row");
    }

    async fn app_delete(&self, cursor: &Cursor) {
        self.source.remove(cursor).expect("the application deletes an existing row");
    }

    async fn get(&self, cursor: &Cursor) -> Option<Vec<u8>> {
        self.source.get(cursor)
    }
}

keywheel_conformance::record_source_tests!(async { SourceFixture::new() });

struct SinkFixture(Arc<MemoryAuditSink>);

#[async_trait]
impl AuditFixture for SinkFixture {
    fn sink(&self) -> Arc<dyn AuditSink> {
        Arc::clone(&self.0) as Arc<dyn AuditSink>
    }

    async fn tamper(&self, tamper: Tamper) {
        self.0.tamper(|entries| match tamper {
            Tamper::Edit(i) => entries[i].event.actor = "mallory".into(),
            Tamper::Delete(i) => {
                entries.remove(i);
            }
            Tamper::Swap(i, j) => entries.swap(i, j),
        });
    }
}

keywheel_conformance::audit_sink_tests!(async { SinkFixture(Arc::new(MemoryAuditSink::new())) });

/// A memory source with a blind index column, in binary or text form.
struct IndexedFixture {
    source: Arc<MemoryRecordSource>,
    index: BlindIndex,
    form: Form,
    inserted: AtomicU64,
}

impl IndexedFixture {
    fn new(form: Form) -> Self {
        let index = BlindIndex::new("users", "email").normalization(Normalization::TrimLowercase);
        let source = MemoryRecordSource::new("users.email").with_index(index.clone(), form);
        IndexedFixture { source: Arc::new(source), index, form, inserted: AtomicU64::new(0) }
    }
}

#[async_trait]
impl IndexedSourceFixture for IndexedFixture {
    fn source(&self) -> Arc<dyn RecordSource> {
        Arc::clone(&self.source) as Arc<dyn RecordSource>
    }

    fn index(&self) -> (BlindIndex, Form) {
        (self.index.clone(), self.form)
    }

    async fn insert(&self, keyring: &KeyringId, context: &Context, value: Vec<u8>, tag: Option<Vec<u8>>) -> Cursor {
        let row = self.inserted.fetch_add(1, Ordering::SeqCst);
        let cursor = MemoryRecordSource::row_cursor(row);
        self.source.insert_indexed(cursor, keyring.clone(), context.clone(), value, tag)
    }

    async fn app_write(&self, cursor: &Cursor, value: Vec<u8>, tag: Option<Vec<u8>>) {
        self.source.set_indexed(cursor, value, tag).expect("the application writes an existing row");
    }

    async fn get(&self, cursor: &Cursor) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        self.source.get(cursor).map(|value| (value, self.source.index_tag(cursor)))
    }
}

keywheel_conformance::indexed_source_tests!(mod binary_index_conformance, async { IndexedFixture::new(Form::Binary) });
keywheel_conformance::indexed_source_tests!(mod text_index_conformance, async { IndexedFixture::new(Form::Text) });

/// The KEK checks for core's local KEK, alone and inside a ring, and the
/// load bound on the memory store.
mod kek_conformance {
    use std::sync::Arc;

    use keywheel_conformance::{block_on, kek};
    use keywheel_core::{AuditSink, KekRing, KeyEncryptionKey, KeyStore, LocalKek};
    use keywheel_memory::{MemoryAuditSink, MemoryKeyStore};

    fn local(byte: u8) -> Arc<dyn KeyEncryptionKey> {
        Arc::new(LocalKek::from_bytes(&[byte; 32]))
    }

    #[test]
    fn local_kek_passes_the_kek_checks() {
        block_on(kek::run_all(local(1), local(2)));
    }

    #[test]
    fn a_kek_ring_passes_the_kek_checks() {
        let ring = |a: u8, b: u8| Arc::new(KekRing::new(local(a), vec![local(b)])) as Arc<dyn KeyEncryptionKey>;
        block_on(kek::run_all(ring(1, 3), ring(2, 4)));
    }

    #[test]
    fn local_kek_unwraps_once_per_version_per_load() {
        block_on(kek::unwraps_once_per_version_per_load(
            local(1),
            Arc::new(MemoryKeyStore::new()) as Arc<dyn KeyStore>,
            Arc::new(MemoryAuditSink::new()) as Arc<dyn AuditSink>,
        ));
    }
}

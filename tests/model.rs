//! The model-based test of keywheel's safety invariants (manual, "Lifecycle invariants") on the
//! memory backend: random op sequences checked after every step (see
//! `keywheel_conformance::model`), then one regression case per bug the model
//! found, replaying the shrunk sequence.
//!
//! `KEYWHEEL_MODEL_CASES` raises the number of random cases (default 2000),
//! `KEYWHEEL_MODEL_MAX_OPS` the sequence length (default 30).
#![cfg(feature = "memory")]

use std::sync::Arc;

use keywheel::memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
use keywheel::{AuditSink, Context, Cursor, KeyStore, KeyringId, RecordSource, async_trait};
use keywheel_conformance::RecordSourceFixture;
use keywheel_conformance::model::{ModelBackend, ModelConfig, ModelWorld, Op, replay, row_of, run_model};

/// A memory table keyed by the row of the value's context.
struct Table(Arc<MemoryRecordSource>);

#[async_trait]
impl RecordSourceFixture for Table {
    fn source(&self) -> Arc<dyn RecordSource> {
        Arc::clone(&self.0) as Arc<dyn RecordSource>
    }
    async fn insert(&self, keyring: &KeyringId, context: &Context, value: Vec<u8>) -> Cursor {
        let row: u64 = row_of(context).parse().expect("numeric model rows");
        self.0.insert_row(row, keyring.clone(), context.clone(), value)
    }
    async fn app_write(&self, cursor: &Cursor, value: Vec<u8>) {
        self.0.set(cursor, value).expect("the row exists");
    }
    async fn app_delete(&self, cursor: &Cursor) {
        self.0.remove(cursor);
    }
    async fn get(&self, cursor: &Cursor) -> Option<Vec<u8>> {
        self.0.get(cursor)
    }
}

struct Memory;

#[async_trait]
impl ModelBackend for Memory {
    async fn world(&self) -> ModelWorld {
        ModelWorld {
            store: Arc::new(MemoryKeyStore::new()) as Arc<dyn KeyStore>,
            audit: Arc::new(MemoryAuditSink::new()) as Arc<dyn AuditSink>,
            tokens: Arc::new(Table(Arc::new(MemoryRecordSource::new("tokens.secret")))),
            fields: Arc::new(Table(Arc::new(MemoryRecordSource::new("fields.secret")))),
            guard: Box::new(()),
        }
    }
}

#[test]
fn model_memory() {
    run_model(&Memory, &ModelConfig::from_env(2000));
}

fn regression(ops: &[Op]) {
    replay(&Memory, ops);
}

// One regression case per bug the model found (see
// `keywheel_conformance::model::regressions` for what each one breaks).
keywheel_conformance::model_regression_tests!(regression);

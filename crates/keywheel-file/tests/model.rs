//! The model-based test of keywheel's safety invariants (manual, "Lifecycle invariants") on the
//! file backend: the file key store and audit log in a temporary directory
//! per case (each instance opens the store directory afresh, as another
//! process would), the application's values in memory tables.
//!
//! `KEYWHEEL_MODEL_CASES` raises the number of cases (default 64).

use std::sync::Arc;

use keywheel_conformance::RecordSourceFixture;
use keywheel_conformance::model::{ModelBackend, ModelConfig, ModelWorld, Op, replay, row_of, run_model};
use keywheel_core::{AuditSink, Context, Cursor, KeyStore, KeyringId, RecordSource, async_trait};
use keywheel_file::{FileAuditSink, FileKeyStore};
use keywheel_memory::MemoryRecordSource;
use tempfile::TempDir;

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

struct Files;

fn store_dir(world: &ModelWorld) -> std::path::PathBuf {
    world.guard.downcast_ref::<TempDir>().expect("the world's guard is its directory").path().join("store")
}

#[async_trait]
impl ModelBackend for Files {
    async fn world(&self) -> ModelWorld {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = FileKeyStore::open(dir.path().join("store")).expect("a new file store");
        let audit = FileAuditSink::open(dir.path().join("audit.jsonl")).expect("a new audit log");
        ModelWorld {
            store: Arc::new(store) as Arc<dyn KeyStore>,
            audit: Arc::new(audit) as Arc<dyn AuditSink>,
            tokens: Arc::new(Table(Arc::new(MemoryRecordSource::new("tokens.secret")))),
            fields: Arc::new(Table(Arc::new(MemoryRecordSource::new("fields.secret")))),
            guard: Box::new(dir),
        }
    }

    /// Another process opens the same directory.
    async fn reopen(&self, world: &ModelWorld) -> Arc<dyn KeyStore> {
        Arc::new(FileKeyStore::open(store_dir(world)).expect("reopen the file store"))
    }
}

#[test]
fn model_file() {
    run_model(&Files, &ModelConfig::from_env(200));
}

fn regression(ops: &[Op]) {
    replay(&Files, ops);
}

// One regression case per bug the model found (see
// `keywheel_conformance::model::regressions` for what each one breaks).
keywheel_conformance::model_regression_tests!(regression);

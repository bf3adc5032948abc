//! The model-based test of keywheel's safety invariants (DESIGN §8) on the
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
use keywheel_conformance::model::{ModelBackend, ModelConfig, ModelWorld, Op, regressions, replay, row_of, run_model};

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

#[test]
fn regression_custom_token_purpose_is_the_token_keyring() {
    regression(regressions::CUSTOM_TOKEN_PURPOSE_IS_THE_TOKEN_KEYRING);
}

#[test]
fn regression_lease_holders_are_not_shared_by_name() {
    regression(regressions::LEASE_HOLDERS_ARE_NOT_SHARED_BY_NAME);
}

#[test]
fn regression_refused_rotation_gives_the_lease_back() {
    regression(regressions::REFUSED_ROTATION_GIVES_THE_LEASE_BACK);
}

#[test]
fn regression_usage_is_not_under_counted_across_reloads() {
    regression(regressions::USAGE_IS_NOT_UNDER_COUNTED_ACROSS_RELOADS);
}

#[test]
fn regression_scheduler_without_sources_keeps_keys_in_use() {
    regression(regressions::SCHEDULER_WITHOUT_SOURCES_KEEPS_KEYS_IN_USE);
}

#[test]
fn regression_emergency_without_sources_keeps_keys_in_use() {
    regression(regressions::EMERGENCY_WITHOUT_SOURCES_KEEPS_KEYS_IN_USE);
}

#[test]
fn regression_keywheel_retire_keeps_keys_in_use() {
    regression(regressions::KEYWHEEL_RETIRE_KEEPS_KEYS_IN_USE);
}

#[test]
fn regression_rollback_never_reactivates_a_compromised_version() {
    regression(regressions::ROLLBACK_NEVER_REACTIVATES_A_COMPROMISED_VERSION);
}

#[test]
fn regression_activate_never_reactivates_a_compromised_version() {
    regression(regressions::ACTIVATE_NEVER_REACTIVATES_A_COMPROMISED_VERSION);
}

#[test]
fn regression_rollback_only_undoes_the_latest_rotation() {
    regression(regressions::ROLLBACK_ONLY_UNDOES_THE_LATEST_ROTATION);
}

#[test]
fn regression_second_rollback_does_not_toggle_back() {
    regression(regressions::SECOND_ROLLBACK_DOES_NOT_TOGGLE_BACK);
}

#[test]
fn regression_emergency_retirement_waits_for_stale_snapshots() {
    regression(regressions::EMERGENCY_RETIREMENT_WAITS_FOR_STALE_SNAPSHOTS);
}

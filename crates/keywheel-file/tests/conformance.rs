//! Runs the keywheel conformance suite (key store and audit sink checks)
//! against the file backend, each test on a fresh temporary directory.

use std::sync::Arc;
use std::time::Duration;

use keywheel_conformance::{AuditFixture, Tamper};
use keywheel_core::{
    AuditSink, KeyStore, KeyringChange, KeyringId, KeyringRecord, Lease, Policy, Result, RotationJob, Timestamp,
    async_trait,
};
use keywheel_file::{FileAuditSink, FileKeyStore};
use tempfile::TempDir;

/// A file store that owns its temporary directory (deleted when the last
/// reference is dropped), delegating every call.
#[derive(Debug)]
struct ScratchStore {
    store: FileKeyStore,
    _dir: TempDir,
}

fn scratch_store() -> Arc<dyn KeyStore> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = FileKeyStore::open(dir.path().join("store")).expect("open a new file store");
    Arc::new(ScratchStore { store, _dir: dir })
}

#[async_trait]
impl KeyStore for ScratchStore {
    async fn create_keyring(&self, record: &KeyringRecord) -> Result<()> {
        self.store.create_keyring(record).await
    }
    async fn load_keyring(&self, id: &KeyringId) -> Result<Option<KeyringRecord>> {
        self.store.load_keyring(id).await
    }
    async fn list_keyrings(&self) -> Result<Vec<KeyringId>> {
        self.store.list_keyrings().await
    }
    async fn update_keyring(
        &self,
        id: &KeyringId,
        generation: u64,
        changes: &[KeyringChange],
    ) -> Result<KeyringRecord> {
        self.store.update_keyring(id, generation, changes).await
    }
    async fn acquire_lease(&self, id: &KeyringId, holder: &str, ttl: Duration, now: Timestamp) -> Result<Lease> {
        self.store.acquire_lease(id, holder, ttl, now).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        self.store.renew_lease(lease, ttl, now).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.store.release_lease(lease).await
    }
    async fn save_job(&self, job: &RotationJob, lease: &Lease) -> Result<()> {
        self.store.save_job(job, lease).await
    }
    async fn load_job(&self, id: &str) -> Result<Option<RotationJob>> {
        self.store.load_job(id).await
    }
    async fn list_jobs(&self, keyring: &KeyringId) -> Result<Vec<RotationJob>> {
        self.store.list_jobs(keyring).await
    }
    async fn save_policy(&self, keyring: &KeyringId, policy: &Policy) -> Result<()> {
        self.store.save_policy(keyring, policy).await
    }
    async fn load_policy(&self, keyring: &KeyringId) -> Result<Option<Policy>> {
        self.store.load_policy(keyring).await
    }
}

keywheel_conformance::key_store_tests!(async { scratch_store() });

/// A file audit sink in a temporary directory; tampering edits the JSON Lines
/// file itself, as an attacker with write access would.
struct SinkFixture {
    sink: Arc<FileAuditSink>,
    dir: TempDir,
}

impl SinkFixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let sink = Arc::new(FileAuditSink::open(dir.path().join("audit.jsonl")).expect("open a new audit log"));
        SinkFixture { sink, dir }
    }
}

#[async_trait]
impl AuditFixture for SinkFixture {
    fn sink(&self) -> Arc<dyn AuditSink> {
        Arc::clone(&self.sink) as Arc<dyn AuditSink>
    }

    async fn tamper(&self, tamper: Tamper) {
        let path = self.dir.path().join("audit.jsonl");
        let text = std::fs::read_to_string(&path).expect("read the audit log");
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        match tamper {
            Tamper::Edit(i) => {
                let mut line: serde_json::Value = serde_json::from_str(&lines[i]).expect("a JSON line");
                line["event"]["actor"] = serde_json::Value::from("mallory");
                lines[i] = line.to_string();
            }
            Tamper::Delete(i) => {
                lines.remove(i);
            }
            Tamper::Swap(i, j) => lines.swap(i, j),
        }
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&path, text).expect("write the tampered audit log");
    }
}

keywheel_conformance::audit_sink_tests!(async { SinkFixture::new() });

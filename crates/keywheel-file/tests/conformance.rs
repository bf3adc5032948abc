//! Runs the keywheel conformance suite (key store and audit sink checks)
//! against the file backend, each test on a fresh temporary directory.

use std::sync::Arc;

use keywheel_conformance::{AuditFixture, Tamper};
use keywheel_core::{AuditSink, KeyStore, async_trait};
use keywheel_file::{FileAuditSink, FileKeyStore};
use tempfile::TempDir;

/// A fresh file store in a temporary directory, deleted with the store.
fn scratch_store() -> Arc<dyn KeyStore> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = FileKeyStore::open(dir.path().join("store")).expect("open a new file store");
    keywheel_conformance::with_guard(store, dir)
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
                // Edit the bytes in place, keeping the line canonical (a
                // re-encoded line would be refused as non-canonical first).
                let line: serde_json::Value = serde_json::from_str(&lines[i]).expect("a JSON line");
                let actor = serde_json::to_string(&line["event"]["actor"]).expect("actor");
                lines[i] = lines[i].replacen(&format!("\"actor\":{actor}"), "\"actor\":\"mallory\"", 1);
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

//! Invariant I9 on the file store: editing a keyring's JSON document (a
//! version's state, compromised flag or algorithm, or removing the seal) gets
//! every keywheel call on that keyring refused with `Error::RecordTampered`,
//! and nothing is written; a document from before record authentication is
//! brought in by an explicit, audited `seal_unsealed`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keywheel_core::{
    Algorithm, AuditSink, Context, Error, KeyVersion, KeyringId, Keywheel, LocalKek, Policy, Purpose, RotateOptions,
    Rotator,
};
use keywheel_file::{FileAuditSink, FileKeyStore};
use serde_json::Value;
use tempfile::TempDir;

const MASTER: [u8; 32] = [1; 32];

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).expect("nonzero")
}

fn ctx() -> Context {
    Context::field("users", "token", "7")
}

struct Dirs {
    _tmp: TempDir,
    store: PathBuf,
    audit: PathBuf,
}

fn keywheel(dirs: &Dirs) -> Keywheel {
    Keywheel::builder()
        .store(Arc::new(FileKeyStore::open(&dirs.store).expect("open")))
        .audit(Arc::new(FileAuditSink::open(&dirs.audit).expect("open audit log")))
        .kek(Arc::new(LocalKek::from_bytes(&MASTER)))
        .build()
        .expect("keywheel")
}

fn keyring_file(dir: &Path, id: &KeyringId) -> PathBuf {
    let files: Vec<PathBuf> = fs::read_dir(dir.join("keyrings"))
        .expect("keyrings dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| fs::read_to_string(p).is_ok_and(|s| s.contains(&format!("\"id\": \"{id}\""))))
        .collect();
    assert_eq!(files.len(), 1, "exactly one document for {id}");
    files[0].clone()
}

/// A store whose keyring `acme/token` has v2 Active and v1 Deprecated, or
/// with `emergency` v1 flagged compromised (and retired: nothing uses it), with
/// a value on v1.
async fn setup(emergency: bool) -> (Dirs, KeyringId, Vec<u8>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = Dirs { store: tmp.path().join("store"), audit: tmp.path().join("audit.jsonl"), _tmp: tmp };
    let kw = keywheel(&dirs);
    let id = KeyringId::new("acme", Purpose::Token).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let value = kw.encrypt(&id, b"secret", &ctx()).await.expect("encrypt");
    if emergency {
        let rotator = Rotator::new(kw.clone()).expect("rng");
        rotator.emergency(&id, "leaked", &RotateOptions::default()).await.expect("emergency");
        let record = kw.record(&id).await.expect("sealed");
        assert!(record.version(v(1)).expect("v1").compromised);
    } else {
        kw.add_version(&id).await.expect("add");
        kw.activate(&id, v(2)).await.expect("activate");
    }
    (dirs, id, value)
}

fn edit(path: &Path, change: impl FnOnce(&mut Value)) {
    let mut doc: Value = serde_json::from_str(&fs::read_to_string(path).expect("read")).expect("json");
    change(&mut doc["keyring"]);
    fs::write(path, serde_json::to_string_pretty(&doc).expect("json")).expect("write");
}

fn assert_tampered<T: std::fmt::Debug>(result: Result<T, Error>, id: &KeyringId, what: &str) {
    match result {
        Err(Error::RecordTampered { keyring, .. }) => assert_eq!(&keyring, id, "{what}: names the keyring"),
        other => panic!("{what}: expected RecordTampered for {id}, got {other:?}"),
    }
}

async fn assert_refused(dirs: &Dirs, id: &KeyringId, value: &[u8]) {
    let file = keyring_file(&dirs.store, id);
    let before = (fs::read(&file).expect("read"), fs::read(&dirs.audit).expect("read"));
    let kw = keywheel(dirs);
    assert_tampered(kw.keyring(id).await, id, "keyring");
    assert_tampered(kw.encrypt(id, b"x", &ctx()).await, id, "encrypt");
    assert_tampered(kw.decrypt(id, value, &ctx()).await, id, "decrypt");
    assert_tampered(kw.activate(id, v(1)).await, id, "activate");
    assert_tampered(kw.retire(id, v(1), Some("test")).await, id, "retire");
    let rotator = Rotator::new(kw.clone()).expect("rng");
    let policy = Policy::for_purpose(id.purpose());
    assert_tampered(rotator.rotate(id, &policy, &RotateOptions::default()).await, id, "rotate");
    assert_tampered(rotator.retire(id, v(1), &policy, Some("forced")).await, id, "engine retire");
    let after = (fs::read(&file).expect("read"), fs::read(&dirs.audit).expect("read"));
    assert!(after == before, "nothing written to the keyring document or the audit log");
}

#[tokio::test]
async fn edits_of_the_keyring_document_are_refused() {
    // (what, whether the setup runs an emergency rotation, the edit)
    type Edit = (&'static str, bool, fn(&mut Value));
    let edits: [Edit; 4] = [
        ("re-activate the deprecated version", false, |k| {
            k["versions"][1]["state"] = "deprecated".into();
            k["versions"][0]["state"] = "active".into();
        }),
        ("clear the compromised flag", true, |k| k["versions"][0]["compromised"] = false.into()),
        ("change the algorithm", false, |k| k["versions"][0]["algorithm"] = "aes256-gcm-siv".into()),
        ("remove the seal", false, |k| {
            k.as_object_mut().expect("object").remove("seal");
        }),
    ];
    for (what, emergency, change) in edits {
        let (dirs, id, value) = setup(emergency).await;
        let file = keyring_file(&dirs.store, &id);
        let original = fs::read(&file).expect("read");
        edit(&file, change);
        assert_ne!(fs::read(&file).expect("read"), original, "{what}: the document changed");
        assert_refused(&dirs, &id, &value).await;
    }
}

#[tokio::test]
async fn a_document_from_before_record_authentication_is_sealed_explicitly() {
    let (dirs, id, value) = setup(false).await;
    edit(&keyring_file(&dirs.store, &id), |k| {
        k.as_object_mut().expect("object").remove("seal");
    });
    assert_refused(&dirs, &id, &value).await;
    let kw = keywheel(&dirs);
    assert!(kw.seal_unsealed(&id, "reviewed: states match the audit trail").await.expect("seal"));
    assert_eq!(&kw.decrypt(&id, &value, &ctx()).await.expect("decrypt")[..], b"secret");
    let audit = FileAuditSink::open(&dirs.audit).expect("open");
    let last = audit.entries().await.expect("entries").expect("durable").pop().expect("an entry");
    assert_eq!(last.event.reason.as_deref(), Some("reviewed: states match the audit trail"));
    assert!(fs::read_to_string(keyring_file(&dirs.store, &id)).expect("read").contains("\"seal\""));
}

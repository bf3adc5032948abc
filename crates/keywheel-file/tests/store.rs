//! File key store behaviour beyond the conformance suite: on-disk layout and
//! modes, permission refusals, corrupt / truncated / unknown-format files,
//! leftover temporary files, wrong master key, reopen after a rotation, and
//! record authentication (edited keyring documents are refused).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keywheel_conformance::integrity::tampered_keyring_is_refused_everywhere;
use keywheel_core::{
    Algorithm, Context, Error, JobPhase, KeyEncryptionKey, KeyMaterial, KeyState, KeyStore, KeyVersion, KeyringChange,
    KeyringId, Keywheel, LocalKek, Policy, Purpose, RotateOptions, RotationJob, Rotator, Timestamp,
};
use keywheel_file::{FileAuditSink, FileKeyStore};
use serde_json::Value;
use tempfile::TempDir;

const MASTER: [u8; 32] = [1; 32];

fn id(tenant: &str) -> KeyringId {
    KeyringId::new(tenant, Purpose::Token).expect("valid id")
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("metadata").permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every file under `dir` with its bytes and mode, to show that nothing was written.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files.insert(path.clone(), (Vec::new(), mode(&path)));
                stack.push(path);
            } else {
                files.insert(path.clone(), (fs::read(&path).expect("read"), mode(&path)));
            }
        }
    }
    files
}

fn keywheel(store: FileKeyStore, audit: &Path, master: &[u8; 32]) -> Keywheel {
    Keywheel::builder()
        .store(Arc::new(store))
        .audit(Arc::new(FileAuditSink::open(audit).expect("open audit log")))
        .kek(Arc::new(LocalKek::from_bytes(master)))
        .build()
        .expect("keywheel")
}

/// A store at `<tmp>/store` with keyring `acme/token` (v1 Active), created through `Keywheel`.
async fn store_with_keyring() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let kw = keywheel(FileKeyStore::open(&dir).expect("open"), &tmp.path().join("audit.jsonl"), &MASTER);
    kw.create_keyring(&id("acme"), Algorithm::Aes256Gcm).await.expect("create keyring");
    (tmp, dir)
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

fn backend_message(err: Error) -> String {
    match err {
        Error::Backend { backend, message, retryable } => {
            assert_eq!(backend, "file key store");
            assert!(!retryable, "a bad file is not retryable: {message}");
            message
        }
        other => panic!("expected a file key store error, got {other:?}"),
    }
}

#[tokio::test]
async fn new_store_has_private_modes_and_versioned_documents() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nested").join("store");
    let kw = keywheel(FileKeyStore::open(&dir).expect("open creates"), &tmp.path().join("audit.jsonl"), &MASTER);
    let acme = id("acme");
    kw.create_keyring(&acme, Algorithm::Aes256Gcm).await.expect("create");
    // Known material, to show it never reaches the disk unwrapped.
    let secret = [0xA5u8; 32];
    let v2 = kw.import_version(&acme, KeyMaterial::from_slice(&secret).expect("32 bytes")).await.expect("import");
    kw.activate(&acme, v2).await.expect("activate");
    let store = kw.store();
    store.save_policy(&acme, &Policy::for_purpose(&Purpose::Token)).await.expect("policy");
    let lease = store.acquire_lease(&acme, "me", Duration::from_secs(60), Timestamp::EPOCH).await.expect("lease");
    let job = RotationJob::new(
        "job-1".into(),
        acme.clone(),
        keywheel_core::JobKind::Rotation,
        None,
        None,
        vec![],
        Timestamp::EPOCH,
    );
    store.save_job(&job, &lease).await.expect("job");

    assert_eq!(mode(&dir), 0o700, "store directory");
    let files = snapshot(&dir);
    let mut documents = 0;
    for (path, (bytes, m)) in &files {
        if path.is_dir() {
            assert_eq!(*m, 0o700, "{} must be 0700", path.display());
            continue;
        }
        assert_eq!(*m, 0o600, "{} must be 0600", path.display());
        if path.extension().is_some_and(|e| e == "json") {
            let doc: serde_json::Value = serde_json::from_slice(bytes).expect("JSON document");
            assert_eq!(doc["format"], 1, "{} must carry format 1", path.display());
            documents += 1;
        }
        assert!(!bytes.windows(32).any(|w| w == secret), "raw key material in {}", path.display());
        let b64 = "paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaU";
        assert!(!String::from_utf8_lossy(bytes).contains(b64), "base64 key material in {}", path.display());
    }
    // store.json + keyring + policy + lease + job.
    assert_eq!(documents, 5, "{:?}", files.keys().collect::<Vec<_>>());
    assert_eq!(mode(&tmp.path().join("audit.jsonl")), 0o600, "audit log");
    let name = keyring_file(&dir, &acme);
    let name = name.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
    assert!(name.starts_with("acme.token.") && name.len() == "acme.token.".len() + 32 + 5, "{name}");
}

#[tokio::test]
async fn an_existing_empty_directory_becomes_0700() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    fs::DirBuilder::new().mode(0o755).create(&dir).expect("mkdir");
    chmod(&dir, 0o755);
    FileKeyStore::open(&dir).expect("open initializes the empty directory");
    assert_eq!(mode(&dir), 0o700);
}

#[tokio::test]
async fn group_or_world_access_is_refused_with_a_fix() {
    let (_tmp, dir) = store_with_keyring().await;
    let file = keyring_file(&dir, &id("acme"));
    for bad in [0o640, 0o604, 0o660] {
        chmod(&file, bad);
        let message = backend_message(FileKeyStore::open(&dir).expect_err("insecure key file"));
        assert!(message.starts_with(&file.display().to_string()), "names the file: {message}");
        assert!(message.contains(&format!("chmod 600 {}", file.display())), "says how to fix: {message}");
        assert!(message.contains("allow_insecure_permissions"), "names the opt-out: {message}");
    }
    let store = FileKeyStore::options().allow_insecure_permissions(true).open(&dir).expect("explicit opt-out");
    assert_eq!(store.list_keyrings().await.expect("list"), vec![id("acme")]);
    chmod(&file, 0o600);

    chmod(&dir, 0o755);
    let message = backend_message(FileKeyStore::open(&dir).expect_err("world-readable directory"));
    assert!(message.contains(&format!("chmod 700 {}", dir.display())), "{message}");
    chmod(&dir, 0o700);

    let lock = dir.join("lock");
    chmod(&lock, 0o644);
    assert!(FileKeyStore::open(&dir).is_err(), "every store file is checked");
    chmod(&lock, 0o600);
    FileKeyStore::open(&dir).expect("opens again once fixed");
}

#[tokio::test]
async fn a_foreign_directory_is_never_taken_over() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("home");
    fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o755);
    fs::write(dir.join("notes.txt"), "mine").expect("write");
    let before = snapshot(&dir);
    let message = backend_message(FileKeyStore::open(&dir).expect_err("non-empty, not a store"));
    assert!(message.contains("not a keywheel store") && message.contains("notes.txt"), "{message}");
    assert_eq!(snapshot(&dir), before, "nothing created or changed");
    assert_eq!(mode(&dir), 0o755);

    let missing = tmp.path().join("missing");
    let err = FileKeyStore::options().create(false).open(&missing).expect_err("no store");
    assert!(backend_message(err).contains("does not exist"));
    assert!(!missing.exists());
}

/// What a damaged keyring document turns into, for every way of damaging it.
#[tokio::test]
async fn damaged_keyring_documents_are_typed_errors_and_never_overwritten() {
    let (tmp, dir) = store_with_keyring().await;
    let acme = id("acme");
    let file = keyring_file(&dir, &acme);
    let good = fs::read(&file).expect("read");
    let text = String::from_utf8(good.clone()).expect("utf-8");
    let other = tmp.path().join("other");
    let other_kw = keywheel(FileKeyStore::open(&other).expect("open"), &tmp.path().join("other.jsonl"), &MASTER);
    other_kw.create_keyring(&id("zeta"), Algorithm::Aes256Gcm).await.expect("create");
    let foreign = fs::read(keyring_file(&other, &id("zeta"))).expect("read");

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        ("empty", Vec::new(), "truncated"),
        ("garbage", b"\x00\x01not json at all".to_vec(), "corrupt"),
        ("unknown format", text.replacen("\"format\": 1", "\"format\": 2", 1).into_bytes(), "unknown format version 2"),
        ("no format", text.replacen("\"format\": 1,", "", 1).into_bytes(), "no \"format\" field"),
        ("wrong shape", text.replacen("\"generation\"", "\"generaton\"", 1).into_bytes(), "does not match format 1"),
        (
            "invalid record",
            text.replacen("\"active\"", "\"pending\"", 1)
                .replacen("\"activated_at\": null", "\"activated_at\": 1", 1)
                .into_bytes(),
            "invalid keyring record",
        ),
        ("another keyring", foreign, "renamed or copied"),
    ];
    // A store opened before the damage sees it on its next read.
    let open = FileKeyStore::open(&dir).expect("open while intact");
    for (what, bytes, expected) in cases {
        fs::write(&file, &bytes).expect("damage the file");
        let check = |err: Error, op: &str| {
            let message = backend_message(err);
            assert!(message.starts_with(&file.display().to_string()), "{what}/{op}: names the file: {message}");
            assert!(message.contains(expected), "{what}/{op}: says {expected:?}: {message}");
        };
        // The store still opens; the damaged file is listed, never used.
        let reopened = FileKeyStore::open(&dir).expect("a damaged document does not stop the store");
        let damaged = reopened.damaged().expect("damaged");
        assert_eq!(damaged.len(), 1, "{what}: {damaged:?}");
        assert_eq!((damaged[0].kind, &damaged[0].path), (keywheel_file::DocumentKind::Keyring, &file), "{what}");
        assert!(damaged[0].problem.contains(expected), "{what}: {damaged:?}");
        assert!(reopened.list_keyrings().await.expect("list").is_empty(), "{what}: left out of the listing");
        check(reopened.load_keyring(&acme).await.expect_err("load refuses"), "load after reopen");
        check(open.load_keyring(&acme).await.expect_err("load refuses"), "load");
        check(open.check().expect_err("check refuses"), "check");
        let change = KeyringChange::MarkCompromised { version: KeyVersion::FIRST };
        check(open.update_keyring(&acme, 1, &[change]).await.expect_err("update refuses"), "update");
        let fresh = keywheel_core::KeyringRecord::new(acme.clone(), Algorithm::Aes256Gcm, Timestamp::EPOCH);
        check(open.create_keyring(&fresh).await.expect_err("create refuses"), "create");
        assert_eq!(fs::read(&file).expect("read"), bytes, "{what}: the damaged file was never overwritten");
    }
    fs::write(&file, &good).expect("restore");
    let store = FileKeyStore::open(&dir).expect("opens once restored");
    assert_eq!(store.load_keyring(&acme).await.expect("load").map(|r| r.generation), Some(1));
}

#[tokio::test]
async fn damaged_policy_lease_and_job_documents_are_never_overwritten() {
    let (_tmp, dir) = store_with_keyring().await;
    let acme = id("acme");
    let store = FileKeyStore::open(&dir).expect("open");
    let policy = Policy::for_purpose(&Purpose::Token);
    store.save_policy(&acme, &policy).await.expect("policy");
    let lease = store.acquire_lease(&acme, "me", Duration::from_secs(60), Timestamp::EPOCH).await.expect("lease");
    let job = RotationJob::new(
        "job-1".into(),
        acme.clone(),
        keywheel_core::JobKind::Rotation,
        None,
        None,
        vec![],
        Timestamp::EPOCH,
    );
    store.save_job(&job, &lease).await.expect("job");
    let only = |sub: &str| {
        let files: Vec<PathBuf> = fs::read_dir(dir.join(sub)).expect("dir").map(|e| e.expect("entry").path()).collect();
        assert_eq!(files.len(), 1, "{sub}");
        files[0].clone()
    };
    let (policy_file, lease_file, job_file) = (only("policies"), only("leases"), only("jobs"));

    fs::write(&job_file, b"{\"format\":1,\"job\":").expect("truncate job");
    let message = backend_message(store.save_job(&job, &lease).await.expect_err("job refuses"));
    assert!(message.starts_with(&job_file.display().to_string()) && message.contains("truncated"), "{message}");
    assert!(backend_message(store.load_job("job-1").await.expect_err("load job")).contains("truncated"));
    assert!(store.list_jobs(&acme).await.is_err());
    assert_eq!(fs::read(&job_file).expect("read"), b"{\"format\":1,\"job\":");

    fs::write(&policy_file, b"{\"format\":7}").expect("future policy");
    let message = backend_message(store.save_policy(&acme, &policy).await.expect_err("policy refuses"));
    assert!(message.starts_with(&policy_file.display().to_string()), "{message}");
    assert!(message.contains("unknown format version 7"), "{message}");
    assert_eq!(fs::read(&policy_file).expect("read"), b"{\"format\":7}");

    fs::write(&lease_file, b"garbage").expect("corrupt lease");
    for result in [
        store.acquire_lease(&acme, "me", Duration::from_secs(1), Timestamp::EPOCH).await,
        store.renew_lease(&lease, Duration::from_secs(1), Timestamp::EPOCH).await,
    ] {
        let message = backend_message(result.expect_err("lease refuses"));
        assert!(message.starts_with(&lease_file.display().to_string()) && message.contains("corrupt"), "{message}");
    }
    assert!(store.release_lease(&lease).await.is_err());
    assert_eq!(fs::read(&lease_file).expect("read"), b"garbage");

    // The store still opens and lists each damaged file with its keyring
    // where the file shows it (the job document was cut before its keyring).
    let reopened = FileKeyStore::open(&dir).expect("open");
    let damaged: Vec<_> =
        reopened.damaged().expect("damaged").into_iter().map(|d| (d.kind, d.path, d.keyring)).collect();
    use keywheel_file::DocumentKind::{Job, Lease, Policy as PolicyDoc};
    assert_eq!(
        damaged,
        [(PolicyDoc, policy_file, Some(acme.clone())), (Lease, lease_file, Some(acme.clone())), (Job, job_file, None)]
    );
    assert_eq!(
        reopened.list_keyrings().await.expect("list"),
        std::slice::from_ref(&acme),
        "the keyring itself is intact"
    );
    assert!(reopened.check().is_err(), "check still refuses a store with a damaged file");
}

#[tokio::test]
async fn an_unknown_store_format_is_refused() {
    let (_tmp, dir) = store_with_keyring().await;
    let marker = dir.join("store.json");
    fs::write(&marker, "{\"format\":2,\"kind\":\"keywheel-file-store\"}\n").expect("write");
    let message = backend_message(FileKeyStore::open(&dir).expect_err("unknown store format"));
    assert!(message.starts_with(&marker.display().to_string()), "{message}");
    assert!(message.contains("unknown format version 2"), "{message}");
}

#[tokio::test]
async fn leftover_temporary_files_are_ignored_then_removed_on_open() {
    let (_tmp, dir) = store_with_keyring().await;
    let leftover = dir.join("keyrings").join(".acme.token.0123.json.tmp-99999-0");
    fs::write(&leftover, b"{\"format\":1,\"keyr").expect("write");
    chmod(&leftover, 0o600);
    let store = FileKeyStore::open(&dir).expect("open despite a leftover");
    assert!(!leftover.exists(), "removed on open");
    assert_eq!(store.check().expect("check").keyrings, 1);
    // One left while a store is open is ignored by reads.
    fs::write(&leftover, b"junk").expect("write");
    chmod(&leftover, 0o600);
    assert_eq!(store.list_keyrings().await.expect("list"), vec![id("acme")]);
}

#[tokio::test]
async fn a_wrong_master_key_errors_before_anything_is_written() {
    let (tmp, dir) = store_with_keyring().await;
    let before = snapshot(tmp.path());

    let store = FileKeyStore::options().create(false).open(&dir).expect("open");
    let wrong = LocalKek::from_bytes(&[2; 32]);
    let err = store.check_kek(&wrong).await.expect_err("wrong master key");
    assert!(matches!(&err, Error::WrongMasterKey { kek_id, .. } if kek_id == "local"), "{err:?}");
    let renamed = LocalKek::from_bytes(&MASTER).with_id("vault");
    assert!(matches!(store.check_kek(&renamed).await, Err(Error::KekMismatch { .. })));
    assert_eq!(snapshot(tmp.path()), before, "checking a KEK writes nothing");

    // Through Keywheel, the first use unwraps and fails the same way, unaudited.
    let kw = keywheel(store, &tmp.path().join("audit.jsonl"), &[2; 32]);
    let ctx = Context::field("t", "c", "1");
    let err = kw.encrypt(&id("acme"), b"x", &ctx).await.expect_err("wrong master key");
    assert!(matches!(err, Error::WrongMasterKey { .. }), "{err:?}");
    assert_eq!(snapshot(tmp.path()), before, "nothing written with a wrong master key");

    let store = FileKeyStore::open(&dir).expect("open");
    assert_eq!(store.check_kek(&LocalKek::from_bytes(&MASTER)).await.expect("right key"), 1);
}

#[tokio::test]
async fn reopened_store_decrypts_after_a_rotation() {
    let (tmp, dir) = store_with_keyring().await;
    let audit = tmp.path().join("audit.jsonl");
    let acme = id("acme");
    let ctx = Context::field("users", "token", "7");
    let old = {
        let kw = keywheel(FileKeyStore::open(&dir).expect("open"), &audit, &MASTER);
        let old = kw.encrypt_text(&acme, b"before", &ctx).await.expect("encrypt");
        let policy = Policy { activation_delay: Duration::ZERO, ..Policy::for_purpose(&Purpose::Token) };
        let report = Rotator::new(kw.clone())
            .expect("rotator")
            .rotate(&acme, &policy, &RotateOptions::default())
            .await
            .expect("rotate");
        assert_eq!(report.phase, JobPhase::Completed);
        old
    };
    let store = FileKeyStore::options().create(false).open(&dir).expect("reopen");
    assert_eq!(store.check_kek(&LocalKek::from_bytes(&MASTER)).await.expect("kek"), 2);
    let jobs = store.list_jobs(&acme).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].phase, JobPhase::Completed);
    assert_eq!(store.current_lease(&acme).expect("lease"), None, "released after the rotation");
    let kw = keywheel(store, &audit, &MASTER);
    let record = kw.record(&acme).await.expect("record");
    let states: Vec<KeyState> = record.versions.iter().map(|v| v.state).collect();
    assert_eq!(states, vec![KeyState::Deprecated, KeyState::Active]);
    assert_eq!(&kw.decrypt(&acme, old.as_bytes(), &ctx).await.expect("old value")[..], b"before");
    let new = kw.encrypt_text(&acme, b"after", &ctx).await.expect("encrypt");
    assert!(new.starts_with("kw:v2:"), "{new}");
    assert_eq!(&kw.decrypt(&acme, new.as_bytes(), &ctx).await.expect("new value")[..], b"after");
    let keys = LocalKek::from_bytes(&MASTER).integrity_keys().await.expect("integrity keys");
    let report = keywheel_file::verify_log(&audit, &keywheel_core::ChainVerifier::new().keys(&keys)).expect("verify");
    assert!(report.macs_checked);
    assert!(report.is_intact(), "{report}");
}

/// Two store instances (as two processes would have) updating one keyring
/// with compare-and-set: every successful update counts exactly once.
fn hammer(stores: Vec<Arc<FileKeyStore>>, each: u64) -> u64 {
    let acme = id("acme");
    let threads: Vec<_> = stores
        .into_iter()
        .map(|store| {
            let acme = acme.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
                let mut done = 0;
                while done < each {
                    let record = rt.block_on(store.load_keyring(&acme)).expect("load").expect("keyring");
                    let generation = record.generation;
                    // A lifecycle change (a rewrap to the same material) moves the generation.
                    let wrapped = record.version(KeyVersion::FIRST).and_then(|v| v.wrapped.clone()).expect("live");
                    let change = KeyringChange::Rewrap { version: KeyVersion::FIRST, wrapped };
                    match rt.block_on(store.update_keyring(&acme, generation, &[change])) {
                        Ok(_) => done += 1,
                        Err(Error::GenerationConflict { .. }) => continue,
                        Err(e) => panic!("update failed: {e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("updater");
    }
    each
}

#[tokio::test]
async fn a_deleted_lock_file_does_not_break_exclusion() {
    let (_tmp, dir) = store_with_keyring().await;
    let before = Arc::new(FileKeyStore::open(&dir).expect("open"));
    fs::remove_file(dir.join("lock")).expect("a cleanup script deletes the lock file");
    let after = Arc::new(FileKeyStore::open(&dir).expect("open creates a new lock file"));
    let start = after.load_keyring(&id("acme")).await.expect("load").expect("keyring").generation;
    let each = hammer(vec![before, Arc::clone(&after)], 40);
    let end = after.load_keyring(&id("acme")).await.expect("load").expect("keyring").generation;
    assert_eq!(end, start + 2 * each, "no update may be lost: both instances lock the same file again");
    assert!(dir.join("lock").exists());
}

#[tokio::test]
async fn a_symlinked_store_directory_is_accepted() {
    let (tmp, dir) = store_with_keyring().await;
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).expect("symlink");
    let store = FileKeyStore::options().create(false).open(&link).expect("open through the symlink");
    assert_eq!(store.list_keyrings().await.expect("list"), vec![id("acme")]);
}

// ---------------------------------------------------------------- record authentication (I9)
//
// Editing a keyring's JSON document (a version's state, compromised flag or
// algorithm, or removing the seal) gets every keywheel call on that keyring
// refused with `Error::RecordTampered`, and nothing is written; a document from
// before record authentication is brought in by an explicit, audited `seal_unsealed`.

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).expect("nonzero")
}

fn sealed_ctx() -> Context {
    Context::field("users", "token", "7")
}

struct Dirs {
    _tmp: TempDir,
    store: PathBuf,
    audit: PathBuf,
}

impl Dirs {
    fn keywheel(&self) -> Keywheel {
        keywheel(FileKeyStore::open(&self.store).expect("open"), &self.audit, &MASTER)
    }
}

/// A store whose keyring `acme/token` has v2 Active and v1 Deprecated, or
/// with `emergency` v1 flagged compromised (and retired: nothing uses it), with
/// a value on v1.
async fn sealed_setup(emergency: bool) -> (Dirs, KeyringId, Vec<u8>) {
    let (tmp, store) = store_with_keyring().await;
    let dirs = Dirs { store, audit: tmp.path().join("audit.jsonl"), _tmp: tmp };
    let kw = dirs.keywheel();
    let id = id("acme");
    let value = kw.encrypt(&id, b"secret", &sealed_ctx()).await.expect("encrypt");
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

async fn assert_refused(dirs: &Dirs, id: &KeyringId, value: &[u8]) {
    let file = keyring_file(&dirs.store, id);
    let before = (fs::read(&file).expect("read"), fs::read(&dirs.audit).expect("read"));
    tampered_keyring_is_refused_everywhere(&dirs.keywheel(), id, value, &sealed_ctx()).await;
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
        let (dirs, id, value) = sealed_setup(emergency).await;
        let file = keyring_file(&dirs.store, &id);
        let original = fs::read(&file).expect("read");
        edit(&file, change);
        assert_ne!(fs::read(&file).expect("read"), original, "{what}: the document changed");
        assert_refused(&dirs, &id, &value).await;
    }
}

#[tokio::test]
async fn a_document_from_before_record_authentication_is_sealed_explicitly() {
    let (dirs, id, value) = sealed_setup(false).await;
    edit(&keyring_file(&dirs.store, &id), |k| {
        k.as_object_mut().expect("object").remove("seal");
    });
    assert_refused(&dirs, &id, &value).await;
    let kw = dirs.keywheel();
    assert!(kw.seal_unsealed(&id, "reviewed: states match the audit trail").await.expect("seal"));
    assert_eq!(&kw.decrypt(&id, &value, &sealed_ctx()).await.expect("decrypt")[..], b"secret");
    let audit = FileAuditSink::open(&dirs.audit).expect("open");
    let last =
        keywheel_core::AuditSink::entries(&audit).await.expect("entries").expect("durable").pop().expect("an entry");
    assert_eq!(last.event.reason.as_deref(), Some("reviewed: states match the audit trail"));
    assert!(fs::read_to_string(keyring_file(&dirs.store, &id)).expect("read").contains("\"seal\""));
}

/// Stores written before reversible retirement keep loading: a keyring that
/// uses none of the new fields is written without them (the same document
/// as before), a policy document without a quarantine loads with the 7-day
/// default, and a Disabled version with its quarantine survives a reopen.
#[tokio::test]
async fn documents_from_before_reversible_retirement_load_and_disabled_versions_persist() {
    let (tmp, dir) = store_with_keyring().await;
    let audit = tmp.path().join("audit.jsonl");
    let text = fs::read_to_string(keyring_file(&dir, &id("acme"))).expect("read");
    for field in ["disabled_at", "destroy_after", "erased_at"] {
        assert!(!text.contains(field), "an untouched keyring is written as before, without {field}:\n{text}");
    }
    let kw = keywheel(FileKeyStore::open(&dir).expect("open"), &audit, &MASTER);
    kw.set_policy(&id("acme"), &Policy::for_purpose(&Purpose::Token)).await.expect("policy");
    let policy_file = fs::read_dir(dir.join("policies")).expect("policies").next().expect("one").expect("entry").path();
    let mut doc: Value = serde_json::from_str(&fs::read_to_string(&policy_file).expect("read")).expect("json");
    let policy = doc.as_object_mut().expect("doc").values_mut().find(|v| v.get("quarantine").is_some());
    policy.expect("the policy holds a quarantine").as_object_mut().expect("policy").remove("quarantine");
    fs::write(&policy_file, serde_json::to_string_pretty(&doc).expect("json")).expect("write");
    let reopened = keywheel(FileKeyStore::open(&dir).expect("open"), &audit, &MASTER);
    assert_eq!(reopened.policy(&id("acme")).await.expect("policy").quarantine, keywheel_core::DEFAULT_QUARANTINE);

    let old = reopened.encrypt(&id("acme"), b"v1", &Context::empty()).await.expect("encrypt");
    let v2 = reopened.add_version(&id("acme")).await.expect("add");
    reopened.activate(&id("acme"), v2).await.expect("activate");
    reopened.retire_forced(&id("acme"), KeyVersion::FIRST, "exported").await.expect("disable");
    let again = keywheel(FileKeyStore::open(&dir).expect("open"), &audit, &MASTER);
    let v1 = again.record(&id("acme")).await.expect("record").versions[0].clone();
    assert_eq!(v1.state, KeyState::Disabled);
    assert!(v1.wrapped.is_some() && v1.destroy_after.is_some());
    assert!(matches!(again.decrypt(&id("acme"), &old, &Context::empty()).await, Err(Error::KeyDisabled { .. })));
}

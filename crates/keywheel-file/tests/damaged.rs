//! One damaged document blocks only what it holds: the store opens, the other
//! keyrings keep working through `Keywheel` and the rotation engine, the
//! damaged keyring fails with the error naming its file, and nothing
//! overwrites it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keywheel_core::{
    Algorithm, Context, Error, JobKind, KeyStore, KeyringId, Keywheel, LocalKek, Purpose, RotationJob, Timestamp,
};
use keywheel_file::{DocumentKind, FileAuditSink, FileKeyStore};

const MASTER: [u8; 32] = [3; 32];

fn id(tenant: &str) -> KeyringId {
    KeyringId::new(tenant, Purpose::Token).expect("valid id")
}

fn keywheel(dir: &Path, audit: &Path) -> Keywheel {
    Keywheel::builder()
        .store(Arc::new(FileKeyStore::options().create(true).open(dir).expect("open store")))
        .audit(Arc::new(FileAuditSink::open(audit).expect("open audit log")))
        .kek(Arc::new(LocalKek::from_bytes(&MASTER)))
        .build()
        .expect("keywheel")
}

fn only_file_of(dir: &Path, sub: &str, id: &KeyringId) -> PathBuf {
    let needle = id.to_string();
    let files: Vec<PathBuf> = fs::read_dir(dir.join(sub))
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| fs::read_to_string(p).is_ok_and(|s| s.contains(&needle)))
        .collect();
    assert_eq!(files.len(), 1, "one {sub} document of {id}");
    files[0].clone()
}

fn names_file(err: &Error, file: &Path) -> bool {
    err.to_string().contains(&file.display().to_string())
}

#[tokio::test]
async fn a_truncated_keyring_document_blocks_only_its_keyring() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, audit) = (tmp.path().join("store"), tmp.path().join("audit.jsonl"));
    let (acme, zeta) = (id("acme"), id("zeta"));
    let kw = keywheel(&dir, &audit);
    for k in [&acme, &zeta] {
        kw.create_keyring(k, Algorithm::Aes256Gcm).await.expect("create");
    }
    let ctx = Context::field("users", "token", "1");
    let before = kw.encrypt(&zeta, b"zeta's secret", &ctx).await.expect("encrypt");

    let file = only_file_of(&dir, "keyrings", &acme);
    let good = fs::read(&file).expect("read");
    let truncated = good[..good.len() / 3].to_vec();
    fs::write(&file, &truncated).expect("truncate");

    // A new process: the store opens, lists the good keyring, reports the bad file.
    let kw = keywheel(&dir, &audit);
    assert_eq!(kw.list_keyrings().await.expect("list"), std::slice::from_ref(&zeta));
    let store = FileKeyStore::options().create(false).open(&dir).expect("open");
    let damaged = store.damaged().expect("damaged");
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!((damaged[0].kind, &damaged[0].path, &damaged[0].keyring), (DocumentKind::Keyring, &file, &None));
    assert!(damaged[0].problem.contains("truncated") && damaged[0].problem.contains("restore it"), "{damaged:?}");

    // The other keyring: decrypt, encrypt, add and activate a version.
    assert_eq!(&kw.decrypt(&zeta, &before, &ctx).await.expect("decrypt")[..], b"zeta's secret");
    let v2 = kw.add_version(&zeta).await.expect("add version");
    kw.activate(&zeta, v2).await.expect("activate");
    let after = kw.encrypt(&zeta, b"new", &ctx).await.expect("encrypt under v2");
    assert_eq!(keywheel_core::version_of(&after).expect("version"), v2);

    // The damaged keyring: every operation names the file; nothing rewrites it.
    let load = kw.encrypt(&acme, b"x", &ctx).await.expect_err("encrypt refuses");
    assert!(names_file(&load, &file) && load.to_string().contains("truncated"), "{load}");
    let add = kw.add_version(&acme).await.expect_err("add refuses");
    assert!(names_file(&add, &file), "{add}");
    let create = kw.create_keyring(&acme, Algorithm::Aes256Gcm).await.expect_err("create refuses");
    assert!(names_file(&create, &file), "{create}");
    assert_eq!(fs::read(&file).expect("read"), truncated, "never overwritten");

    // Restored from a backup, it works again.
    fs::write(&file, &good).expect("restore");
    assert!(store.damaged().expect("damaged").is_empty());
    assert_eq!(keywheel(&dir, &audit).list_keyrings().await.expect("list"), [acme.clone(), zeta]);
}

#[tokio::test]
async fn a_damaged_job_blocks_the_jobs_of_its_keyring_when_it_still_names_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let kw = keywheel(&dir, &tmp.path().join("audit.jsonl"));
    let (acme, zeta) = (id("acme"), id("zeta"));
    for k in [&acme, &zeta] {
        kw.create_keyring(k, Algorithm::Aes256Gcm).await.expect("create");
    }
    let store = FileKeyStore::options().create(false).open(&dir).expect("open");
    for (job_id, k) in [("job-acme", &acme), ("job-zeta", &zeta)] {
        let lease = store.acquire_lease(k, "me", Duration::from_secs(60), Timestamp::EPOCH).await.expect("lease");
        let job = RotationJob::new(job_id.into(), k.clone(), JobKind::Rotation, None, None, vec![], Timestamp::EPOCH);
        store.save_job(&job, &lease).await.expect("save job");
        store.release_lease(&lease).await.expect("release");
    }
    let job_file = only_file_of(&dir, "jobs", &acme);
    let text = fs::read_to_string(&job_file).expect("read");
    // Cut after the keyring field: the document no longer parses but shows whose it is.
    let cut = text.find("\"kind\"").expect("kind field");
    fs::write(&job_file, &text[..cut]).expect("truncate");

    assert_eq!(store.list_jobs(&zeta).await.expect("zeta's jobs").len(), 1, "another keyring's jobs are listed");
    let err = store.list_jobs(&acme).await.expect_err("acme's jobs refuse");
    assert!(names_file(&err, &job_file) && err.to_string().contains("truncated"), "{err}");
    let damaged = store.damaged().expect("damaged");
    assert_eq!(damaged.len(), 1);
    assert_eq!((damaged[0].kind, damaged[0].keyring.as_ref()), (DocumentKind::Job, Some(&acme)));

    // Cut before the keyring: it could be anyone's unfinished job, so every keyring's list refuses.
    let cut = text.find("\"keyring\"").expect("keyring field");
    fs::write(&job_file, &text[..cut]).expect("truncate more");
    for k in [&acme, &zeta] {
        let err = store.list_jobs(k).await.expect_err("refuses");
        assert!(names_file(&err, &job_file), "{err}");
    }
    assert_eq!(store.damaged().expect("damaged")[0].keyring, None);
    assert_eq!(fs::read_to_string(&job_file).expect("read"), text[..cut], "never overwritten");
}

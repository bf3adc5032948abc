//! Checks of record authentication that every backend's tests run on a
//! keyring they tampered with in their own way (SQL, a JSON edit, a direct
//! store write).

use keywheel_core::{Context, Error, KeyVersion, KeyringId, Keywheel, Policy, Result, RotateOptions, Rotator};

/// `result` is [`Error::RecordTampered`] naming `id`, and not retryable.
pub fn assert_tampered<T: std::fmt::Debug>(result: Result<T>, id: &KeyringId, what: &str) {
    match result {
        Err(Error::RecordTampered { keyring, detail }) => {
            assert_eq!(&keyring, id, "{what}: the error names the keyring");
            let err = Error::RecordTampered { keyring, detail };
            assert!(err.to_string().contains(&id.canonical()), "{what}: {err}");
            assert!(!err.is_retryable(), "{what}: not retryable");
        }
        other => panic!("{what}: expected RecordTampered for {id}, got {other:?}"),
    }
}

/// Every entry point that reads the keyring `id` refuses it with
/// [`Error::RecordTampered`]: the facade (`keyring`, `record`, `encrypt`,
/// `decrypt` of `value` under `context`, `add_version`, `activate`,
/// `retire_forced`), the engine (`rotate`, `retire`) and the sealed store
/// itself. The caller checks afterwards that nothing was written or audited.
pub async fn tampered_keyring_is_refused_everywhere(kw: &Keywheel, id: &KeyringId, value: &[u8], context: &Context) {
    let v1 = KeyVersion::FIRST;
    assert_tampered(kw.keyring(id).await, id, "keyring");
    assert_tampered(kw.record(id).await, id, "record");
    assert_tampered(kw.encrypt(id, b"x", context).await, id, "encrypt");
    assert_tampered(kw.decrypt(id, value, context).await, id, "decrypt");
    assert_tampered(kw.add_version(id).await, id, "add_version");
    assert_tampered(kw.activate(id, v1).await, id, "activate");
    assert_tampered(kw.retire_forced(id, v1, "test").await, id, "retire_forced");
    let rotator = Rotator::new(kw.clone()).expect("rotator");
    let policy = Policy::for_purpose(id.purpose());
    assert_tampered(rotator.rotate(id, &policy, &RotateOptions::default()).await, id, "rotate");
    assert_tampered(rotator.retire(id, v1, &policy, Some("forced")).await, id, "engine retire");
    assert_tampered(kw.store().update_keyring(id, 0, &[]).await, id, "sealed store update");
}

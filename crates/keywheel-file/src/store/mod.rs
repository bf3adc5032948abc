//! [`FileKeyStore`]: keyrings, policies, rotation jobs and leases as JSON
//! documents in a directory, each change one atomic file replacement under a
//! cross-process lock.

mod check;
mod documents;
mod key_store;
mod open;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use keywheel_core::{KeyringId, KeyringRecord, Lease, Policy, Result, RotationJob};
use serde::{Deserialize, Serialize};

use crate::fsio::{Backend, LockGuard, ProcessLock};

pub use check::{DamagedFile, DocumentKind, StoreSummary};
pub use open::FileStoreOptions;

const BACKEND: Backend = Backend("file key store");

/// The marker document that makes a directory a store.
pub(crate) const STORE_FILE: &str = "store.json";
/// The lock file (empty; only ever locked).
pub(crate) const LOCK_FILE: &str = "lock";

/// The subdirectories, one document per keyring (or per job).
const KEYRINGS: &str = "keyrings";
const POLICIES: &str = "policies";
const LEASES: &str = "leases";
const JOBS: &str = "jobs";
const SUBDIRS: [&str; 4] = [KEYRINGS, POLICIES, LEASES, JOBS];

#[derive(Serialize, Deserialize)]
struct KeyringDoc {
    format: u64,
    keyring: KeyringRecord,
}

#[derive(Serialize, Deserialize)]
struct PolicyDoc {
    format: u64,
    keyring: KeyringId,
    policy: Policy,
}

/// The lease state of one keyring; kept after release so tokens only grow.
#[derive(Serialize, Deserialize)]
struct LeaseDoc {
    format: u64,
    keyring: KeyringId,
    last_token: u64,
    current: Option<Lease>,
}

#[derive(Serialize, Deserialize)]
struct JobDoc {
    format: u64,
    job: RotationJob,
}

/// A [`KeyStore`](keywheel_core::KeyStore) in a local directory, for single hosts and the CLI.
///
/// * **Atomic changes**: every change writes a temporary file, fsyncs it,
///   renames it over the old document and fsyncs the directory, so a crash
///   leaves the old or the new document, never a torn one. A compare-and-set
///   ([`update_keyring`](keywheel_core::KeyStore::update_keyring)) touches one document.
/// * **Cross-process exclusion**: every read-modify-write holds an OS file
///   lock (`std::fs::File::lock`) on `<dir>/lock` for the duration of that one
///   operation; readers need no lock because renames are atomic. Leases expire
///   by time, so a lease whose holder died is simply taken over later.
/// * **Permissions**: files are created 0600 and directories 0700; opening a
///   store whose directory or files give the group or others any access is
///   refused with an error that says how to fix it (opt out with
///   [`FileStoreOptions::allow_insecure_permissions`]).
/// * **Bad input**: a corrupt, truncated or unknown-format document is an
///   [`Error::Backend`](keywheel_core::Error::Backend) naming the file; the store never writes over a
///   document it could not parse. One damaged document blocks only what it
///   holds: the store opens, the other keyrings keep working, and
///   [`damaged`](Self::damaged) lists every damaged file.
/// * **Blocking**: the async methods do their (short) file I/O and lock waits
///   inline, like the memory store: about a millisecond per change, dominated
///   by the two fsyncs; reads take tens of microseconds and no lock.
/// * **Material** is only ever stored KEK-wrapped; call
///   [`check_kek`](Self::check_kek) after opening to reject a wrong master key
///   before anything is written.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> keywheel_core::Result<()> {
/// use std::sync::Arc;
/// use keywheel_core::{Algorithm, Context, Keywheel, KeyringId, LocalKek, Purpose};
/// use keywheel_file::{FileAuditSink, FileKeyStore};
///
/// let dir = tempfile::tempdir().expect("tempdir");
/// let kek = Arc::new(LocalKek::from_bytes(&[7; 32]));
/// let kw = Keywheel::builder()
///     .store(Arc::new(FileKeyStore::open(dir.path().join("keys"))?))
///     .audit(Arc::new(FileAuditSink::open(dir.path().join("audit.jsonl"))?))
///     .kek(kek.clone())
///     .build()?;
/// let id = KeyringId::new("acme", Purpose::Token)?;
/// kw.create_keyring(&id, Algorithm::Aes256Gcm).await?;
/// let ctx = Context::field("users", "token", "1");
/// let value = kw.encrypt(&id, b"secret", &ctx).await?;
///
/// // Later, or in another process: reopen, check the master key, decrypt.
/// let store = FileKeyStore::options().create(false).open(dir.path().join("keys"))?;
/// assert_eq!(store.check_kek(kek.as_ref()).await?, 1);
/// let kw = Keywheel::builder()
///     .store(Arc::new(store))
///     .audit(Arc::new(FileAuditSink::open(dir.path().join("audit.jsonl"))?))
///     .kek(kek)
///     .build()?;
/// assert_eq!(&kw.decrypt(&id, &value, &ctx).await?[..], b"secret");
/// # Ok(()) }
/// ```
pub struct FileKeyStore {
    dir: PathBuf,
    lock: ProcessLock<()>,
}

impl fmt::Debug for FileKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKeyStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

// Helpers shared by the operation families.
impl FileKeyStore {
    /// Names in a directory (none if it does not exist).
    fn entries(dir: &Path) -> Result<Vec<String>> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(BACKEND.io(dir, "list the directory", &e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| BACKEND.io(dir, "list the directory", &e))?;
            match entry.file_name().into_string() {
                Ok(name) => names.push(name),
                // Not a name the store writes; ignore it like any foreign file.
                Err(_) => continue,
            }
        }
        names.sort();
        Ok(names)
    }

    fn lock(&self) -> Result<LockGuard<'_, ()>> {
        self.lock.lock(BACKEND)
    }
}

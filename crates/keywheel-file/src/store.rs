//! [`FileKeyStore`]: keyrings, policies, rotation jobs and leases as JSON
//! documents in a directory, each change one atomic file replacement under a
//! cross-process lock.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use keywheel_core::{
    Error, KeyEncryptionKey, KeyState, KeyStore, KeyringChange, KeyringId, KeyringRecord, Lease, Policy, Result,
    RotationJob, Timestamp, async_trait, check_fence, grant_lease,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::fsio::{
    self, Backend, DIR_MODE, FILE_MODE, FORMAT, LockGuard, ProcessLock, atomic_write, file_name_for, is_document,
    is_temporary, parse_document, read_optional, sync_dir, to_document,
};

const BACKEND: Backend = Backend("file key store");

/// The marker document that makes a directory a store.
pub(crate) const STORE_FILE: &str = "store.json";
/// The lock file (empty; only ever locked).
pub(crate) const LOCK_FILE: &str = "lock";
const STORE_KIND: &str = "keywheel-file-store";

/// The subdirectories, one document per keyring (or per job).
const KEYRINGS: &str = "keyrings";
const POLICIES: &str = "policies";
const LEASES: &str = "leases";
const JOBS: &str = "jobs";
const SUBDIRS: [&str; 4] = [KEYRINGS, POLICIES, LEASES, JOBS];

const OPT_OUT: &str = " (or, if this access is intended, open with FileStoreOptions::allow_insecure_permissions(true))";

#[derive(Serialize, Deserialize)]
struct StoreDoc {
    format: u64,
    kind: String,
}

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

/// How [`FileKeyStore`] opens a directory. `FileKeyStore::open(dir)` is
/// `FileStoreOptions::new().open(dir)`.
///
/// ```
/// # fn main() -> keywheel_core::Result<()> {
/// use keywheel_file::FileStoreOptions;
/// let dir = tempfile::tempdir().expect("tempdir");
/// // Refuse to create a store: only open an existing one (e.g. in a CLI).
/// let err = FileStoreOptions::new().create(false).open(dir.path()).expect_err("no store yet");
/// assert!(err.to_string().contains("not a keywheel store"));
/// let store = FileStoreOptions::new().open(dir.path())?;
/// assert_eq!(store.check()?.keyrings, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileStoreOptions {
    create: bool,
    allow_insecure_permissions: bool,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions { create: true, allow_insecure_permissions: false }
    }
}

impl FileStoreOptions {
    /// The defaults: create the store if the directory has none, refuse
    /// insecure permissions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to create the store (and the directory) if there is none
    /// (default `true`). With `false`, opening a directory without a store is an error.
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Accept a store whose directory or files give the group or other users
    /// access (default `false`: such a store is refused). Only for special
    /// cases, e.g. a directory shared with a backup agent through its group.
    pub fn allow_insecure_permissions(mut self, allow: bool) -> Self {
        self.allow_insecure_permissions = allow;
        self
    }

    /// Open (or create) the store in `dir`. See [`FileKeyStore::open`].
    pub fn open(&self, dir: impl AsRef<Path>) -> Result<FileKeyStore> {
        FileKeyStore::open_with(dir.as_ref(), self)
    }
}

/// What [`FileKeyStore::check`] found: the number of documents of each kind,
/// all of which parsed and are consistent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreSummary {
    /// Keyring documents.
    pub keyrings: usize,
    /// Policy documents.
    pub policies: usize,
    /// Lease documents (one per keyring that was ever leased).
    pub leases: usize,
    /// Rotation job documents.
    pub jobs: usize,
}

/// What a store document holds (see [`DamagedFile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DocumentKind {
    /// A keyring record (`keyrings/`).
    Keyring,
    /// A keyring's policy (`policies/`).
    Policy,
    /// A keyring's lease (`leases/`).
    Lease,
    /// A rotation job (`jobs/`).
    Job,
}

/// A store document that cannot be used, as [`FileKeyStore::damaged`] finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DamagedFile {
    /// What the document holds.
    pub kind: DocumentKind,
    /// The file.
    pub path: PathBuf,
    /// The keyring it belongs to, when that can still be told (a policy or
    /// lease of an intact keyring; a job document that still names it).
    pub keyring: Option<KeyringId>,
    /// What is wrong and how to fix it: the error every operation on it
    /// returns (it names the file).
    pub problem: String,
}

impl DamagedFile {
    fn new(kind: DocumentKind, path: PathBuf, keyring: Option<KeyringId>, error: &Error) -> Self {
        DamagedFile { kind, path, keyring, problem: error.to_string() }
    }
}

fn invalid_record(path: &Path, error: &Error) -> Error {
    BACKEND.err(path, format!("holds an invalid keyring record ({error}); restore it from a backup"))
}

/// The keyring a (damaged) job document names, read from its text: the
/// value of its first `"keyring"` field, if that survived. A serialized job
/// names its keyring right after its id, so a truncated document usually
/// still shows it; `None` when nothing trustworthy is left.
fn keyring_named_in(bytes: &[u8]) -> Option<KeyringId> {
    let text = std::str::from_utf8(bytes).ok()?;
    let at = text.find("\"keyring\"")?;
    if text[..at].ends_with('\\') {
        // Inside a string (an escaped quote): not the field.
        return None;
    }
    let value = text[at + "\"keyring\"".len()..].trim_start().strip_prefix(':')?.trim_start();
    let mut strings = serde_json::Deserializer::from_str(value).into_iter::<String>();
    strings.next()?.ok()?.parse().ok()
}

/// A [`KeyStore`] in a local directory, for single hosts and the CLI.
///
/// * **Atomic changes**: every change writes a temporary file, fsyncs it,
///   renames it over the old document and fsyncs the directory, so a crash
///   leaves the old or the new document, never a torn one. A compare-and-set
///   ([`update_keyring`](KeyStore::update_keyring)) touches one document.
/// * **Cross-process exclusion**: every read-modify-write holds an OS file
///   lock (`std::fs::File::lock`) on `<dir>/lock` for the duration of that one
///   operation; readers need no lock because renames are atomic. Leases expire
///   by time, so a lease whose holder died is simply taken over later.
/// * **Permissions**: files are created 0600 and directories 0700; opening a
///   store whose directory or files give the group or others any access is
///   refused with an error that says how to fix it (opt out with
///   [`FileStoreOptions::allow_insecure_permissions`]).
/// * **Bad input**: a corrupt, truncated or unknown-format document is an
///   [`Error::Backend`] naming the file; the store never writes over a
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

fn create_dir(path: &Path) -> Result<bool> {
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(BACKEND.io(path, "create the directory", &e)),
    }
}

impl FileKeyStore {
    /// Open the store in `dir`, creating the directory (mode 0700) and an
    /// empty store if there is none. Refuses insecure permissions and a
    /// non-empty directory that is not a store. A document that does not
    /// parse does not stop it: see [`damaged`](Self::damaged). Removes
    /// temporary files left by a crash.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        FileStoreOptions::new().open(dir)
    }

    /// Options for opening a store (create or not, permission opt-out).
    pub fn options() -> FileStoreOptions {
        FileStoreOptions::new()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_with(dir: &Path, options: &FileStoreOptions) -> Result<Self> {
        let dir = dir.to_path_buf();
        // The store directory itself may be a symlink (to another disk, say).
        match fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(BACKEND.err(&dir, "is not a directory; give the path of a store directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound && options.create => {
                let missing: Vec<PathBuf> = dir
                    .ancestors()
                    .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                    .map(Path::to_path_buf)
                    .collect();
                DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(&dir)
                    .map_err(|e| BACKEND.io(&dir, "create the store directory", &e))?;
                // Make every new directory entry durable, innermost last.
                for created in missing.iter().rev() {
                    sync_dir(BACKEND, fsio::parent_dir(created))?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BACKEND.err(&dir, "not a keywheel store: the directory does not exist"));
            }
            Err(e) => return Err(BACKEND.io(&dir, "inspect the store directory", &e)),
        }
        let store_file = dir.join(STORE_FILE);
        let initialized = store_file.exists();
        if !initialized {
            if !options.create {
                return Err(BACKEND.err(
                    &dir,
                    format!("not a keywheel store (no {STORE_FILE}); check the path, or create a store there"),
                ));
            }
            Self::check_can_initialize(&dir)?;
        } else if !options.allow_insecure_permissions {
            // Refuse before touching anything in a store others can read.
            Self::check_permissions(&dir)?;
        }

        let lock_path = dir.join(LOCK_FILE);
        let mut lock_options = OpenOptions::new();
        lock_options.read(true).write(true).create(true).truncate(false).mode(FILE_MODE);
        let store = FileKeyStore { dir, lock: ProcessLock::open(BACKEND, lock_path, lock_options, ())? };
        {
            let _guard = store.lock()?;
            if store_file.exists() {
                let bytes = fs::read(&store_file).map_err(|e| BACKEND.io(&store_file, "read", &e))?;
                let doc: StoreDoc = parse_document(BACKEND, &store_file, &bytes)?;
                if doc.kind != STORE_KIND {
                    return Err(BACKEND.err(
                        &store_file,
                        format!("is a \"{}\" document, not a keywheel store marker ({STORE_KIND})", doc.kind),
                    ));
                }
                let mut created = false;
                for sub in SUBDIRS {
                    created |= create_dir(&store.dir.join(sub))?;
                }
                if created {
                    sync_dir(BACKEND, &store.dir)?;
                }
            } else {
                store.initialize()?;
            }
            if !initialized && !options.allow_insecure_permissions {
                Self::check_permissions(&store.dir)?;
            }
            store.remove_temporary_files()?;
        }
        Ok(store)
    }

    /// A directory without a store may only hold what a store (or an audit log
    /// kept next to it) would put there.
    fn check_can_initialize(dir: &Path) -> Result<()> {
        let entries = fs::read_dir(dir).map_err(|e| BACKEND.io(dir, "list the directory", &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BACKEND.io(dir, "list the directory", &e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = name == LOCK_FILE
                || SUBDIRS.contains(&name.as_ref())
                || name.ends_with(".jsonl")
                || (is_temporary(&name) && name.starts_with(&format!(".{STORE_FILE}")));
            if !ours {
                return Err(BACKEND.err(
                    dir,
                    format!(
                        "not a keywheel store (no {STORE_FILE}) and not empty (it holds {name:?}); \
                         choose a new or empty directory for the store"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Create the layout of a new store; the marker document comes last, so a
    /// crash before it leaves a directory that the next open initializes again.
    fn initialize(&self) -> Result<()> {
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| BACKEND.io(&self.dir, "set the directory's mode to 0700", &e))?;
        for sub in SUBDIRS {
            create_dir(&self.dir.join(sub))?;
        }
        sync_dir(BACKEND, &self.dir)?;
        let path = self.dir.join(STORE_FILE);
        let doc = StoreDoc { format: FORMAT, kind: STORE_KIND.to_owned() };
        atomic_write(BACKEND, &path, &to_document(BACKEND, &path, &doc)?)
    }

    /// The store directory and subdirectories must be 0700-like and every
    /// store file 0600-like: no access at all for the group or others.
    fn check_permissions(dir: &Path) -> Result<()> {
        let check = |path: &Path, wanted: u32| -> Result<()> {
            // Follow a symlinked store directory; never a symlink inside it.
            let meta = if path == dir { fs::metadata(path) } else { fs::symlink_metadata(path) };
            match meta {
                Ok(meta) => fsio::check_mode(BACKEND, path, &meta, 0o077, wanted, OPT_OUT),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(BACKEND.io(path, "inspect", &e)),
            }
        };
        check(dir, DIR_MODE)?;
        check(&dir.join(STORE_FILE), FILE_MODE)?;
        check(&dir.join(LOCK_FILE), FILE_MODE)?;
        for sub in SUBDIRS {
            let subdir = dir.join(sub);
            check(&subdir, DIR_MODE)?;
            for name in Self::entries(&subdir)? {
                if is_document(&name) || is_temporary(&name) {
                    check(&subdir.join(name), FILE_MODE)?;
                }
            }
        }
        Ok(())
    }

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

    /// Temporary files are only written under the lock, so under the lock
    /// any that exist are leftovers of a crashed writer.
    fn remove_temporary_files(&self) -> Result<()> {
        for dir in std::iter::once(self.dir.clone()).chain(SUBDIRS.iter().map(|s| self.dir.join(s))) {
            let mut removed = false;
            for name in Self::entries(&dir)? {
                if is_temporary(&name) {
                    let path = dir.join(&name);
                    fs::remove_file(&path).map_err(|e| BACKEND.io(&path, "remove a leftover temporary file", &e))?;
                    removed = true;
                }
            }
            if removed {
                sync_dir(BACKEND, &dir)?;
            }
        }
        Ok(())
    }

    fn lock(&self) -> Result<LockGuard<'_, ()>> {
        self.lock.lock(BACKEND)
    }

    /// Parse every document of the store and check that each is consistent
    /// (valid keyring records, each document under the file name of its id).
    /// The error names the first bad file; [`damaged`](Self::damaged) lists
    /// them all instead.
    pub fn check(&self) -> Result<StoreSummary> {
        self.scan()
    }

    fn scan(&self) -> Result<StoreSummary> {
        let mut summary = StoreSummary::default();
        for (path, name) in self.documents(KEYRINGS)? {
            self.keyring_document(&path, &name)?;
            summary.keyrings += 1;
        }
        for (path, name) in self.documents(POLICIES)? {
            self.policy_document(&path, &name)?;
            summary.policies += 1;
        }
        for (path, name) in self.documents(LEASES)? {
            self.lease_document(&path, &name)?;
            summary.leases += 1;
        }
        for (path, name) in self.documents(JOBS)? {
            self.job_document(&path, &name)?;
            summary.jobs += 1;
        }
        Ok(summary)
    }

    /// Every document that cannot be used, of every kind, with what is wrong
    /// (the error each operation on it returns) and, where it can be told,
    /// the keyring it belongs to. Empty for a healthy store.
    ///
    /// A damaged document only blocks what it holds: opening the store,
    /// [`list_keyrings`](KeyStore::list_keyrings) (which leaves damaged
    /// keyring documents out) and the other keyrings keep working, while every
    /// operation on the damaged keyring, policy, lease or job fails with the
    /// error naming the file, which is never overwritten. A damaged job
    /// document whose keyring cannot be read from it blocks
    /// [`list_jobs`](KeyStore::list_jobs) of every keyring (it could be any
    /// keyring's unfinished rotation). Fix: restore the file from a backup (or
    /// move it aside if you know it holds nothing needed).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> keywheel_core::Result<()> {
    /// use keywheel_core::KeyStore;
    /// use keywheel_file::{DocumentKind, FileKeyStore};
    /// let dir = tempfile::tempdir().expect("tempdir");
    /// let store = FileKeyStore::open(dir.path())?;
    /// assert!(store.damaged()?.is_empty());
    /// std::fs::write(dir.path().join("keyrings/acme.token.00.json"), b"{\"format\":1,").expect("write");
    /// let damaged = store.damaged()?;
    /// assert_eq!(damaged[0].kind, DocumentKind::Keyring);
    /// assert!(damaged[0].problem.contains("truncated"));
    /// assert!(store.list_keyrings().await?.is_empty(), "left out of the listing");
    /// # Ok(()) }
    /// ```
    pub fn damaged(&self) -> Result<Vec<DamagedFile>> {
        let mut damaged = Vec::new();
        let mut names = std::collections::BTreeMap::new();
        for (path, name) in self.documents(KEYRINGS)? {
            match self.keyring_document(&path, &name) {
                Ok(record) => {
                    names.insert(name, record.id);
                }
                Err(e) => damaged.push(DamagedFile::new(DocumentKind::Keyring, path, None, &e)),
            }
        }
        for (sub, kind) in [(POLICIES, DocumentKind::Policy), (LEASES, DocumentKind::Lease)] {
            for (path, name) in self.documents(sub)? {
                let result = match kind {
                    DocumentKind::Policy => self.policy_document(&path, &name).map(drop),
                    _ => self.lease_document(&path, &name).map(drop),
                };
                if let Err(e) = result {
                    // Named like the keyring's own document: whose it is shows in the name.
                    damaged.push(DamagedFile::new(kind, path, names.get(&name).cloned(), &e));
                }
            }
        }
        for (path, name) in self.documents(JOBS)? {
            if let Err(e) = self.job_document(&path, &name) {
                let keyring = fs::read(&path).ok().and_then(|bytes| keyring_named_in(&bytes));
                damaged.push(DamagedFile::new(DocumentKind::Job, path, keyring, &e));
            }
        }
        Ok(damaged)
    }

    /// `(path, name)` of every document in a subdirectory, sorted by name.
    fn documents(&self, sub: &str) -> Result<Vec<(PathBuf, String)>> {
        let dir = self.dir.join(sub);
        Ok(Self::entries(&dir)?
            .into_iter()
            .filter(|name| is_document(name))
            .map(|name| (dir.join(&name), name))
            .collect())
    }

    /// Read a listed document, which must be a regular file (never a symlink).
    fn listed_document<T: DeserializeOwned>(&self, path: &Path) -> Result<T> {
        let meta = fs::symlink_metadata(path).map_err(|e| BACKEND.io(path, "inspect", &e))?;
        if !meta.is_file() {
            return Err(BACKEND.err(path, "is not a regular file; remove it or restore it from a backup"));
        }
        self.read_document(path)
    }

    /// A listed keyring document, checked as [`read_keyring`](Self::read_keyring) checks it.
    fn keyring_document(&self, path: &Path, name: &str) -> Result<KeyringRecord> {
        let doc: KeyringDoc = self.listed_document(path)?;
        self.expect_name(path, name, &doc.keyring.id.canonical(), "keyring")?;
        doc.keyring.validate().map_err(|e| invalid_record(path, &e))?;
        Ok(doc.keyring)
    }

    fn policy_document(&self, path: &Path, name: &str) -> Result<PolicyDoc> {
        let doc: PolicyDoc = self.listed_document(path)?;
        self.expect_name(path, name, &doc.keyring.canonical(), "keyring")?;
        Ok(doc)
    }

    fn lease_document(&self, path: &Path, name: &str) -> Result<LeaseDoc> {
        let doc: LeaseDoc = self.listed_document(path)?;
        self.expect_name(path, name, &doc.keyring.canonical(), "keyring")?;
        if doc.current.as_ref().is_some_and(|l| l.keyring != doc.keyring || l.token > doc.last_token) {
            return Err(BACKEND.err(path, "holds a lease inconsistent with its keyring or token counter"));
        }
        Ok(doc)
    }

    fn job_document(&self, path: &Path, name: &str) -> Result<RotationJob> {
        let doc: JobDoc = self.listed_document(path)?;
        self.expect_name(path, name, &doc.job.id, "job")?;
        Ok(doc.job)
    }

    fn read_document<T: DeserializeOwned>(&self, path: &Path) -> Result<T> {
        let bytes = fs::read(path).map_err(|e| BACKEND.io(path, "read", &e))?;
        parse_document(BACKEND, path, &bytes)
    }

    fn read_optional_document<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        read_optional(BACKEND, path)?.map(|bytes| parse_document(BACKEND, path, &bytes)).transpose()
    }

    fn expect_name(&self, path: &Path, name: &str, id: &str, what: &str) -> Result<()> {
        if file_name_for(id) == name {
            Ok(())
        } else {
            Err(BACKEND.err(
                path,
                format!(
                    "holds {what} {id:?}, whose file would be {:?}: the file was renamed or copied; \
                     restore it from a backup",
                    file_name_for(id)
                ),
            ))
        }
    }

    fn write<T: Serialize>(&self, path: &Path, doc: &T) -> Result<()> {
        atomic_write(BACKEND, path, &to_document(BACKEND, path, doc)?)
    }

    fn path(&self, sub: &str, id: &str) -> PathBuf {
        self.dir.join(sub).join(file_name_for(id))
    }

    /// The keyrings whose documents are intact; damaged ones are left out
    /// (see [`damaged`](Self::damaged)).
    fn keyring_ids(&self) -> Result<Vec<KeyringId>> {
        let mut ids = Vec::new();
        for (path, name) in self.documents(KEYRINGS)? {
            if let Ok(record) = self.keyring_document(&path, &name) {
                ids.push(record.id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn read_keyring(&self, id: &KeyringId) -> Result<Option<KeyringRecord>> {
        let path = self.path(KEYRINGS, &id.canonical());
        let Some(doc) = self.read_optional_document::<KeyringDoc>(&path)? else {
            return Ok(None);
        };
        if doc.keyring.id != *id {
            return Err(BACKEND.err(
                &path,
                format!(
                    "holds keyring {}, not {id}: the file was renamed or copied; restore it from a backup",
                    doc.keyring.id
                ),
            ));
        }
        doc.keyring.validate().map_err(|e| invalid_record(&path, &e))?;
        Ok(Some(doc.keyring))
    }

    fn write_keyring(&self, record: &KeyringRecord) -> Result<()> {
        let doc = KeyringDoc { format: FORMAT, keyring: record.clone() };
        self.write(&self.path(KEYRINGS, &record.id.canonical()), &doc)
    }

    fn read_lease(&self, id: &KeyringId) -> Result<Option<LeaseDoc>> {
        let path = self.path(LEASES, &id.canonical());
        let doc = self.read_optional_document::<LeaseDoc>(&path)?;
        if let Some(doc) = &doc
            && doc.keyring != *id
        {
            return Err(BACKEND.err(&path, format!("holds the lease of {}, not of {id}", doc.keyring)));
        }
        Ok(doc)
    }

    fn write_lease(&self, id: &KeyringId, last_token: u64, current: Option<Lease>) -> Result<()> {
        let doc = LeaseDoc { format: FORMAT, keyring: id.clone(), last_token, current };
        self.write(&self.path(LEASES, &id.canonical()), &doc)
    }

    fn read_job(&self, id: &str) -> Result<Option<RotationJob>> {
        let path = self.path(JOBS, id);
        let doc = self.read_optional_document::<JobDoc>(&path)?;
        if let Some(doc) = &doc
            && doc.job.id != id
        {
            return Err(BACKEND.err(&path, format!("holds job {:?}, not {id:?}", doc.job.id)));
        }
        Ok(doc.map(|d| d.job))
    }

    /// The jobs of `keyring`. A damaged job document is skipped only if it
    /// still shows that it belongs to another keyring; otherwise its error is
    /// returned: it could be this keyring's unfinished rotation.
    fn jobs_of(&self, keyring: &KeyringId) -> Result<Vec<RotationJob>> {
        let mut jobs = Vec::new();
        for (path, name) in self.documents(JOBS)? {
            match self.job_document(&path, &name) {
                Ok(job) if &job.keyring == keyring => jobs.push(job),
                Ok(_) => {}
                Err(e) => match fs::read(&path).ok().and_then(|bytes| keyring_named_in(&bytes)) {
                    Some(other) if &other != keyring => {}
                    _ => return Err(e),
                },
            }
        }
        Ok(jobs)
    }

    fn read_policy(&self, id: &KeyringId) -> Result<Option<Policy>> {
        let path = self.path(POLICIES, &id.canonical());
        let doc = self.read_optional_document::<PolicyDoc>(&path)?;
        if let Some(doc) = &doc
            && doc.keyring != *id
        {
            return Err(BACKEND.err(&path, format!("holds the policy of {}, not of {id}", doc.keyring)));
        }
        Ok(doc.map(|d| d.policy))
    }

    /// The current (unreleased) lease of a keyring, expired or not, if any.
    pub fn current_lease(&self, id: &KeyringId) -> Result<Option<Lease>> {
        Ok(self.read_lease(id)?.and_then(|doc| doc.current))
    }

    /// Check a KEK against the store before using it: unwrap every live
    /// version of every keyring and discard the material. Returns the number
    /// of versions checked. Writes nothing.
    ///
    /// Call it right after opening (the CLI does): with a wrong master key it
    /// fails with [`Error::WrongMasterKey`] (by key check value, before any
    /// decryption), with a KEK of another id with [`Error::KekMismatch`], so
    /// nothing is wrapped under a wrong key and written. ([`Keywheel`] itself
    /// only unwraps when it loads a keyring; adding a version wraps under the
    /// configured KEK without unwrapping anything first.)
    ///
    /// [`Keywheel`]: keywheel_core::Keywheel
    pub async fn check_kek(&self, kek: &dyn KeyEncryptionKey) -> Result<usize> {
        let mut checked = 0;
        for id in self.keyring_ids()? {
            let Some(record) = self.read_keyring(&id)? else { continue };
            for v in &record.versions {
                if let (Some(wrapped), true) = (&v.wrapped, v.state != KeyState::Retired) {
                    // Dropped at once: `KeyMaterial` zeroizes itself.
                    kek.unwrap(&record.id, v.version, wrapped).await?;
                    checked += 1;
                }
            }
        }
        Ok(checked)
    }
}

#[async_trait]
impl KeyStore for FileKeyStore {
    async fn create_keyring(&self, record: &KeyringRecord) -> Result<()> {
        record.validate()?;
        let _guard = self.lock()?;
        // Parses an existing document: a corrupt one is reported, never overwritten.
        if self.read_keyring(&record.id)?.is_some() {
            return Err(Error::KeyringExists(record.id.clone()));
        }
        self.write_keyring(record)
    }

    async fn load_keyring(&self, id: &KeyringId) -> Result<Option<KeyringRecord>> {
        self.read_keyring(id)
    }

    async fn list_keyrings(&self) -> Result<Vec<KeyringId>> {
        self.keyring_ids()
    }

    async fn update_keyring(
        &self,
        id: &KeyringId,
        expected_generation: u64,
        changes: &[KeyringChange],
    ) -> Result<KeyringRecord> {
        let _guard = self.lock()?;
        let mut record = self.read_keyring(id)?.ok_or_else(|| Error::KeyringNotFound(id.clone()))?;
        record.check_generation(expected_generation)?;
        // `apply` works on a copy and leaves `record` untouched on error.
        record.apply(changes)?;
        self.write_keyring(&record)?;
        Ok(record)
    }

    async fn acquire_lease(&self, id: &KeyringId, holder: &str, ttl: Duration, now: Timestamp) -> Result<Lease> {
        let _guard = self.lock()?;
        let (current, last_token) = self.read_lease(id)?.map_or((None, 0), |doc| (doc.current, doc.last_token));
        let lease = grant_lease(current.as_ref(), id, holder, ttl, now, last_token)?;
        self.write_lease(id, lease.token, Some(lease.clone()))?;
        Ok(lease)
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        let _guard = self.lock()?;
        let lost = || Error::LeaseLost { keyring: lease.keyring.clone() };
        let doc = self.read_lease(&lease.keyring)?.ok_or_else(lost)?;
        let mut current = doc
            .current
            .filter(|current| current.token == lease.token && current.holder == lease.holder)
            .ok_or_else(lost)?;
        current.expires_at = now.plus(ttl);
        self.write_lease(&lease.keyring, doc.last_token, Some(current.clone()))?;
        Ok(current)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let _guard = self.lock()?;
        if let Some(doc) = self.read_lease(&lease.keyring)?
            && doc.current.as_ref().is_some_and(|current| current.token == lease.token)
        {
            self.write_lease(&lease.keyring, doc.last_token, None)?;
        }
        Ok(())
    }

    async fn load_lease(&self, id: &KeyringId) -> Result<Option<Lease>> {
        self.current_lease(id)
    }

    async fn save_job(&self, job: &RotationJob, lease: &Lease) -> Result<()> {
        let _guard = self.lock()?;
        let current = self.read_lease(&job.keyring)?.and_then(|doc| doc.current);
        check_fence(current.as_ref(), lease)?;
        // Refuse to overwrite a job document that does not parse.
        self.read_job(&job.id)?;
        let doc = JobDoc { format: FORMAT, job: job.clone() };
        self.write(&self.path(JOBS, &job.id), &doc)
    }

    async fn load_job(&self, id: &str) -> Result<Option<RotationJob>> {
        self.read_job(id)
    }

    async fn list_jobs(&self, keyring: &KeyringId) -> Result<Vec<RotationJob>> {
        let mut jobs = self.jobs_of(keyring)?;
        jobs.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        Ok(jobs)
    }

    async fn save_policy(&self, keyring: &KeyringId, policy: &Policy) -> Result<()> {
        let _guard = self.lock()?;
        // Refuse to overwrite a policy document that does not parse.
        self.read_policy(keyring)?;
        let doc = PolicyDoc { format: FORMAT, keyring: keyring.clone(), policy: policy.clone() };
        self.write(&self.path(POLICIES, &keyring.canonical()), &doc)
    }

    async fn load_policy(&self, keyring: &KeyringId) -> Result<Option<Policy>> {
        self.read_policy(keyring)
    }
}

#[cfg(test)]
mod tests {
    use super::keyring_named_in;

    #[test]
    fn a_damaged_job_names_its_keyring_only_through_its_own_field() {
        let named = |text: &str| keyring_named_in(text.as_bytes()).map(|k| k.to_string());
        assert_eq!(
            named(r#"{"format": 1, "job": {"id": "ab12", "keyring": "acme/token", "ki"#),
            Some("acme/token".into())
        );
        // Cut inside the keyring's value, or before it: nothing trustworthy is left.
        assert_eq!(named(r#"{"format": 1, "job": {"id": "ab12", "keyring": "acme/to"#), None);
        assert_eq!(named(r#"{"format": 1, "job": {"id": "ab12", "keyr"#), None);
        // A "keyring" inside a string (an id with quotes, escaped) is not taken for the field.
        assert_eq!(
            named(r#"{"format": 1, "job": {"id": "x\"keyring\": \"zeta/token\"", "keyring": "acme/token""#),
            Some("acme/token".into())
        );
        // Not a keyring id.
        assert_eq!(named(r#"{"job": {"keyring": "no slash"}}"#), None);
        assert_eq!(named("\u{0}\u{1}garbage"), None);
    }
}

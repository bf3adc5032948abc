//! Durable file primitives shared by the key store and the audit log: atomic
//! replacement (temporary file, fsync, rename, fsync of the directory),
//! versioned JSON documents with typed errors that name the file, permission
//! checks, the cross-process lock, and file names for keyring and job ids.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use keywheel_core::Error;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// The on-disk format version this build reads and writes.
pub(crate) const FORMAT: u64 = 1;

/// Mode of every file the backend creates.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of every directory the backend creates.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Suffix of temporary files (their names also start with a dot).
const TMP_MARKER: &str = ".tmp-";

/// How the fix for a file that cannot be read is phrased in every such error.
const UNREADABLE_FIX: &str = "keywheel will not overwrite a file it cannot read: restore it from a backup (or move it aside if you \
     know it holds nothing needed) and retry";

/// Which backend an error comes from (the `backend` of [`Error::Backend`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backend(pub(crate) &'static str);

impl Backend {
    /// A non-retryable error about `path`.
    pub(crate) fn err(self, path: &Path, message: impl std::fmt::Display) -> Error {
        Error::backend(self.0, format!("{}: {message}", path.display()), false)
    }

    /// An I/O failure while doing `what` on `path`. Interruptions and timeouts
    /// are retryable; everything else (permissions, disk full, …) is not.
    pub(crate) fn io(self, path: &Path, what: &str, err: &io::Error) -> Error {
        let retryable =
            matches!(err.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut);
        Error::backend(self.0, format!("{}: cannot {what}: {err}", path.display()), retryable)
    }
}

/// Parse a versioned JSON document: the bytes must be a JSON object whose
/// `format` field is [`FORMAT`], then deserialize as `T`. Every failure names
/// the file and says how to fix it.
pub(crate) fn parse_document<T: DeserializeOwned>(backend: Backend, path: &Path, bytes: &[u8]) -> Result<T, Error> {
    #[derive(serde::Deserialize)]
    struct Probe {
        format: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_eof() {
            backend.err(path, format!("file is truncated ({e}); {UNREADABLE_FIX}"))
        } else {
            backend.err(path, format!("file is corrupt, not a keywheel JSON document ({e}); {UNREADABLE_FIX}"))
        }
    })?;
    check_format(probe.format.as_ref()).map_err(|problem| backend.err(path, problem))?;
    serde_json::from_slice(bytes).map_err(|e| {
        backend
            .err(path, format!("file is corrupt, its content does not match format {FORMAT} ({e}); {UNREADABLE_FIX}"))
    })
}

/// `Ok` if `format` is this build's format, else what is wrong and how to fix it.
pub(crate) fn check_format(format: Option<&serde_json::Value>) -> Result<(), String> {
    match format {
        Some(v) if v.as_u64() == Some(FORMAT) => Ok(()),
        Some(v) => Err(format!(
            "unknown format version {v} (this keywheel reads format {FORMAT}); open it with the keywheel \
             version that wrote it, or restore a backup; {UNREADABLE_FIX}"
        )),
        None => Err(format!("file is corrupt: it has no \"format\" field; {UNREADABLE_FIX}")),
    }
}

/// Serialize a document (pretty, with a final newline, for operators reading it).
pub(crate) fn to_document<T: Serialize>(backend: Backend, path: &Path, doc: &T) -> Result<Vec<u8>, Error> {
    let mut bytes = serde_json::to_vec_pretty(doc).map_err(|e| backend.err(path, format!("cannot encode: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The bytes of `path`, or `None` if it does not exist.
pub(crate) fn read_optional(backend: Backend, path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(backend.io(path, "read", &e)),
    }
}

/// fsync a directory, so that the renames and creations inside it are durable.
pub(crate) fn sync_dir(backend: Backend, dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| backend.io(dir, "fsync the directory", &e))
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replace `target` atomically with `bytes`: write a temporary file (mode
/// 0600) in the same directory, fsync it, rename it over `target`, fsync the
/// directory. A crash at any point leaves either the old or the new file; a
/// leftover temporary file is removed when the store is next opened.
pub(crate) fn atomic_write(backend: Backend, target: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = parent_dir(target);
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}{TMP_MARKER}{}-{n}", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&tmp)?;
        // The umask can only remove bits; make the mode exact anyway.
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(backend.io(&tmp, "write a temporary file", &e));
    }
    if let Err(e) = fs::rename(&tmp, target) {
        let _ = fs::remove_file(&tmp);
        return Err(backend.io(target, "rename the temporary file over", &e));
    }
    sync_dir(backend, dir)
}

/// Whether a directory entry is a temporary file left by [`atomic_write`].
pub(crate) fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(TMP_MARKER)
}

/// Whether a directory entry is a document the store reads (`*.json`, not hidden).
pub(crate) fn is_document(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".json")
}

/// A file name for an arbitrary id (keyring ids hold any UTF-8 but `/` and
/// control characters, and may be 511 bytes long): a readable slug of at
/// most 64 bytes, then 128 bits of SHA-256 of the id, then `.json`. The
/// slug never starts with a dot, so documents are never hidden files.
pub(crate) fn file_name_for(id: &str) -> String {
    let mut slug = String::new();
    for c in id.chars() {
        if slug.len() >= 64 {
            break;
        }
        slug.push(match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            '/' => '.',
            _ => '_',
        });
    }
    let digest = Sha256::digest(id.as_bytes());
    let hash: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{slug}.{hash}.json")
}

/// Who besides the owner a Unix file mode gives some access to: `None` when
/// the group and other bits are all clear, else "its group", "all other
/// users" or both. The one wording of every "readable by others" refusal
/// (file store, audit log, the CLI's key files).
///
/// ```
/// assert_eq!(keywheel_file::access_beyond_owner(0o600), None);
/// assert_eq!(keywheel_file::access_beyond_owner(0o640), Some("its group"));
/// assert_eq!(keywheel_file::access_beyond_owner(0o644), Some("its group and all other users"));
/// ```
pub fn access_beyond_owner(mode: u32) -> Option<&'static str> {
    match (mode & 0o070 != 0, mode & 0o007 != 0) {
        (false, false) => None,
        (true, true) => Some("its group and all other users"),
        (true, false) => Some("its group"),
        (false, true) => Some("all other users"),
    }
}

/// Refuse `path` if its mode gives its group or other users any access, with an error
/// that says how to fix it.
pub(crate) fn check_mode(
    backend: Backend,
    path: &Path,
    meta: &fs::Metadata,
    wanted: u32,
    opt_out: &str,
) -> Result<(), Error> {
    let mode = meta.permissions().mode() & 0o7777;
    let Some(who) = access_beyond_owner(mode) else { return Ok(()) };
    Err(backend.err(
        path,
        format!(
            "permissions {mode:04o} give {who} access; keywheel refuses to use it. Fix: `chmod {wanted:o} {}`{opt_out}",
            path.display()
        ),
    ))
}

/// An exclusive lock shared by every process using the same file, guarding
/// that file and some per-process state `S`: a mutex serializes the threads of
/// this process (an OS file lock does not exclude two users of the same open
/// file), then `File::lock` excludes other processes. Held only for the
/// duration of one operation.
///
/// If the file at the path was deleted or replaced since it was opened (a
/// cleanup script removed the lock file, logrotate moved the audit log), other
/// processes lock the new file: the lock notices and reopens the path, so
/// everyone locks the same file again.
#[derive(Debug)]
pub(crate) struct ProcessLock<S> {
    path: PathBuf,
    options: OpenOptions,
    inner: Mutex<Locked<S>>,
}

/// What a [`ProcessLock`] guards.
#[derive(Debug)]
pub(crate) struct Locked<S> {
    /// The locked file.
    pub(crate) file: File,
    /// State of this process that only changes under the lock.
    pub(crate) state: S,
    /// Set when the path was reopened because the file had been replaced;
    /// the user resets it after discarding state derived from the old file.
    pub(crate) reopened: bool,
}

/// Holds a [`ProcessLock`]; unlocks on drop.
pub(crate) struct LockGuard<'a, S> {
    inner: MutexGuard<'a, Locked<S>>,
}

impl<S> Drop for LockGuard<'_, S> {
    fn drop(&mut self) {
        // Closing the file would release it too; unlocking keeps the descriptor reusable.
        let _ = self.inner.file.unlock();
    }
}

impl<S> std::ops::Deref for LockGuard<'_, S> {
    type Target = Locked<S>;
    fn deref(&self) -> &Locked<S> {
        &self.inner
    }
}

impl<S> std::ops::DerefMut for LockGuard<'_, S> {
    fn deref_mut(&mut self) -> &mut Locked<S> {
        &mut self.inner
    }
}

/// Whether `file` is (still) the file at `path`.
fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata()?;
    match fs::metadata(path) {
        Ok(at_path) => Ok(open.dev() == at_path.dev() && open.ino() == at_path.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl<S> ProcessLock<S> {
    /// Open `path` with `options` (which must create it if missing) as the lock.
    pub(crate) fn open(backend: Backend, path: PathBuf, options: OpenOptions, state: S) -> Result<Self, Error> {
        let file = options.open(&path).map_err(|e| backend.io(&path, "open", &e))?;
        Ok(ProcessLock { path, options, inner: Mutex::new(Locked { file, state, reopened: false }) })
    }

    /// The locked file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Take the lock, waiting for other threads and processes.
    pub(crate) fn lock(&self, backend: Backend) -> Result<LockGuard<'_, S>, Error> {
        // Users replace their state only after the fallible work is done, so a
        // panic cannot leave it half-updated: recover from poisoning.
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            inner.file.lock().map_err(|e| backend.io(&self.path, "lock", &e))?;
            match same_file(&inner.file, &self.path) {
                Ok(true) => return Ok(LockGuard { inner }),
                Ok(false) => {
                    // Replaced or deleted while we were not holding it: lock what is there now.
                    let _ = inner.file.unlock();
                    inner.file = self.options.open(&self.path).map_err(|e| backend.io(&self.path, "reopen", &e))?;
                    inner.reopened = true;
                    sync_dir(backend, parent_dir(&self.path))?;
                }
                Err(e) => {
                    let _ = inner.file.unlock();
                    return Err(backend.io(&self.path, "inspect", &e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe_readable_and_distinct() {
        assert_eq!(
            file_name_for("acme/token"),
            format!("acme.token.{}.json", &hex(&Sha256::digest(b"acme/token"))[..32])
        );
        let odd = file_name_for("../ü x/api-signature");
        assert!(odd.starts_with("__.__x.api-signature."), "{odd}");
        assert!(is_document(&odd) && !odd.contains('/'));
        let long = file_name_for(&format!("{}/{}", "t".repeat(255), "p".repeat(255)));
        assert!(long.len() < 120, "{}", long.len());
        assert_ne!(file_name_for("a.b/token"), file_name_for("a_b/token"), "the hash tells lossy slugs apart");
    }

    #[test]
    fn documents_need_the_current_format() {
        let b = Backend("test");
        let p = Path::new("/x/y.json");
        #[derive(serde::Deserialize, Debug)]
        struct Doc {
            #[allow(dead_code)]
            value: u32,
        }
        assert!(parse_document::<Doc>(b, p, br#"{"format":1,"value":3}"#).is_ok());
        let msg = |bytes: &[u8]| parse_document::<Doc>(b, p, bytes).expect_err("bad").to_string();
        assert!(msg(br#"{"format":1,"val"#).contains("/x/y.json: file is truncated"));
        assert!(msg(br#"{"format":2,"value":3}"#).contains("unknown format version 2"));
        assert!(msg(br#"{"value":3}"#).contains("no \"format\" field"));
        assert!(msg(br#"[1,2]"#).contains("corrupt"));
        assert!(msg(br#"{"format":1,"value":"x"}"#).contains("does not match format 1"));
        assert!(msg(b"").contains("truncated"));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

//! Opening a store: [`FileStoreOptions`], creating the layout of a new store,
//! refusing insecure permissions and removing temporary files left by a crash.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use keywheel_core::Result;
use serde::{Deserialize, Serialize};

use super::{BACKEND, FileKeyStore, LOCK_FILE, STORE_FILE, SUBDIRS};
use crate::fsio::{
    self, DIR_MODE, FILE_MODE, FORMAT, ProcessLock, atomic_write, is_document, is_temporary, parse_document, sync_dir,
    to_document,
};

const STORE_KIND: &str = "keywheel-file-store";

const OPT_OUT: &str = " (or, if this access is intended, open with FileStoreOptions::allow_insecure_permissions(true))";

#[derive(Serialize, Deserialize)]
struct StoreDoc {
    format: u64,
    kind: String,
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
                Ok(meta) => fsio::check_mode(BACKEND, path, &meta, wanted, OPT_OUT),
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
}

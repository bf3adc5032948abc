//! Checking a store: [`FileKeyStore::check`] (every document parses and is
//! consistent), [`FileKeyStore::damaged`] (every damaged file, with what is
//! wrong) and [`FileKeyStore::check_kek`] (the master key unwraps every live version).

use std::fs;
use std::path::PathBuf;

use keywheel_core::{Error, KeyEncryptionKey, KeyState, KeyringId, Result};
use serde::Serialize;

use super::documents::keyring_named_in;
use super::{FileKeyStore, JOBS, KEYRINGS, LEASES, POLICIES};

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

impl FileKeyStore {
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
    /// [`list_keyrings`](keywheel_core::KeyStore::list_keyrings) (which leaves damaged
    /// keyring documents out) and the other keyrings keep working, while every
    /// operation on the damaged keyring, policy, lease or job fails with the
    /// error naming the file, which is never overwritten. A damaged job
    /// document whose keyring cannot be read from it blocks
    /// [`list_jobs`](keywheel_core::KeyStore::list_jobs) of every keyring (it could be any
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

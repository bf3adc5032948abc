//! Reading and writing the store's documents (one JSON file per keyring,
//! policy, lease and job), each checked against the file name of its id.

use std::fs;
use std::path::{Path, PathBuf};

use keywheel_core::{Error, KeyringId, KeyringRecord, Lease, Policy, Result, RotationJob};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{BACKEND, FileKeyStore, JOBS, JobDoc, KEYRINGS, KeyringDoc, LEASES, LeaseDoc, POLICIES, PolicyDoc};
use crate::fsio::{FORMAT, atomic_write, file_name_for, is_document, parse_document, read_optional, to_document};

fn invalid_record(path: &Path, error: &Error) -> Error {
    BACKEND.err(path, format!("holds an invalid keyring record ({error}); restore it from a backup"))
}

/// The keyring a (damaged) job document names, read from its text: the
/// value of its first `"keyring"` field, if that survived. A serialized job
/// names its keyring right after its id, so a truncated document usually
/// still shows it; `None` when nothing trustworthy is left.
pub(super) fn keyring_named_in(bytes: &[u8]) -> Option<KeyringId> {
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

impl FileKeyStore {
    /// `(path, name)` of every document in a subdirectory, sorted by name.
    pub(super) fn documents(&self, sub: &str) -> Result<Vec<(PathBuf, String)>> {
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
    pub(super) fn keyring_document(&self, path: &Path, name: &str) -> Result<KeyringRecord> {
        let doc: KeyringDoc = self.listed_document(path)?;
        self.expect_name(path, name, &doc.keyring.id.canonical(), "keyring")?;
        doc.keyring.validate().map_err(|e| invalid_record(path, &e))?;
        Ok(doc.keyring)
    }

    pub(super) fn policy_document(&self, path: &Path, name: &str) -> Result<PolicyDoc> {
        let doc: PolicyDoc = self.listed_document(path)?;
        self.expect_name(path, name, &doc.keyring.canonical(), "keyring")?;
        Ok(doc)
    }

    pub(super) fn lease_document(&self, path: &Path, name: &str) -> Result<LeaseDoc> {
        let doc: LeaseDoc = self.listed_document(path)?;
        self.expect_name(path, name, &doc.keyring.canonical(), "keyring")?;
        if doc.current.as_ref().is_some_and(|l| l.keyring != doc.keyring || l.token > doc.last_token) {
            return Err(BACKEND.err(path, "holds a lease inconsistent with its keyring or token counter"));
        }
        Ok(doc)
    }

    pub(super) fn job_document(&self, path: &Path, name: &str) -> Result<RotationJob> {
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

    pub(super) fn write<T: Serialize>(&self, path: &Path, doc: &T) -> Result<()> {
        atomic_write(BACKEND, path, &to_document(BACKEND, path, doc)?)
    }

    pub(super) fn path(&self, sub: &str, id: &str) -> PathBuf {
        self.dir.join(sub).join(file_name_for(id))
    }

    /// The keyrings whose documents are intact; damaged ones are left out
    /// (see [`damaged`](Self::damaged)).
    pub(super) fn keyring_ids(&self) -> Result<Vec<KeyringId>> {
        let mut ids = Vec::new();
        for (path, name) in self.documents(KEYRINGS)? {
            if let Ok(record) = self.keyring_document(&path, &name) {
                ids.push(record.id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub(super) fn read_keyring(&self, id: &KeyringId) -> Result<Option<KeyringRecord>> {
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

    pub(super) fn write_keyring(&self, record: &KeyringRecord) -> Result<()> {
        let doc = KeyringDoc { format: FORMAT, keyring: record.clone() };
        self.write(&self.path(KEYRINGS, &record.id.canonical()), &doc)
    }

    pub(super) fn read_lease(&self, id: &KeyringId) -> Result<Option<LeaseDoc>> {
        let path = self.path(LEASES, &id.canonical());
        let doc = self.read_optional_document::<LeaseDoc>(&path)?;
        if let Some(doc) = &doc
            && doc.keyring != *id
        {
            return Err(BACKEND.err(&path, format!("holds the lease of {}, not of {id}", doc.keyring)));
        }
        Ok(doc)
    }

    pub(super) fn write_lease(&self, id: &KeyringId, last_token: u64, current: Option<Lease>) -> Result<()> {
        let doc = LeaseDoc { format: FORMAT, keyring: id.clone(), last_token, current };
        self.write(&self.path(LEASES, &id.canonical()), &doc)
    }

    pub(super) fn read_job(&self, id: &str) -> Result<Option<RotationJob>> {
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
    pub(super) fn jobs_of(&self, keyring: &KeyringId) -> Result<Vec<RotationJob>> {
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

    pub(super) fn read_policy(&self, id: &KeyringId) -> Result<Option<Policy>> {
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

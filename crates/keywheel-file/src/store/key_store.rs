//! The [`KeyStore`] implementation of [`FileKeyStore`]: keyrings (compare-and-set
//! updates), leases with fencing tokens, rotation jobs and policies.

use std::time::Duration;

use keywheel_core::{
    Error, KeyStore, KeyringChange, KeyringId, KeyringRecord, Lease, Policy, Result, RotationJob, Timestamp,
    async_trait, check_fence, grant_lease,
};

use super::{FileKeyStore, JOBS, JobDoc, POLICIES, PolicyDoc};
use crate::fsio::FORMAT;

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

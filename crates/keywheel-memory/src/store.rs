//! [`MemoryKeyStore`]: keyrings and leases in a mutex.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keywheel_core::{
    Error, KeyStore, KeyringChange, KeyringId, KeyringRecord, Lease, Policy, Result, RotationJob, Timestamp,
    async_trait, check_fence, grant_lease,
};

/// The lease state of one keyring: the current lease, if any, and the last
/// token ever granted (kept after release and expiry so tokens only grow).
#[derive(Default)]
struct LeaseSlot {
    current: Option<Lease>,
    last_token: u64,
}

#[derive(Default)]
struct State {
    /// Sorted by [`KeyringId`]'s `Ord`, which is the order `list_keyrings` returns.
    keyrings: BTreeMap<KeyringId, KeyringRecord>,
    leases: HashMap<KeyringId, LeaseSlot>,
    /// Rotation jobs by id.
    jobs: HashMap<String, RotationJob>,
    policies: HashMap<KeyringId, Policy>,
}

/// An in-memory [`KeyStore`]: keyrings, leases, rotation jobs and policies in
/// a [`Mutex`], lost when the value is dropped. For tests, demos and
/// single-process tools.
///
/// Every call takes the lock once, so each [`update_keyring`](KeyStore::update_keyring)
/// is one atomic compare-and-set on the keyring's generation, with the change
/// semantics of [`KeyringRecord::apply`]. Reads return clones (snapshots), so
/// mutating a loaded record never affects the store.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> keywheel_core::Result<()> {
/// use keywheel_core::{Algorithm, KeyStore, KeyringId, KeyringRecord, Purpose, Timestamp};
/// use keywheel_memory::MemoryKeyStore;
///
/// let store = MemoryKeyStore::new();
/// let id = KeyringId::new("acme", Purpose::Token)?;
/// let record = KeyringRecord::new(id.clone(), Algorithm::Aes256Gcm, Timestamp::EPOCH);
/// store.create_keyring(&record).await?;
/// assert_eq!(store.load_keyring(&id).await?, Some(record));
/// assert_eq!(store.list_keyrings().await?, vec![id]);
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct MemoryKeyStore {
    state: Mutex<State>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keyrings stored.
    pub fn len(&self) -> usize {
        self.lock().keyrings.len()
    }

    /// Whether no keyring is stored.
    pub fn is_empty(&self) -> bool {
        self.lock().keyrings.is_empty()
    }

    /// The current (unreleased) lease of a keyring, expired or not, if any.
    pub fn current_lease(&self, id: &KeyringId) -> Option<Lease> {
        self.lock().leases.get(id).and_then(|slot| slot.current.clone())
    }

    /// The state is only ever replaced whole (records are changed on a copy by
    /// [`KeyringRecord::apply`] and assigned afterwards), so a panic while the
    /// lock was held cannot leave it half-updated: recover from poisoning.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryKeyStore")
            .field("keyrings", &state.keyrings.len())
            .field("leases", &state.leases.values().filter(|s| s.current.is_some()).count())
            .field("jobs", &state.jobs.len())
            .field("policies", &state.policies.len())
            .finish()
    }
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn create_keyring(&self, record: &KeyringRecord) -> Result<()> {
        record.validate()?;
        let mut state = self.lock();
        if state.keyrings.contains_key(&record.id) {
            return Err(Error::KeyringExists(record.id.clone()));
        }
        state.keyrings.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn load_keyring(&self, id: &KeyringId) -> Result<Option<KeyringRecord>> {
        Ok(self.lock().keyrings.get(id).cloned())
    }

    async fn list_keyrings(&self) -> Result<Vec<KeyringId>> {
        Ok(self.lock().keyrings.keys().cloned().collect())
    }

    async fn update_keyring(
        &self,
        id: &KeyringId,
        expected_generation: u64,
        changes: &[KeyringChange],
    ) -> Result<KeyringRecord> {
        let mut state = self.lock();
        let record = state.keyrings.get_mut(id).ok_or_else(|| Error::KeyringNotFound(id.clone()))?;
        record.check_generation(expected_generation)?;
        // `apply` works on a copy and leaves `record` untouched on error.
        record.apply(changes)?;
        Ok(record.clone())
    }

    async fn acquire_lease(&self, id: &KeyringId, holder: &str, ttl: Duration, now: Timestamp) -> Result<Lease> {
        let mut state = self.lock();
        let slot = state.leases.entry(id.clone()).or_default();
        let lease = grant_lease(slot.current.as_ref(), id, holder, ttl, now, slot.last_token)?;
        slot.last_token = lease.token;
        slot.current = Some(lease.clone());
        Ok(lease)
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        let mut state = self.lock();
        let current = state
            .leases
            .get_mut(&lease.keyring)
            .and_then(|slot| slot.current.as_mut())
            .filter(|current| current.token == lease.token && current.holder == lease.holder)
            .ok_or_else(|| Error::LeaseLost { keyring: lease.keyring.clone() })?;
        current.expires_at = now.plus(ttl);
        Ok(current.clone())
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let mut state = self.lock();
        if let Some(slot) = state.leases.get_mut(&lease.keyring)
            && slot.current.as_ref().is_some_and(|current| current.token == lease.token)
        {
            slot.current = None;
        }
        Ok(())
    }

    async fn load_lease(&self, id: &KeyringId) -> Result<Option<Lease>> {
        Ok(self.current_lease(id))
    }

    async fn save_job(&self, job: &RotationJob, lease: &Lease) -> Result<()> {
        let mut state = self.lock();
        check_fence(state.leases.get(&job.keyring).and_then(|slot| slot.current.as_ref()), lease)?;
        state.jobs.insert(job.id.clone(), job.clone());
        Ok(())
    }

    async fn load_job(&self, id: &str) -> Result<Option<RotationJob>> {
        Ok(self.lock().jobs.get(id).cloned())
    }

    async fn list_jobs(&self, keyring: &KeyringId) -> Result<Vec<RotationJob>> {
        let mut jobs: Vec<RotationJob> =
            self.lock().jobs.values().filter(|job| &job.keyring == keyring).cloned().collect();
        jobs.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        Ok(jobs)
    }

    async fn save_policy(&self, keyring: &KeyringId, policy: &Policy) -> Result<()> {
        self.lock().policies.insert(keyring.clone(), policy.clone());
        Ok(())
    }

    async fn load_policy(&self, keyring: &KeyringId) -> Result<Option<Policy>> {
        Ok(self.lock().policies.get(keyring).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keywheel_core::{Algorithm, Purpose};

    fn id(tenant: &str) -> KeyringId {
        KeyringId::new(tenant, Purpose::Token).expect("valid id")
    }

    #[tokio::test]
    async fn debug_shows_counts_only() {
        let store = MemoryKeyStore::new();
        let record = KeyringRecord::new(id("acme"), Algorithm::Aes256Gcm, Timestamp::EPOCH);
        store.create_keyring(&record).await.expect("create");
        store.acquire_lease(&id("acme"), "me", Duration::from_secs(1), Timestamp::EPOCH).await.expect("lease");
        assert_eq!(format!("{store:?}"), "MemoryKeyStore { keyrings: 1, leases: 1, jobs: 0, policies: 0 }");
        assert_eq!(store.len(), 1);
        assert!(!store.is_empty());
    }

    #[tokio::test]
    async fn create_validates_the_record() {
        let store = MemoryKeyStore::new();
        let mut record = KeyringRecord::new(id("acme"), Algorithm::Aes256Gcm, Timestamp::EPOCH);
        record.generation = 7;
        record.versions.push(keywheel_core::VersionRecord {
            version: keywheel_core::KeyVersion::new(2).expect("nonzero"),
            algorithm: Algorithm::Aes256Gcm,
            state: keywheel_core::KeyState::Pending,
            origin: keywheel_core::KeyOrigin::Generated,
            wrapped: None,
            created_at: Timestamp::EPOCH,
            activated_at: None,
            deprecated_at: None,
            retired_at: None,
            disabled_at: None,
            destroy_after: None,
            compromised: false,
            encryptions: 0,
            replaced: None,
        });
        assert!(matches!(store.create_keyring(&record).await, Err(Error::InvalidArgument(_))));
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn release_keeps_the_token_counter() {
        let store = MemoryKeyStore::new();
        let ttl = Duration::from_secs(10);
        let a = store.acquire_lease(&id("acme"), "a", ttl, Timestamp::EPOCH).await.expect("a");
        assert_eq!(store.current_lease(&id("acme")), Some(a.clone()));
        store.release_lease(&a).await.expect("release");
        assert_eq!(store.current_lease(&id("acme")), None);
        let b = store.acquire_lease(&id("acme"), "b", ttl, Timestamp::EPOCH).await.expect("b");
        assert_eq!(b.token, a.token + 1);
        // A stale lease with the same token but another holder cannot renew.
        let forged = Lease { holder: "mallory".into(), ..b.clone() };
        assert!(matches!(store.renew_lease(&forged, ttl, Timestamp::EPOCH).await, Err(Error::LeaseLost { .. })));
    }
}

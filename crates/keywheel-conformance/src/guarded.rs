//! A key store that keeps a test resource alive (a temporary directory, a
//! scratch database) for as long as the store is in use.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keywheel_core::{
    KeyStore, KeyringChange, KeyringId, KeyringRecord, Lease, Policy, Result, RotationJob, Timestamp, async_trait,
};

/// `store`, which keeps `guard` alive until the last reference is dropped;
/// every call is delegated unchanged. Use it in a `key_store_tests!` factory
/// when the backend needs a scratch resource removed after each test.
pub fn with_guard(store: impl KeyStore + 'static, guard: impl Any + Send + Sync) -> Arc<dyn KeyStore> {
    Arc::new(Guarded { store: Box::new(store), _guard: Box::new(guard) })
}

struct Guarded {
    store: Box<dyn KeyStore>,
    _guard: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.store.fmt(f)
    }
}

#[async_trait]
impl KeyStore for Guarded {
    async fn create_keyring(&self, record: &KeyringRecord) -> Result<()> {
        self.store.create_keyring(record).await
    }
    async fn load_keyring(&self, id: &KeyringId) -> Result<Option<KeyringRecord>> {
        self.store.load_keyring(id).await
    }
    async fn list_keyrings(&self) -> Result<Vec<KeyringId>> {
        self.store.list_keyrings().await
    }
    async fn update_keyring(&self, id: &KeyringId, g: u64, changes: &[KeyringChange]) -> Result<KeyringRecord> {
        self.store.update_keyring(id, g, changes).await
    }
    async fn acquire_lease(&self, id: &KeyringId, holder: &str, ttl: Duration, now: Timestamp) -> Result<Lease> {
        self.store.acquire_lease(id, holder, ttl, now).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        self.store.renew_lease(lease, ttl, now).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.store.release_lease(lease).await
    }
    async fn load_lease(&self, id: &KeyringId) -> Result<Option<Lease>> {
        self.store.load_lease(id).await
    }
    async fn save_job(&self, job: &RotationJob, lease: &Lease) -> Result<()> {
        self.store.save_job(job, lease).await
    }
    async fn load_job(&self, id: &str) -> Result<Option<RotationJob>> {
        self.store.load_job(id).await
    }
    async fn list_jobs(&self, keyring: &KeyringId) -> Result<Vec<RotationJob>> {
        self.store.list_jobs(keyring).await
    }
    async fn save_policy(&self, keyring: &KeyringId, policy: &Policy) -> Result<()> {
        self.store.save_policy(keyring, policy).await
    }
    async fn load_policy(&self, keyring: &KeyringId) -> Result<Option<Policy>> {
        self.store.load_policy(keyring).await
    }
}

//! Test doubles shared by the integration tests: a memory key store and a
//! memory record source whose every call first asks a [`Hook`], which can count
//! calls or inject a crash before or after the call takes effect.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use keywheel::memory::{MemoryKeyStore, MemoryRecordSource};
use keywheel::{
    Census, Error, KeyStore, KeyringChange, KeyringId, KeyringRecord, Lease, Policy, RecordSource, ReplaceOutcome,
    Replacement, RotationJob, ScanRequest, StoredValue, Timestamp, async_trait,
};

/// When an injected fault fires relative to the wrapped call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Fail without performing the call (crash before).
    Before,
    /// Perform the call, then fail (crash after the write, before the caller learns).
    After,
}

/// Asked before every call of a hooked store or source.
pub(crate) trait Hook: Send + Sync + std::fmt::Debug + 'static {
    /// `Some(mode)` makes this call fail.
    fn call(&self, op: &'static str) -> Option<Mode>;
}

/// Counts calls per operation name.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    pub(crate) loads: AtomicUsize,
}

impl Hook for Counter {
    fn call(&self, op: &'static str) -> Option<Mode> {
        if op == "load_keyring" {
            self.loads.fetch_add(1, Ordering::SeqCst);
        }
        None
    }
}

/// Fails the k-th call (counted across everything sharing this hook).
#[derive(Debug, Default)]
pub(crate) struct Fault {
    calls: AtomicU64,
    fail_at: AtomicU64,
    mode_after: AtomicBool,
    pub(crate) fired: AtomicBool,
}

impl Fault {
    pub(crate) fn arm(&self, k: u64, mode: Mode) {
        self.calls.store(0, Ordering::SeqCst);
        self.fired.store(false, Ordering::SeqCst);
        self.mode_after.store(mode == Mode::After, Ordering::SeqCst);
        self.fail_at.store(k, Ordering::SeqCst);
    }
    pub(crate) fn disarm(&self) {
        self.fail_at.store(0, Ordering::SeqCst);
    }
}

impl Hook for Fault {
    fn call(&self, _op: &'static str) -> Option<Mode> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        (n == self.fail_at.load(Ordering::SeqCst)).then(|| {
            self.fired.store(true, Ordering::SeqCst);
            if self.mode_after.load(Ordering::SeqCst) { Mode::After } else { Mode::Before }
        })
    }
}

fn crash() -> Error {
    Error::backend("fault injection", "injected crash", true)
}

/// Run `$call` under the hook's verdict for operation `$op`.
macro_rules! hooked {
    ($self:ident, $op:literal, $call:expr) => {{
        match $self.hook.call($op) {
            Some(Mode::Before) => Err(crash()),
            Some(Mode::After) => {
                $call.await?;
                Err(crash())
            }
            None => $call.await,
        }
    }};
}

/// A [`MemoryKeyStore`] behind a hook.
#[derive(Debug)]
pub(crate) struct HookedStore<H> {
    pub(crate) inner: MemoryKeyStore,
    pub(crate) hook: Arc<H>,
}

impl<H: Hook> HookedStore<H> {
    pub(crate) fn new(hook: Arc<H>) -> Self {
        HookedStore { inner: MemoryKeyStore::new(), hook }
    }
}

#[async_trait]
impl<H: Hook> KeyStore for HookedStore<H> {
    async fn create_keyring(&self, record: &KeyringRecord) -> keywheel::Result<()> {
        hooked!(self, "create_keyring", self.inner.create_keyring(record))
    }
    async fn load_keyring(&self, id: &KeyringId) -> keywheel::Result<Option<KeyringRecord>> {
        hooked!(self, "load_keyring", self.inner.load_keyring(id))
    }
    async fn list_keyrings(&self) -> keywheel::Result<Vec<KeyringId>> {
        hooked!(self, "list_keyrings", self.inner.list_keyrings())
    }
    async fn update_keyring(&self, id: &KeyringId, g: u64, c: &[KeyringChange]) -> keywheel::Result<KeyringRecord> {
        hooked!(self, "update_keyring", self.inner.update_keyring(id, g, c))
    }
    async fn acquire_lease(&self, id: &KeyringId, h: &str, ttl: Duration, now: Timestamp) -> keywheel::Result<Lease> {
        hooked!(self, "acquire_lease", self.inner.acquire_lease(id, h, ttl, now))
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> keywheel::Result<Lease> {
        hooked!(self, "renew_lease", self.inner.renew_lease(lease, ttl, now))
    }
    async fn release_lease(&self, lease: &Lease) -> keywheel::Result<()> {
        hooked!(self, "release_lease", self.inner.release_lease(lease))
    }
    async fn load_lease(&self, id: &KeyringId) -> keywheel::Result<Option<Lease>> {
        hooked!(self, "load_lease", self.inner.load_lease(id))
    }
    async fn save_job(&self, job: &RotationJob, lease: &Lease) -> keywheel::Result<()> {
        hooked!(self, "save_job", self.inner.save_job(job, lease))
    }
    async fn load_job(&self, id: &str) -> keywheel::Result<Option<RotationJob>> {
        hooked!(self, "load_job", self.inner.load_job(id))
    }
    async fn list_jobs(&self, keyring: &KeyringId) -> keywheel::Result<Vec<RotationJob>> {
        hooked!(self, "list_jobs", self.inner.list_jobs(keyring))
    }
    async fn save_policy(&self, keyring: &KeyringId, policy: &Policy) -> keywheel::Result<()> {
        hooked!(self, "save_policy", self.inner.save_policy(keyring, policy))
    }
    async fn load_policy(&self, keyring: &KeyringId) -> keywheel::Result<Option<Policy>> {
        hooked!(self, "load_policy", self.inner.load_policy(keyring))
    }
}

/// A [`MemoryRecordSource`] behind a hook.
#[derive(Debug)]
pub(crate) struct HookedSource<H> {
    pub(crate) inner: Arc<MemoryRecordSource>,
    pub(crate) hook: Arc<H>,
}

#[async_trait]
impl<H: Hook> RecordSource for HookedSource<H> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn scan(&self, request: &ScanRequest) -> keywheel::Result<Vec<StoredValue>> {
        hooked!(self, "scan", self.inner.scan(request))
    }
    async fn replace(&self, batch: &[Replacement]) -> keywheel::Result<Vec<ReplaceOutcome>> {
        hooked!(self, "replace", self.inner.replace(batch))
    }
    fn covers(&self, keyring: &KeyringId) -> bool {
        self.inner.covers(keyring)
    }
    async fn census(&self, keyring: Option<&KeyringId>) -> keywheel::Result<Census> {
        hooked!(self, "census", self.inner.census(keyring))
    }
}

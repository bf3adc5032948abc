//! The `Keywheel` facade: lifecycle operations over the traits, and a cache of
//! keyring snapshots for the hot path.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::seal::SealingStore;
use crate::usage::KeyringUsage;
use crate::{
    Algorithm, AuditEvent, AuditKind, AuditSink, Clock, Context, Error, KeyEncryptionKey, KeyMaterial, KeyOrigin,
    KeyState, KeyStore, KeyVersion, Keyring, KeyringChange, KeyringId, KeyringRecord, Lease, Outcome, Plaintext,
    Policy, Result, SystemClock, Timestamp, VersionRecord,
};

/// Lease time-to-live of the short lifecycle operations that are not jobs
/// (a forced retirement): long enough for a few store round trips.
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

/// Builds a [`Keywheel`]; store, KEK and audit sink are required.
#[derive(Default)]
pub struct KeywheelBuilder {
    store: Option<Arc<dyn KeyStore>>,
    kek: Option<Arc<dyn KeyEncryptionKey>>,
    audit: Option<Arc<dyn AuditSink>>,
    clock: Option<Arc<dyn Clock>>,
    actor: Option<String>,
    refresh_interval: Option<Duration>,
    reload_cooldown: Option<Duration>,
    kek_outage_grace: Option<Duration>,
}

impl fmt::Debug for KeywheelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeywheelBuilder").finish_non_exhaustive()
    }
}

impl KeywheelBuilder {
    /// The key store (required).
    pub fn store(mut self, store: Arc<dyn KeyStore>) -> Self {
        self.store = Some(store);
        self
    }
    /// The key-encryption key (required).
    pub fn kek(mut self, kek: Arc<dyn KeyEncryptionKey>) -> Self {
        self.kek = Some(kek);
        self
    }
    /// The audit sink (required).
    pub fn audit(mut self, audit: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(audit);
        self
    }
    /// The clock (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
    /// The actor named in audit events (default `keywheel`).
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }
    /// How old a cached snapshot may get before the next access reloads it (default 60 s).
    pub fn refresh_interval(mut self, d: Duration) -> Self {
        self.refresh_interval = Some(d);
        self
    }
    /// Minimum time between two reloads of a keyring forced from outside the
    /// refresh schedule (default 1 s): by an unknown version in a decrypt, and
    /// by changes announced with [`Keywheel::mark_stale`] (at most one reload
    /// per cooldown, however many announcements), so a flood of bad values or
    /// of notifications cannot hammer the store or the KEK.
    pub fn reload_cooldown(mut self, d: Duration) -> Self {
        self.reload_cooldown = Some(d);
        self
    }
    /// How long past its refresh interval a loaded snapshot keeps serving
    /// while its reload fails with a retryable error (the KEK's KMS or HSM
    /// unreachable, [`Error::KekUnavailable`]; a store fault marked
    /// retryable): default 60 s. Meanwhile reloads are retried with
    /// exponential backoff (1 s, 2 s, 4 s … at most 30 s) rather than on every
    /// access; once the grace is spent, accesses fail with the reload's error.
    /// A non-retryable error (access denied, disabled key, wrong key) never
    /// falls back, so revoking the KEK stops every process at its next
    /// refresh. The grace counts in [`Keywheel::stale_snapshot_bound`]. See
    /// the [manual](crate::manual#kms-and-hsm-master-keys).
    pub fn kek_outage_grace(mut self, d: Duration) -> Self {
        self.kek_outage_grace = Some(d);
        self
    }
    /// Build it. [`Error::InvalidArgument`] names a missing component.
    pub fn build(self) -> Result<Keywheel> {
        let missing = |what: &str| Error::InvalidArgument(format!("Keywheel::builder() needs a {what}"));
        let store = self.store.ok_or_else(|| missing("store"))?;
        let kek = self.kek.ok_or_else(|| missing("KEK"))?;
        let sealing = Arc::new(SealingStore::new(store, Arc::clone(&kek)));
        Ok(Keywheel {
            inner: Arc::new(Inner {
                store: Arc::clone(&sealing) as Arc<dyn KeyStore>,
                sealing,
                kek,
                audit: self.audit.ok_or_else(|| missing("audit sink"))?,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                actor: self.actor.unwrap_or_else(|| "keywheel".to_owned()),
                refresh_interval: self.refresh_interval.unwrap_or(Duration::from_secs(60)),
                reload_cooldown: self.reload_cooldown.unwrap_or(Duration::from_secs(1)),
                kek_outage_grace: self.kek_outage_grace.unwrap_or(DEFAULT_KEK_OUTAGE_GRACE),
                cache: RwLock::new(HashMap::new()),
                audit_key: tokio::sync::OnceCell::new(),
                usage: Mutex::new(HashMap::new()),
                reloads: AtomicU64::new(0),
                outage_serves: AtomicU64::new(0),
            }),
        })
    }
}

struct Cached {
    ring: Arc<Keyring>,
    /// Last load from the store, for whatever reason (the reload cooldown).
    loaded_at: Timestamp,
    /// Last scheduled load, which also flushed usage (the refresh interval).
    /// Reloads for announced changes do not move it, so announcements can
    /// neither postpone the periodic refresh nor the usage flush.
    refreshed_at: Timestamp,
    last_forced_reload: Option<Timestamp>,
    /// Another process announced a change since `ring` was loaded
    /// ([`Keywheel::mark_stale`]). Atomic, so a flood of announcements only
    /// takes the cache's read lock, not the write lock the hot path waits on.
    stale: AtomicBool,
    /// This process changed the keyring since `ring` was loaded
    /// ([`Keywheel::invalidate`]): reload at the next access.
    invalid: bool,
    /// After a reload failed with a retryable error: no new attempt before
    /// this moment (the snapshot keeps serving), and how many attempts failed
    /// in a row (the backoff's exponent).
    retry_at: Option<Timestamp>,
    failed_reloads: u32,
}

/// What `Keywheel::claim` found in the cache.
enum Claim {
    /// A snapshot that needs no reload.
    Fresh(Arc<Keyring>),
    /// This caller reloads; the entry before the claim (to restore if the
    /// reload fails), if there was one.
    Reload(Option<Marks>),
}

/// The fields of a [`Cached`] entry that a claim changes.
#[derive(Clone, Copy)]
struct Marks {
    loaded_at: Timestamp,
    refreshed_at: Timestamp,
    stale: bool,
    invalid: bool,
}

/// Default of [`KeywheelBuilder::kek_outage_grace`].
const DEFAULT_KEK_OUTAGE_GRACE: Duration = Duration::from_secs(60);
/// First and longest wait between two reload attempts during an outage.
const OUTAGE_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const OUTAGE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How many times a usage flush retries after a concurrent update of the
/// keyring (counts are additive, so a retry is always correct).
const MAX_FLUSH_CONFLICTS: u32 = 16;

struct Inner {
    /// `sealing`, as the trait object [`Keywheel::store`] hands out.
    store: Arc<dyn KeyStore>,
    /// The configured store behind the seal/verify decorator.
    sealing: Arc<SealingStore>,
    kek: Arc<dyn KeyEncryptionKey>,
    audit: Arc<dyn AuditSink>,
    clock: Arc<dyn Clock>,
    actor: String,
    refresh_interval: Duration,
    reload_cooldown: Duration,
    kek_outage_grace: Duration,
    cache: RwLock<HashMap<KeyringId, Cached>>,
    /// The KEK's integrity key, which authenticates audit entries (fetched once).
    audit_key: tokio::sync::OnceCell<crate::IntegrityKey>,
    /// Usage counters per keyring and version, for the life of the instance:
    /// outside the cache, so invalidation and reloads keep them; shared with
    /// every snapshot built from them.
    usage: Mutex<HashMap<KeyringId, Arc<KeyringUsage>>>,
    /// Snapshot loads from the store ([`Keywheel::reloads`]).
    reloads: AtomicU64,
    /// Accesses served by a snapshot whose reload had failed ([`Keywheel::outage_serves`]).
    outage_serves: AtomicU64,
}

/// The entry point: creates keyrings, runs manual lifecycle steps (each atomic
/// and audited), and serves cached [`Keyring`] snapshots for encrypt/decrypt.
///
/// Cheap to clone (an `Arc`); share one per process.
///
/// ```
/// # use std::sync::Arc;
/// # use keywheel_core::*;
/// # async fn demo(store: Arc<dyn KeyStore>, audit: Arc<dyn AuditSink>) -> Result<()> {
/// let kw = Keywheel::builder()
///     .store(store)
///     .kek(Arc::new(LocalKek::from_env("KEYWHEEL_MASTER_KEY")?))
///     .audit(audit)
///     .build()?;
/// let id = KeyringId::new("acme", Purpose::Token)?;
/// kw.create_keyring(&id, Algorithm::Aes256Gcm).await?;
/// let ctx = Context::field("users", "oauth_token", "42");
/// let stored = kw.encrypt(&id, b"ya29.secret", &ctx).await?;
/// assert_eq!(&kw.decrypt(&id, &stored, &ctx).await?[..], b"ya29.secret");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Keywheel {
    inner: Arc<Inner>,
}

impl fmt::Debug for Keywheel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keywheel")
            .field("store", &self.inner.store)
            .field("kek", &self.inner.kek.id())
            .field("actor", &self.inner.actor)
            .finish_non_exhaustive()
    }
}

/// A fresh random correlation id (128 bits, hex).
pub fn correlation_id() -> Result<String> {
    let bytes: [u8; 16] = crate::nonce::random_nonce()?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Keywheel {
    /// Start building.
    pub fn builder() -> KeywheelBuilder {
        KeywheelBuilder::default()
    }

    /// The key store, as keywheel uses it: every keyring it loads is verified
    /// against its seal ([`Error::RecordTampered`] otherwise) and every keyring
    /// write through it is sealed under the KEK's integrity key (see the
    /// [manual](crate::manual), "Record authentication"). Writes of usage counts
    /// alone (`RecordUsage`) pass straight through: the seal leaves them out.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.inner.store
    }

    /// The same store, audit sink, clock and actor with another KEK: an
    /// instance that seals and audits under `kek`'s integrity key (KEK
    /// rotation writes under the new master key, whatever this one's is).
    pub(crate) fn with_kek(&self, kek: Arc<dyn KeyEncryptionKey>) -> Result<Keywheel> {
        Keywheel::builder()
            .store(Arc::clone(self.inner.sealing.inner()))
            .kek(kek)
            .audit(Arc::clone(&self.inner.audit))
            .clock(Arc::clone(&self.inner.clock))
            .actor(self.inner.actor.clone())
            .refresh_interval(self.inner.refresh_interval)
            .reload_cooldown(self.inner.reload_cooldown)
            .kek_outage_grace(self.inner.kek_outage_grace)
            .build()
    }

    /// The audit sink.
    pub fn audit_sink(&self) -> &Arc<dyn AuditSink> {
        &self.inner.audit
    }

    /// The KEK.
    pub fn kek(&self) -> &Arc<dyn KeyEncryptionKey> {
        &self.inner.kek
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The actor named in this instance's audit events.
    pub fn actor(&self) -> &str {
        &self.inner.actor
    }

    /// How old a cached snapshot may get before the next access reloads it.
    pub fn refresh_interval(&self) -> Duration {
        self.inner.refresh_interval
    }

    /// The bound after which no caller of this instance still encrypts with a
    /// snapshot loaded before a given moment: the refresh interval (every
    /// [`keyring`](Self::keyring)/[`encrypt`](Self::encrypt) call reloads an
    /// older snapshot), plus the KEK outage grace (a snapshot whose reload
    /// fails with a retryable error keeps serving that much longer,
    /// [`KeywheelBuilder::kek_outage_grace`]), plus 5 s for an encryption
    /// whose write is still in flight (with the defaults: 125 s). An emergency rotation waits this long after activating the new
    /// version before its final census ([`RotateOptions::emergency_settle`](crate::RotateOptions::emergency_settle)).
    /// A [`Keyring`] snapshot an application keeps beyond one operation is not
    /// covered: fetch it per operation.
    pub fn stale_snapshot_bound(&self) -> Duration {
        self.inner.refresh_interval + self.inner.kek_outage_grace + Duration::from_secs(5)
    }

    /// Whether the audit trail already holds an event with `correlation_id`
    /// whose kind matches `kind` (searched newest first). Recovery after a
    /// crash uses it to record an event once. Sinks that cannot be read back
    /// ([`AuditSink::entries`] is `None`) answer `false`.
    pub async fn recorded(&self, correlation_id: &str, kind: impl Fn(&AuditKind) -> bool) -> Result<bool> {
        let Some(entries) = self.inner.audit.entries().await? else { return Ok(false) };
        Ok(entries.iter().rev().any(|e| e.event.correlation_id == correlation_id && kind(&e.event.kind)))
    }

    /// The current time from the injected clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// An audit event by this instance's actor, now.
    pub fn event(&self, keyring: Option<&KeyringId>, kind: AuditKind, correlation_id: &str) -> AuditEvent {
        AuditEvent {
            at: self.now(),
            actor: self.inner.actor.clone(),
            keyring: keyring.cloned(),
            kind,
            reason: None,
            correlation_id: correlation_id.to_owned(),
            outcome: Outcome::Success,
        }
    }

    /// Record events in the sink, each authenticated under the KEK's
    /// [`integrity_key`](KeyEncryptionKey::integrity_key) (fetched once and
    /// cached); any failure is [`Error::Audit`] (fail closed).
    pub async fn record_all(&self, events: &[AuditEvent]) -> Result<()> {
        for e in events {
            self.record_event(e).await.map_err(|err| match err {
                Error::Audit(_) => err,
                other => Error::Audit(other.to_string()),
            })?;
        }
        Ok(())
    }

    /// Record one event under the KEK's integrity key.
    async fn record_event(&self, event: &AuditEvent) -> Result<()> {
        let key = self.inner.audit_key.get_or_try_init(|| self.inner.kek.integrity_key()).await?;
        self.inner.audit.record(event, key).await
    }

    /// Audit `events`, then apply `changes` to the keyring with compare-and-set
    /// against `record.generation`, sealing the result (the seal of the record
    /// as `changes` leave it is appended as a last [`KeyringChange::Seal`]).
    /// `record` must pass its seal check ([`Error::RecordTampered`] otherwise),
    /// and the changes are validated first, so tampered records and illegal
    /// changes are refused before anything is audited or written. If the store
    /// then refuses the update, a `Failed` copy of the last event is recorded
    /// (best effort) and the store's error returned.
    pub async fn apply_audited(
        &self,
        record: &KeyringRecord,
        changes: &[KeyringChange],
        events: &[AuditEvent],
    ) -> Result<KeyringRecord> {
        self.apply_recording(record, changes, events, events).await
    }

    /// [`apply_audited`](Self::apply_audited) for a step that may be repeated
    /// after a crash (`once`): events already in the trail with the same
    /// correlation id and kind — recorded by the run that crashed between
    /// auditing and writing — are not recorded again.
    pub(crate) async fn apply_audited_once(
        &self,
        record: &KeyringRecord,
        changes: &[KeyringChange],
        events: &[AuditEvent],
        once: bool,
    ) -> Result<KeyringRecord> {
        if !once {
            return self.apply_audited(record, changes, events).await;
        }
        let mut missing = Vec::with_capacity(events.len());
        for e in events {
            if !self.recorded(&e.correlation_id, |kind| *kind == e.kind).await? {
                missing.push(e.clone());
            }
        }
        self.apply_recording(record, changes, &missing, events).await
    }

    /// The body of [`apply_audited`](Self::apply_audited): verify, validate,
    /// record `to_record`, write sealed; `events` name a failure.
    async fn apply_recording(
        &self,
        record: &KeyringRecord,
        changes: &[KeyringChange],
        to_record: &[AuditEvent],
        events: &[AuditEvent],
    ) -> Result<KeyringRecord> {
        self.verify_record(record).await?;
        record.clone().apply(changes)?;
        self.record_all(to_record).await?;
        let result = self.inner.sealing.update_from(record, changes).await;
        self.finish_update(&record.id, result, events).await
    }

    /// Invalidate the cache after a successful update; after a failed one,
    /// record a `Failed` copy of the last event (best effort).
    async fn finish_update(
        &self,
        id: &KeyringId,
        result: Result<KeyringRecord>,
        events: &[AuditEvent],
    ) -> Result<KeyringRecord> {
        match result {
            Ok(updated) => {
                self.invalidate(id);
                Ok(updated)
            }
            Err(e) => {
                if let Some(last) = events.last() {
                    let mut failed = last.clone();
                    failed.outcome = Outcome::Failed;
                    failed.reason = Some(e.to_string());
                    // The original error matters more than a failure to record the failure.
                    let _ = self.record_event(&failed).await;
                }
                Err(e)
            }
        }
    }

    /// Check `record`'s seal as every load does: [`Error::RecordTampered`]
    /// naming the keyring if it has no seal or its lifecycle fields do not
    /// match it (or [`Error::WrongMasterKey`] if the KEK is not the one the
    /// keyring was written with).
    pub async fn verify_record(&self, record: &KeyringRecord) -> Result<()> {
        self.inner.sealing.verify(&record.id, record).await
    }

    /// Seal a keyring record that has no seal yet — one written before record
    /// authentication — as it stands, after an operator has reviewed it:
    /// audited as `KeyringSealed` with `reason` (required). Every live version
    /// is unwrapped first, so a wrong master key fails before anything is
    /// written. Returns `true` if it sealed the record, `false` if it already
    /// carried a valid seal (nothing written). A record whose seal is present
    /// but does not verify is refused with [`Error::RecordTampered`]: it is
    /// never resealed. See the [manual](crate::manual), "Record authentication".
    pub async fn seal_unsealed(&self, id: &KeyringId, reason: &str) -> Result<bool> {
        crate::observability::lifecycle("seal_record", Some(id), None, async {
            if reason.trim().is_empty() {
                return Err(Error::ReasonRequired("keyring seal"));
            }
            let raw = self.inner.sealing.inner();
            let record = raw.load_keyring(id).await?.ok_or_else(|| Error::KeyringNotFound(id.clone()))?;
            if record.seal.is_some() {
                self.verify_record(&record).await?;
                return Ok(false);
            }
            if record.id != *id {
                return Err(Error::RecordTampered {
                    keyring: id.clone(),
                    detail: format!("the store returned the record of keyring {}", record.id),
                });
            }
            record.validate()?;
            // Proves the configured KEK opens every live version before vouching for them.
            drop(self.unwrapped(&record).await?);
            let seal = self.inner.sealing.seal(&record).await?;
            let cid = correlation_id()?;
            let mut event = self.event(Some(id), AuditKind::KeyringSealed { key_id: seal.key_id.clone() }, &cid);
            event.reason = Some(reason.to_owned());
            let events = [event];
            self.record_all(&events).await?;
            let result = raw.update_keyring(id, record.generation, &[KeyringChange::Seal(seal)]).await;
            self.finish_update(id, result, &events).await?;
            Ok(true)
        })
        .await
    }

    /// The stored record of a keyring ([`Error::KeyringNotFound`] if absent),
    /// verified against its seal ([`Error::RecordTampered`] if it does not match).
    pub async fn record(&self, id: &KeyringId) -> Result<KeyringRecord> {
        self.inner.store.load_keyring(id).await?.ok_or_else(|| Error::KeyringNotFound(id.clone()))
    }

    /// All keyring ids.
    pub async fn list_keyrings(&self) -> Result<Vec<KeyringId>> {
        self.inner.store.list_keyrings().await
    }

    /// Create a keyring with version 1 generated and Active, ready to encrypt.
    pub async fn create_keyring(&self, id: &KeyringId, algorithm: Algorithm) -> Result<Arc<Keyring>> {
        crate::observability::lifecycle("create_keyring", Some(id), None, async {
            // Refused before anything is audited; the store's own check below
            // still decides a race between two creators. (Raw load: an existing
            // keyring is reported as existing, sealed or not.)
            if self.inner.sealing.inner().load_keyring(id).await?.is_some() {
                return Err(Error::KeyringExists(id.clone()));
            }
            let now = self.now();
            let cid = correlation_id()?;
            let v1 = self
                .new_version_record(id, KeyVersion::FIRST, algorithm, KeyMaterial::generate()?, KeyOrigin::Generated)
                .await?;
            let mut record = KeyringRecord::new(id.clone(), algorithm, now);
            record.versions.push(v1);
            record.apply(&[KeyringChange::SetState {
                version: KeyVersion::FIRST,
                state: KeyState::Active,
                at: now,
            }])?;
            record.generation = 1;
            // Sealed here, before the audit, so a KEK that cannot seal fails first.
            record.seal = Some(self.inner.sealing.seal(&record).await?);
            self.record_all(&[
                self.event(Some(id), AuditKind::KeyringCreated { algorithm }, &cid),
                self.event(
                    Some(id),
                    AuditKind::KeyCreated { version: KeyVersion::FIRST, algorithm, origin: KeyOrigin::Generated },
                    &cid,
                ),
                self.event(Some(id), AuditKind::KeyActivated { version: KeyVersion::FIRST, previous: None }, &cid),
            ])
            .await?;
            if let Err(e) = self.inner.sealing.inner().create_keyring(&record).await {
                let mut failed = self.event(Some(id), AuditKind::KeyringCreated { algorithm }, &cid);
                failed.outcome = Outcome::Failed;
                failed.reason = Some(e.to_string());
                // The original error matters more than a failure to record the failure.
                let _ = self.record_event(&failed).await;
                return Err(e);
            }
            self.keyring(id).await
        })
        .await
    }

    async fn new_version_record(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        algorithm: Algorithm,
        material: KeyMaterial,
        origin: KeyOrigin,
    ) -> Result<VersionRecord> {
        let wrapped = self.inner.kek.wrap(id, version, &material).await?;
        Ok(VersionRecord {
            version,
            algorithm,
            state: KeyState::Pending,
            origin,
            wrapped: Some(wrapped),
            created_at: self.now(),
            activated_at: None,
            deprecated_at: None,
            retired_at: None,
            disabled_at: None,
            destroy_after: None,
            compromised: false,
            encryptions: 0,
            replaced: None,
        })
    }

    /// Generate the next version and store it as Pending (it decrypts at once,
    /// encrypts only once activated). Returns its number.
    pub async fn add_version(&self, id: &KeyringId) -> Result<KeyVersion> {
        let material = KeyMaterial::generate()?;
        let added = self.add_material(id, material, KeyOrigin::Generated);
        crate::observability::lifecycle("add_version", Some(id), None, added).await
    }

    /// Import caller-supplied material (bring your own key) as the next Pending version.
    pub async fn import_version(&self, id: &KeyringId, material: KeyMaterial) -> Result<KeyVersion> {
        let added = self.add_material(id, material, KeyOrigin::Imported);
        crate::observability::lifecycle("import_version", Some(id), None, added).await
    }

    async fn add_material(&self, id: &KeyringId, material: KeyMaterial, origin: KeyOrigin) -> Result<KeyVersion> {
        self.add_material_as(id, material, origin, &correlation_id()?, false).await
    }

    /// Generate the next version for a rotation job: audited under the job's
    /// id, once across a crash when `once` (a resumed job).
    pub(crate) async fn add_version_for(&self, id: &KeyringId, correlation_id: &str, once: bool) -> Result<KeyVersion> {
        self.add_material_as(id, KeyMaterial::generate()?, KeyOrigin::Generated, correlation_id, once).await
    }

    async fn add_material_as(
        &self,
        id: &KeyringId,
        material: KeyMaterial,
        origin: KeyOrigin,
        cid: &str,
        once: bool,
    ) -> Result<KeyVersion> {
        let record = self.record(id).await?;
        // Prove the configured KEK opens this keyring before wrapping anything
        // new with it: a wrong master key fails here (`WrongMasterKey`), before
        // any write, instead of adding a version the others cannot live with.
        if let Some((version, wrapped)) =
            record.versions.iter().rev().find_map(|v| v.wrapped.as_ref().map(|w| (v.version, w)))
        {
            self.inner.kek.unwrap(id, version, wrapped).await?;
        }
        let version = record.next_version()?;
        let algorithm = record.algorithm;
        let v = self.new_version_record(id, version, algorithm, material, origin).await?;
        let event = self.event(Some(id), AuditKind::KeyCreated { version, algorithm, origin }, cid);
        self.apply_audited_once(&record, &[KeyringChange::AddVersion(v)], &[event], once).await?;
        Ok(version)
    }

    /// Make the Pending `version` the Active one; the previously Active version
    /// becomes Deprecated in the same atomic update.
    ///
    /// Only Pending versions are activated here. Returning to a Deprecated
    /// version is a rollback, with a window and a once-only rule:
    /// [`Rotator::rollback`](crate::Rotator::rollback); asking for it here is
    /// [`Error::RollbackRefused`]. A version flagged compromised is never
    /// activated ([`Error::CompromisedVersion`]).
    pub async fn activate(&self, id: &KeyringId, version: KeyVersion) -> Result<KeyringRecord> {
        let cid = correlation_id()?;
        let activated = self.activate_with(id, version, &[], &cid, false);
        crate::observability::lifecycle("activate", Some(id), Some(version), activated).await
    }

    /// [`activate`](Self::activate) plus `extra` changes in the same atomic
    /// update (the emergency path flags the old version compromised there),
    /// audited under `correlation_id` (once across a crash when `once`).
    pub(crate) async fn activate_with(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        extra: &[KeyringChange],
        correlation_id: &str,
        once: bool,
    ) -> Result<KeyringRecord> {
        let record = self.record(id).await?;
        let state =
            record.version(version).map(|v| v.state).ok_or(Error::VersionNotFound { keyring: id.clone(), version })?;
        if state == KeyState::Deprecated {
            return Err(Error::RollbackRefused {
                keyring: id.clone(),
                reason: format!("{version} is deprecated: returning to it is a rollback (Rotator::rollback)"),
            });
        }
        let now = self.now();
        let previous = record.active_version().filter(|&p| p != version);
        let mut changes = vec![KeyringChange::SetState { version, state: KeyState::Active, at: now }];
        let mut events = Vec::new();
        if let Some(p) = previous {
            changes.insert(0, KeyringChange::SetState { version: p, state: KeyState::Deprecated, at: now });
            events.push(self.event(Some(id), AuditKind::KeyDeprecated { version: p }, correlation_id));
        }
        changes.extend_from_slice(extra);
        events.push(self.event(Some(id), AuditKind::KeyActivated { version, previous }, correlation_id));
        self.apply_audited_once(&record, &changes, &events, once).await
    }

    /// Deprecate the Active `version`. Because a keyring always keeps exactly one
    /// Active version, this activates the newest Pending version in the same
    /// update; with no Pending version it fails ([`Error::InvalidArgument`]).
    pub async fn deprecate(&self, id: &KeyringId, version: KeyVersion) -> Result<KeyringRecord> {
        crate::observability::lifecycle("deprecate", Some(id), Some(version), async {
            let record = self.record(id).await?;
            let state = record
                .version(version)
                .map(|v| v.state)
                .ok_or(Error::VersionNotFound { keyring: id.clone(), version })?;
            state.check_transition(version, KeyState::Deprecated)?;
            let successor =
                record.versions.iter().rev().find(|v| v.state == KeyState::Pending).map(|v| v.version).ok_or_else(
                    || {
                        Error::InvalidArgument(format!(
                            "cannot deprecate {version} of {id}: no Pending version to take over (add one first)"
                        ))
                    },
                )?;
            self.activate_with(id, successor, &[], &correlation_id()?, false).await
        })
        .await
    }

    /// Take the keyring's lease for lifecycle work, under a holder name unique
    /// to this acquisition (`{name}#{random}`), so that no other process, and
    /// no other call of this one, ever shares it. A live lease is never taken
    /// over: it is refused with [`Error::RotationInProgress`] naming its holder
    /// and expiry, before anything is written; so is a keyring whose record
    /// is missing ([`Error::KeyringNotFound`]) or fails its seal
    /// ([`Error::RecordTampered`]).
    pub(crate) async fn take_lease(&self, id: &KeyringId, name: &str, ttl: Duration) -> Result<Lease> {
        // Nothing is written for a keyring whose record fails its seal (or is
        // missing), not even a lease: every lifecycle step would refuse it anyway.
        self.record(id).await?;
        let now = self.now();
        let held = |holder: &str, until: Timestamp| Error::RotationInProgress {
            keyring: id.clone(),
            detail: format!("lease held by {holder} until {until}"),
            running: true,
        };
        if let Some(current) = self.inner.store.load_lease(id).await?
            && current.expires_at > now
        {
            return Err(held(&current.holder, current.expires_at));
        }
        let holder = format!("{name}#{}", &correlation_id()?[..12]);
        match self.inner.store.acquire_lease(id, &holder, ttl, now).await {
            Err(Error::LeaseHeld { holder, expires_at, .. }) => Err(held(&holder, expires_at)),
            other => other,
        }
    }

    /// The keyring's stored policy, or its purpose's preset ([`Policy::for_purpose`]).
    pub async fn policy(&self, id: &KeyringId) -> Result<Policy> {
        Ok(self.inner.store.load_policy(id).await?.unwrap_or_else(|| Policy::for_purpose(id.purpose())))
    }

    /// Store a keyring's policy; audited as `PolicyChanged` (before it takes effect).
    pub async fn set_policy(&self, id: &KeyringId, policy: &Policy) -> Result<()> {
        crate::observability::lifecycle("set_policy", Some(id), None, async {
            self.record(id).await?;
            let summary = serde_json::to_string(policy).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let event = self.event(Some(id), AuditKind::PolicyChanged { summary }, &correlation_id()?);
            self.record_all(&[event]).await?;
            self.inner.store.save_policy(id, policy).await
        })
        .await
    }

    /// Write the encryptions this instance counted under `id` and has not
    /// flushed yet into the store ([`VersionRecord::encryptions`], with the
    /// additive [`KeyringChange::RecordUsage`]), so the usage-limit policy
    /// sees every process's use. Counts are kept per instance, not per
    /// snapshot: they survive [`invalidate`](Self::invalidate) and reloads.
    /// Nothing is read or written when there is nothing to flush.
    ///
    /// Every reload of a snapshot flushes first (a snapshot older than the
    /// refresh interval, [`refresh`](Self::refresh), a changed keyring), so an
    /// application process flushes at least once per refresh interval while
    /// it encrypts; the
    /// scheduler and a graceful shutdown call
    /// [`flush_all_usage`](Self::flush_all_usage). The guarantee and its crash
    /// window: the [manual](crate::manual), section 3, "Usage limits". On error the counts stay
    /// pending and go with the next flush; none is lost or written twice
    /// (except after an error that hid a committed write: then the store
    /// counts them twice, too high rather than too low).
    pub async fn flush_usage(&self, id: &KeyringId) -> Result<()> {
        let Some(usage) = self.usage_of(id) else { return Ok(()) };
        if usage.pending().is_empty() {
            return Ok(());
        }
        let record = self.record(id).await?;
        self.flush_from(&usage, record).await.map(drop)
    }

    /// [`flush_usage`](Self::flush_usage) for every keyring this instance has
    /// counted encryptions for. Tries them all; returns the first error.
    /// Call it when the process shuts down gracefully (the
    /// [`Scheduler`](crate::Scheduler) calls it on every tick and when
    /// [`run`](crate::Scheduler::run) ends).
    pub async fn flush_all_usage(&self) -> Result<()> {
        let ids: Vec<KeyringId> = self.lock_usage().keys().cloned().collect();
        let mut first_error = None;
        for id in ids {
            if let Err(e) = self.flush_usage(&id).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Write the pending counts of one keyring, starting from `record` (the
    /// stored record: its generation is the expected one); returns the
    /// record as the store holds it afterwards.
    async fn flush_from(&self, usage: &KeyringUsage, mut record: KeyringRecord) -> Result<KeyringRecord> {
        // One flush per keyring at a time, so no pending count is written twice.
        let _flushing = usage.flush_lock.lock().await;
        let mut conflicts = 0;
        loop {
            let pending = usage.pending();
            if pending.is_empty() {
                return Ok(record);
            }
            let changes: Vec<KeyringChange> =
                pending.iter().map(|&(version, add)| KeyringChange::RecordUsage { version, add }).collect();
            match self.inner.store.update_keyring(&record.id, record.generation, &changes).await {
                Ok(updated) => {
                    for &(version, add) in &pending {
                        if let Some(cell) = usage.existing(version) {
                            cell.flushed(add, updated.version(version).map_or(0, |v| v.encryptions));
                        }
                    }
                    return Ok(updated);
                }
                // Another update got in first; counts are additive, so just retry.
                Err(Error::GenerationConflict { .. }) if conflicts < MAX_FLUSH_CONFLICTS => {
                    conflicts += 1;
                    record = self.record(&record.id).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn lock_usage(&self) -> std::sync::MutexGuard<'_, HashMap<KeyringId, Arc<KeyringUsage>>> {
        // The map only holds counters; a panic while holding it leaves them usable.
        self.inner.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn usage_of(&self, id: &KeyringId) -> Option<Arc<KeyringUsage>> {
        self.lock_usage().get(id).cloned()
    }

    fn usage_for(&self, id: &KeyringId) -> Arc<KeyringUsage> {
        Arc::clone(self.lock_usage().entry(id.clone()).or_default())
    }

    /// Encryptions under `version` of `id` counted by this instance and not
    /// yet flushed to the store (kept across reloads and invalidation).
    pub fn unflushed_usage(&self, id: &KeyringId, version: KeyVersion) -> u64 {
        self.usage_of(id).and_then(|u| u.existing(version)).map_or(0, |cell| cell.pending())
    }

    /// How many times this instance has loaded a keyring snapshot from the
    /// store, over all keyrings, since it was built: a metric, and how a test
    /// shows that announced changes ([`mark_stale`](Self::mark_stale)) are
    /// coalesced to at most one reload per keyring per reload cooldown.
    pub fn reloads(&self) -> u64 {
        self.inner.reloads.load(Ordering::Relaxed)
    }

    /// The snapshot of a keyring: cached, reloaded when older than the refresh interval.
    /// A snapshot marked stale ([`mark_stale`](Self::mark_stale)) is reloaded
    /// once its reload cooldown has passed since it was loaded.
    pub async fn keyring(&self, id: &KeyringId) -> Result<Arc<Keyring>> {
        let now = self.now();
        let mut announced = false;
        let mut reason = "first_load";
        if let Ok(cache) = self.inner.cache.read()
            && let Some(c) = cache.get(id)
        {
            if self.is_fresh(c, now) {
                return Ok(Arc::clone(&c.ring));
            }
            announced = now.since(c.refreshed_at) < self.inner.refresh_interval;
            reason = match (c.invalid, announced) {
                (true, _) => "invalidated",
                (false, true) if c.retry_at.is_some() => "outage_retry",
                (false, true) => "announced",
                (false, false) => "refresh_interval",
            };
        }
        // A reload for a change (announced by another process, or made by
        // this one) leaves the refresh interval counting from the last
        // scheduled reload, so announcements cannot postpone it.
        match self.reload(id, reason, false, !announced, |c| self.is_fresh(c, now)).await {
            Err(e) if e.is_retryable() => self.serve_during_outage(id).ok_or(e),
            other => other,
        }
    }

    fn is_fresh(&self, c: &Cached, now: Timestamp) -> bool {
        let fresh = !c.invalid
            && now.since(c.refreshed_at) < self.inner.refresh_interval
            && !(c.stale.load(Ordering::SeqCst) && now.since(c.loaded_at) >= self.inner.reload_cooldown);
        // During an outage, the snapshot serves until the next retry is due.
        fresh || (c.retry_at.is_some_and(|at| now < at) && self.within_outage_grace(c, now))
    }

    fn within_outage_grace(&self, c: &Cached, now: Timestamp) -> bool {
        now.since(c.loaded_at) < self.inner.refresh_interval + self.inner.kek_outage_grace
    }

    /// A reload of `id` failed with a retryable error: the cached snapshot,
    /// if it is still within the outage grace, with the next attempt pushed
    /// back (exponential backoff); `None` when there is nothing to serve.
    fn serve_during_outage(&self, id: &KeyringId) -> Option<Arc<Keyring>> {
        let now = self.now();
        let mut cache = self.inner.cache.write().ok()?;
        let c = cache.get_mut(id).filter(|c| self.within_outage_grace(c, now))?;
        let backoff = OUTAGE_BACKOFF_FIRST.saturating_mul(1 << c.failed_reloads.min(5)).min(OUTAGE_BACKOFF_MAX);
        c.retry_at = Some(now.plus(backoff));
        c.failed_reloads = c.failed_reloads.saturating_add(1);
        self.inner.outage_serves.fetch_add(1, Ordering::Relaxed);
        crate::observability::outage_serve(id, c.failed_reloads);
        Some(Arc::clone(&c.ring))
    }

    /// How many accesses were answered with a snapshot whose reload had just
    /// failed with a retryable error (a KMS or HSM outage,
    /// [`KeywheelBuilder::kek_outage_grace`]): a health signal to export. Zero
    /// when every reload succeeded.
    pub fn outage_serves(&self) -> u64 {
        self.inner.outage_serves.load(Ordering::Relaxed)
    }

    /// Reload a keyring from the store now, replacing the cached snapshot,
    /// after flushing this instance's usage counts of it
    /// ([`flush_usage`](Self::flush_usage); a failed flush keeps them pending
    /// and does not fail the reload).
    pub async fn refresh(&self, id: &KeyringId) -> Result<Arc<Keyring>> {
        self.reload(id, "explicit", false, true, |_| false).await
    }

    /// Mark the cached snapshot of `id` out of date: the next access reloads
    /// it, whatever the reload cooldown. For changes this process made
    /// itself; usage counts are kept, and the refresh interval (and its usage
    /// flush) keeps its schedule. A change announced by another process goes
    /// through [`mark_stale`](Self::mark_stale) instead, which is rate-limited.
    pub fn invalidate(&self, id: &KeyringId) {
        if let Ok(mut cache) = self.inner.cache.write()
            && let Some(c) = cache.get_mut(id)
        {
            c.invalid = true;
        }
    }

    /// Another process announced a change of `id` (e.g. a Postgres
    /// notification, see `keywheel_postgres::spawn_listener`): the next access
    /// reloads the snapshot, but not before the reload cooldown
    /// ([`KeywheelBuilder::reload_cooldown`]) has passed since the last load.
    /// Any number of announcements within one cooldown cause one reload, and
    /// none resets a usage count, so whoever can send announcements cannot
    /// make this process hammer the store or forget what it counted. A change
    /// announced during a reload is not lost: the snapshot stays marked.
    pub fn mark_stale(&self, id: &KeyringId) {
        if let Ok(cache) = self.inner.cache.read()
            && let Some(c) = cache.get(id)
        {
            c.stale.store(true, Ordering::SeqCst);
        }
    }

    fn cached(&self, id: &KeyringId, fresh: impl Fn(&Cached) -> bool) -> Option<Arc<Keyring>> {
        let cache = self.inner.cache.read().ok()?;
        cache.get(id).filter(|c| fresh(c)).map(|c| Arc::clone(&c.ring))
    }

    /// Take the right to reload `id`, unless the cached entry is `fresh`
    /// (checked again under the lock, so concurrent callers that all found it
    /// stale reload once). The claim marks the entry loaded now (`scheduled`:
    /// refreshed now too) and not stale: the others keep serving it while this
    /// caller reloads.
    fn claim(&self, id: &KeyringId, now: Timestamp, scheduled: bool, fresh: impl Fn(&Cached) -> bool) -> Claim {
        let Ok(mut cache) = self.inner.cache.write() else { return Claim::Reload(None) };
        match cache.get_mut(id) {
            Some(c) if fresh(c) => Claim::Fresh(Arc::clone(&c.ring)),
            Some(c) => {
                let before = Marks {
                    loaded_at: c.loaded_at,
                    refreshed_at: c.refreshed_at,
                    stale: *c.stale.get_mut(),
                    invalid: c.invalid,
                };
                c.loaded_at = now;
                if scheduled {
                    c.refreshed_at = now;
                }
                *c.stale.get_mut() = false;
                c.invalid = false;
                Claim::Reload(Some(before))
            }
            None => Claim::Reload(None),
        }
    }

    /// Flush this instance's pending usage of `id`, load it from the store and
    /// cache the new snapshot, unless the cached one is `fresh`. A `scheduled`
    /// reload starts the refresh interval again. `reason` says why, in the
    /// reload's trace event and metric.
    async fn reload(
        &self,
        id: &KeyringId,
        reason: &'static str,
        forced: bool,
        scheduled: bool,
        fresh: impl Fn(&Cached) -> bool,
    ) -> Result<Arc<Keyring>> {
        let claimed_at = self.now();
        let before = match self.claim(id, claimed_at, scheduled, fresh) {
            Claim::Fresh(ring) => return Ok(ring),
            Claim::Reload(before) => before,
        };
        let loaded = self.load(id).await;
        crate::observability::keyring_loaded(id, reason, loaded.as_ref());
        let ring = match loaded {
            Ok(ring) => Arc::new(ring),
            Err(e) => {
                // Give the claim back, so the next access tries again.
                if let (Some(before), Ok(mut cache)) = (before, self.inner.cache.write())
                    && let Some(c) = cache.get_mut(id)
                {
                    c.loaded_at = before.loaded_at;
                    c.refreshed_at = before.refreshed_at;
                    *c.stale.get_mut() |= before.stale;
                    c.invalid |= before.invalid;
                }
                return Err(e);
            }
        };
        let now = self.now();
        if let Ok(mut cache) = self.inner.cache.write() {
            let previous = cache.get(id);
            let last_forced = previous.and_then(|c| c.last_forced_reload);
            // Marked during the reload: the change may have come after our read.
            let stale = previous.is_some_and(|c| c.stale.load(Ordering::SeqCst));
            let invalid = previous.is_some_and(|c| c.invalid);
            let refreshed_at = match previous {
                Some(c) if !scheduled => c.refreshed_at,
                _ => claimed_at,
            };
            cache.insert(
                id.clone(),
                Cached {
                    ring: Arc::clone(&ring),
                    loaded_at: claimed_at,
                    refreshed_at,
                    last_forced_reload: if forced { Some(now) } else { last_forced },
                    stale: AtomicBool::new(stale),
                    invalid,
                    retry_at: None,
                    failed_reloads: 0,
                },
            );
        }
        Ok(ring)
    }

    async fn load(&self, id: &KeyringId) -> Result<Keyring> {
        self.inner.reloads.fetch_add(1, Ordering::Relaxed);
        let record = self.record(id).await?;
        if let Some(usage) = self.usage_of(id)
            // Best effort: a failed flush keeps the counts pending for the next
            // one, and must not make the keyring unusable.
            && let Ok(updated) = self.flush_from(&usage, record.clone()).await
            // A flush that met a lifecycle change returns a newer record.
            && updated.generation != record.generation
        {
            return self.snapshot(&updated).await;
        }
        // A usage-only update keeps the generation and the lifecycle fields,
        // so the record verified above is the one to build from (the flush
        // already raised the counters to what the store holds).
        self.build_snapshot(&record).await
    }

    /// Build a snapshot from a stored record, unwrapping every live version.
    /// The record must pass its seal check ([`Error::RecordTampered`]); a
    /// wrong master key fails once, on the first version, with
    /// [`Error::WrongMasterKey`].
    ///
    /// The snapshot counts its encryptions in this instance's usage counters
    /// of the keyring (seeded with the record's stored counts), which every
    /// snapshot of the keyring shares and [`flush_usage`](Self::flush_usage)
    /// writes to the store.
    pub async fn snapshot(&self, record: &KeyringRecord) -> Result<Keyring> {
        self.verify_record(record).await?;
        self.build_snapshot(record).await
    }

    /// [`snapshot`](Self::snapshot) of a record whose seal was just verified.
    async fn build_snapshot(&self, record: &KeyringRecord) -> Result<Keyring> {
        record.validate()?;
        let mut builder = self.unwrapped(record).await?;
        builder.share_usage(self.usage_for(&record.id));
        builder.build()
    }

    /// A snapshot builder holding every version of `record` as stored, live
    /// versions unwrapped (the first wrong master key fails here, once).
    pub(crate) async fn unwrapped(&self, record: &KeyringRecord) -> Result<crate::KeyringBuilder> {
        let mut builder = Keyring::builder(record.id.clone()).generation(record.generation);
        if let Some(at) = record.erased_at {
            builder = builder.erased(at);
        }
        for v in &record.versions {
            // A Disabled version decrypts nothing: its material stays wrapped.
            let material = match &v.wrapped {
                Some(w) if v.state.can_decrypt() => Some(self.inner.kek.unwrap(&record.id, v.version, w).await?),
                _ => None,
            };
            builder.push(v.state, v.algorithm, material);
            builder.seed(v.version, v.encryptions);
        }
        Ok(builder)
    }

    /// Encrypt with the keyring's Active version (binary form).
    pub async fn encrypt(&self, id: &KeyringId, plaintext: &[u8], context: &Context) -> Result<Vec<u8>> {
        self.keyring(id).await?.encrypt(plaintext, context)
    }

    /// Encrypt with the keyring's Active version (text form `kw:v{N}:…`).
    pub async fn encrypt_text(&self, id: &KeyringId, plaintext: &[u8], context: &Context) -> Result<String> {
        self.keyring(id).await?.encrypt_text(plaintext, context)
    }

    /// Decrypt a value of either form. If the value names a version the cached
    /// snapshot does not know (another process added it), the keyring is
    /// reloaded once — at most once per reload cooldown — and the decrypt retried.
    pub async fn decrypt(&self, id: &KeyringId, value: &[u8], context: &Context) -> Result<Plaintext> {
        let ring = self.keyring(id).await?;
        match ring.decrypt(value, context) {
            Err(Error::UnknownKeyVersion { version }) => {
                let now = self.now();
                let cooled = self
                    .cached(id, |c| c.last_forced_reload.is_none_or(|t| now.since(t) >= self.inner.reload_cooldown))
                    .is_some();
                if !cooled {
                    return Err(Error::UnknownKeyVersion { version });
                }
                self.reload(id, "unknown_version", true, false, |_| false).await?.decrypt(value, context)
            }
            other => other,
        }
    }
}

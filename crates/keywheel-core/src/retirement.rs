//! Reversible retirement and erasure on the [`Keywheel`] facade: disabling a
//! version (the first step of every retirement), destroying its material when
//! its quarantine ends (or at once when asked), re-enabling it inside the
//! quarantine, and erasing whole keyrings (crypto-shredding). The guarded
//! retirement, with census and grace period, is
//! [`Rotator::retire`](crate::Rotator::retire). See the manual,
//! [section 11](crate::manual#11-retirement-quarantine-and-tenant-erasure).

use std::time::Duration;

use crate::keywheel::DEFAULT_LEASE_TTL;
use crate::{
    AuditEvent, AuditKind, Error, KeyState, KeyVersion, KeyringChange, KeyringId, KeyringRecord, Keywheel, Result,
    correlation_id,
};

impl Keywheel {
    /// Retire a Deprecated version **without any check**: it becomes Disabled
    /// at once (decryption under it refused with [`Error::KeyDisabled`], its
    /// material kept wrapped in the store) and its material is destroyed when
    /// the policy's [`quarantine`](crate::Policy::quarantine) ends (by the
    /// scheduler, or [`destroy_quarantined`](Self::destroy_quarantined));
    /// until then [`enable`](Self::enable) undoes it. With a zero quarantine
    /// the material is destroyed at once, and values still on it become
    /// undecryptable ([`Error::KeyRetired`]) for good.
    ///
    /// This facade has no record sources, so it cannot prove the version
    /// unused: the call is a forced retirement, refused without a non-empty
    /// `reason` ([`Error::ReasonRequired`]) and audited as forced with it. The
    /// guarded retirement (census, grace period, sources that cover the
    /// keyring) is [`Rotator::retire`](crate::Rotator::retire). Runs under the
    /// keyring's lease ([`Error::RotationInProgress`] while a rotation holds it).
    pub async fn retire_forced(&self, id: &KeyringId, version: KeyVersion, reason: &str) -> Result<KeyringRecord> {
        let retired = self.forced_retirement(id, version, reason, false);
        crate::observability::lifecycle("retire_forced", Some(id), Some(version), retired).await
    }

    /// [`retire_forced`](Self::retire_forced), destroying the material at once
    /// whatever the quarantine: a Deprecated version is disabled and destroyed
    /// in one atomic update, a Disabled one destroyed before its quarantine
    /// ends. Irreversible.
    pub async fn retire_forced_now(&self, id: &KeyringId, version: KeyVersion, reason: &str) -> Result<KeyringRecord> {
        let retired = self.forced_retirement(id, version, reason, true);
        crate::observability::lifecycle("retire_forced", Some(id), Some(version), retired).await
    }

    async fn forced_retirement(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        reason: &str,
        destroy: bool,
    ) -> Result<KeyringRecord> {
        if reason.trim().is_empty() {
            return Err(Error::ReasonRequired("retirement"));
        }
        let lease = self.take_lease(id, self.actor(), DEFAULT_LEASE_TTL).await?;
        let result = self.retire_now(id, version, Some(reason), true, destroy).await;
        // Nothing here is resumable: the lease goes back whatever happened.
        let _ = self.store().release_lease(&lease).await;
        result
    }

    /// The retirement step itself, audited (`forced` and `reason` as given);
    /// the caller holds the lease and has made its checks. A Deprecated
    /// version is disabled with the policy's quarantine, and destroyed in the
    /// same update when `destroy` is set or the quarantine is zero. A version
    /// already Disabled is destroyed when `destroy` is set and left as it is
    /// (its quarantine running) otherwise.
    pub(crate) async fn retire_now(
        &self,
        id: &KeyringId,
        version: KeyVersion,
        reason: Option<&str>,
        forced: bool,
        destroy: bool,
    ) -> Result<KeyringRecord> {
        let record = self.record(id).await?;
        let v = record.version(version).ok_or(Error::VersionNotFound { keyring: id.clone(), version })?;
        let now = self.now();
        let cid = correlation_id()?;
        let with_reason = |mut e: AuditEvent| {
            e.reason = reason.map(str::to_owned);
            e
        };
        let mut changes = Vec::new();
        let mut events = Vec::new();
        let mut destroy = destroy;
        if v.state == KeyState::Disabled {
            if !destroy {
                return Ok(record);
            }
        } else {
            v.state.check_transition(version, KeyState::Disabled)?;
            let quarantine = if destroy { Duration::ZERO } else { self.policy(id).await?.quarantine };
            destroy |= quarantine.is_zero();
            let destroy_after = now.plus(quarantine);
            changes.push(KeyringChange::Disable { version, at: now, destroy_after });
            events.push(with_reason(self.event(
                Some(id),
                AuditKind::KeyDisabled { version, forced, destroy_after },
                &cid,
            )));
        }
        if destroy {
            changes.push(KeyringChange::SetState { version, state: KeyState::Retired, at: now });
            events.push(with_reason(self.event(Some(id), AuditKind::KeyRetired { version, forced }, &cid)));
        }
        self.apply_audited(&record, &changes, &events).await
    }

    /// Re-enable a Disabled version inside its quarantine: it is Deprecated
    /// again (decrypts, never encrypts), audited as `KeyEnabled` with the
    /// optional `reason`. Its grace period still counts from when it was
    /// first deprecated. Runs under the keyring's lease.
    ///
    /// Refused, before anything is audited or written, with
    /// [`Error::QuarantineOver`] from the end of the quarantine on,
    /// [`Error::CompromisedVersion`] for a version an emergency flagged, and
    /// [`Error::NotDisabled`] for a version that is not Disabled. In an
    /// erased keyring the re-enabled version decrypts again but the keyring
    /// still encrypts nothing.
    pub async fn enable(&self, id: &KeyringId, version: KeyVersion, reason: Option<&str>) -> Result<KeyringRecord> {
        crate::observability::lifecycle("enable", Some(id), Some(version), async {
            let lease = self.take_lease(id, self.actor(), DEFAULT_LEASE_TTL).await?;
            let result = async {
                let record = self.record(id).await?;
                let state =
                    record.version(version).ok_or(Error::VersionNotFound { keyring: id.clone(), version })?.state;
                if state != KeyState::Disabled {
                    return Err(Error::NotDisabled { keyring: id.clone(), version, state });
                }
                let mut event = self.event(Some(id), AuditKind::KeyEnabled { version }, &correlation_id()?);
                event.reason = reason.map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned);
                let change = KeyringChange::SetState { version, state: KeyState::Deprecated, at: self.now() };
                self.apply_audited(&record, &[change], &[event]).await
            }
            .await;
            let _ = self.store().release_lease(&lease).await;
            result
        })
        .await
    }

    /// Erase a keyring (crypto-shredding, the answer to an erasure request):
    /// every version not yet Disabled or Retired, the Active one included, is
    /// disabled in one atomic update, forced and audited (`KeyringErased` with
    /// `reason`), and from then on nothing encrypts under the keyring
    /// ([`Error::KeyringErased`]); no version is added or activated again.
    ///
    /// The material is destroyed when the policy's quarantine ends (the
    /// scheduler does it), unless `now` is set or the quarantine is zero: then
    /// every version is destroyed in the same update. Until then a version
    /// can be re-enabled ([`enable`](Self::enable)) to read values back,
    /// never to encrypt. A keyring erased already is refused with
    /// [`Error::KeyringErased`], except with `now`, which destroys what its
    /// quarantine still keeps. Processes holding a snapshot stop encrypting
    /// under it at their next refresh ([`stale_snapshot_bound`](Self::stale_snapshot_bound)).
    /// Needs a non-empty `reason` ([`Error::ReasonRequired`]); runs under the
    /// keyring's lease ([`Error::RotationInProgress`] while a rotation holds it).
    pub async fn destroy_keyring(&self, id: &KeyringId, reason: &str, now: bool) -> Result<KeyringRecord> {
        crate::observability::lifecycle("destroy_keyring", Some(id), None, async {
            if reason.trim().is_empty() {
                return Err(Error::ReasonRequired("erasure"));
            }
            let lease = self.take_lease(id, self.actor(), DEFAULT_LEASE_TTL).await?;
            let result = self.erase_leased(id, reason, now).await;
            let _ = self.store().release_lease(&lease).await;
            result
        })
        .await
    }

    async fn erase_leased(&self, id: &KeyringId, reason: &str, now: bool) -> Result<KeyringRecord> {
        let record = self.record(id).await?;
        if record.erased_at.is_some() && !now {
            record.check_not_erased()?;
        }
        let at = self.now();
        let cid = correlation_id()?;
        let with_reason = |mut e: AuditEvent| {
            e.reason = Some(reason.to_owned());
            e
        };
        let quarantine = if now { Duration::ZERO } else { self.policy(id).await?.quarantine };
        let destroy_after = at.plus(quarantine);
        let mut changes = Vec::new();
        let mut events = Vec::new();
        if record.erased_at.is_none() {
            let versions: Vec<KeyVersion> = record
                .versions
                .iter()
                .filter(|v| matches!(v.state, KeyState::Pending | KeyState::Active | KeyState::Deprecated))
                .map(|v| v.version)
                .collect();
            changes.push(KeyringChange::Erase { at, destroy_after });
            events.push(with_reason(self.event(Some(id), AuditKind::KeyringErased { versions, destroy_after }, &cid)));
        }
        if quarantine.is_zero() {
            // Every version that still has material: those just disabled and
            // those Disabled before (their own quarantine cut short). A
            // version re-enabled after an earlier erasure is disabled first.
            for v in record.versions.iter().filter(|v| v.state.keeps_material()) {
                if record.erased_at.is_some() && v.state != KeyState::Disabled {
                    changes.push(KeyringChange::Disable { version: v.version, at, destroy_after: at });
                }
                changes.push(KeyringChange::SetState { version: v.version, state: KeyState::Retired, at });
                events.push(with_reason(self.event(
                    Some(id),
                    AuditKind::KeyRetired { version: v.version, forced: true },
                    &cid,
                )));
            }
        }
        if changes.is_empty() {
            return Ok(record);
        }
        self.apply_audited(&record, &changes, &events).await
    }

    /// [`destroy_keyring`](Self::destroy_keyring) for every keyring of
    /// `tenant` (every purpose), one after the other, in id order; keyrings
    /// erased already are left as they are unless `now` is set. Returns the
    /// records as they end up. [`Error::InvalidArgument`] when the tenant has
    /// no keyring; on an error the keyrings before it stay erased and the
    /// call can be repeated.
    pub async fn destroy_tenant(&self, tenant: &str, reason: &str, now: bool) -> Result<Vec<KeyringRecord>> {
        crate::observability::lifecycle("destroy_tenant", None, None, async {
            if reason.trim().is_empty() {
                return Err(Error::ReasonRequired("erasure"));
            }
            let ids: Vec<KeyringId> =
                self.list_keyrings().await?.into_iter().filter(|id| id.tenant() == tenant).collect();
            if ids.is_empty() {
                return Err(Error::InvalidArgument(format!("tenant {tenant:?} has no keyring")));
            }
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                let record = self.record(id).await?;
                if record.erased_at.is_some() && !now {
                    out.push(record);
                    continue;
                }
                out.push(self.destroy_keyring(id, reason, now).await?);
            }
            Ok(out)
        })
        .await
    }

    /// Destroy the material of every Disabled version of `id` whose quarantine
    /// has ended (`destroy_after <= now`), in one update under the keyring's
    /// lease, each audited as a `KeyRetired` (not forced: the checks were made
    /// when it was disabled). Returns the versions destroyed (none when
    /// nothing is due; then nothing is written). The scheduler calls it on
    /// every tick.
    pub async fn destroy_quarantined(&self, id: &KeyringId) -> Result<Vec<KeyVersion>> {
        crate::observability::lifecycle("destroy_quarantined", Some(id), None, async {
            let now = self.now();
            let due = |record: &KeyringRecord| -> Vec<KeyVersion> {
                record
                    .versions
                    .iter()
                    .filter(|v| v.state == KeyState::Disabled && v.destroy_after.is_some_and(|t| t <= now))
                    .map(|v| v.version)
                    .collect()
            };
            if due(&self.record(id).await?).is_empty() {
                return Ok(Vec::new());
            }
            let lease = self.take_lease(id, self.actor(), DEFAULT_LEASE_TTL).await?;
            let result = async {
                // Again under the lease: an enable may have come in between.
                let record = self.record(id).await?;
                let versions = due(&record);
                if versions.is_empty() {
                    return Ok(versions);
                }
                let cid = correlation_id()?;
                let mut changes = Vec::new();
                let mut events = Vec::new();
                for &version in &versions {
                    changes.push(KeyringChange::SetState { version, state: KeyState::Retired, at: now });
                    let mut e = self.event(Some(id), AuditKind::KeyRetired { version, forced: false }, &cid);
                    e.reason = Some("quarantine ended".to_owned());
                    events.push(e);
                }
                self.apply_audited(&record, &changes, &events).await?;
                Ok(versions)
            }
            .await;
            let _ = self.store().release_lease(&lease).await;
            result
        })
        .await
    }
}

//! KEK rotation and the [`KekRing`] that reads a store during it.

use super::*;

/// A KEK that wraps with a primary KEK and unwraps with whichever KEK's id a
/// wrapped key names (and, among KEKs of the same id, whose key check value
/// matches): lets readers open a store during and after a KEK rotation.
#[derive(Debug)]
pub struct KekRing {
    primary: Arc<dyn KeyEncryptionKey>,
    others: Vec<Arc<dyn KeyEncryptionKey>>,
}

impl KekRing {
    /// Wrap with `primary`; unwrap with `primary` or any of `others` by id
    /// (then by key check value).
    pub fn new(primary: Arc<dyn KeyEncryptionKey>, others: Vec<Arc<dyn KeyEncryptionKey>>) -> Self {
        KekRing { primary, others }
    }
}

#[async_trait::async_trait]
impl KeyEncryptionKey for KekRing {
    fn id(&self) -> &str {
        self.primary.id()
    }
    async fn wrap(&self, keyring: &KeyringId, version: KeyVersion, material: &KeyMaterial) -> Result<WrappedKey> {
        self.primary.wrap(keyring, version, material).await
    }
    async fn integrity_key(&self) -> Result<crate::IntegrityKey> {
        self.primary.integrity_key().await
    }
    async fn integrity_keys(&self) -> Result<Vec<crate::IntegrityKey>> {
        let mut keys = Vec::new();
        for kek in std::iter::once(&self.primary).chain(&self.others) {
            for key in kek.integrity_keys().await? {
                if !keys.iter().any(|k: &crate::IntegrityKey| k.id() == key.id()) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }
    async fn unwrap(&self, keyring: &KeyringId, version: KeyVersion, wrapped: &WrappedKey) -> Result<KeyMaterial> {
        // Several KEKs may share an id (a master key replaced by another under
        // the same name, as the CLI's `kek rotate` does): the key check value
        // tells them apart, so a wrong-master-key answer moves on to the next.
        let mut last = None;
        for kek in std::iter::once(&self.primary).chain(&self.others).filter(|k| k.id() == wrapped.kek_id) {
            match kek.unwrap(keyring, version, wrapped).await {
                Err(e @ Error::WrongMasterKey { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Error::KekMismatch {
            expected: self.primary.id().to_owned(),
            found: wrapped.kek_id.clone(),
        }))
    }
}

impl Rotator {
    /// Rewrap every live version of every keyring under `new` (no record is
    /// touched), one atomic update per keyring, audited. Versions are unwrapped
    /// with this engine's KEK: build it with a [`KekRing`] holding `new` and the
    /// old KEK (with distinct ids), so readers keep working during the rotation.
    /// Idempotent and resumable: keys already wrapped by `new` (same id and key
    /// check value) are skipped. Afterwards the old KEK is no longer needed.
    pub async fn rotate_kek(&self, new: Arc<dyn KeyEncryptionKey>) -> Result<KekRotationReport> {
        // The key check value of `new`, from one throwaway wrap.
        let probe = KeyringId::new("keywheel", crate::Purpose::Custom("kek-probe".into()))?;
        let new_check = new.wrap(&probe, KeyVersion::FIRST, &KeyMaterial::generate()?).await?.key_check;
        let is_new = |w: &WrappedKey| w.kek_id == new.id() && w.key_check == new_check;
        let mut report =
            KekRotationReport { from: Vec::new(), to: new.id().to_owned(), keyrings: 0, keys: 0, already_rewrapped: 0 };
        for id in self.kw.list_keyrings().await? {
            loop {
                let record = self.kw.record(&id).await?;
                let mut changes = Vec::new();
                let mut from: Vec<String> = Vec::new();
                let mut already = 0;
                for v in &record.versions {
                    let Some(w) = &v.wrapped else { continue };
                    if is_new(w) {
                        already += 1;
                        continue;
                    }
                    if !from.contains(&w.kek_id) {
                        from.push(w.kek_id.clone());
                    }
                    let material = self.kw.kek().unwrap(&id, v.version, w).await?;
                    changes.push(KeyringChange::Rewrap {
                        version: v.version,
                        wrapped: new.wrap(&id, v.version, &material).await?,
                    });
                }
                if changes.is_empty() {
                    report.already_rewrapped += already;
                    break;
                }
                let keys = changes.len() as u64;
                let cid = correlation_id()?;
                let kind = AuditKind::KekRotated { from: from.join(","), to: new.id().to_owned(), keys };
                let event = self.kw.event(Some(&id), kind, &cid);
                match self.kw.apply_audited(&record, &changes, &[event]).await {
                    Ok(_) => {
                        report.keyrings += 1;
                        report.keys += keys;
                        report.already_rewrapped += already;
                        for f in from {
                            if !report.from.contains(&f) {
                                report.from.push(f);
                            }
                        }
                        break;
                    }
                    // Someone changed the keyring meanwhile: reload and rewrap again.
                    Err(Error::GenerationConflict { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }
}

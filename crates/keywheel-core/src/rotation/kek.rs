//! KEK rotation: rewrapping every stored key under a new master key.

use super::*;

impl Rotator {
    /// Rewrap every live version of every keyring under `new` (no value is
    /// touched), one atomic update per keyring, audited. Versions are unwrapped
    /// with this engine's KEK — a [`KekRing`](crate::KekRing) holding the old
    /// master key and `new` (as applications hold them during the rotation,
    /// see [`KekRing::from_env`](crate::KekRing::from_env)), or the old KEK
    /// alone. Every updated record is sealed, and the rotation audited, under
    /// `new`'s integrity key, whichever KEK this engine wraps with; a record
    /// whose keys are all under `new` already but whose seal is not (written
    /// by a process still on the old key since an earlier run) is resealed.
    /// Idempotent and resumable: keys already wrapped by `new` (same id and key
    /// check value) are skipped. Afterwards the old KEK is no longer needed.
    /// The whole procedure without downtime is in the [manual](crate::manual),
    /// "Master-key (KEK) rotation".
    pub async fn rotate_kek(&self, new: Arc<dyn KeyEncryptionKey>) -> Result<KekRotationReport> {
        crate::observability::lifecycle("rotate_kek", None, None, async {
            // The key check value of `new`, from one throwaway wrap.
            let probe = KeyringId::new("keywheel", crate::Purpose::Custom("kek-probe".into()))?;
            let new_check = new.wrap(&probe, KeyVersion::FIRST, &KeyMaterial::generate()?).await?.key_check;
            let new_seal_key = new.integrity_key().await?;
            let is_new = |w: &WrappedKey| w.kek_id == new.id() && w.key_check == new_check;
            // Writes go through an instance whose primary KEK is `new`: it seals
            // and audits under the new master key and verifies records sealed
            // under any of ours. (Keys are unwrapped with our KEK itself: a ring
            // inside a ring would be skipped by the outer ring's KEK id filter.)
            let writer =
                self.kw.with_kek(Arc::new(crate::KekRing::new(Arc::clone(&new), vec![Arc::clone(self.kw.kek())])))?;
            let mut report = KekRotationReport {
                from: Vec::new(),
                to: new.id().to_owned(),
                keyrings: 0,
                keys: 0,
                already_rewrapped: 0,
            };
            for id in writer.list_keyrings().await? {
                loop {
                    let record = writer.record(&id).await?;
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
                    let sealed_by_new = record.seal.as_ref().is_some_and(|s| s.key_id == new_seal_key.id());
                    if changes.is_empty() && sealed_by_new {
                        report.already_rewrapped += already;
                        break;
                    }
                    let keys = changes.len() as u64;
                    let cid = correlation_id()?;
                    let kind = AuditKind::KekRotated { from: from.join(","), to: new.id().to_owned(), keys };
                    let event = writer.event(Some(&id), kind, &cid);
                    match writer.apply_audited(&record, &changes, &[event]).await {
                        Ok(_) => {
                            self.kw.invalidate(&id);
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
        })
        .await
    }
}

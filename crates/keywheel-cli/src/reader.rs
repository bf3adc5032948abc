//! What the read-only commands (`status`, `census`, `verify`, `failures`)
//! read: keyring records, policies, jobs and leases — metadata only, never key
//! material. With the master key they read through `Keywheel`'s store, which
//! checks every record's seal (and the master key against every keyring, as
//! every command does); without it they read the store as stored, through a
//! wrapper that refuses every write, and say that nothing was authenticated.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keywheel_core::{
    Error, KeyStore, KeyringChange, KeyringId, KeyringRecord, Lease, Policy, Result, RotationJob, Timestamp,
    async_trait,
};
use keywheel_file::FileKeyStore;
use keywheel_postgres::PgPool;
use serde::Serialize;

use crate::error::CliError;
use crate::store::{self, Settings};

/// The store of a read-only command.
#[derive(Debug)]
pub(crate) struct Reader {
    /// Reads records (seal-checked when `authenticated`), policies, jobs, leases.
    pub(crate) store: Arc<dyn KeyStore>,
    /// Whether the master key was given: records are checked against their seals.
    pub(crate) authenticated: bool,
    /// The Postgres store's pool, for sources in the same database.
    pub(crate) pool: Option<PgPool>,
    file: Option<Arc<FileKeyStore>>,
}

/// Something the store holds that cannot be used: a damaged file, or a
/// keyring record that cannot be read or fails its seal.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Damage {
    /// The keyring concerned, when known.
    pub(crate) keyring: Option<KeyringId>,
    /// What it is: `keyring`, `policy`, `lease`, `job`.
    pub(crate) kind: String,
    /// The damaged file (file store).
    pub(crate) file: Option<PathBuf>,
    /// What is wrong.
    pub(crate) problem: String,
    /// How to fix it, when the problem does not say.
    pub(crate) fix: Option<String>,
}

impl Reader {
    /// Open the store for reading: with the master key if one is configured
    /// (checked as by every command), else without.
    pub(crate) async fn open(settings: &Settings) -> Result<Reader, CliError> {
        if settings.has_master_key() {
            let opened = store::open(settings).await?;
            return Ok(Reader {
                store: Arc::clone(opened.kw.store()),
                authenticated: true,
                pool: opened.pool,
                file: opened.file,
            });
        }
        let raw = store::open_raw(settings).await?;
        Ok(Reader { store: Arc::new(ReadOnly(raw.store)), authenticated: false, pool: raw.pool, file: raw.file })
    }

    /// The record of `id`: `KeyringNotFound` if absent, the seal checked when authenticated.
    pub(crate) async fn record(&self, id: &KeyringId) -> Result<KeyringRecord, CliError> {
        Ok(self.store.load_keyring(id).await?.ok_or_else(|| Error::KeyringNotFound(id.clone()))?)
    }

    /// Damaged documents of a file store (none for Postgres: its rows are
    /// checked when loaded, see [`Reader::damage_of`]).
    pub(crate) fn damaged_files(&self) -> Result<Vec<Damage>, CliError> {
        let Some(file) = &self.file else { return Ok(Vec::new()) };
        Ok(file
            .damaged()?
            .into_iter()
            .map(|d| Damage {
                keyring: d.keyring,
                kind: serde_json::to_value(d.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                file: Some(d.path),
                problem: d.problem,
                fix: None,
            })
            .collect())
    }

    /// `error`, met reading `what` of keyring `id`, as a damage to report, or
    /// the error itself when it concerns the whole store (a wrong master
    /// key, a database that is down). Damage already listed in `known` (the
    /// same file) is not reported twice.
    pub(crate) fn damage_of(
        id: &KeyringId,
        what: &str,
        error: Error,
        known: &[Damage],
    ) -> Result<Option<Damage>, CliError> {
        let message = error.to_string();
        match &error {
            Error::RecordTampered { .. } => {}
            Error::Backend { retryable: false, .. } if is_damage(&message) => {}
            _ => return Err(error.into()),
        }
        let listed = known.iter().any(|d| d.file.as_ref().is_some_and(|f| message.contains(&f.display().to_string())));
        let fix = CliError::from(error).hint;
        Ok((!listed).then(|| Damage {
            keyring: Some(id.clone()),
            kind: what.to_owned(),
            file: None,
            problem: message,
            fix,
        }))
    }
}

/// Whether a store's error says that a document is unusable (it names the
/// file and how to restore it), rather than that the store cannot be reached.
fn is_damage(message: &str) -> bool {
    ["restore it from a backup", "corrupt", "truncated", "unknown format version", "inconsistent"]
        .iter()
        .any(|m| message.contains(m))
}

/// A store opened without the master key: reads pass through, every write is
/// refused, so a read-only command can never change anything.
#[derive(Debug)]
struct ReadOnly(Arc<dyn KeyStore>);

fn refused() -> Error {
    Error::backend("read-only store", "opened without the master key for reading only: nothing may be written", false)
}

#[async_trait]
impl KeyStore for ReadOnly {
    async fn create_keyring(&self, _: &KeyringRecord) -> Result<()> {
        Err(refused())
    }
    async fn load_keyring(&self, id: &KeyringId) -> Result<Option<KeyringRecord>> {
        self.0.load_keyring(id).await
    }
    async fn list_keyrings(&self) -> Result<Vec<KeyringId>> {
        self.0.list_keyrings().await
    }
    async fn update_keyring(&self, _: &KeyringId, _: u64, _: &[KeyringChange]) -> Result<KeyringRecord> {
        Err(refused())
    }
    async fn acquire_lease(&self, _: &KeyringId, _: &str, _: Duration, _: Timestamp) -> Result<Lease> {
        Err(refused())
    }
    async fn renew_lease(&self, _: &Lease, _: Duration, _: Timestamp) -> Result<Lease> {
        Err(refused())
    }
    async fn release_lease(&self, _: &Lease) -> Result<()> {
        Err(refused())
    }
    async fn load_lease(&self, id: &KeyringId) -> Result<Option<Lease>> {
        self.0.load_lease(id).await
    }
    async fn save_job(&self, _: &RotationJob, _: &Lease) -> Result<()> {
        Err(refused())
    }
    async fn load_job(&self, id: &str) -> Result<Option<RotationJob>> {
        self.0.load_job(id).await
    }
    async fn list_jobs(&self, keyring: &KeyringId) -> Result<Vec<RotationJob>> {
        self.0.list_jobs(keyring).await
    }
    async fn save_policy(&self, _: &KeyringId, _: &Policy) -> Result<()> {
        Err(refused())
    }
    async fn load_policy(&self, keyring: &KeyringId) -> Result<Option<Policy>> {
        self.0.load_policy(keyring).await
    }
}

/// The note every read-only command prints when the records were not authenticated.
pub(crate) const UNAUTHENTICATED_NOTE: &str = "Read without the master key: keyring records were NOT checked against \
     their seals (anyone who can write the store could have edited them); give the master key to authenticate them.";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_read_only_store_refuses_every_write_and_reads_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner: Arc<dyn KeyStore> = Arc::new(FileKeyStore::open(dir.path()).expect("store"));
        let ro = ReadOnly(inner);
        let id: KeyringId = "acme/token".parse().expect("id");
        let record = KeyringRecord::new(id.clone(), keywheel_core::Algorithm::Aes256Gcm, Timestamp::EPOCH);
        let now = Timestamp::EPOCH;
        let ttl = Duration::from_secs(1);
        let lease = Lease { keyring: id.clone(), holder: "h".into(), token: 1, expires_at: now };
        let job = RotationJob::new("j".into(), id.clone(), keywheel_core::JobKind::Rotation, None, None, vec![], now);
        let writes = [
            ro.create_keyring(&record).await.err(),
            ro.update_keyring(&id, 0, &[]).await.err(),
            ro.acquire_lease(&id, "h", ttl, now).await.err(),
            ro.renew_lease(&lease, ttl, now).await.err(),
            ro.release_lease(&lease).await.err(),
            ro.save_job(&job, &lease).await.err(),
            ro.save_policy(&id, &Policy::for_purpose(id.purpose())).await.err(),
        ];
        for err in writes {
            assert!(err.expect("refused").to_string().contains("reading only"));
        }
        assert_eq!(ro.list_keyrings().await.expect("list"), Vec::<KeyringId>::new());
        assert_eq!(ro.load_keyring(&id).await.expect("load"), None);
        assert!(std::fs::read_dir(dir.path().join("keyrings")).expect("dir").next().is_none(), "nothing written");
    }
}

//! Opening what a command needs: the settings (flags > environment > file >
//! defaults), the master key, the store with its audit trail, the record sources.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keywheel_core::{AuditSink, KekRing, KeyEncryptionKey, KeyStore, Keywheel, LocalKek, RecordSource, Rotator};
use keywheel_file::{FileAuditSink, FileKeyStore, LogReport};
use keywheel_postgres::{
    ConnectError, PgAuditSink, PgKeyStore, PgPool, PgRecordSource, PgSchema, SCHEMA_VERSION, TlsSettings, redact_url,
};

use crate::cli::GlobalArgs;
use crate::config::{Config, is_postgres_url};
use crate::error::CliError;
use crate::kek_uri::KekUri;

/// The environment variable holding the base64 master key.
pub(crate) const MASTER_KEY_ENV: &str = keywheel_core::MASTER_KEY_ENV;
/// The environment variable holding the base64 next master key, staged for a KEK rotation.
pub(crate) const NEXT_MASTER_KEY_ENV: &str = keywheel_core::NEXT_MASTER_KEY_ENV;
/// The file store used when none is named.
pub(crate) const DEFAULT_STORE: &str = "./keywheel";
/// The audit log's name inside a file store's directory.
pub(crate) const AUDIT_FILE: &str = "audit.jsonl";

/// Where the keys live.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    /// A file store directory and its audit log.
    File { dir: PathBuf, audit_log: PathBuf },
    /// A Postgres database and keywheel's schema in it.
    Postgres { url: String, schema: PgSchema },
}

impl Location {
    /// What to show the operator (never a password).
    pub(crate) fn describe(&self) -> String {
        match self {
            Location::File { dir, .. } => format!("file store {}", dir.display()),
            Location::Postgres { url, schema } => {
                format!("Postgres store {} (schema {})", redact_url(url), schema.name())
            }
        }
    }
}

/// The resolved settings of one invocation.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) config: Config,
    pub(crate) location: Location,
    pub(crate) master_key_file: Option<PathBuf>,
    /// The CA certificate Postgres servers must chain to (`--ca-file`), over the URLs' `sslrootcert`.
    pub(crate) ca_file: Option<PathBuf>,
    /// The next master key's file (`--next-master-key-file`), staged for a KEK rotation.
    pub(crate) next_master_key_file: Option<PathBuf>,
    /// The KEK (`--kek`, `KEYWHEEL_KEK`, `kek` in the file; default `local:`).
    pub(crate) kek_uri: KekUri,
    /// A KMS or HSM KEK staged for a KEK rotation (`--next-kek`, `KEYWHEEL_KEK_NEXT`).
    pub(crate) next_kek_uri: Option<KekUri>,
    pub(crate) actor: String,
}

impl Settings {
    /// Flags and environment first, then the configuration file, then defaults.
    pub(crate) fn resolve(global: &GlobalArgs) -> Result<Settings, CliError> {
        let config = Config::load(global.config.as_deref())?;
        let store = global.store.clone().or_else(|| config.store()).unwrap_or_else(|| DEFAULT_STORE.to_owned());
        let location = if is_postgres_url(&store) {
            Location::Postgres { url: store, schema: config.schema.clone().unwrap_or_default() }
        } else {
            let dir = PathBuf::from(&store);
            let audit_log = config.audit_log.as_deref().map_or_else(|| dir.join(AUDIT_FILE), |p| config.path(p));
            Location::File { dir, audit_log }
        };
        let master_key_file =
            global.master_key_file.clone().or_else(|| config.master_key_file.as_deref().map(|p| config.path(p)));
        let ca_file = global.ca_file.clone().or_else(|| config.ca_file.as_deref().map(|p| config.path(p)));
        let actor = global.actor.clone().unwrap_or_else(|| {
            format!("cli:{}", std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or("unknown".into()))
        });
        let next_master_key_file = global.next_master_key_file.clone();
        let kek_uri = match &global.kek {
            Some(uri) => KekUri::parse(uri, "--kek")?,
            None => config.kek.clone().unwrap_or(KekUri::Local),
        };
        let next_kek_uri = global
            .next_kek
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .map(|u| KekUri::parse(u, "--next-kek"))
            .transpose()?
            .filter(|k| !k.is_local());
        Ok(Settings { config, location, master_key_file, next_master_key_file, kek_uri, next_kek_uri, ca_file, actor })
    }

    /// Whether a KEK is configured at all: a KMS or HSM KEK, or a master key.
    pub(crate) fn has_master_key(&self) -> bool {
        !self.kek_uri.is_local() || self.master_key_file.is_some() || std::env::var_os(MASTER_KEY_ENV).is_some()
    }

    /// The configured master key.
    pub(crate) fn master_key(&self) -> Result<LocalKek, CliError> {
        let hint = format!(
            "pass --master-key-file PATH (the file `keywheel init` wrote), or export {MASTER_KEY_ENV}=<base64 key>"
        );
        match &self.master_key_file {
            Some(path) => read_master_key_file(path).map_err(|e| e.or_hint(hint)),
            None if std::env::var_os(MASTER_KEY_ENV).is_some() => {
                LocalKek::from_env(MASTER_KEY_ENV).map_err(|e| CliError::from(e).with_hint(hint))
            }
            None => Err(CliError::error("no master key: the store's keys cannot be opened without it").with_hint(hint)),
        }
    }

    /// The next master key, if one is staged for a KEK rotation
    /// (`--next-master-key-file`, else `KEYWHEEL_MASTER_KEY_NEXT`; empty means none).
    pub(crate) fn next_master_key(&self) -> Result<Option<LocalKek>, CliError> {
        let hint = format!("{NEXT_MASTER_KEY_ENV} (or --next-master-key-file) holds the next master key, base64");
        if let Some(path) = &self.next_master_key_file {
            return read_master_key_file(path).map(Some);
        }
        match std::env::var(NEXT_MASTER_KEY_ENV) {
            Ok(value) if value.trim().is_empty() => Ok(None),
            Ok(_) => LocalKek::from_env(NEXT_MASTER_KEY_ENV).map(Some).map_err(|e| {
                CliError::error(format!("{NEXT_MASTER_KEY_ENV} does not hold a master key: {e}")).with_hint(hint)
            }),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(CliError::error(format!("{NEXT_MASTER_KEY_ENV} is not UTF-8")).with_hint(hint))
            }
        }
    }

    /// The KEK that opens the store: the configured one (`--kek`: the
    /// master key, or a KMS or HSM key), which wraps, and the staged next
    /// KEK and next master key, if any, which also unwrap and verify — so
    /// every command works before, during and after a KEK rotation.
    pub(crate) async fn kek(&self) -> Result<Arc<dyn KeyEncryptionKey>, CliError> {
        let mut parts = self.kek_parts().await?;
        let primary = parts.remove(0);
        Ok(if parts.is_empty() { primary } else { Arc::new(KekRing::new(primary, parts)) })
    }

    /// The KEKs of [`kek`](Self::kek), the wrapping one first (one flat
    /// list: a ring inside a ring would be skipped by its KEK id).
    pub(crate) async fn kek_parts(&self) -> Result<Vec<Arc<dyn KeyEncryptionKey>>, CliError> {
        let mut parts: Vec<Arc<dyn KeyEncryptionKey>> = Vec::new();
        let current_check = match self.kek_uri.open_remote().await? {
            Some(remote) => {
                parts.push(remote);
                None
            }
            None => {
                let local = self.master_key()?;
                let check = local.key_check().to_owned();
                parts.push(Arc::new(local));
                Some(check)
            }
        };
        if let Some(next) = &self.next_kek_uri
            && let Some(remote) = next.open_remote().await?
        {
            parts.push(remote);
        }
        if let Some(next) = self.next_master_key()?
            && current_check.as_deref() != Some(next.key_check())
        {
            parts.push(Arc::new(next));
        }
        Ok(parts)
    }

    /// The database of the record sources: a source's own, the file's, or the store's.
    fn source_database<'a>(&'a self, own: Option<&'a str>) -> Option<&'a str> {
        own.or(self.config.database.as_deref()).or(match &self.location {
            Location::Postgres { url, .. } => Some(url.as_str()),
            Location::File { .. } => None,
        })
    }
}

/// An audit trail the CLI can verify and read.
#[derive(Debug, Clone)]
pub(crate) enum Audit {
    File(Arc<FileAuditSink>),
    Postgres(Arc<PgAuditSink>),
}

impl Audit {
    fn sink(&self) -> Arc<dyn AuditSink> {
        match self {
            Audit::File(s) => s.clone(),
            Audit::Postgres(s) => s.clone(),
        }
    }
}

/// What the outcome of an audit verification says.
#[derive(Debug)]
pub(crate) enum AuditVerdict {
    File(LogReport),
    /// The verification result and the stored head.
    Postgres(Result<u64, keywheel_core::ChainViolation>, Option<keywheel_core::ChainHead>),
}

/// An opened store: the `Keywheel` over it and its audit trail.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    pub(crate) kw: Keywheel,
    pub(crate) pool: Option<PgPool>,
    /// The file store itself, which can list its damaged documents.
    pub(crate) file: Option<Arc<FileKeyStore>>,
}

/// A store as stored: no seal checked, no key needed (see [`crate::reader`]).
#[derive(Debug, Clone)]
pub(crate) struct RawStore {
    pub(crate) store: Arc<dyn KeyStore>,
    pub(crate) file: Option<Arc<FileKeyStore>>,
    pub(crate) pool: Option<PgPool>,
}

/// A Postgres pool on `url` (TLS as its `sslmode` says, `--ca-file` as root
/// certificate), its first connection opened: connection errors in one sentence.
pub(crate) async fn pool(settings: &Settings, url: &str) -> Result<PgPool, CliError> {
    let mut tls = TlsSettings::new();
    if let Some(ca_file) = &settings.ca_file {
        tls = tls.root_cert(ca_file);
    }
    PgPool::connect(url, &tls).await.map_err(|e| {
        let hint = match &e {
            ConnectError::InvalidConnectionString { .. } | ConnectError::UnknownSslMode { .. } => {
                "a Postgres URL is postgres://user[:password]@host[:port]/database[?sslmode=verify-full]"
            }
            ConnectError::RootCertRequired { .. } => {
                "pass --ca-file PATH (or KEYWHEEL_CA_FILE, ca_file in keywheel.toml) with the CA of the database's \
                 certificate, or add sslrootcert=PATH to the URL"
            }
            ConnectError::RootCertUnreadable { .. } | ConnectError::RootCertInvalid { .. } => {
                "--ca-file (or sslrootcert) names a PEM file holding the CA certificate"
            }
            ConnectError::HostNameMismatch { .. } => {
                "connect with a host name the certificate names (sslmode=verify-ca checks the CA only)"
            }
            ConnectError::CertificateRejected { .. } => {
                "check that --ca-file (or sslrootcert) is the CA that signed the database's certificate"
            }
            ConnectError::ServerWithoutTls { .. } => "enable ssl on the server, or use sslmode=prefer or disable",
            _ => "check that the database is up and the URL (user, host, database) is right",
        };
        CliError::error(format!("{}: {e}", redact_url(url))).with_hint(hint)
    })
}

/// Check that keywheel's tables exist at the version this build expects.
async fn check_schema(pool: &PgPool, schema: &PgSchema) -> Result<(), CliError> {
    let client = pool.get().await.map_err(|e| {
        CliError::from(e).with_hint("check that the database is up and the URL (user, host, database) is right")
    })?;
    let table = format!("{}.schema_migrations", keywheel_postgres::quote_ident(schema.name())?);
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(|e| CliError::error(format!("cannot read the database: {e}")))?
        .get(0);
    let init =
        || format!("run `keywheel init` with this store to create keywheel's tables in schema {}", schema.name());
    if !exists {
        return Err(CliError::error(format!("not a keywheel store: schema {} has no keywheel tables", schema.name()))
            .with_hint(init()));
    }
    let version: Option<i32> = client
        .query_one(&format!("SELECT max(version) FROM {table}"), &[])
        .await
        .map_err(|e| CliError::error(format!("cannot read the database: {e}")))?
        .get(0);
    match version {
        Some(v) if v == SCHEMA_VERSION => Ok(()),
        Some(v) if v > SCHEMA_VERSION => Err(CliError::error(format!(
            "schema {} is at version {v}, newer than this keywheel ({SCHEMA_VERSION})",
            schema.name()
        ))
        .with_hint("upgrade the keywheel CLI")),
        _ => Err(CliError::error(format!("schema {} is not up to date", schema.name())).with_hint(init())),
    }
}

/// Open the store for a command: master key checked against every stored key
/// before anything is written.
pub(crate) async fn open(settings: &Settings) -> Result<Opened, CliError> {
    open_with_kek(settings, settings.kek().await?).await
}

/// [`open`] with a given key-encryption key (KEK rotation opens with a ring).
pub(crate) async fn open_with_kek(settings: &Settings, kek: Arc<dyn KeyEncryptionKey>) -> Result<Opened, CliError> {
    let opened = open_store(settings, kek).await?;
    // Unwrap every stored key once: a wrong master key stops here, before
    // anything could be wrapped under it. (Each load also checks the record's
    // seal.) A keyring whose record fails its seal stops only the commands
    // that use it (it is never used: every load checks the seal again), so
    // one damaged record does not take the other keyrings down.
    for id in opened.kw.list_keyrings().await? {
        match opened.kw.keyring(&id).await {
            Ok(_) | Err(keywheel_core::Error::RecordTampered { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(opened)
}

/// [`open`] without loading every keyring first, for `keyring seal`: its
/// records are not sealed yet, and sealing unwraps each one's keys itself
/// before writing anything.
pub(crate) async fn open_unverified(settings: &Settings) -> Result<Opened, CliError> {
    open_store(settings, settings.kek().await?).await
}

async fn open_store(settings: &Settings, kek: Arc<dyn KeyEncryptionKey>) -> Result<Opened, CliError> {
    let raw = open_raw(settings).await?;
    let audit = match &settings.location {
        Location::File { audit_log, .. } => Audit::File(Arc::new(FileAuditSink::open(audit_log)?)),
        Location::Postgres { schema, .. } => {
            let pool = raw.pool.clone().ok_or_else(|| CliError::error("no Postgres connection pool"))?;
            Audit::Postgres(Arc::new(PgAuditSink::new(pool, schema.clone())))
        }
    };
    let kw = Keywheel::builder().store(raw.store).audit(audit.sink()).kek(kek).actor(settings.actor.clone()).build()?;
    Ok(Opened { kw, pool: raw.pool, file: raw.file })
}

/// Open the store alone, as stored: for the read-only commands, which need
/// no master key ([`crate::reader`]), and under the `Keywheel` of [`open`].
pub(crate) async fn open_raw(settings: &Settings) -> Result<RawStore, CliError> {
    Ok(match &settings.location {
        Location::File { dir, .. } => {
            let file = Arc::new(FileKeyStore::options().create(false).open(dir)?);
            RawStore { store: file.clone(), file: Some(file), pool: None }
        }
        Location::Postgres { url, schema } => {
            let pool = pool(settings, url).await?;
            check_schema(&pool, schema).await?;
            RawStore { store: Arc::new(PgKeyStore::new(pool.clone(), schema.clone())), file: None, pool: Some(pool) }
        }
    })
}

/// Refuse to create a file store where one exists (checked by `init` before it
/// writes a new master key file, so a refused `init` leaves no stray key).
pub(crate) fn refuse_existing_file_store(settings: &Settings) -> Result<(), CliError> {
    match &settings.location {
        Location::File { dir, .. } if dir.join("store.json").exists() => {
            Err(CliError::refused(format!("{} is already a keywheel store", dir.display()))
                .with_hint("use it as it is, or choose another --store directory"))
        }
        _ => Ok(()),
    }
}

/// Create the store (file directory or Postgres tables, granting `app_role`
/// the application's privileges). Returns what was done.
pub(crate) async fn create(settings: &Settings, app_role: Option<&str>) -> Result<String, CliError> {
    match &settings.location {
        Location::File { .. } if app_role.is_some() => Err(CliError::usage(
            "--app-role is for Postgres stores (a file store is protected by its file permissions)",
        )),
        Location::File { dir, audit_log } => {
            refuse_existing_file_store(settings)?;
            FileKeyStore::open(dir)?;
            FileAuditSink::open(audit_log)?;
            Ok(format!("Created the file store {} (audit log {}).", dir.display(), audit_log.display()))
        }
        Location::Postgres { url, schema } => {
            let pool = pool(settings, url).await?;
            let mut options = keywheel_postgres::MigrateOptions::new();
            if let Some(role) = app_role {
                options = options.app_role(role);
            }
            let report = keywheel_postgres::migrate_with(&pool, schema, &options).await.map_err(|e| {
                CliError::from(e).with_hint(
                    "check that the database is up, the user may create a schema, and --app-role names an \
                     existing role that is neither a superuser nor the store's user",
                )
            })?;
            let mut done = if report.applied.is_empty() {
                format!("Schema {} is already at version {}; nothing to do.", schema.name(), report.version)
            } else {
                format!("Created keywheel's tables in schema {} (version {}).", schema.name(), report.version)
            };
            if let Some(role) = app_role {
                done.push_str(&format!(
                    "\nGranted role {role} what the application needs; on the audit log only INSERT and SELECT."
                ));
            }
            Ok(done)
        }
    }
}

/// The configured record sources, opened (each checked against its table).
pub(crate) async fn sources(settings: &Settings, opened: &Opened) -> Result<Vec<Arc<dyn RecordSource>>, CliError> {
    sources_on(settings, opened.pool.as_ref()).await
}

/// [`sources`], reusing `store_pool` (the Postgres store's pool) for sources in the store's database.
pub(crate) async fn sources_on(
    settings: &Settings,
    store_pool: Option<&PgPool>,
) -> Result<Vec<Arc<dyn RecordSource>>, CliError> {
    let opened = pg_sources_on(settings, store_pool).await?;
    let mut out = Vec::with_capacity(opened.len());
    for (source, s) in opened.into_iter().zip(&settings.config.sources) {
        out.push(crate::legacy::wrap(Arc::new(source), &s.legacy)?);
    }
    Ok(out)
}

/// [`sources_on`] as Postgres sources (which can list their tenants).
pub(crate) async fn pg_sources_on(
    settings: &Settings,
    store_pool: Option<&PgPool>,
) -> Result<Vec<PgRecordSource>, CliError> {
    let mut out = Vec::new();
    for s in &settings.config.sources {
        let spec = s.spec.clone();
        let url = settings.source_database(s.database.as_deref()).ok_or_else(|| {
            CliError::error(format!("keywheel.toml: source {} names no database", s.table))
                .with_hint("set database = \"postgres://…\" at the top of keywheel.toml or in the source")
        })?;
        let pool = match (&settings.location, store_pool) {
            (Location::Postgres { url: store_url, .. }, Some(p)) if store_url == url => p.clone(),
            _ => pool(settings, url).await?,
        };
        let source = PgRecordSource::open(pool, spec).await.map_err(|e| {
            CliError::from(e).with_hint(format!("check the [[sources]] entry for table {} in keywheel.toml", s.table))
        })?;
        out.push(source);
    }
    Ok(out)
}

/// A rotator over the opened store and the configured sources.
pub(crate) async fn rotator(settings: &Settings, opened: &Opened) -> Result<Rotator, CliError> {
    let mut rotator = Rotator::new(opened.kw.clone())?.holder(settings.actor.clone());
    for s in sources(settings, opened).await? {
        rotator = rotator.source(s);
    }
    Ok(rotator)
}

/// Open only the audit trail: auditors need no master key.
pub(crate) async fn open_audit(settings: &Settings) -> Result<Audit, CliError> {
    match &settings.location {
        Location::File { dir, audit_log } => {
            if !audit_log.exists() {
                return Err(CliError::error(format!("no audit log at {}", audit_log.display())).with_hint(format!(
                    "check --store (is {} a keywheel store?) or audit_log in keywheel.toml",
                    dir.display()
                )));
            }
            Ok(Audit::File(Arc::new(FileAuditSink::open(audit_log)?)))
        }
        Location::Postgres { url, schema } => {
            let pool = pool(settings, url).await?;
            check_schema(&pool, schema).await?;
            Ok(Audit::Postgres(Arc::new(PgAuditSink::new(pool, schema.clone()))))
        }
    }
}

/// Verify the audit trail with `verifier` (read-only).
pub(crate) async fn verify_audit(
    audit: &Audit,
    verifier: &keywheel_core::ChainVerifier<'_>,
) -> Result<AuditVerdict, CliError> {
    Ok(match audit {
        Audit::File(sink) => AuditVerdict::File(keywheel_file::verify_log(sink.path(), verifier)?),
        Audit::Postgres(sink) => {
            let result = sink.verify(verifier).await?;
            AuditVerdict::Postgres(result, sink.head().await?.chain_head())
        }
    })
}

/// Every entry of the audit trail, oldest first.
pub(crate) async fn audit_entries(audit: &Audit) -> Result<Vec<keywheel_core::AuditEntry>, CliError> {
    let entries =
        audit.sink().entries().await.map_err(|e| {
            CliError::from(e).with_hint("run `keywheel audit verify` for a report of every damaged line")
        })?;
    entries.ok_or_else(|| CliError::error("this audit sink does not keep its entries"))
}

/// Whether a Postgres store's schema exists and holds keyrings (read without a master key).
pub(crate) async fn postgres_has_keyrings(settings: &Settings) -> Result<bool, CliError> {
    let Location::Postgres { url, schema } = &settings.location else { return Ok(false) };
    let pool = pool(settings, url).await?;
    if check_schema(&pool, schema).await.is_err() {
        return Ok(false);
    }
    Ok(!PgKeyStore::new(pool, schema.clone()).list_keyrings().await?.is_empty())
}

/// A master key from a file that only its owner may read or write: one the
/// group or others can access is refused with the `chmod` that fixes it.
/// (A symlink is followed: secret mounts link to the real file.)
pub(crate) fn read_master_key_file(path: &Path) -> Result<LocalKek, CliError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| {
        CliError::error(format!("cannot read master key file {}: {e}", path.display()))
            .with_hint("check the path given with --master-key-file, --next-master-key-file or --new-master-key-file")
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if let Some(who) = keywheel_file::access_beyond_owner(mode) {
        return Err(CliError::error(format!(
            "master key file {} has permissions {mode:04o}, which give {who} access; keywheel refuses to use it",
            path.display()
        ))
        .with_hint(format!("chmod 600 {}", path.display())));
    }
    LocalKek::from_file(path).map_err(CliError::from)
}

/// Write a new secret file readable by its owner only; refuses to overwrite.
pub(crate) fn write_secret_file(path: &Path, contents: &str) -> Result<(), CliError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        CliError::error(format!("cannot create {}: {e}", path.display()))
            .with_hint("name a new file; keywheel never overwrites a key file")
    })?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::error(format!("cannot write {}: {e}", path.display())))
}

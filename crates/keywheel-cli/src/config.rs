//! `keywheel.toml`: the store, the keyrings with their policies, and the
//! record sources that `rotate` re-encrypts. Every field is optional; flags
//! and environment variables win over the file.
//!
//! ```toml
//! store = "./keywheel"                  # or "postgres://app@db/app"
//! # schema = "keywheel"                 # Postgres store: schema of keywheel's tables
//! # audit_log = "./keywheel/audit.jsonl"   # file store: the audit log
//! # master_key_file = "/run/secrets/keywheel"
//! # kek = "aws-kms://alias/keywheel?mac-key=alias/keywheel-mac"   # or pkcs11:…, local: (default)
//! # ca_file = "./db-ca.pem"              # CA of the Postgres servers (sslmode=verify-ca|verify-full)
//! # lease_ttl = "60s"                   # rotations' lease time-to-live
//! # emergency_settle = "125s"           # emergency rotations: wait before the final census
//! database = "postgres://app@db/app"    # where the [[sources]] tables live
//!                                       # (default: the store, when it is Postgres)
//!
//! [keyrings."acme/token"]
//! algorithm = "aes-256-gcm"
//! preset = "token"                      # token | database | file | session | api-signature
//! grace_period = "30d"                  # any field of the preset may be overridden
//! rollback_window = "1h"
//! quarantine = "7d"                    # retired versions stay disabled (re-enable-able) this long
//! maintenance_window = { start = "02:00", duration = "2h" }
//!
//! [keyrings."*/session"]                # every tenant's session keyring (exact entries win)
//! interval = "7d"
//!
//! [[sources]]
//! table = "public.users"
//! primary_key = "id"                    # with key_type = "bigint" | "uuid" | "text"
//! keyring = "acme/token"                # or: tenant_column = "tenant", purpose = "token"
//! columns = ["oauth_token", { name = "api_key", form = "text" }]
//!
//! [[sources]]                           # a searchable column: its blind index beside it
//! table = "public.users"
//! keyring = "acme/database"
//! columns = [{ name = "email", index = "email_bidx", normalize = "email" }]
//! # index_form = "binary" | "text" (default: the column's form), index_length = 16 (8 to 32)
//! ```
//!
//! Relative paths are relative to the directory of the file.
//!
//! The whole file is checked when it is loaded, before any command runs: an
//! unknown key anywhere or a value that does not parse is an error naming the
//! file and the line (exit code 1), and the commands only ever see the typed
//! [`Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keywheel_core::{
    AfterRotation, Algorithm, BlindIndex, Form, KeyringId, MaintenanceWindow, Normalization, Policy, Purpose,
};
use keywheel_postgres::{KeyType, PgSchema, TableSpec};
use serde::Deserialize;
use toml::Spanned;

use crate::error::CliError;
use crate::kek_uri::KekUri;

/// The file's name in the working directory, read when no `--config` is given.
pub(crate) const DEFAULT_FILE: &str = "keywheel.toml";

/// The shortest lease time-to-live: shorter leases expire between checkpoints.
pub(crate) const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// The checked configuration: every value parsed, every keyring id and
/// pattern valid, every source a usable table description.
#[derive(Debug, Default)]
pub(crate) struct Config {
    /// Directory of the file (for relative paths).
    base: PathBuf,
    store: Option<String>,
    /// Postgres store: keywheel's schema.
    pub(crate) schema: Option<PgSchema>,
    pub(crate) audit_log: Option<PathBuf>,
    pub(crate) master_key_file: Option<PathBuf>,
    /// `kek`: the KEK URI (checked when the file is read).
    pub(crate) kek: Option<KekUri>,
    /// Where the sources' tables live, unless a source names its own.
    pub(crate) database: Option<String>,
    /// PEM file of the CA that signed the Postgres servers' certificates
    /// (relative to this file); overrides the URLs' `sslrootcert`.
    pub(crate) ca_file: Option<PathBuf>,
    /// Lease time-to-live of rotations, retirements and rollbacks.
    pub(crate) lease_ttl: Option<Duration>,
    /// Emergency rotations: wait before the final census.
    pub(crate) emergency_settle: Option<Duration>,
    /// `[keyrings."…"]`: exact ids and `*/purpose` patterns, sorted by their key.
    pub(crate) keyrings: Vec<KeyringEntry>,
    /// `[[sources]]`, in file order.
    pub(crate) sources: Vec<Source>,
}

/// What a `[keyrings."…"]` table applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyringPattern {
    /// One keyring, `tenant/purpose`.
    Exact(KeyringId),
    /// `*/purpose`: the keyring of that purpose of every tenant.
    EveryTenant(Purpose),
}

impl KeyringPattern {
    /// Whether `id` is one of the keyrings this names.
    pub(crate) fn matches(&self, id: &KeyringId) -> bool {
        match self {
            KeyringPattern::Exact(k) => k == id,
            KeyringPattern::EveryTenant(purpose) => id.purpose() == purpose,
        }
    }

    /// The purpose of the keyrings it names.
    pub(crate) fn purpose(&self) -> &Purpose {
        match self {
            KeyringPattern::Exact(k) => k.purpose(),
            KeyringPattern::EveryTenant(p) => p,
        }
    }
}

impl fmt::Display for KeyringPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyringPattern::Exact(k) => write!(f, "{k}"),
            KeyringPattern::EveryTenant(p) => write!(f, "*/{p}"),
        }
    }
}

/// One `[keyrings."…"]` table, checked: the algorithm of new versions and the
/// complete policy (the preset with the file's overrides).
#[derive(Debug, Clone)]
pub(crate) struct KeyringEntry {
    pub(crate) pattern: KeyringPattern,
    pub(crate) algorithm: Option<Algorithm>,
    pub(crate) policy: Policy,
}

/// One `[[sources]]` entry, checked.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The table as written in the file (for messages).
    pub(crate) table: String,
    /// Its own database URL, if it names one.
    pub(crate) database: Option<String>,
    /// The table description for keywheel-postgres.
    pub(crate) spec: TableSpec,
    /// Columns with legacy data to migrate (their `legacy` sub-tables).
    pub(crate) legacy: Vec<crate::legacy::LegacyColumn>,
}

// ---- The file as written: every table denies unknown keys, and values that
// need checking keep their position so that errors can name the line.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the settings of keywheel.toml")]
struct RawConfig {
    store: Option<String>,
    schema: Option<Spanned<String>>,
    audit_log: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    kek: Option<Spanned<String>>,
    ca_file: Option<PathBuf>,
    database: Option<Spanned<String>>,
    lease_ttl: Option<Spanned<String>>,
    emergency_settle: Option<Spanned<String>>,
    #[serde(default)]
    keyrings: BTreeMap<Spanned<String>, RawKeyring>,
    #[serde(default)]
    sources: Vec<Spanned<RawSource>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of keyring settings (preset, interval, grace_period, …)")]
struct RawKeyring {
    algorithm: Option<Spanned<String>>,
    preset: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    grace_period: Option<Spanned<String>>,
    rollback_window: Option<Spanned<String>>,
    activation_delay: Option<Spanned<String>>,
    quarantine: Option<Spanned<String>>,
    after_rotation: Option<Spanned<String>>,
    usage_limit: Option<u64>,
    maintenance_window: Option<RawWindow>,
    priority: Option<i32>,
}

/// A maintenance window: `start` as `HH:MM` UTC, `duration` like `2h`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table { start = \"HH:MM\", duration = \"2h\" }")]
struct RawWindow {
    start: Spanned<String>,
    duration: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[sources]] table (table, keyring or tenant_column and purpose, columns)")]
struct RawSource {
    table: Spanned<String>,
    name: Option<String>,
    database: Option<Spanned<String>>,
    primary_key: Option<String>,
    key_type: Option<Spanned<String>>,
    keyring: Option<Spanned<String>>,
    tenant_column: Option<String>,
    purpose: Option<Spanned<String>>,
    context_table: Option<String>,
    columns: Spanned<Vec<Spanned<RawColumn>>>,
}

/// An encrypted column: just its name (a `bytea` column), or a table.
#[derive(Debug)]
enum RawColumn {
    Name(String),
    Table(Box<RawColumnTable>),
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a column table { name = \"…\", form = \"binary\" | \"text\", context_column = \"…\", index = \"…\" }"
)]
struct RawColumnTable {
    name: String,
    form: Option<Spanned<String>>,
    context_column: Option<String>,
    /// The blind index column paired with this one, and how its tags are made.
    index: Option<Spanned<String>>,
    index_form: Option<Spanned<String>>,
    normalize: Option<Spanned<String>>,
    index_length: Option<Spanned<i64>>,
    /// Legacy data in the column: see `crate::legacy`.
    legacy: Option<Box<Spanned<crate::legacy::RawLegacy>>>,
}

// Not `#[serde(untagged)]`: that would swallow the table's own errors (an
// unknown key) into "did not match any variant", and lose their position.
impl<'de> Deserialize<'de> for RawColumn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawColumn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a column name, or a table { name = \"…\", form = \"binary\" | \"text\", context_column = \"…\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawColumn, E> {
                Ok(RawColumn::Name(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawColumn, A::Error> {
                RawColumnTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawColumn::Table(Box::new(t)))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Turns positions into `FILE:LINE` errors.
struct Located<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Located<'_> {
    /// The line (from 1) of byte offset `at`.
    fn line(&self, at: usize) -> usize {
        let at = at.min(self.text.len());
        self.text.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1
    }

    /// A configuration error (exit code 1) at byte offset `at`.
    fn error(&self, at: usize, what: impl fmt::Display) -> CliError {
        CliError::error(format!("{}:{}: {what}", self.path.display(), self.line(at)))
            .with_hint("the README's operator section shows every key of keywheel.toml and its values")
    }

    fn duration(&self, key: &str, value: &Spanned<String>) -> Result<Duration, CliError> {
        parse_duration(value.get_ref()).map_err(|e| self.error(value.span().start, format!("{key}: {e}")))
    }

    /// A `database` URL: Postgres is the only database of record sources.
    fn database(&self, value: &Option<Spanned<String>>) -> Result<Option<String>, CliError> {
        match value {
            Some(url) if !is_postgres_url(url.get_ref()) => Err(self.error(
                url.span().start,
                "database is a postgres:// or postgresql:// URL (the record sources are Postgres tables)",
            )),
            _ => Ok(value.as_ref().map(|url| url.get_ref().clone())),
        }
    }
}

impl Config {
    /// Read and check `path`, or `./keywheel.toml` when it exists, or nothing.
    pub(crate) fn load(path: Option<&Path>) -> Result<Config, CliError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_FILE), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config { base: PathBuf::from("."), ..Config::default() });
            }
            Err(e) => {
                return Err(CliError::error(format!("cannot read the configuration file {}: {e}", path.display())));
            }
        };
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        Config::parse(&path, &text, base)
    }

    /// Check the text of the file at `path`.
    fn parse(path: &Path, text: &str, base: PathBuf) -> Result<Config, CliError> {
        let at = Located { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let what = e.message().trim_end().to_owned();
            match e.span() {
                Some(span) => at.error(span.start, what),
                None => CliError::error(format!("{}: {what}", path.display()))
                    .with_hint("the README's operator section shows every key of keywheel.toml and its values"),
            }
        })?;
        let schema = raw
            .schema
            .map(|s| PgSchema::new(s.get_ref().clone()).map_err(|e| at.error(s.span().start, format!("schema: {e}"))))
            .transpose()?;
        let lease_ttl = raw.lease_ttl.as_ref().map(|v| at.duration("lease_ttl", v)).transpose()?;
        if let (Some(ttl), Some(v)) = (lease_ttl, &raw.lease_ttl)
            && ttl < MIN_LEASE_TTL
        {
            return Err(at.error(v.span().start, "lease_ttl must be at least 1s"));
        }
        let emergency_settle = raw.emergency_settle.as_ref().map(|v| at.duration("emergency_settle", v)).transpose()?;
        let kek = raw
            .kek
            .as_ref()
            .map(|v| {
                KekUri::parse(v.get_ref(), "kek").map_err(|e| {
                    let hint = e.hint.clone().unwrap_or_default();
                    at.error(v.span().start, e.message).with_hint(hint)
                })
            })
            .transpose()?;
        let mut keyrings = Vec::new();
        for (key, table) in &raw.keyrings {
            keyrings.push(keyring_entry(&at, key, table)?);
        }
        let mut sources = Vec::new();
        for s in &raw.sources {
            sources.push(source(&at, s, &base)?);
        }
        Ok(Config {
            base,
            store: raw.store,
            schema,
            audit_log: raw.audit_log,
            master_key_file: raw.master_key_file,
            kek,
            ca_file: raw.ca_file,
            database: at.database(&raw.database)?,
            lease_ttl,
            emergency_settle,
            keyrings,
            sources,
        })
    }

    /// A path from the file, made relative to the file's directory.
    pub(crate) fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() || self.base == Path::new(".") { p.to_path_buf() } else { self.base.join(p) }
    }

    /// A store location from the file: paths relative to the file, URLs as they are.
    pub(crate) fn store(&self) -> Option<String> {
        self.store.as_ref().map(|s| {
            if is_postgres_url(s) { s.clone() } else { self.path(Path::new(s)).to_string_lossy().into_owned() }
        })
    }

    /// The entry that applies to keyring `id`: its exact entry, else the
    /// `*/purpose` pattern of its purpose, else none.
    pub(crate) fn keyring(&self, id: &KeyringId) -> Option<&KeyringEntry> {
        let exact = self.keyrings.iter().find(|e| e.pattern == KeyringPattern::Exact(id.clone()));
        exact.or_else(|| self.keyrings.iter().find(|e| e.pattern.matches(id)))
    }

    /// Whether some entry is a `*/purpose` pattern.
    pub(crate) fn has_patterns(&self) -> bool {
        self.keyrings.iter().any(|e| matches!(e.pattern, KeyringPattern::EveryTenant(_)))
    }
}

fn keyring_entry(at: &Located<'_>, key: &Spanned<String>, t: &RawKeyring) -> Result<KeyringEntry, CliError> {
    let name = key.get_ref();
    let here = key.span().start;
    let pattern =
        match name.split_once('/') {
            Some(("*", purpose)) => KeyringPattern::EveryTenant(
                purpose.parse().map_err(|e| at.error(here, format!("[keyrings.\"{name}\"]: not a purpose: {e}")))?,
            ),
            _ if name.contains('*') => {
                return Err(at.error(
                    here,
                    format!(
                        "[keyrings.\"{name}\"]: the only pattern is \"*/PURPOSE\" (every tenant's keyring of a purpose)"
                    ),
                ));
            }
            _ => KeyringPattern::Exact(name.parse().map_err(|e| {
                at.error(here, format!("[keyrings.\"{name}\"] is not a keyring id (tenant/purpose): {e}"))
            })?),
        };
    let bad = |value_at: usize, what: String| at.error(value_at, format!("[keyrings.\"{name}\"]: {what}"));
    let algorithm = t
        .algorithm
        .as_ref()
        .map(|a| a.get_ref().parse::<Algorithm>().map_err(|_| bad(a.span().start, unknown_algorithm(a.get_ref()))))
        .transpose()?;
    let purpose = match &t.preset {
        Some(p) => match p.get_ref().parse::<Purpose>() {
            Ok(purpose) if !matches!(purpose, Purpose::Custom(_)) => purpose,
            _ => {
                return Err(bad(
                    p.span().start,
                    format!(
                        "unknown preset {:?}; presets are token, database, file, session, api-signature",
                        p.get_ref()
                    ),
                ));
            }
        },
        None => pattern.purpose().clone(),
    };
    let mut policy = Policy::for_purpose(&purpose);
    let duration = |key: &str, value: &Option<Spanned<String>>| -> Result<Option<Duration>, CliError> {
        value
            .as_ref()
            .map(|v| parse_duration(v.get_ref()).map_err(|e| bad(v.span().start, format!("{key}: {e}"))))
            .transpose()
    };
    if let Some(d) = duration("interval", &t.interval)? {
        if d.is_zero() {
            return Err(bad(t.interval.as_ref().map_or(here, |v| v.span().start), "interval must not be 0".into()));
        }
        policy.interval = d;
    }
    if let Some(d) = duration("grace_period", &t.grace_period)? {
        policy.grace_period = d;
    }
    if let Some(d) = duration("rollback_window", &t.rollback_window)? {
        policy.rollback_window = d;
    }
    if let Some(d) = duration("activation_delay", &t.activation_delay)? {
        policy.activation_delay = d;
    }
    if let Some(d) = duration("quarantine", &t.quarantine)? {
        policy.quarantine = d;
    }
    if let Some(a) = &t.after_rotation {
        policy.after_rotation = match a.get_ref().as_str() {
            "reencrypt" => AfterRotation::Reencrypt,
            "expire" => AfterRotation::Expire,
            other => {
                return Err(bad(
                    a.span().start,
                    format!("after_rotation is \"reencrypt\" or \"expire\", not {other:?}"),
                ));
            }
        };
    }
    if let Some(limit) = t.usage_limit {
        policy.usage_limit = Some(limit);
    }
    if let Some(w) = &t.maintenance_window {
        let (h, m) = w
            .start
            .get_ref()
            .split_once(':')
            .filter(|(h, m)| {
                (1..=2).contains(&h.len()) && m.len() == 2 && h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit())
            })
            .and_then(|(h, m)| Some((h.parse::<u64>().ok()?, m.parse::<u64>().ok()?)))
            .filter(|(h, m)| *h < 24 && *m < 60)
            .ok_or_else(|| {
                bad(
                    w.start.span().start,
                    format!("maintenance_window.start is HH:MM (UTC), not {:?}", w.start.get_ref()),
                )
            })?;
        let length = parse_duration(w.duration.get_ref())
            .map_err(|e| bad(w.duration.span().start, format!("maintenance_window.duration: {e}")))?;
        if length.is_zero() {
            return Err(bad(w.duration.span().start, "maintenance_window.duration must not be 0".into()));
        }
        policy.maintenance_window =
            Some(MaintenanceWindow { start: Duration::from_secs(h * 3600 + m * 60), duration: length });
    }
    if let Some(p) = t.priority {
        policy.priority = p;
    }
    Ok(KeyringEntry { pattern, algorithm, policy })
}

fn source(at: &Located<'_>, s: &Spanned<RawSource>, base: &Path) -> Result<Source, CliError> {
    let here = s.span().start;
    let s = s.get_ref();
    let table = s.table.get_ref();
    let bad = |value_at: usize, what: String| at.error(value_at, format!("source {table}: {what}"));
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    let key_type = match &s.key_type {
        None => KeyType::BigInt,
        Some(k) => match k.get_ref().as_str() {
            "bigint" => KeyType::BigInt,
            "uuid" => KeyType::Uuid,
            "text" => KeyType::Text,
            other => return Err(bad(k.span().start, format!("key_type is bigint, uuid or text, not {other:?}"))),
        },
    };
    let mut spec = TableSpec::new(schema, name).primary_key(s.primary_key.as_deref().unwrap_or("id"), key_type);
    spec = match (&s.keyring, &s.tenant_column, &s.purpose) {
        (Some(k), None, None) => spec.keyring(
            k.get_ref()
                .parse()
                .map_err(|e| bad(k.span().start, format!("keyring {:?} is not a keyring id: {e}", k.get_ref())))?,
        ),
        (None, Some(column), Some(purpose)) => spec.keyring_from_column(
            column,
            purpose
                .get_ref()
                .parse()
                .map_err(|e| bad(purpose.span().start, format!("purpose {:?} is not valid: {e}", purpose.get_ref())))?,
        ),
        _ => return Err(bad(here, "give either keyring = \"tenant/purpose\" or tenant_column and purpose".into())),
    };
    if s.columns.get_ref().is_empty() {
        return Err(bad(s.columns.span().start, "columns is empty; name the encrypted columns".into()));
    }
    let context_table = s.context_table.as_deref().unwrap_or(name);
    let mut legacy = Vec::new();
    for c in s.columns.get_ref() {
        let (name, form, context) = match c.get_ref() {
            RawColumn::Name(n) => (n, None, None),
            RawColumn::Table(t) => (&t.name, t.form.as_ref(), t.context_column.as_ref()),
        };
        let raw_legacy = match c.get_ref() {
            RawColumn::Table(t) => t.legacy.as_deref(),
            RawColumn::Name(_) => None,
        };
        let form_of = |f: Option<&Spanned<String>>, key: &str, default: Form| match f {
            None => Ok(default),
            Some(f) => match f.get_ref().as_str() {
                "binary" => Ok(Form::Binary),
                "text" => Ok(Form::Text),
                other => Err(bad(f.span().start, format!("column {name}: {key} is binary or text, not {other:?}"))),
            },
        };
        let form = form_of(form, "form", Form::Binary)?;
        if let Some(l) = raw_legacy {
            legacy.push(
                crate::legacy::check(l, name_of_table(table), name, form, base).map_err(|(at, why)| bad(at, why))?,
            );
        }
        let context = context.unwrap_or(name);
        spec = spec.column_with_context(name, form, context);
        if let RawColumn::Table(t) = c.get_ref()
            && let Some((index_column, blind)) = blind_index(t, context_table, context, &bad)?
        {
            spec = spec.index(name, index_column, form_of(t.index_form.as_ref(), "index_form", form)?, blind);
        }
    }
    if let Some(t) = &s.context_table {
        spec = spec.context_table(t);
    }
    if let Some(n) = &s.name {
        spec = spec.name(n);
    }
    spec.check().map_err(|e| bad(here, e.to_string()))?;
    Ok(Source { table: table.clone(), database: at.database(&s.database)?, spec, legacy })
}

/// A table's name without its schema.
fn name_of_table(table: &str) -> &str {
    table.split_once('.').map_or(table, |(_, name)| name)
}

/// The blind index of a column table (`index`, `normalize`, `index_length`),
/// if it has one: its tag column and how tags are made. The index's table
/// and column are the values' context table and column, as the application
/// must use them too.
fn blind_index<'t>(
    t: &'t RawColumnTable,
    context_table: &str,
    context_column: &str,
    bad: &dyn Fn(usize, String) -> CliError,
) -> Result<Option<(&'t str, BlindIndex)>, CliError> {
    let name = &t.name;
    let Some(index_column) = &t.index else {
        for (key, at) in [
            ("normalize", t.normalize.as_ref().map(|n| n.span().start)),
            ("index_length", t.index_length.as_ref().map(|n| n.span().start)),
            ("index_form", t.index_form.as_ref().map(|n| n.span().start)),
        ] {
            if let Some(at) = at {
                return Err(bad(at, format!("column {name}: {key} needs index = \"<the tag column>\"")));
            }
        }
        return Ok(None);
    };
    let mut blind = BlindIndex::new(context_table, context_column);
    if let Some(n) = &t.normalize {
        let normalization: Normalization =
            n.get_ref().parse().map_err(|e| bad(n.span().start, format!("column {name}: {e}")))?;
        blind = blind.normalization(normalization);
    }
    if let Some(len) = &t.index_length {
        let len_usize = usize::try_from(*len.get_ref()).unwrap_or(0);
        blind =
            blind.length(len_usize).map_err(|e| bad(len.span().start, format!("column {name}: index_length: {e}")))?;
    }
    Ok(Some((index_column.get_ref().as_str(), blind)))
}

/// Whether a store argument names a Postgres database rather than a directory.
pub(crate) fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The message for an unknown algorithm name, listing the known ones.
pub(crate) fn unknown_algorithm(name: &str) -> String {
    let known: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    format!("unknown algorithm {name:?}; choose one of {}", known.join(", "))
}

/// A duration: a number and a unit, `d`, `h`, `m`, `s` or `ms`, or a sum
/// of them like `1h30m`; a bare number is seconds. No spaces: `"30 days"` is
/// refused rather than guessed.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration; write it like 30d, 12h, 45m, 30s, 500ms or 1h30m");
    if s.is_empty() {
        return Err("empty duration; write it like 30d, 12h, 45m, 30s, 500ms or 1h30m".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{s:?} is too long"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_end = rest[digits..].find(|c: char| c.is_ascii_digit()).map_or(rest.len(), |i| digits + i);
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let part = match &rest[digits..unit_end] {
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "s" => Some(Duration::from_secs(n)),
            "ms" => Some(Duration::from_millis(n)),
            _ => return Err(bad()),
        };
        total = part.and_then(|p| total.checked_add(p)).ok_or_else(|| format!("{s:?} is too long"))?;
        rest = &rest[unit_end..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, CliError> {
        Config::parse(Path::new("keywheel.toml"), text, PathBuf::from("."))
    }

    #[track_caller]
    fn refused(text: &str, line: usize, what: &str) {
        let e = parse(text).expect_err(text);
        assert_eq!(e.code, crate::error::ERROR, "{}", e.message);
        assert!(e.message.starts_with(&format!("keywheel.toml:{line}: ")), "{text}: {}", e.message);
        assert!(e.message.contains(what), "{text}: {}", e.message);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "30 days", " 30d", "5 weeks", "h", "30days", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn policy_overrides_apply_on_top_of_the_preset() {
        let id: KeyringId = "acme/token".parse().expect("id");
        let c = parse(
            "[keyrings.\"acme/token\"]\npreset = \"database\"\ngrace_period = \"0s\"\n\
             maintenance_window = { start = \"23:30\", duration = \"2h\" }\n",
        )
        .expect("parse");
        let p = &c.keyring(&id).expect("listed").policy;
        assert_eq!(p.interval, Policy::for_purpose(&Purpose::Database).interval);
        assert_eq!(p.grace_period, Duration::ZERO);
        assert_eq!(p.maintenance_window.map(|w| w.start), Some(Duration::from_secs(23 * 3600 + 1800)));
        let early = parse("[keyrings.\"acme/token\"]\nmaintenance_window = { start = \"2:00\", duration = \"1h\" }\n")
            .expect("one-digit hour");
        let window = early.keyring(&id).and_then(|e| e.policy.maintenance_window).expect("window");
        assert_eq!((window.start, window.duration), (Duration::from_secs(7200), Duration::from_secs(3600)));
        for bad in ["2:0", "24:00", "02:60", "0200", "-1:00", "+1:00"] {
            let text =
                format!("[keyrings.\"acme/token\"]\nmaintenance_window = {{ start = \"{bad}\", duration = \"1h\" }}\n");
            refused(&text, 2, "maintenance_window.start is HH:MM");
        }
    }

    #[test]
    fn exact_entries_win_over_patterns() {
        let c = parse("[keyrings.\"*/token\"]\ninterval = \"7d\"\n[keyrings.\"acme/token\"]\ninterval = \"1d\"\n")
            .expect("parse");
        let interval = |id: &str| c.keyring(&id.parse().expect("id")).map(|e| e.policy.interval);
        assert_eq!(interval("acme/token"), Some(Duration::from_secs(86_400)));
        assert_eq!(interval("beta/token"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(interval("beta/session"), None);
        assert!(c.has_patterns());
    }

    #[test]
    fn every_bad_value_names_its_line() {
        refused("store = \"x\"\nstorr = \"y\"\n", 2, "unknown field `storr`");
        refused("[keyrings.\"acme/token\"]\ngrace = \"1d\"\n", 2, "unknown field `grace`");
        refused("\n[keyrings.\"acme/token\"]\ngrace_period = \"30 days\"\n", 3, "grace_period: \"30 days\"");
        refused("[keyrings.\"acme/token\"]\npreset = \"weekly\"\n", 2, "unknown preset");
        refused("[keyrings.\"acme/token\"]\nalgorithm = \"rot13\"\n", 2, "unknown algorithm");
        refused("[keyrings.\"acme/token\"]\nafter_rotation = \"never\"\n", 2, "after_rotation");
        refused(
            "[keyrings.\"acme/token\"]\nmaintenance_window = { start = \"25:00\", duration = \"2h\" }\n",
            2,
            "maintenance_window.start",
        );
        refused(
            "[keyrings.\"acme/token\"]\nmaintenance_window = { start = \"02:00\", length = \"2h\" }\n",
            2,
            "unknown field `length`",
        );
        refused("[keyrings.\"acme\"]\n", 1, "not a keyring id");
        refused("[keyrings.\"acme/*\"]\n", 1, "the only pattern");
        refused("lease_ttl = \"0s\"\n", 1, "at least 1s");
        refused(
            "[keyrings.\"acme/token\"]\nmaintenance_window = \"02:00\"\n",
            2,
            "expected a table { start = \"HH:MM\", duration = \"2h\" }",
        );
        refused("store = \"x\"\ndatabase = \"mysql://db/app\"\n", 2, "database is a postgres://");
        refused(
            "[[sources]]\ntable = \"users\"\nkeyring = \"a/token\"\ndatabase = \"app\"\ncolumns = [\"a\"]\n",
            4,
            "database is a postgres://",
        );
        refused("emergency_settle = \"soon\"\n", 1, "emergency_settle");
        refused("schema = \"\"\n", 1, "schema");
        refused("[[sources]]\ntable = \"users\"\ncolumns = [\"a\"]\n", 1, "give either keyring");
        refused("[[sources]]\ntable = \"users\"\nkeyring = \"a/token\"\ncolumns = []\n", 4, "columns is empty");
        refused(
            "[[sources]]\ntable = \"users\"\nkeyring = \"a/token\"\ncolumns = [\n  \"a\",\n  { name = \"b\", from = \"text\" },\n]\n",
            6,
            "unknown field `from`",
        );
        refused(
            "[[sources]]\ntable = \"users\"\nkeyring = \"a/token\"\ncolumns = [{ name = \"b\", form = \"hex\" }]\n",
            4,
            "form is binary or text",
        );
        refused(
            "[[sources]]\ntable = \"users\"\nkeyring = \"a/token\"\nkey_type = \"int\"\ncolumns = [\"a\"]\n",
            4,
            "key_type",
        );
        refused("[[sources]]\ntable = \"users\"\nkeyring = \"a/token\"\ncolumns = [\"id\"]\n", 1, "used twice");
    }

    #[test]
    fn index_columns_become_blind_indexes() {
        let c = parse(
            "[[sources]]\ntable = \"app.users\"\nkeyring = \"acme/database\"\ncontext_table = \"people\"\ncolumns = [\n  \
             { name = \"email\", index = \"email_bidx\", normalize = \"email\" },\n  \
             { name = \"phone\", form = \"text\", context_column = \"tel\", index = \"phone_bidx\", normalize = \"phone\", \
             index_length = 8, index_form = \"binary\" },\n  \"token\",\n]\n",
        )
        .expect("parse");
        let columns = c.sources[0].spec.columns();
        let email = columns[0].index.as_ref().expect("email is indexed");
        assert_eq!((email.name.as_str(), email.form), ("email_bidx", Form::Binary));
        let expected = BlindIndex::new("people", "email").normalization(Normalization::TrimLowercase);
        assert_eq!(*email.spec, expected, "the index is bound to the values' context table and column");
        let phone = columns[1].index.as_ref().expect("phone is indexed");
        assert_eq!((phone.name.as_str(), phone.form), ("phone_bidx", Form::Binary));
        let expected = BlindIndex::new("people", "tel").normalization(Normalization::DigitsOnly).length(8).expect("8");
        assert_eq!(*phone.spec, expected);
        assert!(columns[2].index.is_none());

        let source = "[[sources]]\ntable = \"users\"\nkeyring = \"a/database\"\ncolumns = [\n";
        refused(&format!("{source}  {{ name = \"e\", normalize = \"email\" }},\n]\n"), 5, "normalize needs index");
        refused(
            &format!("{source}  {{ name = \"e\", index = \"i\", normalize = \"upper\" }},\n]\n"),
            5,
            "unknown normalisation",
        );
        refused(&format!("{source}  {{ name = \"e\", index = \"i\", index_length = 4 }},\n]\n"), 5, "8 to 32 bytes");
        refused(
            &format!("{source}  {{ name = \"e\", index = \"i\", index_form = \"hex\" }},\n]\n"),
            5,
            "index_form is binary or text",
        );
        refused(&format!("{source}  {{ name = \"e\", index = \"e\" }},\n]\n"), 1, "e");
    }

    #[test]
    fn sources_become_table_specs() {
        let c = parse(
            "[[sources]]\ntable = \"app.users\"\nkeyring = \"acme/token\"\ncolumns = [\"a\", { name = \"b\", form = \"text\" }]\n\
             [[sources]]\ntable = \"orders\"\ntenant_column = \"tenant\"\npurpose = \"token\"\ncolumns = [\"c\"]\n",
        )
        .expect("parse");
        let names: Vec<String> = c.sources.iter().map(|s| s.spec.source_name()).collect();
        assert_eq!(names, ["app.users", "public.orders"]);
    }
}

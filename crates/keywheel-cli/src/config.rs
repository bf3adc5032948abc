//! `keywheel.toml`: the store, the keyrings with their policies, and the
//! record sources that `rotate` re-encrypts. Every field is optional; flags
//! and environment variables win over the file.
//!
//! ```toml
//! store = "./keywheel"                  # or "postgres://app@db/app"
//! # schema = "keywheel"                 # Postgres store: schema of keywheel's tables
//! # audit_log = "./keywheel/audit.jsonl"   # file store: the audit log
//! # master_key_file = "/run/secrets/keywheel"
//! database = "postgres://app@db/app"    # where the [[sources]] tables live
//!                                       # (default: the store, when it is Postgres)
//!
//! [keyrings."acme/token"]
//! algorithm = "aes-256-gcm"
//! preset = "token"                      # token | database | file | session | api-signature
//! grace_period = "30d"                  # any field of the preset may be overridden
//! rollback_window = "1h"
//! maintenance_window = { start = "02:00", duration = "2h" }
//!
//! [[sources]]
//! table = "public.users"
//! primary_key = "id"                    # with key_type = "bigint" | "uuid" | "text"
//! keyring = "acme/token"                # or: tenant_column = "tenant", purpose = "token"
//! columns = ["oauth_token", { name = "api_key", form = "text" }]
//! ```
//!
//! Relative paths are relative to the directory of the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keywheel_core::{AfterRotation, Algorithm, Form, KeyringId, MaintenanceWindow, Policy, Purpose};
use keywheel_postgres::{KeyType, TableSpec};
use serde::Deserialize;

use crate::error::CliError;

/// The file's name in the working directory, read when no `--config` is given.
pub(crate) const DEFAULT_FILE: &str = "keywheel.toml";

/// The parsed configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Directory of the file (for relative paths); not in the file.
    #[serde(skip)]
    pub(crate) base: PathBuf,
    pub(crate) store: Option<String>,
    pub(crate) schema: Option<String>,
    pub(crate) audit_log: Option<PathBuf>,
    pub(crate) master_key_file: Option<PathBuf>,
    pub(crate) database: Option<String>,
    /// Lease time-to-live of rotations, retirements and rollbacks (e.g. `"60s"`).
    pub(crate) lease_ttl: Option<String>,
    /// Emergency rotations: wait before the final census (e.g. `"65s"`).
    pub(crate) emergency_settle: Option<String>,
    #[serde(default)]
    pub(crate) keyrings: BTreeMap<String, KeyringConfig>,
    #[serde(default)]
    pub(crate) sources: Vec<SourceConfig>,
}

/// One `[keyrings."tenant/purpose"]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyringConfig {
    pub(crate) algorithm: Option<String>,
    pub(crate) preset: Option<String>,
    pub(crate) interval: Option<String>,
    pub(crate) grace_period: Option<String>,
    pub(crate) rollback_window: Option<String>,
    pub(crate) activation_delay: Option<String>,
    pub(crate) after_rotation: Option<String>,
    pub(crate) usage_limit: Option<u64>,
    pub(crate) maintenance_window: Option<WindowConfig>,
    pub(crate) priority: Option<i32>,
    pub(crate) quarantine: Option<String>,
}

/// A maintenance window: `start` as `HH:MM` UTC, `duration` like `2h`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WindowConfig {
    pub(crate) start: String,
    pub(crate) duration: String,
}

/// One `[[sources]]` entry: an application table with encrypted columns.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceConfig {
    pub(crate) table: String,
    pub(crate) name: Option<String>,
    pub(crate) database: Option<String>,
    pub(crate) primary_key: Option<String>,
    pub(crate) key_type: Option<String>,
    pub(crate) keyring: Option<String>,
    pub(crate) tenant_column: Option<String>,
    pub(crate) purpose: Option<String>,
    pub(crate) context_table: Option<String>,
    pub(crate) columns: Vec<ColumnConfig>,
}

/// An encrypted column: just its name (a `bytea` column), or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ColumnConfig {
    Name(String),
    Full {
        name: String,
        #[serde(default)]
        form: Option<String>,
        #[serde(default)]
        context_column: Option<String>,
    },
}

impl Config {
    /// Read `path`, or `./keywheel.toml` when it exists, or nothing.
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
                return Err(CliError::usage(format!("cannot read the configuration file {}: {e}", path.display())));
            }
        };
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            CliError::usage(format!("the configuration file {} is not valid: {}", path.display(), e.message()))
                .with_hint(match e.span() {
                    Some(span) => format!(
                        "see line {}",
                        text.as_bytes()[..span.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
                    ),
                    None => "check it against the example in the README's operator section".to_owned(),
                })
        })?;
        config.base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        for id in config.keyrings.keys() {
            id.parse::<KeyringId>()
                .map_err(|e| CliError::usage(format!("keywheel.toml: [keyrings.\"{id}\"] is not a keyring id: {e}")))?;
        }
        Ok(config)
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

    /// The configured keyring `id`, if any.
    pub(crate) fn keyring(&self, id: &KeyringId) -> Option<&KeyringConfig> {
        self.keyrings.iter().find(|(k, _)| k.parse::<KeyringId>().is_ok_and(|k| &k == id)).map(|(_, v)| v)
    }
}

/// Whether a store argument names a Postgres database rather than a directory.
pub(crate) fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

impl KeyringConfig {
    /// The algorithm of new versions.
    pub(crate) fn algorithm(&self, id: &KeyringId) -> Result<Option<Algorithm>, CliError> {
        self.algorithm
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| CliError::usage(format!("keywheel.toml: keyring {id}: {}", unknown_algorithm(a))))
            })
            .transpose()
    }

    /// The policy: the preset (default: the purpose's), then the overrides.
    pub(crate) fn policy(&self, id: &KeyringId) -> Result<Policy, CliError> {
        let bad = |what: String| CliError::usage(format!("keywheel.toml: keyring {id}: {what}"));
        let purpose = match &self.preset {
            Some(p) => {
                let purpose: Purpose = p.parse().map_err(|_| bad(format!("unknown preset {p:?}")))?;
                if let Purpose::Custom(_) = purpose {
                    return Err(bad(format!(
                        "unknown preset {p:?}; presets are token, database, file, session, api-signature"
                    )));
                }
                purpose
            }
            None => id.purpose().clone(),
        };
        let mut policy = Policy::for_purpose(&purpose);
        let duration = |field: &str, value: &Option<String>| -> Result<Option<Duration>, CliError> {
            value.as_deref().map(|v| parse_duration(v).map_err(|e| bad(format!("{field}: {e}")))).transpose()
        };
        if let Some(d) = duration("interval", &self.interval)? {
            policy.interval = d;
        }
        if let Some(d) = duration("grace_period", &self.grace_period)? {
            policy.grace_period = d;
        }
        if let Some(d) = duration("rollback_window", &self.rollback_window)? {
            policy.rollback_window = d;
        }
        if let Some(d) = duration("activation_delay", &self.activation_delay)? {
            policy.activation_delay = d;
        }
        if let Some(d) = duration("quarantine", &self.quarantine)? {
            policy.quarantine = d;
        }
        if let Some(a) = &self.after_rotation {
            policy.after_rotation = match a.as_str() {
                "reencrypt" => AfterRotation::Reencrypt,
                "expire" => AfterRotation::Expire,
                other => return Err(bad(format!("after_rotation is \"reencrypt\" or \"expire\", not {other:?}"))),
            };
        }
        if let Some(limit) = self.usage_limit {
            policy.usage_limit = Some(limit);
        }
        if let Some(w) = &self.maintenance_window {
            let (h, m) = w
                .start
                .split_once(':')
                .and_then(|(h, m)| Some((h.parse::<u64>().ok()?, m.parse::<u64>().ok()?)))
                .filter(|(h, m)| *h < 24 && *m < 60)
                .ok_or_else(|| bad(format!("maintenance_window.start is HH:MM (UTC), not {:?}", w.start)))?;
            let duration = parse_duration(&w.duration).map_err(|e| bad(format!("maintenance_window.duration: {e}")))?;
            policy.maintenance_window =
                Some(MaintenanceWindow { start: Duration::from_secs(h * 3600 + m * 60), duration });
        }
        if let Some(p) = self.priority {
            policy.priority = p;
        }
        Ok(policy)
    }
}

/// The message for an unknown algorithm name, listing the known ones.
pub(crate) fn unknown_algorithm(name: &str) -> String {
    let known: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    format!("unknown algorithm {name:?}; choose one of {}", known.join(", "))
}

impl SourceConfig {
    /// The table description for keywheel-postgres.
    pub(crate) fn table_spec(&self) -> Result<TableSpec, CliError> {
        let bad = |what: String| CliError::usage(format!("keywheel.toml: source {}: {what}", self.table));
        let (schema, table) = self.table.split_once('.').unwrap_or(("public", &self.table));
        let key_type = match self.key_type.as_deref().unwrap_or("bigint") {
            "bigint" => KeyType::BigInt,
            "uuid" => KeyType::Uuid,
            "text" => KeyType::Text,
            other => return Err(bad(format!("key_type is bigint, uuid or text, not {other:?}"))),
        };
        let mut spec = TableSpec::new(schema, table).primary_key(self.primary_key.as_deref().unwrap_or("id"), key_type);
        spec = match (&self.keyring, &self.tenant_column, &self.purpose) {
            (Some(k), None, None) => {
                spec.keyring(k.parse().map_err(|e| bad(format!("keyring {k:?} is not a keyring id: {e}")))?)
            }
            (None, Some(column), Some(purpose)) => spec.keyring_from_column(
                column,
                purpose.parse().map_err(|e| bad(format!("purpose {purpose:?} is not valid: {e}")))?,
            ),
            _ => return Err(bad("give either keyring = \"tenant/purpose\" or tenant_column and purpose".into())),
        };
        if self.columns.is_empty() {
            return Err(bad("columns is empty; name the encrypted columns".into()));
        }
        for c in &self.columns {
            let (name, form, context) = match c {
                ColumnConfig::Name(n) => (n, None, None),
                ColumnConfig::Full { name, form, context_column } => (name, form.as_deref(), context_column.as_ref()),
            };
            let form = match form.unwrap_or("binary") {
                "binary" => Form::Binary,
                "text" => Form::Text,
                other => return Err(bad(format!("column {name}: form is binary or text, not {other:?}"))),
            };
            spec = spec.column_with_context(name, form, context.unwrap_or(name));
        }
        if let Some(t) = &self.context_table {
            spec = spec.context_table(t);
        }
        if let Some(n) = &self.name {
            spec = spec.name(n);
        }
        Ok(spec)
    }
}

/// `90d`, `12h`, `30m`, `45s`, `500ms`, or a sum like `1h30m`; a bare number is seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_end = rest[digits..].find(|c: char| c.is_ascii_digit()).map_or(rest.len(), |i| digits + i);
        let n: u64 = rest[..digits].parse().map_err(|_| format!("{s:?} is not a duration like 30d, 12h or 1h30m"))?;
        let unit = rest[digits..unit_end].trim();
        let secs_per = match unit {
            "d" | "day" | "days" => 86_400,
            "h" | "hour" | "hours" => 3600,
            "m" | "min" | "mins" => 60,
            "s" | "sec" | "secs" => 1,
            "ms" => {
                total += Duration::from_millis(n);
                rest = &rest[unit_end..];
                continue;
            }
            _ => return Err(format!("{s:?} is not a duration like 30d, 12h or 1h30m")),
        };
        total += Duration::from_secs(n.checked_mul(secs_per).ok_or_else(|| format!("{s:?} is too long"))?);
        rest = &rest[unit_end..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn policy_overrides_apply_on_top_of_the_preset() {
        let id: KeyringId = "acme/token".parse().expect("id");
        let c: Config = toml::from_str(
            "[keyrings.\"acme/token\"]\npreset = \"database\"\ngrace_period = \"0s\"\n\
             maintenance_window = { start = \"23:30\", duration = \"2h\" }\n",
        )
        .expect("parse");
        let p = c.keyring(&id).expect("listed").policy(&id).expect("policy");
        assert_eq!(p.interval, Policy::for_purpose(&Purpose::Database).interval);
        assert_eq!(p.grace_period, Duration::ZERO);
        assert_eq!(p.maintenance_window.map(|w| w.start), Some(Duration::from_secs(23 * 3600 + 1800)));
        let bad: Config = toml::from_str("[keyrings.\"acme/token\"]\npreset = \"weekly\"\n").expect("parse");
        assert!(bad.keyring(&id).expect("listed").policy(&id).is_err());
    }

    #[test]
    fn sources_need_a_keyring_and_columns() {
        let ok: SourceConfig = toml::from_str(
            "table = \"app.users\"\nkeyring = \"acme/token\"\ncolumns = [\"a\", { name = \"b\", form = \"text\" }]",
        )
        .expect("parse");
        assert_eq!(ok.table_spec().expect("spec").source_name(), "app.users");
        let none: SourceConfig = toml::from_str("table = \"users\"\ncolumns = [\"a\"]").expect("parse");
        assert!(none.table_spec().is_err());
        let empty: SourceConfig =
            toml::from_str("table = \"users\"\nkeyring = \"a/token\"\ncolumns = []").expect("parse");
        assert!(empty.table_spec().is_err());
    }
}

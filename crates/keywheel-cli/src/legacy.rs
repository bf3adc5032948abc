//! Legacy data in `[[sources]]` columns (issue #14): the `legacy` sub-table
//! of a column, checked when `keywheel.toml` is loaded, and the legacy
//! formats built from it (keys read from the environment or a file) when the
//! sources are opened.
//!
//! ```toml
//! [[sources]]
//! table = "public.users"
//! keyring = "acme/database"
//! columns = [
//!   { name = "email", form = "text", legacy = { format = ["fernet", "plaintext"], keys_env = "FERNET_KEYS",
//!                                               accept_plaintext_until = "2027-01-31T00:00:00Z" } },
//!   { name = "phone", form = "text", legacy = { format = "lockbox", lockbox_master_key_env = "LOCKBOX_MASTER_KEY" } },
//! ]
//! ```
//!
//! * `format`: `"fernet"`, `"lockbox"` or `"plaintext"`, or a list of them
//!   (at most one of fernet and lockbox per column).
//! * Fernet keys (urlsafe base64, the first encrypts, like Django's
//!   `FERNET_KEYS`) and Lockbox keys (64 hex digits, the first is the
//!   current one) come from `keys_env` (comma-separated) or `keys_file`
//!   (comma- or line-separated; a file its group or others can read is
//!   refused, like a master key file); Lockbox keys can instead be derived
//!   from `lockbox_master_key_env` (Rails' `LOCKBOX_MASTER_KEY`, for the
//!   table's name and the column's).
//! * `accept_plaintext_until` (UTC, `YYYY-MM-DDTHH:MM:SSZ`) is required with
//!   `"plaintext"`: from then on plaintext is a failure again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keywheel_core::{
    FernetFormat, Form, LegacyColumns, LegacyFormats, LockboxFormat, RecordSource, Timestamp, ValueLocation,
};
use serde::Deserialize;
use toml::Spanned;

use crate::error::CliError;

/// The `legacy` sub-table of a column, as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table { format = \"fernet\" | \"lockbox\" | \"plaintext\" (or a list), keys_env, keys_file, \
                 lockbox_master_key_env, accept_plaintext_until }"
)]
pub(crate) struct RawLegacy {
    format: Spanned<OneOrMany>,
    keys_env: Option<String>,
    keys_file: Option<PathBuf>,
    lockbox_master_key_env: Option<String>,
    accept_plaintext_until: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a format name or a list of format names")]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Where a column's legacy keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// An environment variable, comma-separated keys.
    Env(String),
    /// A file, comma- or line-separated keys.
    File(PathBuf),
    /// Lockbox keys derived from this environment variable's master key.
    LockboxMasterEnv(String),
}

impl KeySource {
    /// How to name it in messages (never the keys).
    pub(crate) fn describe(&self) -> String {
        match self {
            KeySource::Env(v) | KeySource::LockboxMasterEnv(v) => format!("${v}"),
            KeySource::File(p) => p.display().to_string(),
        }
    }
}

/// A column's legacy settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LegacyColumn {
    /// The table (without schema) and the column.
    pub(crate) table: String,
    pub(crate) column: String,
    pub(crate) form: Form,
    pub(crate) fernet: bool,
    pub(crate) lockbox: bool,
    pub(crate) plaintext_until: Option<Timestamp>,
    pub(crate) keys: Option<KeySource>,
}

/// Check a column's `legacy` sub-table; errors carry the byte offset to name the line.
pub(crate) fn check(
    raw: &Spanned<RawLegacy>,
    table: &str,
    column: &str,
    form: Form,
    base: &Path,
) -> Result<LegacyColumn, (usize, String)> {
    let here = raw.span().start;
    let raw = raw.get_ref();
    let names: Vec<&str> = match raw.format.get_ref() {
        OneOrMany::One(n) => vec![n.as_str()],
        OneOrMany::Many(ns) => ns.iter().map(String::as_str).collect(),
    };
    let at_format = raw.format.span().start;
    if names.is_empty() {
        return Err((at_format, format!("column {column}: legacy format is empty; name fernet, lockbox or plaintext")));
    }
    let (mut fernet, mut lockbox, mut plaintext) = (false, false, false);
    for name in names {
        match name {
            "fernet" => fernet = true,
            "lockbox" => lockbox = true,
            "plaintext" => plaintext = true,
            other => {
                return Err((
                    at_format,
                    format!("column {column}: legacy format is fernet, lockbox or plaintext, not {other:?}"),
                ));
            }
        }
    }
    if fernet && lockbox {
        return Err((
            at_format,
            format!("column {column}: one keyed legacy format per column (fernet or lockbox), plus plaintext"),
        ));
    }
    let keys = match (&raw.keys_env, &raw.keys_file, &raw.lockbox_master_key_env) {
        (None, None, None) => None,
        (Some(v), None, None) => Some(KeySource::Env(v.clone())),
        (None, Some(f), None) => Some(KeySource::File(if f.is_absolute() { f.clone() } else { base.join(f) })),
        (None, None, Some(v)) if lockbox => Some(KeySource::LockboxMasterEnv(v.clone())),
        (None, None, Some(_)) => {
            return Err((here, format!("column {column}: lockbox_master_key_env is for the lockbox format")));
        }
        _ => {
            return Err((
                here,
                format!("column {column}: give the legacy keys once: keys_env, keys_file or lockbox_master_key_env"),
            ));
        }
    };
    if (fernet || lockbox) && keys.is_none() {
        let what = if fernet { "fernet" } else { "lockbox" };
        return Err((
            here,
            format!(
                "column {column}: the {what} format needs its keys: keys_env = \"VAR\" or keys_file = \"…\"{}",
                if lockbox { " or lockbox_master_key_env = \"VAR\"" } else { "" }
            ),
        ));
    }
    if !(fernet || lockbox) && keys.is_some() {
        return Err((here, format!("column {column}: plaintext has no keys; remove the keys setting")));
    }
    let plaintext_until = match (&raw.accept_plaintext_until, plaintext) {
        (Some(t), true) => Some(
            parse_utc(t.get_ref())
                .map_err(|why| (t.span().start, format!("column {column}: accept_plaintext_until: {why}")))?,
        ),
        (None, true) => {
            return Err((
                here,
                format!(
                    "column {column}: plaintext needs an end date: accept_plaintext_until = \"YYYY-MM-DDTHH:MM:SSZ\" \
                     (after it plaintext is a failure again)"
                ),
            ));
        }
        (Some(t), false) => {
            return Err((
                t.span().start,
                format!("column {column}: accept_plaintext_until needs the plaintext format"),
            ));
        }
        (None, false) => None,
    };
    Ok(LegacyColumn {
        table: table.to_owned(),
        column: column.to_owned(),
        form,
        fernet,
        lockbox,
        plaintext_until,
        keys,
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) as a timestamp.
pub(crate) fn parse_utc(s: &str) -> Result<Timestamp, String> {
    let bad = || format!("{s:?} is not a UTC time like 2027-01-31T00:00:00Z");
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = &s[r];
        if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().map_err(|_| bad()) } else { Err(bad()) }
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month[(m - 1) as usize] || hh > 23 || mm > 59 || ss > 59 {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(Timestamp::from_millis((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000))
}

/// Keys from their source, split on commas and newlines; never in errors.
fn read_keys(source: &KeySource) -> Result<Vec<zeroize::Zeroizing<String>>, CliError> {
    let text = zeroize::Zeroizing::new(match source {
        KeySource::Env(var) | KeySource::LockboxMasterEnv(var) => std::env::var(var).map_err(|_| {
            CliError::error(format!("the legacy keys variable ${var} is not set"))
                .with_hint("export it before running keywheel, or use keys_file in the column's legacy settings")
        })?,
        KeySource::File(path) => {
            use std::os::unix::fs::PermissionsExt as _;
            let meta = std::fs::metadata(path).map_err(|e| {
                CliError::error(format!("cannot read legacy keys file {}: {e}", path.display()))
                    .with_hint("check keys_file in the column's legacy settings in keywheel.toml")
            })?;
            let mode = meta.permissions().mode() & 0o7777;
            if let Some(who) = keywheel_file::access_beyond_owner(mode) {
                return Err(CliError::error(format!(
                    "legacy keys file {} has permissions {mode:04o}, which give {who} access; keywheel refuses to use it",
                    path.display()
                ))
                .with_hint(format!("chmod 600 {}", path.display())));
            }
            std::fs::read_to_string(path)
                .map_err(|e| CliError::error(format!("cannot read legacy keys file {}: {e}", path.display())))?
        }
    });
    let keys: Vec<zeroize::Zeroizing<String>> = text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| zeroize::Zeroizing::new(k.to_owned()))
        .collect();
    if keys.is_empty() {
        return Err(CliError::error(format!("no legacy keys in {}", source.describe())));
    }
    Ok(keys)
}

/// The legacy formats of a column, with their keys.
pub(crate) fn formats(c: &LegacyColumn) -> Result<LegacyFormats, CliError> {
    let mut formats = LegacyFormats::new().stored_as(c.form);
    let bad_key = |e: keywheel_core::Error, source: &KeySource| {
        CliError::error(format!("legacy keys of column {}.{} in {}: {e}", c.table, c.column, source.describe()))
    };
    if let Some(source) = &c.keys {
        let keys = read_keys(source)?;
        if c.fernet {
            let fernet = FernetFormat::new(keys.iter().map(|k| k.as_bytes())).map_err(|e| bad_key(e, source))?;
            formats = formats.with(fernet);
        } else if c.lockbox {
            let mut lockbox = match source {
                KeySource::LockboxMasterEnv(_) => LockboxFormat::from_master_key(&keys[0], &c.table, &c.column),
                _ => LockboxFormat::new(&keys[0]),
            }
            .map_err(|e| bad_key(e, source))?;
            for k in &keys[1..] {
                lockbox = match source {
                    KeySource::LockboxMasterEnv(_) => lockbox.previous_master_key(k, &c.table, &c.column),
                    _ => lockbox.previous_key(k),
                }
                .map_err(|e| bad_key(e, source))?;
            }
            if c.form == Form::Binary {
                lockbox = lockbox.binary();
            }
            formats = formats.with(lockbox);
        }
    }
    if let Some(until) = c.plaintext_until {
        formats = formats.accept_plaintext_until(until);
    }
    Ok(formats)
}

/// `source` with the legacy formats of its columns declared (unchanged
/// without legacy settings).
pub(crate) fn wrap(source: Arc<dyn RecordSource>, columns: &[LegacyColumn]) -> Result<Arc<dyn RecordSource>, CliError> {
    if columns.is_empty() {
        return Ok(source);
    }
    let mut wrapped = LegacyColumns::new(source);
    for c in columns {
        wrapped = wrapped.column(c.column.clone(), formats(c)?);
    }
    Ok(Arc::new(wrapped))
}

/// Legacy values per table and column of the configured legacy columns (a
/// scan of those sources), for the census's note on what can be forgotten.
pub(crate) async fn per_column(
    sources: &[Arc<dyn RecordSource>],
) -> Result<std::collections::BTreeMap<(String, String), u64>, CliError> {
    let mut counts = std::collections::BTreeMap::new();
    for source in sources {
        let mut request = keywheel_core::ScanRequest::all(1024);
        loop {
            let values = source.scan(&request).await?;
            let Some(last) = values.last() else { break };
            request.after = Some(last.cursor.clone());
            for v in &values {
                let Some(formats) = source.legacy_formats(&v.cursor) else { continue };
                let Some(ValueLocation { table, column, .. }) = source.locate(&v.cursor) else { continue };
                let n = counts.entry((table, column)).or_insert(0u64);
                if formats.recognize(&v.value).is_some() {
                    *n += 1;
                }
            }
        }
    }
    Ok(counts)
}

/// `fernet 25,000, plaintext 3`.
pub(crate) fn counts_text(counts: &std::collections::BTreeMap<String, u64>) -> String {
    counts.iter().map(|(f, n)| format!("{f} {}", crate::output::count(*n))).collect::<Vec<_>>().join(", ")
}

/// What the census says about legacy data, when some column has legacy settings.
#[derive(Debug, serde::Serialize)]
pub(crate) struct LegacyReport {
    /// Legacy values left, per format.
    pub(crate) legacy: std::collections::BTreeMap<String, u64>,
    /// Columns with legacy settings and no legacy value left (`table.column`):
    /// their legacy settings and key material can go.
    pub(crate) done: Vec<String>,
}

impl LegacyReport {
    /// The census of the legacy columns (`None` when no column has legacy settings).
    pub(crate) async fn of(
        settings: &crate::store::Settings,
        sources: &[Arc<dyn RecordSource>],
        keyring: Option<&keywheel_core::KeyringId>,
    ) -> Result<Option<LegacyReport>, CliError> {
        if settings.config.sources.iter().all(|s| s.legacy.is_empty()) {
            return Ok(None);
        }
        let census = keywheel_core::legacy_census_of(sources, keyring).await?;
        let done = per_column(sources)
            .await?
            .into_iter()
            .filter(|(_, n)| *n == 0)
            .map(|((t, c), _)| format!("{t}.{c}"))
            .collect();
        Ok(Some(LegacyReport { legacy: census.legacy, done }))
    }

    /// The text output.
    pub(crate) fn print(&self) {
        if !self.legacy.is_empty() {
            crate::output::outln!(
                "Legacy values: {} (`keywheel rotate` migrates them; `keywheel rotate --dry-run` checks them first).",
                counts_text(&self.legacy)
            );
        }
        for column in &self.done {
            crate::output::outln!(
                "No legacy value is left in {column}: remove its legacy settings from keywheel.toml; \
                 the legacy key material (Fernet or Lockbox keys) can now be forgotten."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_parse_exactly() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Ok(Timestamp::EPOCH));
        assert_eq!(parse_utc("2027-01-31T00:00:00Z").map(|t| t.to_string()), Ok("2027-01-31T00:00:00.000Z".into()));
        assert_eq!(parse_utc("2024-02-29T23:59:59Z").map(|t| t.to_string()), Ok("2024-02-29T23:59:59.000Z".into()));
        for bad in [
            "2027-01-31",
            "2027-02-29T00:00:00Z",
            "2027-01-31T24:00:00Z",
            "2027-01-31 00:00:00Z",
            "+027-01-31T00:00:00Z",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }
}

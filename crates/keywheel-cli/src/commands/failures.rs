//! `failures`: the values a keyring's last rotation could not decrypt, by
//! table, column name and primary key. They block the retirement of the
//! version they are on. Read-only: needs no master key.

use keywheel_core::{JobFailure, KeyVersion};
use keywheel_postgres::TableSpec;
use serde::Serialize;
use serde_json::json;

use crate::cli::FailuresArgs;
use crate::error::{CliError, OK, PROBLEMS};
use crate::output::{Table, count, out, outln, print_json};
use crate::reader::{Reader, UNAUTHENTICATED_NOTE};
use crate::store::Settings;

use super::status::source_specs;
use super::{parse_keyring, plural};

/// One failed value, located.
#[derive(Debug, Serialize)]
pub(super) struct FailedValue {
    /// The table (the source's name when the table is not known).
    table: String,
    /// The column's name, when known.
    column: Option<String>,
    /// The column's index in the source, when only that is known (a job
    /// recorded before names were kept, whose source is no longer configured).
    column_index: Option<usize>,
    /// The row's primary key (the raw cursor when it cannot be read).
    key: String,
    /// The version the value's header names, if it parses.
    version: Option<KeyVersion>,
    /// Why it failed.
    reason: String,
    /// The source and cursor as the job recorded them.
    source: String,
    cursor: String,
}

impl FailedValue {
    /// Where `f` is: as the job recorded it, else as the configured source
    /// locates its cursor (jobs recorded before locations were kept), else
    /// the cursor as stored (`column index:key`).
    pub(super) fn of(f: &JobFailure, specs: &[TableSpec]) -> Self {
        let located = f
            .location
            .clone()
            .or_else(|| specs.iter().find(|s| s.source_name() == f.source).and_then(|s| s.locate(&f.cursor)));
        let (table, column, column_index, key) = match located {
            Some(l) => (l.table, Some(l.column), None, l.key),
            None => match f.cursor.0.split_once(':').and_then(|(i, key)| Some((i.parse::<usize>().ok()?, key))) {
                Some((index, key)) => (f.source.clone(), None, Some(index), key.to_owned()),
                None => (f.source.clone(), None, None, f.cursor.0.clone()),
            },
        };
        FailedValue {
            table,
            column,
            column_index,
            key,
            version: f.version,
            reason: f.reason.clone(),
            source: f.source.clone(),
            cursor: f.cursor.0.clone(),
        }
    }

    /// The column as shown: its name, else `#index`, else `-`.
    pub(super) fn column_text(&self) -> String {
        match (&self.column, self.column_index) {
            (Some(name), _) => name.clone(),
            (None, Some(i)) => format!("#{i}"),
            (None, None) => "-".into(),
        }
    }

    /// `table.column [key]`, as one line.
    pub(super) fn place(&self) -> String {
        format!("{}.{} [{}]", self.table, self.column_text(), self.key)
    }
}

pub(super) async fn failures(settings: &Settings, args: &FailuresArgs, json: bool) -> Result<u8, CliError> {
    let id = parse_keyring(&args.keyring)?;
    let specs = source_specs(settings);
    let reader = Reader::open(settings).await?;
    reader.record(&id).await?;
    // Outstanding failures are the last job's: a later rotation meets every
    // earlier failure again (it scans every value not on its target).
    let job = reader.store.list_jobs(&id).await?.pop();
    let listed: Vec<FailedValue> =
        job.as_ref().map(|j| j.failures.iter().map(|f| FailedValue::of(f, &specs)).collect()).unwrap_or_default();
    let not_listed = job.as_ref().map_or(0, |j| j.failures_truncated);
    let outstanding = listed.len() as u64 + not_listed;
    if json {
        print_json(&json!({
            "keyring": id,
            "job_id": job.as_ref().map(|j| &j.id),
            "job_phase": job.as_ref().map(|j| j.phase),
            "outstanding": outstanding,
            "not_listed": not_listed,
            "failures": listed,
            "authenticated": reader.authenticated,
        }))?;
    } else if outstanding == 0 {
        outln!("No outstanding failures for {id}.");
    } else {
        let job_id = job.as_ref().map_or("-", |j| j.id.as_str());
        outln!(
            "{} of {id} could not be decrypted in its last rotation (job {job_id}); they block the \
             retirement of the version they are on:",
            plural(outstanding, "value")
        );
        let mut table = Table::new(&["TABLE", "COLUMN", "KEY", "VERSION", "REASON"]);
        for f in &listed {
            let version = f.version.map_or("?".into(), |v| v.to_string());
            table.row(vec![f.table.clone(), f.column_text(), f.key.clone(), version, f.reason.clone()]);
        }
        out!("{table}");
        if not_listed > 0 {
            outln!("… and {} more, counted but not listed.", count(not_listed));
        }
        outln!(
            "Look at a value with `keywheel inspect VALUE`; repair or restore it, then `keywheel rotate {id}` \
             rewrites it. Retiring its version anyway (--force --reason) leaves it unreadable for good."
        );
    }
    if !json && !reader.authenticated {
        outln!("{UNAUTHENTICATED_NOTE}");
    }
    Ok(if outstanding > 0 { PROBLEMS } else { OK })
}

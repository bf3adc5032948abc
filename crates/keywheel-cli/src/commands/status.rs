//! `status`, `census`, `verify`: what the store and the record sources hold.

use keywheel_core::{Census, KeyringId, Rotator, Scheduler, SchedulerConfig, StatusReport, Warning};
use serde_json::json;

use crate::cli::{KeyringFilter, StatusArgs};
use crate::error::{CliError, OK, PROBLEMS};
use crate::output::{Table, count, human_duration, print_json};
use crate::store::{self, Opened, Settings};

use super::{parse_keyring, version_list};

pub(super) fn warning_text(w: &Warning) -> String {
    match w {
        Warning::Approaching { due_at } => format!("rotation due {due_at}"),
        Warning::Overdue { ratio } => format!("OVERDUE ({:.0}% of interval)", ratio * 100.0),
        Warning::GraceExpired { version, values } => match values {
            Some(n) => format!("v{version} past grace with {} values", count(*n)),
            None => format!("v{version} past grace (run a census)"),
        },
        Warning::FailuresPending { failed, .. } => format!("{} values failed to decrypt", count(*failed)),
        Warning::NoActiveKey => "no active key".into(),
        Warning::UsageNearLimit { encryptions, limit } => {
            format!("usage {}/{} encryptions", count(*encryptions), count(*limit))
        }
        Warning::SchedulerPaused => "scheduler paused".into(),
        Warning::NoSourceCovers => "no [[sources]] cover it: old versions cannot be retired".into(),
        Warning::StalledJob { job_id, .. } => format!("job {job_id} stalled (lease expired): run `keywheel resume`"),
        Warning::CompromisedNotRetired { version } => format!("compromised v{version} not retired yet"),
    }
}

pub(super) fn print_status(report: &StatusReport) {
    let mut table =
        Table::new(&["KEYRING", "ACTIVE", "AGE", "NEXT ROTATION", "DEPRECATED", "RETIRED", "LAST JOB", "WARNINGS"]);
    for k in &report.keyrings {
        let last = k.last_job.as_ref().map_or("-".into(), |j| {
            let phase = serde_json::to_value(j.phase).ok().and_then(|v| v.as_str().map(str::to_owned));
            format!(
                "{} v{}→v{} ({} rewritten)",
                phase.unwrap_or_else(|| format!("{:?}", j.phase)),
                j.from.unwrap_or(0),
                j.to.unwrap_or(0),
                count(j.rewritten)
            )
        });
        let deprecated = k
            .versions
            .deprecated
            .iter()
            .map(|v| match k.census.as_ref().map(|c| c.get(v).copied().unwrap_or(0)) {
                Some(n) => format!("v{v} ({} values)", count(n)),
                None => format!("v{v}"),
            })
            .collect::<Vec<_>>();
        table.row(vec![
            k.keyring.to_string(),
            k.current_version.map_or("-".into(), |v| format!("v{v}")),
            k.current_age_secs.map_or("-".into(), |s| human_duration(std::time::Duration::from_secs(s))),
            k.next_due.map_or("-".into(), |t| t.to_string()),
            if deprecated.is_empty() { "-".into() } else { deprecated.join(", ") },
            version_list(&k.versions.retired),
            last,
            if k.warnings.is_empty() {
                "-".into()
            } else {
                k.warnings.iter().map(warning_text).collect::<Vec<_>>().join("; ")
            },
        ]);
    }
    if table.is_empty() {
        println!("No keyrings yet. Create one with `keywheel keyring create TENANT/PURPOSE`.");
    } else {
        print!("{table}");
        super::keyring::print_lifecycle_notes(report);
    }
}

pub(super) async fn status(settings: &Settings, args: &StatusArgs, json: bool) -> Result<u8, CliError> {
    let opened = store::open(settings).await?;
    if args.census {
        require_sources(settings, "count values")?;
    }
    let rotator = if args.census { store::rotator(settings, &opened).await? } else { Rotator::new(opened.kw.clone())? };
    let report = Scheduler::new(rotator, SchedulerConfig::default()).status(args.census).await?;
    if json {
        print_json(&report)?;
    } else {
        print_status(&report);
    }
    Ok(OK)
}

/// Commands that read records need the `[[sources]]` of keywheel.toml.
pub(super) fn require_sources(settings: &Settings, what: &str) -> Result<(), CliError> {
    if settings.config.sources.is_empty() {
        return Err(CliError::usage(format!("no record sources are configured, so keywheel cannot {what}")).with_hint(
            "list the tables holding encrypted values as [[sources]] in keywheel.toml (see the README's operator section)",
        ));
    }
    Ok(())
}

pub(super) async fn census_of(
    settings: &Settings,
    opened: &Opened,
    filter: Option<&KeyringId>,
) -> Result<Census, CliError> {
    require_sources(settings, "count values")?;
    let rotator = store::rotator(settings, opened).await?;
    Ok(rotator.census(filter).await?)
}

pub(super) async fn census(settings: &Settings, args: &KeyringFilter, json: bool) -> Result<u8, CliError> {
    let filter = args.keyring.as_deref().map(parse_keyring).transpose()?;
    let opened = store::open(settings).await?;
    let census = census_of(settings, &opened, filter.as_ref()).await?;
    let mut table = Table::new(&["KEYRING", "VERSION", "STATE", "VALUES"]);
    let mut rows = Vec::new();
    for (id, versions) in &census.counts {
        let record = opened.kw.record(id).await.ok();
        for (v, n) in versions {
            let state = record.as_ref().and_then(|r| r.version(*v)).map(|r| r.state);
            let state_text = state.map_or("unknown".into(), |s| s.to_string());
            table.row(vec![id.to_string(), v.to_string(), state_text, count(*n)]);
            rows.push(json!({ "keyring": id, "version": v, "state": state, "values": n }));
        }
    }
    if json {
        print_json(&json!({ "counts": rows, "unparseable": census.unparseable }))?;
    } else {
        if table.is_empty() {
            println!("No encrypted values found.");
        } else {
            print!("{table}");
        }
        if census.unparseable > 0 {
            println!("{} values are not keywheel values (see `keywheel inspect`).", count(census.unparseable));
        }
    }
    Ok(if census.unparseable > 0 { PROBLEMS } else { OK })
}

pub(super) async fn verify(settings: &Settings, args: &KeyringFilter, json: bool) -> Result<u8, CliError> {
    let filter = args.keyring.as_deref().map(parse_keyring).transpose()?;
    require_sources(settings, "check values")?;
    let opened = store::open(settings).await?;
    let rotator = store::rotator(settings, &opened).await?;
    let ids = match filter {
        Some(id) => vec![id],
        None => opened.kw.list_keyrings().await?,
    };
    let mut reports = Vec::new();
    for id in &ids {
        reports.push(rotator.verify(id).await?);
    }
    let ok = reports.iter().all(|r| r.ok);
    if json {
        print_json(&json!({ "ok": ok, "keyrings": reports }))?;
    } else {
        let mut table =
            Table::new(&["KEYRING", "ACTIVE", "ON ACTIVE", "ON OLDER", "ON RETIRED", "UNPARSEABLE", "RESULT"]);
        for r in &reports {
            let on_active = r.active.and_then(|a| r.census.get(&a)).copied().unwrap_or(0);
            table.row(vec![
                r.keyring.to_string(),
                r.active.map_or("-".into(), |v| v.to_string()),
                count(on_active),
                count(r.not_on_active),
                count(r.on_retired),
                count(r.unparseable),
                if r.ok { "ok".into() } else { "VALUES LEFT BEHIND".into() },
            ]);
        }
        print!("{table}");
        if !ok {
            println!("Some values are not on the active version: finish with `keywheel resume` or `keywheel rotate`.");
        }
    }
    Ok(if ok { OK } else { PROBLEMS })
}

//! `status`, `census`, `verify`: what the store and the record sources hold.
//! Read-only: they need no master key (see [`crate::reader`]).

use std::collections::{BTreeMap, BTreeSet};

use keywheel_core::{
    Census, Clock as _, KeyState, KeyringId, SchedulerTotals, StatusReport, SystemClock, VerifyReport, Warning,
    census_of, status_report,
};
use keywheel_postgres::TableSpec;
use serde_json::json;

use crate::cli::{KeyringFilter, StatusArgs};
use crate::error::{CliError, OK, PROBLEMS};
use crate::output::{StatusJson, Table, count, human_duration, out, outln, print_json};
use crate::reader::{Damage, Reader, UNAUTHENTICATED_NOTE};
use crate::store::{self, Settings};

use super::matched::matched_keyrings;
use super::{parse_keyring, plural, version_list};

pub(super) fn warning_text(w: &Warning) -> String {
    match w {
        Warning::Approaching { due_at } => format!("rotation due {due_at}"),
        Warning::Overdue { ratio } => format!("OVERDUE ({:.0}% of interval)", ratio * 100.0),
        Warning::GraceExpired { version, values } => match values {
            Some(n) => format!("v{version} past grace with {} values", count(*n)),
            None => format!("v{version} past grace (run a census)"),
        },
        Warning::FailuresPending { failed, .. } => format!("{} failed to decrypt", plural(*failed, "value")),
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
        outln!("No keyrings yet. Create one with `keywheel keyring create TENANT/PURPOSE`.");
    } else {
        out!("{table}");
        super::keyring::print_lifecycle_notes(report);
    }
}

/// Print what the store holds that cannot be used, and the note on
/// unauthenticated reads.
pub(super) fn print_damage(damage: &[Damage], authenticated: bool) {
    if !damage.is_empty() {
        outln!("DAMAGED (only what is listed here is unusable; the other keyrings work):");
        for d in damage {
            let what = match (&d.file, &d.keyring) {
                (Some(file), _) => format!("{} file {}", d.kind, file.display()),
                (None, Some(k)) => format!("{k} {}", d.kind),
                (None, None) => d.kind.clone(),
            };
            // The problem names the file again; say it once.
            let problem = match &d.file {
                Some(file) => d.problem.replacen(&format!("{}: ", file.display()), "", 1),
                None => d.problem.clone(),
            };
            outln!("  {what}: {problem}");
            if let Some(fix) = &d.fix {
                outln!("    fix: {fix}");
            }
        }
    }
    if !authenticated {
        outln!("{UNAUTHENTICATED_NOTE}");
    }
}

/// The table descriptions of the configured sources (no database needed).
pub(super) fn source_specs(settings: &Settings) -> Vec<TableSpec> {
    settings.config.sources.iter().map(|s| s.spec.clone()).collect()
}

pub(super) async fn status(settings: &Settings, args: &StatusArgs, json: bool) -> Result<u8, CliError> {
    let reader = Reader::open(settings).await?;
    let specs = source_specs(settings);
    let sources = if args.census {
        require_sources(settings, "count values")?;
        store::sources_on(settings, reader.pool.as_ref()).await?
    } else {
        Vec::new()
    };
    let mut damage = reader.damaged_files()?;
    let (mut records, mut policies, mut jobs, mut leases) =
        (Vec::new(), BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let listed = reader.store.list_keyrings().await?;
    for id in listed.clone() {
        // Each read on its own: a damaged document is reported, the rest still shown.
        let record = match reader.store.load_keyring(&id).await {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(e) => {
                let d = Reader::damage_of(&id, "keyring", e, &damage)?;
                damage.extend(d);
                continue;
            }
        };
        match reader.store.load_policy(&id).await {
            Ok(policy) => {
                policies.insert(id.clone(), policy.unwrap_or_else(|| keywheel_core::Policy::for_purpose(id.purpose())));
            }
            Err(e) => {
                let d = Reader::damage_of(&id, "policy", e, &damage)?;
                damage.extend(d);
            }
        }
        match reader.store.list_jobs(&id).await {
            Ok(mut list) => {
                if let Some(last) = list.pop() {
                    jobs.insert(id.clone(), last);
                }
            }
            Err(e) => {
                let d = Reader::damage_of(&id, "job", e, &damage)?;
                damage.extend(d);
            }
        }
        match reader.store.load_lease(&id).await {
            Ok(lease) => {
                leases.extend(lease.map(|l| (id.clone(), l)));
            }
            Err(e) => {
                let d = Reader::damage_of(&id, "lease", e, &damage)?;
                damage.extend(d);
            }
        }
        records.push(record);
    }
    let mut census = BTreeMap::new();
    if args.census {
        let counted = census_of(&sources, None).await?;
        for r in &records {
            census.insert(r.id.clone(), counted.counts.get(&r.id).cloned().unwrap_or_default());
        }
    }
    let uncovered: BTreeSet<KeyringId> =
        records.iter().filter(|r| !specs.iter().any(|s| s.covers(&r.id))).map(|r| r.id.clone()).collect();
    let mut report = status_report(
        SystemClock.now(),
        &records,
        &policies,
        &jobs,
        &leases,
        &uncovered,
        &census,
        false,
        SchedulerTotals::default(),
    );
    // `--all`: the keyrings keywheel.toml names, and which of them are missing.
    let not_created = if args.all {
        let matched =
            matched_keyrings(settings, &listed, reader.pool.as_ref(), "`status --all` has nothing to show").await?;
        report.keyrings.retain(|k| matched.iter().any(|m| m.id == k.keyring));
        Some(matched.into_iter().filter(|m| !m.exists).map(|m| m.id).collect::<Vec<_>>())
    } else {
        None
    };
    if json {
        let mut value = serde_json::to_value(StatusJson::new(&report, not_created.as_deref()))
            .map_err(|e| CliError::error(format!("cannot encode: {e}")))?;
        value["authenticated"] = json!(reader.authenticated);
        value["damaged"] = json!(damage);
        print_json(&value)?;
    } else {
        // With only damage to show, the "no keyrings yet" line would mislead.
        if !records.is_empty() || damage.is_empty() {
            print_status(&report);
        }
        if let Some(ids) = not_created.filter(|ids| !ids.is_empty()) {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            outln!("Not created yet (run `keywheel keyring apply`): {}", ids.join(", "));
        }
        print_damage(&damage, reader.authenticated);
    }
    Ok(if damage.is_empty() { OK } else { PROBLEMS })
}

/// Commands that read records need the `[[sources]]` of keywheel.toml.
pub(super) fn require_sources(settings: &Settings, what: &str) -> Result<(), CliError> {
    if settings.config.sources.is_empty() {
        return Err(CliError::error(format!("no record sources are configured, so keywheel cannot {what}")).with_hint(
            "list the tables holding encrypted values as [[sources]] in keywheel.toml (see the README's operator section)",
        ));
    }
    Ok(())
}

pub(super) async fn census(settings: &Settings, args: &KeyringFilter, json: bool) -> Result<u8, CliError> {
    let filter = args.keyring.as_deref().map(parse_keyring).transpose()?;
    require_sources(settings, "count values")?;
    let reader = Reader::open(settings).await?;
    let sources = store::sources_on(settings, reader.pool.as_ref()).await?;
    let census: Census = census_of(&sources, filter.as_ref()).await?;
    let legacy = crate::legacy::LegacyReport::of(settings, &sources, filter.as_ref()).await?;
    // Blind index tags count as values (they need their version's key too);
    // a column shows how many of them are tags when there are any.
    let tags = !census.index_tags.is_empty();
    let headers: &[&str] = if tags {
        &["KEYRING", "VERSION", "STATE", "VALUES", "OF WHICH INDEX TAGS"]
    } else {
        &["KEYRING", "VERSION", "STATE", "VALUES"]
    };
    let mut table = Table::new(headers);
    let mut rows = Vec::new();
    for (id, versions) in &census.counts {
        let record = reader.store.load_keyring(id).await.ok().flatten();
        for (v, n) in versions {
            let state = record.as_ref().and_then(|r| r.version(*v)).map(|r| r.state);
            let state_text = state.map_or("unknown".into(), |s| s.to_string());
            let index_tags = census.index_tag_count(id, *v);
            let mut row = vec![id.to_string(), v.to_string(), state_text, count(*n)];
            if tags {
                row.push(count(index_tags));
            }
            table.row(row);
            rows.push(json!({ "keyring": id, "version": v, "state": state, "values": n, "index_tags": index_tags }));
        }
    }
    if json {
        print_json(
            &json!({ "counts": rows, "unparseable": census.unparseable, "legacy": legacy, "authenticated": reader.authenticated }),
        )?;
    } else {
        if table.is_empty() {
            outln!("No encrypted values found.");
        } else {
            out!("{table}");
        }
        if census.unparseable > 0 {
            outln!("{} values are not keywheel values (see `keywheel inspect`).", count(census.unparseable));
        }
        if let Some(legacy) = &legacy {
            legacy.print();
        }
        if !reader.authenticated {
            outln!("{UNAUTHENTICATED_NOTE}");
        }
    }
    Ok(if census.unparseable > 0 { PROBLEMS } else { OK })
}

/// What is wrong with one keyring's values, in words, and the fix for each.
/// What to do about each kind of value `r` found off the active version;
/// `erased`: the keyring was erased (its values are meant to be unreadable).
fn verify_advice(r: &VerifyReport, retired: &[String], erased: bool) -> Vec<String> {
    let k = &r.keyring;
    let mut advice = Vec::new();
    if r.on_older > 0 {
        advice.push(format!(
            "{}: {} values on older versions: re-encrypt them with `keywheel rotate {k}` \
             (or finish an interrupted rotation with `keywheel resume {k}`).",
            k,
            count(r.on_older)
        ));
    }
    if r.on_unknown > 0 {
        let versions = r.unknown_versions.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        advice.push(format!(
            "{k}: {} values are on versions this keyring never had ({versions}): they were not written with \
             this keyring (another system, another store, or a store restored from an older backup), and \
             `keywheel rotate` cannot move them. Check the source's keyring mapping in keywheel.toml \
             (keyring, tenant_column), import the key they were written with, or restore the store that holds it.",
            count(r.on_unknown)
        ));
    }
    if r.on_disabled > 0 && erased {
        advice.push(format!(
            "{k}: {} values are on the disabled versions of this erased keyring: they are meant to be \
             unreadable. Inside the quarantine `keywheel keyring enable {k} --version N` brings a version \
             back for reading (the keyring never encrypts again).",
            count(r.on_disabled)
        ));
    } else if r.on_disabled > 0 {
        let versions = r.disabled_versions.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        advice.push(format!(
            "{k}: {} values are on disabled versions ({versions}): they cannot be decrypted while the version \
             is disabled. Inside its quarantine, `keywheel keyring enable {k} --version N` brings it back; then \
             `keywheel rotate {k}` moves them to the active version (see `keywheel status` for when each \
             quarantine ends).",
            count(r.on_disabled)
        ));
    }
    if !r.legacy.is_empty() {
        advice.push(format!(
            "{k}: legacy values ({}): `keywheel rotate {k}` migrates them to keywheel values.",
            crate::legacy::counts_text(&r.legacy)
        ));
    }
    if r.on_retired > 0 {
        advice.push(format!(
            "{k}: {} values are on retired versions ({}): their key is destroyed and they cannot be decrypted \
             (data loss). Restore the version's key from a backup of the store if you have one; otherwise \
             write those values again from their source of truth.",
            count(r.on_retired),
            retired.join(", ")
        ));
    }
    advice
}

pub(super) async fn verify(settings: &Settings, args: &KeyringFilter, json: bool) -> Result<u8, CliError> {
    let filter = args.keyring.as_deref().map(parse_keyring).transpose()?;
    require_sources(settings, "check values")?;
    let reader = Reader::open(settings).await?;
    let sources = store::sources_on(settings, reader.pool.as_ref()).await?;
    let mut damage = if filter.is_some() { Vec::new() } else { reader.damaged_files()? };
    let ids = match &filter {
        Some(id) => vec![id.clone()],
        None => reader.store.list_keyrings().await?,
    };
    let mut reports = Vec::new();
    let mut advice = Vec::new();
    let mut unparseable = 0;
    for id in &ids {
        let record = match (reader.record(id).await, &filter) {
            (Ok(record), _) => record,
            (Err(e), Some(_)) => return Err(e),
            // One damaged keyring does not stop the check of the others.
            (Err(e), None) => {
                damage.push(Damage {
                    keyring: Some(id.clone()),
                    kind: "keyring".into(),
                    file: None,
                    problem: e.message,
                    fix: e.hint,
                });
                continue;
            }
        };
        let census = census_of(&sources, Some(id)).await?;
        let mut report =
            VerifyReport::new(&record, census.counts.get(id).cloned().unwrap_or_default(), census.unparseable);
        if census.unparseable > 0 {
            report = report.with_legacy(&keywheel_core::legacy_census_of(&sources, Some(id)).await?);
        }
        unparseable = unparseable.max(report.unparseable);
        let retired: Vec<String> = report
            .census
            .keys()
            .filter(|v| record.version(**v).is_some_and(|r| r.state == KeyState::Retired))
            .map(ToString::to_string)
            .collect();
        advice.extend(verify_advice(&report, &retired, record.erased_at.is_some()));
        reports.push(report);
    }
    let ok = reports.iter().all(|r| r.ok) && damage.is_empty();
    if json {
        print_json(&json!({
            "ok": ok,
            "keyrings": reports,
            "damaged": damage,
            "authenticated": reader.authenticated,
        }))?;
    } else {
        let mut table = Table::new(&[
            "KEYRING",
            "ACTIVE",
            "ON ACTIVE",
            "ON OLDER",
            "UNKNOWN VERSION",
            "ON DISABLED",
            "ON RETIRED",
            "UNPARSEABLE",
            "RESULT",
        ]);
        for r in &reports {
            let on_active = r.active.and_then(|a| r.census.get(&a)).copied().unwrap_or(0);
            let mut result = Vec::new();
            if r.on_older > 0 {
                result.push("VALUES LEFT BEHIND");
            }
            if r.on_unknown > 0 {
                result.push("FOREIGN VALUES");
            }
            if r.on_disabled > 0 {
                result.push("VALUES ON DISABLED KEYS");
            }
            if r.on_retired > 0 {
                result.push("UNREADABLE VALUES");
            }
            if r.unparseable > 0 {
                result.push("NOT KEYWHEEL VALUES");
            }
            if !r.legacy.is_empty() {
                result.push("LEGACY VALUES");
            }
            table.row(vec![
                r.keyring.to_string(),
                r.active.map_or("-".into(), |v| v.to_string()),
                count(on_active),
                count(r.on_older),
                count(r.on_unknown),
                count(r.on_disabled),
                count(r.on_retired),
                count(r.unparseable),
                if result.is_empty() { "ok".into() } else { result.join(", ") },
            ]);
        }
        if !table.is_empty() {
            out!("{table}");
        }
        for line in &advice {
            outln!("{line}");
        }
        if unparseable > 0 {
            outln!("{} values are not keywheel values (see `keywheel inspect`).", count(unparseable));
        }
        print_damage(&damage, reader.authenticated);
    }
    Ok(if ok { OK } else { PROBLEMS })
}

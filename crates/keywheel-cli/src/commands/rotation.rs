//! `rotate`, `resume`, `rollback`, `retire`: the rotation runbook.

use keywheel_core::{CancelToken, JobPhase, KeyState, KeyVersion, KeyringId, RetireOptions, RotationReport, Rotator};
use serde_json::json;

use crate::cli::{ResumeArgs, RetireArgs, RollbackArgs, RotateArgs};
use crate::error::{CliError, INTERRUPTED, OK, PROBLEMS, worst};
use crate::output::{Reporter, RollbackJson, RotationJson, count, human_duration, outln, print_json, time};
use crate::store::{self, Opened, Settings};

use super::failures::FailedValue;
use super::matched::matched_keyrings;
use super::{cancel_on_signal, parse_keyring, rotate_options, warn_policy_drift};

/// A job phase as the JSON output names it (`reencrypt`, `wait_activation`, …).
fn phase_text(phase: JobPhase) -> String {
    let name = serde_json::to_value(phase).ok().and_then(|v| match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(o) => o.keys().next().cloned(),
        _ => None,
    });
    name.unwrap_or_else(|| format!("{phase:?}"))
}

pub(super) fn print_rotation(report: &RotationReport) {
    let from = report.from.map_or("-".into(), |v| v.to_string());
    let to = report.to.map_or("-".into(), |v| v.to_string());
    let c = &report.counts;
    if report.dry_run {
        outln!("Dry run of {} {from} → {to}: nothing was written.", report.keyring);
    } else {
        outln!(
            "Rotation of {} {from} → {to}: {} (job {}).",
            report.keyring,
            phase_text(report.phase),
            report.job_id.as_deref().unwrap_or("-")
        );
    }
    outln!(
        "  processed {}, {} {}, skipped {} (changed by the application meanwhile), failed {}, in {}",
        count(c.processed),
        if report.dry_run { "would rewrite" } else { "rewritten" },
        count(c.rewritten),
        count(c.skipped),
        count(c.failed),
        human_duration(report.duration)
    );
    if !report.legacy.is_empty() {
        outln!(
            "  legacy values {}: {}",
            if report.dry_run { "it would migrate" } else { "migrated" },
            crate::legacy::counts_text(&report.legacy)
        );
    }
    if report.remaining > 0 {
        outln!("  {} values are still on older versions.", count(report.remaining));
    }
    for f in report.failures.iter().take(20) {
        let version = f.version.map_or("?".into(), |v| v.to_string());
        outln!("  FAILED {} ({version}): {}", FailedValue::of(f, &[]).place(), f.reason);
    }
    if report.failures.len() > 20 {
        outln!("  … and {} more failures (see --json)", report.failures.len() - 20);
    }
    if !report.failures.is_empty() && !report.dry_run {
        outln!("  List them again with `keywheel failures {}`.", report.keyring);
    }
}

/// The exit code of a finished rotation report.
pub(super) fn rotation_code(report: &RotationReport) -> u8 {
    if report.phase == JobPhase::Cancelled {
        INTERRUPTED
    } else if report.counts.failed > 0 || report.remaining > 0 {
        PROBLEMS
    } else {
        OK
    }
}

pub(super) fn finish_rotation(report: &RotationReport, json: bool) -> Result<u8, CliError> {
    if json {
        print_json(&RotationJson::from(report))?;
    } else {
        print_rotation(report);
        if report.phase == JobPhase::Cancelled {
            outln!("Interrupted at a checkpoint; continue with `keywheel resume {}`.", report.keyring);
        }
    }
    Ok(rotation_code(report))
}

pub(super) fn warn_without_sources(settings: &Settings) {
    if settings.config.sources.is_empty() {
        eprintln!(
            "keywheel: warning: no record sources in keywheel.toml, so no stored value is re-encrypted; \
             list the tables holding encrypted values as [[sources]]"
        );
    }
}

/// Add the encryptions this run made (the re-encrypted values) to the stored
/// usage counts before the process exits; they would be lost otherwise.
pub(super) async fn flush_usage(opened: &Opened) {
    if let Err(e) = opened.kw.flush_all_usage().await {
        eprintln!("keywheel: warning: this run's encryptions are missing from the usage counts: {e}");
    }
}

pub(super) async fn rotate(settings: &Settings, args: &RotateArgs, json: bool) -> Result<u8, CliError> {
    let id = args.keyring.as_deref().map(parse_keyring).transpose()?;
    let opened = store::open(settings).await?;
    let rotator = store::rotator(settings, &opened).await?;
    warn_without_sources(settings);
    let cancel = cancel_on_signal();
    let Some(id) = id else {
        return rotate_all(settings, &opened, &rotator, args, &cancel, json).await;
    };
    let result = rotate_one(settings, &opened, &rotator, &id, args, &cancel).await;
    flush_usage(&opened).await;
    finish_rotation(&result?, json)
}

/// One rotation (or dry run, or emergency) of `id`, with a progress reporter.
async fn rotate_one(
    settings: &Settings,
    opened: &Opened,
    rotator: &Rotator,
    id: &KeyringId,
    args: &RotateArgs,
    cancel: &CancelToken,
) -> Result<RotationReport, CliError> {
    warn_policy_drift(settings, opened, id).await?;
    let label = if args.dry_run { format!("dry run {id}") } else { format!("rotate {id}") };
    let reporter = Reporter::new(label);
    let opts = rotate_options(settings, &args.run, &reporter, cancel.clone())?;
    let result = if args.dry_run {
        rotator.dry_run(id, &opts).await
    } else if args.emergency {
        rotator.emergency(id, args.reason.as_deref().unwrap_or_default(), &opts).await
    } else {
        let policy = opened.kw.policy(id).await?;
        rotator.rotate(id, &policy, &opts).await
    };
    reporter.finish();
    Ok(result?)
}

/// `rotate --all`: every keyring keywheel.toml names, one after another. A
/// failure is reported and the next keyring rotated; the exit code is the
/// worst one. An interruption stops after the keyring it interrupted.
async fn rotate_all(
    settings: &Settings,
    opened: &Opened,
    rotator: &Rotator,
    args: &RotateArgs,
    cancel: &CancelToken,
    json: bool,
) -> Result<u8, CliError> {
    let matched = matched_keyrings(
        settings,
        &opened.kw.list_keyrings().await?,
        opened.pool.as_ref(),
        "`rotate --all` has nothing to rotate",
    )
    .await?;
    let mut code = OK;
    let mut results = Vec::new();
    let mut not_started = Vec::new();
    for m in &matched {
        if cancel.is_cancelled() {
            not_started.push(&m.id);
            continue;
        }
        let outcome = if m.exists {
            rotate_one(settings, opened, rotator, &m.id, args, cancel).await
        } else {
            Err(CliError::error(format!("keyring {} does not exist yet", m.id))
                .with_hint("create the keyrings keywheel.toml names with `keywheel keyring apply`"))
        };
        let this = match &outcome {
            Ok(report) => rotation_code(report),
            Err(e) => e.code,
        };
        code = worst(code, this);
        match outcome {
            Ok(report) => {
                if !json {
                    print_rotation(&report);
                }
                results.push(json!({ "keyring": m.id, "exit_code": this, "report": RotationJson::from(&report) }));
            }
            Err(e) => {
                eprintln!("keywheel: {}: error: {}", m.id, e.message);
                if let Some(hint) = &e.hint {
                    eprintln!("  hint: {hint}");
                }
                results.push(json!({ "keyring": m.id, "exit_code": this, "error": e.to_json()["error"] }));
            }
        }
    }
    flush_usage(opened).await;
    if json {
        print_json(&json!({ "exit_code": code, "keyrings": results, "not_started": not_started }))?;
    } else {
        let failed = results.iter().filter(|r| r["exit_code"] != OK).count();
        outln!("Rotated {} of {} keyrings; {failed} did not complete.", results.len() - failed, matched.len());
        if !not_started.is_empty() {
            let ids: Vec<String> = not_started.iter().map(ToString::to_string).collect();
            outln!("Interrupted: not started: {}.", ids.join(", "));
        }
    }
    Ok(code)
}

pub(super) async fn resume(settings: &Settings, args: &ResumeArgs, json: bool) -> Result<u8, CliError> {
    let id = parse_keyring(&args.keyring)?;
    let opened = store::open(settings).await?;
    let rotator = store::rotator(settings, &opened).await?;
    let reporter = Reporter::new(format!("resume {id}"));
    let opts = rotate_options(settings, &args.run, &reporter, cancel_on_signal())?;
    let result = rotator.resume(&id, &opts).await;
    reporter.finish();
    flush_usage(&opened).await;
    match result? {
        Some(report) => finish_rotation(&report, json),
        None => {
            if json {
                print_json(&json!({ "keyring": id, "resumed": null }))?;
            } else {
                outln!("No unfinished rotation of {id}: nothing to resume.");
            }
            Ok(OK)
        }
    }
}

pub(super) async fn rollback(settings: &Settings, args: &RollbackArgs, json: bool) -> Result<u8, CliError> {
    let id = parse_keyring(&args.keyring)?;
    let opened = store::open(settings).await?;
    let rotator = store::rotator(settings, &opened).await?;
    warn_policy_drift(settings, &opened, &id).await?;
    let policy = opened.kw.policy(&id).await?;
    let reporter = Reporter::new(format!("rollback {id}"));
    let opts = rotate_options(settings, &args.run, &reporter, cancel_on_signal())?;
    let result = rotator.rollback(&id, &policy, args.reason.as_deref(), args.reencrypt, &opts).await;
    reporter.finish();
    flush_usage(&opened).await;
    let report = match result {
        Ok(report) => report,
        Err(e) => return Err(with_unfinished_job_hint(&opened, &id, e.into()).await),
    };
    if json {
        print_json(&RollbackJson::from(&report))?;
    } else {
        outln!("Rolled back {id}: {} is active again, {} is deprecated (still readable).", report.to, report.from);
        if let Some(r) = &report.reencrypt {
            print_rotation(r);
        }
    }
    Ok(report.reencrypt.as_ref().map_or(OK, rotation_code))
}

/// A failed rollback of a keyring with an unfinished rotation job: the hint
/// says which job, where it stopped, and what to do first (the job may be
/// why there is nothing to roll back yet, or why the lease is taken).
async fn with_unfinished_job_hint(opened: &Opened, id: &KeyringId, err: CliError) -> CliError {
    let store = opened.kw.store();
    let Ok(jobs) = store.list_jobs(id).await else { return err };
    let Some(job) = jobs.iter().rev().find(|j| !j.phase.is_finished() || j.completion_pending) else { return err };
    let version = |v: Option<KeyVersion>| v.map_or("-".into(), |v| v.to_string());
    let next = match store.load_lease(id).await.ok().flatten() {
        Some(lease) if lease.expires_at > opened.kw.now() => format!(
            "its lease is held by {} until {}: wait for that process to finish it (if the process is gone, \
             run `keywheel resume {id}` once the lease has expired)",
            lease.holder, lease.expires_at
        ),
        _ => format!("nobody is working on it (its process stopped): run `keywheel resume {id}` first"),
    };
    let hint = format!(
        "rotation job {} of {id} is unfinished (phase {}, {} → {}); {next}, then roll back if it is still needed",
        job.id,
        phase_text(job.phase),
        version(job.from),
        version(job.to)
    );
    err.with_hint(hint)
}

pub(super) async fn retire(settings: &Settings, args: &RetireArgs, json: bool) -> Result<u8, CliError> {
    let id = parse_keyring(&args.keyring)?;
    let opened = store::open(settings).await?;
    let record = opened.kw.record(&id).await?;
    warn_policy_drift(settings, &opened, &id).await?;
    let policy = opened.kw.policy(&id).await?;
    // By default every Deprecated version; with --now the Disabled ones too (destroyed).
    let eligible = |state: KeyState| state == KeyState::Deprecated || (args.now && state == KeyState::Disabled);
    let versions: Vec<KeyVersion> = match args.version {
        Some(v) => vec![KeyVersion::new(v).map_err(|e| CliError::usage(e.to_string()))?],
        None => record.versions.iter().filter(|v| eligible(v.state)).map(|v| v.version).collect(),
    };
    if versions.is_empty() {
        if json {
            print_json(&json!({ "keyring": id, "retired": [], "disabled": [], "destroyed": [] }))?;
        } else {
            outln!("{id} has no deprecated version to retire.");
        }
        return Ok(OK);
    }
    let options = match args.reason.as_deref().filter(|_| args.force) {
        Some(reason) => RetireOptions::forced(reason),
        None => RetireOptions::new(),
    };
    let options = if args.now { options.now() } else { options };
    let forced = if options.force.is_some() { " (forced, audited with the reason)" } else { "" };
    let rotator = store::rotator(settings, &opened).await?;
    let (mut retired, mut disabled, mut destroyed) = (Vec::new(), Vec::new(), Vec::new());
    for v in versions {
        match rotator.retire_with(&id, v, &policy, &options).await {
            Ok(after) => {
                let version = after.version(v);
                match version.map(|x| (x.state, x.destroy_after)) {
                    Some((KeyState::Disabled, until)) => {
                        if !json {
                            let until = until.map_or("-".into(), |t| t.to_string());
                            outln!(
                                "Disabled {id} {v}{forced}: decryption under it is refused, its key material is \
                                 kept until {until} and then destroyed; undo with `keywheel keyring enable {id} \
                                 --version {}`.",
                                v.get()
                            );
                        }
                        disabled.push(json!({ "version": v, "destroy_after": time(until) }));
                    }
                    _ => {
                        if !json {
                            outln!("Retired {id} {v}{forced}: its key material is destroyed.");
                        }
                        destroyed.push(v);
                    }
                }
                retired.push(v);
            }
            Err(e) => {
                if json {
                    // The JSON error object follows on stdout; what was retired is in the audit trail.
                    eprintln!("keywheel: retired before the refusal: {retired:?}");
                }
                return Err(e.into());
            }
        }
    }
    if json {
        print_json(&json!({ "keyring": id, "retired": retired, "disabled": disabled, "destroyed": destroyed }))?;
    }
    Ok(OK)
}

//! `rotate`, `resume`, `rollback`, `retire`: the rotation runbook.

use keywheel_core::{JobPhase, KeyState, KeyVersion, RetireOptions, RotationReport};
use serde_json::json;

use crate::cli::{ResumeArgs, RetireArgs, RollbackArgs, RotateArgs};
use crate::error::{CliError, INTERRUPTED, OK, PROBLEMS};
use crate::output::{Reporter, count, human_duration, print_json};
use crate::store::{self, Opened, Settings};

use super::{cancel_on_signal, parse_keyring, rotate_options, warn_policy_drift};

pub(super) fn print_rotation(report: &RotationReport) {
    let from = report.from.map_or("-".into(), |v| v.to_string());
    let to = report.to.map_or("-".into(), |v| v.to_string());
    let c = &report.counts;
    if report.dry_run {
        println!("Dry run of {} {from} → {to}: nothing was written.", report.keyring);
    } else {
        let phase = serde_json::to_value(report.phase).ok().and_then(|v| v.as_str().map(str::to_owned));
        println!(
            "Rotation of {} {from} → {to}: {} (job {}).",
            report.keyring,
            phase.unwrap_or_else(|| format!("{:?}", report.phase)),
            report.job_id.as_deref().unwrap_or("-")
        );
    }
    println!(
        "  processed {}, {} {}, skipped {} (changed by the application meanwhile), failed {}, in {}",
        count(c.processed),
        if report.dry_run { "would rewrite" } else { "rewritten" },
        count(c.rewritten),
        count(c.skipped),
        count(c.failed),
        human_duration(report.duration)
    );
    if report.remaining > 0 {
        println!("  {} values are still on older versions.", count(report.remaining));
    }
    for f in report.failures.iter().take(20) {
        let version = f.version.map_or("?".into(), |v| v.to_string());
        println!("  FAILED {} {} ({version}): {}", f.source, f.cursor.0, f.reason);
    }
    if report.failures.len() > 20 {
        println!("  … and {} more failures (see --json)", report.failures.len() - 20);
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
        print_json(report)?;
    } else {
        print_rotation(report);
        if report.phase == JobPhase::Cancelled {
            println!("Interrupted at a checkpoint; continue with `keywheel resume {}`.", report.keyring);
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
    let id = parse_keyring(&args.keyring)?;
    let opened = store::open(settings).await?;
    let rotator = store::rotator(settings, &opened).await?;
    warn_without_sources(settings);
    warn_policy_drift(settings, &opened, &id).await?;
    let label = if args.dry_run { format!("dry run {id}") } else { format!("rotate {id}") };
    let reporter = Reporter::new(label);
    let opts = rotate_options(settings, &args.run, &reporter, cancel_on_signal())?;
    let result = if args.dry_run {
        rotator.dry_run(&id, &opts).await
    } else if args.emergency {
        rotator.emergency(&id, args.reason.as_deref().unwrap_or_default(), &opts).await
    } else {
        let policy = opened.kw.policy(&id).await?;
        rotator.rotate(&id, &policy, &opts).await
    };
    reporter.finish();
    flush_usage(&opened).await;
    finish_rotation(&result?, json)
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
                println!("No unfinished rotation of {id}: nothing to resume.");
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
    let report = result?;
    if json {
        print_json(&report)?;
    } else {
        println!("Rolled back {id}: {} is active again, {} is deprecated (still readable).", report.to, report.from);
        if let Some(r) = &report.reencrypt {
            print_rotation(r);
        }
    }
    Ok(report.reencrypt.as_ref().map_or(OK, rotation_code))
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
            println!("{id} has no deprecated version to retire.");
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
                            println!(
                                "Disabled {id} {v}{forced}: decryption under it is refused, its key material is \
                                 kept until {until} and then destroyed; undo with `keywheel keyring enable {id} \
                                 --version {}`.",
                                v.get()
                            );
                        }
                        disabled.push(json!({ "version": v, "destroy_after": until }));
                    }
                    _ => {
                        if !json {
                            println!("Retired {id} {v}{forced}: its key material is destroyed.");
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

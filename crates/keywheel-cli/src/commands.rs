//! One function per command. Each returns its exit code (0, or 4 when it
//! found problems) or a [`CliError`].

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keywheel_core::{
    Algorithm, AuditEntry, CancelToken, Census, ChainHead, ChainVerifier, JobPhase, KekRing, KeyEncryptionKey,
    KeyState, KeyVersion, KeyringId, LocalKek, Policy, RotateOptions, RotationReport, Rotator, Scheduler,
    SchedulerConfig, StatusReport, TickReport, Warning,
};
use serde_json::json;

use crate::cli::{
    ApplyArgs, AuditCommand, AuditVerifyArgs, Cli, Command, InitArgs, InspectArgs, KekCommand, KekRotateArgs,
    KeyringCommand, KeyringCreateArgs, KeyringFilter, ResumeArgs, RetireArgs, RollbackArgs, RotateArgs, RunArgs,
    SchedulerCommand, SchedulerRunArgs, SealArgs, StatusArgs, TailArgs,
};
use crate::config::{self, unknown_algorithm};
use crate::error::{CliError, INTERRUPTED, OK, PROBLEMS};
use crate::output::{Reporter, Table, count, human_duration, print_json};
use crate::store::{self, AuditVerdict, Location, Opened, Settings};

/// Run the parsed command line.
pub(crate) async fn run(cli: Cli) -> Result<u8, CliError> {
    let settings = Settings::resolve(&cli.global)?;
    let json = cli.global.json;
    match cli.command {
        Command::Init(args) => init(&settings, &args, json).await,
        Command::Keyring(KeyringCommand::Create(args)) => keyring_create(&settings, &args, json).await,
        Command::Keyring(KeyringCommand::List) => keyring_list(&settings, json).await,
        Command::Keyring(KeyringCommand::Apply(args)) => keyring_apply(&settings, &args, json).await,
        Command::Keyring(KeyringCommand::Seal(args)) => keyring_seal(&settings, &args, json).await,
        Command::Status(args) => status(&settings, &args, json).await,
        Command::Census(args) => census(&settings, &args, json).await,
        Command::Rotate(args) => rotate(&settings, &args, json).await,
        Command::Resume(args) => resume(&settings, &args, json).await,
        Command::Rollback(args) => rollback(&settings, &args, json).await,
        Command::Retire(args) => retire(&settings, &args, json).await,
        Command::Verify(args) => verify(&settings, &args, json).await,
        Command::Audit(AuditCommand::Verify(args)) => audit_verify(&settings, &args, json).await,
        Command::Audit(AuditCommand::Tail(args)) => audit_tail(&settings, &args, json).await,
        Command::Scheduler(SchedulerCommand::Run(args)) => scheduler_run(&settings, &args, json).await,
        Command::Kek(KekCommand::Rotate(args)) => kek_rotate(&settings, &args, json).await,
        Command::Inspect(args) => inspect(&args, json),
    }
}

fn parse_keyring(s: &str) -> Result<KeyringId, CliError> {
    s.parse().map_err(|e| {
        CliError::usage(format!("{s:?} is not a keyring id: {e}"))
            .with_hint("a keyring id is tenant/purpose, e.g. acme/token")
    })
}

/// A cancellation token cancelled by the first SIGINT or SIGTERM.
fn cancel_on_signal() -> CancelToken {
    let token = CancelToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        eprintln!("keywheel: stopping after the current batch (the job is checkpointed)…");
        t.cancel();
    });
    token
}

/// The CLI's default settle time of emergency rotations: an application's
/// default refresh interval (60 s) plus 5 s for writes in flight.
const DEFAULT_EMERGENCY_SETTLE: std::time::Duration = std::time::Duration::from_secs(65);

/// A duration from a flag, else from keywheel.toml, else `default`; a bad
/// value is a usage error naming where it came from.
fn duration_setting(
    flag: Option<&str>,
    flag_name: &str,
    file: Option<&str>,
    file_key: &str,
    default: std::time::Duration,
) -> Result<std::time::Duration, CliError> {
    match (flag, file) {
        (Some(v), _) => config::parse_duration(v).map_err(|e| CliError::usage(format!("--{flag_name}: {e}"))),
        (None, Some(v)) => {
            config::parse_duration(v).map_err(|e| CliError::usage(format!("keywheel.toml: {file_key}: {e}")))
        }
        (None, None) => Ok(default),
    }
}

fn rotate_options(
    settings: &Settings,
    run: &RunArgs,
    reporter: &Reporter,
    cancel: CancelToken,
) -> Result<RotateOptions, CliError> {
    Ok(RotateOptions {
        batch_size: run.batch_size as usize,
        max_records_per_second: run.rate,
        parallel_batches: run.parallel as usize,
        cancel,
        progress: Some(reporter.callback()),
        ..engine_timing(settings, run.lease_ttl.as_deref(), run.settle.as_deref())?
    })
}

/// Default rotate options with the lease time-to-live and emergency settle
/// time from the flags, else keywheel.toml, else the defaults.
fn engine_timing(
    settings: &Settings,
    lease_flag: Option<&str>,
    settle_flag: Option<&str>,
) -> Result<RotateOptions, CliError> {
    let defaults = RotateOptions::default();
    let lease_ttl = duration_setting(
        lease_flag,
        "lease-ttl",
        settings.config.lease_ttl.as_deref(),
        "lease_ttl",
        defaults.lease_ttl,
    )?;
    if lease_ttl < std::time::Duration::from_secs(1) {
        return Err(CliError::usage("the lease time-to-live (--lease-ttl, lease_ttl) must be at least 1s"));
    }
    let settle = duration_setting(
        settle_flag,
        "settle",
        settings.config.emergency_settle.as_deref(),
        "emergency_settle",
        DEFAULT_EMERGENCY_SETTLE,
    )?;
    Ok(RotateOptions { lease_ttl, emergency_settle: Some(settle), ..defaults })
}

/// `1 key`, `3 keys`.
fn plural(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{} {noun}s", count(n)) }
}

fn version_list(versions: &[u32]) -> String {
    if versions.is_empty() {
        "-".into()
    } else {
        versions.iter().map(|v| format!("v{v}")).collect::<Vec<_>>().join(",")
    }
}

// ---------------------------------------------------------------- init

async fn init(settings: &Settings, args: &InitArgs, json: bool) -> Result<u8, CliError> {
    // A key given by the operator is checked; otherwise a new one is made,
    // and saved (if asked) before anything else is created.
    let (kek, generated) = if settings.has_master_key() {
        (Arc::new(settings.master_key()?), None)
    } else {
        let key = LocalKek::generate_master_key()?;
        let kek = LocalKek::from_base64(secrecy::ExposeSecret::expose_secret(&key))?;
        (Arc::new(kek), Some(key))
    };
    if let Location::Postgres { .. } = settings.location
        && generated.is_some()
        && store::postgres_has_keyrings(settings).await?
    {
        return Err(CliError::refused("this Postgres store already holds keyrings, so it has a master key")
            .with_hint("run `keywheel init` with that master key (KEYWHEEL_MASTER_KEY) to upgrade its tables"));
    }
    if let (Some(key), Some(path)) = (&generated, &args.master_key_out) {
        store::write_secret_file(path, secrecy::ExposeSecret::expose_secret(key))?;
    }
    let done = store::create(settings, args.app_role.as_deref()).await?;
    if generated.is_none() {
        // An existing Postgres store: the given key must open its keys.
        store::open_with_kek(settings, kek.clone()).await?;
    }
    let shown_key = generated.as_ref().filter(|_| args.master_key_out.is_none());
    if json {
        print_json(&json!({
            "store": settings.location.describe(),
            "created": done,
            "master_key": shown_key.map(|k| secrecy::ExposeSecret::expose_secret(k).to_owned()),
            "master_key_file": generated.as_ref().and(args.master_key_out.as_ref()),
            "key_check": kek.key_check(),
        }))?;
        return Ok(OK);
    }
    println!("{done}");
    match (&generated, &args.master_key_out) {
        (None, _) => println!("Using the configured master key (key check value {}).", kek.key_check()),
        (Some(_), Some(path)) => {
            println!("\nA new master key was written to {} (mode 0600).", path.display());
            println!("Move it into your secret manager; keep it away from the store and from version control.");
            println!("Every command needs it:  export KEYWHEEL_MASTER_KEY=\"$(cat {})\"", path.display());
            println!("                    or:  keywheel --master-key-file {} …", path.display());
        }
        (Some(key), None) => {
            println!(
                "\nNew master key (shown once, it cannot be recovered; losing it loses every key in the store):\n"
            );
            println!("    {}\n", secrecy::ExposeSecret::expose_secret(key));
            println!("Keep it in your secret manager, never next to the store or in version control.");
            println!("Every command needs it:  export KEYWHEEL_MASTER_KEY=<the key above>");
            println!("                    or:  keywheel --master-key-file PATH …  (a file only you can read)");
        }
    }
    println!("Key check value: {} (safe to record: it tells which master key opens this store).", kek.key_check());
    println!("Next: keywheel keyring create TENANT/PURPOSE");
    Ok(OK)
}

// ---------------------------------------------------------------- keyrings

async fn keyring_create(settings: &Settings, args: &KeyringCreateArgs, json: bool) -> Result<u8, CliError> {
    let id = parse_keyring(&args.keyring)?;
    let configured = settings.config.keyring(&id);
    let algorithm = match &args.algorithm {
        Some(a) => a.parse::<Algorithm>().map_err(|_| CliError::usage(unknown_algorithm(a)))?,
        None => configured.map(|c| c.algorithm(&id)).transpose()?.flatten().unwrap_or_default(),
    };
    let policy = match configured {
        Some(c) => c.policy(&id)?,
        None => Policy::for_purpose(id.purpose()),
    };
    let opened = store::open(settings).await?;
    let ring = opened.kw.create_keyring(&id, algorithm).await?;
    opened.kw.set_policy(&id, &policy).await?;
    let version = ring.active_version().map_or(0, KeyVersion::get);
    if json {
        print_json(&json!({ "keyring": id, "algorithm": algorithm, "active_version": version, "policy": policy }))?;
    } else {
        println!(
            "Created keyring {id} ({algorithm}), version v{version} active; rotates every {}, grace period {}, \
             rollback window {}.",
            human_duration(policy.interval),
            human_duration(policy.grace_period),
            human_duration(policy.rollback_window)
        );
    }
    Ok(OK)
}

async fn keyring_apply(settings: &Settings, args: &ApplyArgs, json: bool) -> Result<u8, CliError> {
    if settings.config.keyrings.is_empty() {
        return Err(CliError::usage("keywheel.toml lists no keyrings, so there is nothing to apply")
            .with_hint("add [keyrings.\"tenant/purpose\"] tables to keywheel.toml"));
    }
    // Everything is checked before anything changes.
    let mut wanted = Vec::new();
    for (name, c) in &settings.config.keyrings {
        let id = parse_keyring(name)?;
        wanted.push((c.policy(&id)?, c.algorithm(&id)?.unwrap_or_default(), id));
    }
    let opened = store::open(settings).await?;
    let existing = opened.kw.list_keyrings().await?;
    let mut changes = Vec::new();
    for (policy, algorithm, id) in wanted {
        let action = if !existing.contains(&id) {
            if !args.dry_run {
                opened.kw.create_keyring(&id, algorithm).await?;
                opened.kw.set_policy(&id, &policy).await?;
            }
            "created"
        } else if opened.kw.policy(&id).await? != policy {
            if !args.dry_run {
                opened.kw.set_policy(&id, &policy).await?;
            }
            "policy updated"
        } else {
            "unchanged"
        };
        if !json {
            let verb = if args.dry_run && action != "unchanged" { format!("would be {action}") } else { action.into() };
            println!("{id}: {verb}");
        }
        changes.push(json!({ "keyring": id, "action": action, "policy": policy }));
    }
    if json {
        print_json(&json!({ "dry_run": args.dry_run, "keyrings": changes }))?;
    }
    Ok(OK)
}

async fn keyring_seal(settings: &Settings, args: &SealArgs, json: bool) -> Result<u8, CliError> {
    let reason = args.reason.trim();
    if reason.is_empty() {
        return Err(CliError::usage("--reason is empty").with_hint("say who reviewed the records (it is audited)"));
    }
    // Opened without loading every keyring: unsealed ones would be refused.
    let opened = store::open_unverified(settings).await?;
    let ids = match &args.keyring {
        Some(k) => vec![parse_keyring(k)?],
        None => opened.kw.list_keyrings().await?,
    };
    let mut out = Vec::new();
    for id in ids {
        let sealed = opened.kw.seal_unsealed(&id, reason).await?;
        let record = opened.kw.record(&id).await?;
        let states: Vec<String> = record.versions.iter().map(|v| format!("v{} {}", v.version.get(), v.state)).collect();
        if !json {
            let what = if sealed { "sealed" } else { "already sealed, left alone" };
            println!("{id}: {what} ({})", states.join(", "));
        }
        out.push(json!({ "keyring": id, "sealed": sealed, "versions": record.versions.iter()
            .map(|v| json!({ "version": v.version, "state": v.state, "compromised": v.compromised }))
            .collect::<Vec<_>>() }));
    }
    if json {
        print_json(&out)?;
    }
    Ok(OK)
}

/// A note on stderr when keywheel.toml gives a keyring another policy than the stored one.
async fn warn_policy_drift(settings: &Settings, opened: &Opened, id: &KeyringId) -> Result<(), CliError> {
    if let Some(c) = settings.config.keyring(id)
        && c.policy(id)? != opened.kw.policy(id).await?
    {
        eprintln!(
            "keywheel: note: keywheel.toml gives {id} another policy than the stored one, which applies; \
             run `keywheel keyring apply` to store it"
        );
    }
    Ok(())
}

async fn keyring_list(settings: &Settings, json: bool) -> Result<u8, CliError> {
    let opened = store::open(settings).await?;
    let mut table = Table::new(&["KEYRING", "ALGORITHM", "ACTIVE", "PENDING", "DEPRECATED", "RETIRED", "CREATED"]);
    let mut out = Vec::new();
    for id in opened.kw.list_keyrings().await? {
        let record = opened.kw.record(&id).await?;
        let policy = opened.kw.policy(&id).await?;
        let by = |state: KeyState| -> Vec<u32> {
            record.versions.iter().filter(|v| v.state == state).map(|v| v.version.get()).collect()
        };
        table.row(vec![
            id.to_string(),
            record.algorithm.to_string(),
            version_list(&by(KeyState::Active)),
            version_list(&by(KeyState::Pending)),
            version_list(&by(KeyState::Deprecated)),
            version_list(&by(KeyState::Retired)),
            record.created_at.to_string(),
        ]);
        let versions: Vec<_> = record
            .versions
            .iter()
            .map(|v| {
                json!({
                    "version": v.version, "state": v.state, "algorithm": v.algorithm, "created_at": v.created_at,
                    "activated_at": v.activated_at, "deprecated_at": v.deprecated_at, "retired_at": v.retired_at,
                    "encryptions": v.encryptions,
                })
            })
            .collect();
        out.push(json!({
            "keyring": id, "algorithm": record.algorithm, "generation": record.generation,
            "created_at": record.created_at, "versions": versions, "policy": policy,
        }));
    }
    if json {
        print_json(&out)?;
    } else if table.is_empty() {
        println!("No keyrings yet. Create one with `keywheel keyring create TENANT/PURPOSE`.");
    } else {
        print!("{table}");
    }
    Ok(OK)
}

// ---------------------------------------------------------------- status, census, verify

fn warning_text(w: &Warning) -> String {
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

fn print_status(report: &StatusReport) {
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
    }
}

async fn status(settings: &Settings, args: &StatusArgs, json: bool) -> Result<u8, CliError> {
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
fn require_sources(settings: &Settings, what: &str) -> Result<(), CliError> {
    if settings.config.sources.is_empty() {
        return Err(CliError::usage(format!("no record sources are configured, so keywheel cannot {what}")).with_hint(
            "list the tables holding encrypted values as [[sources]] in keywheel.toml (see the README's operator section)",
        ));
    }
    Ok(())
}

async fn census_of(settings: &Settings, opened: &Opened, filter: Option<&KeyringId>) -> Result<Census, CliError> {
    require_sources(settings, "count values")?;
    let rotator = store::rotator(settings, opened).await?;
    Ok(rotator.census(filter).await?)
}

async fn census(settings: &Settings, args: &KeyringFilter, json: bool) -> Result<u8, CliError> {
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

async fn verify(settings: &Settings, args: &KeyringFilter, json: bool) -> Result<u8, CliError> {
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

// ---------------------------------------------------------------- rotation

fn print_rotation(report: &RotationReport) {
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
fn rotation_code(report: &RotationReport) -> u8 {
    if report.phase == JobPhase::Cancelled {
        INTERRUPTED
    } else if report.counts.failed > 0 || report.remaining > 0 {
        PROBLEMS
    } else {
        OK
    }
}

fn finish_rotation(report: &RotationReport, json: bool) -> Result<u8, CliError> {
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

fn warn_without_sources(settings: &Settings) {
    if settings.config.sources.is_empty() {
        eprintln!(
            "keywheel: warning: no record sources in keywheel.toml, so no stored value is re-encrypted; \
             list the tables holding encrypted values as [[sources]]"
        );
    }
}

/// Add the encryptions this run made (the re-encrypted values) to the stored
/// usage counts before the process exits; they would be lost otherwise.
async fn flush_usage(opened: &Opened) {
    if let Err(e) = opened.kw.flush_all_usage().await {
        eprintln!("keywheel: warning: this run's encryptions are missing from the usage counts: {e}");
    }
}

async fn rotate(settings: &Settings, args: &RotateArgs, json: bool) -> Result<u8, CliError> {
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

async fn resume(settings: &Settings, args: &ResumeArgs, json: bool) -> Result<u8, CliError> {
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

async fn rollback(settings: &Settings, args: &RollbackArgs, json: bool) -> Result<u8, CliError> {
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

async fn retire(settings: &Settings, args: &RetireArgs, json: bool) -> Result<u8, CliError> {
    let id = parse_keyring(&args.keyring)?;
    let opened = store::open(settings).await?;
    let record = opened.kw.record(&id).await?;
    warn_policy_drift(settings, &opened, &id).await?;
    let policy = opened.kw.policy(&id).await?;
    let versions: Vec<KeyVersion> = match args.version {
        Some(v) => vec![KeyVersion::new(v).map_err(|e| CliError::usage(e.to_string()))?],
        None => record.versions.iter().filter(|v| v.state == KeyState::Deprecated).map(|v| v.version).collect(),
    };
    if versions.is_empty() {
        if json {
            print_json(&json!({ "keyring": id, "retired": [] }))?;
        } else {
            println!("{id} has no deprecated version to retire.");
        }
        return Ok(OK);
    }
    let force = if args.force { args.reason.as_deref() } else { None };
    let rotator = store::rotator(settings, &opened).await?;
    let mut retired = Vec::new();
    for v in versions {
        match rotator.retire(&id, v, &policy, force).await {
            Ok(_) => {
                if !json {
                    println!(
                        "Retired {id} {v}: its key material is destroyed{}.",
                        if force.is_some() { " (forced, audited with the reason)" } else { "" }
                    );
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
        print_json(&json!({ "keyring": id, "retired": retired }))?;
    }
    Ok(OK)
}

// ---------------------------------------------------------------- audit

/// What `audit verify` says when no master key was given.
const NO_KEY_NOTE: &str = "MACs NOT checked: no master key given, so only the structure was verified (anyone who \
                           can write the log could have re-hashed it); give the master key to authenticate the entries";

async fn audit_verify(settings: &Settings, args: &AuditVerifyArgs, json: bool) -> Result<u8, CliError> {
    let audit = store::open_audit(settings).await?;
    // Auditors without the master key can still check the structure.
    let keys = match settings.has_master_key() {
        true => Some(settings.master_key()?.integrity_keys().await?),
        false => None,
    };
    let mut verifier = ChainVerifier::new();
    if let Some(keys) = &keys {
        verifier = verifier.keys(keys);
    }
    if let Some(head) = &args.expect_head {
        verifier = verifier.expect_head(head.clone());
    }
    let macs_checked = keys.is_some();
    let head_text =
        |head: &Option<ChainHead>| head.as_ref().map_or_else(|| "none (empty log)".to_owned(), ToString::to_string);
    match store::verify_audit(&audit, &verifier).await? {
        AuditVerdict::File(report) => {
            let intact = report.is_intact_but_torn();
            if json {
                let head = &report.head;
                print_json(&json!({ "intact": intact, "macs_checked": macs_checked, "head": head, "report": report }))?;
            } else {
                println!("{report}");
                if !macs_checked {
                    println!("{NO_KEY_NOTE}");
                }
            }
            Ok(if intact { OK } else { PROBLEMS })
        }
        AuditVerdict::Postgres(result, head) => {
            let place = settings.location.describe();
            match &result {
                Ok(n) if json => {
                    print_json(&json!({ "intact": true, "entries": n, "macs_checked": macs_checked, "head": head }))?
                }
                Ok(n) => {
                    let macs =
                        if macs_checked { "MACs checked" } else { "MACs NOT checked (no key given: structure only)" };
                    println!("audit log in {place}: {n} entries, intact; {macs}\n  head: {}", head_text(&head));
                }
                Err(v) if json => {
                    print_json(&json!({ "intact": false, "violation": v, "macs_checked": macs_checked, "head": head }))?
                }
                Err(v) => println!("audit log in {place}: DAMAGED: {v}\n  stored head: {}", head_text(&head)),
            }
            if !json && !macs_checked {
                println!("{NO_KEY_NOTE}");
            }
            Ok(if result.is_ok() { OK } else { PROBLEMS })
        }
    }
}

fn event_details(entry: &AuditEntry) -> (String, String) {
    let kind = serde_json::to_value(&entry.event.kind).unwrap_or_default();
    let name = kind.get("type").and_then(|t| t.as_str()).unwrap_or("?").to_owned();
    let details = kind
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.as_str() != "type")
                .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    (name, details)
}

async fn audit_tail(settings: &Settings, args: &TailArgs, json: bool) -> Result<u8, CliError> {
    let audit = store::open_audit(settings).await?;
    let entries = store::audit_entries(&audit).await?;
    let tail = &entries[entries.len().saturating_sub(args.lines)..];
    if json {
        print_json(tail)?;
        return Ok(OK);
    }
    let mut table = Table::new(&["SEQ", "TIME", "ACTOR", "KEYRING", "EVENT", "OUTCOME", "DETAILS"]);
    for e in tail {
        let (name, mut details) = event_details(e);
        if let Some(reason) = &e.event.reason {
            details = format!("{details} reason={reason:?}").trim().to_owned();
        }
        let outcome = serde_json::to_value(e.event.outcome).ok().and_then(|v| v.as_str().map(str::to_owned));
        table.row(vec![
            e.seq.to_string(),
            e.event.at.to_string(),
            e.event.actor.clone(),
            e.event.keyring.as_ref().map_or("-".into(), ToString::to_string),
            name,
            outcome.unwrap_or_default(),
            details,
        ]);
    }
    if table.is_empty() {
        println!("The audit trail is empty.");
    } else {
        print!("{table}");
    }
    Ok(OK)
}

// ---------------------------------------------------------------- scheduler

fn print_tick(tick: &TickReport) {
    let due: Vec<String> = tick.due.iter().map(|d| format!("{} ({:?})", d.keyring, d.reason)).collect();
    println!(
        "{} tick: due [{}], rotated {}, retired {}, failed {}{}",
        tick.at,
        due.join(", "),
        tick.rotations.len(),
        tick.retired.len(),
        tick.failed.len(),
        if tick.paused { " (paused)" } else { "" }
    );
    for r in &tick.rotations {
        print_rotation(r);
    }
    for (id, v) in &tick.retired {
        println!("  retired {id} {v}");
    }
    for (id, e) in &tick.failed {
        println!("  FAILED {id}: {e}");
    }
}

async fn scheduler_run(settings: &Settings, args: &SchedulerRunArgs, json: bool) -> Result<u8, CliError> {
    let opened = store::open(settings).await?;
    let rotator = store::rotator(settings, &opened).await?;
    warn_without_sources(settings);
    let config = SchedulerConfig {
        tick: std::time::Duration::from_secs(args.tick),
        max_concurrent: args.max_concurrent as usize,
        auto_retire: !args.no_retire,
        rotate: engine_timing(settings, None, None)?,
    };
    let scheduler = Scheduler::new(rotator, config);
    let mut problems = false;
    let mut on_tick = |result: &keywheel_core::Result<TickReport>| match result {
        Ok(tick) => {
            problems |= !tick.failed.is_empty() || tick.rotations.iter().any(|r| rotation_code(r) == PROBLEMS);
            if json {
                // One JSON document per line, for log shippers.
                match serde_json::to_string(tick) {
                    Ok(line) => println!("{line}"),
                    Err(e) => eprintln!("keywheel: cannot encode tick report: {e}"),
                }
            } else {
                print_tick(tick);
            }
        }
        Err(e) => {
            problems = true;
            eprintln!("keywheel: scheduler tick failed: {e}");
        }
    };
    if args.once {
        let result = scheduler.tick().await;
        on_tick(&result);
    } else {
        let shutdown = cancel_on_signal();
        if !json {
            eprintln!("keywheel: scheduler running (tick every {} s); stop with Ctrl-C or SIGTERM", args.tick);
        }
        scheduler.run(shutdown, on_tick).await;
        if !json {
            eprintln!("keywheel: scheduler stopped cleanly");
        }
    }
    Ok(if problems { PROBLEMS } else { OK })
}

// ---------------------------------------------------------------- kek

async fn kek_rotate(settings: &Settings, args: &KekRotateArgs, json: bool) -> Result<u8, CliError> {
    if let Some(path) = args.new_master_key_out.as_deref().filter(|p| p.exists()) {
        return Err(CliError::error(format!("{} exists already", path.display()))
            .with_hint("name a new file; keywheel never overwrites a key file"));
    }
    let old = settings.master_key()?;
    let generated = match &args.new_master_key_file {
        Some(_) => None,
        None => Some(LocalKek::generate_master_key()?),
    };
    let new = Arc::new(match (&args.new_master_key_file, &generated) {
        (Some(path), _) => LocalKek::from_file(path)?,
        (None, Some(key)) => LocalKek::from_base64(secrecy::ExposeSecret::expose_secret(key))?,
        (None, None) => return Err(CliError::usage("give --new-master-key-file or --new-master-key-out")),
    });
    if new.key_check() == old.key_check() {
        return Err(CliError::usage("the new master key is the current one").with_hint("give a different key"));
    }
    let check = new.key_check().to_owned();
    // One KEK serves both as the ring's primary (opening the store during the
    // rotation) and as the rotation's target.
    let ring: Arc<dyn KeyEncryptionKey> = Arc::new(KekRing::new(new.clone(), vec![Arc::new(old)]));
    let opened = store::open_with_kek(settings, ring).await?;
    if let (Some(path), Some(key)) = (&args.new_master_key_out, &generated) {
        // Saved before any key is rewrapped under it.
        store::write_secret_file(path, secrecy::ExposeSecret::expose_secret(key))?;
    }
    let report = Rotator::new(opened.kw.clone())?.rotate_kek(new).await?;
    if json {
        print_json(&json!({ "report": report, "key_check": check }))?;
    } else {
        println!(
            "Rewrapped {} of {} under the new master key (key check value {check}); {} already were.",
            plural(report.keys, "key"),
            plural(report.keyrings, "keyring"),
            report.already_rewrapped
        );
        if let Some(path) = &args.new_master_key_out {
            println!("The new master key is in {} (mode 0600); move it into your secret manager.", path.display());
        }
        println!("From now on only the new master key opens this store. Keep the old one until every backup");
        println!("of the store taken before now has expired: those backups are still wrapped under it.");
    }
    Ok(OK)
}

// ---------------------------------------------------------------- inspect

/// The bytes of a value given on the command line: text form, hex or base64.
fn value_bytes(value: &str) -> Result<Vec<u8>, CliError> {
    let v = value.trim();
    if v.starts_with(keywheel_core::TEXT_PREFIX) {
        return Ok(v.as_bytes().to_vec());
    }
    let hex = v.strip_prefix("\\x").or_else(|| v.strip_prefix("0x"));
    if let Some(hex) = hex {
        if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CliError::usage("the value starts like hex (\\x or 0x) but is not valid hex"));
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| CliError::usage("the value is not valid hex"));
    }
    STANDARD.decode(v).map_err(|_| {
        CliError::usage("the value is neither the text form (kw:v…), hex (\\x… or 0x…) nor base64")
            .with_hint("psql prints a bytea column as \\x…; pass that as it is, quoted")
    })
}

fn inspect(args: &InspectArgs, json: bool) -> Result<u8, CliError> {
    let bytes = value_bytes(&args.value)?;
    match keywheel_core::parse(&bytes) {
        Ok(info) => {
            if json {
                print_json(&json!({ "valid": true, "info": info }))?;
            } else {
                let form = serde_json::to_value(info.form).ok().and_then(|v| v.as_str().map(str::to_owned));
                println!("form            {}", form.unwrap_or_default());
                println!("format version  {}", info.format_version);
                println!("algorithm       {}", info.algorithm);
                println!("key version     {}", info.version);
                println!("binary length   {} bytes", info.binary_len);
                println!("payload length  {} bytes", info.payload_len);
            }
            Ok(OK)
        }
        Err(e) => {
            if json {
                print_json(&json!({ "valid": false, "error": e.to_string() }))?;
            } else {
                println!("not a valid keywheel value: {e}");
            }
            Ok(PROBLEMS)
        }
    }
}

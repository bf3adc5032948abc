//! One function per command. Each returns its exit code (0, or 4 when it
//! found problems) or a [`CliError`].

mod audit;
mod failures;
mod init;
mod inspect;
mod kek;
mod keyring;
mod matched;
mod rotation;
mod scheduler;
mod status;

use keywheel_core::{CancelToken, KeyringId, RotateOptions};

use crate::cli::{AuditCommand, Cli, Command, KekCommand, KeyringCommand, RunArgs, SchedulerCommand};
use crate::config;
use crate::error::CliError;
use crate::output::{Reporter, count};
use crate::store::Settings;
use audit::{audit_tail, audit_verify};
use failures::failures;
use init::init;
use inspect::inspect;
use kek::{kek_generate, kek_rotate};
use keyring::{
    keyring_apply, keyring_create, keyring_destroy, keyring_enable, keyring_list, keyring_seal, warn_policy_drift,
};
use rotation::{print_rotation, resume, retire, rollback, rotate, rotation_code, warn_without_sources};
use scheduler::scheduler_run;
use status::{census, status, verify};

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
        Command::Keyring(KeyringCommand::Enable(args)) => keyring_enable(&settings, &args, json).await,
        Command::Keyring(KeyringCommand::Destroy(args)) => keyring_destroy(&settings, &args, json).await,
        Command::Status(args) => status(&settings, &args, json).await,
        Command::Census(args) => census(&settings, &args, json).await,
        Command::Rotate(args) => rotate(&settings, &args, json).await,
        Command::Resume(args) => resume(&settings, &args, json).await,
        Command::Rollback(args) => rollback(&settings, &args, json).await,
        Command::Retire(args) => retire(&settings, &args, json).await,
        Command::Verify(args) => verify(&settings, &args, json).await,
        Command::Failures(args) => failures(&settings, &args, json).await,
        Command::Audit(AuditCommand::Verify(args)) => audit_verify(&settings, &args, json).await,
        Command::Audit(AuditCommand::Tail(args)) => audit_tail(&settings, &args, json).await,
        Command::Scheduler(SchedulerCommand::Run(args)) => scheduler_run(&settings, &args, json).await,
        Command::Kek(KekCommand::Rotate(args)) => kek_rotate(&settings, &args, json).await,
        Command::Kek(KekCommand::Generate(args)) => kek_generate(&args, json),
        Command::Inspect(args) => inspect(&args, json),
    }
}

pub(super) fn parse_keyring(s: &str) -> Result<KeyringId, CliError> {
    s.parse().map_err(|e| {
        CliError::usage(format!("{s:?} is not a keyring id: {e}"))
            .with_hint("a keyring id is tenant/purpose, e.g. acme/token")
    })
}

/// A cancellation token cancelled by the first SIGINT or SIGTERM.
pub(super) fn cancel_on_signal() -> CancelToken {
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
/// default refresh interval (60 s), plus its default KEK outage grace (60 s),
/// plus 5 s for writes in flight.
pub(super) const DEFAULT_EMERGENCY_SETTLE: std::time::Duration = std::time::Duration::from_secs(125);

/// A duration from a flag, else from keywheel.toml (checked when it was
/// loaded), else `default`; a bad flag is a usage error naming the flag.
pub(super) fn duration_setting(
    flag: Option<&str>,
    flag_name: &str,
    file: Option<std::time::Duration>,
    default: std::time::Duration,
) -> Result<std::time::Duration, CliError> {
    match flag {
        Some(v) => config::parse_duration(v).map_err(|e| CliError::usage(format!("--{flag_name}: {e}"))),
        None => Ok(file.unwrap_or(default)),
    }
}

pub(super) fn rotate_options(
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
pub(super) fn engine_timing(
    settings: &Settings,
    lease_flag: Option<&str>,
    settle_flag: Option<&str>,
) -> Result<RotateOptions, CliError> {
    let defaults = RotateOptions::default();
    let lease_ttl = duration_setting(lease_flag, "lease-ttl", settings.config.lease_ttl, defaults.lease_ttl)?;
    if lease_ttl < config::MIN_LEASE_TTL {
        return Err(CliError::usage("the lease time-to-live (--lease-ttl) must be at least 1s"));
    }
    let settle = duration_setting(settle_flag, "settle", settings.config.emergency_settle, DEFAULT_EMERGENCY_SETTLE)?;
    Ok(RotateOptions { lease_ttl, emergency_settle: Some(settle), ..defaults })
}

/// `1 key`, `3 keys`.
pub(super) fn plural(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{} {noun}s", count(n)) }
}

pub(super) fn version_list(versions: &[u32]) -> String {
    if versions.is_empty() {
        "-".into()
    } else {
        versions.iter().map(|v| format!("v{v}")).collect::<Vec<_>>().join(",")
    }
}

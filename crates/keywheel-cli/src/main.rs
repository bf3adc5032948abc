//! `keywheel`: the operator CLI. The runbook of key rotation as commands —
//! status, census, rotate (dry run first), verify, rollback, retire, emergency
//! rotation, KEK rotation and the audit trail — on a file store (default
//! `./keywheel`) or on Postgres. Every command exits with a meaningful code
//! (see `keywheel --help`) and prints JSON with `--json`.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod config;
mod error;
mod kek_uri;
mod legacy;
mod output;
mod reader;
mod store;

use std::process::ExitCode;

use clap::Parser as _;

use crate::error::{CliError, ERROR, OK, USAGE};

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are successes; everything else is a usage error.
            let _ = e.print();
            if !e.use_stderr() {
                return ExitCode::from(OK);
            }
            // The command line did not parse, so `--json` is looked for as
            // it was typed (before a lone `--`, after which words are values).
            if std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a == "--json") {
                output::write_stdout(format_args!("{}\n", usage_error(&e).to_json()));
            }
            return ExitCode::from(USAGE);
        }
    };
    let json = cli.global.json;
    if let Err(e) = init_logging(cli.global.log_level.as_deref()) {
        return fail(&e, json);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&CliError::error(format!("cannot start the async runtime: {e}")), json),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e, json),
    }
}

/// Send keywheel's trace spans (when they close, with their fields and
/// times) and events to stderr, filtered by `--log-level` or else
/// `RUST_LOG`; with neither, nothing is logged, so the CLI's own output stays
/// as it is. What keywheel traces carries no secret (the manual,
/// "Observability: tracing and metrics").
fn init_logging(level: Option<&str>) -> Result<(), CliError> {
    use tracing_subscriber::fmt::format::FmtSpan;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::{Layer as _, filter::Targets};

    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let Some(directives) = level.map(str::to_owned).or(from_env) else { return Ok(()) };
    let targets: Targets = directives.parse().map_err(|e| {
        CliError::usage(format!("invalid log level or directives {directives:?}: {e}"))
            .with_hint("give a level (error, warn, info, debug, trace) or directives such as keywheel_core=debug,warn")
    })?;
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::CLOSE)
        .with_filter(targets);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .map_err(|e| CliError::error(format!("cannot install the log output: {e}")))
}

/// Report `e` (one sentence on stderr, the fix on the next line; JSON on
/// stdout too with `--json`) and return its exit code.
fn fail(e: &CliError, json: bool) -> ExitCode {
    eprintln!("keywheel: error: {}", e.message);
    if let Some(hint) = &e.hint {
        eprintln!("  hint: {hint}");
    }
    if json {
        output::write_stdout(format_args!("{}\n", e.to_json()));
    }
    ExitCode::from(if e.code == OK { ERROR } else { e.code })
}

/// A clap error as a [`CliError`]: its first paragraph as the message, the
/// others (suggestions, the usage line) as the hint.
fn usage_error(e: &clap::Error) -> CliError {
    let text = e.render().to_string();
    let mut paragraphs = text
        .split("\n\n")
        .map(|p| p.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty() && !p.starts_with("For more information"));
    let message = paragraphs.next().unwrap_or_else(|| "bad command line".into());
    let error = CliError::usage(message.strip_prefix("error: ").unwrap_or(&message));
    let hint: Vec<String> = paragraphs.collect();
    if hint.is_empty() { error } else { error.with_hint(hint.join("; ")) }
}

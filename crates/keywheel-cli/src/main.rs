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
            let code = if e.use_stderr() { USAGE } else { OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let json = cli.global.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&CliError::error(format!("cannot start the async runtime: {e}")), json),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e, json),
    }
}

/// Report `e` (one sentence on stderr, the fix on the next line; JSON on
/// stdout too with `--json`) and return its exit code.
fn fail(e: &CliError, json: bool) -> ExitCode {
    eprintln!("keywheel: error: {}", e.message);
    if let Some(hint) = &e.hint {
        eprintln!("  hint: {hint}");
    }
    if json {
        println!("{}", e.to_json());
    }
    ExitCode::from(if e.code == OK { ERROR } else { e.code })
}

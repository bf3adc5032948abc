//! The binary's trace output: nothing by default (the CLI's own messages
//! stay as they are), keywheel's spans and events on stderr with
//! `--log-level` or `RUST_LOG`, a usage error for bad directives, and never
//! the master key. File store only.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use support::Cli;

fn store() -> Cli {
    let cli = Cli::new(None);
    cli.write_config("[keyrings.\"acme/token\"]\n");
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "apply"]).assert_code(0);
    cli
}

#[test]
fn spans_and_events_go_to_stderr_only_when_asked_for() {
    let cli = store();
    let quiet = cli.run(&["rotate", "acme/token"]).assert_code(0);
    assert!(
        !quiet.stderr.contains("keywheel.lifecycle") && !quiet.stderr.contains("INFO"),
        "nothing is logged by default:\n{}",
        quiet.stderr
    );

    let logged = cli.run(&["rotate", "acme/token", "--log-level", "info"]).assert_code(0);
    for needle in [
        "keywheel.lifecycle",
        "operation=\"rotate\"",
        "keywheel.rotation.job",
        "kind=\"rotation\"",
        "outcome=\"completed\"",
    ] {
        logged.assert_stderr_contains(needle);
    }
    assert!(!logged.stdout.contains("keywheel.lifecycle"), "logs go to stderr only:\n{}", logged.stdout);

    // RUST_LOG does the same; a refusal (v1 is not disabled) is an INFO event naming its rule.
    let out = cli
        .command(&["keyring", "enable", "acme/token", "--version", "1"])
        .env("RUST_LOG", "keywheel_core=info")
        .output()
        .expect("run keywheel");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("lifecycle operation refused") && stderr.contains("error_kind=\"not_disabled\""),
        "{stderr}"
    );

    let key = std::fs::read_to_string(cli.key_file()).expect("master key file");
    assert!(!logged.stderr.contains(key.trim()) && !stderr.contains(key.trim()), "the master key is never logged");
}

#[test]
fn bad_directives_are_a_usage_error() {
    let cli = store();
    let out = cli.run(&["status", "--log-level", "keywheel_core=loud"]).assert_code(2);
    out.assert_stderr_contains("invalid log level");
}

//! Every exit code of the README's table, from the real binary, each with its
//! `--json` error object where there is one:
//! 0 ok, 1 error (store, database, master key, configuration), 2 usage error,
//! 3 refused by a safety rule, 4 problems found, 130 interrupted.
//!
//! The interruption needs a rotation that runs long enough to be stopped: a
//! Postgres table (the keywheel-postgres test harness) rotated at a low rate.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
#[path = "support/postgres.rs"]
mod pg;
mod support;

use std::io::Read as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::TestDb;
use keywheel_core::KeyringId;
use serde_json::Value;
use support::Cli;

/// A file store with one keyring, its master key in `master.key`.
fn store_with_keyring() -> Cli {
    let cli = Cli::new(None);
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);
    cli
}

/// The `--json` error object: its exit code matches the process's.
#[track_caller]
fn json_error(value: &Value, code: u64) -> &Value {
    let error = &value["error"];
    assert_eq!(error["exit_code"], code, "{value}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{value}");
    error
}

#[test]
fn exit_0_success() {
    let cli = store_with_keyring();
    let status = cli.json(&["status"]);
    assert_eq!(status["keyrings"][0]["keyring"], "acme/token");
    cli.run(&["keyring", "list"]).assert_code(0).assert_stdout_contains("acme/token");
}

#[test]
fn exit_1_store_master_key_and_configuration_errors() {
    // No store.
    let cli = Cli::new(None);
    support::write_secret(&cli.key_file(), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let out = cli.json_code(&["status"], 1);
    assert!(json_error(&out, 1)["message"].as_str().unwrap().contains("not a keywheel store"));
    // A wrong master key.
    let cli = store_with_keyring();
    let wrong = cli.dir().join("wrong.key");
    support::write_secret(&wrong, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    cli.run(&["--master-key-file", wrong.to_str().unwrap(), "status"])
        .assert_code(1)
        .assert_stderr_contains("key check value");
    // A bad configuration file: exit 1, naming the file and the line.
    cli.write_config("[keyrings.\"acme/token\"]\npreset = \"weekly\"\n");
    let out = cli.json_code(&["status"], 1);
    let message = json_error(&out, 1)["message"].as_str().unwrap().to_owned();
    assert!(message.contains("keywheel.toml:2:") && message.contains("unknown preset"), "{message}");
    // A file that lacks what the command needs is a configuration error too.
    cli.write_config("store = \"keywheel\"\n");
    cli.run(&["census"]).assert_code(1).assert_stderr_contains("no record sources are configured");
    cli.run(&["keyring", "apply"])
        .assert_code(1)
        .assert_stderr_contains("names no keyring, so there is nothing to apply");
    cli.run(&["rotate", "--all"]).assert_code(1).assert_stderr_contains("names no keyring");
    cli.run(&["status", "--all"]).assert_code(1).assert_stderr_contains("`status --all` has nothing to show");
}

#[test]
fn exit_2_usage_errors_with_json_too() {
    let cli = Cli::new(None);
    let out = cli.run(&["--json", "frobnicate"]).assert_code(2);
    out.assert_stderr_contains("unrecognized subcommand");
    let json: Value = serde_json::from_str(&out.stdout).expect("a JSON error object on stdout");
    assert!(json_error(&json, 2)["message"].as_str().unwrap().contains("frobnicate"), "{json}");
    // --json after the command, a missing argument, a bad value: the message
    // says what is wrong, the hint how the command is used.
    for (args, what) in [
        (&["rotate", "--json"][..], "required arguments were not provided: <KEYRING>"),
        (&["rotate", "acme/token", "--batch-size", "0", "--json"], "invalid value '0' for '--batch-size"),
        (&["rotate", "--all", "acme/token", "--json"], "cannot be used with"),
    ] {
        let out = cli.run(args).assert_code(2);
        let json: Value = serde_json::from_str(&out.stdout).expect("a JSON error object on stdout");
        assert!(json_error(&json, 2)["message"].as_str().unwrap().contains(what), "{args:?}: {json}");
    }
    let out = cli.run(&["--json", "rotate"]).assert_code(2);
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert!(json["error"]["hint"].as_str().unwrap().contains("Usage: keywheel rotate"), "{json}");
    // Without --json: nothing on stdout.
    let out = cli.run(&["rotate"]).assert_code(2);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    // A bad argument found by the command itself.
    json_error(&cli.json_code(&["census", "no-slash"], 2), 2);
    // --help is no error.
    cli.run(&["--json", "--help"]).assert_code(0).assert_stdout_contains("Usage: keywheel");
}

#[test]
fn exit_3_refused_by_a_safety_rule() {
    let cli = store_with_keyring();
    let out = cli.json_code(&["keyring", "create", "acme/token"], 3);
    assert!(json_error(&out, 3)["message"].as_str().unwrap().contains("already exists"));
    // No source proves the old version unused.
    cli.write_config("[keyrings.\"acme/token\"]\ngrace_period = \"0s\"\n");
    cli.run(&["rotate", "acme/token"]).assert_code(0);
    cli.run(&["retire", "acme/token"]).assert_code(3).assert_stderr_contains("hint:");
}

#[test]
fn exit_4_problems_found() {
    let cli = store_with_keyring();
    let out = cli.json_code(&["inspect", "aGVsbG8gd29ybGQ="], 4);
    assert_eq!(out["valid"], false);
    let log = cli.store_dir().join("audit.jsonl");
    let text = std::fs::read_to_string(&log).expect("log");
    std::fs::write(&log, text.replacen("key_created", "key_imported", 1)).expect("tamper");
    assert_eq!(cli.json_code(&["audit", "verify"], 4)["intact"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_130_interrupted_and_resumed() {
    let Some(db) = TestDb::create().await else { return };
    let url = pg::postgres_url(&db);
    let cli = Cli::new(None);
    db.execute("CREATE TABLE public.users (id bigint PRIMARY KEY, token bytea NOT NULL)").await;
    cli.write_config(&format!(
        "database = \"{url}\"\n[[sources]]\ntable = \"public.users\"\nkeyring = \"acme/token\"\ncolumns = [\"token\"]\n"
    ));
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);
    let id: KeyringId = "acme/token".parse().expect("id");
    let app = pg::app_keywheel(&cli, None);
    pg::insert_users(&db, &app, &id, 1..=200, false).await;

    // 200 values at 20 per second: ten seconds, stopped after one.
    let mut child = cli
        .command(&["--json", "rotate", "acme/token", "--rate", "20", "--batch-size", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the rotation");
    // Interrupted once its job exists (the signal handler is installed before).
    let jobs = cli.store_dir().join("jobs");
    let started = Instant::now();
    while std::fs::read_dir(&jobs).map_or(true, |mut d| d.next().is_none()) {
        assert!(started.elapsed() < Duration::from_secs(30), "the rotation never started");
        assert!(child.try_wait().expect("wait").is_none(), "the rotation ended before its interruption");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let sent = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(sent.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the rotation did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("read");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    assert_eq!(status.code(), Some(130), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("the report as JSON");
    assert_eq!(report["phase"], "cancelled", "{report}");
    let rewritten = report["counts"]["rewritten"].as_u64().expect("rewritten");
    assert!(rewritten < 200, "stopped early: {report}");
    // The interrupted job continues where it stopped.
    let resumed = cli.json(&["resume", "acme/token"]);
    assert_eq!(resumed["phase"], "completed", "{resumed}");
    // Together the two runs account for every value, give or take the one
    // batch (of 10) in flight at the interruption: written, but counted by
    // neither report when the interruption came before its checkpoint.
    let resumed_rewritten = resumed["counts"]["rewritten"].as_u64().expect("rewritten");
    assert!(rewritten + resumed_rewritten + 10 >= 200, "{rewritten} + {resumed}");
    let verified = cli.json(&["verify", "acme/token"]);
    assert_eq!(verified["keyrings"][0]["census"]["2"], 200, "every value on v2: {verified}");
}

//! The real `keywheel` binary on bad input: a wrong or missing master key, a
//! corrupt store, a damaged audit log, unknown commands and arguments, values
//! that are not keywheel values. Every case: one clear sentence, the fix, a
//! distinct exit code, nothing changed. Also `--help` of every command,
//! `inspect`, and the scheduler's clean stop on SIGTERM. File store only (no
//! Postgres needed).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::io::Read as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{Cli, snapshot};

/// A file store with one keyring, its master key in `master.key`.
fn store_with_keyring() -> Cli {
    let cli = Cli::new(None);
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);
    cli
}

#[test]
fn a_wrong_master_key_is_refused_before_anything_is_written() {
    let cli = store_with_keyring();
    let before = snapshot(&cli.store_dir());
    let wrong = cli.dir().join("wrong.key");
    support::write_secret(&wrong, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    for args in [&["status"][..], &["rotate", "acme/token"], &["keyring", "create", "other/token"]] {
        let mut all = vec!["--master-key-file", wrong.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        let out = cli.run(&all).assert_code(1);
        out.assert_stderr_contains("wrong master key");
        out.assert_stderr_contains("hint: give the master key whose key check value is");
    }
    assert_eq!(snapshot(&cli.store_dir()), before, "nothing written under the wrong key");
    // Not a key at all.
    std::fs::write(&wrong, "not base64!").expect("write");
    let out = cli.run(&["--master-key-file", wrong.to_str().expect("utf-8"), "status"]).assert_code(1);
    out.assert_stderr_contains("the master key is not valid base64");
}

#[test]
fn no_master_key_says_how_to_give_one() {
    let cli = store_with_keyring();
    std::fs::remove_file(cli.key_file()).expect("remove key");
    let out = cli.run(&["rotate", "acme/token"]).assert_code(1);
    out.assert_stderr_contains("no master key");
    out.assert_stderr_contains("KEYWHEEL_MASTER_KEY");
    // Reading needs no key.
    cli.run(&["status"]).assert_code(0).assert_stdout_contains("acme/token");
}

#[test]
fn a_missing_or_corrupt_store_is_named_with_the_fix() {
    let cli = Cli::new(None);
    support::write_secret(&cli.key_file(), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let out = cli.run(&["status"]).assert_code(1);
    out.assert_stderr_contains("not a keywheel store");
    out.assert_stderr_contains("keywheel init");

    let cli = store_with_keyring();
    cli.run(&["init"]).assert_code(3).assert_stderr_contains("already a keywheel store");
    let keyring_file = std::fs::read_dir(cli.store_dir().join("keyrings"))
        .expect("keyrings dir")
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .expect("one keyring document")
        .path();
    std::fs::write(&keyring_file, b"{\"format\":1,\"keyring\":{\"id\":").expect("corrupt it");
    // The damaged keyring is left out of the list with a warning naming the file (problems found).
    let out = cli.run(&["keyring", "list"]).assert_code(4);
    out.assert_stderr_contains(&keyring_file.file_name().expect("name").to_string_lossy());
    let out = cli.run(&["rotate", "acme/token"]).assert_code(1);
    out.assert_stderr_contains(&keyring_file.file_name().expect("name").to_string_lossy());
    assert_eq!(std::fs::read(&keyring_file).expect("read"), b"{\"format\":1,\"keyring\":{\"id\":", "left as it was");
}

#[test]
fn a_damaged_audit_log_is_reported_by_line_with_exit_code_4() {
    let cli = store_with_keyring();
    cli.run(&["audit", "verify"]).assert_code(0).assert_stdout_contains("intact");
    // Auditors need no master key.
    let key = std::fs::read(cli.key_file()).expect("key");
    std::fs::remove_file(cli.key_file()).expect("remove key");
    cli.run(&["audit", "tail", "-n", "1"]).assert_code(0).assert_stdout_contains("policy_changed");
    let log = cli.store_dir().join("audit.jsonl");
    let text = std::fs::read_to_string(&log).expect("log");
    std::fs::write(&log, text.replacen("key_created", "key_imported", 1)).expect("tamper");
    let out = cli.run(&["audit", "verify"]).assert_code(4);
    out.assert_stdout_contains("DAMAGED");
    out.assert_stdout_contains("line 2");
    let json = cli.json_code(&["audit", "verify"], 4);
    assert_eq!(json["intact"], false);
    // Reading a damaged log names the line and points at `audit verify`.
    let out = cli.run(&["audit", "tail"]).assert_code(1);
    out.assert_stderr_contains("line 2");
    out.assert_stderr_contains("keywheel audit verify");
    // Opening the store still works: the log is only appended to.
    support::write_secret(&cli.key_file(), key);
    cli.run(&["status"]).assert_code(0);
}

#[test]
fn usage_errors_exit_2_and_help_reads_for_every_command() {
    let cli = Cli::new(None);
    cli.run(&["frobnicate"]).assert_code(2).assert_stderr_contains("unrecognized subcommand");
    cli.run(&["rotate"]).assert_code(2).assert_stderr_contains("<KEYRING>");
    cli.run(&["rotate", "acme/token", "--emergency"]).assert_code(2).assert_stderr_contains("--reason");
    cli.run(&["retire", "acme/token", "--force"]).assert_code(2).assert_stderr_contains("--reason");
    cli.run(&["rotate", "acme/token", "--batch-size", "0"]).assert_code(2);
    cli.run(&["census", "no-slash"]).assert_code(2).assert_stderr_contains("tenant/purpose");
    cli.run(&["--help"]).assert_code(0).assert_stdout_contains("Exit codes:");
    cli.run(&["--version"]).assert_code(0).assert_stdout_contains("keywheel");
    for command in [
        &["init"][..],
        &["keyring", "create"],
        &["keyring", "list"],
        &["status"],
        &["census"],
        &["rotate"],
        &["resume"],
        &["rollback"],
        &["retire"],
        &["verify"],
        &["audit", "verify"],
        &["audit", "tail"],
        &["scheduler", "run"],
        &["kek", "rotate"],
        &["inspect"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let out = cli.run(&args).assert_code(0);
        out.assert_stdout_contains("Usage: keywheel");
        assert!(out.stdout.lines().count() >= 4, "{command:?}: {}", out.stdout);
    }
    // A bad configuration file is a configuration error (exit 1) naming the file and line.
    cli.write_config("store = \"./keywheel\"\n[keyrings.\"acme/token\"]\ngrace = \"1d\"\n");
    cli.run(&["status"]).assert_code(1).assert_stderr_contains("keywheel.toml:3: unknown field `grace`");
}

#[test]
fn retirement_without_record_sources_is_refused_unless_forced() {
    let cli = store_with_keyring();
    cli.write_config("[keyrings.\"acme/token\"]\ngrace_period = \"0s\"\n");
    let out = cli.run(&["rotate", "acme/token"]).assert_code(0);
    out.assert_stderr_contains("no record sources");
    // Without sources, nothing proves that no value uses v1.
    let out = cli.run(&["retire", "acme/token"]).assert_code(3);
    out.assert_stderr_contains("no registered record source covers this keyring");
    out.assert_stderr_contains("--force --reason");
    let out = cli.run(&["retire", "acme/token", "--force", "--reason", "no stored values: tokens are cached only"]);
    out.assert_code(0).assert_stdout_contains("Disabled acme/token v1 (forced");
    let tail = cli.json(&["audit", "tail", "-n", "1"]);
    assert_eq!(tail[0]["event"]["kind"]["type"], "key_disabled");
    assert_eq!(tail[0]["event"]["kind"]["forced"], true);
    assert_eq!(tail[0]["event"]["reason"], "no stored values: tokens are cached only");
    // Rolling back to a disabled version is refused (exit 3).
    cli.run(&["rollback", "acme/token"]).assert_code(3).assert_stderr_contains("no deprecated version");
}

#[test]
fn inspect_reads_headers_without_a_key() {
    let cli = Cli::new(None);
    // A text-form value, and the same value as psql prints bytea (hex).
    let text = "kw:v3:a3cBAQAAAAMAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = cli.run(&["inspect", text]).assert_code(0);
    out.assert_stdout_contains("key version     v3");
    out.assert_stdout_contains("aes-256-gcm");
    let json = cli.json(&["inspect", text]);
    assert_eq!(json["info"]["version"], 3);
    let binary = base64_decode(&text[6..]);
    let hex: String = binary.iter().map(|b| format!("{b:02x}")).collect();
    cli.run(&["inspect", &format!("\\x{hex}")]).assert_code(0).assert_stdout_contains("form            binary");
    cli.run(&["inspect", "aGVsbG8gd29ybGQ="]).assert_code(4).assert_stdout_contains("bad magic");
    cli.run(&["inspect", "\\xabc"]).assert_code(2).assert_stderr_contains("not valid hex");
    cli.run(&["inspect", "%%%"]).assert_code(2).assert_stderr_contains("neither the text form");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(s).expect("base64")
}

#[test]
fn the_scheduler_stops_cleanly_on_sigterm() {
    let cli = store_with_keyring();
    cli.run(&["scheduler", "run", "--once"]).assert_code(0).assert_stdout_contains("tick: due []");
    let mut child = cli
        .command(&["scheduler", "run", "--tick", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the scheduler");
    std::thread::sleep(Duration::from_millis(1500));
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the scheduler did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    let mut stdout = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("read");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("scheduler stopped cleanly"), "{stderr}");
    assert!(stdout.contains("tick: due []"), "at least one tick ran: {stdout}");
}

#[test]
fn keyring_apply_makes_the_store_match_keywheel_toml() {
    let cli = store_with_keyring();
    cli.run(&["keyring", "apply"])
        .assert_code(1)
        .assert_stderr_contains("names no keyring, so there is nothing to apply");
    cli.write_config(
        "[keyrings.\"acme/token\"]\ngrace_period = \"1h\"\n\
         [keyrings.\"beta/session\"]\nalgorithm = \"xchacha20-poly1305\"\n",
    );
    let dry = cli.run(&["keyring", "apply", "--dry-run"]).assert_code(0);
    dry.assert_stdout_contains("acme/token: would be policy updated");
    dry.assert_stdout_contains("beta/session: would be created");
    assert_eq!(cli.json(&["keyring", "list"]).as_array().expect("list").len(), 1, "a dry run changes nothing");
    // The stored policy applies until it is applied; commands say so.
    cli.run(&["rotate", "acme/token"]).assert_code(0).assert_stderr_contains("run `keywheel keyring apply`");
    let applied = cli.json(&["keyring", "apply"]);
    assert_eq!(applied["keyrings"][0]["action"], "policy updated");
    assert_eq!(applied["keyrings"][1]["action"], "created");
    let listed = cli.json(&["keyring", "list"]);
    assert_eq!(listed[0]["policy"]["grace_period_secs"], 3600);
    assert_eq!(listed[1]["keyring"], "beta/session");
    assert_eq!(
        listed[1]["algorithm"],
        serde_json::to_value(keywheel_core::Algorithm::XChaCha20Poly1305).expect("json")
    );
    let again = cli.run(&["keyring", "apply"]).assert_code(0);
    again.assert_stdout_contains("acme/token: unchanged");
    again.assert_stdout_contains("beta/session: unchanged");
    let out = cli.run(&["retire", "acme/token", "--force", "--reason", "test"]).assert_code(0);
    assert!(!out.stderr.contains("keyring apply"), "no drift note once applied: {}", out.stderr);
    // A bad policy in the file is refused before anything changes.
    cli.write_config("[keyrings.\"gamma/token\"]\ngrace_period = \"soon\"\n");
    cli.run(&["keyring", "apply"])
        .assert_code(1)
        .assert_stderr_contains("keywheel.toml:2: [keyrings.\"gamma/token\"]: grace_period");
    cli.write_config("");
    assert_eq!(cli.json(&["keyring", "list"]).as_array().expect("list").len(), 2, "nothing created");
}

#[test]
fn kek_rotation_can_be_run_again_with_the_key_the_first_run_wrote() {
    let cli = store_with_keyring();
    let new_key = cli.dir().join("new.key");
    let new = new_key.to_str().expect("utf-8");
    cli.run(&["kek", "rotate"]).assert_code(2).assert_stderr_contains("--new-master-key-file");
    let first = cli.run(&["kek", "rotate", "--new-master-key-out", new]).assert_code(0);
    first.assert_stdout_contains("Rewrapped 1 key of 1 keyring");
    // Refuses to overwrite the key file it wrote.
    cli.run(&["kek", "rotate", "--new-master-key-out", new]).assert_code(1).assert_stderr_contains("never overwrites");
    // Run again (as after an interruption): the old key still opens the rest through the ring.
    let again = cli.run(&["kek", "rotate", "--new-master-key-file", new]).assert_code(0);
    again.assert_stdout_contains("Rewrapped 0 keys of 0 keyrings");
    again.assert_stdout_contains("1 already were");
    cli.run(&["status"]).assert_code(1).assert_stderr_contains("wrong master key");
    cli.run(&["--master-key-file", new, "status"]).assert_code(0);
}

/// The keyring document of `acme/token`, edited as JSON.
fn edit_keyring(cli: &Cli, change: impl FnOnce(&mut serde_json::Value)) {
    let path = std::fs::read_dir(cli.store_dir().join("keyrings"))
        .expect("keyrings dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p).is_ok_and(|s| s.contains("acme/token")))
        .expect("the keyring document");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    change(&mut doc["keyring"]);
    std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json")).expect("write");
}

#[test]
fn a_keyring_edited_behind_keywheels_back_is_refused_and_never_resealed() {
    let cli = store_with_keyring();
    edit_keyring(&cli, |k| k["versions"][0]["origin"] = "imported".into());
    let before = snapshot(&cli.store_dir());
    for args in [&["rotate", "acme/token"][..], &["keyring", "list"]] {
        let out = cli.run(args).assert_code(1);
        out.assert_stderr_contains("keyring acme/token failed its integrity check");
        out.assert_stderr_contains("hint: nothing was changed");
        out.assert_stderr_contains("keywheel keyring seal acme/token");
    }
    // `status` reports the keyring as damaged (problems found) instead of failing whole.
    let out = cli.run(&["status"]).assert_code(4);
    out.assert_stdout_contains("DAMAGED").assert_stdout_contains("keyring acme/token failed its integrity check");
    out.assert_stdout_contains("fix: nothing was changed");
    let out = cli.run(&["keyring", "seal", "acme/token", "--reason", "looks fine"]).assert_code(1);
    out.assert_stderr_contains("do not match its seal");
    assert_eq!(snapshot(&cli.store_dir()), before, "nothing written");
}

#[test]
fn a_keyring_from_before_record_authentication_is_sealed_on_request() {
    let cli = store_with_keyring();
    cli.run(&["keyring", "create", "acme/database"]).assert_code(0);
    edit_keyring(&cli, |k| {
        k.as_object_mut().expect("object").remove("seal");
    });
    cli.run(&["status"]).assert_code(4).assert_stdout_contains("carries no seal");
    cli.run(&["keyring", "seal", "--all"]).assert_code(2);
    cli.run(&["keyring", "seal", "--all", "--reason", " "]).assert_code(2);
    let out = cli.run(&["keyring", "seal", "--all", "--reason", "reviewed by ops"]).assert_code(0);
    out.assert_stdout_contains("acme/token: sealed (v1 active)");
    out.assert_stdout_contains("acme/database: already sealed, left alone");
    cli.run(&["status"]).assert_code(0);
    let tail = cli.run(&["audit", "tail"]).assert_code(0);
    tail.assert_stdout_contains("keyring_sealed");
    tail.assert_stdout_contains("reviewed by ops");
}

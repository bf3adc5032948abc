//! What the binary prints: a reader that goes away early (`keywheel status |
//! head -1`) ends the output quietly with the command's own exit code, and
//! every `--json` output writes times as RFC 3339 and durations as `…_secs`.
//! File store only.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::Stdio;

use serde_json::Value;
use support::Cli;

/// A store with enough keyrings that every listing is larger than a pipe's
/// buffer (64 KiB): the writer must meet the closed pipe.
fn big_store() -> Cli {
    let cli = Cli::new(None);
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    let mut toml = String::new();
    for n in 0..400 {
        toml.push_str(&format!("[keyrings.\"tenant-{n:04}/token\"]\n"));
    }
    cli.write_config(&toml);
    cli.run(&["keyring", "apply"]).assert_code(0);
    cli
}

/// Run `args`, read the first line of stdout, close it, and return the exit
/// code and stderr.
fn head_1(cli: &Cli, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = cli.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn keywheel");
    let mut first = String::new();
    {
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        stdout.read_line(&mut first).expect("read the first line");
    } // closed here, like `head -1`
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    (status.code(), first, stderr)
}

#[test]
fn a_closed_stdout_ends_every_listing_quietly() {
    let cli = big_store();
    for args in [
        &["status"][..],
        &["--json", "status"],
        &["keyring", "list"],
        &["--json", "keyring", "list"],
        &["audit", "tail", "-n", "5000"],
        &["--json", "audit", "tail", "-n", "5000"],
        &["keyring", "apply", "--dry-run"],
        &["status", "--all"],
    ] {
        let (code, first, stderr) = head_1(&cli, args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(!first.is_empty(), "{args:?} printed something first");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("cannot write"), "a closed pipe is no warning: {args:?}: {stderr}");
    }
    // The command's own code survives too: an error with --json.
    cli.write_config("nope = 1\n");
    let (code, _, stderr) = head_1(&cli, &["--json", "status"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `2026-12-02T09:27:27.123Z`.
#[track_caller]
fn assert_rfc3339(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("a time is a string, not {v}"));
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    assert!(
        b.len() == 24
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b'T'
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19)
            && b[19] == b'.'
            && digits(20..23)
            && b[23] == b'Z',
        "{s} is RFC 3339 UTC with milliseconds"
    );
}

#[test]
fn json_times_are_rfc3339_and_durations_seconds() {
    let cli = Cli::new(None);
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.write_config("[keyrings.\"acme/token\"]\ngrace_period = \"0s\"\ninterval = \"1s\"\n");
    cli.json(&["keyring", "create", "acme/token"]);
    let rotated = cli.json(&["rotate", "acme/token"]);
    assert!(rotated["duration_secs"].as_f64().is_some(), "{rotated}");
    assert!(rotated.get("duration").is_none(), "{rotated}");

    let status = cli.json(&["status"]);
    assert_rfc3339(&status["generated_at"]);
    let keyring = &status["keyrings"][0];
    assert_rfc3339(&keyring["next_due"]);
    assert_rfc3339(&keyring["last_job"]["started_at"]);
    assert_rfc3339(&keyring["last_job"]["finished_at"]);
    assert_eq!(keyring["policy"]["interval_secs"], 1);
    assert_eq!(keyring["policy"]["grace_period_secs"], 0);
    assert!(keyring["policy"].get("interval").is_none(), "{keyring}");
    assert!(keyring["current_age_secs"].as_u64().is_some(), "{keyring}");

    let listed = cli.json(&["keyring", "list"]);
    assert_rfc3339(&listed[0]["created_at"]);
    let versions = listed[0]["versions"].as_array().expect("versions");
    assert_rfc3339(&versions[0]["created_at"]);
    assert_rfc3339(&versions[0]["activated_at"]);
    assert_rfc3339(&versions[0]["deprecated_at"]);
    assert_eq!(versions[1]["deprecated_at"], Value::Null);
    assert_eq!(listed[0]["policy"]["rollback_window_secs"], 86_400);

    let tail = cli.json(&["audit", "tail", "-n", "3"]);
    for entry in tail.as_array().expect("entries") {
        assert_rfc3339(&entry["event"]["at"]);
    }

    // The scheduler: the tick's time, and the due rotation's report.
    std::thread::sleep(std::time::Duration::from_millis(1600));
    let out = cli.run(&["--json", "scheduler", "run", "--once", "--no-retire"]).assert_code(0);
    let tick: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON line per tick");
    assert_rfc3339(&tick["at"]);
    assert!(tick["rotations"][0]["duration_secs"].as_f64().is_some(), "{tick}");

    let applied = cli.json(&["keyring", "apply"]);
    assert_eq!(applied["keyrings"][0]["policy"]["interval_secs"], 1);
}

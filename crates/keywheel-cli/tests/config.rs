//! `keywheel.toml` is checked whole by every command that reads it: an
//! unknown key anywhere or a bad value is an error naming the file and the
//! line (exit code 1), before the command touches anything. File store only.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use support::{Cli, snapshot};

/// Every command that loads keywheel.toml (all of them but `--help`).
const COMMANDS: &[&[&str]] = &[
    &["status"],
    &["status", "--census"],
    &["census"],
    &["verify"],
    &["audit", "verify"],
    &["audit", "tail"],
    &["keyring", "list"],
    &["keyring", "create", "beta/token"],
    &["keyring", "apply"],
    &["rotate", "acme/token"],
    &["rotate", "--all"],
    &["resume", "acme/token"],
    &["rollback", "acme/token"],
    &["retire", "acme/token"],
    &["scheduler", "run", "--once"],
    &["kek", "rotate", "--new-master-key-out", "new.key"],
];

/// Bad files, with the line and words each error must name.
const BAD: &[(&str, usize, &str)] = &[
    ("[keyrings.\"acme/token\"]\ngrace_period = \"30 days\"\n", 2, "\"30 days\" is not a duration"),
    ("[keyrings.\"acme/token\"]\npreset = \"weekly\"\n", 2, "unknown preset \"weekly\""),
    ("# top\n[keyrings.\"acme/token\"]\nalgorithm = \"rot13\"\n", 3, "unknown algorithm \"rot13\""),
    (
        "[keyrings.\"acme/token\"]\nmaintenance_window = { start = \"2am\", duration = \"2h\" }\n",
        2,
        "maintenance_window.start is HH:MM",
    ),
    ("lease_ttl = \"1 minute\"\n", 1, "lease_ttl"),
    ("stor = \"./keywheel\"\n", 1, "unknown field `stor`"),
    (
        "[[sources]]\ntable = \"users\"\nkeyring = \"acme/token\"\ncolumns = [\n  { name = \"token\", fomr = \"text\" },\n]\n",
        5,
        "unknown field `fomr`",
    ),
    (
        "[[sources]]\ntable = \"users\"\nkeyring = \"acme/token\"\ncolumns = [\"token\"]\nprimary = \"id\"\n",
        5,
        "unknown field `primary`",
    ),
    ("store = \"./keywheel\"\n\n[[sources]]\ntable = \"users\"\ncolumns = [\"token\"]\n", 3, "give either keyring"),
    ("[keyrings.\"acme/*\"]\n", 1, "the only pattern is \"*/PURPOSE\""),
];

#[test]
fn every_command_refuses_a_bad_file_naming_the_line() {
    let cli = Cli::new(None);
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);
    let before = snapshot(&cli.store_dir());
    for (text, line, what) in BAD {
        cli.write_config(text);
        for command in COMMANDS {
            let out = cli.run(command).assert_code(1);
            out.assert_stderr_contains(&format!("keywheel.toml:{line}: "));
            out.assert_stderr_contains(what);
            out.assert_stderr_contains("hint:");
        }
        // With --json, the same error as an object on stdout.
        let json = cli.json_code(&["status"], 1);
        assert_eq!(json["error"]["exit_code"], 1);
        assert!(json["error"]["message"].as_str().unwrap().contains(what), "{json}");
    }
    assert_eq!(snapshot(&cli.store_dir()), before, "nothing changed");
    assert!(!cli.dir().join("new.key").exists(), "kek rotate wrote no key");
    // --config names another file: its name is in the error.
    std::fs::write(cli.dir().join("other.toml"), "[keyrings.\"acme/token\"]\ninterval = \"0s\"\n").expect("write");
    let out = cli.run(&["--config", "other.toml", "status"]).assert_code(1);
    out.assert_stderr_contains("other.toml:2: [keyrings.\"acme/token\"]: interval must not be 0");
    // A file that cannot be read is an error (exit 1) too.
    cli.run(&["--config", "missing.toml", "status"]).assert_code(1).assert_stderr_contains("missing.toml");
}

#[test]
fn a_good_file_is_used_as_written() {
    let cli = Cli::new(None);
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.write_config(
        "lease_ttl = \"90s\"\nemergency_settle = \"0s\"\n\
         [keyrings.\"acme/token\"]\npreset = \"session\"\ninterval = \"1d12h\"\nrollback_window = \"500ms\"\n\
         maintenance_window = { start = \"23:30\", duration = \"2h\" }\npriority = 5\n",
    );
    let created = cli.json(&["keyring", "create", "acme/token"]);
    let policy = &created["policy"];
    assert_eq!(policy["interval_secs"], 36 * 3600);
    assert_eq!(policy["grace_period_secs"], 7 * 86_400, "the session preset's");
    assert_eq!(policy["rollback_window_secs"], 0);
    assert_eq!(policy["after_rotation"], "expire");
    assert_eq!(policy["maintenance_window"]["start_secs"], 23 * 3600 + 1800);
    assert_eq!(policy["maintenance_window"]["duration_secs"], 7200);
    assert_eq!(policy["priority"], 5);
}

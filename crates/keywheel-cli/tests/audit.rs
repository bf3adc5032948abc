//! `keywheel audit verify` on a keyed audit log, driven through the binary:
//! MACs checked with the master key (and said not to be without it), the head
//! printed, `--expect-head` catching a shortened log, a log re-hashed without
//! the key and injected fields refused.

mod support;

use keywheel_core::{AuditEntry, entry_hash};
use serde_json::Value;
use support::Cli;

fn store_with_history() -> Cli {
    let cli = Cli::new(None);
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);
    cli.run(&["keyring", "create", "globex/token"]).assert_code(0);
    cli
}

fn log_lines(cli: &Cli) -> Vec<String> {
    std::fs::read_to_string(cli.store_dir().join("audit.jsonl")).expect("log").lines().map(str::to_owned).collect()
}

fn write_log(cli: &Cli, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(cli.store_dir().join("audit.jsonl"), text).expect("write log");
}

/// Run without the master key (an auditor).
fn without_key<T>(cli: &Cli, f: impl FnOnce() -> T) -> T {
    let key = std::fs::read(cli.key_file()).expect("key");
    std::fs::remove_file(cli.key_file()).expect("remove key");
    let out = f();
    support::write_secret(&cli.key_file(), key);
    out
}

#[test]
fn verify_checks_macs_with_the_master_key_and_prints_the_head() {
    let cli = store_with_history();
    let lines = log_lines(&cli);
    let last: Value = serde_json::from_str(lines.last().expect("entries")).expect("json");
    let head = format!("{}:{}", last["seq"], last["hash"].as_str().expect("hash"));

    let out = cli.run(&["audit", "verify"]).assert_code(0);
    out.assert_stdout_contains("intact; MACs checked");
    out.assert_stdout_contains(&format!("head: {head}"));
    let json = cli.json(&["audit", "verify"]);
    assert_eq!((json["intact"].as_bool(), json["macs_checked"].as_bool()), (Some(true), Some(true)), "{json}");
    assert_eq!(json["head"]["seq"], last["seq"]);
    assert_eq!(json["head"]["hash"], last["hash"]);

    // An auditor without the master key checks the structure, and is told so.
    without_key(&cli, || {
        let out = cli.run(&["audit", "verify"]).assert_code(0);
        out.assert_stdout_contains("MACs NOT checked");
        out.assert_stdout_contains("no master key given");
        out.assert_stdout_contains(&format!("head: {head}"));
        let json = cli.json(&["audit", "verify"]);
        assert_eq!(json["macs_checked"].as_bool(), Some(false), "{json}");
    });
}

#[test]
fn an_expected_head_turns_a_shortened_or_replaced_log_into_exit_code_4() {
    let cli = store_with_history();
    let json = cli.json(&["audit", "verify"]);
    let head = format!("{}:{}", json["head"]["seq"], json["head"]["hash"].as_str().expect("hash"));
    cli.run(&["audit", "verify", "--expect-head", &head]).assert_code(0);
    // The log grows past an anchored head: still fine.
    cli.run(&["keyring", "create", "initech/token"]).assert_code(0);
    cli.run(&["audit", "verify", "--expect-head", &head]).assert_code(0).assert_stdout_contains("intact");

    let lines = log_lines(&cli);
    let seq: usize = json["head"]["seq"].as_u64().expect("seq").try_into().expect("small");
    write_log(&cli, &lines[..seq - 1]);
    // Without an anchor, a cut log is a shorter chain that verifies...
    cli.run(&["audit", "verify"]).assert_code(0);
    // ...with one, it is damaged, with or without the master key.
    let out = cli.run(&["audit", "verify", "--expect-head", &head]).assert_code(4);
    out.assert_stdout_contains("DAMAGED");
    out.assert_stdout_contains(&format!("log ends before the expected head seq {seq}"));
    without_key(&cli, || cli.run(&["audit", "verify", "--expect-head", &head]).assert_code(4));
    let json = cli.json_code(&["audit", "verify", "--expect-head", &head], 4);
    assert_eq!(json["intact"].as_bool(), Some(false), "{json}");
    assert_eq!(json["report"]["chain_break"]["violation"]["kind"]["kind"], "truncated", "{json}");

    // Another entry at the head's place.
    let mut replaced = lines.clone();
    replaced[seq] = replaced[seq].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    write_log(&cli, &replaced);
    cli.run(&["audit", "verify", "--expect-head", &head]).assert_code(4).assert_stdout_contains("DAMAGED");

    let out = cli.run(&["audit", "verify", "--expect-head", "12"]).assert_code(2);
    out.assert_stderr_contains("SEQ:HASH");
}

#[test]
fn a_log_rehashed_without_the_key_fails_with_the_key() {
    let cli = store_with_history();
    let lines = log_lines(&cli);
    // The attacker edits entry 1 and recomputes every hash after it.
    let mut entries: Vec<AuditEntry> = lines
        .iter()
        .map(|l| {
            let mut v: serde_json::Map<String, Value> = serde_json::from_str(l).expect("json");
            v.remove("format");
            serde_json::from_value(Value::Object(v)).expect("entry")
        })
        .collect();
    entries[1].event.actor = "mallory".into();
    for i in 1..entries.len() {
        entries[i].prev_hash = entries[i - 1].hash.clone();
        let e = &entries[i];
        entries[i].hash = entry_hash(e.seq, &e.prev_hash, &e.event).expect("hash");
    }
    // Each line in the sink's field order.
    let forged: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{{\"format\":1,\"seq\":{},\"prev_hash\":{},\"hash\":{},\"key_id\":{},\"mac\":{},\"event\":{}}}",
                e.seq,
                json(&e.prev_hash),
                json(&e.hash),
                json(&e.key_id),
                json(&e.mac),
                json(&e.event)
            )
        })
        .collect();
    assert_eq!(forged[0], lines[0], "the rebuilt lines are canonical");
    write_log(&cli, &forged);

    without_key(&cli, || {
        cli.run(&["audit", "verify"]).assert_code(0).assert_stdout_contains("MACs NOT checked");
    });
    let out = cli.run(&["audit", "verify"]).assert_code(4);
    out.assert_stdout_contains("DAMAGED");
    out.assert_stdout_contains("line 2: chain broken at seq 1: entry not authenticated");
    // And the store refuses to extend the forged log.
    let out = cli.run(&["keyring", "create", "initech/token"]).assert_code(1);
    out.assert_stderr_contains("does not carry a valid MAC");
}

#[test]
fn an_injected_field_fails_verification_naming_the_line() {
    let cli = store_with_history();
    let mut lines = log_lines(&cli);
    lines[2] = lines[2].replacen("\"event\":{", "\"event\":{\"approved_by\":\"ceo\",", 1);
    write_log(&cli, &lines);
    let out = cli.run(&["audit", "verify"]).assert_code(4);
    out.assert_stdout_contains("line 3: not an entry");
    out.assert_stdout_contains("unknown field `approved_by`");
}

/// JSON text of a value (struct fields in declaration order).
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("json")
}

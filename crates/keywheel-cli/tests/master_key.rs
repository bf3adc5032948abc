//! The real `keywheel` binary and master keys: `init` writes a generated key
//! only to a file (0600) unless asked to print it; key files and audit logs
//! the group or others can access are refused with the `chmod` that fixes
//! them; a wrong master key names the key check value the store needs; a
//! next master key staged with `--next-master-key-file` or
//! `KEYWHEEL_MASTER_KEY_NEXT` opens the store through every phase of a KEK
//! rotation.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use support::Cli;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8")
}

/// A file store with one keyring, created by a plain `keywheel init` (key in
/// `./master.key`); returns its key check value.
fn store_with_keyring() -> (Cli, String) {
    let cli = Cli::new(None);
    let init = cli.json(&["init"]);
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);
    (cli, init["key_check"].as_str().expect("key_check").to_owned())
}

/// `kek generate` into `name` in the scratch directory: its key check value.
fn generate(cli: &Cli, name: &str) -> String {
    let out = cli.json(&["kek", "generate", "--out", path_str(&cli.dir().join(name))]);
    assert!(out["master_key"].is_null(), "not printed: {out}");
    out["key_check"].as_str().expect("key_check").to_owned()
}

#[test]
fn init_writes_a_new_master_key_only_to_a_new_owner_only_file() {
    let cli = Cli::new(None);
    let out = cli.run(&["init"]).assert_code(0);
    let key = std::fs::read_to_string(cli.key_file()).expect("./master.key written by default");
    assert_eq!(mode(&cli.key_file()), 0o600);
    assert!(!out.stdout.contains(key.trim()) && !out.stderr.contains(key.trim()), "never printed:\n{out:?}");
    out.assert_stdout_contains("A new master key was written to ./master.key (mode 0600)");
    out.assert_stdout_contains("--master-key-file ./master.key");
    // The file opens the store (the support passes it as KEYWHEEL_MASTER_KEY_FILE).
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);

    // An existing key file is never overwritten, and no store is created.
    let other = Cli::new(None);
    support::write_secret(&other.dir().join("elsewhere.key"), "keep me");
    let out = other.run(&["init", "--master-key-out", "elsewhere.key"]).assert_code(1);
    out.assert_stderr_contains("never overwrites a key file");
    assert_eq!(std::fs::read_to_string(other.dir().join("elsewhere.key")).expect("read"), "keep me");
    assert!(!other.store_dir().exists(), "no store without a saved key");

    // On an existing store, `init` without a key writes no key file.
    std::fs::remove_file(cli.key_file()).expect("move the key away");
    cli.run(&["init"]).assert_code(3).assert_stderr_contains("already a keywheel store");
    assert!(!cli.key_file().exists(), "no stray key file");

    // JSON names the file, not the key.
    let json_cli = Cli::new(None);
    let out = json_cli.json(&["init", "--master-key-out", "keys.b64"]);
    assert_eq!(out["master_key_file"], "keys.b64");
    assert!(out["master_key"].is_null(), "{out}");
    assert_eq!(mode(&json_cli.dir().join("keys.b64")), 0o600);
}

#[test]
fn init_prints_the_master_key_only_when_asked() {
    let cli = Cli::new(None);
    let out = cli.json(&["init", "--print-master-key"]);
    let key = out["master_key"].as_str().expect("printed on request");
    assert!(out["master_key_file"].is_null(), "{out}");
    assert!(!cli.key_file().exists(), "no file when printing");
    // The printed key opens the store.
    let mut create = cli.command(&["keyring", "create", "acme/token"]);
    let status = create.env("KEYWHEEL_MASTER_KEY", key).status().expect("run");
    assert_eq!(status.code(), Some(0));
    // Both at once is a usage error.
    Cli::new(None).run(&["init", "--print-master-key", "--master-key-out", "x.key"]).assert_code(2);
}

#[test]
fn key_files_the_group_or_others_can_access_are_refused_with_the_chmod() {
    let (cli, _) = store_with_keyring();
    let next = cli.dir().join("next.key");
    generate(&cli, "next.key");
    let key = path_str(&cli.key_file()).to_owned();
    let next_path = path_str(&next).to_owned();
    for bad in [0o640, 0o604, 0o644, 0o660, 0o620] {
        for (file, args) in [
            (&key, vec!["keyring", "list"]),
            (&next_path, vec!["--next-master-key-file", &next_path, "keyring", "list"]),
            (&next_path, vec!["kek", "rotate", "--new-master-key-file", &next_path]),
        ] {
            chmod(Path::new(file), bad);
            let out = cli.run(&args).assert_code(1);
            out.assert_stderr_contains(&format!("permissions {bad:04o}"));
            out.assert_stderr_contains(&format!("hint: chmod 600 {file}"));
            let json = cli.json_code(&args, 1);
            assert_eq!(json["error"]["hint"], format!("chmod 600 {file}"), "{json}");
            chmod(Path::new(file), 0o600);
        }
    }
    // Fixed as told, they work; nothing was rewrapped by the refused runs.
    cli.run(&["--next-master-key-file", &next_path, "keyring", "list"]).assert_code(0);
    let json = cli.json(&["kek", "rotate", "--new-master-key-file", &next_path]);
    assert_eq!(json["report"]["keys"], 1, "{json}");
}

#[test]
fn an_audit_log_the_group_or_others_can_read_is_refused_with_the_chmod() {
    let (cli, _) = store_with_keyring();
    let log = cli.store_dir().join("audit.jsonl");
    assert_eq!(mode(&log), 0o600);
    for bad in [0o644, 0o640, 0o604] {
        chmod(&log, bad);
        for args in [&["keyring", "list"][..], &["audit", "verify"]] {
            let out = cli.run(args).assert_code(1);
            out.assert_stderr_contains(&format!("chmod 600 {}", log.display()));
        }
    }
    chmod(&log, 0o600);
    cli.run(&["audit", "verify"]).assert_code(0);
}

#[test]
fn a_wrong_master_key_names_the_key_check_value_the_store_needs() {
    let (cli, store_check) = store_with_keyring();
    let wrong_check = generate(&cli, "wrong.key");
    let wrong = cli.dir().join("wrong.key");
    let out = cli.run(&["--master-key-file", path_str(&wrong), "keyring", "list"]).assert_code(1);
    out.assert_stderr_contains(&format!("need the master key with key check value {store_check}"));
    out.assert_stderr_contains(&format!("the given master key has {wrong_check}"));
    out.assert_stderr_contains(&format!("hint: give the master key whose key check value is {store_check}"));
    assert!(!out.stderr.contains("created with"), "{}", out.stderr);
    // A wrong next key does not help, and is named too.
    let mut args = vec!["--master-key-file", path_str(&wrong), "--next-master-key-file", path_str(&wrong)];
    args.extend(["keyring", "list"]);
    let json = cli.json_code(&args[..], 1);
    let message = json["error"]["message"].as_str().expect("message");
    assert!(message.contains(&store_check) && message.contains(&wrong_check), "{message}");
}

#[test]
fn a_staged_next_master_key_opens_the_store_in_every_phase_of_a_kek_rotation() {
    let (cli, old_check) = store_with_keyring();
    let new_check = generate(&cli, "next.key");
    let next = cli.dir().join("next.key");
    let next_b64 = std::fs::read_to_string(&next).expect("read").trim().to_owned();
    let staged = ["--next-master-key-file", path_str(&next)];
    let with = |extra: &[&str]| -> Vec<String> { staged.iter().chain(extra).map(|s| (*s).to_owned()).collect() };
    let run = |args: &[String]| cli.run(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // 1. Staged (current key wraps, next also opens): every command works.
    run(&with(&["keyring", "list"])).assert_code(0);
    run(&with(&["keyring", "create", "acme/database"])).assert_code(0);
    // A new key that is not the staged one is a usage error.
    let other = cli.dir().join("other.key");
    generate(&cli, "other.key");
    let out = run(&with(&["kek", "rotate", "--new-master-key-file", path_str(&other)])).assert_code(2);
    out.assert_stderr_contains("is not the staged next master key");

    // 2. `kek rotate` with nothing else rewraps to the staged key.
    let out = run(&with(&["kek", "rotate"])).assert_code(0);
    out.assert_stdout_contains(&format!(
        "Rewrapped 2 keys of 2 keyrings under the new master key (key check value {new_check})"
    ));
    assert!(!out.stdout.contains("No next master key was staged"), "{}", out.stdout);
    // Still staged (processes not yet promoted): works; run again: nothing left.
    run(&with(&["keyring", "list"])).assert_code(0);
    let again = run(&with(&["--json", "kek", "rotate"])).assert_code(0);
    let again: serde_json::Value = serde_json::from_str(&again.stdout).expect("json");
    assert_eq!(again["key_check"], new_check.as_str());
    assert_eq!((again["report"]["keys"].as_u64(), again["report"]["already_rewrapped"].as_u64()), (Some(0), Some(2)));
    // The old key alone no longer opens the store, and is told which key does.
    let out = cli.run(&["keyring", "list"]).assert_code(1);
    out.assert_stderr_contains(&format!("key check value {new_check}, the given master key has {old_check}"));

    // 3. Promoted: the next key as the current one, with the old one staged
    //    (a process mid-promotion) or not; also through the environment.
    run(&[
        "--master-key-file".into(),
        path_str(&next).into(),
        "--next-master-key-file".into(),
        path_str(&cli.key_file()).into(),
        "keyring".into(),
        "list".into(),
    ])
    .assert_code(0);
    let mut env_only = cli.command(&["keyring", "create", "acme/file"]);
    env_only.env_remove("KEYWHEEL_MASTER_KEY_FILE").env("KEYWHEEL_MASTER_KEY", &next_b64);
    assert_eq!(env_only.status().expect("run").code(), Some(0));
    // The environment variable stages a next key too (here the old one, harmlessly).
    let mut staged_env = cli.command(&["--master-key-file", path_str(&next), "keyring", "list"]);
    let old_b64 = std::fs::read_to_string(cli.key_file()).expect("read").trim().to_owned();
    assert_eq!(staged_env.env("KEYWHEEL_MASTER_KEY_NEXT", &old_b64).status().expect("run").code(), Some(0));
    let mut bad_env = cli.command(&["--master-key-file", path_str(&next), "keyring", "list"]);
    let out = bad_env.env("KEYWHEEL_MASTER_KEY_NEXT", "not a key").output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEYWHEEL_MASTER_KEY_NEXT does not hold a master key"));

    // 4. Old key dropped: the new key alone opens everything and authenticates the audit trail.
    std::fs::remove_file(cli.key_file()).expect("drop the old key");
    let promoted = |args: &[&str]| {
        let mut all = vec!["--master-key-file", path_str(&next)];
        all.extend_from_slice(args);
        cli.run(&all)
    };
    promoted(&["keyring", "list"]).assert_code(0);
    promoted(&["rotate", "acme/token"]).assert_code(0);
    let verified = promoted(&["audit", "verify"]).assert_code(0);
    assert!(!verified.stdout.contains("MACs NOT checked"), "{}", verified.stdout);
}

#[test]
fn kek_rotate_writes_a_generated_key_to_a_file_and_prints_it_only_when_asked() {
    let (cli, _) = store_with_keyring();
    let out = cli.run(&["kek", "rotate", "--new-master-key-out", "new.key"]).assert_code(0);
    let key = std::fs::read_to_string(cli.dir().join("new.key")).expect("written");
    assert_eq!(mode(&cli.dir().join("new.key")), 0o600);
    assert!(!out.stdout.contains(key.trim()), "never printed:\n{}", out.stdout);
    out.assert_stdout_contains("No next master key was staged: processes that do not hold the new one fail");
    // Printed on request (the store now needs the key written above).
    let mut printed = cli.command(&["--json", "kek", "rotate", "--print-master-key"]);
    printed.env("KEYWHEEL_MASTER_KEY_FILE", cli.dir().join("new.key"));
    let out = printed.output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let shown = json["master_key"].as_str().expect("printed on request");
    let mut reopen = cli.command(&["keyring", "list"]);
    reopen.env_remove("KEYWHEEL_MASTER_KEY_FILE").env("KEYWHEEL_MASTER_KEY", shown);
    assert_eq!(reopen.status().expect("run").code(), Some(0));
}

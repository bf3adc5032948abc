//! The read-only commands, driven through the real `keywheel` binary:
//! `status`, `census`, `verify` and `audit` without the master key (file
//! store and Postgres), `failures` by column name, `verify` telling foreign
//! versions from older and retired ones, a damaged keyring file that blocks
//! only its keyring, and `rollback` over an unfinished rotation job.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
#[path = "support/postgres.rs"]
mod postgres;
mod support;

use std::time::Duration;

use common::TestDb;
use keywheel_core::{Context, KeyringId, Keywheel};
use keywheel_postgres::PgPool;
use postgres::{app_keywheel, postgres_url};
use serde_json::Value;
use support::{Cli, snapshot};

const ROWS: i64 = 20;

fn ctx(column: &str, row: i64) -> Context {
    Context::field("users", column, &row.to_string())
}

/// A store (file or Postgres) with keyring acme/token, and `public.users`
/// holding ROWS rows whose `email` and `token` columns are encrypted under v1.
async fn setup(db: &TestDb, postgres_store: bool) -> (Cli, Keywheel, PgPool) {
    let url = postgres_url(db);
    let cli = Cli::new(postgres_store.then(|| url.clone()));
    db.execute("CREATE TABLE public.users (id bigint PRIMARY KEY, email bytea NOT NULL, token bytea NOT NULL)").await;
    cli.write_config(&format!(
        "database = \"{url}\"\n\
         [keyrings.\"acme/token\"]\n\
         preset = \"token\"\n\
         rollback_window = \"1h\"\n\
         [[sources]]\n\
         table = \"public.users\"\n\
         keyring = \"acme/token\"\n\
         columns = [\"email\", \"token\"]\n"
    ));
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);
    let pool = db.pool(2);
    let app = app_keywheel(&cli, postgres_store.then_some(&pool));
    let id: KeyringId = "acme/token".parse().expect("id");
    let client = db.client().await;
    for n in 1..=ROWS {
        let email =
            app.encrypt(&id, format!("user{n}@example.com").as_bytes(), &ctx("email", n)).await.expect("encrypt");
        let token = app.encrypt(&id, format!("token {n}").as_bytes(), &ctx("token", n)).await.expect("encrypt");
        client.execute("INSERT INTO public.users VALUES ($1, $2, $3)", &[&n, &email, &token]).await.expect("insert");
    }
    (cli, app, pool)
}

/// Run `f` with the master key file moved away (the CLI then has no master key).
fn without_master_key<T>(cli: &Cli, f: impl FnOnce() -> T) -> T {
    let aside = cli.dir().join("master.key.aside");
    std::fs::rename(cli.key_file(), &aside).expect("move the key away");
    let out = f();
    std::fs::rename(&aside, cli.key_file()).expect("put the key back");
    out
}

async fn reads_without_the_master_key(postgres_store: bool) {
    let Some(db) = TestDb::create().await else { return };
    let (cli, _app, _pool) = setup(&db, postgres_store).await;
    let rotation = cli.json(&["rotate", "acme/token"]);
    assert_eq!(rotation["counts"]["rewritten"], 2 * ROWS);
    let before = (!postgres_store).then(|| snapshot(&cli.store_dir()));

    without_master_key(&cli, || {
        let status = cli.json(&["status", "--census"]);
        assert_eq!(status["authenticated"], false);
        assert_eq!(status["keyrings"][0]["keyring"], "acme/token");
        assert_eq!(status["keyrings"][0]["current_version"], 2);
        assert_eq!(status["keyrings"][0]["census"]["2"], 2 * ROWS);
        // The configured source covers the keyring: no false "no source covers it".
        let warnings = status["keyrings"][0]["warnings"].to_string();
        assert!(!warnings.contains("no_source_covers"), "{warnings}");
        let text = cli.run(&["status"]).assert_code(0);
        text.assert_stdout_contains("acme/token").assert_stdout_contains("NOT checked against their seals");

        let census = cli.json(&["census"]);
        assert_eq!(census["counts"][0]["version"], 2);
        assert_eq!(census["counts"][0]["state"], "active");
        assert_eq!(census["counts"][0]["values"], 2 * ROWS);

        let verify = cli.json(&["verify", "acme/token"]);
        assert_eq!((verify["ok"].as_bool(), verify["authenticated"].as_bool()), (Some(true), Some(false)));
        cli.run(&["verify"]).assert_code(0).assert_stdout_contains("ok");

        cli.run(&["audit", "verify"]).assert_code(0).assert_stdout_contains("MACs NOT checked");
        let tail = cli.json(&["audit", "tail", "-n", "5"]);
        assert!(!tail.as_array().expect("entries").is_empty());

        cli.json_code(&["failures", "acme/token"], 0);

        // Anything that needs key material still says so, and changes nothing.
        cli.run(&["rotate", "acme/token"]).assert_code(1).assert_stderr_contains("no master key");
        cli.run(&["retire", "acme/token"]).assert_code(1).assert_stderr_contains("no master key");
    });
    if let Some(before) = before {
        assert_eq!(snapshot(&cli.store_dir()), before, "the read-only commands wrote nothing");
    }
    // With the key, the same commands authenticate the records.
    assert_eq!(cli.json(&["status"])["authenticated"], true);
    assert_eq!(cli.json(&["verify"])["authenticated"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_without_the_master_key_on_the_file_store() {
    reads_without_the_master_key(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_without_the_master_key_on_postgres() {
    reads_without_the_master_key(true).await;
}

/// Flip a byte of the ciphertext (after the 20-byte header and nonce) of one
/// row's `token`: the header still parses (v1), decryption fails.
async fn corrupt_token(db: &TestDb, row: i64) {
    db.execute(&format!(
        "UPDATE public.users SET token = set_byte(token, 24, (get_byte(token, 24) # 255)) WHERE id = {row}"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_listed_by_table_column_name_and_key() {
    let Some(db) = TestDb::create().await else { return };
    let (cli, _app, _pool) = setup(&db, false).await;
    corrupt_token(&db, 7).await;

    let report = cli.json_code(&["rotate", "acme/token"], 4);
    assert_eq!(report["counts"]["failed"], 1);
    let location = &report["failures"][0]["location"];
    assert_eq!((location["table"].as_str(), location["column"].as_str()), (Some("public.users"), Some("token")));
    assert_eq!(location["key"], "7");

    let listed = cli.json_code(&["failures", "acme/token"], 4);
    assert_eq!(listed["outstanding"], 1);
    let f = &listed["failures"][0];
    assert_eq!(
        (f["table"].as_str(), f["column"].as_str(), f["key"].as_str()),
        (Some("public.users"), Some("token"), Some("7"))
    );
    assert_eq!(f["version"], 1);
    assert_eq!(f["cursor"], "1:7", "the stored cursor is unchanged");
    let text = cli.run(&["failures", "acme/token"]).assert_code(4);
    text.assert_stdout_contains("TABLE").assert_stdout_contains("public.users  token   7");
    assert!(!text.stdout.contains("1:7"), "{}", text.stdout);

    // A job recorded before locations were kept: the configured source names the column.
    let jobs = cli.store_dir().join("jobs");
    let job_file = std::fs::read_dir(&jobs).expect("jobs").next().expect("one job").expect("entry").path();
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&job_file).expect("read")).expect("json");
    doc["job"]["failures"][0].as_object_mut().expect("failure").remove("location");
    std::fs::write(&job_file, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
    let old = cli.json_code(&["failures", "acme/token"], 4);
    assert_eq!((old["failures"][0]["column"].as_str(), old["failures"][0]["key"].as_str()), (Some("token"), Some("7")));
    // … and without that source, the index is shown, not a wrong name.
    let config = std::fs::read_to_string(cli.dir().join("keywheel.toml")).expect("config");
    cli.write_config(&config.replace("table = \"public.users\"", "table = \"public.other\""));
    let unknown = cli.json_code(&["failures", "acme/token"], 4);
    assert_eq!(unknown["failures"][0]["column"], Value::Null);
    assert_eq!(
        (unknown["failures"][0]["column_index"].as_u64(), unknown["failures"][0]["key"].as_str()),
        (Some(1), Some("7"))
    );
    cli.run(&["failures", "acme/token"]).assert_code(4).assert_stdout_contains("#1");
    cli.write_config(&config);
    let warns_failures = |status: &Value| {
        status["keyrings"][0]["warnings"].as_array().expect("warnings").iter().any(|w| w["kind"] == "failures_pending")
    };
    assert!(warns_failures(&cli.json(&["status"])), "the failure is pending");

    // The value repaired and rotated again: nothing outstanding.
    let id: KeyringId = "acme/token".parse().expect("id");
    let app = app_keywheel(&cli, None);
    let fixed = app.encrypt(&id, b"token 7", &ctx("token", 7)).await.expect("encrypt");
    db.client().await.execute("UPDATE public.users SET token = $1 WHERE id = 7", &[&fixed]).await.expect("repair");
    cli.json(&["rotate", "acme/token"]);
    cli.run(&["failures", "acme/token"]).assert_code(0).assert_stdout_contains("No outstanding failures");
    assert!(!warns_failures(&cli.json(&["status"])), "nothing pending after the repair");

    // Damaged again, then the tenant erased: its values are meant to be
    // unreadable, so the failure holds nothing back and is not a warning.
    corrupt_token(&db, 7).await;
    cli.run(&["rotate", "acme/token"]).assert_code(4);
    assert!(warns_failures(&cli.json(&["status"])), "the new failure is pending");
    cli.run(&["keyring", "destroy", "acme/token", "--reason", "erasure request"]).assert_code(0);
    assert!(!warns_failures(&cli.json(&["status"])), "nothing pending in an erased keyring");

    cli.run(&["failures", "nobody/token"]).assert_code(1).assert_stderr_contains("keyring create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_tells_foreign_older_and_retired_versions_apart() {
    let Some(db) = TestDb::create().await else { return };
    let (cli, _app, _pool) = setup(&db, true).await;
    // Two values claim v99, a version this keyring never had (written elsewhere).
    db.execute(
        "UPDATE public.users SET email = overlay(email placing '\\x00000063'::bytea from 5 for 4) WHERE id <= 2",
    )
    .await;
    let foreign = cli.json_code(&["verify", "acme/token"], 4);
    let k = &foreign["keyrings"][0];
    assert_eq!(
        (k["on_unknown"].as_u64(), k["on_older"].as_u64(), k["on_retired"].as_u64()),
        (Some(2), Some(0), Some(0))
    );
    assert_eq!(k["unknown_versions"], serde_json::json!([99]));
    let text = cli.run(&["verify"]).assert_code(4);
    text.assert_stdout_contains("UNKNOWN VERSION").assert_stdout_contains("FOREIGN VALUES");
    text.assert_stdout_contains("never had (v99)").assert_stdout_contains("keyring mapping");
    assert!(!text.stdout.contains("re-encrypt them with `keywheel rotate"), "no rotate advice:\n{}", text.stdout);

    // Rotate (the foreign values fail), roll back: the rest are on an older known version.
    let rotation = cli.json_code(&["rotate", "acme/token"], 4);
    assert_eq!(rotation["counts"]["failed"], 2);
    cli.run(&["rollback", "acme/token", "--reason", "test"]).assert_code(0);
    let older = cli.json_code(&["verify", "acme/token"], 4);
    let k = &older["keyrings"][0];
    assert_eq!((k["on_older"].as_u64(), k["on_unknown"].as_u64()), (Some(2 * ROWS as u64 - 2), Some(2)));
    let text = cli.run(&["verify"]).assert_code(4);
    text.assert_stdout_contains("VALUES LEFT BEHIND").assert_stdout_contains("`keywheel rotate acme/token`");

    // v2 disabled by force: its values are unreadable until it is enabled
    // again, and verify says how.
    cli.run(&["retire", "acme/token", "--version", "2", "--force", "--reason", "test"]).assert_code(0);
    let disabled = cli.json_code(&["verify", "acme/token"], 4);
    let k = &disabled["keyrings"][0];
    assert_eq!((k["on_disabled"].as_u64(), k["on_older"].as_u64()), (Some(2 * ROWS as u64 - 2), Some(0)));
    assert_eq!(k["disabled_versions"], serde_json::json!([2]));
    let text = cli.run(&["verify"]).assert_code(4);
    text.assert_stdout_contains("VALUES ON DISABLED KEYS").assert_stdout_contains("keywheel keyring enable acme/token");
    // Destroyed at once: its values are lost, and verify says so.
    cli.run(&["retire", "acme/token", "--version", "2", "--now", "--force", "--reason", "test"]).assert_code(0);
    let retired = cli.json_code(&["verify", "acme/token"], 4);
    let k = &retired["keyrings"][0];
    assert_eq!((k["on_retired"].as_u64(), k["on_older"].as_u64()), (Some(2 * ROWS as u64 - 2), Some(0)));
    let text = cli.run(&["verify"]).assert_code(4);
    text.assert_stdout_contains("UNREADABLE VALUES").assert_stdout_contains("data loss");
    text.assert_stdout_contains("from a backup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_keyring_file_is_reported_and_the_other_keyrings_keep_working() {
    let cli = Cli::new(None);
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    for k in ["acme/token", "zeta/token"] {
        cli.run(&["keyring", "create", k]).assert_code(0);
    }
    let keyrings = cli.store_dir().join("keyrings");
    let acme_file = std::fs::read_dir(&keyrings)
        .expect("keyrings")
        .map(|e| e.expect("entry").path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("acme.token.")))
        .expect("acme's file");
    let good = std::fs::read(&acme_file).expect("read");
    std::fs::write(&acme_file, &good[..good.len() / 2]).expect("truncate");

    for with_key in [true, false] {
        let run = |f: &dyn Fn()| if with_key { f() } else { without_master_key(&cli, f) };
        run(&|| {
            let status = cli.json_code(&["status"], 4);
            let names: Vec<&str> =
                status["keyrings"].as_array().expect("keyrings").iter().filter_map(|k| k["keyring"].as_str()).collect();
            assert_eq!(names, ["zeta/token"], "with key: {with_key}");
            let damaged = &status["damaged"][0];
            assert_eq!(damaged["kind"], "keyring");
            assert_eq!(damaged["file"].as_str(), acme_file.to_str());
            assert!(damaged["problem"].as_str().expect("problem").contains("truncated"), "{damaged}");
            let text = cli.run(&["status"]).assert_code(4);
            text.assert_stdout_contains("zeta/token").assert_stdout_contains("DAMAGED");
            text.assert_stdout_contains(acme_file.to_str().expect("utf-8"));
        });
    }
    // The other keyring rotates; the damaged one fails naming its file, which is never rewritten.
    let rotation = cli.json(&["rotate", "zeta/token"]);
    assert_eq!((rotation["phase"].as_str(), rotation["to"].as_u64()), (Some("completed"), Some(2)));
    let refused = cli.run(&["rotate", "acme/token"]).assert_code(1);
    refused.assert_stderr_contains(acme_file.to_str().expect("utf-8")).assert_stderr_contains("truncated");
    assert_eq!(std::fs::read(&acme_file).expect("read"), &good[..good.len() / 2]);
    std::fs::write(&acme_file, &good).expect("restore");
    assert_eq!(cli.json(&["status"])["keyrings"].as_array().expect("keyrings").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_postgres_keyring_is_reported_and_the_others_still_shown() {
    let Some(db) = TestDb::create().await else { return };
    let cli = Cli::new(Some(postgres_url(&db)));
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    for k in ["acme/token", "zeta/token"] {
        cli.run(&["keyring", "create", k]).assert_code(0);
    }
    db.execute("UPDATE keywheel.key_versions SET compromised = true WHERE keyring_id = 'acme/token'").await;
    let status = cli.json_code(&["status"], 4);
    assert_eq!(status["keyrings"][0]["keyring"], "zeta/token");
    assert_eq!(status["keyrings"].as_array().expect("keyrings").len(), 1);
    assert_eq!(status["damaged"][0]["keyring"], "acme/token");
    assert!(status["damaged"][0]["problem"].as_str().expect("problem").contains("seal"), "{status}");
    cli.run(&["status"]).assert_code(4).assert_stdout_contains("DAMAGED").assert_stdout_contains("acme/token keyring");
    // The other keyring still rotates; the tampered one is refused.
    cli.json(&["rotate", "zeta/token"]);
    cli.run(&["rotate", "acme/token"]).assert_code(1).assert_stderr_contains("acme/token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_over_an_unfinished_job_says_which_job_and_to_resume_it() {
    let cli = Cli::new(None);
    cli.write_config("[keyrings.\"acme/token\"]\npreset = \"token\"\nactivation_delay = \"1h\"\n");
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);
    // A rotation waiting for its activation delay, killed (no clean stop).
    let mut child = cli
        .command(&["rotate", "acme/token", "--lease-ttl", "3s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let jobs = cli.store_dir().join("jobs");
    let started = std::time::Instant::now();
    let job_id = loop {
        let waiting = std::fs::read_dir(&jobs).ok().and_then(|mut d| d.next()).and_then(|e| {
            let doc: Value = serde_json::from_slice(&std::fs::read(e.ok()?.path()).ok()?).ok()?;
            doc["job"]["phase"]
                .get("wait_activation")
                .is_some()
                .then(|| doc["job"]["id"].as_str().map(str::to_owned))?
        });
        if let Some(id) = waiting {
            break id;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the rotation never reached its activation delay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().expect("kill");
    child.wait().expect("wait");

    // Its lease is still live: the hint names the job, its phase and its holder.
    let held = cli.run(&["rollback", "acme/token", "--reason", "test"]).assert_code(3);
    held.assert_stderr_contains(&job_id).assert_stderr_contains("wait_activation");
    held.assert_stderr_contains("lease is held by cli:operator");

    // Once the lease has expired: nothing to roll back yet, resume the job first.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let stuck = cli.run(&["rollback", "acme/token", "--reason", "test"]).assert_code(3);
    stuck.assert_stderr_contains(&job_id).assert_stderr_contains("wait_activation");
    stuck.assert_stderr_contains("run `keywheel resume acme/token` first");
}

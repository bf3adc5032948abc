//! Keyring patterns: `[keyrings."*/token"]` gives its policy to every
//! tenant's token keyring — those in the store and those of every tenant found
//! in a source's `tenant_column` — and an exact entry wins over it. `keyring
//! apply`, `status --all` and `rotate --all` act on exactly those keyrings.
//!
//! Postgres from the keywheel-postgres test harness (the sources' table).
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
#[path = "support/postgres.rs"]
mod pg;
mod support;

use common::TestDb;
use keywheel_core::KeyringId;
use serde_json::Value;
use support::Cli;

fn by_keyring<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array().expect("a list").iter().find(|k| k["keyring"] == id).unwrap_or_else(|| panic!("{id} in {list}"))
}

fn keyrings(list: &Value) -> Vec<&str> {
    list.as_array().expect("a list").iter().map(|k| k["keyring"].as_str().expect("id")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_reach_every_tenant_and_all_acts_on_them() {
    let Some(db) = TestDb::create().await else { return };
    let url = pg::postgres_url(&db);
    let cli = Cli::new(None);
    db.execute("CREATE TABLE public.users (id bigint PRIMARY KEY, tenant text, token bytea)").await;
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    // In the store before the file names them: a token keyring no table
    // uses yet, and a keyring of another purpose.
    cli.run(&["keyring", "create", "omega/token"]).assert_code(0);
    cli.run(&["keyring", "create", "acme/session"]).assert_code(0);
    // Tenants known to the application before any of their values is encrypted.
    db.execute("INSERT INTO public.users VALUES (1, 'acme', NULL), (2, 'beta', NULL), (3, NULL, NULL)").await;
    cli.write_config(&format!(
        "database = \"{url}\"\n\
         [keyrings.\"*/token\"]\ngrace_period = \"1h\"\nrollback_window = \"10m\"\n\
         [keyrings.\"acme/token\"]\ngrace_period = \"2h\"\n\
         [[sources]]\ntable = \"public.users\"\ntenant_column = \"tenant\"\npurpose = \"token\"\ncolumns = [\"token\"]\n"
    ));

    // Before apply: status --all names what is missing.
    let status = cli.json(&["status", "--all"]);
    assert_eq!(keyrings(&status["keyrings"]), ["omega/token"]);
    assert_eq!(status["not_created"], serde_json::json!(["acme/token", "beta/token"]));
    cli.run(&["status", "--all"]).assert_code(0).assert_stdout_contains("Not created yet");

    let dry = cli.json(&["keyring", "apply", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(keyrings(&dry["keyrings"]), ["acme/token", "beta/token", "omega/token"]);
    assert_eq!(cli.json(&["keyring", "list"]).as_array().expect("list").len(), 2, "a dry run changes nothing");
    let applied = cli.json(&["keyring", "apply"]);
    assert_eq!(by_keyring(&applied["keyrings"], "acme/token")["action"], "created");
    assert_eq!(by_keyring(&applied["keyrings"], "acme/token")["entry"], "acme/token");
    assert_eq!(by_keyring(&applied["keyrings"], "beta/token")["action"], "created");
    assert_eq!(by_keyring(&applied["keyrings"], "beta/token")["entry"], "*/token");
    assert_eq!(by_keyring(&applied["keyrings"], "omega/token")["action"], "policy updated");
    let listed = cli.json(&["keyring", "list"]);
    let grace = |id: &str| by_keyring(&listed, id)["policy"]["grace_period_secs"].as_u64().expect("secs");
    assert_eq!(grace("acme/token"), 7200, "the exact entry wins");
    assert_eq!(grace("beta/token"), 3600);
    assert_eq!(grace("omega/token"), 3600);
    assert_eq!(by_keyring(&listed, "beta/token")["policy"]["rollback_window_secs"], 600);
    assert_eq!(grace("acme/session"), 7 * 86_400, "another purpose: left alone");
    let again = cli.json(&["keyring", "apply"]);
    assert!(again["keyrings"].as_array().unwrap().iter().all(|k| k["action"] == "unchanged"), "{again}");

    // The application encrypts values per tenant; a new tenant appears.
    let app = pg::app_keywheel(&cli, None);
    let (acme, beta): (KeyringId, KeyringId) = ("acme/token".parse().unwrap(), "beta/token".parse().unwrap());
    pg::insert_users(&db, &app, &acme, 10..=19, true).await;
    pg::insert_users(&db, &app, &beta, 20..=24, true).await;
    db.execute("INSERT INTO public.users VALUES (30, 'delta', NULL)").await;

    let status = cli.json(&["status", "--all"]);
    assert_eq!(keyrings(&status["keyrings"]), ["acme/token", "beta/token", "omega/token"]);
    assert_eq!(status["not_created"], serde_json::json!(["delta/token"]));
    // Without --all: every keyring of the store, and no such list.
    let everything = cli.json(&["status"]);
    assert_eq!(everything["keyrings"].as_array().unwrap().len(), 4);
    assert!(everything.get("not_created").is_none());

    // rotate --all: each one after another; the missing one fails, the
    // others still rotate, and the exit code is the worst (1).
    let all = cli.json_code(&["rotate", "--all"], 1);
    assert_eq!(all["exit_code"], 1);
    assert_eq!(keyrings(&all["keyrings"]), ["acme/token", "beta/token", "delta/token", "omega/token"]);
    let acme_run = by_keyring(&all["keyrings"], "acme/token");
    assert_eq!((acme_run["exit_code"].as_u64(), acme_run["report"]["to"].as_u64()), (Some(0), Some(2)));
    assert_eq!(acme_run["report"]["counts"]["rewritten"], 10);
    assert_eq!(by_keyring(&all["keyrings"], "beta/token")["report"]["counts"]["rewritten"], 5);
    let delta_run = by_keyring(&all["keyrings"], "delta/token");
    assert_eq!(delta_run["exit_code"], 1);
    assert!(delta_run["error"]["hint"].as_str().unwrap().contains("keyring apply"), "{delta_run}");
    assert_eq!(by_keyring(&all["keyrings"], "omega/token")["exit_code"], 0);
    let out = cli.run(&["rotate", "--all"]).assert_code(1);
    out.assert_stderr_contains("delta/token: error: keyring delta/token does not exist yet");
    out.assert_stdout_contains("Rotated 3 of 4 keyrings; 1 did not complete.");
    // acme/session was not rotated; the others were, twice.
    let listed = cli.json(&["keyring", "list"]);
    assert_eq!(by_keyring(&listed, "acme/session")["versions"].as_array().unwrap().len(), 1);
    assert_eq!(by_keyring(&listed, "beta/token")["versions"].as_array().unwrap().len(), 3);
    let verified = cli.json(&["verify"]);
    assert_eq!(verified["ok"], true, "{verified}");

    cli.run(&["keyring", "apply"]).assert_code(0).assert_stdout_contains("delta/token: created");
    let all = cli.json(&["rotate", "--all", "--dry-run"]);
    assert_eq!(all["exit_code"], 0);
    assert!(all["keyrings"].as_array().unwrap().iter().all(|k| k["report"]["dry_run"] == true), "{all}");
    // Without any entry in the file, --all has nothing to act on.
    cli.write_config(&format!("database = \"{url}\"\n"));
    cli.run(&["rotate", "--all"]).assert_code(1).assert_stderr_contains("names no keyring");
    cli.run(&["rotate", "--all", "acme/token"]).assert_code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_is_no_keyring_tenant_is_named() {
    let Some(db) = TestDb::create().await else { return };
    let url = pg::postgres_url(&db);
    let cli = Cli::new(None);
    db.execute("CREATE TABLE public.users (id bigint PRIMARY KEY, tenant text, token bytea)").await;
    db.execute("INSERT INTO public.users VALUES (1, 'a/b', NULL)").await;
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.write_config(&format!(
        "database = \"{url}\"\n[keyrings.\"*/token\"]\n\
         [[sources]]\ntable = \"public.users\"\ntenant_column = \"tenant\"\npurpose = \"token\"\ncolumns = [\"token\"]\n"
    ));
    let out = cli.run(&["keyring", "apply"]).assert_code(1);
    out.assert_stderr_contains("tenant \"a/b\"");
    out.assert_stderr_contains("hint: keywheel lists the tenants of public.users");
    assert_eq!(cli.json(&["keyring", "list"]).as_array().expect("list").len(), 0, "nothing created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rotate_all_stops_after_the_keyring_it_interrupted() {
    let Some(db) = TestDb::create().await else { return };
    let url = pg::postgres_url(&db);
    let cli = Cli::new(None);
    db.execute("CREATE TABLE public.users (id bigint PRIMARY KEY, tenant text, token bytea)").await;
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.write_config(&format!(
        "database = \"{url}\"\n[keyrings.\"*/token\"]\n\
         [[sources]]\ntable = \"public.users\"\ntenant_column = \"tenant\"\npurpose = \"token\"\ncolumns = [\"token\"]\n"
    ));
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);
    cli.run(&["keyring", "create", "beta/token"]).assert_code(0);
    let app = pg::app_keywheel(&cli, None);
    pg::insert_users(&db, &app, &"acme/token".parse().unwrap(), 1..=200, true).await;
    pg::insert_users(&db, &app, &"beta/token".parse().unwrap(), 201..=210, true).await;

    // acme's 200 values at 20 per second: interrupted once its job exists.
    let child = cli
        .command(&["--json", "rotate", "--all", "--rate", "20", "--batch-size", "10"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let jobs = cli.store_dir().join("jobs");
    let started = std::time::Instant::now();
    while std::fs::read_dir(&jobs).map_or(true, |mut d| d.next().is_none()) {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the rotation never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sent = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(sent.success());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let all: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(all["exit_code"], 130);
    assert_eq!(keyrings(&all["keyrings"]), ["acme/token"]);
    assert_eq!(all["keyrings"][0]["report"]["phase"], "cancelled");
    assert_eq!(all["not_started"], serde_json::json!(["beta/token"]));
    let listed = cli.json(&["keyring", "list"]);
    assert_eq!(by_keyring(&listed, "beta/token")["versions"].as_array().unwrap().len(), 1, "beta not rotated");
}

#[test]
fn a_pattern_is_not_a_keyring_name() {
    let cli = Cli::new(None);
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    let refused = cli.json_code(&["keyring", "create", "*/token"], 2);
    assert!(refused["error"]["message"].as_str().expect("message").contains("is a pattern"), "{refused}");
    let list = cli.json(&["keyring", "list"]);
    assert!(
        list.as_array().is_none_or(Vec::is_empty) || list["keyrings"].as_array().is_some_and(Vec::is_empty),
        "{list}"
    );
}

//! The real `keywheel` binary driven through the operator runbook, on the
//! file store and on Postgres (application table in Postgres for both):
//! init → keyring create → status → rotate --dry-run → rotate → verify →
//! rollback → retire refused (values left) → rotate → retire refused (grace
//! period) → census → retire → emergency → kek rotate → audit verify.
//!
//! The Postgres server comes from the keywheel-postgres test harness
//! (`KEYWHEEL_TEST_DATABASE_URL`, the local server, or a throwaway `initdb`
//! cluster; a loud skip unless `KEYWHEEL_REQUIRE_POSTGRES` is set).
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
#[path = "support/postgres.rs"]
mod pg;
mod support;

use std::time::Duration;

use common::TestDb;
use keywheel_core::{KeyringId, Keywheel, LocalKek};
use keywheel_postgres::tokio_postgres::error::SqlState;
use pg::{app_keywheel, ctx, plaintext, postgres_url, postgres_url_as};
use serde_json::Value;
use support::Cli;

const ROWS: i64 = 300;

/// Every row decrypts to what the application wrote, through a fresh `Keywheel`.
async fn check_rows(db: &TestDb, kw: &Keywheel, id: &KeyringId) {
    let client = db.client().await;
    let rows = client.query("SELECT id, token FROM public.users ORDER BY id", &[]).await.expect("select");
    assert_eq!(rows.len() as i64, ROWS, "no row lost");
    for row in rows {
        let (n, value): (i64, Vec<u8>) = (row.get(0), row.get(1));
        let got = kw.decrypt(id, &value, &ctx(n)).await.expect("every row decrypts");
        assert_eq!(&got[..], plaintext(n).as_slice());
    }
}

fn versions(census: &Value) -> Vec<(u64, u64)> {
    census["counts"]
        .as_array()
        .expect("counts")
        .iter()
        .map(|c| (c["version"].as_u64().expect("version"), c["values"].as_u64().expect("values")))
        .collect()
}

async fn runbook(postgres_store: bool) {
    let Some(db) = TestDb::create().await else { return };
    let url = postgres_url(&db);
    let cli = Cli::new(if postgres_store { Some(url.clone()) } else { None });
    db.execute("CREATE TABLE public.users (id bigint PRIMARY KEY, token bytea NOT NULL)").await;
    cli.write_config(&format!(
        "database = \"{url}\"\n\
         [keyrings.\"acme/token\"]\n\
         preset = \"token\"\n\
         grace_period = \"2s\"\n\
         rollback_window = \"1h\"\n\
         [[sources]]\n\
         table = \"public.users\"\n\
         keyring = \"acme/token\"\n\
         columns = [\"token\"]\n"
    ));
    let id: KeyringId = "acme/token".parse().expect("id");

    // init: a new master key, written to a file only its owner can read.
    let out = cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    out.assert_stdout_contains("master key was written to");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(cli.key_file()).expect("key file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is private");
    assert!(!out.stdout.contains(std::fs::read_to_string(cli.key_file()).expect("key").trim()), "never printed");

    cli.run(&["keyring", "create", "acme/token"]).assert_code(0).assert_stdout_contains("v1 active");
    cli.run(&["keyring", "create", "acme/token"]).assert_code(3).assert_stderr_contains("already exists");

    // The application writes its values under v1.
    let pool = db.pool(4);
    let app = app_keywheel(&cli, postgres_store.then_some(&pool));
    let client = db.client().await;
    for n in 1..=ROWS {
        let value = app.encrypt(&id, &plaintext(n), &ctx(n)).await.expect("encrypt");
        client.execute("INSERT INTO public.users VALUES ($1, $2)", &[&n, &value]).await.expect("insert");
    }

    let status = cli.run(&["status"]).assert_code(0);
    status.assert_stdout_contains("acme/token");
    status.assert_stdout_contains("v1");
    let before = cli.json(&["census"]);
    assert_eq!(versions(&before), vec![(1, ROWS as u64)]);

    // A dry run writes nothing.
    let dry = cli.json(&["rotate", "acme/token", "--dry-run"]);
    assert_eq!(dry["dry_run"], Value::Bool(true));
    assert_eq!(dry["counts"]["rewritten"], ROWS);
    assert_eq!(cli.json(&["census"]), before, "the dry run changed nothing");
    assert_eq!(cli.json(&["keyring", "list"])[0]["versions"].as_array().expect("versions").len(), 1);

    let rotation = cli.json(&["rotate", "acme/token", "--batch-size", "64"]);
    assert_eq!(rotation["phase"], "completed");
    assert_eq!((rotation["from"].as_u64(), rotation["to"].as_u64()), (Some(1), Some(2)));
    assert_eq!(rotation["counts"]["rewritten"], ROWS);
    // The CLI process flushed the re-encryptions into v2's usage count before exiting.
    assert_eq!(cli.json(&["keyring", "list"])[0]["versions"][1]["encryptions"], ROWS);
    cli.run(&["verify", "acme/token"]).assert_code(0).assert_stdout_contains("ok");

    // Roll back: v1 active again, v2 deprecated but still readable.
    cli.run(&["rollback", "acme/token", "--reason", "canary errors"])
        .assert_code(0)
        .assert_stdout_contains("v1 is active again");
    check_rows(&db, &app_keywheel(&cli, postgres_store.then_some(&pool)), &id).await;
    cli.run(&["verify", "acme/token"]).assert_code(4).assert_stdout_contains("VALUES LEFT BEHIND");
    tokio::time::sleep(Duration::from_millis(2100)).await; // v2's grace period
    let refused = cli.run(&["retire", "acme/token", "--version", "2"]).assert_code(3);
    refused.assert_stderr_contains(&format!("{ROWS} values still use it"));
    refused.assert_stderr_contains("hint:");

    // Roll forward: v3; the values move from v2 to v3.
    let rotation = cli.json(&["rotate", "acme/token"]);
    assert_eq!((rotation["phase"].as_str(), rotation["to"].as_u64()), (Some("completed"), Some(3)));
    assert_eq!(rotation["counts"]["rewritten"], ROWS);
    // v1 was deprecated a moment ago: its grace period refuses.
    cli.run(&["retire", "acme/token"]).assert_code(3).assert_stderr_contains("grace period ends");
    assert_eq!(versions(&cli.json(&["census", "acme/token"])), vec![(3, ROWS as u64)]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // --now: destroyed at once instead of disabled for the quarantine.
    let retired = cli.run(&["retire", "acme/token", "--now"]).assert_code(0);
    retired.assert_stdout_contains("Retired acme/token v1");
    retired.assert_stdout_contains("Retired acme/token v2");
    let listed = cli.json(&["keyring", "list"]);
    let states: Vec<&str> = listed[0]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["retired", "retired", "active"]);

    // Emergency: v3 compromised; v4 takes over and v3 is retired at once.
    let emergency =
        cli.json(&["rotate", "acme/token", "--emergency", "--reason", "key leaked in a log", "--settle", "0s"]);
    assert_eq!((emergency["phase"].as_str(), emergency["to"].as_u64()), (Some("completed"), Some(4)));
    let listed = cli.json(&["keyring", "list"]);
    assert_eq!(listed[0]["versions"][2]["state"], "retired", "the compromised version is gone");
    // Lease time-to-live and settle time are options; bad values are usage errors.
    cli.run(&["rotate", "acme/token", "--lease-ttl", "0s"]).assert_code(2).assert_stderr_contains("at least 1s");
    cli.run(&["rotate", "acme/token", "--settle", "5 weeks"]).assert_code(2).assert_stderr_contains("--settle");

    // KEK rotation: a new master key; the old one no longer opens the store.
    let new_key = cli.dir().join("new-master.key");
    let kek = cli.run(&["kek", "rotate", "--new-master-key-out", new_key.to_str().expect("utf-8")]).assert_code(0);
    kek.assert_stdout_contains("Rewrapped 1 key of 1 keyring under the new master key");
    cli.run(&["status"]).assert_code(1).assert_stderr_contains("wrong master key");
    std::fs::rename(&new_key, cli.key_file()).expect("swap in the new key");
    cli.run(&["status"]).assert_code(0);
    check_rows(&db, &app_keywheel(&cli, postgres_store.then_some(&pool)), &id).await;

    let audit = cli.run(&["audit", "verify"]).assert_code(0);
    audit.assert_stdout_contains("intact");
    let tail = cli.json(&["audit", "tail", "-n", "200"]);
    let kinds: Vec<&str> =
        tail.as_array().expect("entries").iter().filter_map(|e| e["event"]["kind"]["type"].as_str()).collect();
    for expected in ["keyring_created", "rotation_completed", "rollback", "retirement_refused", "key_retired"] {
        assert!(kinds.contains(&expected), "{expected} in {kinds:?}");
    }
    assert!(kinds.contains(&"kek_rotated"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_on_the_file_store() {
    runbook(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_on_postgres() {
    runbook(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_or_column_is_a_clear_error() {
    let Some(db) = TestDb::create().await else { return };
    let url = postgres_url(&db);
    let cli = Cli::new(None);
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);
    cli.write_config(&format!(
        "database = \"{url}\"\n[[sources]]\ntable = \"public.nope\"\nkeyring = \"acme/token\"\ncolumns = [\"token\"]\n"
    ));
    let out = cli.run(&["rotate", "acme/token"]).assert_code(1);
    out.assert_stderr_contains("nope");
    out.assert_stderr_contains("hint: check the [[sources]] entry");
    // The refused rotation changed nothing.
    assert_eq!(cli.json(&["keyring", "list"])[0]["versions"].as_array().expect("versions").len(), 1);

    db.execute("CREATE TABLE public.nope (id bigint PRIMARY KEY, token integer)").await;
    cli.run(&["census"]).assert_code(1).assert_stderr_contains("token");

    // A value that is not keywheel ciphertext is listed as a failure, never overwritten.
    db.execute(
        "ALTER TABLE public.nope ALTER COLUMN token TYPE bytea USING NULL; INSERT INTO public.nope VALUES (1, 'plain')",
    )
    .await;
    let report = cli.json_code(&["rotate", "acme/token"], 4);
    assert_eq!(report["counts"]["failed"], 1);
    let client = db.client().await;
    let kept: Vec<u8> = client.query_one("SELECT token FROM public.nope", &[]).await.expect("row").get(0);
    assert_eq!(kept, b"plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_needs_init_first() {
    let Some(db) = TestDb::create().await else { return };
    let cli = Cli::new(Some(postgres_url(&db)));
    let key = LocalKek::generate_master_key().expect("key");
    support::write_secret(&cli.key_file(), secrecy::ExposeSecret::expose_secret(&key));
    cli.run(&["status"]).assert_code(1).assert_stderr_contains("keywheel init");
    cli.run(&["init"]).assert_code(0).assert_stdout_contains("Created keywheel's tables");
    cli.run(&["init"]).assert_code(0).assert_stdout_contains("already at version");
    cli.run(&["status"]).assert_code(0).assert_stdout_contains("No keyrings yet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_as_owner_with_an_app_role_keeps_the_app_away_from_the_audit_log() {
    let Some(db) = TestDb::create().await else { return };
    let suffix = format!("{:012x}", common::random_u64() & 0xffff_ffff_ffff);
    let (owner, app) = (format!("kw_cli_owner_{suffix}"), format!("kw_cli_app_{suffix}"));
    let roles = db.with_roles(&[&owner, &app]).await;
    let db = roles.db();
    db.execute(&format!("GRANT CREATE ON DATABASE \"{}\" TO \"{owner}\"", db.name)).await;

    let as_owner = Cli::new(Some(postgres_url_as(db, Some(&owner))));
    let key = as_owner.key_file();
    let out = as_owner.run(&["init", "--app-role", &app, "--master-key-out", key.to_str().expect("utf-8")]);
    out.assert_code(0).assert_stdout_contains(&format!("Granted role {app}"));
    as_owner.run(&["init", "--app-role", &owner]).assert_code(1).assert_stderr_contains("owns the audit log");

    let as_app = Cli::new(Some(postgres_url_as(db, Some(&app))));
    std::fs::copy(&key, as_app.key_file()).expect("copy the master key");
    as_app.run(&["keyring", "create", "acme/token"]).assert_code(0);
    as_app.run(&["audit", "verify"]).assert_code(0).assert_stdout_contains("intact; MACs checked");
    let client = db.client_as(&app).await;
    for sql in ["DELETE FROM keywheel.audit_log", "ALTER TABLE keywheel.audit_log DISABLE TRIGGER ALL"] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {err:?}");
    }
    Cli::new(None).run(&["init", "--app-role", "app"]).assert_code(2).assert_stderr_contains("for Postgres stores");
}

//! Legacy data through the real `keywheel` binary (issue #14): `legacy`
//! settings of `[[sources]]` columns checked with FILE:LINE errors, keys from
//! the environment or an owner-only file, `census` and `verify` counting
//! legacy values per format, `rotate --dry-run` and `rotate` migrating them,
//! and the census saying when the legacy key material can be forgotten.
//! Fernet tokens come from Python's `cryptography`, Lockbox values from
//! Ruby's `lockbox` (skipped loudly without them, failing under `CI=true`).
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
#[path = "support/postgres.rs"]
mod postgres;
mod support;

use common::TestDb;
use keywheel_conformance::legacy_tools;
use keywheel_core::{Context, KeyringId};
use postgres::{app_keywheel, postgres_url};
use serde_json::{Value, json};
use support::{Cli, Output, write_secret};

const ROWS: i64 = 20;

fn ctx(column: &str, row: i64) -> Context {
    Context::field("people", column, &row.to_string())
}

fn email(row: i64) -> Vec<u8> {
    format!("person{row}@example.com").into_bytes()
}

fn phone(row: i64) -> Vec<u8> {
    format!("+33 6 00 00 00 {row:02}").into_bytes()
}

/// Run with extra environment variables.
fn run_env(cli: &Cli, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = cli.command(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run keywheel");
    Output {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json_env(cli: &Cli, env: &[(&str, &str)], args: &[&str], code: i32) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run_env(cli, env, &all).assert_code(code);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{out:?}: stdout is not JSON: {e}"))
}

const SOURCE_HEAD: &str = "[[sources]]\ntable = \"public.people\"\nkeyring = \"acme/token\"\n";

#[test]
fn legacy_settings_are_checked_with_file_and_line() {
    let cli = Cli::new(None);
    let cases = [
        (
            "columns = [{ name = \"e\", form = \"text\", legacy = { format = \"plaintext\" } }]\n",
            4,
            "needs an end date",
        ),
        ("columns = [{ name = \"e\", legacy = { format = \"rot13\" } }]\n", 4, "not \"rot13\""),
        ("columns = [{ name = \"e\", legacy = { format = \"fernet\" } }]\n", 4, "needs its keys"),
        (
            "columns = [{ name = \"e\", legacy = { format = [\"fernet\", \"lockbox\"], keys_env = \"K\" } }]\n",
            4,
            "one keyed legacy format per column",
        ),
        (
            "columns = [\n  { name = \"e\", legacy = { format = \"plaintext\", accept_plaintext_until = \"2027-02-30T00:00:00Z\" } },\n]\n",
            5,
            "is not a UTC time",
        ),
        ("columns = [{ name = \"e\", legacy = { format = \"fernet\", keys_env = \"K\", colour = 1 } }]\n", 4, "colour"),
        (
            "columns = [{ name = \"e\", legacy = { format = \"fernet\", lockbox_master_key_env = \"K\" } }]\n",
            4,
            "lockbox_master_key_env is for the lockbox format",
        ),
    ];
    for (columns, line, what) in cases {
        cli.write_config(&format!("{SOURCE_HEAD}{columns}"));
        let out = cli.run(&["census"]).assert_code(1);
        out.assert_stderr_contains(&format!("keywheel.toml:{line}: "));
        out.assert_stderr_contains(what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_verify_and_rotate_migrate_legacy_columns() {
    let Some(db) = TestDb::create().await else { return };
    let test = "census_verify_and_rotate_migrate_legacy_columns";
    let fernet_rows: Vec<i64> = (1..=10).collect();
    let Some(fernet) = legacy_tools::fernet_tokens(test, &fernet_rows.iter().map(|r| email(*r)).collect::<Vec<_>>())
    else {
        return;
    };
    let Some(lockbox) = legacy_tools::lockbox_values(test, &(1..=ROWS).map(phone).collect::<Vec<_>>()) else {
        return;
    };
    let url = postgres_url(&db);
    let cli = Cli::new(Some(url.clone()));
    db.execute("CREATE TABLE public.people (id bigint PRIMARY KEY, email text, phone text)").await;
    let keys_file = cli.dir().join("lockbox.keys");
    write_secret(&keys_file, format!("{}\n", lockbox.key));
    cli.write_config(&format!(
        "database = \"{url}\"\n\
         [keyrings.\"acme/token\"]\n\
         preset = \"token\"\n\
         {SOURCE_HEAD}\
         columns = [\n\
           {{ name = \"email\", form = \"text\", legacy = {{ format = [\"fernet\", \"plaintext\"], keys_env = \"FERNET_KEYS\", accept_plaintext_until = \"2099-01-01T00:00:00Z\" }} }},\n\
           {{ name = \"phone\", form = \"text\", legacy = {{ format = \"lockbox\", keys_file = \"lockbox.keys\" }} }},\n\
         ]\n"
    ));
    let env = [("FERNET_KEYS", fernet.key.as_str())];
    run_env(&cli, &env, &["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    run_env(&cli, &env, &["keyring", "create", "acme/token"]).assert_code(0);
    let pool = db.pool(2);
    let app = app_keywheel(&cli, Some(&pool));
    let id: KeyringId = "acme/token".parse().expect("id");
    let client = db.client().await;
    for n in 1..=ROWS {
        // Emails: Fernet tokens (1-10), plaintext (11-15), keywheel values (16-20).
        let e = match n {
            1..=10 => fernet.values[(n - 1) as usize].clone(),
            11..=15 => String::from_utf8(email(n)).expect("utf-8"),
            _ => app.encrypt_text(&id, &email(n), &ctx("email", n)).await.expect("encrypt"),
        };
        let p = &lockbox.values[(n - 1) as usize];
        client.execute("INSERT INTO public.people VALUES ($1, $2, $3)", &[&n, &e, p]).await.expect("insert");
    }

    // The keys are needed: a missing variable, a readable keys file.
    run_env(&cli, &[], &["census"]).assert_code(1).assert_stderr_contains("$FERNET_KEYS is not set");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&keys_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        run_env(&cli, &env, &["census"]).assert_code(1).assert_stderr_contains("chmod 600");
        std::fs::set_permissions(&keys_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    let legacy = json!({ "fernet": 10, "lockbox": 20, "plaintext": 5 });
    let census = json_env(&cli, &env, &["census"], 4);
    assert_eq!(census["legacy"]["legacy"], legacy);
    assert_eq!(census["legacy"]["done"], json!([]));
    run_env(&cli, &env, &["census"])
        .assert_code(4)
        .assert_stdout_contains("Legacy values: fernet 10, lockbox 20, plaintext 5");
    let verify = json_env(&cli, &env, &["verify"], 4);
    assert_eq!(verify["keyrings"][0]["legacy"], legacy);
    assert_eq!(verify["keyrings"][0]["unparseable"], 0);
    run_env(&cli, &env, &["verify"]).assert_code(4).assert_stdout_contains("LEGACY VALUES");

    let dry = run_env(&cli, &env, &["rotate", "--dry-run", "acme/token"]).assert_code(0);
    dry.assert_stdout_contains("legacy values it would migrate: fernet 10, lockbox 20, plaintext 5");
    let rotation = json_env(&cli, &env, &["rotate", "acme/token"], 0);
    assert_eq!(rotation["legacy"], legacy);
    assert_eq!(rotation["counts"]["rewritten"], 2 * ROWS);

    for row in client.query("SELECT id, email, phone FROM public.people ORDER BY id", &[]).await.expect("rows") {
        let (n, e, p): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        assert!(e.starts_with("kw:v2:") && p.starts_with("kw:v2:"), "row {n}: {e} {p}");
        assert_eq!(&app.decrypt(&id, e.as_bytes(), &ctx("email", n)).await.expect("email")[..], &email(n)[..]);
        assert_eq!(&app.decrypt(&id, p.as_bytes(), &ctx("phone", n)).await.expect("phone")[..], &phone(n)[..]);
    }

    let census = json_env(&cli, &env, &["census"], 0);
    assert_eq!(census["legacy"]["legacy"], json!({}));
    assert_eq!(census["legacy"]["done"], json!(["public.people.email", "public.people.phone"]));
    run_env(&cli, &env, &["census"])
        .assert_code(0)
        .assert_stdout_contains("No legacy value is left in public.people.email")
        .assert_stdout_contains("can now be forgotten");
    assert_eq!(json_env(&cli, &env, &["verify"], 0)["ok"], true);

    // The audit trail names what was migrated.
    let audit = run_env(&cli, &env, &["audit", "tail", "--lines", "50"]).assert_code(0);
    audit.assert_stdout_contains("legacy_migrated");
}

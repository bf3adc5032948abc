//! The real `keywheel` binary through reversible retirement and erasure, on
//! the file store: retire → disabled (the application's decrypt refused) →
//! `keyring enable` → retire again → `retire --now` destroys; the quarantine
//! closes re-enabling; `keyring destroy` erases a keyring or a whole tenant,
//! `status` shows it; exit codes and `--json` throughout.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use keywheel_core::{Context, Error, KeyringId, Keywheel, LocalKek};
use keywheel_file::{FileAuditSink, FileKeyStore};
use serde_json::Value;
use support::Cli;

const REASON: &str = "no stored values: tokens are cached only";

/// The application: same store and master key as the CLI, a fresh process each time.
fn app(cli: &Cli) -> Keywheel {
    Keywheel::builder()
        .kek(Arc::new(LocalKek::from_file(cli.key_file()).expect("master key file")))
        .store(Arc::new(FileKeyStore::options().create(false).open(cli.store_dir()).expect("store")))
        .audit(Arc::new(FileAuditSink::open(cli.store_dir().join("audit.jsonl")).expect("audit")))
        .actor("app")
        .build()
        .expect("keywheel")
}

fn ctx() -> Context {
    Context::field("users", "token", "1")
}

fn id(s: &str) -> KeyringId {
    s.parse().expect("keyring id")
}

fn store() -> Cli {
    let cli = Cli::new(None);
    cli.write_config(
        "[keyrings.\"acme/token\"]\ngrace_period = \"0s\"\n\n\
         [keyrings.\"acme/database\"]\ngrace_period = \"0s\"\nquarantine = \"1s\"\n",
    );
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "apply"]).assert_code(0);
    cli
}

fn last_event(cli: &Cli) -> Value {
    cli.json(&["audit", "tail", "-n", "1"])[0]["event"].clone()
}

#[tokio::test]
async fn retire_disables_enable_restores_and_now_destroys() {
    let cli = store();
    let token = id("acme/token");
    let on_v1 = app(&cli).encrypt(&token, b"cached token", &ctx()).await.expect("encrypt");
    cli.run(&["rotate", "acme/token"]).assert_code(0);

    // Retire (forced: no record sources) disables v1: the material stays, decryption is refused.
    let retired = cli.json(&["retire", "acme/token", "--version", "1", "--force", "--reason", REASON]);
    assert_eq!(retired["disabled"][0]["version"], 1);
    assert!(retired["disabled"][0]["destroy_after"].is_string() || retired["disabled"][0]["destroy_after"].is_number());
    assert_eq!(retired["destroyed"], Value::Array(vec![]));
    let err = app(&cli).decrypt(&token, &on_v1, &ctx()).await.expect_err("disabled");
    assert!(matches!(err, Error::KeyDisabled { .. }), "{err}");
    let event = last_event(&cli);
    assert_eq!((event["kind"]["type"].as_str(), event["kind"]["forced"].as_bool()), (Some("key_disabled"), Some(true)));

    // Status shows the disabled version, when it goes, and how to undo it.
    let out = cli.run(&["status"]).assert_code(0);
    out.assert_stdout_contains("acme/token v1: disabled");
    out.assert_stdout_contains("keywheel keyring enable acme/token --version 1");
    let status = cli.json(&["status"]);
    let ring = status["keyrings"].as_array().expect("keyrings").iter().find(|k| k["keyring"] == "acme/token").cloned();
    let ring = ring.expect("acme/token in status");
    assert_eq!(ring["versions"]["disabled"], serde_json::json!([1]));
    assert_eq!(ring["disabled"][0]["version"], 1);
    assert!(!ring["disabled"][0]["destroy_after"].is_null());

    // Enable refuses a version that is not disabled (exit 3, JSON error), then restores v1.
    let err = cli.json_code(&["keyring", "enable", "acme/token", "--version", "2"], 3);
    assert!(err["error"]["message"].as_str().expect("message").contains("not disabled"), "{err}");
    let enabled = cli.json(&["keyring", "enable", "acme/token", "--version", "1", "--reason", "export reads v1"]);
    assert_eq!((enabled["enabled"].as_u64(), enabled["state"].as_str()), (Some(1), Some("deprecated")));
    assert_eq!(&app(&cli).decrypt(&token, &on_v1, &ctx()).await.expect("readable again")[..], b"cached token");
    let event = last_event(&cli);
    assert_eq!(
        (event["kind"]["type"].as_str(), event["reason"].as_str()),
        (Some("key_enabled"), Some("export reads v1"))
    );

    // Retire again, then destroy at once with --now (no --force needed: checked when disabled).
    cli.run(&["retire", "acme/token", "--version", "1", "--force", "--reason", REASON])
        .assert_code(0)
        .assert_stdout_contains("Disabled acme/token v1");
    let destroyed = cli.json(&["retire", "acme/token", "--now"]);
    assert_eq!(destroyed["destroyed"], serde_json::json!([1]));
    let err = app(&cli).decrypt(&token, &on_v1, &ctx()).await.expect_err("destroyed");
    assert!(matches!(err, Error::KeyRetired { .. }), "{err}");
    let listed = cli.json(&["keyring", "list"]);
    let v1 =
        &listed.as_array().expect("list").iter().find(|k| k["keyring"] == "acme/token").expect("listed")["versions"][0];
    assert_eq!(v1["state"], "retired");
    cli.run(&["keyring", "enable", "acme/token", "--version", "1"]).assert_code(3).assert_stderr_contains("retired");
    cli.run(&["audit", "verify"]).assert_code(0);
}

#[tokio::test]
async fn the_quarantine_closes_re_enabling() {
    let cli = store();
    cli.run(&["rotate", "acme/database"]).assert_code(0);
    cli.run(&["retire", "acme/database", "--force", "--reason", REASON]).assert_code(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = cli.run(&["keyring", "enable", "acme/database", "--version", "1"]).assert_code(3);
    out.assert_stderr_contains("quarantine ended");
    cli.run(&["status"]).assert_code(0).assert_stdout_contains("quarantine over");
    cli.run(&["keyring", "enable", "acme/database", "--version", "0"]).assert_code(2);
}

#[tokio::test]
async fn keyring_destroy_erases_a_tenant_and_status_shows_it() {
    let cli = store();
    let token = id("acme/token");
    let value = app(&cli).encrypt(&token, b"personal data", &ctx()).await.expect("encrypt");
    cli.run(&["keyring", "create", "globex/token"]).assert_code(0);

    // A reason is required (clap: exit 2; blank: exit 2).
    cli.run(&["keyring", "destroy", "acme"]).assert_code(2);
    cli.run(&["keyring", "destroy", "acme", "--reason", " "]).assert_code(2);
    cli.run(&["keyring", "destroy", "nobody", "--reason", "x"]).assert_code(2).assert_stderr_contains("no keyring");

    // The whole tenant: both purposes, the active versions included.
    let erased = cli.json(&["keyring", "destroy", "acme", "--reason", "erasure request #42"]);
    let keyrings = erased["keyrings"].as_array().expect("keyrings");
    assert_eq!(keyrings.len(), 2, "{erased}");
    for k in keyrings {
        assert!(!k["erased_at"].is_null() && k["destroyed"] == false, "{k}");
        assert!(k["versions"].as_array().expect("versions").iter().all(|v| v["state"] == "disabled"), "{k}");
    }
    let event = last_event(&cli);
    assert_eq!(event["kind"]["type"], "keyring_erased");
    assert_eq!(event["reason"], "erasure request #42");
    // Nothing encrypts under it any more; other tenants are untouched.
    let err = app(&cli).encrypt(&token, b"new", &ctx()).await.expect_err("erased");
    assert!(matches!(err, Error::KeyringErased { .. }), "{err}");
    assert!(matches!(app(&cli).decrypt(&token, &value, &ctx()).await, Err(Error::KeyDisabled { .. })));
    app(&cli).encrypt(&id("globex/token"), b"fine", &ctx()).await.expect("other tenant");
    cli.run(&["rotate", "acme/token"]).assert_code(3).assert_stderr_contains("erased");

    // Status shows the erasure, in text and JSON.
    cli.run(&["status"]).assert_code(0).assert_stdout_contains("acme/token: ERASED");
    let status = cli.json(&["status"]);
    for k in status["keyrings"].as_array().expect("keyrings") {
        assert_eq!(k["erased_at"].is_null(), k["keyring"] == "globex/token", "{k}");
    }

    // Erasing again is refused; --now destroys what the quarantine keeps.
    cli.run(&["keyring", "destroy", "acme/token", "--reason", "again"]).assert_code(3).assert_stderr_contains("erased");
    let now = cli.json(&["keyring", "destroy", "acme/token", "--reason", "confirmed by legal", "--now"]);
    assert_eq!(now["keyrings"][0]["destroyed"], true);
    assert!(now["keyrings"][0]["versions"].as_array().expect("versions").iter().all(|v| v["state"] == "retired"));
    assert!(matches!(app(&cli).decrypt(&token, &value, &ctx()).await, Err(Error::KeyRetired { .. })));
    cli.run(&["audit", "verify"]).assert_code(0);
}

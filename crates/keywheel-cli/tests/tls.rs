//! The `keywheel` binary over TLS: a Postgres store and a record source's
//! database reached with `sslmode=verify-full` and the CA given by
//! `--ca-file`, `KEYWHEEL_CA_FILE` or `ca_file` in keywheel.toml; a host name
//! the server's certificate does not give, or the wrong CA, exits 1 with a
//! sentence saying so.
//!
//! The server is the keywheel-postgres harness's TLS-only throwaway cluster
//! (a loud skip without initdb, a failure when `KEYWHEEL_REQUIRE_POSTGRES` is set).
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
mod support;

use common::tls_cluster::{CERT_HOST, OTHER_HOST, TlsCluster};
use keywheel_postgres::{PgPool, TlsSettings};
use support::Cli;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_over_verified_tls() {
    let Some(cluster) = TlsCluster::start() else { return };
    let ca = cluster.ca.to_str().expect("utf-8 path");
    let url = cluster.url(CERT_HOST, "sslmode=verify-full");
    let cli = Cli::new(Some(url.clone()));
    let key_out = cli.key_file();

    // verify-full without a CA: nothing to check the certificate against.
    let out = cli.run(&["init", "--master-key-out", key_out.to_str().expect("utf-8")]).assert_code(1);
    out.assert_stderr_contains("sslrootcert").assert_stderr_contains("--ca-file");
    assert!(!key_out.exists(), "no master key is made for a store that cannot be reached");

    // With --ca-file: init, a keyring, status.
    cli.run(&["--ca-file", ca, "init", "--master-key-out", key_out.to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["--ca-file", ca, "keyring", "create", "acme/token"]).assert_code(0);
    cli.run(&["--ca-file", ca, "status"]).assert_code(0).assert_stdout_contains("acme/token");
    // The same CA from the environment.
    let out = cli.command(&["status"]).env("KEYWHEEL_CA_FILE", ca).output().expect("run");
    assert!(out.status.success(), "KEYWHEEL_CA_FILE: {}", String::from_utf8_lossy(&out.stderr));

    // A host name the certificate does not give: exit 1, the reason named, no password shown.
    let wrong_host =
        format!("postgresql://postgres:hunter2@{OTHER_HOST}:{}/postgres?sslmode=verify-full", cluster.port);
    let out = cli.run(&["--store", &wrong_host, "--ca-file", ca, "status"]).assert_code(1);
    out.assert_stderr_contains("not valid for host 127.0.0.1");
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    let json = cli.json_code(&["--store", &wrong_host, "--ca-file", ca, "status"], 1);
    let message = json["error"]["message"].as_str().expect("message");
    assert!(message.contains("not valid for host 127.0.0.1") && !message.contains("hunter2"), "{message}");
    // The wrong CA: exit 1.
    let other_ca = cluster.other_ca.to_str().expect("utf-8 path");
    cli.run(&["--ca-file", other_ca, "status"]).assert_code(1).assert_stderr_contains("certificate was refused");
    // --ca-file overrides the URL's sslrootcert.
    let with_root = cluster.url(CERT_HOST, &format!("sslmode=verify-full&sslrootcert={other_ca}"));
    cli.run(&["--store", &with_root, "status"]).assert_code(1).assert_stderr_contains("certificate was refused");
    cli.run(&["--store", &with_root, "--ca-file", ca, "status"]).assert_code(0);
    // A plain-text connection to this TLS-only server is refused by the server.
    let plain = cluster.url(CERT_HOST, "sslmode=disable");
    cli.run(&["--store", &plain, "status"]).assert_code(1).assert_stderr_contains("no encryption");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_source_database_over_verified_tls() {
    let Some(cluster) = TlsCluster::start() else { return };
    let url = cluster.url(CERT_HOST, "sslmode=verify-full");
    let app = PgPool::connect(&url, &TlsSettings::new().root_cert(&cluster.ca)).await.expect("connect");
    app.get()
        .await
        .expect("client")
        .batch_execute(
            "CREATE TABLE public.users (id bigint PRIMARY KEY, token bytea NOT NULL);
             INSERT INTO public.users VALUES (1, 'not a keywheel value'::bytea);",
        )
        .await
        .expect("create table");

    // A file store; the source's table in the TLS database; the CA from keywheel.toml (relative to it).
    let cli = Cli::new(None);
    std::fs::copy(&cluster.ca, cli.dir().join("db-ca.pem")).expect("copy the CA");
    let config = |database: &str| {
        format!(
            "database = \"{database}\"\nca_file = \"db-ca.pem\"\n\
             [keyrings.\"acme/token\"]\npreset = \"token\"\n\
             [[sources]]\ntable = \"public.users\"\nkeyring = \"acme/token\"\ncolumns = [\"token\"]\n"
        )
    };
    cli.write_config(&config(&url));
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "create", "acme/token"]).assert_code(0);
    // The census read the table over TLS: its one value is not a keywheel value (exit 4, problems found).
    let census = cli.json_code(&["census", "acme/token"], 4);
    assert_eq!(census["unparseable"], 1, "{census}");

    // The source's database at a host its certificate does not name: exit 1.
    cli.write_config(&config(&cluster.url(OTHER_HOST, "sslmode=verify-full")));
    cli.run(&["census", "acme/token"]).assert_code(1).assert_stderr_contains("not valid for host 127.0.0.1");
}

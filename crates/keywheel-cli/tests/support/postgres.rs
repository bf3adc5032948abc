//! Postgres for the binary-driven tests: the URL an operator would pass, and
//! an application table filled through the application's own `Keywheel`.
//! Declared by the tests that use the keywheel-postgres harness as `common`.
#![allow(dead_code, unreachable_pub, clippy::expect_used)]

use std::sync::Arc;

use keywheel_core::{Context, KeyringId, Keywheel, LocalKek};
use keywheel_file::{FileAuditSink, FileKeyStore};
use keywheel_postgres::{PgAuditSink, PgKeyStore, PgPool, PgSchema};

use crate::common::TestDb;
use crate::support::Cli;

/// A `postgresql://` URL for the test database (what an operator passes as `--store`).
pub fn postgres_url(db: &TestDb) -> String {
    postgres_url_as(db, None)
}

/// [`postgres_url`], connecting as `user` instead of the harness's user (no password).
pub fn postgres_url_as(db: &TestDb, user: Option<&str>) -> String {
    use keywheel_postgres::tokio_postgres::config::Host;
    let encode = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let host = match db.config.get_hosts().first() {
        Some(Host::Tcp(h)) => encode(h),
        Some(Host::Unix(p)) => encode(&p.to_string_lossy()),
        None => "localhost".into(),
    };
    let port = db.config.get_ports().first().copied().unwrap_or(5432);
    let auth = match (user, db.config.get_password()) {
        (Some(user), _) => encode(user),
        (None, Some(pw)) => {
            format!("{}:{}", encode(db.config.get_user().unwrap_or("postgres")), encode(&String::from_utf8_lossy(pw)))
        }
        (None, None) => encode(db.config.get_user().unwrap_or("postgres")),
    };
    format!("postgresql://{auth}@{host}:{port}/{}", encode(&db.name))
}

/// The application's `Keywheel` (same store and master key as the CLI):
/// the Postgres store on `pool`, else the CLI's file store.
pub fn app_keywheel(cli: &Cli, pool: Option<&PgPool>) -> Keywheel {
    let kek = Arc::new(LocalKek::from_file(cli.key_file()).expect("master key file"));
    let builder = Keywheel::builder().kek(kek);
    let builder = match pool {
        Some(pool) => builder
            .store(Arc::new(PgKeyStore::new(pool.clone(), PgSchema::default())))
            .audit(Arc::new(PgAuditSink::new(pool.clone(), PgSchema::default()))),
        None => builder
            .store(Arc::new(FileKeyStore::options().create(false).open(cli.store_dir()).expect("store")))
            .audit(Arc::new(FileAuditSink::open(cli.store_dir().join("audit.jsonl")).expect("audit"))),
    };
    builder.actor("app").build().expect("keywheel")
}

/// The context of row `row`'s `token` in table `users`.
pub fn ctx(row: i64) -> Context {
    Context::field("users", "token", &row.to_string())
}

/// What the application stores in row `row`.
pub fn plaintext(row: i64) -> Vec<u8> {
    format!("oauth token of user {row}").into_bytes()
}

/// Insert rows `rows` into `public.users (id bigint, [tenant text,] token bytea)`,
/// each token encrypted under `keyring`, with the tenant column set when `tenant_column`.
pub async fn insert_users(
    db: &TestDb,
    app: &Keywheel,
    keyring: &KeyringId,
    rows: std::ops::RangeInclusive<i64>,
    tenant_column: bool,
) {
    let client = db.client().await;
    for n in rows {
        let value = app.encrypt(keyring, &plaintext(n), &ctx(n)).await.expect("encrypt");
        if tenant_column {
            client
                .execute("INSERT INTO public.users VALUES ($1, $2, $3)", &[&n, &keyring.tenant(), &value])
                .await
                .expect("insert");
        } else {
            client.execute("INSERT INTO public.users VALUES ($1, $2)", &[&n, &value]).await.expect("insert");
        }
    }
}

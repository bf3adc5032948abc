//! A searchable column through the real `keywheel` binary: keywheel.toml
//! pairs `email` with its blind index `email_bidx`; `census` counts the tags
//! per version, `rotate` rewrites value and tag together and fills empty
//! tags, and the application's lookups find every row before and after.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
#[path = "support/postgres.rs"]
mod postgres;
mod support;

use common::TestDb;
use keywheel_core::{BlindIndex, Context, Form, KeyringId, Keywheel, Normalization};
use keywheel_postgres::IndexParam;
use keywheel_postgres::tokio_postgres::Client;
use postgres::{app_keywheel, postgres_url};
use support::Cli;

const ROWS: i64 = 30;
/// Rows from this one on were written before the index existed: no tag.
const UNINDEXED_FROM: i64 = 25;

fn email(row: i64) -> String {
    format!("User{row}@Example.org")
}

fn ctx(row: i64) -> Context {
    Context::field("users", "email", &row.to_string())
}

fn index() -> BlindIndex {
    BlindIndex::new("users", "email").normalization(Normalization::TrimLowercase)
}

/// Every row up to `rows` is found by its email as typed by a user (other
/// case, spaces), exactly once, and decrypts to it.
async fn every_lookup_finds_its_row(app: &Keywheel, client: &Client, id: &KeyringId, rows: i64) {
    // A fresh snapshot: a long-running application gets there within its
    // refresh interval, before the activation delay lets values move.
    let ring = app.refresh(id).await.expect("keyring");
    for row in 1..=rows {
        let typed = format!("  {} ", email(row).to_lowercase());
        let terms = IndexParam::new(&ring.index_terms(typed.as_bytes(), &index()).expect("terms"), Form::Binary);
        let found = client.query("SELECT id, email FROM public.users WHERE email_bidx = ANY($1)", &[&terms]).await;
        let found = found.expect("lookup");
        assert_eq!(found.len(), 1, "row {row}");
        let (id_found, value): (i64, Vec<u8>) = (found[0].get(0), found[0].get(1));
        assert_eq!(id_found, row);
        assert_eq!(&ring.decrypt(&value, &ctx(row)).expect("decrypt")[..], email(row).as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_rewrites_and_fills_the_index_column() {
    let Some(db) = TestDb::create().await else { return };
    let url = postgres_url(&db);
    let cli = Cli::new(None);
    db.execute("CREATE TABLE public.users (id bigint PRIMARY KEY, email bytea NOT NULL, email_bidx bytea)").await;
    db.execute("CREATE INDEX ON public.users (email_bidx)").await;
    cli.write_config(&format!(
        "database = \"{url}\"\n\
         [keyrings.\"acme/database\"]\npreset = \"database\"\n\
         [[sources]]\ntable = \"public.users\"\nkeyring = \"acme/database\"\n\
         columns = [{{ name = \"email\", index = \"email_bidx\", normalize = \"email\" }}]\n"
    ));
    cli.run(&["init", "--master-key-out", cli.key_file().to_str().expect("utf-8")]).assert_code(0);
    cli.run(&["keyring", "create", "acme/database"]).assert_code(0);
    let app = app_keywheel(&cli, None);
    let id: KeyringId = "acme/database".parse().expect("id");
    let ring = app.keyring(&id).await.expect("keyring");
    let client = db.client().await;
    for row in 1..=ROWS {
        let value = ring.encrypt(email(row).as_bytes(), &ctx(row)).expect("encrypt");
        let tag = (row < UNINDEXED_FROM).then(|| ring.blind_index(email(row).as_bytes(), &index()).expect("tag"));
        client.execute("INSERT INTO public.users VALUES ($1, $2, $3)", &[&row, &value, &tag]).await.expect("insert");
    }

    every_lookup_finds_its_row(&app, &client, &id, UNINDEXED_FROM - 1).await;
    let census = cli.json(&["census"]);
    let on_v1 = &census["counts"][0];
    assert_eq!((on_v1["version"].as_u64(), on_v1["values"].as_i64()), (Some(1), Some(ROWS + UNINDEXED_FROM - 1)));
    assert_eq!(on_v1["index_tags"].as_i64(), Some(UNINDEXED_FROM - 1), "{census}");
    cli.run(&["census"]).assert_code(0).assert_stdout_contains("OF WHICH INDEX TAGS");

    let rotation = cli.json(&["rotate", "acme/database"]);
    assert_eq!(rotation["counts"]["rewritten"].as_i64(), Some(ROWS), "{rotation}");
    assert_eq!(rotation["counts"]["failed"].as_i64(), Some(0), "{rotation}");
    let census = cli.json(&["census"]);
    let counts = census["counts"].as_array().expect("counts");
    assert_eq!(counts.len(), 1, "nothing left on v1: {census}");
    assert_eq!((counts[0]["version"].as_u64(), counts[0]["index_tags"].as_i64()), (Some(2), Some(ROWS)));
    let verify = cli.json(&["verify", "acme/database"]);
    assert_eq!(verify["ok"].as_bool(), Some(true), "{verify}");
    every_lookup_finds_its_row(&app, &client, &id, ROWS).await;
}

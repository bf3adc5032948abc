//! PgRecordSource beyond the conformance suite: uuid keys, text-form columns,
//! several columns per row, NULLs, the SQL header expression against the core
//! parser, and bad input (missing table or column, wrong types, values that are
//! not keywheel ciphertext) giving typed errors or listed failures, never
//! overwritten values.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestDb, XorShift};
use keywheel_core::{
    Algorithm, BlindIndex, Context, Error, Form, JobPhase, KeyVersion, KeyringId, Purpose, RecordSource, RotateOptions,
    Rotator, ScanRequest, census_by_scan, version_of,
};
use keywheel_postgres::{KeyType, PgRecordSource, TableSpec};

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).expect("nonzero")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uuid_keys_text_and_binary_columns_rotate() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(8);
    let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
    let id = KeyringId::new("docs", Purpose::Token).expect("id");
    kw.create_keyring(&id, Algorithm::ChaCha20Poly1305).await.expect("keyring");
    db.execute(
        "CREATE TABLE public.docs (id uuid PRIMARY KEY, body bytea, token varchar(400), title text NOT NULL DEFAULT 'keep')",
    )
    .await;
    let client = db.client().await;
    let mut expected = Vec::new();
    for n in 0..300u32 {
        let uuid = format!("{:08x}-0000-4000-8000-{:012x}", n.wrapping_mul(2_654_435_761), n);
        let body = (n % 5 != 0).then(|| format!("body {n}").into_bytes());
        let token = (n % 7 != 0).then(|| format!("token {n}").into_bytes());
        let enc_body = match &body {
            Some(p) => Some(kw.encrypt(&id, p, &Context::field("docs", "body", &uuid)).await.expect("encrypt")),
            None => None,
        };
        let enc_token = match &token {
            Some(p) => Some(kw.encrypt_text(&id, p, &Context::field("docs", "tok", &uuid)).await.expect("encrypt")),
            None => None,
        };
        client
            .execute(
                "INSERT INTO public.docs (id, body, token) VALUES ($1::text::uuid, $2, $3)",
                &[&uuid, &enc_body, &enc_token],
            )
            .await
            .expect("insert");
        expected.push((uuid, body, token));
    }
    let spec = TableSpec::new("public", "docs")
        .primary_key("id", KeyType::Uuid)
        .keyring(id.clone())
        .column("body", Form::Binary)
        .column_with_context("token", Form::Text, "tok");
    let source = Arc::new(PgRecordSource::open(pool.clone(), spec).await.expect("open"));
    let census = source.census(Some(&id)).await.expect("census");
    let values = expected.iter().filter(|e| e.1.is_some()).count() + expected.iter().filter(|e| e.2.is_some()).count();
    assert_eq!(census.count(&id, v(1)), values as u64, "census counts every non-NULL value on v1");
    assert_eq!(census, census_by_scan(source.as_ref(), Some(&id), 7).await.expect("scan census"));

    let rotator = Rotator::new(kw.clone()).expect("rotator").source(source.clone());
    let opts = RotateOptions { batch_size: 64, parallel_batches: 3, ..RotateOptions::default() };
    let report =
        rotator.rotate(&id, &rotator.keywheel().policy(&id).await.expect("policy"), &opts).await.expect("rotate");
    assert_eq!(report.phase, JobPhase::Completed, "{report:?}");
    assert_eq!(report.counts.rewritten, values as u64);
    let census = source.census(Some(&id)).await.expect("census");
    assert_eq!((census.count(&id, v(1)), census.count(&id, v(2))), (0, values as u64));

    for (uuid, body, token) in &expected {
        let row = client
            .query_one("SELECT body, token, title FROM public.docs WHERE id = $1::text::uuid", &[uuid])
            .await
            .expect("row");
        let (b, t, title): (Option<Vec<u8>>, Option<String>, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(title, "keep", "other columns are not touched");
        assert_eq!(b.is_some(), body.is_some(), "NULL stays NULL");
        assert_eq!(t.is_some(), token.is_some(), "NULL stays NULL");
        if let (Some(b), Some(p)) = (b, body) {
            assert_eq!(version_of(&b), Ok(v(2)));
            assert_eq!(&kw.decrypt(&id, &b, &Context::field("docs", "body", uuid)).await.expect("decrypt")[..], &p[..]);
        }
        if let (Some(t), Some(p)) = (t, token) {
            assert!(t.starts_with("kw:v2:"), "a text column keeps the text form: {t}");
            let plain = kw.decrypt(&id, t.as_bytes(), &Context::field("docs", "tok", uuid)).await.expect("decrypt");
            assert_eq!(&plain[..], &p[..]);
        }
    }
    // Uppercase uuids in a cursor resolve to the same row.
    let first = &expected.iter().find(|e| e.1.is_some()).expect("a body").0;
    let upper = PgRecordSource::cursor(0, &first.to_uppercase());
    let after = source.scan(&ScanRequest { after: Some(upper), ..ScanRequest::all(1) }).await.expect("scan");
    assert_ne!(after[0].cursor, PgRecordSource::cursor(0, first), "scanning after a row skips it");
}

/// Values and blind index tags that are malformed in every way the parser
/// knows, in bytea and text columns: the SQL census (which tells tags from
/// values) and filter must agree with `keywheel_core::parse`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_header_expression_agrees_with_the_parser() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(4);
    let id = KeyringId::new("parse", Purpose::Database).expect("id");
    let mut ring = keywheel_core::Keyring::builder(id.clone());
    for _ in 0..2 {
        ring = ring.retired_version(Algorithm::Aes256Gcm);
    }
    let ring = ring
        .version(
            keywheel_core::KeyState::Active,
            Algorithm::XChaCha20Poly1305,
            keywheel_core::KeyMaterial::generate().expect("rng"),
        )
        .build()
        .expect("ring");
    db.execute("CREATE TABLE public.vals (id bigint PRIMARY KEY, b bytea, t text)").await;
    let client = db.client().await;
    let mut rng = XorShift::seeded();
    let base = ring.encrypt(b"some plaintext of moderate length", &Context::empty()).expect("encrypt");
    let base_text = ring.encrypt_text(b"x", &Context::empty()).expect("encrypt");
    // Blind index tags of every allowed length (8 to 32 bytes after the header).
    let index_of = |len: u64| BlindIndex::new("vals", "b").length(len as usize).expect("a valid length");
    let tag_of = |len: u64| ring.blind_index(b"ann@example.org", &index_of(len)).expect("tag");
    let text_tag_of = |len: u64| ring.blind_index_text(b"ann@example.org", &index_of(len)).expect("tag");
    let mut rows: Vec<(i64, Vec<u8>, Option<String>)> = Vec::new();
    for n in 0..600i64 {
        let mut b = base.clone();
        match rng.below(14) {
            0 => {}
            1 => b.truncate(rng.below(b.len() as u64 + 1) as usize),
            2 => {
                let i = rng.below(8) as usize;
                b[i] = rng.next_u64() as u8;
            }
            3 => b[7] = 0,
            4 => b[3] = [0x01, 0x02, 0x03, 0x04, 0x10, 0x05, 0xff][rng.below(7) as usize],
            5 => b[4..8].copy_from_slice(&(rng.next_u64() as u32).to_be_bytes()),
            6 => b = base_text.clone().into_bytes(),
            7 => b.extend_from_slice(&[0; 24]),
            8 => b = format!("kw:v{}:{}", rng.below(5), "A".repeat(rng.below(80) as usize)).into_bytes(),
            9 => b = tag_of(8 + rng.below(25)),
            10 => {
                b = tag_of(8 + rng.below(25));
                b.truncate(rng.below(b.len() as u64 + 1) as usize);
            }
            11 => b = [tag_of(32), vec![0; 1 + rng.below(30) as usize]].concat(),
            12 => b = ring.blind_index_text(b"x", &BlindIndex::new("vals", "b")).expect("tag").into_bytes(),
            _ => {
                b = tag_of(8 + rng.below(25));
                b[3] = [0x10, 0x11, 0x12][rng.below(3) as usize];
            }
        }
        let mut t = base_text.clone();
        match rng.below(12) {
            0 => {}
            1 => t.truncate(rng.below(t.len() as u64 + 1) as usize),
            2 => t = t.replacen("kw:v3:", &format!("kw:v{}:", rng.below(12)), 1),
            3 => t.push_str(["A", "B", "AB", "=", "!"][rng.below(5) as usize]),
            4 => {
                // Change one payload character (may set unused trailing bits).
                let i = 6 + rng.below((t.len() - 6) as u64) as usize;
                let c = ["A", "B", "Q", "g", "/", "+", "w"][rng.below(7) as usize];
                t.replace_range(i..=i, c);
            }
            5 => t = t.replacen("kw:v3:", "kw:v03:", 1),
            6 => t = String::from_utf8_lossy(&b).into_owned().replace('\0', ""),
            7 => t = format!("{t}{t}"),
            8 => {
                // A text-form tag, whole or cut (a cut may still parse, as a shorter tag).
                let tag = text_tag_of(8 + rng.below(25));
                t = tag[..tag.len() - rng.below(12) as usize].to_owned();
            }
            9 => t = format!("{}AAAA", text_tag_of(32)),
            // Long values of every length remainder (the census caps lengths).
            10 => t = format!("{t}{}", ["A", "B", "g", "w"][rng.below(4) as usize].repeat(rng.below(200) as usize)),
            // Versions of 10 digits (the most the parser reads) and 11.
            _ => {
                t = t.replacen(
                    "kw:v3:",
                    &format!("kw:v{}:", [1_000_000_000u64, 10_000_000_000][rng.below(2) as usize]),
                    1,
                )
            }
        }
        client.execute("INSERT INTO public.vals VALUES ($1, $2, $3)", &[&n, &b, &t]).await.expect("insert");
        rows.push((n, b, Some(t)));
    }
    for (column, form) in [("b", Form::Binary), ("t", Form::Text)] {
        let spec = TableSpec::new("public", "vals").keyring(id.clone()).column(column, form);
        let source = PgRecordSource::open(pool.clone(), spec).await.expect("open");
        let sql = source.census(None).await.expect("census");
        let scanned = census_by_scan(&source, None, 50).await.expect("scan census");
        assert_eq!(sql, scanned, "column {column}: the SQL census must equal the parser's");
        assert!(sql.unparseable > 0 && sql.count(&id, v(3)) > 0, "the sample has both: {sql:?}");
        let tags = sql.index_tag_count(&id, v(3));
        assert!(tags > 0 && tags < sql.count(&id, v(3)), "the sample has tags and values on v3: {sql:?}");
        // The skip filter never hides a value the parser does not place on v3.
        let mut request = ScanRequest { skip_version: Some(v(3)), ..ScanRequest::all(1000) };
        let filtered = source.scan(&request).await.expect("scan");
        request.skip_version = None;
        let all = source.scan(&request).await.expect("scan");
        let not_on_v3: Vec<_> = all.iter().filter(|s| version_of(&s.value) != Ok(v(3))).collect();
        assert_eq!(filtered.len(), not_on_v3.len(), "column {column}");
    }
}

fn backend_message(err: Error) -> String {
    match err {
        Error::Backend { message, retryable, .. } => {
            assert!(!retryable, "a bad table description is not retryable: {message}");
            message
        }
        other => panic!("expected a typed backend error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_table_descriptions_are_typed_errors() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(4);
    db.execute(
        "CREATE TABLE public.t (id bigint PRIMARY KEY, u uuid NOT NULL UNIQUE, n integer, b bytea, s text, tenant integer);
         CREATE TABLE public.nokey (id bigint, b bytea);
         CREATE VIEW public.v AS SELECT * FROM public.t;",
    )
    .await;
    let id = KeyringId::new("k", Purpose::Database).expect("id");
    let spec = |table: &str| TableSpec::new("public", table).keyring(id.clone());
    let open = |spec: TableSpec| PgRecordSource::open(pool.clone(), spec);

    let m = backend_message(open(spec("missing").column("b", Form::Binary)).await.expect_err("missing table"));
    assert!(m.contains("\"public\".\"missing\" does not exist"), "{m}");
    let m = backend_message(
        open(TableSpec::new("nope", "t").keyring(id.clone()).column("b", Form::Binary)).await.expect_err("schema"),
    );
    assert!(m.contains("does not exist"), "{m}");
    let m = backend_message(open(spec("v").column("b", Form::Binary)).await.expect_err("a view"));
    assert!(m.contains("is not a table"), "{m}");
    let m = backend_message(open(spec("t").column("nope", Form::Binary)).await.expect_err("missing column"));
    assert!(m.contains("column \"nope\"") && m.contains("does not exist"), "{m}");
    let m = backend_message(open(spec("t").column("n", Form::Binary)).await.expect_err("integer column"));
    assert!(m.contains("column \"n\"") && m.contains("has type integer") && m.contains("bytea"), "{m}");
    let m = backend_message(open(spec("t").column("b", Form::Text)).await.expect_err("bytea as text"));
    assert!(m.contains("has type bytea") && m.contains("text"), "{m}");
    let m = backend_message(open(spec("t").column("s", Form::Binary)).await.expect_err("text as bytea"));
    assert!(m.contains("has type text"), "{m}");
    let m = backend_message(
        open(spec("t").primary_key("id", KeyType::Uuid).column("b", Form::Binary)).await.expect_err("key type"),
    );
    assert!(m.contains("key column \"id\"") && m.contains("has type bigint"), "{m}");
    let m = backend_message(
        open(spec("t").primary_key("n", KeyType::BigInt).column("b", Form::Binary)).await.expect_err("key type"),
    );
    assert!(m.contains("has type integer"), "{m}");
    let m = backend_message(open(spec("nokey").column("b", Form::Binary)).await.expect_err("no unique key"));
    assert!(m.contains("unique index"), "{m}");
    let m = backend_message(
        open(TableSpec::new("public", "t").keyring_from_column("tenant", Purpose::Database).column("b", Form::Binary))
            .await
            .expect_err("integer tenant"),
    );
    assert!(m.contains("tenant column \"tenant\"") && m.contains("has type integer"), "{m}");
    // Descriptions that cannot be quoted are refused before any SQL.
    for bad in ["", "nul\0byte", &"x".repeat(64)] {
        let err = open(spec("t").column(bad, Form::Binary)).await.expect_err("bad identifier");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
    // A uuid key declared as such works, and a table dropped after open gives a typed error.
    let source = open(spec("t").primary_key("u", KeyType::Uuid).column("b", Form::Binary)).await.expect("open");
    db.execute("DROP VIEW public.v; DROP TABLE public.t").await;
    let m = backend_message(source.scan(&ScanRequest::all(10)).await.expect_err("dropped table"));
    assert!(m.contains("\"public\".\"t\"") && m.contains("does not exist"), "{m}");
    let err = source.scan(&ScanRequest { after: Some(keywheel_core::Cursor("x".into())), ..ScanRequest::all(1) }).await;
    assert!(matches!(err, Err(Error::InvalidArgument(_))), "a foreign cursor is refused: {err:?}");
    assert!(matches!(source.scan(&ScanRequest::all(0)).await, Err(Error::InvalidArgument(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_are_not_keywheel_ciphertext_are_failures_never_overwritten() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(8);
    let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
    let acme = KeyringId::new("acme", Purpose::Database).expect("id");
    let other = KeyringId::new("other", Purpose::Database).expect("id");
    kw.create_keyring(&acme, Algorithm::Aes256Gcm).await.expect("keyring");
    kw.create_keyring(&other, Algorithm::Aes256Gcm).await.expect("keyring");
    db.execute("CREATE TABLE public.users (id bigint PRIMARY KEY, tenant text NOT NULL, email bytea)").await;
    let client = db.client().await;
    let ctx = |n: i64| Context::field("users", "email", &n.to_string());
    let mut garbage = Vec::new();
    for n in 1..=200i64 {
        let value = match n % 20 {
            3 => b"plain text, never encrypted".to_vec(),
            7 => b"kw\x01\x01\0\0\0\x01truncated".to_vec(),
            // Real ciphertext, but bound to another row: decryption fails.
            11 => kw.encrypt(&acme, b"moved", &ctx(n + 1)).await.expect("encrypt"),
            // Another tenant's ciphertext copied into an acme row.
            13 => kw.encrypt(&other, b"stolen", &ctx(n)).await.expect("encrypt"),
            _ => kw.encrypt(&acme, &common::plaintext(n, 0), &ctx(n)).await.expect("encrypt"),
        };
        if matches!(n % 20, 3 | 7 | 11 | 13) {
            garbage.push((n, value.clone()));
        }
        client.execute("INSERT INTO public.users VALUES ($1, 'acme', $2)", &[&n, &value]).await.expect("insert");
    }
    let spec = TableSpec::new("public", "users")
        .keyring_from_column("tenant", Purpose::Database)
        .column("email", Form::Binary);
    let source = Arc::new(PgRecordSource::open(pool.clone(), spec).await.expect("open"));
    let before = source.census(Some(&acme)).await.expect("census");
    assert_eq!(before.unparseable, 20, "plain text and truncated values are unparseable: {before:?}");
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(source.clone());
    let opts = RotateOptions { batch_size: 32, ..RotateOptions::default() };
    let report =
        rotator.rotate(&acme, &rotator.keywheel().policy(&acme).await.expect("policy"), &opts).await.expect("rotate");
    assert_eq!(report.phase, JobPhase::CompletedWithFailures, "{report:?}");
    assert_eq!(report.counts.failed, 40, "every bad value is a failure: {report:?}");
    assert_eq!(report.counts.rewritten, 160);
    let failed: Vec<String> = report.failures.iter().map(|f| f.cursor.0.clone()).collect();
    for (n, value) in &garbage {
        assert!(failed.contains(&format!("0:{n}")), "row {n} is listed as a failure: {failed:?}");
        let row = client.query_one("SELECT email FROM public.users WHERE id = $1", &[n]).await.expect("row");
        let stored: Vec<u8> = row.get(0);
        assert_eq!(&stored, value, "row {n}: a value that cannot be decrypted is never overwritten");
    }
    for n in (1..=200i64).filter(|n| !matches!(n % 20, 3 | 7 | 11 | 13)) {
        let row = client.query_one("SELECT email FROM public.users WHERE id = $1", &[&n]).await.expect("row");
        let stored: Vec<u8> = row.get(0);
        assert_eq!(version_of(&stored), Ok(v(2)));
        assert_eq!(&kw.decrypt(&acme, &stored, &ctx(n)).await.expect("decrypt")[..], &common::plaintext(n, 0)[..]);
    }
    // A tenant that is not a valid keyring tenant is a typed error naming the row.
    client.execute("INSERT INTO public.users VALUES (999, 'bad/tenant', 'x')", &[]).await.expect("insert");
    let m = backend_message(source.scan(&ScanRequest::all(1000)).await.expect_err("bad tenant"));
    assert!(m.contains("row 999") && m.contains("bad/tenant"), "{m}");
}

/// A batch over rows of two columns where some values changed since they were
/// read: the fast statement (all of a row's values, or nothing) is rolled back
/// and the careful one replaces value by value; outcomes follow the batch's
/// order, whatever order it is in, and a round may hold only some columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_falls_back_value_by_value_when_some_values_changed() {
    use keywheel_core::{ReplaceOutcome, Replacement};

    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(8);
    let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
    let id = KeyringId::new("pairs", Purpose::Database).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("keyring");
    db.execute("CREATE TABLE public.pairs (id bigint PRIMARY KEY, a bytea, b text)").await;
    let client = db.client().await;
    let ctx = |col: &str, n: i64| Context::field("pairs", col, &n.to_string());
    for n in 1..=10i64 {
        let a = kw.encrypt(&id, b"a", &ctx("a", n)).await.expect("encrypt");
        let b = kw.encrypt_text(&id, b"b", &ctx("b", n)).await.expect("encrypt");
        client.execute("INSERT INTO public.pairs VALUES ($1, $2, $3)", &[&n, &a, &b]).await.expect("insert");
    }
    let spec = TableSpec::new("public", "pairs").keyring(id.clone()).column("a", Form::Binary).column("b", Form::Text);
    let source = PgRecordSource::open(pool.clone(), spec.read_ahead(false)).await.expect("open");
    let read = source.scan(&ScanRequest::all(100)).await.expect("scan");
    assert_eq!(read.len(), 20);
    let mut batch = Vec::new();
    for v in &read {
        let (col, row) = v.cursor.0.split_once(':').expect("cursor");
        let new = if col == "0" {
            kw.encrypt(&id, b"new a", &v.context).await.expect("encrypt")
        } else {
            kw.encrypt_text(&id, b"new b", &v.context).await.expect("encrypt").into_bytes()
        };
        batch.push((
            row.parse::<i64>().expect("row"),
            col == "0",
            Replacement::new(v.cursor.clone(), v.value.clone(), new),
        ));
    }
    // Not in scan order: the round is sorted by key before it is written.
    batch.reverse();
    // The application changes row 3's a and row 5's b, and deletes row 7.
    client.execute("UPDATE public.pairs SET a = 'app' WHERE id = 3", &[]).await.expect("app write");
    client.execute("UPDATE public.pairs SET b = 'app' WHERE id = 5", &[]).await.expect("app write");
    client.execute("DELETE FROM public.pairs WHERE id = 7", &[]).await.expect("app delete");
    let replacements: Vec<Replacement> = batch.iter().map(|(_, _, r)| r.clone()).collect();
    let outcomes = source.replace(&replacements).await.expect("replace");
    for ((row, is_a, r), outcome) in batch.iter().zip(&outcomes) {
        let changed = *row == 7 || (*row == 3 && *is_a) || (*row == 5 && !*is_a);
        let expected = if changed { ReplaceOutcome::Changed } else { ReplaceOutcome::Replaced };
        assert_eq!(*outcome, expected, "{}", r.cursor);
    }
    for n in 1..=10i64 {
        let row = client.query_opt("SELECT a, b FROM public.pairs WHERE id = $1", &[&n]).await.expect("row");
        let Some(row) = row else {
            assert_eq!(n, 7, "only row 7 is deleted (and stays deleted)");
            continue;
        };
        let (a, b): (Vec<u8>, String) = (row.get(0), row.get(1));
        let new = |is_a: bool| batch.iter().find(|(r, c, _)| *r == n && *c == is_a).map(|(_, _, r)| r.new.clone());
        if n == 3 {
            assert_eq!(a, b"app", "the application's write wins");
        } else {
            assert_eq!(Some(a), new(true), "row {n}: a replaced");
        }
        if n == 5 {
            assert_eq!(b, "app", "the application's write wins");
        } else {
            assert_eq!(Some(b.into_bytes()), new(false), "row {n}: b replaced");
        }
    }
    // The same batch again: nothing holds what was read any more.
    let again = source.replace(&replacements).await.expect("replace again");
    assert!(again.iter().all(|o| *o == ReplaceOutcome::Changed), "{again:?}");
    // A round with only some columns (one value of row 2, both of row 4).
    let read = source.scan(&ScanRequest::all(100)).await.expect("scan");
    let pick: Vec<Replacement> = read
        .iter()
        .filter(|v| ["0:2", "0:4", "1:4"].contains(&v.cursor.0.as_str()))
        .map(|v| Replacement {
            cursor: v.cursor.clone(),
            old: v.value.clone(),
            new: v.value.iter().rev().copied().collect(),
            index: None,
        })
        .collect();
    assert_eq!(pick.len(), 3);
    let pick: Vec<Replacement> = pick
        .into_iter()
        .map(|mut r| {
            if r.cursor.0.starts_with('1') {
                r.new = b"kw:v9:text".to_vec();
            }
            r
        })
        .collect();
    let outcomes = source.replace(&pick).await.expect("replace some columns");
    assert_eq!(outcomes, vec![ReplaceOutcome::Replaced; 3]);
    let row = client.query_one("SELECT a, b FROM public.pairs WHERE id = 2", &[]).await.expect("row");
    let b: String = row.get(1);
    assert!(b.starts_with("kw:v1:"), "row 2's b was not in the batch and is untouched: {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_column_lists_its_keyrings() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(2);
    db.execute(
        "CREATE TABLE public.t (id bigint PRIMARY KEY, tenant text, b bytea);
         INSERT INTO public.t VALUES (1, 'beta', NULL), (2, 'acme', NULL), (3, 'beta', NULL), (4, NULL, NULL);",
    )
    .await;
    let by_tenant =
        TableSpec::new("public", "t").keyring_from_column("tenant", Purpose::Token).column("b", Form::Binary);
    let source = PgRecordSource::open(pool.clone(), by_tenant).await.expect("open");
    let ids: Vec<String> = source.keyrings().await.expect("tenants").iter().map(ToString::to_string).collect();
    assert_eq!(ids, ["acme/token", "beta/token"], "distinct, sorted, NULL skipped");
    // A fixed keyring is the only one, whatever the rows hold.
    let id = KeyringId::new("k", Purpose::Database).expect("id");
    let fixed =
        PgRecordSource::open(pool.clone(), TableSpec::new("public", "t").keyring(id.clone()).column("b", Form::Binary))
            .await
            .expect("open");
    assert_eq!(fixed.keyrings().await.expect("fixed"), [id]);
    // A tenant that cannot be a keyring tenant is named.
    db.execute("INSERT INTO public.t VALUES (5, 'a/b', NULL)").await;
    let err = source.keyrings().await.expect_err("a slash in a tenant");
    assert!(matches!(err, Error::Backend { .. }) && err.to_string().contains("\"a/b\""), "{err}");
}

//! Checks for [`RecordSource`] implementations, through a [`RecordSourceFixture`].
//!
//! Every check takes a fixture around a fresh, **empty** source and panics
//! with a message naming the broken rule of the [`RecordSource`] contract.
//! Run them all with [`record_source_tests!`](crate::record_source_tests).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use keywheel_core::{
    Algorithm, Census, Context, Cursor, KeyMaterial, KeyState, KeyVersion, Keyring, KeyringId, Purpose, RecordSource,
    ReplaceOutcome, Replacement, ScanRequest, StoredValue, async_trait, census_by_scan, version_of,
};

use crate::{version, within};

/// What the record-source checks need beyond the [`RecordSource`] trait: a
/// way to put values into the backend and to act as the application does.
///
/// Implement it in your backend's test crate around a fresh, empty source;
/// every method may panic on backend failure (it is a test helper).
#[async_trait]
pub trait RecordSourceFixture: Send + Sync {
    /// The source under test.
    fn source(&self) -> Arc<dyn RecordSource>;

    /// Store a new value as the application would and return its cursor.
    /// Scans must yield exactly this keyring, context and value at that cursor.
    async fn insert(&self, keyring: &KeyringId, context: &Context, value: Vec<u8>) -> Cursor;

    /// Overwrite the value at `cursor` as the application would, concurrently
    /// with a rotation (keyring and context unchanged).
    async fn app_write(&self, cursor: &Cursor, value: Vec<u8>);

    /// Delete the value at `cursor` as the application would.
    async fn app_delete(&self, cursor: &Cursor);

    /// The value stored at `cursor`, read directly (not through a scan).
    async fn get(&self, cursor: &Cursor) -> Option<Vec<u8>>;

    /// The source's scan order on cursors. The default is the string order of
    /// [`Cursor`]; override it if the source orders cursors otherwise (e.g.
    /// numerically).
    fn compare_cursors(&self, a: &Cursor, b: &Cursor) -> Ordering {
        a.cmp(b)
    }
}

#[async_trait]
impl<T: RecordSourceFixture + ?Sized> RecordSourceFixture for Arc<T> {
    fn source(&self) -> Arc<dyn RecordSource> {
        (**self).source()
    }
    async fn insert(&self, keyring: &KeyringId, context: &Context, value: Vec<u8>) -> Cursor {
        (**self).insert(keyring, context, value).await
    }
    async fn app_write(&self, cursor: &Cursor, value: Vec<u8>) {
        (**self).app_write(cursor, value).await;
    }
    async fn app_delete(&self, cursor: &Cursor) {
        (**self).app_delete(cursor).await;
    }
    async fn get(&self, cursor: &Cursor) -> Option<Vec<u8>> {
        (**self).get(cursor).await
    }
    fn compare_cursors(&self, a: &Cursor, b: &Cursor) -> Ordering {
        (**self).compare_cursors(a, b)
    }
}

type Fixture<'a> = &'a dyn RecordSourceFixture;

/// Upper bound on batches in one full scan, so a source that never returns an
/// empty batch fails instead of hanging.
const MAX_BATCHES: usize = 10_000;

fn keyring(name: &str) -> KeyringId {
    KeyringId::new(name, Purpose::Database).expect("conformance keyring ids are valid")
}

fn context(row: usize) -> Context {
    Context::field("users", "email", &row.to_string())
}

/// A real keywheel value of `keyring` on `version` (binary or text form),
/// from a snapshot whose earlier versions are retired.
fn sample_value(keyring: &KeyringId, version: u32, context: &Context, text: bool) -> Vec<u8> {
    let mut builder = Keyring::builder(keyring.clone());
    for _ in 1..version {
        builder = builder.retired_version(Algorithm::Aes256Gcm);
    }
    let material = KeyMaterial::generate().expect("the OS RNG works");
    let ring = builder.version(KeyState::Active, Algorithm::Aes256Gcm, material).build().expect("valid keyring");
    let plaintext = b"alice@example.com";
    if text {
        ring.encrypt_text(plaintext, context).expect("encrypt").into_bytes()
    } else {
        ring.encrypt(plaintext, context).expect("encrypt")
    }
}

/// Insert `n` values: keyrings `a` and `b` alternating, versions 1..=3
/// cycling, every third value in text form. Returns them in scan order.
async fn seed(fixture: Fixture<'_>, n: usize) -> Vec<StoredValue> {
    let keyrings = [keyring("source-a"), keyring("source-b")];
    let mut inserted = Vec::with_capacity(n);
    for row in 0..n {
        let keyring = keyrings[row % 2].clone();
        let version = u32::try_from(row % 3).expect("small") + 1;
        let context = context(row);
        let value = sample_value(&keyring, version, &context, row % 3 == 2);
        let cursor = fixture.insert(&keyring, &context, value.clone()).await;
        inserted.push(StoredValue::new(cursor, keyring, context, value));
    }
    sort(fixture, &mut inserted);
    let distinct: HashSet<_> = inserted.iter().map(|v| &v.cursor).collect();
    assert_eq!(distinct.len(), n, "the fixture must give every inserted value its own cursor");
    inserted
}

fn sort(fixture: Fixture<'_>, values: &mut [StoredValue]) {
    values.sort_by(|a, b| fixture.compare_cursors(&a.cursor, &b.cursor));
}

fn cursors(values: &[StoredValue]) -> Vec<Cursor> {
    values.iter().map(|v| v.cursor.clone()).collect()
}

/// Scan everything matching `template` in batches of `limit`, checking the
/// per-batch rules: at most `limit` values, cursors strictly ascending and
/// strictly after the cursor asked for, an empty batch at the end.
async fn scan_all(fixture: Fixture<'_>, template: &ScanRequest, limit: usize) -> Vec<StoredValue> {
    let source = fixture.source();
    let mut request = ScanRequest { limit, ..template.clone() };
    let mut all: Vec<StoredValue> = Vec::new();
    for _ in 0..MAX_BATCHES {
        let batch = source.scan(&request).await.unwrap_or_else(|e| panic!("scan({request:?}) failed: {e}"));
        assert!(batch.len() <= limit, "scan must return at most `limit` ({limit}) values, got {}", batch.len());
        let mut previous = request.after.clone();
        for value in &batch {
            if let Some(p) = &previous {
                assert_eq!(
                    fixture.compare_cursors(p, &value.cursor),
                    Ordering::Less,
                    "scan must yield cursors strictly ascending and strictly after `after`: {} came after {}",
                    value.cursor,
                    p
                );
            }
            previous = Some(value.cursor.clone());
        }
        let Some(last) = batch.last() else { return all };
        request.after = Some(last.cursor.clone());
        all.extend(batch);
    }
    panic!("scan never returned an empty batch after {MAX_BATCHES} batches of {limit}");
}

/// `big` contains every value of `small` (both in scan order).
fn assert_contains_all(big: &[StoredValue], small: &[StoredValue], rule: &str) {
    for value in small {
        assert!(big.contains(value), "{rule}: the scan left out the value at {}", value.cursor);
    }
}

/// An empty source scans to an empty batch and counts nothing; it has a name.
pub async fn empty_source_scans_empty(fixture: impl RecordSourceFixture) {
    let source = fixture.source();
    assert!(!source.name().is_empty(), "a source must have a non-empty name for reports");
    let batch = source.scan(&ScanRequest::all(10)).await.expect("scan of an empty source");
    assert!(batch.is_empty(), "an empty source must scan to an empty batch, got {} values", batch.len());
    let census = within("census of an empty source", source.census(None)).await.expect("census of an empty source");
    assert_eq!(census, Census::default(), "an empty source must count nothing");
}

/// A full scan yields every inserted value once, with the keyring, context
/// and bytes it was inserted with, in ascending cursor order; two full scans
/// are identical (stable order).
pub async fn scan_order_is_stable(fixture: impl RecordSourceFixture) {
    let fixture: Fixture<'_> = &fixture;
    let inserted = seed(fixture, 25).await;
    let first = scan_all(fixture, &ScanRequest::all(7), 7).await;
    assert_eq!(
        first, inserted,
        "a full scan must yield exactly the inserted values (cursor, keyring, context, value), in cursor order"
    );
    let second = scan_all(fixture, &ScanRequest::all(7), 7).await;
    assert_eq!(cursors(&second), cursors(&first), "two full scans must yield the same order");
}

/// Scanning in batches of 1, 3 and 1000 gives the same sequence (no
/// duplicates, no gaps) ending with an empty batch; resuming from a cursor
/// rebuilt from its string (another process) yields exactly the rest.
pub async fn scan_resumes_after_cursor(fixture: impl RecordSourceFixture) {
    let fixture: Fixture<'_> = &fixture;
    let inserted = seed(fixture, 17).await;
    for limit in [1, 3, 1000] {
        let scanned = scan_all(fixture, &ScanRequest::all(limit), limit).await;
        assert_eq!(
            cursors(&scanned),
            cursors(&inserted),
            "scanning in batches of {limit} must yield every value exactly once, in order"
        );
    }
    let source = fixture.source();
    for split in [0, 5, 16] {
        let resumed_from = Cursor(inserted[split].cursor.0.clone());
        let rest = scan_all(fixture, &ScanRequest { after: Some(resumed_from), ..ScanRequest::all(4) }, 4).await;
        assert_eq!(
            cursors(&rest),
            cursors(&inserted[split + 1..]),
            "resuming after cursor {} must yield exactly the values after it",
            inserted[split].cursor
        );
    }
    let last = inserted.last().expect("seeded").cursor.clone();
    let after_end = source.scan(&ScanRequest { after: Some(last), ..ScanRequest::all(10) }).await.expect("scan");
    assert!(after_end.is_empty(), "scanning after the last cursor must return an empty batch");
}

/// A scan resumes correctly after a cursor whose row the application deleted
/// in the meantime, and values written between batches do not disturb it.
pub async fn scan_resumes_after_deleted_cursor(fixture: impl RecordSourceFixture) {
    let fixture: Fixture<'_> = &fixture;
    let inserted = seed(fixture, 10).await;
    let source = fixture.source();
    let first = source.scan(&ScanRequest::all(4)).await.expect("scan");
    assert_eq!(cursors(&first), cursors(&inserted[..4]), "the first batch of 4 must be the first 4 values");
    let checkpoint = first[3].cursor.clone();
    fixture.app_delete(&checkpoint).await;
    fixture.app_write(&inserted[6].cursor, b"written between batches".to_vec()).await;
    let rest = scan_all(fixture, &ScanRequest { after: Some(checkpoint.clone()), ..ScanRequest::all(3) }, 3).await;
    assert_eq!(
        cursors(&rest),
        cursors(&inserted[4..]),
        "resuming after the deleted row {checkpoint} must yield exactly the values after it"
    );
    assert_eq!(rest[2].value, b"written between batches".to_vec(), "a scan must yield the current value");
    let all = scan_all(fixture, &ScanRequest::all(100), 100).await;
    assert!(!cursors(&all).contains(&checkpoint), "a deleted value must not be scanned");
}

/// The `keyring` and `skip_version` filters may be ignored, but a source that
/// applies them must never leave out a value that matches: every value of the
/// keyring, and every value not on the skipped version (unparseable ones
/// included), is still yielded, in order and with nothing invented.
pub async fn scan_filters_never_hide_values(fixture: impl RecordSourceFixture) {
    let fixture: Fixture<'_> = &fixture;
    let mut inserted = seed(fixture, 24).await;
    let a = keyring("source-a");
    for (i, garbage) in [b"not a keywheel value".to_vec(), b"kw:v1:!!".to_vec()].into_iter().enumerate() {
        let context = context(100 + i);
        let cursor = fixture.insert(&a, &context, garbage.clone()).await;
        inserted.push(StoredValue::new(cursor, a.clone(), context, garbage));
    }
    sort(fixture, &mut inserted);
    let v1 = version(1);
    let requests = [
        ScanRequest { keyring: Some(a.clone()), ..ScanRequest::all(1) },
        ScanRequest { skip_version: Some(v1), ..ScanRequest::all(1) },
        ScanRequest { keyring: Some(a.clone()), skip_version: Some(v1), ..ScanRequest::all(1) },
    ];
    for request in requests {
        let matches = |v: &StoredValue| {
            request.keyring.as_ref().is_none_or(|k| &v.keyring == k)
                && request.skip_version.is_none_or(|skip| version_of(&v.value) != Ok(skip))
        };
        let expected: Vec<StoredValue> = inserted.iter().filter(|v| matches(v)).cloned().collect();
        for limit in [2, 1000] {
            let scanned = scan_all(fixture, &request, limit).await;
            let rule =
                format!("a scan filtered by keyring {:?} / skip_version {:?}", request.keyring, request.skip_version);
            assert_contains_all(&scanned, &expected, &rule);
            assert_contains_all(&inserted, &scanned, &format!("{rule} (yielding only stored values)"));
        }
    }
}

async fn read_all(fixture: Fixture<'_>) -> Vec<StoredValue> {
    scan_all(fixture, &ScanRequest::all(1000), 1000).await
}

fn reencrypted(value: &StoredValue) -> Vec<u8> {
    sample_value(&value.keyring, 3, &value.context, false)
}

/// `replace` writes the new value where the stored one is still the old one
/// ([`ReplaceOutcome::Replaced`]); the new value is then what `get` and scans see.
pub async fn replace_writes_unchanged_value(fixture: impl RecordSourceFixture) {
    let fixture: Fixture<'_> = &fixture;
    seed(fixture, 3).await;
    let read = read_all(fixture).await;
    let target = &read[1];
    let new = reencrypted(target);
    let batch = [Replacement::new(target.cursor.clone(), target.value.clone(), new.clone())];
    let outcomes = fixture.source().replace(&batch).await.expect("replace");
    assert_eq!(outcomes, vec![ReplaceOutcome::Replaced], "replacing an unchanged value must report Replaced");
    assert_eq!(fixture.get(&target.cursor).await, Some(new.clone()), "the replaced value must be stored");
    let after = read_all(fixture).await;
    assert_eq!(after[1].value, new, "a scan after replace must yield the new value");
    assert_eq!((&after[0], &after[2]), (&read[0], &read[2]), "replace must not touch other values");
}

/// `replace` never overwrites a value the application changed since the scan
/// read it: the outcome is [`ReplaceOutcome::Changed`] and the application's
/// value stays.
pub async fn replace_never_overwrites_application_write(fixture: impl RecordSourceFixture) {
    let fixture: Fixture<'_> = &fixture;
    seed(fixture, 3).await;
    let read = read_all(fixture).await;
    let target = &read[0];
    let app_value = sample_value(&target.keyring, 2, &target.context, true);
    fixture.app_write(&target.cursor, app_value.clone()).await;
    let batch = [Replacement::new(target.cursor.clone(), target.value.clone(), reencrypted(target))];
    let outcomes = fixture.source().replace(&batch).await.expect("replace");
    assert_eq!(
        outcomes,
        vec![ReplaceOutcome::Changed],
        "replacing a value changed since it was read must report Changed"
    );
    assert_eq!(fixture.get(&target.cursor).await, Some(app_value), "the application's write must win");
}

/// `replace` of a value the application deleted reports
/// [`ReplaceOutcome::Changed`] and does not bring the row back.
pub async fn replace_reports_deleted_value_as_changed(fixture: impl RecordSourceFixture) {
    let fixture: Fixture<'_> = &fixture;
    seed(fixture, 3).await;
    let read = read_all(fixture).await;
    let target = &read[2];
    fixture.app_delete(&target.cursor).await;
    let batch = [Replacement::new(target.cursor.clone(), target.value.clone(), reencrypted(target))];
    let outcomes = fixture.source().replace(&batch).await.expect("replace");
    assert_eq!(outcomes, vec![ReplaceOutcome::Changed], "replacing a deleted value must report Changed");
    assert_eq!(fixture.get(&target.cursor).await, None, "replace must not resurrect a deleted value");
    assert_eq!(cursors(&read_all(fixture).await), cursors(&read[..2]), "the deleted value must stay deleted");
}

/// A batch gets one outcome per replacement, in the batch's order (not scan
/// order), mixing written, changed and deleted values.
pub async fn replace_batch_outcomes_in_order(fixture: impl RecordSourceFixture) {
    let fixture: Fixture<'_> = &fixture;
    seed(fixture, 6).await;
    let read = read_all(fixture).await;
    let app_values: Vec<Vec<u8>> =
        [1, 4].iter().map(|&i| sample_value(&read[i].keyring, 2, &read[i].context, false)).collect();
    fixture.app_write(&read[1].cursor, app_values[0].clone()).await;
    fixture.app_write(&read[4].cursor, app_values[1].clone()).await;
    fixture.app_delete(&read[5].cursor).await;

    let order = [3, 1, 5, 0, 4, 2];
    let news: Vec<Vec<u8>> = read.iter().map(reencrypted).collect();
    let batch: Vec<Replacement> = order
        .iter()
        .map(|&i| Replacement::new(read[i].cursor.clone(), read[i].value.clone(), news[i].clone()))
        .collect();
    let outcomes = fixture.source().replace(&batch).await.expect("replace");
    use ReplaceOutcome::{Changed, Replaced};
    assert_eq!(
        outcomes,
        vec![Replaced, Changed, Changed, Replaced, Changed, Replaced],
        "replace must return one outcome per replacement, in the batch's order (rows {order:?})"
    );
    let expected = [
        Some(news[0].clone()),
        Some(app_values[0].clone()),
        Some(news[2].clone()),
        Some(news[3].clone()),
        Some(app_values[1].clone()),
        None,
    ];
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&fixture.get(&read[i].cursor).await, want, "after the mixed batch, row {i} holds the wrong value");
    }
}

/// Replacing again with the same arguments is harmless: the second time
/// every outcome is [`ReplaceOutcome::Changed`] and the values stay.
pub async fn replace_again_is_harmless(fixture: impl RecordSourceFixture) {
    let fixture: Fixture<'_> = &fixture;
    seed(fixture, 4).await;
    let read = read_all(fixture).await;
    let batch: Vec<Replacement> =
        read.iter().map(|v| Replacement::new(v.cursor.clone(), v.value.clone(), reencrypted(v))).collect();
    let source = fixture.source();
    let first = source.replace(&batch).await.expect("replace");
    assert_eq!(first, vec![ReplaceOutcome::Replaced; 4], "the first replace of unchanged values must write all");
    let second = source.replace(&batch).await.expect("replace again");
    assert_eq!(second, vec![ReplaceOutcome::Changed; 4], "the same replace again must report Changed for all");
    for r in &batch {
        assert_eq!(fixture.get(&r.cursor).await.as_ref(), Some(&r.new), "replacing again must keep the new values");
    }
    assert!(source.replace(&[]).await.expect("empty batch").is_empty(), "an empty batch has no outcomes");
}

/// The census counts values per keyring and key version from their headers
/// (binary and text forms), counts unparseable values separately, honours the
/// keyring filter, agrees with the scan-based [`census_by_scan`], and follows
/// replacements.
pub async fn census_counts_per_keyring_and_version(fixture: impl RecordSourceFixture) {
    let fixture: Fixture<'_> = &fixture;
    let (a, b) = (keyring("census-a"), keyring("census-b"));
    // (keyring, version, count, of which in text form)
    let plan = [(&a, 1, 2, 1), (&a, 2, 3, 1), (&a, 3, 1, 0), (&b, 1, 4, 2), (&b, 2, 2, 0)];
    let mut row = 0;
    let mut on_a_v1 = None;
    for (k, v, count, text) in plan {
        for n in 0..count {
            let context = context(row);
            row += 1;
            let value = sample_value(k, v, &context, n < text);
            let cursor = fixture.insert(k, &context, value.clone()).await;
            if *k == a && v == 1 {
                on_a_v1 = Some((cursor, context, value));
            }
        }
    }
    for (k, garbage) in [(&a, &b"plain text"[..]), (&a, &b"kw\x01\x01"[..]), (&b, &b"kw:v9:!!!"[..])] {
        let context = context(row);
        row += 1;
        fixture.insert(k, &context, garbage.to_vec()).await;
    }

    let mut expected = Census::default();
    for (k, v, count, _) in plan {
        expected.add(k, version(v), count);
    }
    expected.unparseable = 3;
    let mut expected_a = Census::default();
    for (k, v, count, _) in plan.iter().filter(|p| *p.0 == a) {
        expected_a.add(k, version(*v), *count);
    }
    expected_a.unparseable = 2;

    let source = fixture.source();
    let census = within("census(None)", source.census(None)).await.expect("census");
    assert_eq!(census, expected, "census(None) must count every value per keyring and version");
    let census_a = within("census(Some(a))", source.census(Some(&a))).await.expect("census of one keyring");
    assert_eq!(census_a, expected_a, "census(Some(a)) must count only keyring a's values (unparseable ones too)");
    for (filter, got) in [(None, &census), (Some(&a), &census_a)] {
        let by_scan =
            within("census_by_scan", census_by_scan(source.as_ref(), filter, 3)).await.expect("census by scan");
        assert_eq!(got, &by_scan, "census({filter:?}) must agree with the scan-based census");
    }

    let (cursor, context, old) = on_a_v1.expect("planned a value of a on v1");
    let new = sample_value(&a, 3, &context, false);
    let outcome = source.replace(&[Replacement::new(cursor, old, new)]).await.expect("replace");
    assert_eq!(outcome, vec![ReplaceOutcome::Replaced]);
    let after = within("census after replace", source.census(Some(&a))).await.expect("census after replace");
    let v = |n: u32| -> KeyVersion { version(n) };
    assert_eq!(
        (after.count(&a, v(1)), after.count(&a, v(3))),
        (1, 2),
        "after moving one value of a from v1 to v3 the census must follow"
    );
}

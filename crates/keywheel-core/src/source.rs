//! The `RecordSource` trait: the application's encrypted values (the [manual](crate::manual#5-implementing-a-backend)).

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{BlindIndex, Context, Form, KeyVersion, KeyringId, Result};

/// A position in a source's scan order. Opaque to keywheel: the source defines
/// its meaning and order (e.g. a primary key and a column name). Persisted in
/// rotation checkpoints, so it must stay valid across process restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub String);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a value lives, in the terms of the application's schema: for a
/// table, its name, the column and the row's primary key. Reports (a job's
/// failures, `keywheel failures`) show it instead of the opaque [`Cursor`].
///
/// ```
/// use keywheel_core::ValueLocation;
/// let at = ValueLocation::new("public.users", "token", "42");
/// assert_eq!(at.to_string(), "public.users.token [42]");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ValueLocation {
    /// The table (or collection), e.g. `public.users`.
    pub table: String,
    /// The column (or field) holding the value, by name.
    pub column: String,
    /// The row's primary key, as text.
    pub key: String,
}

impl ValueLocation {
    /// The value in column `column` of the row with primary key `key` of `table`.
    pub fn new(table: impl Into<String>, column: impl Into<String>, key: impl Into<String>) -> Self {
        ValueLocation { table: table.into(), column: column.into(), key: key.into() }
    }
}

impl fmt::Display for ValueLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} [{}]", self.table, self.column, self.key)
    }
}

/// One encrypted value as a source yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// Where it is, in scan order.
    pub cursor: Cursor,
    /// Which keyring it belongs to.
    pub keyring: KeyringId,
    /// What it is bound to.
    pub context: Context,
    /// The stored bytes (binary form, or the UTF-8 bytes of the text form).
    pub value: Vec<u8>,
    /// The blind index tag stored beside the value, when the source pairs an
    /// index column with this value's column; `None` otherwise.
    pub index: Option<StoredIndex>,
}

impl StoredValue {
    /// A value without a blind index beside it.
    pub fn new(cursor: Cursor, keyring: KeyringId, context: Context, value: Vec<u8>) -> Self {
        StoredValue { cursor, keyring, context, value, index: None }
    }
}

/// A blind index tag stored beside a value (see [`BlindIndex`] and the
/// [manual](crate::manual#13-searchable-fields-blind-indexes)). The rotation
/// engine computes the tag under the new version from the plaintext it
/// decrypts, and writes value and tag in one compare-and-set.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredIndex {
    /// How the tags of this column are made (shared by every row of the column).
    pub spec: std::sync::Arc<BlindIndex>,
    /// The form of the tag column (binary for `bytea`, text otherwise).
    pub form: Form,
    /// The stored tag, or `None` when the index column is empty (`NULL`), e.g.
    /// on rows written before the index existed: a rotation fills it.
    pub tag: Option<Vec<u8>>,
}

impl fmt::Debug for StoredIndex {
    /// The tag's version, not its bytes: a tag is deterministic in the
    /// plaintext, so logs must not be matchable against the column.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredIndex")
            .field("spec", &self.spec)
            .field("form", &self.form)
            .field("tag_version", &self.tag.as_deref().map(|t| crate::wire::version_of(t).map(KeyVersion::get)))
            .finish()
    }
}

/// What to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRequest {
    /// Yield values strictly after this cursor; `None` starts at the beginning.
    pub after: Option<Cursor>,
    /// At most this many values. Must be at least 1 (an empty batch means "the
    /// end"); sources answer 0 with [`crate::Error::InvalidArgument`].
    pub limit: usize,
    /// Only values of this keyring (a source may also return others; callers re-check).
    pub keyring: Option<KeyringId>,
    /// Values already on this version may be left out (a hint for sources that
    /// can filter, e.g. in SQL on the header bytes; callers re-check).
    pub skip_version: Option<KeyVersion>,
}

impl ScanRequest {
    /// Scan everything from the start, `limit` at a time.
    pub fn all(limit: usize) -> Self {
        ScanRequest { after: None, limit, keyring: None, skip_version: None }
    }
}

/// Replace `old` by `new` at `cursor`, only if the stored value is still `old`
/// (and, with an [`index`](Self::index), the stored tag still its `old`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// Where.
    pub cursor: Cursor,
    /// The value read by the scan.
    pub old: Vec<u8>,
    /// The re-encrypted value (equal to `old` when only the tag changes).
    pub new: Vec<u8>,
    /// The blind index tag to write in the same compare-and-set, for a
    /// source that pairs an index column with the value's column.
    pub index: Option<IndexReplacement>,
}

impl Replacement {
    /// Replace a value that has no blind index beside it.
    pub fn new(cursor: Cursor, old: Vec<u8>, new: Vec<u8>) -> Self {
        Replacement { cursor, old, new, index: None }
    }
}

/// The tag part of a [`Replacement`]: written together with the value, only
/// if the stored tag is still `old` (`None`: the column is empty).
#[derive(Clone, PartialEq, Eq)]
pub struct IndexReplacement {
    /// The tag read by the scan, `None` for an empty (`NULL`) column.
    pub old: Option<Vec<u8>>,
    /// The tag under the new version, in the column's form.
    pub new: Vec<u8>,
}

impl fmt::Debug for IndexReplacement {
    /// Versions only (see [`StoredIndex`]'s `Debug`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = |t: &[u8]| crate::wire::version_of(t).map(KeyVersion::get);
        f.debug_struct("IndexReplacement")
            .field("old_version", &self.old.as_deref().map(version))
            .field("new_version", &version(&self.new))
            .finish()
    }
}

/// What happened to one [`Replacement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplaceOutcome {
    /// The stored value was `old` and is now `new`.
    Replaced,
    /// The stored value was no longer `old` (changed or deleted concurrently);
    /// nothing was written. The application's write wins.
    Changed,
}

/// Values per keyring and key version.
///
/// Blind index tags need their version's key as much as encrypted values do
/// (a lookup under a destroyed version finds nothing), so they are counted
/// in [`counts`](Self::counts) too, and retirement waits for them; the tags
/// alone are also counted in [`index_tags`](Self::index_tags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    /// Count of values (encrypted values and blind index tags) per keyring,
    /// then per version.
    pub counts: BTreeMap<KeyringId, BTreeMap<KeyVersion, u64>>,
    /// Of those, the blind index tags, per keyring, then per version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub index_tags: BTreeMap<KeyringId, BTreeMap<KeyVersion, u64>>,
    /// Values (or tags) whose header could not be parsed.
    pub unparseable: u64,
}

impl Census {
    /// Count `n` values.
    pub fn add(&mut self, keyring: &KeyringId, version: KeyVersion, n: u64) {
        *self.counts.entry(keyring.clone()).or_default().entry(version).or_default() += n;
    }

    /// Count `n` blind index tags (in [`counts`](Self::counts) and in
    /// [`index_tags`](Self::index_tags)).
    pub fn add_index_tags(&mut self, keyring: &KeyringId, version: KeyVersion, n: u64) {
        self.add(keyring, version, n);
        *self.index_tags.entry(keyring.clone()).or_default().entry(version).or_default() += n;
    }

    /// Count one stored value or tag from its header: a tag (algorithm
    /// `0x11`) as a tag, anything else as a value, an unparseable one as such.
    pub fn count_stored(&mut self, keyring: &KeyringId, stored: &[u8]) {
        match crate::wire::parse(stored) {
            Ok(info) if info.algorithm == crate::Algorithm::BlindIndex => self.add_index_tags(keyring, info.version, 1),
            Ok(info) => self.add(keyring, info.version, 1),
            Err(_) => self.unparseable += 1,
        }
    }

    /// Add another census into this one.
    pub fn merge(&mut self, other: &Census) {
        for (keyring, versions) in &other.counts {
            for (version, n) in versions {
                self.add(keyring, *version, *n);
            }
        }
        for (keyring, versions) in &other.index_tags {
            for (version, n) in versions {
                *self.index_tags.entry(keyring.clone()).or_default().entry(*version).or_default() += n;
            }
        }
        self.unparseable += other.unparseable;
    }

    /// Blind index tags of `keyring` on `version` (included in [`count`](Self::count)).
    pub fn index_tag_count(&self, keyring: &KeyringId, version: KeyVersion) -> u64 {
        self.index_tags.get(keyring).and_then(|v| v.get(&version)).copied().unwrap_or(0)
    }

    /// Values of `keyring` on `version`.
    pub fn count(&self, keyring: &KeyringId, version: KeyVersion) -> u64 {
        self.counts.get(keyring).and_then(|v| v.get(&version)).copied().unwrap_or(0)
    }

    /// Values of `keyring` on any version.
    pub fn total(&self, keyring: &KeyringId) -> u64 {
        self.counts.get(keyring).map_or(0, |v| v.values().sum())
    }
}

/// The application's encrypted values, as keywheel scans and rewrites them.
///
/// # Contract
///
/// * **Scan order** is a total order on cursors, fixed by the source and stable
///   across calls. [`scan`](Self::scan) returns at most `limit` values with
///   cursors strictly greater than `after`, in ascending order. An **empty
///   batch means the end**; a short batch does not. The `keyring` and
///   `skip_version` fields are filters a source may apply or ignore.
/// * **Resumability**: scanning again after the last cursor of a batch resumes
///   exactly where it stopped, also in another process.
/// * **Compare-and-set replace**: [`replace`](Self::replace) writes `new` only
///   where the stored value still equals `old` byte for byte, and returns one
///   [`ReplaceOutcome`] per replacement, in order.
/// * **Blind indexes**: a source that pairs an index column with a value
///   column yields the stored tag with each value ([`StoredValue::index`]),
///   and writes a [`Replacement::index`] in the same compare-and-set as its
///   value: both are written only if the stored value still equals `old` and
///   the stored tag its `index.old` (an empty column equals `None`). With a
///   `skip_version` filter, a row whose value is on that version but whose
///   tag is not (or is empty) must still be yielded: its tag needs rewriting.
///   The census counts the tags too ([`Census::add_index_tags`]). A concurrent application write
///   always wins and is never overwritten. Replacing again with the same
///   arguments is harmless (the second time it reports `Changed`).
/// * **Census** counts values per keyring and version from the headers alone.
///   The default implementation scans everything; override it with a fast path
///   (e.g. SQL `GROUP BY`) when you can.
/// * **Errors**: backend faults are [`crate::Error::Backend`]; a value that is not
///   keywheel ciphertext is not an error of the source.
#[async_trait]
pub trait RecordSource: Send + Sync + fmt::Debug {
    /// A short name for reports, e.g. `users.email`.
    fn name(&self) -> &str;

    /// The next batch after `request.after`.
    async fn scan(&self, request: &ScanRequest) -> Result<Vec<StoredValue>>;

    /// Compare-and-set replace of a batch; one outcome per replacement.
    async fn replace(&self, batch: &[Replacement]) -> Result<Vec<ReplaceOutcome>>;

    /// Whether this source holds (all) the values of `keyring` that live in
    /// its table or collection, so that its census can speak for them.
    ///
    /// Retirement destroys key material only when a registered source covers
    /// the keyring and the census of all sources finds no value on the
    /// version. The default is `false` and fails closed: a source that does
    /// not say what it covers never lets a retirement through (it can still
    /// be rotated, and a retirement can be forced with an audited reason).
    fn covers(&self, keyring: &KeyringId) -> bool {
        let _ = keyring;
        false
    }

    /// Where the value at `cursor` lives (table, column name, primary key),
    /// for reports; `None` (the default) if the source cannot say, or the
    /// cursor is not one of its cursors. Never fails: reports fall back to
    /// the cursor itself.
    fn locate(&self, cursor: &Cursor) -> Option<ValueLocation> {
        let _ = cursor;
        None
    }

    /// The legacy formats the value at `cursor` may be in (the
    /// [migration of legacy data](crate::manual#14-migrating-legacy-data)):
    /// the rotation engine, its dry run and [`Rotator::legacy_census`](crate::Rotator::legacy_census)
    /// migrate or count a value that is not keywheel only if its column
    /// declares a format that recognises it. `None` (the default): no legacy
    /// format, every value that is not keywheel is a failure.
    ///
    /// A source need not implement this: wrap it in a
    /// [`LegacyColumns`](crate::LegacyColumns), which declares the formats
    /// per column name (through [`locate`](Self::locate)) or for every value.
    fn legacy_formats(&self, cursor: &Cursor) -> Option<std::sync::Arc<crate::LegacyFormats>> {
        let _ = cursor;
        None
    }

    /// Values per keyring and version (only `keyring` if given).
    async fn census(&self, keyring: Option<&KeyringId>) -> Result<Census> {
        census_by_scan(self, keyring, 1024).await
    }
}

/// The census of values per keyring and version across `sources` (only
/// `keyring`'s if given): each source's [`RecordSource::census`], merged.
/// [`Rotator::census`](crate::Rotator::census) is this over its registered
/// sources; a reader without a [`Keywheel`](crate::Keywheel) (no master key)
/// calls it directly: a census needs no key.
pub async fn census_of(sources: &[std::sync::Arc<dyn RecordSource>], keyring: Option<&KeyringId>) -> Result<Census> {
    let mut total = Census::default();
    for s in sources {
        total.merge(&s.census(keyring).await?);
    }
    if let Some(k) = keyring {
        total.counts.retain(|id, _| id == k);
    }
    Ok(total)
}

/// The scan-based census, the default of [`RecordSource::census`]: reads every
/// value's header in batches of `batch`.
pub async fn census_by_scan<S: RecordSource + ?Sized>(
    source: &S,
    keyring: Option<&KeyringId>,
    batch: usize,
) -> Result<Census> {
    let mut census = Census::default();
    let mut request = ScanRequest { keyring: keyring.cloned(), ..ScanRequest::all(batch.max(1)) };
    loop {
        let values = source.scan(&request).await?;
        let Some(last) = values.last() else {
            return Ok(census);
        };
        request.after = Some(advanced(source, &request, last)?);
        for v in values.iter().filter(|v| keyring.is_none_or(|k| &v.keyring == k)) {
            census.count_stored(&v.keyring, &v.value);
            if let Some(tag) = v.index.as_ref().and_then(|i| i.tag.as_deref()) {
                census.count_stored(&v.keyring, tag);
            }
        }
    }
}

/// The cursor to continue after `last`, or an error if the source did not move
/// past `request.after` (a broken source would otherwise make every scan loop forever).
pub(crate) fn advanced<S: RecordSource + ?Sized>(
    source: &S,
    request: &ScanRequest,
    last: &StoredValue,
) -> Result<Cursor> {
    if request.after.as_ref() == Some(&last.cursor) {
        return Err(crate::Error::backend(
            "record source",
            format!("{} returned cursor {} again instead of values after it", source.name(), last.cursor),
            false,
        ));
    }
    Ok(last.cursor.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Purpose;

    /// A broken source that ignores `after` and yields the same value forever.
    #[derive(Debug)]
    struct Stuck(StoredValue);

    #[async_trait]
    impl RecordSource for Stuck {
        fn name(&self) -> &str {
            "stuck"
        }
        async fn scan(&self, _: &ScanRequest) -> Result<Vec<StoredValue>> {
            Ok(vec![self.0.clone()])
        }
        async fn replace(&self, batch: &[Replacement]) -> Result<Vec<ReplaceOutcome>> {
            Ok(vec![ReplaceOutcome::Changed; batch.len()])
        }
    }

    #[tokio::test]
    async fn a_source_that_does_not_advance_is_an_error_not_a_hang() {
        let keyring = KeyringId::new("t", Purpose::Token).expect("id");
        let value = StoredValue::new(Cursor("1".into()), keyring, Context::empty(), vec![1]);
        let err = Stuck(value).census(None).await.expect_err("must not loop forever");
        assert!(err.to_string().contains("returned cursor 1 again"), "{err}");
    }
}

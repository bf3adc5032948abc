//! [`MemoryRecordSource`]: a table of encrypted values keyed by cursor.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use keywheel_core::{
    BlindIndex, Census, Context, Cursor, Error, Form, IndexTerms, KeyringId, RecordSource, ReplaceOutcome, Replacement,
    Result, ScanRequest, StoredIndex, StoredValue, async_trait, version_of,
};

/// One stored row.
#[derive(Clone)]
struct Row {
    keyring: KeyringId,
    context: Context,
    value: Vec<u8>,
    /// The blind index tag beside the value (only with [`MemoryRecordSource::with_index`]).
    tag: Option<Vec<u8>>,
}

/// The blind index column of a source: how its tags are made and stored.
#[derive(Debug, Clone)]
struct IndexColumn {
    spec: Arc<BlindIndex>,
    form: Form,
}

impl Row {
    fn stored(&self, cursor: &Cursor, index: Option<&IndexColumn>) -> StoredValue {
        StoredValue {
            cursor: cursor.clone(),
            keyring: self.keyring.clone(),
            context: self.context.clone(),
            value: self.value.clone(),
            index: index.map(|i| StoredIndex { spec: Arc::clone(&i.spec), form: i.form, tag: self.tag.clone() }),
        }
    }
}

/// An in-memory [`RecordSource`]: a table of encrypted values keyed by
/// [`Cursor`], scanned in the string order of the cursors.
///
/// The application side ([`insert`](Self::insert), [`set`](Self::set),
/// [`remove`](Self::remove), …) stands in for the application's own database
/// in tests and demos; the [`RecordSource`] side is what the rotation engine
/// uses. Every call takes the lock once, so each [`replace`](RecordSource::replace)
/// batch is atomic and a concurrent [`set`](Self::set) is either seen (the
/// replacement reports [`ReplaceOutcome::Changed`]) or overwritten-never.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> keywheel_core::Result<()> {
/// use keywheel_core::{Context, KeyringId, Purpose, RecordSource, ReplaceOutcome, Replacement, ScanRequest};
/// use keywheel_memory::MemoryRecordSource;
///
/// let source = MemoryRecordSource::new("users.email");
/// let id = KeyringId::new("acme", Purpose::Database)?;
/// let cursor = source.insert_row(7, id, Context::field("users", "email", "7"), b"old".to_vec());
/// assert_eq!(cursor.0, "00000000000000000007");
///
/// let batch = source.scan(&ScanRequest::all(100)).await?;
/// assert_eq!(batch.len(), 1);
/// // The application writes first: the stale replacement is refused.
/// source.set(&cursor, b"app".to_vec());
/// let stale = Replacement::new(cursor.clone(), b"old".to_vec(), b"new".to_vec());
/// assert_eq!(source.replace(&[stale]).await?, vec![ReplaceOutcome::Changed]);
/// assert_eq!(source.get(&cursor), Some(b"app".to_vec()));
/// # Ok(())
/// # }
/// ```
pub struct MemoryRecordSource {
    name: String,
    rows: Mutex<BTreeMap<Cursor, Row>>,
    covers: Option<Vec<KeyringId>>,
    index: Option<IndexColumn>,
}

impl MemoryRecordSource {
    /// An empty source called `name` (shown in reports, e.g. `users.email`).
    pub fn new(name: impl Into<String>) -> Self {
        MemoryRecordSource { name: name.into(), rows: Mutex::new(BTreeMap::new()), covers: None, index: None }
    }

    /// Pair a blind index column with the values: every row also holds a tag
    /// of `index` in `form` (set with [`insert_indexed`](Self::insert_indexed)
    /// and [`set_indexed`](Self::set_indexed), found with
    /// [`lookup`](Self::lookup)); a rotation rewrites value and tag together.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> keywheel_core::Result<()> {
    /// use std::sync::Arc;
    /// use keywheel_core::{Algorithm, BlindIndex, Context, Form, Keywheel, KeyringId, LocalKek, Normalization, Purpose};
    /// use keywheel_memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
    ///
    /// let kw = Keywheel::builder()
    ///     .store(Arc::new(MemoryKeyStore::new()))
    ///     .kek(Arc::new(LocalKek::from_bytes(&[7; 32])))
    ///     .audit(Arc::new(MemoryAuditSink::new()))
    ///     .build()?;
    /// let id = KeyringId::new("acme", Purpose::Database)?;
    /// let ring = kw.create_keyring(&id, Algorithm::Aes256Gcm).await?;
    /// let email = BlindIndex::new("users", "email").normalization(Normalization::TrimLowercase);
    /// let users = MemoryRecordSource::new("users.email").with_index(email.clone(), Form::Binary);
    /// let ctx = Context::field("users", "email", "1");
    /// let row = users.insert_indexed(
    ///     MemoryRecordSource::row_cursor(1),
    ///     id.clone(),
    ///     ctx.clone(),
    ///     ring.encrypt(b"Ann@Example.org", &ctx)?,
    ///     Some(ring.blind_index(b"Ann@Example.org", &email)?),
    /// );
    /// assert_eq!(users.lookup(&ring.index_terms(b"ann@example.org", &email)?), vec![row]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_index(mut self, index: BlindIndex, form: Form) -> Self {
        self.index = Some(IndexColumn { spec: Arc::new(index), form });
        self
    }

    /// Say that this source holds the values of these keyrings only (by
    /// default it covers every keyring: it stands for the application's whole
    /// data). Retirement needs a source that covers the keyring
    /// ([`RecordSource::covers`]), so a test can model a keyring whose values
    /// live somewhere no registered source sees.
    pub fn covering(mut self, keyrings: impl IntoIterator<Item = KeyringId>) -> Self {
        self.covers = Some(keyrings.into_iter().collect());
        self
    }

    /// The cursor [`insert_row`](Self::insert_row) uses for a numeric row id:
    /// zero-padded to 20 digits, so numeric order equals string (scan) order.
    pub fn row_cursor(row: u64) -> Cursor {
        Cursor(format!("{row:020}"))
    }

    /// Store a value at `cursor` (an application insert). An existing row at
    /// that cursor is overwritten; its previous value is returned. With an
    /// index column, the row's tag is empty (a rotation fills it).
    pub fn insert(&self, cursor: Cursor, keyring: KeyringId, context: Context, value: Vec<u8>) -> Option<Vec<u8>> {
        self.lock().insert(cursor, Row { keyring, context, value, tag: None }).map(|row| row.value)
    }

    /// Store a value and its blind index tag at `cursor` (an application
    /// insert on a source [`with_index`](Self::with_index)); returns `cursor`.
    /// A tag of `None` leaves the index column empty.
    pub fn insert_indexed(
        &self,
        cursor: Cursor,
        keyring: KeyringId,
        context: Context,
        value: Vec<u8>,
        tag: Option<Vec<u8>>,
    ) -> Cursor {
        self.lock().insert(cursor.clone(), Row { keyring, context, value, tag });
        cursor
    }

    /// Overwrite the value and the tag at `cursor` together (an application
    /// write on a source [`with_index`](Self::with_index)). Returns the
    /// previous value, or `None` (and writes nothing) if there is no row.
    /// A tag of `None` empties the index column.
    pub fn set_indexed(&self, cursor: &Cursor, value: Vec<u8>, tag: Option<Vec<u8>>) -> Option<Vec<u8>> {
        self.lock().get_mut(cursor).map(|row| {
            row.tag = tag;
            std::mem::replace(&mut row.value, value)
        })
    }

    /// The blind index tag stored at `cursor`, if there is a row and it has one.
    pub fn index_tag(&self, cursor: &Cursor) -> Option<Vec<u8>> {
        self.lock().get(cursor).and_then(|row| row.tag.clone())
    }

    /// The rows whose tag is one of `terms` (in the index column's form), in
    /// cursor order: `WHERE tag = ANY(terms)`.
    pub fn lookup(&self, terms: &IndexTerms) -> Vec<Cursor> {
        let Some(index) = &self.index else { return Vec::new() };
        let wanted = terms.in_form(index.form);
        self.lock()
            .iter()
            .filter(|(_, row)| row.tag.as_ref().is_some_and(|t| wanted.contains(t)))
            .map(|(cursor, _)| cursor.clone())
            .collect()
    }

    /// Store a value under a numeric row id (see [`row_cursor`](Self::row_cursor))
    /// and return its cursor. An existing row with that id is overwritten.
    pub fn insert_row(&self, row: u64, keyring: KeyringId, context: Context, value: Vec<u8>) -> Cursor {
        let cursor = Self::row_cursor(row);
        self.insert(cursor.clone(), keyring, context, value);
        cursor
    }

    /// The value stored at `cursor`.
    pub fn get(&self, cursor: &Cursor) -> Option<Vec<u8>> {
        self.lock().get(cursor).map(|row| row.value.clone())
    }

    /// Overwrite the value at `cursor`, keeping its keyring and context (an
    /// application write). Returns the previous value, or `None` (and writes
    /// nothing) if there is no row at `cursor`.
    pub fn set(&self, cursor: &Cursor, value: Vec<u8>) -> Option<Vec<u8>> {
        self.lock().get_mut(cursor).map(|row| std::mem::replace(&mut row.value, value))
    }

    /// Delete the row at `cursor` (an application delete) and return it.
    pub fn remove(&self, cursor: &Cursor) -> Option<StoredValue> {
        self.lock().remove_entry(cursor).map(|(cursor, row)| row.stored(&cursor, self.index.as_ref()))
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A snapshot of every row, in scan order.
    pub fn values(&self) -> Vec<StoredValue> {
        self.lock().iter().map(|(cursor, row)| row.stored(cursor, self.index.as_ref())).collect()
    }

    /// Rows are only ever replaced whole, so a poisoned lock still guards
    /// consistent data: recover from poisoning.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Cursor, Row>> {
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryRecordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRecordSource").field("name", &self.name).field("rows", &self.len()).finish()
    }
}

#[async_trait]
impl RecordSource for MemoryRecordSource {
    fn name(&self) -> &str {
        &self.name
    }

    /// Every keyring, unless narrowed with [`covering`](MemoryRecordSource::covering).
    fn covers(&self, keyring: &KeyringId) -> bool {
        self.covers.as_ref().is_none_or(|ids| ids.contains(keyring))
    }

    /// Values strictly after `request.after` in cursor order, at most
    /// `request.limit` of them. Both filters are applied: only values of
    /// `request.keyring`, and none whose header names `request.skip_version`
    /// (values that do not parse are always yielded) unless its blind index
    /// tag is not on that version too. A `limit` of 0 is an
    /// [`Error::InvalidArgument`], since an empty batch would mean "the end".
    async fn scan(&self, request: &ScanRequest) -> Result<Vec<StoredValue>> {
        if request.limit == 0 {
            return Err(Error::InvalidArgument("scan limit must be at least 1".into()));
        }
        let start = request.after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let rows = self.lock();
        Ok(rows
            .range::<Cursor, _>((start, Bound::Unbounded))
            .filter(|(_, row)| request.keyring.as_ref().is_none_or(|k| &row.keyring == k))
            .filter(|(_, row)| {
                request.skip_version.is_none_or(|skip| {
                    let on_skip = |b: &[u8]| version_of(b) == Ok(skip);
                    !on_skip(&row.value) || (self.index.is_some() && !row.tag.as_deref().is_some_and(on_skip))
                })
            })
            .take(request.limit)
            .map(|(cursor, row)| row.stored(cursor, self.index.as_ref()))
            .collect())
    }

    async fn replace(&self, batch: &[Replacement]) -> Result<Vec<ReplaceOutcome>> {
        let mut rows = self.lock();
        Ok(batch
            .iter()
            .map(|r| match rows.get_mut(&r.cursor) {
                Some(row) if row.value == r.old && r.index.as_ref().is_none_or(|i| row.tag == i.old) => {
                    row.value.clone_from(&r.new);
                    if let Some(i) = &r.index {
                        row.tag = Some(i.new.clone());
                    }
                    ReplaceOutcome::Replaced
                }
                _ => ReplaceOutcome::Changed,
            })
            .collect())
    }

    /// A direct count under one lock: the same result as the scan-based
    /// default, taken from a single consistent snapshot.
    async fn census(&self, keyring: Option<&KeyringId>) -> Result<Census> {
        let mut census = Census::default();
        for row in self.lock().values().filter(|row| keyring.is_none_or(|k| &row.keyring == k)) {
            census.count_stored(&row.keyring, &row.value);
            if let Some(tag) = row.tag.as_deref().filter(|_| self.index.is_some()) {
                census.count_stored(&row.keyring, tag);
            }
        }
        Ok(census)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keywheel_core::{Algorithm, KeyMaterial, KeyState, KeyVersion, Keyring, Purpose, census_by_scan};

    fn id(tenant: &str) -> KeyringId {
        KeyringId::new(tenant, Purpose::Database).expect("valid id")
    }

    /// A value on `version` of `keyring` (earlier versions retired in the snapshot).
    fn value_on(keyring: &KeyringId, version: u32, row: u64) -> Vec<u8> {
        let mut builder = Keyring::builder(keyring.clone());
        for _ in 1..version {
            builder = builder.retired_version(Algorithm::Aes256Gcm);
        }
        let ring = builder
            .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate().expect("rng"))
            .build()
            .expect("keyring");
        ring.encrypt(b"secret", &ctx(row)).expect("encrypt")
    }

    fn ctx(row: u64) -> Context {
        Context::field("t", "c", &row.to_string())
    }

    fn source() -> MemoryRecordSource {
        let s = MemoryRecordSource::new("t.c");
        for row in 0..12u64 {
            let k = if row % 3 == 0 { id("b") } else { id("a") };
            let version = u32::try_from(row % 2).expect("small") + 1;
            s.insert_row(row, k.clone(), ctx(row), value_on(&k, version, row));
        }
        s.insert_row(100, id("a"), ctx(100), b"plaintext, not keywheel".to_vec());
        s
    }

    #[tokio::test]
    async fn scan_applies_both_filters() {
        let s = source();
        let only_a = ScanRequest { keyring: Some(id("a")), ..ScanRequest::all(1000) };
        let rows = s.scan(&only_a).await.expect("scan");
        assert_eq!(rows.len(), 9);
        assert!(rows.iter().all(|r| r.keyring == id("a")));

        let v2 = KeyVersion::new(2).expect("nonzero");
        let skip = ScanRequest { keyring: Some(id("a")), skip_version: Some(v2), ..ScanRequest::all(1000) };
        let rows = s.scan(&skip).await.expect("scan");
        // Rows 2, 4, 8, 10 are keyring a on v1; the unparseable row 100 is always yielded.
        let cursors: Vec<_> = rows.iter().map(|r| r.cursor.clone()).collect();
        let expected: Vec<_> = [2u64, 4, 8, 10, 100].map(MemoryRecordSource::row_cursor).to_vec();
        assert_eq!(cursors, expected);

        // Filtered scans still resume strictly after the cursor given.
        let after = ScanRequest { after: Some(MemoryRecordSource::row_cursor(4)), limit: 2, ..skip };
        let rows = s.scan(&after).await.expect("scan");
        assert_eq!(rows.iter().map(|r| r.cursor.clone()).collect::<Vec<_>>(), expected[2..4].to_vec());
    }

    #[tokio::test]
    async fn zero_limit_is_refused() {
        assert!(matches!(source().scan(&ScanRequest::all(0)).await, Err(Error::InvalidArgument(_))));
    }

    #[tokio::test]
    async fn direct_census_equals_scan_census() {
        let s = source();
        let direct = s.census(None).await.expect("census");
        assert_eq!(direct, census_by_scan(&s, None, 5).await.expect("census"));
        assert_eq!(direct.unparseable, 1);
        assert_eq!(direct.total(&id("a")), 8);
        assert_eq!(direct.total(&id("b")), 4);
        let only_b = s.census(Some(&id("b"))).await.expect("census");
        assert_eq!(only_b, census_by_scan(&s, Some(&id("b")), 5).await.expect("census"));
        assert_eq!(only_b.unparseable, 0);
        assert_eq!(only_b.total(&id("a")), 0);
    }

    #[test]
    fn application_api() {
        let s = MemoryRecordSource::new("t.c");
        assert!(s.is_empty());
        let c9 = s.insert_row(9, id("a"), ctx(9), b"nine".to_vec());
        let c10 = s.insert_row(10, id("a"), ctx(10), b"ten".to_vec());
        assert!(c9 < c10, "numeric order is string order");
        assert_eq!(s.set(&c9, b"NINE".to_vec()), Some(b"nine".to_vec()));
        assert_eq!(s.get(&c9), Some(b"NINE".to_vec()));
        let missing = Cursor("nope".into());
        assert_eq!(s.set(&missing, b"x".to_vec()), None);
        assert_eq!(s.get(&missing), None);
        assert_eq!(s.len(), 2);
        let removed = s.remove(&c9).expect("row 9");
        assert_eq!((removed.cursor, removed.value, removed.context), (c9.clone(), b"NINE".to_vec(), ctx(9)));
        assert_eq!(s.remove(&c9), None);
        assert_eq!(s.values().len(), 1);
        assert_eq!(s.insert(c10.clone(), id("b"), ctx(10), b"TEN".to_vec()), Some(b"ten".to_vec()));
        assert_eq!(s.values()[0].keyring, id("b"));
        assert_eq!(format!("{s:?}"), r#"MemoryRecordSource { name: "t.c", rows: 1 }"#);
    }
}

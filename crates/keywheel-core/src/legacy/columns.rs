//! Declaring legacy formats per column of any record source, without editing it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::LegacyFormats;
use crate::ValueLocation;
use crate::{Census, Cursor, KeyringId, RecordSource, ReplaceOutcome, Replacement, Result, ScanRequest, StoredValue};

/// A record source with legacy formats declared per column: everything is
/// delegated to the wrapped source, and [`RecordSource::legacy_formats`]
/// answers from the column the source [locates](RecordSource::locate) the
/// value in (or, with [`every_column`](Self::every_column), for every value).
///
/// Register the wrapper with the [`Rotator`](crate::Rotator) instead of the
/// source: its rotations then migrate the values of those formats, its dry
/// runs and [`legacy_census`](crate::Rotator::legacy_census) count them (the
/// [migration of legacy data](crate::manual#14-migrating-legacy-data)).
///
/// ```
/// use std::sync::Arc;
/// use keywheel_core::{Cursor, LegacyColumns, LegacyFormats, RecordSource, Timestamp};
/// # #[derive(Debug)] struct Users;
/// # #[async_trait::async_trait]
/// # impl RecordSource for Users {
/// #     fn name(&self) -> &str { "users" }
/// #     async fn scan(&self, _: &keywheel_core::ScanRequest) -> keywheel_core::Result<Vec<keywheel_core::StoredValue>> { Ok(vec![]) }
/// #     async fn replace(&self, b: &[keywheel_core::Replacement]) -> keywheel_core::Result<Vec<keywheel_core::ReplaceOutcome>> { Ok(vec![]) }
/// #     fn locate(&self, c: &Cursor) -> Option<keywheel_core::ValueLocation> {
/// #         let (col, key) = c.0.split_once(':')?;
/// #         Some(keywheel_core::ValueLocation::new("users", if col == "0" { "email" } else { "token" }, key))
/// #     }
/// # }
/// let plaintext = LegacyFormats::new().accept_plaintext_until(Timestamp::from_millis(1_900_000_000_000));
/// let source = LegacyColumns::new(Arc::new(Users)).column("email", plaintext);
/// assert!(source.legacy_formats(&Cursor("0:42".into())).is_some());
/// assert!(source.legacy_formats(&Cursor("1:42".into())).is_none());
/// ```
#[derive(Clone)]
pub struct LegacyColumns {
    source: Arc<dyn RecordSource>,
    columns: BTreeMap<String, Arc<LegacyFormats>>,
    every: Option<Arc<LegacyFormats>>,
}

impl fmt::Debug for LegacyColumns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyColumns")
            .field("source", &self.source)
            .field("columns", &self.columns)
            .field("every", &self.every)
            .finish()
    }
}

impl LegacyColumns {
    /// `source`, with no legacy format declared yet.
    pub fn new(source: Arc<dyn RecordSource>) -> Self {
        LegacyColumns { source, columns: BTreeMap::new(), every: None }
    }

    /// The values of column `column` (by the name the source's
    /// [`locate`](RecordSource::locate) gives) may be in `formats`. An empty
    /// list declares nothing.
    pub fn column(mut self, column: impl Into<String>, formats: LegacyFormats) -> Self {
        let column = column.into();
        if formats.is_empty() {
            self.columns.remove(&column);
        } else {
            self.columns.insert(column, Arc::new(formats));
        }
        self
    }

    /// Every value of the source may be in `formats` (a source of one
    /// column, or one that cannot locate its values). Columns declared with
    /// [`column`](Self::column) take precedence.
    pub fn every_column(mut self, formats: LegacyFormats) -> Self {
        self.every = (!formats.is_empty()).then(|| Arc::new(formats));
        self
    }

    /// The wrapped source.
    pub fn inner(&self) -> &Arc<dyn RecordSource> {
        &self.source
    }

    /// The columns with declared formats, by name.
    pub fn columns(&self) -> impl Iterator<Item = (&str, &LegacyFormats)> {
        self.columns.iter().map(|(c, f)| (c.as_str(), f.as_ref()))
    }
}

#[async_trait]
impl RecordSource for LegacyColumns {
    fn name(&self) -> &str {
        self.source.name()
    }

    async fn scan(&self, request: &ScanRequest) -> Result<Vec<StoredValue>> {
        self.source.scan(request).await
    }

    async fn replace(&self, batch: &[Replacement]) -> Result<Vec<ReplaceOutcome>> {
        self.source.replace(batch).await
    }

    fn covers(&self, keyring: &KeyringId) -> bool {
        self.source.covers(keyring)
    }

    fn locate(&self, cursor: &Cursor) -> Option<ValueLocation> {
        self.source.locate(cursor)
    }

    fn legacy_formats(&self, cursor: &Cursor) -> Option<Arc<LegacyFormats>> {
        if !self.columns.is_empty()
            && let Some(found) = self.source.locate(cursor).and_then(|at| self.columns.get(&at.column))
        {
            return Some(Arc::clone(found));
        }
        self.every.clone().or_else(|| self.source.legacy_formats(cursor))
    }

    async fn census(&self, keyring: Option<&KeyringId>) -> Result<Census> {
        self.source.census(keyring).await
    }
}

//! Scans: keyset pagination with the rotation target filtered out in SQL, and read-ahead.

use std::sync::{Arc, PoisonError};

use tokio::task::JoinHandle;

use keywheel_core::{Context, Error, Form, KeyringId, Result, ScanRequest, StoredIndex, StoredValue, version_of};

use super::{KeyType, KeyringFrom, Pk, SqlRecordSource, Stored};
use crate::driver::{Driver, Param, Row};

/// What a scan statement filters on (its text and parameters depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ScanShape {
    /// Reads after a key: `Some(true)` after the row's last column (the next
    /// row on), `Some(false)` within a row (that row on).
    after: Option<bool>,
    /// Filters on the tenant column.
    tenant: bool,
    /// Leaves out values on a version.
    skip: bool,
}

/// A scan already running for the request the caller is expected to make next.
pub(super) struct ReadAhead {
    request: ScanRequest,
    task: JoinHandle<Result<Vec<StoredValue>>>,
}

impl<D: Driver> SqlRecordSource<D> {
    /// [`RecordSource::scan`](keywheel_core::RecordSource::scan): the batch read ahead for this request if there is one, then
    /// the next batch read ahead.
    pub(super) async fn scan_with_read_ahead(&self, request: &ScanRequest) -> Result<Vec<StoredValue>> {
        if request.limit == 0 {
            return Err(Error::InvalidArgument("scan limit must be at least 1".into()));
        }
        let prefetched = {
            let mut slot = self.read_ahead.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.take() {
                Some(p) if p.request == *request => Some(p.task),
                Some(p) => {
                    p.task.abort();
                    None
                }
                None => None,
            }
        };
        let values = match prefetched {
            Some(task) => match task.await {
                Ok(result) => result?,
                // The read-ahead task was cancelled or panicked: read again.
                Err(_) => self.scan_now(request).await?,
            },
            None => self.scan_now(request).await?,
        };
        if self.spec.read_ahead
            && let Some(last) = values.last()
        {
            let next = ScanRequest { after: Some(last.cursor.clone()), ..request.clone() };
            let this = self.clone();
            let ahead = next.clone();
            let task = tokio::spawn(async move { this.scan_now(&ahead).await });
            *self.read_ahead.lock().unwrap_or_else(PoisonError::into_inner) = Some(ReadAhead { request: next, task });
        }
        Ok(values)
    }

    async fn scan_now(&self, request: &ScanRequest) -> Result<Vec<StoredValue>> {
        if request.limit == 0 {
            return Err(Error::InvalidArgument("scan limit must be at least 1".into()));
        }
        let Some(tenant) = self.tenant_filter(request.keyring.as_ref()) else {
            return Ok(Vec::new());
        };
        let after = request.after.as_ref().map(|c| self.parse_cursor(c)).transpose()?;
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX - 1).saturating_add(1);
        let skip_bytes: Vec<u8> = request.skip_version.map_or_else(Vec::new, |v| v.get().to_be_bytes().to_vec());
        let skip_prefix: String = request.skip_version.map_or_else(String::new, |v| format!("kw:v{}:", v.get()));
        // Parameters in the order `scan_sql` numbers them.
        let mut params: Vec<Param<'_>> = Vec::new();
        let mut shape = ScanShape { after: None, tenant: false, skip: false };
        if let Some((col, pk)) = &after {
            shape.after = Some(*col + 1 >= self.built.columns.len());
            params.push(match pk {
                Pk::Int(n) => (*n).into(),
                Pk::Text(s) => s.into(),
            });
        }
        if let (Some(t), Some(_)) = (tenant, &self.built.tenant) {
            shape.tenant = true;
            params.push(t.into());
        }
        if let Some(v) = request.skip_version {
            shape.skip = true;
            params.push(i64::from(v.get()).into());
            params.push(Param::Bytea(Some(&skip_bytes)));
            params.push((&skip_prefix).into());
        }
        params.push(limit.into());
        let sql = self.scan_sql(shape);
        let rows = self.query("scan", &sql, &params).await?;
        let mut out = Vec::with_capacity(request.limit);
        for mut row in rows {
            if out.len() == request.limit {
                break;
            }
            self.push_values(&mut row, request, after.as_ref(), &mut out)?;
        }
        Ok(out)
    }

    /// The values of one scanned row, in column order, that come after
    /// `after`, are not NULL and are not on the skipped version (with their
    /// tags, if not on it either); at most up to `request.limit` values in `out`.
    fn push_values(
        &self,
        row: &mut Row,
        request: &ScanRequest,
        after: Option<&(usize, Pk)>,
        out: &mut Vec<StoredValue>,
    ) -> Result<()> {
        let b = &self.built;
        let pk = self.read_pk(row)?;
        let tenant = row.opt_text(1)?.map(str::to_owned);
        // The row's keyring, read from the tenant column when first needed.
        let mut from_tenant: Option<KeyringId> = None;
        let pk_text = pk.as_text();
        for (i, c) in b.columns.iter().enumerate() {
            if let Some((after_col, after_pk)) = after
                && *after_pk == pk
                && i <= *after_col
            {
                continue;
            }
            let Some(value) = row.take_bytes(i + 2)? else { continue };
            let index = match &c.index {
                Some(index) => Some(StoredIndex {
                    spec: Arc::clone(&index.spec),
                    form: index.stored.form,
                    tag: row.take_bytes(index.at)?,
                }),
                None => None,
            };
            // On the skipped version: the value, and its tag if it has an index column.
            let on_skip = |stored: &[u8]| request.skip_version.is_some_and(|skip| version_of(stored) == Ok(skip));
            if on_skip(&value) && index.as_ref().is_none_or(|i| i.tag.as_deref().is_some_and(on_skip)) {
                continue;
            }
            let keyring = match &self.spec.keyring {
                Some(KeyringFrom::Fixed(k)) => k,
                _ => match from_tenant {
                    Some(ref k) => k,
                    None => from_tenant.insert(self.keyring_of(tenant.clone(), &pk)?),
                },
            };
            out.push(StoredValue {
                cursor: Self::cursor(i, &pk_text),
                keyring: keyring.clone(),
                context: Context::field(&self.context_table, &c.context_column, &pk_text),
                value,
                index,
            });
            if out.len() == request.limit {
                break;
            }
        }
        Ok(())
    }

    /// The scan statement of a shape, built once: the key, the tenant, the
    /// value columns, then the index columns. Parameters, in order: the
    /// key after which to read (with `after`), the tenant (with `tenant`), the
    /// skipped version as bigint, as 4 big-endian bytes and as a text prefix
    /// `kw:v{N}:` (with `skip`), the row limit.
    fn scan_sql(&self, shape: ScanShape) -> Arc<str> {
        let mut cache = self.scan_sql.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sql) = cache.get(&shape) {
            return Arc::clone(sql);
        }
        let b = &self.built;
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        let mut conds = Vec::new();
        if let Some(last_column) = shape.after {
            // After the last column of a row, the next row; otherwise the rest of this one.
            let op = if last_column { ">" } else { ">=" };
            conds.push(format!("t.{} {op} ${}{}", b.key, next(), self.key_cast()));
        }
        if let (true, Some(col)) = (shape.tenant, &b.tenant) {
            conds.push(format!("t.{col} = ${}", next()));
        }
        let per_column: Vec<String> = if shape.skip {
            let (n, nb, np) = (next(), next(), next());
            // Whether a non-NULL value (or tag) is not on the skipped version.
            // Cheap tests first: a header that does not name the target version
            // is yielded without the full validity check.
            let not_on = |c: &Stored| {
                let fast = match c.form {
                    Form::Binary => format!(
                        "substring(t.{q} FROM 5 FOR 4) <> ${nb} OR (t.{q} >= '\\x6b773a'::bytea AND t.{q} < '\\x6b773b'::bytea)",
                        q = c.quoted
                    ),
                    Form::Text => format!("NOT starts_with(t.{q}::text, ${np})", q = c.quoted),
                };
                format!("{fast} OR ({ver}) IS DISTINCT FROM ${n}", ver = c.version)
            };
            b.columns
                .iter()
                .map(|c| {
                    // A value on the version is still yielded when its tag is not (or is NULL).
                    let stale_tag = c.index.as_ref().map_or_else(String::new, |i| {
                        format!(" OR t.{q} IS NULL OR {not_on}", q = i.stored.quoted, not_on = not_on(&i.stored))
                    });
                    format!(
                        "(t.{q} IS NOT NULL AND ({not_on}{stale_tag}))",
                        q = c.stored.quoted,
                        not_on = not_on(&c.stored)
                    )
                })
                .collect()
        } else {
            b.columns.iter().map(|c| format!("t.{} IS NOT NULL", c.stored.quoted)).collect()
        };
        conds.push(format!("({})", per_column.join(" OR ")));
        let sql: Arc<str> = format!(
            "SELECT {key_select}, {tenant}, {cols} FROM {table} AS t WHERE {conds} ORDER BY t.{key} LIMIT ${n}",
            key_select = b.key_select,
            tenant = b.tenant.as_ref().map_or_else(|| "NULL::text".to_owned(), |t| format!("t.{t}::text")),
            cols = b.stored().map(|c| format!("t.{}", c.quoted)).collect::<Vec<_>>().join(", "),
            table = b.table,
            conds = conds.join(" AND "),
            key = b.key,
            n = next(),
        )
        .into();
        cache.insert(shape, Arc::clone(&sql));
        sql
    }

    fn key_cast(&self) -> &'static str {
        match self.spec.key_type {
            KeyType::BigInt => "",
            KeyType::Uuid => "::uuid",
            KeyType::Text => "",
        }
    }
}

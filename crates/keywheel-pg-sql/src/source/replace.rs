//! Batched compare-and-set replacement: one `UPDATE … FROM UNNEST(…)` per round.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use keywheel_core::{Error, Form, ReplaceOutcome, Replacement, Result};

use super::{KeyType, Pk, SqlRecordSource};
use crate::driver::{Driver, Param};

/// Begins the transaction of a fast replacement: no JIT, and the rows are
/// found by key through the key's unique index (a nested loop over the
/// batch). On a table of up to a few hundred thousand rows the planner would
/// otherwise hash or merge the whole table (or index) against every batch,
/// five to ten times slower, and more as the table grows between statistics.
const BEGIN_REPLACE: &str =
    "BEGIN; SET LOCAL jit = off; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// Attempts of one replace batch on transient errors.
const REPLACE_ATTEMPTS: u32 = 5;

impl<D: Driver> SqlRecordSource<D> {
    /// [`RecordSource::replace`](keywheel_core::RecordSource::replace): the batch in rounds of at most one value per (row, column).
    pub(super) async fn replace_batch(&self, batch: &[Replacement]) -> Result<Vec<ReplaceOutcome>> {
        let mut outcomes = vec![ReplaceOutcome::Changed; batch.len()];
        let mut rounds: Vec<Round> = Vec::new();
        let ncols = self.built.columns.len();
        for (i, r) in batch.iter().enumerate() {
            let (col, pk) = self.parse_cursor(&r.cursor)?;
            let column = &self.built.columns[col];
            let tag = column.index.as_ref().zip(r.index.as_ref());
            let text = |form: Form, stored: Option<&[u8]>| {
                form == Form::Text && stored.is_some_and(|s| std::str::from_utf8(s).is_err())
            };
            if text(column.stored.form, Some(&r.new)) || tag.is_some_and(|(i, t)| text(i.stored.form, Some(&t.new))) {
                return Err(Error::InvalidArgument(format!(
                    "replacement at {} of {}: the new value or tag is not text, but its column holds the text form",
                    r.cursor, self.name
                )));
            }
            if text(column.stored.form, Some(&r.old)) || tag.is_some_and(|(i, t)| text(i.stored.form, t.old.as_deref()))
            {
                // Cannot be what a text column holds: it changed (or never was).
                continue;
            }
            // The first round that does not have this (row, column) yet.
            let mut n = 0;
            loop {
                if n == rounds.len() {
                    // Usually one round holds the whole batch: room for its rows (in
                    // scan order a row's values come together).
                    let rows = if n == 0 { batch.len().div_ceil(ncols) } else { 0 };
                    rounds.push(Round {
                        keys: Vec::with_capacity(rows),
                        cells: Vec::with_capacity(rows * ncols),
                        slots: None,
                    });
                }
                let round = &mut rounds[n];
                match round.slot_of(&pk) {
                    Some(slot) if round.cells(slot)[col].is_some() => n += 1,
                    Some(slot) => {
                        round.cells_mut(slot, ncols)[col] = Some(i);
                        break;
                    }
                    None => {
                        let slot = round.push(pk, ncols);
                        round.cells_mut(slot, ncols)[col] = Some(i);
                        break;
                    }
                }
            }
        }
        for mut round in rounds {
            // Key order, so concurrent batches lock rows in the same order.
            round.sort(ncols);
            self.replace_round(&round, batch, &mut outcomes).await?;
        }
        Ok(outcomes)
    }

    /// Compare-and-set one round. First the fast statement, in a transaction:
    /// every row whose values all still hold what was read gets all its new
    /// values, and only the number of updated rows comes back. When that is
    /// every row (the usual case) it commits: all values were replaced.
    /// Otherwise some value changed concurrently: it rolls back, and the
    /// careful statement replaces, value by value, whatever still holds what
    /// was read and names the values that did not.
    async fn replace_round(&self, round: &Round, batch: &[Replacement], outcomes: &mut [ReplaceOutcome]) -> Result<()> {
        let b = &self.built;
        let present: Vec<usize> =
            (0..b.columns.len()).filter(|c| round.rows().any(|(_, cells)| cells[*c].is_some())).collect();
        // Whether every row has a value in every present column.
        let full = round.rows().all(|(_, cells)| present.iter().all(|c| cells[*c].is_some()));
        // Arrays, rows in key order (so concurrent batches lock rows in the same order).
        let keys_text: Vec<String>;
        let mut params: Vec<Param<'_>> = vec![match self.spec.key_type {
            KeyType::BigInt => {
                Param::Int8Array(round.keys.iter().map(|pk| if let Pk::Int(n) = pk { *n } else { 0 }).collect())
            }
            KeyType::Uuid | KeyType::Text => {
                keys_text = round.keys.iter().map(Pk::as_text).collect();
                Param::TextArray(keys_text.iter().map(|k| Some(k.as_str())).collect())
            }
        }];
        for array in self.round_arrays(&present) {
            let cells = round.rows().map(|(_, cells)| cells[array.column].and_then(|i| array.part.of(&batch[i])));
            params.push(match array.form {
                Form::Binary => Param::ByteaArray(cells.collect()),
                // Replacements of text columns were checked to be UTF-8 already.
                Form::Text => Param::TextArray(cells.map(|v| v.and_then(|v| std::str::from_utf8(v).ok())).collect()),
            });
        }
        let fast = self.fast_replace_sql(&present, full);
        let rows = u64::try_from(round.len()).unwrap_or(u64::MAX);
        // The driver rolls back when dropped midway (a cancelled rotation), so
        // no connection goes back to the pool inside a transaction.
        let all_replaced = self
            .retrying(|| async {
                self.pool
                    .execute_if(BEGIN_REPLACE, &fast, &params, rows)
                    .await
                    .map_err(|e| self.sql_error("replace batch", e))
            })
            .await?;
        for i in round.cells.iter().flatten() {
            outcomes[*i] = ReplaceOutcome::Replaced;
        }
        if all_replaced {
            return Ok(());
        }
        let careful = self.careful_replace_sql(&present);
        let rows = self.retrying(|| self.query("replace batch", &careful, &params)).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let slots: HashMap<&Pk, usize> = round.keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
        for row in rows {
            let key = row.text(0)?;
            let pk = match self.spec.key_type {
                KeyType::BigInt => match key.parse() {
                    Ok(n) => Pk::Int(n),
                    Err(_) => continue,
                },
                KeyType::Uuid | KeyType::Text => Pk::Text(key.to_owned()),
            };
            let Some(&slot) = slots.get(&pk) else { continue };
            let cells = round.cells(slot);
            for (p, &c) in present.iter().enumerate() {
                let replaced = row.bool(p + 1)?;
                if !replaced && let Some(i) = cells[c] {
                    outcomes[i] = ReplaceOutcome::Changed;
                }
            }
        }
        Ok(())
    }

    /// Repeat `attempt` on transient failures (deadlock, serialization, lost
    /// connection), [`REPLACE_ATTEMPTS`] times at most.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut n = 0;
        loop {
            n += 1;
            match attempt().await {
                Err(e) if e.is_retryable() && n < REPLACE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(5 << n)).await;
                }
                result => return result,
            }
        }
    }

    /// The fast compare-and-set of a round (parameters: keys, then the
    /// [`round_arrays`](Self::round_arrays)): rows whose every value (and tag)
    /// still holds what was read get all their new values (and tags). `full`:
    /// every row has a value in every present column.
    fn fast_replace_sql(&self, present: &[usize], full: bool) -> String {
        let b = &self.built;
        let (unnest, names) = self.round_unnest(present);
        let mut sets = Vec::new();
        let mut conds = vec![format!("t.{} = v.k{}", b.key, b.key_from_text)];
        for &c in present {
            let q = &b.columns[c].stored.quoted;
            let tag = TagSql::of(b, c);
            if full {
                sets.push(format!("{q} = v.n{c}"));
                conds.push(format!("t.{q} = v.o{c}{and_read}", and_read = tag.and_read));
            } else {
                sets.push(format!("{q} = COALESCE(v.n{c}, t.{q})"));
                conds.push(format!("(v.n{c} IS NULL OR (t.{q} = v.o{c}{and_read}))", and_read = tag.and_read));
            }
            sets.extend(tag.set(None));
        }
        format!(
            "UPDATE {table} AS t SET {sets} FROM UNNEST({unnest}) AS v({names}) WHERE {conds}",
            table = b.table,
            sets = sets.join(", "),
            conds = conds.join(" AND "),
        )
    }

    /// The careful compare-and-set of a round (same parameters as the fast
    /// one): each value that still holds what was read (with its tag) gets its
    /// new value (and tag). Only the exceptions come back, one row per key:
    /// rows updated with some value changed concurrently, and rows not updated
    /// at all (every value changed or deleted); the key as text, then per
    /// present column whether its value was replaced.
    fn careful_replace_sql(&self, present: &[usize]) -> String {
        let b = &self.built;
        let (unnest, names) = self.round_unnest(present);
        let mut sets = Vec::new();
        let mut matches = Vec::new();
        let mut returns = Vec::new();
        let mut oks = Vec::new();
        for &c in present {
            let q = &b.columns[c].stored.quoted;
            let tag = TagSql::of(b, c);
            let matched = format!("(v.n{c} IS NOT NULL AND t.{q} = v.o{c}{and_read})", and_read = tag.and_read);
            sets.push(format!("{q} = CASE WHEN {matched} THEN v.n{c} ELSE t.{q} END"));
            sets.extend(tag.set(Some(&matched)));
            matches.push(matched);
            // RETURNING sees the row as written.
            returns.push(format!(
                "(v.n{c} IS NOT NULL AND t.{q} = v.n{c}{and_written}) AS r{c}",
                and_written = tag.and_written
            ));
            oks.push(format!("(v.n{c} IS NULL OR (t.{q} = v.n{c}{and_written}))", and_written = tag.and_written));
        }
        let flags: Vec<String> = present.iter().map(|c| format!("u.r{c}")).collect();
        let falses: Vec<&str> = present.iter().map(|_| "false").collect();
        format!(
            "WITH u AS (UPDATE {table} AS t SET {sets} FROM UNNEST({unnest}) AS v({names}) \
             WHERE t.{key} = v.k{cast} AND ({matches}) RETURNING v.k AS k, {returns}, ({oks}) AS ok) \
             SELECT u.k::text, {flags} FROM u WHERE NOT u.ok \
             UNION ALL SELECT m.k::text, {falses} FROM UNNEST($1::{key_array}) AS m(k) \
             WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.k = m.k)",
            table = b.table,
            sets = sets.join(", "),
            key = b.key,
            cast = b.key_from_text,
            matches = matches.join(" OR "),
            returns = returns.join(", "),
            oks = oks.join(" AND "),
            flags = flags.join(", "),
            falses = falses.join(", "),
            key_array = b.key_array,
        )
    }

    /// The arrays of a round's parameters after the keys, in order: per
    /// present column its old and new values, then for an indexed column its
    /// old and new tags.
    fn round_arrays(&self, present: &[usize]) -> Vec<RoundArray> {
        let b = &self.built;
        let mut arrays = Vec::new();
        for &column in present {
            let c = &b.columns[column];
            for part in [Part::Old, Part::New] {
                arrays.push(RoundArray { column, part, form: c.stored.form });
            }
            if let Some(index) = &c.index {
                for part in [Part::OldTag, Part::NewTag] {
                    arrays.push(RoundArray { column, part, form: index.stored.form });
                }
            }
        }
        arrays
    }

    /// `UNNEST` arguments and column names of a round's parameters.
    fn round_unnest(&self, present: &[usize]) -> (String, String) {
        let mut unnest = vec![format!("$1::{}", self.built.key_array)];
        let mut names = vec!["k".to_owned()];
        for (p, array) in self.round_arrays(present).iter().enumerate() {
            let sql_type = match array.form {
                Form::Binary => "bytea[]",
                Form::Text => "text[]",
            };
            unnest.push(format!("${}::{sql_type}", p + 2));
            names.push(format!("{}{}", array.part.prefix(), array.column));
        }
        (unnest.join(", "), names.join(", "))
    }
}

/// One array parameter of a round: per row, a part of the replacement in `column`.
struct RoundArray {
    column: usize,
    part: Part,
    form: Form,
}

/// What an array of a round holds.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// The value read (`v.o{column}`).
    Old,
    /// The value to write (`v.n{column}`).
    New,
    /// The tag read (`v.to{column}`; NULL: an empty index column, or no tag to write).
    OldTag,
    /// The tag to write (`v.tn{column}`; NULL: the tag is left as it is, unchecked).
    NewTag,
}

impl Part {
    fn prefix(self) -> &'static str {
        match self {
            Part::Old => "o",
            Part::New => "n",
            Part::OldTag => "to",
            Part::NewTag => "tn",
        }
    }

    fn of(self, r: &Replacement) -> Option<&[u8]> {
        match self {
            Part::Old => Some(&r.old),
            Part::New => Some(&r.new),
            Part::OldTag => r.index.as_ref()?.old.as_deref(),
            Part::NewTag => Some(&r.index.as_ref()?.new),
        }
    }
}

/// The SQL of an index column in a round's compare-and-set; empty for a
/// column without one. A replacement without a tag (`v.tn` NULL) neither
/// checks nor writes the tag.
struct TagSql {
    /// ` AND` the stored tag is still the one read.
    and_read: String,
    /// ` AND` the tag is the one to write (in `RETURNING`).
    and_written: String,
    /// The quoted index column and the column index, if any.
    column: Option<(String, usize)>,
}

impl TagSql {
    fn of(b: &super::Built, c: usize) -> Self {
        match &b.columns[c].index {
            None => TagSql { and_read: String::new(), and_written: String::new(), column: None },
            Some(index) => {
                let q = &index.stored.quoted;
                TagSql {
                    and_read: format!(" AND (v.tn{c} IS NULL OR t.{q} IS NOT DISTINCT FROM v.to{c})"),
                    and_written: format!(" AND (v.tn{c} IS NULL OR t.{q} = v.tn{c})"),
                    column: Some((q.clone(), c)),
                }
            }
        }
    }

    /// The `SET` of the tag: where `matched` (an SQL condition) holds, or
    /// unconditionally (the fast statement only updates matching rows).
    fn set(&self, matched: Option<&str>) -> Option<String> {
        let (q, c) = self.column.as_ref()?;
        Some(match matched {
            None => format!("{q} = COALESCE(v.tn{c}, t.{q})"),
            Some(matched) => format!("{q} = CASE WHEN {matched} THEN COALESCE(v.tn{c}, t.{q}) ELSE t.{q} END"),
        })
    }
}

/// One statement's worth of replacements: each (row, column) at most once.
struct Round {
    /// The rows' keys.
    keys: Vec<Pk>,
    /// Per row and column (`keys.len()` × columns), the index of the
    /// replacement in the batch.
    cells: Vec<Option<usize>>,
    /// Key → row, once keys came out of order (in scan order they come
    /// ascending, and no map is needed to find a row).
    slots: Option<HashMap<Pk, usize>>,
}

impl Round {
    fn len(&self) -> usize {
        self.keys.len()
    }

    /// The row of `pk`, if the round has it.
    fn slot_of(&mut self, pk: &Pk) -> Option<usize> {
        let last = self.keys.last()?;
        if last == pk {
            return Some(self.keys.len() - 1);
        }
        if self.slots.is_none() {
            if pk > last {
                // Keys so far ascend: a greater key is not among them.
                return None;
            }
            self.slots = Some(self.keys.iter().enumerate().map(|(i, k)| (k.clone(), i)).collect());
        }
        self.slots.as_ref().and_then(|s| s.get(pk).copied())
    }

    /// Add a row (not yet in the round) without values; returns its slot.
    fn push(&mut self, pk: Pk, ncols: usize) -> usize {
        let slot = self.keys.len();
        if let Some(slots) = &mut self.slots {
            slots.insert(pk.clone(), slot);
        }
        self.keys.push(pk);
        self.cells.resize(self.cells.len() + ncols, None);
        slot
    }

    fn cells(&self, slot: usize) -> &[Option<usize>] {
        let ncols = self.cells.len() / self.keys.len().max(1);
        &self.cells[slot * ncols..(slot + 1) * ncols]
    }

    fn cells_mut(&mut self, slot: usize, ncols: usize) -> &mut [Option<usize>] {
        &mut self.cells[slot * ncols..(slot + 1) * ncols]
    }

    /// Put the rows in key order (forgets the key map).
    fn sort(&mut self, ncols: usize) {
        if self.slots.take().is_none() {
            return; // already ascending
        }
        let mut order: Vec<usize> = (0..self.keys.len()).collect();
        order.sort_by(|a, b| self.keys[*a].cmp(&self.keys[*b]));
        let keys = order.iter().map(|&i| self.keys[i].clone()).collect();
        let cells = order.iter().flat_map(|&i| self.cells[i * ncols..(i + 1) * ncols].iter().copied()).collect();
        self.keys = keys;
        self.cells = cells;
    }

    /// The rows: key and per column the index of the replacement, in order.
    fn rows(&self) -> impl Iterator<Item = (&Pk, &[Option<usize>])> {
        let ncols = self.cells.len() / self.keys.len().max(1);
        self.keys.iter().zip(self.cells.chunks(ncols.max(1)))
    }
}

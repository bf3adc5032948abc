//! [`SqlAuditSink`]: an append-only, keyed hash-chained audit log in Postgres.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use keywheel_core::{
    AUDIT_MAC_LABEL, AuditChain, AuditEntry, AuditEvent, AuditSink, ChainHead, ChainVerifier, ChainViolation,
    ChainViolationKind, Error, IntegrityKey, Result, async_trait,
};

use crate::PgSchema;
use crate::driver::{AUDIT, Driver, invalid, on};

/// An [`AuditSink`] writing to the `audit_log` table of a [`PgSchema`].
///
/// * **Keyed hash chain** with the core [`AuditChain`] rules: each entry holds
///   its sequence number, the previous entry's hash, its own, and a MAC of
///   its hash under the integrity key passed to [`record`](AuditSink::record)
///   (`key_id`, `mac` columns), so rewriting the table needs the master key.
/// * **One total order under concurrent writers**, from any number of
///   connections and processes: the chain head (`audit_head`: next sequence
///   number and last hash) is a single row locked `FOR UPDATE` by each append,
///   and the entry and the new head are written in the same transaction.
/// * **Append-only**: triggers refuse `UPDATE`, `DELETE` and `TRUNCATE` on
///   `audit_log`. The table's owner can disable them, so run the application
///   as a role that does not own the schema: [`migrate_with`](crate::migrate_with)
///   with [`MigrateOptions::app_role`](crate::MigrateOptions::app_role) grants
///   it only `INSERT` and `SELECT` on `audit_log`.
/// * **Never a new chain behind its back**: before each append the sink checks
///   that the last row is the stored head, that neither fell behind the
///   newest head this sink has seen, and (under the same key) that the last
///   row's MAC verifies; otherwise the append fails with [`Error::Audit`].
///   Entries are read back in append order (`pos`), so a moved, edited or
///   deleted entry is pinpointed by [`verify`](Self::verify).
/// * **Fail closed**: a failed append returns an error and the operation it
///   records does not happen.
#[derive(Clone)]
pub struct SqlAuditSink<D> {
    pool: D,
    schema: PgSchema,
    lock_head: String,
    last_row: String,
    insert: String,
    set_head: String,
    select: String,
    /// The newest head this sink has seen (appended or read while appending).
    seen: Arc<Mutex<Option<ChainHead>>>,
}

impl<D> fmt::Debug for SqlAuditSink<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlAuditSink").field("schema", &self.schema.name()).finish_non_exhaustive()
    }
}

/// The chain head as stored: the next sequence number and the last entry's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    /// Sequence number the next entry gets (= number of entries ever appended).
    pub next_seq: u64,
    /// Hash of the last appended entry ([`GENESIS_HASH`](keywheel_core::GENESIS_HASH) when empty).
    pub last_hash: String,
}

impl AuditHead {
    /// The last entry as a [`ChainHead`] (to anchor or expect), `None` when empty.
    pub fn chain_head(&self) -> Option<ChainHead> {
        self.next_seq.checked_sub(1).map(|seq| ChainHead { seq, hash: self.last_hash.clone() })
    }
}

/// One stored row, the event still as text.
struct StoredEntry {
    seq: u64,
    prev_hash: String,
    hash: String,
    key_id: String,
    mac: String,
    event: String,
}

impl StoredEntry {
    /// The entry, or why the stored event is not one keywheel wrote (e.g. an
    /// injected unknown field).
    fn entry(self) -> std::result::Result<AuditEntry, String> {
        let event = serde_json::from_str(&self.event).map_err(|e| e.to_string())?;
        Ok(AuditEntry {
            seq: self.seq,
            prev_hash: self.prev_hash,
            hash: self.hash,
            key_id: self.key_id,
            mac: self.mac,
            event,
        })
    }
}

fn seq_of(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| invalid(AUDIT, "negative audit sequence number"))
}

impl<D: Driver> SqlAuditSink<D> {
    /// A sink in `schema` (run [`migrate`](crate::migrate) once first).
    pub fn new(pool: impl Into<D>, schema: PgSchema) -> Self {
        let (log, head) = (schema.table("audit_log"), schema.table("audit_head"));
        SqlAuditSink {
            lock_head: format!("SELECT next_seq, last_hash FROM {head} FOR UPDATE"),
            last_row: format!("SELECT seq, hash, key_id, mac FROM {log} ORDER BY pos DESC LIMIT 1"),
            insert: format!(
                "INSERT INTO {log} (seq, prev_hash, hash, key_id, mac, event) VALUES ($1, $2, $3, $4, $5, $6::text::json)"
            ),
            set_head: format!("UPDATE {head} SET next_seq = $1, last_hash = $2"),
            select: format!("SELECT seq, prev_hash, hash, key_id, mac, event::text FROM {log} ORDER BY pos"),
            seen: Arc::new(Mutex::new(None)),
            pool: pool.into(),
            schema,
        }
    }

    /// The stored chain head. Keep a copy elsewhere (an external anchor) to
    /// detect a rewrite of the whole table.
    pub async fn head(&self) -> Result<AuditHead> {
        let head = self.schema.table("audit_head");
        let rows = self
            .pool
            .query(&format!("SELECT next_seq, last_hash FROM {head}"), &[])
            .await
            .map_err(on(AUDIT, "read audit head"))?;
        let row = rows.first().ok_or_else(|| invalid(AUDIT, "the audit head row is missing"))?;
        Ok(AuditHead { next_seq: seq_of(row.int(0)?)?, last_hash: row.text(1)?.to_owned() })
    }

    /// The newest head this sink has appended or seen while appending.
    pub fn seen_head(&self) -> Option<ChainHead> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Verify the whole log with `verifier` (structure; MACs when it has keys;
    /// its expected heads), in append order, also expecting the stored head
    /// row and the newest head this sink has seen — which catches entries
    /// deleted from the end ([`ChainViolationKind::Truncated`] at the index
    /// after the last entry). A stored event that does not decode as an
    /// [`AuditEvent`] (an injected unknown field) is reported as
    /// [`ChainViolationKind::Altered`] at its index. `Ok(Ok(n))`: `n` intact
    /// entries; `Ok(Err(v))`: the first violation.
    pub async fn verify(&self, verifier: &ChainVerifier<'_>) -> Result<std::result::Result<u64, ChainViolation>> {
        let rows = self.read_rows().await?;
        let head = self.head().await?;
        let mut entries = Vec::with_capacity(rows.len());
        for (index, row) in rows.into_iter().enumerate() {
            let seq = row.seq;
            match row.entry() {
                Ok(e) => entries.push(e),
                Err(_) => return Ok(Err(ChainViolation { index, seq, kind: ChainViolationKind::Altered })),
            }
        }
        let mut verifier = verifier.clone();
        for expected in [head.chain_head(), self.seen_head()].into_iter().flatten() {
            verifier = verifier.expect_head(expected);
        }
        // The head row may also have been set back (the application role can
        // update it): a last entry past the head row means that.
        if let Some(last) = entries.last()
            && last.seq + 1 > head.next_seq
        {
            return Ok(Err(ChainViolation {
                index: entries.len() - 1,
                seq: last.seq,
                kind: ChainViolationKind::HeadMismatch { expected_hash: head.last_hash },
            }));
        }
        Ok(verifier.verify(&entries))
    }

    async fn read_rows(&self) -> Result<Vec<StoredEntry>> {
        let rows = self.pool.query(&self.select, &[]).await.map_err(on(AUDIT, "read audit log"))?;
        rows.iter()
            .map(|r| {
                Ok(StoredEntry {
                    seq: seq_of(r.int(0)?)?,
                    prev_hash: r.text(1)?.to_owned(),
                    hash: r.text(2)?.to_owned(),
                    key_id: r.text(3)?.to_owned(),
                    mac: r.text(4)?.to_owned(),
                    event: r.text(5)?.to_owned(),
                })
            })
            .collect()
    }

    fn refuse(&self, problem: String) -> Error {
        Error::Audit(format!(
            "audit log in schema {}: {problem}; refusing to append (the log was truncated or rewritten). Locate \
             the damage with `keywheel audit verify`",
            self.schema.name()
        ))
    }
}

#[async_trait]
impl<D: Driver> AuditSink for SqlAuditSink<D> {
    async fn record(&self, event: &AuditEvent, key: &IntegrityKey) -> Result<()> {
        let json = serde_json::to_string(event).map_err(|e| Error::Audit(format!("cannot encode audit event: {e}")))?;
        let mut tx = self.pool.begin().await.map_err(on(AUDIT, "begin"))?;
        let head = tx.query(&self.lock_head, &[]).await.map_err(on(AUDIT, "lock audit head"))?;
        let head = head.first().ok_or_else(|| invalid(AUDIT, "the audit head row is missing"))?;
        let stored = AuditHead { next_seq: seq_of(head.int(0)?)?, last_hash: head.text(1)?.to_owned() };
        // The last row must be the head row's entry: catches rows deleted
        // (owner rights) and a head row set back or forward.
        let last = tx.query(&self.last_row, &[]).await.map_err(on(AUDIT, "read last audit entry"))?;
        let last_row = match last.first() {
            Some(r) => {
                let seq = seq_of(r.int(0)?)?;
                let (hash, key_id, mac) = (r.text(1)?.to_owned(), r.text(2)?.to_owned(), r.text(3)?.to_owned());
                Some((ChainHead { seq, hash }, key_id, mac))
            }
            None => None,
        };
        match (&last_row, stored.chain_head()) {
            (None, None) => {}
            (Some((row, _, _)), Some(h)) if *row == h => {}
            (row, h) => {
                let describe = |h: Option<&ChainHead>| h.map_or_else(|| "none".to_owned(), ToString::to_string);
                return Err(self.refuse(format!(
                    "the last entry ({}) is not the stored head ({})",
                    describe(row.as_ref().map(|r| &r.0)),
                    describe(h.as_ref())
                )));
            }
        }
        if let Some(seen) = self.seen_head() {
            match stored.chain_head() {
                Some(h) if h.seq > seen.seq || h == seen => {}
                Some(h) if h.seq == seen.seq => {
                    return Err(self.refuse(format!("entry seq {} has another hash than this process saw", h.seq)));
                }
                h => {
                    return Err(self.refuse(format!(
                        "it ends at {}, but this process has seen entry seq {} (hash {})",
                        h.map_or_else(|| "no entry".to_owned(), |h| format!("entry seq {}", h.seq)),
                        seen.seq,
                        seen.hash
                    )));
                }
            }
        }
        if let Some((row, key_id, mac)) = &last_row
            && key_id == key.id()
            && !key.verify_hex(AUDIT_MAC_LABEL, row.hash.as_bytes(), mac)
        {
            return Err(self.refuse(format!("the last entry (seq {}) does not carry a valid MAC", row.seq)));
        }
        let chain = stored.chain_head().map_or_else(AuditChain::new, |h| AuditChain::after_head(&h));
        let entry = chain.entry(event.clone(), key)?;
        let seq = i64::try_from(entry.seq).map_err(|_| invalid(AUDIT, "audit sequence number overflow"))?;
        tx.execute(
            &self.insert,
            &[
                seq.into(),
                (&entry.prev_hash).into(),
                (&entry.hash).into(),
                (&entry.key_id).into(),
                (&entry.mac).into(),
                (&json).into(),
            ],
        )
        .await
        .map_err(on(AUDIT, "append audit entry"))?;
        tx.execute(&self.set_head, &[(seq + 1).into(), (&entry.hash).into()])
            .await
            .map_err(on(AUDIT, "advance audit head"))?;
        tx.commit().await.map_err(on(AUDIT, "commit audit entry"))?;
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.as_ref().is_none_or(|s| s.seq < entry.seq) {
            *seen = Some(entry.head());
        }
        Ok(())
    }

    async fn entries(&self) -> Result<Option<Vec<AuditEntry>>> {
        let rows = self.read_rows().await?;
        rows.into_iter()
            .map(|r| {
                let seq = r.seq;
                r.entry().map_err(|e| invalid(AUDIT, format!("audit entry {seq} does not decode: {e}")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

//! [`PgAuditSink`]: an append-only, keyed hash-chained audit log in Postgres.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use keywheel_core::{
    AUDIT_MAC_LABEL, AuditChain, AuditEntry, AuditEvent, AuditSink, ChainHead, ChainVerifier, ChainViolation,
    ChainViolationKind, Error, IntegrityKey, Result, async_trait,
};

use crate::error::{AUDIT, invalid, on};
use crate::{PgPool, PgSchema};

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
pub struct PgAuditSink {
    pool: PgPool,
    schema: PgSchema,
    lock_head: String,
    last_row: String,
    insert: String,
    set_head: String,
    select: String,
    /// The newest head this sink has seen (appended or read while appending).
    seen: Arc<Mutex<Option<ChainHead>>>,
}

impl fmt::Debug for PgAuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgAuditSink").field("schema", &self.schema.name()).finish_non_exhaustive()
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
struct Row {
    seq: u64,
    prev_hash: String,
    hash: String,
    key_id: String,
    mac: String,
    event: String,
}

impl Row {
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

impl PgAuditSink {
    /// A sink in `schema` (run [`migrate`](crate::migrate) once first).
    pub fn new(pool: PgPool, schema: PgSchema) -> Self {
        let (log, head) = (schema.table("audit_log"), schema.table("audit_head"));
        PgAuditSink {
            lock_head: format!("SELECT next_seq, last_hash FROM {head} FOR UPDATE"),
            last_row: format!("SELECT seq, hash, key_id, mac FROM {log} ORDER BY pos DESC LIMIT 1"),
            insert: format!(
                "INSERT INTO {log} (seq, prev_hash, hash, key_id, mac, event) VALUES ($1, $2, $3, $4, $5, $6::text::json)"
            ),
            set_head: format!("UPDATE {head} SET next_seq = $1, last_hash = $2"),
            select: format!("SELECT seq, prev_hash, hash, key_id, mac, event::text FROM {log} ORDER BY pos"),
            seen: Arc::new(Mutex::new(None)),
            pool,
            schema,
        }
    }

    /// The stored chain head. Keep a copy elsewhere (an external anchor) to
    /// detect a rewrite of the whole table.
    pub async fn head(&self) -> Result<AuditHead> {
        let client = self.pool.get().await?;
        let head = self.schema.table("audit_head");
        let row = client
            .query_one(&format!("SELECT next_seq, last_hash FROM {head}"), &[])
            .await
            .map_err(on(AUDIT, "read audit head"))?;
        Ok(AuditHead {
            next_seq: seq_of(row.try_get(0).map_err(on(AUDIT, "read audit head"))?)?,
            last_hash: row.try_get(1).map_err(on(AUDIT, "read audit head"))?,
        })
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

    async fn read_rows(&self) -> Result<Vec<Row>> {
        let client = self.pool.get().await?;
        let rows = client.query(&self.select, &[]).await.map_err(on(AUDIT, "read audit log"))?;
        rows.iter()
            .map(|r| {
                let get = |e| on(AUDIT, "read audit entry")(e);
                Ok(Row {
                    seq: seq_of(r.try_get(0).map_err(get)?)?,
                    prev_hash: r.try_get(1).map_err(get)?,
                    hash: r.try_get(2).map_err(get)?,
                    key_id: r.try_get(3).map_err(get)?,
                    mac: r.try_get(4).map_err(get)?,
                    event: r.try_get(5).map_err(get)?,
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
impl AuditSink for PgAuditSink {
    async fn record(&self, event: &AuditEvent, key: &IntegrityKey) -> Result<()> {
        let json = serde_json::to_string(event).map_err(|e| Error::Audit(format!("cannot encode audit event: {e}")))?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.map_err(on(AUDIT, "begin"))?;
        let head = tx.query_one(&self.lock_head, &[]).await.map_err(on(AUDIT, "lock audit head"))?;
        let stored = AuditHead {
            next_seq: seq_of(head.try_get(0).map_err(on(AUDIT, "read audit head"))?)?,
            last_hash: head.try_get(1).map_err(on(AUDIT, "read audit head"))?,
        };
        // The last row must be the head row's entry: catches rows deleted
        // (owner rights) and a head row set back or forward.
        let last = tx.query_opt(&self.last_row, &[]).await.map_err(on(AUDIT, "read last audit entry"))?;
        let last_row = match &last {
            Some(r) => {
                let get = |e| on(AUDIT, "read last audit entry")(e);
                let seq = seq_of(r.try_get(0).map_err(get)?)?;
                let (hash, key_id, mac): (String, String, String) =
                    (r.try_get(1).map_err(get)?, r.try_get(2).map_err(get)?, r.try_get(3).map_err(get)?);
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
        tx.execute(&self.insert, &[&seq, &entry.prev_hash, &entry.hash, &entry.key_id, &entry.mac, &json])
            .await
            .map_err(on(AUDIT, "append audit entry"))?;
        tx.execute(&self.set_head, &[&(seq + 1), &entry.hash]).await.map_err(on(AUDIT, "advance audit head"))?;
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

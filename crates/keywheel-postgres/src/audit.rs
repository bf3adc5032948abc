//! [`PgAuditSink`]: an append-only, hash-chained audit log in Postgres.

use std::fmt;

use keywheel_core::{
    AuditChain, AuditEntry, AuditEvent, AuditSink, ChainViolation, ChainViolationKind, Error, Result, async_trait,
    verify_chain,
};

use crate::error::{AUDIT, invalid, on};
use crate::{PgPool, PgSchema};

/// An [`AuditSink`] writing to the `audit_log` table of a [`PgSchema`].
///
/// * **Hash-chained** with the core [`AuditChain`] rules: each entry holds its
///   sequence number, the previous entry's hash and its own.
/// * **One total order under concurrent writers**, from any number of
///   connections and processes: the chain head (`audit_head`: next sequence
///   number and last hash) is a single row locked `FOR UPDATE` by each append,
///   and the entry and the new head are written in the same transaction.
/// * **Append-only**: triggers refuse `UPDATE`, `DELETE` and `TRUNCATE` on
///   `audit_log` (revoke the owner's rights from the application role too for
///   real protection); entries are read back in append order (`pos`), so a
///   moved, edited or deleted entry is pinpointed by [`verify`](Self::verify).
/// * **Fail closed**: a failed append returns an error and the operation it
///   records does not happen.
#[derive(Clone)]
pub struct PgAuditSink {
    pool: PgPool,
    schema: PgSchema,
    lock_head: String,
    insert: String,
    set_head: String,
    select: String,
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

impl PgAuditSink {
    /// A sink in `schema` (run [`migrate`](crate::migrate) once first).
    pub fn new(pool: PgPool, schema: PgSchema) -> Self {
        let (log, head) = (schema.table("audit_log"), schema.table("audit_head"));
        PgAuditSink {
            lock_head: format!("SELECT next_seq, last_hash FROM {head} FOR UPDATE"),
            insert: format!("INSERT INTO {log} (seq, prev_hash, hash, event) VALUES ($1, $2, $3, $4::text::json)"),
            set_head: format!("UPDATE {head} SET next_seq = $1, last_hash = $2"),
            select: format!("SELECT seq, prev_hash, hash, event::text FROM {log} ORDER BY pos"),
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
        let next_seq: i64 = row.try_get(0).map_err(on(AUDIT, "read audit head"))?;
        Ok(AuditHead {
            next_seq: u64::try_from(next_seq).map_err(|_| invalid(AUDIT, "negative audit sequence number"))?,
            last_hash: row.try_get(1).map_err(on(AUDIT, "read audit head"))?,
        })
    }

    /// Verify the whole log: [`verify_chain`] over the entries in append order,
    /// then the last entry against the stored head, which also catches entries
    /// deleted from the end. `Ok(Ok(n))`: `n` intact entries; `Ok(Err(v))`: the
    /// first violation (a deleted tail is reported as
    /// [`ChainViolationKind::Missing`] at the index after the last entry).
    pub async fn verify(&self) -> Result<std::result::Result<u64, ChainViolation>> {
        let entries = self.read_entries().await?;
        let head = self.head().await?;
        if let Err(v) = verify_chain(&entries) {
            return Ok(Err(v));
        }
        let n = entries.len() as u64;
        let last_hash = entries.last().map_or(keywheel_core::GENESIS_HASH, |e| e.hash.as_str());
        if head.next_seq != n || head.last_hash != last_hash {
            return Ok(Err(ChainViolation {
                index: entries.len(),
                seq: head.next_seq.saturating_sub(1),
                kind: ChainViolationKind::Missing { expected_seq: n },
            }));
        }
        Ok(Ok(n))
    }

    async fn read_entries(&self) -> Result<Vec<AuditEntry>> {
        let client = self.pool.get().await?;
        let rows = client.query(&self.select, &[]).await.map_err(on(AUDIT, "read audit log"))?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get(0).map_err(on(AUDIT, "read audit entry"))?;
                let event: &str = r.try_get(3).map_err(on(AUDIT, "read audit entry"))?;
                Ok(AuditEntry {
                    seq: u64::try_from(seq).map_err(|_| invalid(AUDIT, "negative audit sequence number"))?,
                    prev_hash: r.try_get(1).map_err(on(AUDIT, "read audit entry"))?,
                    hash: r.try_get(2).map_err(on(AUDIT, "read audit entry"))?,
                    event: serde_json::from_str(event)
                        .map_err(|e| invalid(AUDIT, format!("audit entry {seq} does not decode: {e}")))?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl AuditSink for PgAuditSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        let json = serde_json::to_string(event).map_err(|e| Error::Audit(format!("cannot encode audit event: {e}")))?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.map_err(on(AUDIT, "begin"))?;
        let head = tx.query_one(&self.lock_head, &[]).await.map_err(on(AUDIT, "lock audit head"))?;
        let next_seq: i64 = head.try_get(0).map_err(on(AUDIT, "read audit head"))?;
        let last_hash: String = head.try_get(1).map_err(on(AUDIT, "read audit head"))?;
        let last = AuditEntry {
            seq: u64::try_from(next_seq - 1).unwrap_or(0),
            prev_hash: String::new(),
            hash: last_hash,
            event: event.clone(),
        };
        let chain = if next_seq == 0 { AuditChain::new() } else { AuditChain::after(&last) };
        let entry = chain.entry(event.clone())?;
        let seq = i64::try_from(entry.seq).map_err(|_| invalid(AUDIT, "audit sequence number overflow"))?;
        tx.execute(&self.insert, &[&seq, &entry.prev_hash, &entry.hash, &json])
            .await
            .map_err(on(AUDIT, "append audit entry"))?;
        tx.execute(&self.set_head, &[&(seq + 1), &entry.hash]).await.map_err(on(AUDIT, "advance audit head"))?;
        tx.commit().await.map_err(on(AUDIT, "commit audit entry"))
    }

    async fn entries(&self) -> Result<Option<Vec<AuditEntry>>> {
        self.read_entries().await.map(Some)
    }
}

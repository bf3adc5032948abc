//! The tokio-postgres [`Driver`]: how the shared statements of
//! keywheel-pg-sql run over a [`PgPool`].

use futures::future::FutureExt;
use futures::stream::{BoxStream, StreamExt};
use keywheel_core::async_trait;
use keywheel_pg_sql::{DbError, Driver, Param, Row, Transaction, Value, quote_ident};
use tokio_postgres::types::{ToSql, Type};

use crate::{PgClient, PgPool};

/// A tokio-postgres error as the shared code sees it: SQLSTATE and the
/// server's primary message (never DETAIL, which may echo row values).
pub(crate) fn db_error(e: &tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        Some(db) => DbError::sql(Some(db.code().code()), db.message()),
        None => DbError::sql(e.code().map(|c| c.code()), e.to_string()),
    }
}

/// The parameters with their types, for the `*_typed` calls: one round trip,
/// no separate prepare.
fn typed<'p>(params: &'p [Param<'_>]) -> Vec<(&'p (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|p| -> (&'p (dyn ToSql + Sync), Type) {
            match p {
                Param::Bool(v) => (v, Type::BOOL),
                Param::Int4(v) => (v, Type::INT4),
                Param::Int8(v) => (v, Type::INT8),
                Param::Text(v) => (v, Type::TEXT),
                Param::Bytea(v) => (v, Type::BYTEA),
                Param::Int8Array(v) => (v, Type::INT8_ARRAY),
                Param::TextArray(v) => (v, Type::TEXT_ARRAY),
                Param::ByteaArray(v) => (v, Type::BYTEA_ARRAY),
            }
        })
        .collect()
}

/// A result row as plain values.
fn row(r: &tokio_postgres::Row) -> Result<Row, DbError> {
    let mut values = Vec::with_capacity(r.len());
    for (i, column) in r.columns().iter().enumerate() {
        let t = column.type_();
        let value = if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i).map(|v| v.map(Value::Bool))
        } else if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int))
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i).map(|v| v.map(|n| Value::Int(n.into())))
        } else if *t == Type::INT2 {
            r.try_get::<_, Option<i16>>(i).map(|v| v.map(|n| Value::Int(n.into())))
        } else if *t == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i).map(|v| v.map(Value::Bytes))
        } else if <String as tokio_postgres::types::FromSql>::accepts(t) {
            r.try_get::<_, Option<String>>(i).map(|v| v.map(Value::Text))
        } else {
            return Err(DbError::sql(None, format!("result column {i} has unsupported type {t}")));
        };
        values.push(value.map_err(|e| db_error(&e))?.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

fn rows(rs: &[tokio_postgres::Row]) -> Result<Vec<Row>, DbError> {
    rs.iter().map(row).collect()
}

/// A transaction on a pooled connection; dropped before commit, it sends
/// `ROLLBACK` (without awaiting the answer: the connection discards it, and
/// statements sent after it on the same connection run after it), so the
/// connection never goes back to the pool inside a transaction.
struct PgTransaction {
    client: PgClient,
    open: bool,
}

impl Drop for PgTransaction {
    fn drop(&mut self) {
        if self.open {
            // A simple query is sent when its future is first polled.
            let _ = self.client.batch_execute("ROLLBACK").now_or_never();
        }
    }
}

#[async_trait]
impl Transaction for PgTransaction {
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        self.client.execute_typed(sql, &typed(params)).await.map_err(|e| db_error(&e))
    }

    async fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        rows(&self.client.query_typed(sql, &typed(params)).await.map_err(|e| db_error(&e))?)
    }

    async fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.client.batch_execute(sql).await.map_err(|e| db_error(&e))
    }

    async fn commit(mut self: Box<Self>) -> Result<(), DbError> {
        let result = self.client.batch_execute("COMMIT").await.map_err(|e| db_error(&e));
        // Committed, or failed (then the server ended the transaction, or the
        // connection is gone): nothing to roll back.
        self.open = false;
        result
    }
}

#[async_trait]
impl Driver for PgPool {
    async fn begin(&self) -> Result<Box<dyn Transaction>, DbError> {
        let client = self.get().await?;
        client.batch_execute("BEGIN").await.map_err(|e| db_error(&e))?;
        Ok(Box::new(PgTransaction { client, open: true }))
    }

    async fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        let client = self.get().await?;
        client.execute_typed(sql, &typed(params)).await.map_err(|e| db_error(&e))
    }

    async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        let client = self.get().await?;
        rows(&client.query_typed(sql, &typed(params)).await.map_err(|e| db_error(&e))?)
    }

    /// `BEGIN` with the settings, the statement and `COMMIT` are sent at once
    /// (pipelined, one round trip) and run in that order; if the statement
    /// fails, the `COMMIT` ends the aborted transaction (as a rollback). Since
    /// every message is sent before the first answer is awaited, a caller
    /// dropped midway still leaves the connection outside any transaction.
    async fn query_in(&self, begin: &str, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        let client = self.get().await?;
        let params = typed(params);
        // tokio-postgres sends a request when its future is first polled, and
        // `join!` polls in argument order: the requests go out in this order.
        let (begun, result, committed) = futures::join!(
            client.batch_execute(begin),
            client.query_typed(sql, &params),
            client.batch_execute("COMMIT")
        );
        begun.map_err(|e| db_error(&e))?;
        let result = rows(&result.map_err(|e| db_error(&e))?)?;
        committed.map_err(|e| db_error(&e))?;
        Ok(result)
    }

    /// One round trip for `BEGIN` and the statement, one for `COMMIT` (or
    /// `ROLLBACK`); dropped in between, the transaction rolls back.
    async fn execute_if(&self, begin: &str, sql: &str, params: &[Param<'_>], rows: u64) -> Result<bool, DbError> {
        let mut tx = PgTransaction { client: self.get().await?, open: true };
        let params = typed(params);
        let (begun, updated) = futures::join!(tx.client.batch_execute(begin), tx.client.execute_typed(sql, &params));
        // Without BEGIN the statement ran on its own: its outcome is unknown.
        begun.map_err(|e| db_error(&e))?;
        let all = updated.map_err(|e| db_error(&e))? == rows;
        let end = tx.client.batch_execute(if all { "COMMIT" } else { "ROLLBACK" }).await;
        tx.open = false;
        end.map_err(|e| db_error(&e))?;
        Ok(all)
    }

    async fn listen(&self, channel: &str) -> Result<BoxStream<'static, String>, DbError> {
        let (client, rx) = self.listen_connection().await?;
        let sql = format!("LISTEN {}", quote_ident(channel)?);
        client.batch_execute(&sql).await.map_err(|e| db_error(&e))?;
        // The client lives as long as the stream: the stream ends when the
        // connection does (its sender is dropped).
        Ok(futures::stream::unfold((client, rx), |(client, mut rx)| async move {
            let n = rx.recv().await?;
            Some((n.payload().to_owned(), (client, rx)))
        })
        .boxed())
    }
}

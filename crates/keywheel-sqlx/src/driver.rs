//! The sqlx [`Driver`]: how the shared statements of keywheel-pg-sql run over
//! an application's [`sqlx::PgPool`].

use futures::stream::{BoxStream, StreamExt};
use keywheel_core::{Error, async_trait};
use keywheel_pg_sql::{DbError, Driver, POOL, Param, Row, Transaction, Value};
use sqlx::postgres::{PgArguments, PgListener, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row as _, TypeInfo as _, ValueRef as _};

/// An application's [`sqlx::PgPool`] as keywheel's backends use it: the
/// pool type of [`SqlxKeyStore`](crate::SqlxKeyStore),
/// [`SqlxAuditSink`](crate::SqlxAuditSink) and
/// [`SqlxRecordSource`](crate::SqlxRecordSource), made from a `PgPool` with
/// `From` (their constructors take the `PgPool` itself). Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqlxPool(sqlx::PgPool);

impl SqlxPool {
    /// The application's pool.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.0
    }
}

impl From<sqlx::PgPool> for SqlxPool {
    fn from(pool: sqlx::PgPool) -> Self {
        SqlxPool(pool)
    }
}

impl From<&sqlx::PgPool> for SqlxPool {
    fn from(pool: &sqlx::PgPool) -> Self {
        SqlxPool(pool.clone())
    }
}

/// An sqlx error as the shared code sees it: SQLSTATE and the server's
/// primary message (never DETAIL, which may echo row values).
fn db_error(e: sqlx::Error) -> DbError {
    match &e {
        sqlx::Error::Database(db) => DbError::sql(db.code().as_deref(), db.message()),
        sqlx::Error::PoolClosed => DbError::Connect(Error::backend(POOL, "the connection pool is closed", false)),
        sqlx::Error::PoolTimedOut => {
            DbError::Connect(Error::backend(POOL, "timed out waiting for a pooled connection", true))
        }
        _ => DbError::sql(None, e.to_string()),
    }
}

/// `sql` with `params` bound, typed as they say (sqlx sends the types).
fn bind<'q>(sql: &'q str, params: &'q [Param<'_>]) -> Query<'q, Postgres, PgArguments> {
    params.iter().fold(sqlx::query(sql), |q, p| match p {
        Param::Bool(v) => q.bind(*v),
        Param::Int4(v) => q.bind(*v),
        Param::Int8(v) => q.bind(*v),
        Param::Text(v) => q.bind(*v),
        Param::Bytea(v) => q.bind(*v),
        Param::Int8Array(v) => q.bind(v.as_slice()),
        Param::TextArray(v) => q.bind(v.as_slice()),
        Param::ByteaArray(v) => q.bind(v.as_slice()),
    })
}

/// A result row as plain values.
fn row(r: &PgRow) -> Result<Row, DbError> {
    let mut values = Vec::with_capacity(r.len());
    for i in 0..r.len() {
        let type_name = {
            let raw = r.try_get_raw(i).map_err(db_error)?;
            if raw.is_null() {
                values.push(Value::Null);
                continue;
            }
            raw.type_info().name().to_owned()
        };
        let value = match type_name.as_str() {
            "BOOL" => r.try_get::<bool, _>(i).map(Value::Bool),
            "INT8" => r.try_get::<i64, _>(i).map(Value::Int),
            "INT4" => r.try_get::<i32, _>(i).map(|n| Value::Int(n.into())),
            "INT2" => r.try_get::<i16, _>(i).map(|n| Value::Int(n.into())),
            "BYTEA" => r.try_get::<Vec<u8>, _>(i).map(Value::Bytes),
            "TEXT" | "VARCHAR" | "NAME" | "BPCHAR" | "UNKNOWN" => r.try_get::<String, _>(i).map(Value::Text),
            other => return Err(DbError::sql(None, format!("result column {i} has unsupported type {other}"))),
        };
        values.push(value.map_err(db_error)?);
    }
    Ok(Row(values))
}

fn rows(rs: &[PgRow]) -> Result<Vec<Row>, DbError> {
    rs.iter().map(row).collect()
}

/// An sqlx transaction: dropped before commit, sqlx rolls it back before the
/// connection is used again.
struct SqlxTransaction(sqlx::Transaction<'static, Postgres>);

#[async_trait]
impl Transaction for SqlxTransaction {
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        Ok(bind(sql, params).execute(&mut *self.0).await.map_err(db_error)?.rows_affected())
    }

    async fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        rows(&bind(sql, params).fetch_all(&mut *self.0).await.map_err(db_error)?)
    }

    async fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        // A query without arguments goes out as a simple query: several
        // statements separated by `;` are allowed.
        let conn: &mut sqlx::PgConnection = &mut self.0;
        sqlx::Executor::execute(conn, sql).await.map_err(db_error)?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), DbError> {
        self.0.commit().await.map_err(db_error)
    }
}

#[async_trait]
impl Driver for SqlxPool {
    async fn begin(&self) -> Result<Box<dyn Transaction>, DbError> {
        Ok(Box::new(SqlxTransaction(self.0.begin().await.map_err(db_error)?)))
    }

    async fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        Ok(bind(sql, params).execute(&self.0).await.map_err(db_error)?.rows_affected())
    }

    async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        rows(&bind(sql, params).fetch_all(&self.0).await.map_err(db_error)?)
    }

    /// `begin` (`BEGIN` and its settings) is one simple query, the statement
    /// one more round trip, `COMMIT` a third.
    async fn query_in(&self, begin: &str, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        let mut tx = self.0.begin_with(begin.to_owned()).await.map_err(db_error)?;
        let result = rows(&bind(sql, params).fetch_all(&mut *tx).await.map_err(db_error)?)?;
        tx.commit().await.map_err(db_error)?;
        Ok(result)
    }

    async fn execute_if(&self, begin: &str, sql: &str, params: &[Param<'_>], rows: u64) -> Result<bool, DbError> {
        let mut tx = self.0.begin_with(begin.to_owned()).await.map_err(db_error)?;
        let all = bind(sql, params).execute(&mut *tx).await.map_err(db_error)?.rows_affected() == rows;
        if all {
            tx.commit().await.map_err(db_error)?;
        } else {
            tx.rollback().await.map_err(db_error)?;
        }
        Ok(all)
    }

    /// A [`PgListener`] on a connection taken from the pool (and kept by it).
    /// The stream ends when the connection is lost ([`PgListener::try_recv`]),
    /// so that the listener task marks every keyring stale after reconnecting.
    async fn listen(&self, channel: &str) -> Result<BoxStream<'static, String>, DbError> {
        let mut listener = PgListener::connect_with(&self.0).await.map_err(db_error)?;
        listener.listen(channel).await.map_err(db_error)?;
        Ok(futures::stream::unfold(listener, |mut listener| async move {
            match listener.try_recv().await {
                Ok(Some(n)) => Some((n.payload().to_owned(), listener)),
                Ok(None) | Err(_) => None,
            }
        })
        .boxed())
    }
}

//! [`PgPool`]: where the backends get their connections.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use futures::stream::StreamExt;
use keywheel_core::{Error, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification, Socket};

use crate::error::POOL;
use crate::tls::{ConnectError, SslMode, TlsSettings};

type ConnectFn = dyn Fn() -> BoxFuture<'static, std::result::Result<Client, ConnectError>> + Send + Sync;
type ListenFn = dyn Fn() -> BoxFuture<'static, Result<(Client, mpsc::UnboundedReceiver<Notification>)>> + Send + Sync;

/// The default number of connections of a pool made by [`PgPool::new`].
pub const DEFAULT_POOL_SIZE: usize = 8;

struct SimplePool {
    connect: Box<ConnectFn>,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
    max_size: usize,
}

enum Kind {
    Simple(Arc<SimplePool>),
    #[cfg(feature = "deadpool")]
    Deadpool(deadpool_postgres::Pool),
}

struct Inner {
    kind: Kind,
    /// Opens a dedicated connection whose notifications are forwarded (for LISTEN).
    listen: Option<Box<ListenFn>>,
}

/// A pool of Postgres connections shared by [`PgKeyStore`](crate::PgKeyStore),
/// [`PgAuditSink`](crate::PgAuditSink) and [`PgRecordSource`](crate::PgRecordSource).
/// Cheap to clone (an `Arc`).
///
/// * [`PgPool::connect`] and [`PgPool::from_url`] take a connection string
///   with libpq's `sslmode` and `sslrootcert` and connect over rustls.
/// * [`PgPool::without_tls`] takes a connection string and never encrypts.
/// * [`PgPool::new`] keeps up to `max_size` tokio-postgres connections, opened
///   on demand with your `tokio_postgres::Config` and TLS connector (any
///   [`MakeTlsConnect`], e.g. `postgres-native-tls` or `tokio-postgres-rustls`;
///   [`NoTls`] for local servers). Connections that broke are replaced.
/// * [`PgPool::from_deadpool`] (feature `deadpool`) uses an existing
///   deadpool-postgres pool.
///
/// The rotation engine re-encrypts several batches at once
/// ([`RotateOptions::parallel_batches`](keywheel_core::RotateOptions)); give the
/// pool at least that many connections plus three (the scan, the source's
/// read-ahead, the key store's checkpoints) so that every in-flight batch
/// writes over its own connection.
///
/// Must be used inside a tokio runtime (connection tasks are spawned on it).
#[derive(Clone)]
pub struct PgPool {
    inner: Arc<Inner>,
}

impl fmt::Debug for PgPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.kind {
            Kind::Simple(p) => f
                .debug_struct("PgPool")
                .field("max_size", &p.max_size)
                .field("idle", &p.idle.lock().map_or(0, |i| i.len()))
                .finish_non_exhaustive(),
            #[cfg(feature = "deadpool")]
            Kind::Deadpool(p) => f.debug_struct("PgPool").field("deadpool", &p.status()).finish_non_exhaustive(),
        }
    }
}

fn connect_fn<T>(config: Config, tls: T, mode: Option<SslMode>) -> Box<ConnectFn>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    Box::new(move || {
        let (config, tls) = (config.clone(), tls.clone());
        Box::pin(async move {
            let (client, connection) =
                config.connect(tls).await.map_err(|e| ConnectError::from_connect(&e, &config, mode))?;
            tokio::spawn(async move {
                // The connection ends when its client is dropped or the server goes away;
                // the pool notices through `Client::is_closed`.
                let _ = connection.await;
            });
            Ok(client)
        })
    })
}

fn listen_fn<T>(config: Config, tls: T, mode: Option<SslMode>) -> Box<ListenFn>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    Box::new(move || {
        let (config, tls) = (config.clone(), tls.clone());
        Box::pin(async move {
            let (client, mut connection) =
                config.connect(tls).await.map_err(|e| ConnectError::from_connect(&e, &config, mode))?;
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notification(n)) => {
                            if tx.send(n).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                // Dropping `tx` tells the listener that the connection is gone.
            });
            Ok((client, rx))
        })
    })
}

impl PgPool {
    /// A pool of up to `max_size` (at least 1) connections made with `config`
    /// and `tls`. No connection is opened until one is needed.
    pub fn new<T>(config: Config, tls: T, max_size: usize) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        Self::with_mode(config, tls, max_size, None)
    }

    fn with_mode<T>(config: Config, tls: T, max_size: usize, mode: Option<SslMode>) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let max_size = max_size.max(1);
        let simple = SimplePool {
            connect: connect_fn(config.clone(), tls.clone(), mode),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max_size)),
            max_size,
        };
        let listen = Some(listen_fn(config, tls, mode));
        PgPool { inner: Arc::new(Inner { kind: Kind::Simple(Arc::new(simple)), listen }) }
    }

    /// A pool of [`DEFAULT_POOL_SIZE`] connections without TLS, from a
    /// connection string (`postgresql://user@host/db` or `host=… user=…`).
    /// For servers on the same host or a trusted network; see
    /// [`PgPool::connect`] for TLS.
    pub fn without_tls(url: &str) -> Result<Self> {
        let config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
            Error::InvalidArgument(format!("invalid Postgres connection string: {e}"))
        })?;
        Ok(Self::new(config, NoTls, DEFAULT_POOL_SIZE))
    }

    /// A pool of [`DEFAULT_POOL_SIZE`] connections from a connection string
    /// (`postgresql://user[:password]@host[:port]/db?sslmode=…&sslrootcert=…`
    /// or `host=… sslmode=…`), TLS on rustls as libpq's `sslmode` says
    /// (default `prefer`; the modes are explained in the [`SslMode`] docs and
    /// the [crate docs](crate#tls)). `tls` overrides the string's `sslmode`
    /// and `sslrootcert`.
    ///
    /// The connection string and root certificate are checked now; the first
    /// connection is opened on first use (see [`PgPool::connect`] to open it
    /// now). Errors never show the password.
    ///
    /// ```
    /// use keywheel_postgres::{ConnectError, PgPool, SslMode, TlsSettings};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ConnectError> {
    /// // A verifying mode needs the CA that signed the server's certificate:
    /// let e = PgPool::from_url("postgresql://app:secret@db/app?sslmode=verify-full", &TlsSettings::new()).unwrap_err();
    /// assert_eq!(e, ConnectError::RootCertRequired { mode: SslMode::VerifyFull });
    /// assert!(!e.to_string().contains("secret"));
    /// // Encrypted, certificate not checked (as libpq's `require`):
    /// let pool = PgPool::from_url("postgresql://app@db/app", &TlsSettings::new().mode(SslMode::Require))?;
    /// # drop(pool);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_url(url: &str, tls: &TlsSettings) -> std::result::Result<Self, ConnectError> {
        let resolved = crate::tls::resolve(url, tls)?;
        Ok(Self::with_mode(resolved.config, resolved.tls, DEFAULT_POOL_SIZE, Some(resolved.mode)))
    }

    /// [`PgPool::from_url`], then one connection opened (and kept in the
    /// pool) so that an unreachable server, a refused certificate or a host
    /// name the certificate does not name is reported now, typed.
    ///
    /// ```no_run
    /// use keywheel_postgres::{ConnectError, PgPool, TlsSettings};
    /// # async fn demo() -> Result<(), ConnectError> {
    /// let pool = PgPool::connect(
    ///     "postgresql://app@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
    ///     &TlsSettings::new(),
    /// )
    /// .await?;
    /// # drop(pool); Ok(()) }
    /// ```
    // Without the `deadpool` feature every pool is a simple one.
    #[cfg_attr(not(feature = "deadpool"), allow(irrefutable_let_patterns))]
    pub async fn connect(url: &str, tls: &TlsSettings) -> std::result::Result<Self, ConnectError> {
        let pool = Self::from_url(url, tls)?;
        if let Kind::Simple(simple) = &pool.inner.kind {
            let client = (simple.connect)().await?;
            simple.idle.lock().unwrap_or_else(PoisonError::into_inner).push(client);
        }
        Ok(pool)
    }

    /// A pool over an existing deadpool-postgres pool. `config` and `tls` are
    /// used only to open the dedicated `LISTEN` connection of
    /// [`spawn_listener`](crate::spawn_listener) (a pooled connection cannot
    /// receive notifications).
    #[cfg(feature = "deadpool")]
    pub fn from_deadpool<T>(pool: deadpool_postgres::Pool, config: Config, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        PgPool { inner: Arc::new(Inner { kind: Kind::Deadpool(pool), listen: Some(listen_fn(config, tls, None)) }) }
    }

    /// A connection from the pool (waits while all are in use). It goes back
    /// to the pool when dropped.
    pub async fn get(&self) -> Result<PgClient> {
        match &self.inner.kind {
            Kind::Simple(pool) => {
                let permit = Arc::clone(&pool.permits)
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::backend(POOL, "the connection pool is closed", false))?;
                let idle = {
                    let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
                    idle.retain(|c| !c.is_closed());
                    idle.pop()
                };
                let client = match idle {
                    Some(client) => client,
                    None => (pool.connect)().await.map_err(Error::from)?,
                };
                Ok(PgClient {
                    inner: ClientInner::Simple { client: Some(client), pool: Arc::clone(pool), _permit: permit },
                })
            }
            #[cfg(feature = "deadpool")]
            Kind::Deadpool(pool) => {
                let object = pool.get().await.map_err(|e| {
                    let retryable = !matches!(e, deadpool_postgres::PoolError::Closed);
                    Error::backend(POOL, format!("cannot get a pooled connection: {e}"), retryable)
                })?;
                Ok(PgClient { inner: ClientInner::Deadpool(object) })
            }
        }
    }

    /// A dedicated connection (not from the pool) whose notifications arrive
    /// on the returned channel; the channel closes when the connection ends.
    pub(crate) async fn listen_connection(&self) -> Result<(Client, mpsc::UnboundedReceiver<Notification>)> {
        match &self.inner.listen {
            Some(listen) => listen().await,
            None => Err(Error::backend(POOL, "this pool cannot open a dedicated LISTEN connection", false)),
        }
    }
}

enum ClientInner {
    Simple {
        client: Option<Client>,
        pool: Arc<SimplePool>,
        _permit: OwnedSemaphorePermit,
    },
    #[cfg(feature = "deadpool")]
    Deadpool(deadpool_postgres::Object),
}

/// A connection borrowed from a [`PgPool`]; dereferences to
/// [`tokio_postgres::Client`] and returns to the pool when dropped.
pub struct PgClient {
    inner: ClientInner,
}

impl fmt::Debug for PgClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgClient").field("closed", &self.is_closed()).finish()
    }
}

impl Deref for PgClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        match &self.inner {
            // `client` is only taken in `drop`.
            ClientInner::Simple { client, .. } => client.as_ref().unwrap_or_else(|| unreachable!("client taken")),
            #[cfg(feature = "deadpool")]
            ClientInner::Deadpool(object) => object,
        }
    }
}

impl DerefMut for PgClient {
    fn deref_mut(&mut self) -> &mut Client {
        match &mut self.inner {
            ClientInner::Simple { client, .. } => client.as_mut().unwrap_or_else(|| unreachable!("client taken")),
            #[cfg(feature = "deadpool")]
            ClientInner::Deadpool(object) => object,
        }
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        if let ClientInner::Simple { client, pool, .. } = &mut self.inner
            && let Some(client) = client.take()
            && !client.is_closed()
        {
            pool.idle.lock().unwrap_or_else(PoisonError::into_inner).push(client);
        }
    }
}

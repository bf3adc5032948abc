//! Live refresh: reload a keyring in every process as soon as one changes it.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use keywheel_core::{KeyringId, Keywheel, Result};
use tokio::task::JoinHandle;

use crate::PgSchema;
use crate::driver::{Driver, POOL, on};
use crate::ident::quote_ident;

/// The running listener task of [`spawn_listener`]. Dropping the handle
/// does not stop the task; call [`abort`](Self::abort) for that.
#[derive(Debug)]
pub struct ListenerHandle {
    task: JoinHandle<()>,
    received: Arc<AtomicU64>,
}

impl ListenerHandle {
    /// Stop listening.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Whether the task has ended (only after [`abort`](Self::abort)).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Notifications received on the channel so far, well-formed or not (a
    /// metric; tests use it to know that a burst has been consumed).
    pub fn notifications(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// The task itself.
    pub fn into_join_handle(self) -> JoinHandle<()> {
        self.task
    }
}

async fn listen<D: Driver>(pool: &D, channel: &str) -> Result<BoxStream<'static, String>> {
    quote_ident(channel)?;
    pool.listen(channel).await.map_err(on(POOL, "LISTEN for keyring changes"))
}

/// Keep `kw`'s cached keyrings fresh: on a dedicated connection, `LISTEN` on
/// the schema's channel ([`PgSchema::channel`]), where [`SqlKeyStore`](crate::SqlKeyStore)
/// announces every keyring change, and [`Keywheel::mark_stale`] the keyring
/// named by each notification, so an encrypt or decrypt reloads it: a version
/// activated by another instance encrypts here within the reload cooldown
/// (default 1 s), instead of after the refresh interval.
///
/// Any database role can `NOTIFY` on the channel, so notifications are
/// treated as hints, never trusted: what is reloaded is read from the store,
/// any number of notifications for a keyring within one reload cooldown
/// cause at most one reload of it, and no notification resets or drops a
/// usage count (each reload flushes this instance's counts first).
///
/// Returns once the first `LISTEN` is in place (errors: the connection or
/// `LISTEN` failed). If the connection is lost later, the task reconnects
/// with back-off and then marks every keyring stale, since notifications may
/// have been missed meanwhile.
///
/// ```no_run
/// # async fn demo<D: keywheel_pg_sql::Driver>(pool: D, kw: keywheel_core::Keywheel) -> keywheel_core::Result<()> {
/// use keywheel_pg_sql::{PgSchema, spawn_listener};
/// let listener = spawn_listener(&pool, &PgSchema::default(), kw.clone()).await?;
/// // … serve requests with `kw` …
/// listener.abort();
/// # Ok(()) }
/// ```
pub async fn spawn_listener<D: Driver>(pool: &D, schema: &PgSchema, kw: Keywheel) -> Result<ListenerHandle> {
    let channel = schema.channel();
    let first = listen(pool, &channel).await?;
    let pool = pool.clone();
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let task = tokio::spawn(async move {
        let mut connection = Some(first);
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut payloads = match connection.take() {
                Some(c) => c,
                None => match listen(&pool, &channel).await {
                    Ok(c) => {
                        backoff = Duration::from_millis(100);
                        // Changes made while we were away were not announced to us.
                        if let Ok(ids) = kw.list_keyrings().await {
                            for id in ids {
                                kw.mark_stale(&id);
                            }
                        }
                        c
                    }
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                },
            };
            while let Some(payload) = payloads.next().await {
                if let Ok(id) = KeyringId::from_str(&payload) {
                    kw.mark_stale(&id);
                }
                counter.fetch_add(1, Ordering::SeqCst);
            }
            // The connection ended: reconnect.
        }
    });
    Ok(ListenerHandle { task, received })
}

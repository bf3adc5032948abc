//! # Using keywheel in an axum + sqlx service
//!
//! An example service (not published): users of several tenants, each
//! tenant's data encrypted under its own keyring, with
//!
//! * `PUT /tenants/{tenant}` — create the tenant's keyring;
//! * `POST /tenants/{tenant}/users` — store a user (`email` and `api_token`
//!   encrypted, `email` also blind-indexed);
//! * `GET /tenants/{tenant}/users/{id}` — read a user back, decrypted;
//! * `GET /tenants/{tenant}/users?email=…` — find users by email through the
//!   blind index;
//! * `GET /admin/scheduler` — the rotation scheduler's status report (JSON);
//!   `POST /admin/tenants/{tenant}/rotate`, `POST /admin/kek/rotate`,
//!   `POST /admin/scheduler/{pause,resume}` behind `ADMIN_TOKEN`;
//! * `GET /metrics` — keywheel's metrics in Prometheus format;
//! * `GET /healthz`.
//!
//! The application's own queries use sqlx; keywheel's key store, audit log
//! and record source are confined to [`backend`]. The rotation scheduler
//! runs as a background task; [`App::serve`] shuts down gracefully
//! (in-flight requests finish, the scheduler stops after its current batch
//! and flushes its usage counts).
//!
//! The keywheel manual is `keywheel_core::manual` (re-exported as
//! `keywheel::manual`): blind indexes in section 13, the scheduler and
//! runbook in section 12, master-key rotation in section 10, metrics in
//! section 15.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod error;
pub mod extract;
pub mod telemetry;
pub mod users;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use keywheel::{
    CancelToken, KekRing, KeyEncryptionKey, Keywheel, LocalKek, MASTER_KEY_ENV, NEXT_MASTER_KEY_ENV, Rotator,
    Scheduler, SchedulerConfig, TickReport,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::backend::Backend;

/// How the service is configured (see [`Config::from_env`]).
pub struct Config {
    /// The Postgres URL (`postgresql://user@host/db?sslmode=…`), for both the
    /// application's sqlx pool and keywheel's storage.
    pub database_url: String,
    /// The master key that wraps keywheel's key versions.
    pub master_key: Arc<dyn KeyEncryptionKey>,
    /// The next master key, staged for a master-key rotation: it unwraps
    /// too, and `POST /admin/kek/rotate` rewraps everything under it.
    pub next_master_key: Option<Arc<dyn KeyEncryptionKey>>,
    /// The bearer token of the `POST /admin/…` endpoints; `None` disables them.
    pub admin_token: Option<String>,
    /// Time between scheduler ticks.
    pub scheduler_tick: Duration,
    /// Connections of the application's sqlx pool.
    pub max_connections: u32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("master_key", &self.master_key.id())
            .field("next_master_key", &self.next_master_key.as_ref().map(|k| k.id().to_owned()))
            .field("admin_token", &self.admin_token.as_ref().map(|_| "…"))
            .field("scheduler_tick", &self.scheduler_tick)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is missing or invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// keywheel's storage or engine could not be opened (the kind and
    /// keywheel's sentence; keywheel's errors hold no secrets and no
    /// connection password).
    #[error("keywheel ({kind}): {0}", kind = .0.kind())]
    Keywheel(#[from] keywheel::Error),
    /// The application's database pool or migration failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Binding or serving failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

impl Config {
    /// From the environment: `DATABASE_URL` (required), `KEYWHEEL_MASTER_KEY`
    /// (required, base64 of 32 bytes), `KEYWHEEL_MASTER_KEY_NEXT` (optional),
    /// `ADMIN_TOKEN` (optional), `SCHEDULER_TICK_SECS` (default 60),
    /// `DATABASE_MAX_CONNECTIONS` (default 10).
    pub fn from_env() -> Result<Config, StartError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let number = |name: &str, default: u64| -> Result<u64, StartError> {
            var(name).map_or(Ok(default), |v| {
                v.trim().parse().map_err(|_| StartError::Config(format!("{name} must be a whole number")))
            })
        };
        let database_url = var("DATABASE_URL").ok_or_else(|| StartError::Config("DATABASE_URL is not set".into()))?;
        let master_key: Arc<dyn KeyEncryptionKey> = Arc::new(LocalKek::from_env(MASTER_KEY_ENV)?);
        let next_master_key = match var(NEXT_MASTER_KEY_ENV) {
            Some(_) => Some(Arc::new(LocalKek::from_env(NEXT_MASTER_KEY_ENV)?) as Arc<dyn KeyEncryptionKey>),
            None => None,
        };
        Ok(Config {
            database_url,
            master_key,
            next_master_key,
            admin_token: var("ADMIN_TOKEN"),
            scheduler_tick: Duration::from_secs(number("SCHEDULER_TICK_SECS", 60)?.max(1)),
            max_connections: u32::try_from(number("DATABASE_MAX_CONNECTIONS", 10)?.max(1))
                .map_err(|_| StartError::Config("DATABASE_MAX_CONNECTIONS is too large".into()))?,
        })
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    db: sqlx::PgPool,
    keywheel: Keywheel,
    rotator: Rotator,
    scheduler: Arc<Scheduler>,
    metrics: PrometheusHandle,
    next_master_key: Option<Arc<dyn KeyEncryptionKey>>,
    admin_token: Option<String>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("keywheel", &self.inner.keywheel).finish_non_exhaustive()
    }
}

impl AppState {
    /// The application's sqlx pool.
    pub fn db(&self) -> &sqlx::PgPool {
        &self.inner.db
    }
    /// The keywheel engine.
    pub fn keywheel(&self) -> &Keywheel {
        &self.inner.keywheel
    }
    /// The rotation engine over the `users` table.
    pub fn rotator(&self) -> &Rotator {
        &self.inner.rotator
    }
    /// The background scheduler.
    pub fn scheduler(&self) -> &Scheduler {
        &self.inner.scheduler
    }
    fn next_master_key(&self) -> Option<Arc<dyn KeyEncryptionKey>> {
        self.inner.next_master_key.clone()
    }
    fn admin_token(&self) -> Option<&str> {
        self.inner.admin_token.as_deref()
    }
}

/// The router of the service over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/tenants/{tenant}", put(users::put_tenant))
        .route("/tenants/{tenant}/users", post(users::create).get(users::find))
        .route("/tenants/{tenant}/users/{id}", get(users::read))
        .route("/admin/scheduler", get(admin::scheduler_status))
        .route("/admin/scheduler/pause", post(admin::pause))
        .route("/admin/scheduler/resume", post(admin::resume))
        .route("/admin/tenants/{tenant}/rotate", post(admin::rotate))
        .route("/admin/kek/rotate", post(admin::rotate_kek))
        .fallback(|| async { error::ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .with_state(state)
}

/// `GET /metrics`: every metric of the process in Prometheus text format.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], state.inner.metrics.render())
}

/// The running service: state, keywheel's backend, background tasks.
#[derive(Debug)]
pub struct App {
    state: AppState,
    backend: Backend,
    stop: CancelToken,
    scheduler: JoinHandle<()>,
    upkeep: JoinHandle<()>,
}

impl App {
    /// Start everything but the HTTP server: the metrics recorder (first, so
    /// keyring snapshots register their counters with it), the sqlx pool and
    /// the application's migration, keywheel's backend, and the scheduler.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let metrics = telemetry::metrics_handle().map_err(StartError::Config)?;
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(config.max_connections)
            .connect(&config.database_url)
            .await?;
        users::migrate(&db).await?;
        // Current key wraps; the staged next key (if any) also unwraps.
        let kek: Arc<dyn KeyEncryptionKey> = match &config.next_master_key {
            Some(next) => Arc::new(KekRing::new(config.master_key.clone(), vec![next.clone()])),
            None => config.master_key.clone(),
        };
        let backend = backend::keywheel_backend(&db, kek, "keywheel-example-axum").await?;
        let rotator = Rotator::new(backend.keywheel.clone())?.holder(instance_name()).source(backend.users.clone());
        let scheduler = Arc::new(Scheduler::new(
            rotator.clone(),
            SchedulerConfig { tick: config.scheduler_tick, ..SchedulerConfig::default() },
        ));
        let stop = CancelToken::new();
        let scheduler_task = {
            let (scheduler, stop) = (scheduler.clone(), stop.clone());
            tokio::spawn(async move { scheduler.run(stop, log_tick).await })
        };
        // The recorder's upkeep (histogram buckets): every 5 s.
        let upkeep = {
            let (handle, stop) = (metrics.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
                        () = stop.cancelled() => {}
                    }
                }
            })
        };
        tracing::info!(scheduler_tick_secs = config.scheduler_tick.as_secs(), "keywheel ready, scheduler running");
        let state = AppState {
            inner: Arc::new(Shared {
                db,
                keywheel: backend.keywheel.clone(),
                rotator,
                scheduler,
                metrics,
                next_master_key: config.next_master_key,
                admin_token: config.admin_token,
            }),
        };
        Ok(App { state, backend, stop, scheduler: scheduler_task, upkeep })
    }

    /// The shared state (what handlers see).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve on `listener` until `shutdown` completes, then shut down
    /// gracefully: stop accepting, let in-flight requests finish, stop the
    /// scheduler (a rotation it runs stops after its current batch,
    /// checkpointed, and resumes at the next start), flush usage counts,
    /// stop keywheel's listener and close the pool.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let stop = self.stop.clone();
        let signalled = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests, stopping the scheduler");
            stop.cancel();
        };
        let served = axum::serve(listener, router(self.state.clone())).with_graceful_shutdown(signalled).await;
        self.stop.cancel();
        // A panic in the scheduler task is reported, not propagated.
        if let Err(e) = self.scheduler.await {
            tracing::error!(error = %e, "the scheduler task panicked");
        }
        let _ = self.upkeep.await;
        self.backend.stop();
        self.state.inner.db.close().await;
        tracing::info!("stopped");
        Ok(served?)
    }
}

/// The scheduler's lease holder name: host and process id.
fn instance_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("keywheel-example-axum@{host}/{}", std::process::id())
}

fn log_tick(result: &keywheel::Result<TickReport>) {
    match result {
        Ok(tick) if tick.rotations.is_empty() && tick.retired.is_empty() && tick.failed.is_empty() => {
            tracing::debug!(due = tick.due.len(), "scheduler tick");
        }
        Ok(tick) => tracing::info!(
            due = tick.due.len(),
            rotations = tick.rotations.len(),
            retired = tick.retired.len(),
            destroyed = tick.destroyed.len(),
            failed = tick.failed.len(),
            "scheduler tick"
        ),
        Err(e) => tracing::warn!(error_kind = e.kind(), "scheduler tick failed"),
    }
}

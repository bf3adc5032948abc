//! Logs and metrics: a `tracing-subscriber` formatter filtered by `RUST_LOG`,
//! and a Prometheus recorder for keywheel's metrics (served by the router
//! at `GET /metrics`; no listener of its own).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Log to stderr at the levels of `RUST_LOG` (e.g. `info` or
/// `keywheel=debug,keywheel_example_axum=info`; default `info`).
/// Returns an error message when `RUST_LOG` does not parse.
pub fn init_tracing() -> Result<(), String> {
    let directives = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "info".into());
    let targets: Targets = directives.parse().map_err(|e| format!("RUST_LOG {directives:?}: {e}"))?;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(targets)
        .try_init()
        .map_err(|e| format!("a global subscriber is already set: {e}"))
}

/// The process's Prometheus recorder, installed on first call.
///
/// keywheel's keyring snapshots register their counters when they are
/// built, so this runs before the first snapshot is loaded (the service
/// calls it first thing in [`App::start`](crate::App::start)). A process
/// has one global recorder: later calls (a second service in the same test
/// process) share it. Fails if another recorder was installed first.
pub fn metrics_handle() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().map_err(|e| format!("metrics recorder: {e}"))?;
            keywheel::observability::describe_metrics();
            Ok(handle)
        })
        .clone()
}

//! The example service's binary: `DATABASE_URL`, `KEYWHEEL_MASTER_KEY` and
//! optionally `BIND` (default `127.0.0.1:3000`), `KEYWHEEL_MASTER_KEY_NEXT`,
//! `ADMIN_TOKEN`, `SCHEDULER_TICK_SECS`, `RUST_LOG`. Stops gracefully on
//! SIGINT (Ctrl-C) or SIGTERM.

use std::process::ExitCode;

use keywheel_example_axum::{App, Config, StartError, telemetry};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = telemetry::init_tracing() {
        eprintln!("keywheel-example-axum: {e}");
        return ExitCode::FAILURE;
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keywheel-example-axum: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), StartError> {
    let config = Config::from_env()?;
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = TcpListener::bind(&bind).await?;
    let app = App::start(config).await?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    app.serve(listener, shutdown_signal()).await
}

/// SIGINT or SIGTERM (SIGINT alone where there is no SIGTERM).
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

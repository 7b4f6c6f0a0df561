//! `/metrics` on METRICS_BIND_ADDRESS and `/healthz`, `/readyz` on HEALTH_PROBE_BIND_ADDRESS.
//! GET and HEAD only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// What the HTTP endpoints read from the running manager.
#[derive(Default)]
pub struct Shared {
    pub metrics: Metrics,
    /// Set once every watch has listed its objects.
    pub ready: AtomicBool,
}

/// Binds both listeners (so a taken port fails at start, clearly) and serves until shutdown.
pub async fn serve(
    shared: Arc<Shared>,
    metrics: Option<SocketAddr>,
    health: Option<SocketAddr>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut servers = Vec::new();
    if let Some(address) = metrics {
        let app = Router::new().route("/metrics", get(metrics_handler)).with_state(shared.clone());
        servers.push((bind(address).await?, app));
    }
    if let Some(address) = health {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(shared.clone());
        servers.push((bind(address).await?, app));
    }
    for (listener, app) in servers {
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let graceful = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(graceful).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
    }
    Ok(())
}

async fn bind(address: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(address).await.map_err(|source| Error::Listen { address, source })?;
    tracing::info!(%address, "Listening");
    Ok(listener)
}

async fn metrics_handler(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        shared.metrics.encode(),
    )
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for the first sync of every watch")
    }
}

//! `/metrics` on METRICS_BIND_ADDRESS and `/healthz`, `/readyz` on HEALTH_PROBE_BIND_ADDRESS.
//! GET and HEAD only. Any pod may connect, so connections are bounded in number and in time: a
//! client that sends its headers slowly (or never) cannot starve the kubelet's probes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

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
        tokio::spawn(serve_bounded(listener, app, shutdown.clone()));
    }
    Ok(())
}

/// Connections served at once; past it a new connection is closed at once.
const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time one connection may take in all (one request: no keep-alive).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);

async fn serve_bounded(listener: TcpListener, app: Router, stop: watch::Receiver<bool>) {
    accept_bounded(listener, MAX_CONNECTIONS, stop, move |stream| {
        let service = TowerToHyperService::new(app.clone());
        async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        }
    })
    .await
}

/// Accepts connections until `stop` turns true, each served by a task of its own; past `max`
/// at once a new connection is closed at once. Shared with the webhook's TLS listener.
pub(crate) async fn accept_bounded<F, Fut>(
    listener: TcpListener,
    max: usize,
    mut stop: watch::Receiver<bool>,
    mut serve: F,
) where
    F: FnMut(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // out of file descriptors and the like: wait a little rather than spin
                tracing::debug!(error = %e, "Accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let connection = serve(stream);
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    #[tokio::test]
    async fn clients_that_never_send_headers_cannot_starve_the_probes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let app = Router::new().route("/healthz", get(|| async { "ok" }));
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(serve_bounded(listener, app, stop));

        // more idle connections than the bound, none sending a byte
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS * 2 {
            idle.push(TcpStream::connect(address).await.expect("connect"));
        }
        // the server closes them once the header timeout passes (EOF on read)
        let mut first = idle.remove(0);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(HEADER_TIMEOUT * 3, first.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "an idle connection was kept open: {read:?}");
        // and the probe is answered (retrying while the slots are still taken)
        let deadline = tokio::time::Instant::now() + HEADER_TIMEOUT * 3;
        loop {
            match http_get(address, "/healthz").await {
                Ok(response) if response.starts_with("HTTP/1.1 200") => break,
                other => assert!(tokio::time::Instant::now() < deadline, "no answer to /healthz: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

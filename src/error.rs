//! The library's error type.

use std::time::Duration;

/// Errors of the I/O shell. Configuration errors have their own type ([`crate::config::ConfigErrors`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
    /// A write was refused because this replica's lease could not be renewed in time.
    #[error("not the leader (the lease could not be renewed in time)")]
    NotLeader,
    #[error("could not listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) => match status.code {
                401 | 403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                422 => "invalid",
                429 => "throttled",
                500..=599 => "server",
                _ => "api",
            },
            Error::Kube(_) => "connection",
            Error::Timeout(_) => "timeout",
            Error::Listen { .. } => "listen",
            Error::NotLeader => "not_leader",
        }
    }

    /// The HTTP status of an API error, if this is one.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            Error::Kube(kube::Error::Api(status)) => Some(status.code),
            _ => None,
        }
    }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Bounds an API call: the API server answering slowly must not stall the manager.
pub async fn with_timeout<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(Error::from),
        Err(_) => Err(Error::Timeout(limit)),
    }
}

//! The HTTP side port every server runs: `/healthz` (process alive), `/readyz` (serving),
//! `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// Renders the metrics text on each scrape.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

pub struct HttpServer {
    pub local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn start(
        addr: SocketAddr,
        ready: Arc<AtomicBool>,
        metrics: MetricsFn,
    ) -> anyhow::Result<Self> {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.load(Ordering::Acquire);
                    async move {
                        if ready {
                            (StatusCode::OK, "ready\n")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                get(move || {
                    let text = metrics();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4",
                            )],
                            text,
                        )
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind HTTP port {addr}: {e}"))?;
        let local_addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        Ok(Self {
            local_addr,
            shutdown,
            task,
        })
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

//! `/metrics`, `/healthz` and `/readyz`, served by every Triad process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What the endpoints report: readiness and the metrics registry.
#[derive(Clone)]
pub struct State {
    ready: Arc<AtomicBool>,
    registry: Arc<std::sync::RwLock<Registry>>,
    controller: Arc<std::sync::OnceLock<crate::metrics::ControllerMetrics>>,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    pub fn new() -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            registry: Arc::new(std::sync::RwLock::new(crate::metrics::new_registry())),
            controller: Arc::default(),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Registers metric families; call before serving traffic.
    pub fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        let mut guard = self
            .registry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// The per-controller metrics shared by every role of this process, registered on
    /// first use.
    pub fn controller_metrics(&self) -> crate::metrics::ControllerMetrics {
        self.controller
            .get_or_init(|| self.with_registry(crate::metrics::ControllerMetrics::register))
            .clone()
    }

    pub fn encode_metrics(&self) -> String {
        let guard = self
            .registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = String::new();
        // Encoding into a String cannot fail on I/O; a formatting error would be a bug
        // in a metric type, so report it in the body instead of panicking.
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &guard) {
            out.push_str(&format!("# encoding error: {err}\n"));
        }
        out
    }
}

async fn metrics(AxumState(state): AxumState<State>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.encode_metrics(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(AxumState(state): AxumState<State>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

pub struct Server {
    pub local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Binds `addr` and serves the endpoints in the background.
pub async fn spawn(addr: SocketAddr, state: State) -> std::io::Result<Server> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(err) = serve.await {
            tracing::error!(%err, "metrics server failed");
        }
    });
    Ok(Server {
        local_addr,
        stop,
        task,
    })
}

//! Binding, routing and the server's lifetime: fail fast when the address is taken,
//! serve until told to stop, then drain (in-flight requests finish, new connections are
//! refused) and stop the engine loop once its last generation is done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::config::ServeConfig;
use super::metrics::Metrics;
use super::scheduler::Scheduler;
use super::state::AppState;
use super::{chat_completion, choices, completions, routes};
use crate::infer::GenerationParams;
use crate::model::Pretrained;
use crate::template::Template;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr}: the port is already in use (stop the other server or pass \
         another --port)"
    )]
    PortInUse { addr: String },
    #[error("cannot listen on {addr}: {source} (check --host and --port)")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the engine thread: {0}")]
    Engine(std::io::Error),
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// Binds `--host`/`--port` now, so a taken port fails before the model loads.
pub async fn bind(config: &ServeConfig) -> Result<TcpListener, ServeError> {
    let addr = format!("{}:{}", config.host, config.port);
    TcpListener::bind(&addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            ServeError::PortInUse { addr: addr.clone() }
        } else {
            ServeError::Bind { addr, source }
        }
    })
}

/// The routes over shared state.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.max_body_bytes;
    let api = Router::new()
        .route(chat_completion::ROUTE, post(chat_completion::handle))
        .route(completions::ROUTE, post(completions::handle))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{id}", get(routes::model))
        .route("/metrics", get(routes::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            routes::require_api_key,
        ));
    Router::new()
        .route("/health", get(routes::health))
        .merge(api)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            routes::refuse_declared_oversize,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            routes::count_requests,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// A server running on a tokio runtime.
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// Stops accepting connections, waits for in-flight requests and the engine loop.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits until the server stopped (after `shutdown`, or when it failed).
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.done.await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Serve(std::io::Error::other(e))),
        }
    }

    /// A handle that triggers the drain from elsewhere (a signal handler).
    pub fn take_shutdown(&mut self) -> Option<oneshot::Sender<()>> {
        self.shutdown.take()
    }
}

/// Starts serving `model` on a bound listener; returns once the server accepts requests.
pub fn start(
    listener: TcpListener,
    model: Arc<Pretrained>,
    template: Template,
    defaults: GenerationParams,
    config: ServeConfig,
) -> Result<RunningServer, ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    let metrics = Arc::new(Metrics::default());
    let (scheduler, engine_thread) = Scheduler::start(
        model.clone(),
        config.engine_options(),
        config.max_queue,
        metrics.clone(),
    )
    .map_err(ServeError::Engine)?;
    let log_interval = config.log_interval;
    let state = Arc::new(AppState {
        config,
        model,
        template,
        defaults,
        scheduler,
        metrics: metrics.clone(),
        started: choices::unix_now(),
    });
    let app = router(state);
    let (tx, rx) = oneshot::channel::<()>();
    let throughput = log_interval.map(|every| tokio::spawn(log_throughput(metrics, every)));
    let done = tokio::spawn(async move {
        // Token streaming writes a small SSE chunk per step; with Nagle's algorithm on, a
        // chunk may wait for the ACK of the one before, which a client can hold back for
        // its delayed-ACK timer (up to 40 ms on Linux). uvicorn (ms-swift's and vLLM's
        // server) sets TCP_NODELAY on every connection too.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
            }
        });
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
                tracing::info!("shutting down: finishing in-flight requests");
            })
            .await
            .map_err(ServeError::Serve);
        if let Some(t) = throughput {
            t.abort();
        }
        // The router (and the last scheduler handle) is gone: the engine loop ends once
        // idle.
        let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
        served
    });
    Ok(RunningServer {
        addr,
        shutdown: Some(tx),
        done,
    })
}

/// One throughput line every `every` while there is traffic (`--log_interval`).
async fn log_throughput(metrics: Arc<Metrics>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let (mut prompt, mut generated) =
        (metrics.prompt_tokens.get(), metrics.generation_tokens.get());
    loop {
        tick.tick().await;
        let (p, g) = (metrics.prompt_tokens.get(), metrics.generation_tokens.get());
        let running = metrics.batch_size.get();
        if p == prompt && g == generated && running == 0 {
            continue;
        }
        let secs = every.as_secs_f64();
        tracing::info!(
            prompt_tokens_per_s = (p - prompt) as f64 / secs,
            generation_tokens_per_s = (g - generated) as f64 / secs,
            running,
            waiting = metrics.queue_depth.get(),
            "throughput"
        );
        (prompt, generated) = (p, g);
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

//! `GET /progress` on rank 0: a small axum server on its own thread, so the training loop
//! (synchronous, CPU-bound) only ever swaps the latest report under a mutex.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::oneshot;

use super::ProgressReport;

type Latest = Arc<Mutex<Option<ProgressReport>>>;

#[derive(Clone)]
struct ServerState {
    latest: Latest,
    token: Arc<str>,
}

/// A running `/progress` endpoint; stops when dropped.
pub struct ProgressServer {
    latest: Latest,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ProgressServer {
    /// Binds `addr` now (so a taken port fails here, naming the address) and serves from a
    /// background thread. Requests must carry `Authorization: Bearer <token>`.
    pub fn start(addr: SocketAddr, token: String) -> std::io::Result<ProgressServer> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("progress endpoint: cannot listen on {addr}: {e}"),
            )
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let latest: Latest = Arc::default();
        let state = ServerState {
            latest: latest.clone(),
            token: token.into(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("progress-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(error = %e, "progress endpoint: listener setup failed");
                            return;
                        }
                    };
                    let app = Router::new()
                        .route("/progress", get(progress))
                        .with_state(state);
                    let served = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                    if let Err(e) = served {
                        tracing::warn!(error = %e, "progress endpoint stopped");
                    }
                });
            })?;
        tracing::info!(%addr, "serving training progress on /progress");
        Ok(ProgressServer {
            latest,
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the report `/progress` answers with.
    pub fn publish(&self, report: ProgressReport) {
        // A poisoned lock only means a reader panicked mid-clone; the value is still whole.
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        *latest = Some(report);
    }
}

impl Drop for ProgressServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn progress(State(state): State<ServerState>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &state.token) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
        )
            .into_response();
    }
    let latest = state
        .latest
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match latest {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(report) => axum::Json(report).into_response(),
    }
}

/// Whether the request carries the bearer token (compared without an early exit, so the
/// answer time does not reveal how much of a guess was right).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// One HTTP/1.1 GET over a plain socket: (status code, body).
    fn get(addr: SocketAddr, auth: Option<&str>) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let auth = auth
            .map(|a| format!("authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET /progress HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    #[test]
    fn answers_204_then_the_latest_report_and_401_without_the_token() {
        let server =
            ProgressServer::start("127.0.0.1:0".parse().unwrap(), "s3cret".into()).unwrap();
        let addr = server.local_addr();
        assert_eq!(get(addr, Some("Bearer s3cret")).0, 204);
        assert_eq!(get(addr, None).0, 401);
        assert_eq!(get(addr, Some("Bearer s3cre")).0, 401);
        assert_eq!(get(addr, Some("Bearer s3cret2")).0, 401);

        let mut report = ProgressReport::at_step(5);
        report.loss = Some(1.5);
        server.publish(report.clone());
        let (status, body) = get(addr, Some("Bearer s3cret"));
        assert_eq!(status, 200);
        let back: ProgressReport = serde_json::from_str(&body).unwrap();
        assert_eq!(back, report);
        report.step = 6;
        server.publish(report);
        let back: ProgressReport =
            serde_json::from_str(&get(addr, Some("Bearer s3cret")).1).unwrap();
        assert_eq!(back.step, 6);
    }

    #[test]
    fn a_taken_port_fails_at_start_naming_the_address() {
        let first = ProgressServer::start("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
        let err = match ProgressServer::start(first.local_addr(), "t".into()) {
            Ok(_) => panic!("second bind succeeded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&first.local_addr().to_string()), "{err}");
    }

    #[test]
    fn stops_when_dropped() {
        let server = ProgressServer::start("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
        let addr = server.local_addr();
        drop(server);
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}

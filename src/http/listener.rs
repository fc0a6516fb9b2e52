//! The HTTP listener: how many connections it holds and how long a client
//! may take to send a request. axum's own `serve` sets neither, so a client
//! that sends its headers a byte a minute, or thousands of clients that
//! connect and wait, held a task and a socket each for ever.
//!
//! This module accepts and times; what a request means is the router's.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Connections the HTTP listener serves at once unless told otherwise.
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = 512;

/// How long a client may take to send a request's headers, and to send
/// the next request on a kept-alive connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client gets when every connection is taken: an answer, so that
/// it backs off instead of waiting.
const BUSY_RESPONSE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
Content-Length: 58\r\nConnection: close\r\n\r\n{\"error\":\"too many connections; retry in a second please\"}";

/// How long a refused client may take to send its request head.
const BUSY_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The most of a refused client's request read before answering it.
const BUSY_HEAD_BYTES: usize = 8 * 1024;

/// Reads the refused client's request head (a client whose answer comes
/// before it finished sending takes it for a broken server), then answers.
async fn answer_busy(socket: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while head.len() < BUSY_HEAD_BYTES && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..read]);
    }
    socket.write_all(BUSY_RESPONSE).await?;
    socket.shutdown().await
}

/// Serves `router` on `listener`, at most `max_connections` connections at
/// once, until the process ends.
pub async fn serve(listener: TcpListener, router: Router, max_connections: usize) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        let (mut socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting an HTTP connection failed");
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(%peer, max_connections, "refusing HTTP connection: too many connections");
            tokio::spawn(async move {
                let _ = tokio::time::timeout(BUSY_ANSWER_TIMEOUT, answer_busy(&mut socket)).await;
            });
            continue;
        };
        // The client's address travels with each request: the web view
        // records it, and counts failed sign-ins by it.
        let address = super::ui::ClientAddress(peer.ip());
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(address);
                request
            },
        ));
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(e) = http.serve_connection(TokioIo::new(socket), service).await {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_declares_its_length() {
        let text = std::str::from_utf8(BUSY_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}

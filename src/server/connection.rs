//! One Postgres connection from its first byte to its last, over pgwire's
//! message handling, with what a client that has not logged in may do kept
//! small: it has [`LOGIN_TIMEOUT`] to finish logging in and may send
//! [`MAX_PRE_LOGIN_BYTES`] until then. pgwire's own loop gives a minute and
//! takes a query message of up to 1 GiB from anyone who has sent a start-up
//! packet.
//!
//! This module frames and dispatches; it never reads a message's content.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use pgwire::api::{ClientInfo, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::server::{MaybeTls, negotiate_tls, process_error, process_message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};
use tracing::warn;

use super::slots::LoginSlot;

/// How long a client has from connecting to being logged in, TLS
/// handshake included (PostgreSQL's `authentication_timeout` is a minute;
/// a person types no password here, a driver answers SCRAM at once).
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes a client may send before it is logged in: a start-up
/// packet, a TLS handshake and the SCRAM messages take a few kilobytes.
pub const MAX_PRE_LOGIN_BYTES: u64 = 64 * 1024;

/// A socket that refuses to read past [`MAX_PRE_LOGIN_BYTES`] until the
/// connection has logged in.
struct PreLoginLimit {
    inner: MaybeTls,
    read_bytes: u64,
    logged_in: Arc<AtomicBool>,
}

impl AsyncRead for PreLoginLimit {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.logged_in.load(Ordering::Relaxed) {
            self.read_bytes += (buf.filled().len() - before) as u64;
            if self.read_bytes > MAX_PRE_LOGIN_BYTES {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {MAX_PRE_LOGIN_BYTES} bytes sent before logging in"),
                )));
            }
        }
        polled
    }
}

impl AsyncWrite for PreLoginLimit {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn logging_in(state: PgWireConnectionState) -> bool {
    matches!(state, PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress)
}

/// Serves one client until it leaves, or until it fails to log in within
/// [`LOGIN_TIMEOUT`] and [`MAX_PRE_LOGIN_BYTES`]. `has_logged_in` answers
/// whether the login handler let the client in; `login_slot` is given back
/// then.
pub async fn serve<H: PgWireServerHandlers>(
    socket: TcpStream,
    tls: Option<TlsAcceptor>,
    handlers: H,
    login_slot: LoginSlot,
    has_logged_in: impl Fn() -> bool,
) -> io::Result<()> {
    let mut login_slot = Some(login_slot);
    let peer = socket.peer_addr()?;
    let login_deadline = tokio::time::Instant::now() + LOGIN_TIMEOUT;
    let negotiated = match tokio::time::timeout_at(login_deadline, negotiate_tls(socket, tls)).await {
        Ok(negotiated) => negotiated?,
        Err(_) => {
            warn!(%peer, "Postgres client did not finish its TLS handshake in time");
            return Ok(());
        }
    };
    // A direct TLS request while TLS is off: nothing to talk about.
    let Some(negotiated) = negotiated else { return Ok(()) };
    let logged_in = Arc::new(AtomicBool::new(false));
    let parts = negotiated.into_parts();
    let io = PreLoginLimit { inner: parts.io, read_bytes: 0, logged_in: Arc::clone(&logged_in) };
    let mut limited = FramedParts::new(io, parts.codec);
    limited.read_buf = parts.read_buf;
    limited.write_buf = parts.write_buf;
    let mut socket = Framed::from_parts(limited);

    let (startup, simple, extended) =
        (handlers.startup_handler(), handlers.simple_query_handler(), handlers.extended_query_handler());
    let (copy, cancel, errors) = (handlers.copy_handler(), handlers.cancel_handler(), handlers.error_handler());
    loop {
        let message = if logged_in.load(Ordering::Relaxed) {
            socket.next().await
        } else {
            match tokio::time::timeout_at(login_deadline, socket.next()).await {
                Ok(message) => message,
                Err(_) => {
                    warn!(%peer, timeout_s = LOGIN_TIMEOUT.as_secs(), "Postgres client did not log in in time");
                    return Ok(());
                }
            }
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                warn!(%peer, error = %e, "closing a Postgres connection that sent what cannot be read");
                return Ok(());
            }
            None => return Ok(()),
        };
        // The client is leaving; some wait for the server to close first.
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        let extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended_query) => extended_query,
            _ => message.is_extended_query(),
        };
        let handled = process_message(
            message,
            &mut socket,
            Arc::clone(&startup),
            Arc::clone(&simple),
            Arc::clone(&extended),
            Arc::clone(&copy),
            Arc::clone(&cancel),
        )
        .await;
        if let Err(mut error) = handled {
            errors.on_error(&socket, &mut error);
            process_error(&mut socket, error, extended_query).await?;
        }
        if !logging_in(socket.state()) && has_logged_in() {
            logged_in.store(true, Ordering::Relaxed);
            // Given back for the next client.
            drop(login_slot.take());
        }
    }
}

//! What a client gets when `max_connections` sessions are already open.
//!
//! PostgreSQL finishes the start-up exchange and answers `FATAL 53300 sorry,
//! too many clients already`, so psql and drivers show why instead of a
//! connection reset; we do the same. A cancel request is not a session: it
//! still reaches its statement, so Ctrl-C works when the server is full.
//!
//! This path never opens a session, reads no user's password and so never
//! lets anyone in.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pgwire::api::cancel::CancelHandler;
use pgwire::error::ErrorInfo;
use pgwire::messages::Message;
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::startup::SecretKey;
use pgwire::tokio::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::RunningStatements;

/// Start-up packets are small; a longer one is not a client to answer.
const MAX_STARTUP_PACKET_BYTES: usize = 10_000;

/// How long a refused client may take over its start-up packets.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);

const CANCEL_REQUEST_CODE: i32 = 80877102;
const SSL_REQUEST_CODE: i32 = 80877103;
const GSSENC_REQUEST_CODE: i32 = 80877104;

/// The first packets a client sends before it is a session.
enum Opening {
    /// The client asks to switch to TLS (or GSS encryption) first.
    Encryption {
        ssl: bool,
    },
    Cancel(CancelRequest),
    /// A start-up message, or something we do not read further.
    Startup,
}

/// Answers a client past the connection limit, as described above.
pub(super) async fn refuse(socket: TcpStream, tls: Option<TlsAcceptor>, running: RunningStatements) {
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, answer(socket, tls, running)).await;
}

async fn answer(mut socket: TcpStream, tls: Option<TlsAcceptor>, running: RunningStatements) -> std::io::Result<()> {
    match read_opening(&mut socket).await? {
        Opening::Cancel(request) => {
            running.on_cancel_request(request).await;
            Ok(())
        }
        Opening::Encryption { ssl: true } if let Some(tls) = tls => {
            socket.write_all(b"S").await?;
            let mut stream = tls.accept(socket).await?;
            read_opening(&mut stream).await?;
            too_many_clients(&mut stream).await
        }
        Opening::Encryption { .. } => {
            socket.write_all(b"N").await?;
            read_opening(&mut socket).await?;
            too_many_clients(&mut socket).await
        }
        Opening::Startup => too_many_clients(&mut socket).await,
    }
}

async fn read_opening(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Opening> {
    let length = stream.read_i32().await?;
    let Some(body_bytes) = usize::try_from(length).ok().and_then(|l| l.checked_sub(4)) else {
        return Ok(Opening::Startup);
    };
    if !(4..=MAX_STARTUP_PACKET_BYTES).contains(&body_bytes) {
        return Ok(Opening::Startup);
    }
    let mut body = vec![0; body_bytes];
    stream.read_exact(&mut body).await?;
    let code = i32::from_be_bytes(body[..4].try_into().expect("four bytes"));
    Ok(match code {
        SSL_REQUEST_CODE => Opening::Encryption { ssl: true },
        GSSENC_REQUEST_CODE => Opening::Encryption { ssl: false },
        CANCEL_REQUEST_CODE if body.len() >= 12 => {
            let pid = i32::from_be_bytes(body[4..8].try_into().expect("four bytes"));
            Opening::Cancel(CancelRequest::new(pid, SecretKey::Bytes(Bytes::copy_from_slice(&body[8..]))))
        }
        _ => Opening::Startup,
    })
}

async fn too_many_clients(stream: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
    let error = ErrorInfo::new("FATAL".into(), "53300".into(), "sorry, too many clients already".into());
    let mut message = BytesMut::new();
    ErrorResponse::from(error).encode(&mut message).map_err(std::io::Error::other)?;
    stream.write_all(&message).await?;
    stream.shutdown().await
}

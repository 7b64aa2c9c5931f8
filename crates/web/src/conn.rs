//! The connections under the router: the accept loop, hyper's HTTP/1.1
//! settings, and the one place where hyper answers by itself.
//!
//! hyper refuses a request head it cannot parse (a malformed
//! `Content-Length`, a non-ASCII byte in the URI, a URI over 64 KiB, a head
//! over its buffer) before any of our code runs, with a bodiless 400, 414
//! or 431. [`EdgeIo`] rewrites exactly those answers into the one error
//! shape, so that a client always gets `{"error": {"code", "message",
//! "field"}}`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{ApiError, Limits};

/// Longest wait for a request head (hyper's own default once a timer is
/// set): longer than the request time so that a keep-alive connection
/// reused by a client now and then is not closed under its feet.
const HEAD_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for the connections' requests in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        // A head that trickles in is dropped (the slow-headers attack),
        // and so is a connection idle that long; a slow body is the
        // middleware's 408.
        .header_read_timeout(HEAD_TIME)
        // A client may send a short body and close its side to say it is
        // done: it still gets its 400.
        .half_close(true)
        // One write per answer, which EdgeIo inspects whole.
        .writev(false);
    // Connections hold a receiver; dropping ours tells them to finish.
    let (stop_tx, stop_rx) = watch::channel(());
    // Each connection holds a sender clone; all dropped means all done.
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before it
                    // was accepted: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = http.serve_connection(
            TokioIo::new(EdgeIo::new(stream, limits)),
            Service {
                app: app.clone(),
                peer,
            },
        );
        let mut stop = stop_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let mut connection = pin!(connection);
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended");
                        }
                        break;
                    }
                    changed = stop.changed(), if !stopping => {
                        // Changed or closed: either way, stop after the
                        // request in flight.
                        let _ = changed;
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(done);
        });
    }
    drop(listener);
    let _ = stop_tx.send(());
    drop(stop_rx);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

/// The router for one connection, with the peer's address for
/// `ConnectInfo`.
#[derive(Clone)]
struct Service {
    app: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response;
    type Error = Infallible;
    type Future = <Router as tower_service::Service<Request<axum::body::Body>>>::Future;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // A router is always ready: no poll_ready needed.
        tower_service::Service::call(&mut self.app.clone(), request)
    }
}

/// A connection whose answers written by hyper itself (bodiless 400, 414,
/// 431 for a head it could not parse) are rewritten into the one error
/// shape. Every other byte passes through.
pub(crate) struct EdgeIo<T> {
    inner: T,
    limits: Limits,
    /// A rewritten answer being written, and how many of hyper's bytes it
    /// stands for (reported as written once it is).
    rewriting: Option<Rewrite>,
}

struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    stands_for: usize,
}

impl<T> EdgeIo<T> {
    pub(crate) fn new(inner: T, limits: Limits) -> Self {
        EdgeIo {
            inner,
            limits,
            rewriting: None,
        }
    }
}

/// hyper's own answer to an unparsable head, as the one error shape, if
/// `buf` is exactly such an answer: a status line of 400, 414 or 431 and
/// a head announcing no body, nothing after it. The router's answers
/// never look like that: every error of ours has a body.
fn rewrite(buf: &[u8], limits: &Limits) -> Option<Vec<u8>> {
    let error = if buf.starts_with(b"HTTP/1.1 400 ") {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "the request is not well-formed HTTP/1.1: its request line, its URI (ASCII only: \
             percent-encode the rest) or a header such as Content-Length does not parse",
        )
    } else if buf.starts_with(b"HTTP/1.1 414 ") {
        ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request URI exceeds {} bytes", limits.uri_bytes),
        )
    } else if buf.starts_with(b"HTTP/1.1 431 ") {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "request headers exceed {} bytes or are too many",
                limits.header_bytes
            ),
        )
    } else {
        return None;
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None;
    }
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    for line in head.split("\r\n").skip(1) {
        if line.starts_with("transfer-encoding:") {
            return None;
        }
        if let Some(length) = line.strip_prefix("content-length:")
            && length.trim() != "0"
        {
            return None;
        }
    }
    let body = error.json_body();
    let reason = error.status.canonical_reason().unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n",
        error.status.as_u16(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<T: AsyncRead + Unpin> AsyncRead for EdgeIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for EdgeIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewriting.is_none() {
            match rewrite(buf, &this.limits) {
                Some(bytes) => {
                    this.rewriting = Some(Rewrite {
                        bytes,
                        written: 0,
                        stands_for: buf.len(),
                    });
                }
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // hyper offers the same bytes again after a Pending: carry on with
        // the rewrite until it is all out, then count hyper's as written.
        while let Some(rewrite) = this.rewriting.as_mut() {
            if rewrite.written == rewrite.bytes.len() {
                let n = rewrite.stands_for;
                this.rewriting = None;
                return Poll::Ready(Ok(n));
            }
            let n = ready!(
                Pin::new(&mut this.inner).poll_write(cx, &rewrite.bytes[rewrite.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            rewrite.written += n;
        }
        Poll::Ready(Ok(0))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bodiless_parse_errors_are_rewritten() {
        let limits = Limits::default();
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 21:00:00 GMT\r\n\r\n";
        let out = rewrite(hyper_400, &limits).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "malformed_request");
        for (status, code) in [
            ("414 URI Too Long", "uri_too_long"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            let raw = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            let text = String::from_utf8(rewrite(raw.as_bytes(), &limits).unwrap()).unwrap();
            let body = text.split_once("\r\n\r\n").unwrap().1;
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["error"]["code"], code);
        }
        // The router's own answers pass untouched: a body, or another status.
        for raw in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 400 Bad Req",
        ] {
            assert!(rewrite(raw, &limits).is_none());
        }
    }
}

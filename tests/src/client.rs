//! Real clients that really break off: raw TCP (FIN, RST via `SO_LINGER 0`,
//! half-sent bodies), hyper's HTTP/1.1 client for clean keep-alive traffic, and
//! the `h2` crate for HTTP/2 `RST_STREAM`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::DEADLINE;

/// Connects and sends `raw` bytes as they are (a request head, maybe part of a body).
pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("send");
    stream
}

/// Closes with a FIN: a plain close of a socket with nothing unread.
pub fn close_fin(stream: TcpStream) {
    drop(stream);
}

/// Closes with a RST: `SO_LINGER` 0, then close.
pub fn close_rst(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(stream);
}

/// Reads until the bytes received so far contain `needle`; returns them all.
/// Panics after [`DEADLINE`] or on EOF before the needle.
pub async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "EOF before {:?}", String::from_utf8_lossy(needle));
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no {:?} within {DEADLINE:?}",
                String::from_utf8_lossy(needle)
            )
        });
    seen
}

/// Reads until the server closes the connection (EOF or reset); returns what came.
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("server closes the connection");
    seen
}

/// A keep-alive HTTP/1.1 connection driven by hyper's client.
pub struct Http1Connection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    task: JoinHandle<()>,
}

impl Http1Connection {
    /// Opens a connection to `addr`.
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Http1Connection { sender, task }
    }

    /// Sends one request and reads the whole response: (status, body).
    pub async fn request(&mut self, method: &str, path: &str) -> (u16, Bytes) {
        self.sender.ready().await.expect("connection ready");
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "test")
            .body(Empty::new())
            .expect("valid request");
        let res = self.sender.send_request(req).await.expect("response");
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .expect("whole body")
            .to_bytes();
        (status, body)
    }

    /// Closes the connection cleanly (FIN, nothing in flight) and waits for it.
    pub async fn close(self) {
        drop(self.sender);
        self.task.await.expect("connection task");
    }
}

/// An HTTP/2 (prior knowledge) connection driven by the `h2` crate.
pub struct H2Connection {
    /// The h2 request sender.
    pub sender: h2::client::SendRequest<Bytes>,
    task: JoinHandle<()>,
}

impl H2Connection {
    /// Opens a connection to `addr` and completes the HTTP/2 handshake.
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        H2Connection { sender, task }
    }

    /// Opens a connection with windows of 8 MiB a stream and 64 MiB in all,
    /// so that a server may write large bodies in large writes.
    pub async fn open_wide(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = h2::client::Builder::new()
            .initial_window_size(8 << 20)
            .initial_connection_window_size(64 << 20)
            .handshake(stream)
            .await
            .expect("h2 handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        H2Connection { sender, task }
    }

    /// Starts a GET; returns the response future and the stream's send half
    /// (for `send_reset`).
    pub async fn start_get(
        &mut self,
        path: &str,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let sender = self.sender.clone().ready().await.expect("h2 ready");
        self.sender = sender;
        let req = http::Request::builder()
            .uri(format!("http://test{path}"))
            .body(())
            .expect("valid request");
        self.sender.send_request(req, true).expect("send request")
    }

    /// Sends a GET and reads the whole answer: (status, body).
    pub async fn get(&mut self, path: &str) -> (u16, Bytes) {
        let (response, _send) = self.start_get(path).await;
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .expect("h2 response in time")
            .expect("h2 response");
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut all = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("h2 body");
            let _ = body.flow_control().release_capacity(chunk.len());
            all.extend_from_slice(&chunk);
        }
        (status, Bytes::from(all))
    }

    /// Drops the connection (and the h2 task driving it).
    pub fn close(self) {
        self.task.abort();
    }

    /// Ends the connection as a browser does: drops the request sender, so
    /// the h2 client sends GOAWAY and closes once nothing is in flight.
    pub async fn close_gracefully(self) {
        drop(self.sender);
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the h2 client closes in time")
            .expect("connection task");
    }
}

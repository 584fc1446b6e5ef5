//! A gRPC client that is not ours: Python grpcio (`tests/grpc/driver.py`),
//! driven line by line, so a test can look at the server between starting a
//! call and cancelling it.

use std::net::SocketAddr;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::DEADLINE;

/// One Python grpcio channel to a server.
pub struct GrpcDriver {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl GrpcDriver {
    /// Starts the driver with a channel to `addr`.
    pub fn connect(addr: SocketAddr) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc/driver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the grpcio driver");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        GrpcDriver {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command; returns its answer (panics on the driver's error).
    pub async fn send(&mut self, command: Value) -> Value {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("driver reads");
        let answer = tokio::time::timeout(DEADLINE * 2, self.stdout.next_line())
            .await
            .expect("the driver answers in time")
            .expect("driver's stdout")
            .expect("the driver is running");
        let answer: Value = serde_json::from_str(&answer).expect("the driver answers JSON");
        assert!(
            answer.get("error").is_none(),
            "the driver failed {command}: {answer}"
        );
        answer
    }

    /// Starts call `id` (see the driver for the fields of `call`).
    pub async fn start(&mut self, id: &str, mut call: Value) {
        call["op"] = json!("start");
        call["id"] = json!(id);
        self.send(call).await;
    }

    /// Cancels call `id`, as `future.cancel()` does.
    pub async fn cancel(&mut self, id: &str) {
        self.send(json!({"op": "cancel", "id": id})).await;
    }

    /// The status name call `id` ended with, and its messages.
    pub async fn result(&mut self, id: &str) -> (String, Vec<Value>) {
        let answer = self.send(json!({"op": "result", "id": id})).await;
        let code = answer["code"].as_str().expect("a code").to_owned();
        let messages = answer["messages"].as_array().cloned().unwrap_or_default();
        (code, messages)
    }
}

impl Drop for GrpcDriver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A gRPC server that is not ours: Python grpcio serving the demo's service
/// (`tests/grpc/server.py`), reporting each call's start, end and cancel.
pub struct GrpcUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// One event the upstream reported.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamEvent {
    /// `start`, `cancelled` or `done`.
    pub event: String,
    /// The method (`Wait`, `Ticks`, …).
    pub method: String,
    /// When it happened.
    pub at: std::time::Instant,
}

impl GrpcUpstream {
    /// Starts the server on a free loopback port.
    pub async fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc/server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("0")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the grpcio server");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = tokio::time::timeout(DEADLINE, stdout.next_line())
            .await
            .expect("the server starts in time")
            .expect("server's stdout")
            .expect("the server is running");
        let first: Value = serde_json::from_str(&first).expect("JSON");
        let port = first["port"].as_u64().expect("the port") as u16;
        GrpcUpstream {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            stdout,
        }
    }

    /// The next event the server reports (panics after [`DEADLINE`]).
    pub async fn next_event(&mut self) -> UpstreamEvent {
        let line = tokio::time::timeout(DEADLINE, self.stdout.next_line())
            .await
            .expect("the upstream reports in time")
            .expect("upstream's stdout")
            .expect("the upstream is running");
        let at = std::time::Instant::now();
        let v: Value = serde_json::from_str(&line).expect("JSON");
        UpstreamEvent {
            event: v["event"].as_str().unwrap_or_default().to_owned(),
            method: v["method"].as_str().unwrap_or_default().to_owned(),
            at,
        }
    }

    /// Waits for `event` of `method`, skipping others.
    pub async fn wait_for(&mut self, event: &str, method: &str) -> UpstreamEvent {
        loop {
            let e = self.next_event().await;
            if e.event == event && e.method == method {
                return e;
            }
        }
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A gRPC call sent with the `h2` crate over a socket the test can reset.
pub struct RawCall {
    socket: std::net::TcpStream,
    task: tokio::task::JoinHandle<()>,
    /// The call's response.
    pub response: h2::client::ResponseFuture,
}

impl RawCall {
    /// Opens a connection to `addr` and sends one request message (framed
    /// here) to `path`, ending the request stream.
    pub async fn start(addr: SocketAddr, path: &str, message: &[u8]) -> Self {
        let socket = std::net::TcpStream::connect(addr).expect("connect");
        let keep = socket.try_clone().expect("dup the socket");
        socket.set_nonblocking(true).expect("non-blocking");
        let stream = tokio::net::TcpStream::from_std(socket).expect("tokio stream");
        let (sender, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut sender = sender.ready().await.expect("h2 ready");
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("valid request");
        let (response, mut send) = sender.send_request(req, false).expect("send request");
        let mut framed = vec![0u8];
        framed.extend((message.len() as u32).to_be_bytes());
        framed.extend(message);
        send.send_data(bytes::Bytes::from(framed), true)
            .expect("send message");
        RawCall {
            socket: keep,
            task,
            response,
        }
    }

    /// Resets the TCP connection: `SO_LINGER` 0 on the socket, and the last
    /// descriptor of it closed.
    pub async fn reset(self) {
        socket2::SockRef::from(&self.socket)
            .set_linger(Some(std::time::Duration::ZERO))
            .expect("SO_LINGER 0");
        self.task.abort();
        let _ = self.task.await;
        drop(self.socket);
    }
}

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

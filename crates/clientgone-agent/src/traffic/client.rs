//! The scripted clients, one function per [`Kind`]: real sockets that really
//! break off.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::kind::Kind;

/// How long an HTTP/2 client keeps its connection after cancelling a stream.
const H2_LINGER: Duration = Duration::from_millis(200);

/// Why one scripted request did not go as planned.
pub(crate) type Failure = String;

/// Runs one request of `kind`; `patience` is how long a leaving client waits
/// before it leaves.
pub(crate) async fn run(
    kind: Kind,
    addr: SocketAddr,
    n: u64,
    patience: Duration,
) -> Result<(), Failure> {
    match kind {
        Kind::Completed => completed(addr, n).await,
        Kind::FinHandler => leave_waiting_handler(addr, patience, false).await,
        Kind::RstHandler => leave_waiting_handler(addr, patience, true).await,
        Kind::HalfBody => half_body(addr, patience).await,
        Kind::MidStream => mid_stream(addr).await,
        Kind::H2Reset => h2_reset(addr, patience).await,
        grpc => super::grpc::run(grpc, addr, patience).await,
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), Failure> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| format!("send: {e}"))
}

fn reset(stream: TcpStream) -> Result<(), Failure> {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .map_err(|e| format!("SO_LINGER: {e}"))?;
    drop(stream);
    Ok(())
}

/// A complete exchange: the whole response is read before a clean FIN, so the
/// server sees nothing in flight when the connection closes.
async fn completed(addr: SocketAddr, n: u64) -> Result<(), Failure> {
    let mut stream = connect(addr).await?;
    send(
        &mut stream,
        format!("GET /items/{n} HTTP/1.1\r\nHost: traffic\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::with_capacity(256);
    loop {
        read_more(&mut stream, &mut buf, "the response was complete").await?;
        if let Some(complete) = response_complete(&buf)? {
            if !complete.starts_with("HTTP/1.1 200") {
                return Err(format!("unexpected answer: {complete}"));
            }
            return Ok(());
        }
    }
}

/// Appends what the next read brings; an EOF is a failure "before `until`".
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, until: &str) -> Result<(), Failure> {
    let mut chunk = [0u8; 1024];
    let read = stream
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if read == 0 {
        return Err(format!("the server closed before {until}"));
    }
    buf.extend_from_slice(&chunk[..read]);
    Ok(())
}

/// `Some(status line)` once `buf` holds a whole response with a Content-Length body.
fn response_complete(buf: &[u8]) -> Result<Option<String>, Failure> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .ok_or_else(|| format!("no Content-Length in: {head}"))?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((buf.len() >= end + 4 + length).then_some(status))
}

async fn leave_waiting_handler(
    addr: SocketAddr,
    patience: Duration,
    with_rst: bool,
) -> Result<(), Failure> {
    let mut stream = connect(addr).await?;
    let request = format!(
        "GET /hello?delay_ms={} HTTP/1.1\r\nHost: traffic\r\n\r\n",
        handler_delay_ms(patience)
    );
    send(&mut stream, request.as_bytes()).await?;
    wait_patiently(&mut stream, patience).await?;
    if with_rst {
        reset(stream)
    } else {
        drop(stream);
        Ok(())
    }
}

async fn half_body(addr: SocketAddr, patience: Duration) -> Result<(), Failure> {
    let mut stream = connect(addr).await?;
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: traffic\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'x', 1000));
    send(&mut stream, &request).await?;
    wait_patiently(&mut stream, patience).await?;
    drop(stream);
    Ok(())
}

/// How long the demo's `/hello` should take, so that the client always leaves
/// first: a minute past its patience (within the demo's limit).
fn handler_delay_ms(patience: Duration) -> u128 {
    (patience.as_millis() + 60_000).min(u128::from(crate::demo::MAX_DELAY_MS))
}

/// The client's own impatience, not a wait for a condition. A server that
/// answers (or closes) meanwhile had nothing in flight when the client left:
/// no break to expect on `/metrics`, so the request failed its script.
async fn wait_patiently(stream: &mut TcpStream, patience: Duration) -> Result<(), Failure> {
    let mut first = [0u8; 128];
    tokio::select! {
        () = tokio::time::sleep(patience) => Ok(()),
        read = stream.read(&mut first) => Err(match read {
            Ok(0) => "the server closed before the client left".to_owned(),
            Ok(n) => format!(
                "the server answered before the client left: {}",
                String::from_utf8_lossy(&first[..n]).lines().next().unwrap_or_default()
            ),
            Err(e) => format!("read: {e}"),
        }),
    }
}

async fn mid_stream(addr: SocketAddr) -> Result<(), Failure> {
    let mut stream = connect(addr).await?;
    send(
        &mut stream,
        b"GET /stream?chunks=1000&interval_ms=10 HTTP/1.1\r\nHost: traffic\r\n\r\n",
    )
    .await?;
    // Leave only once the body flows, so the head is surely sent.
    let mut seen = Vec::new();
    while !seen.windows(8).any(|w| w == b"chunk 0\n") {
        read_more(&mut stream, &mut seen, "the stream started").await?;
        if seen.windows(4).any(|w| w == b"\r\n\r\n") && !seen.starts_with(b"HTTP/1.1 200") {
            let status = String::from_utf8_lossy(&seen);
            return Err(format!(
                "unexpected answer: {}",
                status.lines().next().unwrap_or_default()
            ));
        }
    }
    reset(stream)
}

async fn h2_reset(addr: SocketAddr, patience: Duration) -> Result<(), Failure> {
    let stream = connect(addr).await?;
    let (sender, connection) = h2::client::handshake(stream)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let mut sender = sender.ready().await.map_err(|e| format!("h2 ready: {e}"))?;
    let uri = format!(
        "http://traffic/hello?delay_ms={}",
        handler_delay_ms(patience)
    );
    let request = http::Request::get(uri)
        .body(())
        .map_err(|e| e.to_string())?;
    let (mut response, mut stream) = sender
        .send_request(request, true)
        .map_err(|e| format!("h2 request: {e}"))?;
    // As `wait_patiently`: an answer before the reset leaves nothing to reset.
    tokio::select! {
        () = tokio::time::sleep(patience) => {}
        answer = &mut response => return Err(match answer {
            Ok(r) => format!("the server answered before the client left: {}", r.status()),
            Err(e) => format!("h2 response: {e}"),
        }),
    }
    stream.send_reset(h2::Reason::CANCEL);
    // The connection stays up a moment, as a browser's would, so the server
    // handles the RST_STREAM before it sees the connection go (closing at once
    // could let it see the EOF first, and that is a different break).
    tokio::time::sleep(H2_LINGER).await;
    drop((response, stream, sender));
    // With every handle gone the driver closes the connection cleanly.
    if tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .is_err()
    {
        return Err("h2 connection did not close".into());
    }
    Ok(())
}

//! The scripted gRPC clients: tonic's own client (and, for the deadline, the
//! `h2` crate) against the demo's `clientgone.demo.v1.Demo`, over h2c, each
//! call on a connection of its own.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tonic::transport::Channel;

use super::client::Failure;
use super::kind::Kind;
use crate::demo::grpc::pb;
use crate::demo::grpc::pb::demo_client::DemoClient;

/// How long a client keeps its connection after cancelling a call, so the
/// server handles the `RST_STREAM` before it sees the connection go (closing
/// at once could let it see the EOF first: a different break).
const LINGER: Duration = Duration::from_millis(200);

/// The longest a scripted call waits for an answer it expects.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

pub(crate) async fn run(kind: Kind, addr: SocketAddr, patience: Duration) -> Result<(), Failure> {
    if kind == Kind::GrpcDeadline {
        return deadline(addr, patience).await;
    }
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("channel: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = DemoClient::new(channel);
    match kind {
        Kind::GrpcCompleted => completed(&mut client).await,
        Kind::GrpcCancel => cancel(&mut client, patience).await,
        Kind::GrpcStreamCancel => stream_cancel(&mut client).await,
        Kind::GrpcUploadAbort => upload_abort(&mut client, patience).await,
        _ => Err(format!("{} is not a gRPC kind", kind.name())),
    }
}

/// A call that waits `ms` in the handler.
fn wait_request(ms: u32) -> pb::WaitRequest {
    pb::WaitRequest { delay_ms: ms }
}

/// A minute past the client's patience (the demo's `Wait` takes 0 as its default).
fn longer_than(patience: Duration) -> u32 {
    u32::try_from(patience.as_millis() + 60_000).unwrap_or(u32::MAX)
}

async fn completed(client: &mut DemoClient<Channel>) -> Result<(), Failure> {
    let reply = tokio::time::timeout(ANSWER_WITHIN, client.wait(wait_request(1)))
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|s| format!("Wait failed: {s}"))?;
    match reply.get_ref().message.as_str() {
        "Hello, World!" => Ok(()),
        other => Err(format!("unexpected answer: {other:?}")),
    }
}

/// The user gives up: the call is dropped mid-handler, which makes tonic
/// reset the stream (`RST_STREAM` CANCEL).
async fn cancel(client: &mut DemoClient<Channel>, patience: Duration) -> Result<(), Failure> {
    let call = client.wait(wait_request(longer_than(patience)));
    if let Ok(answer) = tokio::time::timeout(patience, call).await {
        return Err(format!(
            "the server answered before the client left: {answer:?}"
        ));
    }
    tokio::time::sleep(LINGER).await;
    Ok(())
}

/// The call carries a deadline (`grpc-timeout` = patience) that runs out
/// while the handler waits; the demo ends the call at it, as gRPC servers
/// in Go and Java do. Sent with the `h2` crate, not tonic's client: tonic's
/// client enforces the deadline too, and its reset would race the server's
/// answer by a few microseconds — either way the call is `deadline_exceeded`
/// on the server, but a scripted client should say which one it expects.
async fn deadline(addr: SocketAddr, patience: Duration) -> Result<(), Failure> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, connection) = h2::client::handshake(stream)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let mut sender = sender.ready().await.map_err(|e| format!("h2 ready: {e}"))?;
    let request = http::Request::post("http://traffic/clientgone.demo.v1.Demo/Wait")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", format!("{}m", patience.as_millis().max(1)))
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, mut body) = sender
        .send_request(request, false)
        .map_err(|e| format!("h2 request: {e}"))?;
    let message = prost::Message::encode_to_vec(&wait_request(longer_than(patience)));
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend(
        u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend(message);
    body.send_data(framed.into(), true)
        .map_err(|e| format!("h2 body: {e}"))?;
    // Every handle of the connection goes with the call, so the driver
    // closes it as soon as the answer is in.
    drop(body);
    let status = tokio::time::timeout(ANSWER_WITHIN, async move {
        let response = response.await.map_err(|e| format!("h2 response: {e}"))?;
        if let Some(status) = clientgone::GrpcStatus::from_headers(response.headers()) {
            return Ok::<_, Failure>(status);
        }
        let mut body = response.into_body();
        while body.data().await.is_some() {}
        let trailers = body
            .trailers()
            .await
            .map_err(|e| format!("h2 trailers: {e}"))?;
        trailers
            .as_ref()
            .and_then(clientgone::GrpcStatus::from_headers)
            .ok_or_else(|| "no grpc-status".to_owned())
    })
    .await
    .map_err(|_| "no answer in time".to_owned())??;
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    match status {
        clientgone::GrpcStatus::DEADLINE_EXCEEDED => Ok(()),
        other => Err(format!("expected DEADLINE_EXCEEDED, got {other}")),
    }
}

/// A server stream read for three ticks, then dropped.
async fn stream_cancel(client: &mut DemoClient<Channel>) -> Result<(), Failure> {
    let request = pb::TicksRequest {
        count: 1000,
        interval_ms: 10,
    };
    let mut ticks = tokio::time::timeout(ANSWER_WITHIN, client.ticks(request))
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|s| format!("Ticks failed: {s}"))?
        .into_inner();
    for _ in 0..3 {
        match tokio::time::timeout(ANSWER_WITHIN, ticks.next()).await {
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("expected a tick, got {other:?}")),
        }
    }
    drop(ticks);
    tokio::time::sleep(LINGER).await;
    Ok(())
}

/// A client stream that sends three chunks, stalls, and is dropped.
async fn upload_abort(client: &mut DemoClient<Channel>, patience: Duration) -> Result<(), Failure> {
    let chunks = futures_util::stream::iter((0..3).map(|_| pb::Chunk {
        data: vec![b'x'; 1000],
    }))
    .chain(futures_util::stream::pending());
    if let Ok(answer) = tokio::time::timeout(patience, client.upload(chunks)).await {
        return Err(format!(
            "the server answered before the client left: {answer:?}"
        ));
    }
    tokio::time::sleep(LINGER).await;
    Ok(())
}

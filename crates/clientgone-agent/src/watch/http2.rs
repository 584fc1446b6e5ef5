//! The HTTP/2 exchange of one watched connection (h2c by prior knowledge, or
//! h2 read in TLS's plaintext): the frames of both directions, the header
//! blocks decoded with HPACK (one decoder per direction, as the peers keep
//! one table each way), and each stream followed as one request with the
//! contract's phases — `request_body` until the client's END_STREAM,
//! `handler` until the response HEADERS, `response_body` until the server's
//! END_STREAM. A client's `RST_STREAM` breaks its stream (`stream_reset`)
//! while the connection lives on; a TCP-level sign of the client leaving
//! breaks every stream in flight. Like `exchange.rs` it knows nothing of TCP:
//! `conn.rs` tells it when the client left or the server gave up.
//!
//! HPACK needs every header block of a direction, in order: a block that was
//! not captured whole (or does not decode) desynchronises the table, so the
//! connection is skipped from then on (`reason="http2"`), never decoded
//! wrongly. DATA payloads are not needed — only their lengths and flags —
//! and may be missing from the capture.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use clientgone::{
    CallRecord, Cause, End, GrpcMethods, GrpcStatus, OTHER_METHOD, RpcType, UNMATCHED_ROUTE,
    call_status, deadline_reached, grpc_timeout_value,
};

use super::conn::nanos;
use super::exchange::{Facts, broken};
use super::hpack;
use super::sink::Sink;
use super::skip::Skip;
use crate::routes::RouteMatcher;

/// The client connection preface (RFC 9113, section 3.4).
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
/// The largest header block followed (a HEADERS frame and its
/// CONTINUATIONs): a bigger one is skipped, not decoded.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Streams followed at once on one connection. Servers allow 100–128
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`); a client that keeps more open is
/// skipped rather than grown without bound.
const MAX_STREAMS: usize = 1024;
/// The largest dynamic table a peer may announce that the agent keeps.
const MAX_TABLE: usize = 1 << 20;

/// Frame types (RFC 9113, section 6).
mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags.
mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Which peer sent the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// The bytes could not be followed (and why, for the debug log): the
/// connection is skipped.
#[derive(Debug)]
struct Desync(&'static str);

/// One complete frame, as far as it is needed: the payload of the kinds
/// whose content matters, only the length of the others.
#[derive(Debug)]
struct Frame<'a> {
    kind: u8,
    flags: u8,
    stream: u32,
    len: usize,
    payload: &'a [u8],
}

/// The frames of one direction, as they arrive in pieces.
#[derive(Debug)]
struct Frames {
    /// Preface bytes still to match (the client's direction only).
    preface: usize,
    header: [u8; FRAME_HEADER],
    have: usize,
    /// The frame being read: its header, the payload bytes still to come,
    /// and — for the kinds that matter — the payload so far.
    current: Option<Current>,
}

#[derive(Debug)]
struct Current {
    kind: u8,
    flags: u8,
    stream: u32,
    len: usize,
    left: usize,
    keep: Option<Vec<u8>>,
}

fn kept(kind: u8) -> bool {
    matches!(
        kind,
        kind::HEADERS
            | kind::CONTINUATION
            | kind::PUSH_PROMISE
            | kind::RST_STREAM
            | kind::SETTINGS
            | kind::GOAWAY
    )
}

impl Frames {
    fn new(side: Side) -> Self {
        Frames {
            preface: if side == Side::Client {
                PREFACE.len()
            } else {
                0
            },
            header: [0; FRAME_HEADER],
            have: 0,
            current: None,
        }
    }

    /// Reads `bytes`, calling `on_frame` for each frame completed (DATA at
    /// its header: its payload is not needed).
    fn feed(
        &mut self,
        mut bytes: &[u8],
        on_frame: &mut impl FnMut(Frame<'_>) -> Result<(), Desync>,
    ) -> Result<(), Desync> {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let start = PREFACE.len() - self.preface;
                let n = self.preface.min(bytes.len());
                if bytes[..n] != PREFACE[start..start + n] {
                    return Err(Desync("not the preface"));
                }
                self.preface -= n;
                bytes = &bytes[n..];
                continue;
            }
            if let Some(cur) = &mut self.current {
                let n = cur.left.min(bytes.len());
                if let Some(keep) = &mut cur.keep {
                    keep.extend_from_slice(&bytes[..n]);
                }
                cur.left -= n;
                bytes = &bytes[n..];
                if cur.left == 0 {
                    let cur = self.current.take().expect("just matched");
                    if let Some(payload) = &cur.keep {
                        on_frame(Frame {
                            kind: cur.kind,
                            flags: cur.flags,
                            stream: cur.stream,
                            len: cur.len,
                            payload,
                        })?;
                    }
                }
                continue;
            }
            let n = (FRAME_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == FRAME_HEADER {
                self.have = 0;
                self.start_frame(on_frame)?;
            }
        }
        Ok(())
    }

    fn start_frame(
        &mut self,
        on_frame: &mut impl FnMut(Frame<'_>) -> Result<(), Desync>,
    ) -> Result<(), Desync> {
        let h = self.header;
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let keep = kept(kind);
        if keep && len > MAX_HEADER_BLOCK {
            return Err(Desync("a frame longer than the header-block limit"));
        }
        if !keep {
            // Its header says all that is needed: tell it now.
            on_frame(Frame {
                kind,
                flags,
                stream,
                len,
                payload: &[],
            })?;
            if len > 0 {
                self.current = Some(Current {
                    kind,
                    flags,
                    stream,
                    len,
                    left: len,
                    keep: None,
                });
            }
            return Ok(());
        }
        self.current = Some(Current {
            kind,
            flags,
            stream,
            len,
            left: len,
            keep: Some(Vec::with_capacity(len)),
        });
        if len == 0 {
            let cur = self.current.take().expect("just set");
            on_frame(Frame {
                kind,
                flags,
                stream,
                len: 0,
                payload: cur.keep.as_deref().unwrap_or_default(),
            })?;
        }
        Ok(())
    }

    /// `n` bytes moved that were not captured: fine inside a payload that is
    /// not needed, a loss anywhere else.
    fn skip(&mut self, n: usize) -> Result<(), Desync> {
        match &mut self.current {
            Some(cur) if cur.keep.is_none() && cur.left >= n => {
                cur.left -= n;
                if cur.left == 0 {
                    self.current = None;
                }
                Ok(())
            }
            _ if n == 0 => Ok(()),
            _ => Err(Desync("bytes not captured outside a DATA payload")),
        }
    }
}

/// A header block being gathered: HEADERS (or PUSH_PROMISE) and its
/// CONTINUATIONs.
#[derive(Debug)]
struct Block {
    kind: u8,
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

/// One direction's header state: the block being gathered and the HPACK
/// table the peer's encoder keeps in step with.
#[derive(Debug)]
struct Headers {
    block: Option<Block>,
    decoder: hpack::Decoder,
}

impl Headers {
    fn new() -> Self {
        Headers {
            block: None,
            decoder: hpack::Decoder::new(4096),
        }
    }
}

/// What one stream's header blocks said.
#[derive(Debug, Default)]
struct Fields {
    method: Option<http::Method>,
    path: Option<String>,
    status: Option<u16>,
    /// `content-type: application/grpc…`.
    grpc: bool,
    grpc_timeout: Option<Duration>,
    grpc_status: Option<GrpcStatus>,
}

/// What the routes and methods of the watched port are: request paths to
/// route templates, gRPC paths to methods.
#[derive(Clone, Copy, Debug)]
pub(super) struct Names<'a> {
    pub(super) routes: &'a RouteMatcher,
    pub(super) grpc: &'a GrpcMethods,
}

/// A gRPC call's own facts.
#[derive(Debug)]
struct Call {
    method: Arc<str>,
    rpc_type: RpcType,
    timeout: Option<Duration>,
    status: Option<GrpcStatus>,
}

/// One request: a client-initiated stream.
#[derive(Debug)]
struct Stream {
    method: &'static str,
    route: Option<Arc<str>>,
    path: String,
    start_ns: u64,
    /// The client's END_STREAM arrived: its body is complete.
    body_done: bool,
    /// The response's status, once its HEADERS were written.
    status: Option<u16>,
    body_sent: u64,
    /// `Some` for a gRPC call, counted in the `rpc_server_*` metrics.
    call: Option<Call>,
}

impl Stream {
    fn end(
        &self,
        port: u16,
        status: u16,
        end: End,
        ts_ns: u64,
        unacked: Option<u32>,
        sink: &mut impl Sink,
    ) {
        let facts = Facts {
            method: self.method,
            route: self.route.as_deref().unwrap_or(UNMATCHED_ROUTE),
            path: &self.path,
            version: "2",
            start_ns: self.start_ns,
            body_sent: self.body_sent,
        };
        let Some(call) = &self.call else {
            return facts.report(port, status, end, ts_ns, unacked, sink);
        };
        sink.call_ended(
            port,
            &CallRecord {
                method: &call.method,
                rpc_type: call.rpc_type,
                status: call_status(end, call.status, self.status),
                end,
                elapsed: facts.elapsed(ts_ns),
                body_bytes_sent: self.body_sent,
            },
            &facts.ended(unacked),
        );
    }

    /// Out of the gauges uncounted: its end cannot be known.
    fn lost(&self, port: u16, sink: &mut impl Sink) {
        match &self.call {
            Some(call) => sink.call_lost(port, &call.method, call.rpc_type),
            None => sink.request_lost(
                port,
                self.method,
                self.route.as_deref().unwrap_or(UNMATCHED_ROUTE),
            ),
        }
    }

    /// Whether a gRPC call ending at `ts_ns` had reached its client's deadline.
    fn at_deadline(&self, ts_ns: u64) -> bool {
        let elapsed = nanos(ts_ns.saturating_sub(self.start_ns));
        self.call
            .as_ref()
            .and_then(|c| c.timeout)
            .is_some_and(|timeout| deadline_reached(elapsed, timeout))
    }

    /// The break of this stream by the client (`cause`) at `ts_ns`; a call
    /// broken at its client's deadline is `deadline_exceeded`, whatever
    /// came first (the client's reset, the server's enforcement).
    fn broken(
        &self,
        port: u16,
        cause: Cause,
        ts_ns: u64,
        unacked: Option<u32>,
        sink: &mut impl Sink,
    ) {
        let cause = if self.at_deadline(ts_ns) {
            Cause::DeadlineExceeded
        } else {
            cause
        };
        let (status, end) = broken(self.body_done, self.status, cause);
        self.end(port, status, end, ts_ns, unacked, sink);
    }
}

/// The exchange of one HTTP/2 connection.
#[derive(Debug)]
pub(super) struct H2Exchange {
    port: u16,
    frames: [Frames; 2],
    headers: [Headers; 2],
    streams: HashMap<u32, Stream>,
    /// Streams are no longer followed (the client left, the server gave up,
    /// or the bytes could not be followed).
    done: bool,
    pub(super) served_any: bool,
    /// The client said goodbye (GOAWAY): the close is a normal one.
    pub(super) asked_close: bool,
}

fn index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

impl H2Exchange {
    pub(super) fn new(port: u16) -> Self {
        H2Exchange {
            port,
            frames: [Frames::new(Side::Client), Frames::new(Side::Server)],
            headers: [Headers::new(), Headers::new()],
            streams: HashMap::new(),
            done: false,
            served_any: false,
            asked_close: false,
        }
    }

    /// Whether a stream is in flight.
    pub(super) fn in_flight(&self) -> bool {
        !self.streams.is_empty()
    }

    /// The client sent `len` bytes, of which `parts` were captured: each
    /// the bytes from an offset, in order; the bytes between them were not.
    pub(super) fn on_recv(
        &mut self,
        parts: &[(usize, &[u8])],
        len: usize,
        ts_ns: u64,
        names: Names<'_>,
        sink: &mut impl Sink,
    ) {
        self.bytes(Side::Client, parts, len, ts_ns, Some(names), sink);
    }

    /// The server sent `len` bytes, of which `parts` were captured.
    pub(super) fn on_send(
        &mut self,
        parts: &[(usize, &[u8])],
        len: usize,
        ts_ns: u64,
        sink: &mut impl Sink,
    ) {
        self.bytes(Side::Server, parts, len, ts_ns, None, sink);
    }

    fn bytes(
        &mut self,
        side: Side,
        parts: &[(usize, &[u8])],
        len: usize,
        ts_ns: u64,
        names: Option<Names<'_>>,
        sink: &mut impl Sink,
    ) {
        if self.done {
            return;
        }
        let mut frames =
            std::mem::replace(&mut self.frames[index(side)], Frames::new(Side::Server));
        // What was not captured between the parts may only be DATA payloads
        // (the kernel passes over them), never a frame header or a block.
        let mut fed = 0;
        let mut result = Ok(());
        for &(offset, data) in parts {
            let Some(gap) = offset.checked_sub(fed) else {
                result = Err(Desync("captured pieces overlap"));
                break;
            };
            let data = &data[..data.len().min(len.saturating_sub(offset))];
            result = frames.skip(gap).and_then(|()| {
                frames.feed(data, &mut |frame| {
                    self.on_frame(side, frame, ts_ns, names, sink)
                })
            });
            fed = offset + data.len();
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| frames.skip(len.saturating_sub(fed)));
        self.frames[index(side)] = frames;
        if let Err(Desync(why)) = result {
            tracing::debug!(
                port = self.port,
                from = ?side,
                len,
                captured = fed,
                why,
                "HTTP/2 connection skipped"
            );
            self.skip(Skip::Http2, sink);
        }
    }

    fn on_frame(
        &mut self,
        side: Side,
        frame: Frame<'_>,
        ts_ns: u64,
        names: Option<Names<'_>>,
        sink: &mut impl Sink,
    ) -> Result<(), Desync> {
        if self.done {
            return Ok(());
        }
        // Only a CONTINUATION may follow a header block that has not ended.
        if self.headers[index(side)].block.is_some() && frame.kind != kind::CONTINUATION {
            return Err(Desync("a frame inside a header block"));
        }
        match frame.kind {
            kind::HEADERS | kind::PUSH_PROMISE => {
                let fragment = header_fragment(&frame).ok_or(Desync("bad padding"))?;
                let block = Block {
                    kind: frame.kind,
                    stream: frame.stream,
                    end_stream: frame.kind == kind::HEADERS && frame.flags & flag::END_STREAM != 0,
                    bytes: fragment.to_vec(),
                };
                self.headers[index(side)].block = Some(block);
                if frame.flags & flag::END_HEADERS != 0 {
                    self.end_block(side, ts_ns, names, sink)?;
                }
            }
            kind::CONTINUATION => {
                let block = self.headers[index(side)]
                    .block
                    .as_mut()
                    .ok_or(Desync("a CONTINUATION without HEADERS"))?;
                if block.stream != frame.stream
                    || block.bytes.len() + frame.payload.len() > MAX_HEADER_BLOCK
                {
                    return Err(Desync("a CONTINUATION of another stream, or too long"));
                }
                block.bytes.extend_from_slice(frame.payload);
                if frame.flags & flag::END_HEADERS != 0 {
                    self.end_block(side, ts_ns, names, sink)?;
                }
            }
            kind::DATA => self.on_data(side, &frame, ts_ns, sink),
            kind::RST_STREAM => {
                let code = frame
                    .payload
                    .get(..4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .ok_or(Desync("a short RST_STREAM"))?;
                self.on_reset(side, frame.stream, code, ts_ns, sink);
            }
            kind::SETTINGS if frame.flags & flag::ACK == 0 => {
                // The table size a peer allows is what the *other* side's
                // encoder may use: SETTINGS_HEADER_TABLE_SIZE (0x1).
                let other = match side {
                    Side::Client => Side::Server,
                    Side::Server => Side::Client,
                };
                for setting in frame.payload.chunks_exact(6) {
                    if setting[..2] == [0, 1] {
                        let size =
                            u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                        let size = (size as usize).min(MAX_TABLE);
                        self.headers[index(other)]
                            .decoder
                            .set_allowed(size.max(4096));
                    }
                }
            }
            kind::GOAWAY => {
                let last = frame
                    .payload
                    .get(..4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) & 0x7fff_ffff)
                    .ok_or(Desync("a short GOAWAY"))?;
                match side {
                    Side::Client => self.asked_close = true,
                    // Streams above the last one the server will process were
                    // refused by it: neither served nor broken.
                    Side::Server => {
                        let refused: Vec<u32> =
                            self.streams.keys().copied().filter(|&s| s > last).collect();
                        for id in refused {
                            if let Some(s) = self.streams.remove(&id) {
                                s.lost(self.port, sink);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_data(&mut self, side: Side, frame: &Frame<'_>, ts_ns: u64, sink: &mut impl Sink) {
        let end = frame.flags & flag::END_STREAM != 0;
        let Some(stream) = self.streams.get_mut(&frame.stream) else {
            return;
        };
        match side {
            Side::Client => stream.body_done |= end,
            Side::Server => {
                // The payload less its padding is body; close enough to count
                // it whole (padding is rare in responses).
                stream.body_sent += frame.len as u64;
                if end {
                    self.complete(frame.stream, ts_ns, sink);
                }
            }
        }
    }

    fn on_reset(&mut self, side: Side, id: u32, code: u32, ts_ns: u64, sink: &mut impl Sink) {
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        match side {
            // Whatever its code: a client that resets a stream whose answer
            // it does not have whole has given up on it. (A NO_ERROR after
            // the response ended finds no stream here.)
            Side::Client => {
                let _ = code;
                stream.broken(self.port, Cause::StreamReset, ts_ns, None, sink);
            }
            // The server gave the stream up: its own doing, never a break.
            _ => {
                self.served_any = true;
                let status = stream.status.unwrap_or(500);
                stream.end(self.port, status, End::Completed, ts_ns, None, sink);
            }
        }
    }

    fn end_block(
        &mut self,
        side: Side,
        ts_ns: u64,
        names: Option<Names<'_>>,
        sink: &mut impl Sink,
    ) -> Result<(), Desync> {
        let headers = &mut self.headers[index(side)];
        let block = headers.block.take().ok_or(Desync("no header block"))?;
        let mut fields = Fields::default();
        headers
            .decoder
            .decode(&block.bytes, wanted, |name, value| match name {
                b":method" => fields.method = http::Method::from_bytes(value).ok(),
                b":path" => fields.path = Some(String::from_utf8_lossy(value).into_owned()),
                b":status" => {
                    fields.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
                }
                b"content-type" => fields.grpc = value.starts_with(b"application/grpc"),
                b"grpc-timeout" => fields.grpc_timeout = grpc_timeout_value(value),
                b"grpc-status" => {
                    fields.grpc_status = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok())
                        .map(GrpcStatus::from_code)
                }
                _ => {}
            })
            .map_err(Desync)?;
        // A pushed stream is the server's: its block only keeps the table in step.
        if block.kind == kind::PUSH_PROMISE {
            return Ok(());
        }
        match side {
            Side::Client => self.request_headers(block, fields, ts_ns, names, sink),
            Side::Server => {
                self.response_headers(&block, &fields, ts_ns, sink);
                Ok(())
            }
        }
    }

    fn request_headers(
        &mut self,
        block: Block,
        fields: Fields,
        ts_ns: u64,
        names: Option<Names<'_>>,
        sink: &mut impl Sink,
    ) -> Result<(), Desync> {
        if let Some(stream) = self.streams.get_mut(&block.stream) {
            // Trailers of the request body.
            stream.body_done |= block.end_stream;
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS {
            return Err(Desync("a CONTINUATION of another stream, or too long"));
        }
        let method = clientgone::method_label(&fields.method.unwrap_or(http::Method::GET));
        let path = fields.path.unwrap_or_default();
        let raw_path = path.split('?').next().unwrap_or_default();
        let mut route = None;
        let call = if fields.grpc {
            let (name, rpc_type) = names.and_then(|n| n.grpc.method_of(raw_path)).map_or_else(
                || (Arc::from(OTHER_METHOD), RpcType::Unknown),
                |(name, t)| (name.clone(), t),
            );
            sink.call_started(self.port, &name, rpc_type);
            Some(Call {
                method: name,
                rpc_type,
                timeout: fields.grpc_timeout,
                status: None,
            })
        } else {
            route = names.and_then(|n| n.routes.template_shared(raw_path));
            sink.request_started(
                self.port,
                method,
                route.as_deref().unwrap_or(UNMATCHED_ROUTE),
            );
            None
        };
        self.streams.insert(
            block.stream,
            Stream {
                method,
                route,
                path: raw_path.to_owned(),
                start_ns: ts_ns,
                body_done: block.end_stream,
                status: None,
                body_sent: 0,
                call,
            },
        );
        Ok(())
    }

    fn response_headers(
        &mut self,
        block: &Block,
        fields: &Fields,
        ts_ns: u64,
        sink: &mut impl Sink,
    ) {
        let Some(stream) = self.streams.get_mut(&block.stream) else {
            return;
        };
        if let (Some(call), Some(status)) = (&mut stream.call, fields.grpc_status) {
            call.status = Some(status);
        }
        match (stream.status, fields.status) {
            // 1xx (100 Continue, 103 Early Hints): the real head follows.
            (None, Some(status)) if (100..200).contains(&status) => return,
            (None, status) => stream.status = Some(status.unwrap_or(500)),
            // Trailers.
            (Some(_), _) => {}
        }
        if block.end_stream {
            self.complete(block.stream, ts_ns, sink);
        }
    }

    fn complete(&mut self, id: u32, ts_ns: u64, sink: &mut impl Sink) {
        if let Some(stream) = self.streams.remove(&id) {
            self.served_any = true;
            // The server ended the call at its client's deadline: the
            // client's patience ran out, as when its own reset comes first.
            if stream
                .call
                .as_ref()
                .is_some_and(|c| c.status == Some(GrpcStatus::DEADLINE_EXCEEDED))
                && stream.at_deadline(ts_ns)
            {
                // The phase is where the client was left, as the layer has
                // it: no message of the answer sent yet is `handler`, its
                // head notwithstanding.
                let mut stream = stream;
                if stream.body_sent == 0 {
                    stream.status = None;
                }
                return stream.broken(self.port, Cause::DeadlineExceeded, ts_ns, None, sink);
            }
            let status = stream.status.unwrap_or(500);
            stream.end(self.port, status, End::Completed, ts_ns, None, sink);
        }
    }

    /// The client left the connection: every stream in flight is its break.
    pub(super) fn client_left(
        &mut self,
        cause: Cause,
        ts_ns: u64,
        unacked: u32,
        sink: &mut impl Sink,
    ) {
        self.done = true;
        let mut streams: Vec<(u32, Stream)> = self.streams.drain().collect();
        streams.sort_by_key(|(id, _)| *id);
        for (_, stream) in streams {
            stream.broken(self.port, cause, ts_ns, Some(unacked), sink);
        }
    }

    /// The server gave the connection up: its streams end as its own doing.
    pub(super) fn server_ended(&mut self, ts_ns: u64, sink: &mut impl Sink) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.complete(id, ts_ns, sink);
        }
        self.done = true;
    }

    /// Takes the streams in flight out of the gauge uncounted.
    pub(super) fn lose_requests(&mut self, sink: &mut impl Sink) {
        for (_, s) in self.streams.drain() {
            s.lost(self.port, sink);
        }
    }

    pub(super) fn skip(&mut self, why: Skip, sink: &mut impl Sink) {
        if self.done {
            return;
        }
        self.lose_requests(sink);
        self.done = true;
        sink.skipped(self.port, why);
    }
}

/// A HEADERS or PUSH_PROMISE payload without its padding, priority or
/// promised stream id: the header block fragment.
/// The header fields the follower reads; the values of others are passed
/// over (decoded only when the table needs them).
fn wanted(name: &[u8]) -> bool {
    matches!(
        name,
        b":method" | b":path" | b":status" | b"content-type" | b"grpc-timeout" | b"grpc-status"
    )
}

fn header_fragment<'a>(frame: &Frame<'a>) -> Option<&'a [u8]> {
    let mut p = frame.payload;
    let mut pad = 0usize;
    if frame.flags & flag::PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    if frame.kind == kind::HEADERS && frame.flags & flag::PRIORITY != 0 {
        p = p.get(5..)?;
    }
    if frame.kind == kind::PUSH_PROMISE {
        p = p.get(4..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

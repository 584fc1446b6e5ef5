//! From kernel events to requests: the [`Tracker`] keeps one `Conn` per
//! watched TCP connection — opened or adopted, the client's first sign of
//! leaving (FIN, RST, the kernel giving up), the server's close, its one close
//! reason (`clientgone::close_reason`) — and hands its bytes to the protocol
//! follower beside it (`exchange.rs`, HTTP/1), which turns them into requests
//! through the shared rules of `clientgone` and reports to a [`Sink`]. Pure:
//! no I/O, so every rule is tested with scripted events.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use clientgone::{Cause, ClientEvent, CloseFacts, GrpcMethods, close_reason};

use super::event::{Event, Kind, tcp};
use super::exchange::{Adopting, Exchange};
use super::http2::{H2Exchange, Names, PREFACE};
use super::sink::Sink;
use super::skip::Skip;
use crate::routes::RouteMatcher;

/// The largest request or response head followed across reads or writes.
pub(super) const MAX_HEAD: usize = 16 * 1024;

/// Hashes the kernel side's connection ids: counted up from 1 by the BPF
/// side, never chosen by a peer, so a multiplicative hash spreads them and
/// SipHash's protection against chosen keys buys nothing (it was 5 % of the
/// agent's time under load).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// All watched connections, by the id the kernel side gave them.
#[derive(Debug)]
pub struct Tracker {
    conns: HashMap<u64, Conn, BuildHasherDefault<IdHasher>>,
    routes: RouteMatcher,
    /// The gRPC methods of `--grpc-descriptor` (empty: every call `_OTHER`).
    grpc: GrpcMethods,
    /// Connections found open at start (socket inode → port), already counted
    /// as open, not yet adopted.
    seeded: HashMap<u64, u16>,
}

impl Tracker {
    /// A tracker counting paths under `routes`' templates (others `unmatched`).
    pub fn new(routes: RouteMatcher) -> Self {
        Self::with_grpc(routes, GrpcMethods::new())
    }

    /// The same, counting gRPC calls of `grpc`'s methods under their names
    /// (others `_OTHER`).
    pub fn with_grpc(routes: RouteMatcher, grpc: GrpcMethods) -> Self {
        Tracker {
            conns: HashMap::default(),
            routes,
            grpc,
            seeded: HashMap::new(),
        }
    }

    /// The connections open on the watched ports before the programs were
    /// attached (socket inode → port, from the kernel's table): counted as
    /// open now, so the gauge is right from the first scrape, and not again
    /// when their first event adopts them.
    pub fn seed(&mut self, open: HashMap<u64, u16>, sink: &mut impl Sink) {
        for &port in open.values() {
            sink.connection_opened(port);
        }
        self.seeded.extend(open);
    }

    /// Connections followed now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// No connection is followed.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Applies one event.
    pub fn on_event(&mut self, ev: &Event<'_>, sink: &mut impl Sink) {
        if let Kind::Open | Kind::Adopt { .. } = ev.kind {
            let conn = match ev.kind {
                Kind::Adopt { inode } => {
                    // Found open at start: already in the gauge.
                    if self.seeded.remove(&u64::from(inode)).is_none() {
                        sink.connection_opened(ev.port);
                    }
                    sink.connection_adopted(ev.port);
                    Conn::adopted(ev.port)
                }
                _ => {
                    sink.connection_opened(ev.port);
                    Conn::new(ev.port, ev.ts_ns)
                }
            };
            let mut conn = conn;
            conn.sent_seq = (ev.seq != 0).then_some(ev.seq);
            if let Some(old) = self.conns.insert(ev.conn, conn) {
                // Ids are never reused: this cannot happen, but if it did the
                // old connection must not stay counted as open.
                old.forget(sink);
            }
            return;
        }
        // Ids the kernel side never announced (its event was lost) are not
        // followed.
        let Some(conn) = self.conns.get_mut(&ev.conn) else {
            return;
        };
        // An HTTP/2 transfer's pieces come right after it: any other event
        // of the connection means it has all there is.
        if !matches!(ev.kind, Kind::More { .. }) {
            conn.flush(
                Names {
                    routes: &self.routes,
                    grpc: &self.grpc,
                },
                sink,
            );
        }
        match ev.kind {
            Kind::Open | Kind::Adopt { .. } => {}
            Kind::Tls {
                handshake,
                explicit,
            } => {
                let tls = conn.tls.get_or_insert_default();
                tls.done |= handshake;
                tls.explicit |= explicit;
            }
            Kind::TlsWriting => conn.writing = true,
            Kind::Recv if conn.follows(ev) => {
                if conn.h2.is_none() && conn.starts_http2(ev) {
                    conn.h2 = Some(H2Exchange::new(conn.port));
                }
                if conn.h2.is_some() {
                    let names = Names {
                        routes: &self.routes,
                        grpc: &self.grpc,
                    };
                    conn.h2_transfer(true, ev, names, sink);
                } else {
                    conn.exchange.on_recv(ev, &self.routes, sink);
                }
            }
            Kind::Send if conn.follows(ev) => {
                if ev.seq != 0 && !ev.tls {
                    conn.sent_seq = Some(ev.seq);
                }
                if conn.h2.is_some() {
                    let names = Names {
                        routes: &self.routes,
                        grpc: &self.grpc,
                    };
                    conn.h2_transfer(false, ev, names, sink);
                } else {
                    conn.exchange.on_send(ev, sink);
                    conn.writing = false;
                    conn.release(sink);
                }
            }
            Kind::More { offset, last } => {
                let names = Names {
                    routes: &self.routes,
                    grpc: &self.grpc,
                };
                conn.more(offset, last, ev, names, sink);
            }
            Kind::Recv | Kind::Send => {}
            Kind::Reset => conn.client_left(Cause::Reset, ev.ts_ns, ev.unacked, ev.seq, sink),
            Kind::State { old, new, error } => {
                conn.release(sink);
                if conn.on_state(old, new, error, ev, sink) {
                    self.conns.remove(&ev.conn);
                }
            }
        }
    }

    /// The kernel side could not deliver an event of connection `id`: it is
    /// forgotten (its request, if any, taken out of the in-flight gauge).
    pub fn lost(&mut self, id: u64, sink: &mut impl Sink) {
        if let Some(conn) = self.conns.remove(&id) {
            sink.skipped(conn.port, Skip::Lost);
            conn.forget(sink);
        }
    }
}

/// One watched TCP connection: its own facts (the client's first sign of
/// leaving, the server's close, its lifetime) and the exchange its bytes
/// carry.
#[derive(Debug)]
struct Conn {
    port: u16,
    /// `None`: it predates the agent.
    opened_ns: Option<u64>,
    /// The first sign of the client leaving.
    client_event: Option<ClientEvent>,
    /// The server closed its side first (FIN_WAIT1) or after the client (LAST_ACK).
    server_closed: bool,
    /// `Some` once its TLS library is probed (its bytes come as plaintext).
    tls: Option<TlsState>,
    /// An `SSL_write` is sending: its plaintext comes at its return.
    writing: bool,
    /// The client's first sign, held until that plaintext came.
    held: Option<Held>,
    exchange: Exchange,
    /// The HTTP/2 exchange, once the client's first bytes were its preface:
    /// it follows the connection from then on, in the HTTP/1 one's place.
    h2: Option<H2Exchange>,
    /// An HTTP/2 transfer whose further pieces (`Kind::More`) are coming.
    pending: Option<Pending>,
    /// The socket's `write_seq` after the last write seen (plaintext):
    /// a client's sign that comes with a later one came after bytes whose
    /// `Send` is still on its way.
    sent_seq: Option<u32>,
}

/// An HTTP/2 transfer being put together from its pieces.
#[derive(Debug)]
struct Pending {
    recv: bool,
    ts_ns: u64,
    len: usize,
    /// What was captured: bytes from an offset, in order.
    parts: Vec<(usize, Vec<u8>)>,
}

/// A client's first sign of leaving that came while an `SSL_write` was
/// still to report what it sent: applied once it has (or at the next state
/// change), so that a response the client read whole before leaving is not
/// taken for one it broke off.
#[derive(Clone, Copy, Debug)]
struct Held {
    cause: Cause,
    ts_ns: u64,
    unacked: u32,
}

/// What is known of a TLS connection's handshake.
#[derive(Clone, Copy, Debug, Default)]
struct TlsState {
    /// It completed (said so, or plaintext moved).
    done: bool,
    /// The server runs it itself and a step of it was seen: one that never
    /// completes can be told. A server that lets its first read or write
    /// run the handshake says nothing until it is done, so a connection of
    /// it that ends before any plaintext closes with the usual reasons.
    explicit: bool,
}

impl Conn {
    fn new(port: u16, opened_ns: u64) -> Self {
        Conn {
            port,
            opened_ns: Some(opened_ns),
            client_event: None,
            server_closed: false,
            tls: None,
            writing: false,
            held: None,
            exchange: Exchange::new(port),
            h2: None,
            pending: None,
            sent_seq: None,
        }
    }

    /// A connection found established: followed from its next request head.
    fn adopted(port: u16) -> Self {
        let mut conn = Conn::new(port, 0);
        conn.opened_ns = None;
        conn.exchange.adopting = Some(Adopting::Fresh);
        // It carried requests before (or waited for its first): a close of it
        // while idle is a kept-alive connection's, not a header timeout.
        conn.exchange.served_any = true;
        conn
    }

    /// Whether a transfer's bytes are the exchange's: all of a plaintext
    /// connection's; of a TLS one, only the plaintext (which also says the
    /// handshake is done).
    fn follows(&mut self, ev: &Event<'_>) -> bool {
        if ev.tls {
            self.tls.get_or_insert_default().done = true;
            return true;
        }
        self.tls.is_none()
    }

    fn forget(mut self, sink: &mut impl Sink) {
        self.exchange.lose_request(sink);
        if let Some(h2) = &mut self.h2 {
            h2.lose_requests(sink);
        }
        sink.connection_lost(self.port);
    }

    /// The client's first bytes on a connection seen from its start are the
    /// HTTP/2 preface (or its beginning). One adopted mid-way cannot be
    /// followed: its header tables are unknown (the HTTP/1 exchange skips it).
    fn starts_http2(&self, ev: &Event<'_>) -> bool {
        self.opened_ns.is_some()
            && !self.exchange.served_any
            && !self.exchange.has_request()
            && self.exchange.head.is_empty()
            && ev.data.len() >= 4
            && (ev.data.starts_with(PREFACE) || PREFACE.starts_with(ev.data))
    }

    /// A transfer of an HTTP/2 connection: followed at once if the event
    /// holds all that was captured of it, else held for the pieces the
    /// kernel sends right after it (`more`).
    fn h2_transfer(&mut self, recv: bool, ev: &Event<'_>, names: Names<'_>, sink: &mut impl Sink) {
        let len = ev.len as usize;
        if ev.more {
            self.pending = Some(Pending {
                recv,
                ts_ns: ev.ts_ns,
                len,
                parts: vec![(0, ev.data.to_vec())],
            });
            return;
        }
        self.h2_feed(recv, &[(0, ev.data)], len, ev.ts_ns, names, sink);
    }

    /// A piece of the pending transfer; the transfer is followed at its
    /// last piece (or at the connection's next event, had that been lost).
    fn more(
        &mut self,
        offset: u32,
        last: bool,
        ev: &Event<'_>,
        names: Names<'_>,
        sink: &mut impl Sink,
    ) {
        let Some(p) = &mut self.pending else { return };
        if !ev.data.is_empty() {
            p.parts.push((offset as usize, ev.data.to_vec()));
        }
        if last {
            self.flush(names, sink);
        }
    }

    /// Follows the pending transfer with what was captured of it.
    fn flush(&mut self, names: Names<'_>, sink: &mut impl Sink) {
        if let Some(p) = self.pending.take() {
            let parts: Vec<(usize, &[u8])> =
                p.parts.iter().map(|(at, b)| (*at, b.as_slice())).collect();
            self.h2_feed(p.recv, &parts, p.len, p.ts_ns, names, sink);
        }
    }

    fn h2_feed(
        &mut self,
        recv: bool,
        parts: &[(usize, &[u8])],
        len: usize,
        ts_ns: u64,
        names: Names<'_>,
        sink: &mut impl Sink,
    ) {
        let Some(h2) = &mut self.h2 else { return };
        if recv {
            h2.on_recv(parts, len, ts_ns, names, sink);
        } else {
            h2.on_send(parts, len, ts_ns, sink);
            self.writing = false;
            self.release(sink);
        }
    }

    /// Whether a request is in flight (for the close reason).
    fn in_flight(&self) -> bool {
        self.h2
            .as_ref()
            .map_or_else(|| self.exchange.in_flight(), H2Exchange::in_flight)
    }

    /// Whether a followed request is in flight.
    fn has_request(&self) -> bool {
        self.h2
            .as_ref()
            .map_or_else(|| self.exchange.has_request(), H2Exchange::in_flight)
    }

    /// Bytes of an HTTP/1 request head arrived and it is not complete.
    fn partial_head(&self) -> bool {
        self.h2.is_none() && !self.exchange.head.is_empty()
    }

    fn served_any(&self) -> bool {
        self.h2
            .as_ref()
            .map_or(self.exchange.served_any, |h| h.served_any)
    }

    fn asked_close(&self) -> bool {
        self.h2
            .as_ref()
            .map_or(self.exchange.asked_close, |h| h.asked_close)
    }

    fn server_ended(&mut self, ts_ns: u64, sink: &mut impl Sink) {
        match &mut self.h2 {
            Some(h2) => h2.server_ended(ts_ns, sink),
            None => self.exchange.server_ended(ts_ns, sink),
        }
    }

    /// Applies a client's sign held for an `SSL_write`'s plaintext.
    fn release(&mut self, sink: &mut impl Sink) {
        if let Some(held) = self.held.take() {
            self.writing = false;
            self.client_left(held.cause, held.ts_ns, held.unacked, 0, sink);
        }
    }

    /// The first sign of the client going: a break if a request is in flight.
    /// `seq`: the socket's `write_seq` at that sign (0: not told).
    fn client_left(
        &mut self,
        cause: Cause,
        ts_ns: u64,
        unacked: u32,
        seq: u32,
        sink: &mut impl Sink,
    ) {
        // After the server's own close, whatever the client does is the end
        // of a connection the server gave up: not a client's event.
        if self.client_event.is_some() || self.server_closed || self.held.is_some() {
            return;
        }
        // The server wrote more than the `Send` events seen so far: the
        // client's sign came after bytes whose event is still on its way (a
        // client can read a response and leave before the tracepoint after
        // the write fires). Held until that write is seen, as for TLS.
        let unseen_write =
            self.tls.is_none() && seq != 0 && self.sent_seq.is_some_and(|sent| sent != seq);
        if (self.writing || unseen_write) && self.has_request() {
            self.held = Some(Held {
                cause,
                ts_ns,
                unacked,
            });
            return;
        }
        // A request begun before the agent and not followed is still in
        // flight for the connection's close reason; it is no break counted.
        self.client_event = Some(ClientEvent {
            cause,
            in_flight: self.in_flight(),
            partial_head: self.partial_head(),
        });
        match &mut self.h2 {
            Some(h2) => h2.client_left(cause, ts_ns, unacked, sink),
            None => self.exchange.client_left(cause, ts_ns, unacked, sink),
        }
    }

    /// Returns whether the connection is gone.
    fn on_state(
        &mut self,
        old: u8,
        new: u8,
        error: i32,
        ev: &Event<'_>,
        sink: &mut impl Sink,
    ) -> bool {
        match new {
            tcp::CLOSE_WAIT => self.client_left(Cause::Closed, ev.ts_ns, ev.unacked, ev.seq, sink),
            tcp::FIN_WAIT1 | tcp::LAST_ACK if !self.server_closed => {
                if self.client_event.is_none() {
                    self.server_ended(ev.ts_ns, sink);
                }
                self.server_closed = true;
            }
            tcp::CLOSE => {
                match error {
                    // Final: nothing follows a close, so nothing is held.
                    libc::ECONNRESET | libc::EPIPE => {
                        self.client_left(Cause::Reset, ev.ts_ns, ev.unacked, 0, sink)
                    }
                    libc::ETIMEDOUT | libc::EHOSTUNREACH | libc::ENETUNREACH => {
                        self.client_left(Cause::Timeout, ev.ts_ns, ev.unacked, 0, sink)
                    }
                    // A close with no error from ESTABLISHED without either
                    // side's FIN: the socket was torn down (an RST the server
                    // sent, say, closing with unread data) — the server's.
                    _ => {
                        if old == tcp::ESTABLISHED && self.client_event.is_none() {
                            self.server_ended(ev.ts_ns, sink);
                            self.server_closed = true;
                        }
                    }
                }
                if self.has_request() {
                    // Gone with no client sign and no server close seen.
                    self.server_ended(ev.ts_ns, sink);
                }
                let reason = close_reason(CloseFacts {
                    client_event: self.client_event,
                    // The server closed a connection on which no whole head
                    // came (its own header timeout): the client's doing.
                    // (HTTP/2 has no heads to wait for.)
                    header_timeout: self.server_closed
                        && self.h2.is_none()
                        && (self.partial_head() || !self.served_any()),
                    partial_head: self.partial_head(),
                    served_any: self.served_any(),
                    client_asked_close: self.asked_close(),
                    // Adopted ones were past their handshake.
                    tls_handshake_incomplete: self.tls.is_some_and(|tls| tls.explicit && !tls.done)
                        && self.opened_ns.is_some(),
                });
                let lifetime = self
                    .opened_ns
                    .map(|opened| nanos(ev.ts_ns.saturating_sub(opened)));
                sink.connection_closed(self.port, reason, lifetime);
                return true;
            }
            _ => {}
        }
        false
    }
}

pub(super) fn nanos(n: u64) -> Duration {
    Duration::from_nanos(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteTable;
    use crate::watch::sink::Ended;
    use clientgone::{CloseReason, End, Record};

    #[derive(Debug, Default)]
    struct Log(Vec<String>);

    impl Sink for Log {
        fn connection_opened(&mut self, port: u16) {
            self.0.push(format!("open {port}"));
        }
        fn connection_adopted(&mut self, port: u16) {
            self.0.push(format!("adopt {port}"));
        }
        fn connection_closed(&mut self, _: u16, reason: CloseReason, life: Option<Duration>) {
            let timed = if life.is_some() { "" } else { " untimed" };
            self.0.push(format!("close {}{timed}", reason.as_str()));
        }
        fn connection_lost(&mut self, _: u16) {
            self.0.push("conn lost".into());
        }
        fn request_started(&mut self, _: u16, method: &'static str, route: &str) {
            self.0.push(format!("start {method} {route}"));
        }
        fn request_ended(&mut self, _: u16, r: &Record<'_>, ended: &Ended<'_>) {
            let unacked = ended.unacked.unwrap_or(0);
            let end = match r.end {
                End::Completed => "completed".to_owned(),
                End::Disconnect { phase, cause } => {
                    format!("{} {}", phase.as_str(), cause.as_str())
                }
                _ => "other".to_owned(),
            };
            self.0.push(format!(
                "end {} {} {} {end} sent={} unacked={unacked} ms={}",
                r.method,
                r.route,
                r.status,
                r.body_bytes_sent,
                r.elapsed.as_millis()
            ));
        }
        fn request_lost(&mut self, _: u16, method: &'static str, route: &str) {
            self.0.push(format!("lost {method} {route}"));
        }
        fn call_started(&mut self, _: u16, method: &str, rpc_type: clientgone::RpcType) {
            self.0.push(format!("call {method} {}", rpc_type.as_str()));
        }
        fn call_ended(&mut self, _: u16, r: &clientgone::CallRecord<'_>, _: &Ended<'_>) {
            let end = match r.end {
                End::Completed => "completed".to_owned(),
                End::Disconnect { phase, cause } => {
                    format!("{} {}", phase.as_str(), cause.as_str())
                }
                _ => "other".to_owned(),
            };
            self.0.push(format!(
                "call-end {} {} {end} sent={}",
                r.method,
                r.status.as_str(),
                r.body_bytes_sent
            ));
        }
        fn call_lost(&mut self, _: u16, method: &str, _: clientgone::RpcType) {
            self.0.push(format!("call-lost {method}"));
        }
        fn skipped(&mut self, _: u16, why: Skip) {
            self.0.push(format!("skip {}", why.as_str()));
        }
    }

    /// Scripted events of one connection, 1 ms apart.
    struct Script {
        tracker: Tracker,
        log: Log,
        ts: u64,
        /// The transfers are plaintext from the TLS library.
        tls: bool,
        /// The process uses a probed TLS library.
        ssl_process: bool,
        /// The socket's write_seq the next event tells (0: not told).
        seq: u32,
    }

    impl Script {
        /// A script whose events tell `seq` as the socket's write_seq, its
        /// tracker counting under `/users/{id}` (and `grpc`'s methods), no
        /// event applied yet.
        fn blank(seq: u32, grpc: clientgone::GrpcMethods) -> Self {
            let routes = RouteTable::new(["/users/{id}".to_owned()]).unwrap();
            Script {
                tracker: Tracker::with_grpc(routes.matcher(), grpc),
                log: Log::default(),
                ts: 0,
                tls: false,
                ssl_process: false,
                seq,
            }
        }

        fn new() -> Self {
            Self::with_seq(0)
        }

        /// A connection whose events tell the socket's write_seq, from `seq`.
        fn with_seq(seq: u32) -> Self {
            let mut s = Script::blank(seq, clientgone::GrpcMethods::new());
            s.event(Kind::Open, 0, b"", b"");
            s
        }

        /// A connection found open: its first event is the kernel's adoption.
        fn adopted(inode: u32) -> Self {
            let mut s = Script::blank(0, clientgone::GrpcMethods::new());
            s.tracker.seed(HashMap::from([(5, 8080)]), &mut s.log);
            s.event(Kind::Adopt { inode }, 0, b"", b"");
            s
        }

        fn event(&mut self, kind: Kind, len: usize, data: &[u8], tail: &[u8]) -> &mut Self {
            self.ts += 1_000_000;
            let ev = Event {
                seq: self.seq,
                conn: 1,
                ts_ns: self.ts,
                port: 8080,
                kind,
                len: len as u32,
                unacked: 77,
                data,
                tail,
                tls: self.tls,
                ssl_process: self.ssl_process,
                more: false,
            };
            self.tracker.on_event(&ev, &mut self.log);
            self
        }

        /// The connection's TLS library is probed: what follows is plaintext.
        /// `handshake`: it completed; else a step of an explicit one.
        fn tls(&mut self, handshake: bool) -> &mut Self {
            let explicit = !handshake;
            self.event(
                Kind::Tls {
                    handshake,
                    explicit,
                },
                0,
                b"",
                b"",
            );
            self.tls = true;
            self
        }

        fn recv(&mut self, bytes: &[u8]) -> &mut Self {
            let tail = &bytes[bytes.len().saturating_sub(8)..];
            self.event(Kind::Recv, bytes.len(), bytes, tail)
        }

        fn send(&mut self, bytes: &[u8]) -> &mut Self {
            let tail = &bytes[bytes.len().saturating_sub(8)..];
            self.event(Kind::Send, bytes.len(), bytes, tail)
        }

        /// A transfer of `len` bytes of which only `head` and `tail` were captured.
        fn send_big(&mut self, len: usize, head: &[u8], tail: &[u8]) -> &mut Self {
            self.event(Kind::Send, len, head, tail)
        }

        /// A server write of whole HTTP/2 frames as the kernel reports it:
        /// the event holds the first CAPTURE bytes, then pieces of up to
        /// CAPTURE bytes hold every frame header and every payload but
        /// DATA's beyond them (DATA payloads passed over), the last flagged.
        fn send_walked(&mut self, bytes: &[u8]) -> &mut Self {
            let cap = super::super::event::CAPTURE;
            let head = &bytes[..bytes.len().min(cap)];
            self.ts += 1_000_000;
            let mut ev = Event {
                seq: self.seq,
                conn: 1,
                ts_ns: self.ts,
                port: 8080,
                kind: Kind::Send,
                len: bytes.len() as u32,
                unacked: 0,
                data: head,
                tail: b"",
                tls: self.tls,
                ssl_process: false,
                more: head.len() < bytes.len(),
            };
            self.tracker.on_event(&ev, &mut self.log);
            if !ev.more {
                return self;
            }
            // The runs the kernel sends: (from, to) of the transfer.
            let (mut runs, mut at) = (Vec::new(), 0);
            while at < bytes.len() {
                let len = (usize::from(bytes[at]) << 16)
                    | (usize::from(bytes[at + 1]) << 8)
                    | usize::from(bytes[at + 2]);
                let payload = at + 9;
                let end = payload + len;
                runs.push((at, if bytes[at + 3] == 0 { payload } else { end }));
                at = end;
            }
            let mut pieces = Vec::new();
            for (from, to) in runs {
                let mut from = from.max(cap);
                while from < to {
                    let n = (to - from).min(cap);
                    pieces.push((from, &bytes[from..from + n]));
                    from += n;
                }
            }
            let count = pieces.len();
            for (i, (offset, piece)) in pieces.into_iter().enumerate() {
                ev.kind = Kind::More {
                    offset: offset as u32,
                    last: i + 1 == count,
                };
                ev.data = piece;
                ev.more = false;
                self.tracker.on_event(&ev, &mut self.log);
            }
            if count == 0 {
                ev.kind = Kind::More {
                    offset: bytes.len() as u32,
                    last: true,
                };
                ev.data = b"";
                ev.more = false;
                self.tracker.on_event(&ev, &mut self.log);
            }
            self
        }

        fn state(&mut self, old: u8, new: u8, error: i32) -> &mut Self {
            self.event(Kind::State { old, new, error }, 0, b"", b"")
        }

        fn fin(&mut self) -> &mut Self {
            self.state(tcp::ESTABLISHED, tcp::CLOSE_WAIT, 0)
        }

        fn closed(&mut self) -> &mut Self {
            self.state(tcp::LAST_ACK, tcp::CLOSE, 0)
        }

        fn rst(&mut self) -> &mut Self {
            self.event(Kind::Reset, 0, b"", b"");
            self.state(tcp::ESTABLISHED, tcp::CLOSE, libc::ECONNRESET)
        }

        fn log(&self) -> Vec<&str> {
            self.log.0.iter().map(String::as_str).collect()
        }
    }

    const GET: &[u8] = b"GET /users/42?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn a_keep_alive_sequence_completes_every_request_and_closes_idle() {
        let mut s = Script::new();
        for _ in 0..3 {
            s.recv(GET).send(OK);
        }
        s.fin().state(tcp::CLOSE_WAIT, tcp::LAST_ACK, 0).closed();
        let mut want = vec!["open 8080"];
        for _ in 0..3 {
            want.push("start GET /users/{id}");
            want.push("end GET /users/{id} 200 completed sent=5 unacked=0 ms=1");
        }
        want.push("close idle");
        assert_eq!(s.log(), want);
        assert!(s.tracker.is_empty());
    }

    #[test]
    fn an_adopted_idle_connection_counts_from_its_next_request_and_closes_untimed() {
        // Inode 5 was found open at start: counted open once, then adopted.
        let mut s = Script::adopted(5);
        s.recv(GET)
            .send(OK)
            .recv(b"GET /slow HTTP/1.1\r\n\r\n")
            .fin();
        s.state(tcp::CLOSE_WAIT, tcp::LAST_ACK, 0).closed();
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "adopt 8080",
                "start GET /users/{id}",
                "end GET /users/{id} 200 completed sent=5 unacked=0 ms=1",
                "start GET unmatched",
                "end GET unmatched 499 handler closed sent=0 unacked=77 ms=1",
                "close client_abort untimed"
            ]
        );
        // One not found at start (opened while the programs were attached)
        // is counted open when adopted.
        assert_eq!(
            Script::adopted(6).log(),
            ["open 8080", "open 8080", "adopt 8080"]
        );
    }

    #[test]
    fn an_adopted_connection_waits_out_the_exchange_it_was_found_in() {
        // Found mid-response: the rest of that response belongs to no request
        // seen; the client's next head starts one.
        let mut s = Script::adopted(5);
        s.send_big(1 << 20, b"", b"xxxxxxxx").recv(GET).send(OK);
        // Found mid-upload: the body's bytes are not a head, whatever they
        // hold; the client leaving then is no break of a request seen.
        let mut u = Script::adopted(5);
        u.recv(b"name=value&more=1")
            .recv(b"GET /users/1 HTTP/1.1\r\n")
            .fin();
        u.state(tcp::CLOSE_WAIT, tcp::LAST_ACK, 0).closed();
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "adopt 8080",
                "start GET /users/{id}",
                "end GET /users/{id} 200 completed sent=5 unacked=0 ms=1"
            ]
        );
        assert_eq!(
            u.log(),
            ["open 8080", "adopt 8080", "close client_abort untimed"]
        );
    }

    #[test]
    fn a_fin_mid_handler_is_a_handler_break_with_499() {
        let mut s = Script::new();
        s.recv(b"GET /slow HTTP/1.1\r\n\r\n").fin();
        // The server answers into the half-closed socket later: not counted again.
        s.send(OK).state(tcp::CLOSE_WAIT, tcp::LAST_ACK, 0).closed();
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "start GET unmatched",
                "end GET unmatched 499 handler closed sent=0 unacked=77 ms=1",
                "close client_abort"
            ]
        );
    }

    #[test]
    fn an_rst_mid_response_is_a_response_body_reset_with_the_status_sent() {
        let mut s = Script::new();
        s.recv(GET)
            .send_big(
                1 << 20,
                b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\nxxxx",
                b"xxxxxxxx",
            )
            .rst();
        let sent = (1 << 20) - b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n".len();
        assert_eq!(
            s.log(),
            [
                "open 8080".to_owned(),
                "start GET /users/{id}".to_owned(),
                format!(
                    "end GET /users/{{id}} 200 response_body reset sent={sent} unacked=77 ms=2"
                ),
                "close client_abort".to_owned()
            ]
        );
    }

    #[test]
    fn a_half_sent_body_is_a_request_body_break_even_if_answered() {
        let mut s = Script::new();
        s.recv(b"POST /upload HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789")
            .send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            .fin();
        assert_eq!(
            s.log()[2],
            "end POST unmatched 499 request_body closed sent=0 unacked=77 ms=2"
        );
    }

    #[test]
    fn bodies_split_over_reads_and_writes_complete_at_their_length() {
        let mut s = Script::new();
        s.recv(b"POST /users/1 HTTP/1.1\r\nContent-Length: 6\r\n")
            .recv(b"\r\nabc")
            .recv(b"def")
            .send(b"HTTP/1.1 201 Created\r\nContent-")
            .send(b"Length: 4\r\n\r\nab")
            .send(b"cd")
            .recv(GET)
            .send(OK);
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "start POST /users/{id}",
                "end POST /users/{id} 201 completed sent=4 unacked=0 ms=4",
                "start GET /users/{id}",
                "end GET /users/{id} 200 completed sent=5 unacked=0 ms=1",
            ]
        );
    }

    #[test]
    fn chunked_responses_end_at_the_last_chunk_even_when_not_captured() {
        let mut s = Script::new();
        s.recv(GET)
            .send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .send(b"5\r\nhello\r\n")
            .send_big(5000, b"1000\r\nxxxx", b"x\r\n0\r\n\r\n");
        assert_eq!(
            s.log()[2],
            "end GET /users/{id} 200 completed sent=5010 unacked=0 ms=3"
        );
        // A chunked request body, then a FIN mid-handler.
        let mut s = Script::new();
        s.recv(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            .recv(b"0\r\n\r\n")
            .fin();
        assert_eq!(
            s.log()[2],
            "end POST unmatched 499 handler closed sent=0 unacked=77 ms=2"
        );
    }

    #[test]
    fn close_delimited_responses_complete_when_the_server_closes() {
        let mut s = Script::new();
        s.recv(b"GET / HTTP/1.0\r\n\r\n")
            .send(b"HTTP/1.0 200 OK\r\n\r\nbody")
            .send(b"more")
            .state(tcp::ESTABLISHED, tcp::FIN_WAIT1, 0)
            .state(tcp::FIN_WAIT1, tcp::CLOSE, 0);
        assert_eq!(
            s.log()[2..],
            [
                "end GET unmatched 200 completed sent=8 unacked=0 ms=3",
                "close idle"
            ]
        );
    }

    #[test]
    fn the_servers_own_close_mid_request_is_never_a_client_break() {
        let mut s = Script::new();
        s.recv(GET)
            .state(tcp::ESTABLISHED, tcp::FIN_WAIT1, 0)
            .state(tcp::FIN_WAIT1, tcp::CLOSE, libc::ECONNRESET);
        assert_eq!(
            s.log()[2..],
            [
                "end GET /users/{id} 500 completed sent=0 unacked=0 ms=1",
                "close server"
            ]
        );
    }

    #[test]
    fn timeouts_resets_and_partial_heads_close_with_their_reasons() {
        let mut s = Script::new();
        s.recv(GET)
            .send_big(
                100_000,
                b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n",
                b"",
            )
            .state(tcp::ESTABLISHED, tcp::CLOSE, libc::ETIMEDOUT);
        assert!(
            s.log()[2].contains("200 response_body timeout"),
            "{:?}",
            s.log()
        );
        assert_eq!(s.log()[3], "close timeout");

        let mut s = Script::new();
        s.recv(GET).send(OK).rst();
        assert_eq!(s.log()[3], "close reset");

        let mut s = Script::new();
        s.recv(b"GET /users/1 HTTP/1.1\r\nHo").fin().closed();
        assert_eq!(s.log()[1..], ["close incomplete_request"]);

        let mut s = Script::new();
        s.recv(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .send(OK)
            .state(tcp::ESTABLISHED, tcp::FIN_WAIT1, 0)
            .state(tcp::FIN_WAIT2, tcp::CLOSE, 0);
        assert_eq!(s.log()[3], "close idle");
    }

    #[test]
    fn bodiless_answers_and_interim_heads() {
        let mut s = Script::new();
        s.recv(b"HEAD /users/1 HTTP/1.1\r\n\r\n")
            .send(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
            .recv(b"POST /users/1 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .send(b"HTTP/1.1 100 Continue\r\n\r\n")
            .recv(b"ok")
            .send(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(
            s.log()[1..],
            [
                "start HEAD /users/{id}",
                "end HEAD /users/{id} 200 completed sent=0 unacked=0 ms=1",
                "start POST /users/{id}",
                "end POST /users/{id} 204 completed sent=0 unacked=0 ms=3",
            ]
        );
    }

    #[test]
    fn a_connection_is_handed_over_only_when_the_server_agrees() {
        // The layer's rule: a 101, or a success answer to CONNECT. The request
        // itself completes at its head; the bytes after it are not HTTP.
        let ws = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let mut s = Script::new();
        s.recv(ws)
            .send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
            .recv(b"\x81\x05hello")
            .closed();
        let mut c = Script::new();
        c.recv(b"CONNECT a:443 HTTP/1.1\r\n\r\n")
            .send(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .closed();
        // Declined: an answer like any other, and the connection goes on.
        let mut d = Script::new();
        d.recv(ws)
            .send(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
            .recv(b"CONNECT a:443 HTTP/1.1\r\n\r\n")
            .send(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .closed();
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "start GET unmatched",
                "end GET unmatched 101 completed sent=0 unacked=0 ms=1",
                "skip upgraded",
                "close server"
            ]
        );
        assert_eq!(
            c.log()[2],
            "end CONNECT unmatched 200 completed sent=0 unacked=0 ms=1"
        );
        assert_eq!(c.log()[3], "skip upgraded");
        assert_eq!(
            d.log()[1..5],
            [
                "start GET unmatched",
                "end GET unmatched 426 completed sent=0 unacked=0 ms=1",
                "start CONNECT unmatched",
                "end CONNECT unmatched 405 completed sent=0 unacked=0 ms=1",
            ]
        );
    }

    #[test]
    fn what_cannot_be_followed_is_skipped_and_counted() {
        for (bytes, why) in [
            (
                &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
                "skip tls",
            ),
            (b"\x00\x01garbage\r\n\r\n", "skip unparsed"),
        ] {
            let mut s = Script::new();
            s.recv(bytes).closed();
            assert_eq!(s.log()[1], why, "{bytes:?}");
            assert_eq!(s.log().len(), 3, "{:?}", s.log());
        }
        // HTTP/2 from the connection's start is followed; one adopted
        // mid-way cannot be (its header tables are unknown): its frames are
        // no request head, and it is skipped once a turn shows it.
        let mut s = Script::new();
        s.recv(super::PREFACE).closed();
        assert!(
            s.log().iter().all(|l| !l.starts_with("skip")),
            "{:?}",
            s.log()
        );
        let settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        let mut s = Script::adopted(5);
        s.recv(settings).send(settings).recv(settings).closed();
        assert!(s.log().contains(&"skip unparsed"), "{:?}", s.log());
        // Pipelined: the second head arrives before the first answer.
        let mut s = Script::new();
        s.recv(GET).recv(GET).send(OK);
        assert_eq!(s.log()[2..], ["lost GET /users/{id}", "skip pipelined"]);
        // A head longer than the capture.
        let mut s = Script::new();
        s.event(Kind::Recv, 5000, &[b'G'; 1024], b"");
        assert_eq!(s.log()[1..], ["skip unparsed"]);
        // sendfile before any head.
        let mut s = Script::new();
        s.recv(GET).event(Kind::Send, 5000, b"", b"");
        assert_eq!(s.log()[2..], ["lost GET /users/{id}", "skip unparsed"]);
    }

    #[test]
    fn tls_plaintext_is_followed_like_plaintext() {
        // Tied at the handshake's first read; the requests in plaintext.
        let mut s = Script::new();
        s.tls(false).tls(true);
        s.recv(GET)
            .send(OK)
            .recv(b"GET /slow HTTP/1.1\r\n\r\n")
            .fin();
        s.state(tcp::CLOSE_WAIT, tcp::LAST_ACK, 0).closed();
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "start GET /users/{id}",
                "end GET /users/{id} 200 completed sent=5 unacked=0 ms=1",
                "start GET unmatched",
                "end GET unmatched 499 handler closed sent=0 unacked=77 ms=1",
                "close client_abort"
            ]
        );
        // A handshake completed inside the first read (no SSL_do_handshake
        // seen): the plaintext itself says it is done.
        let mut r = Script::new();
        r.tls(false).recv(GET).send(OK).rst();
        assert_eq!(r.log()[3], "close reset");
    }

    #[test]
    fn a_fin_that_beats_an_ssl_write_s_plaintext_waits_for_it() {
        // The response's records reached the client, which read them and left
        // before the writer's uprobe reported the plaintext: completed.
        let mut s = Script::new();
        s.tls(true);
        s.recv(GET)
            .event(Kind::TlsWriting, 0, b"", b"")
            .fin()
            .send(OK);
        s.state(tcp::CLOSE_WAIT, tcp::LAST_ACK, 0).closed();
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "start GET /users/{id}",
                "end GET /users/{id} 200 completed sent=5 unacked=0 ms=3",
                "close idle"
            ]
        );
        // A write that never reports (the server gave up): the FIN is applied
        // at the next state change, as the break it is.
        let mut b = Script::new();
        b.tls(true);
        b.recv(GET).event(Kind::TlsWriting, 0, b"", b"").fin().rst();
        assert_eq!(
            b.log()[2..],
            [
                "end GET /users/{id} 499 handler closed sent=0 unacked=77 ms=2",
                "close client_abort"
            ]
        );
    }

    #[test]
    fn a_tls_handshake_that_never_completes_closes_as_such_and_breaks_nothing() {
        for cut in [Script::fin as fn(&mut Script) -> &mut Script, Script::rst] {
            let mut s = Script::new();
            s.tls(false);
            cut(&mut s);
            s.closed();
            assert_eq!(s.log(), ["open 8080", "close tls_handshake"]);
        }
        // Completed, then left idle: an idle close.
        let mut s = Script::new();
        s.tls(false).tls(true).fin().closed();
        assert_eq!(s.log(), ["open 8080", "close idle"]);
        // Adopted: its handshake was before the agent.
        let mut a = Script::adopted(5);
        a.tls(false).fin().closed();
        assert_eq!(a.log()[2], "close idle untimed");
        // Tied, but the handshake run implicitly by the first read: nothing
        // says whether it completed, so the usual reason.
        let mut i = Script::new();
        i.event(
            Kind::Tls {
                handshake: false,
                explicit: false,
            },
            0,
            b"",
            b"",
        );
        i.fin().closed();
        assert_eq!(i.log(), ["open 8080", "close idle"]);
    }

    #[test]
    fn tls_that_cannot_be_read_is_skipped_with_why() {
        let hello = &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..];
        // Not OpenSSL (Go's crypto/tls, rustls): tls.
        let mut s = Script::new();
        s.recv(hello).closed();
        assert_eq!(s.log()[1], "skip tls");
        // OpenSSL in the process, but the connection was never tied to it.
        let mut u = Script::new();
        u.ssl_process = true;
        u.recv(hello).closed();
        assert_eq!(u.log()[1], "skip tls_unmapped");
        // Ciphertext reported on a tied connection is never parsed.
        let mut t = Script::new();
        t.tls(true);
        t.tls = false;
        t.recv(hello).recv(GET);
        assert_eq!(t.log(), ["open 8080"]);
    }

    #[test]
    fn lost_events_forget_the_connection_and_its_request() {
        let mut s = Script::new();
        s.recv(GET);
        s.tracker.lost(1, &mut s.log);
        s.fin();
        assert_eq!(
            s.log()[2..],
            ["skip lost_events", "lost GET /users/{id}", "conn lost"]
        );
        assert!(s.tracker.is_empty());
    }

    #[test]
    fn random_bytes_never_panic_and_labels_stay_bounded() {
        let mut rng = fastrand::Rng::with_seed(7);
        let routes = RouteTable::new(["/users/{id}".to_owned()]).unwrap();
        let mut tracker = Tracker::new(routes.matcher());
        let mut log = Log::default();
        let pieces: [&[u8]; 6] = [
            b"GET /users/",
            b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"0\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n",
        ];
        for i in 0..20_000u64 {
            let mut data = Vec::new();
            for _ in 0..rng.usize(0..4) {
                if rng.bool() {
                    data.extend_from_slice(pieces[rng.usize(..pieces.len())]);
                } else {
                    data.extend((0..rng.usize(0..40)).map(|_| rng.u8(..)));
                }
            }
            data.truncate(super::super::event::CAPTURE);
            let len = data.len()
                + if rng.u8(..) < 20 {
                    rng.usize(0..5000)
                } else {
                    0
                };
            let kind = match rng.u8(0..11) {
                0 => Kind::Open,
                10 => Kind::Tls {
                    handshake: rng.bool(),
                    explicit: rng.bool(),
                },
                1..=4 => Kind::Recv,
                5..=7 => Kind::Send,
                8 => Kind::Reset,
                _ => Kind::State {
                    old: rng.u8(0..13),
                    new: rng.u8(0..13),
                    error: [0, libc::ECONNRESET, libc::ETIMEDOUT, -5][rng.usize(0..4)],
                },
            };
            let tail_at = data.len().saturating_sub(rng.usize(0..9));
            let ev = Event {
                seq: 0,
                conn: rng.u64(0..4),
                ts_ns: i * 1000,
                port: 80,
                kind,
                len: len as u32,
                unacked: 0,
                data: &data,
                tail: &data[tail_at..],
                tls: rng.bool(),
                ssl_process: rng.bool(),
                more: false,
            };
            tracker.on_event(&ev, &mut log);
        }
        let routes: std::collections::HashSet<&str> = log
            .0
            .iter()
            .filter_map(|l| l.strip_prefix("start "))
            .filter_map(|l| l.split(' ').nth(1))
            .collect();
        assert!(
            routes
                .iter()
                .all(|r| ["/users/{id}", "unmatched"].contains(r)),
            "{routes:?}"
        );
        assert!(tracker.len() <= 4);
    }

    /// HTTP/2 frames for the scripts: header blocks encoded by a real HPACK
    /// encoder, which indexes what it sends (so later blocks depend on
    /// earlier ones, as between real peers).
    struct H2 {
        client: loona_hpack::Encoder<'static>,
        server: loona_hpack::Encoder<'static>,
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;

    impl H2 {
        fn new() -> Self {
            H2 {
                client: loona_hpack::Encoder::new(),
                server: loona_hpack::Encoder::new(),
            }
        }

        /// The preface and the client's SETTINGS.
        fn preface() -> Vec<u8> {
            let mut b = super::PREFACE.to_vec();
            b.extend(frame(4, 0, 0, &[]));
            b
        }

        fn request(&mut self, stream: u32, method: &str, path: &str, end_stream: bool) -> Vec<u8> {
            let block = self.client.encode([
                (&b":method"[..], method.as_bytes()),
                (b":scheme", b"http"),
                (b":path", path.as_bytes()),
                (b":authority", b"a"),
            ]);
            let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
            frame(1, flags, stream, &block)
        }

        fn grpc_call(&mut self, stream: u32, method: &str, timeout: Option<&str>) -> Vec<u8> {
            let mut fields: Vec<(&[u8], &[u8])> = vec![
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", method.as_bytes()),
                (b":authority", b"a"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ];
            if let Some(t) = timeout {
                fields.push((b"grpc-timeout", t.as_bytes()));
            }
            let block = self.client.encode(fields);
            frame(1, END_HEADERS, stream, &block)
        }

        /// A gRPC response head, or (`trailers_only`) a whole answer in one
        /// header block with its `grpc-status`.
        fn grpc_head(&mut self, stream: u32, trailers_only: Option<&str>) -> Vec<u8> {
            let mut fields: Vec<(&[u8], &[u8])> =
                vec![(b":status", b"200"), (b"content-type", b"application/grpc")];
            if let Some(code) = trailers_only {
                fields.push((b"grpc-status", code.as_bytes()));
            }
            let block = self.server.encode(fields);
            let end = if trailers_only.is_some() {
                END_STREAM
            } else {
                0
            };
            frame(1, END_HEADERS | end, stream, &block)
        }

        fn grpc_trailers(&mut self, stream: u32, code: &str) -> Vec<u8> {
            let block = self.server.encode([(&b"grpc-status"[..], code.as_bytes())]);
            frame(1, END_HEADERS | END_STREAM, stream, &block)
        }

        fn response(&mut self, stream: u32, status: &str, end_stream: bool) -> Vec<u8> {
            let block = self.server.encode([
                (&b":status"[..], status.as_bytes()),
                (b"content-type", b"text/plain"),
            ]);
            let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
            frame(1, flags, stream, &block)
        }
    }

    fn data(stream: u32, body: &[u8], end_stream: bool) -> Vec<u8> {
        frame(0, if end_stream { END_STREAM } else { 0 }, stream, body)
    }

    fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
        frame(3, 0, stream, &code.to_be_bytes())
    }

    #[test]
    fn http2_streams_are_requests_and_a_goaway_then_fin_closes_idle() {
        let (mut s, mut h2) = (Script::new(), H2::new());
        let mut first = H2::preface();
        first.extend(h2.request(1, "GET", "/users/7?x=1", true));
        s.recv(&first);
        let mut answer = frame(4, 0, 0, &[]);
        answer.extend(h2.response(1, "200", false));
        answer.extend(data(1, b"hello", true));
        s.send(&answer);
        // The second request reuses the encoder's table: an indexed block.
        s.recv(&h2.request(3, "GET", "/users/8", true));
        let mut answer = h2.response(3, "404", false);
        answer.extend(data(3, b"", true));
        s.send(&answer);
        s.recv(&frame(7, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0])).fin();
        s.state(tcp::CLOSE_WAIT, tcp::LAST_ACK, 0).closed();
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "start GET /users/{id}",
                "end GET /users/{id} 200 completed sent=5 unacked=0 ms=1",
                "start GET /users/{id}",
                "end GET /users/{id} 404 completed sent=0 unacked=0 ms=1",
                "close idle"
            ]
        );
    }

    #[test]
    fn an_http2_stream_reset_breaks_that_stream_and_the_connection_lives_on() {
        let (mut s, mut h2) = (Script::new(), H2::new());
        let mut first = H2::preface();
        first.extend(h2.request(1, "GET", "/slow", true));
        s.recv(&first).recv(&rst_stream(1, 8));
        s.recv(&h2.request(3, "GET", "/users/1", true));
        let mut answer = h2.response(3, "200", false);
        answer.extend(data(3, b"ok", true));
        s.send(&answer);
        // A response streaming, then reset: response_body, with its status.
        s.recv(&h2.request(5, "GET", "/users/2", true));
        let mut part = h2.response(5, "200", false);
        part.extend(data(5, b"chunk", false));
        s.send(&part).recv(&rst_stream(5, 8));
        // A request body under way, then reset: request_body.
        s.recv(&h2.request(7, "POST", "/users/3", false))
            .recv(&data(7, b"part", false))
            .recv(&rst_stream(7, 0));
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "start GET unmatched",
                "end GET unmatched 499 handler stream_reset sent=0 unacked=0 ms=1",
                "start GET /users/{id}",
                "end GET /users/{id} 200 completed sent=2 unacked=0 ms=1",
                "start GET /users/{id}",
                "end GET /users/{id} 200 response_body stream_reset sent=5 unacked=0 ms=2",
                "start POST /users/{id}",
                "end POST /users/{id} 499 request_body stream_reset sent=0 unacked=0 ms=2",
            ]
        );
    }

    #[test]
    fn a_fin_breaks_every_http2_stream_in_flight_and_a_server_goaway_refuses_later_ones() {
        let (mut s, mut h2) = (Script::new(), H2::new());
        let mut first = H2::preface();
        first.extend(h2.request(1, "GET", "/a", true));
        first.extend(h2.request(3, "GET", "/b", true));
        first.extend(h2.request(5, "GET", "/c", true));
        s.recv(&first);
        // The server will process streams up to 3: stream 5 is its refusal.
        s.send(&frame(7, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0])).fin();
        s.state(tcp::CLOSE_WAIT, tcp::LAST_ACK, 0).closed();
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "start GET unmatched",
                "start GET unmatched",
                "start GET unmatched",
                "lost GET unmatched",
                "end GET unmatched 499 handler closed sent=0 unacked=77 ms=2",
                "end GET unmatched 499 handler closed sent=0 unacked=77 ms=2",
                "close client_abort"
            ]
        );
    }

    #[test]
    fn large_http2_writes_are_followed_through_pieces_that_pass_over_data_payloads() {
        let (mut s, mut h2) = (Script::new(), H2::new());
        let mut first = H2::preface();
        first.extend(h2.request(1, "GET", "/users/1", true));
        first.extend(h2.request(3, "GET", "/users/2", true));
        s.recv(&first);
        // One write: stream 1's head and 100 KB of DATA in 16 KiB frames,
        // then stream 3's whole answer, its header block 100 KB in.
        let mut big = h2.response(1, "200", false);
        for chunk in vec![7u8; 100_000].chunks(16_384) {
            big.extend(data(1, chunk, false));
        }
        big.extend(h2.response(3, "200", true));
        s.send_walked(&big);
        // Stream 1's body goes on in another write; the client resets it.
        let mut more = Vec::new();
        for chunk in vec![7u8; 50_000].chunks(16_384) {
            more.extend(data(1, chunk, false));
        }
        s.send_walked(&more);
        s.recv(&rst_stream(1, 8));
        // The connection lives on: a later stream is followed.
        s.recv(&h2.request(5, "GET", "/users/3", true));
        let mut answer = h2.response(5, "200", false);
        answer.extend(data(5, &[1; 3000], true));
        s.send_walked(&answer);
        let log = s.log();
        assert!(!log.iter().any(|l| l.starts_with("skip")), "{log:?}");
        assert_eq!(
            log.iter().filter(|l| l.starts_with("end")).count(),
            3,
            "{log:?}"
        );
        assert!(
            log.iter()
                .any(|l| l.starts_with("end GET /users/{id} 200 response_body stream_reset")),
            "{log:?}"
        );
    }

    #[test]
    fn an_http2_header_block_not_captured_whole_is_skipped_never_misread() {
        let (mut s, mut h2) = (Script::new(), H2::new());
        let mut first = H2::preface();
        first.extend(h2.request(1, "GET", "/users/1", true));
        s.recv(&first);
        // The response's header block is cut from the capture.
        let answer = h2.response(1, "200", true);
        s.event(Kind::Send, answer.len(), &answer[..12], b"");
        // Later streams are not followed (the table is lost).
        s.recv(&h2.request(3, "GET", "/users/2", true)).fin();
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "start GET /users/{id}",
                "lost GET /users/{id}",
                "skip http2"
            ]
        );
    }

    #[test]
    fn a_rapid_reset_flood_keeps_no_state_and_counts_each_reset() {
        let (mut s, mut h2) = (Script::new(), H2::new());
        s.recv(&H2::preface());
        let mut burst = Vec::new();
        for i in 0..2000u32 {
            let id = 1 + 2 * i;
            burst.extend(h2.request(id, "GET", &format!("/random/{i}"), true));
            burst.extend(rst_stream(id, 8));
        }
        for chunk in burst.chunks(1000) {
            s.recv(chunk);
        }
        let conn = s.tracker.conns.get(&1).unwrap();
        assert!(!conn.h2.as_ref().unwrap().in_flight(), "no stream kept");
        let resets = s
            .log()
            .iter()
            .filter(|l| l.contains("handler stream_reset"))
            .count();
        assert_eq!(resets, 2000);
        assert!(
            s.log().iter().all(|l| !l.starts_with("start GET /random")),
            "unmatched only"
        );
    }

    #[test]
    fn random_bytes_after_the_preface_never_panic() {
        let mut rng = fastrand::Rng::with_seed(26);
        for _ in 0..500 {
            let (mut s, mut h2) = (Script::new(), H2::new());
            let mut first = H2::preface();
            first.extend(h2.request(1, "GET", "/users/1", rng.bool()));
            s.recv(&first);
            for _ in 0..rng.usize(1..6) {
                let len = rng.usize(0..300);
                let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                if rng.bool() {
                    s.recv(&bytes);
                } else {
                    s.send(&bytes);
                }
            }
            if rng.bool() {
                s.fin()
            } else {
                s.rst()
            };
        }
    }

    fn grpc_script() -> Script {
        let methods = clientgone::GrpcMethods::new()
            .with("demo.Svc/Wait", clientgone::RpcType::Unary)
            .with("demo.Svc/Ticks", clientgone::RpcType::ServerStreaming);
        let mut s = Script::blank(0, methods);
        s.event(Kind::Open, 0, b"", b"");
        s.log.0.clear();
        s
    }

    #[test]
    fn grpc_calls_over_http2_are_calls_with_their_status_cause_and_deadline() {
        let (mut s, mut h2) = (grpc_script(), H2::new());
        let message = [0u8, 0, 0, 0, 0];
        // A unary call answered OK: head, message, trailers.
        let mut first = H2::preface();
        first.extend(h2.grpc_call(1, "/demo.Svc/Wait", Some("10S")));
        first.extend(data(1, &message, true));
        s.recv(&first);
        let mut answer = h2.grpc_head(1, None);
        answer.extend(data(1, &message, false));
        answer.extend(h2.grpc_trailers(1, "0"));
        s.send(&answer);
        // Cancelled before its deadline: CANCELLED, stream_reset.
        s.recv(&h2.grpc_call(3, "/demo.Svc/Wait", Some("10S")))
            .recv(&data(3, &message, true))
            .recv(&rst_stream(3, 8));
        // Reset at its deadline (1 ms; the script's clock moves 1 ms an
        // event): DEADLINE_EXCEEDED, deadline_exceeded.
        s.recv(&h2.grpc_call(5, "/demo.Svc/Wait", Some("1m")))
            .recv(&data(5, &message, true))
            .recv(&rst_stream(5, 8));
        // The server ends a call at its deadline (trailers-only): the same.
        s.recv(&h2.grpc_call(7, "/demo.Svc/Wait", Some("1m")))
            .recv(&data(7, &message, true));
        s.send(&h2.grpc_head(7, Some("4")));
        // A server stream cancelled after a message: response_body.
        s.recv(&h2.grpc_call(9, "/demo.Svc/Ticks", None))
            .recv(&data(9, &message, true));
        let mut part = h2.grpc_head(9, None);
        part.extend(data(9, &message, false));
        s.send(&part).recv(&rst_stream(9, 8));
        // An invented method: _OTHER, type unknown, its status as sent.
        s.recv(&h2.grpc_call(11, "/demo.Svc/Invented", None))
            .recv(&data(11, &message, true));
        s.send(&h2.grpc_head(11, Some("12")));
        assert_eq!(
            s.log(),
            [
                "call demo.Svc/Wait unary",
                "call-end demo.Svc/Wait OK completed sent=5",
                "call demo.Svc/Wait unary",
                "call-end demo.Svc/Wait CANCELLED handler stream_reset sent=0",
                "call demo.Svc/Wait unary",
                "call-end demo.Svc/Wait DEADLINE_EXCEEDED handler deadline_exceeded sent=0",
                "call demo.Svc/Wait unary",
                "call-end demo.Svc/Wait DEADLINE_EXCEEDED handler deadline_exceeded sent=0",
                "call demo.Svc/Ticks server_streaming",
                "call-end demo.Svc/Ticks CANCELLED response_body stream_reset sent=5",
                "call _OTHER unknown",
                "call-end _OTHER UNIMPLEMENTED completed sent=0",
            ]
        );
    }

    #[test]
    fn a_fin_that_overtakes_the_send_it_came_after_is_no_break() {
        // The client read the response and left; its FIN's event (seq 1000
        // + the response) comes before the write's: held until the write is
        // seen, then the request completes and the close is idle.
        let mut s = Script::with_seq(1000);
        s.recv(GET);
        s.seq = 1000 + OK.len() as u32;
        s.fin().send(OK);
        s.state(tcp::CLOSE_WAIT, tcp::LAST_ACK, 0).closed();
        assert_eq!(
            s.log(),
            [
                "open 8080",
                "start GET /users/{id}",
                "end GET /users/{id} 200 completed sent=5 unacked=0 ms=2",
                "close idle"
            ]
        );
        // A FIN with nothing unseen written is the break it always was.
        let mut s = Script::with_seq(1000);
        s.recv(GET).fin();
        assert_eq!(
            s.log()[2],
            "end GET /users/{id} 499 handler closed sent=0 unacked=77 ms=1"
        );
    }
}

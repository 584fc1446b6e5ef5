//! The HTTP/1 exchange of one watched connection, from its bytes: request
//! head, request body, response head, response body, one request at a time.
//! It knows nothing of TCP: `conn.rs` tells it when the client left or the
//! server gave up, and asks it what was in flight. A protocol follower for
//! HTTP/2 slots in beside it the same way.

use std::sync::Arc;

use clientgone::{
    BodyProgress, Cause, End, Record, UNMATCHED_ROUTE, break_phase, hands_over_connection,
    recorded_status, response_has_no_body,
};

use super::conn::{MAX_HEAD, nanos};
use super::event::Event;
use super::http1::{self, Framing, Head, RequestHead};
use super::sink::{Ended, Sink};
use super::skip::Skip;
use crate::routes::RouteMatcher;

/// How far an adopted connection is from a point where a request head can
/// start: the exchange it was found in is waited out, never guessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Adopting {
    /// Nothing seen yet: a read that holds a whole request head starts one;
    /// anything else is the middle of a request.
    Fresh,
    /// The client was sending a request begun before the agent: in flight,
    /// but not followed.
    Midway,
    /// The server wrote: the next read starts a request.
    Turned,
}

/// The exchange: what the bytes have shown so far.
#[derive(Debug)]
pub(super) struct Exchange {
    port: u16,
    /// Set while an adopted connection waits for its first request head.
    pub(super) adopting: Option<Adopting>,
    /// Bytes of a request head received and not yet complete.
    pub(super) head: Vec<u8>,
    req: Option<Req>,
    pub(super) served_any: bool,
    pub(super) asked_close: bool,
    /// Requests are no longer followed (the client left, or see [`Skip`]).
    done: bool,
    /// The server's process uses a probed TLS library: TLS bytes seen here
    /// (not its plaintext) mean the connection could not be tied to it.
    ssl_process: bool,
}

#[derive(Debug)]
struct Req {
    method: &'static str,
    /// The route template; `None` for `unmatched`.
    route: Option<Arc<str>>,
    path: String,
    version: &'static str,
    start_ns: u64,
    body: Framing,
    /// The request body was fully read (or there was none).
    body_read: bool,
    head_request: bool,
    connect: bool,
    /// Bytes of a response head written and not yet complete.
    resp_head: Vec<u8>,
    /// The response's status and framing, once its head was written.
    resp: Option<(u16, Framing)>,
    body_sent: u64,
}

/// What a follower (HTTP/1 here, HTTP/2 in `http2.rs`) knows of a request
/// at its end: the one place a completion or a break of either becomes a
/// [`Record`] and the span's [`Ended`].
pub(super) struct Facts<'a> {
    pub(super) method: &'static str,
    pub(super) route: &'a str,
    pub(super) path: &'a str,
    pub(super) version: &'static str,
    pub(super) start_ns: u64,
    pub(super) body_sent: u64,
}

impl Facts<'_> {
    /// From its head to `ts_ns`.
    pub(super) fn elapsed(&self, ts_ns: u64) -> std::time::Duration {
        nanos(ts_ns.saturating_sub(self.start_ns))
    }

    /// What its span needs beside the record.
    pub(super) fn ended(&self, unacked: Option<u32>) -> Ended<'_> {
        Ended {
            path: self.path,
            version: self.version,
            start_ns: self.start_ns,
            unacked,
        }
    }

    /// Reports the request's end at `ts_ns` to the sink.
    pub(super) fn report(
        &self,
        port: u16,
        status: u16,
        end: End,
        ts_ns: u64,
        unacked: Option<u32>,
        sink: &mut impl Sink,
    ) {
        sink.request_ended(
            port,
            &Record {
                method: self.method,
                route: self.route,
                status,
                end,
                elapsed: self.elapsed(ts_ns),
                body_bytes_sent: self.body_sent,
            },
            &self.ended(unacked),
        );
    }
}

/// How a request the client broke off ends: its phase from how far its body
/// (`body_done`) and the response (`status`, once its head was sent) got,
/// and the status it is recorded with.
pub(super) fn broken(body_done: bool, status: Option<u16>, cause: Cause) -> (u16, End) {
    let body = if body_done {
        BodyProgress::Done
    } else {
        BodyProgress::Failed
    };
    let phase = break_phase(body, status.is_some());
    (
        recorded_status(Some(phase), status),
        End::Disconnect { phase, cause },
    )
}

impl Req {
    fn route(&self) -> &str {
        self.route.as_deref().unwrap_or(UNMATCHED_ROUTE)
    }

    /// What its end is reported with, completed or broken.
    fn facts(&self) -> Facts<'_> {
        Facts {
            method: self.method,
            route: self.route(),
            path: &self.path,
            version: self.version,
            start_ns: self.start_ns,
            body_sent: self.body_sent,
        }
    }
}

impl Exchange {
    pub(super) fn new(port: u16) -> Self {
        Exchange {
            port,
            adopting: None,
            head: Vec::new(),
            req: None,
            served_any: false,
            asked_close: false,
            done: false,
            ssl_process: false,
        }
    }

    /// Whether a request is in flight: one followed, or one begun before the
    /// agent and waited out.
    pub(super) fn in_flight(&self) -> bool {
        self.req.is_some() || self.adopting == Some(Adopting::Midway)
    }

    /// Whether a followed request is in flight.
    pub(super) fn has_request(&self) -> bool {
        self.req.is_some()
    }

    /// The client left (at `ts_ns`, with `unacked` bytes of the server's
    /// never acknowledged): the request in flight, if any, is its break.
    pub(super) fn client_left(
        &mut self,
        cause: Cause,
        ts_ns: u64,
        unacked: u32,
        sink: &mut impl Sink,
    ) {
        let Some(req) = self.req.take() else { return };
        self.done = true;
        let (status, end) = broken(req.body_read, req.resp.map(|(s, _)| s), cause);
        req.facts()
            .report(self.port, status, end, ts_ns, Some(unacked), sink);
    }

    /// Leaves this connection's requests out from now on.
    /// Takes the request in flight, if any, out of the gauge uncounted.
    pub(super) fn lose_request(&mut self, sink: &mut impl Sink) {
        if let Some(req) = self.req.take() {
            sink.request_lost(self.port, req.method, req.route());
        }
    }

    pub(super) fn skip(&mut self, why: Skip, sink: &mut impl Sink) {
        self.lose_request(sink);
        self.head.clear();
        self.done = true;
        sink.skipped(self.port, why);
    }

    pub(super) fn on_recv(&mut self, ev: &Event<'_>, routes: &RouteMatcher, sink: &mut impl Sink) {
        self.ssl_process |= ev.ssl_process;
        match self.adopting {
            None => {}
            Some(Adopting::Turned) => self.adopting = None,
            Some(Adopting::Midway) => return,
            Some(Adopting::Fresh) => {
                // A read that starts with a whole request head, in a
                // connection found idle: the next request. Anything else is
                // the middle of one (a body, a head's rest): wait for the
                // server's answer.
                if ev.data.is_empty() || !matches!(http1::request_head(ev.data), Head::Complete(..))
                {
                    self.adopting = Some(Adopting::Midway);
                    return;
                }
                self.adopting = None;
            }
        }
        let mut off = 0usize; // bytes of this read consumed so far
        let len = ev.len as usize;
        while off < len && !self.done {
            match &mut self.req {
                None => {
                    let Some(piece) = ev.data.get(off..) else {
                        return self.skip(Skip::Unparsed, sink);
                    };
                    if piece.is_empty() {
                        return self.skip(Skip::Unparsed, sink);
                    }
                    let before = self.head.len();
                    self.head.extend_from_slice(piece);
                    match http1::request_head(&self.head) {
                        Head::Complete(head_len, head) => {
                            let used = head_len - before;
                            self.head.clear();
                            off += used;
                            self.start(head, ev.ts_ns, routes, sink);
                        }
                        Head::Partial if ev.data.len() == len && self.head.len() <= MAX_HEAD => {
                            return; // the rest of the head comes in a later read
                        }
                        Head::Partial => return self.skip(Skip::Unparsed, sink),
                        Head::Invalid => {
                            let why = match http1::foreign_protocol(&self.head) {
                                Some(Skip::Tls) if self.ssl_process => Skip::TlsUnmapped,
                                why => why.unwrap_or(Skip::Unparsed),
                            };
                            return self.skip(why, sink);
                        }
                    }
                }
                Some(req) if !req.body_read => {
                    let rest = (len - off) as u64;
                    let captured = ev.data.get(off..).filter(|_| ev.data.len() == len);
                    let (used, ended) = req.body.consume(rest, captured, ev.tail);
                    off += used as usize;
                    if ended {
                        req.body_read = true;
                    }
                }
                // Bytes of a next request while this one is in flight.
                Some(_) => return self.skip(Skip::Pipelined, sink),
            }
        }
    }

    fn start(
        &mut self,
        head: RequestHead,
        ts_ns: u64,
        routes: &RouteMatcher,
        sink: &mut impl Sink,
    ) {
        let route = routes.template_shared(head.path());
        let version = head.version;
        sink.request_started(
            self.port,
            head.method,
            route.as_deref().unwrap_or(UNMATCHED_ROUTE),
        );
        self.asked_close |= head.close;
        let body_read = head.body.is_empty();
        let (method, body, connect) = (head.method, head.body, head.connect);
        self.req = Some(Req {
            method,
            route,
            path: head.into_path(),
            version,
            start_ns: ts_ns,
            body,
            body_read,
            head_request: method == "HEAD",
            connect,
            resp_head: Vec::new(),
            resp: None,
            body_sent: 0,
        });
    }

    pub(super) fn on_send(&mut self, ev: &Event<'_>, sink: &mut impl Sink) {
        if self.adopting.is_some() {
            // The answer to a request that began before the agent: the
            // client's next bytes are a new request.
            self.adopting = Some(Adopting::Turned);
            return;
        }
        let len = ev.len as usize;
        let mut off = 0usize;
        while off < len && !self.done {
            // Bytes written with no request in flight (an error page before
            // any head, say) belong to no request.
            let Some(req) = &mut self.req else { return };
            match &mut req.resp {
                None => {
                    let Some(piece) = ev.data.get(off..).filter(|p| !p.is_empty()) else {
                        return self.skip(Skip::Unparsed, sink);
                    };
                    let before = req.resp_head.len();
                    req.resp_head.extend_from_slice(piece);
                    match http1::response_head(&req.resp_head) {
                        Head::Complete(head_len, (status, framing)) => {
                            off += head_len - before;
                            req.resp_head.clear();
                            if (100..200).contains(&status) && status != 101 {
                                continue; // 100 Continue and the like: the real head follows
                            }
                            let bodiless = response_has_no_body(req.head_request, status)
                                || framing.is_empty();
                            let handed_over = hands_over_connection(req.connect, status);
                            req.resp = Some((status, framing));
                            if bodiless || handed_over {
                                self.complete(ev.ts_ns, sink);
                            }
                            if handed_over {
                                return self.skip(Skip::Upgraded, sink);
                            }
                        }
                        Head::Partial
                            if ev.data.len() == len && req.resp_head.len() <= MAX_HEAD =>
                        {
                            return;
                        }
                        Head::Partial | Head::Invalid => return self.skip(Skip::Unparsed, sink),
                    }
                }
                Some((_, framing)) => {
                    let rest = (len - off) as u64;
                    let captured = ev.data.get(off..).filter(|_| ev.data.len() == len);
                    let (used, ended) = framing.consume(rest, captured, ev.tail);
                    req.body_sent += used;
                    off += used as usize;
                    if ended {
                        self.complete(ev.ts_ns, sink);
                    }
                }
            }
        }
    }

    /// The response reached its end.
    fn complete(&mut self, ts_ns: u64, sink: &mut impl Sink) {
        let Some(req) = self.req.take() else { return };
        let status = req.resp.map_or(500, |(s, _)| s);
        self.served_any = true;
        req.facts()
            .report(self.port, status, End::Completed, ts_ns, None, sink);
    }

    /// The server gave the connection up with a request in flight: its own
    /// doing, never a client break. A response framed by the close completes;
    /// any other is recorded with the status it sent (500 if none).
    pub(super) fn server_ended(&mut self, ts_ns: u64, sink: &mut impl Sink) {
        if self.req.is_some() {
            self.complete(ts_ns, sink);
        }
        self.done = true;
    }
}

//! [`ConnectionState`]: the one place where the socket side and the request side meet.
//!
//! The [`TrackedStream`](super::TrackedStream) writes it as hyper reads and writes
//! through it; the request guard reads it when a request ends. hyper learns of a
//! FIN or RST only by reading through the stream, so the state is always written
//! *before* hyper drops the request's future — that ordering is what makes the
//! classification deterministic.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::hooks::ClientLeftHooks;
use crate::classify::{Cause, ClientEvent, CloseFacts, CloseReason, PeerSignal, close_reason};

const NO_CAUSE: u8 = u8::MAX;

/// How long after a client's `RST_STREAM` a dropped request may take it as
/// its cause: hyper drops the stream's future microseconds after h2 reads
/// the frame, even on a loaded server.
const RESET_CLAIM_WINDOW: Duration = Duration::from_secs(2);

/// Unclaimed stream resets kept per connection: room for a client that
/// cancels a whole fan-out of concurrent calls at once (one context, many
/// streams), bounded against a flood.
const MAX_UNCLAIMED_RESETS: usize = 1024;

/// Per-connection facts, shared between the stream and the requests on it.
///
/// All fields are atomics: the stream and the guards live on the same task for
/// HTTP/1 but not for HTTP/2, and nothing here needs more than "first writer wins".
#[derive(Debug)]
pub struct ConnectionState {
    opened: Instant,
    in_flight: AtomicU32,
    requests: AtomicU64,
    /// Bytes of a request head arrived while nothing was in flight and no request
    /// has started since.
    partial_head: AtomicBool,
    eof: AtomicBool,
    /// The first client event's cause (EOF is `Closed`), `NO_CAUSE` until then.
    first_event: AtomicU8,
    /// The first error's cause, `NO_CAUSE` until then (EOF is not an error).
    first_error: AtomicU8,
    event_in_flight: AtomicBool,
    event_partial_head: AtomicBool,
    header_timeout: AtomicBool,
    /// HTTP/2 was seen (its preface, or a request): bytes between requests are
    /// frames, not heads.
    http2: AtomicBool,
    server_closing: AtomicBool,
    /// The client asked for the close in the protocol (`Connection: close`,
    /// HTTP/1.0 without keep-alive, HTTP/2 GOAWAY).
    client_asked_close: AtomicBool,
    /// `clientgone::serve` sees every request itself — the close it asks
    /// for, when it starts and ends, an upgrade — whether a `DisconnectLayer`
    /// covers its route or not; under another server the layer does this.
    tracked_by_server: AtomicBool,
    /// The connection was handed over to another protocol (a `101` upgrade,
    /// `CONNECT`): what it reads from then on are no request heads.
    upgraded: AtomicBool,
    /// A TLS handshake started on this connection and has not completed.
    tls_pending: AtomicBool,
    /// HTTP/2 streams the client reset and no request has claimed yet (see
    /// `claim_stream_reset`).
    stream_resets: Mutex<VecDeque<Instant>>,
    bytes_written: AtomicU64,
    /// The send queue's size when the first client event was seen (`u64::MAX`: unknown).
    unacked_at_event: AtomicU64,
    /// Run when the client leaves mid-request (`TrackedConnection::on_client_left`).
    hooks: ClientLeftHooks,
    /// The client's IP address as text, made on first use
    /// (`TrackedConnection::remote_ip_text`).
    remote_ip_text: OnceLock<Arc<str>>,
}

impl ConnectionState {
    pub(crate) fn new() -> Self {
        ConnectionState {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            partial_head: AtomicBool::new(false),
            eof: AtomicBool::new(false),
            first_event: AtomicU8::new(NO_CAUSE),
            first_error: AtomicU8::new(NO_CAUSE),
            event_in_flight: AtomicBool::new(false),
            event_partial_head: AtomicBool::new(false),
            header_timeout: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            server_closing: AtomicBool::new(false),
            client_asked_close: AtomicBool::new(false),
            tracked_by_server: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            tls_pending: AtomicBool::new(false),
            stream_resets: Mutex::new(VecDeque::new()),
            bytes_written: AtomicU64::new(0),
            unacked_at_event: AtomicU64::new(u64::MAX),
            hooks: ClientLeftHooks::default(),
            remote_ip_text: OnceLock::new(),
        }
    }

    /// When the connection was accepted.
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Requests currently in flight on this connection.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Requests started on this connection so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Bytes the server wrote to the socket so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Bytes the kernel still held unacknowledged when the client's first
    /// EOF or error was seen: `Some(0)` means the client had everything.
    pub fn unacked_at_break(&self) -> Option<u64> {
        match self.unacked_at_event.load(Ordering::Acquire) {
            u64::MAX => None,
            n => Some(n),
        }
    }

    /// What the client side has shown so far.
    pub fn peer_signal(&self) -> PeerSignal {
        PeerSignal {
            error: Cause::from_index(self.first_error.load(Ordering::Acquire)),
            eof: self.eof.load(Ordering::Acquire),
        }
    }

    /// The server is closing this connection on purpose (shutdown); requests
    /// dropped from now on are not client disconnects.
    pub fn is_server_closing(&self) -> bool {
        self.server_closing.load(Ordering::Acquire)
    }

    pub(crate) fn request_started(&self, http2: bool) {
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.partial_head.store(false, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn request_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// The client sent the whole HTTP/2 preface: HTTP/2 with prior
    /// knowledge has no heads to wait for, even before its first request (a
    /// pooled client may open it long before).
    pub(crate) fn mark_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// The client reset an HTTP/2 stream (`RST_STREAM`), read before h2
    /// decoded it: the stream's request, if still in flight, is dropped next.
    pub(crate) fn on_stream_reset(&self) {
        let mut resets = self
            .stream_resets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Bounded whatever the client sends: resets of streams that had
        // already ended are never claimed and age out, and a flood keeps
        // only the newest.
        let now = Instant::now();
        while resets
            .front()
            .is_some_and(|&at| now.duration_since(at) > RESET_CLAIM_WINDOW)
        {
            resets.pop_front();
        }
        if resets.len() == MAX_UNCLAIMED_RESETS {
            resets.pop_front();
        }
        resets.push_back(now);
    }

    /// A request of this connection was dropped with no connection event:
    /// takes one stream reset read in the last [`RESET_CLAIM_WINDOW`], if
    /// any. `false` means nothing on the wire explains the drop: the server
    /// gave the request up itself (tonic's `Server::timeout` drops the
    /// layers inside it).
    ///
    /// hyper does not say which stream a request is, so a reset is matched
    /// by time, not stream id: a request dropped within the window after
    /// the client reset *another* stream that had already ended would take
    /// that reset. Clients reset finished streams rarely, and the window is
    /// short.
    pub(crate) fn claim_stream_reset(&self) -> bool {
        let mut resets = self
            .stream_resets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while let Some(&at) = resets.front() {
            resets.pop_front();
            if at.elapsed() <= RESET_CLAIM_WINDOW {
                return true;
            }
        }
        false
    }

    /// The client sent bytes.
    pub(crate) fn on_read(&self) {
        // Bytes that arrive while nothing is in flight are the start of the next
        // request head; `request_started` clears the mark once the head is parsed.
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.http2.load(Ordering::Relaxed)
            && !self.upgraded.load(Ordering::Relaxed)
        {
            self.partial_head.store(true, Ordering::Relaxed);
        }
    }

    /// A TLS handshake starts: until [`tls_established`](Self::tls_established),
    /// the connection closes as `tls_handshake`, whoever ends it.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn tls_started(&self) {
        self.tls_pending.store(true, Ordering::Release);
    }

    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn tls_established(&self) {
        self.tls_pending.store(false, Ordering::Release);
    }

    pub(crate) fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    pub(crate) fn on_written(&self, n: usize) {
        self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records a read EOF; returns whether it was the connection's first client event.
    pub(crate) fn on_eof(&self) -> bool {
        self.eof.store(true, Ordering::Release);
        self.on_client_event(Cause::Closed)
    }

    /// Records an error; returns whether it was the connection's first client event.
    pub(crate) fn on_error(&self, cause: Cause) -> bool {
        let _ = self.first_error.compare_exchange(
            NO_CAUSE,
            cause as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.on_client_event(cause)
    }

    pub(crate) fn set_unacked_at_event(&self, bytes: u64) {
        self.unacked_at_event.store(bytes, Ordering::Release);
    }

    fn on_client_event(&self, cause: Cause) -> bool {
        let first = self
            .first_event
            .compare_exchange(NO_CAUSE, cause as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            let in_flight = self.in_flight() > 0;
            self.event_in_flight.store(in_flight, Ordering::Release);
            self.event_partial_head
                .store(self.partial_head.load(Ordering::Relaxed), Ordering::Release);
            if in_flight {
                // Before hyper tears anything down: see `hooks.rs`. Ahead of the
                // send-queue read too: a shutdown of another socket takes a few
                // µs, and the queue of a client that sent FIN drains no faster.
                self.hooks.fire();
            }
        }
        first
    }

    pub(crate) fn remote_ip_text(&self, ip: impl FnOnce() -> String) -> Arc<str> {
        Arc::clone(self.remote_ip_text.get_or_init(|| ip().into()))
    }

    pub(crate) fn hooks(&self) -> &ClientLeftHooks {
        &self.hooks
    }

    /// The client left (EOF or error) while a request was in flight.
    pub(crate) fn client_left_mid_request(&self) -> bool {
        self.first_event.load(Ordering::Acquire) != NO_CAUSE
            && self.event_in_flight.load(Ordering::Acquire)
    }

    /// Nothing is in flight and an HTTP/1 head is due: one has started arriving,
    /// or the connection has not sent a request yet.
    pub(crate) fn is_waiting_for_head(&self) -> bool {
        self.in_flight() == 0
            && !self.http2.load(Ordering::Relaxed)
            && !self.upgraded.load(Ordering::Relaxed)
            && (self.partial_head.load(Ordering::Relaxed) || self.requests() == 0)
    }

    pub(crate) fn mark_header_timeout(&self) {
        self.header_timeout.store(true, Ordering::Release);
    }

    pub(crate) fn mark_client_asked_close(&self) {
        self.client_asked_close.store(true, Ordering::Release);
    }

    pub(crate) fn mark_tracked_by_server(&self) {
        self.tracked_by_server.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_tracked_by_server(&self) -> bool {
        self.tracked_by_server.load(Ordering::Relaxed)
    }

    /// This connection speaks HTTP/2: its preface or a request was seen.
    pub(crate) fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_server_closing(&self) {
        self.server_closing.store(true, Ordering::Release);
    }

    /// The one reason this connection closes with, from everything it saw.
    pub fn close_reason(&self) -> CloseReason {
        // On HTTP/2, bytes between requests are frames (PING, SETTINGS,
        // GOAWAY), never a half-received head; after an upgrade, another protocol's.
        let heads = !self.http2.load(Ordering::Relaxed) && !self.upgraded.load(Ordering::Relaxed);
        let client_event =
            Cause::from_index(self.first_event.load(Ordering::Acquire)).map(|cause| ClientEvent {
                cause,
                in_flight: self.event_in_flight.load(Ordering::Acquire),
                partial_head: heads && self.event_partial_head.load(Ordering::Acquire),
            });
        close_reason(CloseFacts {
            client_event,
            header_timeout: self.header_timeout.load(Ordering::Acquire),
            partial_head: heads && self.partial_head.load(Ordering::Relaxed),
            served_any: self.requests() > 0,
            client_asked_close: self.client_asked_close.load(Ordering::Acquire),
            tls_handshake_incomplete: self.tls_pending.load(Ordering::Acquire),
        })
    }
}

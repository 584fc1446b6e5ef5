//! The vocabulary of a break — [`Phase`], [`Cause`], [`Outcome`], [`CloseReason`] —
//! and the pure rules that turn observed facts into them.
//!
//! Everything here is free of I/O so the rules can be tested with tables of cases;
//! the label strings are the ones listed in docs/metrics.md (held against the code
//! by crates/clientgone-agent/tests/reference.rs).

use std::io;

/// Where the request was when the break was noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// The handler was still reading the request body (or the body ended early).
    RequestBody,
    /// The body was read (or not needed); no response head was produced yet.
    Handler,
    /// The response head was produced; the body was still being written.
    ResponseBody,
}

impl Phase {
    /// All phases, in label order.
    pub const ALL: [Phase; 3] = [Phase::RequestBody, Phase::Handler, Phase::ResponseBody];

    /// The Prometheus / OTel label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::RequestBody => "request_body",
            Phase::Handler => "handler",
            Phase::ResponseBody => "response_body",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// How the break showed itself on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// The peer closed its side (EOF / FIN).
    Closed,
    /// The peer reset the connection (ECONNRESET, RST).
    Reset,
    /// HTTP/2: the peer cancelled the stream while the connection stayed up.
    StreamReset,
    /// The peer vanished silently; TCP keepalive or `TCP_USER_TIMEOUT` found it.
    Timeout,
    /// Writing the response failed (EPIPE and the like) before a read saw the close.
    WriteError,
    /// The request was dropped and none of the above could be told.
    Unknown,
    /// gRPC: the call ended at or after the deadline its client sent in
    /// `grpc-timeout` — the client's patience ran out, whether its reset or
    /// the server's enforcement of that deadline came first.
    DeadlineExceeded,
}

impl Cause {
    /// All causes, in label order.
    pub const ALL: [Cause; 7] = [
        Cause::Closed,
        Cause::Reset,
        Cause::StreamReset,
        Cause::Timeout,
        Cause::WriteError,
        Cause::Unknown,
        Cause::DeadlineExceeded,
    ];

    /// The Prometheus / OTel label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::Closed => "closed",
            Cause::Reset => "reset",
            Cause::StreamReset => "stream_reset",
            Cause::Timeout => "timeout",
            Cause::WriteError => "write_error",
            Cause::Unknown => "unknown",
            Cause::DeadlineExceeded => "deadline_exceeded",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    pub(crate) const fn from_index(i: u8) -> Option<Cause> {
        match i {
            0 => Some(Cause::Closed),
            1 => Some(Cause::Reset),
            2 => Some(Cause::StreamReset),
            3 => Some(Cause::Timeout),
            4 => Some(Cause::WriteError),
            5 => Some(Cause::Unknown),
            6 => Some(Cause::DeadlineExceeded),
            _ => None,
        }
    }

    /// Maps a socket error to the cause it reveals, or `None` for errors that say
    /// nothing about the peer (`WouldBlock`, `Interrupted`).
    ///
    /// Following linkerd2-proxy's `SensorIo`, only the first such error of a
    /// connection is kept by the caller: later errors are consequences of it.
    pub fn from_io_error(error: &io::Error, direction: Direction) -> Option<Cause> {
        use io::ErrorKind::*;
        match error.raw_os_error() {
            Some(libc::ETIMEDOUT | libc::EHOSTUNREACH | libc::ENETUNREACH) => {
                return Some(Cause::Timeout);
            }
            Some(libc::ECONNRESET | libc::ECONNABORTED) => return Some(Cause::Reset),
            Some(libc::EPIPE) => return Some(Cause::WriteError),
            _ => {}
        }
        match error.kind() {
            WouldBlock | Interrupted => None,
            TimedOut => Some(Cause::Timeout),
            ConnectionReset | ConnectionAborted => Some(Cause::Reset),
            BrokenPipe => Some(Cause::WriteError),
            _ => Some(match direction {
                Direction::Read => Cause::Unknown,
                Direction::Write => Cause::WriteError,
            }),
        }
    }
}

/// Which side of the socket an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Direction {
    /// `read(2)` and friends.
    Read,
    /// `write(2)`, flush or shutdown.
    Write,
}

/// How a request ended, as the `outcome` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The response body reached its end.
    Completed,
    /// The client broke the connection while the request was in flight.
    ClientDisconnect,
}

impl Outcome {
    /// The Prometheus / OTel label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::ClientDisconnect => "client_disconnect",
        }
    }
}

/// Why a connection closed: the `reason` label of
/// `http_server_connection_closes_total`. Each connection gets exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Closed by the client with nothing in flight.
    Idle,
    /// Closed or reset by the client with a request in flight.
    ClientAbort,
    /// Closed while a request head was only partly received (or never completed
    /// before the header-read timeout).
    IncompleteRequest,
    /// Reset by the client with nothing in flight.
    Reset,
    /// Found dead by TCP keepalive or the user timeout.
    Timeout,
    /// The server closed it: shutdown, keep-alive limit, error.
    Server,
    /// Its TLS handshake did not complete: the client left during it, or it
    /// failed. Never a request break.
    TlsHandshake,
}

impl CloseReason {
    /// All reasons, in label order.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Idle,
        CloseReason::ClientAbort,
        CloseReason::IncompleteRequest,
        CloseReason::Reset,
        CloseReason::Timeout,
        CloseReason::Server,
        CloseReason::TlsHandshake,
    ];

    /// The Prometheus label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::ClientAbort => "client_abort",
            CloseReason::IncompleteRequest => "incomplete_request",
            CloseReason::Reset => "reset",
            CloseReason::Timeout => "timeout",
            CloseReason::Server => "server",
            CloseReason::TlsHandshake => "tls_handshake",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// What the connection had seen from the client when a request's break was
/// classified (a snapshot of the connection state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSignal {
    /// The first error's cause, if any.
    pub error: Option<Cause>,
    /// A read returned EOF.
    pub eof: bool,
}

/// The cause of a request's break, from what its connection saw.
///
/// `conn` is `None` when the request came without connection state (the server
/// was not built on [`TrackedListener`](crate::TrackedListener)). Then even a
/// dropped HTTP/2 stream says nothing certain — the whole connection may be
/// going — so the answer is `Unknown`.
pub fn break_cause(conn: Option<PeerSignal>, http2: bool) -> Cause {
    match conn {
        Some(PeerSignal {
            error: Some(cause), ..
        }) => cause,
        Some(PeerSignal { eof: true, .. }) => Cause::Closed,
        // The connection is up and said nothing, yet the stream was dropped:
        // only the peer cancelling that one stream does that.
        Some(_) if http2 => Cause::StreamReset,
        _ => Cause::Unknown,
    }
}

/// How far the handler got with the request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum BodyProgress {
    /// Nobody polled it yet (and it was not empty).
    Untouched = 0,
    /// Polled at least once, not at its end.
    Reading = 1,
    /// Read to its end, or empty from the start.
    Done = 2,
    /// The body failed: the client stopped sending before the declared end.
    Failed = 3,
}

impl BodyProgress {
    pub(crate) fn from_u8(v: u8) -> BodyProgress {
        match v {
            1 => BodyProgress::Reading,
            2 => BodyProgress::Done,
            3 => BodyProgress::Failed,
            _ => BodyProgress::Untouched,
        }
    }
}

/// The phase of a break from the request's progress.
///
/// A failed request body wins over everything: the client was gone before it
/// could read any answer, whatever the handler produced meanwhile.
pub fn break_phase(body: BodyProgress, head_sent: bool) -> Phase {
    match (body, head_sent) {
        (BodyProgress::Failed, _) => Phase::RequestBody,
        (_, true) => Phase::ResponseBody,
        (BodyProgress::Reading, false) => Phase::RequestBody,
        _ => Phase::Handler,
    }
}

/// The status code a request is recorded with: the real one once the head was
/// sent, nginx's 499 ("client closed request") otherwise — and always 499 for
/// a request-body break.
pub fn recorded_status(phase: Option<Phase>, status: Option<u16>) -> u16 {
    match (phase, status) {
        (Some(Phase::RequestBody), _) => 499,
        (_, Some(s)) => s,
        (_, None) => 499,
    }
}

/// What a connection had seen when it closed, as input to [`close_reason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseFacts {
    /// The first client-side event (EOF is `Closed`), with whether a request
    /// was in flight and whether a request head was half received at that time.
    pub client_event: Option<ClientEvent>,
    /// The server closed the connection because no complete head arrived in time.
    pub header_timeout: bool,
    /// Bytes of a next request head were received and not yet turned into a request.
    pub partial_head: bool,
    /// At least one request was seen on this connection.
    pub served_any: bool,
    /// The client asked for the close in the protocol: an HTTP/1 request with
    /// `Connection: close` (or HTTP/1.0 without keep-alive), an HTTP/2 GOAWAY.
    pub client_asked_close: bool,
    /// The connection is TLS and its handshake never completed.
    pub tls_handshake_incomplete: bool,
}

/// The first sign of life (or death) from the client side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientEvent {
    /// `Closed` for EOF, otherwise the error's cause.
    pub cause: Cause,
    /// A request was in flight at that moment.
    pub in_flight: bool,
    /// A request head was partly received at that moment.
    pub partial_head: bool,
}

/// The one reason a connection closed with.
pub fn close_reason(facts: CloseFacts) -> CloseReason {
    // Whoever ended it, no HTTP ever flowed: the handshake is what failed.
    if facts.tls_handshake_incomplete {
        return CloseReason::TlsHandshake;
    }
    if let Some(ev) = facts.client_event {
        return match ev.cause {
            Cause::Timeout => CloseReason::Timeout,
            _ if ev.in_flight => CloseReason::ClientAbort,
            _ if ev.partial_head => CloseReason::IncompleteRequest,
            Cause::Closed => CloseReason::Idle,
            _ => CloseReason::Reset,
        };
    }
    if facts.header_timeout && (facts.partial_head || !facts.served_any) {
        return CloseReason::IncompleteRequest;
    }
    // The server closed the socket, but as the client asked: a normal close.
    if facts.client_asked_close && !facts.header_timeout {
        return CloseReason::Idle;
    }
    CloseReason::Server
}

/// The `http_request_method` label: the standard methods as they are, every
/// other method folded to `_OTHER` as the OTel semantic conventions say.
pub fn method_label(method: &http::Method) -> &'static str {
    METHODS[method_index(method)]
}

pub(crate) const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];

/// A response that hands its connection over to another protocol: a `101
/// Switching Protocols` (WebSocket and other upgrades), or a success answer to
/// `CONNECT` (a tunnel). After it the connection carries no more HTTP; every
/// source (the layer, `serve`, `clientgone watch`) stops following it here.
///
/// ```
/// use clientgone::hands_over_connection;
/// assert!(hands_over_connection(false, 101));
/// assert!(hands_over_connection(true, 200));
/// assert!(!hands_over_connection(true, 405)); // a refused tunnel is an answer
/// assert!(!hands_over_connection(false, 200));
/// ```
pub fn hands_over_connection(connect: bool, status: u16) -> bool {
    status == 101 || (connect && (200..300).contains(&status))
}

/// A response that can have no body (RFC 9110 §6.4.1): the answer to `HEAD`,
/// any `1xx`, `204` and `304`, whatever its headers declare. Its request
/// completes with its head.
///
/// ```
/// use clientgone::response_has_no_body;
/// assert!(response_has_no_body(true, 200));
/// assert!(response_has_no_body(false, 304));
/// assert!(!response_has_no_body(false, 200));
/// ```
pub fn response_has_no_body(head_request: bool, status: u16) -> bool {
    head_request || (100..200).contains(&status) || status == 204 || status == 304
}

/// An HTTP/1 request whose client wants the connection closed after it:
/// HTTP/1.0 without `Connection: keep-alive`, HTTP/1.1 with `Connection:
/// close`. `connection` holds the values of every `Connection` header (a list
/// of tokens, case-insensitive). HTTP/2 closes with GOAWAY instead: never.
///
/// ```
/// use clientgone::asks_to_close;
/// use http::Version;
/// assert!(asks_to_close(Version::HTTP_10, []));
/// assert!(!asks_to_close(Version::HTTP_10, [&b"Keep-Alive"[..]]));
/// assert!(asks_to_close(Version::HTTP_11, [&b"te, close"[..]]));
/// assert!(!asks_to_close(Version::HTTP_2, [&b"close"[..]]));
/// ```
pub fn asks_to_close<'a>(
    version: http::Version,
    connection: impl IntoIterator<Item = &'a [u8]>,
) -> bool {
    let says = |token: &str| {
        connection.into_iter().any(|v| {
            v.split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    match version {
        http::Version::HTTP_10 => !says("keep-alive"),
        http::Version::HTTP_11 => says("close"),
        _ => false,
    }
}

/// [`asks_to_close`] of a request.
pub(crate) fn request_asks_to_close<B>(req: &http::Request<B>) -> bool {
    let values = req.headers().get_all(http::header::CONNECTION);
    asks_to_close(
        req.version(),
        values.iter().map(http::HeaderValue::as_bytes),
    )
}

pub(crate) fn method_index(method: &http::Method) -> usize {
    use http::Method as M;
    match *method {
        M::GET => 0,
        M::HEAD => 1,
        M::POST => 2,
        M::PUT => 3,
        M::DELETE => 4,
        M::CONNECT => 5,
        M::OPTIONS => 6,
        M::TRACE => 7,
        M::PATCH => 8,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_causes() {
        let os = io::Error::from_raw_os_error;
        let cases = [
            (os(libc::ECONNRESET), Direction::Read, Some(Cause::Reset)),
            (os(libc::ECONNRESET), Direction::Write, Some(Cause::Reset)),
            (os(libc::ETIMEDOUT), Direction::Read, Some(Cause::Timeout)),
            (
                os(libc::EHOSTUNREACH),
                Direction::Read,
                Some(Cause::Timeout),
            ),
            (os(libc::EPIPE), Direction::Write, Some(Cause::WriteError)),
            (os(libc::EAGAIN), Direction::Read, None),
            (os(libc::EINTR), Direction::Write, None),
            (os(libc::EIO), Direction::Write, Some(Cause::WriteError)),
            (os(libc::EIO), Direction::Read, Some(Cause::Unknown)),
            (io::Error::other("x"), Direction::Read, Some(Cause::Unknown)),
        ];
        for (err, dir, want) in cases {
            assert_eq!(Cause::from_io_error(&err, dir), want, "{err} on {dir:?}");
        }
    }

    #[test]
    fn break_cause_table() {
        let sig = |error, eof| Some(PeerSignal { error, eof });
        let cases = [
            (sig(None, true), false, Cause::Closed),
            (sig(None, true), true, Cause::Closed),
            (sig(Some(Cause::Reset), true), false, Cause::Reset),
            (sig(Some(Cause::Timeout), false), true, Cause::Timeout),
            (
                sig(Some(Cause::WriteError), false),
                false,
                Cause::WriteError,
            ),
            (sig(None, false), true, Cause::StreamReset),
            (sig(None, false), false, Cause::Unknown),
            (None, true, Cause::Unknown),
            (None, false, Cause::Unknown),
        ];
        for (conn, h2, want) in cases {
            assert_eq!(break_cause(conn, h2), want, "{conn:?} h2={h2}");
        }
    }

    #[test]
    fn break_phase_table() {
        use BodyProgress::*;
        let cases = [
            (Untouched, false, Phase::Handler),
            (Done, false, Phase::Handler),
            (Reading, false, Phase::RequestBody),
            (Failed, false, Phase::RequestBody),
            (Failed, true, Phase::RequestBody),
            (Done, true, Phase::ResponseBody),
            (Untouched, true, Phase::ResponseBody),
            (Reading, true, Phase::ResponseBody),
        ];
        for (body, head, want) in cases {
            assert_eq!(break_phase(body, head), want, "{body:?} head={head}");
        }
    }

    #[test]
    fn recorded_status_table() {
        assert_eq!(recorded_status(Some(Phase::Handler), None), 499);
        assert_eq!(recorded_status(Some(Phase::RequestBody), Some(400)), 499);
        assert_eq!(recorded_status(Some(Phase::ResponseBody), Some(200)), 200);
        assert_eq!(recorded_status(None, Some(204)), 204);
    }

    #[test]
    fn close_reason_table() {
        let ev = |cause, in_flight, partial_head| {
            Some(ClientEvent {
                cause,
                in_flight,
                partial_head,
            })
        };
        let facts = |client_event, header_timeout, partial_head, served_any| CloseFacts {
            client_event,
            header_timeout,
            partial_head,
            served_any,
            client_asked_close: false,
            tls_handshake_incomplete: false,
        };
        let asked = |header_timeout| CloseFacts {
            client_asked_close: true,
            ..facts(None, header_timeout, false, true)
        };
        use CloseReason as R;
        let cases = [
            (
                facts(ev(Cause::Closed, false, false), false, false, true),
                R::Idle,
            ),
            (
                facts(ev(Cause::Closed, false, false), false, false, false),
                R::Idle,
            ),
            (
                facts(ev(Cause::Closed, true, false), false, false, true),
                R::ClientAbort,
            ),
            (
                facts(ev(Cause::Reset, true, false), false, false, true),
                R::ClientAbort,
            ),
            (
                facts(ev(Cause::Reset, false, false), false, false, true),
                R::Reset,
            ),
            (
                facts(ev(Cause::Closed, false, true), false, true, true),
                R::IncompleteRequest,
            ),
            (
                facts(ev(Cause::Timeout, true, false), false, false, true),
                R::Timeout,
            ),
            (
                facts(ev(Cause::Timeout, false, false), false, false, true),
                R::Timeout,
            ),
            (facts(None, true, true, true), R::IncompleteRequest),
            (facts(None, true, false, false), R::IncompleteRequest),
            (facts(None, true, false, true), R::Server),
            (facts(None, false, false, true), R::Server),
            (asked(false), R::Idle),
            (asked(true), R::Server),
            (
                CloseFacts {
                    client_asked_close: true,
                    ..facts(ev(Cause::Reset, true, false), false, false, true)
                },
                R::ClientAbort,
            ),
            (
                CloseFacts {
                    tls_handshake_incomplete: true,
                    ..facts(ev(Cause::Reset, false, false), false, false, false)
                },
                R::TlsHandshake,
            ),
        ];
        for (f, want) in cases {
            assert_eq!(close_reason(f), want, "{f:?}");
        }
    }

    #[test]
    fn methods_fold_to_other() {
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(method_label(&http::Method::PATCH), "PATCH");
        let odd = http::Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_label(&odd), "_OTHER");
    }
}

#[cfg(test)]
mod close_request_tests {
    use super::request_asks_to_close as asks_to_close;

    #[test]
    fn a_close_is_asked_by_connection_close_or_http_1_0_without_keep_alive() {
        let cases = [
            (http::Version::HTTP_11, None, false),
            (http::Version::HTTP_11, Some("close"), true),
            (http::Version::HTTP_11, Some("Keep-Alive, Close"), true),
            (http::Version::HTTP_11, Some("keep-alive"), false),
            (http::Version::HTTP_10, None, true),
            (http::Version::HTTP_10, Some("keep-alive"), false),
            (http::Version::HTTP_2, Some("close"), false),
        ];
        for (version, connection, expected) in cases {
            let mut req = http::Request::builder().version(version);
            if let Some(value) = connection {
                req = req.header(http::header::CONNECTION, value);
            }
            let req = req.body(()).unwrap();
            assert_eq!(asks_to_close(&req), expected, "{version:?} {connection:?}");
        }
    }
}

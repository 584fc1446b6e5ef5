//! Why a watched connection's requests are left out of the request metrics:
//! the `reason` label of `clientgone_watch_connections_skipped_total`
//! (docs/metrics.md). Its own module, so that the protocol followers
//! (`http1.rs`) and the connection tracker (`conn.rs`) both use it without
//! importing each other.

/// Why a connection's requests are left out of the request metrics (its
/// connection-level close is still counted). Bounded: the label values of
/// `clientgone_watch_connections_skipped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// TLS: no plaintext to read (the server's TLS library is not a probed
    /// OpenSSL).
    Tls,
    /// TLS from a process that uses a probed OpenSSL, but whose connection
    /// could not be tied to its SSL object (the library reads and writes
    /// through memory buffers, as asyncio's `ssl` does, not the socket).
    TlsUnmapped,
    /// HTTP/2 whose header compression could not be kept in step: a header
    /// block not captured whole or not decodable, or more streams open at
    /// once than are followed. Never decoded wrongly.
    Http2,
    /// The bytes are not HTTP/1, or a head was not captured whole (longer than
    /// the capture, or moved by sendfile/splice/io_uring before its head).
    Unparsed,
    /// The client sent the next request before the response was done.
    Pipelined,
    /// The connection switched protocols (101, CONNECT).
    Upgraded,
    /// Kernel events of this connection were lost (the ring buffer was full).
    Lost,
}

impl Skip {
    /// All reasons, in label order.
    pub const ALL: [Skip; 7] = [
        Skip::Tls,
        Skip::TlsUnmapped,
        Skip::Http2,
        Skip::Unparsed,
        Skip::Pipelined,
        Skip::Upgraded,
        Skip::Lost,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Skip::Tls => "tls",
            Skip::TlsUnmapped => "tls_unmapped",
            Skip::Http2 => "http2",
            Skip::Unparsed => "unparsed",
            Skip::Pipelined => "pipelined",
            Skip::Upgraded => "upgraded",
            Skip::Lost => "lost_events",
        }
    }
}

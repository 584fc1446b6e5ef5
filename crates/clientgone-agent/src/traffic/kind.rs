//! The kinds of request the generator sends, and what each should leave on `/metrics`.

/// One scripted client behaviour against the demo's routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `GET /items/{n}`, read to the end, then a clean close.
    Completed,
    /// `GET /hello?delay_ms=60000`, then FIN while the handler waits.
    FinHandler,
    /// `GET /hello?delay_ms=60000`, then RST (`SO_LINGER` 0) while the handler waits.
    RstHandler,
    /// `POST /upload` declaring 1 MB, sending 1 KB, then FIN.
    HalfBody,
    /// `GET /stream`, the first chunk read, then RST.
    MidStream,
    /// HTTP/2 `GET /hello?delay_ms=60000`, then `RST_STREAM(CANCEL)`.
    H2Reset,
}

/// What one kind should add to the server's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// `http_route`.
    pub route: &'static str,
    /// `http_request_method`.
    pub method: &'static str,
    /// `(phase, cause)` of the break, or `None` for a completed request.
    pub disconnect: Option<(&'static str, &'static str)>,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 6] = [
        Kind::Completed,
        Kind::FinHandler,
        Kind::RstHandler,
        Kind::HalfBody,
        Kind::MidStream,
        Kind::H2Reset,
    ];

    /// Its name in flags and tables.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Completed => "completed",
            Kind::FinHandler => "fin",
            Kind::RstHandler => "rst",
            Kind::HalfBody => "half-body",
            Kind::MidStream => "mid-stream",
            Kind::H2Reset => "h2-reset",
        }
    }

    /// What it should leave on the server's `/metrics`.
    pub const fn expectation(self) -> Expectation {
        let (route, method, disconnect) = match self {
            Kind::Completed => ("/items/{id}", "GET", None),
            Kind::FinHandler => ("/hello", "GET", Some(("handler", "closed"))),
            Kind::RstHandler => ("/hello", "GET", Some(("handler", "reset"))),
            Kind::HalfBody => ("/upload", "POST", Some(("request_body", "closed"))),
            Kind::MidStream => ("/stream", "GET", Some(("response_body", "reset"))),
            Kind::H2Reset => ("/hello", "GET", Some(("handler", "stream_reset"))),
        };
        Expectation {
            route,
            method,
            disconnect,
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

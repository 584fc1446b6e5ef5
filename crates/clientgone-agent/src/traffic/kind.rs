//! The kinds of request the generator sends, and what each should leave on `/metrics`.

/// One scripted client behaviour against the demo's routes and gRPC service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
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
    /// gRPC `Wait` answered in 1 ms.
    GrpcCompleted,
    /// gRPC `Wait` cancelled while the handler waits (`RST_STREAM` CANCEL).
    GrpcCancel,
    /// gRPC `Wait` whose deadline (`grpc-timeout`) runs out in the handler.
    GrpcDeadline,
    /// gRPC `Ticks` (server stream) dropped after three messages.
    GrpcStreamCancel,
    /// gRPC `Upload` (client stream) dropped after three chunks.
    GrpcUploadAbort,
}

/// Which series a kind's request or call is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Series {
    /// An HTTP request: `http_server_*`.
    Http {
        /// `http_route`.
        route: &'static str,
        /// `http_request_method`.
        method: &'static str,
    },
    /// A gRPC call: `rpc_server_*`.
    Grpc {
        /// `rpc_method`.
        method: &'static str,
        /// `rpc_type`.
        rpc_type: &'static str,
    },
}

/// What one kind should add to the server's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// The request's or call's series.
    pub series: Series,
    /// `(phase, cause)` of the break, or `None` for a completed one.
    pub disconnect: Option<(&'static str, &'static str)>,
}

impl Expectation {
    /// The counter this kind moves by one per scripted request: the duration
    /// histogram's `_count` (`outcome="completed"`) or the disconnects counter.
    pub fn metric(&self) -> &'static str {
        match (self.series, self.disconnect) {
            (Series::Http { .. }, None) => "http_server_request_duration_seconds_count",
            (Series::Http { .. }, Some(_)) => "http_server_client_disconnects_total",
            (Series::Grpc { .. }, None) => "rpc_server_call_duration_seconds_count",
            (Series::Grpc { .. }, Some(_)) => "rpc_server_client_disconnects_total",
        }
    }

    /// The labels of [`metric`](Self::metric) this kind moves.
    pub fn labels(&self) -> Vec<(&'static str, &'static str)> {
        let mut labels = match self.series {
            Series::Http { route, method } => {
                vec![("http_route", route), ("http_request_method", method)]
            }
            Series::Grpc { method, rpc_type } => {
                vec![("rpc_method", method), ("rpc_type", rpc_type)]
            }
        };
        match self.disconnect {
            None => labels.push(("outcome", "completed")),
            Some((phase, cause)) => labels.extend([("phase", phase), ("cause", cause)]),
        }
        labels
    }
}

const WAIT: &str = "clientgone.demo.v1.Demo/Wait";
const TICKS: &str = "clientgone.demo.v1.Demo/Ticks";
const UPLOAD: &str = "clientgone.demo.v1.Demo/Upload";

impl Kind {
    /// How many kinds there are.
    pub const COUNT: usize = 11;

    /// Every kind, in table order.
    pub const ALL: [Kind; Kind::COUNT] = [
        Kind::Completed,
        Kind::FinHandler,
        Kind::RstHandler,
        Kind::HalfBody,
        Kind::MidStream,
        Kind::H2Reset,
        Kind::GrpcCompleted,
        Kind::GrpcCancel,
        Kind::GrpcDeadline,
        Kind::GrpcStreamCancel,
        Kind::GrpcUploadAbort,
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
            Kind::GrpcCompleted => "grpc-completed",
            Kind::GrpcCancel => "grpc-cancel",
            Kind::GrpcDeadline => "grpc-deadline",
            Kind::GrpcStreamCancel => "grpc-stream-cancel",
            Kind::GrpcUploadAbort => "grpc-upload-abort",
        }
    }

    /// Whether it is a gRPC call.
    pub const fn is_grpc(self) -> bool {
        matches!(self.expectation().series, Series::Grpc { .. })
    }

    /// What it should leave on the server's `/metrics`.
    pub const fn expectation(self) -> Expectation {
        const fn http(route: &'static str, method: &'static str) -> Series {
            Series::Http { route, method }
        }
        const fn grpc(method: &'static str, rpc_type: &'static str) -> Series {
            Series::Grpc { method, rpc_type }
        }
        let (series, disconnect) = match self {
            Kind::Completed => (http("/items/{id}", "GET"), None),
            Kind::FinHandler => (http("/hello", "GET"), Some(("handler", "closed"))),
            Kind::RstHandler => (http("/hello", "GET"), Some(("handler", "reset"))),
            Kind::HalfBody => (http("/upload", "POST"), Some(("request_body", "closed"))),
            Kind::MidStream => (http("/stream", "GET"), Some(("response_body", "reset"))),
            Kind::H2Reset => (http("/hello", "GET"), Some(("handler", "stream_reset"))),
            Kind::GrpcCompleted => (grpc(WAIT, "unary"), None),
            Kind::GrpcCancel => (grpc(WAIT, "unary"), Some(("handler", "stream_reset"))),
            Kind::GrpcDeadline => (grpc(WAIT, "unary"), Some(("handler", "deadline_exceeded"))),
            Kind::GrpcStreamCancel => (
                grpc(TICKS, "server_streaming"),
                Some(("response_body", "stream_reset")),
            ),
            Kind::GrpcUploadAbort => (
                grpc(UPLOAD, "client_streaming"),
                Some(("request_body", "stream_reset")),
            ),
        };
        Expectation { series, disconnect }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

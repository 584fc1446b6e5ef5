//! [`GrpcStatus`]: the gRPC status a call ended with, as its label says it.

use http::{HeaderMap, HeaderName};

use crate::classify::Cause;
use crate::record::End;

/// Built once: a `&str` name is parsed into a header name at every lookup.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The names of the gRPC status codes 0 to 16, in code order
/// (`rpc.response.status_code` of the OpenTelemetry RPC conventions).
const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A gRPC status code (`grpc-status`), one of the 17 the protocol defines.
///
/// Codes outside them read as `UNKNOWN`, as the gRPC specification says a
/// client must treat them, so the label stays bounded whatever a server sends.
///
/// ```
/// use clientgone::GrpcStatus;
///
/// assert_eq!(GrpcStatus::from_code(4).as_str(), "DEADLINE_EXCEEDED");
/// assert_eq!(GrpcStatus::from_code(99), GrpcStatus::UNKNOWN);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrpcStatus(u8);

impl GrpcStatus {
    /// `0`, the call succeeded.
    pub const OK: GrpcStatus = GrpcStatus(0);
    /// `1`, the call was cancelled (by the client, or tonic's own timeout).
    pub const CANCELLED: GrpcStatus = GrpcStatus(1);
    /// `2`, an error nothing else describes.
    pub const UNKNOWN: GrpcStatus = GrpcStatus(2);
    /// `4`, the deadline ran out.
    pub const DEADLINE_EXCEEDED: GrpcStatus = GrpcStatus(4);
    /// `14`, the service cannot be reached.
    pub const UNAVAILABLE: GrpcStatus = GrpcStatus(14);

    /// The status with this code; `UNKNOWN` for codes the protocol does not define.
    pub const fn from_code(code: u32) -> GrpcStatus {
        if code < NAMES.len() as u32 {
            GrpcStatus(code as u8)
        } else {
            GrpcStatus::UNKNOWN
        }
    }

    /// The numeric code.
    pub const fn code(self) -> u8 {
        self.0
    }

    /// The label value: the code's name (`OK`, `CANCELLED`, …).
    pub const fn as_str(self) -> &'static str {
        NAMES[self.0 as usize]
    }

    /// The `grpc-status` of a trailers block or a trailers-only head, if it
    /// has one; a value that is no number is `UNKNOWN`.
    pub fn from_headers(headers: &HeaderMap) -> Option<GrpcStatus> {
        let value = headers.get(GRPC_STATUS)?;
        let code = std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        Some(code.map_or(GrpcStatus::UNKNOWN, GrpcStatus::from_code))
    }

    /// The status a client infers from an HTTP status that came without any
    /// `grpc-status` (a proxy's or router's error page), as the gRPC
    /// specification's table maps them.
    pub const fn from_http(status: u16) -> GrpcStatus {
        GrpcStatus(match status {
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502 | 503 | 504 => 14,
            _ => 2,
        })
    }
}

impl std::fmt::Display for GrpcStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status a call is recorded with: for a break, `CANCELLED` (or
/// `DEADLINE_EXCEEDED` at the client's deadline), whatever the server was
/// about to send; else the `grpc-status` sent, or what a client reads from
/// an HTTP status that came without one. The one rule every source of calls
/// (the layer, `clientgone watch`) records with.
///
/// ```
/// use clientgone::{Cause, End, GrpcStatus, Phase, call_status};
///
/// let broken = End::Disconnect { phase: Phase::Handler, cause: Cause::StreamReset };
/// assert_eq!(call_status(broken, Some(GrpcStatus::OK), Some(200)), GrpcStatus::CANCELLED);
/// assert_eq!(call_status(End::Completed, None, Some(200)), GrpcStatus::UNKNOWN);
/// assert_eq!(call_status(End::Completed, None, Some(503)), GrpcStatus::UNAVAILABLE);
/// ```
pub fn call_status(end: End, sent: Option<GrpcStatus>, http: Option<u16>) -> GrpcStatus {
    match end {
        End::Disconnect {
            cause: Cause::DeadlineExceeded,
            ..
        } => GrpcStatus::DEADLINE_EXCEEDED,
        End::Disconnect { .. } => GrpcStatus::CANCELLED,
        _ => match (sent, http) {
            (Some(status), _) => status,
            (None, Some(200) | None) => GrpcStatus::UNKNOWN,
            (None, Some(http)) => GrpcStatus::from_http(http),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn codes_and_names() {
        for (code, name) in NAMES.iter().enumerate() {
            assert_eq!(GrpcStatus::from_code(code as u32).as_str(), *name);
        }
        assert_eq!(GrpcStatus::from_code(17), GrpcStatus::UNKNOWN);
        assert_eq!(GrpcStatus::from_code(u32::MAX), GrpcStatus::UNKNOWN);
    }

    #[test]
    fn from_headers_table() {
        let cases: [(Option<&str>, Option<GrpcStatus>); 6] = [
            (None, None),
            (Some("0"), Some(GrpcStatus::OK)),
            (Some("14"), Some(GrpcStatus::UNAVAILABLE)),
            (Some(" 4 "), Some(GrpcStatus::DEADLINE_EXCEEDED)),
            (Some("400"), Some(GrpcStatus::UNKNOWN)),
            (Some("ok"), Some(GrpcStatus::UNKNOWN)),
        ];
        for (value, want) in cases {
            let mut headers = HeaderMap::new();
            if let Some(v) = value {
                headers.insert("grpc-status", HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(GrpcStatus::from_headers(&headers), want, "{value:?}");
        }
    }

    #[test]
    fn from_http_table() {
        let cases = [
            (400, "INTERNAL"),
            (401, "UNAUTHENTICATED"),
            (403, "PERMISSION_DENIED"),
            (404, "UNIMPLEMENTED"),
            (429, "UNAVAILABLE"),
            (502, "UNAVAILABLE"),
            (503, "UNAVAILABLE"),
            (504, "UNAVAILABLE"),
            (500, "UNKNOWN"),
            (200, "UNKNOWN"),
        ];
        for (http, want) in cases {
            assert_eq!(GrpcStatus::from_http(http).as_str(), want, "{http}");
        }
    }
}

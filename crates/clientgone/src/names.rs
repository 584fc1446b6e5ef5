//! The names of the metric families and their labels, each spelt once: the
//! layer's registration, `clientgone watch` and `clientgone proxy`, and the
//! OTLP metrics bridge all read them from here. `docs/metrics.md` lists them
//! with their types and label values, and a test
//! (`crates/clientgone-agent/tests/reference.rs`) holds the two equal. Tests
//! that read `/metrics` spell the names themselves, on purpose: they are the
//! check that a name did not change.
//!
//! ```
//! use clientgone::names;
//!
//! assert_eq!(names::HTTP_SERVER_CLIENT_DISCONNECTS.prometheus, "http_server_client_disconnects_total");
//! assert_eq!(names::HTTP_SERVER_CLIENT_DISCONNECTS.otel, "http.server.client_disconnects");
//! assert_eq!(names::label::otel_attribute(names::label::HTTP_ROUTE), "http.route");
//! ```

/// A metric family: its Prometheus name, and its OpenTelemetry name and unit
/// (what the OTLP metrics bridge exports it as).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Family {
    /// The Prometheus family name.
    pub prometheus: &'static str,
    /// The OpenTelemetry instrument name.
    pub otel: &'static str,
    /// The OpenTelemetry unit (UCUM).
    pub unit: &'static str,
}

const fn family(prometheus: &'static str, otel: &'static str, unit: &'static str) -> Family {
    Family {
        prometheus,
        otel,
        unit,
    }
}

/// Every HTTP server request, completed or broken off (histogram).
pub const HTTP_SERVER_REQUEST_DURATION: Family = family(
    "http_server_request_duration_seconds",
    "http.server.request.duration",
    "s",
);
/// HTTP server requests in flight (gauge).
pub const HTTP_SERVER_ACTIVE_REQUESTS: Family = family(
    "http_server_active_requests",
    "http.server.active_requests",
    "{request}",
);
/// Requests the client broke off (counter).
pub const HTTP_SERVER_CLIENT_DISCONNECTS: Family = family(
    "http_server_client_disconnects_total",
    "http.server.client_disconnects",
    "{request}",
);
/// How long the client waited before it broke off (histogram).
pub const HTTP_SERVER_CLIENT_DISCONNECT_ELAPSED: Family = family(
    "http_server_client_disconnect_elapsed_seconds",
    "http.server.client_disconnect.elapsed",
    "s",
);
/// Open client connections (gauge).
pub const HTTP_SERVER_OPEN_CONNECTIONS: Family = family(
    "http_server_open_connections",
    "http.server.open_connections",
    "{connection}",
);
/// Closed client connections, by why (counter).
pub const HTTP_SERVER_CONNECTION_CLOSES: Family = family(
    "http_server_connection_closes_total",
    "http.server.connection.closes",
    "{connection}",
);
/// Lifetime of client connections (histogram).
pub const HTTP_SERVER_CONNECTION_DURATION: Family = family(
    "http_server_connection_duration_seconds",
    "http.server.connection.duration",
    "s",
);
/// The proxy's requests to its upstream (histogram).
pub const HTTP_CLIENT_REQUEST_DURATION: Family = family(
    "http_client_request_duration_seconds",
    "http.client.request.duration",
    "s",
);
/// Every gRPC server call, completed or broken off (histogram).
pub const RPC_SERVER_CALL_DURATION: Family = family(
    "rpc_server_call_duration_seconds",
    "rpc.server.call.duration",
    "s",
);
/// gRPC server calls in flight (gauge).
pub const RPC_SERVER_ACTIVE_CALLS: Family = family(
    "rpc_server_active_calls",
    "rpc.server.active_calls",
    "{call}",
);
/// Calls the client broke off (counter).
pub const RPC_SERVER_CLIENT_DISCONNECTS: Family = family(
    "rpc_server_client_disconnects_total",
    "rpc.server.client_disconnects",
    "{call}",
);
/// How long the client waited before it broke off a call (histogram).
pub const RPC_SERVER_CLIENT_DISCONNECT_ELAPSED: Family = family(
    "rpc_server_client_disconnect_elapsed_seconds",
    "rpc.server.client_disconnect.elapsed",
    "s",
);

/// The families of requests, calls and connections: what the OTLP metrics
/// bridge exports.
pub const FAMILIES: [Family; 12] = [
    HTTP_SERVER_REQUEST_DURATION,
    HTTP_SERVER_ACTIVE_REQUESTS,
    HTTP_SERVER_CLIENT_DISCONNECTS,
    HTTP_SERVER_CLIENT_DISCONNECT_ELAPSED,
    HTTP_SERVER_OPEN_CONNECTIONS,
    HTTP_SERVER_CONNECTION_CLOSES,
    HTTP_SERVER_CONNECTION_DURATION,
    HTTP_CLIENT_REQUEST_DURATION,
    RPC_SERVER_CALL_DURATION,
    RPC_SERVER_ACTIVE_CALLS,
    RPC_SERVER_CLIENT_DISCONNECTS,
    RPC_SERVER_CLIENT_DISCONNECT_ELAPSED,
];

/// Label names.
pub mod label {
    /// The request's method (ten values, `_OTHER` for the rest).
    pub const HTTP_REQUEST_METHOD: &str = "http_request_method";
    /// The route template, or `unmatched`.
    pub const HTTP_ROUTE: &str = "http_route";
    /// The status the request is recorded with.
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http_response_status_code";
    /// `completed`, `client_disconnect` (or the proxy's upstream outcomes).
    pub const OUTCOME: &str = "outcome";
    /// Where the client broke off.
    pub const PHASE: &str = "phase";
    /// How the client broke off.
    pub const CAUSE: &str = "cause";
    /// Why a connection closed.
    pub const REASON: &str = "reason";
    /// `grpc`.
    pub const RPC_SYSTEM_NAME: &str = "rpc_system_name";
    /// `pkg.Service/Method`, or `_OTHER`.
    pub const RPC_METHOD: &str = "rpc_method";
    /// How the method streams.
    pub const RPC_TYPE: &str = "rpc_type";
    /// The gRPC status name.
    pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc_response_status_code";
    /// The port `clientgone watch` watched.
    pub const SERVER_PORT: &str = "server_port";

    /// A label's OpenTelemetry attribute name (dotted, as the semantic
    /// conventions spell it); a label of clientgone's own keeps its name.
    pub fn otel_attribute(label: &str) -> &str {
        match label {
            HTTP_REQUEST_METHOD => "http.request.method",
            HTTP_ROUTE => "http.route",
            HTTP_RESPONSE_STATUS_CODE => "http.response.status_code",
            SERVER_PORT => "server.port",
            RPC_SYSTEM_NAME => "rpc.system.name",
            RPC_METHOD => "rpc.method",
            RPC_TYPE => "rpc.type",
            RPC_RESPONSE_STATUS_CODE => "rpc.response.status_code",
            other => other,
        }
    }
}

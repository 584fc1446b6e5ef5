//! [`Record`]: what one request's end looked like — the only thing sinks see.

use std::time::Duration;

use crate::classify::{Cause, Outcome, Phase};
use crate::grpc::{GrpcStatus, RpcType};

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum End {
    /// The response body reached its end.
    Completed,
    /// The client broke off while the request was in flight.
    Disconnect {
        /// Where the request was.
        phase: Phase,
        /// How the break showed on the wire.
        cause: Cause,
    },
}

impl End {
    /// The `outcome` label of this end.
    pub fn outcome(self) -> Outcome {
        match self {
            End::Completed => Outcome::Completed,
            End::Disconnect { .. } => Outcome::ClientDisconnect,
        }
    }
}

/// One request's end, built once by the request guard and handed to the sinks
/// (metrics, traces). Sinks never look back at sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The `http_request_method` label (`_OTHER` for non-standard methods).
    pub method: &'static str,
    /// The route template, or `unmatched`.
    pub route: &'a str,
    /// The status the request is recorded with (499 when none was sent).
    pub status: u16,
    /// Completed, or where and how the client broke off.
    pub end: End,
    /// From the request's arrival to its end (or to the moment the break was noticed).
    pub elapsed: Duration,
    /// Response body bytes handed to the connection before the end.
    pub body_bytes_sent: u64,
}

/// One gRPC call's end: the [`Record`] of a call, handed to the
/// `rpc_server_*` metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord<'a> {
    /// The `rpc_method` label: `pkg.Service/Method`, or `_OTHER`.
    pub method: &'a str,
    /// How the method streams.
    pub rpc_type: RpcType,
    /// The status the call is recorded with: the one sent, `CANCELLED` for a
    /// break, `DEADLINE_EXCEEDED` for a break at the client's deadline.
    pub status: GrpcStatus,
    /// Completed, or where and how the client broke off.
    pub end: End,
    /// From the call's arrival to its end (or to the moment the break was noticed).
    pub elapsed: Duration,
    /// Response body bytes (gRPC frames) handed to the connection before the end.
    pub body_bytes_sent: u64,
}

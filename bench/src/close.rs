//! [`Close`]: how a benchmark client leaves — the two ways a real client breaks
//! a connection, shared by the detection and proxy-cancel benchmarks.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Close {
    /// `close()`: the kernel sends FIN.
    Fin,
    /// `SO_LINGER` 0, then `close()`: the kernel sends RST.
    Rst,
}

impl Close {
    /// The row label in tables.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Close::Fin => "FIN (close)",
            Close::Rst => "RST (SO_LINGER 0)",
        }
    }

    /// Closes `stream` this way; returns the instant just before the close,
    /// the start of every latency these benchmarks measure.
    pub(crate) fn close(self, stream: TcpStream) -> Result<Instant, String> {
        if self == Close::Rst {
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .map_err(|e| format!("cannot set SO_LINGER: {e}"))?;
        }
        let closed_at = Instant::now();
        drop(stream);
        Ok(closed_at)
    }
}

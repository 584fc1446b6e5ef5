//! [`ConnectionOptions`]: the socket options that let a silent break be found in
//! bounded time, and the header-read timeout that ends half-sent request heads.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Socket and connection options applied to every accepted connection.
///
/// The defaults find a client that vanished without FIN or RST in about 30 s:
/// keepalive probes start after 10 s of silence, every 5 s, 3 of them; on Linux
/// `TCP_USER_TIMEOUT` (30 s) then decides when the connection is declared dead,
/// both for unanswered probes and for unacknowledged response bytes. So the
/// time to notice is about `max(idle + interval × retries, user_timeout)`.
///
/// ```
/// use std::time::Duration;
/// use clientgone::ConnectionOptions;
///
/// let options = ConnectionOptions::default()
///     .tcp_keepalive_idle(Duration::from_secs(5))
///     .tcp_user_timeout(Some(Duration::from_secs(15)));
/// assert_eq!(options.header_read_timeout, Some(Duration::from_secs(10)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionOptions {
    /// Idle time before the first keepalive probe; `None` turns keepalive off.
    pub tcp_keepalive_idle: Option<Duration>,
    /// Time between keepalive probes.
    pub tcp_keepalive_interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub tcp_keepalive_retries: u32,
    /// `TCP_USER_TIMEOUT` (Linux): how long written data may stay unacknowledged.
    pub tcp_user_timeout: Option<Duration>,
    /// `TCP_NODELAY`.
    pub tcp_nodelay: bool,
    /// How long a client may take to send a complete HTTP/1 request head.
    pub header_read_timeout: Option<Duration>,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            tcp_keepalive_idle: Some(Duration::from_secs(10)),
            tcp_keepalive_interval: Duration::from_secs(5),
            tcp_keepalive_retries: 3,
            tcp_user_timeout: Some(Duration::from_secs(30)),
            tcp_nodelay: true,
            header_read_timeout: Some(Duration::from_secs(10)),
        }
    }
}

impl ConnectionOptions {
    /// Sets the idle time before keepalive probes start (`None`: no keepalive).
    pub fn tcp_keepalive_idle(mut self, idle: impl Into<Option<Duration>>) -> Self {
        self.tcp_keepalive_idle = idle.into();
        self
    }

    /// Sets the time between keepalive probes.
    pub fn tcp_keepalive_interval(mut self, interval: Duration) -> Self {
        self.tcp_keepalive_interval = interval;
        self
    }

    /// Sets how many unanswered probes end the connection.
    pub fn tcp_keepalive_retries(mut self, retries: u32) -> Self {
        self.tcp_keepalive_retries = retries;
        self
    }

    /// Sets `TCP_USER_TIMEOUT` (`None`: the kernel's default, many minutes).
    pub fn tcp_user_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.tcp_user_timeout = timeout.into();
        self
    }

    /// Sets `TCP_NODELAY`.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// Sets the time allowed for a complete HTTP/1 request head (`None`: unbounded).
    pub fn header_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.header_read_timeout = timeout.into();
        self
    }

    /// Applies the socket options to an accepted stream.
    ///
    /// A failure is logged and otherwise ignored: a connection without keepalive
    /// is still worth serving.
    pub(crate) fn apply(&self, stream: &TcpStream) {
        let sock = SockRef::from(stream);
        if let Err(e) = sock.set_tcp_nodelay(self.tcp_nodelay) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        if let Some(idle) = self.tcp_keepalive_idle {
            let keepalive = TcpKeepalive::new()
                .with_time(idle)
                .with_interval(self.tcp_keepalive_interval)
                .with_retries(self.tcp_keepalive_retries);
            if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
                tracing::debug!(error = %e, "cannot set TCP keepalive");
            }
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(e) = sock.set_tcp_user_timeout(self.tcp_user_timeout) {
            tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
        }
    }
}

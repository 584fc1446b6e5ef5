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
    /// The longest keepalive idle time and interval Linux takes (whole
    /// seconds, `MAX_TCP_KEEPIDLE`); longer ones are applied as this.
    pub const MAX_TCP_KEEPALIVE: Duration = Duration::from_secs(32_767);

    /// The most keepalive probes Linux takes (`MAX_TCP_KEEPCNT`).
    pub const MAX_TCP_KEEPALIVE_RETRIES: u32 = 127;

    /// The longest `TCP_USER_TIMEOUT` Linux takes (milliseconds in a C `int`,
    /// about 24.8 days); longer ones are applied as this.
    pub const MAX_TCP_USER_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

    /// Sets the idle time before keepalive probes start (`None`: no keepalive).
    /// The kernel counts whole seconds: a fraction is rounded up.
    pub fn tcp_keepalive_idle(mut self, idle: impl Into<Option<Duration>>) -> Self {
        self.tcp_keepalive_idle = idle.into();
        self
    }

    /// Sets the time between keepalive probes (whole seconds, rounded up).
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
                .with_time(keepalive_seconds(idle))
                .with_interval(keepalive_seconds(self.tcp_keepalive_interval))
                .with_retries(
                    self.tcp_keepalive_retries
                        .clamp(1, Self::MAX_TCP_KEEPALIVE_RETRIES),
                );
            if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
                warn_once(&e, "cannot set TCP keepalive: silent breaks go unnoticed");
            }
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(e) = sock.set_tcp_user_timeout(self.tcp_user_timeout.map(user_timeout)) {
            warn_once(&e, "cannot set TCP_USER_TIMEOUT");
        }
    }
}

/// A socket option the kernel refuses is refused on every connection: said
/// once as a warning, then only at debug level.
fn warn_once(error: &std::io::Error, what: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(%error, "{what}");
    } else {
        tracing::warn!(%error, "{what} (further failures are logged at debug level)");
    }
}

/// A keepalive time as Linux takes it: whole seconds (a fraction rounded up,
/// where socket2 would truncate 500 ms to the invalid 0), 1 to the maximum.
fn keepalive_seconds(d: Duration) -> Duration {
    let seconds = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(seconds).clamp(Duration::from_secs(1), ConnectionOptions::MAX_TCP_KEEPALIVE)
}

/// A user timeout as Linux takes it: 1 ms (0 would mean "the default") to the maximum.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn user_timeout(d: Duration) -> Duration {
    d.clamp(
        Duration::from_millis(1),
        ConnectionOptions::MAX_TCP_USER_TIMEOUT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_times_are_whole_seconds_the_kernel_takes() {
        let ms = Duration::from_millis;
        assert_eq!(keepalive_seconds(ms(500)), Duration::from_secs(1));
        assert_eq!(keepalive_seconds(ms(1500)), Duration::from_secs(2));
        assert_eq!(
            keepalive_seconds(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert_eq!(
            keepalive_seconds(Duration::from_secs(36_000)),
            ConnectionOptions::MAX_TCP_KEEPALIVE
        );
        assert_eq!(user_timeout(Duration::from_nanos(1)), ms(1));
        assert_eq!(
            user_timeout(Duration::from_secs(30 * 86_400)),
            ConnectionOptions::MAX_TCP_USER_TIMEOUT
        );
    }

    /// The values above are the ones Linux accepts: set on a real socket.
    #[tokio::test]
    async fn extreme_options_still_apply_to_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let options = ConnectionOptions::default()
            .tcp_keepalive_idle(Duration::from_secs(36_000))
            .tcp_keepalive_interval(Duration::from_millis(500))
            .tcp_keepalive_retries(1000)
            .tcp_user_timeout(Duration::from_secs(30 * 86_400));
        options.apply(&stream);
        let sock = SockRef::from(&stream);
        assert_eq!(
            sock.tcp_keepalive_time().unwrap(),
            ConnectionOptions::MAX_TCP_KEEPALIVE
        );
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 127);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(ConnectionOptions::MAX_TCP_USER_TIMEOUT)
        );
    }
}

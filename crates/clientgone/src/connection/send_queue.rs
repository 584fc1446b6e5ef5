//! How many bytes the kernel still holds in a socket's send queue.
//!
//! This is the one place the crate uses `unsafe`: Linux exposes the figure only
//! through `ioctl(SIOCOUTQ)`, which neither std, tokio nor socket2 wraps.

use std::os::fd::AsRawFd;

/// Bytes written by the server that the peer has not acknowledged (sent or not),
/// read when a break is detected: "did the client ever get the answer?".
///
/// `None` where the platform cannot tell.
#[cfg(target_os = "linux")]
pub(crate) fn unacked_bytes(socket: &impl AsRawFd) -> Option<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: the descriptor is open for as long as `socket` is borrowed, and
    // SIOCOUTQ (== TIOCOUTQ on Linux) writes exactly one c_int into `queued`,
    // which outlives the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    (rc == 0).then(|| u64::try_from(queued).unwrap_or(0))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn unacked_bytes(_socket: &impl AsRawFd) -> Option<u64> {
    None
}

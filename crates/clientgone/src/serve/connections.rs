//! [`Connections`]: the live connections of one server, and the one task that
//! cuts off slow request heads.
//!
//! A connection must be stopped for three reasons: its request head is too slow
//! (header-read timeout), the server shuts down (graceful, then forced after the
//! grace period). Racing a timer and two tokens against each connection in a
//! `select!` polls all of them on *every* wake-up of the connection — once or
//! twice per request. Here each connection has one [`Control`] instead: whoever
//! stops it sets the reason and wakes it, and the connection reads the reason
//! with atomic loads per poll. Slow heads are found by one task per server that
//! looks at every connection each tick; the connection itself confirms, in its
//! own task, that it is still waiting for that head before it gives up — a head
//! that completed meanwhile on another worker is never cut off.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use slab::Slab;

use crate::connection::ConnectionState;

/// Whether the server is stopping a connection, in increasing order of force.
/// (A slow head is not a stop asked from outside: the connection confirms it
/// itself, see `head_overdue`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Stop {
    Running = 0,
    /// Finish the requests in flight, then close.
    Graceful = 1,
    /// The grace period is over: close now.
    Force = 2,
}

impl Stop {
    fn from_u8(v: u8) -> Stop {
        match v {
            0 => Stop::Running,
            1 => Stop::Graceful,
            _ => Stop::Force,
        }
    }
}

/// How a connection learns that it must stop.
#[derive(Debug, Default)]
pub(crate) struct Control {
    stop: AtomicU8,
    /// The head watcher saw this connection wait too long for a head; the
    /// connection checks again before it gives up.
    head_overdue: AtomicBool,
    /// Woken by reference, never taken: a graceful stop and the forced one
    /// after it must both reach the connection.
    waker: Mutex<Option<Waker>>,
}

impl Control {
    fn get(&self) -> Stop {
        Stop::from_u8(self.stop.load(Ordering::Acquire))
    }

    /// Nobody has asked this connection to stop.
    pub(crate) fn is_running(&self) -> bool {
        self.get() == Stop::Running
    }

    /// Raises the reason (never lowers it) and wakes the connection.
    fn stop(&self, stop: Stop) {
        self.stop.fetch_max(stop as u8, Ordering::AcqRel);
        self.wake();
    }

    fn head_overdue(&self) {
        self.head_overdue.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        if let Some(waker) = &*self.waker() {
            waker.wake_by_ref();
        }
    }

    fn waker(&self) -> MutexGuard<'_, Option<Waker>> {
        self.waker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ticks per header-read timeout: a head is cut off after it has been pending
/// for `HEAD_TICKS + 1` ticks of `timeout / HEAD_TICKS`, that is between 1 and
/// 1.25 (at most 1.5, right after a request) times the timeout — never sooner.
const HEAD_TICKS: u32 = 4;

/// Connections checked per hold of the lock by the head watcher.
const SCAN_SLICE: usize = 1024;

#[derive(Debug)]
struct Entry {
    state: Arc<ConnectionState>,
    control: Arc<Control>,
    /// Consecutive ticks this connection has waited for a head.
    pending_ticks: u32,
    /// Requests seen at the last tick: a new one means the head arrived.
    requests_seen: u64,
}

impl Entry {
    /// One tick of the head watcher for this connection.
    fn watch_head(&mut self) {
        let requests = self.state.requests();
        if self.state.is_waiting_for_head() && requests == self.requests_seen {
            self.pending_ticks += 1;
        } else {
            self.pending_ticks = 0;
        }
        self.requests_seen = requests;
        if self.pending_ticks > HEAD_TICKS {
            self.control.head_overdue();
        }
    }
}

/// The live connections of one server.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    entries: Mutex<Slab<Entry>>,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, Slab<Entry>> {
        // Every critical section leaves the slab whole: poisoning is ignored.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection; it is forgotten when the returned guard drops.
    pub(crate) fn register(
        self: &Arc<Self>,
        state: Arc<ConnectionState>,
    ) -> (Arc<Control>, Registration) {
        let control = Arc::new(Control::default());
        let key = self.lock().insert(Entry {
            requests_seen: state.requests(),
            state,
            control: control.clone(),
            pending_ticks: 0,
        });
        let registration = Registration {
            connections: self.clone(),
            key,
        };
        (control, registration)
    }

    /// Stops every connection. A forced stop marks each connection as closed
    /// by the server first, so the requests it drops are not client breaks.
    pub(crate) fn stop_all(&self, stop: Stop) {
        for (_, entry) in self.lock().iter() {
            if stop == Stop::Force {
                entry.state.mark_server_closing();
            }
            entry.control.stop(stop);
        }
    }

    /// Tells, every tick, the connections whose HTTP/1 request head has been
    /// pending for longer than `timeout` (a slow-loris client, or one that
    /// connected and sent nothing) that it is overdue. Runs as long as the
    /// server or any of its connections lives.
    ///
    /// A connection waits for a head when nothing is in flight and either a
    /// head has started arriving or no request was ever seen.
    pub(crate) async fn watch_heads(connections: Weak<Self>, timeout: Duration) {
        // A timeout shorter than the timer's resolution still ticks sanely.
        let tick = (timeout / HEAD_TICKS).max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(this) = connections.upgrade() else {
                return;
            };
            // In slices, letting go of the lock (and the worker) in between:
            // with 100k connections one pass would hold up accepts and closes
            // for about a millisecond.
            let mut next = 0;
            loop {
                let done = {
                    let mut entries = this.lock();
                    let end = (next + SCAN_SLICE).min(entries.capacity());
                    for key in next..end {
                        if let Some(entry) = entries.get_mut(key) {
                            entry.watch_head();
                        }
                    }
                    next = end;
                    end >= entries.capacity()
                };
                if done {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
    }
}

/// A connection's place in [`Connections`]; dropping it removes the entry.
#[derive(Debug)]
pub(crate) struct Registration {
    connections: Arc<Connections>,
    key: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.lock().try_remove(self.key);
    }
}

/// What a connection's [`Control`] asks of it at one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Nothing,
    /// No complete request head in time (already marked on the state).
    HeadTimeout,
    Graceful,
    Force,
}

/// The connection's side of its [`Control`]: registers the task's waker and
/// reads what is asked, once per poll.
#[derive(Debug)]
struct Obey {
    control: Arc<Control>,
    state: Arc<ConnectionState>,
    // The waker last given to `control`: a connection's task keeps one
    // waker for its life, so it is handed over (under a lock) only once.
    registered: Option<Waker>,
}

impl Obey {
    fn poll_asked(&mut self, cx: &Context<'_>) -> Asked {
        // Registered before reading the reason, so a stop between the two is
        // not lost.
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            *self.control.waker() = Some(cx.waker().clone());
            self.registered = Some(cx.waker().clone());
        }
        // Confirmed here, in the connection's own task: between the watcher's
        // look and now, the head may have arrived.
        // (A plain load first: the swap is a write, and almost every poll has
        // nothing to swap.)
        if self.control.head_overdue.load(Ordering::Acquire)
            && self.control.head_overdue.swap(false, Ordering::AcqRel)
            && self.state.is_waiting_for_head()
        {
            // Marked before the stream is dropped: its drop records the close.
            self.state.mark_header_timeout();
            return Asked::HeadTimeout;
        }
        match self.control.get() {
            Stop::Running => Asked::Nothing,
            Stop::Graceful => Asked::Graceful,
            Stop::Force => Asked::Force,
        }
    }
}

pin_project! {
    /// A connection that obeys its [`Control`]: it ends at once on a head
    /// timeout or a forced stop, and starts hyper's graceful shutdown on a
    /// graceful one.
    pub(crate) struct Controlled<C> {
        #[pin]
        conn: C,
        obey: Obey,
        graceful: bool,
    }
}

impl<C> Controlled<C> {
    pub(crate) fn new(conn: C, control: Arc<Control>, state: Arc<ConnectionState>) -> Self {
        Controlled {
            conn,
            obey: Obey {
                control,
                state,
                registered: None,
            },
            graceful: false,
        }
    }
}

/// How a controlled connection ended.
#[derive(Debug)]
pub(crate) enum Ended<T> {
    /// hyper finished it (the client left, or a graceful shutdown completed).
    Finished(T),
    /// Cut off: no complete request head in time.
    HeadTimeout,
    /// Cut off: the grace period of a shutdown is over.
    Forced,
}

impl<C: GracefulConnection> Future for Controlled<C> {
    type Output = Ended<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.obey.poll_asked(cx) {
            Asked::Nothing => {}
            Asked::HeadTimeout => return Poll::Ready(Ended::HeadTimeout),
            Asked::Graceful => {
                if !*this.graceful {
                    *this.graceful = true;
                    this.conn.as_mut().graceful_shutdown();
                }
            }
            Asked::Force => return Poll::Ready(Ended::Forced),
        }
        this.conn.poll(cx).map(Ended::Finished)
    }
}

#[cfg(feature = "tls")]
pin_project! {
    /// A connection's TLS handshake under its [`Control`]: the header-read
    /// timeout covers it (a client that never finishes its ClientHello is
    /// cut like a slow head), and any stop of the server ends it — no
    /// request has started, there is nothing to wait for.
    pub(crate) struct ControlledHandshake<F> {
        #[pin]
        handshake: F,
        obey: Obey,
    }
}

#[cfg(feature = "tls")]
impl<F> ControlledHandshake<F> {
    pub(crate) fn new(handshake: F, control: Arc<Control>, state: Arc<ConnectionState>) -> Self {
        ControlledHandshake {
            handshake,
            obey: Obey {
                control,
                state,
                registered: None,
            },
        }
    }
}

#[cfg(feature = "tls")]
impl<F: Future> Future for ControlledHandshake<F> {
    /// `None`: stopped before the handshake completed.
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.obey.poll_asked(cx) != Asked::Nothing {
            return Poll::Ready(None);
        }
        this.handshake.poll(cx).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More connections than one slice of the watcher's scan: every silent one
    /// is found overdue, and one that got its request is left alone.
    #[tokio::test]
    async fn the_head_watcher_reaches_every_connection_across_slices() {
        let connections = Arc::new(Connections::default());
        let timeout = Duration::from_millis(40);
        let count = 2 * SCAN_SLICE + 7;
        let mut registered = Vec::new();
        for _ in 0..count {
            let state = Arc::new(ConnectionState::new());
            let (control, registration) = connections.register(state.clone());
            registered.push((state, control, registration));
        }
        // The last one has a request in flight: it waits for no head.
        registered[count - 1].0.request_started(false);
        tokio::spawn(Connections::watch_heads(
            Arc::downgrade(&connections),
            timeout,
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let silent = &registered[..count - 1];
        while !silent
            .iter()
            .all(|(_, control, _)| control.head_overdue.load(Ordering::Acquire))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher never reached every silent connection"
            );
            tokio::time::sleep(timeout / 4).await;
        }
        let busy = &registered[count - 1].1;
        assert!(!busy.head_overdue.load(Ordering::Acquire));
    }
}

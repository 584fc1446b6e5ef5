//! `clientgone watch`: the server metrics of every plaintext HTTP/1 server
//! listening on the watched ports — nginx, Go, Python, Java — from kernel
//! tracepoints (eBPF), with no change to the server and no proxy in front.
//!
//! Data flows one way, as for the layer: kernel events (`bpf/watch.bpf.c`) →
//! [`event::Event`] → per-connection state ([`conn::Tracker`]) → a `Record` →
//! `clientgone::Metrics` (one set per port, `server_port` label), through the
//! same classification rules as the layer.
//!
//! TLS connections of servers using OpenSSL are followed in their plaintext,
//! read by uprobes on the library ([`openssl`]); other TLS and HTTP/2
//! connections are followed at the connection level only: what it cannot see
//! is counted, not guessed, pipelined requests and heads it could
//! not capture whole leave their connection out
//! (`clientgone_watch_connections_skipped_total`), and a connection that lost
//! kernel events is left out of the request metrics
//! (`clientgone_watch_events_lost_total`). Connections opened before the agent
//! started are adopted at their first event and followed from their next
//! request head (`clientgone_watch_connections_adopted_total`).
//!
//! The bytes come from the socket tracepoints alone where the kernel allows
//! (`--capture socket`, chosen by `auto`), or from a system-call hook
//! (`--capture syscall`), which costs every process on the host: see
//! [`bpf::Capture`].

pub mod bpf;
pub mod conn;
pub mod event;
mod exchange;
mod hpack;
pub mod http1;
mod http2;
pub mod openssl;
pub mod privileges;
pub mod procfs;
pub mod sink;
pub mod skip;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus::Registry;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::routes::RouteTable;
use crate::server::StartError;
use bpf::{Capture, CaptureMode, Probe};
use conn::Tracker;
use event::Event;
use sink::PortMetrics;

/// How often the ring buffer is drained when no wake-up came: the programs
/// wake the agent only for a client's FIN or RST (the detection delay), so
/// completions wait at most this long to be counted.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// What `watch` watches and where it serves its metrics.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Local ports whose accepted connections are watched.
    pub ports: Vec<u16>,
    /// Processes whose listening ports are added (resolved at start).
    pub pids: Vec<u32>,
    /// Command names whose processes' listening ports are added.
    pub comms: Vec<String>,
    /// Route templates.
    pub routes: RouteTable,
    /// The gRPC methods counted under their names (`--grpc-descriptor`;
    /// empty: every call `_OTHER`).
    pub grpc: clientgone::GrpcMethods,
    /// Address of the metrics listener.
    pub metrics_listen: String,
    /// Switch to this user after start-up.
    pub user: Option<String>,
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// Where the bytes come from.
    pub capture: Capture,
    /// The registry the metrics go into.
    pub registry: Registry,
    /// Gives each request a server span when set (broken ones always kept).
    pub tracer: Option<clientgone::DeferredTracer>,
    /// The histograms' bucket bounds.
    pub buckets: clientgone::Buckets,
}

/// A running watch.
#[derive(Debug)]
pub struct RunningWatch {
    /// The metrics listener's address.
    pub metrics_addr: SocketAddr,
    /// The watched ports.
    pub ports: BTreeSet<u16>,
    /// The capture mode in use.
    pub capture: CaptureMode,
    /// The tracepoints attached to.
    pub attached: Vec<&'static str>,
    /// Connections found open at start on the watched ports.
    pub found_open: usize,
    /// The files whose OpenSSL is probed.
    pub tls_probed: Vec<openssl::Candidate>,
    /// Server processes on the watched ports whose TLS cannot be read (no
    /// OpenSSL found in them), with their command names.
    pub tls_uncovered: Vec<(u32, String)>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
}

impl RunningWatch {
    /// The token that stops the watch when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the watch has stopped.
    pub async fn wait(self) -> std::io::Result<()> {
        for task in self.tasks {
            task.await.map_err(std::io::Error::other)??;
        }
        Ok(())
    }
}

/// The ports to watch: `--port`s plus the listening ports of `--pid`s and `--comm`s.
pub fn resolve_ports(config: &WatchConfig) -> Result<BTreeSet<u16>, String> {
    resolve(config).map(|(ports, _)| ports)
}

/// The ports to watch and the processes selected by `--pid` and `--comm`.
fn resolve(config: &WatchConfig) -> Result<(BTreeSet<u16>, Vec<u32>), String> {
    let mut ports: BTreeSet<u16> = config.ports.iter().copied().collect();
    let mut pids = config.pids.clone();
    for name in &config.comms {
        let found = procfs::pids_named(name);
        if found.is_empty() {
            return Err(format!("--comm {name}: no process has that name"));
        }
        pids.extend(found);
    }
    for &pid in &pids {
        let found = procfs::ports_of(pid)?;
        if found.is_empty() && config.comms.is_empty() {
            return Err(format!("--pid {pid}: the process listens on no TCP port"));
        }
        ports.extend(found);
    }
    if ports.is_empty() {
        return Err("no port to watch: the selected processes listen on no TCP port".into());
    }
    Ok((ports, pids))
}

/// Loads the programs, binds the metrics listener, gives up privileges, and
/// starts following connections.
pub async fn start(config: WatchConfig) -> Result<RunningWatch, StartError> {
    // Before looking into other processes: without the privileges that would
    // only add noise to the one line that matters.
    if !bpf::permitted() {
        return Err(StartError(bpf::NOT_PERMITTED.into()));
    }
    let (ports, mut servers) = resolve(&config).map_err(StartError)?;
    // The servers on the watched ports, whose OpenSSL is probed.
    let (listening, hidden) = procfs::servers(&ports);
    if hidden > 0 {
        tracing::warn!(
            "{hidden} processes could not be looked into (CAP_SYS_PTRACE and \
             CAP_DAC_READ_SEARCH are needed for other users'): a server among them is probed \
             for TLS only if it uses the host's own libssl"
        );
    }
    servers.extend(listening);
    servers.sort_unstable();
    servers.dedup();
    let candidates = openssl::candidates(&servers);
    let mut sink = PortMetrics::new(
        &config.registry,
        config.tracer.clone(),
        config.buckets.clone(),
    )
    .map_err(|e| StartError(e.to_string()))?;
    for port in &ports {
        sink.add_port(*port)
            .map_err(|e| StartError(e.to_string()))?;
    }
    let list: Vec<u16> = ports.iter().copied().collect();
    // The connections open before the programs attach are counted open from
    // the first scrape. Read before and after attaching: one in both was open
    // throughout (its first event adopts it without counting it again); one
    // that closed or opened in between is counted when its events adopt it.
    let before = procfs::open_connections(&ports);
    let probe =
        Probe::load(&list, config.ring_bytes, config.capture, &candidates).map_err(StartError)?;
    let tls_probed = probe.tls.clone();
    let tls_uncovered = openssl::uncovered(&servers, &tls_probed)
        .into_iter()
        .map(|pid| (pid, procfs::comm(pid)))
        .collect();
    let after = procfs::open_connections(&ports);
    let open: std::collections::HashMap<u64, u16> = before
        .into_iter()
        .filter(|(inode, _)| after.contains_key(inode))
        .collect();
    let found_open = open.len();
    sink.set_capture(probe.mode);
    let (capture, attached) = (probe.mode, probe.attached.clone());
    let metrics_listener = TcpListener::bind(&config.metrics_listen)
        .await
        .map_err(|e| {
            StartError(format!(
                "cannot listen on {} (--metrics-listen): {e}",
                config.metrics_listen
            ))
        })?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|e| StartError(format!("cannot read the bound address: {e}")))?;
    privileges::drop_privileges(config.user.as_deref()).map_err(StartError)?;

    let shutdown = CancellationToken::new();
    let mut tracker = Tracker::with_grpc(config.routes.matcher(), config.grpc.clone());
    tracker.seed(open, &mut sink);
    let follow = tokio::spawn(follow(probe, tracker, sink, shutdown.clone()));
    let metrics_server = tokio::spawn(clientgone_exporter::serve_metrics(
        metrics_listener,
        config.registry.clone(),
        shutdown.clone().cancelled_owned(),
    ));
    Ok(RunningWatch {
        metrics_addr,
        ports,
        capture,
        attached,
        found_open,
        tls_probed,
        tls_uncovered,
        shutdown,
        tasks: vec![follow, metrics_server],
    })
}

/// Drains the ring buffer on each wake-up and every [`DRAIN_EVERY`], in one
/// task: the events of a connection are applied in the order the kernel wrote
/// them.
async fn follow(
    probe: Probe,
    mut tracker: Tracker,
    mut sink: PortMetrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // SAFETY: the descriptor is the ring buffer's, owned by `probe`, which the
    // AsyncFd owns until it is dropped: it stays open and the same for as long
    // as it is registered (`as_raw_fd` always returns the ring's one fd).
    #[allow(unsafe_code)]
    let registered =
        unsafe { AsyncFd::register_with_interest(probe, tokio::io::Interest::READABLE) };
    let mut fd = registered.map_err(std::io::Error::from)?;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_seen = 0u64;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            ready = fd.readable_mut() => ready?.clear_ready(),
            _ = tick.tick() => {}
        }
        let probe = fd.get_mut();
        while let Some(item) = probe.ring.next() {
            if let Some(ev) = Event::parse(&item) {
                tracker.on_event(&ev, &mut sink);
            }
        }
        let lost = probe.events_lost();
        if lost > lost_seen {
            sink.events_lost.inc_by(lost - lost_seen);
            tracing::warn!(
                lost = lost - lost_seen,
                "kernel events lost (the ring buffer was full): their connections are left \
                 out of the request metrics; a larger --ring-buffer-mib helps"
            );
            lost_seen = lost;
            for id in probe.take_lost_connections() {
                tracker.lost(id, &mut sink);
            }
        }
    }
}

impl std::os::fd::AsRawFd for Probe {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

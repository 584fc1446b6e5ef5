//! Loading the kernel side (`bpf/watch.bpf.o`, built from `bpf/watch.bpf.c`)
//! with aya: CO-RE relocation against the running kernel's BTF, the watched
//! ports written into its map, the tracepoint programs of the chosen capture
//! mode attached, and the OpenSSL uprobes on each library found
//! (`openssl.rs`). Each way this can fail is one line saying what is missing
//! and what to do.

use std::os::fd::AsRawFd;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::{BtfTracePoint, UProbe};
use aya::{Btf, Ebpf, EbpfLoader};

use super::openssl::{Candidate, FUNCTIONS, Placement, REQUIRED, placements};

/// The compiled kernel side; `bpf/build.sh` rebuilds it and CI checks it is current.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/watch.bpf.o");

/// Where the bytes of each read and write are found (`--capture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Capture {
    /// `socket` where the kernel allows it, else `syscall`.
    Auto,
    /// From the socket tracepoints alone: the user buffer is read from the
    /// registers the thread entered the kernel with. No system-call hook.
    Socket,
    /// The buffer remembered at every system call's entry (`sys_enter`): the
    /// fallback for kernels without `bpf_task_pt_regs` (before 5.15). Every
    /// system call of every process on the host pays for it.
    Syscall,
}

/// The capture mode in use, once loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CaptureMode {
    /// See [`Capture::Socket`].
    Socket,
    /// See [`Capture::Syscall`].
    Syscall,
}

impl CaptureMode {
    /// Both modes, in label order.
    pub const ALL: [CaptureMode; 2] = [CaptureMode::Socket, CaptureMode::Syscall];

    /// The `mode` label value (`clientgone_watch_capture`).
    pub const fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Socket => "socket",
            CaptureMode::Syscall => "syscall",
        }
    }

    /// Its programs and the tracepoint each attaches to.
    const fn programs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            CaptureMode::Socket => &[
                ("cg_recv_sock", "sock_recv_length"),
                ("cg_send_sock", "sock_send_length"),
            ],
            CaptureMode::Syscall => &[
                ("cg_sys_enter", "sys_enter"),
                ("cg_recv", "sock_recv_length"),
                ("cg_send", "sock_send_length"),
            ],
        }
    }
}

/// The programs of every mode: connection state and resets.
const COMMON: [(&str, &str); 2] = [
    ("cg_state", "inet_sock_set_state"),
    ("cg_reset", "tcp_receive_reset"),
];

/// The loaded, attached programs and the maps user space reads.
pub struct Probe {
    /// Keeps the programs attached (dropping it detaches them).
    _ebpf: Ebpf,
    /// The capture mode in use.
    pub mode: CaptureMode,
    /// The tracepoints attached to, in order.
    pub attached: Vec<&'static str>,
    /// The files whose OpenSSL is probed (TLS plaintext).
    pub tls: Vec<Candidate>,
    /// The events.
    pub ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    lost_conns: BpfHashMap<MapData, u64, u8>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("ring_fd", &self.ring.as_raw_fd())
            .finish()
    }
}

/// Whether this process may load BPF programs: root, or CAP_BPF with CAP_PERFMON.
pub fn permitted() -> bool {
    use caps::{CapSet, Capability};
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    has(Capability::CAP_SYS_ADMIN) || (has(Capability::CAP_BPF) && has(Capability::CAP_PERFMON))
}

/// What watch says when it may not load its programs.
pub const NOT_PERMITTED: &str = "clientgone watch needs root, or the capabilities CAP_BPF and \
                                 CAP_PERFMON: run it with sudo (or grant them with setcap)";

impl Probe {
    /// Loads and attaches the programs, watching connections on `ports`, with
    /// the bytes captured as `capture` says, and the plaintext of TLS
    /// connections read from the OpenSSL of each of `tls` that exports it.
    /// `ring_bytes` is the ring buffer's size (a power of two, a multiple of the page).
    pub fn load(
        ports: &[u16],
        ring_bytes: u32,
        capture: Capture,
        tls: &[Candidate],
    ) -> Result<Probe, String> {
        if !permitted() {
            return Err(NOT_PERMITTED.into());
        }
        let btf = Btf::from_sys_fs().map_err(|e| {
            format!(
                "no kernel BTF at /sys/kernel/btf/vmlinux ({e}): watch needs a kernel built \
                 with CONFIG_DEBUG_INFO_BTF=y (most distributions since 2020)"
            )
        })?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            // The per-thread task storage (`calls`) is used only by the programs:
            // aya has no typed wrapper for it, which is all "unsupported" means.
            .allow_unsupported_maps()
            .map_max_entries("events", ring_bytes)
            .load(OBJECT)
            .map_err(|e| format!("cannot load the BPF object: {e}"))?;
        {
            let map = ebpf
                .map_mut("ports")
                .ok_or("the BPF object has no 'ports' map")?;
            let mut watched: BpfHashMap<_, u16, u8> =
                BpfHashMap::try_from(map).map_err(|e| format!("ports map: {e}"))?;
            for port in ports {
                watched
                    .insert(port, 1, 0)
                    .map_err(|e| format!("cannot watch port {port}: {e}"))?;
            }
        }
        let mut attached = Vec::new();
        for &(name, tracepoint) in &COMMON {
            attach(&mut ebpf, &btf, name, tracepoint)?;
            attached.push(tracepoint);
        }
        let mode = match capture {
            Capture::Socket => CaptureMode::Socket,
            Capture::Syscall => CaptureMode::Syscall,
            // The socket programs need bpf_task_pt_regs (Linux 5.15): where
            // the verifier refuses them, the system-call capture still works.
            Capture::Auto => match load_mode(&mut ebpf, &btf, CaptureMode::Socket) {
                Ok(()) => CaptureMode::Socket,
                Err(e) => {
                    tracing::warn!(
                        "the socket capture cannot load ({e}): falling back to --capture \
                         syscall, which slows every system call on this host"
                    );
                    CaptureMode::Syscall
                }
            },
        };
        load_mode(&mut ebpf, &btf, mode)?;
        for &(name, tracepoint) in mode.programs() {
            attach_loaded(&mut ebpf, name, tracepoint)?;
            attached.push(tracepoint);
        }
        let tls = attach_openssl(&mut ebpf, tls);
        let ring = RingBuf::try_from(ebpf.take_map("events").ok_or("no 'events' map")?)
            .map_err(|e| format!("events map: {e}"))?;
        let counters = PerCpuArray::try_from(ebpf.take_map("counters").ok_or("no 'counters' map")?)
            .map_err(|e| format!("counters map: {e}"))?;
        let lost_conns =
            BpfHashMap::try_from(ebpf.take_map("lost_conns").ok_or("no 'lost_conns' map")?)
                .map_err(|e| format!("lost_conns map: {e}"))?;
        Ok(Probe {
            _ebpf: ebpf,
            mode,
            attached,
            tls,
            ring,
            counters,
            lost_conns,
        })
    }

    /// Events the ring buffer had no room for, since the start.
    pub fn events_lost(&self) -> u64 {
        self.counters
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// The connections that lost events since the last call (taken out of the map).
    pub fn take_lost_connections(&mut self) -> Vec<u64> {
        let ids: Vec<u64> = self.lost_conns.keys().filter_map(Result::ok).collect();
        for id in &ids {
            let _ = self.lost_conns.remove(id);
        }
        ids
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut BtfTracePoint, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("the BPF object has no program {name}"))?
        .try_into()
        .map_err(|e| format!("program {name}: {e}"))
}

/// Loads (verifies) one program for its tracepoint; loading twice is a no-op.
fn load(ebpf: &mut Ebpf, btf: &Btf, name: &str, tracepoint: &str) -> Result<(), String> {
    let program = program(ebpf, name)?;
    if program.fd().is_ok() {
        return Ok(());
    }
    program.load(tracepoint, btf).map_err(|e| {
        let text = e.to_string();
        if text.contains("btf_trace_") || text.contains("not found") {
            format!(
                "this kernel has no tracepoint {tracepoint} ({e}): watch needs Linux \
                 6.3 or later (sock_recv_length / sock_send_length)"
            )
        } else {
            format!("the kernel refused program {name} for {tracepoint}: {e:#}")
        }
    })
}

fn load_mode(ebpf: &mut Ebpf, btf: &Btf, mode: CaptureMode) -> Result<(), String> {
    for &(name, tracepoint) in mode.programs() {
        load(ebpf, btf, name, tracepoint)?;
    }
    Ok(())
}

fn attach_loaded(ebpf: &mut Ebpf, name: &str, tracepoint: &str) -> Result<(), String> {
    program(ebpf, name)?
        .attach()
        .map(drop)
        .map_err(|e| format!("cannot attach to tracepoint {tracepoint}: {e}"))
}

fn attach(ebpf: &mut Ebpf, btf: &Btf, name: &str, tracepoint: &str) -> Result<(), String> {
    load(ebpf, btf, name, tracepoint)?;
    attach_loaded(ebpf, name, tracepoint)
}

/// Attaches the OpenSSL uprobes (`cg_ssl_enter` on the call side,
/// `cg_ssl_return` or `cg_ssl_exit` on the return side, where
/// [`placements`] says; the function told by the attach cookie) to every
/// candidate that exports [`REQUIRED`]; returns those probed. A file
/// that is not OpenSSL (most executables) is passed over in silence; a
/// library that cannot be probed is named in a warning, and its servers' TLS
/// connections are skipped as `tls`, as before.
fn attach_openssl(ebpf: &mut Ebpf, candidates: &[Candidate]) -> Vec<Candidate> {
    let mut probed = Vec::new();
    if candidates.is_empty() {
        return probed;
    }
    for name in ["cg_ssl_enter", "cg_ssl_return", "cg_ssl_exit"] {
        let loaded = uprobe(ebpf, name).and_then(|p| {
            p.load()
                .map_err(|e| format!("the kernel refused program {name}: {e:#}"))
        });
        if let Err(e) = loaded {
            tracing::warn!(
                "TLS connections will not be followed: {e} (uprobes need a kernel with \
                 CONFIG_UPROBE_EVENTS)"
            );
            return probed;
        }
    }
    for candidate in candidates {
        match attach_file(ebpf, &candidate.path) {
            Ok(()) => probed.push(candidate.clone()),
            Err(e) if candidate.is_libssl => tracing::warn!(
                "cannot probe {} ({e}): TLS connections of the servers using it are skipped \
                 as tls",
                candidate.path.display()
            ),
            Err(_) => {}
        }
    }
    probed
}

/// Attaches both programs to each function `path` exports; fails, with
/// nothing left attached, if it lacks one of [`REQUIRED`]. For each function
/// the return side is attached before the call side, and a function whose
/// two probes are not both attached keeps neither: a call side with no
/// return would leave its thread's call remembered for ever, and that
/// thread's next plaintext transfer taken for TLS.
fn attach_file(ebpf: &mut Ebpf, path: &std::path::Path) -> Result<(), String> {
    let mut links = Vec::new();
    let placed = placements(path);
    for (function, cookie) in FUNCTIONS {
        let attached = match placed.get(function) {
            Some(&Placement::Inside { enter, exit }) => attach_pair(
                ebpf,
                path,
                [("cg_ssl_exit", exit), ("cg_ssl_enter", enter)],
                cookie,
            ),
            Some(&Placement::Entry { at }) => attach_pair(
                ebpf,
                path,
                [("cg_ssl_return", at), ("cg_ssl_enter", at)],
                cookie,
            ),
            None => Err("not exported".to_owned()),
        };
        match attached {
            Ok(pair) => links.extend(pair),
            // The _ex forms, the handshake, early data and the peeks may be
            // missing (OpenSSL before 1.1.1, a trimmed static build): the
            // plaintext of the others is still whole.
            Err(e) if REQUIRED.contains(&function) => {
                detach(ebpf, links);
                return Err(format!("{function}: {e}"));
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// Attaches a function's two probes (return side first) at their file
/// offsets in `path`; on a failure, detaches what it attached.
fn attach_pair(
    ebpf: &mut Ebpf,
    path: &std::path::Path,
    probes: [(&'static str, u64); 2],
    cookie: u64,
) -> Result<Vec<(&'static str, UProbeLinkId)>, String> {
    let mut pair = Vec::new();
    for (name, offset) in probes {
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(cookie),
        };
        match uprobe(ebpf, name)?.attach(point, path, UProbeScope::AllProcesses) {
            Ok(link) => pair.push((name, link)),
            Err(e) => {
                detach(ebpf, pair);
                return Err(chain(&e));
            }
        }
    }
    Ok(pair)
}

fn detach(ebpf: &mut Ebpf, links: Vec<(&str, UProbeLinkId)>) {
    for (name, link) in links {
        if let Ok(program) = uprobe(ebpf, name) {
            let _ = program.detach(link);
        }
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("the BPF object has no program {name}"))?
        .try_into()
        .map_err(|e| format!("program {name}: {e}"))
}

/// An error with its sources, as one line: aya's errors keep the system
/// call's errno in a source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

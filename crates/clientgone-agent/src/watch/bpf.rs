//! Loading the kernel side (`bpf/watch.bpf.o`, built from `bpf/watch.bpf.c`)
//! with aya: CO-RE relocation against the running kernel's BTF, the watched
//! ports written into its map, its five tracepoint programs attached. Each way
//! this can fail is one line saying what is missing and what to do.

use std::os::fd::AsRawFd;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};

/// The compiled kernel side; `bpf/build.sh` rebuilds it and CI checks it is current.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/watch.bpf.o");

/// Each program and the tracepoint it attaches to.
const PROGRAMS: [(&str, &str); 5] = [
    ("cg_state", "inet_sock_set_state"),
    ("cg_reset", "tcp_receive_reset"),
    ("cg_sys_enter", "sys_enter"),
    ("cg_recv", "sock_recv_length"),
    ("cg_send", "sock_send_length"),
];

/// The loaded, attached programs and the maps user space reads.
pub struct Probe {
    /// Keeps the programs attached (dropping it detaches them).
    _ebpf: Ebpf,
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
fn permitted() -> bool {
    use caps::{CapSet, Capability};
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    has(Capability::CAP_SYS_ADMIN) || (has(Capability::CAP_BPF) && has(Capability::CAP_PERFMON))
}

impl Probe {
    /// Loads and attaches the programs, watching connections accepted on `ports`.
    /// `ring_bytes` is the ring buffer's size (a power of two, a multiple of the page).
    pub fn load(ports: &[u16], ring_bytes: u32) -> Result<Probe, String> {
        if !permitted() {
            return Err(
                "clientgone watch needs root, or the capabilities CAP_BPF and \
                        CAP_PERFMON: run it with sudo (or grant them with setcap)"
                    .into(),
            );
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
        for (name, tracepoint) in PROGRAMS {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("the BPF object has no program {name}"))?
                .try_into()
                .map_err(|e| format!("program {name}: {e}"))?;
            program.load(tracepoint, &btf).map_err(|e| {
                let text = e.to_string();
                if text.contains("btf_trace_") || text.contains("not found") {
                    format!(
                        "this kernel has no tracepoint {tracepoint} ({e}): watch needs Linux \
                         6.3 or later (sock_recv_length / sock_send_length)"
                    )
                } else {
                    format!("the kernel refused program {name} for {tracepoint}: {e:#}")
                }
            })?;
            program
                .attach()
                .map_err(|e| format!("cannot attach to tracepoint {tracepoint}: {e}"))?;
        }
        let ring = RingBuf::try_from(ebpf.take_map("events").ok_or("no 'events' map")?)
            .map_err(|e| format!("events map: {e}"))?;
        let counters = PerCpuArray::try_from(ebpf.take_map("counters").ok_or("no 'counters' map")?)
            .map_err(|e| format!("counters map: {e}"))?;
        let lost_conns =
            BpfHashMap::try_from(ebpf.take_map("lost_conns").ok_or("no 'lost_conns' map")?)
                .map_err(|e| format!("lost_conns map: {e}"))?;
        Ok(Probe {
            _ebpf: ebpf,
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

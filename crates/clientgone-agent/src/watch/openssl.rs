//! Finding the OpenSSL the watched servers use, so that its read, write and
//! handshake functions can be probed (`bpf.rs` attaches, `bpf/watch.bpf.c`
//! ties each SSL object to its connection).
//!
//! A uprobe is set on a file, not on a process: every process that maps the
//! file — nginx's workers, a server reloaded or started after the agent —
//! fires it. So the files are what is found here, each once however many
//! processes share it: the `libssl` each server process maps (reached through
//! `/proc/PID/root`, so a server in another container's mount namespace is
//! found too), the server's own executable in case OpenSSL is linked into it
//! statically, and the host's own `libssl` for servers started later.
//!
//! Where in each function the probes go is decided here too ([`placements`]).
//! A probe on a function's first instruction (with a uretprobe for its return)
//! costs three trips into the kernel per call: the breakpoint, a single-step
//! of the displaced instruction (`sub $N,%rsp`, which the kernel cannot
//! emulate), and the return trampoline. Inside a small function such as
//! OpenSSL 3's `SSL_read`, a conditional jump or call that comes before any
//! argument register is written, and the stack-protector jump just before its
//! one `ret` (where `eax` already holds the result), are instructions the
//! kernel emulates: two breakpoints per call, nothing else. Where the code
//! does not have that shape, the entry and return probes are used.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The functions probed, and what each is to the BPF side (its attach
/// cookie, `enum ssl_fn`). The `_ex` forms (OpenSSL 1.1.1 and later) are
/// what Python calls; `SSL_read`/`SSL_write` what nginx calls, and
/// `SSL_read_early_data` with `ssl_early_data on`. The peeks move no
/// plaintext of their own, but their socket reads tie a connection.
pub const FUNCTIONS: [(&str, u64); 8] = [
    ("SSL_read", 1),
    ("SSL_read_ex", 2),
    ("SSL_write", 3),
    ("SSL_write_ex", 4),
    ("SSL_do_handshake", 5),
    ("SSL_read_early_data", 6),
    ("SSL_peek", 7),
    ("SSL_peek_ex", 8),
];

/// The functions a file must export to be probed at all.
pub const REQUIRED: [&str; 2] = ["SSL_read", "SSL_write"];

/// Where the host's own libraries live (Debian's multiarch directory first).
const SYSTEM_DIRS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
];

/// A file that may hold OpenSSL, and the server processes it was found in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The path to attach to (through `/proc/PID/root` for a server's own).
    pub path: PathBuf,
    /// The watched servers that map it (empty for the host's own library).
    pub pids: Vec<u32>,
    /// A `libssl` (rather than an executable that may link OpenSSL in).
    pub is_libssl: bool,
}

/// Whether `path` names an OpenSSL `libssl` shared object.
fn is_libssl(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so"))
}

/// The files mapped by process `pid` (`/proc/PID/maps`), by their path in its
/// own mount namespace.
fn mapped_files(pid: u32) -> Vec<String> {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut files: Vec<String> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/'))
        .map(str::to_owned)
        .collect();
    files.dedup();
    files
}

/// The files to probe for the server processes `pids`, and the host's own
/// libssl: each file once (by device and inode), servers' own first.
pub fn candidates(pids: &[u32]) -> Vec<Candidate> {
    // (device, inode) → candidate: one file reached by several paths (each
    // process's /proc/PID/root) is probed once.
    let mut found: BTreeMap<(u64, u64), Candidate> = BTreeMap::new();
    let mut order = Vec::new();
    let mut add = |path: PathBuf, pid: Option<u32>, lib: bool| {
        let Ok(meta) = fs::metadata(&path) else {
            return;
        };
        let key = (meta.dev(), meta.ino());
        let entry = found.entry(key).or_insert_with(|| {
            order.push(key);
            Candidate {
                path,
                pids: Vec::new(),
                is_libssl: lib,
            }
        });
        if let Some(pid) = pid
            && !entry.pids.contains(&pid)
        {
            entry.pids.push(pid);
        }
    };
    for &pid in pids {
        let root = format!("/proc/{pid}/root");
        for file in mapped_files(pid) {
            if is_libssl(&file) {
                add(PathBuf::from(format!("{root}{file}")), Some(pid), true);
            }
        }
        // OpenSSL linked into the executable: probed if it exports the functions.
        add(PathBuf::from(format!("/proc/{pid}/exe")), Some(pid), false);
    }
    for dir in SYSTEM_DIRS {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        let mut libs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_str().is_some_and(is_libssl))
            .collect();
        libs.sort();
        for lib in libs {
            add(lib, None, true);
        }
    }
    order
        .into_iter()
        .filter_map(|key| found.remove(&key))
        .collect()
}

/// The server processes of `pids` that no probed file covers: their TLS
/// connections cannot be read (`reason="tls"`). `probed` are the candidates
/// that were attached.
pub fn uncovered(pids: &[u32], probed: &[Candidate]) -> Vec<u32> {
    let covered: HashSet<u32> = probed.iter().flat_map(|c| c.pids.iter().copied()).collect();
    let mut missed: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| !covered.contains(p))
        .collect();
    missed.sort_unstable();
    missed.dedup();
    missed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Debian 12's OpenSSL 3.0 `SSL_read` (131 bytes): `sub $0x18,%rsp`, the
    /// canary, `test %edx,%edx; js` (+0x16), the call, `mov (%rsp),%eax`,
    /// the canary check `jne` (+0x38), then `add`, four `xor`s and `ret`.
    const SSL_READ: &str = "4883ec1864488b042528000000488944240831c085d2782f4889e14863d2e83dfeffff85c07e038b0424488b54240864482b14252800000075444883c41831d231c931f631ffc3e8449ffeff488d1505d50400be4c070000488d3d62cc0400e82ca6feff31c031d2be0f010000bf14000000e849a4feffb8ffffffffebace83db1feff";
    /// Its `SSL_read_ex` (29 bytes): the call, then `cmovs` and `ret` with no
    /// emulated instruction between them.
    const SSL_READ_EX: &str = "4883ec08e8c7fdffff31d285c00f48c24883c40831d231c931f631ffc3";

    #[test]
    fn probes_go_on_emulated_instructions_where_the_code_allows() {
        assert_eq!(
            place(&hex(SSL_READ)),
            Placement::Inside {
                enter: 0x16,
                exit: 0x38
            }
        );
        assert_eq!(place(&hex(SSL_READ_EX)), Placement::Entry { at: 0 });
        // An argument register written before the first emulated
        // instruction, eax written after the last, a tail call, a jump back
        // to the call side, an exit whose taken side comes back, garbage.
        let mut clobbered = hex(SSL_READ);
        clobbered[0x14..0x16].copy_from_slice(&[0x31, 0xf6]); // test → xor %esi,%esi
        assert_eq!(place(&clobbered), Placement::Entry { at: 0 });
        let mut late = hex(SSL_READ);
        late[0x3e..0x40].copy_from_slice(&[0x31, 0xc0]); // xor %edx → xor %eax
        assert_eq!(place(&late), Placement::Entry { at: 0 });
        let mut tail = hex(SSL_READ);
        tail[0x46] = 0xe9; // ret → jmp rel32 out of the function
        assert_eq!(place(&tail[..0x4b]), Placement::Entry { at: 0 });
        let mut again = hex(SSL_READ);
        again[0x7d] = 0x98; // the error path's jmp (at 0x7c) back to the js at 0x16
        assert_eq!(place(&again), Placement::Entry { at: 0 });
        let mut back = hex(SSL_READ);
        back[0x7e..0x83].copy_from_slice(&[0xe9, 0xd7, 0xff, 0xff, 0xff]); // call → jmp 0x5a
        assert_eq!(place(&back), Placement::Entry { at: 0 });
        assert_eq!(place(&[0xff; 40]), Placement::Entry { at: 0 });
        assert_eq!(place(&[]), Placement::Entry { at: 0 });
    }

    #[test]
    fn the_host_s_libssl_is_read_if_there_is_one() {
        let lib = SYSTEM_DIRS
            .iter()
            .map(|d| Path::new(d).join("libssl.so.3"))
            .find(|p| p.exists());
        let Some(lib) = lib else { return };
        let found = placements(&lib);
        // Every function of OpenSSL 3 is found, whatever its placement.
        for (function, _) in FUNCTIONS {
            assert!(found.contains_key(function), "{function}: {found:?}");
        }
        assert!(placements(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn libssl_names_are_told_from_others() {
        assert!(is_libssl("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(is_libssl("/usr/lib/libssl.so.1.1"));
        assert!(!is_libssl("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"));
        assert!(!is_libssl("/usr/lib/libssl3.so"));
    }

    #[test]
    fn this_process_is_a_candidate_once_however_it_is_reached() {
        let me = std::process::id();
        let found = candidates(&[me, me]);
        let exe: Vec<&Candidate> = found.iter().filter(|c| !c.is_libssl).collect();
        assert_eq!(exe.len(), 1, "{found:?}");
        assert_eq!(exe[0].pids, [me]);
        assert!(uncovered(&[me], &found).is_empty());
        assert_eq!(uncovered(&[me, 1], &found[..0]), [1, me]);
    }
}

/// Where a function's two probes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A uprobe on the first instruction, a uretprobe for the return; `at`
    /// is the function's file offset.
    Entry {
        /// File offset of the function's first instruction.
        at: u64,
    },
    /// Two uprobes at these offsets in the file, both on instructions the
    /// kernel emulates: `enter` where the arguments are still in their
    /// registers, `exit` where `eax` holds the return value, on every path
    /// to the function's return.
    Inside {
        /// File offset of the call-side probe.
        enter: u64,
        /// File offset of the return-side probe.
        exit: u64,
    },
}

/// The placement of each of [`FUNCTIONS`] that `path` defines (x86-64 ELF),
/// by file offset; the file is read and its symbols resolved here once, for
/// every probe of it. A function not in the map is not there to probe.
pub fn placements(path: &Path) -> HashMap<&'static str, Placement> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let mut found = HashMap::new();
    let Ok(data) = fs::read(path) else {
        return found;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return found;
    };
    if file.architecture() != object::Architecture::X86_64 {
        return found;
    }
    for symbol in file.dynamic_symbols() {
        let Ok(name) = symbol.name() else { continue };
        // Versioned names ("SSL_read@@OPENSSL_3.0.0") as some readers give them.
        let name = name.split('@').next().unwrap_or(name);
        let Some(&(function, _)) = FUNCTIONS.iter().find(|(f, _)| *f == name) else {
            continue;
        };
        // The first definition only: offsets of another would be wrong for it.
        if found.contains_key(function) || symbol.is_undefined() {
            continue;
        }
        let (address, size) = (symbol.address(), symbol.size());
        let Some(section) = symbol
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
        else {
            continue;
        };
        let (Some(code), Some((file_offset, _))) = (
            section.data_range(address, size).ok().flatten(),
            section.file_range(),
        ) else {
            continue;
        };
        // Probes are attached by file offset, so they land in exactly the
        // code decoded here.
        let start = address - section.address() + file_offset;
        let placement = match place(code) {
            Placement::Inside { enter, exit } => Placement::Inside {
                enter: start + enter,
                exit: start + exit,
            },
            Placement::Entry { at } => Placement::Entry { at: start + at },
        };
        found.insert(function, placement);
    }
    found
}

/// The argument registers (System V: `ssl`, `buf`, `num`, the `_ex` count
/// pointer) the call-side probe reads.
const ARGUMENTS: [iced_x86::Register; 4] = [
    iced_x86::Register::RDI,
    iced_x86::Register::RSI,
    iced_x86::Register::RDX,
    iced_x86::Register::RCX,
];

/// Whether the kernel runs `bytes` (one instruction) without single-stepping
/// it: a relative jump, a conditional jump, a relative call, a one-byte nop,
/// without prefixes (arch/x86/kernel/uprobes.c, `branch_setup_xol_ops`).
fn emulated(bytes: &[u8]) -> bool {
    matches!(
        bytes,
        [0x70..=0x7f, _]
            | [0xeb, _]
            | [0x90]
            | [0x0f, 0x80..=0x8f, _, _, _, _]
            | [0xe8 | 0xe9, _, _, _, _]
    )
}

/// The register an instruction of the few straight-line kinds allowed
/// around the probes writes (`None`: it writes none, or only memory or the
/// flags); `Err` for any other instruction.
fn writes(i: &iced_x86::Instruction) -> Result<Option<iced_x86::Register>, ()> {
    use iced_x86::{Mnemonic as M, OpKind};
    match i.mnemonic() {
        M::Test | M::Cmp | M::Endbr64 | M::Push | M::Nop => Ok(None),
        M::Sub | M::Add | M::Mov | M::Xor | M::Lea | M::Movsxd | M::Pop | M::Movzx => {
            match i.op0_kind() {
                OpKind::Register => Ok(Some(i.op0_register().full_register())),
                OpKind::Memory => Ok(None),
                _ => Err(()),
            }
        }
        _ => Err(()),
    }
}

/// The placement for one function's machine code (x86-64), by offset from
/// its start.
fn place(code: &[u8]) -> Placement {
    place_inside(code).unwrap_or(Placement::Entry { at: 0 })
}

fn place_inside(code: &[u8]) -> Option<Placement> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let instructions: Vec<iced_x86::Instruction> = decoder.iter().collect();
    if instructions.iter().any(|i| i.is_invalid()) {
        return None;
    }
    let bytes = |i: &iced_x86::Instruction| {
        let at = i.ip() as usize;
        code.get(at..at + i.len())
    };
    let end = code.len() as u64;
    // Every jump stays inside (no tail call) and is direct; exactly one ret.
    let mut targets = HashSet::new();
    for i in &instructions {
        match i.flow_control() {
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                let target = i.near_branch_target();
                if !i.is_jmp_short_or_near() && !i.is_jcc_short_or_near() || target >= end {
                    return None;
                }
                targets.insert(target);
            }
            FlowControl::IndirectBranch | FlowControl::Exception | FlowControl::Interrupt => {
                return None;
            }
            _ => {}
        }
    }
    let rets: Vec<usize> = (0..instructions.len())
        .filter(|&n| instructions[n].mnemonic() == Mnemonic::Ret)
        .collect();
    let &[ret] = rets.as_slice() else {
        return None;
    };
    // The call side: the first emulated instruction, with nothing before it
    // but straight-line code that leaves the arguments alone — and no jump
    // back to it or before it, so it runs once a call.
    let mut enter = None;
    for i in &instructions {
        if emulated(bytes(i)?) {
            enter = Some(i.ip());
            break;
        }
        match writes(i) {
            Ok(Some(r)) if ARGUMENTS.contains(&r) => return None,
            Ok(_) => {}
            Err(()) => return None,
        }
    }
    let enter = enter?;
    if targets.iter().any(|&t| t <= enter) {
        return None;
    }
    // A jump whose taken side never comes back: to a call (the stack
    // protector's `__stack_chk_fail`) that is the function's last
    // instruction. The return side sits on one, so it runs once a call.
    let never_returns = |target: u64| {
        instructions.last().is_some_and(|last| {
            last.ip() == target && last.mnemonic() == Mnemonic::Call && last.next_ip() == end
        })
    };
    // The return side: walking back from the ret over code no path jumps
    // into and that leaves eax alone, the first emulated jump — one that
    // leaves for beyond the ret (the stack protector's) — or nop.
    let ret_ip = instructions[ret].ip();
    if targets.contains(&ret_ip) {
        return None;
    }
    let mut exit = None;
    for i in instructions[..ret].iter().rev() {
        let b = bytes(i)?;
        if b == [0x90]
            || (i.is_jcc_short_or_near() && emulated(b) && never_returns(i.near_branch_target()))
        {
            exit = Some(i.ip());
            break;
        }
        if targets.contains(&i.ip()) {
            return None;
        }
        match writes(i) {
            Ok(Some(iced_x86::Register::RAX)) | Err(()) => return None,
            Ok(_) => {}
        }
    }
    match exit {
        Some(exit) if enter < exit => Some(Placement::Inside { enter, exit }),
        _ => None,
    }
}

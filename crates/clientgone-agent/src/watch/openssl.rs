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

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The functions probed, and what each is to the BPF side (its attach
/// cookie, `enum ssl_fn`). The `_ex` forms (OpenSSL 1.1.1 and later) are
/// what Python calls; `SSL_read`/`SSL_write` what nginx calls.
pub const FUNCTIONS: [(&str, u64); 5] = [
    ("SSL_read", 1),
    ("SSL_read_ex", 2),
    ("SSL_write", 3),
    ("SSL_write_ex", 4),
    ("SSL_do_handshake", 5),
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

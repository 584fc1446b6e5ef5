//! The listening TCP ports of processes (`--pid`, `--comm`), from `/proc`: the
//! sockets in each process's descriptor table matched with the listening
//! sockets of its network namespace (`/proc/PID/net/tcp` and `tcp6`).

use std::collections::{BTreeSet, HashMap};
use std::fs;

/// `TCP_LISTEN` as `/proc/net/tcp` writes it.
const LISTEN: &str = "0A";

/// `(state, local port, socket inode)` of every socket in the TCP tables
/// `dir/tcp` and `dir/tcp6` (`/proc/net` or `/proc/PID/net`), as the kernel
/// writes them; lines it cannot read are left out.
fn tcp_sockets(dir: &str) -> Vec<(String, u16, u64)> {
    let mut found = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("{dir}/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, f[9].parse::<u64>()) {
                found.push((f[3].to_owned(), port, inode));
            }
        }
    }
    found
}

/// Socket inode → local port of the listening sockets in `/proc/PID/net/tcp*`.
fn listening(pid: u32) -> HashMap<u64, u16> {
    tcp_sockets(&format!("/proc/{pid}/net"))
        .into_iter()
        .filter(|(state, _, _)| state == LISTEN)
        .map(|(_, port, inode)| (inode, port))
        .collect()
}

/// `TCP_ESTABLISHED` and `TCP_CLOSE_WAIT` as `/proc/net/tcp` writes them: the
/// states in which a connection still carries requests.
const OPEN: [&str; 2] = ["01", "08"];

/// Socket inode → local port of the open connections on `ports` in this
/// network namespace (`/proc/net/tcp` and `tcp6`): the connections that were
/// open before the agent started. Orphaned sockets (inode 0) are left out.
pub fn open_connections(ports: &BTreeSet<u16>) -> HashMap<u64, u16> {
    tcp_sockets("/proc/net")
        .into_iter()
        .filter(|(state, port, inode)| {
            OPEN.contains(&state.as_str()) && ports.contains(port) && *inode != 0
        })
        .map(|(_, port, inode)| (inode, port))
        .collect()
}

/// The ports process `pid` listens on.
pub fn ports_of(pid: u32) -> Result<BTreeSet<u16>, String> {
    let inodes = socket_inodes(pid)
        .map_err(|e| format!("--pid {pid}: cannot read its descriptors ({e})"))?;
    let listening = listening(pid);
    Ok(inodes
        .filter_map(|inode| listening.get(&inode).copied())
        .collect())
}

/// The processes with a listening socket on one of `ports`, in any network
/// namespace (each namespace's table read once): the servers whose TLS
/// library is probed. Also how many processes could not be looked into
/// (another user's, without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH).
pub fn servers(ports: &BTreeSet<u16>) -> (Vec<u32>, usize) {
    let mut hidden = 0;
    // Network namespace → its listening sockets on the watched ports.
    let mut tables: HashMap<std::path::PathBuf, HashMap<u64, u16>> = HashMap::new();
    let mut found = Vec::new();
    for pid in pids() {
        let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/net")) else {
            hidden += usize::from(!kernel_thread(pid));
            continue;
        };
        let listening = tables.entry(ns).or_insert_with(|| {
            let mut l = listening(pid);
            l.retain(|_, port| ports.contains(port));
            l
        });
        if listening.is_empty() {
            continue;
        }
        let Ok(mut inodes) = socket_inodes(pid) else {
            hidden += usize::from(!kernel_thread(pid));
            continue;
        };
        if inodes.any(|inode| listening.contains_key(&inode)) {
            found.push(pid);
        }
    }
    (found, hidden)
}

/// Kernel threads have no command line (and serve nothing).
fn kernel_thread(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty())
}

/// Every process's id, from `/proc`.
fn pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// The inodes of the sockets in process `pid`'s descriptor table (the
/// descriptors' link targets `socket:[N]`).
fn socket_inodes(pid: u32) -> std::io::Result<impl Iterator<Item = u64>> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))?;
    Ok(fds.flatten().filter_map(|fd| {
        let target = fs::read_link(fd.path()).ok()?;
        target
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    }))
}

/// The command name of process `pid` (`?` if it is gone).
pub fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// The processes whose command name (`/proc/PID/comm`) is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    pids()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_s_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(ports_of(std::process::id()).unwrap().contains(&port));
        assert!(
            servers(&BTreeSet::from([port]))
                .0
                .contains(&std::process::id())
        );
        let me = fs::read_to_string("/proc/self/comm").unwrap();
        assert!(pids_named(me.trim_end()).contains(&std::process::id()));
        assert!(ports_of(u32::MAX).is_err());
    }

    #[test]
    fn finds_open_connections_on_a_port_and_no_others() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let open = open_connections(&BTreeSet::from([port]));
        // The server's side only: the client's local port is another.
        assert_eq!(open.values().collect::<Vec<_>>(), [&port]);
        assert!(open_connections(&BTreeSet::new()).is_empty());
    }
}

//! Giving up what the agent no longer needs once its programs are attached:
//! it parses bytes any client on the host can send, so after start-up it holds
//! only its open descriptors (the ring buffer, the maps, the metrics listener),
//! no capability, and — with `--user` — not even root's identity. Nor can its
//! memory be read from outside: it holds the plaintext of TLS connections.

use caps::CapSet;

/// Drops every capability (and the bounding set, so none comes back through
/// exec), switching to `user` first when one is given, and makes the process
/// undumpable. Irreversible.
pub fn drop_privileges(user: Option<&str>) -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    for cap in caps::all() {
        // Needs CAP_SETPCAP, which root has; without it the set is left as it is.
        let _ = caps::drop(None, CapSet::Bounding, cap);
    }
    if let Some(name) = user {
        let account = nix::unistd::User::from_name(name)
            .map_err(|e| format!("--user {name}: {e}"))?
            .ok_or_else(|| format!("--user {name}: no such user"))?;
        nix::unistd::setgroups(&[]).map_err(|e| format!("--user {name}: setgroups: {e}"))?;
        nix::unistd::setgid(account.gid).map_err(|e| format!("--user {name}: setgid: {e}"))?;
        nix::unistd::setuid(account.uid).map_err(|e| format!("--user {name}: setuid: {e}"))?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("cannot drop capabilities: {e}"))?;
    }
    // No core dump, and no ptrace or /proc/PID/mem by its own user: payload
    // bytes (TLS plaintext included) never leave the process. After setuid,
    // which resets the flag.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("cannot set dumpable: {e}"))?;
    Ok(())
}

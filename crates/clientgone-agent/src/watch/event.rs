//! The kernel's events, decoded from the ring buffer's bytes (the layout of
//! `struct cg_event` in `bpf/watch.h`). Decoding never panics: a record too
//! short for its header, or claiming more bytes than it carries, is `None`.

/// Bytes the BPF side captures from the start of each transfer (`CG_CAP`).
pub const CAPTURE: usize = 1024;
/// Bytes it captures from the end of each transfer (`CG_TAIL`).
pub const TAIL: usize = 8;
const HEADER: usize = 48;

/// What happened on a watched connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Established on a watched port.
    Open,
    /// The server read `len` bytes.
    Recv,
    /// The server wrote `len` bytes.
    Send,
    /// The TCP state changed.
    State {
        /// The state before (the kernel's `TCP_*` numbers).
        old: u8,
        /// The state after.
        new: u8,
        /// `sk_err` at that moment (`ECONNRESET`, `ETIMEDOUT`, or 0).
        error: i32,
    },
    /// An RST arrived.
    Reset,
    /// An established connection seen for the first time: it was open before
    /// the agent started (or its open event was lost).
    Adopt {
        /// Its socket's inode, as `/proc/net/tcp` lists it (0: orphaned).
        inode: u32,
    },
    /// The connection's TLS library is probed: its `Recv`/`Send` events are
    /// plaintext from now on (`tls` set), its ciphertext is not reported.
    Tls {
        /// Its handshake completed.
        handshake: bool,
        /// The server runs the handshake itself (`SSL_do_handshake`), and
        /// a call of it returned without completing it.
        explicit: bool,
    },
    /// An `SSL_write` moved its first bytes to the socket: its plaintext
    /// `Send` comes at the call's return.
    TlsWriting,
    /// More bytes of the HTTP/2 connection's `Recv` or `Send` just before
    /// it (which said `more`): `data` is the transfer's bytes from `offset`
    /// (`len` is the transfer's). The bytes between pieces are DATA payloads
    /// the kernel passed over.
    More {
        /// Where `data` starts in the transfer.
        offset: u32,
        /// The transfer's last piece (possibly empty).
        last: bool,
    },
}

/// Flag bits of `struct cg_event` (`CG_F_*` in `bpf/watch.h`).
mod flag {
    pub const TLS: u8 = 2;
    pub const SSL_PROC: u8 = 4;
    pub const HANDSHAKE: u8 = 8;
    pub const EXPLICIT: u8 = 16;
    pub const MORE: u8 = 32;
    pub const LAST: u8 = 64;
}

/// One decoded event. `data` and `tail` borrow the ring buffer's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The connection's id, unique while the agent runs.
    pub conn: u64,
    /// `CLOCK_MONOTONIC`, nanoseconds.
    pub ts_ns: u64,
    /// The watched local port.
    pub port: u16,
    /// What happened.
    pub kind: Kind,
    /// Bytes read or written (`Recv`, `Send`).
    pub len: u32,
    /// Bytes the server wrote that the client never acknowledged (`State`, `Reset`).
    pub unacked: u32,
    /// The first bytes of the transfer (up to [`CAPTURE`]); empty when none
    /// could be captured (sendfile, splice, io_uring).
    pub data: &'a [u8],
    /// The last bytes of the transfer (up to [`TAIL`]).
    pub tail: &'a [u8],
    /// `Recv`/`Send`: plaintext, as the TLS library returned it or was given it.
    pub tls: bool,
    /// `Open`, `Adopt`, `State`, `Reset` and a plaintext `Send`: the socket's
    /// `write_seq` then (the sequence number after the last byte the server
    /// wrote); 0 where not told.
    pub seq: u32,
    /// A connection's first `Recv`/`Send`: its process has called a probed
    /// TLS library (a TLS connection of it not reported as [`Kind::Tls`]
    /// could not be tied to its SSL object).
    pub ssl_process: bool,
    /// `Recv`/`Send` of an HTTP/2 connection: [`Kind::More`] pieces follow.
    pub more: bool,
}

/// TCP states, as the kernel numbers them.
pub mod tcp {
    /// `TCP_ESTABLISHED`.
    pub const ESTABLISHED: u8 = 1;
    /// `TCP_FIN_WAIT1`: the server closed first.
    pub const FIN_WAIT1: u8 = 4;
    /// `TCP_FIN_WAIT2`.
    pub const FIN_WAIT2: u8 = 5;
    /// `TCP_CLOSE`: the end.
    pub const CLOSE: u8 = 7;
    /// `TCP_CLOSE_WAIT`: the client's FIN arrived.
    pub const CLOSE_WAIT: u8 = 8;
    /// `TCP_LAST_ACK`: the server closed after the client's FIN.
    pub const LAST_ACK: u8 = 9;
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> Event<'a> {
    /// Decodes one ring-buffer record.
    pub fn parse(b: &'a [u8]) -> Option<Event<'a>> {
        let conn = u64_at(b, 0)?;
        let ts_ns = u64_at(b, 8)?;
        let seq = u32_at(b, 16)?;
        let len = u32_at(b, 20)?;
        let unacked = u32_at(b, 24)?;
        let port = u16_at(b, 28)?;
        let kind = match *b.get(30)? {
            1 => Kind::Open,
            2 => Kind::Recv,
            3 => Kind::Send,
            4 => Kind::State {
                old: *b.get(32)?,
                new: *b.get(33)?,
                error: len as i32,
            },
            5 => Kind::Reset,
            6 => Kind::Adopt { inode: unacked },
            7 => Kind::Tls {
                handshake: *b.get(31)? & flag::HANDSHAKE != 0,
                explicit: *b.get(31)? & flag::EXPLICIT != 0,
            },
            8 => Kind::TlsWriting,
            9 => Kind::More {
                offset: unacked,
                last: *b.get(31)? & flag::LAST != 0,
            },
            _ => return None,
        };
        let flags = *b.get(31)?;
        let cap_len = usize::from(u16_at(b, 34)?);
        let tail_len = usize::from(u16_at(b, 36)?);
        if cap_len > CAPTURE || tail_len > TAIL {
            return None;
        }
        let data = b.get(HEADER..HEADER + cap_len)?;
        let mut tail = b.get(40..40 + tail_len)?;
        if tail.is_empty()
            && cap_len > 0
            && cap_len == len as usize
            && !matches!(kind, Kind::More { .. })
        {
            // The whole transfer was captured: its tail is the end of it.
            tail = &data[cap_len.saturating_sub(TAIL)..];
        }
        Some(Event {
            conn,
            ts_ns,
            port,
            kind,
            len: if matches!(kind, Kind::Recv | Kind::Send | Kind::More { .. }) {
                len
            } else {
                0
            },
            unacked,
            data,
            tail,
            tls: flags & flag::TLS != 0,
            seq,
            ssl_process: flags & flag::SSL_PROC != 0,
            more: matches!(kind, Kind::Recv | Kind::Send) && flags & flag::MORE != 0,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes an event as the BPF side lays it out.
    pub(crate) fn encode(e: &Event<'_>) -> Vec<u8> {
        let mut b = vec![0u8; HEADER + e.data.len()];
        b[0..8].copy_from_slice(&e.conn.to_ne_bytes());
        b[8..16].copy_from_slice(&e.ts_ns.to_ne_bytes());
        b[16..20].copy_from_slice(&e.seq.to_ne_bytes());
        let (kind, len, old, new) = match e.kind {
            Kind::Open => (1, 0, 0, 0),
            Kind::Recv => (2, e.len, 0, 0),
            Kind::Send => (3, e.len, 0, 0),
            Kind::State { old, new, error } => (4, error as u32, old, new),
            Kind::Reset => (5, 0, 0, 0),
            Kind::Adopt { .. } => (6, 0, 0, 0),
            Kind::Tls { .. } => (7, 0, 0, 0),
            Kind::TlsWriting => (8, 0, 0, 0),
            Kind::More { .. } => (9, e.len, 0, 0),
        };
        b[31] = match e.kind {
            Kind::Tls {
                handshake,
                explicit,
            } => {
                (if handshake { flag::HANDSHAKE } else { 0 })
                    | if explicit { flag::EXPLICIT } else { 0 }
            }
            Kind::More { last: true, .. } => flag::LAST,
            _ => 0,
        } | if e.tls { flag::TLS } else { 0 }
            | if e.ssl_process { flag::SSL_PROC } else { 0 }
            | if e.more { flag::MORE } else { 0 };
        b[20..24].copy_from_slice(&len.to_ne_bytes());
        let unacked = match e.kind {
            Kind::Adopt { inode } => inode,
            _ => e.unacked,
        };
        b[24..28].copy_from_slice(&unacked.to_ne_bytes());
        b[28..30].copy_from_slice(&e.port.to_ne_bytes());
        b[30] = kind;
        b[32] = old;
        b[33] = new;
        b[34..36].copy_from_slice(&(e.data.len() as u16).to_ne_bytes());
        b[36..38].copy_from_slice(&(e.tail.len() as u16).to_ne_bytes());
        b[40..40 + e.tail.len()].copy_from_slice(e.tail);
        b[HEADER..].copy_from_slice(e.data);
        b
    }

    #[test]
    fn events_round_trip_and_bad_records_are_none() {
        let e = Event {
            seq: 0,
            conn: 7,
            ts_ns: 123,
            port: 8080,
            kind: Kind::Recv,
            len: 18,
            unacked: 0,
            data: b"GET / HTTP/1.1\r\n\r\n",
            tail: b"\r\n\r\n",
            tls: true,
            ssl_process: false,
            more: false,
        };
        let b = encode(&e);
        assert_eq!(Event::parse(&b), Some(e));
        // A transfer captured whole comes without a tail of its own.
        let mut whole = b.clone();
        whole[36..38].copy_from_slice(&0u16.to_ne_bytes());
        let tail = &e.data[e.data.len() - TAIL..];
        assert_eq!(Event::parse(&whole), Some(Event { tail, ..e }));
        let s = Event {
            kind: Kind::State {
                old: tcp::ESTABLISHED,
                new: tcp::CLOSE,
                error: 104,
            },
            len: 0,
            data: b"",
            tail: b"",
            ..e
        };
        assert_eq!(Event::parse(&encode(&s)), Some(s));
        for (handshake, explicit) in [(false, false), (true, false), (false, true)] {
            let t = Event {
                kind: Kind::Tls {
                    handshake,
                    explicit,
                },
                tls: false,
                ssl_process: true,
                ..s
            };
            assert_eq!(Event::parse(&encode(&t)), Some(t));
        }
        // An HTTP/2 transfer whose pieces follow, and its last piece.
        let h2 = Event { more: true, ..e };
        assert_eq!(Event::parse(&encode(&h2)), Some(h2));
        for last in [false, true] {
            let piece = Event {
                kind: Kind::More { offset: 9, last },
                unacked: 9,
                tail: b"",
                tls: false,
                ..e
            };
            assert_eq!(Event::parse(&encode(&piece)), Some(piece));
        }
        // Too short, a wrong kind, and a capture longer than the record.
        assert_eq!(Event::parse(&b[..40]), None);
        let mut bad = b.clone();
        bad[30] = 10;
        assert_eq!(Event::parse(&bad), None);
        assert_eq!(Event::parse(&b[..b.len() - 1]), None);
        let mut long = b.clone();
        long[34..36].copy_from_slice(&2000u16.to_ne_bytes());
        assert_eq!(Event::parse(&long), None);
    }
}

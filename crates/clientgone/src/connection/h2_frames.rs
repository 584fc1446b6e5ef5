//! [`FrameScanner`]: reads the frame headers of what an HTTP/2 client sends,
//! to catch its `RST_STREAM` frames as they arrive.
//!
//! hyper drops a stream's service future when the client resets the stream,
//! and it also drops it when something inside the server gives up — tonic's
//! own timeout wraps the user's layers from outside and answers in their
//! place. The dropped future looks the same in both cases; the wire does
//! not. The scanner sees the reset in the bytes before h2 decodes them, so
//! the connection's state holds it by the time the future is dropped.
//!
//! It only skips over payloads, so it costs a few comparisons per frame, not
//! per byte; it stops for good at the first byte that is not the HTTP/2
//! preface (an HTTP/1 connection).

/// The client connection preface of HTTP/2 (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `RST_STREAM` (RFC 9113, section 6.4): a 4-byte error code, nothing else.
const RST_STREAM: u8 = 0x3;
const FRAME_HEADER_LEN: usize = 9;

/// What the scanner tells the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameEvent {
    /// The whole preface arrived: the connection speaks HTTP/2.
    Preface,
    /// The client reset a stream, with this error code.
    StreamReset { stream: u32, code: u32 },
}

#[derive(Debug)]
enum Scan {
    /// This many bytes of the preface matched so far.
    Preface(usize),
    /// Inside a frame header.
    Header {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Inside a payload of no interest: this many bytes are left.
    Skip(usize),
    /// Inside a `RST_STREAM` payload.
    Reset {
        stream: u32,
        buf: [u8; 4],
        have: usize,
    },
    /// Not HTTP/2 (or not any more): nothing to read.
    Off,
}

/// See the module docs. One per connection, on its read side.
#[derive(Debug)]
pub(crate) struct FrameScanner {
    scan: Scan,
}

impl Default for FrameScanner {
    fn default() -> Self {
        FrameScanner {
            scan: Scan::Preface(0),
        }
    }
}

impl FrameScanner {
    /// Whether the scanner still reads (an undecided preface, or HTTP/2).
    pub(crate) fn is_on(&self) -> bool {
        !matches!(self.scan, Scan::Off)
    }

    /// Reads the next bytes the client sent, in order; `event` is called for
    /// what they show.
    pub(crate) fn scan(&mut self, mut data: &[u8], mut event: impl FnMut(FrameEvent)) {
        loop {
            data = self.scan_whole_frames(data, &mut event);
            if data.is_empty() {
                return;
            }
            data = self.scan_piece(data, &mut event);
            if data.is_empty() || matches!(self.scan, Scan::Off) {
                return;
            }
        }
    }

    /// The usual case: between frames, with whole frames at hand — read in
    /// place, a header at a time (copying nine bytes would be a call to
    /// memcpy). Returns what is left: a frame cut off by the read's end.
    fn scan_whole_frames<'a>(
        &mut self,
        mut data: &'a [u8],
        event: &mut impl FnMut(FrameEvent),
    ) -> &'a [u8] {
        if !matches!(self.scan, Scan::Header { have: 0, .. }) {
            return data;
        }
        while let Some(header) = data.first_chunk::<FRAME_HEADER_LEN>() {
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let whole = FRAME_HEADER_LEN + len;
            if data.len() < whole {
                break;
            }
            if header[3] == RST_STREAM && len == 4 {
                let stream =
                    u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
                let code = u32::from_be_bytes([data[9], data[10], data[11], data[12]]);
                event(FrameEvent::StreamReset { stream, code });
            }
            data = &data[whole..];
        }
        data
    }

    /// Reads bytes one state at a time: the preface, and frames split across
    /// reads. Returns what is left.
    fn scan_piece<'a>(
        &mut self,
        mut data: &'a [u8],
        event: &mut impl FnMut(FrameEvent),
    ) -> &'a [u8] {
        match &mut self.scan {
            Scan::Off => return &[],
            Scan::Preface(matched) => {
                let rest = &PREFACE[*matched..];
                let n = data.len().min(rest.len());
                if data[..n] != rest[..n] {
                    self.scan = Scan::Off;
                    return &[];
                }
                *matched += n;
                data = &data[n..];
                if *matched == PREFACE.len() {
                    event(FrameEvent::Preface);
                    self.scan = fresh_header();
                }
            }
            Scan::Header { buf, have } => {
                let n = data.len().min(FRAME_HEADER_LEN - *have);
                buf[*have..*have + n].copy_from_slice(&data[..n]);
                *have += n;
                data = &data[n..];
                if *have == FRAME_HEADER_LEN {
                    let header = *buf;
                    self.scan = after_header(&header);
                }
            }
            Scan::Skip(left) => {
                let n = data.len().min(*left);
                *left -= n;
                data = &data[n..];
                if *left == 0 {
                    self.scan = fresh_header();
                }
            }
            Scan::Reset { stream, buf, have } => {
                let n = data.len().min(4 - *have);
                buf[*have..*have + n].copy_from_slice(&data[..n]);
                *have += n;
                data = &data[n..];
                if *have == 4 {
                    event(FrameEvent::StreamReset {
                        stream: *stream,
                        code: u32::from_be_bytes(*buf),
                    });
                    self.scan = fresh_header();
                }
            }
        }
        data
    }
}

/// What follows a frame header.
fn after_header(header: &[u8; FRAME_HEADER_LEN]) -> Scan {
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    match (header[3], len) {
        (RST_STREAM, 4) => Scan::Reset {
            stream,
            buf: [0; 4],
            have: 0,
        },
        (_, 0) => fresh_header(),
        (_, len) => Scan::Skip(len),
    }
}

fn fresh_header() -> Scan {
    Scan::Header {
        buf: [0; FRAME_HEADER_LEN],
        have: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    fn events_of(chunks: &[&[u8]]) -> (Vec<FrameEvent>, bool) {
        let mut scanner = FrameScanner::default();
        let mut events = Vec::new();
        for chunk in chunks {
            scanner.scan(chunk, |e| events.push(e));
        }
        (events, scanner.is_on())
    }

    #[test]
    fn finds_resets_between_other_frames_in_any_split() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[0; 12])); // SETTINGS
        wire.extend(frame(0x1, 0x4, 1, b"headers!")); // HEADERS
        wire.extend(frame(0x0, 0, 1, &[7; 300])); // DATA
        wire.extend(frame(RST_STREAM, 0, 1, &8u32.to_be_bytes())); // CANCEL
        wire.extend(frame(0x6, 0, 0, &[0; 8])); // PING
        wire.extend(frame(RST_STREAM, 0, 0x8000_0003, &2u32.to_be_bytes())); // reserved bit set
        let want = vec![
            FrameEvent::Preface,
            FrameEvent::StreamReset { stream: 1, code: 8 },
            FrameEvent::StreamReset { stream: 3, code: 2 },
        ];
        // Whole, then in every piece size from 1 byte up.
        assert_eq!(events_of(&[&wire]), (want.clone(), true));
        for size in 1..40 {
            let chunks: Vec<&[u8]> = wire.chunks(size).collect();
            assert_eq!(events_of(&chunks), (want.clone(), true), "pieces of {size}");
        }
    }

    #[test]
    fn stops_at_http1() {
        let (events, on) = events_of(&[b"GET / HTTP/1.1\r\n\r\n"]);
        assert_eq!((events, on), (vec![], false));
        // A head that starts like the preface is still not it.
        let (events, on) = events_of(&[b"P", b"RI * HTTP/1.1\r\n"]);
        assert_eq!((events, on), (vec![], false));
    }

    #[test]
    fn a_reset_of_the_wrong_length_is_skipped_not_misread() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(RST_STREAM, 0, 1, &[0; 5]));
        wire.extend(frame(RST_STREAM, 0, 5, &8u32.to_be_bytes()));
        let (events, _) = events_of(&[&wire]);
        assert_eq!(
            events,
            vec![
                FrameEvent::Preface,
                FrameEvent::StreamReset { stream: 5, code: 8 }
            ]
        );
    }
}

//! What `watch` reads of HTTP/1 heads (with `httparse`), and how a body's end
//! is found from the bytes the kernel side captured: a declared length is
//! counted down; a chunked body ends at its last chunk (`0\r\n\r\n` at the end
//! of a transfer); anything else ends when the server closes.

use super::skip::Skip;

/// Headers read per head; a head with more is not followed.
const MAX_HEADERS: usize = 96;

/// A head parsed from the start of a buffer.
#[derive(Debug)]
pub enum Head<T> {
    /// The head, and its length in bytes.
    Complete(usize, T),
    /// More bytes are needed.
    Partial,
    /// Not an HTTP/1 head.
    Invalid,
}

/// What a request head says.
#[derive(Debug)]
pub struct RequestHead {
    /// The `http_request_method` label.
    pub method: &'static str,
    path: String,
    /// `"1.0"` or `"1.1"`.
    pub version: &'static str,
    /// How its body is framed.
    pub body: Framing,
    /// The client asked to close after this request.
    pub close: bool,
    /// A `CONNECT`: a success answer hands the connection over
    /// ([`clientgone::hands_over_connection`]).
    pub connect: bool,
}

impl RequestHead {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path, owned.
    pub fn into_path(self) -> String {
        self.path
    }
}

/// How a body is delimited, and how much of it is still to come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked: the last bytes seen, to find the last chunk.
    Chunked(Window),
    /// Until the server closes the connection.
    UntilClose,
}

/// The last bytes of a chunked body, and how many there were in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    last: [u8; 7],
    seen: u64,
}

impl Window {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().rev().take(7).rev() {
            self.last.rotate_left(1);
            self.last[6] = b;
        }
        self.seen = self.seen.saturating_add(bytes.len() as u64);
    }

    /// Bytes not seen at all (moved without capture) break the window.
    fn gap(&mut self, n: u64) {
        if n > 0 {
            self.last = [0; 7];
            self.seen = self.seen.saturating_add(n);
        }
    }

    fn ended(&self) -> bool {
        self.last.ends_with(b"\r\n0\r\n\r\n")
            || (self.seen == 5 && self.last.ends_with(b"0\r\n\r\n"))
    }
}

impl Framing {
    /// A body that is over before it starts.
    pub fn is_empty(&self) -> bool {
        matches!(self, Framing::Empty | Framing::Length(0))
    }

    /// Takes the next `rest` bytes of a transfer (`captured`: all of them, when
    /// they were captured whole; `tail`: the transfer's last bytes). Returns how
    /// many belong to this body and whether it ended.
    pub fn consume(&mut self, rest: u64, captured: Option<&[u8]>, tail: &[u8]) -> (u64, bool) {
        match self {
            Framing::Empty => (0, true),
            Framing::Length(left) => {
                let used = rest.min(*left);
                *left -= used;
                (used, *left == 0)
            }
            Framing::Chunked(window) => {
                match captured {
                    Some(bytes) => window.push(bytes),
                    None => {
                        let tail = &tail[..tail.len().min(rest as usize)];
                        window.gap(rest - tail.len() as u64);
                        window.push(tail);
                        // push counted the tail in `seen` already.
                    }
                }
                (rest, window.ended())
            }
            Framing::UntilClose => (rest, false),
        }
    }
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    header(headers, name).any(|v| {
        v.split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The body's framing from `Transfer-Encoding` and `Content-Length`, as RFC 9112
/// says: chunked wins; more than one differing length is invalid.
fn framing(headers: &[httparse::Header<'_>], otherwise: Framing) -> Option<Framing> {
    if header(headers, "transfer-encoding").next().is_some() {
        return has_token(headers, "transfer-encoding", "chunked")
            .then(|| Framing::Chunked(Window::default()));
    }
    let mut length = None;
    for v in header(headers, "content-length") {
        let n: u64 = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    Some(length.map_or(otherwise, Framing::Length))
}

/// Parses a request head at the start of `buf`.
pub fn request_head(buf: &[u8]) -> Head<RequestHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Invalid,
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Head::Invalid;
    };
    let Some(body) = framing(req.headers, Framing::Empty) else {
        return Head::Invalid;
    };
    let method = http::Method::from_bytes(method.as_bytes())
        .map_or("_OTHER", |m| clientgone::method_label(&m));
    let path = target.split_once('?').map_or(target, |(p, _)| p).to_owned();
    let close = clientgone::asks_to_close(
        if version == 0 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        },
        header(req.headers, "connection"),
    );
    let connect = method == "CONNECT";
    Head::Complete(
        n,
        RequestHead {
            method,
            path,
            version: if version == 0 { "1.0" } else { "1.1" },
            body,
            close,
            connect,
        },
    )
}

/// Parses a response head at the start of `buf`: its status and body framing.
pub fn response_head(buf: &[u8]) -> Head<(u16, Framing)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Invalid,
    };
    let Some(status) = resp.code else {
        return Head::Invalid;
    };
    match framing(resp.headers, Framing::UntilClose) {
        Some(body) => Head::Complete(n, (status, body)),
        None => Head::Invalid,
    }
}

/// A protocol that is not HTTP/1 but can be told from its first bytes.
pub fn foreign_protocol(buf: &[u8]) -> Option<Skip> {
    if buf.first() == Some(&0x16) {
        return Some(Skip::Tls); // a TLS handshake record
    }
    if buf.starts_with(b"PRI * HTTP/2.0") {
        return Some(Skip::Http2);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &[u8]) -> RequestHead {
        match request_head(s) {
            Head::Complete(n, h) => {
                assert_eq!(n, s.len());
                h
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_heads_give_method_path_framing_and_intent() {
        let h = req(b"GET /a/b?c=d HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            (h.method, h.path(), h.body, h.close),
            ("GET", "/a/b", Framing::Empty, false)
        );
        let h = req(b"POST /u HTTP/1.0\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(
            (h.method, h.body, h.close),
            ("POST", Framing::Length(12), true)
        );
        let h = req(b"PUT /u HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\nConnection: close\r\n\r\n");
        assert!(matches!(h.body, Framing::Chunked(_)) && h.close);
        let h = req(b"BREW /pot HTTP/1.1\r\n\r\n");
        assert_eq!(h.method, "_OTHER");
        assert!(req(b"CONNECT a:443 HTTP/1.1\r\n\r\n").connect);
        assert!(req(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").close);
        assert!(matches!(
            request_head(b"GET / HTTP/1.1\r\nHost"),
            Head::Partial
        ));
        for bad in [
            &b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"\x16\x03\x01",
        ] {
            assert!(matches!(request_head(bad), Head::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn response_heads_give_status_and_framing() {
        let Head::Complete(_, (s, f)) =
            response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!((s, f), (404, Framing::Length(9)));
        let Head::Complete(_, (_, f)) = response_head(b"HTTP/1.0 200 OK\r\n\r\n") else {
            panic!()
        };
        assert_eq!(f, Framing::UntilClose);
    }

    #[test]
    fn chunked_bodies_end_at_the_last_chunk_only() {
        let mut f = Framing::Chunked(Window::default());
        assert_eq!(f.consume(10, Some(b"5\r\nhello\r\n"), b""), (10, false));
        assert_eq!(f.consume(3, Some(b"0\r\n"), b""), (3, false));
        assert_eq!(f.consume(2, Some(b"\r\n"), b""), (2, true));
        // An empty chunked body, and one whose end came uncaptured in a big write.
        let mut f = Framing::Chunked(Window::default());
        assert_eq!(f.consume(5, Some(b"0\r\n\r\n"), b""), (5, true));
        let mut f = Framing::Chunked(Window::default());
        assert_eq!(f.consume(9000, None, b"x\r\n0\r\n\r\n"), (9000, true));
        // "0\r\n\r\n" inside data, not after a chunk's end, is not the end.
        let mut f = Framing::Chunked(Window::default());
        assert_eq!(
            f.consume(20, Some(b"a\r\nxxxxx0\r\n\r\n"), b""),
            (20, false)
        );
    }
}

//! HPACK (RFC 7541) decoding for the HTTP/2 follower: one [`Decoder`] per
//! direction of a connection keeps the dynamic table in step with the peer's
//! encoder and hands each header field of a block to a callback.
//!
//! Why not a crate: the HPACK decoders on crates.io that stand alone (h2's is
//! private to it) were each unfit for input from the network at the rate a
//! host sees it — loona-hpack (and `hpack`, which it forks) builds a
//! 257-entry `HashMap` Huffman table for every Huffman-coded string (80 % of
//! the agent's CPU under gRPC load, about 27 µs a header block), httlib-hpack
//! panics on malformed blocks (an index into an empty buffer), hpack_codec
//! takes a block's leading indexed field for a table-size update. What is
//! left here is the format's small part — integers, the tables, the field
//! representations; the Huffman code is httlib-huffman's (table-driven, no
//! panic on any input in a million random strings, equal to loona-hpack's on
//! every valid one).
//!
//! Decoding never panics: a block that does not decode is an error, and the
//! connection is left out (its table can no longer be trusted).

use std::collections::VecDeque;

/// What a block that cannot be decoded fails on.
pub type Error = &'static str;

/// A dynamic table entry: its name and value in one allocation.
#[derive(Debug)]
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn name(&self) -> &[u8] {
        &self.bytes[..self.name_len]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.name_len..]
    }

    /// Its size in the table (RFC 7541, 4.1).
    fn size(&self) -> usize {
        self.bytes.len() + 32
    }
}

/// The decoding side of one direction's HPACK context.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: index 62 is `table[0]`.
    table: VecDeque<Entry>,
    /// The table's size as RFC 7541 counts it (32 bytes an entry more).
    size: usize,
    /// Its maximum size, as the encoder last set it (at most `allowed`).
    max: usize,
    /// The most the decoding side allowed (`SETTINGS_HEADER_TABLE_SIZE`).
    allowed: usize,
    /// The field being decoded: its name and value (reused).
    name: Vec<u8>,
    value: Vec<u8>,
    /// Huffman strings decoded lately.
    huffman: Recent,
}

/// The last few short Huffman-coded strings and what they decode to: a peer
/// codes the same names and values again and again (nginx: `etag`,
/// `accept-ranges`, `text/html` in every response), and the code is
/// canonical, so equal coded bytes are an equal string.
#[derive(Debug, Default)]
struct Recent {
    entries: Vec<Decoded>,
    next: usize,
}

#[derive(Debug)]
struct Decoded {
    coded: Box<[u8]>,
    decoded: Box<[u8]>,
}

/// Strings of the table a connection keeps, and their longest coded form.
const RECENT: usize = 16;
const RECENT_LEN: usize = 64;

impl Recent {
    /// Appends what `coded` decodes to to `out`.
    fn decode_into(&mut self, coded: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let short = coded.len() <= RECENT_LEN;
        if short && let Some(d) = self.entries.iter().find(|d| *d.coded == *coded) {
            out.extend_from_slice(&d.decoded);
            return Ok(());
        }
        let start = out.len();
        // Five bits at a time: the fastest of the crate's tables.
        httlib_huffman::decode(coded, out, httlib_huffman::DecoderSpeed::FiveBits)
            .map_err(|_| "a Huffman string that does not decode")?;
        if short {
            let entry = Decoded {
                coded: coded.into(),
                decoded: out[start..].into(),
            };
            if self.entries.len() < RECENT {
                self.entries.push(entry);
            } else {
                self.entries[self.next] = entry;
                self.next = (self.next + 1) % RECENT;
            }
        }
        Ok(())
    }
}

/// The static table (RFC 7541, Appendix A): index 1 is `STATIC[0]`.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Where a block is being read.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&self) -> Result<u8, Error> {
        self.bytes.get(self.at).copied().ok_or("a block cut short")
    }

    /// An integer with an N-bit prefix (RFC 7541, 5.1).
    fn integer(&mut self, prefix: u32) -> Result<usize, Error> {
        let mask = (1u32 << prefix) - 1;
        let first = u32::from(self.byte()?) & mask;
        self.at += 1;
        if first < mask {
            return Ok(first as usize);
        }
        let mut value = mask as usize;
        // Five more bytes hold 35 bits: beyond any length a block can have.
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            self.at += 1;
            value += usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("an integer too long")
    }

    /// A string literal (RFC 7541, 5.2): its raw bytes and whether they are
    /// Huffman-coded.
    fn string(&mut self) -> Result<(&'a [u8], bool), Error> {
        let huffman = self.byte()? & 0x80 != 0;
        let len = self.integer(7)?;
        let end = self.at.checked_add(len).ok_or("a string too long")?;
        let bytes = self
            .bytes
            .get(self.at..end)
            .ok_or("a string longer than its block")?;
        self.at = end;
        Ok((bytes, huffman))
    }
}

impl Decoder {
    /// A context whose decoding side allows a table of `allowed` bytes.
    pub fn new(allowed: usize) -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: allowed,
            allowed,
            name: Vec::new(),
            value: Vec::new(),
            huffman: Recent::default(),
        }
    }

    /// The decoding side allows a table of `allowed` bytes from now on.
    pub fn set_allowed(&mut self, allowed: usize) {
        self.allowed = allowed;
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), Error> {
        match index {
            0 => Err("index 0"),
            1..=61 => Ok(STATIC[index - 1]),
            _ => self
                .table
                .get(index - 62)
                .map(|e| (e.name(), e.value()))
                .ok_or("an index beyond the table"),
        }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size(),
                None => self.size = 0,
            }
        }
    }

    /// Adds the field being decoded to the table.
    fn insert(&mut self) {
        let size = self.name.len() + self.value.len() + 32;
        // An entry larger than the table empties it (RFC 7541, 4.4).
        self.evict_to(self.max.saturating_sub(size));
        if size <= self.max {
            let mut bytes = Vec::with_capacity(self.name.len() + self.value.len());
            bytes.extend_from_slice(&self.name);
            bytes.extend_from_slice(&self.value);
            self.size += size;
            self.table.push_front(Entry {
                bytes: bytes.into_boxed_slice(),
                name_len: self.name.len(),
            });
        }
    }

    /// Decodes one header block, calling `field(name, value)` for each field
    /// whose name is `wanted`, in order; the table is updated as the
    /// encoder's was. The value of a field that is neither wanted nor
    /// indexed is passed over undecoded.
    pub fn decode(
        &mut self,
        block: &[u8],
        wanted: impl Fn(&[u8]) -> bool,
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), Error> {
        let mut r = Reader {
            bytes: block,
            at: 0,
        };
        while r.at < block.len() {
            let b = r.byte()?;
            if b & 0x80 != 0 {
                // Indexed field (6.1).
                let index = r.integer(7)?;
                let (name, value) = self.entry(index)?;
                if wanted(name) {
                    field(name, value);
                }
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update (6.3).
                let max = r.integer(5)?;
                if max > self.allowed {
                    return Err("a table size above the one allowed");
                }
                self.max = max;
                self.evict_to(max);
            } else {
                // Literal with incremental indexing (6.2.1), without
                // indexing (6.2.2) or never indexed (6.2.3).
                let indexing = b & 0xc0 == 0x40;
                let index = r.integer(if indexing { 6 } else { 4 })?;
                let mut name = std::mem::take(&mut self.name);
                name.clear();
                let named = if index == 0 {
                    string_into(&mut r, &mut self.huffman, &mut name)
                } else {
                    self.entry(index).map(|(n, _)| name.extend_from_slice(n))
                };
                self.name = name;
                named?;
                let want = wanted(&self.name);
                // An entry that cannot fit however short its value (nginx
                // sets its table to 0 bytes and still indexes every field)
                // only empties the table: its value need not be decoded.
                let fits = indexing && self.name.len() + 32 <= self.max;
                if !(fits || want) {
                    r.string()?;
                    if indexing {
                        self.evict_to(0);
                    }
                    continue;
                }
                self.value.clear();
                string_into(&mut r, &mut self.huffman, &mut self.value)?;
                if want {
                    field(&self.name, &self.value);
                }
                if indexing {
                    self.insert();
                }
            }
        }
        Ok(())
    }
}

/// Appends a string literal to `out`, Huffman-decoded if it is coded.
fn string_into(r: &mut Reader<'_>, recent: &mut Recent, out: &mut Vec<u8>) -> Result<(), Error> {
    let (bytes, huffman) = r.string()?;
    if !huffman {
        out.extend_from_slice(bytes);
        return Ok(());
    }
    recent.decode_into(bytes, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        d.decode(
            block,
            |_| true,
            |n, v| {
                out.push((
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ))
            },
        )?;
        Ok(out)
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 7541, C.4: three requests with Huffman coding, one context.
    #[test]
    fn the_rfc_s_huffman_coded_requests_decode_in_one_context() {
        let mut d = Decoder::new(4096);
        let first = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        assert_eq!(
            decode(&mut d, &first).unwrap(),
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        let second = hex("8286 84be 5886 a8eb 1064 9cbf");
        assert_eq!(
            decode(&mut d, &second).unwrap(),
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        let third = hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
        assert_eq!(
            decode(&mut d, &third).unwrap(),
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.size, 164);
    }

    /// RFC 7541, C.5: responses in a 256-byte table, entries evicted.
    #[test]
    fn the_rfc_s_responses_evict_from_a_small_table() {
        let mut d = Decoder::new(256);
        let first = hex(
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
        );
        assert_eq!(
            decode(&mut d, &first).unwrap()[0],
            fields(&[(":status", "302")])[0]
        );
        assert_eq!(d.size, 222);
        let second = hex("4803 3330 37c1 c0bf");
        assert_eq!(
            decode(&mut d, &second).unwrap(),
            fields(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(d.size, 222);
        let third = hex(
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31",
        );
        let got = decode(&mut d, &third).unwrap();
        assert_eq!(got[0], fields(&[(":status", "200")])[0]);
        assert_eq!(got[4].0, "content-encoding");
        assert_eq!(
            got[5].1,
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
        );
        assert_eq!(d.size, 215);
        assert_eq!(d.table.len(), 3);
    }

    #[test]
    fn only_wanted_fields_are_told_and_the_table_stays_in_step() {
        // RFC 7541, C.4.1 to C.4.3, wanting :path alone.
        let mut d = Decoder::new(4096);
        let mut paths = Vec::new();
        for block in [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ] {
            d.decode(
                &hex(block),
                |n| n == b":path",
                |_, v| paths.push(v.to_vec()),
            )
            .unwrap();
        }
        assert_eq!(paths, [&b"/"[..], b"/", b"/index.html"]);
        assert_eq!(d.size, 164);
        // A literal without indexing whose value is not wanted is passed
        // over, even one that would not decode.
        let block = [0x0f, 0x10, 0x82, 0xff, 0xff];
        assert!(d.decode(&block, |_| false, |_, _| {}).is_ok());
        assert!(d.decode(&block, |_| true, |_, _| {}).is_err());
    }

    #[test]
    fn the_static_table_is_loona_hpack_s() {
        let mut ours = Decoder::new(4096);
        let mut theirs = loona_hpack::Decoder::new();
        for index in 1..=61u8 {
            let block = [0x80 | index];
            let mut expected = Vec::new();
            theirs
                .decode_with_cb(&block, |n, v| {
                    expected.push((
                        String::from_utf8_lossy(&n).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    ))
                })
                .unwrap();
            assert_eq!(
                decode(&mut ours, &block).unwrap(),
                expected,
                "index {index}"
            );
        }
    }

    #[test]
    fn what_loona_hpack_encodes_decodes_the_same_and_random_blocks_never_panic() {
        let mut rng = fastrand::Rng::with_seed(11);
        let names = [
            &b":path"[..],
            b"content-type",
            b"grpc-status",
            b"x-long-name-here",
        ];
        let mut enc = loona_hpack::Encoder::new();
        let mut ours = Decoder::new(4096);
        for _ in 0..2_000 {
            let list: Vec<(Vec<u8>, Vec<u8>)> = (0..rng.usize(1..6))
                .map(|_| {
                    let name = names[rng.usize(..names.len())].to_vec();
                    let value = (0..rng.usize(0..40)).map(|_| rng.u8(32..127)).collect();
                    (name, value)
                })
                .collect();
            let block = enc.encode(list.iter().map(|(n, v)| (&n[..], &v[..])));
            let got = decode(&mut ours, &block).unwrap();
            let want: Vec<(String, String)> = list
                .iter()
                .map(|(n, v)| {
                    (
                        String::from_utf8_lossy(n).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            assert_eq!(got, want);
        }
        for _ in 0..100_000 {
            let mut d = Decoder::new(rng.usize(0..5000));
            let block: Vec<u8> = (0..rng.usize(0..48)).map(|_| rng.u8(..)).collect();
            let _ = decode(&mut d, &block);
            let _ = decode(&mut d, &block);
            assert!(d.size <= d.max.max(d.allowed));
        }
    }

    #[test]
    fn fields_indexed_into_a_table_too_small_for_them_empty_it_undecoded() {
        let mut d = Decoder::new(4096);
        decode(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap();
        assert_eq!(d.table.len(), 1);
        // nginx's way: the table set to 0 bytes, then `server` (index 54)
        // with incremental indexing, its value not wanted (and here not even
        // valid Huffman): passed over, the table emptied.
        let block = [0x20, 0x76, 0x82, 0xff, 0xff];
        assert!(d.decode(&block, |_| false, |_, _| {}).is_ok());
        assert_eq!((d.table.len(), d.size), (0, 0));
        // Wanted, it is decoded (and fails).
        assert!(d.decode(&block, |_| true, |_, _| {}).is_err());
    }

    #[test]
    fn recent_huffman_strings_decode_as_the_first_time() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut recent = Recent::default();
        let strings: Vec<Vec<u8>> = (0..40)
            .map(|_| (0..rng.usize(0..30)).map(|_| rng.u8(..)).collect())
            .collect();
        for _ in 0..3 {
            for s in &strings {
                let mut coded = Vec::new();
                httlib_huffman::encode(s, &mut coded).unwrap();
                let mut out = b"x".to_vec();
                recent.decode_into(&coded, &mut out).unwrap();
                assert_eq!(&out[1..], &s[..]);
            }
        }
        assert_eq!(recent.entries.len(), RECENT);
    }

    #[test]
    fn bad_blocks_are_errors() {
        let mut d = Decoder::new(4096);
        assert!(decode(&mut d, &[0x80]).is_err()); // index 0
        assert!(decode(&mut d, &[0xbe]).is_err()); // empty dynamic table
        assert!(decode(&mut d, &[0x40, 0x05, b'a']).is_err()); // cut short
        assert!(decode(&mut d, &[0x3f, 0xe1, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        // A size update above what was allowed.
        assert!(decode(&mut d, &[0x3f, 0xe2, 0x1f]).is_err());
        assert!(decode(&mut d, &[]).unwrap().is_empty());
    }
}

//! A strict parser for the Prometheus text exposition format 0.0.4, enough to
//! read exact values: it rejects what it does not understand instead of guessing.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A metric's labels, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// One scrape: every sample, plus the text it came from (for failure messages).
#[derive(Clone, Debug)]
pub struct Scrape {
    /// `(metric name, labels, value)` for each sample line.
    pub samples: Vec<(String, Labels, f64)>,
    /// `# TYPE` declarations by family name.
    pub types: BTreeMap<String, String>,
    /// The raw text.
    pub text: String,
}

impl Scrape {
    /// Parses exposition text; `Err` names the first line it could not read.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or_else(|| bad("bad TYPE"))?;
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, rest) = match line.find(['{', ' ']) {
                Some(i) => line.split_at(i),
                None => return Err(bad("no value")),
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            {
                return Err(bad("bad metric name"));
            }
            let (labels, rest) = if let Some(rest) = rest.strip_prefix('{') {
                parse_labels(rest).map_err(|e| bad(&e))?
            } else {
                (Labels::new(), rest)
            };
            let value = rest.trim().split(' ').next().unwrap_or("");
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().map_err(|_| bad("bad value"))?,
            };
            samples.push((name.to_owned(), labels, value));
        }
        Ok(Scrape {
            samples,
            types,
            text: text.to_owned(),
        })
    }

    /// Renders and parses an in-process registry.
    pub fn from_registry(registry: &prometheus::Registry) -> Scrape {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("registry encodes");
        Scrape::parse(&text).expect("registry text parses")
    }

    /// The sum of every sample named `name` whose labels include `labels`
    /// (0 when there is none — a counter that was never touched).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    /// Asserts that [`value`](Self::value) is `expected`; the failure shows the
    /// whole scrape.
    #[track_caller]
    pub fn assert_value(&self, name: &str, labels: &[(&str, &str)], expected: f64) {
        let value = self.value(name, labels);
        assert!(
            value == expected,
            "{name}{labels:?} is {value}, expected {expected}\n{}",
            self.text
        );
    }

    /// Samples named `name` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, l, v)| (l, *v))
    }

    /// Every value of `label` on samples named `name`.
    pub fn label_values(&self, name: &str, label: &str) -> std::collections::BTreeSet<String> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .filter_map(|(_, l, _)| l.get(label).cloned())
            .collect()
    }
}

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let key = &rest[..eq];
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("label value not quoted".into());
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false
                }
                (true, c) => {
                    value.push(c);
                    escaped = false
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        let end = end.ok_or("unterminated label value")?;
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key:?} twice"));
        }
        rest = &rest[end..];
    }
}

/// `GET /metrics` over a fresh connection; panics if the answer is not a
/// parseable 0.0.4 exposition.
pub async fn scrape(metrics_addr: SocketAddr) -> Scrape {
    let (head, body) = get(metrics_addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "scrape failed: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "wrong content type: {head}"
    );
    Scrape::parse(&body).unwrap_or_else(|e| panic!("unparseable /metrics: {e}"))
}

/// A one-shot HTTP/1.1 GET with `Connection: close`; returns (head, body).
pub async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("response head");
    (head.to_owned(), body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_escapes_and_special_values() {
        let text = "# TYPE m counter\nm{a=\"x\\\"y\",b=\"1,2=3\"} 4\nh_bucket{le=\"+Inf\"} +Inf\n";
        let s = Scrape::parse(text).unwrap();
        assert_eq!(s.value("m", &[("a", "x\"y"), ("b", "1,2=3")]), 4.0);
        assert_eq!(s.types["m"], "counter");
        assert_eq!(s.value("h_bucket", &[("le", "+Inf")]), f64::INFINITY);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for bad in [
            "m{a=x} 1",
            "m{a=\"x} 1",
            "m 1x",
            "m{a=\"1\",a=\"2\"} 1",
            "{a=\"1\"} 1",
        ] {
            assert!(Scrape::parse(bad).is_err(), "{bad} accepted");
        }
    }
}

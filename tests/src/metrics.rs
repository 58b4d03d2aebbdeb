//! Scraping the daemon's Prometheus metrics: a hand-written `GET /metrics`
//! over the Unix socket or TCP, and a strict parser of the text exposition
//! format (version 0.0.4) that fails the test on anything malformed.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed page: every sample, and each family's TYPE.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub samples: Vec<Sample>,
    pub types: HashMap<String, String>,
}

impl Page {
    /// The value of the one sample named `name` whose labels include
    /// `labels`; panics if more than one matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            found.len() <= 1,
            "{} samples of {name} match {labels:?}: {found:?}",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// Like [`Page::get`], 0 when absent.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.get(name, labels).map_or(0, |v| v as u64)
    }

    /// Like [`Page::get`], failing the test when absent.
    pub fn must(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {:#?}", self.samples))
            as u64
    }
}

/// Sends `GET /metrics` on `stream` and returns the body of a 200 answer
/// whose content type is the text format's.
fn get(mut stream: impl Read + Write) -> String {
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("sending the request");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reading the answer");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {answer:?}"));
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("HTTP/1.0 200 OK"), "{head}");
    let headers: Vec<&str> = lines.collect();
    assert!(
        headers.contains(&"Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(
        headers.contains(&format!("Content-Length: {}", body.len()).as_str()),
        "{head}"
    );
    body.to_owned()
}

/// Scrapes the Unix socket at `path`.
pub fn scrape_unix(path: &Path) -> Page {
    let stream = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("setting a timeout");
    parse(&get(stream))
}

/// Scrapes over TCP at `addr`.
pub fn scrape_tcp(addr: SocketAddr) -> Page {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("setting a timeout");
    parse(&get(stream))
}

fn is_name(name: &str, colon: bool) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Parses a page strictly: every line is `# HELP`, `# TYPE` or a sample
/// `name{labels} value` (no timestamps); a family's TYPE comes before its
/// samples, once; its samples are contiguous; counters end in `_total`;
/// label values use only the escapes `\\`, `\"`, `\n`; the page ends with a
/// newline. Panics naming the line otherwise.
pub fn parse(text: &str) -> Page {
    assert!(text.ends_with('\n'), "the page does not end with a newline");
    let mut page = Page::default();
    let mut helped: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut finished: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| -> ! { panic!("line {}: {why}: {line:?}\n{text}", n + 1) };
        if let Some(rest) = line.strip_prefix("# ") {
            let (kind, rest) = rest.split_once(' ').unwrap_or_else(|| bad("bare comment"));
            let (name, arg) = rest.split_once(' ').unwrap_or_else(|| bad("no text"));
            if !is_name(name, true) {
                bad("bad metric name");
            }
            match kind {
                "HELP" => {
                    if helped.iter().any(|h| h == name) {
                        bad("a second HELP");
                    }
                    helped.push(name.to_owned());
                }
                "TYPE" => {
                    if page.types.contains_key(name) {
                        bad("a second TYPE");
                    }
                    if !["counter", "gauge"].contains(&arg) {
                        bad("a type loopwarden does not use");
                    }
                    if arg == "counter" && !name.ends_with("_total") {
                        bad("a counter not named _total");
                    }
                    page.types.insert(name.to_owned(), arg.to_owned());
                    if let Some(previous) = current.replace(name.to_owned()) {
                        finished.push(previous);
                    }
                }
                _ => bad("a comment that is neither HELP nor TYPE"),
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => bad("no value"),
        };
        if !is_name(name, true) {
            bad("bad metric name");
        }
        if !page.types.contains_key(name) {
            bad("a sample before its TYPE");
        }
        if current.as_deref() != Some(name) || finished.iter().any(|f| f == name) {
            bad("a sample outside its family's block");
        }
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let end = loop {
                let (start, _) = *chars.peek().unwrap_or_else(|| bad("unterminated labels"));
                let mut label = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    label.push(c);
                }
                if !is_name(&label, false) {
                    bad(&format!("bad label name at {start}"));
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    bad("an unquoted label value");
                }
                let mut value = String::new();
                loop {
                    match chars.next().map(|(_, c)| c) {
                        Some('"') => break,
                        Some('\\') => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            _ => bad("a bad escape in a label value"),
                        },
                        Some('\n') | None => bad("an unterminated label value"),
                        Some(c) => value.push(c),
                    }
                }
                if labels.insert(label, value).is_some() {
                    bad("a repeated label");
                }
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((i, '}')) => break i,
                    _ => bad("labels not separated by ,"),
                }
            };
            rest = &inner[end + 1..];
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| bad("no space before the value"));
        if value.contains(' ') {
            bad("a timestamp or trailing text");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| bad("a value that is no number"));
        if page
            .samples
            .iter()
            .any(|s| s.name == name && s.labels == labels)
        {
            bad("a repeated series");
        }
        page.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_takes_good_pages_and_refuses_bad_ones() {
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\",y=\"\"} 3\na_total 1\n# HELP b B.\n# TYPE b gauge\nb 0\n";
        let page = parse(good);
        assert_eq!(page.must("a_total", &[("x", "q\"\\\n")]), 3);
        assert_eq!(page.must("b", &[]), 0);
        for bad in [
            "a 1\n",
            "# TYPE a gauge\na 1",
            "# TYPE a counter\na 1\n",
            "# TYPE a gauge\na{x=1} 1\n",
            "# TYPE a gauge\na 1 1234\n",
            "# TYPE a gauge\n# TYPE b gauge\nb 1\na 1\n",
            "# TYPE a gauge\na{x=\"\\t\"} 1\n",
            "# TYPE a gauge\na 1\na 2\n",
        ] {
            assert!(
                std::panic::catch_unwind(|| parse(bad)).is_err(),
                "accepted {bad:?}"
            );
        }
    }
}

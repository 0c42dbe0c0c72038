//! Follows every request of a guest's HTTP/1.x connection on port 80, not
//! just the first: a keep-alive (or pipelined) connection to an allowed name
//! must not carry a later request with another `Host` (domain fronting on
//! the second request).
//!
//! The guest → host byte stream is split into request heads and bodies
//! using the framing the heads declare (`Content-Length`, chunked
//! `Transfer-Encoding`); each head goes through [`sniff::http_host`] and must
//! name the connection's name. Ambiguous framing (both headers, two
//! different lengths) is refused rather than guessed, since a server that
//! guesses differently would see a request the gateway never checked
//! (request smuggling). An `Upgrade` request stops the checks only once
//! the server answered `101 Switching Protocols` ([`HttpRequests::response`]):
//! until then the guest may send nothing more (a client waits for the
//! answer), and any other answer puts the stream back to HTTP.
//!
//! Input is untrusted: bounded buffers, checked arithmetic, no panics.

use super::sniff::{self, Sniffed, MAX_SNIFF};

/// Longest chunk-size line (with extensions) or trailer section accepted.
const MAX_LINE: usize = 4096;

/// Where in the request stream the next byte falls.
#[derive(Debug, Clone, PartialEq, Eq)]
enum At {
    /// Inside a request head (bytes so far are buffered).
    Head,
    /// Inside a body of known length: bytes still to come.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Inside chunk data: bytes still to come, then its CRLF.
    ChunkData(u64),
    /// The CRLF after chunk data: bytes of it still to come.
    ChunkEnd(u8),
    /// Trailer fields after the last chunk, up to an empty line.
    Trailers,
    /// An `Upgrade` request was sent: waiting for the server's status.
    UpgradeAsked,
    /// After a `101` to an upgrade: no longer HTTP, passed through.
    Opaque,
}

/// Bytes of a status line that decide an upgrade (`HTTP/1.1 101`).
const STATUS_PREFIX: usize = 12;

/// One connection's request stream.
#[derive(Debug)]
pub struct HttpRequests {
    name: String,
    at: At,
    buf: Vec<u8>,
    requests: u64,
    /// The start of the server's answer to an upgrade request.
    status: Vec<u8>,
}

impl HttpRequests {
    /// A stream whose every request must name `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            at: At::Head,
            buf: Vec::new(),
            requests: 0,
            status: Vec::new(),
        }
    }

    /// Takes the next bytes the server sends the guest (they pass either
    /// way): after an upgrade request, its status decides whether the
    /// stream stays HTTP.
    pub fn response(&mut self, bytes: &[u8]) {
        if self.at != At::UpgradeAsked {
            return;
        }
        let room = STATUS_PREFIX - self.status.len();
        self.status
            .extend_from_slice(&bytes[..room.min(bytes.len())]);
        if self.status.len() < STATUS_PREFIX {
            return;
        }
        let switched = self.status.starts_with(b"HTTP/1.") && &self.status[8..] == b" 101";
        self.status.clear();
        self.at = if switched { At::Opaque } else { At::Head };
    }

    /// Requests whose heads were checked so far.
    #[cfg(test)]
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Takes the next bytes the guest sends. `Err` says why the connection
    /// must be cut; the bytes must then not be forwarded.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            match self.at {
                At::Opaque => return Ok(()),
                At::UpgradeAsked => {
                    return Err(
                        "bytes after an Upgrade request before the server switched protocols"
                            .into(),
                    )
                }
                At::Body(left) => {
                    let n = take(left, bytes.len());
                    bytes = &bytes[n..];
                    self.at = match left - n as u64 {
                        0 => At::Head,
                        rest => At::Body(rest),
                    };
                }
                At::ChunkData(left) => {
                    let n = take(left, bytes.len());
                    bytes = &bytes[n..];
                    self.at = match left - n as u64 {
                        0 => At::ChunkEnd(2),
                        rest => At::ChunkData(rest),
                    };
                }
                At::ChunkEnd(left) => {
                    let expected: &[u8] = if left == 2 { b"\r\n" } else { b"\n" };
                    let n = usize::from(left).min(bytes.len());
                    if bytes[..n] != expected[..n] {
                        return Err("malformed chunked body".into());
                    }
                    bytes = &bytes[n..];
                    self.at = match left - n as u8 {
                        0 => At::ChunkSize,
                        rest => At::ChunkEnd(rest),
                    };
                }
                At::Head | At::ChunkSize | At::Trailers => {
                    let (line_end, limit) = match self.at {
                        At::Head => (&b"\r\n\r\n"[..], MAX_SNIFF),
                        At::ChunkSize => (&b"\r\n"[..], MAX_LINE),
                        _ => (&b"\r\n\r\n"[..], MAX_LINE),
                    };
                    let before = self.buf.len();
                    self.buf.extend_from_slice(bytes);
                    let Some(end) = find(&self.buf, line_end) else {
                        if self.buf.len() > limit {
                            return Err("HTTP request head or chunk line too long".into());
                        }
                        return Ok(());
                    };
                    let used = end + line_end.len();
                    let consumed_now = used - before;
                    let unit: Vec<u8> = self.buf.drain(..used).collect();
                    self.buf.clear();
                    bytes = &bytes[consumed_now..];
                    self.at = match self.at {
                        At::Head => self.head(&unit)?,
                        At::ChunkSize => chunk_size(&unit)?,
                        _ => At::Head,
                    };
                    if self.at == At::Trailers {
                        // The size line's CRLF starts the trailer section,
                        // which ends at the first empty line.
                        self.buf.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks one request head; says what follows it.
    fn head(&mut self, head: &[u8]) -> Result<At, String> {
        match sniff::http_host(head) {
            Sniffed::Name(asked) if asked == self.name => {}
            Sniffed::Name(asked) => {
                return Err(format!(
                "request {} on a connection to {} asks for {asked}: refused (no domain fronting)",
                self.requests + 1,
                self.name
            ))
            }
            Sniffed::Refused(why) => return Err(format!("request {}: {why}", self.requests + 1)),
            Sniffed::NeedMore => return Err("incomplete HTTP request head".into()),
        }
        self.requests += 1;
        framing(head)
    }
}

/// How the body after `head` is framed.
fn framing(head: &[u8]) -> Result<At, String> {
    let text = String::from_utf8_lossy(head);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut upgrade = false;
    for line in text.split("\r\n").skip(1) {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if field.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            if length.is_some_and(|l| l != n) {
                return Err("two different Content-Length headers".into());
            }
            length = Some(n);
        } else if field.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(format!("Transfer-Encoding {value:?} hides the body's end"));
            }
            chunked = true;
        } else if field.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    Ok(match (length, chunked) {
        (Some(_), true) => return Err("both Content-Length and chunked".into()),
        (Some(1..), _) | (_, true) if upgrade => {
            return Err("an Upgrade request with a body".into())
        }
        (_, true) => At::ChunkSize,
        _ if upgrade => At::UpgradeAsked,
        (Some(0) | None, false) => At::Head,
        (Some(n), false) => At::Body(n),
    })
}

/// Parses a chunk-size line (`1a;ext=x\r\n`); size 0 starts the trailers.
fn chunk_size(line: &[u8]) -> Result<At, String> {
    let text = std::str::from_utf8(line).map_err(|_| "chunk size is not text".to_string())?;
    let digits = text.trim_end().split(';').next().unwrap_or_default().trim();
    let size = u64::from_str_radix(digits, 16).map_err(|_| format!("bad chunk size {digits:?}"))?;
    Ok(if size == 0 {
        At::Trailers
    } else {
        At::ChunkData(size)
    })
}

fn take(left: u64, available: usize) -> usize {
    usize::try_from(left).map_or(available, |l| l.min(available))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn get(host: &str) -> String {
        format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n")
    }

    #[test]
    fn every_request_of_a_keep_alive_connection_is_checked() {
        let mut s = HttpRequests::new("web.test");
        s.feed(get("web.test").as_bytes()).unwrap();
        s.feed(get("web.test").as_bytes()).unwrap();
        assert_eq!(s.requests(), 2);
        let err = s.feed(get("other.test").as_bytes()).unwrap_err();
        assert!(err.contains("other.test"), "{err}");
    }

    #[test]
    fn bodies_are_skipped_by_their_framing() {
        // A body that looks like a request must not be read as one, and
        // the request after it must be.
        let body = get("other.test");
        let stream = format!(
            "POST /a HTTP/1.1\r\nHost: web.test\r\nContent-Length: {}\r\n\r\n{body}{}",
            body.len(),
            get("web.test")
        );
        let mut s = HttpRequests::new("web.test");
        s.feed(stream.as_bytes()).unwrap();
        assert_eq!(s.requests(), 2);

        let chunked = format!(
            "POST /a HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x};ext=1\r\n{body}\r\n0\r\nX-Trailer: 1\r\n\r\n{}",
            body.len(),
            get("sneaky.test")
        );
        let mut s = HttpRequests::new("web.test");
        let err = s.feed(chunked.as_bytes()).unwrap_err();
        assert!(err.contains("sneaky.test"), "{err}");
        assert_eq!(s.requests(), 1);
    }

    #[test]
    fn split_anywhere_gives_the_same_verdict() {
        let stream = format!(
            "POST /a HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n{}{}",
            get("web.test"),
            get("other.test")
        );
        for cut in 0..stream.len() {
            let mut s = HttpRequests::new("web.test");
            let first = s.feed(&stream.as_bytes()[..cut]);
            let verdict = first.and_then(|()| s.feed(&stream.as_bytes()[cut..]));
            assert!(verdict.is_err(), "cut at {cut}");
            assert_eq!(s.requests(), 2, "cut at {cut}");
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for head in [
            "POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: -1\r\n\r\n",
        ] {
            assert!(HttpRequests::new("web.test").feed(head.as_bytes()).is_err(), "{head}");
        }
    }

    const UPGRADE: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: web.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

    #[test]
    fn an_upgraded_connection_is_passed_through_after_the_servers_101() {
        let mut s = HttpRequests::new("web.test");
        s.feed(UPGRADE).unwrap();
        // the status line may come in pieces
        s.response(b"HTTP/1.1 1");
        s.response(b"01 Switching Protocols\r\n\r\n");
        s.feed(get("other.test").as_bytes()).unwrap();
        assert_eq!(s.requests(), 1);
    }

    #[test]
    fn an_upgrade_the_server_did_not_grant_checks_on() {
        // H2: bytes before the server's answer are refused...
        let mut s = HttpRequests::new("web.test");
        let mut stream = UPGRADE.to_vec();
        stream.extend_from_slice(get("other.test").as_bytes());
        assert!(s.feed(&stream).is_err());
        // ...and after a refusal the stream is HTTP again.
        let mut s = HttpRequests::new("web.test");
        s.feed(UPGRADE).unwrap();
        s.response(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        let err = s.feed(get("other.test").as_bytes()).unwrap_err();
        assert!(err.contains("other.test"), "{err}");
        // an upgrade request with a body is ambiguous
        let with_body =
            "POST / HTTP/1.1\r\nHost: web.test\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\r\nabc";
        assert!(HttpRequests::new("web.test")
            .feed(with_body.as_bytes())
            .is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..200), 0..8)) {
            let mut s = HttpRequests::new("web.test");
            for c in &chunks {
                if s.feed(c).is_err() {
                    break;
                }
            }
        }
    }
}

//! Reading the name a client asks for from the first bytes of a connection:
//! the SNI of a TLS ClientHello (port 443) and the Host of an HTTP request
//! (port 80). The gateway compares it with the name behind the synthetic
//! address before it dials, so a connection to an allowed name cannot be
//! fronted for another one served by the same host.
//!
//! Both parsers take untrusted bytes, never panic and never read past what
//! they were given: every length is checked before it is used.

/// Bytes the gateway reads from the guest before giving up on finding a name.
pub const MAX_SNIFF: usize = 32 * 1024;

/// The outcome of looking at the first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough bytes yet.
    NeedMore,
    /// The name the client asks for (lowercase, no port, no trailing dot).
    Name(String),
    /// The bytes are not what this port needs, or name nothing.
    Refused(String),
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

fn refused(why: impl Into<String>) -> Sniffed {
    Sniffed::Refused(why.into())
}

fn host_name(raw: &[u8]) -> Sniffed {
    match std::str::from_utf8(raw)
        .ok()
        .and_then(clawpen_api::egress::normalise_domain)
    {
        Some(name) => Sniffed::Name(name),
        None => refused("the name asked for is not a valid host name"),
    }
}

/// The SNI host name of a TLS ClientHello, which may span several records.
pub fn tls_sni(bytes: &[u8]) -> Sniffed {
    // Reassemble the handshake layer from the records seen so far.
    let mut handshake = Vec::new();
    let mut records = Reader::new(bytes);
    while let Some(header) = records.take(5) {
        if header[0] != 22 {
            return refused("not a TLS handshake");
        }
        if header[1] != 3 {
            return refused("not a TLS record");
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16384 + 2048 {
            return refused("TLS record length out of range");
        }
        match records.take(len) {
            Some(body) => handshake.extend_from_slice(body),
            None => {
                // A record still arriving: what there is of it so far.
                handshake.extend_from_slice(bytes.get(records.pos..).unwrap_or_default());
                break;
            }
        }
    }
    if handshake.is_empty() {
        return Sniffed::NeedMore;
    }
    let mut hs = Reader::new(&handshake);
    if hs.u8() != Some(1) {
        return refused("the first TLS handshake message is not a ClientHello");
    }
    let Some(len) = hs.u24() else {
        return Sniffed::NeedMore;
    };
    if len > MAX_SNIFF {
        return refused("ClientHello too large");
    }
    let Some(body) = hs.take(len) else {
        return Sniffed::NeedMore;
    };
    client_hello_sni(body).unwrap_or_else(|| refused("malformed ClientHello"))
}

/// The `encrypted_client_hello` extension (RFC 9849). Refused: the name the
/// server acts on is inside it, so the outer SNI the gateway checks would
/// prove nothing (a guest holding an ECH config for a CDN could reach any
/// name that CDN serves from behind an allowed one). The gateway's DNS
/// serves no HTTPS/SVCB records, so clients that take ECH configs from DNS
/// never send it; Chromium's GREASE ECH is refused too, so a browser in a
/// guest needs `--disable-features=EncryptedClientHello`.
const ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

/// The SNI in a complete ClientHello body; `None` when it is malformed.
fn client_hello_sni(body: &[u8]) -> Option<Sniffed> {
    let mut r = Reader::new(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.pos == body.len() {
        return Some(refused("ClientHello without extensions (no SNI)"));
    }
    let mut exts = Reader::new(r.vec16()?);
    let mut found = None;
    while exts.pos < exts.bytes.len() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind == ENCRYPTED_CLIENT_HELLO {
            return Some(refused(
                "TLS Encrypted Client Hello hides the name asked for (turn ECH off in the guest)",
            ));
        }
        if kind != 0 {
            continue;
        }
        if found.is_some() {
            return Some(refused("two SNI extensions"));
        }
        let mut list = Reader::new(Reader::new(data).vec16()?);
        let mut name = None;
        while list.pos < list.bytes.len() {
            let name_type = list.u8()?;
            let host = list.vec16()?;
            if name_type == 0 {
                if name.is_some() {
                    return Some(refused("two host names in SNI"));
                }
                name = Some(host);
            }
        }
        found = Some(name?);
    }
    Some(match found {
        Some(host) => host_name(host),
        None => refused("ClientHello without SNI"),
    })
}

/// The host of an HTTP/1.x request: its `Host` header and, for an
/// absolute-form target (`GET http://host/ HTTP/1.1`), the target's host too;
/// both must agree.
pub fn http_host(bytes: &[u8]) -> Sniffed {
    // Parsed as strictly as the strictest server, so no server reads the
    // head another way than the gateway did: CRLF line ends only, no
    // control characters, no folded or malformed field lines.
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let head_so_far = head_end.map_or(bytes, |end| &bytes[..end + 2]);
    if let Some(why) = ambiguous_bytes(head_so_far) {
        return refused(why);
    }
    let Some(end) = head_end else {
        // Refuse early what cannot become a request line (TLS on port 80, ...).
        let method_end = bytes.iter().position(|b| *b == b' ').unwrap_or(bytes.len());
        return if bytes.len() >= MAX_SNIFF {
            refused("HTTP request head too long")
        } else if !method_chars(&bytes[..method_end]) {
            refused("not an HTTP request")
        } else {
            Sniffed::NeedMore
        };
    };
    let Ok(head) = std::str::from_utf8(&bytes[..end]) else {
        return refused("HTTP request head is not text");
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return refused("malformed HTTP request line");
    };
    if method.is_empty() || !method_chars(method.as_bytes()) {
        return refused("not an HTTP request");
    }
    if !version.starts_with("HTTP/1.") {
        return refused("not an HTTP/1.x request");
    }
    if method == "CONNECT" {
        return refused("CONNECT (proxying) is not allowed");
    }
    let mut host = None;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return refused("folded HTTP header line (obsolete, read differently by servers)");
        }
        let Some((field, value)) = line.split_once(':') else {
            return refused("malformed HTTP header line");
        };
        if field.is_empty() || !field.bytes().all(is_token_byte) {
            return refused("malformed HTTP header name");
        }
        if field.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return refused("two Host headers");
            }
            host = Some(value.trim());
        }
    }
    let Some(host) = host else {
        return refused("HTTP request without Host");
    };
    let host = match strip_port(host) {
        Some(h) => h,
        None => return refused("malformed Host header"),
    };
    let name = match host_name(host.as_bytes()) {
        Sniffed::Name(n) => n,
        other => return other,
    };
    let scheme_rest = |scheme: &str| {
        target
            .get(..scheme.len())
            .filter(|start| start.eq_ignore_ascii_case(scheme))
            .map(|_| &target[scheme.len()..])
    };
    let absolute = scheme_rest("http://").or_else(|| scheme_rest("https://"));
    if absolute.is_none() && !target.starts_with('/') && target != "*" {
        return refused("request target is neither a path nor an http(s) URL");
    }
    if let Some(rest) = absolute {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let same = strip_port(authority)
            .and_then(clawpen_api::egress::normalise_domain)
            .is_some_and(|t| t == name);
        if !same {
            return refused("request target and Host name different hosts");
        }
    }
    Sniffed::Name(name)
}

/// Why the bytes of a request head (so far) could be read two ways, if
/// they could: a bare LF or CR (servers that take either as a line end see
/// other requests than one that does not) or another control character.
fn ambiguous_bytes(head: &[u8]) -> Option<&'static str> {
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' if i == 0 || head[i - 1] != b'\r' => {
                return Some("bare LF in an HTTP head (only CRLF ends a line)")
            }
            b'\r' if head.get(i + 1).is_some_and(|next| *next != b'\n') => {
                return Some("bare CR in an HTTP head")
            }
            b'\r' | b'\n' | b'\t' => {}
            0..=0x1f | 0x7f => return Some("control character in an HTTP head"),
            _ => {}
        }
    }
    None
}

/// A header name's bytes: RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `method` (or the start of one) is at most 16 uppercase letters,
/// as every method clients send is (GET ... PROPFIND). The same test on a
/// whole request and on its first bytes: a request split across reads is
/// judged as if it came at once (the `sniff` fuzz target found a method
/// refused early but accepted whole).
fn method_chars(method: &[u8]) -> bool {
    method.len() <= 16 && method.iter().all(u8::is_ascii_uppercase)
}

/// `host:port` → `host`; an IPv6 literal in brackets is not a name: `None`.
fn strip_port(authority: &str) -> Option<&str> {
    if authority.starts_with('[') {
        return None;
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => Some(host),
        Some(_) => None,
        None => Some(authority),
    }
}

/// A minimal TLS 1.2/1.3 ClientHello naming `host`, for tests.
#[cfg(test)]
pub fn client_hello(host: &str) -> Vec<u8> {
    client_hello_with(host, &[])
}

/// [`client_hello`] with more extensions after the SNI, for tests.
#[cfg(test)]
pub fn client_hello_with(host: &str, extra: &[(u16, &[u8])]) -> Vec<u8> {
    let host = host.as_bytes();
    let mut sni = Vec::new();
    let list_len = 3 + host.len();
    sni.extend_from_slice(&(list_len as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    let mut exts = Vec::new();
    exts.extend_from_slice(&0u16.to_be_bytes());
    exts.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    exts.extend_from_slice(&sni);
    for (kind, data) in extra {
        exts.extend_from_slice(&kind.to_be_bytes());
        exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
        exts.extend_from_slice(data);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![22, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_is_found_in_whole_and_split_hellos() {
        let hello = client_hello("Allowed.Test");
        assert_eq!(tls_sni(&hello), Sniffed::Name("allowed.test".into()));
        for cut in 0..hello.len() {
            assert_eq!(tls_sni(&hello[..cut]), Sniffed::NeedMore, "cut at {cut}");
        }
        // The same handshake split over two records.
        let hs = &hello[5..];
        let (a, b) = hs.split_at(20);
        let mut two = vec![22, 3, 1, 0, a.len() as u8];
        two.extend_from_slice(a);
        two.extend_from_slice(&[22, 3, 1]);
        two.extend_from_slice(&(b.len() as u16).to_be_bytes());
        two.extend_from_slice(b);
        assert_eq!(tls_sni(&two), Sniffed::Name("allowed.test".into()));
    }

    /// H5: a ClientHello with Encrypted Client Hello is refused whatever
    /// its outer SNI says; other extensions are fine.
    #[test]
    fn encrypted_client_hello_is_refused() {
        let ech = client_hello_with("allowed.test", &[(0xfe0d, &[0, 0, 1, 0, 1, 7])]);
        assert!(
            matches!(&tls_sni(&ech), Sniffed::Refused(why) if why.contains("Encrypted Client Hello")),
            "{:?}",
            tls_sni(&ech)
        );
        let alpn = client_hello_with("allowed.test", &[(16, &[0, 3, 2, b'h', b'2'])]);
        assert_eq!(tls_sni(&alpn), Sniffed::Name("allowed.test".into()));
    }

    #[test]
    fn non_tls_is_refused() {
        assert!(matches!(
            tls_sni(b"GET / HTTP/1.1\r\n"),
            Sniffed::Refused(_)
        ));
        let mut hello = client_hello("a.test");
        hello[5] = 2; // ServerHello
        assert!(matches!(tls_sni(&hello), Sniffed::Refused(_)));
    }

    #[test]
    fn http_host_must_be_single_and_agree_with_the_target() {
        let ok = b"GET /x HTTP/1.1\r\nHost: Allowed.test:8080\r\nAccept: */*\r\n\r\n";
        assert_eq!(http_host(ok), Sniffed::Name("allowed.test".into()));
        assert_eq!(http_host(&ok[..20]), Sniffed::NeedMore);
        for bad in [
            &b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            b"GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"CONNECT b.test:443 HTTP/1.1\r\nHost: b.test\r\n\r\n",
            b"\x16\x03\x01\x00\x10garbage",
        ] {
            assert!(matches!(http_host(bad), Sniffed::Refused(_)), "{bad:?}");
        }
        assert_eq!(
            http_host(b"GET http://a.test:80/p HTTP/1.1\r\nhost: a.test\r\n\r\n"),
            Sniffed::Name("a.test".into())
        );
    }

    #[test]
    fn http_heads_that_servers_could_read_another_way_are_refused() {
        for bad in [
            // H4: bare LF (one request here, two to a lenient server)
            &b"GET / HTTP/1.1\nHost: a.test\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a.test\n\nGET / HTTP/1.1\r\nHost: b.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\rX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX: a\x00b\r\n\r\n",
            // H3: absolute target compared whatever the scheme's case
            b"GET HTTP://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET hTtPs://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET ftp://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET b.test:80 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            // folded or malformed field lines
            b"GET / HTTP/1.1\r\nX: y\r\n Host: b.test\r\nHost: a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : b.test\r\nHost: a.test\r\n\r\n",
        ] {
            assert!(
                matches!(http_host(bad), Sniffed::Refused(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // a bare LF is refused as soon as it arrives, not after a timeout
        assert!(matches!(
            http_host(b"GET / HTTP/1.1\nHost: a.test\n\n"),
            Sniffed::Refused(_)
        ));
        assert_eq!(
            http_host(b"GET HTTP://A.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"),
            Sniffed::Name("a.test".into())
        );
        assert_eq!(
            http_host(b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\nX:\tv\r\n\r\n"),
            Sniffed::Name("a.test".into())
        );
    }

    #[test]
    fn a_method_is_judged_alike_whole_and_in_its_first_bytes() {
        for request in [
            &b"GE$ / HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
            b"get / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"SEVENTEENLETTERSX / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ] {
            let method = &request[..request.iter().position(|b| *b == b' ').unwrap()];
            assert!(
                matches!(http_host(request), Sniffed::Refused(_)),
                "{request:?}"
            );
            assert!(
                matches!(http_host(method), Sniffed::Refused(_)),
                "{method:?}"
            );
        }
        let propfind = b"PROPFIND / HTTP/1.1\r\nHost: a.test\r\n\r\n";
        assert_eq!(http_host(propfind), Sniffed::Name("a.test".into()));
        assert_eq!(http_host(&propfind[..4]), Sniffed::NeedMore);
    }
}

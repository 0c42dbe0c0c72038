//! The first bytes of a guest's connection, read for the name it asks for
//! (TLS SNI on port 443, HTTP Host on port 80). A name is returned in
//! normal form (what `normalise_domain` leaves unchanged), and the gateway
//! may decide on a prefix: a prefix of bytes that name a host either needs
//! more bytes or names the same host, never something else.

use clawpen_supervisor::fuzzing::{http_host, tls_sni, Sniffed};

/// One input (the binary `sniff` is this function under libFuzzer).
pub fn run(data: &[u8]) {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    for sniff in [tls_sni, http_host] {
        let whole = sniff(bytes);
        let Sniffed::Name(name) = &whole else {
            continue;
        };
        assert_eq!(
            clawpen_api::egress::normalise_domain(name).as_deref(),
            Some(name.as_str()),
            "a sniffed name is in normal form"
        );
        let prefix = &bytes[..bytes.len() * usize::from(cut) / 255];
        let early = sniff(prefix);
        assert!(
            early == Sniffed::NeedMore || early == whole,
            "prefix of {} bytes: {early:?}, all {} bytes: {whole:?}",
            prefix.len(),
            bytes.len()
        );
    }
}

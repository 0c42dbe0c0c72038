//! An upstream server's Server-Sent Events body, as it streams: no panic,
//! and the same events however the bytes were split into network reads
//! (a `\r\n` or a UTF-8 character may be cut anywhere).

use crate::read_size_and_rest;
use clawpen_inference::engine::sse::{SseDecoder, SseEvent};

/// Every event of `reads`, decoded in order (inputs stay far below the
/// default limit, so no read fails).
fn events<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::default();
    let mut out = Vec::new();
    for read in reads {
        out.extend(decoder.push(read).expect("under the limit"));
    }
    out.extend(decoder.finish());
    out
}

/// One input (the binary `sse` is this function under libFuzzer).
pub fn run(data: &[u8]) {
    let Some((step, body)) = read_size_and_rest(data) else {
        return;
    };
    assert_eq!(
        events([body]),
        events(body.chunks(step)),
        "reads of {step} bytes"
    );
}

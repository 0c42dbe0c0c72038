//! A guest's HTTP/1.x request stream on an allowed connection (each
//! request's Host checked, bodies skipped by their framing): no panic, and
//! the verdict does not depend on how the bytes were split into reads.

use crate::read_size_and_rest;
use clawpen_supervisor::fuzzing::HttpRequests;

/// The first error feeding `chunks` in order, if any.
fn verdict<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<(), String> {
    let mut stream = HttpRequests::new("example.com");
    chunks.into_iter().try_for_each(|c| stream.feed(c))
}

/// One input (the binary `http_stream` is this function under libFuzzer).
pub fn run(data: &[u8]) {
    let Some((step, bytes)) = read_size_and_rest(data) else {
        return;
    };
    assert_eq!(
        verdict([bytes]),
        verdict(bytes.chunks(step)),
        "reads of {step} bytes"
    );
}

//! A Server-Sent Events decoder for an upstream's response body.
//!
//! Bytes arrive in arbitrary pieces (a UTF-8 character or a line may be
//! split across network reads); events come out whole. Untrusted input:
//! lines are bounded, nothing panics.

/// One SSE event: its `event:` name and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// The stream broke the SSE format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an SSE event is longer than {limit} bytes")]
    TooLong { limit: usize },
}

/// Incremental decoder: [`SseDecoder::push`] every body chunk, then
/// [`SseDecoder::finish`].
#[derive(Debug)]
pub struct SseDecoder {
    buf: Vec<u8>,
    /// How far `buf` was already searched for a newline.
    scanned: usize,
    event: Option<String>,
    data: String,
    has_data: bool,
    limit: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new(64 << 20)
    }
}

impl SseDecoder {
    /// A decoder refusing events longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            event: None,
            data: String::new(),
            has_data: false,
            limit,
        }
    }

    /// Decodes the events completed by `bytes`.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        while let Some(off) = self.buf[i..].iter().position(|&b| b == b'\n') {
            let end = i + off;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            if let Some(event) = self.line(&line) {
                out.push(event);
            }
            start = end + 1;
            i = start;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() + self.data.len() > self.limit {
            return Err(SseError::TooLong { limit: self.limit });
        }
        Ok(out)
    }

    /// End of the body: an event not closed by a blank line still counts.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line = String::from_utf8_lossy(&rest).into_owned();
            let line = line.strip_suffix('\r').unwrap_or(&line).to_owned();
            if let Some(event) = self.line(&line) {
                return Some(event);
            }
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(d.push(c).unwrap());
        }
        out.extend(d.finish());
        out
    }

    #[test]
    fn events_split_anywhere_decode_the_same() {
        let body = "event: a\ndata: {\"x\":\"é\"}\n\n: keep-alive\n\ndata: l1\r\ndata: l2\r\n\r\ndata:[DONE]";
        let whole = all(&[body.as_bytes()]);
        assert_eq!(
            whole,
            vec![
                SseEvent {
                    event: Some("a".into()),
                    data: "{\"x\":\"é\"}".into()
                },
                SseEvent {
                    event: None,
                    data: "l1\nl2".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
        let bytes = body.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(all(&[&bytes[..cut], &bytes[cut..]]), whole, "cut at {cut}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(all(&singles), whole);
    }

    proptest::proptest! {
        /// Untrusted bytes: never a panic, and where the body is cut into
        /// network reads never changes the events.
        #[test]
        fn any_bytes_any_split(body in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b'\n'),
                proptest::strategy::Just(b'\r'),
                proptest::strategy::Just(b':'),
                proptest::strategy::Just(b' '),
                proptest::num::u8::ANY,
            ],
            0..200,
        ), cut in 0usize..200) {
            let cut = cut.min(body.len());
            let mut d = SseDecoder::new(1 << 20);
            let whole = d.push(&body).map(|mut e| { e.extend(d.finish()); e });
            let mut d = SseDecoder::new(1 << 20);
            let split = d.push(&body[..cut]).and_then(|mut e| {
                e.extend(d.push(&body[cut..])?);
                e.extend(d.finish());
                Ok(e)
            });
            proptest::prop_assert_eq!(whole, split);
        }
    }

    #[test]
    fn oversized_event_is_an_error_not_a_panic() {
        let mut d = SseDecoder::new(16);
        assert!(d.push(b"data: 0123456789").is_ok());
        assert_eq!(d.push(b"0123456789"), Err(SseError::TooLong { limit: 16 }));
    }
}

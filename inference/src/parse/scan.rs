//! The incremental pieces every family parser shares.
//!
//! [`TagScanner`] finds the earliest of a set of markers in a stream fed in
//! arbitrary chunks. It hands text out as soon as it cannot be the start of
//! a marker and holds back only the tail that still could be, so a marker
//! split across chunks is recognised and no character is delayed longer
//! than necessary. [`JsonSpan`] finds where one JSON object or array ends in
//! a stream, without parsing it.

/// What [`TagScanner::scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned {
    /// `before` is the text up to the marker `markers[marker]`; both are consumed.
    Found { before: String, marker: usize },
    /// No marker yet; `safe` (possibly empty) can never become part of one
    /// and is consumed. The scanner keeps the rest.
    Pending { safe: String },
}

/// A buffer searched for markers, see the module docs.
#[derive(Debug, Default, Clone)]
pub struct TagScanner {
    buf: String,
}

impl TagScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk of model output.
    pub fn push(&mut self, chunk: &str) {
        self.buf.push_str(chunk);
    }

    /// Puts text back in front of the buffer (input a parser decided to read
    /// again in another state).
    pub fn unread(&mut self, text: &str) {
        self.buf.insert_str(0, text);
    }

    /// Text held back so far.
    pub fn buffered(&self) -> &str {
        &self.buf
    }

    /// Takes everything buffered (at the end of the stream).
    pub fn take(&mut self) -> String {
        std::mem::take(&mut self.buf)
    }

    /// Finds the earliest marker (the longest one when several start at the
    /// same byte). Empty markers are ignored.
    pub fn scan(&mut self, markers: &[&str]) -> Scanned {
        let mut best: Option<(usize, usize)> = None; // (position, marker index)
        for (i, m) in markers.iter().enumerate() {
            if m.is_empty() {
                continue;
            }
            if let Some(pos) = self.buf.find(m) {
                let better = match best {
                    None => true,
                    Some((bp, bi)) => pos < bp || (pos == bp && m.len() > markers[bi].len()),
                };
                if better {
                    best = Some((pos, i));
                }
            }
        }
        if let Some((pos, i)) = best {
            let before = self.buf[..pos].to_owned();
            self.buf.drain(..pos + markers[i].len());
            return Scanned::Found { before, marker: i };
        }
        let keep = partial_marker_suffix(&self.buf, markers);
        let safe = self.buf[..self.buf.len() - keep].to_owned();
        self.buf.drain(..safe.len());
        Scanned::Pending { safe }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of some
/// marker (and so must be held back). Always ends on a char boundary.
pub fn partial_marker_suffix(text: &str, markers: &[&str]) -> usize {
    let bytes = text.as_bytes();
    let mut keep = 0;
    for m in markers {
        let m = m.as_bytes();
        let longest = m.len().saturating_sub(1).min(bytes.len());
        for k in (keep + 1..=longest).rev() {
            if bytes[bytes.len() - k..] == m[..k] && text.is_char_boundary(text.len() - k) {
                keep = k;
                break;
            }
        }
    }
    keep
}

/// The first char boundary of `text` after byte `i` (`text.len()` at most).
pub fn after_char(text: &str, i: usize) -> usize {
    let mut j = (i + 1).min(text.len());
    while !text.is_char_boundary(j) {
        j += 1;
    }
    j
}

/// Progress of a [`JsonSpan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonProgress {
    /// The value is not complete yet.
    More,
    /// The value ends at this byte offset of the chunk just fed (exclusive).
    Complete(usize),
    /// The input cannot be a JSON object or array; the offending byte is at
    /// this offset of the chunk just fed.
    Invalid(usize),
}

/// Finds the end of one JSON object or array (leading whitespace allowed)
/// in a stream by tracking brackets and strings. It does not validate the
/// value: parse the span once it is complete.
#[derive(Debug, Default, Clone)]
pub struct JsonSpan {
    stack: Vec<u8>,
    in_string: bool,
    escaped: bool,
    done: bool,
}

/// Deepest nesting a [`JsonSpan`] follows (deeper input is invalid).
const MAX_JSON_DEPTH: usize = 128;

impl JsonSpan {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk. After `Complete` or `Invalid` the span must not
    /// be fed again.
    pub fn feed(&mut self, chunk: &str) -> JsonProgress {
        if self.done {
            return JsonProgress::Invalid(0);
        }
        for (i, b) in chunk.bytes().enumerate() {
            if self.stack.is_empty() {
                match b {
                    b' ' | b'\t' | b'\n' | b'\r' => continue,
                    b'{' => self.stack.push(b'}'),
                    b'[' => self.stack.push(b']'),
                    _ => return self.stop(JsonProgress::Invalid(i)),
                }
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if self.stack.len() >= MAX_JSON_DEPTH {
                        return self.stop(JsonProgress::Invalid(i));
                    }
                    self.stack.push(if b == b'{' { b'}' } else { b']' });
                }
                b'}' | b']' => {
                    if self.stack.pop() != Some(b) {
                        return self.stop(JsonProgress::Invalid(i));
                    }
                    if self.stack.is_empty() {
                        return self.stop(JsonProgress::Complete(i + 1));
                    }
                }
                _ => {}
            }
        }
        JsonProgress::More
    }

    fn stop(&mut self, p: JsonProgress) -> JsonProgress {
        self.done = true;
        p
    }
}

/// Drops whitespace that only pads markers: the run right after an opening
/// point ([`WsTrim::start`]) and the run right before a marker
/// ([`WsTrim::cut`]). Whitespace between other text passes unchanged.
/// Decisions depend on content only, never on chunk boundaries.
#[derive(Debug, Default, Clone)]
pub struct WsTrim {
    held: String,
    at_start: bool,
}

impl WsTrim {
    /// Leading whitespace from now on is dropped.
    pub fn start(&mut self) {
        self.held.clear();
        self.at_start = true;
    }

    /// Passes `text` on, holding back trailing whitespace.
    pub fn push(&mut self, text: &str) -> String {
        let text = if self.at_start {
            let t = text.trim_start();
            if t.is_empty() {
                return String::new();
            }
            self.at_start = false;
            t
        } else {
            text
        };
        // `held` is all whitespace: only the new text needs looking at.
        let end = text.trim_end().len();
        if end == 0 {
            self.held.push_str(text);
            return String::new();
        }
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&text[..end]);
        self.held.push_str(&text[end..]);
        out
    }

    /// A marker follows: takes the held whitespace (dropped, unless the
    /// marker turns out not to start anything).
    pub fn cut(&mut self) -> String {
        self.at_start = false;
        std::mem::take(&mut self.held)
    }

    /// End of stream: the held whitespace is passed on.
    pub fn flush(&mut self) -> String {
        self.at_start = false;
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&str], markers: &[&str]) -> Vec<String> {
        let mut s = TagScanner::new();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c);
            loop {
                match s.scan(markers) {
                    Scanned::Found { before, marker } => {
                        out.push(before);
                        out.push(format!("#{marker}"));
                    }
                    Scanned::Pending { safe } => {
                        out.push(safe);
                        break;
                    }
                }
            }
        }
        out.push(s.take());
        out.retain(|x| !x.is_empty());
        out
    }

    #[test]
    fn marker_split_across_chunks() {
        assert_eq!(
            run(&["ab<to", "ol_c", "all>x"], &["<tool_call>"]),
            ["ab", "#0", "x"]
        );
    }

    #[test]
    fn holds_back_only_a_possible_prefix() {
        let mut s = TagScanner::new();
        s.push("hello <");
        assert_eq!(
            s.scan(&["<think>"]),
            Scanned::Pending {
                safe: "hello ".into()
            }
        );
        s.push("b>");
        assert_eq!(
            s.scan(&["<think>"]),
            Scanned::Pending { safe: "<b>".into() }
        );
    }

    #[test]
    fn earliest_then_longest_marker_wins() {
        assert_eq!(
            run(&["x<|a|>y<|ab|>"], &["<|ab|>", "<|a|>"]),
            ["x", "#1", "y", "#0"]
        );
        assert_eq!(run(&["[TOOL_CALLS]"], &["[T", "[TOOL_CALLS]"]), ["#1"]);
    }

    #[test]
    fn multibyte_markers_split_anywhere() {
        let m = "<｜tool▁sep｜>";
        let text = format!("é{m}ü");
        for cut in 0..=text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            assert_eq!(run(&[&text[..cut], &text[cut..]], &[m]), ["é", "#0", "ü"]);
        }
    }

    #[test]
    fn ws_trim() {
        let mut t = WsTrim::default();
        t.start();
        assert_eq!(t.push("\n "), "");
        assert_eq!(t.push(" a b "), "a b");
        assert_eq!(t.push(" c\n"), "  c");
        assert_eq!(t.cut(), "\n");
        assert_eq!(t.push("\nd"), "\nd");
        assert_eq!(t.push("  "), "");
        assert_eq!(t.flush(), "  ");
    }

    #[test]
    fn json_span() {
        let mut j = JsonSpan::new();
        assert_eq!(j.feed("  {\"a\": \"}\\\"]\", "), JsonProgress::More);
        assert_eq!(j.feed("\"b\": [1, {}]} tail"), JsonProgress::Complete(13));
        assert_eq!(JsonSpan::new().feed(" x"), JsonProgress::Invalid(1));
        assert_eq!(JsonSpan::new().feed("{]"), JsonProgress::Invalid(1));
        assert_eq!(JsonSpan::new().feed("[[]]"), JsonProgress::Complete(4));
        let deep = "[".repeat(MAX_JSON_DEPTH + 1);
        assert!(matches!(
            JsonSpan::new().feed(&deep),
            JsonProgress::Invalid(_)
        ));
    }
}

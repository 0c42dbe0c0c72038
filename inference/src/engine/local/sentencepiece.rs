//! The SentencePiece-style tokenizer of GGUFs whose `tokenizer.ggml.model`
//! is `llama` (Gemma, Llama 2, Mistral's older models): a vocabulary with
//! a score per piece and no merge list.
//!
//! Encoding is llama.cpp's `llm_tokenizer_spm`, so prompts come out as the
//! tokens llama.cpp (the baseline, and what most GGUFs were checked
//! against) feeds the model: spaces become `▁`, the text is split into
//! UTF-8 characters, and the adjacent pair whose joined text is a piece of
//! the highest score (the leftmost on a tie) is merged until none is left;
//! a character no piece covers becomes its bytes' `<0xXX>` tokens. With a
//! heap of candidate pairs this is O(n log n) in the text's length: an
//! agent's 40k-character prompt must not take quadratic time.
//!
//! Control and user-defined token texts are matched first (leftmost
//! longest, as the byte-level tokenizer's added tokens are) and become
//! their own ids, as llama.cpp's special-token partition does.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::{AhoCorasick, MatchKind};

/// What SentencePiece writes for a space.
pub const SPACE: char = '\u{2581}';

/// An encoder for one vocabulary.
#[derive(Debug)]
pub struct SentencePiece {
    /// Normal and user-defined pieces by text (a merged pair must be one).
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    /// `<0xXX>` byte tokens, by byte.
    bytes: [Option<u32>; 256],
    /// Control and user-defined token texts, matched before anything else.
    special: Option<(AhoCorasick, Vec<u32>)>,
    /// Writes a space before the text (and after each special token), as
    /// SentencePiece's `add_dummy_prefix` (`tokenizer.ggml.add_space_prefix`).
    space_prefix: bool,
}

/// One piece of the text while pairs merge: a byte range, linked to its
/// neighbours (merged-away symbols have `len == 0`).
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of symbol `left` with the one after it.
#[derive(Debug)]
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    /// The joined length when the pair was found: a pair whose symbols
    /// changed since is stale.
    len: usize,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    /// Higher score first; on a tie the leftmost (llama.cpp's order).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl SentencePiece {
    /// `tokens`, `scores` and `types` as `tokenizer.ggml.*` holds them
    /// (types: 1 normal, 3 control, 4 user-defined, 6 byte); the caller
    /// checked that the three have the same length.
    pub fn new(
        tokens: &[String],
        scores: &[f32],
        types: &[i32],
        space_prefix: bool,
    ) -> Result<Self, aho_corasick::BuildError> {
        let mut ids = HashMap::with_capacity(tokens.len());
        let mut bytes = [None; 256];
        let mut special_texts = Vec::new();
        let mut special_ids = Vec::new();
        for (id, (text, ty)) in tokens.iter().zip(types).enumerate() {
            let id = id as u32;
            match *ty {
                TYPE_BYTE => {
                    if let Some(b) = byte_of(text) {
                        bytes[b as usize] = Some(id);
                    }
                }
                TYPE_CONTROL | TYPE_USER_DEFINED => {
                    if !text.is_empty() {
                        special_texts.push(text.clone());
                        special_ids.push(id);
                    }
                    if *ty == TYPE_USER_DEFINED {
                        ids.entry(text.clone()).or_insert(id);
                    }
                }
                _ => {
                    ids.entry(text.clone()).or_insert(id);
                }
            }
        }
        let special = if special_texts.is_empty() {
            None
        } else {
            let matcher = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&special_texts)?;
            Some((matcher, special_ids))
        };
        Ok(Self {
            ids,
            scores: scores.to_vec(),
            bytes,
            special,
            space_prefix,
        })
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        // A space goes before the first text and after each special token.
        let mut after_special = true;
        let mut at = 0;
        if let Some((matcher, ids)) = &self.special {
            for m in matcher.find_iter(text) {
                if m.start() > at {
                    self.encode_plain(&text[at..m.start()], after_special, &mut out);
                }
                out.push(ids[m.pattern().as_usize()]);
                after_special = true;
                at = m.end();
            }
        }
        if at < text.len() {
            self.encode_plain(&text[at..], after_special, &mut out);
        }
        out
    }

    /// Encodes text that holds no special token.
    fn encode_plain(&self, text: &str, after_special: bool, out: &mut Vec<u32>) {
        let mut escaped = String::with_capacity(text.len() + 3);
        if self.space_prefix && after_special {
            escaped.push(SPACE);
        }
        escaped.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
        let text = escaped.as_str();

        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                symbols[i - 1].next = Some(i);
            }
        }
        let mut heap = BinaryHeap::new();
        let candidate = |symbols: &[Symbol], left: usize, right: usize| -> Option<Pair> {
            let (l, r) = (symbols[left], symbols[right]);
            let joined = &text[l.start..r.start + r.len];
            let id = *self.ids.get(joined)?;
            Some(Pair {
                score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                left,
                right,
                len: joined.len(),
            })
        };
        for i in 1..symbols.len() {
            heap.extend(candidate(&symbols, i - 1, i));
        }
        while let Some(pair) = heap.pop() {
            let (l, r) = (symbols[pair.left], symbols[pair.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != pair.len {
                continue;
            }
            symbols[pair.left].len += r.len;
            symbols[pair.left].next = r.next;
            symbols[pair.right].len = 0;
            if let Some(next) = r.next {
                symbols[next].prev = Some(pair.left);
            }
            if let Some(prev) = l.prev {
                heap.extend(candidate(&symbols, prev, pair.left));
            }
            if let Some(next) = r.next {
                heap.extend(candidate(&symbols, pair.left, next));
            }
        }
        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(id) => out.push(*id),
                // A character no piece covers: its bytes (an unknown byte
                // token is skipped, as a vocabulary without them cannot
                // say it otherwise).
                None => out.extend(piece.bytes().filter_map(|b| self.bytes[b as usize])),
            }
            at = s.next;
        }
    }
}

// Token types of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
pub const TYPE_CONTROL: i32 = 3;
pub const TYPE_USER_DEFINED: i32 = 4;
pub const TYPE_BYTE: i32 = 6;

/// The byte a `<0xXX>` token stands for.
pub fn byte_of(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The bytes a normal or user-defined piece stands for (`▁` is a space).
pub fn piece_bytes(text: &str) -> Vec<u8> {
    text.replace(SPACE, " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of `(text, score, type)`.
    fn vocab(entries: &[(&str, f32, i32)], space_prefix: bool) -> SentencePiece {
        let tokens: Vec<String> = entries.iter().map(|e| e.0.to_owned()).collect();
        let scores: Vec<f32> = entries.iter().map(|e| e.1).collect();
        let types: Vec<i32> = entries.iter().map(|e| e.2).collect();
        SentencePiece::new(&tokens, &scores, &types, space_prefix).unwrap()
    }

    fn sample(space_prefix: bool) -> SentencePiece {
        let mut entries = vec![
            ("<bos>", 0.0, TYPE_CONTROL),
            ("<eot>", 0.0, TYPE_CONTROL),
            ("\n", 0.0, TYPE_USER_DEFINED),
        ];
        let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        entries.extend(bytes.iter().map(|b| (b.as_str(), 0.0, TYPE_BYTE)));
        entries.extend([
            ("▁", -1.0, 1),
            ("h", -2.0, 1),
            ("e", -2.0, 1),
            ("l", -2.0, 1),
            ("o", -2.0, 1),
            ("he", -3.0, 1),
            ("ll", -1.5, 1),
            ("llo", -0.5, 1),
            ("hello", -0.1, 1),
            ("▁hello", -0.05, 1),
            ("el", -2.5, 1),
        ]);
        vocab(&entries, space_prefix)
    }

    fn id(sp: &SentencePiece, text: &str) -> u32 {
        sp.ids[text]
    }

    #[test]
    fn merges_by_score_into_whole_pieces() {
        let sp = sample(false);
        assert_eq!(sp.encode("hello"), [id(&sp, "hello")]);
        assert_eq!(sp.encode(" hello"), [id(&sp, "▁hello")]);
        // "ll" (-1.5) goes before "el" (-2.5), which then no longer
        // exists, and "he" (-3) last.
        assert_eq!(sp.encode("hell"), [id(&sp, "he"), id(&sp, "ll")]);
        assert_eq!(sp.encode("ehe"), [id(&sp, "e"), id(&sp, "he")]);
    }

    #[test]
    fn uncovered_characters_become_byte_tokens() {
        let sp = sample(false);
        let out = sp.encode("hé");
        let e_acute = "é".as_bytes();
        assert_eq!(
            out,
            [
                id(&sp, "h"),
                sp.bytes[e_acute[0] as usize].unwrap(),
                sp.bytes[e_acute[1] as usize].unwrap()
            ]
        );
    }

    #[test]
    fn special_tokens_split_the_text_and_space_prefix_follows_them() {
        let sp = sample(true);
        let bos = 0;
        let eot = 1;
        let newline = 2;
        assert_eq!(
            sp.encode("<bos>hello<eot>\nhello"),
            [bos, id(&sp, "▁hello"), eot, newline, id(&sp, "▁hello")]
        );
        let sp = sample(false);
        assert_eq!(sp.encode("<bos>hello"), [bos, id(&sp, "hello")]);
        assert!(sp.encode("").is_empty());
    }

    #[test]
    fn long_text_encodes_piece_by_piece() {
        let sp = sample(false);
        let text = "hello ".repeat(20_000);
        let out = sp.encode(&text);
        // "hello", then "▁hello" 19,999 times, then the last "▁".
        assert_eq!(out.len(), 20_001);
        assert_eq!(out[1], id(&sp, "▁hello"));
        assert_eq!(out[20_000], id(&sp, "▁"));
    }

    #[test]
    fn byte_token_texts() {
        assert_eq!(byte_of("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_of("<0xff>"), Some(0xff));
        assert_eq!(byte_of("<0x1>"), None);
        assert_eq!(byte_of("0x0A"), None);
        assert_eq!(piece_bytes("▁hi▁"), b" hi ");
    }
}

//! Constrained decoding with llguidance: the grammars of [`crate::parse::grammar`]
//! turned into token masks for one model's vocabulary.
//!
//! [`Vocabulary`] is built once per model from the bytes each token stands
//! for — the same bytes the engine writes as text, control tokens such as
//! `<tool_call>` or `[TOOL_CALLS]` included — so a grammar's literal
//! `<tool_call>` is met by the single token as well as by its pieces.
//! Only the end-of-generation tokens are special: the grammar allows them
//! where the output may end.
//!
//! [`Constraint`] follows one generation: [`OutputGrammar::Whole`] masks
//! from the first token; [`OutputGrammar::Lazy`] watches the text until a
//! trigger shows (llama.cpp's lazy grammars), then masks from there — the
//! text since the trigger's start is fed to the grammar first, so a token
//! that held text and the trigger's start is no problem. Free text costs
//! nothing but the trigger scan.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::parse::grammar::{OutputGrammar, Trigger};

/// Why a grammar cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstrainError {
    #[error("the model's vocabulary cannot drive a grammar: {0}")]
    Vocabulary(String),
    #[error("{0}")]
    Grammar(String),
}

/// Encodes text to token ids (the model's tokenizer).
pub type Encoder = Arc<dyn Fn(&[u8]) -> Vec<u32> + Send + Sync>;

struct Env {
    trie: TokTrie,
    encode: Encoder,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        (self.encode)(s)
    }
}

/// A model's vocabulary as llguidance sees it; compiles grammars.
pub struct Vocabulary {
    factory: ParserFactory,
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary")
            .field("size", &self.factory.tok_env().tok_trie().vocab_size())
            .finish()
    }
}

impl Vocabulary {
    /// `pieces[id]`: the bytes of token `id`; `logits` is the model's
    /// output width (ids past the pieces are never allowed); `ends` are the
    /// end-of-generation ids (at least one).
    pub fn new(
        pieces: &[Vec<u8>],
        logits: usize,
        ends: &[u32],
        encode: Encoder,
    ) -> Result<Self, ConstrainError> {
        let Some(&first_end) = ends.iter().min() else {
            return Err(ConstrainError::Vocabulary(
                "no end-of-generation token".into(),
            ));
        };
        let size = logits.max(pieces.len());
        let mut words: Vec<Vec<u8>> = Vec::with_capacity(size);
        for (id, piece) in pieces.iter().enumerate() {
            if ends.contains(&(id as u32)) {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(format!("<[{id}]>").as_bytes());
                words.push(w);
            } else {
                words.push(piece.clone());
            }
        }
        while words.len() < size {
            // Padding rows of the output matrix: never sampled.
            let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
            w.extend_from_slice(format!("<[{}]>", words.len()).as_bytes());
            words.push(w);
        }
        let info = TokRxInfo::new(size as u32, first_end);
        let mut ends: Vec<u32> = ends.to_vec();
        ends.sort_unstable();
        ends.dedup();
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
        let env: TokEnv = Arc::new(Env { trie, encode });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstrainError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A matcher of `lark`, or the compiler's error.
    pub fn matcher(&self, lark: &str) -> Result<Matcher, ConstrainError> {
        let grammar = TopLevelGrammar::from_lark(lark.to_owned());
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| ConstrainError::Grammar(e.to_string()))?;
        Ok(Matcher::new(Ok(parser)))
    }

    fn size(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        self.factory.tok_env().tokenize_bytes(text.as_bytes())
    }
}

enum State {
    /// Every token is checked.
    Active(Box<Matcher>),
    /// Free text; `text` is the output so far (for the trigger scan),
    /// of which `scanned` bytes held no trigger start. Each trigger's
    /// grammar is compiled when the request is admitted (so a bad one is
    /// a 400), and used as it is when its trigger shows.
    Waiting {
        triggers: Vec<(Trigger, Matcher)>,
        text: String,
        scanned: usize,
    },
    /// Nothing more to check (a lazy grammar's trigger led nowhere).
    Off,
}

/// One generation's constraint (see the module documentation).
pub struct Constraint {
    vocabulary: Arc<Vocabulary>,
    state: State,
    mask: Vec<f32>,
}

impl Constraint {
    pub fn new(
        vocabulary: Arc<Vocabulary>,
        grammar: &OutputGrammar,
    ) -> Result<Self, ConstrainError> {
        let state = match grammar {
            OutputGrammar::Whole(lark) => State::Active(Box::new(vocabulary.matcher(lark)?)),
            OutputGrammar::Lazy(triggers) => State::Waiting {
                triggers: triggers
                    .iter()
                    .map(|t| Ok((t.clone(), vocabulary.matcher(&t.lark)?)))
                    .collect::<Result<_, ConstrainError>>()?,
                text: String::new(),
                scanned: 0,
            },
        };
        Ok(Self {
            vocabulary,
            state,
            mask: Vec::new(),
        })
    }

    /// Sets the logits of every token the grammar refuses to −∞. Answers
    /// `false` when no token is allowed (the grammar is in error: the
    /// generation should end).
    pub fn mask(&mut self, logits: &mut [f32]) -> bool {
        let State::Active(matcher) = &mut self.state else {
            return true;
        };
        let allowed = match matcher.compute_mask_or_eos() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "grammar failed; decoding goes on unconstrained");
                self.state = State::Off;
                return true;
            }
        };
        self.mask.clear();
        self.mask.resize(self.vocabulary.size(), f32::NEG_INFINITY);
        let mut any = false;
        allowed.iter_set_entries(|i| {
            if let Some(m) = self.mask.get_mut(i) {
                *m = 0.0;
                any = true;
            }
        });
        for (l, m) in logits.iter_mut().zip(&self.mask) {
            *l += *m;
        }
        for l in logits.iter_mut().skip(self.mask.len()) {
            *l = f32::NEG_INFINITY;
        }
        any
    }

    /// Whether the next token is checked (the caller may skip copying the
    /// logits otherwise).
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Active(_))
    }

    /// Records the sampled `token`, whose text (possibly part of a
    /// character) is `piece`.
    pub fn accept(&mut self, token: u32, piece: &[u8]) {
        match &mut self.state {
            State::Active(matcher) => {
                if let Err(e) = matcher.consume_token(token) {
                    tracing::warn!(error = %e, "grammar refused a sampled token");
                    self.state = State::Off;
                }
            }
            State::Waiting {
                triggers,
                text,
                scanned,
            } => {
                text.push_str(&String::from_utf8_lossy(piece));
                let specs: Vec<&Trigger> = triggers.iter().map(|(t, _)| t).collect();
                let Some((at, which)) = find_trigger(&specs, text, *scanned) else {
                    // A trigger may still start in the last bytes.
                    let longest = specs.iter().map(|t| t.text.len()).max().unwrap_or(0);
                    let mut keep = text.len().saturating_sub(longest);
                    while !text.is_char_boundary(keep) {
                        keep -= 1;
                    }
                    *scanned = keep;
                    return;
                };
                let started = text[at..].to_owned();
                let (_, matcher) = triggers.swap_remove(which);
                self.state = self.start_at(matcher, &started);
            }
            State::Off => {}
        }
    }

    /// `matcher` once it has read `text` (the trigger and what followed it
    /// in the same token).
    fn start_at(&self, mut matcher: Matcher, text: &str) -> State {
        let tokens = self.vocabulary.encode(text);
        match matcher.try_consume_tokens(&tokens) {
            Ok(n) if n == tokens.len() => State::Active(Box::new(matcher)),
            // The text already left the grammar: it is not a call.
            _ => State::Off,
        }
    }
}

/// The first trigger in `text` from byte `from` (earliest position),
/// honouring `line_start`.
/// Answers the position and the trigger's index.
fn find_trigger(triggers: &[&Trigger], text: &str, from: usize) -> Option<(usize, usize)> {
    triggers
        .iter()
        .enumerate()
        .filter_map(|(which, t)| {
            let mut from = from;
            while let Some(offset) = text[from..].find(&t.text) {
                let at = from + offset;
                if !t.line_start || at_line_start(text, at) {
                    return Some((at, which));
                }
                from = at + 1;
                while !text.is_char_boundary(from) {
                    from += 1;
                }
            }
            None
        })
        .min_by_key(|(at, _)| *at)
}

fn at_line_start(text: &str, at: usize) -> bool {
    text[..at]
        .trim_end_matches([' ', '\t'])
        .chars()
        .last()
        .is_none_or(|c| c == '\n')
}

#[cfg(test)]
pub(crate) mod testing {
    //! A byte-level vocabulary (one token per byte, end token 256) to run
    //! grammars without a model.
    use super::*;

    pub const END: u32 = 256;

    pub fn byte_vocabulary() -> Arc<Vocabulary> {
        let pieces: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).chain([Vec::new()]).collect();
        let encode: Encoder = Arc::new(|s: &[u8]| s.iter().map(|b| *b as u32).collect());
        Arc::new(Vocabulary::new(&pieces, 257, &[END], encode).expect("byte vocabulary"))
    }

    /// Whether `lark` accepts exactly `text`.
    pub fn accepts(vocabulary: &Vocabulary, lark: &str, text: &str) -> Result<bool, String> {
        let mut m = vocabulary.matcher(lark).map_err(|e| e.to_string())?;
        let tokens: Vec<u32> = text.bytes().map(u32::from).collect();
        match m.try_consume_tokens(&tokens) {
            Ok(n) if n == tokens.len() => Ok(m.is_accepting().unwrap_or(false)),
            _ => Ok(false),
        }
    }

    /// A random string of `lark`'s language that starts with `prefix`:
    /// tokens drawn uniformly from what the grammar allows, preferring to
    /// end once it may (so outputs stay short), at most `max` bytes.
    pub fn sample(
        vocabulary: &Vocabulary,
        lark: &str,
        prefix: &str,
        seed: u64,
        max: usize,
    ) -> Option<String> {
        let mut m = vocabulary.matcher(lark).ok()?;
        let prefix_tokens: Vec<u32> = prefix.bytes().map(u32::from).collect();
        m.consume_tokens(&prefix_tokens).ok()?;
        let mut out = prefix.as_bytes().to_vec();
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        while out.len() < max {
            let mask = m.compute_mask_or_eos().ok()?;
            if mask.is_allowed(END) && (m.is_stopped() || next() % 4 == 0) {
                return String::from_utf8(out).ok();
            }
            let mut allowed = Vec::new();
            mask.iter_set_entries(|i| {
                if i as u32 != END {
                    allowed.push(i as u32)
                }
            });
            if allowed.is_empty() {
                return mask.is_allowed(END).then(|| String::from_utf8(out).ok())?;
            }
            // Printable ASCII first: random bytes would be mostly invalid UTF-8.
            let printable: Vec<u32> = allowed
                .iter()
                .copied()
                .filter(|t| (0x20..0x7f).contains(t) || *t == b'\n' as u32)
                .collect();
            let pool = if printable.is_empty() {
                &allowed
            } else {
                &printable
            };
            let t = pool[(next() % pool.len() as u64) as usize];
            m.consume_token(t).ok()?;
            out.push(t as u8);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn lazy_constraint_starts_at_the_trigger_even_inside_a_token() {
        let v = byte_vocabulary();
        let g = OutputGrammar::Lazy(vec![Trigger {
            text: "<call>".into(),
            line_start: false,
            lark: r#"start: "<call>" /[0-9]+/ "</call>""#.into(),
        }]);
        let mut c = Constraint::new(Arc::clone(&v), &g).unwrap();
        assert!(!c.is_active());
        for b in b"free text <ca" {
            c.accept(*b as u32, &[*b]);
        }
        assert!(!c.is_active());
        // One "token" ends the trigger and starts its body.
        c.accept(0, b"ll>4");
        assert!(c.is_active());
        let mut logits = vec![0.0f32; 257];
        assert!(c.mask(&mut logits));
        assert!(logits[b'7' as usize].is_finite());
        assert!(logits[b'x' as usize].is_infinite());
        assert!(logits[END as usize].is_infinite());
    }

    #[test]
    fn line_start_triggers_ignore_prose() {
        let t = |text: &str| Trigger {
            text: text.into(),
            line_start: true,
            lark: String::new(),
        };
        let trigger = t("{\"name\"");
        let triggers = [&trigger];
        assert!(find_trigger(&triggers, "say {\"name\"", 0).is_none());
        assert_eq!(find_trigger(&triggers, "say\n  {\"name\"", 0).unwrap().0, 6);
        assert_eq!(find_trigger(&triggers, "{\"name\"", 0).unwrap().0, 0);
    }

    #[test]
    fn bad_grammars_are_errors_not_panics() {
        let v = byte_vocabulary();
        assert!(v.matcher("start: %json {\"type\": \"nope\"}").is_err());
        assert!(v.matcher("start: (").is_err());
        assert!(v.matcher("start: \"a\"").is_ok());
    }
}

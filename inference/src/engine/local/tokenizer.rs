//! The tokenizer a GGUF describes in its own metadata
//! (`tokenizer.ggml.*`): a byte-level BPE (`gpt2`: Qwen, Llama 3), rebuilt
//! as a `tokenizers` model, or a SentencePiece vocabulary (`llama`: Gemma),
//! encoded by [`super::sentencepiece`].
//!
//! A GGUF is self-contained: no `tokenizer.json` travels with it, so for
//! BPE the vocabulary, merges and token types are turned into the same
//! structure a `tokenizer.json` holds and loaded from that. Control and user-defined
//! tokens become added tokens, so `<|im_start|>` in a rendered prompt is
//! one token, as the model was trained. Decoding does not go through
//! `tokenizers`: each token's bytes are precomputed so streaming is a table
//! lookup and a partial UTF-8 character is held until it completes.

use std::collections::{HashMap, HashSet};

use candle_core::quantized::gguf_file::Value;
use serde_json::json;

/// Why a GGUF's tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF tokenizer metadata: {0}")]
    Metadata(String),
    #[error("tokenizer model '{0}' is not supported (supported: gpt2 byte-level BPE, llama SentencePiece)")]
    Unsupported(String),
    #[error("building the tokenizer: {0}")]
    Build(String),
    #[error("tokenizing the prompt: {0}")]
    Encode(String),
}

use super::sentencepiece::{self, SentencePiece, TYPE_BYTE, TYPE_CONTROL, TYPE_USER_DEFINED};

/// Token texts that end a turn in the common chat formats, besides the
/// ids the metadata names (as llama.cpp's end-of-generation set).
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "<|return|>",
    "<|call|>",
];

/// A GGUF's tokenizer: encoding, per-token bytes, end-of-generation ids.
#[derive(Debug)]
pub struct TextTokenizer {
    encoder: Encoder,
    /// The bytes each token stands for.
    pieces: Vec<Vec<u8>>,
    end_of_generation: HashSet<u32>,
    bos: String,
    eos: String,
}

/// How text becomes tokens: the two vocabulary kinds GGUFs carry.
#[derive(Debug)]
enum Encoder {
    ByteLevelBpe(Box<tokenizers::Tokenizer>),
    SentencePiece(Box<SentencePiece>),
}

impl TextTokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Self, TokenizerError> {
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("gpt2");
        if model != "gpt2" && model != "llama" {
            return Err(TokenizerError::Unsupported(model.to_owned()));
        }
        let tokens = string_array(md, "tokenizer.ggml.tokens")?
            .ok_or_else(|| TokenizerError::Metadata("tokenizer.ggml.tokens is missing".into()))?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(TokenizerError::Metadata(format!(
                "tokenizer.ggml.tokens has {} entries",
                tokens.len()
            )));
        }
        let merges = string_array(md, "tokenizer.ggml.merges")?.unwrap_or_default();
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(v) => {
                let arr = v.to_vec().map_err(|e| {
                    TokenizerError::Metadata(format!("tokenizer.ggml.token_type: {e}"))
                })?;
                arr.iter()
                    .map(|t| t.to_i32().or_else(|_| t.to_u32().map(|u| u as i32)))
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        TokenizerError::Metadata(format!("tokenizer.ggml.token_type: {e}"))
                    })?
            }
        };
        if types.len() != tokens.len() {
            return Err(TokenizerError::Metadata(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let token_id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match md.get(key) {
                None => Ok(None),
                Some(v) => {
                    let id = v
                        .to_u32()
                        .map_err(|e| TokenizerError::Metadata(format!("{key}: {e}")))?;
                    if id as usize >= tokens.len() {
                        return Err(TokenizerError::Metadata(format!(
                            "{key} is {id}, beyond the {} tokens",
                            tokens.len()
                        )));
                    }
                    Ok(Some(id))
                }
            }
        };
        let bos = token_id("tokenizer.ggml.bos_token_id")?;
        let eos = token_id("tokenizer.ggml.eos_token_id")?;
        let mut end_of_generation: HashSet<u32> = [
            eos,
            token_id("tokenizer.ggml.eot_token_id")?,
            token_id("tokenizer.ggml.eom_token_id")?,
        ]
        .into_iter()
        .flatten()
        .collect();

        for (id, (text, ty)) in tokens.iter().zip(&types).enumerate() {
            if *ty == TYPE_CONTROL && END_OF_TURN.contains(&text.as_str()) {
                end_of_generation.insert(id as u32);
            }
        }
        let (encoder, pieces) = if model == "llama" {
            sentencepiece_encoder(md, &tokens, &types)?
        } else {
            byte_level_encoder(md, &tokens, &types, merges)?
        };
        let text_of = |id: Option<u32>| id.map(|i| tokens[i as usize].clone()).unwrap_or_default();
        Ok(Self {
            encoder,
            pieces,
            end_of_generation,
            bos: text_of(bos),
            eos: text_of(eos),
        })
    }

    /// Token ids of `text`; special-token texts in it become their tokens
    /// (the prompt is rendered by the chat template, which writes them).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.encoder {
            Encoder::ByteLevelBpe(bpe) => bpe
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TokenizerError::Encode(e.to_string())),
            Encoder::SentencePiece(sp) => Ok(sp.encode(text)),
        }
    }

    /// The bytes of token `id` (empty for an id outside the vocabulary).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The bytes of every token, by id.
    pub fn pieces(&self) -> &[Vec<u8>] {
        &self.pieces
    }

    /// The ids that end the model's turn, in order.
    pub fn end_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.end_of_generation.iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Whether `id` ends the model's turn.
    pub fn ends_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// The vocabulary size.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Never true for a built tokenizer (an empty vocabulary is refused).
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The BOS token's text ("" without one), for `{{ bos_token }}`.
    pub fn bos_token(&self) -> &str {
        &self.bos
    }

    /// The EOS token's text ("" without one), for `{{ eos_token }}`.
    pub fn eos_token(&self) -> &str {
        &self.eos
    }
}

/// A `gpt2` vocabulary as a `tokenizers` byte-level BPE, and each token's
/// bytes.
fn byte_level_encoder(
    md: &HashMap<String, Value>,
    tokens: &[String],
    types: &[i32],
    merges: Vec<String>,
) -> Result<(Encoder, Vec<Vec<u8>>), TokenizerError> {
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    let mut pieces = Vec::with_capacity(tokens.len());
    let char_bytes = unicode_to_bytes();
    for (id, (text, ty)) in tokens.iter().zip(types).enumerate() {
        let id = id as u32;
        let special = *ty == TYPE_CONTROL || *ty == TYPE_USER_DEFINED;
        if special {
            added.push(json!({
                "id": id, "content": text, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *ty == TYPE_CONTROL,
            }));
            pieces.push(text.as_bytes().to_vec());
        } else {
            // Byte-level text maps back to bytes; a character outside
            // the byte alphabet is kept as its own UTF-8.
            let mut bytes = Vec::with_capacity(text.len());
            for c in text.chars() {
                match char_bytes.get(&c) {
                    Some(b) => bytes.push(*b),
                    None => bytes.extend_from_slice(c.to_string().as_bytes()),
                }
            }
            pieces.push(bytes);
        }
        vocab.insert(text.clone(), json!(id));
    }
    if vocab.len() != tokens.len() {
        // Some converted vocabularies repeat a placeholder text; the
        // later id wins for encoding, every id still decodes.
        tracing::warn!(
            distinct = vocab.len(),
            tokens = tokens.len(),
            "tokenizer.ggml.tokens has duplicate entries"
        );
    }
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("default");
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": split_regex(pre)},
                 "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false,
                 "trim_offsets": false, "use_regex": false},
            ],
        },
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false,
                    "trim_offsets": false, "use_regex": false},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let inner: tokenizers::Tokenizer = spec
        .to_string()
        .parse()
        .map_err(|e: tokenizers::Error| TokenizerError::Build(e.to_string()))?;
    Ok((Encoder::ByteLevelBpe(Box::new(inner)), pieces))
}

/// A `llama` (SentencePiece) vocabulary's encoder, and each token's bytes:
/// `▁` a space, `<0xXX>` its byte, control tokens their text.
fn sentencepiece_encoder(
    md: &HashMap<String, Value>,
    tokens: &[String],
    types: &[i32],
) -> Result<(Encoder, Vec<Vec<u8>>), TokenizerError> {
    let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
        None => vec![0.0; tokens.len()],
        Some(v) => v
            .to_vec()
            .and_then(|a| a.iter().map(Value::to_f32).collect::<Result<Vec<_>, _>>())
            .map_err(|e| TokenizerError::Metadata(format!("tokenizer.ggml.scores: {e}")))?,
    };
    if scores.len() != tokens.len() {
        return Err(TokenizerError::Metadata(format!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    // SentencePiece's default (`add_dummy_prefix`) unless the file says.
    let space_prefix = match md.get("tokenizer.ggml.add_space_prefix") {
        None => true,
        Some(v) => v.to_bool().map_err(|e| {
            TokenizerError::Metadata(format!("tokenizer.ggml.add_space_prefix: {e}"))
        })?,
    };
    let pieces = tokens
        .iter()
        .zip(types)
        .map(|(text, ty)| match *ty {
            TYPE_CONTROL => text.as_bytes().to_vec(),
            TYPE_BYTE => sentencepiece::byte_of(text)
                .map(|b| vec![b])
                .unwrap_or_else(|| text.as_bytes().to_vec()),
            _ => sentencepiece::piece_bytes(text),
        })
        .collect();
    let encoder = SentencePiece::new(tokens, &scores, types, space_prefix)
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    Ok((Encoder::SentencePiece(Box::new(encoder)), pieces))
}

fn string_array(
    md: &HashMap<String, Value>,
    key: &str,
) -> Result<Option<Vec<String>>, TokenizerError> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let arr = v
        .to_vec()
        .map_err(|e| TokenizerError::Metadata(format!("{key}: {e}")))?;
    arr.iter()
        .map(|s| s.to_string().cloned())
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(|e| TokenizerError::Metadata(format!("{key}: {e}")))
}

/// The pre-tokenizer split of `tokenizer.ggml.pre` (the names llama.cpp's
/// converter writes); GPT-2's for anything else.
fn split_regex(pre: &str) -> &'static str {
    match pre {
        "qwen2" | "deepseek-r1-qwen" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        // o200k (gpt-oss).
        "gpt-4o" => {
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        "llama-bpe" | "llama3" | "smaug-bpe" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        _ => r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    }
}

/// GPT-2's byte ↔ printable-character table, character → byte.
fn unicode_to_bytes() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0u32..=255 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            let c = next;
            next += 1;
            c
        };
        if let Some(ch) = char::from_u32(c) {
            map.insert(ch, b as u8);
        }
    }
    map
}

/// The byte-level character of `b` (GPT-2's table), for building
/// vocabularies in tests and tools.
pub fn byte_char(b: u8) -> char {
    unicode_to_bytes()
        .into_iter()
        .find(|(_, v)| *v == b)
        .map(|(c, _)| c)
        .unwrap_or('?')
}

/// Turns token bytes into text as they arrive: a UTF-8 character split
/// across tokens is held until its last byte.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds `bytes`; returns the text that is complete now.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Invalid bytes: replaced, as a lossy decode would.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + n);
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end (an incomplete character, replaced).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_holds_split_characters() {
        let mut s = Utf8Stream::default();
        let e = "é".as_bytes();
        assert_eq!(s.push(b"a"), "a");
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.push(&e[1..]), "é");
        assert_eq!(s.push(&[0xff, b'b']), "\u{FFFD}b");
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }

    #[test]
    fn byte_table_round_trips() {
        let t = unicode_to_bytes();
        assert_eq!(t.len(), 256);
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(t[&byte_char(b'\n')], b'\n');
    }
}

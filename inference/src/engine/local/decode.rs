//! The decode loop: prefill the prompt, sample token by token, stream the
//! text. Runs on its own OS thread (candle is synchronous and CPU-bound);
//! every event goes through `emit`, which answers `false` once the client
//! has gone, and the loop then stops at the next token.

use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};

use super::cache::PrefixCache;
use super::model::{KvCache, Transformer};
use super::tokenizer::{TextTokenizer, Utf8Stream};
use crate::constrain::Constraint;
use crate::engine::{EngineEvent, FinishReason, Usage};

/// Prompt tokens fed per forward pass: bounds the attention mask's size
/// and lets a cancelled request stop between chunks of a long prefill.
const PREFILL_CHUNK: usize = 256;

/// How one generation samples and when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or less): greedy.
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    /// Same seed, same prompt, same model: same tokens.
    pub seed: u64,
    pub max_tokens: usize,
    /// Output ends before the first of these texts (which is not sent).
    pub stop: Vec<String>,
    /// Subtracted from the logit of every token the output already holds
    /// (OpenAI's `presence_penalty`)...
    pub presence_penalty: f32,
    /// ...and this once per time it holds it (`frequency_penalty`).
    pub frequency_penalty: f32,
}

/// How often each token came in the output so far, for the penalties.
#[derive(Debug, Default)]
struct Seen(std::collections::HashMap<u32, u32>);

impl Seen {
    /// Lowers the logits of tokens already in the output.
    fn penalise(&self, logits: &mut [f32], params: &SamplingParams) {
        for (&token, &count) in &self.0 {
            if let Some(l) = logits.get_mut(token as usize) {
                *l -= params.presence_penalty + params.frequency_penalty * count as f32;
            }
        }
    }
}

impl SamplingParams {
    fn sampling(&self) -> Sampling {
        let temperature = self.temperature;
        if temperature <= 0.0 {
            return Sampling::ArgMax;
        }
        let top_p = self.top_p.filter(|p| *p > 0.0 && *p < 1.0);
        let top_k = self.top_k.filter(|k| *k > 0);
        match (top_k, top_p) {
            (None, None) => Sampling::All { temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    }
}

/// What the loop needs of the model.
pub struct DecodeModel<'a> {
    pub weights: &'a Transformer,
    /// Where the prompt's prefix may already be, and where the sequence
    /// goes afterwards.
    pub cache: &'a mut PrefixCache,
    /// The client the request comes from: cache entries are shared only
    /// within it.
    pub scope: &'a str,
    pub tokenizer: &'a TextTokenizer,
    pub device: &'a Device,
    /// Prompt plus output may not pass this.
    pub context_length: usize,
}

/// Generates after `prompt`. Returns `Ok(None)` when the client went away
/// (`emit` answered `false` or `cancelled` turned true), otherwise the
/// finish reason and usage (also emitted as [`EngineEvent::Finished`]).
/// Either way the tokens the model went through are left in the prefix
/// cache; after an error they are not (the KV cache is in doubt).
pub fn run(
    model: DecodeModel<'_>,
    prompt: &[u32],
    params: &SamplingParams,
    constraint: Option<Constraint>,
    emit: &mut dyn FnMut(EngineEvent) -> bool,
    cancelled: &dyn Fn() -> bool,
) -> candle_core::Result<Option<(FinishReason, Usage)>> {
    let DecodeModel {
        weights,
        cache,
        scope,
        tokenizer,
        device,
        context_length,
    } = model;
    let (cached, mut kv) = cache.lookup(scope, prompt)?;
    let mut fed = prompt[..cached].to_vec();
    let outcome = generate(
        Step {
            weights,
            tokenizer,
            device,
            context_length,
            constraint,
        },
        &mut kv,
        &mut fed,
        prompt,
        params,
        emit,
        cancelled,
    )?;
    cache.insert(scope, fed, kv);
    Ok(outcome)
}

/// The model, what feeding it needs, and what the output must follow.
struct Step<'a> {
    weights: &'a Transformer,
    tokenizer: &'a TextTokenizer,
    device: &'a Device,
    context_length: usize,
    constraint: Option<Constraint>,
}

impl Step<'_> {
    /// Feeds `tokens` after `fed` (which then includes them).
    fn feed(
        &self,
        kv: &mut KvCache,
        fed: &mut Vec<u32>,
        tokens: &[u32],
    ) -> candle_core::Result<Tensor> {
        let input = Tensor::new(tokens, self.device)?.unsqueeze(0)?;
        let logits = self.weights.forward(&input, kv)?;
        fed.extend_from_slice(tokens);
        Ok(logits)
    }
}

fn generate(
    mut step: Step<'_>,
    kv: &mut KvCache,
    fed: &mut Vec<u32>,
    prompt: &[u32],
    params: &SamplingParams,
    emit: &mut dyn FnMut(EngineEvent) -> bool,
    cancelled: &dyn Fn() -> bool,
) -> candle_core::Result<Option<(FinishReason, Usage)>> {
    let cached = fed.len();
    let mut sampler = LogitsProcessor::from_sampling(params.seed, params.sampling());
    let mut logits = None;
    for chunk in prompt[cached..].chunks(PREFILL_CHUNK) {
        if cancelled() {
            return Ok(None);
        }
        logits = Some(step.feed(kv, fed, chunk)?);
    }
    let Some(mut logits) = logits else {
        candle_core::bail!("empty prompt");
    };
    let mut utf8 = Utf8Stream::default();
    let mut stops = StopScanner::new(&params.stop);
    let mut completion = 0u64;
    let mut seen = Seen::default();
    let penalised = params.presence_penalty != 0.0 || params.frequency_penalty != 0.0;
    let finish = loop {
        let mut l = logits.squeeze(0)?.to_dtype(DType::F32)?;
        let constraint = step.constraint.as_mut().filter(|c| c.is_active());
        if penalised || constraint.is_some() {
            let mut values = l.to_vec1::<f32>()?;
            seen.penalise(&mut values, params);
            if let Some(c) = constraint {
                if !c.mask(&mut values) {
                    // No token can continue the grammar: end here.
                    break FinishReason::Stop;
                }
            }
            let n = values.len();
            l = Tensor::from_vec(values, n, l.device())?;
        }
        let next = sampler.sample(&l)?;
        if penalised {
            *seen.0.entry(next).or_default() += 1;
        }
        completion += 1;
        if step.tokenizer.ends_generation(next) {
            break FinishReason::Stop;
        }
        if let Some(c) = step.constraint.as_mut() {
            c.accept(next, step.tokenizer.piece(next));
        }
        let text = utf8.push(step.tokenizer.piece(next));
        let (out, hit) = stops.push(&text);
        if !out.is_empty() && !emit(EngineEvent::Text(out)) {
            return Ok(None);
        }
        if hit {
            break FinishReason::Stop;
        }
        if completion as usize >= params.max_tokens || fed.len() + 1 >= step.context_length {
            break FinishReason::Length;
        }
        logits = step.feed(kv, fed, &[next])?;
        if cancelled() {
            return Ok(None);
        }
    };
    if !stops.hit {
        let (tail, _) = stops.push(&utf8.finish());
        let rest = tail + &stops.flush();
        if !rest.is_empty() && !emit(EngineEvent::Text(rest)) {
            return Ok(None);
        }
    }
    let usage = Usage {
        prompt_tokens: prompt.len() as u64,
        cached_tokens: cached as u64,
        completion_tokens: completion,
        reasoning_tokens: 0,
    };
    if !emit(EngineEvent::Finished {
        reason: finish,
        usage: Some(usage),
    }) {
        return Ok(None);
    }
    Ok(Some((finish, usage)))
}

/// Holds back text that may be the start of a stop sequence.
#[derive(Debug)]
pub struct StopScanner {
    stops: Vec<String>,
    held: String,
    /// A stop sequence was seen; nothing more is let through.
    pub hit: bool,
}

impl StopScanner {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            hit: false,
        }
    }

    /// Adds `text`; returns what can be sent now and whether a stop
    /// sequence ended the output.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.hit {
            return (String::new(), true);
        }
        self.held.push_str(text);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), false);
        }
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.hit = true;
            let out = self.held[..at].to_owned();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest tail that begins some stop sequence.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_owned();
        self.held.drain(..keep);
        (out, false)
    }

    /// The held text at the end of output (no stop sequence completed).
    pub fn flush(&mut self) -> String {
        if self.hit {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_lower_what_the_output_already_holds() {
        let mut seen = Seen::default();
        seen.0.insert(1, 1);
        seen.0.insert(2, 3);
        let params = SamplingParams {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            seed: 0,
            max_tokens: 1,
            stop: vec![],
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
        };
        let mut logits = [1.0f32, 1.0, 1.0, 1.0];
        seen.penalise(&mut logits, &params);
        assert_eq!(logits, [1.0, 0.25, -0.25, 1.0]);
        // A token past the vocabulary (never sampled) changes nothing.
        seen.0.insert(9, 1);
        seen.penalise(&mut logits, &params);
    }

    #[test]
    fn stop_sequences_hold_back_and_cut() {
        let mut s = StopScanner::new(&["END".into()]);
        assert_eq!(s.push("abc E"), ("abc ".into(), false));
        assert_eq!(s.push("N"), (String::new(), false));
        assert_eq!(s.push("Dxyz"), (String::new(), true));
        assert_eq!(s.flush(), "");

        let mut s = StopScanner::new(&["END".into()]);
        assert_eq!(s.push("abc EN"), ("abc ".into(), false));
        assert_eq!(s.push("q"), ("ENq".into(), false));
        assert_eq!(s.push("E"), (String::new(), false));
        assert_eq!(s.flush(), "E");
    }

    #[test]
    fn sampling_choice() {
        let mut p = SamplingParams {
            temperature: 0.0,
            top_p: Some(0.9),
            top_k: Some(5),
            seed: 1,
            max_tokens: 1,
            stop: vec![],
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        };
        assert!(matches!(p.sampling(), Sampling::ArgMax));
        p.temperature = 0.7;
        assert!(matches!(p.sampling(), Sampling::TopKThenTopP { k: 5, .. }));
        p.top_p = Some(1.0);
        assert!(matches!(p.sampling(), Sampling::TopK { k: 5, .. }));
    }
}

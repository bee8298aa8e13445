//! Generation: prefill (reusing the cached prefix), then sample, detokenize and stream until a stop.
//!
//! With [`GenerationParams::speculative`] the decode loop drafts tokens from the text so far and
//! verifies them in one batched pass ([`crate::speculative`]); greedy output is the same token for
//! token, sampled output is distributed the same.
//!
//! Events arrive in order: thinking and answer deltas as the text becomes certain, then one
//! [`GenerationEvent::Done`] with the finish reason, token counts and timings.

use std::time::Instant;

use serde::Serialize;

use crate::backend::{Logits, Session};
use crate::error::{EngineError, Result};
use crate::sampler::{Sampler, SamplingParams};
use crate::speculative::{Controller, Drafter, Speculative};
use crate::textstream::{Delta, TextStream, CLOSE};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerationParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Text that ends the answer when it appears (not included in the output).
    pub stop_strings: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks, raw continuations).
    pub ignore_eos: bool,
    /// The prompt already opened a `<think>` block.
    pub start_in_thinking: bool,
    /// Thinking budget: once this many tokens were generated inside a thinking block, the engine
    /// closes it itself (feeds [`THINKING_CLOSE`] as if sampled) and the answer follows. `None`:
    /// no limit.
    pub max_thinking_tokens: Option<usize>,
    /// Whether to draft tokens from the prompt and answer so far and verify them in batched
    /// passes ([`crate::speculative`]).
    pub speculative: Speculative,
}

/// What the engine writes to end a thinking block at the budget: SmolLM3's own shape
/// (`<think>\n...\n</think>\n`), so the model continues as after a block it closed itself.
pub const THINKING_CLOSE: &str = "\n</think>\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
    Cancelled,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose keys/values were reused from the previous request.
    pub cached_tokens: usize,
    /// Speculative decoding: tokens drafted and verified in batched passes, and how many of them
    /// were the tokens generated.
    pub drafted_tokens: usize,
    pub accepted_drafts: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// From the request to the first sampled token.
    pub time_to_first_token_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// New (not cached) prompt tokens per second.
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// The summary sent last.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationDone {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

#[derive(Clone, Debug)]
pub enum GenerationEvent {
    Thinking(String),
    Token(String),
    Done(GenerationDone),
}

/// Everything generated, for callers that want the whole result.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationOutput {
    pub ids: Vec<u32>,
    pub text: String,
    pub thinking: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn per_s(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1e3 / ms
    } else {
        0.0
    }
}

/// Runs one generation on `session`. `stop_tokens` end it unless `ignore_eos`; `cancelled` is polled
/// between tokens and between the prefill's chunks; `on_event` receives every event, the `Done`
/// one included.
pub fn generate(
    session: &mut Session,
    tokenizer: &Tokenizer,
    stop_tokens: &[u32],
    prompt: &[u32],
    params: &GenerationParams,
    cancelled: &dyn Fn() -> bool,
    on_event: &mut dyn FnMut(GenerationEvent),
) -> Result<GenerationOutput> {
    let start = Instant::now();
    let ctx = session.max_len();
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if prompt.len() >= ctx {
        return Err(EngineError::ContextOverflow {
            prompt_tokens: prompt.len(),
            context_len: ctx,
            max_prompt: ctx - 1,
        });
    }
    let mut sampler = Sampler::new(params.sampling.clone())?;

    // Reuse the longest cached prefix, but always run at least one token to get logits.
    let common = session
        .tokens()
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count()
        .min(prompt.len() - 1);
    session.truncate(common);
    let prefill_start = Instant::now();
    // The logits of the position being sampled, copied out of the model's buffer (reused);
    // `None` when a cancel came between two chunks of a long prompt.
    let prefilled = session
        .forward_cancellable(&prompt[common..], Logits::Last, cancelled)?
        .map(<[f32]>::to_vec);
    let prefill_ms = ms(prefill_start);
    // All of the prompt's new tokens, or the chunks run before a cancel.
    let prefilled_tokens = session.len() - common;

    let mut history = prompt.to_vec();
    let mut ids = Vec::new();
    let (mut text, mut thinking) = (String::new(), String::new());
    // Control tokens render too: some vocabularies make `<think>` one, and the text stream must see it.
    let mut decoder = StreamDecoder::with_special(tokenizer, true);
    let mut stream = TextStream::new(params.stop_strings.clone(), params.start_in_thinking);
    let mut emit = |deltas: Vec<Delta>, text: &mut String, thinking: &mut String| {
        for d in deltas {
            match d {
                Delta::Thinking(s) => {
                    thinking.push_str(&s);
                    on_event(GenerationEvent::Thinking(s));
                }
                Delta::Answer(s) => {
                    text.push_str(&s);
                    on_event(GenerationEvent::Token(s));
                }
            }
        }
    };

    // Tokens generated inside a thinking block, for the budget; the closing tags fed at the
    // budget (with the special tokens parsed: some vocabularies have `</think>` as one).
    let mut thinking_tokens = 0;
    let close_ids = match params.max_thinking_tokens {
        Some(_) => tokenizer.encode(THINKING_CLOSE, true),
        None => Vec::new(),
    };
    let mut ttft_ms = 0.0;
    let decode_start = Instant::now();
    let prefill_cancelled = prefilled.is_none();
    let vocab = session.vocab_size();
    // The rows of the last pass: row `i` holds the logits after `drafts[..i]` (row 0 after the
    // token fed before them). `at` is the row being sampled.
    let mut rows = prefilled.unwrap_or_default();
    let mut drafts: Vec<u32> = Vec::new();
    let mut at = 0;
    // The tokens of a pass: the last one sampled, then the drafts.
    let mut feed: Vec<u32> = Vec::new();
    let mut speculation = match params.speculative {
        Speculative::Off => None,
        mode => Some((mode, Drafter::default(), Controller::default())),
    };
    let (mut drafted_tokens, mut accepted_drafts) = (0, 0);
    let finish_reason = loop {
        if prefill_cancelled || cancelled() {
            break FinishReason::Cancelled;
        }
        if ids.len() >= params.max_tokens {
            break FinishReason::Length;
        }
        if stream.in_thinking()
            && params
                .max_thinking_tokens
                .is_some_and(|budget| thinking_tokens >= budget)
        {
            // The budget is spent: close the block as the model would have, then let it answer.
            // Drafts fed after the current row are forgotten first.
            session.truncate(session.len() - (drafts.len() - at));
            drafts.clear();
            at = 0;
            if ids.len() + close_ids.len() >= params.max_tokens
                || session.len() + close_ids.len() + 1 > ctx
            {
                break FinishReason::Length;
            }
            for &id in &close_ids {
                ids.push(id);
                history.push(id);
                let piece = decoder.push(id);
                emit(stream.push(&piece), &mut text, &mut thinking);
            }
            if stream.in_thinking() {
                // Looping on would feed the tags again and again.
                return Err(EngineError::Tokenizer(format!(
                    "the vocabulary does not spell {CLOSE:?} back, so a thinking budget cannot close the thinking"
                )));
            }
            rows.clear();
            rows.extend_from_slice(session.forward(&close_ids, Logits::Last)?);
            if cancelled() {
                break FinishReason::Cancelled;
            }
            continue;
        }
        let row = &mut rows[at * vocab..(at + 1) * vocab];
        let proposal = speculation
            .as_ref()
            .and_then(|_| Drafter::propose(&history));
        let next = sampler.sample_with_draft(row, &history, proposal);
        if let (Some((_, _, controller)), Some(proposed)) = (&mut speculation, proposal) {
            controller.observe(proposed == next);
        }
        if ids.is_empty() {
            ttft_ms = ms(start);
        }
        if !params.ignore_eos && stop_tokens.contains(&next) {
            break FinishReason::Stop;
        }
        if stream.in_thinking() {
            thinking_tokens += 1;
        }
        ids.push(next);
        history.push(next);
        let piece = decoder.push(next);
        emit(stream.push(&piece), &mut text, &mut thinking);
        if stream.stopped() {
            break FinishReason::Stop;
        }
        if ids.len() >= params.max_tokens {
            break FinishReason::Length;
        }
        // The draft this row verified was the token sampled: its keys and values are cached
        // and the next row holds the logits after it.
        if drafts.get(at) == Some(&next) {
            at += 1;
            accepted_drafts += 1;
            continue;
        }
        // The drafts after the rejected one are forgotten, as if never fed.
        session.truncate(session.len() - (drafts.len() - at));
        drafts.clear();
        at = 0;
        if session.len() + 1 > ctx {
            break FinishReason::Length;
        }
        if cancelled() {
            break FinishReason::Cancelled;
        }
        if let Some((mode, drafter, controller)) = &mut speculation {
            // Room for the drafts: in the context, and answer tokens left after the one fed now.
            let room = (ctx - session.len() - 1).min(params.max_tokens - ids.len() - 1);
            let len = match *mode {
                Speculative::Fixed(len) => len.min(room),
                _ => controller.draft_len(room),
            };
            drafter.draft(&history, len, &mut drafts);
        }
        feed.clear();
        feed.push(next);
        feed.extend_from_slice(&drafts);
        let wanted = match drafts.is_empty() {
            true => Logits::Last,
            false => Logits::Verify,
        };
        let pass_start = Instant::now();
        let out = session.forward(&feed, wanted)?;
        rows.clear();
        rows.extend_from_slice(out);
        drafted_tokens += drafts.len();
        if let Some((_, _, controller)) = &mut speculation {
            controller.timed(feed.len(), ms(pass_start));
        }
    };
    // Drafts fed but never confirmed are forgotten: the cache holds the prompt and the answer
    // but its last token, as without drafting.
    session.truncate(session.len() - (drafts.len() - at));
    let decode_ms = ms(decode_start);
    if !stream.stopped() {
        let tail = decoder.finish();
        let mut deltas = stream.push(&tail);
        deltas.extend(stream.finish());
        emit(deltas, &mut text, &mut thinking);
    }
    let usage = Usage {
        prompt_tokens: prompt.len(),
        completion_tokens: ids.len(),
        cached_tokens: common,
        drafted_tokens,
        accepted_drafts,
    };
    let timings = Timings {
        time_to_first_token_ms: ttft_ms,
        prefill_ms,
        decode_ms,
        prefill_tok_s: per_s(prefilled_tokens, prefill_ms),
        // The first token comes from the prefill's logits; the rest each cost one decode step.
        decode_tok_s: per_s(ids.len().saturating_sub(1), decode_ms),
    };
    let done = GenerationDone {
        finish_reason,
        usage: usage.clone(),
        timings: timings.clone(),
    };
    on_event(GenerationEvent::Done(done));
    Ok(GenerationOutput {
        ids,
        text,
        thinking,
        finish_reason,
        usage,
        timings,
    })
}

//! Speculative decoding without a draft model: n-gram (prompt-lookup) drafts, and when to draft.
//!
//! A decode step reads every weight to produce one token. Verifying `k` drafted tokens in one
//! batched pass (the prefill path) reads them once for up to `k + 1` tokens. SmolLM3 has no small
//! model with its tokenizer, so drafts come from the text itself: the continuation of the most
//! recent earlier occurrence of the last few tokens, over the prompt and the answer so far
//! (answers that quote, summarise, edit code or repeat structure copy long spans).
//!
//! [`Drafter::propose`] is a pure function of the tokens so far, and the sampler walks the
//! proposed token first ([`crate::sampler::Sampler::sample_with_draft`]), so the tokens generated
//! do not depend on how many drafts are verified per pass: [`Controller`] may choose that from
//! timings without making a seeded run irreproducible.
//!
//! [`Controller`] drafts only when it pays: it tracks how often a proposal was the token sampled
//! (at every position that had one, verified in a batch or not) and what a pass of `n` rows costs
//! against a single-row pass, and picks the draft length with the most expected tokens per unit
//! of time, none when no length beats plain decoding.

/// Whether and how a generation drafts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Speculative {
    /// Plain decoding: one token per pass.
    Off,
    /// Draft as many tokens as the [`Controller`] finds pays, none when drafting does not pay.
    #[default]
    Adaptive,
    /// Draft up to this many tokens whenever the text offers a proposal:
    /// for tests and benchmarks that must exercise or measure drafting.
    Fixed(usize),
}

/// The longest suffix matched against earlier text.
const MAX_NGRAM: usize = 4;
/// The shortest: a single matching token predicts too poorly to be worth a proposal.
const MIN_NGRAM: usize = 2;
/// The most tokens drafted for one pass.
pub const MAX_DRAFT: usize = 12;

/// Proposes the next tokens by prompt lookup.
#[derive(Debug, Default)]
pub struct Drafter {
    /// The tokens so far plus the draft being built (reused between passes).
    scratch: Vec<u32>,
}

impl Drafter {
    /// The token that followed the most recent earlier occurrence of the longest suffix of
    /// `tokens` (between [`MIN_NGRAM`] and [`MAX_NGRAM`] tokens) that occurred before; `None` when
    /// no suffix of [`MIN_NGRAM`] tokens did.
    pub fn propose(tokens: &[u32]) -> Option<u32> {
        let n = tokens.len();
        let last = *tokens.last()?;
        let (mut best_len, mut best) = (0, None);
        // `p` is where an earlier occurrence ends; `p + 1` is its continuation, which exists.
        for p in (0..n.saturating_sub(1)).rev() {
            if tokens[p] != last {
                continue;
            }
            let len = 1
                + (1..MAX_NGRAM.min(p + 1))
                    .take_while(|&i| tokens[p - i] == tokens[n - 1 - i])
                    .count();
            if len > best_len {
                (best_len, best) = (len, Some(tokens[p + 1]));
                if len == MAX_NGRAM {
                    break;
                }
            }
        }
        best.filter(|_| best_len >= MIN_NGRAM)
    }

    /// Up to `max` drafted tokens after `tokens` into `out` (cleared first): each the proposal
    /// for the tokens so far followed by the drafts before it, so each is what
    /// [`Drafter::propose`] will say at its position if the drafts before it are accepted.
    pub fn draft(&mut self, tokens: &[u32], max: usize, out: &mut Vec<u32>) {
        out.clear();
        if max == 0 {
            return;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(tokens);
        while out.len() < max {
            let Some(next) = Self::propose(&self.scratch) else {
                break;
            };
            out.push(next);
            self.scratch.push(next);
        }
    }
}

/// Weight of the newest observation in the running estimates.
const DECAY: f64 = 0.9;
/// Acceptance assumed before anything is observed, and how many observations it counts as.
const PRIOR_ACCEPTANCE: f64 = 0.5;
const PRIOR_WEIGHT: f64 = 4.0;
/// A batched pass's cost per extra row, as a fraction of a single-row pass, assumed before one
/// is timed (about what the native kernels cost on a small model; a memory-bound large model
/// costs less).
const PRIOR_ROW_COST: f64 = 0.25;
/// Drafting must promise this many times plain decoding's speed, so that noise in the estimates
/// does not make ordinary chat slower.
const MIN_GAIN: f64 = 1.1;

/// Decides how many tokens to draft from what drafting has paid so far.
#[derive(Debug)]
pub struct Controller {
    /// Decayed counts of proposals that were the sampled token, and of proposals.
    accepted: f64,
    proposed: f64,
    /// Running means of a single-row pass's time and of the time each extra row adds (ms).
    single_ms: Option<f64>,
    row_ms: Option<f64>,
}

impl Default for Controller {
    fn default() -> Self {
        Self {
            accepted: PRIOR_ACCEPTANCE * PRIOR_WEIGHT,
            proposed: PRIOR_WEIGHT,
            single_ms: None,
            row_ms: None,
        }
    }
}

impl Controller {
    /// Records whether the proposal at one position was the token sampled there.
    pub fn observe(&mut self, accepted: bool) {
        self.accepted = self.accepted * DECAY + f64::from(u8::from(accepted));
        self.proposed = self.proposed * DECAY + 1.0;
    }

    /// Records that a pass of `rows` rows took `ms`.
    pub fn timed(&mut self, rows: usize, ms: f64) {
        let mean =
            |old: Option<f64>, new: f64| Some(old.map_or(new, |o| o * DECAY + new * (1.0 - DECAY)));
        match (rows, self.single_ms) {
            (0, _) => {}
            (1, _) => self.single_ms = mean(self.single_ms, ms),
            // A batch's extra rows are measured against the single-row passes, once there are any.
            (n, Some(single)) => {
                self.row_ms = mean(self.row_ms, ((ms - single) / (n - 1) as f64).max(0.0));
            }
            (_, None) => {}
        }
    }

    /// The estimated probability that a proposal is the token sampled.
    pub fn acceptance(&self) -> f64 {
        self.accepted / self.proposed
    }

    /// The cost of a pass's extra row relative to a single-row pass.
    fn row_cost(&self) -> f64 {
        match (self.single_ms, self.row_ms) {
            (Some(single), Some(row)) if single > 0.0 => row / single,
            _ => PRIOR_ROW_COST,
        }
    }

    /// How many tokens to draft (at most `max`): the length whose expected tokens per pass,
    /// over the pass's cost, is best, or 0 when none beats plain decoding by [`MIN_GAIN`].
    pub fn draft_len(&self, max: usize) -> usize {
        let (a, c) = (self.acceptance(), self.row_cost());
        let mut best = (0, MIN_GAIN);
        // Expected tokens from a pass with k drafts, each accepted with probability a until the
        // first rejection: 1 + a + ... + a^k.
        let mut expected = 1.0;
        let mut power = 1.0;
        for k in 1..=max.min(MAX_DRAFT) {
            power *= a;
            expected += power;
            let gain = expected / (1.0 + c * k as f64);
            if gain > best.1 {
                best = (k, gain);
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_most_recent_match_proposes() {
        // The suffix "2 3" occurred twice, followed by 4 then by 5: the most recent wins.
        assert_eq!(
            Drafter::propose(&[1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 2, 3]),
            Some(5)
        );
        // A longer match beats a more recent shorter one.
        assert_eq!(
            Drafter::propose(&[8, 2, 3, 4, 9, 2, 3, 5, 8, 2, 3]),
            Some(4)
        );
        // One token of context is not enough; nothing earlier is nothing.
        assert_eq!(Drafter::propose(&[1, 2, 7, 3, 2]), None);
        assert_eq!(Drafter::propose(&[1, 2, 3]), None);
        assert_eq!(Drafter::propose(&[]), None);
        // A run repeats itself.
        assert_eq!(Drafter::propose(&[6, 6, 6]), Some(6));
    }

    #[test]
    fn a_draft_continues_the_copied_span() {
        let text = [10, 11, 12, 13, 14, 15, 99, 10, 11];
        let mut d = Drafter::default();
        let mut out = Vec::new();
        d.draft(&text, 3, &mut out);
        assert_eq!(out, [12, 13, 14]);
        d.draft(&text, 20, &mut out);
        // The copy runs to the end of the text, then wraps around through the earlier copy.
        assert_eq!(&out[..6], [12, 13, 14, 15, 99, 10]);
        d.draft(&text, 0, &mut out);
        assert!(out.is_empty());
        d.draft(&[1, 2, 3], 5, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn drafting_stops_when_proposals_miss_and_resumes_when_they_hit() {
        let mut c = Controller::default();
        c.timed(1, 10.0);
        c.timed(5, 14.0); // 1 ms per extra row: 10% of a pass
        for _ in 0..30 {
            c.observe(false);
        }
        assert_eq!(c.draft_len(MAX_DRAFT), 0, "acceptance {}", c.acceptance());
        for _ in 0..30 {
            c.observe(true);
        }
        assert!(c.draft_len(MAX_DRAFT) >= 8, "acceptance {}", c.acceptance());
        assert_eq!(c.draft_len(3), 3);
        assert_eq!(c.draft_len(0), 0);
    }

    #[test]
    fn expensive_rows_need_better_acceptance() {
        let at = |acceptance: f64, row_cost: f64| {
            let mut c = Controller::default();
            c.timed(1, 10.0);
            c.timed(2, 10.0 * (1.0 + row_cost));
            (c.accepted, c.proposed) = (acceptance * 100.0, 100.0);
            c.draft_len(MAX_DRAFT)
        };
        // At 50% acceptance a nearly free row pays, a row costing as much as a pass does not.
        assert!(at(0.5, 0.05) > 0);
        assert_eq!(at(0.5, 1.0), 0);
        // Cheap rows and high acceptance: long drafts.
        assert!(at(0.9, 0.05) > at(0.6, 0.05));
    }
}

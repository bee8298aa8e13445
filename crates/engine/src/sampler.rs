//! Token sampling: turns one row of logits into the next token id.
//!
//! The chain and its order follow llama.cpp's default (`common/sampling.cpp`):
//! repetition penalty -> top-k -> top-p -> min-p -> temperature -> random pick.
//! Top-p and min-p therefore see temperature-1 probabilities, exactly as in llama.cpp.
//! Temperature 0 is greedy decoding: the arg-max after the penalty, with no randomness used.
//!
//! Sampling runs once per token over vocabularies of up to ~128k entries, so the sampler
//! keeps its scratch buffers between calls and selects rather than sorts the vocabulary.

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::EngineError;

/// Seed of [`SamplingParams::for_family`]: fixed, so runs are reproducible by default.
pub const DEFAULT_SEED: u64 = 42;

/// Which model family a default applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ModelFamily {
    /// HuggingFace SmolLM3 (a hybrid reasoning model with `<think>` blocks).
    SmolLM3,
    /// Llama-architecture models, SmolLM2 included.
    Llama,
}

/// User-facing sampling settings. Each stage has a value that switches it off.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy (arg-max).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 = off.
    pub min_p: f32,
    /// Repetition penalty for tokens seen in the last `repeat_last_n`; 1 = off.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the penalty looks at; 0 = off.
    pub repeat_last_n: usize,
    /// Seed of the random generator; the same seed gives the same tokens.
    pub seed: u64,
}

impl SamplingParams {
    /// Recommended settings for a model family.
    ///
    /// * SmolLM3: temperature 0.6, top-p 0.95, from its model card; other stages off.
    /// * Llama (SmolLM2 and others): llama.cpp's defaults (`common/common.h`): temperature
    ///   0.8, top-k 40, top-p 0.95, min-p 0.05.
    ///
    /// Both use llama.cpp's penalty defaults: penalty 1.0 (off), window 64.
    pub fn for_family(family: ModelFamily) -> Self {
        let llama_cpp = Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: DEFAULT_SEED,
        };
        match family {
            ModelFamily::Llama => llama_cpp,
            ModelFamily::SmolLM3 => Self {
                temperature: 0.6,
                top_k: 0,
                min_p: 0.0,
                ..llama_cpp
            },
        }
    }

    /// Rejects settings that have no meaning, naming the setting and the accepted range.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |rule: &str, v: f32| Err(EngineError::Sampling(format!("{rule}, got {v}")));
        // Each condition is written so that NaN fails it.
        let (temp, penalty) = (self.temperature, self.repeat_penalty);
        if !(temp.is_finite() && temp >= 0.0) {
            return bad("temperature must be finite and >= 0 (0 = greedy)", temp);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1] (1 = off)", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be in [0, 1] (0 = off)", self.min_p);
        }
        if !(penalty.is_finite() && penalty > 0.0) {
            return bad("repeat_penalty must be finite and > 0 (1 = off)", penalty);
        }
        Ok(())
    }
}

/// One surviving token during filtering.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    logit: f32,
    id: u32,
}

/// Most likely first; equal logits by lowest id, so that results never depend on the
/// order in which the selection algorithms happen to leave ties.
fn by_rank(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// First chunk size for top-p, as in llama.cpp: the nucleus is almost always smaller.
const TOP_P_FIRST_PASS: usize = 256;

/// Stateful sampler: the parameters, the random generator and reusable scratch buffers.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    candidates: Vec<Candidate>,
    weights: Vec<f32>,
    recent: Vec<u32>,
}

impl Sampler {
    /// Validates `params` and seeds the random generator.
    pub fn new(params: SamplingParams) -> Result<Self, EngineError> {
        params.validate()?;
        Ok(Self {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            candidates: Vec::new(),
            weights: Vec::new(),
            recent: Vec::new(),
        })
    }

    /// Picks the next token.
    ///
    /// `logits` is one row over the vocabulary and is modified in place (the penalty is
    /// applied to it); `history` is the tokens so far (prompt + generated), used by the
    /// repetition penalty. NaN logits are never picked. If no logit is usable at all
    /// (every one NaN, or an empty row) the result is token 0.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.sample_with_draft(logits, history, None)
    }

    /// [`Sampler::sample`] where `draft` is the token a speculative draft proposed here: the
    /// standard speculative sampling rule for a deterministic draft (its distribution a point
    /// mass on `draft`), which accepts it with probability p(draft) and otherwise draws from p
    /// with `draft` removed and renormalised, so the result is distributed as p.
    ///
    /// Both steps come from the one random number [`Sampler::sample`] would use, walking the
    /// cumulative distribution with `draft` first: a uniform below p(draft) accepts it, one
    /// above lands in the rest in proportion. So every token costs exactly one random number
    /// and the tokens depend on the seed and the drafts proposed, never on how many of them
    /// were verified in one pass. Greedy decoding ignores `draft`.
    pub fn sample_with_draft(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        draft: Option<u32>,
    ) -> u32 {
        self.apply_penalty(logits, history);
        // Greedy decoding, or nothing left to draw from: the arg-max handles both.
        if self.params.temperature == 0.0 || !self.filter(logits) {
            return argmax(logits);
        }
        self.draw(draft)
    }

    /// Collects the candidates from `logits` and applies top-k, top-p and min-p to them.
    /// Returns false when no token has a usable logit.
    fn filter(&mut self, logits: &[f32]) -> bool {
        // NaN and -inf tokens can never be drawn, so they are dropped here once. A +inf
        // logit outweighs every finite one: if there is any, only the +inf tokens remain,
        // as equals, which also keeps the softmax arithmetic below finite.
        let has_inf = logits.contains(&f32::INFINITY);
        self.candidates.clear();
        for (id, &logit) in (0u32..).zip(logits.iter()) {
            if has_inf && logit == f32::INFINITY {
                self.candidates.push(Candidate { logit: 0.0, id });
            } else if !has_inf && logit > f32::NEG_INFINITY {
                self.candidates.push(Candidate { logit, id });
            }
        }
        if self.candidates.is_empty() {
            return false;
        }
        let k = self.params.top_k;
        if k > 0 && k < self.candidates.len() {
            // A selection, linear in the vocabulary size; the survivors need no order.
            self.candidates.select_nth_unstable_by(k - 1, by_rank);
            self.candidates.truncate(k);
        }
        self.top_p();
        self.min_p();
        true
    }

    /// llama.cpp's repetition penalty: each distinct token among the last
    /// `repeat_last_n` of `history` has its logit divided by the penalty if positive and
    /// multiplied by it otherwise, so that it always becomes less likely.
    fn apply_penalty(&mut self, logits: &mut [f32], history: &[u32]) {
        let (penalty, n) = (self.params.repeat_penalty, self.params.repeat_last_n);
        if penalty == 1.0 || n == 0 {
            return;
        }
        self.recent.clear();
        self.recent
            .extend_from_slice(&history[history.len().saturating_sub(n)..]);
        self.recent.sort_unstable();
        self.recent.dedup();
        for &token in &self.recent {
            // Ids beyond the row (e.g. a history from another vocabulary) are ignored.
            if let Some(logit) = logits.get_mut(token as usize) {
                let l = *logit;
                *logit = if l > 0.0 { l / penalty } else { l * penalty };
            }
        }
    }

    /// Keeps the most likely candidates until their probability reaches `top_p`.
    ///
    /// Candidates are taken in growing chunks, each selected (not sorted) as the best of
    /// those left; only the chunk where the cut falls is sorted. Usually that is the first
    /// chunk, which is small, and even for flat distributions this beats a full sort.
    fn top_p(&mut self) {
        let p = f64::from(self.params.top_p);
        if p >= 1.0 {
            return;
        }
        let max = self.max_logit();
        let weight = |c: &Candidate| f64::from((c.logit - max).exp());
        let target = p * self.candidates.iter().map(weight).sum::<f64>();
        let len = self.candidates.len();
        // Invariant: candidates[..start] are the best ones, with mass `cumulative` < target.
        let (mut start, mut end, mut cumulative) = (0, TOP_P_FIRST_PASS.min(len), 0.0);
        loop {
            if end < len {
                let rest = &mut self.candidates[start..];
                rest.select_nth_unstable_by(end - start - 1, by_rank);
            }
            let mass: f64 = self.candidates[start..end].iter().map(weight).sum();
            if cumulative + mass >= target || end == len {
                break;
            }
            // Chunks grow 4x, so a flat distribution costs a few selections, not a sort.
            let next = end + 4 * (end - start);
            (start, end, cumulative) = (end, next.min(len), cumulative + mass);
        }
        // The cut falls in candidates[start..end]: only that chunk needs sorting. Should
        // rounding leave the walk short of the target, the whole chunk stays.
        let chunk = &mut self.candidates[start..end];
        chunk.sort_unstable_by(by_rank);
        let mut keep = end;
        for (i, c) in (start..).zip(chunk.iter()) {
            cumulative += weight(c);
            if cumulative >= target {
                keep = i + 1;
                break;
            }
        }
        self.candidates.truncate(keep);
    }

    /// Drops candidates whose probability is below `min_p` times the best one's.
    fn min_p(&mut self) {
        let p = self.params.min_p;
        if p > 0.0 {
            // p_i >= p * p_max  <=>  logit_i >= logit_max + ln(p): no softmax needed. The
            // best candidate always passes, so the set never becomes empty.
            let threshold = self.max_logit() + p.ln();
            self.candidates.retain(|c| c.logit >= threshold);
        }
    }

    /// Applies the temperature and draws one candidate in proportion to its probability,
    /// walking `first` (when it is a candidate) before the others.
    /// Always consumes exactly one random number, so a seed fixes the whole sequence.
    fn draw(&mut self, first: Option<u32>) -> u32 {
        let max = self.max_logit();
        let temp = self.params.temperature;
        self.weights.clear();
        // (logit - max) / T rather than logit / T - max / T, so that huge logits or a tiny
        // T cannot overflow: the best candidate's weight is exactly 1.
        let weight = |c: &Candidate| ((c.logit - max) / temp).exp();
        self.weights.extend(self.candidates.iter().map(weight));
        let total: f64 = self.weights.iter().map(|&w| f64::from(w)).sum();
        let target = self.rng.random::<f64>() * total;
        let mut cumulative = 0.0;
        let mut fallback = 0;
        if let Some(first) = first {
            let found = self.candidates.iter().position(|c| c.id == first);
            if let Some(i) = found {
                let w = self.weights[i];
                if w > 0.0 {
                    cumulative += f64::from(w);
                    fallback = first;
                    if cumulative > target {
                        return first;
                    }
                }
            }
        }
        for (c, &w) in self.candidates.iter().zip(&self.weights) {
            if w > 0.0 && Some(c.id) != first {
                cumulative += f64::from(w);
                fallback = c.id;
                // Strictly greater: a zero-weight candidate can never be chosen.
                if cumulative > target {
                    return c.id;
                }
            }
        }
        // Only reachable through rounding in the sums: take the last positive-weight one.
        fallback
    }

    fn max_logit(&self) -> f32 {
        self.candidates
            .iter()
            .fold(f32::NEG_INFINITY, |m, c| m.max(c.logit))
    }
}

/// Index of the largest non-NaN logit, lowest index on ties; 0 when there is none.
fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(u32, f32)> = None;
    for (id, &logit) in (0u32..).zip(logits.iter()) {
        if !logit.is_nan() && best.is_none_or(|(_, b)| logit > b) {
            best = Some((id, logit));
        }
    }
    best.map_or(0, |(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings with the main knobs given and the penalty off.
    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
        let mut p = SamplingParams::for_family(ModelFamily::Llama);
        (p.temperature, p.top_k, p.top_p, p.min_p) = (temperature, top_k, top_p, min_p);
        p
    }

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(p).expect("valid params")
    }

    /// Deterministic pseudo-random logits in [-8, 8).
    fn noisy_logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f32>() * 16.0 - 8.0).collect()
    }

    /// Ids left after top-k/top-p/min-p, sorted by id.
    fn survivors(p: SamplingParams, logits: &[f32]) -> Vec<u32> {
        let mut s = sampler(p);
        assert!(s.filter(logits));
        let mut ids: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    }

    /// The `n` best ids by a full sort (ties by id), sorted by id.
    fn best_by_full_sort(logits: &[f32], n: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..).take(logits.len()).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        order.truncate(n);
        order.sort_unstable();
        order
    }

    #[test]
    fn greedy_picks_argmax_lowest_id_on_ties_without_randomness() {
        let mut s = sampler(params(0.0, 0, 1.0, 0.0));
        assert_eq!(s.sample(&mut [0.1, 2.0, -3.0, 1.9], &[]), 1);
        assert_eq!(s.sample(&mut [1.0, 5.0, 5.0, 5.0], &[]), 1);
        // No randomness was used: the generator is still in its seeded state.
        assert_eq!(s.rng, StdRng::seed_from_u64(DEFAULT_SEED));
    }

    #[test]
    fn same_seed_same_sequence() {
        let run = |seed| {
            let mut p = params(0.8, 40, 0.95, 0.05);
            p.seed = seed;
            let mut s = sampler(p);
            let mut draw = |i| s.sample(&mut noisy_logits(500, i), &[]);
            (0..200).map(&mut draw).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_equal_greedy() {
        for (top_k, top_p) in [(1, 1.0), (0, 1e-6)] {
            let mut s = sampler(params(1.0, top_k, top_p, 0.0));
            for i in 0..50 {
                let logits = noisy_logits(1000, i);
                assert_eq!(s.sample(&mut logits.clone(), &[]), argmax(&logits));
            }
        }
    }

    #[test]
    fn top_k_on_a_full_size_vocabulary() {
        let logits = noisy_logits(128_256, 3);
        let kept = survivors(params(1.0, 40, 1.0, 0.0), &logits);
        assert_eq!(kept, best_by_full_sort(&logits, 40));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // p = (0.5, 0.3, 0.15, 0.05): 0.5 + 0.3 reaches 0.75, 0.5 alone does not.
        let logits = [0.5f32, 0.3, 0.15, 0.05].map(f32::ln);
        assert_eq!(survivors(params(1.0, 0, 0.75, 0.0), &logits), [0, 1]);
        // Flat logits in [-2, 2), so that the nucleus spans several chunks.
        for (seed, top_p) in [(1, 0.5), (2, 0.9), (3, 0.99), (4, 0.3)] {
            let logits: Vec<f32> = noisy_logits(20_000, seed).iter().map(|l| l / 4.0).collect();
            let mut sorted: Vec<f64> = logits.iter().map(|&l| f64::from(l).exp()).collect();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let target = f64::from(top_p) * sorted.iter().sum::<f64>();
            let mut cumulative = 0.0;
            let outside = sorted.iter().skip_while(|&&w| {
                cumulative += w;
                cumulative < target
            });
            let n = sorted.len() + 1 - outside.count();
            let kept = survivors(params(1.0, 0, top_p, 0.0), &logits);
            assert_eq!(kept, best_by_full_sort(&logits, n), "top_p {top_p}");
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // With min_p 0.5 a token needs p >= 0.25: only 0.5 and 0.3 qualify.
        let logits = [0.3f32, 0.5, 0.15, 0.05].map(f32::ln);
        assert_eq!(survivors(params(1.0, 0, 1.0, 0.5), &logits), [0, 1]);
        let mut s = sampler(params(1.0, 0, 1.0, 0.5));
        for _ in 0..200 {
            assert!(s.sample(&mut logits.clone(), &[]) < 2);
        }
    }

    #[test]
    fn repeat_penalty_matches_llama_cpp() {
        let mut p = params(0.0, 0, 1.0, 0.0);
        (p.repeat_penalty, p.repeat_last_n) = (1.5, 3);
        let mut s = sampler(p);
        // The window is the last 3 tokens, [1, 1, 3]: token 1 is penalized once although
        // it appears twice, token 0 is outside the window, token 2 was never seen.
        let mut logits = [2.0, -1.0, 0.5, 3.0];
        let token = s.sample(&mut logits, &[0, 1, 1, 3]);
        assert_eq!(logits, [2.0, -1.5, 0.5, 2.0]);
        assert_eq!(token, 0, "tie between 0 and 3 goes to the lower id");
        // Ids beyond the vocabulary are ignored; zero stays zero.
        let mut logits = [0.0, 2.0];
        s.sample(&mut logits, &[9, 1, 0]);
        assert_eq!(logits, [0.0, 2.0 / 1.5]);
    }

    /// Pearson's chi-square of 20,000 draws at `temperature` from `probs` vs `expected`.
    fn chi_square(temperature: f32, probs: [f64; 4], expected: [f64; 4]) -> f64 {
        let mut s = sampler(params(temperature, 0, 1.0, 0.0));
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[s.sample(&mut probs.map(|p| p.ln() as f32), &[]) as usize] += 1;
        }
        let chi = |i: usize| (counts[i] as f64 - expected[i] * 2e4).powi(2) / (expected[i] * 2e4);
        (0..4).map(chi).sum()
    }

    #[test]
    fn sampling_frequencies_match_the_distribution() {
        // 3 degrees of freedom: chi-square exceeds 16.27 with probability 0.001. The seed
        // is fixed, so the outcome is deterministic; this guards the arithmetic.
        let probs = [0.1, 0.2, 0.3, 0.4];
        let stat = chi_square(1.0, probs, probs);
        assert!(stat < 16.27, "temperature 1: chi-square {stat}");
        // Temperature 0.5 squares the probabilities: (1, 4, 9, 16) / 30.
        let stat = chi_square(0.5, probs, [1.0, 4.0, 9.0, 16.0].map(|w| w / 30.0));
        assert!(stat < 16.27, "temperature 0.5: chi-square {stat}");
    }

    #[test]
    fn a_drafted_token_is_accepted_with_its_probability_and_the_output_keeps_the_distribution() {
        // p after top-k 3 and temperature 1: (0.2, 0.3, 0.5) over ids 1..=3, id 0 filtered out.
        let logits = [0.01f64, 0.2, 0.3, 0.5].map(|p| p.ln() as f32);
        let p = [0.0, 0.2, 0.3, 0.5];
        // 3 degrees of freedom (id 0 must never appear): chi-square < 16.27 at p = 0.999.
        for draft in 0..4u32 {
            let mut s = sampler(params(1.0, 3, 1.0, 0.0));
            let (n, mut counts) = (20_000, [0usize; 4]);
            for _ in 0..n {
                counts[s.sample_with_draft(&mut logits.clone(), &[], Some(draft)) as usize] += 1;
            }
            assert_eq!(counts[0], 0, "draft {draft}: a filtered token was drawn");
            let chi: f64 = (1..4)
                .map(|i| (counts[i] as f64 - p[i] * n as f64).powi(2) / (p[i] * n as f64))
                .sum();
            assert!(
                chi < 16.27,
                "draft {draft}: chi-square {chi}, counts {counts:?}"
            );
            // The draft is accepted as often as p gives it: within 4 standard deviations.
            let q = p[draft as usize];
            let sd = (q * (1.0 - q) / n as f64).sqrt();
            let accepted = counts[draft as usize] as f64 / n as f64;
            assert!(
                (accepted - q).abs() <= 4.0 * sd + 1e-12,
                "draft {draft}: {accepted}"
            );
        }
    }

    #[test]
    fn a_draft_uses_the_same_one_random_number_and_greedy_ignores_it() {
        let logits = noisy_logits(300, 5);
        let mut plain = sampler(params(0.9, 0, 0.95, 0.0));
        let mut drafted = sampler(params(0.9, 0, 0.95, 0.0));
        for i in 0..200 {
            plain.sample(&mut logits.clone(), &[]);
            drafted.sample_with_draft(&mut logits.clone(), &[], Some(i % 300));
        }
        // Both generators moved by exactly one number per token.
        assert_eq!(plain.rng, drafted.rng);
        let mut greedy = sampler(params(0.0, 0, 1.0, 0.0));
        let best = argmax(&logits);
        for draft in [None, Some(0), Some(best + 1)] {
            assert_eq!(
                greedy.sample_with_draft(&mut logits.clone(), &[], draft),
                best
            );
        }
    }

    #[test]
    fn nan_logits_are_never_picked() {
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        for mut p in [params(0.0, 0, 1.0, 0.0), params(1.0, 2, 0.9, 0.01)] {
            p.repeat_penalty = 1.3;
            let mut s = sampler(p);
            for _ in 0..100 {
                let token = s.sample(&mut [nan, 1.0, nan, 1.5, nan], &[0, 1]);
                assert!(token == 1 || token == 3);
            }
            assert_eq!(s.sample(&mut [nan, -inf, 9.0], &[]), 2);
            assert_eq!(s.sample(&mut [nan, -inf, nan], &[]), 1);
            assert_eq!(s.sample(&mut [nan, nan], &[]), 0);
            assert_eq!(s.sample(&mut [], &[]), 0);
            assert_eq!(s.sample(&mut [f32::MAX, inf, -3.0], &[]), 1);
        }
    }

    #[test]
    fn validate_rejects_meaningless_settings() {
        for family in [ModelFamily::SmolLM3, ModelFamily::Llama] {
            assert!(SamplingParams::for_family(family).validate().is_ok());
        }
        let check = |set: &dyn Fn(&mut SamplingParams)| {
            let mut p = params(0.7, 0, 1.0, 0.0);
            set(&mut p);
            let err = Sampler::new(p.clone()).err().map(|e| e.to_string());
            let message = err.unwrap_or_default();
            assert!(message.starts_with("invalid sampling settings: "), "{p:?}");
        };
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        for v in [nan, -0.1, inf] {
            check(&|p| p.temperature = v);
        }
        for v in [0.0, 1.01, nan] {
            check(&|p| p.top_p = v);
        }
        for v in [-0.01, 1.5, nan] {
            check(&|p| p.min_p = v);
        }
        for v in [0.0, -1.0, nan, inf] {
            check(&|p| p.repeat_penalty = v);
        }
    }
}

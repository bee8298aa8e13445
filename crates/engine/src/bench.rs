//! llama-bench-style measurements, shared by `smollm3 bench` and `benches/compare.rs`: prefill of N
//! pseudo-random tokens from an empty cache, decode of N tokens one at a time from an empty cache,
//! medians over repetitions, and the process's peak resident memory.

use std::time::Instant;

use crate::{Engine, GenerationParams, Result, SamplingParams};

/// Pseudo-random token ids (xorshift64), the same sequence on every run for a given vocabulary.
pub struct TokenSource {
    state: u64,
    vocab: u64,
}

impl TokenSource {
    pub fn new(vocab_size: usize) -> Self {
        Self {
            state: 0x9E37_79B9_7F4A_7C15,
            vocab: vocab_size.max(1) as u64,
        }
    }

    pub fn take(&mut self, n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| {
                let x = &mut self.state;
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                (*x % self.vocab) as u32
            })
            .collect()
    }
}

/// Loads the model `reps` times (at least once), each after the previous engine is dropped, and
/// returns the last engine with the median load time in seconds. The first load may read the file
/// from disk; the median is the warm load (file in the page cache) as soon as `reps` >= 3.
pub fn timed_loads<E>(
    reps: usize,
    mut load: impl FnMut() -> std::result::Result<Engine, E>,
) -> std::result::Result<(Engine, f64), E> {
    let mut times = Vec::new();
    let mut engine = None;
    for _ in 0..reps.max(1) {
        drop(engine.take());
        let t = Instant::now();
        engine = Some(load()?);
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((engine.expect("loaded at least once"), median(times)))
}

/// Tokens per second prefilling `tokens` in one batch from an empty cache.
pub fn prefill_tok_s(engine: &mut Engine, tokens: &[u32]) -> Result<f64> {
    engine.reset();
    let t = Instant::now();
    engine.feed(tokens)?;
    Ok(tokens.len() as f64 / t.elapsed().as_secs_f64())
}

/// Tokens per second feeding `tokens` one at a time from an empty cache (decoding).
pub fn decode_tok_s(engine: &mut Engine, tokens: &[u32]) -> Result<f64> {
    engine.reset();
    let t = Instant::now();
    for &tok in tokens {
        engine.feed(&[tok])?;
    }
    Ok(tokens.len() as f64 / t.elapsed().as_secs_f64())
}

/// New tokens in the benchmarks' second chat turn (a short user message after the history).
pub const TURN_TOKENS: usize = 16;

/// The context a benchmark needs: its longest test, then the second turn's [`TURN_TOKENS`] and
/// the token each request generates.
pub fn context_for(longest: usize) -> usize {
    longest + TURN_TOKENS + 2
}

/// A chat's second turn: time to first token for `new` tokens after `history` was the previous
/// request (its keys and values reused), and for the whole `history + new` from an empty cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SecondTurn {
    /// Prompt tokens the second request found in the cache.
    pub cached_tokens: usize,
    pub ttft_ms: f64,
    pub cold_ttft_ms: f64,
}

/// Measures [`SecondTurn`] through [`Engine::generate`], the path the chat app takes (one greedy
/// token per request).
pub fn second_turn(engine: &mut Engine, history: &[u32], new: &[u32]) -> Result<SecondTurn> {
    let params = first_token_params(engine);
    let ttft = |engine: &mut Engine, prompt: &[u32]| {
        engine
            .generate(prompt, &params, &|| false, &mut |_| {})
            .map(|out| (out.usage.cached_tokens, out.timings.time_to_first_token_ms))
    };
    let both: Vec<u32> = history.iter().chain(new).copied().collect();
    engine.reset();
    ttft(engine, history)?;
    let (cached_tokens, ttft_ms) = ttft(engine, &both)?;
    engine.reset();
    let (_, cold_ttft_ms) = ttft(engine, &both)?;
    Ok(SecondTurn {
        cached_tokens,
        ttft_ms,
        cold_ttft_ms,
    })
}

/// Switching back to a chat: time to first token (the switch included) for `new` tokens after
/// `history_a`, when
/// another conversation (`history_b`) ran in between, with `history_a`'s cache kept and restored
/// ([`Engine::use_cache_of`]) and without (prefix reuse only, from B's cache).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwitchBack {
    /// Prompt tokens found in the cache, and the time to first token, with A's cache kept.
    pub kept_cached_tokens: usize,
    pub kept_ttft_ms: f64,
    /// The same with no memory for kept caches.
    pub cold_cached_tokens: usize,
    pub cold_ttft_ms: f64,
}

/// Measures [`SwitchBack`] through [`Engine::use_cache_of`] and [`Engine::generate`], the path
/// the chat worker takes; the budget is left as it was.
pub fn switch_back(
    engine: &mut Engine,
    history_a: &[u32],
    history_b: &[u32],
    new: &[u32],
) -> Result<SwitchBack> {
    let params = first_token_params(engine);
    let both: Vec<u32> = history_a.iter().chain(new).copied().collect();
    let run = |engine: &mut Engine, budget: usize| -> Result<(usize, f64)> {
        engine.set_kept_cache_budget(budget);
        engine.reset();
        // Fresh names each run: nothing kept from the run before.
        let (a, b) = (format!("a{budget}"), format!("b{budget}"));
        for (who, prompt) in [(&a, history_a), (&b, history_b)] {
            engine.use_cache_of(who)?;
            engine.generate(prompt, &params, &|| false, &mut |_| {})?;
        }
        // The switch (copying B's cache out, A's back in) counts: the user waits for it too.
        let start = Instant::now();
        engine.use_cache_of(&a)?;
        let switch_ms = start.elapsed().as_secs_f64() * 1e3;
        let out = engine.generate(&both, &params, &|| false, &mut |_| {})?;
        Ok((
            out.usage.cached_tokens,
            switch_ms + out.timings.time_to_first_token_ms,
        ))
    };
    let (kept_cached_tokens, kept_ttft_ms) = run(engine, usize::MAX)?;
    let (cold_cached_tokens, cold_ttft_ms) = run(engine, 0)?;
    Ok(SwitchBack {
        kept_cached_tokens,
        kept_ttft_ms,
        cold_cached_tokens,
        cold_ttft_ms,
    })
}

/// One greedy token per request: what the time-to-first-token measurements generate.
fn first_token_params(engine: &Engine) -> GenerationParams {
    GenerationParams {
        max_tokens: 1,
        sampling: SamplingParams {
            temperature: 0.0,
            ..engine.default_sampling()
        },
        stop_strings: Vec::new(),
        ignore_eos: true,
        start_in_thinking: false,
        max_thinking_tokens: None,
        speculative: crate::Speculative::Off,
    }
}

/// A competing process for contention benchmarks (`benches/compare.rs`, the chat crate's
/// `inapp`): a user's other programs, or the host's other tenants, as the engine meets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neighbour {
    None,
    /// One core's worth of arithmetic, nothing in memory.
    Cpu,
    /// One thread reading and writing a 256 MiB buffer (8x this machine's L3) over and over: it
    /// takes a core and a share of the memory bandwidth decoding depends on.
    Memory,
}

/// The flag a bench binary is re-executed with to become a [`Neighbour`]; see
/// [`Neighbour::serve_if_asked`].
const BURN_FLAG: &str = "--burn";

impl std::str::FromStr for Neighbour {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Neighbour::None),
            "cpu" => Ok(Neighbour::Cpu),
            "memory" => Ok(Neighbour::Memory),
            other => Err(format!("{other:?} is not none, cpu or memory")),
        }
    }
}

impl Neighbour {
    pub fn name(self) -> &'static str {
        match self {
            Neighbour::None => "none",
            Neighbour::Cpu => "cpu",
            Neighbour::Memory => "memory",
        }
    }

    /// Starts it as a separate process (the running executable with `--burn KIND`, which must
    /// call [`Neighbour::serve_if_asked`] first thing in `main`), so the scheduler sees another
    /// program, not a thread of ours. `None` for [`Neighbour::None`].
    pub fn start(self) -> std::io::Result<Option<NeighbourProcess>> {
        if self == Neighbour::None {
            return Ok(None);
        }
        let exe = std::env::current_exe()?;
        let child = std::process::Command::new(exe)
            .args([BURN_FLAG, self.name()])
            .spawn()?;
        Ok(Some(NeighbourProcess(child)))
    }

    /// In a process started by [`Neighbour::start`] (arguments `--burn KIND`), does the
    /// neighbour's work until killed and never returns; otherwise returns at once.
    pub fn serve_if_asked() {
        let args: Vec<String> = std::env::args().collect();
        if let [_, flag, kind] = args.as_slice() {
            if flag == BURN_FLAG {
                match kind.parse::<Neighbour>() {
                    Ok(n) => n.burn(),
                    Err(e) => {
                        eprintln!("{BURN_FLAG}: {e}");
                        std::process::exit(2);
                    }
                }
            }
        }
    }

    fn burn(self) -> ! {
        match self {
            Neighbour::Cpu => {
                let mut x = 1u64;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            Neighbour::Memory => {
                let mut buf = vec![1u64; 32 << 20];
                loop {
                    for v in buf.iter_mut() {
                        *v = v.wrapping_add(1);
                    }
                    std::hint::black_box(&mut buf);
                }
            }
            Neighbour::None => std::process::exit(0),
        }
    }
}

/// A running [`Neighbour`], killed when dropped (also when the measurement panics).
pub struct NeighbourProcess(std::process::Child);

impl Drop for NeighbourProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The median (the mean of the middle two for an even count); 0 for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Peak resident memory of process `pid` (`"self"` for this one) so far (VmHWM), in MiB; Linux only.
pub fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_source_is_repeatable_and_in_range() {
        let a = TokenSource::new(100).take(50);
        assert_eq!(a, TokenSource::new(100).take(50));
        assert!(a.iter().all(|&t| t < 100));
        assert!(a.iter().any(|&t| t != a[0]));
    }

    /// The test model (`make model`) and options with a `context_len` context.
    fn test_model(context_len: usize) -> (std::path::PathBuf, crate::EngineOptions) {
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let opts = crate::EngineOptions {
            context_len,
            ..crate::EngineOptions::default()
        };
        (model, opts)
    }

    #[test]
    fn timed_loads_loads_reps_times_and_stops_at_an_error() {
        let (model, opts) = test_model(64);
        let mut calls = 0;
        let (engine, secs) = timed_loads(3, || {
            calls += 1;
            Engine::load(&model, &opts)
        })
        .expect("the test model loads (make model)");
        assert_eq!(calls, 3);
        assert!(secs > 0.0);
        assert_eq!(engine.info().context_len, 64);

        let mut calls = 0;
        let err = timed_loads(3, || {
            calls += 1;
            Engine::load(std::path::Path::new("/nonexistent.gguf"), &opts)
        });
        assert!(err.is_err());
        assert_eq!(calls, 1, "the first error ends the loop");
    }

    #[test]
    fn second_turn_reuses_the_history() {
        let (model, opts) = test_model(256);
        let mut engine = Engine::load(&model, &opts).expect("the test model loads (make model)");
        let mut source = TokenSource::new(engine.tokenizer().vocab_size());
        let (history, new) = (source.take(100), source.take(8));
        let t = second_turn(&mut engine, &history, &new).expect("second turn");
        assert_eq!(t.cached_tokens, 100, "the whole history is reused");
        assert!(t.ttft_ms > 0.0 && t.cold_ttft_ms > 0.0);
    }

    #[test]
    fn switching_back_restores_the_first_history() {
        let (model, opts) = test_model(256);
        let mut engine = Engine::load(&model, &opts).expect("the test model loads (make model)");
        let mut source = TokenSource::new(engine.tokenizer().vocab_size());
        let (a, b, new) = (source.take(60), source.take(60), source.take(8));
        let t = switch_back(&mut engine, &a, &b, &new).expect("switch back");
        assert_eq!(t.kept_cached_tokens, 60, "A's history is restored");
        assert!(t.cold_cached_tokens < 60, "{t:?}");
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }
}

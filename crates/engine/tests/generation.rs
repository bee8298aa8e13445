//! Generation through [`Engine::generate`] on every backend, with the real test model: prefix
//! reuse, rollback of a diverged conversation, cancellation, the context limit and stop strings.
//! Each check compares a backend with itself (cached against fresh), so it holds on any device;
//! the Candle backend runs in this process and in the runner process (`engine::runner`).

mod refdata;

use engine::{
    BackendKind, ChatMessage, ChatOptions, DeviceSpec, Engine, EngineError, EngineOptions,
    FinishReason, GenerationOutput, GenerationParams, KvType, Placement, SamplingParams,
    THINKING_CLOSE,
};
use refdata::smollm2_path;

/// The backends these tests run on, with each KV cache type.
fn backends() -> Vec<(&'static str, EngineOptions)> {
    let with = |kv_type| EngineOptions {
        kv_type,
        ..EngineOptions::default()
    };
    let candle = Placement::new(DeviceSpec::Cpu, Some(BackendKind::Candle)).expect("candle on cpu");
    vec![
        ("native, F16 cache", with(KvType::F16)),
        ("native, F32 cache", with(KvType::F32)),
        (
            "candle-cpu, F32 cache",
            EngineOptions {
                placement: candle,
                ..with(KvType::F32)
            },
        ),
        // The same graph in the runner process, over the pipe (as CUDA runs in the app).
        (
            "candle-cpu in the runner, F32 cache",
            EngineOptions {
                placement: candle,
                runner: Some(env!("CARGO_BIN_EXE_smollm3-cuda-runner").into()),
                ..with(KvType::F32)
            },
        ),
    ]
}

fn load(opts: &EngineOptions, context_len: usize) -> Engine {
    engine::threads::init(0);
    let opts = EngineOptions {
        context_len,
        ..opts.clone()
    };
    Engine::load(&smollm2_path(), &opts).expect("the test model loads")
}

fn greedy(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::for_family(engine::ModelFamily::Llama)
        },
        stop_strings: Vec::new(),
        ignore_eos: true,
        start_in_thinking: false,
        max_thinking_tokens: None,
        speculative: engine::Speculative::Off,
    }
}

fn run(engine: &mut Engine, prompt: &[u32], params: &GenerationParams) -> GenerationOutput {
    engine
        .generate(prompt, params, &|| false, &mut |_| {})
        .expect("generation")
}

fn prompt(engine: &Engine, text: &str) -> Vec<u32> {
    engine.encode_prompt(text).expect("the prompt encodes")
}

/// Largest and mean |difference| between two rows of logits, and whether their argmax agrees.
fn close(a: &[f32], b: &[f32]) -> (f32, f32, bool) {
    let argmax = |r: &[f32]| (0..r.len()).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap();
    let diffs = || a.iter().zip(b).map(|(x, y)| (x - y).abs());
    let max = diffs().fold(0.0, f32::max);
    let mean = diffs().sum::<f32>() / a.len().max(1) as f32;
    (max, mean, argmax(a) == argmax(b))
}

/// The logits after `cached` (in the cache) then `new` (fed now) against the same tokens from
/// an empty cache in one pass. Every backend here runs on the CPU, where the Candle graph too
/// computes each row with the native kernels, alike whatever the batch: they agree to 0.05.
/// (On a GPU Candle's products sum in an order that depends on the shapes.)
fn assert_same_as_fresh(name: &str, engine: &mut Engine, all: &[u32], reused: &[f32]) {
    let fresh = engine.logits(all).expect("fresh pass");
    let (max, mean, same_argmax) = close(reused, fresh.last().unwrap());
    assert!(
        same_argmax && max < 0.05,
        "{name}: the logits after a reused prefix differ from a fresh pass by up to {max} (mean {mean})"
    );
}

#[test]
fn the_second_request_reuses_the_cached_prefix() {
    for (name, opts) in backends() {
        let mut engine = load(&opts, 256);
        let first = prompt(&engine, "The capital of France is");
        let out = run(&mut engine, &first, &greedy(6));
        assert_eq!(out.usage.cached_tokens, 0, "{name}");
        // The cache holds the prompt and every generated token but the last (never fed).
        assert_eq!(
            engine.cached_tokens(),
            first.len() + out.ids.len() - 1,
            "{name}"
        );
        let mut second: Vec<u32> = first.iter().chain(&out.ids).copied().collect();
        second.extend(engine.tokenizer().encode(" and of Spain", false));
        let again = run(&mut engine, &second, &greedy(1));
        assert_eq!(
            again.usage.cached_tokens,
            first.len() + out.ids.len() - 1,
            "{name}: the whole first request is reused"
        );
        let reused = engine
            .feed(&[])
            .expect_err("an empty feed is refused")
            .to_string();
        assert!(reused.contains("no tokens"), "{name}: {reused}");

        // What the reused cache computes equals a fresh pass.
        engine.reset();
        let half = second.len() / 2;
        engine.feed(&second[..half]).expect("prefix");
        let row = engine.feed(&second[half..]).expect("rest");
        assert_same_as_fresh(name, &mut engine, &second, &row);
    }
}

#[test]
fn a_diverged_conversation_rolls_back_to_the_common_prefix() {
    for (name, opts) in backends() {
        let mut engine = load(&opts, 256);
        let a = prompt(&engine, "One two three four five six seven");
        run(&mut engine, &a, &greedy(4));
        // Same start, different end: only the common prefix is reused, the rest recomputed.
        let b = prompt(&engine, "One two three four nine ten");
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert!(common > 1 && common < b.len(), "{name}: test prompts");
        let out = run(&mut engine, &b, &greedy(3));
        assert_eq!(out.usage.cached_tokens, common, "{name}");
        engine.reset();
        let fresh = run(&mut engine, &b, &greedy(3));
        assert_eq!(out.ids, fresh.ids, "{name}: rolled back = fresh");

        // A failed pass caches nothing: the cache still holds what it held.
        engine.reset();
        engine.feed(&a).expect("feed");
        let vocab = engine.info().vocab_size as u32;
        let err = engine
            .feed(&[a[0], vocab])
            .expect_err("token outside the vocabulary");
        assert!(
            err.to_string().contains("outside the vocabulary"),
            "{name}: {err}"
        );
        assert_eq!(engine.cached_tokens(), a.len(), "{name}: nothing committed");
        let row = engine.feed(&b[..3]).expect("after the error");
        let all: Vec<u32> = a.iter().chain(&b[..3]).copied().collect();
        assert_same_as_fresh(name, &mut engine, &all, &row);
    }
}

#[test]
fn cancelling_stops_between_tokens_and_keeps_the_engine_usable() {
    for (name, opts) in backends() {
        let mut engine = load(&opts, 256);
        let p = prompt(&engine, "Count: one, two, three,");
        let polls = std::cell::Cell::new(0);
        // The loop polls before sampling and before each decode step: stop after 3 tokens.
        let cancelled = || {
            polls.set(polls.get() + 1);
            polls.get() > 6
        };
        let mut events = 0;
        let out = engine
            .generate(&p, &greedy(50), &cancelled, &mut |_| events += 1)
            .expect("generation");
        assert_eq!(out.finish_reason, FinishReason::Cancelled, "{name}");
        assert_eq!(out.ids.len(), 3, "{name}");
        assert!(events >= 1, "{name}: the Done event is sent");
        let again = run(&mut engine, &p, &greedy(3));
        assert_eq!(again.ids, out.ids, "{name}: the same tokens after a cancel");
        assert_eq!(again.usage.cached_tokens, p.len() - 1, "{name}");
    }
}

#[test]
fn the_context_limit_refuses_long_prompts_and_ends_long_answers() {
    for (name, opts) in backends() {
        let mut engine = load(&opts, 32);
        let long: Vec<u32> = (0..32).map(|i| 100 + i).collect();
        match engine.generate(&long, &greedy(4), &|| false, &mut |_| {}) {
            Err(EngineError::ContextOverflow {
                prompt_tokens: 32,
                context_len: 32,
                max_prompt: 31,
            }) => {}
            other => panic!("{name}: {other:?}"),
        }
        assert!(
            matches!(
                engine.logits(&[1; 33]),
                Err(EngineError::ContextOverflow { .. })
            ),
            "{name}"
        );
        // 30 prompt tokens leave room for 2 answer tokens (the last one is never fed).
        let out = run(&mut engine, &long[..30], &greedy(10));
        assert_eq!(out.finish_reason, FinishReason::Length, "{name}");
        assert_eq!(out.ids.len(), 3, "{name}");
        assert_eq!(engine.cached_tokens(), 32, "{name}: the context is full");
        assert!(
            matches!(engine.feed(&[1]), Err(EngineError::ContextOverflow { .. })),
            "{name}"
        );
    }
}

#[test]
fn a_stop_string_ends_the_answer_before_it() {
    for (name, opts) in backends() {
        let mut engine = load(&opts, 256);
        let p = prompt(&engine, "The days of the week are Monday, Tuesday,");
        let full = run(&mut engine, &p, &greedy(12));
        assert!(full.text.len() > 8, "{name}: {:?}", full.text);
        // A stop string from the middle of what it generates unprompted.
        let at = full.text.len() / 2;
        let at = (at..full.text.len())
            .find(|&i| full.text.is_char_boundary(i) && full.text.is_char_boundary(i + 3))
            .unwrap();
        let stop = full.text[at..at + 3].to_string();
        let mut params = greedy(12);
        params.stop_strings = vec![stop.clone()];
        let out = run(&mut engine, &p, &params);
        assert_eq!(out.finish_reason, FinishReason::Stop, "{name}");
        let cut = full.text.find(&stop).unwrap();
        assert_eq!(out.text, full.text[..cut], "{name}: stop {stop:?}");
    }
}

/// `n` tokens of ordinary text (a long prompt).
fn long_prompt(engine: &Engine, n: usize) -> Vec<u32> {
    let text = "The quick brown fox jumps over the lazy dog while the cat sleeps. ".repeat(n / 8);
    let ids = prompt(engine, &text);
    assert!(ids.len() >= n, "the text gives {} tokens", ids.len());
    ids[..n].to_vec()
}

#[test]
fn a_long_prompt_runs_in_chunks_with_the_logits_of_one_pass() {
    // Bit for bit: on the CPU every backend computes a row alike whatever the batch.
    for (name, opts) in backends() {
        let mut engine = load(&opts, 2048);
        let chunk = engine::PREFILL_CHUNK;
        let tokens = long_prompt(&engine, chunk + chunk / 2);
        let all = engine.logits(&tokens).expect("every position");
        // Any split of the input gives every position the same logits, bit for bit.
        for split in [7, chunk + 3] {
            engine.reset();
            let head = engine.feed(&tokens[..split]).expect("head");
            assert_eq!(
                head,
                all[split - 1],
                "{name}: position {} (split {split})",
                split - 1
            );
            let tail = engine.feed(&tokens[split..]).expect("tail");
            assert_eq!(
                &tail,
                all.last().unwrap(),
                "{name}: the last position (split {split})"
            );
        }
    }
}

#[test]
fn prefill_scratch_does_not_grow_with_the_prompt() {
    for (name, opts) in backends() {
        let mut engine = load(&opts, 2048);
        let chunk = engine::PREFILL_CHUNK;
        let tokens = long_prompt(&engine, 2 * chunk + 1);
        engine
            .feed(&tokens[..chunk + 1])
            .expect("a prompt of one chunk and one token");
        let one_chunk = engine.scratch_bytes();
        engine.reset();
        engine
            .feed(&tokens)
            .expect("a prompt of two chunks and more");
        assert_eq!(
            engine.scratch_bytes(),
            one_chunk,
            "{name}: scratch grew with the prompt"
        );
        // What the memory estimate planned for a chunk's activations holds them (the logits
        // buffer is counted separately there, as one row).
        let planned = engine.info().memory.buffers as usize;
        assert!(
            one_chunk < planned,
            "{name}: {one_chunk} bytes of scratch, {planned} planned"
        );
    }
}

#[test]
fn cancelling_a_long_prefill_stops_after_the_chunk_in_progress() {
    for (name, opts) in backends() {
        let mut engine = load(&opts, 2048);
        let chunk = engine::PREFILL_CHUNK;
        let tokens = long_prompt(&engine, 2 * chunk);
        // Cancelled as soon as the first chunk has run: no further chunk starts.
        let out = engine
            .generate(&tokens, &greedy(4), &|| true, &mut |_| {})
            .expect("a cancelled generation");
        assert_eq!(out.finish_reason, FinishReason::Cancelled, "{name}");
        assert!(out.ids.is_empty(), "{name}");
        assert_eq!(engine.cached_tokens(), chunk, "{name}: one chunk ran");
        // The chunk that ran is a prefix the next request reuses.
        let again = run(&mut engine, &tokens, &greedy(1));
        assert_eq!(again.usage.cached_tokens, chunk, "{name}");
        assert_eq!(again.ids.len(), 1, "{name}");
    }
}

/// A thinking budget of N: the first N thinking tokens are the ones sampled without a budget,
/// then come the engine's closing tags, then the answer. The tiny SmolLM3 model (random
/// weights, its own template) never closes a thinking block by itself, so without the budget
/// everything stays thinking.
#[test]
fn the_thinking_budget_closes_the_thinking_and_the_answer_follows() {
    engine::threads::init(0);
    let path = refdata::reference_dir().join("tiny-smollm3-f32.gguf");
    let opts = EngineOptions {
        context_len: 1024,
        ..EngineOptions::default()
    };
    let mut engine = Engine::load(&path, &opts).expect("the tiny SmolLM3 model loads");
    assert!(engine.info().supports_thinking);
    let chat = ChatOptions {
        add_generation_prompt: true,
        enable_thinking: Some(true),
        ..ChatOptions::default()
    };
    let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 5).unwrap();
    let rendered = engine
        .render_chat(
            &[ChatMessage::new("user", "Why is the sky blue?")],
            &chat,
            today,
        )
        .expect("the template renders");
    // The model opens the block (as SmolLM3 does); here the prompt does it for it.
    let ids = prompt(&engine, &format!("{rendered}<think>\n"));
    let params = |budget| GenerationParams {
        start_in_thinking: true,
        max_thinking_tokens: budget,
        ..greedy(40)
    };
    let free = run(&mut engine, &ids, &params(None));
    assert!(
        free.text.is_empty() && !free.thinking.is_empty(),
        "without a budget the tiny model only thinks: {free:?}"
    );
    assert_eq!(free.ids.len(), 40);
    let close = engine.tokenizer().encode(THINKING_CLOSE, true);
    for budget in [0, 1, 7] {
        let out = run(&mut engine, &ids, &params(Some(budget)));
        assert_eq!(out.ids[..budget], free.ids[..budget], "budget {budget}");
        assert_eq!(
            out.ids[budget..budget + close.len()],
            close[..],
            "budget {budget}: the closing tags follow the budget's tokens"
        );
        assert!(
            !out.text.trim().is_empty(),
            "budget {budget}: an answer follows the thinking: {out:?}"
        );
        assert_eq!(out.ids.len(), 40, "the answer runs to max_tokens");
        assert_eq!(out.finish_reason, FinishReason::Length);
    }
}

#[test]
fn switching_back_to_a_conversation_prefills_only_its_new_tokens() {
    for (name, opts) in backends() {
        let mut engine = load(&opts, 256);
        engine.set_kept_cache_budget(64 << 20);
        let a1 = prompt(&engine, "The capital of France is");
        let b1 = prompt(&engine, "Rust is a programming language that");
        assert_eq!(engine.use_cache_of("a").unwrap(), 0);
        let out_a = run(&mut engine, &a1, &greedy(4));
        engine.use_cache_of("b").unwrap();
        let out_b = run(&mut engine, &b1, &greedy(4));
        let a_cached = a1.len() + out_a.ids.len() - 1;
        let b_cached = b1.len() + out_b.ids.len() - 1;
        let more = |first: &[u32], ids: &[u32], text: &str| -> Vec<u32> {
            let mut v: Vec<u32> = first.iter().chain(ids).copied().collect();
            v.extend(engine.tokenizer().encode(text, false));
            v
        };
        let a2 = more(&a1, &out_a.ids, " and of Spain");
        let b2 = more(&b1, &out_b.ids, " and it is fast");
        // Back to a: its cache is restored (through the runner: copied out of its process and
        // back, layer by layer), and only the new tokens are prefilled.
        assert_eq!(engine.use_cache_of("a").unwrap(), a_cached, "{name}");
        assert!(engine.kept_cache_bytes() > 0, "{name}: b's cache is kept");
        let again = run(&mut engine, &a2, &greedy(1));
        assert_eq!(again.usage.prompt_tokens, a2.len(), "{name}");
        assert_eq!(again.usage.cached_tokens, a_cached, "{name}");
        // Back to b: what is restored is b's own cache, bit for bit: its next logits are those
        // of an engine that ran b alone, through the same passes.
        assert_eq!(engine.use_cache_of("b").unwrap(), b_cached, "{name}");
        let row = engine.feed(&b2[b_cached..]).expect("b's new tokens");
        let mut alone = load(&opts, 256);
        run(&mut alone, &b1, &greedy(4));
        let expected = alone.feed(&b2[b_cached..]).expect("b alone");
        assert!(row == expected, "{name}: b's restored cache is not b's");
        // With no budget, nothing is kept: a is not restored.
        engine.set_kept_cache_budget(0);
        assert_eq!(engine.kept_cache_bytes(), 0, "{name}");
        assert_eq!(
            engine.use_cache_of("a").unwrap(),
            b2.len(),
            "{name}: b's stays live"
        );
    }
}

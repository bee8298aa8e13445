//! Speculative decoding on the real models: drafts verified in batched passes change nothing but
//! the speed. Greedy output is the plain output token for token on every reference model; sampled
//! output with a seed is the same whatever number of drafts each pass verifies; the cache holds
//! what plain decoding leaves.

mod refdata;

use std::path::Path;

use engine::{
    BackendKind, ChatMessage, ChatOptions, DeviceSpec, Engine, EngineOptions, GenerationOutput,
    GenerationParams, KvType, Placement, SamplingParams, Speculative,
};
use refdata::{reference_dir, smollm2_path, Reference};

fn load(path: &Path, kv_type: KvType) -> Engine {
    load_on(path, kv_type, BackendKind::Native)
}

fn load_on(path: &Path, kv_type: KvType, backend: BackendKind) -> Engine {
    engine::threads::init(0);
    let opts = EngineOptions {
        context_len: 1024,
        kv_type,
        placement: Placement::new(DeviceSpec::Cpu, Some(backend)).expect("the CPU"),
        ..EngineOptions::default()
    };
    Engine::load(path, &opts).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn params(temperature: f32, max_tokens: usize, speculative: Speculative) -> GenerationParams {
    GenerationParams {
        max_tokens,
        sampling: SamplingParams {
            temperature,
            seed: 7,
            ..SamplingParams::for_family(engine::ModelFamily::Llama)
        },
        stop_strings: Vec::new(),
        ignore_eos: true,
        start_in_thinking: false,
        max_thinking_tokens: None,
        speculative,
    }
}

/// Generates from an empty cache, and returns the output with the tokens the cache holds after.
fn run(engine: &mut Engine, prompt: &[u32], p: &GenerationParams) -> (GenerationOutput, usize) {
    engine.reset();
    let out = engine
        .generate(prompt, p, &|| false, &mut |_| {})
        .expect("generation");
    (out, engine.cached_tokens())
}

/// A prompt that asks for text the answer copies: what drafting from the prompt is for.
const PARAGRAPH: &str = "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun \
    all afternoon, and the fox runs back into the forest before the farmer comes home.";

fn copy_prompt(engine: &Engine) -> Vec<u32> {
    let ask = format!("Repeat this text exactly, word for word:\n\n{PARAGRAPH}");
    let rendered = engine
        .render_chat(
            &[ChatMessage::new("user", ask)],
            &ChatOptions::default(),
            chrono::NaiveDate::from_ymd_opt(2025, 1, 1).expect("a date"),
        )
        .expect("the template renders");
    engine.encode_prompt(&rendered).expect("the prompt encodes")
}

/// Greedy output with drafts of every length against plain decoding, on `prompts`; returns the
/// drafts verified and accepted on each prompt, over all lengths.
fn check_greedy(
    name: &str,
    engine: &mut Engine,
    prompts: &[Vec<u32>],
    n: usize,
) -> Vec<(usize, usize)> {
    let mut counts = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let (mut drafted, mut accepted) = (0, 0);
        let (plain, plain_cached) = run(engine, prompt, &params(0.0, n, Speculative::Off));
        assert_eq!(plain.usage.drafted_tokens, 0);
        for mode in [
            Speculative::Fixed(1),
            Speculative::Fixed(4),
            Speculative::Fixed(16),
            Speculative::Adaptive,
        ] {
            let (out, cached) = run(engine, prompt, &params(0.0, n, mode));
            assert_eq!(out.ids, plain.ids, "{name}, prompt {i}, {mode:?}");
            assert_eq!(out.text, plain.text, "{name}, prompt {i}, {mode:?}");
            assert_eq!(
                cached, plain_cached,
                "{name}, prompt {i}, {mode:?}: the cache"
            );
            assert!(out.usage.accepted_drafts <= out.usage.drafted_tokens);
            drafted += out.usage.drafted_tokens;
            accepted += out.usage.accepted_drafts;
        }
        eprintln!("{name}, prompt {i}: {accepted}/{drafted} drafts accepted");
        counts.push((drafted, accepted));
    }
    counts
}

/// The reference models' own greedy prompts, where their continuations repeat.
fn reference_prompts(name: &str) -> Vec<Vec<u32>> {
    let json = reference_dir().join(format!("{name}.llamacpp.json"));
    let reference = Reference::load(&json);
    reference
        .greedy
        .iter()
        .map(|g| g.prompt_tokens.clone())
        .collect()
}

/// The Candle graph on Candle's CPU device verifies drafts with the native kernels' per-row
/// rounding too, so there drafting changes nothing either (the app's default is adaptive
/// drafting, whose draft lengths follow timings: without it output would vary run to run).
#[test]
fn greedy_output_is_the_plain_output_on_the_candle_graph_too() {
    let name = "tiny-smollm3-q4km";
    let path = reference_dir().join(format!("{name}.gguf"));
    let mut engine = load_on(&path, KvType::F32, BackendKind::Candle);
    let mut prompts = reference_prompts(name);
    prompts.push(copy_prompt(&engine));
    let counts = check_greedy("candle, tiny-smollm3-q4km", &mut engine, &prompts, 48);
    assert!(
        counts.iter().map(|c| c.0).sum::<usize>() > 0,
        "no draft was verified"
    );
}

#[test]
fn greedy_output_is_the_plain_output_on_every_reference_model() {
    for name in ["tiny-smollm3-f32", "tiny-smollm3-q4km"] {
        let mut engine = load(&reference_dir().join(format!("{name}.gguf")), KvType::F32);
        let mut prompts = reference_prompts(name);
        prompts.push(copy_prompt(&engine));
        let counts = check_greedy(name, &mut engine, &prompts, 48);
        let drafted: usize = counts.iter().map(|c| c.0).sum();
        assert!(drafted > 0, "{name}: no draft was verified");
    }
    for kv_type in [KvType::F32, KvType::F16] {
        let mut engine = load(&smollm2_path(), kv_type);
        let mut prompts = reference_prompts("SmolLM2-135M-Instruct.Q4_1");
        prompts.push(copy_prompt(&engine));
        let name = format!("SmolLM2, {kv_type} cache");
        let counts = check_greedy(&name, &mut engine, &prompts, 64);
        // Copying the paragraph accepts many drafts (116/276 over the four lengths, where
        // 16-token drafts overshoot): the path that skips passes ran.
        let (drafted, accepted) = *counts.last().expect("the copy prompt");
        assert!(accepted * 3 > drafted, "{name}: {accepted}/{drafted}");
    }
}

#[test]
fn sampled_output_does_not_depend_on_how_many_drafts_a_pass_verifies() {
    let mut engine = load(&smollm2_path(), KvType::F32);
    let prompt = copy_prompt(&engine);
    let (base, base_cached) = run(
        &mut engine,
        &prompt,
        &params(0.8, 64, Speculative::Fixed(0)),
    );
    for mode in [
        Speculative::Fixed(1),
        Speculative::Fixed(6),
        Speculative::Adaptive,
    ] {
        let (out, cached) = run(&mut engine, &prompt, &params(0.8, 64, mode));
        assert_eq!(out.ids, base.ids, "{mode:?}");
        assert_eq!(cached, base_cached, "{mode:?}: the cache");
        if mode == Speculative::Fixed(6) {
            assert!(out.usage.accepted_drafts > 0, "{mode:?}: {:?}", out.usage);
        }
    }
}

#[test]
fn a_conversation_continues_from_the_cache_drafting_leaves() {
    let mut engine = load(&smollm2_path(), KvType::F32);
    let prompt = copy_prompt(&engine);
    let mut outputs = Vec::new();
    for mode in [Speculative::Off, Speculative::Fixed(8)] {
        let (first, _) = run(&mut engine, &prompt, &params(0.0, 40, mode));
        // The next turn's prompt extends what was generated: all but its last token is reused.
        let mut next: Vec<u32> = prompt.iter().chain(&first.ids).copied().collect();
        next.extend(engine.tokenizer().encode(" Now say it again.", false));
        let second = engine
            .generate(&next, &params(0.0, 24, mode), &|| false, &mut |_| {})
            .expect("the second turn");
        assert_eq!(
            second.usage.cached_tokens,
            prompt.len() + first.ids.len() - 1,
            "{mode:?}"
        );
        outputs.push((first.ids, second.ids));
    }
    assert_eq!(outputs[0], outputs[1]);
}

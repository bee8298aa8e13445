//! The engine against llama.cpp: logits and greedy continuations from `shared/reference/`.
//!
//! The reference ran llama.cpp on the CPU (x86, AVX-512) with an F32 KV cache and plain
//! attention. On the F32 model the engine must agree to ~1e-3. On the quantized models the
//! issue's bars are statistical, but the kernels compute what llama.cpp computes there, so the
//! logits agree to the reference's printed precision.

mod refdata;

use engine::{
    BackendKind, DeviceSpec, Engine, EngineOptions, GenerationParams, KvType, Placement,
    SamplingParams,
};
use refdata::{reference_dir, smollm2_path, Reference};

/// The model with an F32 KV cache: the exact mode, as the reference ran llama.cpp.
fn load(path: &std::path::Path) -> Engine {
    load_with(path, KvType::F32)
}

fn load_with(path: &std::path::Path, kv_type: KvType) -> Engine {
    load_opts(path, kv_type, BackendKind::Native)
}

/// The model on `backend` on the CPU, with an F32 KV cache.
fn load_on(path: &std::path::Path, backend: BackendKind) -> Engine {
    load_opts(path, KvType::F32, backend)
}

fn load_opts(path: &std::path::Path, kv_type: KvType, backend: BackendKind) -> Engine {
    engine::threads::init(0);
    let opts = EngineOptions {
        context_len: 2048,
        kv_type,
        placement: Placement::new(DeviceSpec::Cpu, Some(backend)).expect("a CPU backend"),
        ..EngineOptions::default()
    };
    Engine::load(path, &opts).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Differences between the engine's logits and the reference's top-5, and argmax agreement on
/// positions whose reference top-1/top-2 margin is at least `margin`.
struct Comparison {
    diffs: Vec<f32>,
    argmax_checked: usize,
    argmax_equal: usize,
    mismatches: Vec<String>,
}

fn compare(engine: &mut Engine, reference: &Reference, margin: f32) -> Comparison {
    let mut c = Comparison {
        diffs: Vec::new(),
        argmax_checked: 0,
        argmax_equal: 0,
        mismatches: Vec::new(),
    };
    for seq in &reference.sequences {
        let rows = engine.logits(&seq.tokens).expect("forward pass");
        assert_eq!(
            rows.len(),
            seq.positions.len(),
            "{}: one row per position",
            seq.name
        );
        for (i, (row, pos)) in rows.iter().zip(&seq.positions).enumerate() {
            for &(id, logit) in pos.top.iter().take(5) {
                c.diffs.push((row[id as usize] - logit).abs());
            }
            let ref_margin = pos.top[0].1 - pos.top[1].1;
            if ref_margin >= margin {
                c.argmax_checked += 1;
                let ours = argmax(row);
                if ours == pos.argmax {
                    c.argmax_equal += 1;
                } else {
                    c.mismatches.push(format!(
                        "{}[{i}]: ours {ours}, llama.cpp {} (margin {ref_margin:.3})",
                        seq.name, pos.argmax
                    ));
                }
            }
        }
    }
    c
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

fn percentile(xs: &[f32], p: f64) -> f32 {
    let mut v = xs.to_vec();
    v.sort_by(f32::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn greedy(engine: &mut Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    engine.reset();
    let params = GenerationParams {
        max_tokens: n,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::for_family(engine::ModelFamily::Llama)
        },
        stop_strings: Vec::new(),
        ignore_eos: true,
        start_in_thinking: false,
        max_thinking_tokens: None,
        speculative: engine::Speculative::Off,
    };
    engine
        .generate(prompt, &params, &|| false, &mut |_| {})
        .expect("generation")
        .ids
}

fn check_f32(backend: BackendKind) {
    let reference = Reference::load(&reference_dir().join("tiny-smollm3-f32.llamacpp.json"));
    let mut engine = load_on(&reference_dir().join("tiny-smollm3-f32.gguf"), backend);
    let c = compare(&mut engine, &reference, 0.01);
    let max = c.diffs.iter().copied().fold(0f32, f32::max);
    eprintln!(
        "f32 ({backend}): max top-5 diff {max:.2e}, argmax {}/{}",
        c.argmax_equal, c.argmax_checked
    );
    assert!(max <= 1e-3, "top-5 logits differ by up to {max}");
    assert!(
        c.mismatches.is_empty(),
        "argmax mismatches: {:?}",
        c.mismatches
    );
    for g in &reference.greedy {
        let ours = greedy(&mut engine, &g.prompt_tokens, g.generated.len());
        assert_eq!(ours, g.generated, "greedy continuation '{}'", g.name);
    }
}

#[test]
fn f32_model_matches_llama_cpp_exactly() {
    check_f32(BackendKind::Native);
}

/// The Candle graph on Candle's CPU device: the architecture (NoPE, GQA, RoPE, norms, tied
/// embeddings) to the F32 model's ~1e-3, wherever Candle runs it.
#[test]
fn candle_f32_model_matches_llama_cpp() {
    check_f32(BackendKind::Candle);
}

/// The bars for quantized models: argmax >= 98% (margin >= 0.1), median <= 0.25 and
/// p90 <= 0.75. The kernels reproduce llama.cpp's x86 arithmetic (its activation quantization,
/// accumulation order and per-batch-size kernel choice), so the logits agree to the printed
/// precision; the last check keeps it that way.
fn check_quantized(reference: &Reference, engine: &mut Engine, label: &str) {
    let p90 = check_bars(reference, engine, label);
    assert!(
        p90 <= 1e-3,
        "{label}: logits no longer match llama.cpp's arithmetic (p90 {p90})"
    );
}

/// The bars (argmax, median, p90) against the reference; returns the p90.
fn check_bars(reference: &Reference, engine: &mut Engine, label: &str) -> f32 {
    let c = compare(engine, reference, 0.1);
    let agree = c.argmax_equal as f64 / c.argmax_checked.max(1) as f64;
    let (median, p90) = (percentile(&c.diffs, 0.5), percentile(&c.diffs, 0.9));
    eprintln!(
        "{label}: argmax {}/{} ({:.1}%), top-5 |diff| median {median:.3} p90 {p90:.3}",
        c.argmax_equal,
        c.argmax_checked,
        agree * 100.0
    );
    assert!(
        agree >= 0.98,
        "{label}: argmax agreement {agree:.3} < 0.98: {:?}",
        c.mismatches
    );
    assert!(median <= 0.25, "{label}: median top-5 difference {median}");
    assert!(
        p90 <= 0.75,
        "{label}: 90th percentile top-5 difference {p90}"
    );
    p90
}

/// An F16 cache rounds keys and values to halves: the logits move a little from the exact ones,
/// but stay within the quantized models' bars against llama.cpp (which ran with an F32 cache)
/// and close to the engine's own F32-cache logits; greedy generation still works.
#[test]
fn an_f16_cache_stays_close_to_the_f32_one() {
    let reference =
        Reference::load(&reference_dir().join("SmolLM2-135M-Instruct.Q4_1.llamacpp.json"));
    let mut exact = load(&smollm2_path());
    let mut half = load_with(&smollm2_path(), KvType::F16);
    assert_eq!(half.info().kv_type, KvType::F16);
    check_bars(&reference, &mut half, "smollm2 q4_1, F16 cache");
    // The F32 cache's top-5 logits at every position, as the reference comparisons look.
    let (mut diffs, mut argmax_equal, mut rows) = (Vec::new(), 0, 0);
    for seq in &reference.sequences {
        let a = exact.logits(&seq.tokens).expect("F32 cache");
        let b = half.logits(&seq.tokens).expect("F16 cache");
        for (x, y) in a.iter().zip(&b) {
            let mut top: Vec<usize> = (0..x.len()).collect();
            top.select_nth_unstable_by(4, |&i, &j| x[j].total_cmp(&x[i]));
            diffs.extend(top[..5].iter().map(|&i| (x[i] - y[i]).abs()));
            argmax_equal += usize::from(argmax(x) == argmax(y));
            rows += 1;
        }
    }
    let (median, p90) = (percentile(&diffs, 0.5), percentile(&diffs, 0.9));
    eprintln!(
        "F16 vs F32 cache: top-5 |diff| median {median:.3} p90 {p90:.3}, argmax {argmax_equal}/{rows}"
    );
    assert!(p90 > 0.0, "the F16 cache rounds nothing: is it in use?");
    assert!(median <= 0.25 && p90 <= 0.75, "median {median}, p90 {p90}");
    assert!(
        argmax_equal * 100 >= rows * 98,
        "argmax {argmax_equal}/{rows}"
    );
    assert_eq!(
        half.cache_bytes() * 2,
        exact.cache_bytes(),
        "half the memory"
    );
    let g = &reference.greedy[0];
    let ours = greedy(&mut half, &g.prompt_tokens, g.generated.len());
    let same = ours
        .iter()
        .zip(&g.generated)
        .take_while(|(a, b)| a == b)
        .count();
    // A continuation runs into a near-tie within a few tokens, where the rounding may pick the
    // other token (6 of 32 agree here); what came before must agree.
    assert_eq!(ours.len(), g.generated.len(), "greedy with an F16 cache");
    assert!(
        same >= 4,
        "greedy with an F16 cache: {same} tokens as llama.cpp's"
    );
}

#[test]
fn q4km_smollm3_matches_llama_cpp() {
    let reference = Reference::load(&reference_dir().join("tiny-smollm3-q4km.llamacpp.json"));
    let mut engine = load(&reference_dir().join("tiny-smollm3-q4km.gguf"));
    check_quantized(&reference, &mut engine, "tiny smollm3 q4_k_m");
}

#[test]
fn smollm2_q4_1_matches_llama_cpp() {
    let reference =
        Reference::load(&reference_dir().join("SmolLM2-135M-Instruct.Q4_1.llamacpp.json"));
    let mut engine = load(&smollm2_path());
    check_quantized(&reference, &mut engine, "smollm2 q4_1");
    for g in &reference.greedy {
        let ours = greedy(&mut engine, &g.prompt_tokens, g.generated.len());
        let same = ours
            .iter()
            .zip(&g.generated)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "smollm2 greedy '{}': first {same} of {} tokens equal",
            g.name,
            g.generated.len()
        );
        assert!(
            same >= 16,
            "greedy continuation '{}': only {same} tokens agree",
            g.name
        );
    }
}

/// The Candle graph on Candle's CPU device runs the native backend's matmuls, RoPE, SwiGLU and
/// attention as Candle ops (doc/engine.md, "Backends"), so it meets the bars with llama.cpp's
/// own arithmetic, like the native backend. With candle-nn's RoPE, SiLU, softmax and gemm-order
/// attention instead it reached 97.1% argmax agreement here (median 0.070, p90 0.192).
#[test]
fn candle_q4km_smollm3_matches_llama_cpp() {
    let reference = Reference::load(&reference_dir().join("tiny-smollm3-q4km.llamacpp.json"));
    let mut engine = load_on(
        &reference_dir().join("tiny-smollm3-q4km.gguf"),
        BackendKind::Candle,
    );
    check_quantized(&reference, &mut engine, "candle tiny smollm3 q4_k_m");
}

#[test]
fn candle_smollm2_q4_1_matches_llama_cpp() {
    let reference =
        Reference::load(&reference_dir().join("SmolLM2-135M-Instruct.Q4_1.llamacpp.json"));
    let mut engine = load_on(&smollm2_path(), BackendKind::Candle);
    check_quantized(&reference, &mut engine, "candle smollm2 q4_1");
}

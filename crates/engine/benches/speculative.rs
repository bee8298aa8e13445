//! Speculative decoding against plain decoding on fixed tasks: decode tokens per second with and
//! without n-gram drafts, alternating the two in the same run.
//!
//! `cargo bench -p smollm3-engine --bench speculative -- MODEL.gguf [--gen N] [--reps N] [--fixed K]`
//! (`make bench-speculative MODEL=...`). Greedy decoding, so both runs produce the same tokens
//! (checked); each line prints the median tokens/s of both, the median and range of the ratios of
//! same-pair runs (each pair runs back to back, which one first alternating, so both see the same
//! neighbours on a shared machine) and the drafts accepted.

use std::path::PathBuf;

use engine::{
    ChatMessage, ChatOptions, Engine, EngineOptions, GenerationOutput, GenerationParams,
    SamplingParams, Speculative,
};

const PARAGRAPH: &str =
    "The old lighthouse stood at the edge of the cliff for more than a hundred \
years. Every night its keeper climbed the spiral stairs, trimmed the wick and polished the great \
lens until it shone. Ships passing in the dark relied on its steady beam to find their way around \
the rocks. When the keeper grew old, the village decided to replace the lamp with an electric \
light, but the people still gathered on the cliff each summer to remember the man who had kept \
the light burning through every storm.";

const CODE: &str = "def total_price(items, tax_rate):
    total = 0
    for item in items:
        if item.quantity > 0:
            total = total + item.price * item.quantity
    total = total + total * tax_rate
    return round(total, 2)


def cheapest(items):
    best = None
    for item in items:
        if best is None or item.price < best.price:
            best = item
    return best
";

/// (name, user message): the issue's tasks.
fn tasks() -> Vec<(&'static str, String)> {
    vec![
        (
            "rewrite with small edits",
            format!(
                "Rewrite this paragraph, replacing \"lighthouse\" with \"tower\" and keeping \
                 everything else exactly the same:\n\n{PARAGRAPH}"
            ),
        ),
        (
            "refactor code",
            format!(
                "Rename the function total_price to compute_total and the variable total to \
                 amount in this code. Reply with the whole code:\n\n```python\n{CODE}```"
            ),
        ),
        (
            "summarise a text",
            format!("Summarise this text in a few sentences:\n\n{PARAGRAPH}"),
        ),
        (
            "free-form chat",
            "Tell me about the history of tea and how it spread around the world.".into(),
        ),
    ]
}

struct Args {
    model: PathBuf,
    gen: usize,
    reps: usize,
    fixed: Option<usize>,
}

fn args() -> Option<Args> {
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut a = Args {
        model: PathBuf::new(),
        gen: 128,
        reps: 3,
        fixed: None,
    };
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--gen" => a.gen = num("--gen"),
            "--reps" => a.reps = num("--reps"),
            "--fixed" => a.fixed = Some(num("--fixed")),
            path => a.model = PathBuf::from(path),
        }
    }
    // `cargo test --all-targets` runs this bench without arguments: say how to use it and
    // measure nothing, as the kernels bench does.
    if a.model.as_os_str().is_empty() {
        eprintln!("usage: speculative MODEL.gguf [--gen N] [--reps N] [--fixed K]");
        return None;
    }
    assert!(a.model.is_file(), "{}: no such file", a.model.display());
    Some(a)
}

fn run(
    engine: &mut Engine,
    prompt: &[u32],
    gen: usize,
    speculative: Speculative,
) -> GenerationOutput {
    engine.reset();
    let params = GenerationParams {
        max_tokens: gen,
        sampling: SamplingParams {
            temperature: 0.0,
            ..engine.default_sampling()
        },
        stop_strings: Vec::new(),
        ignore_eos: false,
        start_in_thinking: false,
        max_thinking_tokens: None,
        speculative,
    };
    engine
        .generate(prompt, &params, &|| false, &mut |_| {})
        .expect("generation")
}

/// The middle value; for an even count, the mean of the two middle ones.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n % 2 {
        1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    let Some(a) = args() else {
        return;
    };
    engine::threads::init(0);
    let mut engine = Engine::load(&a.model, &EngineOptions::default()).expect("the model loads");
    let on = a.fixed.map_or(Speculative::Adaptive, Speculative::Fixed);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{} | {} threads | {:?} | {} tokens, {} runs each, greedy | load average {}",
        a.model.display(),
        engine::threads::current(),
        on,
        a.gen,
        a.reps,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "| task | tokens | plain tok/s | drafting tok/s | ratio (median of pairs) | pair ratios | drafts accepted |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, ask) in tasks() {
        let rendered = engine
            .render_chat(
                &[ChatMessage::new("user", ask)],
                &ChatOptions::default(),
                chrono::Local::now().date_naive(),
            )
            .expect("the template renders");
        let prompt = engine.encode_prompt(&rendered).expect("the prompt encodes");
        let (mut plain, mut drafted, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut last = None;
        // In pairs, back to back, so both see the same neighbours on a shared machine; which
        // goes first alternates, so neither always runs on a cache the other warmed.
        for rep in 0..a.reps {
            let (p, d) = match rep % 2 {
                0 => {
                    let p = run(&mut engine, &prompt, a.gen, Speculative::Off);
                    (p, run(&mut engine, &prompt, a.gen, on))
                }
                _ => {
                    let d = run(&mut engine, &prompt, a.gen, on);
                    (run(&mut engine, &prompt, a.gen, Speculative::Off), d)
                }
            };
            assert_eq!(p.ids, d.ids, "{name}: drafting changed the greedy output");
            plain.push(p.timings.decode_tok_s);
            drafted.push(d.timings.decode_tok_s);
            ratios.push(d.timings.decode_tok_s / p.timings.decode_tok_s);
            last = Some(d);
        }
        let d = last.expect("one run");
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.2}x | {lo:.2}-{hi:.2}x | {}/{} |",
            d.ids.len(),
            median(plain),
            median(drafted),
            median(ratios),
            d.usage.accepted_drafts,
            d.usage.drafted_tokens
        );
    }
}

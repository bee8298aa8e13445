//! This engine next to llama.cpp's `llama-bench` on the same GGUF, in one run:
//! `cargo bench -p smollm3-engine --bench compare -- MODEL.gguf [--threads 2] [--reps 3]
//! [--prompts 128,512] [--gen 32] [--pairs 5] [--neighbour none|cpu|memory] [--pairs-only]`
//! (`make bench-compare MODEL=...`).
//!
//! Prefill (`ppN`: N tokens from an empty cache) and decode (`tgN`: N tokens one at a time) in
//! tokens per second, medians over the repetitions as llama-bench reports them; load time and
//! peak RSS. llama.cpp's tools are found through `LLAMA_BIN` or `~/.cache/llama-ref/bin` (see
//! `../shared/tools/llama-cpp-reference.sh`); without them only this engine is measured.
//!
//! Then the decode again as alternating pairs: `tgN` once by each engine back to back (which
//! goes first alternating), `--pairs` times, each pair's ratio and their median. A shared host's
//! memory bandwidth moves from minute to minute; a pair sees the same minute, so its ratio is
//! the comparison and the tokens/s are only its weather. With `--neighbour KIND` every quiet
//! pair is followed by one with that process running beside both engines (`memory`: a stream
//! through a buffer far larger than the caches), so quiet and contended pairs share the hour.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use engine::bench::{
    context_for, decode_tok_s, median, peak_rss_mib, prefill_tok_s, second_turn, switch_back,
    timed_loads, Neighbour, SecondTurn, SwitchBack, TokenSource, TURN_TOKENS,
};
use engine::{Engine, EngineOptions};

struct Args {
    model: PathBuf,
    threads: usize,
    reps: usize,
    prompts: Vec<usize>,
    gen: usize,
    /// Alternating decode pairs (each condition); 0 for none.
    pairs: usize,
    /// The process beside both engines in every second pair.
    neighbour: Neighbour,
    /// Only the pairs: no prefill, load or second-turn measurements.
    pairs_only: bool,
}

fn parse_args() -> Option<Args> {
    let mut args = Args {
        model: PathBuf::new(),
        threads: 2,
        reps: 3,
        prompts: vec![128, 512],
        gen: 32,
        pairs: 5,
        neighbour: Neighbour::None,
        pairs_only: false,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = it.next() {
        match a.as_str() {
            "--threads" => args.threads = it.next()?.parse().ok()?,
            "--reps" => args.reps = it.next()?.parse().ok()?,
            "--gen" => args.gen = it.next()?.parse().ok()?,
            "--pairs" => args.pairs = it.next()?.parse().ok()?,
            "--neighbour" => args.neighbour = it.next()?.parse().ok()?,
            "--pairs-only" => args.pairs_only = true,
            "--prompts" => {
                args.prompts = it
                    .next()?
                    .split(',')
                    .map(|p| p.parse().ok())
                    .collect::<Option<_>>()?
            }
            _ if a.starts_with("--") => return None,
            _ => args.model = PathBuf::from(a),
        }
    }
    (!args.model.as_os_str().is_empty()).then_some(args)
}

struct Measured {
    load_s: Option<f64>,
    rss_mib: Option<f64>,
    /// (test name, tokens per second)
    tests: Vec<(String, f64)>,
    /// History length and the second turn after it (ours only).
    turn: Option<(usize, SecondTurn)>,
    /// The second turn after another conversation ran in between (ours only).
    switch: Option<SwitchBack>,
}

/// Loads the model as the measurements need it: `reps` times for the load time, once for only the
/// pairs. Returns the engine and the median load time.
fn load_engine(a: &Args) -> (Engine, f64) {
    engine::threads::init(a.threads);
    let context = context_for(a.prompts.iter().copied().chain([a.gen]).max().unwrap_or(1));
    let opts = EngineOptions {
        context_len: context,
        // llama-bench's default cache type is F16 too.
        ..EngineOptions::default()
    };
    let reps = if a.pairs_only { 1 } else { a.reps };
    timed_loads(reps, || Engine::load(&a.model, &opts))
        .unwrap_or_else(|e| panic!("loading {}: {e}", a.model.display()))
}

fn ours(a: &Args, engine: &mut Engine, load_s: f64, source: &mut TokenSource) -> Measured {
    let engine = &mut *engine;
    let mut tests = Vec::new();
    for &p in &a.prompts {
        let runs = (0..a.reps)
            .map(|_| prefill_tok_s(engine, &source.take(p)).expect("prefill"))
            .collect();
        tests.push((format!("pp{p}"), median(runs)));
    }
    if a.gen > 0 {
        let runs = (0..a.reps)
            .map(|_| decode_tok_s(engine, &source.take(a.gen)).expect("decode"))
            .collect();
        tests.push((format!("tg{}", a.gen), median(runs)));
    }
    // Before the second turn, whose cache is a few positions longer than any llama-bench test.
    let rss_mib = peak_rss_mib("self");
    let history = a.prompts.iter().copied().max().unwrap_or(0);
    let turn = (history > 0).then(|| {
        let (h, n) = (source.take(history), source.take(TURN_TOKENS));
        (history, second_turn(engine, &h, &n).expect("second turn"))
    });
    let switch = (history > 0).then(|| {
        let (a, b) = (source.take(history), source.take(history));
        let n = source.take(TURN_TOKENS);
        switch_back(engine, &a, &b, &n).expect("switch back")
    });
    Measured {
        load_s: Some(load_s),
        rss_mib,
        tests,
        turn,
        switch,
    }
}

fn llama_bench() -> Option<PathBuf> {
    let dir = std::env::var_os("LLAMA_BIN")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/llama-ref/bin")))?;
    let bin = dir.join("llama-bench");
    bin.is_file().then_some(bin)
}

/// `llama-bench` on the model: `prompts` (ppN tests), then `gen` (a tgN test, none for 0), each
/// `reps` times.
fn llama(bin: &Path, a: &Args, prompts: &[usize], gen: usize, reps: usize) -> Option<Measured> {
    let prompts: Vec<String> = prompts.iter().map(|p| p.to_string()).collect();
    let prompts = if prompts.is_empty() {
        "0".to_string()
    } else {
        prompts.join(",")
    };
    let mut child = Command::new(bin)
        .arg("-m")
        .arg(&a.model)
        .args(["-t", &a.threads.to_string(), "-r", &reps.to_string()])
        .args(["-p", &prompts, "-n", &gen.to_string(), "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // Poll the child's peak RSS while it runs (VmHWM only grows).
    let pid = child.id().to_string();
    let mut rss = None;
    while child.try_wait().ok()?.is_none() {
        rss = peak_rss_mib(&pid).or(rss);
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().ok()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let tests = json
        .as_array()?
        .iter()
        .filter_map(|r| {
            let (p, n) = (r["n_prompt"].as_u64()?, r["n_gen"].as_u64()?);
            let name = if n == 0 {
                format!("pp{p}")
            } else {
                format!("tg{n}")
            };
            // llama-bench's per-run speeds; take the median like ours.
            let runs: Vec<f64> = r["samples_ts"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_f64())
                .collect();
            Some((name, median(runs)))
        })
        .collect();
    Some(Measured {
        load_s: None,
        rss_mib: rss,
        tests,
        turn: None,
        switch: None,
    })
}

/// The decode pairs of one condition: (ours, llama.cpp) tokens per second, in order.
struct Pairs {
    neighbour: Neighbour,
    runs: Vec<(f64, f64)>,
}

/// The 1-minute load average, as the machine's other work at the time of a pair.
fn load_1min() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

/// `a.pairs` rounds of `tgN` by each engine back to back, the order alternating; in each round
/// one pair quiet and, with a neighbour, one pair beside it.
fn decode_pairs(a: &Args, engine: &mut Engine, source: &mut TokenSource, bin: &Path) -> Vec<Pairs> {
    let mut conditions = vec![Pairs {
        neighbour: Neighbour::None,
        runs: Vec::new(),
    }];
    if a.neighbour != Neighbour::None {
        conditions.push(Pairs {
            neighbour: a.neighbour,
            runs: Vec::new(),
        });
    }
    // As llama-bench's warm-up run: the first decode after loading pays for first touches.
    decode_tok_s(engine, &source.take(a.gen.min(8))).expect("decode");
    for round in 0..a.pairs {
        for c in conditions.iter_mut() {
            let neighbour = c.neighbour.start().expect("the neighbour starts");
            if neighbour.is_some() {
                // Past its start-up (allocating and first touching the buffer) before we measure.
                std::thread::sleep(Duration::from_millis(300));
            }
            let theirs = || {
                llama(bin, a, &[], a.gen, 1)
                    .and_then(|m| m.tests.first().map(|t| t.1))
                    .expect("llama-bench runs and reports its tg test")
            };
            let mut ours = || decode_tok_s(engine, &source.take(a.gen)).expect("decode");
            let (o, t) = if round % 2 == 0 {
                let o = ours();
                (o, theirs())
            } else {
                let t = theirs();
                (ours(), t)
            };
            drop(neighbour);
            println!(
                "pair {round} neighbour {:<6} smollm3 {o:>7.2}  llama.cpp {t:>7.2}  ratio {:.2}x  \
                 ({} first, load {})",
                c.neighbour.name(),
                o / t,
                if round % 2 == 0 {
                    "smollm3"
                } else {
                    "llama.cpp"
                },
                load_1min()
            );
            c.runs.push((o, t));
        }
    }
    conditions
}

fn main() {
    Neighbour::serve_if_asked();
    let Some(args) = parse_args() else {
        eprintln!(
            "usage: cargo bench --bench compare -- MODEL.gguf [--threads N] [--reps N] \
             [--prompts 128,512] [--gen 32] [--pairs N] [--neighbour none|cpu|memory] [--pairs-only]"
        );
        return;
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{} ({} threads, {} reps; load average {})",
        args.model.display(),
        args.threads,
        args.reps,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let (mut engine, load_s) = load_engine(&args);
    let mut source = TokenSource::new(engine.tokenizer().vocab_size());
    let bin = llama_bench();
    if bin.is_none() {
        println!("llama-bench not found (set LLAMA_BIN): this engine only");
    }
    if !args.pairs_only {
        let ours = ours(&args, &mut engine, load_s, &mut source);
        let theirs = bin
            .as_ref()
            .and_then(|b| llama(b, &args, &args.prompts, args.gen, args.reps));
        print_table(ours, theirs);
    }
    let Some(bin) = bin.filter(|_| args.pairs > 0 && args.gen > 0) else {
        return;
    };
    println!(
        "decode tg{} in alternating pairs ({} threads each, neighbour {}):",
        args.gen,
        args.threads,
        args.neighbour.name()
    );
    for c in decode_pairs(&args, &mut engine, &mut source, &bin) {
        let ratios: Vec<f64> = c.runs.iter().map(|(o, t)| o / t).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        println!(
            "tg{} neighbour {:<6} median smollm3 {:.2}  llama.cpp {:.2}  ratio median {:.2}x \
             (pairs {lo:.2}x-{hi:.2}x, {} pairs)",
            args.gen,
            c.neighbour.name(),
            median(c.runs.iter().map(|r| r.0).collect()),
            median(c.runs.iter().map(|r| r.1).collect()),
            median(ratios),
            c.runs.len()
        );
    }
}

/// The llama-bench-style table: each test's tokens per second by both engines, load and RSS,
/// then our second-turn and switch-back latencies.
fn print_table(ours: Measured, theirs: Option<Measured>) {
    println!(
        "{:<10} {:>12} {:>12} {:>8}",
        "test", "smollm3", "llama.cpp", "ratio"
    );
    for (name, v) in &ours.tests {
        let other = theirs
            .as_ref()
            .and_then(|t| t.tests.iter().find(|(n, _)| n == name))
            .map(|(_, v)| *v);
        match other {
            Some(o) => println!("{name:<10} {v:>12.2} {o:>12.2} {:>7.2}x", v / o),
            None => println!("{name:<10} {v:>12.2} {:>12} {:>8}", "-", "-"),
        }
    }
    let fmt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.2} {unit}"));
    println!(
        "{:<10} {:>12} {:>12}",
        "load",
        fmt(ours.load_s, "s"),
        fmt(theirs.as_ref().and_then(|t| t.load_s), "s")
    );
    println!(
        "{:<10} {:>12} {:>12}",
        "peak RSS",
        fmt(ours.rss_mib, "MiB"),
        fmt(theirs.as_ref().and_then(|t| t.rss_mib), "MiB")
    );
    if let Some((history, t)) = ours.turn {
        println!(
            "turn 2: {TURN_TOKENS} new tokens after {history} ({} cached): first token in {:.1} ms, \
             {:.1} ms from an empty cache",
            t.cached_tokens, t.ttft_ms, t.cold_ttft_ms
        );
        if let Some(s) = ours.switch {
            println!(
                "switch back: the same turn after another chat of {history} tokens ran: first \
                 token in {:.1} ms with its cache kept ({} cached), {:.1} ms without ({} cached)",
                s.kept_ttft_ms, s.kept_cached_tokens, s.cold_ttft_ms, s.cold_cached_tokens
            );
        }
    }
}

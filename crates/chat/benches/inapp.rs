//! The app's speed next to its engine's: the same model, prompts and sampling settings, once
//! through `engine::Engine::generate` directly and once through the chat core's real path (a
//! stored message, the worker's queue, the stream thread, the frame protocol, the SQLite store,
//! and a consumer of the frames, as the desktop shell is).
//!
//! `cargo bench -p smollm3-chat --bench inapp -- [--model PATH] [--gen N] [--reps N]
//! [--threads N] [--kv-cache f16|f32] [--neighbour none|cpu|memory]`. Each repetition sends a new prompt (so neither side reuses
//! a whole cached prompt) to both, alternating which goes first; the table gives medians.
//! Time to first token is from the request (the engine's call, the app's `send`) to the first
//! token (the engine's callback, the consumer's first frame with text); decode is tokens per
//! second after the first, over the same span for both: the engine's callbacks, the
//! consumer's frames. `--neighbour` runs a competing process for the whole measurement, as a
//! user's other programs (or the app's own webview) would: `cpu` keeps one core busy, `memory`
//! streams through a buffer far larger than the caches.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chat::{AppEvent, AppPaths, ChatApp, EventKind, ModelState, SendOutcome, Settings};
use engine::bench::Neighbour;
use engine::{ChatMessage, ChatOptions, Engine, EngineOptions, GenerationEvent, GenerationParams};

struct Args {
    model: PathBuf,
    gen: usize,
    reps: usize,
    threads: usize,
    kv_cache: engine::KvType,
    neighbour: Neighbour,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        gen: 128,
        reps: 5,
        threads: 0,
        kv_cache: engine::KvType::default(),
        neighbour: Neighbour::None,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--model" => a.model = PathBuf::from(value()?),
            "--gen" => a.gen = value()?.parse().map_err(|e| bad(&e))?,
            "--reps" => a.reps = value()?.parse().map_err(|e| bad(&e))?,
            "--threads" => a.threads = value()?.parse().map_err(|e| bad(&e))?,
            "--kv-cache" => a.kv_cache = value()?.parse().map_err(|e: String| bad(&e))?,
            "--neighbour" => a.neighbour = value()?.parse().map_err(|e: String| bad(&e))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// One answer's figures.
#[derive(Clone, Copy, Debug)]
struct Run {
    ttft_ms: f64,
    /// The engine's own time to first token as the worker measured it (the app's path only):
    /// the rest of `ttft_ms` is the chat core's (storing, queueing, the stream thread).
    worker_ttft_ms: f64,
    /// The engine's prefill of the prompt's uncached tokens (the worker's, on the app's path).
    prefill_ms: f64,
    decode_tok_s: f64,
    tokens: usize,
    prompt_tokens: usize,
    /// Tokens drafted by speculative decoding (the app's path only; off on both sides).
    drafted: usize,
    /// Prompt tokens found in the KV cache (a prefix shared with the previous prompt).
    cached_tokens: usize,
}

/// Each repetition's prompt: new text every time, answers long enough to measure decoding.
fn prompt(rep: usize) -> String {
    format!(
        "Story number {rep}: write a long story about a lighthouse keeper and a fox. \
         Describe every room of the lighthouse in detail."
    )
}

const SEED: u64 = 7;

/// The engine alone, rendering the conversation as the app's worker does.
fn engine_run(engine: &mut Engine, settings: &Settings, text: &str) -> Run {
    let opts = ChatOptions {
        add_generation_prompt: true,
        enable_thinking: Some(settings.thinking_default),
        ..ChatOptions::default()
    };
    let today = chrono::Local::now().date_naive();
    let rendered = engine
        .render_chat(&[ChatMessage::new("user", text)], &opts, today)
        .expect("the template renders");
    let params = GenerationParams {
        max_tokens: settings.max_tokens,
        sampling: engine::SamplingParams {
            seed: SEED,
            ..engine.default_sampling()
        },
        stop_strings: Vec::new(),
        ignore_eos: false,
        start_in_thinking: false,
        max_thinking_tokens: None,
        speculative: engine::Speculative::Off,
    };
    let start = Instant::now();
    let prompt = engine.encode_prompt(&rendered).expect("the prompt encodes");
    let (mut first, mut last) = (None, start);
    let out = engine
        .generate(&prompt, &params, &|| false, &mut |e| {
            if let GenerationEvent::Token(_) | GenerationEvent::Thinking(_) = e {
                last = Instant::now();
                first.get_or_insert(last);
            }
        })
        .expect("generation");
    let first = first.expect("a token");
    Run {
        ttft_ms: ms(first - start),
        worker_ttft_ms: f64::NAN,
        prefill_ms: out.timings.prefill_ms,
        decode_tok_s: per_s(out.ids.len(), first, last),
        tokens: out.ids.len(),
        prompt_tokens: prompt.len(),
        cached_tokens: out.usage.cached_tokens,
        drafted: 0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Tokens after the first over the span from the first to the last.
fn per_s(tokens: usize, first: Instant, last: Instant) -> f64 {
    let s = (last - first).as_secs_f64();
    if s > 0.0 {
        tokens.saturating_sub(1) as f64 / s
    } else {
        0.0
    }
}

/// The frame consumer: what the shell's bridge receives, with when it arrived.
#[derive(Default)]
struct Consumer {
    events: Mutex<Vec<(Instant, AppEvent)>>,
    changed: Condvar,
}

impl Consumer {
    fn sink(self: &Arc<Self>) -> chat::EventSink {
        let me = self.clone();
        Arc::new(move |e| {
            // The shell serialises every event for the page; so does the consumer.
            if let AppEvent::Stream(s) = &e {
                std::hint::black_box(serde_json::to_string(s).expect("serialises"));
            }
            me.events.lock().unwrap().push((Instant::now(), e));
            me.changed.notify_all();
        })
    }

    fn wait<T>(&self, mut found: impl FnMut(&[(Instant, AppEvent)]) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut events = self.events.lock().unwrap();
        loop {
            if let Some(t) = found(&events) {
                return t;
            }
            assert!(Instant::now() < deadline, "timed out");
            events = self
                .changed
                .wait_timeout(events, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }
}

/// The app: a new chat, the message sent, frames consumed until the answer is complete.
fn app_run(app: &ChatApp, consumer: &Consumer, text: &str) -> Run {
    let chat = app.create_chat().expect("a chat");
    let start = Instant::now();
    let id = match app.send(chat.id, text).expect("sent") {
        SendOutcome::Generating {
            assistant_message_id,
            ..
        } => assistant_message_id,
        other => panic!("{other:?}"),
    };
    let (first, last, stats) = consumer.wait(|events| {
        let mut first = None;
        let mut last = None;
        for (at, e) in events {
            let AppEvent::Stream(s) = e else { continue };
            if s.message_id != id {
                continue;
            }
            match &s.kind {
                EventKind::Token { .. } | EventKind::Thinking { .. } => {
                    first.get_or_insert(*at);
                    last = Some(*at);
                }
                EventKind::Stats { stats } => return Some((first?, last?, stats.clone())),
                _ => {}
            }
        }
        None
    });
    Run {
        ttft_ms: ms(first - start),
        worker_ttft_ms: stats.time_to_first_token_ms,
        prefill_ms: stats.prefill_ms,
        decode_tok_s: per_s(stats.completion_tokens, first, last),
        tokens: stats.completion_tokens,
        prompt_tokens: stats.prompt_tokens,
        cached_tokens: stats.cached_tokens,
        drafted: stats.drafted_tokens,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    Neighbour::serve_if_asked();
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("inapp: {e}");
            std::process::exit(2);
        }
    };
    let threads = engine::threads::init(a.threads);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let paths = AppPaths {
        data_dir: dir.path().join("data"),
        config_dir: dir.path().join("config"),
        models_dir: dir.path().join("models"),
    };
    let settings = Settings {
        model_path: Some(a.model.clone()),
        threads,
        kv_cache: a.kv_cache,
        max_tokens: a.gen,
        seed: Some(SEED),
        // The engine's side decodes plainly, with nothing after the answer: so does the app
        // (speculative decoding has its own benchmark; follow-up suggestions would run on the
        // worker while the engine's side is measured).
        speculative: false,
        follow_ups: chat::FollowUpSettings {
            enabled: false,
            ..Default::default()
        },
        ..Settings::default()
    };
    settings
        .save(&paths.settings_file())
        .expect("settings saved");
    let consumer = Arc::new(Consumer::default());
    let app = ChatApp::open(paths, consumer.sink()).expect("the app opens");
    let state = consumer.wait(|events| {
        events.iter().rev().find_map(|(_, e)| match e {
            AppEvent::ModelState(s @ (ModelState::Ready { .. } | ModelState::Failed { .. })) => {
                Some(s.clone())
            }
            _ => None,
        })
    });
    assert!(matches!(state, ModelState::Ready { .. }), "{state:?}");
    let opts = EngineOptions {
        context_len: settings.context_len,
        kv_type: a.kv_cache,
        ..EngineOptions::default()
    };
    let mut engine = Engine::load(&a.model, &opts).expect("the model loads");

    let neighbour = a.neighbour.start().expect("the neighbour starts");
    let (mut ours, mut apps) = (Vec::new(), Vec::new());
    for rep in 0..a.reps {
        let text = prompt(rep);
        if rep % 2 == 0 {
            ours.push(engine_run(&mut engine, &settings, &text));
            apps.push(app_run(&app, &consumer, &text));
        } else {
            apps.push(app_run(&app, &consumer, &text));
            ours.push(engine_run(&mut engine, &settings, &text));
        }
        eprintln!(
            "rep {rep}: engine {:?}\n       app    {:?}",
            ours[rep], apps[rep]
        );
    }
    drop(neighbour);
    app.shutdown();
    let row = |name: &str, runs: &[Run]| {
        let ttft = median(runs.iter().map(|r| r.ttft_ms).collect());
        let tok_s = median(runs.iter().map(|r| r.decode_tok_s).collect());
        let tokens = median(runs.iter().map(|r| r.tokens as f64).collect());
        let prompt = median(runs.iter().map(|r| r.prompt_tokens as f64).collect());
        let cached = median(runs.iter().map(|r| r.cached_tokens as f64).collect());
        println!(
            "| {name} | {prompt:.0} ({cached:.0} cached) | {tokens:.0} | {ttft:.1} | {tok_s:.1} |"
        );
        (ttft, tok_s)
    };
    println!(
        "{} threads, KV cache {}, {} reps, up to {} tokens, neighbour {}",
        threads,
        a.kv_cache,
        a.reps,
        a.gen,
        a.neighbour.name()
    );
    println!(
        "| path | prompt tokens | answer tokens | time to first token (ms) | decode (tok/s) |"
    );
    println!("|---|---|---|---|---|");
    let (e_ttft, e_tok_s) = row("engine", &ours);
    let (a_ttft, a_tok_s) = row("app (chat core, frames consumed)", &apps);
    println!(
        "app / engine: first token {:.2}x the time, decode {:.2}x the speed",
        a_ttft / e_ttft,
        a_tok_s / e_tok_s
    );
    // The two sides of a repetition run back to back, so their ratio is the steadier figure on a
    // machine whose load moves between repetitions.
    let paired =
        |f: fn(&Run) -> f64| median(ours.iter().zip(&apps).map(|(e, a)| f(a) / f(e)).collect());
    println!(
        "app / engine per repetition (median of the ratios): first token {:.2}x, decode {:.2}x",
        paired(|r| r.ttft_ms),
        paired(|r| r.decode_tok_s)
    );
    let drafted: usize = apps.iter().map(|r| r.drafted).sum();
    println!("app's drafted tokens (speculative decoding, expected 0): {drafted}");
    let prefill = |runs: &[Run]| median(runs.iter().map(|r| r.prefill_ms).collect());
    println!(
        "prefill of the uncached prompt tokens: engine {:.1} ms, the engine in the worker {:.1} ms",
        prefill(&ours),
        prefill(&apps)
    );
    let worker = median(apps.iter().map(|r| r.worker_ttft_ms).collect());
    let added = median(apps.iter().map(|r| r.ttft_ms - r.worker_ttft_ms).collect());
    println!(
        "app's first token: the engine in the worker {worker:.1} ms, the chat core's path {added:.1} ms"
    );
}

//! What the OpenAI-compatible API costs over the in-process path: time to first token and decode
//! tokens/s of the same answers, asked (a) as a job submitted to the chat core's worker in the
//! process (what the desktop app's chats do) and (b) as a streamed `POST /v1/chat/completions` over
//! loopback HTTP to the same core, read by a client that timestamps each `data:` chunk.
//!
//! `make bench-api`, or `cargo bench -p smollm3-server --bench api_overhead -- [MODEL.gguf] [--rounds N] [--tokens N]`
//! (default: the SmolLM2 test model, 10 rounds, 64 tokens). The two paths alternate, each round
//! with its own question, so neither reuses the other's cached prompt; both sample greedily up to
//! the same number of tokens (each round prints how many it got). Reported: medians over the rounds.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat::{AppPaths, ChatApp, GenerationJob, JobEvent, LocalServer, Prompt, Sampling};
use engine::ChatMessage;
use server::{Downloads, Hub, Server};

struct Args {
    model: PathBuf,
    rounds: usize,
    tokens: usize,
}

/// `None` under `cargo test` (which builds and runs benches without `--bench`): the benchmark
/// runs only under `cargo bench`.
fn args() -> Option<Args> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    let mut a = Args {
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        rounds: 10,
        tokens: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--rounds" => a.rounds = number("--rounds"),
            "--tokens" => a.tokens = number("--tokens"),
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            other if other.starts_with("--") => panic!("unknown option {other}"),
            path => a.model = PathBuf::from(path),
        }
    }
    Some(a)
}

/// One answer's timings, measured where the answer is consumed, and the engine's own time to
/// first token for it (from the worker's stats): their difference is what the path adds, free of
/// how fast the shared machine happens to run the model at that moment.
#[derive(Clone, Copy, Debug)]
struct Timing {
    ttft_ms: f64,
    engine_ttft_ms: f64,
    /// The engine's own decode speed for the answer.
    engine_tok_s: f64,
    /// Tokens after the first, over the time from the first to the last.
    decode_tok_s: f64,
    tokens: usize,
}

impl Timing {
    fn added_ms(&self) -> f64 {
        self.ttft_ms - self.engine_ttft_ms
    }

    /// The decode speed the consumer saw, as a share of the engine's.
    fn kept_up(&self) -> f64 {
        self.decode_tok_s / self.engine_tok_s
    }

    fn new(start: Instant, stamps: &[Instant], engine: (f64, f64)) -> Timing {
        let (engine_ttft_ms, engine_tok_s) = engine;
        let first = stamps[0];
        let last = *stamps.last().unwrap();
        let span = (last - first).as_secs_f64();
        Timing {
            ttft_ms: (first - start).as_secs_f64() * 1e3,
            engine_ttft_ms,
            engine_tok_s,
            decode_tok_s: if span > 0.0 {
                (stamps.len() - 1) as f64 / span
            } else {
                0.0
            },
            tokens: stamps.len(),
        }
    }
}

fn question(round: usize, path: &str) -> String {
    format!("Question {round} ({path}): tell me a short story about the number {round}.")
}

fn sampling(tokens: usize) -> Sampling {
    Sampling {
        temperature: Some(0.0),
        top_p: None,
        top_k: None,
        min_p: None,
        repeat_penalty: None,
        seed: Some(1),
        max_tokens: tokens,
        max_thinking_tokens: None,
        stop: Vec::new(),
        speculative: true,
    }
}

/// (a) In process: a job on the worker, its token events timestamped as they arrive.
fn in_process(app: &ChatApp, text: String, tokens: usize) -> Timing {
    let (tx, rx) = mpsc::channel();
    let job = GenerationJob {
        tools: None,
        follow_ups: None,
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new("user", text)],
            thinking: false,
            drop_oldest: false,
        },
        params: sampling(tokens).validate().unwrap(),
        source: "bench".into(),
        cancelled: Arc::new(AtomicBool::new(false)),
        sink: Box::new(move |e| {
            let _ = tx.send((Instant::now(), e));
        }),
    };
    let start = Instant::now();
    app.submit(job).unwrap();
    let mut stamps = Vec::new();
    for (at, event) in rx {
        match event {
            JobEvent::Token(_) | JobEvent::Thinking(_) => stamps.push(at),
            JobEvent::Finished(stats) => {
                return Timing::new(
                    start,
                    &stamps,
                    (stats.time_to_first_token_ms, stats.decode_tok_s),
                )
            }
            JobEvent::Queued(_) => {}
            other => panic!("{other:?}"),
        }
    }
    panic!("the worker stopped")
}

/// (b) Over HTTP: a streamed chat completion, each content chunk timestamped as it is read.
fn over_http(addr: &str, model: &str, text: String, tokens: usize) -> Timing {
    let body = serde_json::json!({
        "model": model, "stream": true, "temperature": 0, "seed": 1, "max_tokens": tokens,
        "chat_template_kwargs": {"enable_thinking": false},
        "messages": [{"role": "user", "content": text}],
    })
    .to_string();
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut stamps = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: serde_json::Value = serde_json::from_str(data).unwrap();
        let delta = &chunk["choices"][0]["delta"];
        if ["content", "reasoning_content"]
            .iter()
            .any(|k| delta[k].as_str().is_some_and(|t| !t.is_empty()))
        {
            stamps.push(Instant::now());
        }
    }
    // Nothing else runs: the latest answer /health reports is this one.
    let health = ureq::get(format!("http://{addr}/health"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let last = &health["last"];
    let engine = (
        last["time_to_first_token_ms"].as_f64().unwrap(),
        last["decode_tok_s"].as_f64().unwrap(),
    );
    Timing::new(start, &stamps, engine)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let Some(a) = args() else {
        eprintln!("a benchmark: cargo bench -p smollm3-server --bench api_overhead -- [MODEL.gguf] [--rounds N] [--tokens N]");
        return;
    };
    assert!(a.model.exists(), "{} is missing", a.model.display());
    let dir = tempfile::tempdir().unwrap();
    let paths = AppPaths {
        data_dir: dir.path().join("data"),
        config_dir: dir.path().join("config"),
        models_dir: dir.path().join("models"),
    };
    let hub = Hub::new();
    let app = ChatApp::open(paths, hub.sink()).unwrap();
    app.load_model(a.model.clone()).unwrap();
    let start = Instant::now();
    while !app.model_state().is_ready() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{}",
            app.model_state().describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = Server::new(app.clone(), hub, Downloads::default());
    let model = a.model.file_stem().unwrap().to_string_lossy().into_owned();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = LocalServer {
        enabled: true,
        port: listener.local_addr().unwrap().port(),
        ..LocalServer::default()
    };
    runtime.spawn(async move {
        server::http::serve(server, listener, &config, std::future::pending())
            .await
            .unwrap()
    });

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "model {}, {} rounds of {} tokens, load average {}",
        a.model.display(),
        a.rounds,
        a.tokens,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // One answer each way first, so neither path pays for warming the caches.
    in_process(&app, question(0, "warm-up a"), a.tokens);
    over_http(&addr, &model, question(0, "warm-up b"), a.tokens);
    let (mut local, mut http) = (Vec::new(), Vec::new());
    for round in 1..=a.rounds {
        // Alternate which goes first, so a drift in the machine's load hits both alike.
        let (l, h) = if round % 2 == 1 {
            let l = in_process(&app, question(round, "in process"), a.tokens);
            (
                l,
                over_http(&addr, &model, question(round, "over http"), a.tokens),
            )
        } else {
            let h = over_http(&addr, &model, question(round, "over http"), a.tokens);
            (in_process(&app, question(round, "in process"), a.tokens), h)
        };
        println!(
            "round {round:>2}: ttft {:7.2} ms in process (+{:.2} over the engine's), {:7.2} ms over HTTP (+{:.2}); decode {:6.1} / {:6.1} tok/s ({} / {} tokens)",
            l.ttft_ms, l.added_ms(), h.ttft_ms, h.added_ms(), l.decode_tok_s, h.decode_tok_s, l.tokens, h.tokens
        );
        local.push(l);
        http.push(h);
    }
    let ttft = |v: &[Timing]| median(v.iter().map(|t| t.ttft_ms).collect());
    let tps = |v: &[Timing]| median(v.iter().map(|t| t.decode_tok_s).collect());
    let diffs = median(
        local
            .iter()
            .zip(&http)
            .map(|(l, h)| h.ttft_ms - l.ttft_ms)
            .collect(),
    );
    println!(
        "median ttft: {:.2} ms in process, {:.2} ms over HTTP (median difference {:+.2} ms)",
        ttft(&local),
        ttft(&http),
        diffs
    );
    let added = |v: &[Timing]| median(v.iter().map(Timing::added_ms).collect());
    println!(
        "median time added to the engine's ttft: {:.2} ms in process, {:.2} ms over HTTP (the API's overhead: {:+.2} ms)",
        added(&local),
        added(&http),
        added(&http) - added(&local)
    );
    println!(
        "median decode: {:.1} tok/s in process, {:.1} tok/s over HTTP ({:.3}x)",
        tps(&local),
        tps(&http),
        tps(&http) / tps(&local)
    );
    let kept = |v: &[Timing]| median(v.iter().map(Timing::kept_up).collect());
    println!(
        "median decode seen by the consumer over the engine's own: {:.3} in process, {:.3} over HTTP",
        kept(&local),
        kept(&http)
    );
    app.shutdown();
}

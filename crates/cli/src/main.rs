//! `smollm3`: a command-line front end to the engine, the model downloader and the server, for
//! scripts, checks and benchmarks. Machine-readable output goes to stdout; progress and errors go to
//! stderr.

mod models;
mod remote;
mod serve;

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use engine::{
    bench, ChatMessage, ChatOptions, Engine, EngineOptions, GenerationEvent, GenerationParams,
};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "smollm3",
    version,
    about = "Run SmolLM3 / Llama GGUF models locally"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Path to a GGUF model file (required, except by `generate --endpoint`).
    #[arg(long, env = "SMOLLM3_MODEL")]
    model: Option<PathBuf>,
    /// Context length in tokens (capped by the model's own).
    #[arg(long, env = "SMOLLM3_CONTEXT", default_value_t = engine::DEFAULT_CONTEXT_LEN)]
    context: usize,
    /// Compute threads (0 = all available cores).
    #[arg(long, env = "SMOLLM3_THREADS", default_value_t = 0)]
    threads: usize,
    /// A Hugging Face tokenizer.json to use instead of the GGUF's vocabulary.
    #[arg(long)]
    tokenizer_json: Option<PathBuf>,
    /// KV cache element type: f16 (half the memory, llama.cpp's default) or f32 (exact, as the
    /// conformance tests run).
    #[arg(long, env = "SMOLLM3_KV_CACHE", default_value_t = engine::KvType::default())]
    kv_cache: engine::KvType,
    /// Where the model runs: cpu, cuda, cuda:N or metal (`smollm3 devices` lists them).
    #[arg(long, env = "SMOLLM3_DEVICE", default_value = "cpu")]
    device: engine::DeviceSpec,
    /// native (the engine's CPU kernels) or candle (the Candle graph, on any device). Default:
    /// native on the CPU, candle on a GPU.
    #[arg(long, env = "SMOLLM3_BACKEND")]
    backend: Option<engine::BackendKind>,
}

impl ModelArgs {
    fn path(&self) -> Result<&PathBuf> {
        self.model
            .as_ref()
            .context("give the model file: --model PATH (or set SMOLLM3_MODEL)")
    }

    fn load(&self) -> Result<Engine> {
        let path = self.path()?;
        engine::threads::init(self.threads);
        let opts = EngineOptions {
            context_len: self.context,
            tokenizer_json: self.tokenizer_json.clone(),
            kv_type: self.kv_cache,
            placement: engine::Placement::new(self.device, self.backend)?,
            ..EngineOptions::default()
        };
        // The engine's errors already name the file.
        Ok(Engine::load(path, &opts)?)
    }
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// Sampling temperature (0 = greedy). Default: the model family's recommendation.
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_p: Option<f32>,
    /// 0 disables top-k.
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    min_p: Option<f32>,
    /// Repetition penalty over the last `--repeat-last-n` tokens (1 = off).
    #[arg(long)]
    repeat_penalty: Option<f32>,
    #[arg(long)]
    repeat_last_n: Option<usize>,
    /// Random seed (same seed, same output).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Speculative decoding: draft tokens from the prompt and the answer so far and verify them
    /// in one batched pass, where that pays. The output is the same (greedy) or distributed the
    /// same (sampled); `off` decodes one token per pass.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    speculative: Switch,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

impl SamplingArgs {
    fn params(&self, engine: &Engine) -> engine::SamplingParams {
        let mut p = engine.default_sampling();
        p.temperature = self.temperature.unwrap_or(p.temperature);
        p.top_p = self.top_p.unwrap_or(p.top_p);
        p.top_k = self.top_k.unwrap_or(p.top_k);
        p.min_p = self.min_p.unwrap_or(p.min_p);
        p.repeat_penalty = self.repeat_penalty.unwrap_or(p.repeat_penalty);
        p.repeat_last_n = self.repeat_last_n.unwrap_or(p.repeat_last_n);
        p.seed = self.seed;
        p
    }

    fn speculative(&self) -> engine::Speculative {
        match self.speculative {
            Switch::On => engine::Speculative::Adaptive,
            Switch::Off => engine::Speculative::Off,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print the token ids of TEXT as {"ids":[...]} (no BOS added).
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// Map special-token text (e.g. <|im_start|>) to special tokens.
        #[arg(long)]
        parse_special: bool,
        text: String,
    },
    /// Teacher-forced logits for every input token, in the reference files' shape.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        /// How many of the highest logits to print per position.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Generate a reply to PROMPT (wrapped in the chat template unless --raw), streaming; with
    /// --endpoint, from an OpenAI-compatible server instead of a local model.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        remote: remote::EndpointArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Comma-separated prompt token ids, fed as they are.
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["prompt", "raw", "system"])]
        tokens: Option<Vec<u32>>,
        /// Feed PROMPT as plain text, without the chat template.
        #[arg(long)]
        raw: bool,
        /// A system message.
        #[arg(long)]
        system: Option<String>,
        /// Turn thinking mode off (SmolLM3's /no_think).
        #[arg(long)]
        no_think: bool,
        #[arg(long, default_value_t = 512)]
        max_tokens: usize,
        /// Thinking budget: at this many thinking tokens the thinking is closed and the answer
        /// follows (local models only).
        #[arg(long)]
        max_thinking_tokens: Option<usize>,
        /// Do not stop at end-of-sequence tokens.
        #[arg(long)]
        ignore_eos: bool,
        /// Stop when this text appears (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// Print one JSON object at the end instead of streaming text.
        #[arg(long)]
        json: bool,
        prompt: Option<String>,
    },
    /// Interactive chat in the terminal (/think, /no_think, /reset, /exit).
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 1024)]
        max_tokens: usize,
    },
    /// Measure load time, prefill and decode speed, and peak memory.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 32)]
        gen_tokens: usize,
        /// Runs of each test; the median is reported.
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
        #[arg(long)]
        json: bool,
    },
    /// Describe a model: architecture, sizes, quantization, template, NoPE layers.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        json: bool,
    },
    /// Download a model from the Hugging Face hub (or HF_ENDPOINT), resuming a partial download;
    /// prints the installed path.
    Pull(models::PullArgs),
    /// List installed models, partial downloads and the catalog.
    Models(models::ModelsArgs),
    /// Serve the chat UI to browsers and an OpenAI-compatible API (`/v1`) over HTTP.
    Serve(serve::ServeArgs),
    /// List the devices (--device): each usable one with its name and memory, each other with
    /// the reason it cannot be used.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Render a chat template with a context file (the shape of templates.json's `context`).
    Template {
        #[arg(long, required_unless_present = "template")]
        model: Option<PathBuf>,
        /// A Jinja template file instead of a model's.
        #[arg(long, conflicts_with = "model")]
        template: Option<PathBuf>,
        #[arg(long)]
        context: PathBuf,
        /// The date strftime_now sees (YYYY-MM-DD); default today.
        #[arg(long)]
        date: Option<chrono::NaiveDate>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SMOLLM3_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pull(args) => models::pull(args)?,
        Command::Models(args) => models::models(args)?,
        Command::Serve(args) => serve::serve(args)?,
        Command::Tokenize {
            model,
            parse_special,
            text,
        } => {
            let engine = model.load()?;
            let ids = engine.tokenizer().encode(&text, parse_special);
            println!("{}", json!({ "ids": ids }));
        }
        Command::Logits { model, tokens, top } => {
            let mut engine = model.load()?;
            let rows = engine.logits(&tokens)?;
            let positions: Vec<_> = rows.iter().map(|row| top_k_json(row, top)).collect();
            println!("{}", json!({ "positions": positions }));
        }
        Command::Generate {
            model,
            remote: endpoint,
            sampling,
            tokens,
            raw,
            system,
            no_think,
            max_tokens,
            max_thinking_tokens,
            ignore_eos,
            stop,
            json,
            prompt,
        } => {
            if let Some(url) = endpoint.endpoint.clone() {
                if max_thinking_tokens.is_some() {
                    bail!("--max-thinking-tokens is applied by the local engine: leave it out with --endpoint");
                }
                if sampling.repeat_last_n.is_some() {
                    bail!("--repeat-last-n is not part of the OpenAI API: leave it out with --endpoint");
                }
                let ask = remote::Ask {
                    prompt: prompt.context("give a PROMPT")?,
                    raw,
                    system,
                    think: !no_think,
                    sampling: chat::Sampling {
                        temperature: sampling.temperature,
                        top_p: sampling.top_p,
                        top_k: sampling.top_k,
                        min_p: sampling.min_p,
                        repeat_penalty: sampling.repeat_penalty,
                        seed: Some(sampling.seed),
                        max_tokens,
                        max_thinking_tokens: None,
                        stop,
                        // The endpoint decodes as it does: nothing to send.
                        speculative: sampling.speculative == Switch::On,
                    },
                    json,
                };
                return remote::generate(url, &endpoint, ask);
            }
            let mut engine = model.load()?;
            let (ids, start_in_thinking) = match (tokens, prompt) {
                (Some(ids), _) => (ids, false),
                (None, Some(p)) if raw => (engine.tokenizer().encode(&p, false), false),
                (None, Some(p)) => {
                    let mut messages = Vec::new();
                    if let Some(s) = system {
                        messages.push(ChatMessage::new("system", s));
                    }
                    messages.push(ChatMessage::new("user", p));
                    chat_prompt(&engine, &messages, !no_think)?
                }
                (None, None) => bail!("give a PROMPT or --tokens"),
            };
            let params = GenerationParams {
                max_tokens,
                sampling: sampling.params(&engine),
                stop_strings: stop,
                ignore_eos,
                start_in_thinking,
                max_thinking_tokens,
                speculative: sampling.speculative(),
            };
            let out = engine.generate(&ids, &params, &|| false, &mut |ev| {
                if !json {
                    print_event(&ev)
                }
            })?;
            if json {
                println!("{}", serde_json::to_string(&out)?);
            } else {
                println!();
            }
        }
        Command::Chat {
            model,
            sampling,
            system,
            max_tokens,
        } => chat(model, sampling, system, max_tokens)?,
        Command::Bench {
            model,
            prompt_tokens,
            gen_tokens,
            repetitions,
            json,
        } => bench(&model, prompt_tokens, gen_tokens, repetitions, json)?,
        Command::Inspect { model, json } => {
            let engine = model.load()?;
            let info = engine.info();
            if json {
                println!("{}", serde_json::to_string_pretty(info)?);
            } else {
                print_info(info);
            }
        }
        Command::Devices { json } => {
            let devices = engine::device::list_devices();
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else {
                print_devices(&devices);
            }
        }
        Command::Template {
            model,
            template,
            context,
            date,
        } => {
            let ctx: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&context)
                    .with_context(|| format!("reading {}", context.display()))?,
            )
            .with_context(|| format!("{} is not valid JSON", context.display()))?;
            let today = date.unwrap_or_else(|| chrono::Local::now().date_naive());
            let rendered = match (template, model) {
                (Some(path), _) => {
                    let src = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    engine::template::ChatTemplate::new(&src, "", "")?.render_value(&ctx, today)?
                }
                (None, Some(path)) => {
                    let args = ModelArgs {
                        model: Some(path),
                        context: 16,
                        threads: 1,
                        tokenizer_json: None,
                        kv_cache: engine::KvType::default(),
                        device: engine::DeviceSpec::Cpu,
                        backend: None,
                    };
                    let engine = args.load()?;
                    engine.chat_template().render_value(&ctx, today)?
                }
                (None, None) => bail!("give --model or --template"),
            };
            print!("{rendered}");
        }
    }
    Ok(())
}

/// Renders the conversation and says whether the prompt leaves the model inside a think block.
fn chat_prompt(engine: &Engine, messages: &[ChatMessage], think: bool) -> Result<(Vec<u32>, bool)> {
    let opts = ChatOptions {
        add_generation_prompt: true,
        enable_thinking: Some(think),
        ..Default::default()
    };
    let text = engine.render_chat(messages, &opts, chrono::Local::now().date_naive())?;
    let open = text
        .rfind("<think>")
        .is_some_and(|i| !text[i..].contains("</think>"));
    Ok((engine.encode_prompt(&text)?, open))
}

fn print_event(ev: &GenerationEvent) {
    match ev {
        GenerationEvent::Thinking(s) => {
            eprint!("\x1b[2m{s}\x1b[0m");
            let _ = std::io::stderr().flush();
        }
        GenerationEvent::Token(s) => {
            print!("{s}");
            let _ = std::io::stdout().flush();
        }
        GenerationEvent::Done(_) => {}
    }
}

fn top_k_json(row: &[f32], k: usize) -> serde_json::Value {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let top: Vec<_> = idx.iter().take(k).map(|&i| json!([i, row[i]])).collect();
    json!({ "argmax": idx.first().copied().unwrap_or(0), "top": top })
}

fn chat(
    model: ModelArgs,
    sampling: SamplingArgs,
    system: Option<String>,
    max_tokens: usize,
) -> Result<()> {
    let mut engine = model.load()?;
    let mut think = engine.config().arch == engine::Arch::SmolLM3;
    let mut messages: Vec<ChatMessage> = system
        .iter()
        .map(|s| ChatMessage::new("system", s.clone()))
        .collect();
    let params = |engine: &Engine, start_in_thinking| GenerationParams {
        max_tokens,
        sampling: sampling.params(engine),
        stop_strings: Vec::new(),
        ignore_eos: false,
        start_in_thinking,
        max_thinking_tokens: None,
        speculative: sampling.speculative(),
    };
    eprintln!(
        "Chatting with {} (/think, /no_think, /reset, /exit)",
        model.path()?.display()
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/think" => {
                think = true;
                eprintln!("thinking on");
                continue;
            }
            "/no_think" => {
                think = false;
                eprintln!("thinking off");
                continue;
            }
            "/reset" => {
                messages.retain(|m| m.role == "system");
                engine.reset();
                eprintln!("conversation cleared");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", line.to_string()));
        let (ids, open) = match chat_prompt(&engine, &messages, think) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e:#}");
                messages.pop();
                continue;
            }
        };
        let p = params(&engine, open);
        match engine.generate(&ids, &p, &|| false, &mut |ev| print_event(&ev)) {
            Ok(out) => {
                println!();
                let t = &out.timings;
                let u = &out.usage;
                let drafts = match u.drafted_tokens {
                    0 => String::new(),
                    n => format!(", {}/{n} drafts accepted", u.accepted_drafts),
                };
                eprintln!(
                    "\x1b[2m[{} tokens, {:.1} tok/s, first token after {:.0} ms, {} cached{drafts}]\x1b[0m",
                    u.completion_tokens, t.decode_tok_s, t.time_to_first_token_ms, u.cached_tokens
                );
                messages.push(ChatMessage::new("assistant", out.text));
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                messages.pop();
            }
        }
    }
    Ok(())
}

/// Like llama-bench: prefill `prompt_tokens` from an empty cache, then decode `gen_tokens` one at
/// a time from an empty cache, with pseudo-random token ids; then a chat's second turn, which
/// reuses the first prompt's keys and values (`second_turn`: time to first token for
/// `bench::TURN_TOKENS` new tokens after `prompt_tokens`, and for all of them from an empty
/// cache).
fn bench(
    model: &ModelArgs,
    prompt_tokens: usize,
    gen_tokens: usize,
    reps: usize,
    json: bool,
) -> Result<()> {
    let mut args = model.clone();
    args.context = args
        .context
        .min(bench::context_for(prompt_tokens.max(gen_tokens)))
        .max(1);
    let reps = reps.max(1);
    let (mut engine, load_s) = bench::timed_loads(reps, || args.load())?;
    let mut source = bench::TokenSource::new(engine.tokenizer().vocab_size());
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        if prompt_tokens > 0 {
            pp.push(bench::prefill_tok_s(
                &mut engine,
                &source.take(prompt_tokens),
            )?);
        }
        if gen_tokens > 0 {
            tg.push(bench::decode_tok_s(&mut engine, &source.take(gen_tokens))?);
        }
    }
    // Before the second turn, whose cache is longer than the prompt test's.
    let peak_rss_mb = bench::peak_rss_mib("self").unwrap_or(0.0);
    let turn = if prompt_tokens > 0 {
        let (history, new) = (source.take(prompt_tokens), source.take(bench::TURN_TOKENS));
        let t = bench::second_turn(&mut engine, &history, &new)?;
        json!({
            "history_tokens": prompt_tokens,
            "new_tokens": bench::TURN_TOKENS,
            "cached_tokens": t.cached_tokens,
            "ttft_ms": t.ttft_ms,
            "cold_ttft_ms": t.cold_ttft_ms,
        })
    } else {
        serde_json::Value::Null
    };
    let info = engine.info();
    let out = json!({
        "model": model.path()?.display().to_string(),
        "placement": info.placement,
        "weights_bytes": info.memory.weights,
        "kv_cache_bytes": engine.cache_bytes(),
        "threads": engine::threads::current(),
        "kv_cache": model.kv_cache,
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "repetitions": reps,
        "load_s": load_s,
        "prefill_tok_s": bench::median(pp),
        "decode_tok_s": bench::median(tg),
        "peak_rss_mb": peak_rss_mb,
        "second_turn": turn,
    });
    if json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn print_devices(devices: &[engine::device::DeviceReport]) {
    for d in devices {
        let mut line = format!("{:<8} ", d.device);
        if d.usable {
            line += d.name.as_deref().unwrap_or("usable");
            if let Some(cc) = &d.compute_capability {
                line += &format!(", compute capability {cc}");
            }
            if let Some(total) = d.memory_total {
                line += &format!(", {} memory", engine::memory::gb(total));
            }
            if let Some(free) = d.memory_available {
                line += &format!(", {} available", engine::memory::gb(free));
            }
            let backends: Vec<String> = d.backends.iter().map(|b| b.to_string()).collect();
            line += &format!(" (backends: {})", backends.join(", "));
        } else {
            line += &format!("unavailable: {}", d.reason.as_deref().unwrap_or("unknown"));
        }
        println!("{line}");
    }
}

fn print_info(info: &engine::ModelInfo) {
    let c = &info.config;
    let gib = info.file_bytes as f64 / (1u64 << 30) as f64;
    println!("file:          {} ({gib:.2} GiB)", info.path.display());
    if let Some(name) = &c.name {
        println!("name:          {name}");
    }
    println!("architecture:  {}", c.arch.name());
    println!(
        "layers:        {} (hidden {}, feed-forward {})",
        c.n_layer, c.n_embd, c.n_ff
    );
    println!(
        "attention:     {} heads, {} key/value heads (GQA {}:1), head size {}",
        c.n_head,
        c.n_head_kv,
        c.n_head / c.n_head_kv,
        c.head_dim
    );
    println!("vocabulary:    {}", info.vocab_size);
    println!(
        "context:       {} trained, {} in use",
        c.context_length, info.context_len
    );
    println!("rope theta:    {}", c.rope_theta);
    let nope: Vec<String> = info.nope_layers.iter().map(|l| l.to_string()).collect();
    println!(
        "NoPE layers:   {}",
        if nope.is_empty() {
            "none".to_string()
        } else {
            nope.join(", ")
        }
    );
    let types: Vec<String> = info
        .weight_types
        .iter()
        .map(|(t, n)| format!("{t} x{n}"))
        .collect();
    println!("weight types:  {}", types.join(", "));
    println!("tensors:       {}", info.tensor_count);
    println!(
        "chat template: {}",
        if info.has_chat_template {
            "yes"
        } else {
            "none in the file: ChatML is used"
        }
    );
    println!("runs on:       {}", info.placement);
    println!("load time:     {:.0} ms", info.load_ms);
}

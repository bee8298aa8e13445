//! `smollm3 generate --endpoint URL`: one answer streamed from an OpenAI-compatible server (the
//! chat core's [`chat::RemoteModel`], as the app uses it), printed in the shapes of the local
//! `generate`: thinking dimmed on stderr and the answer on stdout, or with `--json` one object
//! with `text`, `thinking`, `finish_reason`, `usage` and `timings` (`ids` is empty: an endpoint
//! sends text, not token ids).

use std::io::Write;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Result};
use chat::{Endpoint, Finish, JobEvent, MessageStats, Prompt, RemoteModel, Sampling};
use clap::Args;
use engine::ChatMessage;
use serde_json::json;

#[derive(Args, Clone)]
pub struct EndpointArgs {
    /// Generate with an OpenAI-compatible server instead of a local model (e.g.
    /// http://127.0.0.1:8080; `/v1` is added to a URL without a path).
    #[arg(long, env = "SMOLLM3_ENDPOINT", conflicts_with_all = ["model", "tokens", "ignore_eos"])]
    pub endpoint: Option<String>,
    /// The endpoint's API key (sent as `Authorization: Bearer KEY`).
    #[arg(
        long,
        env = "SMOLLM3_ENDPOINT_KEY",
        hide_env_values = true,
        requires = "endpoint"
    )]
    pub api_key: Option<String>,
    /// The endpoint's model to use (default: the first it lists).
    #[arg(long, requires = "endpoint")]
    pub remote_model: Option<String>,
    /// Seconds to wait for the endpoint: to connect, and between two pieces of the answer.
    #[arg(long, default_value_t = chat::remote::DEFAULT_TIMEOUT_SECS, requires = "endpoint")]
    pub timeout: u64,
}

/// What to ask, from the `generate` flags that mean something to an endpoint.
pub struct Ask {
    pub prompt: String,
    pub raw: bool,
    pub system: Option<String>,
    pub think: bool,
    pub sampling: Sampling,
    pub json: bool,
}

pub fn generate(url: String, args: &EndpointArgs, ask: Ask) -> Result<()> {
    let endpoint = Endpoint {
        base_url: url,
        api_key: args.api_key.clone().unwrap_or_default(),
        model: args.remote_model.clone().unwrap_or_default(),
        timeout_secs: args.timeout,
    };
    let remote = RemoteModel::connect(&endpoint)?;
    let prompt = match ask.raw {
        true => Prompt::Text(ask.prompt),
        false => {
            let mut messages: Vec<ChatMessage> = ask
                .system
                .into_iter()
                .map(|s| ChatMessage::new("system", s))
                .collect();
            messages.push(ChatMessage::new("user", ask.prompt));
            Prompt::Chat {
                messages,
                thinking: ask.think,
                drop_oldest: false,
            }
        }
    };
    let params = ask.sampling.validate()?;
    let (mut text, mut thinking) = (String::new(), String::new());
    let json_out = ask.json;
    let stats = remote.generate(&prompt, &params, &AtomicBool::new(false), &mut |event| {
        match event {
            JobEvent::Thinking(t) => {
                if !json_out {
                    eprint!("\x1b[2m{t}\x1b[0m");
                    let _ = std::io::stderr().flush();
                }
                thinking.push_str(&t);
            }
            JobEvent::Token(t) => {
                if !json_out {
                    print!("{t}");
                    let _ = std::io::stdout().flush();
                }
                text.push_str(&t);
            }
            // The answer's own events only: queueing and endings belong to the app's worker.
            _ => {}
        }
    })?;
    if json_out {
        println!("{}", output_json(&text, &thinking, &stats)?);
    } else {
        println!();
    }
    Ok(())
}

/// The local `generate --json` shape (`engine::GenerationOutput`).
fn output_json(text: &str, thinking: &str, s: &MessageStats) -> Result<serde_json::Value> {
    let finish = match s.finish {
        Some(Finish::Stop) => "stop",
        Some(Finish::Length) => "length",
        Some(Finish::Cancelled) => "cancelled",
        None => bail!("the answer ended without a reason"),
    };
    Ok(json!({
        "ids": [],
        "text": text,
        "thinking": thinking,
        "finish_reason": finish,
        "usage": {
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "cached_tokens": s.cached_tokens,
        },
        "timings": {
            "time_to_first_token_ms": s.time_to_first_token_ms,
            "prefill_ms": s.prefill_ms,
            "decode_ms": s.decode_ms,
            "prefill_tok_s": s.prefill_tok_s,
            "decode_tok_s": s.decode_tok_s,
        },
        "model": s.model,
    }))
}

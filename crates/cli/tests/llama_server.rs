//! llama.cpp's own `llama-server`, a real third-party OpenAI-compatible server, as the remote model:
//! `smollm3 generate --endpoint` and the app core chat through it, with the SmolLM2 test model.
//!
//! `make llama-server` builds it (`make test` does so first); `LLAMA_SERVER` names another binary.
//! Without one these tests fail, saying how to get it: a skipped test would pass unnoticed.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat::{AppEvent, AppPaths, ChatApp, Endpoint, EventKind, ModelSource, ModelState, Settings};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn llama_server_binary() -> PathBuf {
    let path = std::env::var_os("LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs_home().join(".cache/llama-ref/bin/llama-server"));
    assert!(
        path.is_file(),
        "llama.cpp's llama-server is missing at {}: run `make llama-server` (about 10 minutes \
         the first time), or set LLAMA_SERVER to one",
        path.display()
    );
    path
}

fn dirs_home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
}

fn model() -> PathBuf {
    let path = repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "the test model {} is missing: run `bash models/fetch.sh`",
        path.display()
    );
    path
}

/// A running llama-server, stopped when dropped.
struct LlamaServer {
    child: Child,
    url: String,
}

impl LlamaServer {
    fn start() -> LlamaServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(llama_server_binary())
            .args(["-m", model().to_str().unwrap()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", "2048", "-t", "2", "--no-webui"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start llama-server");
        let mut server = LlamaServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        server.wait_ready();
        server
    }

    /// Waits until `/health` says ok (the model is loaded).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let health = format!("{}/health", self.url);
        loop {
            if let Ok((200, body)) = http_get(&health) {
                if body.contains("ok") {
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("llama-server exited ({status}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "llama-server not ready after 120 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET with a plain TCP client: the status and body (small answers only).
fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

fn smollm3(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smollm3"))
        .args(args)
        .env_remove("SMOLLM3_MODEL")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "smollm3 {args:?} failed: {stderr}");
    (stdout, stderr)
}

#[test]
fn generate_and_the_app_core_chat_through_llama_server() {
    let server = LlamaServer::start();
    let question = "What is the capital of France?";

    // The CLI, as JSON: the local generate's shape, filled from the endpoint.
    let (out, _) = smollm3(&[
        "generate",
        "--endpoint",
        &server.url,
        "--json",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        question,
    ]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let text = v["text"].as_str().unwrap().to_owned();
    assert!(!text.trim().is_empty(), "{v}");
    assert!(
        ["stop", "length"].contains(&v["finish_reason"].as_str().unwrap()),
        "{v}"
    );
    let used = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&used), "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 5, "{v}");
    assert!(v["timings"]["decode_tok_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["model"].as_str().unwrap().contains("SmolLM2"), "{v}");

    // As streamed text: greedy, so the same answer.
    let (streamed, _) = smollm3(&[
        "generate",
        "--endpoint",
        &server.url,
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        question,
    ]);
    assert_eq!(streamed.trim_end_matches('\n'), text);

    // A model the server does not have is named.
    let out = Command::new(env!("CARGO_BIN_EXE_smollm3"))
        .args([
            "generate",
            "--endpoint",
            &server.url,
            "--remote-model",
            "gpt-9",
            "hi",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not serve the model “gpt-9”"),
        "{err}"
    );

    // The app core: two turns of one chat, the second answering in the context of the first.
    let dir = tempfile::tempdir().unwrap();
    let paths = AppPaths {
        data_dir: dir.path().join("data"),
        config_dir: dir.path().join("config"),
        models_dir: dir.path().join("models"),
    };
    Settings {
        model_source: ModelSource::Endpoint,
        endpoint: Endpoint {
            base_url: server.url.clone(),
            ..Endpoint::default()
        },
        temperature: Some(0.0),
        max_tokens: 12,
        ..Settings::default()
    }
    .save(&paths.settings_file())
    .unwrap();
    let events: Arc<Mutex<Vec<AppEvent>>> = Arc::default();
    let sink = events.clone();
    let app = ChatApp::open(paths, Arc::new(move |e| sink.lock().unwrap().push(e))).unwrap();
    wait(
        || matches!(app.model_state(), ModelState::Remote { .. }),
        "the endpoint check",
    );
    let chat = app.create_chat().unwrap();
    let mut answers = Vec::new();
    for (turn, asked) in [question, "And of Italy?"].into_iter().enumerate() {
        app.send(chat.id, asked).unwrap();
        wait(|| !app.chat(chat.id).unwrap().busy, "the answer");
        let view = app.chat(chat.id).unwrap();
        let answer = view.messages.last().unwrap();
        assert_eq!(answer.status, chat::MessageStatus::Complete, "{answer:?}");
        let stats = answer.stats.clone().unwrap();
        assert!(stats.completion_tokens > 0, "{stats:?}");
        match turn {
            // Asked the same way as the CLI did, greedy: the same answer.
            0 => assert_eq!(answer.content, text),
            // The second question travels with the first turn, question and answer.
            _ => {
                let first: &chat::MessageStats = &answers[0];
                assert!(
                    stats.prompt_tokens > first.prompt_tokens + first.completion_tokens,
                    "{first:?} then {stats:?}"
                );
            }
        }
        answers.push(stats);
    }
    let stored: String = app
        .chat(chat.id)
        .unwrap()
        .messages
        .iter()
        .filter(|m| m.role == chat::Role::Assistant)
        .map(|m| m.content.clone())
        .collect();
    let streamed: String = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            AppEvent::Stream(s) => match &s.kind {
                EventKind::Token { text } => Some(text.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(
        streamed, stored,
        "the streamed tokens are the stored answers"
    );
    app.shutdown();
}

fn wait(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! The OpenAI-compatible API over real HTTP, with the SmolLM2 test model: shapes, errors and their
//! statuses, streaming, a client that goes away, two clients at once, and the chat list untouched.
//! (`make test` also drives it with the official `openai` Python client: `tests/openai/`.)

mod common;
#[path = "../../chat/tests/fake_http/mod.rs"]
mod fake_http;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat::Finish;
use common::{fixture, serve_http, test_model, Fixture};
use serde_json::{json, Value};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// A server with the test model loaded, listening on a free loopback port (and `key`).
async fn ready_server(key: &str) -> (Fixture, String) {
    let f = fixture();
    f.server.chat().load_model(test_model()).unwrap();
    let start = Instant::now();
    while !f.server.chat().model_state().is_ready() {
        assert!(start.elapsed() < Duration::from_secs(60), "the model loads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = serve(&f, key).await;
    (f, url)
}

async fn serve(f: &Fixture, key: &str) -> String {
    let (port, _) = serve_http(f, key, std::future::pending()).await;
    format!("http://127.0.0.1:{port}")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// POSTs JSON (or raw text when `body` is a string); the status and the JSON answer.
async fn post(url: String, body: Value) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let req = agent()
            .post(&url)
            .header("content-type", "application/json");
        let resp = match body {
            Value::String(raw) => req.send(raw.as_bytes()),
            other => req.send(other.to_string().as_bytes()),
        }
        .unwrap();
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
    .await
    .unwrap()
}

async fn get(url: String) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let resp = agent().get(&url).call().unwrap();
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap())
    })
    .await
    .unwrap()
}

fn ask(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}],
        "temperature": 0, "max_tokens": 12});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The `data:` payloads of a streamed answer, read until `[DONE]`, with the comments seen;
/// `first_token` is told when the first content arrives.
fn stream_blocking(
    url: &str,
    body: &Value,
    first_token: Option<std::sync::mpsc::Sender<()>>,
) -> (Vec<Value>, Vec<String>) {
    let resp = agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (mut chunks, mut comments) = (Vec::new(), Vec::new());
    let mut first_token = first_token;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.unwrap();
        if let Some(c) = line.strip_prefix(':') {
            comments.push(c.trim().to_owned());
        } else if let Some(d) = line.strip_prefix("data: ") {
            if d == "[DONE]" {
                return (chunks, comments);
            }
            let chunk: Value = serde_json::from_str(d).unwrap();
            if chunk["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
            {
                if let Some(tx) = first_token.take() {
                    let _ = tx.send(());
                }
            }
            chunks.push(chunk);
        }
    }
    panic!("no [DONE]: {chunks:?}");
}

async fn stream(url: String, body: Value) -> (Vec<Value>, Vec<String>) {
    tokio::task::spawn_blocking(move || stream_blocking(&url, &body, None))
        .await
        .unwrap()
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn models_and_chat_completions_whole_and_streamed_agree() {
    let (f, url) = ready_server("").await;
    let (status, models) = get(format!("{url}/v1/models")).await;
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["object"], "model");

    let (status, whole) = post(
        format!("{url}/v1/chat/completions"),
        ask("What is 2+2?", json!({})),
    )
    .await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], MODEL);
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_owned();
    assert!(!text.is_empty());
    assert!(matches!(
        choice["finish_reason"].as_str(),
        Some("stop" | "length")
    ));
    let u = &whole["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    assert!(
        whole["choices"][0]["message"]
            .get("reasoning_content")
            .is_none(),
        "SmolLM2 does not think"
    );

    let (chunks, _) = stream(
        format!("{url}/v1/chat/completions"),
        ask(
            "What is 2+2?",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
    )
    .await;
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(
        streamed_text(&chunks),
        text,
        "temperature 0: the same text streamed and not"
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(
        finish["choices"][0]["finish_reason"],
        choice["finish_reason"]
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], u["completion_tokens"]);

    let (status, raw) = post(
        format!("{url}/v1/completions"),
        json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(raw["object"], "text_completion");
    assert!(
        raw["choices"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{raw}"
    );

    assert!(
        f.server.chat().list_chats().unwrap().is_empty(),
        "API requests make no chats"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_has_openais_shape_and_its_status() {
    let (_f, url) = ready_server("").await;
    let chat = format!("{url}/v1/chat/completions");
    let cases = [
        (Value::String("{not json".into()), 400, None),
        (json!([1, 2]), 400, None),
        (
            ask("hi", json!({"tools": [{"type": "function"}]})),
            400,
            Some("tools[0]"),
        ),
        (ask("hi", json!({"n": 2})), 400, Some("n")),
        (
            ask("hi", json!({"stream_options": {"include_usage": true}})),
            400,
            Some("stream_options"),
        ),
        (
            ask(
                "hi",
                json!({"stream": true, "stream_options": {"include_usage": "yes"}}),
            ),
            400,
            Some("stream_options"),
        ),
        (
            ask("hi", json!({"temperature": "hot"})),
            400,
            Some("temperature"),
        ),
        (ask("hi", json!({"top_p": 3})), 400, Some("top_p")),
        (ask("hi", json!({"max_tokens": 0})), 400, Some("max_tokens")),
        (
            json!({"model": MODEL, "messages": []}),
            400,
            Some("messages"),
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}),
            400,
            Some("messages[0].role"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            400,
            Some("model"),
        ),
        (
            ask("hi", json!({"model": "gpt-nothing"})),
            404,
            Some("model"),
        ),
        (
            ask(&"word ".repeat(40_000), json!({})),
            400,
            Some("messages"),
        ),
        // Refused before anything was generated: the status says so, streamed or not.
        (
            ask(&"word ".repeat(40_000), json!({"stream": true})),
            400,
            Some("messages"),
        ),
    ];
    for (body, status, param) in cases {
        let shown = body.to_string().chars().take(80).collect::<String>();
        let (got, answer) = post(chat.clone(), body).await;
        assert_eq!(got, status, "{shown}: {answer}");
        let e = &answer["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
        assert!(e["type"].is_string() && e.get("code").is_some(), "{answer}");
        assert_eq!(e["param"].as_str(), param, "{shown}: {answer}");
    }
    // Too large a body: 413.
    let huge = format!(
        "{{\"model\":\"{MODEL}\",\"pad\":\"{}\"}}",
        "x".repeat(server::api::BODY_LIMIT)
    );
    let (status, answer) = post(chat.clone(), Value::String(huge)).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "request_too_large");
    // An unknown route under /v1: 404 in the same shape.
    let (status, answer) = get(format!("{url}/v1/embeddings")).await;
    assert_eq!(status, 404);
    assert!(answer["error"]["message"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_model_requests_get_503_with_the_reason_and_a_key_is_enforced() {
    let f = fixture();
    let url = serve(&f, "k3y").await;
    let chat = format!("{url}/v1/chat/completions");
    let (status, answer) = post(chat.clone(), ask("hi", json!({}))).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_api_key");
    let (status, answer) = tokio::task::spawn_blocking(move || {
        let resp = agent()
            .post(&chat)
            .header("content-type", "application/json")
            .header("authorization", "Bearer k3y")
            .send(ask("hi", json!({})).to_string().as_bytes())
            .unwrap();
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str::<Value>(&resp.into_body().read_to_string().unwrap()).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No model is loaded"),
        "{answer}"
    );
    let (status, health) = get(format!("{url}/health")).await;
    assert_eq!(status, 503);
    assert_eq!(health["status"], "no_model");
}

/// Reads a streamed answer's first `n` content chunks over a raw socket, then hangs up.
fn read_then_hang_up(url: &str, body: &Value, n: usize) -> usize {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < n {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
        if line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
            seen += 1;
        }
    }
    s.shutdown(std::net::Shutdown::Both).unwrap();
    seen
}

/// The stats of the last answer, once nothing runs or waits any more (at most `within`).
async fn last_answer_once_idle(f: &Fixture, within: Duration) -> chat::MessageStats {
    let start = Instant::now();
    loop {
        let status = f.server.chat().status().engine;
        if let Some(last) = status.last.filter(|_| status.queued == 0) {
            return last;
        }
        assert!(start.elapsed() < within, "the answer stops");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_stops_its_answer_within_a_token() {
    let (f, url) = ready_server("").await;
    let body = ask(
        "Write a long story about a dragon.",
        json!({"stream": true, "max_tokens": 400}),
    );
    let seen = tokio::task::spawn_blocking(move || read_then_hang_up(&url, &body, 3))
        .await
        .unwrap();
    let last = last_answer_once_idle(&f, Duration::from_secs(30)).await;
    assert_eq!(last.finish, Some(Finish::Cancelled), "{last:?}");
    // The socket buffers a token or two that the client never read.
    assert!(
        last.completion_tokens <= seen + 3,
        "{} tokens made after {seen} were read",
        last.completion_tokens
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_client_waits_its_turn_and_is_told_its_place() {
    let (_f, url) = ready_server("").await;
    let chat = format!("{url}/v1/chat/completions");
    let long = ask(
        "Write a long story about a dragon.",
        json!({"stream": true, "max_tokens": 200}),
    );
    let (started, first_token) = std::sync::mpsc::channel();
    let first = {
        let chat = chat.clone();
        tokio::task::spawn_blocking(move || stream_blocking(&chat, &long, Some(started)))
    };
    tokio::task::spawn_blocking(move || first_token.recv().unwrap())
        .await
        .unwrap();
    let short = ask("Say hi.", json!({"stream": true, "max_tokens": 4}));
    let (chunks, comments) = stream(chat, short).await;
    assert!(!streamed_text(&chunks).is_empty());
    assert!(
        comments.iter().any(|c| c == "queued: 1 answer(s) ahead"),
        "the second client saw its place: {comments:?}"
    );
    let (first_chunks, _) = first.await.unwrap();
    assert!(
        !streamed_text(&first_chunks).is_empty(),
        "the first client was answered too"
    );
}

/// Sends `method path` to the server at `url` with `headers` (each `Name: value`) and `body`, the
/// connection closed after, and reads the answer until the server closes: the status, the headers
/// (lower-case names) and the body.
fn raw_request(
    url: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::Read;
    let host = url.trim_start_matches("http://");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let mut s = TcpStream::connect(host).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status.parse().unwrap(), headers, body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_method_is_405_in_openais_shape_and_any_content_type_is_read_as_json() {
    let (_f, url) = ready_server("").await;
    let body = ask("Say hi.", json!({"max_tokens": 2})).to_string();
    let u = url.clone();
    const CHAT: &str = "/v1/chat/completions";
    const FORM: &str = "Content-Type: application/x-www-form-urlencoded";
    let (wrong_method, post_models, plain, form, cross, same) =
        tokio::task::spawn_blocking(move || {
            (
                raw_request(&u, "GET", CHAT, &[], ""),
                raw_request(&u, "POST", "/v1/models", &[], ""),
                // `curl -d` sends a form's content type; llama.cpp's server reads JSON anyway.
                raw_request(&u, "POST", CHAT, &[FORM], &body),
                raw_request(&u, "POST", CHAT, &[FORM], "model=x&prompt=y"),
                // What a page of another site could post through the browser: refused.
                raw_request(
                    &u,
                    "POST",
                    CHAT,
                    &["Content-Type: text/plain", "Origin: https://evil.example"],
                    &body,
                ),
                // The server's own pages are of its origin.
                raw_request(
                    &u,
                    "POST",
                    CHAT,
                    &["Content-Type: application/json", &format!("Origin: {u}")],
                    &body,
                ),
            )
        })
        .await
        .unwrap();
    let header = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    for ((status, headers, body), allow) in [(wrong_method, "POST"), (post_models, "GET,HEAD")] {
        assert_eq!(status, 405, "{body}");
        assert_eq!(header(&headers, "allow").as_deref(), Some(allow));
        let v: Value = serde_json::from_str(&body).expect("a JSON body");
        assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("/v1/"));
    }
    let (status, _, answer) = plain;
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    let (status, _, answer) = form;
    assert_eq!(status, 400, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not valid JSON") && message.contains("application/x-www-form-urlencoded"),
        "{message}"
    );
    let (status, _, answer) = cross;
    assert_eq!(status, 403, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["error"]["code"], "cross_origin", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("https://evil.example"));
    let (status, _, answer) = same;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_seed_gives_the_same_text_streamed_and_not_when_sampling() {
    let (_f, url) = ready_server("").await;
    let chat = format!("{url}/v1/chat/completions");
    let with = |seed: u64, stream: bool| {
        ask(
            "Tell me about the sea.",
            json!({"temperature": 1.0, "seed": seed, "max_tokens": 24, "stream": stream}),
        )
    };
    let (status, whole) = post(chat.clone(), with(42, false)).await;
    assert_eq!(status, 200, "{whole}");
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let (chunks, _) = stream(chat.clone(), with(42, true)).await;
    assert_eq!(streamed_text(&chunks), text, "seed 42 both ways");
    let (_, other) = post(chat, with(43, false)).await;
    assert_ne!(
        other["choices"][0]["message"]["content"].as_str().unwrap(),
        text,
        "another seed samples another answer (so the seed is what made them agree)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_answers_client_that_hangs_up_stops_it_and_frees_the_engine() {
    let (f, url) = ready_server("").await;
    // Counting at temperature 0 with room for thousands of tokens: the answer is still running
    // when the client hangs up, whatever the machine's speed (a story sampled at random could
    // end early on its own).
    let max = 4000;
    let body = json!({"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "temperature": 0,
        "max_tokens": max})
    .to_string();
    let addr = url.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let start = Instant::now();
    while f.server.chat().status().engine.queued == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the answer runs");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.shutdown(std::net::Shutdown::Both).unwrap();
    let last = last_answer_once_idle(&f, Duration::from_secs(60)).await;
    assert_eq!(last.finish, Some(Finish::Cancelled), "{last:?}");
    assert!(last.completion_tokens < max, "{last:?}");
    let (status, next) = post(
        format!("{url}/v1/chat/completions"),
        ask("Say hi.", json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(status, 200, "the next client is answered: {next}");
}

/// What the fake endpoint answers a chat request with.
enum Reply {
    Json(u16, Value),
    /// Server-sent events: each `data:` payload, then `[DONE]`.
    Events(Vec<Value>),
    /// Accepts the request and says nothing.
    Silent,
}

/// A fake OpenAI-compatible endpoint on loopback, the app's model source: it lists the model
/// `smol`, answers chat requests with `reply`, records their bodies, and closes each connection
/// after one answer. After `connections` connections it stops listening (unreachable).
struct FakeEndpoint {
    url: String,
    asked: Arc<Mutex<Vec<Value>>>,
}

impl FakeEndpoint {
    fn start(
        connections: Option<usize>,
        reply: impl Fn(&Value) -> Reply + Send + Sync + 'static,
    ) -> FakeEndpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (log, reply) = (asked.clone(), Arc::new(reply));
        std::thread::spawn(move || {
            let mut conns = listener.incoming().flatten();
            for _ in 0..connections.unwrap_or(usize::MAX) {
                let Some(conn) = conns.next() else { return };
                let (log, reply) = (log.clone(), reply.clone());
                std::thread::spawn(move || FakeEndpoint::answer(conn, &*reply, &log));
            }
        });
        FakeEndpoint { url, asked }
    }

    fn answer(conn: TcpStream, reply: &dyn Fn(&Value) -> Reply, log: &Mutex<Vec<Value>>) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut out = conn;
        let Some(request) = fake_http::read_request(&mut reader) else {
            return;
        };
        let reply = match request.path.as_str() {
            "/v1/models" => Reply::Json(200, json!({"object": "list", "data": [{"id": "smol"}]})),
            _ => {
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                log.lock().unwrap().push(body.clone());
                reply(&body)
            }
        };
        let _ = match reply {
            Reply::Json(status, v) => write!(
                out,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{v}",
                v.to_string().len()
            ),
            Reply::Events(chunks) => {
                let mut text = String::from(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
                );
                for c in chunks {
                    text.push_str(&format!("data: {c}\n\n"));
                }
                text.push_str("data: [DONE]\n\n");
                out.write_all(text.as_bytes())
            }
            Reply::Silent => {
                std::thread::sleep(Duration::from_secs(10));
                Ok(())
            }
        };
    }

    /// A server whose model is this endpoint (waiting `timeout_secs` for it), listening on a free
    /// loopback port.
    async fn server(&self, timeout_secs: u64) -> (Fixture, String) {
        let settings = chat::Settings {
            model_source: chat::ModelSource::Endpoint,
            endpoint: chat::Endpoint {
                base_url: self.url.clone(),
                timeout_secs,
                ..chat::Endpoint::default()
            },
            ..chat::Settings::default()
        };
        let f = common::fixture_with(Some(&settings));
        let start = Instant::now();
        while !matches!(
            f.server.chat().model_state(),
            chat::ModelState::Remote { .. }
        ) {
            let state = f.server.chat().model_state();
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the endpoint check: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let url = serve(&f, "").await;
        (f, url)
    }
}

fn delta(d: Value) -> Value {
    json!({"choices": [{"index": 0, "delta": d, "finish_reason": null}]})
}

/// An answer that thinks (as llama.cpp's server sends SmolLM3's thinking) unless the request
/// turned thinking off in its template.
fn thinking_reply(asked: &Value) -> Reply {
    let mut chunks = Vec::new();
    if asked["chat_template_kwargs"]["enable_thinking"] != false {
        chunks.push(delta(
            json!({"role": "assistant", "reasoning_content": "Two plus"}),
        ));
        chunks.push(delta(json!({"reasoning_content": " two."})));
    }
    chunks.push(delta(json!({"content": "The answer"})));
    chunks.push(delta(json!({"content": " is 4."})));
    chunks.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
    chunks.push(json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 6}}));
    Reply::Events(chunks)
}

fn ask_smol(content: &str, extra: Value) -> Value {
    let mut body = ask(content, extra);
    body["model"] = json!("smol");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoints_failures_have_their_own_statuses_whole_and_streamed() {
    let fake = FakeEndpoint::start(None, |asked| {
        match asked["messages"][0]["content"].as_str().unwrap() {
            "reject" => Reply::Json(
                400,
                json!({"error": {"message": "the request exceeds the available context size"}}),
            ),
            "fail" => Reply::Json(500, json!({"error": {"message": "out of memory"}})),
            "hang" => Reply::Silent,
            _ => thinking_reply(asked),
        }
    });
    // 3 s: the wait covers the check on connect and every answer, the ones that come too, so
    // a loaded machine must not run it out; the silent endpoint is still found silent.
    let (_f, url) = fake.server(3).await;
    let chat = format!("{url}/v1/chat/completions");
    let cases = [
        ("reject", 400, "endpoint_rejected", "context size"),
        ("fail", 502, "endpoint_failed", "out of memory"),
        ("hang", 504, "endpoint_timeout", "sent nothing for 3 s"),
    ];
    for (content, status, code, says) in cases {
        for streamed in [false, true] {
            let body = ask_smol(content, json!({"stream": streamed}));
            let (got, answer) = post(chat.clone(), body).await;
            assert_eq!(got, status, "{content}, stream {streamed}: {answer}");
            let e = &answer["error"];
            assert_eq!(e["code"], code, "{answer}");
            assert!(e["message"].as_str().unwrap().contains(says), "{answer}");
            assert_eq!(
                e["param"].as_str(),
                (status == 400).then_some("messages"),
                "{answer}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_gone_since_it_was_checked_is_502_unreachable() {
    // One connection: the check on connect; then nothing listens.
    let fake = FakeEndpoint::start(Some(1), thinking_reply);
    let (_f, url) = fake.server(5).await;
    let (status, answer) = post(
        format!("{url}/v1/chat/completions"),
        ask_smol("hi", json!({})),
    )
    .await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["code"], "endpoint_unreachable", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Cannot reach the endpoint"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thinking_comes_back_as_reasoning_content_and_enable_thinking_false_turns_it_off() {
    let fake = FakeEndpoint::start(None, thinking_reply);
    let (_f, url) = fake.server(5).await;
    let chat = format!("{url}/v1/chat/completions");

    let (status, whole) = post(chat.clone(), ask_smol("What is 2+2?", json!({}))).await;
    assert_eq!(status, 200, "{whole}");
    let message = &whole["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], "Two plus two.", "{whole}");
    assert_eq!(message["content"], "The answer is 4.", "{whole}");

    let (chunks, _) = stream(
        chat.clone(),
        ask_smol("What is 2+2?", json!({"stream": true})),
    )
    .await;
    let reasoning: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Two plus two.");
    assert_eq!(streamed_text(&chunks), "The answer is 4.");

    let off = json!({"chat_template_kwargs": {"enable_thinking": false}});
    let (status, whole) = post(chat.clone(), ask_smol("What is 2+2?", off.clone())).await;
    assert_eq!(status, 200, "{whole}");
    assert!(
        whole["choices"][0]["message"]
            .get("reasoning_content")
            .is_none(),
        "{whole}"
    );
    let mut streamed_off = off;
    streamed_off["stream"] = json!(true);
    let (chunks, _) = stream(chat, ask_smol("What is 2+2?", streamed_off)).await;
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["delta"].get("reasoning_content").is_none()),
        "{chunks:?}"
    );
    let asked = fake.asked.lock().unwrap().clone();
    let kwargs: Vec<&Value> = asked.iter().map(|a| &a["chat_template_kwargs"]).collect();
    let off = json!({"enable_thinking": false});
    assert_eq!(
        kwargs,
        [&Value::Null, &Value::Null, &off, &off],
        "the switch reached the endpoint's template"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn enable_thinking_false_reaches_a_local_smollm3_models_template() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/tiny-smollm3-f32.gguf");
    assert!(model.exists(), "{} is missing", model.display());
    let f = fixture();
    f.server.chat().load_model(model).unwrap();
    let start = Instant::now();
    while !f.server.chat().model_state().is_ready() {
        assert!(start.elapsed() < Duration::from_secs(60), "the model loads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = serve(&f, "").await;
    let prompt_tokens = |thinking: bool| {
        let body = json!({"model": "tiny-smollm3-f32", "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "user", "content": "What is 2+2?"}],
            "chat_template_kwargs": {"enable_thinking": thinking}});
        let chat = format!("{url}/v1/chat/completions");
        async move {
            let (status, answer) = post(chat, body).await;
            assert_eq!(status, 200, "{answer}");
            answer["usage"]["prompt_tokens"].as_u64().unwrap()
        }
    };
    let (on, off) = (prompt_tokens(true).await, prompt_tokens(false).await);
    // On, SmolLM3's template writes its long instructions on how to think into the system
    // prompt; off, only `/no_think` and an empty `<think>` block.
    assert!(
        on > off + 100,
        "thinking on: {on} prompt tokens, off: {off}"
    );
}

/// A server whose model is scripted: its output is given at the engine's token boundary (each of
/// `replies` is one answer, as token pieces), rendered with SmolLM3-3B's own template; the rest
/// is the real app. Returns the prompts the model was given.
async fn scripted_server(replies: &[&str]) -> (Fixture, String, Arc<Mutex<Vec<String>>>) {
    let f = fixture();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/smollm3-official.jinja");
    let source = std::fs::read_to_string(&path).unwrap();
    let template = engine::template::ChatTemplate::new(&source, "", "<|im_end|>").unwrap();
    // Four chars a token, so tags and JSON arrive split.
    let pieces = |text: &str| {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(4).map(|c| c.iter().collect()).collect()
    };
    let prompts = f
        .server
        .chat()
        .script_model(template, replies.iter().map(|r| pieces(r)).collect());
    let start = Instant::now();
    while !f.server.chat().model_state().is_ready() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the script is ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let url = serve(&f, "").await;
    (f, url, prompts)
}

fn weather_call(city: &str) -> String {
    format!("<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"{city}\"}}}}\n</tool_call>")
}

/// A call of the response as OpenAI shapes it: its id, then the name and the parsed arguments.
fn call_of(call: &Value) -> (String, (String, Value)) {
    assert_eq!(call["type"], "function", "{call}");
    let arguments = call["function"]["arguments"].as_str().unwrap();
    (
        call["id"].as_str().unwrap().to_owned(),
        (
            call["function"]["name"].as_str().unwrap().to_owned(),
            serde_json::from_str(arguments).unwrap(),
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_come_back_in_openais_shape_whole_and_streamed() {
    let two = format!("{}\n{}", weather_call("Paris"), weather_call("Oslo"));
    let streamed = format!("Let me look.\n{}", weather_call("Rome"));
    let (_f, url, prompts) = scripted_server(&[&two, &streamed, &two]).await;
    let chat = format!("{url}/v1/chat/completions");
    let body = |stream: bool| {
        json!({"model": "scripted", "stream": stream,
            "messages": [{"role": "user", "content": "The weather in Paris and Oslo?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]}}}]})
    };

    // Whole: only calls, so no content; each call with its id, name and arguments (a string).
    let (status, whole) = post(chat.clone(), body(false)).await;
    assert_eq!(status, 200, "{whole}");
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{whole}");
    assert_eq!(choice["message"]["content"], Value::Null, "{whole}");
    let calls: Vec<_> = choice["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(call_of)
        .collect();
    let named = |city: &str| ("get_weather".to_owned(), json!({"city": city}));
    assert_eq!(
        calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
        [named("Paris"), named("Oslo")]
    );
    assert_ne!(calls[0].0, calls[1].0, "two calls, two ids");
    // The tools reached the model through its template's `xml_tools`.
    assert!(
        prompts.lock().unwrap()[0].contains("'name': 'get_weather'"),
        "{}",
        prompts.lock().unwrap()[0]
    );

    // Streamed: the text, then one `delta.tool_calls` chunk per call, then `tool_calls`.
    let (chunks, _) = stream(chat.clone(), body(true)).await;
    assert_eq!(streamed_text(&chunks), "Let me look.\n");
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(deltas.len(), 1, "{chunks:?}");
    assert_eq!(deltas[0][0]["index"], 0);
    assert_eq!(call_of(&deltas[0][0]).1, named("Rome"));
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")], "{chunks:?}");

    // Ids are unique across responses too, not `call_0` in each.
    let (_, again) = post(chat, body(false)).await;
    let ids: Vec<String> = again["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| call_of(c).0)
        .collect();
    assert!(
        ids.iter().all(|id| !calls.iter().any(|c| &c.0 == id)),
        "{ids:?} vs {calls:?}"
    );
}

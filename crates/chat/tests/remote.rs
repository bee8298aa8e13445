//! A remote OpenAI-compatible endpoint as the model, against a small fake server on loopback: the
//! check on connect (unreachable, key refused, model not served, timeout), the stream of one
//! answer (thinking from `reasoning_content` and from `<think>` text, tokens, usage), Stop, the
//! errors of a chat request, and the app core chatting through it.

mod common;
mod fake_http;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat::{
    ChatError, Endpoint, EventKind, JobEvent, MessageStatus, ModelSource, ModelState, Prompt,
    RemoteModel, Sampling, SendOutcome, Settings,
};
use common::{open, tokens};
use serde_json::{json, Value};

/// One request as the fake server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    auth: Option<String>,
    body: Value,
}

/// What the fake server does with a request.
enum Reply {
    Json(u16, Value),
    /// Server-sent events: each `data:` payload, then `[DONE]`.
    Events(Vec<Value>),
    /// Accepts and says nothing (a hung server).
    Silent,
    /// Starts an answer, sends these events, then says nothing more.
    Stall(Vec<Value>),
    /// One token every 20 ms until the client goes away; `gone` is set then.
    Endless(Arc<AtomicBool>),
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct Fake {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (handler, log) = (handler.clone(), log.clone());
                std::thread::spawn(move || serve(conn, &handler, &log));
            }
        });
        Fake { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            base_url: self.url.clone(),
            timeout_secs: 5,
            ..Endpoint::default()
        }
    }
}

fn serve(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    // Keep-alive: ureq reuses connections, so serve requests until the client closes.
    loop {
        let Some(request) = fake_http::read_request(&mut reader) else {
            return;
        };
        let seen = Seen {
            method: request.method,
            path: request.path,
            auth: request.auth,
            body: serde_json::from_slice(&request.body).unwrap_or(Value::Null),
        };
        log.lock().unwrap().push(seen.clone());
        match handler(&seen) {
            Reply::Json(status, v) => {
                let text = v.to_string();
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    text.len()
                );
                out.write_all(head.as_bytes()).unwrap();
                out.write_all(text.as_bytes()).unwrap();
            }
            Reply::Events(chunks) => {
                let head =
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
                out.write_all(head.as_bytes()).unwrap();
                for c in chunks {
                    out.write_all(format!("data: {c}\n\n").as_bytes()).unwrap();
                }
                out.write_all(b"data: [DONE]\n\n").unwrap();
                return;
            }
            Reply::Silent => {
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            Reply::Stall(chunks) => {
                let head =
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
                out.write_all(head.as_bytes()).unwrap();
                for c in chunks {
                    out.write_all(format!("data: {c}\n\n").as_bytes()).unwrap();
                }
                out.flush().unwrap();
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            Reply::Endless(gone) => {
                let head =
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
                out.write_all(head.as_bytes()).unwrap();
                let chunk = format!("data: {}\n\n", delta("tick "));
                while out
                    .write_all(chunk.as_bytes())
                    .and_then(|()| out.flush())
                    .is_ok()
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                gone.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
}

fn delta(text: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
}

fn models(ids: &[&str]) -> Reply {
    let data: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
    Reply::Json(200, json!({"object": "list", "data": data}))
}

/// An answer that thinks both ways llama.cpp and vLLM may send it, then answers.
fn thinking_answer() -> Vec<Value> {
    vec![
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Two"}}]}),
        json!({"choices": [{"index": 0, "delta": {"reasoning_content": " plus two."}}]}),
        delta("<think>Still"),
        delta(" four.</think>The answer"),
        delta(" is 4."),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30}}),
    ]
}

fn params(max_tokens: usize) -> chat::AnswerParams {
    Sampling {
        temperature: Some(0.0),
        top_p: None,
        top_k: None,
        min_p: None,
        repeat_penalty: None,
        seed: Some(7),
        max_tokens,
        max_thinking_tokens: None,
        stop: Vec::new(),
        speculative: true,
    }
    .validate()
    .unwrap()
}

fn chat_prompt(thinking: bool) -> Prompt {
    Prompt::Chat {
        messages: vec![engine::ChatMessage::new("user", "What is 2+2?")],
        thinking,
        drop_oldest: true,
    }
}

/// Runs one answer; returns its events (thinking and tokens joined by kind) and the result.
fn answer(
    remote: &RemoteModel,
    prompt: &Prompt,
    cancel_after_first: bool,
) -> (Vec<JobEvent>, chat::Result<chat::MessageStats>) {
    let cancelled = AtomicBool::new(false);
    let mut events = Vec::new();
    let result = remote.generate(prompt, &params(64), &cancelled, &mut |e| {
        if cancel_after_first {
            cancelled.store(true, Ordering::SeqCst);
        }
        events.push(e);
    });
    (events, result)
}

fn joined(events: &[JobEvent]) -> (String, String) {
    let (mut thinking, mut text) = (String::new(), String::new());
    for e in events {
        match e {
            JobEvent::Thinking(t) => thinking.push_str(t),
            JobEvent::Token(t) => text.push_str(t),
            other => panic!("unexpected {other:?}"),
        }
    }
    (thinking, text)
}

#[test]
fn an_unreachable_endpoint_says_so() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: nothing listens there
    let e = Endpoint {
        base_url: format!("http://127.0.0.1:{port}"),
        ..Endpoint::default()
    };
    let err = RemoteModel::connect(&e).unwrap_err();
    assert!(
        matches!(err, ChatError::EndpointUnreachable { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("cannot reach") && text.contains(&format!(":{port}/v1")),
        "{text}"
    );
}

#[test]
fn a_wrong_key_is_refused_with_401_and_the_right_one_gets_in() {
    let fake = Fake::start(|seen| match seen.auth.as_deref() {
        Some("Bearer sesame") => models(&["smol"]),
        _ => Reply::Json(
            401,
            json!({"error": {"message": "Invalid API Key", "type": "authentication_error"}}),
        ),
    });
    let mut e = fake.endpoint();
    e.api_key = "wrong".into();
    let err = RemoteModel::connect(&e).unwrap_err();
    assert!(
        matches!(err, ChatError::EndpointAuth { status: 401, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Invalid API Key"), "{err}");
    e.api_key = "sesame".into();
    let remote = RemoteModel::connect(&e).unwrap();
    assert_eq!(remote.model, "smol", "no name given: the first one listed");
    assert_eq!(remote.url, format!("{}/v1", fake.url));
    let seen = fake.seen();
    assert!(seen
        .iter()
        .all(|s| s.method == "GET" && s.path == "/v1/models"));
}

#[test]
fn a_model_the_endpoint_does_not_serve_is_named_with_those_it_does() {
    let fake = Fake::start(|_| models(&["smol", "big"]));
    let mut e = fake.endpoint();
    e.model = "huge".into();
    let err = RemoteModel::connect(&e).unwrap_err();
    assert!(
        matches!(err, ChatError::EndpointModelNotFound { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("“huge”") && text.contains("smol, big"),
        "{text}"
    );
    e.model = "big".into();
    assert_eq!(RemoteModel::connect(&e).unwrap().model, "big");
}

#[test]
fn a_silent_endpoint_times_out() {
    let fake = Fake::start(|_| Reply::Silent);
    let mut e = fake.endpoint();
    e.timeout_secs = 1;
    let err = RemoteModel::connect(&e).unwrap_err();
    assert!(
        matches!(err, ChatError::EndpointTimeout { secs: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("sent nothing for 1 s"), "{err}");
}

#[test]
fn a_server_that_stalls_mid_answer_times_out_keeping_the_text_so_far() {
    let fake = Fake::start(|seen| match seen.path.as_str() {
        "/v1/models" => models(&["smol"]),
        // "<" could start a tag, so it waits for more text: a timeout must not lose it.
        _ => Reply::Stall(vec![delta("The answer"), delta(" is <")]),
    });
    let mut e = fake.endpoint();
    e.timeout_secs = 1;
    let remote = RemoteModel::connect(&e).unwrap();
    let (events, result) = answer(&remote, &chat_prompt(true), false);
    assert_eq!(joined(&events).1, "The answer is <");
    let err = result.unwrap_err();
    assert!(
        matches!(err, ChatError::EndpointTimeout { secs: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn thinking_arrives_from_reasoning_content_and_from_think_tags_then_the_answer() {
    let fake = Fake::start(|seen| match seen.path.as_str() {
        "/v1/models" => models(&["smol"]),
        _ => Reply::Events(thinking_answer()),
    });
    let remote = RemoteModel::connect(&fake.endpoint()).unwrap();
    let (events, stats) = answer(&remote, &chat_prompt(true), false);
    let stats = stats.unwrap();
    let (thinking, text) = joined(&events);
    assert_eq!(thinking, "Two plus two.Still four.");
    assert_eq!(text, "The answer is 4.");
    assert_eq!(stats.finish, Some(chat::Finish::Stop));
    assert_eq!((stats.prompt_tokens, stats.completion_tokens), (21, 9));
    assert_eq!(stats.model.as_deref(), Some("smol"));
    assert!(stats.decode_tok_s > 0.0, "{stats:?}");

    let seen = fake.seen();
    let req = seen.last().unwrap();
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    let b = &req.body;
    assert_eq!(b["model"], "smol");
    assert_eq!(b["stream"], true);
    assert_eq!(b["max_tokens"], 64);
    assert_eq!(
        (b["temperature"].as_f64(), b["seed"].as_u64()),
        (Some(0.0), Some(7))
    );
    assert_eq!(
        b["messages"],
        json!([{"role": "user", "content": "What is 2+2?"}])
    );
    assert!(
        b.get("top_k").is_none(),
        "unset choices are the server's: {b}"
    );
    assert!(b.get("chat_template_kwargs").is_none(), "{b}");

    // Thinking off travels as the template switch; a raw prompt goes to /completions.
    let _ = answer(&remote, &chat_prompt(false), false);
    let last = fake.seen().last().unwrap().body.clone();
    assert_eq!(
        last["chat_template_kwargs"],
        json!({"enable_thinking": false})
    );
    let _ = answer(&remote, &Prompt::Text("Once upon".into()), false);
    let last = fake.seen().last().unwrap().clone();
    assert_eq!(
        (last.path.as_str(), &last.body["prompt"]),
        ("/v1/completions", &json!("Once upon"))
    );
}

#[test]
fn stop_ends_the_answer_and_the_connection() {
    let gone = Arc::new(AtomicBool::new(false));
    let flag = gone.clone();
    let fake = Fake::start(move |seen| match seen.path.as_str() {
        "/v1/models" => models(&["smol"]),
        _ => Reply::Endless(flag.clone()),
    });
    let remote = RemoteModel::connect(&fake.endpoint()).unwrap();
    let (events, stats) = answer(&remote, &chat_prompt(true), true);
    assert_eq!(stats.unwrap().finish, Some(chat::Finish::Cancelled));
    assert!(!events.is_empty());
    // The server learns it: its writes fail once the client has closed the connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the connection stayed open after Stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn chat_request_errors_are_explained() {
    let fake = Fake::start(|seen| {
        let first = seen.body["messages"][0]["content"].as_str().unwrap_or("");
        match (seen.path.as_str(), first) {
            ("/v1/models", _) => models(&["smol"]),
            (_, "404") => Reply::Json(
                404,
                json!({"error": {"message": "model smol was unloaded"}}),
            ),
            (_, "400") => Reply::Json(
                400,
                json!({"error": {"message": "the request exceeds the available context size"}}),
            ),
            (_, "500") => Reply::Json(500, json!({"error": {"message": "out of memory"}})),
            _ => Reply::Events(vec![
                delta("Half an answer"),
                json!({"error": {"message": "the slot crashed"}}),
            ]),
        }
    });
    let remote = RemoteModel::connect(&fake.endpoint()).unwrap();
    let ask = |text: &str| {
        let prompt = Prompt::Chat {
            messages: vec![engine::ChatMessage::new("user", text)],
            thinking: true,
            drop_oldest: true,
        };
        answer(&remote, &prompt, false)
    };
    let err = ask("404").1.unwrap_err();
    assert!(
        matches!(err, ChatError::EndpointModelNotFound { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("was unloaded"), "{err}");
    let err = ask("400").1.unwrap_err();
    assert!(matches!(err, ChatError::EndpointRejected { .. }), "{err:?}");
    assert!(err.to_string().contains("context size"), "{err}");
    let err = ask("500").1.unwrap_err();
    assert!(
        matches!(err, ChatError::EndpointFailed { status: 500, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("out of memory"), "{err}");
    let (events, result) = ask("mid-stream");
    assert_eq!(joined(&events).1, "Half an answer");
    let err = result.unwrap_err();
    assert!(err.to_string().contains("the slot crashed"), "{err}");
}

fn endpoint_settings(endpoint: Endpoint) -> Settings {
    Settings {
        model_source: ModelSource::Endpoint,
        endpoint,
        ..Settings::default()
    }
}

#[test]
fn the_app_chats_through_an_endpoint_and_stores_the_answer() {
    let fake = Fake::start(|seen| match seen.path.as_str() {
        "/v1/models" => models(&["smol"]),
        _ => Reply::Events(thinking_answer()),
    });
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), Some(&endpoint_settings(fake.endpoint())));
    let state = rec.wait_model(Duration::from_secs(10));
    let ModelState::Remote { model, url } = &state else {
        panic!("{state:?}")
    };
    assert_eq!(
        (model.as_str(), url.clone()),
        ("smol", format!("{}/v1", fake.url))
    );
    assert!(state.describe().contains("smol at http://127.0.0.1:"));

    let chat = app.create_chat().unwrap();
    let SendOutcome::Generating {
        assistant_message_id: id,
        ..
    } = app.send(chat.id, "What is 2+2?").unwrap()
    else {
        panic!()
    };
    let events = rec.wait_done(id, Duration::from_secs(10));
    assert_eq!(tokens(&events), "The answer is 4.");
    assert!(events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Stats { stats } if stats.completion_tokens == 9)));
    let stored = app.chat(chat.id).unwrap().messages;
    let answer = stored.iter().find(|m| m.id == id).unwrap();
    assert_eq!(answer.status, MessageStatus::Complete);
    assert_eq!(answer.content, "The answer is 4.");
    assert_eq!(answer.thinking, "Two plus two.Still four.");
    // The endpoint saw the conversation as messages (its template applies).
    let asked = fake.seen().last().unwrap().body["messages"].clone();
    assert_eq!(asked, json!([{"role": "user", "content": "What is 2+2?"}]));
}

#[test]
fn an_endpoint_that_cannot_be_used_leaves_the_app_working_and_says_why() {
    let fake = Fake::start(|_| Reply::Json(401, json!({"error": {"message": "no key"}})));
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), Some(&endpoint_settings(fake.endpoint())));
    let state = rec.wait_model(Duration::from_secs(10));
    assert!(
        matches!(state, ModelState::RemoteFailed { .. }),
        "{state:?}"
    );
    assert!(
        state.describe().contains("refused the API key"),
        "{}",
        state.describe()
    );
    let chat = app.create_chat().unwrap();
    let err = app.send(chat.id, "hello").unwrap_err();
    assert!(matches!(err, ChatError::ModelNotReady(_)), "{err:?}");
    // Commands still answer, and say why.
    let (_, reply, _) = common::run(&app, chat.id, "/status");
    assert!(reply.contains("endpoint cannot be used"), "{reply}");
}

#[test]
fn stop_in_the_app_keeps_a_remote_answer_as_interrupted() {
    let gone = Arc::new(AtomicBool::new(false));
    let flag = gone.clone();
    let fake = Fake::start(move |seen| match seen.path.as_str() {
        "/v1/models" => models(&["smol"]),
        _ => Reply::Endless(flag.clone()),
    });
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), Some(&endpoint_settings(fake.endpoint())));
    assert!(matches!(
        rec.wait_model(Duration::from_secs(10)),
        ModelState::Remote { .. }
    ));
    let chat = app.create_chat().unwrap();
    let SendOutcome::Generating {
        assistant_message_id: id,
        ..
    } = app.send(chat.id, "Count forever").unwrap()
    else {
        panic!()
    };
    rec.wait_event(id, 0, Duration::from_secs(10));
    assert!(app.stop(chat.id));
    let events = rec.wait_done(id, Duration::from_secs(10));
    assert_eq!(
        common::final_status(&events),
        Some(MessageStatus::Interrupted)
    );
    let stored = app.chat(chat.id).unwrap().messages;
    let answer = stored.iter().find(|m| m.id == id).unwrap();
    assert_eq!(answer.status, MessageStatus::Interrupted);
    assert!(answer.content.starts_with("tick "), "{answer:?}");
}

//! The chat UI's streams over HTTP: Server-Sent Events of `/quote` (the built-in passage, streamed
//! through the same pipeline as a model's answer, no model needed), and, with the SmolLM2 test
//! model, an answer's place while it waits for the engine behind an API request.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chat::quote::PASSAGE;
use common::{attr_after, fixture, fixture_with, test_model, Fixture, Sse, SseReader};

const WAIT: Duration = Duration::from_secs(30);

/// Starts `/quote` in a new chat; its chat id, message id, the event id to stream after, and the
/// answer's text the page already shows (its first token is sent at once, so it may be there).
async fn start_quote(f: &Fixture) -> (i64, String, u64, String) {
    let cid = f.new_chat().await;
    let (status, html) = f
        .htmx("POST", &format!("/chats/{cid}/messages"), "text=%2Fquote")
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let message = attr_after(&html, "sse-message=\"");
    let after = attr_after(&html, "sse-last-id=\"").parse().unwrap();
    let seed = unescape(&attr_after(&html, "sse-render=\"markdown\" data-seed=\""));
    (cid, message, after, seed)
}

/// An HTML attribute's text as the template escaped it.
fn unescape(attr: &str) -> String {
    [
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&quot;", "\""),
        ("&#x27;", "'"),
        ("&#x2f;", "/"),
        ("&amp;", "&"),
    ]
    .iter()
    .fold(attr.to_string(), |s, (from, to)| s.replace(from, to))
}

async fn stream(f: &Fixture, cid: i64, after: u64, last_event_id: Option<u64>) -> SseReader {
    let mut req = Request::get(format!("/chats/{cid}/stream?after={after}"));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    SseReader::new(f.send(req.body(Body::empty()).unwrap()).await)
}

/// Events until the terminal one (included).
async fn until_done(reader: &mut SseReader) -> Vec<Sse> {
    let mut out = Vec::new();
    while let Some(ev) = reader.next(WAIT).await {
        let done = matches!(ev.event.as_str(), "complete" | "error");
        out.push(ev);
        if done {
            return out;
        }
    }
    panic!("the stream ended before its answer did: {out:?}");
}

fn tokens(events: &[Sse]) -> String {
    events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json()["data"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_answer_streams_as_named_events_with_consecutive_ids() {
    let f = fixture();
    let (cid, message, after, seed) = start_quote(&f).await;
    let events = until_done(&mut stream(&f, cid, after, None).await).await;
    // What the page showed, then what the stream added: the whole passage, once.
    assert_eq!(seed + &tokens(&events), PASSAGE);
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names[names.len() - 2..], ["stats", "complete"]);
    for (i, e) in events.iter().enumerate() {
        let frame = e.json();
        assert_eq!(e.id.as_deref(), Some(frame["id"].to_string().as_str()));
        assert_eq!(frame["id"], after + 1 + i as u64, "ids grow by one");
        assert_eq!(frame["event"], e.event.as_str());
        assert_eq!(frame["chat"], cid);
        assert_eq!(frame["message"].to_string(), message);
    }
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_resumes_without_loss_or_duplication() {
    let f = fixture();
    let (cid, _, after, seed) = start_quote(&f).await;
    let mut first = stream(&f, cid, after, None).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(first.next(WAIT).await.unwrap());
    }
    drop(first); // the connection drops mid-answer
    let last: u64 = seen.last().unwrap().id.as_ref().unwrap().parse().unwrap();
    // EventSource reconnects to the same URL (the old `after`) with Last-Event-ID: the header wins.
    let rest = until_done(&mut stream(&f, cid, after, Some(last)).await).await;
    assert_eq!(
        rest[0].id.as_ref().unwrap().parse::<u64>().unwrap(),
        last + 1
    );
    seen.extend(rest);
    assert_eq!(seed + &tokens(&seen), PASSAGE);
}

#[tokio::test]
async fn a_stream_asked_for_after_the_answer_was_stored_says_so_once() {
    let f = fixture();
    let (cid, _, after, _) = start_quote(&f).await;
    until_done(&mut stream(&f, cid, after, None).await).await;
    // The answer is stored and its events dropped: one `complete` tells the page to read it.
    let mut late = stream(&f, cid, after, None).await;
    let ev = late.next(WAIT).await.unwrap();
    assert_eq!(ev.event, "complete");
    assert_eq!(ev.json()["data"], "stored");
    assert!(ev.json()["message"].is_null());
    // Nothing more until something happens.
    let quiet = tokio::time::timeout(Duration::from_millis(300), late.next(WAIT)).await;
    assert!(quiet.is_err(), "{quiet:?}");
}

#[tokio::test]
async fn stop_ends_the_stream_with_an_interrupted_answer() {
    let f = fixture();
    let (cid, _, after, _) = start_quote(&f).await;
    let mut reader = stream(&f, cid, after, None).await;
    reader.next(WAIT).await.unwrap();
    let (status, _) = f.htmx("POST", &format!("/chats/{cid}/stop"), "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let events = until_done(&mut reader).await;
    assert_eq!(events.last().unwrap().json()["data"], "interrupted");
    assert!(tokens(&events).len() < PASSAGE.len());
}

#[tokio::test]
async fn the_stream_of_a_missing_chat_is_a_404() {
    let f = fixture();
    let resp = f.get("/chats/4242/stream").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn page_wide_news_streams_as_app_state_events() {
    let f = fixture();
    let mut news = SseReader::new(f.get("/events").await);
    let (cid, _, _, _) = start_quote(&f).await;
    let mut seen = Vec::new();
    loop {
        let ev = news.next(WAIT).await.unwrap();
        assert_eq!(ev.event, "app-state");
        let state = ev.json();
        let done = state["busy"] == false && state["chat"] == cid;
        seen.push(state);
        if done {
            break;
        }
    }
    assert!(
        seen.iter().any(|s| s["busy"] == true && s["chat"] == cid),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s["trigger"] == "chats-changed"),
        "{seen:?}"
    );
}

/// A chat's answer that waits behind an API request shows its place (the chat UI dropped it and
/// showed only dots): in the page the send returns, as a replayed `queued` frame, then `queued`
/// with no text once it is next, then its tokens.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_waiting_behind_an_api_request_shows_its_place_then_its_tokens() {
    let mut settings = chat::Settings {
        model_path: Some(test_model()),
        temperature: Some(0.0),
        max_tokens: 6,
        context_len: 2048,
        ..chat::Settings::default()
    };
    settings.follow_ups.enabled = false;
    let f = fixture_with(Some(&settings));
    let app = f.server.chat();
    let start = std::time::Instant::now();
    while !app.model_state().is_ready() {
        assert!(start.elapsed() < WAIT, "the model loads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An API client's answer (queued as the API queues one) holds the engine at its first token.
    let (started, running) = std::sync::mpsc::channel();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let mut first = true;
    app.submit(chat::GenerationJob {
        prompt: chat::Prompt::Chat {
            messages: vec![engine::ChatMessage::new("user", "Count to ten.")],
            thinking: false,
            drop_oldest: false,
        },
        params: chat::Sampling {
            max_tokens: 4,
            ..settings.sampling()
        }
        .validate()
        .unwrap(),
        source: "api 127.0.0.1:9".into(),
        cancelled: Default::default(),
        sink: Box::new(move |e| {
            if matches!(e, chat::JobEvent::Token(_)) && std::mem::take(&mut first) {
                started.send(()).unwrap();
                held.recv().unwrap();
            }
        }),
        tools: None,
        follow_ups: None,
    })
    .unwrap();
    tokio::task::spawn_blocking(move || running.recv().unwrap())
        .await
        .unwrap();

    let cid = f.new_chat().await;
    let (status, html) = f
        .htmx("POST", &format!("/chats/{cid}/messages"), "text=Hi")
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains(r#"sse-swap="queued" sse-render="replace">Waiting for the model — 1 answer ahead</span>"#),
        "{html}"
    );
    let after: u64 = attr_after(&html, "sse-last-id=\"").parse().unwrap();
    // A page that attaches from the start gets the place replayed.
    let mut reader = stream(&f, cid, after - 1, None).await;
    let queued = reader.next(WAIT).await.unwrap();
    assert_eq!(queued.event, "queued");
    assert_eq!(
        queued.json()["data"],
        "Waiting for the model — 1 answer ahead"
    );
    assert_eq!(queued.json()["id"], after);

    release.send(()).unwrap();
    let events = until_done(&mut reader).await;
    assert_eq!(events[0].event, "queued", "{events:?}");
    assert_eq!(events[0].json()["data"], "", "next: the place goes");
    assert_eq!(events[1].event, "token", "{events:?}");
    assert!(!tokens(&events).is_empty());
    assert_eq!(events.last().unwrap().json()["data"], "complete");
}

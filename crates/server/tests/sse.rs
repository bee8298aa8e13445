//! The chat UI's streams over HTTP: Server-Sent Events of `/quote` (the built-in passage, streamed
//! through the same pipeline as a model's answer, no model needed).

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chat::quote::PASSAGE;
use common::{attr_after, fixture, Fixture, Sse, SseReader};

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

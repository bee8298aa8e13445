//! The stream protocol end to end, driven by `/quote` (no model): ordering, ids, coalescing,
//! replay after id N, snapshots, Stop.

mod common;

use std::time::{Duration, Instant};

use chat::quote::{pieces, PASSAGE};
use chat::{EventKind, MessageStatus, SendOutcome, Settings};
use common::{final_status, open, tokens};

const LONG: Duration = Duration::from_secs(30);

fn quote(app: &chat::ChatApp, chat_id: i64) -> i64 {
    match app.send(chat_id, "/quote").unwrap() {
        SendOutcome::Command {
            reply_message_id,
            streaming: true,
            ..
        } => reply_message_id,
        other => panic!("{other:?}"),
    }
}

#[test]
fn quote_streams_in_order_coalesced_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), None);
    let chat = app.create_chat().unwrap();
    let start = Instant::now();
    let id = quote(&app, chat.id);
    let events = rec.wait_done(id, LONG);
    let elapsed = start.elapsed();

    // Ids: 1, 2, 3, ... for a fresh chat, with nothing skipped.
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=events.len() as u64).collect::<Vec<_>>());
    assert!(events
        .iter()
        .all(|e| e.chat_id == chat.id && e.message_id == id));
    // Frames, then stats, then complete.
    let n = events.len();
    assert_eq!(final_status(&events), Some(MessageStatus::Complete));
    let EventKind::Stats { stats } = &events[n - 2].kind else {
        panic!("{:?}", events[n - 2])
    };
    assert!(events[..n - 2]
        .iter()
        .all(|e| matches!(e.kind, EventKind::Token { .. })));
    // No text lost, and bursts were coalesced: at most one frame per 16 pieces or per 30 ms.
    assert_eq!(tokens(&events), PASSAGE);
    let frames = n - 2;
    let pieces = pieces(PASSAGE).len();
    assert_eq!(stats.completion_tokens, pieces);
    let bound = pieces.div_ceil(16) + (elapsed.as_millis() / 30) as usize + 2;
    assert!(
        frames <= bound,
        "{frames} frames for {pieces} pieces in {elapsed:?}"
    );
    assert!(
        frames < pieces,
        "{frames} frames for {pieces} pieces: nothing was coalesced"
    );

    // Stored, and the events are released.
    let view = app.chat(chat.id).unwrap();
    let reply = view.messages.iter().find(|m| m.id == id).unwrap();
    assert_eq!(reply.status, MessageStatus::Complete);
    assert_eq!(reply.content, PASSAGE);
    assert_eq!(view.last_event_id, n as u64);
    assert!(!view.busy);
    let after = app.events_after(chat.id, 3);
    assert!(after.reload && after.events.is_empty(), "{after:?}");
    let after = app.events_after(chat.id, view.last_event_id);
    assert!(!after.reload && after.events.is_empty(), "{after:?}");
}

#[test]
fn one_token_frames_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        frame_max_tokens: 1,
        ..Settings::default()
    };
    let (app, rec) = open(dir.path(), Some(&settings));
    let chat = app.create_chat().unwrap();
    let id = quote(&app, chat.id);
    let events = rec.wait_done(id, LONG);
    let frames = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Token { .. }))
        .count();
    assert_eq!(frames, pieces(PASSAGE).len());
    assert_eq!(tokens(&events), PASSAGE);
}

#[test]
fn a_late_reader_resumes_from_any_id_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), None);
    let chat = app.create_chat().unwrap();
    let id = quote(&app, chat.id);
    // Wait until part of the passage went out, then attach as a reloaded UI would.
    rec.wait_event(id, 5, LONG);
    let view = app.chat(chat.id).unwrap();
    rec.wait_event(id, view.last_event_id, LONG);
    let partial = view.messages.iter().find(|m| m.id == id).unwrap().clone();
    assert_eq!(partial.status, MessageStatus::Streaming);
    assert!(view.busy);
    // The snapshot holds exactly the text of the events up to its last_event_id...
    let seen: Vec<_> = rec
        .stream(id)
        .into_iter()
        .filter(|e| e.id <= view.last_event_id)
        .collect();
    assert_eq!(partial.content, tokens(&seen));
    // ...and replay from there (or from any earlier id) gives each later event exactly once.
    let replay = app.events_after(chat.id, view.last_event_id);
    assert!(!replay.reload);
    let from_two = app.events_after(chat.id, 2);
    assert_eq!(from_two.events.first().map(|e| e.id), Some(3));
    let mut text = partial.content.clone();
    let mut last = view.last_event_id;
    for e in &replay.events {
        assert_eq!(e.id, last + 1, "no gap, no duplicate");
        last = e.id;
        if let EventKind::Token { text: t } = &e.kind {
            text.push_str(t);
        }
    }
    // Live events after the replay continue the sequence.
    let all = rec.wait_done(id, LONG);
    let replayed_to = last;
    for e in all.iter().filter(|e| e.id > replayed_to) {
        assert_eq!(e.id, last + 1);
        last = e.id;
        if let EventKind::Token { text: t } = &e.kind {
            text.push_str(t);
        }
    }
    assert_eq!(text, PASSAGE);
}

#[test]
fn stop_keeps_the_partial_quote_as_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), None);
    let chat = app.create_chat().unwrap();
    let id = quote(&app, chat.id);
    rec.wait_event(id, 0, LONG);
    assert!(matches!(
        app.send(chat.id, "/quote"),
        Err(chat::ChatError::Busy(_))
    ));
    assert!(app.stop(chat.id));
    let events = rec.wait_done(id, LONG);
    assert_eq!(
        final_status(&events),
        Some(MessageStatus::Interrupted),
        "{:?}",
        events.last()
    );
    let stored = app.chat(chat.id).unwrap();
    let reply = stored.messages.iter().find(|m| m.id == id).unwrap();
    assert_eq!(reply.status, MessageStatus::Interrupted);
    assert!(!reply.content.is_empty() && reply.content.len() < PASSAGE.len());
    assert_eq!(reply.content, tokens(&events));
    assert!(PASSAGE.starts_with(&reply.content));
    assert!(!app.stop(chat.id), "nothing left to stop");
}

#[test]
fn event_ids_keep_growing_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (chat_id, last) = {
        let (app, rec) = open(dir.path(), None);
        let chat = app.create_chat().unwrap();
        let id = quote(&app, chat.id);
        let events = rec.wait_done(id, LONG);
        (chat.id, events.last().unwrap().id)
    };
    let (app, rec) = open(dir.path(), None);
    assert_eq!(app.chat(chat_id).unwrap().last_event_id, last);
    let id = quote(&app, chat_id);
    let events = rec.wait_done(id, LONG);
    assert_eq!(events[0].id, last + 1);
}

#[test]
fn closing_the_app_mid_stream_stores_the_partial_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (chat_id, id) = {
        let (app, rec) = open(dir.path(), None);
        let chat = app.create_chat().unwrap();
        let id = quote(&app, chat.id);
        rec.wait_event(id, 0, LONG);
        app.shutdown();
        let events = rec.stream(id);
        assert!(events.last().unwrap().kind.is_terminal());
        (chat.id, id)
    };
    let (app, _rec) = open(dir.path(), None);
    assert!(
        app.notices().is_empty(),
        "a clean close leaves nothing to recover"
    );
    let view = app.chat(chat_id).unwrap();
    let reply = view.messages.iter().find(|m| m.id == id).unwrap();
    assert_eq!(reply.status, MessageStatus::Interrupted);
    assert!(!reply.content.is_empty());
}

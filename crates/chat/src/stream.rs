//! The stream thread: turns the deltas of every answer in progress (from the engine worker and
//! from `/quote`) into numbered, coalesced [`StreamEvent`]s, checkpoints the text, stores the
//! finished message, and hands events to the app's sink.
//!
//! One thread for all answers keeps each chat's events in order, and keeps a slow sink (the
//! webview) from ever stalling the engine: the worker only pushes onto a channel.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::core::Core;
use crate::protocol::{upsert_tool, Coalescer, DeltaKind, End, EventKind, Frame, StreamInput};
use crate::stats::{Finish, MessageStats};
use crate::store::{ChatId, FinishedMessage, MessageId, MessageStatus};
use crate::tools::ToolRecord;

/// How often the text of an answer in progress is saved (crash recovery).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// An answer in progress.
struct Active {
    chat_id: ChatId,
    coalescer: Coalescer,
    content: String,
    thinking: String,
    thinking_since: Option<Instant>,
    thinking_ms: Option<i64>,
    tools: Vec<ToolRecord>,
    saved_at: Instant,
}

impl Active {
    fn new(chat_id: ChatId, core: &Core, now: Instant) -> Active {
        Active {
            chat_id,
            coalescer: Coalescer::new(core.frame_config()),
            content: String::new(),
            thinking: String::new(),
            thinking_since: None,
            thinking_ms: None,
            tools: Vec::new(),
            saved_at: now,
        }
    }
}

pub(crate) fn spawn(core: Arc<Core>) -> (Sender<StreamInput>, JoinHandle<()>) {
    let (tx, rx) = channel();
    let thread = std::thread::Builder::new()
        .name("chat-stream".into())
        .spawn(move || run(&core, rx))
        .expect("spawn the stream thread");
    (tx, thread)
}

/// A producer's end of one answer's stream (a generation job's sink): its inputs go to the
/// stream thread in order, except that the answer's first delta, when nothing of the answer went
/// before it, is published as a frame on the producer's own thread, and the stream thread told
/// it was. The stream thread would publish it at once as well (the first delta is a frame at
/// once, see [`crate::protocol::Coalescer`]), but only once the scheduler runs it: with the
/// engine decoding on every core, that hand-over made the app's first token up to 10 ms later
/// than the engine's. One frame per answer costs the engine nothing it would notice.
pub(crate) struct Producer {
    core: Arc<Core>,
    tx: Sender<StreamInput>,
    /// Whether anything of the answer went to the stream thread.
    started: bool,
    /// Whether the answer was told it waits behind others.
    waited: bool,
}

impl Producer {
    pub fn new(core: Arc<Core>, tx: Sender<StreamInput>) -> Producer {
        Producer {
            core,
            tx,
            started: false,
            waited: false,
        }
    }

    /// Publishes the answer's place in the engine's queue ([`EventKind::Queued`]) on the caller's
    /// thread, as the queue tells it: under the queue's lock, so in order, and before the
    /// answer's first delta, which follows only once the queue handed the answer to the worker.
    /// Nothing while the answer has not waited yet and is next (the queue tells every answer
    /// its place, `0` to one that runs at once): a frame there would only add noise.
    pub fn queued(&mut self, chat_id: ChatId, message_id: MessageId, ahead: usize) {
        if self.started || (ahead == 0 && !self.waited) {
            return;
        }
        self.waited = true;
        self.core
            .publish(chat_id, message_id, EventKind::Queued { ahead });
    }

    /// Sends `input`; false when the stream thread is gone (the app is closing).
    pub fn send(&mut self, mut input: StreamInput) -> bool {
        if let StreamInput::Delta {
            chat_id,
            message_id,
            kind,
            text,
            shown,
        } = &mut input
        {
            if text.is_empty() {
                // Not a frame: the stream thread only looks at its clock.
            } else if !self.started {
                let frame = Frame {
                    kind: *kind,
                    text: text.clone(),
                    tokens: 1,
                };
                emit_frame(&self.core, *chat_id, *message_id, frame);
                *shown = true;
                self.started = true;
            }
        } else {
            self.started = true;
        }
        self.tx.send(input).is_ok()
    }
}

fn emit_frame(core: &Core, chat_id: ChatId, message_id: MessageId, frame: Frame) {
    core.publish(chat_id, message_id, frame.into_event());
}

fn run(core: &Core, rx: Receiver<StreamInput>) {
    let mut active: HashMap<MessageId, Active> = HashMap::new();
    loop {
        let deadline = active.values().filter_map(|a| a.coalescer.deadline()).min();
        let input = match deadline {
            Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let now = Instant::now();
        match input {
            Ok(StreamInput::Delta {
                chat_id,
                message_id,
                kind,
                text,
                shown,
            }) => {
                let a = active
                    .entry(message_id)
                    .or_insert_with(|| Active::new(chat_id, core, now));
                match kind {
                    DeltaKind::Thinking => {
                        a.thinking_since.get_or_insert(now);
                        a.thinking.push_str(&text);
                    }
                    DeltaKind::Answer => {
                        if let (Some(since), None) = (a.thinking_since, a.thinking_ms) {
                            a.thinking_ms = Some(now.duration_since(since).as_millis() as i64);
                        }
                        a.content.push_str(&text);
                    }
                }
                let frames = match shown {
                    true => {
                        a.coalescer.shown(kind);
                        Vec::new()
                    }
                    false => a.coalescer.push(kind, &text, now),
                };
                for frame in frames {
                    emit_frame(core, chat_id, message_id, frame);
                }
                if now.duration_since(a.saved_at) >= CHECKPOINT_EVERY {
                    a.saved_at = now;
                    let saved = core.store(|s| s.checkpoint(message_id, &a.content, &a.thinking));
                    if let Err(e) = saved {
                        tracing::warn!(message_id, error = %e, "checkpoint failed");
                    }
                }
            }
            Ok(StreamInput::Tool {
                chat_id,
                message_id,
                record,
            }) => {
                let a = active
                    .entry(message_id)
                    .or_insert_with(|| Active::new(chat_id, core, now));
                // Text before the call is shown first: it was said first.
                if let Some(frame) = a.coalescer.finish() {
                    emit_frame(core, chat_id, message_id, frame);
                }
                upsert_tool(&mut a.tools, &record);
                core.publish(
                    chat_id,
                    message_id,
                    EventKind::Tool {
                        call: Box::new(record),
                    },
                );
            }
            Ok(StreamInput::Finish {
                chat_id,
                message_id,
                end,
            }) => finish(core, chat_id, message_id, active.remove(&message_id), end),
            Err(RecvTimeoutError::Timeout) => {
                for (&message_id, a) in active.iter_mut() {
                    if let Some(frame) = a.coalescer.flush_due(now) {
                        emit_frame(core, a.chat_id, message_id, frame);
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Every producer is gone (the app is closing): keep what was said.
    for (message_id, a) in active.drain().collect::<Vec<_>>() {
        let stats = MessageStats {
            finish: Some(Finish::Cancelled),
            ..MessageStats::default()
        };
        finish(core, a.chat_id, message_id, Some(a), End::Finished(stats));
    }
}

fn finish(core: &Core, chat_id: ChatId, message_id: MessageId, a: Option<Active>, end: End) {
    let mut done = FinishedMessage::default();
    if let Some(mut a) = a {
        if let Some(frame) = a.coalescer.finish() {
            emit_frame(core, chat_id, message_id, frame);
        }
        if let (Some(since), None) = (a.thinking_since, a.thinking_ms) {
            a.thinking_ms = Some(since.elapsed().as_millis() as i64);
        }
        done.content = a.content;
        done.thinking = a.thinking;
        done.thinking_ms = a.thinking_ms;
        done.tools = a.tools;
    }
    let terminal = match end {
        End::Finished(stats) => {
            let status = match stats.finish {
                Some(Finish::Cancelled) => MessageStatus::Interrupted,
                _ => MessageStatus::Complete,
            };
            done.status = Some(status);
            done.stats = Some(stats);
            EventKind::Complete { status }
        }
        End::Failed(message) => {
            done.status = Some(MessageStatus::Failed);
            done.error = Some(message.clone());
            EventKind::Error { message }
        }
    };
    core.end_answer(chat_id, message_id, &done, terminal);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::events::AppEvent;
    use crate::settings::Settings;
    use crate::store::{Chat, Message, MessageKind, NewMessage, Store};

    /// A chat with an answer's placeholder, and a core whose sink records every event.
    #[allow(clippy::type_complexity)]
    fn answering() -> (Arc<Core>, Arc<Mutex<Vec<AppEvent>>>, Chat, Message) {
        let mut store = Store::open_in_memory().unwrap();
        let chat = store.create_chat(true, &serde_json::json!({})).unwrap();
        let msg = store
            .add_message(NewMessage::answer_placeholder(chat.id, MessageKind::Chat))
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let core = Arc::new(Core::new(
            store,
            Settings::default(),
            Arc::new(move |e| seen.lock().unwrap().push(e)),
        ));
        (core, events, chat, msg)
    }

    /// The answer's first delta is a frame before `send` returns, without waiting for the
    /// stream thread to be scheduled; the rest follow through the stream thread, in order, and
    /// the stored answer has all of it.
    #[test]
    fn an_answers_first_delta_is_published_on_the_producers_thread() {
        let (core, events, chat, msg) = answering();
        let (tx, thread) = spawn(core.clone());
        let mut producer = Producer::new(core.clone(), tx);
        let delta = |kind, text: &str| StreamInput::Delta {
            chat_id: chat.id,
            message_id: msg.id,
            kind,
            text: text.into(),
            shown: false,
        };
        assert!(producer.send(delta(DeltaKind::Thinking, "Hm.")));
        match events.lock().unwrap().as_slice() {
            [AppEvent::Stream(s)] => {
                assert_eq!(s.kind, EventKind::Thinking { text: "Hm.".into() })
            }
            other => panic!("the first frame is not out yet: {other:?}"),
        }
        // Later deltas (a new kind's first among them) go through the stream thread, after it.
        producer.send(delta(DeltaKind::Thinking, " Two."));
        producer.send(delta(DeltaKind::Answer, "Hello"));
        producer.send(delta(DeltaKind::Answer, ", world"));
        producer.send(StreamInput::Finish {
            chat_id: chat.id,
            message_id: msg.id,
            end: End::Finished(MessageStats {
                finish: Some(Finish::Stop),
                ..MessageStats::default()
            }),
        });
        drop(producer);
        thread.join().unwrap();

        let stored = core.store(|s| s.message(msg.id)).unwrap();
        assert_eq!(stored.thinking, "Hm. Two.");
        assert_eq!(stored.content, "Hello, world");
        let events = events.lock().unwrap();
        let stream: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                AppEvent::Stream(s) => Some(s),
                _ => None,
            })
            .collect();
        assert!(stream.windows(2).all(|w| w[0].id < w[1].id), "{stream:?}");
        let mut names: Vec<&str> = stream.iter().map(|s| s.kind.name()).collect();
        names.dedup();
        assert_eq!(names, ["thinking", "token", "stats", "complete"]);
        let text: String = stream
            .iter()
            .filter_map(|s| match &s.kind {
                EventKind::Token { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Hello, world");
    }

    #[test]
    fn thinking_is_stored_with_its_duration_and_streams_before_the_answer() {
        let (core, events, chat, msg) = answering();
        let (tx, thread) = spawn(core.clone());
        let send = |kind, text: &str| {
            let input = StreamInput::Delta {
                chat_id: chat.id,
                message_id: msg.id,
                kind,
                text: text.into(),
                shown: false,
            };
            tx.send(input).unwrap();
        };
        send(DeltaKind::Thinking, "Two plus ");
        send(DeltaKind::Thinking, "two.");
        // Thinking has begun once its first frame is out (within one frame interval); the
        // answer starts at least 50 ms later.
        let start = Instant::now();
        while !events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, AppEvent::Stream(s) if s.kind.name() == "thinking"))
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no thinking frame"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        send(DeltaKind::Answer, "4");
        let stats = MessageStats {
            finish: Some(Finish::Stop),
            ..MessageStats::default()
        };
        tx.send(StreamInput::Finish {
            chat_id: chat.id,
            message_id: msg.id,
            end: End::Finished(stats),
        })
        .unwrap();
        drop(tx);
        thread.join().unwrap();

        let stored = core.store(|s| s.message(msg.id)).unwrap();
        assert_eq!(stored.thinking, "Two plus two.");
        assert_eq!(stored.content, "4");
        assert_eq!(stored.status, MessageStatus::Complete);
        assert!(stored.thinking_ms.is_some_and(|ms| ms >= 50), "{stored:?}");
        let mut names: Vec<&str> = events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                AppEvent::Stream(s) => Some(s.kind.name()),
                _ => None,
            })
            .collect();
        // On a busy machine the two thinking deltas may land in two frames.
        names.dedup();
        assert_eq!(names, ["thinking", "token", "stats", "complete"]);
    }
}

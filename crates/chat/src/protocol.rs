//! The stream protocol: the "SSE semantics" between an answer being produced and the UI.
//!
//! Every answer (a model generation, or `/quote`) emits, in order:
//! `queued`* while it waits for the engine behind other answers, then
//! `thinking`* / `token`* frames, then one `stats` (when it finished normally or was stopped),
//! then exactly one terminal event: `complete` (status `complete` or `interrupted`) or `error`
//! (status `failed`). Each [`StreamEvent`] carries a per-chat sequence id, strictly increasing
//! (also across restarts: the store remembers the chat's last id), and its message id.
//!
//! [`EventLog`] keeps each chat's events until their message is stored. A UI that reloads or
//! attaches late:
//! 1. reads the chat ([`crate::ChatApp::chat`]): stored messages, the in-progress answer's text
//!    so far, and `last_event_id`, the id of the last event that text includes;
//! 2. applies live events with a larger id, and asks [`EventLog::after`] (`events_after`) for
//!    any between. When events after the id it gives were already dropped because their
//!    message was stored, the answer says `reload` (and carries no events): read the chat again.
//!
//! [`Coalescer`] turns token bursts into frames: one frame at most every `interval`, or every
//! `max_tokens` deltas, or when the delta kind changes. Frames concatenate to exactly the text
//! the engine produced.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::stats::MessageStats;
use crate::store::{ChatId, MessageId, MessageStatus};
use crate::tools::ToolRecord;

/// Per-chat sequence number of a stream event.
pub type EventId = u64;

/// What happened; the `event` field of the JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The answer waits for the engine: `ahead` answers (of any chat or API client, the running
    /// one included) go first. Sent when an answer has to wait and whenever its place changes;
    /// `ahead: 0` after a wait means it is next. An answer that never waits sends none.
    Queued {
        ahead: usize,
    },
    /// Text of the model's reasoning (`<think>` block).
    Thinking {
        text: String,
    },
    /// Text of the answer.
    Token {
        text: String,
    },
    /// A tool call of the answer, new or updated (a later event with the same `call.index`
    /// replaces the earlier one).
    Tool {
        /// Boxed: far larger than the other events.
        call: Box<ToolRecord>,
    },
    Stats {
        stats: MessageStats,
    },
    /// The message is stored with `status` (`complete` or `interrupted`).
    Complete {
        status: MessageStatus,
    },
    /// The message is stored as `failed`; `message` says why.
    Error {
        message: String,
    },
}

impl EventKind {
    /// The event's name (`queued`, `thinking`, `token`, `tool`, `stats`, `complete`, `error`).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Queued { .. } => "queued",
            EventKind::Thinking { .. } => "thinking",
            EventKind::Token { .. } => "token",
            EventKind::Tool { .. } => "tool",
            EventKind::Stats { .. } => "stats",
            EventKind::Complete { .. } => "complete",
            EventKind::Error { .. } => "error",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, EventKind::Complete { .. } | EventKind::Error { .. })
    }
}

/// One event of an answer's stream. JSON (flat):
/// `{"id":12,"chat_id":3,"message_id":41,"event":"token","text":"Hello"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamEvent {
    pub id: EventId,
    pub chat_id: ChatId,
    pub message_id: MessageId,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The answer to "events after id N".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventsAfter {
    /// Every retained event with an id above the one asked for, in order (empty if `reload`).
    pub events: Vec<StreamEvent>,
    /// Events after the id asked for were dropped because their message is stored: read the
    /// chat again (its `last_event_id` is where to resume).
    pub reload: bool,
    /// The chat's latest event id.
    pub last_id: EventId,
}

/// Which text a delta extends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaKind {
    Thinking,
    Answer,
}

/// How an answer ended, as its producer reports it.
#[derive(Clone, Debug)]
pub(crate) enum End {
    Finished(MessageStats),
    Failed(String),
}

/// What producers (the engine worker's jobs, `/quote`) send the stream thread.
pub(crate) enum StreamInput {
    Delta {
        chat_id: ChatId,
        message_id: MessageId,
        kind: DeltaKind,
        text: String,
        /// Already published as a frame by its producer (an answer's first delta, see
        /// `stream::Producer`): the stream thread keeps its text and publishes nothing.
        shown: bool,
    },
    /// A tool call's record (see [`EventKind::Tool`]).
    Tool {
        chat_id: ChatId,
        message_id: MessageId,
        record: ToolRecord,
    },
    Finish {
        chat_id: ChatId,
        message_id: MessageId,
        end: End,
    },
}

/// How token bursts become frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameConfig {
    /// A frame waits at most this long after its first delta.
    pub interval: Duration,
    /// A frame holds at most this many deltas.
    pub max_tokens: usize,
}

impl Default for FrameConfig {
    fn default() -> Self {
        FrameConfig {
            interval: Duration::from_millis(30),
            max_tokens: 16,
        }
    }
}

/// A coalesced run of deltas of one kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: DeltaKind,
    pub text: String,
    pub tokens: usize,
}

impl Frame {
    pub fn into_event(self) -> EventKind {
        match self.kind {
            DeltaKind::Thinking => EventKind::Thinking { text: self.text },
            DeltaKind::Answer => EventKind::Token { text: self.text },
        }
    }
}

/// Batches deltas into frames (pure: the caller supplies the time). The first delta of each kind
/// is a frame at once: batching is for the tokens after it, and holding the first one an interval
/// made the app's first token an interval (30 ms) later than the engine's.
#[derive(Debug)]
pub struct Coalescer {
    config: FrameConfig,
    pending: Option<(Frame, Instant)>,
    /// Whether a delta of each kind (thinking, answer) was seen.
    started: [bool; 2],
}

impl Coalescer {
    pub fn new(config: FrameConfig) -> Self {
        Coalescer {
            config,
            pending: None,
            started: [false; 2],
        }
    }

    /// Adds a delta; returns the frames now complete (at most two: a kind change flushes).
    pub fn push(&mut self, kind: DeltaKind, text: &str, now: Instant) -> Vec<Frame> {
        let mut out = Vec::new();
        if text.is_empty() {
            out.extend(self.flush_due(now));
            return out;
        }
        if self.pending.as_ref().is_some_and(|(f, _)| f.kind != kind) {
            out.extend(self.finish());
        }
        let (frame, _) = self.pending.get_or_insert_with(|| {
            let frame = Frame {
                kind,
                text: String::new(),
                tokens: 0,
            };
            (frame, now)
        });
        frame.text.push_str(text);
        frame.tokens += 1;
        let first = !std::mem::replace(&mut self.started[kind as usize], true);
        if first || frame.tokens >= self.config.max_tokens.max(1) {
            out.extend(self.finish());
        } else {
            out.extend(self.flush_due(now));
        }
        out
    }

    /// The first delta of `kind` was published as a frame by its producer: the deltas after it
    /// batch as they would after a first frame of ours.
    pub fn shown(&mut self, kind: DeltaKind) {
        self.started[kind as usize] = true;
    }

    /// When the pending frame is due, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|(_, since)| *since + self.config.interval)
    }

    /// The pending frame, if it is due at `now`.
    pub fn flush_due(&mut self, now: Instant) -> Option<Frame> {
        match self.deadline() {
            Some(due) if due <= now => self.finish(),
            _ => None,
        }
    }

    /// The pending frame, due or not (the stream ended).
    pub fn finish(&mut self) -> Option<Frame> {
        self.pending.take().map(|(frame, _)| frame)
    }
}

/// Puts `record` in its place among an answer's calls: it replaces the one with its index.
pub fn upsert_tool(tools: &mut Vec<ToolRecord>, record: &ToolRecord) {
    match tools.iter_mut().find(|t| t.index == record.index) {
        Some(old) => old.clone_from(record),
        None => tools.push(record.clone()),
    }
}

/// The text of an answer in progress, as its events so far describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Partial {
    pub content: String,
    pub thinking: String,
    /// The latest record of each tool call so far.
    pub tools: Vec<ToolRecord>,
    /// Answers ahead of it while it waits for the engine (its last `queued` event, until its
    /// first delta); `None` once it is next.
    pub ahead: Option<usize>,
}

#[derive(Debug, Default)]
struct ChatLog {
    last_id: EventId,
    /// Highest id of an event dropped because its message was stored.
    dropped_through: EventId,
    events: VecDeque<StreamEvent>,
    partial: HashMap<MessageId, Partial>,
}

/// Per-chat event logs: ids, retention until the message is stored, replay.
#[derive(Debug, Default)]
pub struct EventLog {
    chats: HashMap<ChatId, ChatLog>,
}

impl EventLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the chat has a log (its ids are already seeded).
    pub fn knows(&self, chat_id: ChatId) -> bool {
        self.chats.contains_key(&chat_id)
    }

    /// Starts a chat's ids after `last_id` (the store's `last_event_id`); no effect on a chat
    /// already known.
    pub fn seed(&mut self, chat_id: ChatId, last_id: EventId) {
        self.chats.entry(chat_id).or_insert_with(|| ChatLog {
            last_id,
            dropped_through: last_id,
            ..ChatLog::default()
        });
    }

    /// Gives `kind` the chat's next id and keeps it until [`release`](Self::release).
    pub fn append(
        &mut self,
        chat_id: ChatId,
        message_id: MessageId,
        kind: EventKind,
    ) -> StreamEvent {
        let log = self.chats.entry(chat_id).or_default();
        log.last_id += 1;
        let partial = log.partial.entry(message_id).or_default();
        match &kind {
            EventKind::Queued { ahead } => partial.ahead = Some(*ahead).filter(|&n| n > 0),
            EventKind::Thinking { text } => partial.thinking.push_str(text),
            EventKind::Token { text } => partial.content.push_str(text),
            EventKind::Tool { call } => upsert_tool(&mut partial.tools, call),
            _ => {}
        }
        if !matches!(kind, EventKind::Queued { .. }) {
            partial.ahead = None;
        }
        let event = StreamEvent {
            id: log.last_id,
            chat_id,
            message_id,
            kind,
        };
        log.events.push_back(event.clone());
        event
    }

    /// The message is stored: its events are no longer needed.
    pub fn release(&mut self, chat_id: ChatId, message_id: MessageId) {
        let Some(log) = self.chats.get_mut(&chat_id) else {
            return;
        };
        log.partial.remove(&message_id);
        let mut dropped = log.dropped_through;
        log.events.retain(|e| {
            let keep = e.message_id != message_id;
            if !keep {
                dropped = dropped.max(e.id);
            }
            keep
        });
        log.dropped_through = dropped;
    }

    /// Forgets a deleted chat.
    pub fn forget(&mut self, chat_id: ChatId) {
        self.chats.remove(&chat_id);
    }

    pub fn last_id(&self, chat_id: ChatId) -> Option<EventId> {
        self.chats.get(&chat_id).map(|log| log.last_id)
    }

    /// The text so far of a message still streaming, if it has events.
    pub fn partial(&self, chat_id: ChatId, message_id: MessageId) -> Option<&Partial> {
        self.chats.get(&chat_id)?.partial.get(&message_id)
    }

    /// Events with an id above `after` (see the module docs for `reload`).
    pub fn after(&self, chat_id: ChatId, after: EventId) -> EventsAfter {
        let Some(log) = self.chats.get(&chat_id) else {
            return EventsAfter {
                events: Vec::new(),
                reload: true,
                last_id: 0,
            };
        };
        if after < log.dropped_through || after > log.last_id {
            return EventsAfter {
                events: Vec::new(),
                reload: true,
                last_id: log.last_id,
            };
        }
        EventsAfter {
            events: log
                .events
                .iter()
                .filter(|e| e.id > after)
                .cloned()
                .collect(),
            reload: false,
            last_id: log.last_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> EventKind {
        EventKind::Token { text: text.into() }
    }

    #[test]
    fn stream_event_json_is_flat() {
        let e = StreamEvent {
            id: 7,
            chat_id: 1,
            message_id: 2,
            kind: token("Hi"),
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":7,"chat_id":1,"message_id":2,"event":"token","text":"Hi"})
        );
        assert_eq!(serde_json::from_value::<StreamEvent>(json).unwrap(), e);
        let done = StreamEvent {
            kind: EventKind::Complete {
                status: MessageStatus::Interrupted,
            },
            ..e
        };
        let json = serde_json::to_value(&done).unwrap();
        assert_eq!(json["event"], "complete");
        assert_eq!(json["status"], "interrupted");
    }

    #[test]
    fn kind_change_and_token_count_flush_frames() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(FrameConfig {
            interval: Duration::from_secs(10),
            max_tokens: 3,
        });
        assert_eq!(c.push(DeltaKind::Thinking, "a", t0)[0].text, "a", "first");
        assert!(c.push(DeltaKind::Thinking, "b", t0).is_empty());
        let frames = c.push(DeltaKind::Answer, "c", t0);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!((&*frames[0].text, &*frames[1].text), ("b", "c"));
        assert!(c.push(DeltaKind::Answer, "d", t0).is_empty());
        assert!(c.push(DeltaKind::Answer, "e", t0).is_empty());
        let frames = c.push(DeltaKind::Answer, "f", t0);
        assert_eq!(frames[0].text, "def");
        assert_eq!(c.finish(), None);
    }

    #[test]
    fn the_first_token_is_a_frame_at_once() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(FrameConfig {
            interval: Duration::from_millis(30),
            max_tokens: 16,
        });
        let frames = c.push(DeltaKind::Answer, "Hello", t0);
        assert_eq!(
            frames.len(),
            1,
            "held for an interval: the app's first token came late"
        );
        assert_eq!((frames[0].text.as_str(), frames[0].tokens), ("Hello", 1));
        assert_eq!(c.deadline(), None);
        assert!(
            c.push(DeltaKind::Answer, " there", t0).is_empty(),
            "the next ones batch"
        );
    }

    #[test]
    fn a_frame_is_due_one_interval_after_its_first_delta() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Coalescer::new(FrameConfig {
            interval: ms(30),
            max_tokens: 100,
        });
        assert_eq!(
            c.push(DeltaKind::Answer, "w", t0).len(),
            1,
            "the first at once"
        );
        assert!(c.push(DeltaKind::Answer, "x", t0).is_empty());
        assert!(c.push(DeltaKind::Answer, "y", t0 + ms(20)).is_empty());
        assert_eq!(c.deadline(), Some(t0 + ms(30)));
        assert_eq!(c.flush_due(t0 + ms(29)), None);
        let frames = c.push(DeltaKind::Answer, "z", t0 + ms(31));
        assert_eq!(frames[0].text, "xyz");
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn release_drops_a_messages_events_and_asks_for_reload() {
        let mut log = EventLog::new();
        log.seed(1, 10);
        let a = log.append(1, 100, token("a"));
        let b = log.append(1, 200, token("b"));
        assert_eq!((a.id, b.id), (11, 12));
        assert_eq!(log.after(1, 10).events, vec![a.clone(), b.clone()]);
        assert_eq!(log.after(1, 11).events, vec![b.clone()]);
        log.release(1, 100);
        // Event 11 is gone: a UI that saw only up to 10 must reload.
        let after = log.after(1, 10);
        assert!(after.reload && after.events.is_empty());
        // One that saw 11 misses nothing.
        let after = log.after(1, 11);
        assert_eq!((after.reload, after.events), (false, vec![b]));
        assert!(log.after(1, 99).reload, "an id from the future is a reload");
        assert!(log.after(2, 0).reload, "an unknown chat is a reload");
    }
}

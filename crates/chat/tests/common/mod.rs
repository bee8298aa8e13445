//! Helpers shared by the integration tests: an event recorder and app set-up.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chat::{
    AppEvent, AppPaths, ChatApp, CommandAction, EventKind, MessageId, ModelState, SendOutcome,
    Settings, StreamEvent,
};

/// The real test model (fetched by `bash models/fetch.sh`).
pub fn model_path() -> PathBuf {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "the test model {} is missing: run `bash models/fetch.sh`",
        path.display()
    );
    path
}

/// Collects every event the app emits.
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<AppEvent>>,
    changed: Condvar,
}

impl Recorder {
    pub fn sink(self: &Arc<Self>) -> chat::EventSink {
        let me = self.clone();
        Arc::new(move |e| {
            me.events.lock().unwrap().push(e);
            me.changed.notify_all();
        })
    }

    /// Waits until `check` finds what it looks for in the events so far.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&[AppEvent]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut events = self.events.lock().unwrap();
        loop {
            if let Some(found) = check(&events) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {timeout:?}; events: {events:#?}"
            );
            events = self.changed.wait_timeout(events, left).unwrap().0;
        }
    }

    /// How many events so far match.
    pub fn count(&self, matches: impl Fn(&AppEvent) -> bool) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches(e))
            .count()
    }

    /// The stream events of one message, so far.
    pub fn stream(&self, message_id: MessageId) -> Vec<StreamEvent> {
        streams(&self.events.lock().unwrap(), message_id)
    }

    pub fn all_streams(&self) -> Vec<StreamEvent> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                AppEvent::Stream(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits for the message's terminal event; returns all its events.
    pub fn wait_done(&self, message_id: MessageId, timeout: Duration) -> Vec<StreamEvent> {
        self.wait_for(timeout, |events| {
            let s = streams(events, message_id);
            s.last().filter(|e| e.kind.is_terminal()).map(|_| s.clone())
        })
    }

    /// Waits until the message's stream has reached event id `at_least` (any id if 0).
    pub fn wait_event(&self, message_id: MessageId, at_least: u64, timeout: Duration) {
        self.wait_for(timeout, |events| {
            streams(events, message_id)
                .iter()
                .any(|e| e.id >= at_least)
                .then_some(())
        })
    }

    /// Waits until the latest model state is settled (ready or failed, local or remote), and
    /// returns it.
    pub fn wait_model(&self, timeout: Duration) -> ModelState {
        self.wait_for(timeout, |events| {
            let last = events.iter().rev().find_map(|e| match e {
                AppEvent::ModelState(s) => Some(s),
                _ => None,
            });
            last.filter(|s| {
                matches!(
                    s,
                    ModelState::Ready { .. }
                        | ModelState::Failed { .. }
                        | ModelState::Remote { .. }
                        | ModelState::RemoteFailed { .. }
                )
            })
            .cloned()
        })
    }
}

fn streams(events: &[AppEvent], message_id: MessageId) -> Vec<StreamEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            AppEvent::Stream(s) if s.message_id == message_id => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// The answer text the token events carry.
/// The status the stream ended with: its last event's, when that is `complete`.
pub fn final_status(events: &[StreamEvent]) -> Option<chat::MessageStatus> {
    match &events.last()?.kind {
        EventKind::Complete { status } => Some(*status),
        _ => None,
    }
}

pub fn tokens(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Token { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

pub fn paths(dir: &Path) -> AppPaths {
    AppPaths {
        data_dir: dir.join("data"),
        config_dir: dir.join("config"),
        models_dir: dir.join("models"),
    }
}

/// Opens an app in `dir`, with `settings` written first when given.
pub fn open(dir: &Path, settings: Option<&Settings>) -> (ChatApp, Arc<Recorder>) {
    let paths = paths(dir);
    if let Some(s) = settings {
        s.save(&paths.settings_file()).unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    let app = ChatApp::open(paths, recorder.sink()).unwrap();
    (app, recorder)
}

/// Settings for model tests: the test model, greedy, short answers.
pub fn model_settings(max_tokens: usize) -> Settings {
    Settings {
        model_path: Some(model_path()),
        temperature: Some(0.0),
        max_tokens,
        context_len: 2048,
        ..Settings::default()
    }
}

/// Sends a message that starts an answer; returns the answer's message id.
pub fn send(app: &ChatApp, chat_id: i64, text: &str) -> i64 {
    match app.send(chat_id, text).unwrap() {
        SendOutcome::Generating {
            assistant_message_id,
            ..
        } => assistant_message_id,
        other => panic!("{other:?}"),
    }
}

/// Runs a command; returns its name, reply text and action.
pub fn run(app: &ChatApp, chat_id: i64, text: &str) -> (String, String, Option<CommandAction>) {
    match app.send(chat_id, text).unwrap() {
        SendOutcome::Command {
            command,
            reply_message_id,
            streaming: false,
            action,
            ..
        } => {
            let view = app.chat(chat_id).unwrap();
            let reply = view
                .messages
                .iter()
                .find(|m| m.id == reply_message_id)
                .unwrap();
            (command, reply.content.clone(), action)
        }
        other => panic!("{text}: {other:?}"),
    }
}

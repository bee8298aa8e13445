//! [`Core`]: the state the facade, the stream thread and the worker's callbacks share (the store,
//! the per-chat event log, the answers in progress, the settings, the event sink and the stream
//! thread's input), behind operations that each take the locks they need, in one order: jobs,
//! then log, then store. No lock is held while the sink runs.
//!
//! Beginning an answer has one owner, [`Core::begin_answer`]: the chat must exist and be idle,
//! the question and the answer's `streaming` placeholder are written, and the answer becomes a
//! job, all under the jobs lock, so two requests can never both start an answer in one chat.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use crate::error::{ChatError, Result};
use crate::events::{AppEvent, EventSink};
use crate::followups::FollowUps;
use crate::protocol::{EventId, EventKind, EventLog, EventsAfter, FrameConfig, StreamInput};
use crate::settings::Settings;
use crate::store::{ChatId, FinishedMessage, Message, MessageId, MessageStatus, Store};
use crate::views::ChatView;

/// An answer in progress (or queued): its chat and its Stop flag.
struct Job {
    chat_id: ChatId,
    cancelled: Arc<AtomicBool>,
}

/// What [`Core::begin_answer`] wrote and the Stop flag of the answer it started.
pub(crate) struct Turn {
    pub question: Message,
    pub answer: Message,
    pub cancelled: Arc<AtomicBool>,
}

pub(crate) struct Core {
    jobs: Mutex<HashMap<MessageId, Job>>,
    log: Mutex<EventLog>,
    store: Mutex<Store>,
    settings: Mutex<Settings>,
    sink: EventSink,
    /// Closed (taken) at shutdown, which ends the stream thread once its producers are gone.
    stream: Mutex<Option<Sender<StreamInput>>>,
    /// Per chat, the follow-ups of its latest answer: asked for, then ready (in memory only).
    follow_ups: Mutex<HashMap<ChatId, FollowUpSlot>>,
}

/// The follow-ups of a chat's latest answer.
struct FollowUpSlot {
    message_id: MessageId,
    /// The generation's cancel flag: set when the user types or sends.
    cancelled: Arc<AtomicBool>,
    ready: Option<FollowUps>,
}

impl Core {
    pub fn new(store: Store, settings: Settings, sink: EventSink) -> Core {
        Core {
            jobs: Mutex::new(HashMap::new()),
            log: Mutex::new(EventLog::new()),
            store: Mutex::new(store),
            settings: Mutex::new(settings),
            sink,
            stream: Mutex::new(None),
            follow_ups: Mutex::new(HashMap::new()),
        }
    }

    pub fn set_stream(&self, tx: Sender<StreamInput>) {
        *self.stream.lock().unwrap() = Some(tx);
    }

    pub fn close_stream(&self) {
        self.stream.lock().unwrap().take();
    }

    /// Where the deltas of an answer go.
    pub fn stream_sender(&self) -> Result<Sender<StreamInput>> {
        self.stream
            .lock()
            .unwrap()
            .clone()
            .ok_or(ChatError::WorkerGone)
    }

    pub fn emit(&self, event: AppEvent) {
        (self.sink)(event)
    }

    // ---- settings ------------------------------------------------------------------------

    pub fn settings(&self) -> Settings {
        self.settings.lock().unwrap().clone()
    }

    pub fn set_settings(&self, settings: Settings) {
        *self.settings.lock().unwrap() = settings;
    }

    pub fn frame_config(&self) -> FrameConfig {
        self.settings.lock().unwrap().frame_config()
    }

    // ---- the store -----------------------------------------------------------------------

    /// Runs `f` on the store (one short critical section; `f` must not call back into `Core`).
    pub fn store<T>(&self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        f(&mut self.store.lock().unwrap())
    }

    // ---- answers in progress -------------------------------------------------------------

    pub fn busy(&self, chat_id: ChatId) -> bool {
        let jobs = self.jobs.lock().unwrap();
        Self::answering(&jobs, chat_id)
    }

    fn answering(jobs: &HashMap<MessageId, Job>, chat_id: ChatId) -> bool {
        jobs.values().any(|j| j.chat_id == chat_id)
    }

    /// Runs `write` on the store while no answer runs in the chat, and none can start; refuses
    /// with `NoSuchChat` or `Busy` first.
    pub fn while_idle<T>(
        &self,
        chat_id: ChatId,
        write: impl FnOnce(&mut Store) -> Result<T>,
    ) -> Result<T> {
        let jobs = self.jobs.lock().unwrap();
        let mut store = self.store.lock().unwrap();
        store.chat(chat_id)?;
        if Self::answering(&jobs, chat_id) {
            return Err(ChatError::Busy(chat_id));
        }
        write(&mut store)
    }

    /// Begins an answer in an idle chat: `write` stores the question and the answer's placeholder
    /// (returned in that order); the answer becomes a job (busy until [`Core::end_answer`]).
    /// The writes are committed without waiting for the disk ([`Store::unsynced`]): the caller
    /// adds what else the answer stores, then flushes them all at once with [`Core::sync`]
    /// before the answer starts.
    pub fn begin_answer(
        &self,
        chat_id: ChatId,
        write: impl FnOnce(&mut Store) -> Result<(Message, Message)>,
    ) -> Result<Turn> {
        self.seed_log(chat_id)?;
        let mut jobs = self.jobs.lock().unwrap();
        let (question, answer) = {
            let mut store = self.store.lock().unwrap();
            store.chat(chat_id)?;
            if Self::answering(&jobs, chat_id) {
                return Err(ChatError::Busy(chat_id));
            }
            store.unsynced(write)?
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        jobs.insert(
            answer.id,
            Job {
                chat_id,
                cancelled: cancelled.clone(),
            },
        );
        drop(jobs);
        self.emit(AppEvent::ChatsChanged);
        Ok(Turn {
            question,
            answer,
            cancelled,
        })
    }

    /// Waits until every write so far is on disk (see [`Store::unsynced`]), without holding the
    /// store meanwhile.
    pub fn sync(&self) -> Result<()> {
        match self.store(|s| Ok(s.pending_sync()))? {
            Some(pending) => pending.wait(),
            None => Ok(()),
        }
    }

    /// An answer that could not be queued: stored as `failed` with the reason, no longer a job.
    pub fn abandon_answer(&self, answer_id: MessageId, error: &ChatError) {
        let failed = FinishedMessage {
            status: Some(MessageStatus::Failed),
            error: Some(error.to_string()),
            ..FinishedMessage::default()
        };
        if let Err(e) = self.store(|s| s.finish_message(answer_id, &failed, 0)) {
            tracing::warn!(answer_id, error = %e, "cannot store a failed answer");
        }
        self.jobs.lock().unwrap().remove(&answer_id);
        self.emit(AppEvent::ChatsChanged);
    }

    /// Sets the Stop flag of every answer of the chat, running or queued; whether there was one.
    pub fn stop(&self, chat_id: ChatId) -> bool {
        let jobs = self.jobs.lock().unwrap();
        let mut any = false;
        for job in jobs.values().filter(|j| j.chat_id == chat_id) {
            job.cancelled.store(true, Ordering::SeqCst);
            any = true;
        }
        any
    }

    pub fn stop_all(&self) {
        for job in self.jobs.lock().unwrap().values() {
            job.cancelled.store(true, Ordering::SeqCst);
        }
    }

    // ---- follow-up suggestions -----------------------------------------------------------

    /// The answer `message_id` of the chat asks for follow-ups: returns their cancel flag. Any
    /// earlier ones of the chat are cancelled and forgotten.
    pub fn ask_follow_ups(&self, chat_id: ChatId, message_id: MessageId) -> Arc<AtomicBool> {
        let cancelled = Arc::new(AtomicBool::new(false));
        let old = self.follow_ups.lock().unwrap().insert(
            chat_id,
            FollowUpSlot {
                message_id,
                cancelled: cancelled.clone(),
                ready: None,
            },
        );
        if let Some(old) = old {
            old.cancelled.store(true, Ordering::SeqCst);
            if old.ready.is_some() {
                self.emit(AppEvent::FollowUpsChanged { chat_id });
            }
        }
        cancelled
    }

    /// Keeps the generated follow-ups, unless they were cancelled or a newer answer asked since.
    pub fn follow_ups_ready(&self, ready: FollowUps) {
        let chat_id = ready.chat_id;
        let mut slots = self.follow_ups.lock().unwrap();
        let Some(slot) = slots.get_mut(&chat_id) else {
            return;
        };
        if slot.message_id != ready.message_id || slot.cancelled.load(Ordering::SeqCst) {
            return;
        }
        slot.ready = Some(ready);
        drop(slots);
        self.emit(AppEvent::FollowUpsChanged { chat_id });
    }

    /// The follow-ups of the chat's latest answer, when they are ready.
    pub fn follow_ups(&self, chat_id: ChatId) -> Option<FollowUps> {
        let slots = self.follow_ups.lock().unwrap();
        slots.get(&chat_id).and_then(|s| s.ready.clone())
    }

    /// Cancels the chat's follow-ups, being generated or shown; whether there were any.
    pub fn dismiss_follow_ups(&self, chat_id: ChatId) -> bool {
        let Some(slot) = self.follow_ups.lock().unwrap().remove(&chat_id) else {
            return false;
        };
        slot.cancelled.store(true, Ordering::SeqCst);
        if slot.ready.is_some() {
            self.emit(AppEvent::FollowUpsChanged { chat_id });
        }
        true
    }

    // ---- the event log -------------------------------------------------------------------

    /// Starts the chat's event ids after the stored ones (once per chat and process).
    pub fn seed_log(&self, chat_id: ChatId) -> Result<()> {
        if self.log.lock().unwrap().knows(chat_id) {
            return Ok(());
        }
        let last = self.store(|s| s.chat(chat_id))?.last_event_id;
        self.log.lock().unwrap().seed(chat_id, last);
        Ok(())
    }

    pub fn forget(&self, chat_id: ChatId) {
        self.log.lock().unwrap().forget(chat_id);
    }

    pub fn events_after(&self, chat_id: ChatId, after: EventId) -> EventsAfter {
        if self.seed_log(chat_id).is_err() {
            return EventsAfter {
                reload: true,
                ..EventsAfter::default()
            };
        }
        self.log.lock().unwrap().after(chat_id, after)
    }

    /// The chat and its messages; an answer in progress shows its text so far.
    pub fn chat_view(&self, chat_id: ChatId) -> Result<ChatView> {
        self.seed_log(chat_id)?;
        let busy = self.busy(chat_id);
        // The log is held while reading the store: see `end_answer`.
        let log = self.log.lock().unwrap();
        let (chat, mut messages) = self.store(|s| Ok((s.chat(chat_id)?, s.messages(chat_id)?)))?;
        for m in &mut messages {
            if m.status == MessageStatus::Streaming {
                if let Some(p) = log.partial(chat_id, m.id) {
                    m.content.clone_from(&p.content);
                    m.thinking.clone_from(&p.thinking);
                    m.tools.clone_from(&p.tools);
                    m.waiting = p.ahead;
                }
            }
        }
        let last_event_id = log.last_id(chat_id).unwrap_or(chat.last_event_id);
        Ok(ChatView {
            chat,
            messages,
            last_event_id,
            busy,
        })
    }

    /// Numbers `kind` in the chat's log and hands it to the sink.
    pub fn publish(&self, chat_id: ChatId, message_id: MessageId, kind: EventKind) {
        let event = self.log.lock().unwrap().append(chat_id, message_id, kind);
        self.emit(AppEvent::Stream(event));
    }

    /// Stores the finished answer and emits its last events (`stats` when there are stats, then
    /// `terminal`); the answer is no longer a job.
    pub fn end_answer(
        &self,
        chat_id: ChatId,
        message_id: MessageId,
        done: &FinishedMessage,
        terminal: EventKind,
    ) {
        // The log stays locked until the message is stored and its events released, so a reader
        // of the chat sees either the answer in progress with its events, or the stored answer.
        let mut log = self.log.lock().unwrap();
        let mut tail = Vec::new();
        if let Some(stats) = done.stats.clone() {
            tail.push(log.append(chat_id, message_id, EventKind::Stats { stats }));
        }
        tail.push(log.append(chat_id, message_id, terminal));
        let last_id = tail.last().map(|e| e.id).unwrap_or(0);
        match self.store(|s| s.finish_message(message_id, done, last_id)) {
            Ok(_) | Err(ChatError::NoSuchMessage(_)) => {} // deleted meanwhile: nothing to keep
            Err(e) => tracing::error!(message_id, error = %e, "cannot store a finished answer"),
        }
        log.release(chat_id, message_id);
        drop(log);
        self.jobs.lock().unwrap().remove(&message_id);
        for event in tail {
            self.emit(AppEvent::Stream(event));
        }
        self.emit(AppEvent::ChatsChanged);
    }
}

//! [`ChatApp`]: the one type the shell calls. Every method returns quickly: model loads and
//! generations run on the engine worker, and their progress arrives as [`AppEvent`]s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::commands::{self, CommandSuggestion, Parsed};
use crate::device::{self, DeviceInfo};
use crate::error::{ChatError, Result};
use crate::export::{self, Export};
use crate::protocol::{EventId, EventLog, EventsAfter, FrameConfig, StreamEvent};
use crate::search::SearchHit;
use crate::settings::{Settings, SettingsDiff, SETTINGS_FILE};
use crate::store::{
    Chat, ChatId, Message, MessageId, MessageKind, MessageStatus, NewMessage, Role, Store,
};
use crate::stream::{self, End, StreamInput};
use crate::worker::{
    EngineStatus, GenerationJob, JobEvent, LoadRequest, ModelState, StateSink, Worker,
};

/// The app's folder name under the OS data and config dirs.
pub const APP_DIR: &str = "notso-smollm3";
/// The chat database's file name inside the data dir.
pub const DATABASE_FILE: &str = "chats.sqlite3";
/// Longest message accepted from the composer.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Where the app keeps its files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppPaths {
    /// The chat database lives here.
    pub data_dir: PathBuf,
    /// `settings.json` lives here.
    pub config_dir: PathBuf,
    /// Where models are looked for when the settings name none.
    pub models_dir: PathBuf,
}

impl AppPaths {
    /// The OS defaults: `dirs::data_dir()/notso-smollm3` (models in its `models/`) and
    /// `dirs::config_dir()/notso-smollm3`.
    pub fn for_user() -> Result<AppPaths> {
        let missing = |what: &str| {
            ChatError::Invalid(format!("this system reports no {what} folder for the app"))
        };
        let data_dir = dirs::data_dir()
            .ok_or_else(|| missing("data"))?
            .join(APP_DIR);
        let config_dir = dirs::config_dir()
            .ok_or_else(|| missing("config"))?
            .join(APP_DIR);
        Ok(AppPaths {
            models_dir: data_dir.join("models"),
            data_dir,
            config_dir,
        })
    }

    pub fn database(&self) -> PathBuf {
        self.data_dir.join(DATABASE_FILE)
    }

    pub fn settings_file(&self) -> PathBuf {
        self.config_dir.join(SETTINGS_FILE)
    }
}

/// The default database path, `dirs::data_dir()/notso-smollm3/chats.sqlite3`.
pub fn default_database_path() -> Option<PathBuf> {
    Some(dirs::data_dir()?.join(APP_DIR).join(DATABASE_FILE))
}

/// Everything the shell is told. JSON: `{"type":"stream","data":{...StreamEvent}}`,
/// `{"type":"model_state","data":{"state":"loading",...}}`, `{"type":"chats_changed"}`,
/// `{"type":"settings_changed","data":{...Settings}}`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum AppEvent {
    Stream(StreamEvent),
    ModelState(ModelState),
    /// A chat was created, renamed, deleted, titled or got a new message: refresh the list.
    ChatsChanged,
    SettingsChanged(Settings),
}

impl AppEvent {
    /// `stream`, `model_state`, `chats_changed` or `settings_changed`.
    pub fn name(&self) -> &'static str {
        match self {
            AppEvent::Stream(_) => "stream",
            AppEvent::ModelState(_) => "model_state",
            AppEvent::ChatsChanged => "chats_changed",
            AppEvent::SettingsChanged(_) => "settings_changed",
        }
    }
}

/// Receives every [`AppEvent`], on the app's threads: keep it quick (forward and return).
pub type EventSink = Arc<dyn Fn(AppEvent) + Send + Sync>;

/// A chat with its messages, as of `last_event_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatView {
    pub chat: Chat,
    /// In order. An answer in progress has status `streaming` and its text so far.
    pub messages: Vec<Message>,
    /// The messages include every stream event up to this id: apply only later ones.
    pub last_event_id: EventId,
    /// An answer (or `/quote`) is in progress: show Stop, not Send.
    pub busy: bool,
}

/// What `send` did. JSON: `{"outcome":"generating","user_message_id":1,
/// "assistant_message_id":2}` or `{"outcome":"command","command":"status",...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SendOutcome {
    /// The answer is queued; its events carry `assistant_message_id`.
    Generating {
        user_message_id: MessageId,
        assistant_message_id: MessageId,
    },
    /// A slash command ran; its reply is stored. `streaming`: the reply arrives as stream
    /// events (`/quote`).
    Command {
        command: String,
        user_message_id: MessageId,
        reply_message_id: MessageId,
        streaming: bool,
        action: Option<CommandAction>,
    },
}

/// Something the shell may do with a command's result beyond showing the reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum CommandAction {
    /// Offer to save the chat (`/export`).
    Export(Export),
    /// Show clickable results (`/search`).
    Search { query: String, hits: Vec<SearchHit> },
    /// The chat's thinking mode changed (`/think`, `/no_think`).
    Thinking { on: bool },
    /// A fresh context starts after the reset marker (`/reset`).
    ContextReset,
}

/// What `/status` reports, also for a status bar.
#[derive(Clone, Debug, Serialize)]
pub struct AppStatus {
    pub model: ModelState,
    pub engine: EngineStatus,
    pub threads: usize,
    pub devices: Vec<DeviceInfo>,
}

pub(crate) struct Job {
    pub chat_id: ChatId,
    pub cancelled: Arc<AtomicBool>,
}

/// State shared by the facade, the stream thread and the worker's callbacks.
///
/// Lock order: `jobs` before `log` before `store`; none is held while calling the sink.
pub(crate) struct Core {
    pub store: Mutex<Store>,
    pub log: Mutex<EventLog>,
    pub sink: EventSink,
    pub jobs: Mutex<HashMap<MessageId, Job>>,
    pub settings: Mutex<Settings>,
}

impl Core {
    pub fn frame_config(&self) -> FrameConfig {
        self.settings.lock().unwrap().frame_config()
    }

    /// Starts the chat's event ids after the stored ones (once per chat and process).
    pub fn seed_log(&self, chat_id: ChatId) -> Result<()> {
        if self.log.lock().unwrap().knows(chat_id) {
            return Ok(());
        }
        let last = self.store.lock().unwrap().chat(chat_id)?.last_event_id;
        self.log.lock().unwrap().seed(chat_id, last);
        Ok(())
    }

    pub fn busy(jobs: &HashMap<MessageId, Job>, chat_id: ChatId) -> bool {
        jobs.values().any(|j| j.chat_id == chat_id)
    }
}

pub(crate) struct Inner {
    pub core: Arc<Core>,
    pub worker: Worker,
    pub paths: AppPaths,
    pub stream_tx: Mutex<Option<Sender<StreamInput>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    notices: Vec<String>,
}

/// The app core. Cheap to clone (one shared state); all methods are quick and thread-safe.
#[derive(Clone)]
pub struct ChatApp {
    pub(crate) inner: Arc<Inner>,
}

fn how_to_get_a_model(models_dir: &Path) -> String {
    format!(
        "Download a GGUF model (SmolLM3-3B, or the small SmolLM2-135M-Instruct) into {} and \
         restart, or choose a model file in Settings. From a source checkout, \
         `bash models/fetch.sh` fetches the small one.",
        models_dir.display()
    )
}

/// The first `.gguf` file in `dir` (by name), if any.
fn find_model(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

impl ChatApp {
    /// Opens the store and settings, starts the worker and, when there is a model, its load
    /// (in the background). Fails only when the chat database cannot be opened.
    pub fn open(paths: AppPaths, sink: EventSink) -> Result<ChatApp> {
        let mut notices = Vec::new();
        let settings_path = paths.settings_file();
        let settings = Settings::load(&settings_path).unwrap_or_else(|e| {
            let kept = settings_path.with_extension("json.invalid");
            let _ = std::fs::rename(&settings_path, &kept);
            notices.push(format!(
                "{e}. Using the default settings; the old file is kept as {}.",
                kept.display()
            ));
            Settings::default()
        });
        engine::threads::init(settings.threads);
        let store = Store::open(&paths.database())?;
        if store.recovered() > 0 {
            notices.push(format!(
                "{} answer(s) cut off when the app last closed were kept as interrupted.",
                store.recovered()
            ));
        }
        let core = Arc::new(Core {
            store: Mutex::new(store),
            log: Mutex::new(EventLog::new()),
            sink,
            jobs: Mutex::new(HashMap::new()),
            settings: Mutex::new(settings),
        });
        let (stream_tx, streamer) = stream::spawn(core.clone());
        let sink = core.sink.clone();
        let on_state: StateSink =
            Arc::new(move |s: &ModelState| sink(AppEvent::ModelState(s.clone())));
        let initial = ModelState::NoModel {
            why: "no model has been chosen yet.".into(),
            how_to_get_one: how_to_get_a_model(&paths.models_dir),
        };
        let (worker, worker_thread) = Worker::spawn(initial, on_state);
        let app = ChatApp {
            inner: Arc::new(Inner {
                core,
                worker,
                paths,
                stream_tx: Mutex::new(Some(stream_tx)),
                threads: Mutex::new(vec![worker_thread, streamer]),
                notices,
            }),
        };
        app.reload_model()?;
        Ok(app)
    }

    pub fn paths(&self) -> &AppPaths {
        &self.inner.paths
    }

    /// Things the user should know about the start (a settings file that did not load,
    /// answers recovered after a crash).
    pub fn notices(&self) -> &[String] {
        &self.inner.notices
    }

    pub(crate) fn core(&self) -> &Core {
        &self.inner.core
    }

    pub(crate) fn stream_sender(&self) -> Result<Sender<StreamInput>> {
        self.inner
            .stream_tx
            .lock()
            .unwrap()
            .clone()
            .ok_or(ChatError::WorkerGone)
    }

    fn emit(&self, event: AppEvent) {
        (self.core().sink)(event)
    }

    // ---- model ---------------------------------------------------------------------------

    pub fn model_state(&self) -> ModelState {
        self.inner.worker.state()
    }

    /// Every device with whether this build can use it and why not.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        device::devices()
    }

    pub fn status(&self) -> AppStatus {
        AppStatus {
            model: self.model_state(),
            engine: self.inner.worker.status(),
            threads: engine::threads::current(),
            devices: device::devices(),
        }
    }

    /// Makes `path` the model (saved in the settings) and loads it in the background.
    pub fn load_model(&self, path: PathBuf) -> Result<()> {
        let mut settings = self.settings();
        settings.model_path = Some(path);
        settings.save(&self.inner.paths.settings_file())?;
        *self.core().settings.lock().unwrap() = settings.clone();
        self.emit(AppEvent::SettingsChanged(settings));
        self.reload_model()
    }

    /// (Re)loads the model the settings name, or the first `.gguf` in the models dir; with
    /// neither, the state becomes `NoModel` saying how to get one. This is also "retry".
    pub fn reload_model(&self) -> Result<()> {
        let settings = self.settings();
        let models_dir = &self.inner.paths.models_dir;
        match settings
            .model_path
            .clone()
            .or_else(|| find_model(models_dir))
        {
            Some(path) => self.inner.worker.load(LoadRequest {
                path,
                context_len: settings.context_len,
                device: settings.device,
            }),
            None => self.inner.worker.unload(
                format!(
                    "no model file is set and none was found in {}.",
                    models_dir.display()
                ),
                how_to_get_a_model(models_dir),
            ),
        }
    }

    pub fn unload_model(&self) -> Result<()> {
        self.inner.worker.unload(
            "the model was unloaded.".into(),
            "Load it again from Settings.".into(),
        )
    }

    // ---- chats ---------------------------------------------------------------------------

    pub fn list_chats(&self) -> Result<Vec<Chat>> {
        self.core().store.lock().unwrap().list_chats()
    }

    /// A new, empty chat with the default thinking mode.
    pub fn create_chat(&self) -> Result<Chat> {
        let thinking = self.settings().thinking_default;
        let chat = self
            .core()
            .store
            .lock()
            .unwrap()
            .create_chat(thinking, &serde_json::json!({}))?;
        self.emit(AppEvent::ChatsChanged);
        Ok(chat)
    }

    pub fn rename_chat(&self, chat_id: ChatId, title: &str) -> Result<Chat> {
        let chat = self
            .core()
            .store
            .lock()
            .unwrap()
            .rename_chat(chat_id, title)?;
        self.emit(AppEvent::ChatsChanged);
        Ok(chat)
    }

    /// Stops the chat's answers and deletes it with its messages.
    pub fn delete_chat(&self, chat_id: ChatId) -> Result<()> {
        self.stop(chat_id);
        self.core().store.lock().unwrap().delete_chat(chat_id)?;
        self.core().log.lock().unwrap().forget(chat_id);
        self.emit(AppEvent::ChatsChanged);
        Ok(())
    }

    /// The chat and its messages; an answer in progress shows its text so far.
    pub fn chat(&self, chat_id: ChatId) -> Result<ChatView> {
        let core = self.core();
        core.seed_log(chat_id)?;
        let busy = Core::busy(&core.jobs.lock().unwrap(), chat_id);
        // The log is held while reading the store: see `stream::finish`.
        let log = core.log.lock().unwrap();
        let store = core.store.lock().unwrap();
        let chat = store.chat(chat_id)?;
        let mut messages = store.messages(chat_id)?;
        drop(store);
        for m in &mut messages {
            if m.status == MessageStatus::Streaming {
                if let Some(p) = log.partial(chat_id, m.id) {
                    m.content.clone_from(&p.content);
                    m.thinking.clone_from(&p.thinking);
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

    /// Stream events of the chat after id `after` (see [`crate::protocol`]).
    pub fn events_after(&self, chat_id: ChatId, after: EventId) -> EventsAfter {
        if self.core().seed_log(chat_id).is_err() {
            return EventsAfter {
                reload: true,
                ..EventsAfter::default()
            };
        }
        self.core().log.lock().unwrap().after(chat_id, after)
    }

    /// Full-text search over every chat's conversation.
    pub fn search(&self, query: &str) -> Result<Vec<SearchHit>> {
        self.core().store.lock().unwrap().search(query)
    }

    /// The chat as Markdown, with a file name to suggest.
    pub fn export(&self, chat_id: ChatId) -> Result<Export> {
        let store = self.core().store.lock().unwrap();
        let chat = store.chat(chat_id)?;
        let messages = store.messages(chat_id)?;
        Ok(Export {
            file_name: export::file_name(&chat),
            markdown: export::chat_markdown(&chat, &messages),
        })
    }

    /// Palette entries for what the user typed so far.
    pub fn suggest_commands(&self, prefix: &str) -> Vec<CommandSuggestion> {
        commands::suggest(prefix)
    }

    // ---- sending -------------------------------------------------------------------------

    /// Handles the composer's text: a slash command runs (its reply is stored), anything else
    /// is stored as the user's message and an answer is queued.
    pub fn send(&self, chat_id: ChatId, text: &str) -> Result<SendOutcome> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ChatError::Invalid("type a message first".into()));
        }
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(ChatError::Invalid(format!(
                "the message is too long ({} KiB; at most {} KiB)",
                text.len() / 1024,
                MAX_MESSAGE_BYTES / 1024
            )));
        }
        match commands::parse(text) {
            Parsed::Message(message) => self.send_message(chat_id, &message),
            Parsed::Command(command) => self.run_command(chat_id, text, command),
            Parsed::Unknown { name, closest } => {
                let reply = commands::unknown_text(&name, closest);
                self.reply_to_command(chat_id, text, "unknown", &reply, None)
            }
        }
    }

    fn ensure_model_usable(&self) -> Result<()> {
        match self.model_state() {
            ModelState::Ready { .. } | ModelState::Loading { .. } => Ok(()),
            other => Err(ChatError::ModelNotReady(other.describe())),
        }
    }

    fn send_message(&self, chat_id: ChatId, text: &str) -> Result<SendOutcome> {
        let core = self.core();
        let mut jobs = core.jobs.lock().unwrap();
        core.store.lock().unwrap().chat(chat_id)?;
        if Core::busy(&jobs, chat_id) {
            return Err(ChatError::Busy(chat_id));
        }
        self.ensure_model_usable()?;
        let (user, answer) = {
            let mut store = core.store.lock().unwrap();
            let user = store.add_message(NewMessage {
                chat_id,
                role: Role::User,
                kind: MessageKind::Chat,
                content: text,
                status: MessageStatus::Complete,
            })?;
            let answer = store.add_message(NewMessage {
                chat_id,
                role: Role::Assistant,
                kind: MessageKind::Chat,
                content: "",
                status: MessageStatus::Streaming,
            })?;
            (user, answer)
        };
        self.start_generation(&mut jobs, chat_id, answer.id)?;
        drop(jobs);
        self.emit(AppEvent::ChatsChanged);
        Ok(SendOutcome::Generating {
            user_message_id: user.id,
            assistant_message_id: answer.id,
        })
    }

    /// Queues the answer `answer_id` (a `streaming` placeholder) to the conversation before it.
    fn start_generation(
        &self,
        jobs: &mut HashMap<MessageId, Job>,
        chat_id: ChatId,
        answer_id: MessageId,
    ) -> Result<()> {
        let core = self.core();
        let settings = self.settings();
        let (chat, context) = {
            let store = core.store.lock().unwrap();
            let snapshot = serde_json::json!({
                "model": self.model_state_path(),
                "system_prompt": settings.system_prompt,
                "temperature": settings.temperature,
                "top_p": settings.top_p,
                "top_k": settings.top_k,
                "min_p": settings.min_p,
                "repeat_penalty": settings.repeat_penalty,
                "seed": settings.seed,
                "max_tokens": settings.max_tokens,
                "context_len": settings.context_len,
            });
            store.set_chat_settings(chat_id, &snapshot)?;
            (
                store.chat(chat_id)?,
                store.context(chat_id, Some(answer_id))?,
            )
        };
        let mut messages = Vec::new();
        if !settings.system_prompt.trim().is_empty() {
            messages.push(engine::ChatMessage::new(
                "system",
                settings.system_prompt.clone(),
            ));
        }
        messages.extend(
            context
                .into_iter()
                .map(|m| engine::ChatMessage::new(m.role.as_str(), m.content)),
        );
        core.seed_log(chat_id)?;
        let cancelled = Arc::new(AtomicBool::new(false));
        jobs.insert(
            answer_id,
            Job {
                chat_id,
                cancelled: cancelled.clone(),
            },
        );
        let tx = self.stream_sender()?;
        let sink_tx = tx.clone();
        let sink = Box::new(move |event: JobEvent| {
            let input = match event {
                JobEvent::Thinking(text) => delta(chat_id, answer_id, true, text),
                JobEvent::Token(text) => delta(chat_id, answer_id, false, text),
                JobEvent::Finished(stats) => finish(chat_id, answer_id, End::Finished(stats)),
                JobEvent::Failed(error) => finish(chat_id, answer_id, End::Failed(error)),
            };
            let _ = sink_tx.send(input);
        });
        let job = GenerationJob {
            messages,
            thinking: chat.thinking,
            settings,
            cancelled,
            sink,
        };
        if let Err(e) = self.inner.worker.generate(job) {
            let _ = tx.send(finish(chat_id, answer_id, End::Failed(e.to_string())));
            return Err(e);
        }
        Ok(())
    }

    fn model_state_path(&self) -> Option<String> {
        match self.model_state() {
            ModelState::Ready { info, .. } => Some(info.path.display().to_string()),
            ModelState::Loading { path, .. } => Some(path.display().to_string()),
            _ => None,
        }
    }

    /// Stops every answer in progress or queued in the chat; each is kept as `interrupted`
    /// with the text it had. Returns whether there was one.
    pub fn stop(&self, chat_id: ChatId) -> bool {
        let jobs = self.core().jobs.lock().unwrap();
        let mut any = false;
        for job in jobs.values().filter(|j| j.chat_id == chat_id) {
            job.cancelled.store(true, Ordering::SeqCst);
            any = true;
        }
        any
    }

    /// Replaces an answer (and every later message of its chat) with a new one.
    pub fn regenerate(&self, message_id: MessageId) -> Result<SendOutcome> {
        let core = self.core();
        let mut jobs = core.jobs.lock().unwrap();
        let old = core.store.lock().unwrap().message(message_id)?;
        if old.role != Role::Assistant || old.kind != MessageKind::Chat {
            return Err(ChatError::Invalid(
                "only a model's answer can be regenerated".into(),
            ));
        }
        if Core::busy(&jobs, old.chat_id) {
            return Err(ChatError::Busy(old.chat_id));
        }
        self.ensure_model_usable()?;
        let (user, answer) = {
            let mut store = core.store.lock().unwrap();
            let question = store
                .context(old.chat_id, Some(message_id))?
                .into_iter()
                .rev()
                .find(|m| m.role == Role::User)
                .ok_or_else(|| ChatError::Invalid("there is no question to answer again".into()))?;
            store.delete_messages_from(old.chat_id, message_id)?;
            let answer = store.add_message(NewMessage {
                chat_id: old.chat_id,
                role: Role::Assistant,
                kind: MessageKind::Chat,
                content: "",
                status: MessageStatus::Streaming,
            })?;
            (question, answer)
        };
        self.start_generation(&mut jobs, old.chat_id, answer.id)?;
        drop(jobs);
        self.emit(AppEvent::ChatsChanged);
        Ok(SendOutcome::Generating {
            user_message_id: user.id,
            assistant_message_id: answer.id,
        })
    }

    // ---- settings ------------------------------------------------------------------------

    pub fn settings(&self) -> Settings {
        self.core().settings.lock().unwrap().clone()
    }

    /// Validates and saves `new`, applies it, and reloads the model when a change needs it
    /// (see [`SettingsDiff`]; thread count changes apply after a restart).
    pub fn update_settings(&self, new: Settings) -> Result<SettingsDiff> {
        new.validate()?;
        let old = self.settings();
        let diff = old.diff(&new);
        if diff.is_empty() {
            return Ok(diff);
        }
        new.save(&self.inner.paths.settings_file())?;
        *self.core().settings.lock().unwrap() = new.clone();
        self.emit(AppEvent::SettingsChanged(new));
        if diff.needs_reload() {
            self.reload_model()?;
        }
        Ok(diff)
    }

    // ---- lifetime ------------------------------------------------------------------------

    /// Stops every answer (kept as `interrupted`), then the worker and the stream thread.
    /// Idempotent; also runs when the last clone is dropped.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

pub(crate) fn delta(
    chat_id: ChatId,
    message_id: MessageId,
    thinking: bool,
    text: String,
) -> StreamInput {
    let kind = match thinking {
        true => crate::protocol::DeltaKind::Thinking,
        false => crate::protocol::DeltaKind::Answer,
    };
    StreamInput::Delta {
        chat_id,
        message_id,
        kind,
        text,
    }
}

pub(crate) fn finish(chat_id: ChatId, message_id: MessageId, end: End) -> StreamInput {
    StreamInput::Finish {
        chat_id,
        message_id,
        end,
    }
}

impl Inner {
    fn shutdown(&self) {
        for job in self.core.jobs.lock().unwrap().values() {
            job.cancelled.store(true, Ordering::SeqCst);
        }
        self.worker.shutdown();
        let threads: Vec<_> = self.threads.lock().unwrap().drain(..).collect();
        let mut threads = threads.into_iter();
        // The worker first: it finishes its answer (now cancelled) into the stream...
        if let Some(worker) = threads.next() {
            let _ = worker.join();
        }
        // ...then the stream drains, stores what is left, and ends with its last sender.
        self.stream_tx.lock().unwrap().take();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EventKind;

    #[test]
    fn the_app_can_be_shared_between_threads() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<ChatApp>();
    }

    #[test]
    fn app_events_have_the_documented_json_shape() {
        let stream = AppEvent::Stream(StreamEvent {
            id: 3,
            chat_id: 1,
            message_id: 9,
            kind: EventKind::Thinking { text: "hm".into() },
        });
        assert_eq!(
            serde_json::to_value(&stream).unwrap(),
            serde_json::json!({"type": "stream", "data": {
                "id": 3, "chat_id": 1, "message_id": 9, "event": "thinking", "text": "hm"}})
        );
        assert_eq!(
            serde_json::to_value(AppEvent::ChatsChanged).unwrap(),
            serde_json::json!({"type": "chats_changed"})
        );
        let state = AppEvent::ModelState(ModelState::NoModel {
            why: "w".into(),
            how_to_get_one: "h".into(),
        });
        assert_eq!(
            serde_json::to_value(&state).unwrap(),
            serde_json::json!({"type": "model_state", "data": {
                "state": "no_model", "why": "w", "how_to_get_one": "h"}})
        );
        assert_eq!(state.name(), "model_state");
        let sent = SendOutcome::Command {
            command: "think".into(),
            user_message_id: 1,
            reply_message_id: 2,
            streaming: false,
            action: Some(CommandAction::Thinking { on: true }),
        };
        assert_eq!(
            serde_json::to_value(&sent).unwrap(),
            serde_json::json!({"outcome": "command", "command": "think", "user_message_id": 1,
                "reply_message_id": 2, "streaming": false,
                "action": {"action": "thinking", "on": true}})
        );
    }
}

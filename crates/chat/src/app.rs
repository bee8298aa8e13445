//! [`ChatApp`]: the one type the shell calls. Every method returns quickly: model loads and
//! generations run on the engine worker, and their progress arrives as [`AppEvent`]s.
//!
//! The facade's methods are spread over files by concern: this one (opening, model, chats,
//! settings, shutdown), [`crate::send`] (send, stop, regenerate), [`crate::replies`] (slash
//! commands).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::commands::{self, CommandSuggestion};
use crate::core::Core;
use crate::data_lock::DataLock;
use crate::device::{self, Estimates, InUse, ModelNeed};
use crate::error::{ChatError, Result};
use crate::events::{AppEvent, EventSink};
use crate::export::{self, Export};
use crate::local_server::ServerStatus;
use crate::paths::{find_model, how_to_get_a_model, AppPaths};
use crate::protocol::{EventId, EventsAfter};
use crate::search::SearchHit;
use crate::settings::{ModelSource, Settings, SettingsDiff};
use crate::store::{Chat, ChatId, Store};
use crate::stream;
use crate::tools::mcp::{McpServerStatus, McpServers};
use crate::views::{AppStatus, ChatView};
use crate::worker::{EngineStatus, LoadError, LoadRequest, ModelState, StateSink, Worker};

pub(crate) struct Inner {
    pub core: Arc<Core>,
    pub worker: Worker,
    pub paths: AppPaths,
    overrides: RunOverrides,
    server: Mutex<ServerStatus>,
    estimates: Estimates,
    /// The devices, probed once (the CUDA runner is a process to start): see [`ChatApp::devices`].
    probe: engine::device::DeviceProbe,
    threads: Mutex<Vec<JoinHandle<()>>>,
    notices: Vec<String>,
    /// The user's MCP servers, started on first use.
    pub mcp: Arc<McpServers>,
    /// Tool calls waiting for the user's approval.
    pub approvals: Arc<crate::tools::approval::Approvals>,
    /// The data folder is this process's while the app lives. Last: released only once
    /// everything above is shut down and dropped.
    _lock: DataLock,
}

/// Settings for this run only (`smollm3 serve --model --context --threads`): in effect while the
/// app runs and never written to the settings file, whatever else is saved meanwhile.
#[derive(Clone, Debug, Default)]
pub struct RunOverrides {
    pub model_path: Option<PathBuf>,
    pub context_len: Option<usize>,
    pub threads: Option<usize>,
}

impl RunOverrides {
    fn apply(&self, s: &mut Settings) {
        if let Some(p) = &self.model_path {
            // A model file given for this run is what answers, whatever the saved source.
            s.model_path = Some(p.clone());
            s.model_source = ModelSource::Local;
        }
        if let Some(n) = self.context_len {
            s.context_len = n;
        }
        if let Some(n) = self.threads {
            s.threads = n;
        }
    }

    /// `effective` as it is saved: the overridden fields keep the file's values.
    fn unapply(&self, effective: &Settings, on_disk: &Settings) -> Settings {
        let mut s = effective.clone();
        if self.model_path.is_some() {
            s.model_path.clone_from(&on_disk.model_path);
            s.model_source = on_disk.model_source;
        }
        if self.context_len.is_some() {
            s.context_len = on_disk.context_len;
        }
        if self.threads.is_some() {
            s.threads = on_disk.threads;
        }
        s
    }
}

/// The app core. Cheap to clone (one shared state); all methods are quick and thread-safe.
#[derive(Clone)]
pub struct ChatApp {
    pub(crate) inner: Arc<Inner>,
}

impl ChatApp {
    /// Opens the store and settings, starts the worker and, when there is a model, its load
    /// (in the background). Fails when the chat database cannot be opened, or with
    /// [`ChatError::DataInUse`] while another process has the data folder (see
    /// [`crate::data_lock`]); that one's answers are left alone.
    pub fn open(paths: AppPaths, sink: EventSink) -> Result<ChatApp> {
        Self::open_with(paths, sink, RunOverrides::default())
    }

    /// [`ChatApp::open`] with settings for this run only; invalid ones are refused.
    pub fn open_with(paths: AppPaths, sink: EventSink, overrides: RunOverrides) -> Result<ChatApp> {
        let lock = DataLock::acquire(&paths.data_dir)?;
        Self::open_noting(lock, paths, sink, overrides, Vec::new())
    }

    /// [`ChatApp::open_with`] on a new chat database: the one there, which could not be used
    /// ([`ChatError::unusable_database`]), is moved aside first, and a notice says where to.
    pub fn open_fresh(
        paths: AppPaths,
        sink: EventSink,
        overrides: RunOverrides,
    ) -> Result<ChatApp> {
        // Never move aside a database another process has open.
        let lock = DataLock::acquire(&paths.data_dir)?;
        let kept = paths.move_database_aside()?;
        let notice = format!(
            "The chat database could not be used, so a new one was started. The old one is kept as {}.",
            kept.display()
        );
        Self::open_noting(lock, paths, sink, overrides, vec![notice])
    }

    fn open_noting(
        lock: DataLock,
        paths: AppPaths,
        sink: EventSink,
        overrides: RunOverrides,
        mut notices: Vec<String>,
    ) -> Result<ChatApp> {
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
        let mut settings = settings;
        overrides.apply(&mut settings);
        settings.validate()?;
        engine::threads::init(settings.threads);
        let database = paths.database();
        // Whatever goes wrong while opening names the file, so the shell can offer to move it aside.
        let store = Store::open(&database).map_err(|e| match e {
            ChatError::Store(error) => ChatError::OpenStore {
                path: database.clone(),
                error,
            },
            other => other,
        })?;
        if store.recovered() > 0 {
            notices.push(format!(
                "{} answer(s) cut off when the app last closed were kept as interrupted.",
                store.recovered()
            ));
        }
        let mcp = Arc::new(McpServers::new(&settings.tools.mcp_servers)?);
        let core = Arc::new(Core::new(store, settings, sink.clone()));
        let (stream_tx, streamer) = stream::spawn(core.clone());
        core.set_stream(stream_tx);
        let on_state: StateSink =
            Arc::new(move |s: &ModelState| sink(AppEvent::ModelState(s.clone())));
        let initial = ModelState::NoModel {
            why: "no model has been chosen yet.".into(),
            how_to_get_one: how_to_get_a_model(&paths.models_dir),
        };
        let (worker, worker_thread) =
            Worker::spawn(initial, on_state, Some(paths.loading_marker()));
        // The app ended while loading this model last time (it may have aborted the process):
        // loading it again by itself could end every start the same way. Unless this run names
        // a model, wait for the user to retry or choose another.
        let crashed = paths
            .interrupted_load()
            .filter(|_| overrides.model_path.is_none());
        if let Some(path) = &crashed {
            notices.push(format!(
                "The app closed while loading the model {} last time, so it was not loaded again \
                 automatically. Retry it, or choose another model in Settings.",
                path.display()
            ));
        }
        let app = ChatApp {
            inner: Arc::new(Inner {
                core,
                worker,
                paths,
                overrides,
                server: Mutex::new(ServerStatus::Off),
                estimates: Estimates::default(),
                probe: engine::device::DeviceProbe::default(),
                threads: Mutex::new(vec![worker_thread, streamer]),
                notices,
                mcp,
                approvals: Default::default(),
                _lock: lock,
            }),
        };
        match crashed {
            Some(path) => app.inner.worker.fail(
                path,
                LoadError::ClosedWhileLoading,
                app.settings().placement()?,
            ),
            None => app.reload_model()?,
        }
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

    pub(crate) fn emit(&self, event: AppEvent) {
        self.core().emit(event)
    }

    // ---- model ---------------------------------------------------------------------------

    pub fn model_state(&self) -> ModelState {
        self.inner.worker.state()
    }

    /// Every device with whether it can run the chosen model at the chosen context, and why not:
    /// the engine's reasons (not in this build, no driver, the driver's error) and, for a device
    /// that works, whether the model fits in its memory. The GPUs are probed once and kept
    /// (until [`ChatApp::probe_devices_again`] or a model (re)load or unload, which changes their
    /// free memory); the CPU's memory is read on every call.
    pub fn devices(&self) -> Vec<engine::device::DeviceReport> {
        let settings = self.settings();
        let need = match settings.model_source {
            ModelSource::Local => self.model_file(&settings).map(|path| ModelNeed {
                path,
                context_len: settings.context_len,
                kv_type: settings.kv_cache,
                backend: settings.backend,
            }),
            ModelSource::Endpoint => None,
        };
        let in_use = match self.model_state() {
            ModelState::Ready {
                info, placement, ..
            } => Some(InUse {
                device: placement.device(),
                bytes: info.memory.total(),
            }),
            _ => None,
        };
        let list = self.inner.probe.list();
        device::devices(list, need.as_ref(), in_use, &self.inner.estimates)
    }

    /// Forgets the kept device probe: the next [`ChatApp::devices`] asks the driver (or the CUDA
    /// runner) again, as after installing a driver or a runner.
    pub fn probe_devices_again(&self) {
        self.inner.probe.forget();
    }

    /// How many times the GPUs were probed (see [`ChatApp::devices`]).
    pub fn device_probes(&self) -> usize {
        self.inner.probe.probes()
    }

    /// The model file the settings choose, or the first `.gguf` in the models dir.
    fn model_file(&self, settings: &Settings) -> Option<PathBuf> {
        settings
            .model_path
            .clone()
            .or_else(|| find_model(&self.inner.paths.models_dir))
    }

    /// "Use the CPU": saves the CPU with its default backend as the device and loads the model
    /// there (the one-click way out of a GPU that failed).
    pub fn use_cpu(&self) -> Result<()> {
        let mut settings = self.settings();
        settings.device = engine::DeviceSpec::Cpu;
        settings.backend = None;
        if !self.update_settings(settings)?.needs_reload() {
            self.reload_model()?;
        }
        Ok(())
    }

    /// Everything `/status` reports. It lists the devices, which asks the driver (or starts the
    /// CUDA runner) and may read the model's metadata: for a poll, use [`ChatApp::engine_status`]
    /// or [`ChatApp::server_status`].
    pub fn status(&self) -> AppStatus {
        AppStatus {
            model: self.model_state(),
            engine: self.engine_status(),
            threads: engine::threads::current(),
            server: self.server_status(),
            devices: self.devices(),
        }
    }

    /// The worker's numbers: KV cache use, queue, the latest answer.
    pub fn engine_status(&self) -> EngineStatus {
        self.inner.worker.status()
    }

    /// Where the local server is serving, or why not.
    pub fn server_status(&self) -> ServerStatus {
        self.inner.server.lock().unwrap().clone()
    }

    /// Where the local server is serving, for `/status` (set by whoever runs it).
    pub fn set_server_status(&self, status: ServerStatus) {
        *self.inner.server.lock().unwrap() = status;
    }

    /// Makes `path` the model (saved in the settings, the source becoming local) and loads it in
    /// the background.
    pub fn load_model(&self, path: PathBuf) -> Result<()> {
        let mut settings = self.settings();
        settings.model_path = Some(path);
        settings.model_source = ModelSource::Local;
        self.save_settings(&settings)?;
        self.core().set_settings(settings.clone());
        self.emit(AppEvent::SettingsChanged(Box::new(settings)));
        self.reload_model()
    }

    /// Writes `settings` to the file, less this run's overrides.
    fn save_settings(&self, settings: &Settings) -> Result<()> {
        let file = self.inner.paths.settings_file();
        let on_disk = Settings::load(&file).unwrap_or_default();
        self.inner.overrides.unapply(settings, &on_disk).save(&file)
    }

    /// (Re)loads the model the settings name, or the first `.gguf` in the models dir; with
    /// neither, the state becomes `NoModel` saying how to get one. With an endpoint as the
    /// source, (re)connects to it instead. This is also "retry".
    pub fn reload_model(&self) -> Result<()> {
        let settings = self.settings();
        // A load takes or frees a device's memory: the kept probe would tell old numbers.
        self.inner.probe.forget();
        self.inner
            .worker
            .set_kept_caches(settings.kept_caches_bytes())?;
        if settings.model_source == ModelSource::Endpoint {
            return self.inner.worker.connect(settings.endpoint);
        }
        let models_dir = &self.inner.paths.models_dir;
        match self.model_file(&settings) {
            Some(path) => self.inner.worker.load(LoadRequest {
                path,
                context_len: settings.context_len,
                kv_type: settings.kv_cache,
                placement: settings.placement()?,
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
        self.inner.probe.forget();
        self.inner.worker.unload(
            "the model was unloaded.".into(),
            "Load it again from Settings.".into(),
        )
    }

    // ---- chats ---------------------------------------------------------------------------

    pub fn list_chats(&self) -> Result<Vec<Chat>> {
        self.core().store(|s| s.list_chats())
    }

    /// A new, empty chat with the default thinking mode.
    pub fn create_chat(&self) -> Result<Chat> {
        let thinking = self.settings().thinking_default;
        let chat = self
            .core()
            .store(|s| s.create_chat(thinking, &serde_json::json!({})))?;
        self.emit(AppEvent::ChatsChanged);
        Ok(chat)
    }

    pub fn rename_chat(&self, chat_id: ChatId, title: &str) -> Result<Chat> {
        let chat = self.core().store(|s| s.rename_chat(chat_id, title))?;
        self.emit(AppEvent::ChatsChanged);
        Ok(chat)
    }

    /// Stops the chat's answers and deletes it with its messages.
    pub fn delete_chat(&self, chat_id: ChatId) -> Result<()> {
        self.stop(chat_id);
        self.core().store(|s| s.delete_chat(chat_id))?;
        self.core().forget(chat_id);
        self.emit(AppEvent::ChatsChanged);
        Ok(())
    }

    /// The chat and its messages; an answer in progress shows its text so far.
    pub fn chat(&self, chat_id: ChatId) -> Result<ChatView> {
        self.core().chat_view(chat_id)
    }

    /// Stream events of the chat after id `after` (see [`crate::protocol`]).
    pub fn events_after(&self, chat_id: ChatId, after: EventId) -> EventsAfter {
        self.core().events_after(chat_id, after)
    }

    /// Full-text search over every chat's conversation.
    pub fn search(&self, query: &str) -> Result<Vec<SearchHit>> {
        self.core().store(|s| s.search(query))
    }

    /// [`ChatApp::search`] with one hit per chat, its best match (the chat list).
    pub fn search_chats(&self, query: &str) -> Result<Vec<SearchHit>> {
        self.core().store(|s| s.search_chats(query))
    }

    /// The chat as Markdown, with a file name to suggest.
    pub fn export(&self, chat_id: ChatId) -> Result<Export> {
        let (chat, messages) = self
            .core()
            .store(|s| Ok((s.chat(chat_id)?, s.messages(chat_id)?)))?;
        Ok(Export {
            file_name: export::file_name(&chat),
            markdown: export::chat_markdown(&chat, &messages),
        })
    }

    /// Palette entries for what the user typed so far.
    pub fn suggest_commands(&self, prefix: &str) -> Vec<CommandSuggestion> {
        commands::suggest(prefix)
    }

    // ---- settings ------------------------------------------------------------------------

    pub fn settings(&self) -> Settings {
        self.core().settings()
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
        self.save_settings(&new)?;
        self.inner.mcp.configure(&new.tools.mcp_servers);
        self.core().set_settings(new.clone());
        let kept_caches = new.kept_caches_bytes();
        self.emit(AppEvent::SettingsChanged(Box::new(new)));
        if diff.needs_reload() {
            self.reload_model()?;
        } else if kept_caches != old.kept_caches_bytes() {
            self.inner.worker.set_kept_caches(kept_caches)?;
        }
        Ok(diff)
    }

    /// Where each configured MCP server stands (the settings page).
    pub fn mcp_servers(&self) -> Vec<McpServerStatus> {
        self.inner.mcp.statuses()
    }

    /// Starts the MCP server `name`, or starts it again; blocks until it runs or fails (at most
    /// the tool timeout). Not to be called on an async runtime's worker thread.
    pub fn start_mcp_server(&self, name: &str) -> Result<McpServerStatus> {
        self.inner
            .mcp
            .restart(name, self.settings().tools.timeout())
    }

    // ---- lifetime ------------------------------------------------------------------------

    /// Stops every answer (kept as `interrupted`), then the worker and the stream thread.
    /// Idempotent; also runs when the last clone is dropped.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl Inner {
    fn shutdown(&self) {
        self.core.stop_all();
        self.mcp.shutdown();
        self.worker.shutdown();
        let threads: Vec<_> = self.threads.lock().unwrap().drain(..).collect();
        let mut threads = threads.into_iter();
        // The worker first: it finishes its answer (now cancelled) into the stream...
        if let Some(worker) = threads.next() {
            let _ = worker.join();
        }
        // ...then the stream drains, stores what is left, and ends with its last sender.
        self.core.close_stream();
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
    use crate::protocol::{EventKind, StreamEvent};
    use crate::views::{CommandAction, SendOutcome};

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

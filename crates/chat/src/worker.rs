//! The engine worker: one thread owns the model, the local [`Engine`] and its KV cache or a
//! [`RemoteModel`] (an OpenAI-compatible endpoint, see [`crate::remote`]); a cloneable [`Worker`]
//! handle sends it requests over a channel, and they run in order (loads and generations
//! queue behind each other). Generations wait in a [`FairQueue`]: whose turn it is decides which
//! one runs next (each desktop chat, each API client takes turns), not who asked first.
//!
//! Two things do not wait in the queue, because the worker is busy for seconds at a time:
//! - stopping: each job has an `AtomicBool` the engine polls between tokens, set directly;
//! - reading the model state and status: the worker publishes them in shared snapshots.
//!
//! A request to reuse the cached prefix needs nothing special: each turn renders the whole
//! conversation and the engine keeps the longest prefix of its KV cache that matches.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use engine::{
    ChatMessage, ChatOptions, Engine, EngineOptions, GenerationEvent, GenerationParams, ModelInfo,
    Placement,
};
use serde::Serialize;

use crate::error::{ChatError, Result};
use crate::followups;
use crate::queue::FairQueue;
use crate::remote::{Endpoint, RemoteModel};
use crate::sampling::AnswerParams;
use crate::stats::{Finish, MessageStats};
use crate::store::now_ms;
use crate::tools::{self, ToolCallParser, ToolRecord, ToolStatus, Tools};

/// Where the model stands. JSON: `{"state":"ready","info":{...},
/// "placement":{"device":"cpu","backend":"native"},"threads":8}`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ModelState {
    /// No model file to load; `how_to_get_one` tells the user what to do.
    NoModel { why: String, how_to_get_one: String },
    /// Loading in the background since `started_at` (unix ms).
    Loading { path: PathBuf, started_at: i64 },
    Ready {
        /// Boxed: it is far larger than the other states.
        info: Box<ModelInfo>,
        #[serde(serialize_with = "crate::device::serialize_placement")]
        placement: Placement,
        threads: usize,
    },
    /// Loading failed on `placement`; `error` says why (the engine's words: a device this build
    /// lacks, the driver's error, not enough memory there). Loading again (retry) is always
    /// possible; nothing is loaded on another device instead.
    Failed {
        path: PathBuf,
        #[serde(serialize_with = "serialize_display")]
        error: LoadError,
        #[serde(serialize_with = "crate::device::serialize_placement")]
        placement: Placement,
    },
    /// Checking a remote endpoint (API base `url`) since `started_at` (unix ms).
    Connecting { url: String, started_at: i64 },
    /// A remote endpoint answers, with `model`.
    Remote { url: String, model: String },
    /// The endpoint cannot be used; `error` says why. Connecting again (retry) is always possible.
    RemoteFailed {
        url: String,
        #[serde(serialize_with = "serialize_display")]
        error: Arc<ChatError>,
    },
}

/// Why a model is not loaded. Typed until it is shown; JSON has its text.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine refused the file or the device (not a GGUF, an architecture it lacks, not
    /// enough memory, a driver's error, ...).
    #[error(transparent)]
    Engine(Arc<engine::EngineError>),
    /// The engine panicked while loading; the text is the panic's.
    #[error("the engine crashed while loading: {0}")]
    Crashed(String),
    /// The app ended while loading this model last time (it may abort the process): it is not
    /// loaded again until the user asks.
    #[error(
        "the app closed while loading this model last time; it was not loaded again automatically"
    )]
    ClosedWhileLoading,
}

impl From<engine::EngineError> for LoadError {
    fn from(e: engine::EngineError) -> Self {
        LoadError::Engine(Arc::new(e))
    }
}

/// An error in JSON: its text, as the user reads it.
fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

impl ModelState {
    pub fn is_ready(&self) -> bool {
        matches!(self, ModelState::Ready { .. } | ModelState::Remote { .. })
    }

    /// Whether to offer thinking mode: the one rule every view and reply reads. A loaded model
    /// has one when its template does ([`ModelInfo::supports_thinking`]); otherwise it is
    /// assumed (a model still loading, a remote endpoint whose template is not ours to read), so
    /// the chat's choice is kept and shown rather than hidden and lost.
    pub fn supports_thinking(&self) -> bool {
        match self {
            ModelState::Ready { info, .. } => info.supports_thinking,
            _ => true,
        }
    }

    /// One sentence for the user about this state.
    pub fn describe(&self) -> String {
        match self {
            ModelState::NoModel {
                why,
                how_to_get_one,
            } => format!("No model is loaded: {why} {how_to_get_one}"),
            ModelState::Loading { path, .. } => {
                format!("The model {} is still loading.", path.display())
            }
            ModelState::Ready { info, .. } => format!("{} is ready.", model_name(info)),
            ModelState::Failed {
                error, placement, ..
            } if *placement != Placement::default() => format!(
                "The model could not be loaded on {placement}: {error}. Use the CPU, or fix it in \
                 Settings and retry."
            ),
            ModelState::Failed { error, .. } => {
                format!("The model could not be loaded: {error}. Fix it in Settings and retry.")
            }
            ModelState::Connecting { url, .. } => format!("Connecting to {url}."),
            ModelState::Remote { url, model } => format!("{model} at {url} is ready."),
            ModelState::RemoteFailed { error, .. } => {
                format!("The endpoint cannot be used: {error}. Fix it in Settings and retry.")
            }
        }
    }
}

/// The name to show for a model: its GGUF `general.name`, else its file name.
pub fn model_name(info: &ModelInfo) -> String {
    info.config
        .name
        .clone()
        .unwrap_or_else(|| file_name(&info.path))
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// What the worker is doing, readable at any time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EngineStatus {
    /// Tokens in the KV cache, and its size.
    pub cached_tokens: usize,
    pub context_len: usize,
    /// Generations waiting or running.
    pub queued: usize,
    /// The latest answer's numbers (tokens/s among them).
    pub last: Option<MessageStats>,
}

/// What to load.
#[derive(Clone, Debug)]
pub struct LoadRequest {
    pub path: PathBuf,
    pub context_len: usize,
    pub kv_type: engine::KvType,
    /// The device and backend, as the settings say: never another one instead.
    pub placement: Placement,
}

/// What a job reports: `Queued` while it waits (the answers ahead of it, whenever that changes),
/// then deltas, then exactly one `Finished`, `Refused` or `Failed`; after a `Finished` answer
/// that asked for them, `FollowUps` (unless they were cancelled).
#[derive(Clone, Debug)]
pub enum JobEvent {
    Queued(usize),
    Thinking(String),
    Token(String),
    /// A tool call of the answer: `running`, then its outcome (same `index`).
    Tool(ToolRecord),
    Finished(MessageStats),
    /// The request cannot be answered as asked (a prompt longer than the context, messages the
    /// template rejects); nothing was generated.
    Refused(JobError),
    /// The engine failed.
    Failed(JobError),
    /// The suggestions after the answer (maybe none), and the numbers of their generation.
    FollowUps {
        questions: Vec<String>,
        stats: MessageStats,
    },
}

/// Why a job produced no answer. Typed until it is shown: the API picks its status from it, a
/// chat stores its text.
#[derive(Clone, Debug, thiserror::Error)]
pub enum JobError {
    /// The engine refused or failed (a template that rejects the messages, NaN logits, ...).
    #[error(transparent)]
    Engine(Arc<engine::EngineError>),
    /// The prompt leaves no room for an answer.
    #[error("the prompt has {prompt_tokens} tokens but the context holds {context_len} (with room for the answer)")]
    PromptTooLong {
        prompt_tokens: usize,
        context_len: usize,
    },
    /// No model to run it on, in this state.
    #[error("{}", .0.describe())]
    NoModel(Box<ModelState>),
    /// The remote endpoint refused or failed.
    #[error(transparent)]
    Remote(Arc<ChatError>),
    /// The engine panicked; the text is the panic's.
    #[error("the engine crashed: {0}")]
    Crashed(String),
}

impl From<engine::EngineError> for JobError {
    fn from(e: engine::EngineError) -> Self {
        JobError::Engine(Arc::new(e))
    }
}

/// What to answer.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// A conversation (system prompt first, if any, ending with the user's turn), rendered with
    /// the model's template. When it does not fit the context with room for the answer, the
    /// oldest turns are dropped (`drop_oldest`: a desktop chat) or it is refused (an API request).
    Chat {
        messages: Vec<ChatMessage>,
        thinking: bool,
        drop_oldest: bool,
    },
    /// Text fed as it is (a raw completion).
    Text(String),
}

/// One answer to produce.
pub struct GenerationJob {
    pub prompt: Prompt,
    pub params: AnswerParams,
    /// Who asked (`chat 3`, `api 127.0.0.1:5123`): sources take turns on the worker.
    pub source: String,
    pub cancelled: Arc<AtomicBool>,
    /// Where the job's events go. `Queued` is told with the worker's queue locked (so it comes
    /// before the answer's first token): a sink must not call back into the worker (`generate`,
    /// `status`) on that thread, nor wait on something that does. The other events are told on
    /// the worker's thread with nothing of the queue locked.
    pub sink: Box<dyn FnMut(JobEvent) + Send>,
    /// Tools offered to the model and run between generation steps (a [`Prompt::Chat`] only).
    pub tools: Option<Tools>,
    /// Suggestions to generate after the answer (a [`Prompt::Chat`] only; see
    /// [`crate::followups`]).
    pub follow_ups: Option<FollowUpRequest>,
}

/// Follow-up suggestions a job asks for after its answer.
pub struct FollowUpRequest {
    /// Their sampling and token limit.
    pub params: AnswerParams,
    /// Set when the user types or sends: checked before they start and between their tokens.
    pub cancelled: Arc<AtomicBool>,
}

enum Request {
    Load(LoadRequest, u64),
    Connect(Endpoint, u64),
    Unload,
    /// Run the next generation of the queue (one per queued generation).
    Next,
    /// The memory other chats' KV caches may keep, in bytes.
    KeptCaches(usize),
    Reset,
    Shutdown,
    #[cfg(any(test, feature = "scripted-model"))]
    Script(Box<scripted::Scripted>),
}

/// Receives every model state change (on the worker's or the caller's thread).
pub type StateSink = Arc<dyn Fn(&ModelState) + Send + Sync>;

struct Shared {
    state: Mutex<ModelState>,
    status: Mutex<EngineStatus>,
    /// Bumped by every load/unload: a load finishing after a newer request is discarded.
    load_seq: AtomicU64,
    queue: Mutex<FairQueue>,
    on_state: StateSink,
    /// Written with the model's path while a load runs, removed when it ends either way.
    loading_marker: Option<PathBuf>,
}

impl Shared {
    fn set_state(&self, state: ModelState) {
        *self.state.lock().unwrap() = state.clone();
        (self.on_state)(&state);
    }

    /// Runs `load` with the loading marker naming `path`; a marker left behind means the process
    /// ended inside `load`. A marker that cannot be written is logged: the load still runs.
    fn while_marked<T>(&self, path: &std::path::Path, load: impl FnOnce() -> T) -> T {
        let Some(marker) = &self.loading_marker else {
            return load();
        };
        if let Err(e) = std::fs::write(marker, path.as_os_str().as_encoded_bytes()) {
            tracing::warn!(marker = %marker.display(), error = %e, "could not write the loading marker");
        }
        let out = load();
        if let Err(e) = std::fs::remove_file(marker) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(marker = %marker.display(), error = %e, "could not remove the loading marker");
            }
        }
        out
    }
}

/// Handle to the engine worker thread; clone it freely.
#[derive(Clone)]
pub struct Worker {
    tx: Sender<Request>,
    shared: Arc<Shared>,
}

impl Worker {
    /// Starts the worker thread in `initial` state.
    /// `loading_marker`: a file that names the model while its load runs (see
    /// [`crate::AppPaths::interrupted_load`]).
    pub fn spawn(
        initial: ModelState,
        on_state: StateSink,
        loading_marker: Option<PathBuf>,
    ) -> (Worker, JoinHandle<()>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(initial),
            status: Mutex::new(EngineStatus::default()),
            load_seq: AtomicU64::new(0),
            queue: Mutex::new(FairQueue::default()),
            on_state,
            loading_marker,
        });
        let (tx, rx) = channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("engine-worker".into())
            .spawn(move || run(rx, &thread_shared))
            .expect("spawn the engine worker thread");
        (Worker { tx, shared }, thread)
    }

    pub fn state(&self) -> ModelState {
        self.shared.state.lock().unwrap().clone()
    }

    pub fn status(&self) -> EngineStatus {
        let mut status = self.shared.status.lock().unwrap().clone();
        status.queued = self.shared.queue.lock().unwrap().len();
        status
    }

    /// Loads a model in the background; the state is `Loading` as soon as this returns.
    pub fn load(&self, req: LoadRequest) -> Result<()> {
        let seq = self.shared.load_seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.set_state(ModelState::Loading {
            path: req.path.clone(),
            started_at: now_ms(),
        });
        self.send(Request::Load(req, seq))
    }

    /// Connects to a remote endpoint in the background (checking it answers, accepts the key and
    /// serves the model); the state is `Connecting` as soon as this returns.
    pub fn connect(&self, endpoint: Endpoint) -> Result<()> {
        let seq = self.shared.load_seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.set_state(ModelState::Connecting {
            url: endpoint
                .api_url()
                .unwrap_or_else(|_| endpoint.base_url.clone()),
            started_at: now_ms(),
        });
        self.send(Request::Connect(endpoint, seq))
    }

    /// Puts the worker in the `Failed` state for `path` on `placement` without loading it (a
    /// load that ended the app last time); a retry loads it.
    pub fn fail(&self, path: PathBuf, error: LoadError, placement: Placement) {
        self.shared.load_seq.fetch_add(1, Ordering::SeqCst);
        self.shared.set_state(ModelState::Failed {
            path,
            error,
            placement,
        });
    }

    /// Drops the model; the state becomes `NoModel` with `why` / `how_to_get_one`.
    pub fn unload(&self, why: String, how_to_get_one: String) -> Result<()> {
        self.shared.load_seq.fetch_add(1, Ordering::SeqCst);
        self.shared.set_state(ModelState::NoModel {
            why,
            how_to_get_one,
        });
        self.send(Request::Unload)
    }

    /// Queues a generation. Its events go to `job.sink`: `Queued` on the caller's thread (and
    /// whichever moves the queue), the rest on the worker thread.
    pub fn generate(&self, job: GenerationJob) -> Result<()> {
        self.shared.queue.lock().unwrap().push(job);
        // Without a worker the job never runs; the thread is gone only at shutdown, which ends
        // every queued job as stopped.
        self.send(Request::Next)
    }

    /// Sets the memory the KV caches of chats other than the one answering may keep (see
    /// [`Engine::use_cache_of`]), for this model and the next ones.
    pub fn set_kept_caches(&self, bytes: usize) -> Result<()> {
        self.send(Request::KeptCaches(bytes))
    }

    /// Empties the KV cache (after the requests already queued).
    pub fn reset(&self) -> Result<()> {
        self.send(Request::Reset)
    }

    /// Asks the thread to stop after the current request.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Request::Shutdown);
    }

    /// Tests: answers come from `script` from now on (after the requests already queued).
    #[cfg(any(test, feature = "scripted-model"))]
    pub(crate) fn script(&self, script: scripted::Scripted) {
        self.shared.load_seq.fetch_add(1, Ordering::SeqCst);
        self.send(Request::Script(Box::new(script))).unwrap();
    }

    fn send(&self, req: Request) -> Result<()> {
        self.tx.send(req).map_err(|_| ChatError::WorkerGone)
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// What answers: the local engine or a remote endpoint.
enum Backend {
    /// Boxed: the engine is far larger than a remote model's handle.
    Local(Box<Engine>),
    Remote(RemoteModel),
    /// Tests: a model whose output is scripted, at the engine's token boundary.
    #[cfg(any(test, feature = "scripted-model"))]
    Scripted(Box<scripted::Scripted>),
}

fn run(rx: Receiver<Request>, shared: &Shared) {
    let mut backend: Option<Backend> = None;
    let mut kept_caches = 0;
    while let Ok(req) = rx.recv() {
        match req {
            Request::Connect(endpoint, seq) => {
                if seq != shared.load_seq.load(Ordering::SeqCst) {
                    continue;
                }
                backend = None;
                *shared.status.lock().unwrap() = EngineStatus::default();
                let url = endpoint
                    .api_url()
                    .unwrap_or_else(|_| endpoint.base_url.clone());
                let connected = RemoteModel::connect(&endpoint);
                if seq != shared.load_seq.load(Ordering::SeqCst) {
                    continue;
                }
                match connected {
                    Ok(remote) => {
                        let state = ModelState::Remote {
                            url: remote.url.clone(),
                            model: remote.model.clone(),
                        };
                        backend = Some(Backend::Remote(remote));
                        shared.set_state(state);
                    }
                    Err(e) => {
                        tracing::warn!(%url, error = %e, "endpoint check failed");
                        shared.set_state(ModelState::RemoteFailed {
                            url,
                            error: Arc::new(e),
                        });
                    }
                }
            }
            Request::Load(req, seq) => {
                if seq != shared.load_seq.load(Ordering::SeqCst) {
                    continue; // a newer load or unload superseded this one
                }
                backend = None; // free the old model before mapping the new one
                let loaded = shared.while_marked(&req.path, || load(&req));
                if seq != shared.load_seq.load(Ordering::SeqCst) {
                    continue;
                }
                match loaded {
                    Ok(mut e) => {
                        e.set_kept_cache_budget(kept_caches);
                        let info = Box::new(e.info().clone());
                        *shared.status.lock().unwrap() = EngineStatus {
                            context_len: e.context_len(),
                            ..EngineStatus::default()
                        };
                        backend = Some(Backend::Local(Box::new(e)));
                        shared.set_state(ModelState::Ready {
                            info,
                            placement: req.placement,
                            threads: engine::threads::current(),
                        });
                    }
                    Err(error) => {
                        tracing::warn!(path = %req.path.display(), %error, "model load failed");
                        shared.set_state(ModelState::Failed {
                            path: req.path,
                            error,
                            placement: req.placement,
                        });
                    }
                }
            }
            Request::KeptCaches(bytes) => {
                kept_caches = bytes;
                if let Some(Backend::Local(e)) = backend.as_mut() {
                    e.set_kept_cache_budget(bytes);
                }
            }
            Request::Unload => {
                backend = None;
                *shared.status.lock().unwrap() = EngineStatus::default();
            }
            Request::Reset => {
                // A remote server keeps its own cache: nothing to empty here.
                if let Some(Backend::Local(e)) = backend.as_mut() {
                    e.reset();
                    shared.status.lock().unwrap().cached_tokens = 0;
                }
            }
            Request::Next => {
                let Some(mut job) = shared.queue.lock().unwrap().pop() else {
                    continue;
                };
                // The answer's text (of its last step), for the follow-ups' conversation.
                let said = job.follow_ups.is_some().then(|| record_answer(&mut job));
                let outcome = match backend.as_mut() {
                    None => Err(Failure::Failed(JobError::NoModel(Box::new(
                        shared.state.lock().unwrap().clone(),
                    )))),
                    Some(backend) => {
                        use_cache_of(backend, &job).and_then(|()| answer(backend, &mut job))
                    }
                };
                match outcome {
                    Ok(stats) => {
                        let mut status = shared.status.lock().unwrap();
                        status.cached_tokens = stats.context_used;
                        status.last = Some(stats.clone());
                        drop(status);
                        let finish = stats.finish;
                        (job.sink)(JobEvent::Finished(stats));
                        // Not after a stopped answer, and never ahead of a waiting answer:
                        // suggestions are worth less than someone's turn.
                        let waiting = shared.queue.lock().unwrap().len() > 1;
                        let ended = matches!(finish, Some(Finish::Stop | Finish::Length));
                        if let (Some(backend), Some(said), true, false) =
                            (backend.as_mut(), said, ended, waiting)
                        {
                            let said = said.lock().unwrap().clone();
                            if let Some(event) = follow_ups(backend, &mut job, said) {
                                if let JobEvent::FollowUps { stats, .. } = &event {
                                    let mut status = shared.status.lock().unwrap();
                                    status.cached_tokens = stats.context_used;
                                }
                                (job.sink)(event);
                            }
                        }
                    }
                    Err(failure) => {
                        // Free before the caller hears: a request sent on that news (a client
                        // retrying) is not told it waits behind this one, which the API would
                        // answer with a stream where a status was due.
                        shared.queue.lock().unwrap().done();
                        (job.sink)(match failure {
                            Failure::Refused(why) => JobEvent::Refused(why),
                            Failure::Failed(error) => JobEvent::Failed(error),
                        });
                        continue;
                    }
                }
                shared.queue.lock().unwrap().done();
            }
            Request::Shutdown => break,
            #[cfg(any(test, feature = "scripted-model"))]
            Request::Script(script) => {
                backend = Some(Backend::Scripted(script));
                shared.set_state(ModelState::Remote {
                    url: "script".into(),
                    model: "scripted".into(),
                });
            }
        }
    }
    // Answers still queued will not run: end them as stopped, so they are stored as such.
    let waiting = shared.queue.lock().unwrap().drain();
    for mut job in waiting {
        (job.sink)(JobEvent::Finished(MessageStats {
            finish: Some(Finish::Cancelled),
            ..MessageStats::default()
        }));
    }
}

fn load(req: &LoadRequest) -> Result<Engine, LoadError> {
    let opts = EngineOptions {
        context_len: req.context_len,
        kv_type: req.kv_type,
        placement: req.placement,
        ..Default::default()
    };
    catch_unwind(AssertUnwindSafe(|| Engine::load(&req.path, &opts)))
        .map_err(|panic| LoadError::Crashed(panic_text(panic)))?
        .map_err(LoadError::from)
}

/// The template variables of a chat's answer besides its messages.
struct Turn {
    thinking: bool,
    xml_tools: Option<serde_json::Value>,
}

impl Turn {
    fn options(&self) -> ChatOptions {
        ChatOptions {
            add_generation_prompt: true,
            enable_thinking: Some(self.thinking),
            xml_tools: self.xml_tools.clone(),
            ..ChatOptions::default()
        }
    }
}

/// Drops the oldest turn (keeping system messages and the last message); false when nothing
/// more can go.
fn drop_oldest_turn(messages: &mut Vec<ChatMessage>) -> bool {
    let turns = messages.iter().filter(|m| m.role != "system").count();
    if turns <= 1 {
        return false;
    }
    let first = messages.iter().position(|m| m.role != "system");
    if let Some(i) = first {
        messages.remove(i);
        // A conversation the templates accept starts with the user.
        while messages.len() > i + 1 && matches!(messages[i].role.as_str(), "assistant" | "tool") {
            messages.remove(i);
        }
    }
    true
}

/// Renders and tokenizes the conversation; with `drop_oldest`, drops the oldest turns until the
/// prompt leaves `reserve` tokens for the answer. Returns the tokens and whether the prompt
/// opened `<think>`.
fn prompt_for(
    engine: &Engine,
    messages: &mut Vec<ChatMessage>,
    turn: &Turn,
    reserve: usize,
    drop_oldest: bool,
) -> engine::Result<(Vec<u32>, bool)> {
    let opts = turn.options();
    let today = chrono::Local::now().date_naive();
    loop {
        let text = engine.render_chat(messages, &opts, today)?;
        let open = text
            .rfind("<think>")
            .is_some_and(|i| !text[i..].contains("</think>"));
        let ids = engine.encode_prompt(&text)?;
        let fits = ids.len() + reserve <= engine.context_len();
        if fits || !drop_oldest || !drop_oldest_turn(messages) {
            return Ok((ids, open));
        }
    }
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64: neighbouring clock values give unrelated seeds.
    let mut z = nanos.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One generation step on whichever backend answers.
fn step(
    backend: &mut Backend,
    job: &mut Step<'_>,
    sink: &mut dyn FnMut(JobEvent),
) -> Result<MessageStats, Failure> {
    match backend {
        Backend::Local(e) => catch_unwind(AssertUnwindSafe(|| generate(e, job, sink)))
            .unwrap_or_else(|panic| Err(Failure::Failed(JobError::Crashed(panic_text(panic))))),
        Backend::Remote(r) => generate_remote(r, job, sink),
        #[cfg(any(test, feature = "scripted-model"))]
        Backend::Scripted(s) => s.generate(job, sink),
    }
}

/// Gives the local engine's KV cache to the job's source (a chat, an API client) before its
/// answer: its cache is restored if it was kept, so only its new tokens are prefilled.
fn use_cache_of(backend: &mut Backend, job: &GenerationJob) -> Result<(), Failure> {
    if let Backend::Local(e) = backend {
        e.use_cache_of(&job.source)
            .map_err(|e| Failure::Failed(JobError::from(e)))?;
    }
    Ok(())
}

/// What one generation step needs of its job.
struct Step<'a> {
    prompt: &'a mut Prompt,
    params: &'a AnswerParams,
    cancelled: &'a Arc<AtomicBool>,
    /// The tools' descriptions for the template (`xml_tools`).
    xml_tools: Option<serde_json::Value>,
}

/// Whether the backend's template shows the model tools ([`engine::ModelInfo::supports_tools`]).
/// Otherwise a job's tools are not offered (nor MCP servers started for them), and text that
/// looks like a call is the answer's text. A remote endpoint renders its own template: it is
/// not offered ours.
fn supports_tools(backend: &Backend) -> bool {
    match backend {
        Backend::Local(e) => e.info().supports_tools,
        Backend::Remote(_) => false,
        #[cfg(any(test, feature = "scripted-model"))]
        Backend::Scripted(s) => s.template.supports_tools(),
    }
}

/// Produces the job's answer: one generation step, or with tools, steps until the model answers
/// without calling one (or the step limit). Each step's calls run in order; their results are
/// appended to the conversation as `tool` messages after the step's own text, and the next
/// step continues from there (the engine reuses the cached prefix). The user sees the answer
/// text without the calls, and a [`JobEvent::Tool`] for each.
fn answer(backend: &mut Backend, job: &mut GenerationJob) -> Result<MessageStats, Failure> {
    let GenerationJob {
        prompt,
        params,
        cancelled,
        sink,
        tools,
        ..
    } = job;
    let tools = tools.clone().filter(|_| supports_tools(backend));
    let tools = match (tools, &prompt) {
        (Some(Tools::Run(tools)), Prompt::Chat { .. }) => tools,
        (Some(Tools::Offer(specs)), Prompt::Chat { .. }) => {
            return offer(backend, prompt, params, cancelled, sink, specs)
        }
        _ => {
            let mut step_job = Step {
                prompt,
                params,
                cancelled,
                xml_tools: None,
            };
            return step(backend, &mut step_job, sink);
        }
    };
    let xml_tools = Some(serde_json::Value::Array(tools.host.specs()));
    let mut total: Option<MessageStats> = None;
    let mut index = 0;
    for n in 0..=tools.max_steps {
        let mut parser = ToolCallParser::default();
        let mut said = String::new();
        let mut step_job = Step {
            prompt: &mut *prompt,
            params,
            cancelled,
            xml_tools: xml_tools.clone(),
        };
        let stats = step(backend, &mut step_job, &mut |event| match event {
            JobEvent::Token(text) => {
                said.push_str(&text);
                let shown = parser.push(&text);
                if !shown.is_empty() {
                    sink(JobEvent::Token(shown));
                }
            }
            other => sink(other),
        })?;
        let (tail, calls) = parser.finish();
        if !tail.is_empty() {
            sink(JobEvent::Token(tail));
        }
        let finish = stats.finish;
        total = Some(match total {
            None => stats,
            Some(before) => before.then(stats),
        });
        if calls.is_empty() {
            break;
        }
        // Calls the answer will not run are still shown, saying why.
        let stop = match finish {
            Some(Finish::Cancelled) => Some("not run: the answer was stopped"),
            Some(Finish::Length) => Some("not run: the answer reached its token limit"),
            _ if n == tools.max_steps => {
                Some("not run: the answer reached its limit of tool steps")
            }
            _ => None,
        };
        if let Some(why) = stop {
            for call in &calls {
                sink(JobEvent::Tool(tools::skipped(index, call, why)));
                index += 1;
            }
            break;
        }
        let Prompt::Chat { messages, .. } = &mut *prompt else {
            break;
        };
        messages.push(ChatMessage::new("assistant", said));
        for call in &calls {
            let refused = tools.ask(index, call, cancelled, &mut |r| sink(JobEvent::Tool(r)));
            if let Some(record) = refused {
                messages.push(ChatMessage::new("tool", tools::tool_message(&record)));
                sink(JobEvent::Tool(record));
                index += 1;
                continue;
            }
            sink(JobEvent::Tool(tools::running(index, call)));
            let record = tools.run(index, call, cancelled);
            messages.push(ChatMessage::new("tool", tools::tool_message(&record)));
            sink(JobEvent::Tool(record));
            index += 1;
        }
        if cancelled.load(Ordering::SeqCst) {
            // Stopped between steps (while a call ran or waited for approval): the answer
            // ends here as stopped, not as the last step ended.
            if let Some(t) = total.as_mut() {
                t.finish = Some(Finish::Cancelled);
            }
            break;
        }
    }
    Ok(total.unwrap_or_default())
}

/// One generation step offering `specs`; its calls are handed back unrun (`requested`) after
/// the text. A malformed call is not a call: its text stays in the answer, as written.
fn offer(
    backend: &mut Backend,
    prompt: &mut Prompt,
    params: &AnswerParams,
    cancelled: &Arc<AtomicBool>,
    sink: &mut Box<dyn FnMut(JobEvent) + Send>,
    specs: Vec<serde_json::Value>,
) -> Result<MessageStats, Failure> {
    let mut parser = ToolCallParser::default();
    let mut step_job = Step {
        prompt,
        params,
        cancelled,
        xml_tools: Some(serde_json::Value::Array(specs)),
    };
    let mut calls = Vec::new();
    let pass = |text: String, sink: &mut Box<dyn FnMut(JobEvent) + Send>| {
        if !text.is_empty() {
            sink(JobEvent::Token(text));
        }
    };
    let stats = step(backend, &mut step_job, &mut |event| match event {
        JobEvent::Token(text) => {
            let shown = parser.push(&text);
            pass(shown, sink);
            calls.extend(parser.take_calls());
        }
        other => sink(other),
    })?;
    let (tail, rest) = parser.finish();
    pass(tail, sink);
    calls.extend(rest);
    let mut index = 0;
    for call in calls {
        match call {
            Ok(call) => {
                let mut record = tools::running(index, &Ok(call));
                record.status = ToolStatus::Requested;
                sink(JobEvent::Tool(record));
                index += 1;
            }
            Err(m) => pass(m.written, sink),
        }
    }
    Ok(stats)
}

fn generate_remote(
    remote: &RemoteModel,
    job: &mut Step<'_>,
    sink: &mut dyn FnMut(JobEvent),
) -> Result<MessageStats, Failure> {
    remote
        .generate(job.prompt, job.params, job.cancelled, sink)
        .map_err(|e| match e {
            ChatError::EndpointRejected { .. } => Failure::Refused(JobError::Remote(Arc::new(e))),
            e => Failure::Failed(JobError::Remote(Arc::new(e))),
        })
}

/// Wraps the job's sink so that it also keeps the answer's text since its last tool call (the
/// text of the step that answered), which the follow-ups' conversation repeats.
fn record_answer(job: &mut GenerationJob) -> Arc<Mutex<String>> {
    let said = Arc::new(Mutex::new(String::new()));
    let mut inner = std::mem::replace(&mut job.sink, Box::new(|_| {}));
    let keep = said.clone();
    job.sink = Box::new(move |event| {
        match &event {
            JobEvent::Token(t) => keep.lock().unwrap().push_str(t),
            JobEvent::Tool(_) => keep.lock().unwrap().clear(),
            _ => {}
        }
        inner(event)
    });
    said
}

/// Generates the job's follow-up suggestions: its conversation as the answer left it, the answer
/// (`said`) and [`followups::INSTRUCTION`] as the user's next turn. Rendered the same way as the
/// answer's prompt, it extends the cached tokens, so only the new turns are prefilled. A remote
/// endpoint is not asked (its cache is not ours to reuse: they would cost a whole prompt).
/// `None` when cancelled, not a chat, or the generation failed (logged: nothing to show).
fn follow_ups(backend: &mut Backend, job: &mut GenerationJob, said: String) -> Option<JobEvent> {
    let request = job.follow_ups.as_ref()?;
    if matches!(backend, Backend::Remote(_)) || request.cancelled.load(Ordering::SeqCst) {
        return None;
    }
    let Prompt::Chat {
        messages, thinking, ..
    } = &job.prompt
    else {
        return None;
    };
    let mut messages = messages.clone();
    let asked = messages
        .iter()
        .rfind(|m| m.role == "user")
        .map(|m| m.content.clone())
        .unwrap_or_default();
    messages.push(ChatMessage::new("assistant", said));
    messages.push(ChatMessage::new("user", followups::INSTRUCTION));
    let mut prompt = Prompt::Chat {
        messages,
        // The same mode as the answer: SmolLM3 writes it into the system turn, which must not
        // change (the prefix would); the thinking itself is cut short by the params' budget.
        thinking: *thinking,
        drop_oldest: false,
    };
    // The tools the answer was offered are offered again (SmolLM3 lists them in the system
    // turn, which must not change); a call the model makes anyway is not a suggestion.
    let xml_tools = match &job.tools {
        _ if !supports_tools(backend) => None,
        Some(Tools::Run(tools)) => Some(serde_json::Value::Array(tools.host.specs())),
        Some(Tools::Offer(specs)) => Some(serde_json::Value::Array(specs.clone())),
        None => None,
    };
    let mut parser = ToolCallParser::default();
    let mut text = String::new();
    let mut step_job = Step {
        prompt: &mut prompt,
        params: &request.params,
        cancelled: &request.cancelled,
        xml_tools,
    };
    let stats = step(backend, &mut step_job, &mut |event| {
        if let JobEvent::Token(t) = event {
            text.push_str(&parser.push(&t));
        }
    });
    text.push_str(&parser.finish().0);
    match stats {
        Ok(stats) if stats.finish != Some(Finish::Cancelled) => {
            let questions = followups::parse(&text, &asked);
            if questions.is_empty() {
                // The small models often chat on instead of listing questions: say what they
                // wrote, so a page without chips can be told apart from a broken pipeline.
                let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
                tracing::info!(lines, kept = 0, %text, "no follow-up suggestion in the model's reply");
            }
            Some(JobEvent::FollowUps { questions, stats })
        }
        Ok(_) => None,
        Err(Failure::Refused(e) | Failure::Failed(e)) => {
            tracing::warn!(error = %e, "follow-up suggestions failed");
            None
        }
    }
}

/// Why a job produced no complete answer.
enum Failure {
    Refused(JobError),
    Failed(JobError),
}

fn generate(
    engine: &mut Engine,
    job: &mut Step<'_>,
    sink: &mut dyn FnMut(JobEvent),
) -> Result<MessageStats, Failure> {
    let cancelled = job.cancelled.clone();
    if cancelled.load(Ordering::SeqCst) {
        return Ok(MessageStats {
            finish: Some(Finish::Cancelled),
            context_used: engine.cached_tokens(),
            context_len: engine.context_len(),
            model: Some(file_name(&engine.info().path)),
            ..MessageStats::default()
        });
    }
    let p = job.params;
    let reserve = p.max_tokens().min(engine.context_len() / 4).max(1);
    let refused = |e: engine::EngineError| Failure::Refused(e.into());
    let (prompt, open) = match &mut *job.prompt {
        Prompt::Chat {
            messages,
            thinking,
            drop_oldest,
        } => {
            let turn = Turn {
                thinking: *thinking,
                xml_tools: job.xml_tools.clone(),
            };
            prompt_for(engine, messages, &turn, reserve, *drop_oldest).map_err(refused)?
        }
        Prompt::Text(text) => (engine.encode_prompt(text).map_err(refused)?, false),
    };
    // At least one token of answer must fit (the desktop's chats have dropped turns for more).
    if prompt.len() >= engine.context_len() {
        return Err(Failure::Refused(JobError::PromptTooLong {
            prompt_tokens: prompt.len(),
            context_len: engine.context_len(),
        }));
    }
    let params = GenerationParams {
        max_tokens: p.max_tokens(),
        sampling: p.engine_sampling(engine.default_sampling(), random_seed),
        stop_strings: p.stop().to_vec(),
        ignore_eos: false,
        start_in_thinking: open,
        max_thinking_tokens: p.max_thinking_tokens(),
        speculative: p.speculative(),
    };
    let out = engine
        .generate(
            &prompt,
            &params,
            &|| cancelled.load(Ordering::Relaxed),
            &mut |event| match event {
                GenerationEvent::Thinking(t) => sink(JobEvent::Thinking(t)),
                GenerationEvent::Token(t) => sink(JobEvent::Token(t)),
                GenerationEvent::Done(_) => {}
            },
        )
        .map_err(|e| Failure::Failed(e.into()))?;
    let t = &out.timings;
    Ok(MessageStats {
        finish: Some(out.finish_reason.into()),
        prompt_tokens: out.usage.prompt_tokens,
        completion_tokens: out.usage.completion_tokens,
        cached_tokens: out.usage.cached_tokens,
        drafted_tokens: out.usage.drafted_tokens,
        accepted_drafts: out.usage.accepted_drafts,
        time_to_first_token_ms: t.time_to_first_token_ms,
        prefill_ms: t.prefill_ms,
        decode_ms: t.decode_ms,
        prefill_tok_s: t.prefill_tok_s,
        decode_tok_s: t.decode_tok_s,
        context_used: engine.cached_tokens(),
        context_len: engine.context_len(),
        model: Some(file_name(&engine.info().path)),
    })
}

/// Tests (this crate's, and other crates' with the feature `scripted-model`): a backend that
/// renders the conversation with a real chat template (recording each prompt) and answers each
/// step with the next scripted list of token pieces.
#[cfg(any(test, feature = "scripted-model"))]
pub(crate) mod scripted {
    use std::collections::VecDeque;

    use super::*;

    pub(crate) struct Scripted {
        pub template: engine::template::ChatTemplate,
        pub replies: VecDeque<Vec<String>>,
        pub prompts: Arc<Mutex<Vec<String>>>,
    }

    impl crate::ChatApp {
        /// The model becomes a script: each generation step renders its prompt with `template`
        /// (recorded in the returned list) and answers with the next of `replies` (token
        /// pieces); everything else (the worker, its tool loop, the stream) is the real app.
        /// Its state reads as a remote endpoint named `scripted`, until the next load.
        pub fn script_model(
            &self,
            template: engine::template::ChatTemplate,
            replies: Vec<Vec<String>>,
        ) -> Arc<Mutex<Vec<String>>> {
            let prompts = Arc::new(Mutex::new(Vec::new()));
            self.inner.worker.script(Scripted {
                template,
                replies: VecDeque::from(replies),
                prompts: prompts.clone(),
            });
            prompts
        }
    }

    impl Scripted {
        pub(super) fn generate(
            &mut self,
            job: &mut Step<'_>,
            sink: &mut dyn FnMut(JobEvent),
        ) -> Result<MessageStats, Failure> {
            let Prompt::Chat {
                messages, thinking, ..
            } = &*job.prompt
            else {
                panic!("the scripted model answers chats only");
            };
            let turn = Turn {
                thinking: *thinking,
                xml_tools: job.xml_tools.clone(),
            };
            let today = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
            let prompt = self
                .template
                .render(messages, &turn.options(), today)
                .map_err(|e| Failure::Refused(e.into()))?;
            self.prompts.lock().unwrap().push(prompt);
            let reply = self.replies.pop_front().ok_or_else(|| {
                Failure::Failed(JobError::Crashed("the script has no more replies".into()))
            })?;
            let mut stats = MessageStats {
                finish: Some(Finish::Stop),
                ..MessageStats::default()
            };
            for piece in reply {
                if job.cancelled.load(Ordering::SeqCst) {
                    stats.finish = Some(Finish::Cancelled);
                    break;
                }
                stats.completion_tokens += 1;
                sink(JobEvent::Token(piece));
            }
            Ok(stats)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(m: &[ChatMessage]) -> Vec<&str> {
        m.iter().map(|m| m.role.as_str()).collect()
    }

    #[test]
    fn dropping_turns_keeps_the_system_prompt_and_the_question() {
        let mut m = vec![
            ChatMessage::new("system", "s"),
            ChatMessage::new("user", "1"),
            ChatMessage::new("assistant", "a1"),
            ChatMessage::new("user", "2"),
        ];
        assert!(drop_oldest_turn(&mut m));
        assert_eq!(roles(&m), ["system", "user"]);
        assert_eq!(m[1].content, "2");
        assert!(!drop_oldest_turn(&mut m));
    }

    #[test]
    fn seeds_differ_between_calls() {
        let a = random_seed();
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert_ne!(a, random_seed());
    }

    /// The typed errors of a state reach JSON (the status API, the shell) as their text.
    #[test]
    fn failed_states_serialise_their_errors_as_text() {
        let failed = ModelState::Failed {
            path: "m.gguf".into(),
            error: engine::EngineError::UnsupportedModel("architecture \"x\"".into()).into(),
            placement: Placement::default(),
        };
        let json = serde_json::to_value(&failed).unwrap();
        assert_eq!(json["state"], "failed");
        assert_eq!(json["error"], "unsupported model: architecture \"x\"");
        let remote = ModelState::RemoteFailed {
            url: "http://h/v1".into(),
            error: Arc::new(ChatError::EndpointTimeout {
                url: "http://h/v1".into(),
                secs: 5,
            }),
        };
        let json = serde_json::to_value(&remote).unwrap();
        assert_eq!(
            json["error"],
            "the endpoint http://h/v1 sent nothing for 5 s (the timeout in Settings)"
        );
    }
}

//! The shell's hold on the chat core: it opens [`ChatApp`], forwards its events to the windows as Tauri
//! events (`chat-stream` frames, `app-state` triggers), and maps settings to and from the settings form.

use std::collections::HashMap;
use std::path::PathBuf;

use chat::{AppEvent, AppPaths, ChatApp, ChatId, Device, EventId, ModelState, Settings};
use serde::Serialize;
use serde_json::json;
use tauri::{AppHandle, Emitter};

use crate::pages::Frame;
use crate::{windows, Args};

/// The chat core as the routes use it.
pub struct Core {
    app: ChatApp,
}

/// The model's state for the status line and the banner.
#[derive(Serialize)]
pub struct ModelView {
    /// `none`, `loading`, `ready` or `failed`.
    pub state: &'static str,
    pub label: String,
    pub detail: String,
    /// Whether to offer thinking mode: the loaded model's template has one (assumed until a model
    /// is ready, so the chat header does not flicker while one loads).
    pub thinking: bool,
}

/// Opens the chat core with the paths from `args` (or the OS defaults) and starts loading the model.
pub fn start(handle: &AppHandle, args: &Args) -> anyhow::Result<Core> {
    let defaults = AppPaths::for_user()?;
    let data_dir = args.data_dir.clone().unwrap_or(defaults.data_dir);
    let paths = AppPaths {
        models_dir: args
            .models_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("models")),
        config_dir: args.config_dir.clone().unwrap_or(defaults.config_dir),
        data_dir,
    };
    let emitter = handle.clone();
    let sink: chat::EventSink = std::sync::Arc::new(move |event| forward(&emitter, event));
    let app = ChatApp::open(paths, sink)?;
    for notice in app.notices() {
        tracing::warn!("{notice}");
    }
    // `open` already loads the model the settings name; load again only for a different one.
    if let Some(model) = args.model.as_deref().map(absolute) {
        if app.settings().model_path.as_ref() != Some(&model) {
            app.load_model(model)?;
        }
    }
    Ok(Core { app })
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Chat core events -> Tauri events. Runs on the core's threads: emit and return.
fn forward(app: &AppHandle, event: AppEvent) {
    let sent = match &event {
        AppEvent::Stream(ev) => {
            let frame = Frame::new(ev);
            let done = ev.kind.is_terminal();
            let r = app.emit("chat-stream", frame);
            if done {
                let _ = app.emit(
                    "app-state",
                    json!({"busy": false, "chat": ev.chat_id, "trigger": "chats-changed"}),
                );
            }
            r
        }
        AppEvent::ModelState(_) => app.emit("app-state", json!({"trigger": "model-changed"})),
        AppEvent::ChatsChanged => app.emit("app-state", json!({"trigger": "chats-changed"})),
        AppEvent::SettingsChanged(s) => {
            if let Err(e) = windows::set_quick_shortcut(app, &s.quick_chat_shortcut) {
                toast(app, &e, "error");
            }
            app.emit("app-state", json!({"trigger": "settings-changed"}))
        }
    };
    if let Err(e) = sent {
        tracing::warn!(event = event.name(), error = %e, "could not emit");
    }
}

/// Shows `text` as a toast in every window; `kind` is `""` or `"error"`.
pub fn toast(app: &AppHandle, text: &str, kind: &str) {
    if let Err(e) = app.emit("app-state", json!({"toast": text, "kind": kind})) {
        tracing::warn!(error = %e, "could not show a toast: {text}");
    }
}

/// Registers the quick-chat shortcut from the settings; a failure is logged, not fatal.
pub fn apply_shortcut(handle: &AppHandle, core: &Core) {
    let shortcut = core.app.settings().quick_chat_shortcut;
    if let Err(e) = windows::set_quick_shortcut(handle, &shortcut) {
        tracing::warn!("{e}");
    }
}

impl Core {
    pub fn app(&self) -> &ChatApp {
        &self.app
    }

    pub fn model_view(&self) -> ModelView {
        let state = self.app.model_state();
        let detail = state.describe();
        let thinking = match &state {
            ModelState::Ready { info, .. } => info.supports_thinking,
            _ => true,
        };
        match state {
            ModelState::NoModel { .. } => ModelView {
                state: "none",
                label: "No model".into(),
                detail,
                thinking,
            },
            ModelState::Loading { path, .. } => ModelView {
                state: "loading",
                label: file_name(&path),
                detail,
                thinking,
            },
            ModelState::Ready { info, threads, .. } => ModelView {
                state: "ready",
                label: format!(
                    "{} · CPU · {threads} threads",
                    chat::worker::model_name(&info)
                ),
                detail,
                thinking,
            },
            ModelState::Failed { path, .. } => ModelView {
                state: "failed",
                label: format!("{} failed to load", file_name(&path)),
                detail,
                thinking,
            },
        }
    }

    /// The stream frames after `after`. When they were dropped because the answer is stored, one
    /// `complete` frame (for no message in particular) tells the page to fetch the stored message.
    pub fn frames_after(&self, chat_id: ChatId, after: EventId) -> Vec<Frame> {
        let got = self.app.events_after(chat_id, after);
        if got.reload {
            return vec![Frame {
                id: got.last_id.max(after + 1),
                chat: chat_id,
                message: None,
                event: "complete",
                data: "stored".into(),
            }];
        }
        got.events.iter().map(Frame::new).collect()
    }

    pub fn retry_load(&self) -> chat::Result<()> {
        self.app.reload_model()
    }

    /// The model family's sampling defaults, shown as placeholders in the settings form.
    pub fn sampling_defaults(&self) -> serde_json::Value {
        let family = match self.app.model_state() {
            ModelState::Ready { info, .. } if info.config.arch == engine::Arch::Llama => {
                engine::ModelFamily::Llama
            }
            _ => engine::ModelFamily::SmolLM3,
        };
        let d = engine::SamplingParams::for_family(family);
        json!({
            "temperature": d.temperature,
            "top_p": d.top_p,
            "top_k": d.top_k,
            "repeat_penalty": d.repeat_penalty,
        })
    }
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// The settings as the form shows them (`None` = empty field = the model's default).
pub fn settings_form(s: &Settings) -> serde_json::Value {
    let opt = |v: Option<String>| v.unwrap_or_default();
    json!({
        "model_path": s.model_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        "context_len": s.context_len,
        "device": s.device.name(),
        "threads": s.threads,
        "temperature": opt(s.temperature.map(|v| v.to_string())),
        "top_p": opt(s.top_p.map(|v| v.to_string())),
        "top_k": opt(s.top_k.map(|v| v.to_string())),
        "repeat_penalty": opt(s.repeat_penalty.map(|v| v.to_string())),
        "thinking": s.thinking_default,
        "system_prompt": s.system_prompt,
        "shortcut": s.quick_chat_shortcut,
    })
}

/// The submitted form over `current`; a field that does not parse is an error naming it.
pub fn settings_from_form(
    current: &Settings,
    form: &HashMap<String, String>,
) -> Result<Settings, String> {
    fn field<T: std::str::FromStr>(
        form: &HashMap<String, String>,
        name: &str,
        label: &str,
    ) -> Result<Option<T>, String> {
        match form.get(name).map(|v| v.trim()) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{label}: “{v}” is not a valid number")),
        }
    }
    let mut s = current.clone();
    s.model_path = form
        .get("model_path")
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Some(n) = field(form, "context_len", "Context length")? {
        s.context_len = n;
    }
    if let Some(n) = field(form, "threads", "Threads")? {
        s.threads = n;
    }
    s.device = match form.get("device").map(String::as_str) {
        Some("cuda") => Device::Cuda,
        Some("metal") => Device::Metal,
        _ => Device::Cpu,
    };
    s.temperature = field(form, "temperature", "Temperature")?;
    s.top_p = field(form, "top_p", "Top-p")?;
    s.top_k = field(form, "top_k", "Top-k")?;
    s.repeat_penalty = field(form, "repeat_penalty", "Repetition penalty")?;
    s.thinking_default = form.get("thinking").is_some_and(|v| v == "on");
    if let Some(p) = form.get("system_prompt") {
        s.system_prompt = p.trim().to_string();
    }
    if let Some(k) = form.get("shortcut") {
        s.quick_chat_shortcut = k.trim().to_string();
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_sampling_fields_mean_the_model_default() {
        let current = Settings {
            temperature: Some(0.9),
            ..Settings::default()
        };
        let s = settings_from_form(
            &current,
            &form(&[("temperature", ""), ("top_k", "40"), ("thinking", "on")]),
        )
        .unwrap();
        assert_eq!(s.temperature, None);
        assert_eq!(s.top_k, Some(40));
        assert!(s.thinking_default);
    }

    #[test]
    fn a_bad_number_names_its_field() {
        let err =
            settings_from_form(&Settings::default(), &form(&[("top_p", "lots")])).unwrap_err();
        assert!(err.contains("Top-p"), "{err}");
    }

    #[test]
    fn form_round_trips_the_settings() {
        let s = Settings {
            top_p: Some(0.5),
            system_prompt: "Be brief.".into(),
            ..Settings::default()
        };
        // What the browser submits: every text field, checkboxes only when checked.
        let f: HashMap<String, String> = settings_form(&s)
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(t) => Some((k.clone(), t.clone())),
                serde_json::Value::Bool(true) => Some((k.clone(), "on".into())),
                serde_json::Value::Bool(false) => None,
                other => Some((k.clone(), other.to_string())),
            })
            .collect();
        assert_eq!(settings_from_form(&Settings::default(), &f).unwrap(), s);
    }
}

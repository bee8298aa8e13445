//! Getting a model: the first-run onboarding (catalog + download with progress, pause, resume, cancel),
//! local import (validated by the engine's loader) and the model manager in the settings window.
//!
//! One download runs at a time, on its own thread; its progress reaches the page as `app-state`
//! `download-progress` triggers (through the [`Hub`]), and the onboarding fragment re-renders
//! from [`Models::view`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chat::ChatApp;
use download::{Catalog, Config, Control, Downloader, Outcome, Progress, State};
use serde_json::{json, Value};

use crate::hub::{Hub, StateEvent};
use crate::routes::RouteError;

/// Where downloads come from and go to.
pub struct Models {
    catalog: Catalog,
    config: Config,
    active: Arc<Mutex<Option<Active>>>,
}

/// The download in progress (or the last one, while it shows an error or a pause).
struct Active {
    id: String,
    name: String,
    control: Control,
    progress: Option<Progress>,
    error: Option<String>,
    running: bool,
}

impl Models {
    pub fn new(models_dir: PathBuf, endpoint: Option<String>, token: Option<String>) -> Self {
        let mut config = Config::new(models_dir).with_token(token);
        if let Some(e) = endpoint.filter(|e| !e.trim().is_empty()) {
            config = config.with_endpoint(e);
        }
        Self {
            catalog: Catalog::builtin(),
            config,
            active: Arc::new(Mutex::new(None)),
        }
    }

    pub fn models_dir(&self) -> &Path {
        &self.config.models_dir
    }

    /// Starts (or resumes) downloading catalog entry `id`; when it is installed, it becomes the model.
    pub fn download(&self, chat: &ChatApp, hub: &Hub, id: &str) -> Result<(), RouteError> {
        let entry = self.catalog.get(id)?.clone();
        let control = {
            let mut active = self.active.lock().unwrap();
            if let Some(a) = active.as_ref().filter(|a| a.running) {
                return Err(RouteError::AlreadyDownloading {
                    name: a.name.clone(),
                });
            }
            let control = Control::new();
            *active = Some(Active {
                id: entry.id.clone(),
                name: entry.name.clone(),
                control: control.clone(),
                progress: None,
                error: None,
                running: true,
            });
            control
        };
        let downloader = Downloader::new(self.config.clone());
        let active = self.active.clone();
        let (loader, news) = (chat.clone(), hub.clone());
        std::thread::spawn(move || {
            let source = entry.source();
            let result = downloader.download(&source, &control, |p| {
                if let Some(a) = active.lock().unwrap().as_mut() {
                    a.progress = Some(*p);
                }
                notify(&news);
            });
            let installed = {
                let mut guard = active.lock().unwrap();
                let a = guard.as_mut().expect("the active download");
                a.running = false;
                match result {
                    Ok(Outcome::Installed(i)) => Some(i.path),
                    Ok(Outcome::AlreadyInstalled(path)) => Some(path),
                    Ok(Outcome::Paused { .. }) => None,
                    Ok(Outcome::Cancelled) => {
                        *guard = None;
                        None
                    }
                    Err(e) => {
                        a.error = Some(e.to_string());
                        None
                    }
                }
            };
            if let Some(path) = installed {
                *active.lock().unwrap() = None;
                if let Err(e) = loader.load_model(path) {
                    news.state(StateEvent::toast(e.to_string(), true));
                }
            }
            notify(&news);
        });
        notify(hub);
        Ok(())
    }

    pub fn pause(&self) {
        if let Some(a) = self.active.lock().unwrap().as_ref() {
            a.control.pause();
        }
    }

    pub fn cancel(&self, hub: &Hub) {
        let mut active = self.active.lock().unwrap();
        match active.as_ref() {
            Some(a) if a.running => a.control.cancel(),
            Some(a) => {
                // Paused or failed: nothing runs, so drop the partial file here.
                let file = self.catalog.get(&a.id).map(|e| e.file.clone());
                if let Ok(file) = file {
                    let _ = download::discard_partial(&self.config.models_dir, &file);
                }
                *active = None;
            }
            None => {}
        }
        drop(active);
        notify(hub);
    }

    /// Validates `path` with the engine's checks (structure, metadata, tokenizer, template; not a
    /// second model in memory) and copies it into the models folder; it becomes the model.
    pub fn import(&self, chat: &ChatApp, path: &Path) -> Result<PathBuf, RouteError> {
        let imported = self.install(path)?;
        chat.load_model(imported.path.clone())?;
        Ok(imported.path)
    }

    /// The checks and the copy of [`Models::import`]. A refusal is
    /// [`download::Error::InvalidModel`] holding the engine's own error.
    fn install(&self, path: &Path) -> Result<download::Imported, download::Error> {
        download::import(&self.config, path, download::ImportMode::Copy, |p| {
            engine::validate(p, &engine::EngineOptions::default()).map(drop)
        })
    }

    /// The onboarding's data: the catalog (recommended first) and the download in progress.
    pub fn view(&self) -> Value {
        let mut entries: Vec<_> = self.catalog.entries().iter().collect();
        entries.sort_by_key(|e| !e.recommended);
        let catalog: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "id": e.id, "name": e.name, "size": download::human_bytes(e.size),
                    "quantization": e.quantization, "parameters": e.parameters,
                    "description": e.description, "recommended": e.recommended,
                })
            })
            .collect();
        let active = self.active.lock().unwrap();
        let download = active.as_ref().map(|a| {
            let p = a.progress;
            json!({
                "id": a.id,
                "name": a.name,
                "running": a.running,
                "error": a.error,
                "state": p.map(|p| state_name(p.state)).unwrap_or("connecting"),
                "percent": p.and_then(|p| p.percent).map(|v| format!("{v:.0}")),
                "done": p.map(|p| download::human_bytes(p.downloaded)),
                "total": p.and_then(|p| p.total).map(download::human_bytes),
                "speed": p.filter(|p| p.bytes_per_sec > 0.0)
                    .map(|p| format!("{}/s", download::human_bytes(p.bytes_per_sec as u64))),
                "eta": p.and_then(|p| p.eta_secs).map(format_eta),
            })
        });
        json!({ "catalog": catalog, "download": download, "models_dir": self.config.models_dir.display().to_string() })
    }

    /// Installed models for the model manager.
    pub fn installed(&self) -> Vec<Value> {
        match download::scan(&self.config.models_dir, &self.catalog) {
            Ok(inv) => inv
                .installed
                .iter()
                .map(|m| {
                    json!({
                        "name": m.name,
                        "path": m.path.display().to_string(),
                        "size": download::human_bytes(m.size),
                    })
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not list the models folder");
                Vec::new()
            }
        }
    }

    pub fn delete(&self, name: &str) -> Result<(), RouteError> {
        Ok(download::delete_model(&self.config.models_dir, name)?)
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Connecting => "connecting",
        State::Downloading => "downloading",
        State::Retrying => "retrying",
        State::Verifying => "verifying",
        State::Paused => "paused",
        State::Cancelled => "cancelled",
        State::Done => "done",
    }
}

fn format_eta(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs.div_ceil(60)),
        _ => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
    }
}

fn notify(hub: &Hub) {
    hub.state(StateEvent::trigger("download-progress"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_reads_well() {
        assert_eq!(format_eta(42), "42 s");
        assert_eq!(format_eta(61), "2 min");
        assert_eq!(format_eta(3 * 3600 + 5 * 60), "3 h 5 min");
    }

    #[test]
    fn an_import_the_engine_refuses_keeps_the_engine_error() {
        let dir = tempfile::tempdir().unwrap();
        let m = Models::new(dir.path().join("models"), None, None);
        let file = dir.path().join("notes.gguf");
        std::fs::write(&file, b"these are notes, not a model").unwrap();
        let err = m.install(&file).unwrap_err();
        // Was: the engine's error flattened to a string inside the download error.
        let download::Error::InvalidModel { ref error, .. } = err else {
            panic!("{err:?}")
        };
        let engine_error = error.downcast_ref::<engine::EngineError>();
        assert!(
            matches!(engine_error, Some(engine::EngineError::Gguf { .. })),
            "{err:?}"
        );
        // The page's text: the path, then the engine's reason (its own text, once).
        let reason = engine_error.unwrap().to_string();
        let text = RouteError::from(err).to_string();
        assert!(text.contains("is not a usable model: "), "{text}");
        assert!(
            text.ends_with(&reason) && text.matches(&reason).count() == 1,
            "{text}"
        );
        assert!(!dir.path().join("models").join("notes.gguf").exists());
    }

    #[test]
    fn onboarding_lists_the_recommended_model_first() {
        let m = Models::new(std::env::temp_dir(), None, None);
        let v = m.view();
        assert_eq!(v["catalog"][0]["recommended"], true);
        assert!(v["download"].is_null());
    }
}

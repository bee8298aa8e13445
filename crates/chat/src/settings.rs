//! [`Settings`]: the user's choices, one JSON file under the OS config dir, written atomically.
//!
//! Sampling values are `Option`s: `None` means "the model family's default"
//! ([`engine::SamplingParams::for_family`]). [`Settings::diff`] tells which changes apply live,
//! which need the model reloaded, and which need the app restarted.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use engine::{BackendKind, DeviceSpec, Placement};

use crate::error::{ChatError, Result};
use crate::followups::FollowUpSettings;
use crate::local_server::LocalServer;
use crate::protocol::FrameConfig;
use crate::remote::Endpoint;
use crate::sampling::{check_range, invalid, AnswerParams, Sampling};
use crate::tools::ToolSettings;

/// The settings file's name inside the config dir.
pub const SETTINGS_FILE: &str = "settings.json";
/// Memory for the caches of recent chats by default: a 3B model's F16 cache takes ~74 kB a
/// token, so ~3 chats of 4,000 tokens.
pub const DEFAULT_KEPT_CACHES_MB: usize = 1024;
/// The most that can be set: far beyond a machine that runs these models.
const MAX_KEPT_CACHES_MB: usize = 1 << 20;

/// Default global shortcut of the quick-chat window (Tauri accelerator syntax).
pub const DEFAULT_QUICK_CHAT_SHORTCUT: &str = "CommandOrControl+Shift+Space";

/// Everything the user can set. Missing fields in the file take their defaults; unknown ones
/// are ignored (a newer app's file still loads).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where the model runs: `cpu`, `cuda:N`, `metal` ([`crate::device::devices`] tells which
    /// this build and machine can use).
    #[serde(with = "crate::device::as_text")]
    pub device: DeviceSpec,
    /// Which implementation runs there: `native` (CPU only) or `candle`; `None` = the device's
    /// default (native on the CPU, Candle on a GPU). See [`Settings::placement`].
    #[serde(with = "crate::device::opt_text")]
    pub backend: Option<BackendKind>,
    /// Compute threads (default: the machine's available cores).
    pub threads: usize,
    /// KV cache size in tokens (capped by the model's own context length).
    pub context_len: usize,
    /// KV cache element type: F16 (half the memory, llama.cpp's default) or F32 (exact).
    pub kv_cache: engine::KvType,
    /// Host memory, in MB, for the KV caches of recent chats other than the one answering, so
    /// that returning to one prefills only its new message (0: none kept).
    pub kept_caches_mb: usize,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    /// Sampling seed; `None` draws a new one for every answer (so regenerate differs).
    pub seed: Option<u64>,
    /// Longest answer, in tokens.
    pub max_tokens: usize,
    /// Speculative decoding: draft tokens from the prompt and the answer so far and verify them
    /// several per pass (the same answers; faster when an answer repeats its prompt). The engine
    /// drafts only while drafting pays. Local models only.
    pub speculative: bool,
    /// Thinking mode of new chats.
    pub thinking_default: bool,
    /// Most thinking tokens per answer before the engine closes the thinking and the answer
    /// follows; `None`: no limit. A chat may set its own (`/think N`).
    pub max_thinking_tokens: Option<usize>,
    /// Sent as the system message of every conversation; empty = the template's default.
    pub system_prompt: String,
    /// Where answers come from: the local GGUF (`model_path`) or a remote `endpoint`.
    pub model_source: ModelSource,
    /// The GGUF model file; `None` = the first `.gguf` in the models dir, if any.
    pub model_path: Option<PathBuf>,
    /// An OpenAI-compatible server that answers instead, when `model_source` is `endpoint`.
    pub endpoint: Endpoint,
    /// Global shortcut that opens the quick-chat window.
    pub quick_chat_shortcut: String,
    /// Stream frames: at most one every this many milliseconds...
    pub frame_interval_ms: u64,
    /// ... or every this many tokens.
    pub frame_max_tokens: usize,
    /// The chat UI and the OpenAI-compatible API over HTTP (off by default).
    pub local_server: LocalServer,
    /// Tool calling: on or off, how many steps an answer may take, how long a call may run.
    pub tools: ToolSettings,
    /// Follow-up suggestions after each answer: on or off, and their token limit.
    pub follow_ups: FollowUpSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            device: DeviceSpec::Cpu,
            backend: None,
            threads: engine::threads::available(),
            context_len: engine::DEFAULT_CONTEXT_LEN,
            kv_cache: engine::KvType::default(),
            kept_caches_mb: DEFAULT_KEPT_CACHES_MB,
            temperature: None,
            top_p: None,
            top_k: None,
            min_p: None,
            repeat_penalty: None,
            seed: None,
            max_tokens: 2048,
            speculative: true,
            thinking_default: true,
            max_thinking_tokens: None,
            system_prompt: String::new(),
            model_source: ModelSource::Local,
            model_path: None,
            endpoint: Endpoint::default(),
            quick_chat_shortcut: DEFAULT_QUICK_CHAT_SHORTCUT.into(),
            frame_interval_ms: 30,
            frame_max_tokens: 16,
            local_server: LocalServer::default(),
            tools: ToolSettings::default(),
            follow_ups: FollowUpSettings::default(),
        }
    }
}

/// Where answers come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// A GGUF file run by this app's engine.
    #[default]
    Local,
    /// An OpenAI-compatible server ([`Settings::endpoint`]).
    Endpoint,
}

/// How a changed setting takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Apply {
    /// From the next answer on.
    Live,
    /// The model is reloaded (done automatically by `update_settings`).
    ReloadModel,
    /// Only after the app restarts (the compute thread pool is sized once per process).
    Restart,
}

/// One changed setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub field: &'static str,
    pub apply: Apply,
}

/// What changed between two settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SettingsDiff {
    pub changes: Vec<Change>,
}

impl SettingsDiff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn needs_reload(&self) -> bool {
        self.changes.iter().any(|c| c.apply == Apply::ReloadModel)
    }

    pub fn needs_restart(&self) -> bool {
        self.changes.iter().any(|c| c.apply == Apply::Restart)
    }
}

impl Settings {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(error) => {
                return Err(ChatError::Io {
                    action: "read",
                    path: path.to_owned(),
                    error,
                })
            }
        };
        let settings: Settings =
            serde_json::from_str(&text).map_err(|e| ChatError::SettingsFile {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        settings.validate().map_err(|e| ChatError::SettingsFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(settings)
    }

    /// Writes `path` atomically: a temporary file beside it, flushed to disk, renamed over it.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let io = |action, p: &Path| {
            let p = p.to_owned();
            move |error| ChatError::Io {
                action,
                path: p,
                error,
            }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io("create the folder", dir))?;
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_string_pretty(self).expect("settings serialize");
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(json.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(io("write", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io("replace", path))?;
        // The rename itself is durable only once the directory is flushed (POSIX).
        #[cfg(unix)]
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Rejects values that cannot work, naming the setting and the accepted range.
    pub fn validate(&self) -> Result<()> {
        self.placement()?;
        if self.threads == 0 || self.threads > 1024 {
            return Err(invalid(
                "threads",
                format!("must be between 1 and 1024, got {}", self.threads),
            ));
        }
        check_range("context_len", Some(self.context_len), 256, 1 << 20)?;
        check_range(
            "kept_caches_mb",
            Some(self.kept_caches_mb),
            0,
            MAX_KEPT_CACHES_MB,
        )?;
        self.sampling().validate()?;
        check_range("frame_interval_ms", Some(self.frame_interval_ms), 0, 1000)?;
        check_range("frame_max_tokens", Some(self.frame_max_tokens), 1, 1024)?;
        if self.quick_chat_shortcut.trim().is_empty() {
            return Err(invalid("quick_chat_shortcut", "cannot be empty"));
        }
        if self.system_prompt.len() > 64 * 1024 {
            return Err(invalid("system_prompt", "is longer than 64 KiB"));
        }
        if let Some(p) = &self.model_path {
            if p.as_os_str().is_empty() {
                return Err(invalid("model_path", "is empty (leave it unset instead)"));
            }
        }
        // Checked when it is on: a server switched off with half-typed values still loads.
        if self.local_server.enabled {
            self.local_server.validate()?;
        }
        if self.model_source == ModelSource::Endpoint {
            self.endpoint.validate()?;
        }
        self.tools.validate()?;
        self.follow_ups.validate()?;
        Ok(())
    }

    /// [`Settings::kept_caches_mb`] in bytes, for the engine.
    pub fn kept_caches_bytes(&self) -> usize {
        self.kept_caches_mb.saturating_mul(1_000_000)
    }

    /// Where the model loads: the device with the backend asked for (checked by
    /// [`Settings::validate`]: the native backend runs only on the CPU). Whether this build and
    /// machine can use the device is the load's to say, with the reason.
    pub fn placement(&self) -> Result<Placement> {
        Placement::new(self.device, self.backend)
            .map_err(|e| invalid("backend", crate::device::reason(e)))
    }

    /// How the chat's answers are sampled (checked by [`Settings::validate`]).
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            max_tokens: self.max_tokens,
            max_thinking_tokens: self.max_thinking_tokens,
            stop: Vec::new(),
            speculative: self.speculative,
        }
    }

    /// [`Settings::sampling`], validated, for the engine worker.
    pub fn answer_params(&self) -> Result<AnswerParams> {
        self.sampling().validate()
    }

    pub fn frame_config(&self) -> FrameConfig {
        FrameConfig {
            interval: std::time::Duration::from_millis(self.frame_interval_ms),
            max_tokens: self.frame_max_tokens,
        }
    }

    /// What changes from `self` to `new`, and how each change applies.
    pub fn diff(&self, new: &Settings) -> SettingsDiff {
        use Apply::*;
        let mut changes = Vec::new();
        let mut note = |changed: bool, field, apply| {
            if changed {
                changes.push(Change { field, apply });
            }
        };
        note(self.device != new.device, "device", ReloadModel);
        note(self.backend != new.backend, "backend", ReloadModel);
        note(self.threads != new.threads, "threads", Restart);
        note(
            self.context_len != new.context_len,
            "context_len",
            ReloadModel,
        );
        note(self.kv_cache != new.kv_cache, "kv_cache", ReloadModel);
        note(
            self.kept_caches_mb != new.kept_caches_mb,
            "kept_caches_mb",
            Live,
        );
        note(self.model_path != new.model_path, "model_path", ReloadModel);
        note(
            self.model_source != new.model_source,
            "model_source",
            ReloadModel,
        );
        note(self.endpoint != new.endpoint, "endpoint", ReloadModel);
        note(self.temperature != new.temperature, "temperature", Live);
        note(self.top_p != new.top_p, "top_p", Live);
        note(self.top_k != new.top_k, "top_k", Live);
        note(self.min_p != new.min_p, "min_p", Live);
        note(
            self.repeat_penalty != new.repeat_penalty,
            "repeat_penalty",
            Live,
        );
        note(self.seed != new.seed, "seed", Live);
        note(self.max_tokens != new.max_tokens, "max_tokens", Live);
        note(self.speculative != new.speculative, "speculative", Live);
        note(
            self.thinking_default != new.thinking_default,
            "thinking_default",
            Live,
        );
        note(
            self.max_thinking_tokens != new.max_thinking_tokens,
            "max_thinking_tokens",
            Live,
        );
        note(
            self.system_prompt != new.system_prompt,
            "system_prompt",
            Live,
        );
        note(
            self.quick_chat_shortcut != new.quick_chat_shortcut,
            "quick_chat_shortcut",
            Live,
        );
        note(
            self.frame_interval_ms != new.frame_interval_ms,
            "frame_interval_ms",
            Live,
        );
        note(
            self.frame_max_tokens != new.frame_max_tokens,
            "frame_max_tokens",
            Live,
        );
        note(self.local_server != new.local_server, "local_server", Live);
        note(self.tools != new.tools, "tools", Live);
        note(self.follow_ups != new.follow_ups, "follow_ups", Live);
        SettingsDiff { changes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(SETTINGS_FILE);
        assert_eq!(Settings::load(&path).unwrap(), Settings::default());
        assert!(Settings::default().speculative, "drafting is on by default");
        let s = Settings {
            temperature: Some(0.2),
            system_prompt: "Be brief.".into(),
            speculative: false,
            ..Settings::default()
        };
        s.save(&path).unwrap();
        assert_eq!(Settings::load(&path).unwrap(), s);
        assert_eq!(
            s.answer_params().unwrap().speculative(),
            engine::Speculative::Off
        );
        assert_eq!(
            Settings::default().answer_params().unwrap().speculative(),
            engine::Speculative::Adaptive
        );
        assert!(!path.with_extension("json.tmp").exists());
        assert_eq!(s.quick_chat_shortcut, "CommandOrControl+Shift+Space");
        assert_eq!(s.context_len, 8192);
    }

    #[test]
    fn partial_files_take_defaults_and_bad_files_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SETTINGS_FILE);
        std::fs::write(&path, r#"{"top_k": 5, "from_the_future": 1}"#).unwrap();
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.top_k, Some(5));
        assert_eq!(s.max_tokens, Settings::default().max_tokens);
        assert!(s.speculative, "a file from before the setting drafts");
        std::fs::write(&path, r#"{"speculative": "no"}"#).unwrap();
        let err = Settings::load(&path).unwrap_err().to_string();
        assert!(err.contains("expected a boolean"), "{err}");
        std::fs::write(&path, r#"{"top_p": 2.0}"#).unwrap();
        let err = Settings::load(&path).unwrap_err().to_string();
        assert!(err.contains("top_p") && err.contains("(0, 1]"), "{err}");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            Settings::load(&path),
            Err(ChatError::SettingsFile { .. })
        ));
    }

    #[test]
    fn validation_names_the_setting() {
        let bad = [
            Settings {
                threads: 0,
                ..Settings::default()
            },
            Settings {
                context_len: 10,
                ..Settings::default()
            },
            Settings {
                temperature: Some(-1.0),
                ..Settings::default()
            },
            Settings {
                temperature: Some(f32::NAN),
                ..Settings::default()
            },
            Settings {
                quick_chat_shortcut: " ".into(),
                ..Settings::default()
            },
            Settings {
                kept_caches_mb: MAX_KEPT_CACHES_MB + 1,
                ..Settings::default()
            },
        ];
        let fields = [
            "threads",
            "context_len",
            "temperature",
            "temperature",
            "quick_chat_shortcut",
            "kept_caches_mb",
        ];
        for (s, field) in bad.iter().zip(fields) {
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn the_device_and_backend_round_trip_and_a_bad_pair_names_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SETTINGS_FILE);
        let s = Settings {
            device: DeviceSpec::Cuda(1),
            backend: Some(BackendKind::Candle),
            ..Settings::default()
        };
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r#""device": "cuda:1""#) && text.contains(r#""backend": "candle""#),
            "{text}"
        );
        assert_eq!(Settings::load(&path).unwrap(), s);
        // The files of earlier versions said "cuda" for the first CUDA device.
        std::fs::write(&path, r#"{"device": "cuda"}"#).unwrap();
        let old = Settings::load(&path).unwrap();
        assert_eq!(old.device, DeviceSpec::Cuda(0));
        assert_eq!(old.placement().unwrap().backend(), BackendKind::Candle);
        std::fs::write(&path, r#"{"device": "gpu"}"#).unwrap();
        let err = Settings::load(&path).unwrap_err().to_string();
        assert!(err.contains("unknown device 'gpu'"), "{err}");
        let bad = Settings {
            device: DeviceSpec::Metal,
            backend: Some(BackendKind::Native),
            ..Settings::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("backend") && err.contains("runs only on the CPU"),
            "{err}"
        );
        let d = Settings::default().diff(&s);
        assert!(d.needs_reload() && d.changes.len() == 2, "{d:?}");
    }

    #[test]
    fn an_endpoint_is_checked_only_when_it_is_the_source() {
        let mut s = Settings {
            endpoint: Endpoint {
                base_url: "not a url".into(),
                ..Endpoint::default()
            },
            ..Settings::default()
        };
        s.validate().unwrap();
        s.model_source = ModelSource::Endpoint;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("endpoint.base_url"), "{err}");
        s.endpoint.base_url = "http://127.0.0.1:8080".into();
        s.validate().unwrap();
        let d = Settings::default().diff(&s);
        assert!(d.needs_reload() && d.changes.len() == 2, "{d:?}");
    }

    #[test]
    fn diff_separates_live_reload_and_restart_changes() {
        let old = Settings::default();
        let mut new = old.clone();
        assert!(old.diff(&new).is_empty());
        new.temperature = Some(0.1);
        new.system_prompt = "x".into();
        new.speculative = false;
        let d = old.diff(&new);
        assert!(!d.needs_reload() && !d.needs_restart() && d.changes.len() == 3);
        new.kv_cache = engine::KvType::F32;
        let kv = Change {
            field: "kv_cache",
            apply: Apply::ReloadModel,
        };
        assert!(old.diff(&new).changes.contains(&kv));
        new.context_len = 4096;
        assert!(old.diff(&new).needs_reload());
        new.threads = old.threads + 1;
        assert!(old.diff(&new).needs_restart());
    }

    #[test]
    fn overrides_replace_only_what_is_set() {
        let base = engine::SamplingParams::for_family(engine::ModelFamily::Llama);
        let s = Settings {
            top_k: Some(7),
            ..Settings::default()
        };
        let p = s
            .answer_params()
            .unwrap()
            .engine_sampling(base.clone(), || 1);
        assert_eq!(p.top_k, 7);
        assert_eq!(p.temperature, base.temperature);
    }
}

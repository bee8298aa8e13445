//! A real chat app whose model output is scripted at the engine's token boundary: SmolLM3's own
//! template, the worker, the core, the stream and the store are the real ones (no tool-capable
//! model fits the test machine). Shared by the unit tests of the tool loop, follow-ups and
//! branches.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::events::AppEvent;
use crate::{AppPaths, ChatApp, ModelState, Settings};

pub(crate) struct ScriptedApp {
    pub app: ChatApp,
    /// Every event the app emitted, in order.
    pub events: Arc<Mutex<Vec<AppEvent>>>,
    /// Every prompt the worker rendered, in order.
    pub prompts: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

pub(crate) fn smollm3_template() -> engine::template::ChatTemplate {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/smollm3-official.jinja");
    let source =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    engine::template::ChatTemplate::new(&source, "", "<|im_end|>").unwrap()
}

/// SmolLM2-135M-Instruct's template (from its GGUF): a plain ChatML one, with no tools.
pub(crate) fn smollm2_template() -> engine::template::ChatTemplate {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let gguf = engine::gguf::Gguf::parse(&bytes).unwrap();
    let source = gguf.opt_str("tokenizer.chat_template").unwrap().unwrap();
    engine::template::ChatTemplate::new(source, "<|im_start|>", "<|im_end|>").unwrap()
}

/// Splits `text` into pieces of at most `n` chars, as tokens would arrive.
pub(crate) fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

/// Opens an app in a fresh directory with `settings`; the model answers with `replies` in order
/// (each a list of token pieces). Returns once the scripted model is ready.
pub(crate) fn open(settings: Settings, replies: Vec<Vec<String>>) -> ScriptedApp {
    open_with(settings, replies, smollm3_template())
}

/// [`open`] with another model's template.
pub(crate) fn open_with(
    settings: Settings,
    replies: Vec<Vec<String>>,
    template: engine::template::ChatTemplate,
) -> ScriptedApp {
    let dir = tempfile::tempdir().unwrap();
    let paths = AppPaths {
        data_dir: dir.path().join("data"),
        config_dir: dir.path().join("config"),
        models_dir: dir.path().join("models"),
    };
    settings.save(&paths.settings_file()).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let app = ChatApp::open(paths, Arc::new(move |e| seen.lock().unwrap().push(e))).unwrap();
    let prompts = app.script_model(template, replies);
    wait(|| matches!(app.model_state(), ModelState::Remote { .. }).then_some(()));
    ScriptedApp {
        app,
        events,
        prompts,
        _dir: dir,
    }
}

/// Polls `check` every 5 ms until it finds something; fails the test after 20 s.
pub(crate) fn wait<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

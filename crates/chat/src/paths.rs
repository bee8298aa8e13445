//! [`AppPaths`]: where the app keeps its database, settings and models.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ChatError, Result};
use crate::settings::SETTINGS_FILE;

/// The app's folder name under the OS data and config dirs.
pub const APP_DIR: &str = "notso-smollm3";
/// The chat database's file name inside the data dir.
pub const DATABASE_FILE: &str = "chats.sqlite3";

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

pub(crate) fn how_to_get_a_model(models_dir: &Path) -> String {
    format!(
        "Download a GGUF model (SmolLM3-3B, or the small SmolLM2-135M-Instruct) into {} and \
         restart, or choose a model file in Settings. From a source checkout, \
         `bash models/fetch.sh` fetches the small one.",
        models_dir.display()
    )
}

/// The first `.gguf` file in `dir` (by name), if any.
pub(crate) fn find_model(dir: &Path) -> Option<PathBuf> {
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

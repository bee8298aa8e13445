//! [`AppPaths`]: where the app keeps its database, settings and models.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ChatError, Result};
use crate::settings::SETTINGS_FILE;

/// The app's folder name under the OS data and config dirs.
pub const APP_DIR: &str = "notso-smollm3";
/// The chat database's file name inside the data dir.
pub const DATABASE_FILE: &str = "chats.sqlite3";
/// Names the model being loaded while a load runs (in the data dir); left behind, it means the
/// app ended during that load, perhaps because of it.
pub const LOADING_MARKER_FILE: &str = "model-loading";
/// SQLite's companions of a database file (write-ahead log, shared memory), moved with it.
const DATABASE_COMPANIONS: [&str; 2] = ["-wal", "-shm"];

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

    pub fn loading_marker(&self) -> PathBuf {
        self.data_dir.join(LOADING_MARKER_FILE)
    }

    /// The model a load was running for when the app last ended, if it ended during one.
    pub fn interrupted_load(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(self.loading_marker()).ok()?;
        let path = text.trim_end_matches('\n');
        (!path.is_empty()).then(|| PathBuf::from(path))
    }

    /// Moves a database the app cannot use (damaged, unreadable, from a newer version) aside,
    /// with its `-wal` and `-shm` files, as `chats.sqlite3.broken-YYYYMMDD-HHMMSS`, so that the
    /// next open starts a fresh one and nothing is lost. Returns the new path of the database.
    pub fn move_database_aside(&self) -> Result<PathBuf> {
        let db = self.database();
        let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
        let mut kept = db.with_file_name(format!("{DATABASE_FILE}.broken-{stamp}"));
        let mut n = 1;
        while kept.exists() {
            n += 1;
            kept = db.with_file_name(format!("{DATABASE_FILE}.broken-{stamp}-{n}"));
        }
        let with_suffix = |p: &Path, suffix: &str| {
            let mut s = p.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        // Companions first: a database moved without its log would lose what the log holds.
        for suffix in DATABASE_COMPANIONS {
            let from = with_suffix(&db, suffix);
            if from.exists() {
                let to = with_suffix(&kept, suffix);
                std::fs::rename(&from, &to).map_err(|error| ChatError::Io {
                    action: "move aside",
                    path: from.clone(),
                    error,
                })?;
            }
        }
        std::fs::rename(&db, &kept).map_err(|error| ChatError::Io {
            action: "move aside",
            path: db.clone(),
            error,
        })?;
        Ok(kept)
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

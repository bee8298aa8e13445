//! What is in the models folder: installed models, resumable partial downloads, and deleting them.
//! Which model is active is the app's setting, not this crate's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::disk;
use crate::error::{Error, Result};
use crate::sidecar::Sidecar;

/// A `.gguf` file in the models folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledModel {
    /// File name, which is also how the model is addressed for deletion.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// The catalog entry with this file name, if any.
    pub catalog_id: Option<String>,
}

/// A download that stopped part-way and can be resumed.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialDownload {
    /// The name the model will have once installed.
    pub name: String,
    pub part_path: PathBuf,
    pub downloaded: u64,
    pub total: Option<u64>,
    pub url: String,
    /// The catalog entry with this file name, which the app can pass back to resume.
    pub catalog_id: Option<String>,
}

impl PartialDownload {
    pub fn percent(&self) -> Option<f64> {
        self.total
            .filter(|t| *t > 0)
            .map(|t| (self.downloaded as f64 / t as f64 * 100.0).min(100.0))
    }
}

/// The models folder at one moment, each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    pub installed: Vec<InstalledModel>,
    pub partial: Vec<PartialDownload>,
}

/// Lists `models_dir`. A folder that does not exist yet is an empty inventory.
pub fn scan(models_dir: &Path, catalog: &Catalog) -> Result<Inventory> {
    let mut inv = Inventory::default();
    let entries = match fs::read_dir(models_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(inv),
        Err(e) => return Err(Error::io("list", models_dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", models_dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let path = entry.path();
        if let Some(model) = name.strip_suffix(".part.json") {
            let (part_path, _) = disk::part_paths(&models_dir.join(model));
            let (Some(record), Ok(meta)) = (Sidecar::load(&path), fs::metadata(&part_path)) else {
                continue;
            };
            inv.partial.push(PartialDownload {
                name: model.to_string(),
                part_path,
                downloaded: meta.len(),
                total: record.total,
                url: record.url,
                catalog_id: catalog.by_file_name(model).map(|e| e.id.clone()),
            });
        } else if is_gguf(&name) {
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if meta.is_file() {
                inv.installed.push(InstalledModel {
                    catalog_id: catalog.by_file_name(&name).map(|e| e.id.clone()),
                    name,
                    path,
                    size: meta.len(),
                });
            }
        }
    }
    inv.installed.sort_by(|a, b| a.name.cmp(&b.name));
    inv.partial.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(inv)
}

/// Deletes the installed model `name` (a file name from [`scan`]).
pub fn delete_model(models_dir: &Path, name: &str) -> Result<()> {
    let path = models_dir.join(disk::local_name(name)?);
    if !is_gguf(name) || !path.is_file() {
        return Err(Error::ModelNotFound {
            name: name.to_string(),
            dir: models_dir.to_path_buf(),
        });
    }
    fs::remove_file(&path).map_err(|e| Error::io("delete", &path, e))?;
    tracing::info!(path = %path.display(), "model deleted");
    Ok(())
}

/// Deletes the partial download of `name` and its resume record.
pub fn discard_partial(models_dir: &Path, name: &str) -> Result<()> {
    let (part, sidecar) = disk::part_paths(&models_dir.join(disk::local_name(name)?));
    disk::remove_if_exists(&part)?;
    disk::remove_if_exists(&sidecar)
}

fn is_gguf(name: &str) -> bool {
    name.len() > ".gguf".len() && name.to_ascii_lowercase().ends_with(".gguf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_are_matched_case_insensitively() {
        assert!(is_gguf("a.gguf") && is_gguf("B.GGUF"));
        assert!(!is_gguf("a.gguf.part") && !is_gguf(".gguf") && !is_gguf("a.bin"));
    }
}

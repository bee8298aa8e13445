//! Adding a model file the user already has (file dialog, drag and drop). The caller supplies the
//! validator, normally `engine::validate` (the loader's checks without loading the weights, so a
//! model in use is not joined by a second one), so this crate needs neither the engine nor a runtime.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::disk;
use crate::error::{Error, Result};

/// Whether an accepted file is copied into the models folder or used where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Copy into [`Config::models_dir`] (through a `.part` file and an atomic rename).
    Copy,
    /// Leave the file where it is; the app records its path. Nothing is written.
    InPlace,
}

/// A model file accepted by [`import`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Where the model now is: in the models folder, or the original (absolute) path.
    pub path: PathBuf,
    pub size: u64,
    pub copied: bool,
}

/// Validates `path` with `validate` and, if it passes, makes it available as a model.
///
/// `validate` gets the original path and returns why the file is unusable; a rejection becomes
/// [`Error::InvalidModel`] holding that error, typed, and nothing is copied.
pub fn import<E: std::error::Error + Send + Sync + 'static>(
    config: &Config,
    path: &Path,
    mode: ImportMode,
    validate: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> Result<Imported> {
    let meta = fs::metadata(path).map_err(|e| Error::io("open", path, e))?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_path_buf(),
        });
    }
    validate(path).map_err(|e| Error::InvalidModel {
        path: path.to_path_buf(),
        error: Box::new(e),
    })?;
    let size = meta.len();
    let source = fs::canonicalize(path).map_err(|e| Error::io("open", path, e))?;
    if mode == ImportMode::InPlace {
        return Ok(Imported {
            path: source,
            size,
            copied: false,
        });
    }

    let dir = &config.models_dir;
    fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::InvalidFileName {
            name: path.display().to_string(),
        })?;
    let dest = dir.join(disk::local_name(name)?);
    if dest.exists() {
        // Importing a file that is already the installed one is a no-op, not a clash.
        if fs::canonicalize(&dest).ok().as_deref() == Some(source.as_path()) {
            return Ok(Imported {
                path: dest,
                size,
                copied: false,
            });
        }
        return Err(Error::AlreadyInstalled {
            name: name.to_string(),
            path: dest,
        });
    }
    disk::ensure_space(dir, size, config.free_space_reserve)?;

    // Not `<name>.part`: that name belongs to a download of the same file, which may be paused.
    let mut part = dest.as_os_str().to_owned();
    part.push(".import.part");
    let part = PathBuf::from(part);
    let result = copy_into(&source, &part, &dest, dir);
    if result.is_err() {
        // A failed copy is never resumed, so no partial file is left behind.
        let _ = disk::remove_if_exists(&part);
    }
    result?;
    tracing::info!(from = %source.display(), to = %dest.display(), size, "model imported");
    Ok(Imported {
        path: dest,
        size,
        copied: true,
    })
}

fn copy_into(source: &Path, part: &Path, dest: &Path, dir: &Path) -> Result<()> {
    let mut from = File::open(source).map_err(|e| Error::io("read", source, e))?;
    let mut to = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(part)
        .map_err(|e| disk::write_error(dir, part, e))?;
    io::copy(&mut from, &mut to).map_err(|e| disk::write_error(dir, part, e))?;
    disk::commit(&to, part, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Config, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config {
            free_space_reserve: 0,
            ..Config::new(tmp.path().join("models"))
        };
        let src = tmp.path().join("mine.gguf");
        fs::write(&src, b"GGUF fake model").unwrap();
        (tmp, config, src)
    }

    #[test]
    fn rejected_file_is_not_copied() {
        let (_tmp, config, src) = setup();
        let bad_magic = || io::Error::new(io::ErrorKind::InvalidData, "bad magic");
        let err = import(&config, &src, ImportMode::Copy, |_| Err(bad_magic())).unwrap_err();
        // The validator's error is kept as it is (was: only its text), for the edge to word.
        let Error::InvalidModel {
            ref path,
            ref error,
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*path, src);
        let error = error
            .downcast_ref::<io::Error>()
            .expect("typed, as returned");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .ends_with("is not a usable model: bad magic"),
            "{err}"
        );
        // Its text is in the message, so not the source too: a printed chain says it once.
        assert!(std::error::Error::source(&err).is_none(), "{err:?}");
        assert!(!config.models_dir.join("mine.gguf").exists());
    }

    #[test]
    fn a_folder_is_not_a_file_and_is_not_validated() {
        let (tmp, config, _) = setup();
        let err = import(
            &config,
            tmp.path(),
            ImportMode::Copy,
            |_| -> io::Result<()> { panic!("a folder reached the validator") },
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotAFile { .. }), "{err:?}");
        assert!(err.to_string().contains("it is not a file"), "{err}");
    }

    #[test]
    fn accepted_file_is_copied_and_the_validator_sees_the_original() {
        let (_tmp, config, src) = setup();
        let mut seen = None;
        let got = import(&config, &src, ImportMode::Copy, |p| {
            seen = Some(p.to_path_buf());
            Ok::<(), io::Error>(())
        })
        .unwrap();
        assert_eq!(seen.as_deref(), Some(src.as_path()));
        assert!(got.copied);
        assert_eq!(got.path, config.models_dir.join("mine.gguf"));
        assert_eq!(fs::read(&got.path).unwrap(), b"GGUF fake model");
        assert_eq!(got.size, 15);
        let leftovers: Vec<_> = fs::read_dir(&config.models_dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no .part file may remain");
        // Same name again, different file: a clash, not an overwrite.
        let other = src.with_file_name("other");
        fs::create_dir_all(&other).unwrap();
        let again = other.join("mine.gguf");
        fs::write(&again, b"different").unwrap();
        let err = import(&config, &again, ImportMode::Copy, |_| {
            Ok::<(), io::Error>(())
        })
        .unwrap_err();
        assert!(matches!(err, Error::AlreadyInstalled { .. }), "{err}");
        // The installed file itself: a no-op.
        let same = import(&config, &got.path, ImportMode::Copy, |_| {
            Ok::<(), io::Error>(())
        })
        .unwrap();
        assert!(!same.copied);
    }

    #[test]
    fn in_place_import_writes_nothing() {
        let (_tmp, config, src) = setup();
        let got = import(&config, &src, ImportMode::InPlace, |_| {
            Ok::<(), io::Error>(())
        })
        .unwrap();
        assert!(!got.copied);
        assert_eq!(got.path, fs::canonicalize(&src).unwrap());
        assert!(!config.models_dir.exists());
    }

    #[test]
    fn import_checks_free_space() {
        let (_tmp, mut config, src) = setup();
        config.free_space_reserve = u64::MAX / 2;
        let err = import(&config, &src, ImportMode::Copy, |_| Ok::<(), io::Error>(())).unwrap_err();
        assert!(matches!(err, Error::InsufficientSpace { .. }), "{err}");
    }
}

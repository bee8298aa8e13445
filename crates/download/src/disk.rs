//! Disk-side rules: how much space a download may use, how a finished file becomes an installed model,
//! and which write errors mean "the disk is full".

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Bytes free to this (unprivileged) user on the filesystem that holds `dir`.
pub fn available_space(dir: &Path) -> Result<u64> {
    fs4::available_space(dir).map_err(|e| Error::io("read the free space of", dir, e))
}

/// Fails with [`Error::InsufficientSpace`] unless `needed` bytes fit in `dir` with `reserve` to spare.
pub(crate) fn ensure_space(dir: &Path, needed: u64, reserve: u64) -> Result<()> {
    let available = available_space(dir)?;
    if available < needed.saturating_add(reserve) {
        return Err(Error::InsufficientSpace {
            dir: dir.to_path_buf(),
            needed,
            available,
            reserve,
        });
    }
    Ok(())
}

/// Errors that mean "no room left", as opposed to a broken disk or a permissions problem.
pub(crate) fn is_storage_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
    )
}

/// Maps a write error on a file in `dir`: disk-full errors get their own variant so the user is told to
/// free space rather than shown an errno.
pub(crate) fn write_error(dir: &Path, path: &Path, e: io::Error) -> Error {
    if is_storage_full(&e) {
        Error::DiskFull {
            dir: dir.to_path_buf(),
        }
    } else {
        Error::io("write", path, e)
    }
}

/// Makes a complete, verified `.part` file the installed model. The data is flushed to disk before the
/// rename and the directory entry after it, so a power cut leaves either no model or the whole model,
/// never a truncated file under the final name.
pub(crate) fn commit(file: &File, part: &Path, dest: &Path) -> Result<()> {
    file.sync_all().map_err(|e| Error::io("flush", part, e))?;
    fs::rename(part, dest).map_err(|e| Error::io("rename into place", dest, e))?;
    sync_dir(dest.parent().unwrap_or(Path::new(".")))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("flush the directory", dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    // Windows cannot open a directory as a file; NTFS journals the rename itself.
    Ok(())
}

/// Removes a file that may not exist.
pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("delete", path, e)),
    }
}

/// A plain file name (no folders, no `..`) for a file that will live directly in the models folder.
pub(crate) fn local_name(name: &str) -> Result<&str> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
        || name.starts_with('.');
    if bad {
        return Err(Error::InvalidFileName {
            name: name.to_string(),
        });
    }
    Ok(name)
}

/// The in-progress file for `dest` and its resume record.
pub(crate) fn part_paths(dest: &Path) -> (PathBuf, PathBuf) {
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let mut sidecar = part.clone();
    sidecar.push(".json");
    (part.into(), sidecar.into())
}

/// Sizes as people read them: 1.9 GB, 386.4 MB (decimal units, as the hub shows them).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_decimal_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_915_305_312), "1.9 GB");
        assert_eq!(human_bytes(386_404_992), "386.4 MB");
    }

    #[test]
    fn local_name_rejects_paths() {
        for bad in ["", "..", "../x.gguf", "a/b.gguf", "a\\b.gguf", ".hidden"] {
            assert!(local_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            local_name("SmolLM3-Q4_K_M.gguf").unwrap(),
            "SmolLM3-Q4_K_M.gguf"
        );
    }

    #[test]
    fn part_paths_append_suffixes() {
        let (part, sidecar) = part_paths(Path::new("/m/x.gguf"));
        assert_eq!(part, Path::new("/m/x.gguf.part"));
        assert_eq!(sidecar, Path::new("/m/x.gguf.part.json"));
    }

    #[test]
    fn storage_full_kinds_are_recognised() {
        assert!(is_storage_full(&io::Error::from(
            io::ErrorKind::StorageFull
        )));
        assert!(!is_storage_full(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
    }
}

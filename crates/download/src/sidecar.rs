//! The resume record kept beside a `.part` file (`<file>.part.json`): enough to know, after a restart,
//! whether the partial bytes belong to the download being asked for and how to ask the server for the rest.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sidecar {
    /// The `resolve` URL the bytes came from.
    pub url: String,
    /// The checksum the caller pinned, if any; a different pin means a different file.
    pub pinned_sha256: Option<String>,
    /// The checksum the hub announced in `X-Linked-ETag`.
    pub linked_sha256: Option<String>,
    /// Full size of the file, when the server said.
    pub total: Option<u64>,
    /// Validators for `If-Range`, so a file changed on the server is not stitched onto old bytes.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Sidecar {
    /// The record at `path`, or `None` when there is none or it cannot be read (then the partial file
    /// cannot be trusted and the download starts over).
    pub(crate) fn load(path: &Path) -> Option<Sidecar> {
        let text = fs::read_to_string(path).ok()?;
        match serde_json::from_str(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable resume record");
                None
            }
        }
    }

    /// Writes the record through a temporary file and a rename, so a crash never leaves half a record.
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a sidecar always serialises");
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        fs::write(&tmp, json).map_err(|e| crate::disk::write_error(dir_of(path), path, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("save", path, e))
    }
}

fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf.part.json");
        let s = Sidecar {
            url: "http://x/a/b/resolve/main/m.gguf".into(),
            pinned_sha256: None,
            linked_sha256: Some("ab".repeat(32)),
            total: Some(10),
            etag: Some("\"e\"".into()),
            last_modified: None,
        };
        s.save(&path).unwrap();
        assert_eq!(Sidecar::load(&path), Some(s.clone()));
        fs::write(&path, "{not json").unwrap();
        assert_eq!(Sidecar::load(&path), None);
        assert_eq!(Sidecar::load(&dir.path().join("missing")), None);
    }
}

//! What to download: a file in a hub repository at a revision, and what its bytes must hash to.

use crate::error::{Error, Result};

/// The Hugging Face hub; mirrors and tests pass their own endpoint in [`crate::Config`].
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// One file in a hub repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `owner/name`, e.g. `ggml-org/SmolLM3-3B-GGUF`.
    pub repo: String,
    /// Path of the file in the repository; the installed model keeps its last component as its name.
    pub file: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// Lower-case hex SHA-256 the file must have; when `None`, the hub's `X-Linked-ETag` is used.
    pub sha256: Option<String>,
    /// Expected size in bytes, for the free-space check before connecting (the server's figure wins).
    pub size: Option<u64>,
}

impl Source {
    /// `file` from `repo` on the `main` branch, with no pinned checksum.
    pub fn new(repo: impl Into<String>, file: impl Into<String>) -> Self {
        Self {
            repo: repo.into(),
            file: file.into(),
            revision: "main".into(),
            sha256: None,
            size: None,
        }
    }

    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// Pins the file's SHA-256 (64 hex digits, any case).
    pub fn with_sha256(mut self, sha256: &str) -> Result<Self> {
        self.sha256 = Some(parse_sha256(sha256)?);
        Ok(self)
    }

    /// The name the model gets in the models folder: the last component of `file`.
    pub fn local_name(&self) -> &str {
        self.file.rsplit('/').next().unwrap_or(&self.file)
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`, each part percent-encoded as the hub expects
    /// (a revision such as `refs/pr/1` is one path segment).
    pub fn url(&self, endpoint: &str) -> Result<String> {
        let endpoint = endpoint.trim_end_matches('/');
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(Error::InvalidUrl {
                url: endpoint.to_string(),
                reason: "the endpoint must start with https:// (or http:// for a local mirror)"
                    .into(),
            });
        }
        if self.repo.split('/').count() != 2 || self.repo.split('/').any(str::is_empty) {
            return Err(Error::InvalidUrl {
                url: self.repo.clone(),
                reason: "the repository must look like owner/name".into(),
            });
        }
        Ok(format!(
            "{endpoint}/{}/resolve/{}/{}",
            encode_path(&self.repo),
            encode_segment(&self.revision),
            encode_path(&self.file)
        ))
    }
}

/// Normalises a SHA-256 given by a person or a header: trims quotes and a weak-ETag prefix, lower-cases,
/// and insists on 64 hex digits.
pub fn parse_sha256(value: &str) -> Result<String> {
    let v = value
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase();
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v)
    } else {
        Err(Error::InvalidSha256 {
            value: value.to_string(),
        })
    }
}

fn encode_path(path: &str) -> String {
    path.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_follows_the_hub_resolve_layout() {
        let s = Source::new("ggml-org/SmolLM3-3B-GGUF", "SmolLM3-Q4_K_M.gguf");
        assert_eq!(
            s.url("https://huggingface.co/").unwrap(),
            "https://huggingface.co/ggml-org/SmolLM3-3B-GGUF/resolve/main/SmolLM3-Q4_K_M.gguf"
        );
    }

    #[test]
    fn url_encodes_revision_as_one_segment() {
        let s = Source::new("a/b", "dir/my file.gguf").with_revision("refs/pr/1");
        assert_eq!(
            s.url("http://127.0.0.1:9").unwrap(),
            "http://127.0.0.1:9/a/b/resolve/refs%2Fpr%2F1/dir/my%20file.gguf"
        );
        assert_eq!(s.local_name(), "my file.gguf");
    }

    #[test]
    fn url_rejects_bad_endpoint_and_repo() {
        let s = Source::new("a/b", "f.gguf");
        assert!(s.url("ftp://x").is_err());
        assert!(Source::new("nope", "f.gguf").url(DEFAULT_ENDPOINT).is_err());
    }

    #[test]
    fn sha256_accepts_quoted_etags() {
        let hex = "8334B850b7bd46238c16b0c550df2138f0889bf433809008cc17a8b05761863e";
        assert_eq!(
            parse_sha256(&format!("\"{hex}\"")).unwrap(),
            hex.to_ascii_lowercase()
        );
        assert_eq!(
            parse_sha256(&format!("W/\"{hex}\"")).unwrap(),
            hex.to_ascii_lowercase()
        );
        assert!(parse_sha256("abc").is_err());
        // A git blob id (40 hex digits) is not a SHA-256.
        assert!(parse_sha256("0123456789012345678901234567890123456789").is_err());
    }
}

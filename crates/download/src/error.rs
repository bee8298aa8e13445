//! The crate's one error type. Each message says what happened and what the user can do about it;
//! the app turns these into its own UI text only at the edge.

use std::io;
use std::path::PathBuf;

use crate::disk::human_bytes;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{url} needs you to sign in (HTTP 401): the repository is gated or private. Accept its licence \
         on the model's hub page and pass an access token (HF_TOKEN)"
    )]
    Unauthorized { url: String },

    #[error(
        "access to {url} was refused (HTTP 403): the repository is gated or your token lacks access. \
         Accept the licence on the model's hub page, or use a token that can read it (HF_TOKEN)"
    )]
    Forbidden { url: String },

    #[error(
        "not found (HTTP 404): {url}. Check the repository name, the file name and the revision"
    )]
    NotFound { url: String },

    #[error("the server answered HTTP {status} for {url}; it may be busy, try again later")]
    Server { status: u16, url: String },

    #[error("unexpected answer HTTP {status} from {url}")]
    UnexpectedStatus { status: u16, url: String },

    #[error(
        "cannot reach {host}: {reason}. Check the internet connection, the proxy settings \
         (HTTPS_PROXY / NO_PROXY) and the download endpoint"
    )]
    Offline { host: String, reason: String },

    #[error("timed out talking to {host}: the connection is slow or stalled. Try again to resume")]
    Timeout { host: String },

    #[error("the connection to {host} broke ({reason}). The partial download is kept: try again to resume")]
    Network { host: String, reason: String },

    #[error("secure connection to {host} failed: {reason}")]
    Tls { host: String, reason: String },

    #[error(
        "{from} redirected to {to}, which is not encrypted (https -> http); the download was refused. \
         Check the download endpoint or the proxy"
    )]
    InsecureRedirect { from: String, to: String },

    #[error("too many redirects starting from {url}")]
    TooManyRedirects { url: String },

    #[error(
        "the server sent a different amount of data than it announced for {url}. Try again; \
         if it keeps happening the mirror is serving a changing file"
    )]
    SizeMismatch { url: String },

    #[error(
        "the download of {file} is corrupt: its SHA-256 is {actual} but {expected} was expected. \
         The partial file was deleted; try again"
    )]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },

    #[error(
        "not enough free disk space in {}: {} needed plus a {} reserve, {} free. Free some space and try again",
        dir.display(), human_bytes(*needed), human_bytes(*reserve), human_bytes(*available)
    )]
    InsufficientSpace {
        dir: PathBuf,
        needed: u64,
        available: u64,
        reserve: u64,
    },

    #[error(
        "download paused: free disk space in {} fell to {}, under the {} reserve. The partial file is \
         kept: free some space and resume",
        dir.display(), human_bytes(*available), human_bytes(*reserve)
    )]
    LowDiskSpace {
        dir: PathBuf,
        available: u64,
        reserve: u64,
    },

    #[error(
        "the disk holding {} is full. Nothing was installed and the partial file is kept: free some \
         space and resume",
        dir.display()
    )]
    DiskFull { dir: PathBuf },

    #[error("{} is not a usable model: it is not a file", path.display())]
    NotAFile { path: PathBuf },

    /// The validator (the engine's checks) refused the file; `error` is its own error, typed
    /// (downcast it to the validator's error type), so the edge decides how to word it. Its text
    /// is part of this message, so it is not also this error's `source()`: a printed chain would
    /// say it twice.
    #[error("{} is not a usable model: {error}", path.display())]
    InvalidModel {
        path: PathBuf,
        error: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    #[error("a model named {name} is already installed at {}", path.display())]
    AlreadyInstalled { name: String, path: PathBuf },

    #[error("no installed model named {name} in {}", dir.display())]
    ModelNotFound { name: String, dir: PathBuf },

    #[error("{name:?} is not a usable model file name (it must be a plain name, without folders or '..')")]
    InvalidFileName { name: String },

    #[error("invalid download address {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("invalid SHA-256 {value:?}: expected 64 hexadecimal digits")]
    InvalidSha256 { value: String },

    #[error("model catalog: {0}")]
    Catalog(String),

    #[error("no model {id:?} in the catalog; known ids: {known}")]
    UnknownCatalogId { id: String, known: String },

    #[error("could not {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

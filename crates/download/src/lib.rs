//! Getting a model onto the machine: the catalog, resumable verified downloads, local import, and the
//! list of installed models. Blocking code with no async runtime and no dependency on the engine; the
//! app runs it on a worker thread.
//!
//! # Main types
//! - [`Catalog`] / [`CatalogEntry`]: the downloadable models, kept as data in `catalog.toml`.
//! - [`Source`]: one file in a hub repository at a revision, with an optional pinned SHA-256.
//! - [`Config`]: models folder, endpoint (`HF_ENDPOINT`), token (`HF_TOKEN`), free-space reserve,
//!   retries, timeouts; filled in by the caller, which reads the environment and settings.
//! - [`Downloader`]: runs downloads; [`Control`] pauses or cancels one from another thread;
//!   [`Progress`] reports arrive through a callback; [`Outcome`] says how it ended.
//! - [`import`]: adds a file the user already has, after the caller's validator accepts it.
//! - [`scan`] / [`delete_model`] / [`discard_partial`]: the models folder as the model manager shows it.
//! - [`Error`]: every failure, worded for the user.
//!
//! # Flow of a download
//! [`CatalogEntry::source`] (or [`Source::new`]) -> [`Downloader::download`]: free-space check ->
//! GET `{endpoint}/{repo}/resolve/{revision}/{file}`, redirects followed by hand (the first answer's
//! `X-Linked-ETag`/`X-Linked-Size` give the SHA-256 and size; the token stays on the endpoint's host) ->
//! bytes appended to `<file>.part`, resume record in `<file>.part.json` -> on a dropped connection or a
//! 5xx, back off and resume with `Range` (restarting cleanly if the server ignores it) -> SHA-256 check
//! -> fsync, rename to `<file>`, fsync the folder -> [`Outcome::Installed`].

mod catalog;
mod config;
mod control;
mod disk;
mod downloader;
mod error;
mod http;
mod import;
mod manager;
mod part;
mod progress;
mod sidecar;
mod source;

pub use catalog::{Catalog, CatalogEntry};
pub use config::Config;
pub use control::Control;
pub use disk::{available_space, human_bytes};
pub use downloader::{install_path, Downloader, Installed, Outcome, Verification};
pub use error::{Error, Result};
pub use import::{import, ImportMode, Imported};
pub use manager::{
    delete_model, discard_partial, scan, InstalledModel, Inventory, PartialDownload,
};
pub use progress::{Progress, State};
pub use source::{parse_sha256, Source, DEFAULT_ENDPOINT};

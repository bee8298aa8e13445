//! The download itself: `.part` file plus resume record, Range requests after any interruption, retries
//! with backoff, free-space watch, SHA-256 check, atomic install.

use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;

use crate::config::Config;
use crate::control::{Control, Request};
use crate::disk;
use crate::error::{Error, Result};
use crate::http::{self, Client, Opened, Resume};
use crate::part::PartFile;
use crate::progress::{Meter, Progress, State};
use crate::sidecar::Sidecar;
use crate::source::Source;

/// Bytes read from the network per write; also how often pause/cancel are looked at.
const CHUNK: usize = 64 * 1024;
/// How often free space is measured while writing.
const SPACE_CHECK_EVERY: u64 = 256 * 1024;

/// Downloads models into [`Config::models_dir`]. Holds a connection pool; one per app is enough, and
/// it may run downloads of different files on several threads at once.
pub struct Downloader {
    config: Config,
    client: Client,
}

/// How a finished download's bytes were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Against the SHA-256 the caller (or the catalog) pinned.
    Pinned,
    /// Against the SHA-256 the hub announced in `X-Linked-ETag`.
    Hub,
    /// No checksum was known; [`Installed::sha256`] is what the file hashed to.
    Unverified,
}

/// A model that was downloaded, checked and moved into place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub path: PathBuf,
    pub size: u64,
    /// Lower-case hex SHA-256 of the file, as computed while downloading.
    pub sha256: String,
    pub verification: Verification,
}

/// How a call to [`Downloader::download`] ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Installed(Installed),
    /// A file of that name is already in the models folder; nothing was fetched.
    AlreadyInstalled(PathBuf),
    /// Paused on request; calling `download` again with the same source resumes.
    Paused {
        downloaded: u64,
        total: Option<u64>,
    },
    /// Cancelled on request; the partial file is gone.
    Cancelled,
}

impl Downloader {
    pub fn new(config: Config) -> Self {
        let client = Client::new(&config);
        Self { config, client }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Fetches `source` into the models folder, resuming a partial download of the same URL and
    /// checksum if one is there. Blocks until done, paused, cancelled or failed; run it on a worker
    /// thread and steer it with `control`. `on_progress` is called at most every
    /// [`Config::progress_interval`] while bytes flow, on every state change, and once at the end.
    ///
    /// On failure the `.part` file is kept for a later resume, except after a checksum mismatch (the
    /// bytes are wrong, so they are deleted). Nothing ever appears under the final name unverified
    /// against a known checksum, when one is known.
    pub fn download(
        &self,
        source: &Source,
        control: &Control,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Outcome> {
        let dir = self.config.models_dir.clone();
        let dest = dir.join(disk::local_name(source.local_name())?);
        let url = source.url(&self.config.endpoint)?;
        let (part, sidecar_path) = disk::part_paths(&dest);
        let mut job = Job {
            config: &self.config,
            client: &self.client,
            control,
            url,
            part: PartFile::new(part, dir.clone()),
            dir,
            dest,
            sidecar_path,
            sidecar: None,
            meter: Meter::new(&mut on_progress, self.config.progress_interval),
        };
        job.run(source)
    }
}

/// What one HTTP attempt came to, short of an error.
enum Attempt {
    Complete,
    Paused,
    Cancelled,
    /// The partial bytes cannot be continued (the file changed, or the server sent an odd range):
    /// they were discarded and the next attempt starts from zero.
    Restart,
}

struct Job<'a> {
    config: &'a Config,
    client: &'a Client,
    control: &'a Control,
    url: String,
    dir: PathBuf,
    dest: PathBuf,
    part: PartFile,
    sidecar_path: PathBuf,
    sidecar: Option<Sidecar>,
    meter: Meter<'a>,
}

impl Job<'_> {
    fn run(&mut self, source: &Source) -> Result<Outcome> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io("create", &self.dir, e))?;
        if self.dest.exists() {
            return Ok(Outcome::AlreadyInstalled(self.dest.clone()));
        }
        self.adopt_partial(source)?;
        let known_total = self.sidecar.as_ref().and_then(|s| s.total).or(source.size);
        let offset = self.part.len()?;
        self.meter.downloaded = offset;
        self.meter.total = known_total;
        if let Some(total) = known_total {
            disk::ensure_space(
                &self.dir,
                total.saturating_sub(offset),
                self.config.free_space_reserve,
            )?;
        }

        let mut failures = 0u32;
        loop {
            match self.control.request() {
                Request::Pause => return self.paused(),
                Request::Cancel => return self.cancelled(),
                Request::Continue => {}
            }
            let before = self.meter.downloaded;
            let result = if self.is_complete() {
                Ok(Attempt::Complete)
            } else {
                self.meter.state(State::Connecting);
                self.attempt(source)
            };
            let progressed = self.meter.downloaded > before;
            match result {
                Ok(Attempt::Complete) => break,
                Ok(Attempt::Paused) => return self.paused(),
                Ok(Attempt::Cancelled) => return self.cancelled(),
                Ok(Attempt::Restart) => {
                    failures += 1;
                    if failures > self.config.max_retries {
                        return Err(Error::SizeMismatch {
                            url: self.url.clone(),
                        });
                    }
                }
                Err(e) if http::is_transient(&e) => {
                    // A connection that delivered data was worth it: only consecutive fruitless
                    // attempts count against the limit.
                    failures = if progressed { 1 } else { failures + 1 };
                    if failures > self.config.max_retries {
                        return Err(e);
                    }
                    let delay = self.config.retry_delay(failures);
                    tracing::warn!(error = %e, ?delay, attempt = failures, "download interrupted, retrying");
                    self.meter.state(State::Retrying);
                    self.meter.reset_speed();
                    match self.control.sleep(delay) {
                        Request::Pause => return self.paused(),
                        Request::Cancel => return self.cancelled(),
                        Request::Continue => {}
                    }
                }
                Err(e) => {
                    self.part.sync();
                    return Err(e);
                }
            }
        }
        self.finish(source)
    }

    /// Keeps a `.part` file only if its record says it is this URL with this pin; anything else
    /// (a different revision, an old layout, a missing record) is discarded.
    fn adopt_partial(&mut self, source: &Source) -> Result<()> {
        let record = Sidecar::load(&self.sidecar_path)
            .filter(|s| s.url == self.url && s.pinned_sha256 == source.sha256);
        if record.is_some() && self.part.exists() {
            tracing::info!(part = %self.part.path().display(), "resuming a partial download");
            self.sidecar = record;
        } else {
            self.part.remove()?;
            disk::remove_if_exists(&self.sidecar_path)?;
        }
        Ok(())
    }

    fn attempt(&mut self, source: &Source) -> Result<Attempt> {
        let offset = self.part.len()?;
        let validator = self.sidecar.as_ref().and_then(|s| {
            // If-Range needs a strong validator; a weak ETag would make the server send everything.
            s.etag
                .clone()
                .filter(|e| !e.starts_with("W/"))
                .or_else(|| s.last_modified.clone())
        });
        let resume = (offset > 0).then_some(Resume {
            offset,
            validator: validator.as_deref(),
        });
        let opened = self.client.open(&self.url, resume.as_ref())?;

        let start = match opened.status {
            206 => opened.content_range.map(|(start, _)| start),
            200 => Some(0),
            _ => None, // 416: the range is past the end of the file the server has now
        };
        if start != Some(offset) {
            if start == Some(0) {
                tracing::info!(
                    offset,
                    "the server sent the whole file instead of the rest; starting over"
                );
            } else {
                tracing::warn!(
                    status = opened.status,
                    offset,
                    "the server cannot continue this file; starting over"
                );
            }
            self.restart()?;
            if start != Some(0) {
                return Ok(Attempt::Restart);
            }
        }
        let offset = self.part.len()?;

        let total = announced_total(&opened, offset);
        if let Some(old) = &self.sidecar {
            let changed = (old.total.is_some() && total.is_some() && old.total != total)
                || (old.linked_sha256.is_some()
                    && opened.linked_sha256.is_some()
                    && old.linked_sha256 != opened.linked_sha256);
            if changed && offset > 0 {
                tracing::warn!(
                    "the file changed on the server since the partial download; starting over"
                );
                self.restart()?;
                return Ok(Attempt::Restart);
            }
        }
        if let Some(total) = total {
            disk::ensure_space(
                &self.dir,
                total.saturating_sub(offset),
                self.config.free_space_reserve,
            )?;
        }
        let record = Sidecar {
            url: self.url.clone(),
            pinned_sha256: source.sha256.clone(),
            linked_sha256: opened.linked_sha256.clone(),
            total,
            etag: opened.etag.clone(),
            last_modified: opened.last_modified.clone(),
        };
        if self.sidecar.as_ref() != Some(&record) {
            record.save(&self.sidecar_path)?;
            self.sidecar = Some(record);
        }
        self.meter.total = total;
        if self.part.needs_priming(offset) {
            self.meter.state(State::Verifying);
            self.part.prime_hash(offset)?;
        }
        self.stream(opened, total)
    }

    fn stream(&mut self, opened: Opened, total: Option<u64>) -> Result<Attempt> {
        let mut reader = opened.body.into_reader();
        let mut buf = vec![0u8; CHUNK];
        let mut downloaded = self.part.len()?;
        let mut unchecked = 0u64;
        self.meter.downloaded = downloaded;
        self.meter.state(State::Downloading);
        self.meter.advance(downloaded);
        loop {
            match self.control.request() {
                Request::Pause => return Ok(Attempt::Paused),
                Request::Cancel => return Ok(Attempt::Cancelled),
                Request::Continue => {}
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(http::read_error(&self.url, e)),
            };
            if total.is_some_and(|t| downloaded + n as u64 > t) {
                tracing::warn!("the server sent more than it announced; starting over");
                self.restart()?;
                return Ok(Attempt::Restart);
            }
            self.part.append(&buf[..n])?;
            downloaded += n as u64;
            unchecked += n as u64;
            if unchecked >= SPACE_CHECK_EVERY {
                unchecked = 0;
                self.watch_space()?;
            }
            self.meter.advance(downloaded);
        }
        match total {
            Some(t) if downloaded < t => Err(Error::Network {
                host: http::host(&self.url).to_string(),
                reason: format!("the server closed the connection after {downloaded} of {t} bytes"),
            }),
            _ => Ok(Attempt::Complete),
        }
    }

    /// Pauses (as an error the UI shows) when other writers have eaten into the reserve.
    fn watch_space(&mut self) -> Result<()> {
        let available = disk::available_space(&self.dir)?;
        if available < self.config.free_space_reserve {
            self.part.sync();
            self.meter.emit(State::Paused);
            return Err(Error::LowDiskSpace {
                dir: self.dir.clone(),
                available,
                reserve: self.config.free_space_reserve,
            });
        }
        Ok(())
    }

    fn finish(&mut self, source: &Source) -> Result<Outcome> {
        self.meter.state(State::Verifying);
        let size = self.part.len()?;
        let actual = self.part.sha256(size)?;
        let record = self.sidecar.clone();
        let linked = record.as_ref().and_then(|s| s.linked_sha256.clone());
        let expected = source.sha256.clone().or(linked.clone());
        if let (Some(pin), Some(hub)) = (&source.sha256, &linked) {
            if pin != hub {
                tracing::warn!(pinned = %pin, hub = %hub, "the hub announces another checksum than the pinned one; checking the pinned one");
            }
        }
        if let Some(expected) = &expected {
            if *expected != actual {
                self.part.remove()?;
                disk::remove_if_exists(&self.sidecar_path)?;
                return Err(Error::ChecksumMismatch {
                    file: source.local_name().to_string(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let verification = match (&source.sha256, &linked) {
            (Some(_), _) => Verification::Pinned,
            (None, Some(_)) => Verification::Hub,
            (None, None) => {
                // Info, not warn: the caller sees `Verification::Unverified` and words it for its user.
                tracing::info!(sha256 = %actual, file = %self.dest.display(), "no checksum was available; the file is installed unverified");
                Verification::Unverified
            }
        };
        self.part.commit(&self.dest)?;
        disk::remove_if_exists(&self.sidecar_path)?;
        self.meter.emit(State::Done);
        tracing::info!(path = %self.dest.display(), size, "model installed");
        Ok(Outcome::Installed(Installed {
            path: self.dest.clone(),
            size,
            sha256: actual,
            verification,
        }))
    }

    fn paused(&mut self) -> Result<Outcome> {
        self.part.sync();
        self.meter.emit(State::Paused);
        Ok(Outcome::Paused {
            downloaded: self.meter.downloaded,
            total: self.meter.total,
        })
    }

    fn cancelled(&mut self) -> Result<Outcome> {
        self.part.remove()?;
        disk::remove_if_exists(&self.sidecar_path)?;
        self.meter.emit(State::Cancelled);
        Ok(Outcome::Cancelled)
    }

    /// True when the `.part` already holds every byte (a crash between download and rename).
    fn is_complete(&self) -> bool {
        let total = self.sidecar.as_ref().and_then(|s| s.total);
        total.is_some_and(|t| t > 0 && self.part.len().ok() == Some(t))
    }

    /// Empties the `.part` file and the running hash.
    fn restart(&mut self) -> Result<()> {
        self.part.truncate()?;
        self.meter.downloaded = 0;
        self.meter.reset_speed();
        Ok(())
    }
}

/// Full file size from the answer: the hub's `X-Linked-Size`, else `Content-Range`, else the length of
/// a whole-file body.
fn announced_total(opened: &Opened, offset: u64) -> Option<u64> {
    opened
        .linked_size
        .or(opened.content_range.and_then(|(_, total)| total))
        .or_else(|| match opened.status {
            200 => opened.content_length,
            _ => opened.content_length.map(|n| n + offset),
        })
}

/// Where a download of `source` would be installed, for callers that want to show it beforehand.
pub fn install_path(config: &Config, source: &Source) -> Result<PathBuf> {
    Ok(config
        .models_dir
        .join(disk::local_name(source.local_name())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn downloader_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Downloader>();
        assert_send_sync::<Control>();
    }

    #[test]
    fn install_path_rejects_escaping_names() {
        let c = Config::new("/m");
        assert_eq!(
            install_path(&c, &Source::new("a/b", "sub/x.gguf")).unwrap(),
            Path::new("/m/x.gguf")
        );
        assert!(install_path(&c, &Source::new("a/b", "..")).is_err());
    }
}

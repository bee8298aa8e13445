//! Everything a [`crate::Downloader`] is told by its caller. The caller reads the environment and
//! settings (`HF_ENDPOINT`, `HF_TOKEN`, the models folder) at its edge and passes them in here.

use std::path::PathBuf;
use std::time::Duration;

use crate::source::DEFAULT_ENDPOINT;

#[derive(Clone)]
pub struct Config {
    /// Where installed models and partial downloads live.
    pub models_dir: PathBuf,
    /// Hub or mirror base URL, e.g. `https://huggingface.co`.
    pub endpoint: String,
    /// Bearer token for gated or private repositories; sent only to the endpoint's own host.
    pub token: Option<String>,
    /// Free space to leave on the disk. The download does not start unless the file fits with this to
    /// spare, and pauses with [`crate::Error::LowDiskSpace`] if other programs eat into it meanwhile.
    pub free_space_reserve: u64,
    /// Further attempts after a dropped connection, a timeout or a 5xx answer, each resuming where the
    /// last stopped. The count restarts whenever an attempt makes progress.
    pub max_retries: u32,
    /// First wait before retrying; it doubles with each failed attempt (capped at `max_retry_delay`).
    pub retry_base_delay: Duration,
    pub max_retry_delay: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for any single read: a stalled connection fails after this and is retried.
    pub read_timeout: Duration,
    /// Shortest gap between two `Downloading` progress reports.
    pub progress_interval: Duration,
}

impl Config {
    /// Defaults for a desktop app: the public hub, 3 retries from 1 s, a 1 GB free-space reserve.
    pub fn new(models_dir: impl Into<PathBuf>) -> Self {
        Self {
            models_dir: models_dir.into(),
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            free_space_reserve: 1_000_000_000,
            max_retries: 3,
            retry_base_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(30),
            progress_interval: Duration::from_millis(100),
        }
    }

    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// An empty token counts as none, so an unset-but-exported `HF_TOKEN` does no harm.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.trim().is_empty());
        self
    }

    /// The wait before retry number `attempt` (1-based).
    pub(crate) fn retry_delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.retry_base_delay
            .saturating_mul(factor)
            .min(self.max_retry_delay)
    }
}

impl std::fmt::Debug for Config {
    // Hand-written so the token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("models_dir", &self.models_dir)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("free_space_reserve", &self.free_space_reserve)
            .field("max_retries", &self.max_retries)
            .field("retry_base_delay", &self.retry_base_delay)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let mut c = Config::new("m");
        c.retry_base_delay = Duration::from_millis(100);
        c.max_retry_delay = Duration::from_millis(350);
        let delays: Vec<_> = (1..=4).map(|a| c.retry_delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }

    #[test]
    fn debug_hides_the_token_and_blank_tokens_are_dropped() {
        let c = Config::new("m").with_token(Some("hf_secret".into()));
        assert!(!format!("{c:?}").contains("hf_secret"));
        assert!(Config::new("m")
            .with_token(Some("  ".into()))
            .token
            .is_none());
    }
}

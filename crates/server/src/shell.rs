//! [`Shell`]: what only a desktop shell can do for a page (windows, native dialogs). The desktop
//! app's `app://` transport attaches its shell to each request ([`WithShell`]); a request over HTTP
//! has none, and the routes answer as a web page would (navigate instead of opening a window, the
//! file's path typed instead of picked).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chat::ChatId;

pub trait Shell: Send + Sync + 'static {
    /// Opens (or focuses) the settings window.
    fn open_settings(&self);
    /// Shows chat `chat_id` in the main window (from quick chat).
    fn show_chat(&self, chat_id: ChatId);
    /// Asks for a GGUF file with a native dialog; blocks until the user answers (`None`: cancelled).
    fn pick_model_file(&self) -> Option<PathBuf>;
    /// Offers to save an exported chat with a native dialog (in the background).
    fn offer_to_save(&self, file_name: String, markdown: String);
    /// Opens a web or mail link from an answer in the system's browser or mail program, never in
    /// the app. `url` passed [`may_leave_the_app`].
    fn open_url(&self, url: &str) -> Result<(), String>;
}

/// Longest link a page may ask to open.
const MAX_LINK_BYTES: usize = 8 * 1024;

/// Whether a link may be opened outside the app (the system's browser or mail program): the web
/// or mail, nothing that runs a program or reads a file (`file:`, `javascript:`, a custom scheme
/// some program registered), no whitespace or control characters, at most 8 KiB. The one rule for
/// a link clicked in an answer (`/open-link`) and for a window's navigation (the desktop shell's
/// guard).
pub fn may_leave_the_app(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    ["http://", "https://", "mailto:"]
        .iter()
        .any(|s| lower.starts_with(s) && lower.len() > s.len())
        && url.len() <= MAX_LINK_BYTES
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The shell a request came through, as a request extension; absent over HTTP.
#[derive(Clone)]
pub struct WithShell(pub Arc<dyn Shell>);

/// Extracts the request's shell, if any.
pub struct MaybeShell(pub Option<Arc<dyn Shell>>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeShell {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(MaybeShell(
            parts.extensions.get::<WithShell>().map(|s| s.0.clone()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::may_leave_the_app;

    #[test]
    fn only_web_and_mail_links_of_sane_length_may_leave_the_app() {
        for ok in [
            "https://example.com/a?b=1",
            "HTTP://example.com",
            "mailto:a@b.c",
        ] {
            assert!(may_leave_the_app(ok), "{ok}");
        }
        let long = format!("https://example.com/{}", "a".repeat(8 * 1024));
        for no in [
            "https://",
            "mailto:",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "zoommtg://join",
            "https://example.com/a b",
            "https://example.com/\u{7}",
            long.as_str(),
        ] {
            assert!(!may_leave_the_app(no), "{no}");
        }
    }
}

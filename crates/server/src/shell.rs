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
    /// the app. `url` was checked by [`crate::routes`] (`http`, `https` or `mailto` only).
    fn open_url(&self, url: &str) -> Result<(), String>;
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

//! The pages and htmx fragments of the chat UI (the table in `doc/app.md`), their streams ([`crate::sse`])
//! and the embedded static files. Handlers call the chat core on a blocking thread (it writes SQLite
//! and may wait on a native dialog) and render fragments; errors become a visible toast, never a crash.

mod chats;
mod model;
mod settings;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use crate::reply::{asset, Reply};
use crate::{sse, Server};

/// Why a route could not answer; shown to the user as a toast.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    Chat(#[from] chat::ChatError),
    /// Getting a model failed: the downloader's own error, so the page says what happened (a
    /// network failure, a full disk) and not that the request was bad.
    #[error("{0}")]
    Download(#[from] download::Error),
    #[error("{name} is already downloading: pause or cancel it first")]
    AlreadyDownloading { name: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request could not be handled: {0}")]
    Internal(String),
}

pub type Result<T, E = RouteError> = std::result::Result<T, E>;

impl RouteError {
    fn status(&self) -> StatusCode {
        match self {
            RouteError::Chat(
                chat::ChatError::NoSuchChat(_) | chat::ChatError::NoSuchMessage(_),
            )
            | RouteError::Download(download::Error::UnknownCatalogId { .. })
            | RouteError::NotFound(_) => StatusCode::NOT_FOUND,
            RouteError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        }
    }

    /// The toast, retargeted to the page's toast box. htmx swaps only 2xx answers, so refusals
    /// (busy, invalid, no model) answer 200 with the toast; a missing chat or route is a 404.
    fn reply(&self, server: &Server) -> Reply {
        Reply::html(server.views().render(
            "toast.html",
            json!({"kind": "error", "text": self.to_string()}),
        ))
        .status(self.status())
        .trigger("request-failed")
        .retarget_toast()
    }
}

impl IntoResponse for RouteError {
    /// Without the templates at hand (an extractor refused the request): the message as text.
    fn into_response(self) -> Response {
        let status = match self.status() {
            StatusCode::OK => StatusCode::BAD_REQUEST,
            s => s,
        };
        (status, self.to_string()).into_response()
    }
}

/// Runs a handler's work on a blocking thread; its error becomes a toast.
pub(crate) async fn run<F>(server: Server, work: F) -> Response
where
    F: FnOnce(&Server) -> Result<Reply> + Send + 'static,
{
    let s = server.clone();
    let outcome = tokio::task::spawn_blocking(move || work(&s))
        .await
        .unwrap_or_else(|e| Err(RouteError::Internal(e.to_string())));
    match outcome {
        Ok(reply) => reply.into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "request failed");
            e.reply(&server).into_response()
        }
    }
}

/// What every page needs: the model's state for the status line and the banner (with onboarding).
pub(crate) fn base_ctx(s: &Server) -> serde_json::Value {
    json!({
        "model": crate::pages::ModelView::new(s.chat().model_state()),
        "downloads": s.models().view(),
    })
}

pub(crate) fn with(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// A submitted form's fields.
pub(crate) type Fields = axum::Form<std::collections::HashMap<String, String>>;

/// A form field, empty when absent.
pub(crate) fn field<'a>(
    form: &'a std::collections::HashMap<String, String>,
    name: &str,
) -> &'a str {
    form.get(name).map(String::as_str).unwrap_or("")
}

async fn static_file(req: Request) -> Response {
    asset(req.uri().path())
        .unwrap_or_else(|| RouteError::NotFound(req.uri().path().to_string()).into_response())
}

async fn not_found(
    axum::extract::State(server): axum::extract::State<Server>,
    req: Request,
) -> Response {
    let what = format!("{} {}", req.method(), req.uri().path());
    run(server, move |_| Err(RouteError::NotFound(what))).await
}

pub fn router(server: Server) -> Router {
    Router::new()
        .merge(chats::routes())
        .merge(model::routes())
        .merge(settings::routes())
        .merge(crate::api::routes())
        .route("/chats/{cid}/stream", get(sse::chat_stream))
        .route("/events", get(sse::app_events))
        .route("/static/{*path}", get(static_file))
        .route("/vendor/{*path}", get(static_file))
        .route("/windows/settings", post(settings::open_window))
        .fallback(not_found)
        .with_state(server)
}

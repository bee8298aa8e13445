//! The shell's hold on the app: it opens the chat core and the [`Server`] over it, forwards the
//! server's page events to the windows as Tauri events (`chat-stream` frames, `app-state` news), and
//! answers every `app://` request by calling the server's Router as a tower `Service`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::Router;
use chat::{AppEvent, AppPaths, ChatApp};
use server::{Downloads, Hub, PageEvent, Server, StateEvent, WithShell};
use tauri::http;
use tauri::{AppHandle, Emitter, Manager};
use tower::ServiceExt;

use crate::shell::TauriShell;
use crate::{windows, Args};

/// The app's folders: from `args`, else the OS defaults.
pub fn paths(args: &Args) -> chat::Result<AppPaths> {
    let defaults = AppPaths::for_user()?;
    let data_dir = args.data_dir.clone().unwrap_or(defaults.data_dir);
    Ok(AppPaths {
        models_dir: args
            .models_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("models")),
        config_dir: args.config_dir.clone().unwrap_or(defaults.config_dir),
        data_dir,
    })
}

/// How to treat the chat database at start.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// Open the one there.
    Existing,
    /// Move the one there aside (the user chose to, after it could not be used) and start anew.
    Fresh,
}

/// Opens the chat core with the paths from `args` (or the OS defaults), starts loading the model,
/// and builds the server over it.
pub fn start(handle: &AppHandle, args: &Args, database: Database) -> chat::Result<Server> {
    let paths = paths(args)?;
    let hub = Hub::new();
    let emitter = handle.clone();
    hub.listen(move |event| forward(&emitter, event));
    let pages = hub.sink();
    let (shortcuts, news) = (handle.clone(), hub.clone());
    // The server is made from the chat core this sink is given to: it is filled in below.
    let slot: Arc<OnceLock<Server>> = Arc::default();
    let serving = slot.clone();
    let sink: chat::EventSink = Arc::new(move |event| {
        if let AppEvent::SettingsChanged(s) = &event {
            if let Err(e) = windows::set_quick_shortcut(&shortcuts, &s.quick_chat_shortcut) {
                news.state(StateEvent::toast(e, true));
            }
            if let Some(server) = serving.get() {
                apply_local_server(server, s.local_server.clone());
            }
        }
        pages(event)
    });
    let app = match database {
        Database::Existing => ChatApp::open(paths, sink)?,
        Database::Fresh => ChatApp::open_fresh(paths, sink, Default::default())?,
    };
    for notice in app.notices() {
        tracing::warn!("{notice}");
    }
    // `open` already loads the model the settings name; load again only for a different one.
    if let Some(model) = args.model.as_deref().map(absolute) {
        if app.settings().model_path.as_ref() != Some(&model) {
            app.load_model(model)?;
        }
    }
    let downloads = Downloads {
        endpoint: args.hf_endpoint.clone(),
        token: args.hf_token.clone(),
    };
    let server = Server::new(app, hub, downloads);
    let _ = slot.set(server.clone());
    apply_local_server(&server, server.chat().settings().local_server);
    Ok(server)
}

/// The "Local server" setting: the same Router over HTTP, started, moved or stopped to match.
fn apply_local_server(server: &Server, config: chat::LocalServer) {
    let server = server.clone();
    tauri::async_runtime::spawn(async move { server.apply_local_server(config).await });
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Page events -> Tauri events. Runs on the core's threads: emit and return.
fn forward(app: &AppHandle, event: &PageEvent) {
    let sent = match event {
        PageEvent::Frame(frame) => app.emit("chat-stream", frame),
        PageEvent::State(state) => app.emit("app-state", state),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not emit a page event");
    }
}

/// Registers the quick-chat shortcut from the settings; a failure is logged, not fatal.
pub fn apply_shortcut(handle: &AppHandle, server: &Server) {
    let shortcut = server.chat().settings().quick_chat_shortcut;
    if let Err(e) = windows::set_quick_shortcut(handle, &shortcut) {
        tracing::warn!("{e}");
    }
}

/// Answers an `app://` request with the Router, the request carrying this shell (dialogs, windows).
pub async fn respond(app: AppHandle, req: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    let Some(router) = app.try_state::<Router>().map(|r| r.inner().clone()) else {
        return plain(http::StatusCode::SERVICE_UNAVAILABLE, "the app is starting");
    };
    let Some(server) = app.try_state::<Server>().map(|s| s.inner().clone()) else {
        return plain(http::StatusCode::SERVICE_UNAVAILABLE, "the app is starting");
    };
    let mut req = req.map(Body::from);
    let shell = TauriShell::new(app.clone(), server);
    req.extensions_mut().insert(WithShell(Arc::new(shell)));
    let resp = match router.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    // Streams travel as Tauri events in the app; an event stream would never end here.
    let is_stream = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    if is_stream {
        return plain(
            http::StatusCode::NOT_IMPLEMENTED,
            "event streams reach the app as Tauri events",
        );
    }
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => http::Response::from_parts(parts, bytes.to_vec()),
        Err(e) => plain(http::StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn plain(status: http::StatusCode, text: &str) -> http::Response<Vec<u8>> {
    let mut resp = http::Response::new(text.as_bytes().to_vec());
    *resp.status_mut() = status;
    resp
}

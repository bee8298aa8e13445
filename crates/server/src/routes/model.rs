//! The model: its status line and banner, retry, and getting one (onboarding downloads, import, the
//! model manager).

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use serde_json::json;

use super::{base_ctx, field, run, Fields, Result, RouteError};
use crate::reply::Reply;
use crate::shell::MaybeShell;
use crate::Server;

pub(super) fn routes() -> Router<Server> {
    Router::new()
        .route("/model/status", get(status))
        .route("/model/banner", get(banner))
        .route("/model/retry", post(retry))
        .route("/model/use-cpu", post(use_cpu))
        .route("/models/onboarding", get(onboarding))
        .route("/models/download/{entry}", post(download))
        .route("/models/pause", post(pause))
        .route("/models/cancel", post(cancel))
        .route("/models/import", post(import))
        .route("/models/import/pick", post(pick))
        .route("/models/use", post(use_model))
        .route("/models/delete", post(delete))
}

async fn status(State(s): State<Server>) -> Response {
    run(s, |s| {
        Ok(Reply::html(
            s.views().render("model_status.html", base_ctx(s)),
        ))
    })
    .await
}

async fn banner(State(s): State<Server>) -> Response {
    run(s, |s| {
        Ok(Reply::html(
            s.views().render("model_banner.html", base_ctx(s)),
        ))
    })
    .await
}

async fn retry(State(s): State<Server>) -> Response {
    run(s, |s| {
        s.chat().reload_model()?;
        Ok(Reply::empty().trigger("model-changed"))
    })
    .await
}

/// "Use the CPU" after a failed GPU load: saved as the device, and the model loads there.
async fn use_cpu(State(s): State<Server>) -> Response {
    run(s, |s| {
        s.chat().use_cpu()?;
        Ok(Reply::empty().trigger("model-changed"))
    })
    .await
}

async fn onboarding(State(s): State<Server>) -> Response {
    run(s, |s| {
        Ok(Reply::html(s.views().render(
            "onboarding.html",
            json!({"downloads": s.models().view()}),
        )))
    })
    .await
}

async fn download(State(s): State<Server>, UrlPath(entry): UrlPath<String>) -> Response {
    run(s, move |s| {
        s.models().download(s.chat(), s.hub(), &entry)?;
        Ok(Reply::empty())
    })
    .await
}

async fn pause(State(s): State<Server>) -> Response {
    run(s, |s| {
        s.models().pause();
        Ok(Reply::empty())
    })
    .await
}

async fn cancel(State(s): State<Server>) -> Response {
    run(s, |s| {
        s.models().cancel(s.hub());
        Ok(Reply::empty())
    })
    .await
}

async fn import(State(s): State<Server>, Form(f): Fields) -> Response {
    run(s, move |s| {
        let path = field(&f, "path").trim();
        if path.is_empty() {
            return Err(RouteError::BadRequest(
                "enter the path of a .gguf file".into(),
            ));
        }
        import_file(s, Path::new(path))
    })
    .await
}

/// A native file dialog in the desktop app; a browser has none to offer.
async fn pick(State(s): State<Server>, MaybeShell(shell): MaybeShell) -> Response {
    run(s, move |s| {
        let shell = shell.ok_or_else(|| {
            RouteError::BadRequest(
                "choosing a file needs the desktop app: type the model file's path instead".into(),
            )
        })?;
        match shell.pick_model_file() {
            Some(path) => import_file(s, &path),
            None => Ok(Reply::empty()),
        }
    })
    .await
}

async fn use_model(State(s): State<Server>, Form(f): Fields) -> Response {
    run(s, move |s| {
        s.chat().load_model(PathBuf::from(field(&f, "path")))?;
        Ok(Reply::html(
            s.views().render("model_manager.html", manager_ctx(s)),
        ))
    })
    .await
}

async fn delete(State(s): State<Server>, Form(f): Fields) -> Response {
    run(s, move |s| {
        s.models().delete(field(&f, "name"))?;
        Ok(Reply::html(
            s.views().render("model_manager.html", manager_ctx(s)),
        ))
    })
    .await
}

fn import_file(s: &Server, path: &Path) -> Result<Reply> {
    let installed = s.models().import(s.chat(), path)?;
    tracing::info!(path = %installed.display(), "model imported");
    Ok(Reply::empty().trigger("model-changed"))
}

/// The model manager: installed models, which one is in use. The model in use may live outside the
/// models folder (`--model`, a file from the checkout, an earlier setting): it is listed too, without
/// Delete, so the list never says "no models" while one answers.
pub(super) fn manager_ctx(s: &Server) -> serde_json::Value {
    let in_use = match s.chat().model_state() {
        chat::ModelState::Ready { info, .. } => Some(info.path.clone()),
        chat::ModelState::Loading { path, .. } => Some(path),
        // A remote endpoint is no file to list; no model, or a failed one, is none in use.
        _ => None,
    };
    let same = |a: &Path, b: &Path| {
        a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
    };
    let mut listed = false;
    let mut models: Vec<_> = s
        .models()
        .installed()
        .into_iter()
        .map(|mut m| {
            let path = PathBuf::from(m["path"].as_str().unwrap_or(""));
            let active = in_use.as_deref().is_some_and(|a| same(a, &path));
            listed |= active;
            m["active"] = json!(active);
            m
        })
        .collect();
    if let (Some(path), false) = (in_use, listed) {
        let size = std::fs::metadata(&path)
            .map(|m| download::human_bytes(m.len()))
            .unwrap_or_default();
        models.insert(
            0,
            json!({
                "name": path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                "path": path.display().to_string(),
                "size": size,
                "active": true,
                "outside": true,
            }),
        );
    }
    json!({ "models": models, "models_dir": s.models().models_dir().display().to_string() })
}

//! The router of the `app://` protocol: static files, pages, and the htmx endpoints (table in `doc/app.md`).
//! Handlers call the chat core and render fragments; errors become a visible toast, never a crash.

use chat::{CommandAction, SendOutcome};
use serde_json::json;
use tauri::http::{self, Method, StatusCode};
use tauri::{AppHandle, Emitter, Manager};

use crate::bridge::Core;
use crate::http::{asset, Reply, Request};
use crate::models::Models;
use crate::pages::{message_views, ChatView, MessageView};
use crate::views::Views;
use crate::windows;

pub fn handle(app: &AppHandle, req: &http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    let path = req.uri().path();
    if path.starts_with("/static/") || path.starts_with("/vendor/") {
        return match app.asset_resolver().get(path.to_string()) {
            Some(a) => asset(a.bytes, &a.mime_type),
            None => Reply::html("not found".into())
                .status(StatusCode::NOT_FOUND)
                .into_http(),
        };
    }
    let req = Request::from_http(req);
    let core = app.state::<Core>();
    let views = app.state::<Views>();
    let models = app.state::<Models>();
    let ctx = Ctx {
        app,
        core: &core,
        models: &models,
        views: &views,
    };
    let reply = match route(&ctx, &req) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(path = %req.segments.join("/"), error = %e, "request failed");
            // htmx swaps nothing on errors; show a toast the user can read instead.
            Reply::html(views.render(
                "toast.html",
                json!({"kind": "error", "text": e.to_string()}),
            ))
            .trigger("request-failed")
            .retarget_toast()
        }
    };
    reply.into_http()
}

struct Ctx<'a> {
    app: &'a AppHandle,
    core: &'a Core,
    models: &'a Models,
    views: &'a Views,
}

type Result<T> = std::result::Result<T, RouteError>;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    Chat(#[from] chat::ChatError),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
}

fn id(s: &str) -> Result<i64> {
    s.parse()
        .map_err(|_| RouteError::BadRequest(format!("“{s}” is not an id")))
}

fn route(c: &Ctx, r: &Request) -> Result<Reply> {
    let m = &r.method;
    match (m, r.path().as_slice()) {
        (&Method::GET, []) => main_page(c, None),
        (&Method::GET, ["chats"]) => chat_list(c, r.param("q").unwrap_or("")),
        (&Method::POST, ["chats"]) => {
            let chat = c.core.app().create_chat()?;
            Ok(chat_pane(c, chat.id)?.trigger("chats-changed"))
        }
        (&Method::GET, ["chats", cid]) => {
            let cid = id(cid)?;
            if r.htmx {
                chat_pane(c, cid)
            } else {
                main_page(c, Some(cid))
            }
        }
        (&Method::DELETE, ["chats", cid]) => {
            c.core.app().delete_chat(id(cid)?)?;
            Ok(Reply::html(c.views.render("empty.html", base_ctx(c))).trigger("chats-changed"))
        }
        (&Method::GET, ["chats", cid, "rename"]) => {
            let chat = c.core.app().chat(id(cid)?)?;
            Ok(Reply::html(c.views.render(
                "rename.html",
                json!({"chat": ChatView::new(&chat.chat)}),
            )))
        }
        (&Method::GET, ["chats", cid, "thinking"]) => {
            let view = c.core.app().chat(id(cid)?)?;
            let ctx = with(base_ctx(c), json!({"chat": ChatView::new(&view.chat)}));
            Ok(Reply::html(c.views.render("thinking_pill.html", ctx)))
        }
        (&Method::GET, ["chats", cid, "title"]) => {
            let view = c.core.app().chat(id(cid)?)?;
            Ok(Reply::html(c.views.render(
                "title.html",
                json!({"chat": ChatView::new(&view.chat)}),
            )))
        }
        (&Method::POST, ["chats", cid, "rename"]) => {
            let title = r.param("title").unwrap_or("");
            let chat = c.core.app().rename_chat(id(cid)?, title)?;
            Ok(Reply::html(
                c.views
                    .render("title.html", json!({"chat": ChatView::new(&chat)})),
            )
            .trigger("chats-changed"))
        }
        (&Method::POST, ["chats", cid, "messages"]) => {
            send(c, id(cid)?, r.param("text").unwrap_or(""))
        }
        (&Method::POST, ["chats", cid, "stop"]) => {
            c.core.app().stop(id(cid)?);
            Ok(Reply::empty())
        }
        (&Method::GET, ["chats", cid, "events"]) => {
            let after = r.param("after").and_then(|a| a.parse().ok()).unwrap_or(0);
            Ok(Reply::json(&c.core.frames_after(id(cid)?, after)))
        }
        (&Method::GET, ["chats", cid, "messages", mid]) => {
            let (cid, mid) = (id(cid)?, id(mid)?);
            let view = c.core.app().chat(cid)?;
            let m = message_views(&view.messages, view.last_event_id)
                .into_iter()
                .find(|v| v.id == mid)
                .ok_or_else(|| RouteError::NotFound(format!("message {mid}")))?;
            Ok(Reply::html(
                c.views.render("message.html", json!({ "m": m })),
            ))
        }
        (&Method::POST, ["chats", cid, "messages", mid, "regenerate"]) => {
            let cid = id(cid)?;
            c.core.app().regenerate(id(mid)?)?;
            busy(c, cid);
            chat_pane(c, cid)
        }
        (&Method::GET, ["commands", "suggest"]) => {
            let text = r.param("text").unwrap_or("");
            let items = if text.starts_with('/') && !text.contains(char::is_whitespace) {
                c.core.app().suggest_commands(text)
            } else {
                Vec::new()
            };
            let items: Vec<_> = items
                .iter()
                .map(|s| json!({"name": s.name, "usage": s.usage, "help": s.description}))
                .collect();
            Ok(Reply::html(
                c.views.render("palette.html", json!({ "items": items })),
            ))
        }
        (&Method::GET, ["model", "status"]) => Ok(Reply::html(
            c.views.render("model_status.html", base_ctx(c)),
        )),
        (&Method::GET, ["model", "banner"]) => Ok(Reply::html(
            c.views.render("model_banner.html", base_ctx(c)),
        )),
        (&Method::POST, ["model", "retry"]) => {
            c.core.retry_load()?;
            Ok(Reply::empty().trigger("model-changed"))
        }
        (&Method::GET, ["models", "onboarding"]) => Ok(Reply::html(
            c.views
                .render("onboarding.html", json!({"downloads": c.models.view()})),
        )),
        (&Method::POST, ["models", "download", entry]) => {
            c.models
                .download(c.app, entry)
                .map_err(RouteError::BadRequest)?;
            Ok(Reply::empty())
        }
        (&Method::POST, ["models", "pause"]) => {
            c.models.pause();
            Ok(Reply::empty())
        }
        (&Method::POST, ["models", "cancel"]) => {
            c.models.cancel(c.app);
            Ok(Reply::empty())
        }
        (&Method::POST, ["models", "import"]) => {
            let path = r.param("path").unwrap_or("").trim();
            if path.is_empty() {
                return Err(RouteError::BadRequest(
                    "enter the path of a .gguf file".into(),
                ));
            }
            import(c, std::path::Path::new(path))
        }
        (&Method::POST, ["models", "import", "pick"]) => {
            use tauri_plugin_dialog::DialogExt;
            let picked = c
                .app
                .dialog()
                .file()
                .set_title("Choose a GGUF model")
                .add_filter("GGUF model", &["gguf"])
                .blocking_pick_file();
            match picked.and_then(|p| p.into_path().ok()) {
                Some(path) => import(c, &path),
                None => Ok(Reply::empty()),
            }
        }
        (&Method::POST, ["models", "use"]) => {
            let path = r.param("path").unwrap_or("");
            c.core.app().load_model(std::path::PathBuf::from(path))?;
            Ok(Reply::html(
                c.views.render("model_manager.html", manager_ctx(c)),
            ))
        }
        (&Method::POST, ["models", "delete"]) => {
            c.models
                .delete(r.param("name").unwrap_or(""))
                .map_err(RouteError::BadRequest)?;
            Ok(Reply::html(
                c.views.render("model_manager.html", manager_ctx(c)),
            ))
        }
        (&Method::GET, ["settings"]) => settings_page(c),
        (&Method::POST, ["settings"]) => save_settings(c, r),
        (&Method::POST, ["windows", "settings"]) => {
            windows::open_settings(c.app);
            Ok(Reply::empty())
        }
        (&Method::GET, ["quick"]) => Ok(Reply::html(c.views.render("quick.html", base_ctx(c)))),
        (&Method::POST, ["quick"]) => quick_ask(c, r.param("text").unwrap_or("")),
        (&Method::POST, ["quick", "open", cid]) => {
            windows::show_chat_in_main(c.app, id(cid)?);
            Ok(Reply::empty())
        }
        _ => Err(RouteError::NotFound(format!(
            "{} /{}",
            r.method,
            r.segments.join("/")
        ))),
    }
}

/// What every page needs: the model's state for the status line and the banner (with onboarding).
fn base_ctx(c: &Ctx) -> serde_json::Value {
    json!({ "model": c.core.model_view(), "downloads": c.models.view() })
}

fn import(c: &Ctx, path: &std::path::Path) -> Result<Reply> {
    let installed = c
        .models
        .import(c.core, path)
        .map_err(RouteError::BadRequest)?;
    tracing::info!(path = %installed.display(), "model imported");
    Ok(Reply::empty().trigger("model-changed"))
}

/// The model manager: installed models, which one is active.
fn manager_ctx(c: &Ctx) -> serde_json::Value {
    let active = c.core.app().settings().model_path;
    let models: Vec<_> = c
        .models
        .installed()
        .into_iter()
        .map(|mut m| {
            let is_active = active
                .as_ref()
                .is_some_and(|a| a.display().to_string() == m["path"].as_str().unwrap_or(""));
            m["active"] = json!(is_active);
            m
        })
        .collect();
    json!({ "models": models, "models_dir": c.models.models_dir().display().to_string() })
}

fn with(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

fn chat_list_views(c: &Ctx) -> Result<Vec<ChatView>> {
    Ok(c.core
        .app()
        .list_chats()?
        .iter()
        .map(ChatView::new)
        .collect())
}

fn main_page(c: &Ctx, open: Option<i64>) -> Result<Reply> {
    let chats = chat_list_views(c)?;
    let mut ctx = with(base_ctx(c), json!({ "chats": chats }));
    if let Some(cid) = open {
        ctx = with(ctx, chat_ctx(c, cid)?);
    }
    Ok(Reply::html(c.views.render("main.html", ctx)))
}

fn chat_ctx(c: &Ctx, cid: i64) -> Result<serde_json::Value> {
    let view = c.core.app().chat(cid)?;
    Ok(json!({
        "chat": ChatView::new(&view.chat),
        "messages": message_views(&view.messages, view.last_event_id),
        "busy": view.busy,
    }))
}

fn chat_pane(c: &Ctx, cid: i64) -> Result<Reply> {
    let ctx = with(base_ctx(c), chat_ctx(c, cid)?);
    Ok(Reply::html(c.views.render("chat.html", ctx)))
}

fn chat_list(c: &Ctx, query: &str) -> Result<Reply> {
    let query = query.trim();
    if query.is_empty() {
        let chats = chat_list_views(c)?;
        return Ok(Reply::html(
            c.views.render("chat_list.html", json!({ "chats": chats })),
        ));
    }
    match c.core.app().search(query) {
        Ok(hits) => {
            let chats: Vec<ChatView> = hits
                .iter()
                .map(|h| ChatView {
                    id: h.chat_id,
                    title: h.chat_title.clone(),
                    thinking: false,
                    snippet: Some(h.snippet_marked("", "")),
                })
                .collect();
            Ok(Reply::html(c.views.render(
                "chat_list.html",
                json!({ "chats": chats, "query": query }),
            )))
        }
        Err(e) => Ok(Reply::html(c.views.render(
            "chat_list.html",
            json!({ "chats": [], "query": query, "search_error": e.to_string() }),
        ))),
    }
}

/// The messages `out` created, as the page shows them; a streaming answer connects to its stream
/// after the chat's last event id as of now (its text so far is in the view).
fn outcome_views(c: &Ctx, cid: i64, out: &SendOutcome) -> Result<Vec<MessageView>> {
    let ids = match out {
        SendOutcome::Generating {
            user_message_id,
            assistant_message_id,
        } => [*user_message_id, *assistant_message_id],
        SendOutcome::Command {
            user_message_id,
            reply_message_id,
            ..
        } => [*user_message_id, *reply_message_id],
    };
    let view = c.core.app().chat(cid)?;
    Ok(view
        .messages
        .iter()
        .filter(|m| ids.contains(&m.id))
        .map(|m| MessageView::new(m, false, view.last_event_id))
        .collect())
}

/// Tells the chat's composer to show Stop instead of Send until the answer completes.
fn busy(c: &Ctx, cid: i64) {
    let _ = c.app.emit("app-state", json!({"busy": true, "chat": cid}));
}

/// Stores the user's message (or runs the command) and answers with the new messages; the answer's tokens
/// then stream in through the `chat-stream` events.
fn send(c: &Ctx, cid: i64, text: &str) -> Result<Reply> {
    if text.trim().is_empty() {
        return Ok(Reply::empty());
    }
    let out = c.core.app().send(cid, text)?;
    let streaming = matches!(
        out,
        SendOutcome::Generating { .. }
            | SendOutcome::Command {
                streaming: true,
                ..
            }
    );
    if streaming {
        busy(c, cid);
    }
    let html: String = outcome_views(c, cid, &out)?
        .iter()
        .map(|m| c.views.render("message.html", json!({ "m": m })))
        .collect();
    if let SendOutcome::Command {
        action: Some(CommandAction::Export(export)),
        ..
    } = &out
    {
        offer_to_save(c.app, export.file_name.clone(), export.markdown.clone());
    }
    let mut reply = Reply::html(html);
    if let SendOutcome::Command {
        action: Some(CommandAction::Thinking { .. } | CommandAction::ContextReset),
        ..
    } = out
    {
        reply = reply.trigger("chat-changed");
    }
    Ok(reply)
}

/// `/export`: the Markdown is in the reply; a native save dialog offers to write it to a file too.
fn offer_to_save(app: &AppHandle, file_name: String, markdown: String) {
    let app = app.clone();
    std::thread::spawn(move || {
        use tauri_plugin_dialog::DialogExt;
        let picked = app
            .dialog()
            .file()
            .set_title("Save the chat as Markdown")
            .set_file_name(&file_name)
            .add_filter("Markdown", &["md"])
            .blocking_save_file();
        let Some(path) = picked.and_then(|p| p.into_path().ok()) else {
            return;
        };
        let (text, kind) = match std::fs::write(&path, markdown) {
            Ok(()) => (format!("Saved {}", path.display()), ""),
            Err(e) => (format!("Could not save {}: {e}", path.display()), "error"),
        };
        crate::bridge::toast(&app, &text, kind);
    });
}

fn quick_ask(c: &Ctx, text: &str) -> Result<Reply> {
    if text.trim().is_empty() {
        return Ok(Reply::empty());
    }
    let chat = c.core.app().create_chat()?;
    let out = c.core.app().send(chat.id, text)?;
    let views = outcome_views(c, chat.id, &out)?;
    Ok(Reply::html(c.views.render(
        "quick_answer.html",
        json!({ "messages": views, "chat": ChatView::new(&chat) }),
    )))
}

fn settings_page(c: &Ctx) -> Result<Reply> {
    let s = c.core.app().settings();
    let ctx = json!({
        "manager": manager_ctx(c),
        "s": crate::bridge::settings_form(&s),
        "defaults": c.core.sampling_defaults(),
        "devices": c.core.app().devices().iter().map(|d| json!({
            "id": d.device.name(),
            "name": d.device.name().to_uppercase(),
            "available": d.usable,
            "explanation": d.explanation,
        })).collect::<Vec<_>>(),
        "max_threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) * 2,
    });
    Ok(Reply::html(c.views.render("settings.html", ctx)))
}

fn save_settings(c: &Ctx, r: &Request) -> Result<Reply> {
    let current = c.core.app().settings();
    let new =
        crate::bridge::settings_from_form(&current, &r.form).map_err(RouteError::BadRequest)?;
    let diff = c.core.app().update_settings(new)?;
    let text = if diff.is_empty() {
        "Nothing changed.".to_string()
    } else if diff.needs_restart() {
        "Saved. The thread count applies after a restart.".to_string()
    } else if diff.needs_reload() {
        "Saved. The model is reloading with the new settings.".to_string()
    } else {
        "Saved. The next answer uses the new settings.".to_string()
    };
    Ok(Reply::html(format!(
        "<span class=\"hint\">{}</span>",
        minijinja::HtmlEscape(&text)
    )))
}

impl Reply {
    /// Errors are shown as toasts whatever the request's target was.
    fn retarget_toast(self) -> Self {
        self.header("HX-Retarget", "#toasts")
            .header("HX-Reswap", "beforeend")
    }
}

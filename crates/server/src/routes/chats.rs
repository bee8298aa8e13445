//! The main page, the chat list, a chat and its messages, sending, stopping, the replay of a chat's
//! stream, the command palette, and the quick-chat window.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use chat::{ChatId, CommandAction, EventId, MessageId, SendOutcome};
use serde::Deserialize;
use serde_json::json;

use super::{base_ctx, field, run, with, Fields, Result, RouteError};
use crate::hub::StateEvent;
use crate::pages::{message_views, ChatView, MessageView};
use crate::reply::Reply;
use crate::shell::MaybeShell;
use crate::Server;

pub(super) fn routes() -> Router<Server> {
    Router::new()
        .route("/", get(index))
        .route("/chats", get(list).post(create))
        .route("/chats/{cid}", get(open).delete(delete))
        .route("/chats/{cid}/rename", get(rename_form).post(rename))
        .route("/chats/{cid}/thinking", get(thinking_pill))
        .route("/chats/{cid}/title", get(title))
        .route("/chats/{cid}/messages", post(send))
        .route("/chats/{cid}/stop", post(stop))
        .route("/chats/{cid}/events", get(events))
        .route("/chats/{cid}/messages/{mid}", get(message))
        .route("/chats/{cid}/messages/{mid}/regenerate", post(regenerate))
        .route(
            "/chats/{cid}/messages/{mid}/edit",
            get(edit_form).post(edit),
        )
        .route("/chats/{cid}/messages/{mid}/branch", post(switch_branch))
        .route(
            "/chats/{cid}/messages/{mid}/version",
            axum::routing::delete(delete_version),
        )
        .route(
            "/chats/{cid}/messages/{mid}/tools/{index}/decide",
            post(decide_tool),
        )
        .route("/chats/{cid}/follow-ups", get(follow_ups))
        .route("/chats/{cid}/follow-ups/dismiss", post(dismiss_follow_ups))
        .route("/commands/suggest", get(suggest))
        .route("/quick", get(quick_page).post(quick_ask))
        .route("/quick/open/{cid}", post(quick_open))
        .route("/open-link", post(open_link))
}

/// A link from an answer that may leave the app ([`crate::shell::may_leave_the_app`]).
fn checked_link(url: &str) -> Result<&str> {
    if !crate::shell::may_leave_the_app(url) {
        return Err(RouteError::BadRequest(format!(
            "only web (http, https) and mail links can be opened, not “{}”",
            url.chars().take(80).collect::<String>()
        )));
    }
    Ok(url)
}

/// A link clicked in an answer (the desktop app): opened in the system browser, its address shown.
async fn open_link(
    State(s): State<Server>,
    MaybeShell(shell): MaybeShell,
    Form(f): Fields,
) -> Response {
    run(s, move |s| {
        let url = checked_link(field(&f, "url"))?;
        let shell = shell.ok_or_else(|| {
            RouteError::BadRequest(
                "a browser opens links itself: this is for the desktop app".into(),
            )
        })?;
        shell.open_url(url).map_err(RouteError::Internal)?;
        s.toast(format!("Opened {url} in your browser"), false);
        Ok(Reply::empty())
    })
    .await
}

async fn index(State(s): State<Server>) -> Response {
    run(s, |s| main_page(s, None)).await
}

#[derive(Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
}

async fn list(State(s): State<Server>, Query(q): Query<Search>) -> Response {
    run(s, move |s| chat_list(s, &q.q)).await
}

async fn create(State(s): State<Server>) -> Response {
    run(s, |s| {
        let chat = s.chat().create_chat()?;
        Ok(chat_pane(s, chat.id)?.trigger("chats-changed"))
    })
    .await
}

/// A chat: the conversation pane for htmx, the whole page for a browser's address bar.
async fn open(State(s): State<Server>, Path(cid): Path<ChatId>, headers: HeaderMap) -> Response {
    let htmx = headers.contains_key("hx-request");
    run(s, move |s| match htmx {
        true => chat_pane(s, cid),
        false => main_page(s, Some(cid)),
    })
    .await
}

async fn delete(State(s): State<Server>, Path(cid): Path<ChatId>) -> Response {
    run(s, move |s| {
        s.chat().delete_chat(cid)?;
        Ok(Reply::html(s.views().render("empty.html", base_ctx(s))).trigger("chats-changed"))
    })
    .await
}

async fn rename_form(State(s): State<Server>, Path(cid): Path<ChatId>) -> Response {
    run(s, move |s| chat_fragment(s, cid, "rename.html")).await
}

async fn rename(State(s): State<Server>, Path(cid): Path<ChatId>, Form(f): Fields) -> Response {
    run(s, move |s| {
        let chat = s.chat().rename_chat(cid, field(&f, "title"))?;
        Ok(Reply::html(
            s.views()
                .render("title.html", json!({"chat": ChatView::new(&chat)})),
        )
        .trigger("chats-changed"))
    })
    .await
}

async fn thinking_pill(State(s): State<Server>, Path(cid): Path<ChatId>) -> Response {
    run(s, move |s| {
        let view = s.chat().chat(cid)?;
        let ctx = with(base_ctx(s), json!({"chat": ChatView::new(&view.chat)}));
        Ok(Reply::html(s.views().render("thinking_pill.html", ctx)))
    })
    .await
}

async fn title(State(s): State<Server>, Path(cid): Path<ChatId>) -> Response {
    run(s, move |s| chat_fragment(s, cid, "title.html")).await
}

/// A fragment about the chat itself (its title, the rename form).
fn chat_fragment(s: &Server, cid: ChatId, template: &str) -> Result<Reply> {
    let view = s.chat().chat(cid)?;
    Ok(Reply::html(s.views().render(
        template,
        json!({"chat": ChatView::new(&view.chat)}),
    )))
}

async fn send(
    State(s): State<Server>,
    Path(cid): Path<ChatId>,
    shell: MaybeShell,
    Form(f): Fields,
) -> Response {
    run(s, move |s| send_text(s, &shell, cid, field(&f, "text"))).await
}

async fn stop(State(s): State<Server>, Path(cid): Path<ChatId>) -> Response {
    run(s, move |s| {
        s.chat().stop(cid);
        Ok(Reply::empty())
    })
    .await
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: EventId,
}

/// JSON: the stream frames after `after`, for a page that attaches late (the desktop transport).
async fn events(
    State(s): State<Server>,
    Path(cid): Path<ChatId>,
    Query(q): Query<After>,
) -> Response {
    run(s, move |s| Ok(Reply::json(&s.frames_after(cid, q.after)))).await
}

async fn message(State(s): State<Server>, Path((cid, mid)): Path<(ChatId, MessageId)>) -> Response {
    run(s, move |s| {
        let m = message_view(s, cid, mid, |_| true)?;
        Ok(Reply::html(
            s.views().render("message.html", json!({ "m": m })),
        ))
    })
    .await
}

/// Message `mid` of chat `cid` as the page shows it, if `shown` accepts it.
fn message_view(
    s: &Server,
    cid: ChatId,
    mid: MessageId,
    shown: impl Fn(&MessageView) -> bool,
) -> Result<MessageView> {
    let view = s.chat().chat(cid)?;
    message_views(&view.messages, view.last_event_id)
        .into_iter()
        .find(|v| v.id == mid && shown(v))
        .ok_or_else(|| RouteError::NotFound(format!("message {mid}")))
}

async fn regenerate(
    State(s): State<Server>,
    Path((cid, mid)): Path<(ChatId, MessageId)>,
) -> Response {
    run(s, move |s| {
        s.chat().regenerate(cid, mid)?;
        s.hub().state(StateEvent::busy(cid, true));
        chat_pane(s, cid)
    })
    .await
}

/// A sent message as a form to edit it.
async fn edit_form(
    State(s): State<Server>,
    Path((cid, mid)): Path<(ChatId, MessageId)>,
) -> Response {
    run(s, move |s| {
        let m = message_view(s, cid, mid, |v| v.role == "user" && !v.command)?;
        Ok(Reply::html(
            s.views().render("edit.html", json!({ "m": m })),
        ))
    })
    .await
}

/// The edited message replaces it and what followed; the old version is kept (`keep=on`) or
/// deleted. Answers with the chat, its new answer streaming.
async fn edit(
    State(s): State<Server>,
    Path((cid, mid)): Path<(ChatId, MessageId)>,
    Form(f): Fields,
) -> Response {
    run(s, move |s| {
        let keep = field(&f, "keep") == "on";
        s.chat().edit(cid, mid, field(&f, "text"), keep)?;
        s.hub().state(StateEvent::busy(cid, true));
        chat_pane(s, cid)
    })
    .await
}

#[derive(Deserialize)]
struct To {
    to: String,
}

/// `‹` / `›` on a message with other versions (`?to=previous|next`): the chat, showing that one.
/// The user's answer to a tool call waiting for approval (`decision`: once, always, deny);
/// the card follows from the call's `tool` frames.
async fn decide_tool(
    State(s): State<Server>,
    Path((cid, mid, index)): Path<(ChatId, MessageId, usize)>,
    Form(form): Fields,
) -> Response {
    run(s, move |s| {
        let decision = field(&form, "decision").parse()?;
        s.chat().decide_tool(cid, mid, index, decision)?;
        Ok(Reply::empty())
    })
    .await
}

async fn switch_branch(
    State(s): State<Server>,
    Path((cid, mid)): Path<(ChatId, MessageId)>,
    Query(q): Query<To>,
) -> Response {
    run(s, move |s| {
        let to = match q.to.as_str() {
            "previous" => chat::Switch::Previous,
            "next" => chat::Switch::Next,
            other => {
                return Err(RouteError::BadRequest(format!(
                    "to must be previous or next, not “{other}”"
                )))
            }
        };
        s.chat().switch_branch(cid, mid, to)?;
        chat_pane(s, cid)
    })
    .await
}

/// "Delete this version" on a message with other versions: the chat, showing the version before.
async fn delete_version(
    State(s): State<Server>,
    Path((cid, mid)): Path<(ChatId, MessageId)>,
) -> Response {
    run(s, move |s| {
        s.chat().delete_version(cid, mid)?;
        chat_pane(s, cid)
    })
    .await
}

/// The chips under the latest answer (refreshed on `follow-ups-changed`).
async fn follow_ups(State(s): State<Server>, Path(cid): Path<ChatId>) -> Response {
    run(s, move |s| {
        let chat = s.chat().chat(cid)?.chat;
        Ok(Reply::html(s.views().render(
            "follow_ups.html",
            json!({"chat": ChatView::new(&chat), "follow_ups": follow_up_questions(s, cid)}),
        )))
    })
    .await
}

/// The user typed: the suggestions go (and stop being made).
async fn dismiss_follow_ups(State(s): State<Server>, Path(cid): Path<ChatId>) -> Response {
    run(s, move |s| {
        s.chat().dismiss_follow_ups(cid);
        Ok(Reply::empty())
    })
    .await
}

fn follow_up_questions(s: &Server, cid: ChatId) -> Vec<String> {
    s.chat()
        .follow_ups(cid)
        .map(|f| f.questions)
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct Typed {
    #[serde(default)]
    text: String,
}

async fn suggest(State(s): State<Server>, Query(q): Query<Typed>) -> Response {
    run(s, move |s| {
        let text = q.text.as_str();
        let items = if text.starts_with('/') && !text.contains(char::is_whitespace) {
            s.chat().suggest_commands(text)
        } else {
            Vec::new()
        };
        let items: Vec<_> = items
            .iter()
            .map(|c| json!({"name": c.name, "usage": c.usage, "help": c.description}))
            .collect();
        Ok(Reply::html(
            s.views().render("palette.html", json!({ "items": items })),
        ))
    })
    .await
}

async fn quick_page(State(s): State<Server>) -> Response {
    run(s, |s| {
        Ok(Reply::html(s.views().render("quick.html", base_ctx(s))))
    })
    .await
}

async fn quick_ask(State(s): State<Server>, Form(f): Fields) -> Response {
    run(s, move |s| {
        let text = field(&f, "text");
        if text.trim().is_empty() {
            return Ok(Reply::empty());
        }
        let chat = s.chat().create_chat()?;
        // A question that could not be asked (no model yet) must not leave an empty chat behind.
        let out = s.chat().send(chat.id, text).inspect_err(|_| {
            if let Err(e) = s.chat().delete_chat(chat.id) {
                tracing::warn!(error = %e, chat = chat.id, "could not remove the unused quick chat");
            }
        })?;
        let views = outcome_views(s, chat.id, &out)?;
        Ok(Reply::html(s.views().render(
            "quick_answer.html",
            json!({ "messages": views, "chat": ChatView::new(&chat) }),
        )))
    })
    .await
}

/// "Open in main window": the desktop app shows the chat there; a browser goes to the chat's page.
async fn quick_open(
    State(s): State<Server>,
    Path(cid): Path<ChatId>,
    MaybeShell(shell): MaybeShell,
) -> Response {
    run(s, move |_| match shell {
        Some(shell) => {
            shell.show_chat(cid);
            Ok(Reply::empty())
        }
        None => Ok(Reply::redirect(format!("/chats/{cid}"))),
    })
    .await
}

fn chat_list_views(s: &Server) -> Result<Vec<ChatView>> {
    Ok(s.chat().list_chats()?.iter().map(ChatView::new).collect())
}

fn main_page(s: &Server, open: Option<ChatId>) -> Result<Reply> {
    let chats = chat_list_views(s)?;
    // What the user should know about this start (a settings file or chat database moved aside,
    // answers recovered, a model not loaded again): shown on the page, not only in the log.
    let notices = s.chat().notices();
    let mut ctx = with(base_ctx(s), json!({ "chats": chats, "notices": notices }));
    if let Some(cid) = open {
        ctx = with(ctx, chat_ctx(s, cid)?);
    }
    Ok(Reply::html(s.views().render("main.html", ctx)))
}

fn chat_ctx(s: &Server, cid: ChatId) -> Result<serde_json::Value> {
    let view = s.chat().chat(cid)?;
    Ok(json!({
        "chat": ChatView::new(&view.chat),
        "messages": message_views(&view.messages, view.last_event_id),
        "busy": view.busy,
        "follow_ups": follow_up_questions(s, cid),
    }))
}

fn chat_pane(s: &Server, cid: ChatId) -> Result<Reply> {
    let ctx = with(base_ctx(s), chat_ctx(s, cid)?);
    Ok(Reply::html(s.views().render("chat.html", ctx)))
}

fn chat_list(s: &Server, query: &str) -> Result<Reply> {
    let query = query.trim();
    if query.is_empty() {
        let chats = chat_list_views(s)?;
        return Ok(Reply::html(
            s.views()
                .render("chat_list.html", json!({ "chats": chats })),
        ));
    }
    match s.chat().search_chats(query) {
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
            Ok(Reply::html(s.views().render(
                "chat_list.html",
                json!({ "chats": chats, "query": query }),
            )))
        }
        Err(e) => Ok(Reply::html(s.views().render(
            "chat_list.html",
            json!({ "chats": [], "query": query, "search_error": e.to_string() }),
        ))),
    }
}

/// The messages `out` created, as the page shows them; a streaming answer connects to its stream
/// after the chat's last event id as of now (its text so far is in the view).
fn outcome_views(s: &Server, cid: ChatId, out: &SendOutcome) -> Result<Vec<MessageView>> {
    let ids = match out {
        SendOutcome::Shown { .. } => return Ok(Vec::new()),
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
    let view = s.chat().chat(cid)?;
    Ok(view
        .messages
        .iter()
        .filter(|m| ids.contains(&m.id))
        .map(|m| MessageView::new(m, false, view.last_event_id))
        .collect())
}

/// Stores the user's message (or runs the command) and answers with the new messages; the answer's
/// tokens then stream in (Tauri events in the app, SSE in a browser).
fn send_text(s: &Server, shell: &MaybeShell, cid: ChatId, text: &str) -> Result<Reply> {
    if text.trim().is_empty() {
        return Ok(Reply::empty());
    }
    let out = s.chat().send(cid, text)?;
    let streaming = matches!(
        out,
        SendOutcome::Generating { .. }
            | SendOutcome::Command {
                streaming: true,
                ..
            }
    );
    if streaming {
        s.hub().state(StateEvent::busy(cid, true));
    }
    let mut html: String = outcome_views(s, cid, &out)?
        .iter()
        .map(|m| s.views().render("message.html", json!({ "m": m })))
        .collect();
    if let SendOutcome::Shown { reply, .. } = &out {
        html = s.views().render("shown.html", json!({ "reply": reply }));
    }
    if let (
        SendOutcome::Shown {
            action: Some(CommandAction::Export(export)),
            ..
        },
        MaybeShell(Some(shell)),
    ) = (&out, shell)
    {
        // The Markdown is in the reply; the desktop app offers to save it as a file too.
        shell.offer_to_save(export.file_name.clone(), export.markdown.clone());
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

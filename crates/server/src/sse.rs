//! Server-Sent Events: the pages' streams over HTTP (the desktop app carries the same [`PageEvent`]s
//! as Tauri events instead).
//!
//! - `GET /chats/{id}/stream?after=N`: the chat's stream frames with an id above N, or above the
//!   `Last-Event-ID` a reconnecting `EventSource` sends. Each frame is an SSE event named for its
//!   kind (`thinking`, `token`, `stats`, `complete`, `error`) with `id:` the frame's id and the
//!   frame as JSON data: first what the replay log holds, then live frames, each exactly once and
//!   in order. A client that falls behind the hub resumes from the replay log.
//! - `GET /events`: page-wide `app-state` events (triggers, busy flags, toasts).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chat::{ChatId, EventId};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use crate::http::Closing;
use crate::hub::{Frame, PageEvent};
use crate::routes::RouteError;
use crate::Server;

/// Comments sent while nothing happens, so proxies and idle timers keep the connection.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
pub struct After {
    after: Option<EventId>,
}

fn last_event_id(headers: &HeaderMap) -> Option<EventId> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn frame_event(f: &Frame) -> Event {
    Event::default()
        .event(f.event)
        .id(f.id.to_string())
        .json_data(f)
        .unwrap_or_else(|_| Event::default().comment("unserializable frame"))
}

/// Resolves when the HTTP server shuts down; never on a transport without one.
async fn closed(closing: &Option<Extension<Closing>>) {
    match closing {
        Some(Extension(c)) => c.clone().wait().await,
        None => std::future::pending().await,
    }
}

/// One client's view of a chat's stream.
struct ChatFeed {
    server: Server,
    closing: Option<Extension<Closing>>,
    chat_id: ChatId,
    /// The id of the last frame sent.
    last: EventId,
    pending: VecDeque<Frame>,
    rx: Receiver<PageEvent>,
}

impl ChatFeed {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                if f.id > self.last {
                    self.last = f.id;
                    return Some((Ok(frame_event(&f)), self));
                }
                continue;
            }
            tokio::select! {
                _ = closed(&self.closing) => return None,
                got = self.rx.recv() => match got {
                    Ok(PageEvent::Frame(f)) if f.chat == self.chat_id => self.pending.push_back(f),
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        self.pending = self.server.frames_after(self.chat_id, self.last).into();
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

pub async fn chat_stream(
    State(server): State<Server>,
    Path(chat_id): Path<ChatId>,
    Query(q): Query<After>,
    closing: Option<Extension<Closing>>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = server.chat().chat(chat_id) {
        return RouteError::from(e).into_response();
    }
    let after = last_event_id(&headers).or(q.after).unwrap_or(0);
    // Listen first, then read the log: a frame published in between is in both, and sent once.
    let rx = server.hub().subscribe();
    let pending = server.frames_after(chat_id, after).into();
    let feed = ChatFeed {
        server,
        closing,
        chat_id,
        last: after,
        pending,
        rx,
    };
    sse(stream::unfold(feed, ChatFeed::next))
}

pub async fn app_events(
    State(server): State<Server>,
    closing: Option<Extension<Closing>>,
) -> Response {
    let rx = server.hub().subscribe();
    let feed = stream::unfold((closing, rx), |(closing, mut rx)| async move {
        loop {
            tokio::select! {
                _ = closed(&closing) => return None,
                got = rx.recv() => match got {
                    Ok(PageEvent::State(s)) => {
                        let event = Event::default()
                            .event("app-state")
                            .json_data(&s)
                            .unwrap_or_else(|_| Event::default().comment("unserializable"));
                        return Some((Ok::<_, Infallible>(event), (closing, rx)));
                    }
                    Ok(PageEvent::Frame(_)) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    });
    sse(feed)
}

fn sse<S>(events: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

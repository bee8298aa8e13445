//! Running an API request on the engine worker: queue it beside the desktop's chats, then either
//! collect the whole answer or stream it as OpenAI's `data:` chunks. A client that goes away
//! (its response dropped) stops its answer at the next token.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chat::{
    AnswerParams, ChatError, Finish, GenerationJob, JobEvent, MessageStats, Prompt, ToolRecord,
    Tools,
};
use futures_util::stream;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::ApiError;
use crate::Server;

/// Sets the answer's Stop flag when dropped: the client is gone, or the answer is over.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An answer queued for a client.
pub(crate) struct Running {
    rx: UnboundedReceiver<JobEvent>,
    _stop: StopOnDrop,
    /// What the refusal of this request names (`messages`, `prompt`).
    input: &'static str,
}

/// Queues `prompt` for `source` (fair turns with the desktop's chats and other clients).
pub(crate) fn start(
    s: &Server,
    prompt: Prompt,
    params: AnswerParams,
    source: String,
    input: &'static str,
    tools: Option<Tools>,
) -> Result<Running, ApiError> {
    let (tx, rx) = unbounded_channel();
    let cancelled = Arc::new(AtomicBool::new(false));
    let job = GenerationJob {
        tools,
        follow_ups: None,
        prompt,
        params,
        source,
        cancelled: cancelled.clone(),
        sink: Box::new(move |e| {
            let _ = tx.send(e);
        }),
    };
    s.chat().submit(job).map_err(|e| match e {
        ChatError::ModelNotReady(state) => ApiError::unavailable(state.describe()),
        other => ApiError::internal(other.to_string()),
    })?;
    Ok(Running {
        rx,
        _stop: StopOnDrop(cancelled),
        input,
    })
}

/// A whole answer.
pub(crate) struct Answer {
    pub thinking: String,
    pub text: String,
    pub stats: MessageStats,
    /// Calls the model asked the client to run (requests that offered `tools`).
    pub calls: Vec<ToolRecord>,
}

impl Running {
    /// The error of a job that ended without an answer (`Refused` or `Failed`).
    fn error(&self, event: &JobEvent) -> Option<ApiError> {
        match event {
            JobEvent::Refused(why) => Some(ApiError::job(why, true, self.input)),
            JobEvent::Failed(why) => Some(ApiError::job(why, false, self.input)),
            _ => None,
        }
    }

    /// Waits for the whole answer.
    pub async fn collect(mut self) -> Result<Answer, ApiError> {
        let (mut thinking, mut text, mut calls) = (String::new(), String::new(), Vec::new());
        loop {
            match self.rx.recv().await {
                // An API job asks for no follow-ups.
                Some(JobEvent::Queued(_) | JobEvent::FollowUps { .. }) => {}
                Some(JobEvent::Tool(call)) => calls.push(call),
                Some(JobEvent::Thinking(t)) => thinking.push_str(&t),
                Some(JobEvent::Token(t)) => text.push_str(&t),
                Some(JobEvent::Finished(stats)) => {
                    return Ok(Answer {
                        thinking,
                        text,
                        stats,
                        calls,
                    })
                }
                Some(e @ (JobEvent::Refused(_) | JobEvent::Failed(_))) => {
                    return Err(self.error(&e).unwrap_or_else(worker_stopped))
                }
                None => return Err(worker_stopped()),
            }
        }
    }

    /// Waits for the answer's first event worth a response: an error before anything was
    /// generated is the response's status, as llama.cpp's server does, not a chunk in a 200
    /// stream. A place in the queue behind other answers starts the stream at once, to show it.
    async fn first(&mut self) -> Result<JobEvent, ApiError> {
        loop {
            match self.rx.recv().await {
                Some(JobEvent::Queued(0)) => {}
                Some(e @ (JobEvent::Refused(_) | JobEvent::Failed(_))) => {
                    return Err(self.error(&e).unwrap_or_else(worker_stopped))
                }
                None => return Err(worker_stopped()),
                Some(e) => return Ok(e),
            }
        }
    }
}

fn worker_stopped() -> ApiError {
    ApiError::internal("The engine worker stopped.")
}

/// OpenAI's `finish_reason`; `called`: the answer ended asking for tool calls.
pub(crate) fn finish_reason(stats: &MessageStats, called: bool) -> &'static str {
    match stats.finish {
        Some(Finish::Length) => "length",
        _ if called => "tool_calls",
        _ => "stop",
    }
}

pub(crate) fn usage(stats: &MessageStats) -> Value {
    json!({
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    })
}

/// How an endpoint's stream chunks look.
pub(crate) trait Chunks: Send + 'static {
    /// Sent at once, before the answer (the chat's `role` chunk).
    fn opening(&self) -> Option<Value>;
    fn delta(&mut self, thinking: bool, text: String) -> Value;
    /// A call the model asked the client to run; `None` where the endpoint offers no tools.
    fn tool_call(&mut self, call: &ToolRecord) -> Option<Value>;
    fn finish(&mut self, stats: &MessageStats) -> Value;
    /// The extra chunk that carries `usage` (`stream_options.include_usage`).
    fn usage(&self, stats: &MessageStats) -> Value;
}

enum Step {
    Open,
    Events,
    Usage(MessageStats),
    Done,
    Over,
}

struct Feed<C> {
    run: Running,
    /// The event [`Running::first`] took, sent before the ones that follow.
    first: Option<JobEvent>,
    chunks: C,
    include_usage: bool,
    step: Step,
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

impl<C: Chunks> Feed<C> {
    async fn next_event(&mut self) -> Option<JobEvent> {
        match self.first.take() {
            Some(first) => Some(first),
            None => self.run.rx.recv().await,
        }
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            let event = match std::mem::replace(&mut self.step, Step::Events) {
                Step::Open => match self.chunks.opening() {
                    Some(v) => data(&v),
                    None => continue,
                },
                Step::Events => match self.next_event().await {
                    Some(JobEvent::Queued(n)) => {
                        Event::default().comment(format!("queued: {n} answer(s) ahead"))
                    }
                    Some(JobEvent::FollowUps { .. }) => continue,
                    Some(JobEvent::Tool(call)) => match self.chunks.tool_call(&call) {
                        Some(v) => data(&v),
                        None => continue,
                    },
                    Some(JobEvent::Thinking(t)) => data(&self.chunks.delta(true, t)),
                    Some(JobEvent::Token(t)) => data(&self.chunks.delta(false, t)),
                    Some(JobEvent::Finished(stats)) => {
                        let last = data(&self.chunks.finish(&stats));
                        self.step = match self.include_usage {
                            true => Step::Usage(stats),
                            false => Step::Done,
                        };
                        last
                    }
                    // After the stream began (a remote endpoint that failed mid-answer, say),
                    // the error can only be a chunk.
                    Some(e @ (JobEvent::Refused(_) | JobEvent::Failed(_))) => {
                        self.step = Step::Done;
                        data(&self.run.error(&e).unwrap_or_else(worker_stopped).body())
                    }
                    None => {
                        self.step = Step::Done;
                        data(&worker_stopped().body())
                    }
                },
                Step::Usage(stats) => {
                    self.step = Step::Done;
                    data(&self.chunks.usage(&stats))
                }
                Step::Done => {
                    self.step = Step::Over;
                    Event::default().data("[DONE]")
                }
                Step::Over => return None,
            };
            return Some((Ok(event), self));
        }
    }
}

/// The answer as Server-Sent Events of `data:` chunks, ending with `data: [DONE]`; while it
/// waits its turn, comments say how many answers are ahead. An answer refused or failed before
/// it began is an error response instead ([`Running::first`]).
pub(crate) async fn stream(
    mut run: Running,
    chunks: impl Chunks,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let first = run.first().await?;
    let feed = Feed {
        run,
        first: Some(first),
        chunks,
        include_usage,
        step: Step::Open,
    };
    Ok(Sse::new(stream::unfold(feed, Feed::next))
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

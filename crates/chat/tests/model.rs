//! The engine worker with the real SmolLM2-135M test model, through the facade.

mod common;

use std::time::{Duration, Instant};

use chat::{ChatError, EventKind, LoadError, MessageStatus, ModelState, SendOutcome, Settings};
use common::{final_status, model_settings, open, run, send, tokens};
use engine::EngineError;

const LOAD: Duration = Duration::from_secs(60);
const ANSWER: Duration = Duration::from_secs(60);

fn stats_of(events: &[chat::StreamEvent]) -> chat::MessageStats {
    events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Stats { stats } => Some(stats.clone()),
            _ => None,
        })
        .expect("a stats event")
}

#[test]
fn a_chat_round_trip_streams_tokens_then_stats_and_complete_and_stores_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), Some(&model_settings(12)));
    let ModelState::Ready { info, .. } = rec.wait_model(LOAD) else {
        panic!("{:?}", app.model_state())
    };
    assert_eq!(info.config.arch, engine::Arch::Llama);
    let chat = app.create_chat().unwrap();
    let id = send(&app, chat.id, "What is 2+2?");
    let events = rec.wait_done(id, ANSWER);

    let kinds: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    let n = kinds.len();
    assert!(
        n >= 3 && kinds[..n - 2].iter().all(|k| *k == "token"),
        "{kinds:?}"
    );
    assert_eq!(&kinds[n - 2..], ["stats", "complete"]);
    assert!(events.windows(2).all(|w| w[1].id == w[0].id + 1));
    let stats = stats_of(&events);
    assert!(
        stats.completion_tokens > 0 && stats.completion_tokens <= 12,
        "{stats:?}"
    );
    assert!(
        stats.decode_tok_s > 0.0 && stats.prompt_tokens > 0,
        "{stats:?}"
    );
    assert_eq!(stats.context_len, 2048);
    assert_eq!(
        stats.model.as_deref(),
        Some("SmolLM2-135M-Instruct.Q4_1.gguf")
    );

    let view = app.chat(chat.id).unwrap();
    assert_eq!(view.chat.title, "What is 2+2?");
    let answer = view.messages.iter().find(|m| m.id == id).unwrap();
    assert_eq!(answer.status, MessageStatus::Complete);
    assert_eq!(answer.content, tokens(&events));
    assert!(!answer.content.trim().is_empty());
    let stored = answer.stats.as_ref().expect("stored stats");
    assert_eq!(
        (
            stored.finish,
            stored.prompt_tokens,
            stored.completion_tokens
        ),
        (stats.finish, stats.prompt_tokens, stats.completion_tokens)
    );
    assert!((stored.decode_tok_s - stats.decode_tok_s).abs() < 1e-6);
    assert_eq!(view.last_event_id, events.last().unwrap().id);

    // /status and /model now describe the loaded model.
    let (_, status, _) = run(&app, chat.id, "/status");
    assert!(
        status.contains("ready")
            && status.contains("tokens/s")
            && status.contains("of 2048 tokens"),
        "{status}"
    );
    // SmolLM2 has no thinking mode: /status said "thinking on" for it.
    assert!(
        status.contains("no thinking") && !status.contains("thinking on"),
        "{status}"
    );
    let (_, model, _) = run(&app, chat.id, "/model");
    assert!(
        model.contains("| Architecture | llama |") && model.contains("| Layers | 30 |"),
        "{model}"
    );
}

#[test]
fn the_speculative_setting_drafts_or_not_and_the_stats_say_which() {
    // An answer that copies its prompt: what the drafter proposes for. Greedy, so the answer
    // must be the same either way.
    const ASK: &str = "Repeat this text exactly, word for word:\n\nThe quick brown fox jumps over \
        the lazy dog. The dog sleeps in the sun all afternoon, and the fox runs back into the \
        forest before the farmer comes home.";
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), Some(&model_settings(40)));
    assert!(app.settings().speculative, "on by default");
    assert!(rec.wait_model(LOAD).is_ready());
    let answer = |app: &chat::ChatApp| {
        let chat = app.create_chat().unwrap();
        let id = send(app, chat.id, ASK);
        let stats = stats_of(&rec.wait_done(id, ANSWER));
        let view = app.chat(chat.id).unwrap();
        let stored = view.messages.iter().find(|m| m.id == id).unwrap();
        let kept = stored.stats.as_ref().expect("stored stats");
        assert_eq!(
            (kept.drafted_tokens, kept.accepted_drafts),
            (stats.drafted_tokens, stats.accepted_drafts),
            "stored as streamed"
        );
        (stored.content.clone(), stats)
    };
    let (drafted, on) = answer(&app);
    assert!(
        on.drafted_tokens > 0 && on.accepted_drafts > 0 && on.accepted_drafts <= on.drafted_tokens,
        "{on:?}"
    );
    let off_settings = Settings {
        speculative: false,
        ..app.settings()
    };
    assert!(!app.update_settings(off_settings).unwrap().needs_reload());
    let (plain, off) = answer(&app);
    assert_eq!((off.drafted_tokens, off.accepted_drafts), (0, 0), "{off:?}");
    assert_eq!(plain, drafted, "drafting changes no greedy token");
    assert_eq!(off.completion_tokens, on.completion_tokens);
}

#[test]
fn the_second_turn_reuses_the_cached_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), Some(&model_settings(8)));
    assert!(rec.wait_model(LOAD).is_ready());
    let chat = app.create_chat().unwrap();
    let first = send(&app, chat.id, "Name a colour.");
    let first = stats_of(&rec.wait_done(first, ANSWER));
    let second = send(&app, chat.id, "Name another one.");
    let second = stats_of(&rec.wait_done(second, ANSWER));
    assert!(second.cached_tokens > 0, "{second:?}");
    assert!(
        second.cached_tokens >= first.prompt_tokens,
        "the whole first prompt is reused: {first:?} {second:?}"
    );
    assert!(second.prompt_tokens > first.prompt_tokens);
}

/// A, then B, then A again: A's second turn prefills only its new message when the caches of
/// recent chats are kept, and all but the shared system prompt when none is.
fn switch_back(kept_caches_mb: usize) -> (chat::MessageStats, chat::MessageStats) {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        kept_caches_mb,
        ..model_settings(8)
    };
    let (app, rec) = open(dir.path(), Some(&settings));
    assert!(rec.wait_model(LOAD).is_ready());
    let (a, b) = (app.create_chat().unwrap(), app.create_chat().unwrap());
    let first = send(&app, a.id, "Name a colour.");
    let first = stats_of(&rec.wait_done(first, ANSWER));
    let other = send(&app, b.id, "Which planet is the largest?");
    rec.wait_done(other, ANSWER);
    let again = send(&app, a.id, "Name another one.");
    (first, stats_of(&rec.wait_done(again, ANSWER)))
}

#[test]
fn switching_back_to_a_chat_prefills_only_its_new_message() {
    let (first, again) = switch_back(64);
    assert!(
        again.cached_tokens >= first.prompt_tokens,
        "A's first turn is reused after B's: {first:?} {again:?}"
    );
    let (first, again) = switch_back(0);
    assert!(
        again.cached_tokens < first.prompt_tokens,
        "with no memory for kept caches, B's turn replaced A's: {first:?} {again:?}"
    );
}

#[test]
fn stop_interrupts_within_a_token_and_keeps_the_partial_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), Some(&model_settings(400)));
    assert!(rec.wait_model(LOAD).is_ready());
    let chat = app.create_chat().unwrap();
    let id = send(
        &app,
        chat.id,
        "Write a long story about a dragon who learns to cook.",
    );
    rec.wait_event(id, 2, ANSWER);
    assert!(matches!(
        app.send(chat.id, "And then?"),
        Err(ChatError::Busy(_))
    ));
    let stopped_at = Instant::now();
    assert!(app.stop(chat.id));
    let events = rec.wait_done(id, ANSWER);
    let took = stopped_at.elapsed();
    let stats = stats_of(&events);
    assert_eq!(stats.finish, Some(chat::Finish::Cancelled));
    assert!(stats.completion_tokens < 400, "{stats:?}");
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    assert_eq!(
        final_status(&events),
        Some(MessageStatus::Interrupted),
        "{:?}",
        events.last()
    );
    let view = app.chat(chat.id).unwrap();
    let answer = view.messages.iter().find(|m| m.id == id).unwrap();
    assert_eq!(answer.status, MessageStatus::Interrupted);
    assert!(!answer.content.is_empty());
    assert_eq!(answer.content, tokens(&events));
    // The chat takes a new message once the answer is stored.
    let next = send(&app, chat.id, "Thanks.");
    app.stop(chat.id);
    rec.wait_done(next, ANSWER);
}

#[test]
fn regenerate_replaces_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(
        dir.path(),
        Some(&Settings {
            temperature: Some(1.0),
            ..model_settings(6)
        }),
    );
    assert!(rec.wait_model(LOAD).is_ready());
    let chat = app.create_chat().unwrap();
    let first = send(&app, chat.id, "Say hello.");
    rec.wait_done(first, ANSWER);
    let SendOutcome::Generating {
        user_message_id,
        assistant_message_id,
    } = app.regenerate(chat.id, first).unwrap()
    else {
        panic!()
    };
    assert!(assistant_message_id > first);
    rec.wait_done(assistant_message_id, ANSWER);
    let view = app.chat(chat.id).unwrap();
    let ids: Vec<_> = view.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, [user_message_id, assistant_message_id]);
    assert!(matches!(
        app.regenerate(chat.id, user_message_id),
        Err(ChatError::Invalid(_))
    ));
}

#[test]
fn a_missing_model_fails_with_the_reason_and_a_retry_loads_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere/model.gguf");
    let settings = Settings {
        model_path: Some(missing.clone()),
        ..model_settings(4)
    };
    let (app, rec) = open(dir.path(), Some(&settings));
    let ModelState::Failed { path, error, .. } = rec.wait_model(LOAD) else {
        panic!("{:?}", app.model_state())
    };
    assert_eq!(path, missing);
    // The engine's own error, typed: the file could not be read.
    let LoadError::Engine(engine_error) = &error else {
        panic!("{error:?}")
    };
    assert!(
        matches!(&**engine_error, EngineError::Io { path, .. } if *path == missing),
        "{engine_error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("cannot read") && text.contains("model.gguf"),
        "{text}"
    );
    let chat = app.create_chat().unwrap();
    let err = app.send(chat.id, "hello").unwrap_err();
    assert!(
        matches!(&err, ChatError::ModelNotReady(state) if matches!(**state, ModelState::Failed { .. })),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        err.contains("could not be loaded") && err.contains("retry"),
        "{err}"
    );
    assert!(matches!(
        app.send(chat.id, "/help").unwrap(),
        SendOutcome::Command { .. }
    ));

    app.load_model(common::model_path()).unwrap();
    assert!(matches!(app.model_state(), ModelState::Loading { .. }));
    assert!(rec.wait_model(LOAD).is_ready());
    assert_eq!(app.settings().model_path, Some(common::model_path()));
    let id = send(&app, chat.id, "hello");
    let last = rec.wait_done(id, ANSWER).pop().unwrap();
    assert!(matches!(last.kind, EventKind::Complete { .. }), "{last:?}");
}

#[test]
fn a_malformed_model_file_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00 this is not a model").unwrap();
    let settings = Settings {
        model_path: Some(bad),
        ..model_settings(4)
    };
    let (app, rec) = open(dir.path(), Some(&settings));
    let ModelState::Failed { error, .. } = rec.wait_model(LOAD) else {
        panic!("{:?}", app.model_state())
    };
    assert!(
        matches!(&error, LoadError::Engine(e) if matches!(**e, EngineError::Gguf { .. })),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("not a valid GGUF file"),
        "{error}"
    );
    let chat = app.create_chat().unwrap();
    assert!(matches!(
        app.send(chat.id, "/status").unwrap(),
        SendOutcome::Command { .. }
    ));
}

/// A job outside any chat (an API request) with its events on a channel.
fn api_job(
    prompt: chat::Prompt,
    max_tokens: usize,
) -> (
    chat::GenerationJob,
    std::sync::mpsc::Receiver<chat::JobEvent>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let params = chat::Sampling {
        temperature: Some(0.0),
        top_p: None,
        top_k: None,
        min_p: None,
        repeat_penalty: None,
        seed: Some(1),
        max_tokens,
        max_thinking_tokens: None,
        stop: Vec::new(),
        speculative: true,
    }
    .validate()
    .unwrap();
    let job = chat::GenerationJob {
        tools: None,
        follow_ups: None,
        prompt,
        params,
        source: "api test".into(),
        cancelled: Default::default(),
        sink: Box::new(move |e| {
            let _ = tx.send(e);
        }),
    };
    (job, rx)
}

/// Every event until the job's end.
fn until_end(rx: &std::sync::mpsc::Receiver<chat::JobEvent>) -> Vec<chat::JobEvent> {
    let mut out = Vec::new();
    loop {
        let e = rx.recv_timeout(ANSWER).expect("the job ends");
        let end = matches!(
            e,
            chat::JobEvent::Finished(_) | chat::JobEvent::Refused(_) | chat::JobEvent::Failed(_)
        );
        out.push(e);
        if end {
            return out;
        }
    }
}

#[test]
fn a_job_outside_any_chat_is_answered_and_stores_nothing_and_a_prompt_too_long_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), Some(&model_settings(8)));
    assert!(rec.wait_model(LOAD).is_ready());
    let messages = vec![engine::ChatMessage::new("user", "What is 2+2?")];
    let (job, rx) = api_job(
        chat::Prompt::Chat {
            messages,
            thinking: false,
            drop_oldest: false,
        },
        8,
    );
    app.submit(job).unwrap();
    let events = until_end(&rx);
    assert!(
        matches!(events[0], chat::JobEvent::Queued(0)),
        "told its place first: {events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, chat::JobEvent::Token(_))));
    match events.last().unwrap() {
        chat::JobEvent::Finished(stats) => assert!(stats.completion_tokens <= 8, "{stats:?}"),
        other => panic!("{other:?}"),
    }
    assert!(app.list_chats().unwrap().is_empty(), "no chat was made");

    // The next request, sent the moment the refusal is heard (from its sink, on the worker's
    // thread), finds the engine free: it was told it waited behind the refused one, and the API
    // then began a stream where the refusal's status was due.
    let (mut job, rx) = api_job(chat::Prompt::Text("hello ".repeat(20_000)), 8);
    let (next, next_rx) = api_job(chat::Prompt::Text("Hi".into()), 1);
    let (mut next, retry) = (Some(next), app.clone());
    let mut sink = job.sink;
    job.sink = Box::new(move |e| {
        let refused = matches!(e, chat::JobEvent::Refused(_));
        sink(e);
        if let Some(next) = next.take_if(|_| refused) {
            retry.submit(next).unwrap();
        }
    });
    app.submit(job).unwrap();
    match until_end(&rx).last().unwrap() {
        // Typed until shown: the API tells a prompt that does not fit from an engine failure.
        chat::JobEvent::Refused(why @ chat::JobError::PromptTooLong { .. }) => {
            assert!(why.to_string().contains("context"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let events = until_end(&next_rx);
    assert!(
        matches!(events[0], chat::JobEvent::Queued(0)),
        "the engine was free when the refusal was heard: {events:?}"
    );
}

/// The settings' device and backend reach the worker as they are: a GPU this build lacks fails
/// with the engine's reason (never a silent CPU load), "Use the CPU" saves and loads there, and
/// the Candle backend on the CPU is loaded as asked.
#[cfg(not(feature = "cuda"))]
#[test]
fn the_device_setting_reaches_the_worker_and_a_gpu_this_build_lacks_is_refused_with_the_reason() {
    use engine::{BackendKind, DeviceSpec};
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        device: DeviceSpec::Cuda(0),
        ..model_settings(4)
    };
    let (app, rec) = open(dir.path(), Some(&settings));
    let state = rec.wait_model(LOAD);
    let ModelState::Failed {
        error, placement, ..
    } = &state
    else {
        panic!("{state:?}")
    };
    assert_eq!(placement.device(), DeviceSpec::Cuda(0));
    assert!(
        matches!(error, LoadError::Engine(e) if matches!(**e, EngineError::Device(_))),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("CUDA") && text.contains("make build-cuda"),
        "{text}"
    );
    let told = state.describe();
    assert!(
        told.contains("cuda:0") && told.contains("Use the CPU"),
        "{told}"
    );
    // The device list says the same, and offers the CPU.
    let devices = app.devices();
    let cuda = devices.iter().find(|d| d.device == "cuda").unwrap();
    assert!(!cuda.usable && cuda.reason.as_deref().unwrap().contains("make build-cuda"));
    assert!(devices.iter().any(|d| d.device == "cpu" && d.usable));

    app.use_cpu().unwrap();
    let ModelState::Ready { placement, .. } = rec.wait_model(LOAD) else {
        panic!("{:?}", app.model_state())
    };
    assert_eq!(placement, engine::Placement::default());
    assert_eq!(app.settings().device, DeviceSpec::Cpu);
    let saved = Settings::load(&app.paths().settings_file()).unwrap();
    assert_eq!((saved.device, saved.backend), (DeviceSpec::Cpu, None));

    let candle = Settings {
        backend: Some(BackendKind::Candle),
        ..app.settings()
    };
    assert!(app.update_settings(candle).unwrap().needs_reload());
    let ModelState::Ready {
        placement, info, ..
    } = rec.wait_model(LOAD)
    else {
        panic!("{:?}", app.model_state())
    };
    assert_eq!(placement.backend(), BackendKind::Candle);
    assert_eq!(info.placement, "cpu (candle backend)");
}

fn follow_up_changes(rec: &common::Recorder, chat_id: i64) -> usize {
    rec.count(|e| matches!(e, chat::AppEvent::FollowUpsChanged { chat_id: c } if *c == chat_id))
}

/// Waits until the worker has nothing queued or running (an answer's follow-ups come after it).
fn wait_idle(app: &chat::ChatApp) {
    let start = Instant::now();
    while app.status().engine.queued > 0 {
        assert!(start.elapsed() < ANSWER, "the worker stays busy");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn follow_ups_are_generated_on_the_cached_prefix_and_go_when_the_user_sends() {
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), Some(&model_settings(24)));
    assert!(rec.wait_model(LOAD).is_ready());
    let chat = app.create_chat().unwrap();
    let id = send(&app, chat.id, "What is the capital of France?");
    let answer = stats_of(&rec.wait_done(id, ANSWER));
    rec.wait_for(ANSWER, |_| app.follow_ups(chat.id));
    let f = app.follow_ups(chat.id).unwrap();
    assert_eq!(f.message_id, id);
    // Structure, not wording: at most three short, distinct, non-empty lines.
    assert!(f.questions.len() <= 3, "{:?}", f.questions);
    for q in &f.questions {
        assert!(
            !q.is_empty() && q.chars().count() <= 120 && !q.contains('\n'),
            "{q:?}"
        );
    }
    let mut distinct = f.questions.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), f.questions.len());
    assert!(f.stats.completion_tokens > 0, "{:?}", f.stats);
    // Only their own turns were prefilled: the whole answer's prompt and (all but at most its
    // last token of) the answer came from the cache.
    assert!(
        f.stats.cached_tokens + 1 >= answer.prompt_tokens + answer.completion_tokens,
        "answer {answer:?}\nfollow-ups {:?}",
        f.stats
    );
    let new = f.stats.prompt_tokens - f.stats.cached_tokens;
    assert!(new < 60, "{new} new tokens prefilled: {:?}", f.stats);
    assert_eq!(app.chat(chat.id).unwrap().messages.len(), 2, "not stored");

    let before = follow_up_changes(&rec, chat.id);
    let next = send(&app, chat.id, "And of Italy?");
    assert!(app.follow_ups(chat.id).is_none(), "sending takes them away");
    assert_eq!(follow_up_changes(&rec, chat.id), before + 1);
    // The next turn still reuses the chat (the suggestions' turn is simply not matched).
    let second = stats_of(&rec.wait_done(next, ANSWER));
    assert!(second.cached_tokens >= answer.prompt_tokens, "{second:?}");
}

#[test]
fn typing_before_the_answer_ends_cancels_its_follow_ups() {
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), Some(&model_settings(48)));
    assert!(rec.wait_model(LOAD).is_ready());
    let chat = app.create_chat().unwrap();
    let id = send(&app, chat.id, "Tell me about the moon.");
    assert!(app.dismiss_follow_ups(chat.id), "asked for with the answer");
    rec.wait_done(id, ANSWER);
    wait_idle(&app);
    assert!(app.follow_ups(chat.id).is_none());
    assert_eq!(follow_up_changes(&rec, chat.id), 0, "none were generated");
    let cached = app.status().engine.cached_tokens;
    let answer = stats_of(&rec.stream(id));
    assert_eq!(
        cached, answer.context_used,
        "the worker ran nothing after the answer"
    );
}

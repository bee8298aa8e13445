//! Model files generated in the test (the engine tests' own tiny-model writer, shared, not copied),
//! through the chat core's real path (worker, stream, store): one that computes NaN, one without a
//! chat template.

mod common;

#[path = "../../engine/tests/common/mod.rs"]
mod engine_common;

use std::time::Duration;

use chat::{EventKind, MessageStatus, ModelState, Settings};
use engine_common::tiny_model::{with_tensor_values, without_kv, write, TinyModel};

const WAIT: Duration = Duration::from_secs(60);

/// Settings for the tiny model at `model`: greedy, short answers.
fn settings(model: std::path::PathBuf) -> Settings {
    Settings {
        model_path: Some(model),
        temperature: Some(0.0),
        max_tokens: 8,
        context_len: 256,
        ..Settings::default()
    }
}

#[test]
fn nan_logits_end_the_answer_as_failed_saying_nan() {
    let dir = tempfile::tempdir().unwrap();
    let shape = TinyModel::default();
    let nan_norm = vec![f32::NAN; shape.n_embd];
    let w = with_tensor_values(shape.writer(), "blk.1.ffn_norm.weight", &nan_norm);
    let model = write(dir.path(), "nan.gguf", &w);
    let (app, rec) = common::open(dir.path(), Some(&settings(model)));
    let state = rec.wait_model(WAIT);
    assert!(
        matches!(state, ModelState::Ready { .. }),
        "the file itself is well-formed: {state:?}"
    );

    let chat = app.create_chat().unwrap();
    let id = common::send(&app, chat.id, "Hello there");
    let events = rec.wait_done(id, WAIT);
    // Was (before the engine checked its logits): no tokens, then `complete` with finish "stop".
    match &events.last().unwrap().kind {
        EventKind::Error { message } => assert!(message.contains("NaN"), "{message}"),
        other => panic!("the answer ended with {other:?}, not an error: {events:?}"),
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Complete { .. })),
        "{events:?}"
    );

    let view = app.chat(chat.id).unwrap();
    let answer = view.messages.iter().find(|m| m.id == id).unwrap();
    assert_eq!(answer.status, MessageStatus::Failed);
    let error = answer.error.as_deref().unwrap_or_default();
    assert!(error.contains("NaN"), "stored error: {error:?}");
    assert!(answer.content.is_empty(), "{:?}", answer.content);
}

#[test]
fn a_model_without_a_template_answers_in_chatml_and_status_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let w = without_kv(TinyModel::default().writer(), "tokenizer.chat_template");
    let model = write(dir.path(), "untemplated.gguf", &w);
    let (app, rec) = common::open(dir.path(), Some(&settings(model)));
    let state = rec.wait_model(WAIT);
    assert!(matches!(state, ModelState::Ready { .. }), "{state:?}");
    let chat = app.create_chat().unwrap();
    // Was: every answer failed ("the model has no chat template").
    let id = common::send(&app, chat.id, "Hello there");
    let events = rec.wait_done(id, WAIT);
    assert_eq!(
        common::final_status(&events),
        Some(MessageStatus::Complete),
        "{events:?}"
    );
    let (_, status, _) = common::run(&app, chat.id, "/status");
    assert!(status.contains("ChatML is used"), "{status}");
    let (_, model, _) = common::run(&app, chat.id, "/model");
    assert!(
        model.contains("| Chat template | none in the model file: ChatML is used |"),
        "{model}"
    );
}

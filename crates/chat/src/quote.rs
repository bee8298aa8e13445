//! `/quote`: a built-in Markdown passage streamed through the same pipeline as a model's answer
//! (frames, ids, stats, storage, Stop), with no model. It is the streaming self-test: headings,
//! a list, a table and a fenced code block exercise the renderer while it grows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{DeltaKind, End, StreamInput};
use crate::stats::{Finish, MessageStats};
use crate::store::{ChatId, MessageId};

/// The pause between two pieces: quick, but slow enough to watch.
pub const PIECE_DELAY: Duration = Duration::from_millis(8);

/// The passage (written for this app).
pub const PASSAGE: &str = r#"# A Short Field Guide to Streaming

Every answer in this window arrives the way a letter is typed: a few characters at a time, each carried by a numbered event. This passage was not written by a model. It is built into the app and replayed through the same pipeline the model uses, so you can watch the machinery work without loading anything.

## What travels down the pipe

1. **Thinking** frames hold the model's reasoning, shown folded away.
2. **Token** frames hold the answer itself, batched so the page repaints smoothly.
3. A **stats** event reports the speed and how full the context is.
4. A **complete** event says the message is safely on disk.

## The events at a glance

| Event      | Carries            | Kept until              |
|------------|--------------------|-------------------------|
| `thinking` | reasoning text     | the message is stored   |
| `token`    | answer text        | the message is stored   |
| `stats`    | tokens per second  | the message is stored   |
| `complete` | the final status   | the message is stored   |

## Resuming after a reload

A window that reloads halfway through asks for everything after the last id it saw:

```rust
let missed = app.events_after(chat_id, last_seen);
if missed.reload {
    redraw(app.chat(chat_id)?); // the stored message is the truth
} else {
    missed.events.iter().for_each(apply);
}
```

> Nothing is lost, nothing arrives twice, and the order never changes.

That is the whole trick. Press **Stop** while this streams to see an interrupted message kept exactly as far as it got.
"#;

/// The passage cut into word-sized pieces (each with the whitespace that follows it); they
/// concatenate to the passage.
pub fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Streams the passage for `message_id` on its own thread; `cancelled` stops it between pieces.
pub(crate) fn spawn(
    tx: Sender<StreamInput>,
    chat_id: ChatId,
    message_id: MessageId,
    cancelled: Arc<AtomicBool>,
) {
    std::thread::Builder::new()
        .name("quote".into())
        .spawn(move || {
            let start = Instant::now();
            let mut sent = 0;
            let mut finish = Finish::Stop;
            for piece in pieces(PASSAGE) {
                if cancelled.load(Ordering::SeqCst) {
                    finish = Finish::Cancelled;
                    break;
                }
                let delta = StreamInput::Delta {
                    chat_id,
                    message_id,
                    kind: DeltaKind::Answer,
                    text: piece.to_owned(),
                    shown: false,
                };
                if tx.send(delta).is_err() {
                    return;
                }
                sent += 1;
                std::thread::sleep(PIECE_DELAY);
            }
            let decode_ms = start.elapsed().as_secs_f64() * 1e3;
            let stats = MessageStats {
                finish: Some(finish),
                completion_tokens: sent,
                decode_ms,
                decode_tok_s: sent as f64 * 1e3 / decode_ms.max(1e-3),
                ..MessageStats::default()
            };
            let _ = tx.send(StreamInput::Finish {
                chat_id,
                message_id,
                end: End::Finished(stats),
            });
        })
        .expect("spawn the quote thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_passage_has_every_markdown_block_and_pieces_rebuild_it() {
        for needle in ["\n# ", "\n## ", "\n1. ", "\n| ", "\n```rust\n", "\n> "] {
            assert!(format!("\n{PASSAGE}").contains(needle), "{needle:?}");
        }
        let p = pieces(PASSAGE);
        assert!(p.len() > 100);
        assert_eq!(p.concat(), PASSAGE);
    }
}

//! Turns the decoded text pieces of a generation into typed deltas: reasoning inside
//! `<think>`…`</think>` blocks, answer text outside them, and an end at the first stop
//! string.
//!
//! Tokens do not line up with tags: a tag or stop string may arrive split over several
//! pieces (even one character at a time), or several may arrive in one piece. Text that
//! could still turn out to be the start of one is therefore held back until it is certain.
//!
//! Whitespace is tidied the way chat UIs need it for SmolLM3, which emits
//! `<think>\n…\n</think>\n\nAnswer`: leading whitespace is dropped at the start of each
//! thinking block and at the start of the answer text that follows one, and the thinking
//! text never ends in whitespace (trailing whitespace is held back and only emitted if
//! more thinking text follows). Answer text that follows no thinking block is untouched.

const OPEN: &str = "<think>";
/// The tag that ends a thinking block (also what the engine writes itself at a thinking budget).
pub const CLOSE: &str = "</think>";

/// A piece of generated text, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    /// Reasoning from a thinking block.
    Thinking(String),
    /// Text of the answer proper.
    Answer(String),
}

/// What a complete match in the pending text is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    Stop,
    Open,
    Close,
}

/// Incremental classifier of generated text; see the module documentation.
#[derive(Clone, Debug)]
pub struct TextStream {
    stop_strings: Vec<String>,
    /// Byte length of the longest tag or stop string: only a suffix shorter than this can
    /// be the unfinished start of one.
    longest_marker: usize,
    /// Received text not yet classified; it always starts with a possible marker prefix.
    pending: String,
    thinking: bool,
    /// At the start of a thinking block, or of the answer after one: drop leading whitespace.
    trim_leading: bool,
    /// Whitespace that ended the thinking text so far.
    held_whitespace: String,
    stopped: bool,
    finished: bool,
}

impl TextStream {
    /// `stop_strings`: generation stops when one appears (the stop string itself and
    /// everything after it is never emitted); empty strings are ignored.
    /// `start_in_thinking`: the prompt already opened a `<think>` block.
    pub fn new(stop_strings: Vec<String>, start_in_thinking: bool) -> Self {
        let stop_strings: Vec<String> =
            stop_strings.into_iter().filter(|s| !s.is_empty()).collect();
        let longest_marker = stop_strings
            .iter()
            .map(String::len)
            .chain([OPEN.len(), CLOSE.len()])
            .max()
            .unwrap_or(0);
        Self {
            stop_strings,
            longest_marker,
            pending: String::new(),
            thinking: start_in_thinking,
            trim_leading: start_in_thinking,
            held_whitespace: String::new(),
            stopped: false,
            finished: false,
        }
    }

    /// Feeds a decoded piece; returns the deltas that are now certain. Consecutive deltas
    /// of the same kind are merged.
    pub fn push(&mut self, piece: &str) -> Vec<Delta> {
        let mut out = Vec::new();
        if self.stopped || self.finished {
            return out;
        }
        let mut text = std::mem::take(&mut self.pending);
        text.push_str(piece);
        let mut pos = 0;
        while let Some((start, end, marker)) = self.first_marker(&text[pos..]) {
            self.emit(&text[pos..pos + start], &mut out);
            pos += end;
            match marker {
                Marker::Stop => {
                    self.stopped = true;
                    // The thinking text must not end in whitespace here either.
                    self.held_whitespace.clear();
                    return out;
                }
                Marker::Open => {
                    // A nested `<think>` changes nothing; the tag is dropped all the same.
                    if !self.thinking {
                        self.thinking = true;
                        self.trim_leading = true;
                    }
                }
                Marker::Close => {
                    // Also for a `</think>` with no open block: models omit the opening tag
                    // when the prompt already opened it.
                    self.thinking = false;
                    self.trim_leading = true;
                    self.held_whitespace.clear();
                }
            }
        }
        let hold = pos + self.partial_marker_start(&text[pos..]);
        self.emit(&text[pos..hold], &mut out);
        text.drain(..hold);
        self.pending = text;
        out
    }

    /// A stop string was seen; further pushes return nothing.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Whether text arriving now would be thinking text.
    pub fn in_thinking(&self) -> bool {
        self.thinking
    }

    /// End of generation: flushes what was held back (a partial tag or stop string that
    /// never completed is emitted as text). Trailing whitespace of the thinking text is
    /// dropped. Later pushes and finishes return nothing.
    pub fn finish(&mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        if self.stopped || self.finished {
            return out;
        }
        self.finished = true;
        let text = std::mem::take(&mut self.pending);
        self.emit(&text, &mut out);
        self.held_whitespace.clear();
        out
    }

    /// The marker in `text` that completes first, as (start, end, kind). Earliest end is
    /// what keeps the result independent of how the text was split into pieces: fed one
    /// character at a time, that is the marker that would be seen first. Ties go to the
    /// longer marker, then to stop strings over tags.
    fn first_marker(&self, text: &str) -> Option<(usize, usize, Marker)> {
        let markers = self
            .stop_strings
            .iter()
            .map(|s| (s.as_str(), Marker::Stop))
            .chain([(OPEN, Marker::Open), (CLOSE, Marker::Close)]);
        let mut best: Option<(usize, usize, Marker)> = None;
        for (pattern, marker) in markers {
            if let Some(start) = text.find(pattern) {
                let end = start + pattern.len();
                if best.is_none_or(|(s, e, _)| (end, start) < (e, s)) {
                    best = Some((start, end, marker));
                }
            }
        }
        best
    }

    /// Byte offset of the earliest suffix of `text` that is an unfinished prefix of a tag
    /// or stop string (`text.len()` if none). Always a char boundary.
    fn partial_marker_start(&self, text: &str) -> usize {
        let earliest = text
            .len()
            .saturating_sub(self.longest_marker.saturating_sub(1));
        let markers = self
            .stop_strings
            .iter()
            .map(String::as_str)
            .chain([OPEN, CLOSE]);
        text.char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= earliest)
            .find(|&i| {
                let rest = &text[i..];
                markers
                    .clone()
                    .any(|m| m.len() > rest.len() && m.starts_with(rest))
            })
            .unwrap_or(text.len())
    }

    /// Emits certain text in the current mode, applying the whitespace rules.
    fn emit(&mut self, text: &str, out: &mut Vec<Delta>) {
        let mut text = text;
        if self.trim_leading {
            text = text.trim_start();
            if text.is_empty() {
                return;
            }
            self.trim_leading = false;
        }
        if !self.thinking {
            push_merged(out, Delta::Answer(text.to_owned()));
            return;
        }
        let body_len = text.trim_end().len();
        if body_len > 0 {
            let mut thinking = std::mem::take(&mut self.held_whitespace);
            thinking.push_str(&text[..body_len]);
            push_merged(out, Delta::Thinking(thinking));
        }
        self.held_whitespace.push_str(&text[body_len..]);
    }
}

/// Appends `delta`, merged into the last one if it is of the same kind; drops empty text.
fn push_merged(out: &mut Vec<Delta>, delta: Delta) {
    match (out.last_mut(), delta) {
        (_, Delta::Thinking(t) | Delta::Answer(t)) if t.is_empty() => {}
        (Some(Delta::Thinking(last)), Delta::Thinking(t)) => last.push_str(&t),
        (Some(Delta::Answer(last)), Delta::Answer(t)) => last.push_str(&t),
        (_, delta) => out.push(delta),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const END: &str = "<|im_end|>";

    fn thinking(s: &str) -> Delta {
        Delta::Thinking(s.to_owned())
    }

    fn answer(s: &str) -> Delta {
        Delta::Answer(s.to_owned())
    }

    /// Feeds `pieces`, then finishes; returns the deltas with same-kind neighbours merged
    /// (so that different splits of one text compare equal) and whether it stopped.
    fn run<'a>(
        pieces: impl IntoIterator<Item = &'a str>,
        start_in_thinking: bool,
    ) -> (Vec<Delta>, bool) {
        let mut stream =
            TextStream::new(vec![END.to_owned(), "STOP".to_owned()], start_in_thinking);
        let mut out = Vec::new();
        for piece in pieces {
            for delta in stream.push(piece) {
                push_merged(&mut out, delta);
            }
        }
        for delta in stream.finish() {
            push_merged(&mut out, delta);
        }
        (out, stream.stopped())
    }

    fn whole(text: &str, start_in_thinking: bool) -> Vec<Delta> {
        run([text], start_in_thinking).0
    }

    fn char_by_char(text: &str, start_in_thinking: bool) -> Vec<Delta> {
        let mut buf = [0u8; 4];
        let chars: Vec<String> = text
            .chars()
            .map(|c| c.encode_utf8(&mut buf).to_owned())
            .collect();
        run(chars.iter().map(String::as_str), start_in_thinking).0
    }

    const SAMPLE: &str = "<think>\nLet me see: 2 + 2.\n\nIt is 4 ✓.\n</think>\n\n\
                          The answer is **4**.<|im_end|>ignored";

    #[test]
    fn smollm3_output_at_every_split() {
        let expected = vec![
            thinking("Let me see: 2 + 2.\n\nIt is 4 ✓."),
            answer("The answer is **4**."),
        ];
        assert_eq!(run([SAMPLE], false), (expected.clone(), true));
        // Every pair of split points, which covers every single split point too.
        let bounds: Vec<usize> = SAMPLE.char_indices().map(|(i, _)| i).collect();
        for (n, &a) in bounds.iter().enumerate() {
            for &b in &bounds[n..] {
                let pieces = [&SAMPLE[..a], &SAMPLE[a..b], &SAMPLE[b..]];
                assert_eq!(
                    run(pieces, false),
                    (expected.clone(), true),
                    "split at {a}, {b}"
                );
            }
        }
    }

    #[test]
    fn one_char_at_a_time_equals_whole_string() {
        let texts = [
            SAMPLE,
            "plain <b>answer</b> with a < sign and <thinking> that is no tag",
            "a<think>b</think>c<think>\n d \n</think>\n e <thi",
            "é<think>日本\n</think>🙂 <|im_en",
            "\nreasoning\n\n</think>\n\nanswer STO",
            "</think></think><think><think>x</think>STOP y",
        ];
        for text in texts {
            for start in [false, true] {
                assert_eq!(char_by_char(text, start), whole(text, start), "{text:?}");
            }
        }
    }

    #[test]
    fn stop_string_split_across_pieces() {
        let mut stream = TextStream::new(vec![END.to_owned()], false);
        assert_eq!(stream.push("Done.<|im"), vec![answer("Done.")]);
        assert!(!stream.stopped());
        assert_eq!(stream.push("_end"), vec![]);
        assert_eq!(stream.push("|>\nmore"), vec![]);
        assert!(stream.stopped());
        assert_eq!(stream.push("after"), vec![]);
        assert_eq!(stream.finish(), vec![]);
    }

    #[test]
    fn stop_string_inside_thinking() {
        let (deltas, stopped) = run(["Hmm, ", "let me\n\n", "ST", "OP think"], true);
        assert_eq!(deltas, vec![thinking("Hmm, let me")]);
        assert!(stopped);
    }

    #[test]
    fn overlapping_stop_strings_end_at_the_first_completed() {
        let stops = vec!["ab".to_owned(), "xabc".to_owned()];
        for pieces in [vec!["xabc"], vec!["x", "a", "b", "c"]] {
            let mut stream = TextStream::new(stops.clone(), false);
            let out: Vec<Delta> = pieces.into_iter().flat_map(|p| stream.push(p)).collect();
            assert_eq!(out, vec![answer("x")]);
        }
    }

    #[test]
    fn partial_tag_or_stop_at_the_end_is_flushed_as_text() {
        let mut stream = TextStream::new(vec![END.to_owned()], false);
        assert_eq!(stream.push("answer <thi"), vec![answer("answer ")]);
        assert_eq!(stream.finish(), vec![answer("<thi")]);
        assert_eq!(stream.push("more"), vec![]);
        assert_eq!(whole("x <|im_e", false), vec![answer("x <|im_e")]);
        assert_eq!(whole("<think>x </th", false), vec![thinking("x </th")]);
    }

    #[test]
    fn multiple_think_blocks() {
        let text = "<think>a</think>b <think>\nc\n</think>\n\nd";
        let expected = vec![thinking("a"), answer("b "), thinking("c"), answer("d")];
        assert_eq!(whole(text, false), expected);
    }

    #[test]
    fn unicode_next_to_tags() {
        let text = "é<think>日本</think>🙂<|im_end|>";
        let expected = vec![answer("é"), thinking("日本"), answer("🙂")];
        assert_eq!(whole(text, false), expected);
        // Multi-byte text is never held back unless it could start a marker.
        let mut stream = TextStream::new(vec!["日本語".to_owned()], false);
        assert_eq!(stream.push("é日本"), vec![answer("é")]);
        assert_eq!(stream.push("人"), vec![answer("日本人")]);
    }

    #[test]
    fn no_thinking_at_all() {
        let text = " Hello!\n\nHow can I help? <|im_end|>";
        assert_eq!(
            whole(text, false),
            vec![answer(" Hello!\n\nHow can I help? ")]
        );
    }

    #[test]
    fn prompt_opened_thinking_and_stray_close_tags() {
        let text = "\n\nreasoning\n</think>\n\nanswer";
        assert_eq!(
            whole(text, true),
            vec![thinking("reasoning"), answer("answer")]
        );
        // Without an open block `</think>` just switches to the answer.
        assert_eq!(whole("abc</think>\n def", false), vec![answer("abcdef")]);
    }

    #[test]
    fn thinking_whitespace_is_held_until_more_thinking_follows() {
        let mut stream = TextStream::new(vec![], true);
        assert_eq!(stream.push("\n  step 1\n"), vec![thinking("step 1")]);
        assert_eq!(stream.push("\n"), vec![]);
        assert_eq!(stream.push("step 2\n"), vec![thinking("\n\nstep 2")]);
        assert!(stream.in_thinking());
        assert_eq!(stream.push("</think>\nok"), vec![answer("ok")]);
        assert!(!stream.in_thinking());
        // An unterminated block loses its trailing whitespace at the end too.
        let mut stream = TextStream::new(vec![], true);
        assert_eq!(stream.push("done\n\n"), vec![thinking("done")]);
        assert_eq!(stream.finish(), vec![]);
    }
}

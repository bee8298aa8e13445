//! Streaming detokenization: turn generated ids into text as they come, never emitting half a
//! UTF-8 character (byte-level BPE often splits an emoji or a CJK character across tokens).

use super::Tokenizer;

/// Turns token ids into text one at a time for streaming output. Each [`push`](Self::push) returns
/// only complete UTF-8: bytes of a character split across tokens wait for the rest, and bytes that
/// can never become valid come out as U+FFFD. All outputs plus [`finish`](Self::finish) equal
/// [`Tokenizer::decode`] of all the ids.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    include_special: bool,
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder that hides control tokens, like `decode(ids, false)`.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self::with_special(tokenizer, false)
    }

    /// A decoder that shows control tokens' text when `include_special`.
    pub fn with_special(tokenizer: &'a Tokenizer, include_special: bool) -> Self {
        Self {
            tokenizer,
            include_special,
            pending: Vec::new(),
        }
    }

    /// Adds one token and returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        let piece = self.tokenizer.piece(id, self.include_special);
        self.pending.extend_from_slice(piece);
        self.drain(false)
    }

    /// Returns whatever is still held (an unfinished character becomes U+FFFD) and starts over.
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    /// Emits the valid prefix of the pending bytes. Invalid sequences are replaced the way
    /// `String::from_utf8_lossy` replaces them, so streaming and [`Tokenizer::decode`] agree.
    fn drain(&mut self, finished: bool) -> String {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            let rest = &self.pending[start..];
            let error = match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    start = self.pending.len();
                    break;
                }
                Err(error) => error,
            };
            let valid = error.valid_up_to();
            out.push_str(&String::from_utf8_lossy(&rest[..valid]));
            match error.error_len() {
                Some(bad) => {
                    out.push(char::REPLACEMENT_CHARACTER);
                    start += valid + bad;
                }
                // The rest is the start of a character that the next token may complete.
                None if !finished => {
                    start += valid;
                    break;
                }
                None => {
                    out.push(char::REPLACEMENT_CHARACTER);
                    start = self.pending.len();
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::SpecialTokens;

    /// Byte-level tokens: "a", the two halves of "é" (C3 A9 is written "Ã©"), and a control token.
    fn tokenizer() -> Tokenizer {
        let tokens = ["a", "Ã", "©", "<|c|>"].map(String::from).to_vec();
        Tokenizer::from_parts(
            tokens,
            Some(vec![1, 1, 1, 3]),
            &[],
            "gpt2",
            SpecialTokens::default(),
        )
        .expect("tokenizer")
    }

    #[test]
    fn holds_partial_characters() {
        let t = tokenizer();
        let mut dec = StreamDecoder::new(&t);
        assert_eq!(dec.push(1), "");
        assert_eq!(dec.push(2), "é");
        assert_eq!(dec.push(0), "a");
    }

    #[test]
    fn replaces_what_cannot_complete() {
        let t = tokenizer();
        let mut dec = StreamDecoder::new(&t);
        assert_eq!(dec.push(1), "");
        assert_eq!(dec.push(0), "\u{FFFD}a");
        assert_eq!(dec.push(2), "\u{FFFD}");
        assert_eq!(dec.push(1), "");
        assert_eq!(dec.finish(), "\u{FFFD}");
        assert_eq!(dec.finish(), "");
        assert_eq!(t.decode(&[1, 0, 2, 1], false), "\u{FFFD}a\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn special_tokens_and_bad_ids() {
        let t = tokenizer();
        assert_eq!(StreamDecoder::new(&t).push(3), "");
        assert_eq!(StreamDecoder::with_special(&t, true).push(3), "<|c|>");
        assert_eq!(StreamDecoder::new(&t).push(u32::MAX), "");
    }
}

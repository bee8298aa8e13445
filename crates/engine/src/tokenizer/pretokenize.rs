//! Pre-tokenization for byte-level BPE: split text into words the way llama.cpp does for a given
//! `tokenizer.ggml.pre`, then map each word's bytes to GPT-2's printable byte alphabet.
//!
//! llama.cpp lists, per pre-tokenizer, a sequence of regexes (`llm_tokenizer_bpe` in
//! `src/llama-vocab.cpp`); each one splits every piece left by the previous one, keeping both the
//! matches and the gaps (`unicode_regex_split` in `src/unicode.cpp`). The GPT-2 and Llama 3 regexes
//! run through hand-written matchers there (`unicode_regex_split_custom_gpt2` / `_llama3`), the
//! others through `std::regex` on text whose non-ASCII characters are first collapsed to one byte
//! per Unicode category. Both depend on llama.cpp's own category table, not a regex engine's, so
//! every splitter here is hand-written over [`super::unicode_data`]; that also makes the exact
//! corner cases (look-ahead at a piece's end, which characters count as `\s`) easy to reproduce.

use super::unicode_data::{char_class, is_whitespace, CharClass};

/// The pre-tokenizer names accepted, each with the llama.cpp pre-tokenizer type it maps to (the
/// names llama.cpp gives these four types, less those that also need other model-specific rules).
const NAMES: &[(&str, Kind)] = &[
    ("default", Kind::Default),
    // Not a llama.cpp name (it says "gpt-2"), accepted as the obvious spelling.
    ("gpt2", Kind::Gpt2),
    ("gpt-2", Kind::Gpt2),
    ("phi-2", Kind::Gpt2),
    ("mpt", Kind::Gpt2),
    ("olmo", Kind::Gpt2),
    ("jais", Kind::Gpt2),
    ("exaone4", Kind::Gpt2),
    ("roberta-bpe", Kind::Gpt2),
    ("smollm", Kind::Digits),
    ("starcoder", Kind::Digits),
    ("refact", Kind::Digits),
    ("command-r", Kind::Digits),
    ("codeshell", Kind::Digits),
    ("exaone", Kind::Digits),
    ("minerva-7b", Kind::Digits),
    ("mellum2", Kind::Digits),
    ("llama3", Kind::Llama3),
    ("llama-v3", Kind::Llama3),
    ("llama-bpe", Kind::Llama3),
    ("falcon3", Kind::Llama3),
    ("pixtral", Kind::Llama3),
    ("dbrx", Kind::Llama3),
    ("smaug-bpe", Kind::Llama3),
];

/// How a pre-tokenizer type splits text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `LLAMA_VOCAB_PRE_TYPE_DEFAULT`: punctuation runs, then GPT-2, then digit runs, then triples.
    Default,
    /// The GPT-2 regex alone.
    Gpt2,
    /// Every `\p{N}` on its own, then the GPT-2 regex (smollm, starcoder, ...).
    Digits,
    /// The Llama 3 regex.
    Llama3,
}

/// A pre-tokenizer selected by its GGUF `tokenizer.ggml.pre` name.
#[derive(Debug, Clone)]
pub(super) struct PreTokenizer {
    kind: Kind,
    /// llama.cpp's `ignore_merges`: a word that is itself a vocabulary entry becomes that token
    /// without running the merges (set for the Llama 3 names, not for dbrx / smaug-bpe).
    pub(super) ignore_merges: bool,
}

impl PreTokenizer {
    /// Looks up a pre-tokenizer by name. An empty name means the key is missing, for which
    /// llama.cpp uses `default`; any other unknown name is an error, as in llama.cpp.
    pub(super) fn from_name(name: &str) -> Result<Self, String> {
        let name = if name.is_empty() { "default" } else { name };
        match NAMES.iter().find(|(n, _)| *n == name) {
            Some(&(n, kind)) => Ok(Self {
                kind,
                ignore_merges: kind == Kind::Llama3 && n != "dbrx" && n != "smaug-bpe",
            }),
            None => {
                let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                Err(format!(
                    "unknown pre-tokenizer '{name}'; supported: {}",
                    known.join(", ")
                ))
            }
        }
    }

    /// Splits `text` into words and returns each one byte-level encoded (the form the vocabulary
    /// and the merges are written in).
    pub(super) fn split(&self, text: &str) -> Vec<String> {
        let cpts: Vec<char> = text.chars().collect();
        let whole = vec![cpts.len()];
        let lens = match self.kind {
            Kind::Gpt2 => split_gpt2(&cpts, &whole),
            Kind::Digits => {
                let lens = isolate_each(&cpts, &whole, |c| char_class(c) == CharClass::Number);
                split_gpt2(&cpts, &lens)
            }
            Kind::Default => {
                let lens = isolate_runs(&cpts, &whole, is_default_punct);
                let lens = split_gpt2(&cpts, &lens);
                let lens = isolate_runs(&cpts, &lens, |c| char_class(c) == CharClass::Number);
                isolate_digit_triples(&cpts, &lens)
            }
            Kind::Llama3 => split_llama3(&cpts, &whole),
        };
        let mut words = Vec::with_capacity(lens.len());
        let mut start = 0;
        for len in lens {
            let mut word = String::new();
            let mut buf = [0u8; 4];
            for c in &cpts[start..start + len] {
                for &b in c.encode_utf8(&mut buf).as_bytes() {
                    word.push(byte_to_char(b));
                }
            }
            words.push(word);
            start += len;
        }
        words
    }
}

/// `[\p{P}\$\+<=>\^~\|]` as llama.cpp evaluates it (ASCII `$+<=>^~|` are symbols, not `\p{P}`).
fn is_default_punct(c: char) -> bool {
    char_class(c) == CharClass::Punctuation || "$+<=>^~|".contains(c)
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the other 68 bytes
/// are moved to U+0100.. in byte order, so every byte string becomes printable text.
pub(super) fn byte_to_char(b: u8) -> char {
    BYTE_TO_CHAR[usize::from(b)]
}

/// The inverse of [`byte_to_char`]; `None` for characters outside the 256-character alphabet.
pub(super) fn char_to_byte(c: char) -> Option<u8> {
    let cp = u32::from(c);
    if is_printable_byte(cp) {
        return u8::try_from(cp).ok();
    }
    let shifted = usize::try_from(cp.checked_sub(256)?).ok()?;
    SHIFTED_BYTES.get(shifted).copied()
}

const fn is_printable_byte(cp: u32) -> bool {
    matches!(cp, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The 68 bytes that are not printable, in order: byte `SHIFTED_BYTES[i]` is written as U+0100 + i.
const SHIFTED_BYTES: [u8; 68] = {
    let mut table = [0u8; 68];
    let (mut b, mut i) = (0usize, 0usize);
    while b < 256 {
        if !is_printable_byte(b as u32) {
            table[i] = b as u8;
            i += 1;
        }
        b += 1;
    }
    table
};

const BYTE_TO_CHAR: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut b = 0usize;
    while b < 256 {
        if is_printable_byte(b as u32) {
            table[b] = b as u8 as char;
        }
        b += 1;
    }
    let mut i = 0usize;
    while i < SHIFTED_BYTES.len() {
        // U+0100..U+0143 are all valid scalar values, so the fallback never applies.
        table[SHIFTED_BYTES[i] as usize] = match char::from_u32(256 + i as u32) {
            Some(c) => c,
            None => '\u{FFFD}',
        };
        i += 1;
    }
    table
};

/// Splits every piece (given by its length in code points) so that each character matching `pred`
/// stands alone, like a `std::regex` split on a single-character class.
fn isolate_each(cpts: &[char], pieces: &[usize], pred: impl Fn(char) -> bool) -> Vec<usize> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut start = 0;
    for &len in pieces {
        let mut gap = 0;
        for &c in &cpts[start..start + len] {
            if pred(c) {
                push_nonzero(&mut out, gap);
                out.push(1);
                gap = 0;
            } else {
                gap += 1;
            }
        }
        push_nonzero(&mut out, gap);
        start += len;
    }
    out
}

/// Splits every piece so that each maximal run of characters matching `pred` stands alone
/// (a `std::regex` split on `[class]+`).
fn isolate_runs(cpts: &[char], pieces: &[usize], pred: impl Fn(char) -> bool) -> Vec<usize> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut start = 0;
    for &len in pieces {
        let piece = &cpts[start..start + len];
        let mut pos = 0;
        while pos < len {
            let matching = pred(piece[pos]);
            let run = piece[pos..]
                .iter()
                .take_while(|&&c| pred(c) == matching)
                .count();
            out.push(run);
            pos += run;
        }
        start += len;
    }
    out
}

/// `[0-9][0-9][0-9]`: leftmost non-overlapping triples of ASCII digits stand alone.
fn isolate_digit_triples(cpts: &[char], pieces: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut start = 0;
    for &len in pieces {
        let piece = &cpts[start..start + len];
        let (mut pos, mut gap) = (0, 0);
        while pos < len {
            if pos + 3 <= len && piece[pos..pos + 3].iter().all(char::is_ascii_digit) {
                push_nonzero(&mut out, gap);
                out.push(3);
                gap = 0;
                pos += 3;
            } else {
                gap += 1;
                pos += 1;
            }
        }
        push_nonzero(&mut out, gap);
        start += len;
    }
    out
}

fn push_nonzero(out: &mut Vec<usize>, len: usize) {
    if len > 0 {
        out.push(len);
    }
}

/// What the hand-written matchers know about one position of a piece; positions outside the
/// piece read as `None`, which is how llama.cpp's matchers stop at piece boundaries (so `\s+(?!\S)`
/// takes a trailing run of spaces whole).
#[derive(Clone, Copy)]
struct Cursor<'a> {
    piece: &'a [char],
}

impl Cursor<'_> {
    fn get(&self, pos: usize) -> Option<char> {
        self.piece.get(pos).copied()
    }
    fn is(&self, pos: usize, class: CharClass) -> bool {
        self.get(pos).is_some_and(|c| char_class(c) == class)
    }
    fn is_space(&self, pos: usize) -> bool {
        self.get(pos).is_some_and(is_whitespace)
    }
    /// `[^\s\p{L}\p{N}]`: every in-range character has some category in llama.cpp's table.
    fn is_other(&self, pos: usize) -> bool {
        self.get(pos).is_some_and(|c| {
            !is_whitespace(c) && !matches!(char_class(c), CharClass::Letter | CharClass::Number)
        })
    }
    fn count_while(&self, mut pos: usize, f: impl Fn(&Self, usize) -> bool) -> usize {
        while f(self, pos) {
            pos += 1;
        }
        pos
    }
    /// Length of a contraction (`'s`, `'re`, ...) at `pos`, with ASCII case folding when asked.
    fn contraction(&self, pos: usize, fold_case: bool) -> Option<usize> {
        if self.get(pos) != Some('\'') {
            return None;
        }
        let at = |p: usize| {
            self.get(p)
                .map(|c| if fold_case { c.to_ascii_lowercase() } else { c })
        };
        match (at(pos + 1), at(pos + 2)) {
            (Some('s' | 't' | 'm' | 'd'), _) => Some(2),
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => Some(3),
            _ => None,
        }
    }
    /// `\s+(?!\S)|\s+` given the whitespace run starting at `pos`: a run followed by more text
    /// leaves its last character to start the next word.
    fn whitespace_end(&self, pos: usize) -> Option<usize> {
        let end = self.count_while(pos, Self::is_space);
        if end - pos > 1 && self.get(end).is_some() {
            Some(end - 1)
        } else if end > pos {
            Some(end)
        } else {
            None
        }
    }
}

/// Runs `matcher` (which returns the end of the word starting at a position) over every piece.
fn split_with(
    cpts: &[char],
    pieces: &[usize],
    matcher: impl Fn(&Cursor, usize) -> usize,
) -> Vec<usize> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut start = 0;
    for &len in pieces {
        let cur = Cursor {
            piece: &cpts[start..start + len],
        };
        let mut pos = 0;
        while pos < len {
            let end = matcher(&cur, pos).clamp(pos + 1, len);
            out.push(end - pos);
            pos = end;
        }
        start += len;
    }
    out
}

/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// (`unicode_regex_split_custom_gpt2`).
fn split_gpt2(cpts: &[char], pieces: &[usize]) -> Vec<usize> {
    split_with(cpts, pieces, |cur, pos| {
        if let Some(n) = cur.contraction(pos, false) {
            return pos + n;
        }
        let body = pos + usize::from(cur.get(pos) == Some(' '));
        if cur.is(body, CharClass::Letter) {
            return cur.count_while(body, |c, p| c.is(p, CharClass::Letter));
        }
        if cur.is(body, CharClass::Number) {
            return cur.count_while(body, |c, p| c.is(p, CharClass::Number));
        }
        if cur.is_other(body) {
            return cur.count_while(body, Cursor::is_other);
        }
        cur.whitespace_end(pos).unwrap_or(pos + 1)
    })
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
/// \s*[\r\n]+|\s+(?!\S)|\s+` (`unicode_regex_split_custom_llama3`).
fn split_llama3(cpts: &[char], pieces: &[usize]) -> Vec<usize> {
    let is_newline = |c: Option<char>| matches!(c, Some('\r' | '\n'));
    split_with(cpts, pieces, |cur, pos| {
        if let Some(n) = cur.contraction(pos, true) {
            return pos + n;
        }
        let c = cur.get(pos);
        if !is_newline(c) && !cur.is(pos, CharClass::Number) {
            // `[^\r\n\p{L}\p{N}]?\p{L}+`: an optional non-letter prefix (a letter here simply
            // starts the run) followed by letters.
            if cur.is(pos, CharClass::Letter) || cur.is(pos + 1, CharClass::Letter) {
                return cur.count_while(pos + 1, |c, p| c.is(p, CharClass::Letter));
            }
        }
        if cur.is(pos, CharClass::Number) {
            let end = cur.count_while(pos, |c, p| c.is(p, CharClass::Number));
            return end.min(pos + 3);
        }
        let body = pos + usize::from(c == Some(' '));
        if cur.is_other(body) {
            let end = cur.count_while(body, Cursor::is_other);
            return cur.count_while(end, |c, p| is_newline(c.get(p)));
        }
        // `\s*[\r\n]+`: the whitespace run up to and including its last newline.
        let ws_end = cur.count_while(pos, Cursor::is_space);
        if let Some(last_nl) = (pos..ws_end).rev().find(|&p| is_newline(cur.get(p))) {
            return last_nl + 1;
        }
        cur.whitespace_end(pos).unwrap_or(pos + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits with the named pre-tokenizer and returns the words decoded back to plain text.
    fn words(pre: &str, text: &str) -> Vec<String> {
        let pre = PreTokenizer::from_name(pre).expect("known pre-tokenizer");
        pre.split(text)
            .iter()
            .map(|w| {
                let bytes: Vec<u8> = w.chars().map(|c| char_to_byte(c).expect("byte")).collect();
                String::from_utf8(bytes).expect("utf-8")
            })
            .collect()
    }

    #[test]
    fn byte_alphabet_round_trips() {
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn gpt2_splits() {
        assert_eq!(
            words("gpt2", "Hello world's  end!!  \n x"),
            ["Hello", " world", "'s", " ", " end", "!!", "  \n", " x"]
        );
        assert_eq!(words("gpt2", "a 123 b  "), ["a", " 123", " b", "  "]);
        // Contractions are case-sensitive in the GPT-2 regex.
        assert_eq!(words("gpt2", "I'M"), ["I", "'", "M"]);
    }

    #[test]
    fn smollm_isolates_each_digit() {
        assert_eq!(
            words("smollm", "x 1234 y3.5"),
            ["x", " ", "1", "2", "3", "4", " y", "3", ".", "5"]
        );
        // The look-ahead of `\s+(?!\S)` stops at the digit's piece boundary.
        assert_eq!(words("smollm", "a  1"), ["a", "  ", "1"]);
        assert_eq!(words("smollm", "٣"), ["٣"]);
    }

    #[test]
    fn default_splits_punctuation_and_digits() {
        assert_eq!(
            words("default", "a+b=12345, ok"),
            ["a", "+", "b", "=", "123", "45", ",", " ok"]
        );
    }

    #[test]
    fn llama3_matches_its_regex() {
        let re = fancy_regex::Regex::new(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )
        .expect("regex");
        for text in [
            "Hello, WORLD's 1234567 times!\n\n  indented\r\n\tx  ",
            "I'M you'RE 3.14159 -42 (a+b)*c;\n}\n",
            "Ça va très bien ¿Dónde? 你好世界 🦀🚀 naïve",
            "   \n\n end  ",
        ] {
            let expected: Vec<String> = re
                .find_iter(text)
                .map(|m| m.expect("match").as_str().to_string())
                .collect();
            assert_eq!(words("llama-bpe", text), expected, "text {text:?}");
        }
    }

    #[test]
    fn unknown_name_lists_supported_ones() {
        let err = PreTokenizer::from_name("nope").expect_err("unknown");
        assert!(err.contains("smollm") && err.contains("llama-bpe"), "{err}");
        assert!(PreTokenizer::from_name("llama-bpe").is_ok_and(|p| p.ignore_merges));
        assert!(PreTokenizer::from_name("smollm").is_ok_and(|p| !p.ignore_merges));
    }
}

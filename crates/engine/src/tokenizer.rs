//! Byte-level BPE tokenizer (GGUF `tokenizer.ggml.model == "gpt2"`) that reproduces llama.cpp's
//! tokenization id for id, plus detokenization and a streaming UTF-8-safe detokenizer.
//!
//! Encoding follows `llama_vocab::impl::tokenize` in llama.cpp's `src/llama-vocab.cpp`:
//! 1. `tokenizer_st_partition`: special tokens (control, user-defined and unknown ones; only
//!    user-defined ones unless `parse_special`) are cut out of the text, longest text first;
//! 2. each remaining text fragment is split into words by the pre-tokenizer named in
//!    `tokenizer.ggml.pre` (`pretokenize`, over llama.cpp's Unicode table in `unicode_data`) and
//!    byte-level encoded;
//! 3. `llm_tokenizer_bpe_session::tokenize`: each word is merged pair by pair (`bpe`); a final
//!    piece missing from the vocabulary falls back to its single-byte tokens, and bytes without a
//!    token are dropped, exactly as llama.cpp does.
//!
//! Decoding follows `token_to_piece`: control and unknown tokens render only when asked for,
//! user-defined tokens always render their text, normal tokens are byte-level decoded and
//! `<0xXX>` byte tokens give their byte. llama.cpp's `clean_spaces` post-processing of
//! `llama_detokenize` is not applied: pieces are concatenated, as llama.cpp's generation output is.

mod bpe;
mod from_gguf;
mod hf_json;
mod pretokenize;
mod stream;
mod unicode_data;

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;

use crate::error::EngineError;
use bpe::{split_merge, Merges};
use pretokenize::{char_to_byte, PreTokenizer};
pub use stream::StreamDecoder;

/// A token's kind, from the GGUF `tokenizer.ggml.token_type` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// Code 1.
    Normal,
    /// Code 2.
    Unknown,
    /// Code 3: special tokens such as `<|im_start|>`.
    Control,
    /// Code 4: added tokens that are matched in any text, even without `parse_special`.
    UserDefined,
    /// Code 5.
    Unused,
    /// Code 6: `<0xXX>` byte tokens.
    Byte,
    /// Code 0 or any unknown code (llama.cpp's `LLAMA_TOKEN_TYPE_UNDEFINED`).
    Undefined,
}

impl TokenType {
    /// Maps a GGUF code to its type; unknown codes become [`TokenType::Undefined`], as in llama.cpp.
    pub fn from_code(code: i32) -> Self {
        match code {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }

    fn attr(self) -> u16 {
        match self {
            Self::Undefined => 0,
            Self::Unknown => ATTR_UNKNOWN,
            Self::Unused => ATTR_UNUSED,
            Self::Normal => ATTR_NORMAL,
            Self::Control => ATTR_CONTROL,
            Self::UserDefined => ATTR_USER_DEFINED,
            Self::Byte => ATTR_BYTE,
        }
    }
}

// llama.cpp keeps token attributes as bit flags (`llama_token_attr`) because it can add flags to
// a token's type: a token whose text looks like an end-of-turn marker becomes control as well.
const ATTR_UNKNOWN: u16 = 1 << 1;
const ATTR_UNUSED: u16 = 1 << 2;
const ATTR_NORMAL: u16 = 1 << 3;
const ATTR_CONTROL: u16 = 1 << 4;
const ATTR_USER_DEFINED: u16 = 1 << 5;
const ATTR_BYTE: u16 = 1 << 6;
const ATTR_LSTRIP: u16 = 1 << 8;
const ATTR_RSTRIP: u16 = 1 << 9;

/// Token texts llama.cpp treats as end of generation and forces to control type, whatever the
/// GGUF says (`special_eog_ids` in `llama_vocab::impl::load`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// The special token ids from the GGUF `tokenizer.ggml.*_token_id` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; [`Tokenizer::encode`] never adds BOS itself.
    pub add_bos: bool,
}

/// A byte-level BPE vocabulary with its merges and pre-tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    attrs: Vec<u16>,
    token_to_id: HashMap<String, u32>,
    merges: Merges,
    pre: PreTokenizer,
    /// Tokens matched by `tokenizer_st_partition`, longest text first.
    special_cache: Vec<u32>,
    /// Each token's piece (as rendered with special tokens shown), back to back.
    piece_bytes: Vec<u8>,
    piece_ends: Vec<usize>,
    special: SpecialTokens,
    eog: Vec<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("merges", &self.merges.len())
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from the GGUF `tokenizer.ggml.*` arrays: `tokens`, `token_type` (all
    /// normal when absent), `merges` (`"left right"`, ranked by position) and the `pre` name.
    pub fn from_parts(
        tokens: Vec<String>,
        token_types: Option<Vec<i32>>,
        merges: &[String],
        pre: &str,
        special: SpecialTokens,
    ) -> Result<Self, EngineError> {
        let types = match token_types {
            None => vec![TokenType::Normal; tokens.len()],
            Some(codes) if codes.len() < tokens.len() => {
                return Err(EngineError::Tokenizer(format!(
                    "{} token types for {} tokens",
                    codes.len(),
                    tokens.len()
                )))
            }
            // Extra codes are ignored, as llama.cpp ignores them.
            Some(codes) => codes
                .into_iter()
                .take(tokens.len())
                .map(TokenType::from_code)
                .collect(),
        };
        let merges = merges.iter().map(|m| split_merge(m));
        Self::build(tokens, types, merges, pre, special)
    }

    /// Builds the tokenizer from a Hugging Face `tokenizer.json` (a BPE model). Added tokens
    /// become control tokens when marked special or when they look special the way llama.cpp's
    /// converter decides (`<|...|>` and a few others), user-defined otherwise; ids missing from
    /// the vocabulary become unused `[PAD<id>]` tokens, also as the converter does.
    pub fn from_tokenizer_json(
        json: &str,
        pre: &str,
        special: SpecialTokens,
    ) -> Result<Self, EngineError> {
        let (tokens, types, merges) = hf_json::parse(json)?;
        Self::build(tokens, types, merges.into_iter(), pre, special)
    }

    fn build(
        mut tokens: Vec<String>,
        types: Vec<TokenType>,
        merges: impl Iterator<Item = Option<(String, String)>>,
        pre: &str,
        mut special: SpecialTokens,
    ) -> Result<Self, EngineError> {
        let pre = PreTokenizer::from_name(pre).map_err(EngineError::Tokenizer)?;
        if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
            return Err(EngineError::Tokenizer(format!(
                "unusable vocabulary size {}",
                tokens.len()
            )));
        }
        if tokens.iter().all(String::is_empty) {
            return Err(EngineError::Tokenizer(format!(
                "all {} tokens of the vocabulary are empty strings: no text can be encoded",
                tokens.len()
            )));
        }
        if types.len() != tokens.len() {
            return Err(EngineError::Tokenizer(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let mut token_to_id = HashMap::with_capacity(tokens.len());
        for (id, text) in (0u32..).zip(tokens.iter_mut()) {
            if text.is_empty() {
                // llama.cpp renames empty tokens so that every text stays a unique key.
                *text = format!("[EMPTY_{id}]");
            }
            if token_to_id.insert(text.clone(), id).is_some() {
                return Err(EngineError::Tokenizer(format!(
                    "token {text:?} appears twice in the vocabulary"
                )));
            }
        }
        let mut attrs: Vec<u16> = types.iter().map(|t| t.attr()).collect();
        let mut eog: Vec<u32> = Vec::new();
        for text in EOG_TEXTS {
            if let Some(&id) = token_to_id.get(*text) {
                attrs[id as usize] |= ATTR_CONTROL;
                eog.push(id);
            }
        }
        // The ids the engine relies on (BOS for the prompt and template, EOS/EOT to stop) must
        // name tokens; llama.cpp would substitute an arbitrary default id. Padding and unknown
        // ids are unused here and, as in llama.cpp, ignored when out of range.
        for (name, id) in [
            ("bos", special.bos),
            ("eos", special.eos),
            ("eot", special.eot),
        ] {
            if let Some(id) = id.filter(|&i| i as usize >= tokens.len()) {
                return Err(EngineError::Tokenizer(format!(
                    "tokenizer.ggml.{name}_token_id is {id}, outside the vocabulary of {} tokens",
                    tokens.len()
                )));
            }
        }
        for (name, id) in [("padding", &mut special.pad), ("unknown", &mut special.unk)] {
            if let Some(bad) = id.filter(|&i| i as usize >= tokens.len()) {
                tracing::warn!(
                    id = bad,
                    "tokenizer.ggml.{name}_token_id is outside the vocabulary; ignored"
                );
                *id = None;
            }
        }
        eog.extend(special.eos.iter().chain(special.eot.iter()));
        eog.sort_unstable();
        eog.dedup();

        let mut special_cache: Vec<u32> = (0u32..)
            .zip(&attrs)
            .filter(|(_, &a)| a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .map(|(id, _)| id)
            .collect();
        // Longest first so that a token is never cut by a shorter one inside it. llama.cpp's sort
        // is not stable; ties keep id order here.
        special_cache.sort_by_key(|&id| Reverse(tokens[id as usize].len()));

        let mut tok = Self {
            tokens,
            types,
            attrs,
            token_to_id,
            merges: Merges::new(merges),
            pre,
            special_cache,
            piece_bytes: Vec::new(),
            piece_ends: Vec::new(),
            special,
            eog,
        };
        let mut piece_bytes = Vec::new();
        let mut piece_ends = Vec::with_capacity(tok.tokens.len());
        for id in 0..tok.tokens.len() {
            tok.render_piece(id, &mut piece_bytes);
            piece_ends.push(piece_bytes.len());
        }
        tok.piece_bytes = piece_bytes;
        tok.piece_ends = piece_ends;
        Ok(tok)
    }

    /// Tokenizes `text`. Never adds BOS. With `parse_special`, control tokens written in the text
    /// (`<|im_start|>`) become those tokens; without it they are tokenized as plain text, while
    /// user-defined tokens are matched either way (as in llama.cpp and Hugging Face).
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(text) => {
                    for word in self.pre.split(text) {
                        self.encode_word(&word, &mut out);
                    }
                }
            }
        }
        out
    }

    /// Cuts special tokens out of `text` (`tokenizer_st_partition`): each token in turn, longest
    /// first, splits every remaining text fragment at all its non-overlapping occurrences.
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut fragments = Vec::new();
        if !text.is_empty() {
            fragments.push(Fragment::Text(text));
        }
        for &id in &self.special_cache {
            let attr = self.attrs[id as usize];
            if !parse_special && attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            if !fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(needle)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(needle) {
                    let mut left = &rest[..at];
                    if attr & ATTR_LSTRIP != 0 {
                        left = left.trim_end_matches(is_c_space);
                    }
                    if !left.is_empty() {
                        next.push(Fragment::Text(left));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[at + needle.len()..];
                    if attr & ATTR_RSTRIP != 0 {
                        rest = rest.trim_start_matches(is_c_space);
                    }
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// BPE-merges one byte-level encoded word and appends its tokens.
    fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        if self.pre.ignore_merges {
            if let Some(&id) = self.token_to_id.get(word) {
                out.push(id);
                return;
            }
        }
        for piece in self.merges.apply(word) {
            if let Some(&id) = self.token_to_id.get(piece) {
                out.push(id);
                continue;
            }
            // llama.cpp looks each byte of the encoded piece up as a one-byte token; only ASCII
            // bytes can match, the others are dropped.
            let ascii = piece.bytes().filter(u8::is_ascii);
            out.extend(ascii.filter_map(|b| self.token_to_id.get(&*char::from(b).to_string())));
        }
    }

    /// Detokenizes `ids`: the pieces concatenated, invalid UTF-8 replaced by U+FFFD. Control and
    /// unknown tokens are rendered only with `include_special`; ids outside the vocabulary are
    /// skipped.
    pub fn decode(&self, ids: &[u32], include_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.piece(id, include_special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The raw bytes a token stands for (special tokens give their text); empty for unknown ids.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match self.piece_ends.get(id) {
            Some(&end) => {
                let start = if id == 0 { 0 } else { self.piece_ends[id - 1] };
                &self.piece_bytes[start..end]
            }
            None => &[],
        }
    }

    /// What a token contributes to decoded text: nothing for hidden special tokens and bad ids.
    fn piece(&self, id: u32, include_special: bool) -> &[u8] {
        match self.attrs.get(id as usize) {
            Some(&a) if include_special || a & (ATTR_CONTROL | ATTR_UNKNOWN) == 0 => {
                self.token_bytes(id)
            }
            _ => &[],
        }
    }

    /// `token_to_piece` with special tokens shown, for the piece cache.
    fn render_piece(&self, id: usize, out: &mut Vec<u8>) {
        let (text, attr) = (&self.tokens[id], self.attrs[id]);
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED) != 0 {
            out.extend_from_slice(text.as_bytes());
        } else if attr & ATTR_NORMAL != 0 {
            for c in text.chars() {
                match char_to_byte(c) {
                    Some(b) => out.push(b),
                    // Not byte-level text (llama.cpp prints an `[UNK_BYTE_..]` marker here); the
                    // character itself is the more useful rendering.
                    None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        } else if attr & ATTR_BYTE != 0 {
            let hex = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'));
            out.extend(hex.and_then(|h| u8::from_str_radix(h, 16).ok()));
        }
    }

    /// The id of the token whose text is exactly `piece` (e.g. `"<|im_end|>"`).
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.token_to_id.get(piece).copied()
    }

    /// The token's type, counting llama.cpp's promotion of end-of-turn texts to control tokens;
    /// [`TokenType::Undefined`] for ids outside the vocabulary.
    pub fn token_type(&self, id: u32) -> TokenType {
        match (self.types.get(id as usize), self.attrs.get(id as usize)) {
            (Some(_), Some(&a)) if a & ATTR_CONTROL != 0 => TokenType::Control,
            (Some(&t), _) => t,
            _ => TokenType::Undefined,
        }
    }

    /// Whether generation should stop at `id`: EOS, EOT and every token llama.cpp treats as end
    /// of generation by its text (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Sets llama.cpp's lstrip / rstrip attributes of a token: when it is cut out of the text,
    /// ASCII whitespace before (lstrip) or after (rstrip) it is dropped. llama.cpp sets these only
    /// for a few models by name (phi-3, jina-v2, modern-bert); GGUF files do not carry them.
    pub fn set_strip(&mut self, id: u32, lstrip: bool, rstrip: bool) {
        if let Some(a) = self.attrs.get_mut(id as usize) {
            *a = (*a & !(ATTR_LSTRIP | ATTR_RSTRIP))
                | if lstrip { ATTR_LSTRIP } else { 0 }
                | if rstrip { ATTR_RSTRIP } else { 0 };
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }
}

/// C `isspace` in the "C" locale, which llama.cpp uses for lstrip / rstrip.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of the byte-level characters of "abc " and some merges of them.
    fn tiny(merges: &[&str], extra: &[(&str, i32)]) -> Tokenizer {
        let mut tokens: Vec<String> = ["a", "b", "c", "Ġ", "ab", "bc", "abc", "aa"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut types = vec![1; tokens.len()];
        for (text, ty) in extra {
            tokens.push(text.to_string());
            types.push(*ty);
        }
        let merges: Vec<String> = merges.iter().map(|s| s.to_string()).collect();
        Tokenizer::from_parts(
            tokens,
            Some(types),
            &merges,
            "gpt2",
            SpecialTokens::default(),
        )
        .expect("tiny tokenizer")
    }

    #[test]
    fn words_are_merged_by_rank() {
        let t = tiny(&["b c", "a b", "a bc"], &[]);
        assert_eq!(t.encode("abc", false), [6]);
        let t = tiny(&["a b", "b c"], &[]);
        assert_eq!(t.encode("abc abc", false), [4, 2, 3, 4, 2]);
    }

    #[test]
    fn llama3_takes_whole_words_from_the_vocabulary() {
        // No merge leads to "abc", but llama.cpp's `ignore_merges` (Llama 3) takes it directly.
        let tokens = ["a", "b", "c", "abc"].map(String::from).to_vec();
        let special = SpecialTokens::default();
        let t = Tokenizer::from_parts(tokens.clone(), None, &[], "llama-bpe", special.clone());
        assert_eq!(t.expect("llama-bpe").encode("abc", false), [3]);
        let t = Tokenizer::from_parts(tokens, None, &[], "gpt2", special);
        assert_eq!(t.expect("gpt2").encode("abc", false), [0, 1, 2]);
    }

    #[test]
    fn pieces_missing_from_vocab_fall_back_to_ascii_bytes() {
        // "c a" merges into "ca", which is no token: its bytes are looked up one by one.
        let t = tiny(&["c a"], &[]);
        assert_eq!(t.encode("ca", false), [2, 0]);
        // "é" has no token at all and is dropped, as llama.cpp drops it.
        assert_eq!(t.encode("aé", false), [0]);
    }

    #[test]
    fn special_tokens_follow_parse_special_and_type() {
        let t = tiny(&[], &[("<|x|>", 3), ("<u>", 4)]);
        assert_eq!(t.encode("a<|x|>b", true), [0, 8, 1]);
        assert!(!t.encode("a<|x|>b", false).contains(&8));
        // User-defined tokens are matched even without parse_special.
        assert_eq!(t.encode("a<u>b", false), [0, 9, 1]);
        assert_eq!(t.decode(&[0, 8, 9], false), "a<u>");
        assert_eq!(t.decode(&[0, 8, 9], true), "a<|x|><u>");
    }

    #[test]
    fn longest_special_token_wins() {
        let t = tiny(&[], &[("<a>", 4), ("<a><b>", 4)]);
        assert_eq!(t.encode("<a><b><a>", false), [9, 8]);
    }

    #[test]
    fn strip_attributes_drop_neighbouring_spaces() {
        let mut t = tiny(&[], &[("<m>", 4)]);
        t.set_strip(8, true, true);
        assert_eq!(t.encode("a  <m> \tb", false), [0, 8, 1]);
    }

    #[test]
    fn end_of_turn_texts_become_control() {
        let t = tiny(&[], &[("<|im_end|>", 1)]);
        assert_eq!(t.token_type(8), TokenType::Control);
        assert!(t.is_eog(8) && !t.is_eog(0));
        assert_eq!(t.decode(&[8], false), "");
    }

    #[test]
    fn decode_is_byte_level_and_total() {
        let t = tiny(&[], &[("<0x41>", 6)]);
        assert_eq!(t.decode(&[3, 0, 8, 9999], false), " aA");
        assert_eq!(t.token_bytes(3), b" ");
        assert_eq!(t.token_bytes(9999), b"");
        assert_eq!(t.token_type(9999), TokenType::Undefined);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let tokens = vec!["a".to_string(), "a".to_string()];
        let dup = Tokenizer::from_parts(tokens, None, &[], "gpt2", SpecialTokens::default());
        assert!(matches!(dup, Err(EngineError::Tokenizer(_))));
        let tokens = vec!["a".to_string()];
        let pre = Tokenizer::from_parts(tokens, None, &[], "what", SpecialTokens::default());
        assert!(matches!(pre, Err(EngineError::Tokenizer(m)) if m.contains("smollm")));
        let tokens = vec!["a".to_string()];
        let types = Some(vec![]);
        let short = Tokenizer::from_parts(tokens, types, &[], "gpt2", SpecialTokens::default());
        assert!(matches!(short, Err(EngineError::Tokenizer(_))));
    }
}

//! Reading a Hugging Face `tokenizer.json` (BPE model) into the GGUF-style parts the tokenizer is
//! built from, making the same choices as llama.cpp's converter (`get_vocab_base` in
//! `conversion/base.py`), so that the result tokenizes as the converted GGUF would.

use super::bpe::split_merge;
use super::TokenType;
use crate::error::EngineError;

/// Token texts, their types and the merges (`None` for an unusable one, which keeps its rank).
type Parts = (Vec<String>, Vec<TokenType>, Vec<Option<(String, String)>>);

/// Reads `model.vocab`, `model.merges` (`"a b"` or `["a", "b"]`) and `added_tokens`. Added tokens
/// are control tokens when marked special or when they look special, user-defined otherwise; ids
/// missing from the vocabulary become unused `[PAD<id>]` tokens.
pub(super) fn parse(json: &str) -> Result<Parts, EngineError> {
    let err = |msg: &str| EngineError::Tokenizer(format!("tokenizer.json: {msg}"));
    let root: serde_json::Value = serde_json::from_str(json).map_err(|e| err(&e.to_string()))?;
    let model = &root["model"];
    if let Some(kind) = model["type"].as_str() {
        if kind != "BPE" {
            return Err(err(&format!("model type {kind} is not BPE")));
        }
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| err("no model.vocab"))?;
    let mut entries = Vec::with_capacity(vocab.len());
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err("vocab id is not an integer"))?;
        entries.push((id, text.clone(), TokenType::Normal));
    }
    for added in root["added_tokens"].as_array().into_iter().flatten() {
        let id = added["id"]
            .as_u64()
            .ok_or_else(|| err("added token without id"))?;
        let text = added["content"]
            .as_str()
            .ok_or_else(|| err("added token text"))?;
        let ty = if added["special"].as_bool() == Some(true) || looks_special(text) {
            TokenType::Control
        } else {
            TokenType::UserDefined
        };
        entries.push((id, text.to_string(), ty));
    }
    let n = entries.iter().map(|e| e.0 + 1).max().unwrap_or(0);
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n <= 1 << 24)
        .ok_or_else(|| err("token ids out of range"))?;
    let mut tokens: Vec<Option<(String, TokenType)>> = vec![None; n];
    // Added tokens come last, so they override a vocabulary entry with the same id.
    for (id, text, ty) in entries {
        if let Some(slot) = usize::try_from(id).ok().and_then(|i| tokens.get_mut(i)) {
            *slot = Some((text, ty));
        }
    }
    let (tokens, types) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), TokenType::Unused)))
        .unzip();
    let mut merges = Vec::new();
    for merge in model["merges"].as_array().into_iter().flatten() {
        merges.push(match (merge.as_str(), merge.as_array()) {
            (Some(s), _) => split_merge(s),
            (None, Some(pair)) if pair.len() == 2 => {
                let side = |v: &serde_json::Value| v.as_str().map(str::to_string);
                side(&pair[0]).zip(side(&pair[1]))
            }
            _ => return Err(err("a merge is neither \"a b\" nor [\"a\", \"b\"]")),
        });
    }
    Ok((tokens, types, merges))
}

/// llama.cpp's converter (`does_token_look_special`) makes these added tokens control tokens even
/// when `tokenizer.json` does not mark them special.
fn looks_special(text: &str) -> bool {
    matches!(text, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (text.starts_with("<|") && text.ends_with("|>"))
        || (text.starts_with("<｜") && text.ends_with("｜>"))
        || (text.starts_with("<unused") && text.ends_with('>'))
}

#[cfg(test)]
mod tests {
    use crate::error::EngineError;
    use crate::tokenizer::{SpecialTokens, TokenType, Tokenizer};

    #[test]
    fn reads_hugging_face_tokenizer_json() {
        let json = r#"{
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3},
                      "merges": [["a", "b"]]},
            "added_tokens": [
                {"id": 4, "content": "<|s|>", "special": true},
                {"id": 5, "content": "<x>", "special": false},
                {"id": 7, "content": "<|im_end|>", "special": false}
            ]
        }"#;
        let t = Tokenizer::from_tokenizer_json(json, "smollm", SpecialTokens::default())
            .expect("tokenizer.json");
        assert_eq!(t.vocab_size(), 8);
        assert_eq!(t.encode("ab<x><|s|> ab", true), [2, 5, 4, 3, 2]);
        assert_eq!(t.encode("<|s|>", false), Vec::<u32>::new());
        assert_eq!(t.token_type(4), TokenType::Control);
        assert_eq!(t.token_type(5), TokenType::UserDefined);
        // Not marked special, but llama.cpp's converter makes `<|...|>` tokens control.
        assert_eq!(t.token_type(7), TokenType::Control);
        assert_eq!(t.token_id("[PAD6]"), Some(6));
        assert_eq!(t.token_type(6), TokenType::Unused);
        let strings = json.replace(r#"["a", "b"]"#, r#""a b""#);
        let t = Tokenizer::from_tokenizer_json(&strings, "smollm", SpecialTokens::default());
        assert_eq!(t.expect("string merges").encode("ab", false), [2]);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for json in [
            "not json",
            "{}",
            r#"{"model": {"type": "Unigram", "vocab": {}}}"#,
            r#"{"model": {"vocab": {"a": "zero"}}}"#,
            r#"{"model": {"vocab": {"a": 0}, "merges": [1]}}"#,
            r#"{"model": {"vocab": {"a": 99999999999}}}"#,
        ] {
            let t = Tokenizer::from_tokenizer_json(json, "smollm", SpecialTokens::default());
            assert!(matches!(t, Err(EngineError::Tokenizer(_))), "{json}");
        }
    }
}

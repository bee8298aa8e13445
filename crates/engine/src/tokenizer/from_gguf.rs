//! Building a [`Tokenizer`] from a GGUF file's `tokenizer.ggml.*` metadata.

use super::{SpecialTokens, Tokenizer};
use crate::error::{EngineError, Result};
use crate::gguf::{Gguf, GgufError};

fn err(e: GgufError) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

/// The pre-tokenizer name (llama.cpp treats a missing one as "default") and the special token ids.
fn pre_and_special(gguf: &Gguf) -> Result<(&str, SpecialTokens)> {
    let pre = gguf
        .opt_str("tokenizer.ggml.pre")
        .map_err(err)?
        .unwrap_or("default");
    let id = |k: &str| gguf.opt_u32(k).map_err(err);
    let special = SpecialTokens {
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        add_bos: gguf
            .opt_bool("tokenizer.ggml.add_bos_token")
            .map_err(err)?
            .unwrap_or(false),
    };
    Ok((pre, special))
}

impl Tokenizer {
    /// A Hugging Face `tokenizer.json` used in place of the GGUF's vocabulary, with the GGUF's
    /// pre-tokenizer and special token ids.
    pub fn from_tokenizer_json_for(gguf: &Gguf, json: &str) -> Result<Self> {
        let (pre, special) = pre_and_special(gguf)?;
        Tokenizer::from_tokenizer_json(json, pre, special)
    }

    /// The tokenizer a GGUF file describes: vocabulary, token types, merges, pre-tokenizer and
    /// special token ids. Only gpt2-style byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is
    /// supported, which is what SmolLM2/SmolLM3 and Llama 3 use.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model").map_err(err)?;
        if model != "gpt2" {
            return Err(EngineError::Tokenizer(format!(
                "tokenizer model '{model}' is not supported (only gpt2-style byte-level BPE)"
            )));
        }
        let (pre, special) = pre_and_special(gguf)?;
        let tokens = gguf
            .get_str_array("tokenizer.ggml.tokens")
            .map_err(err)?
            .to_vec();
        let types = gguf
            .opt_i32_array("tokenizer.ggml.token_type")
            .map_err(err)?;
        let merges = gguf
            .opt_str_array("tokenizer.ggml.merges")
            .map_err(err)?
            .unwrap_or(&[]);
        Tokenizer::from_parts(tokens, types, merges, pre, special)
    }
}

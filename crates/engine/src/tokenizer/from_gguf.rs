//! Building a [`Tokenizer`] from a GGUF file's `tokenizer.ggml.*` metadata.

use super::{SpecialTokens, Tokenizer};
use crate::error::{EngineError, Result};
use crate::gguf::{Gguf, GgufError};

fn err(e: GgufError) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl Tokenizer {
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
        // llama.cpp treats a missing `pre` as "default".
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

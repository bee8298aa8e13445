//! The engine's error type: one enum, messages a user can act on.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    // The cause is part of the message, not a `source`, so a report that prints the chain
    // (anyhow's `{:#}`) does not say it twice.
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file is not a well-formed GGUF file (see [`crate::gguf::GgufError`] for the reason).
    #[error("{path} is not a valid GGUF file: {error}")]
    Gguf {
        path: PathBuf,
        error: crate::gguf::GgufError,
    },
    /// The GGUF is well-formed but describes a model this engine cannot run, or is inconsistent.
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid sampling settings: {0}")]
    Sampling(String),
    #[error("the prompt has {prompt_tokens} tokens but the context holds {context_len} (at most {max_prompt} prompt tokens leave room for an answer); shorten the conversation or raise the context length")]
    ContextOverflow {
        prompt_tokens: usize,
        context_len: usize,
        max_prompt: usize,
    },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

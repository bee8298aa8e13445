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
    /// The GGUF is well-formed but describes a model this engine cannot run.
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    /// The GGUF is well-formed but its metadata or tensors are wrong: a value out of its domain
    /// (NaN epsilon, zero heads), or tensors that disagree with the metadata.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// The model would not fit in the memory available for it.
    #[error("{}", crate::memory::refusal(estimate, *needed, *available, place))]
    InsufficientMemory {
        needed: u64,
        available: u64,
        place: String,
        estimate: crate::memory::MemoryEstimate,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid sampling settings: {0}")]
    Sampling(String),
    /// Nothing to run: the prompt has no tokens.
    #[error("nothing to run: the prompt has no tokens")]
    EmptyPrompt,
    /// The forward pass produced NaN: the model's weights or metadata are broken.
    #[error("the model computed NaN logits (at position {position}): its weights or metadata are broken")]
    NanLogits { position: usize },
    #[error("the prompt has {prompt_tokens} tokens but the context holds {context_len} (at most {max_prompt} prompt tokens leave room for an answer); shorten the conversation or raise the context length")]
    ContextOverflow {
        prompt_tokens: usize,
        context_len: usize,
        max_prompt: usize,
    },
    /// The chosen device cannot run the model: not in this build, no driver, did not start.
    #[error("device: {0}")]
    Device(String),
    /// The runner process that holds the model (a CUDA device in a build without CUDA) failed:
    /// it stopped (and why: its exit status and last words), or broke the protocol.
    #[error("model runner: {0}")]
    Runner(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

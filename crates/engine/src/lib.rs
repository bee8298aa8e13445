//! SmolLM3 / Llama GGUF inference on Candle, matching llama.cpp.
//!
//! The flow, file by file:
//! - [`gguf`]: validating parser of the memory-mapped GGUF file (metadata + tensor index).
//! - [`config`]: [`ModelConfig`] from the metadata (`llama` and `smollm3`, NoPE layers), every
//!   value and tensor shape validated.
//! - [`memory`]: what a model needs at a context length (weights, KV cache, buffers), checked
//!   against the available memory before loading.
//! - [`tokenizer`]: llama.cpp-exact gpt2 BPE from `tokenizer.ggml.*`, streaming detokenizer.
//! - [`template`]: the model's own chat template rendered with minijinja, as transformers does.
//! - [`backend`]: the model interface ([`backend::Backend`]: tokens at positions -> logits, with
//!   a KV cache) and the [`backend::Session`] that tracks what the cache holds (prefix reuse,
//!   commit, rollback) for every backend.
//! - [`device`]: where a model runs ([`Placement`]: `cpu`, `cuda[:N]`, `metal`; the native or
//!   the Candle backend).
//! - [`runner`]: a backend in another process (the CUDA runner, so that no build the app ships
//!   links the CUDA libraries), over a small binary protocol on its stdin/stdout.
//! - [`candle_model`]: the Candle backend, the same transformer as a Candle tensor graph on any
//!   Candle device, its KV cache preallocated there.
//! - [`qmatrix`], [`attention`], [`model`]: the native CPU backend, the quantized transformer
//!   with its KV cache; weights stay quantized (in the memory map, or repacked into tiles at load).
//! - [`quant`]: one description per weight type (block and tile bytes, activation format,
//!   Candle dtype) that the loader, the kernels, repacking and the Candle backend read.
//! - [`kernels`]: the quantized matrix products (llama.cpp's arithmetic; AVX-512 VNNI with a
//!   portable scalar definition), activation quantization, weight repacking.
//! - [`sampler`], [`textstream`], [`speculative`], [`generate`]: sampling, thinking/answer splitting,
//!   n-gram drafts verified in batched passes, stop rules,
//!   and the event stream of one generation.
//! - [`engine`]: [`Engine`] ties them together: `load` -> `render_chat` -> `encode_prompt` ->
//!   `generate` (events) / `logits`; [`validate`] checks a file without loading its weights.
//!
//! The binary `smollm3` is a thin CLI over this library.

pub mod attention;
pub mod backend;
pub mod bench;
pub mod candle_model;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod kept;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod ops;
pub mod qmatrix;
pub mod quant;
mod quantize;
pub mod runner;
pub mod sampler;
pub mod speculative;
pub mod template;
pub mod textstream;
pub mod threads;
pub mod tokenizer;

pub use attention::KvType;
pub use config::{Arch, ModelConfig};
pub use device::{BackendKind, DeviceSpec, Placement};
pub use engine::{validate, Engine, EngineOptions, ModelInfo, DEFAULT_CONTEXT_LEN};
pub use error::{EngineError, Result};
pub use generate::{
    FinishReason, GenerationDone, GenerationEvent, GenerationOutput, GenerationParams, Timings,
    Usage, THINKING_CLOSE,
};
pub use memory::PREFILL_CHUNK;
pub use sampler::{ModelFamily, SamplingParams};
pub use speculative::Speculative;
pub use template::{ChatMessage, ChatOptions};

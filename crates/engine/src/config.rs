//! Model hyper-parameters, read only from GGUF metadata.
//!
//! Keys follow llama.cpp's names (`{arch}.block_count`, `{arch}.attention.head_count`, ...). Two
//! architectures are accepted: `llama` and `smollm3`; SmolLM3 differs only in its NoPE layers
//! (no rotary embedding on every fourth layer, llama.cpp's `n_no_rope_layer_step = 4`).

use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::gguf::{Gguf, GgufError};
use crate::sampler::ModelFamily;

/// The model architectures the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    SmolLM3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::SmolLM3 => "smollm3",
        }
    }

    pub fn family(self) -> ModelFamily {
        match self {
            Arch::Llama => ModelFamily::Llama,
            Arch::SmolLM3 => ModelFamily::SmolLM3,
        }
    }
}

/// Hyper-parameters of a Llama-style decoder.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub name: Option<String>,
    pub n_layer: usize,
    /// Hidden size (`embedding_length`).
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Feed-forward inner size.
    pub n_ff: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    pub rope_theta: f32,
    /// 1 / rope scaling factor (linear scaling), 1.0 when the model does not scale.
    pub rope_freq_scale: f32,
    pub rms_eps: f32,
    pub attention_scale: f32,
    /// `use_rope[il]` is false on NoPE layers.
    pub use_rope: Vec<bool>,
}

fn key_err(e: GgufError) -> EngineError {
    EngineError::UnsupportedModel(e.to_string())
}

impl ModelConfig {
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let arch_name = gguf.get_str("general.architecture").map_err(key_err)?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "smollm3" => Arch::SmolLM3,
            other => {
                return Err(EngineError::UnsupportedModel(format!(
                    "architecture '{other}' is not supported (supported: llama, smollm3)"
                )))
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let req =
            |k: &str| -> Result<usize> { Ok(gguf.get_u32(&key(k)).map_err(key_err)? as usize) };
        let opt = |k: &str| -> Result<Option<usize>> {
            Ok(gguf.opt_u32(&key(k)).map_err(key_err)?.map(|v| v as usize))
        };
        let n_layer = req("block_count")?;
        let n_embd = req("embedding_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = opt("attention.head_count_kv")?.unwrap_or(n_head);
        let n_ff = req("feed_forward_length")?;
        let context_length = req("context_length")?;
        let rms_eps = gguf
            .get_f32(&key("attention.layer_norm_rms_epsilon"))
            .map_err(key_err)?;
        let rope_theta = gguf
            .opt_f32(&key("rope.freq_base"))
            .map_err(key_err)?
            .unwrap_or(10_000.0);
        let nonzero = |v: usize, what: &str| {
            if v == 0 {
                Err(EngineError::UnsupportedModel(format!("{} is 0", key(what))))
            } else {
                Ok(v)
            }
        };
        nonzero(n_layer, "block_count")?;
        nonzero(n_embd, "embedding_length")?;
        nonzero(n_head, "attention.head_count")?;
        nonzero(n_head_kv, "attention.head_count_kv")?;
        nonzero(n_ff, "feed_forward_length")?;
        nonzero(context_length, "context_length")?;
        if n_head % n_head_kv != 0 {
            return Err(EngineError::UnsupportedModel(format!(
                "{n_head} attention heads cannot be grouped over {n_head_kv} key/value heads"
            )));
        }
        let head_dim = match opt("attention.key_length")? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(EngineError::UnsupportedModel(format!(
                    "embedding length {n_embd} is not a multiple of {n_head} heads"
                )))
            }
        };
        if opt("attention.value_length")?.is_some_and(|v| v != head_dim) {
            return Err(EngineError::UnsupportedModel(
                "different key and value head sizes are not supported".into(),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(EngineError::UnsupportedModel(format!(
                "head size {head_dim} is odd"
            )));
        }
        if opt("rope.dimension_count")?.is_some_and(|d| d != head_dim) {
            return Err(EngineError::UnsupportedModel(
                "partial rotary embeddings (rope.dimension_count != head size) are not supported"
                    .into(),
            ));
        }
        let rope_freq_scale = match gguf.opt_str(&key("rope.scaling.type")).map_err(key_err)? {
            None | Some("none") => 1.0,
            Some("linear") => {
                let factor = gguf
                    .opt_f32(&key("rope.scaling.factor"))
                    .map_err(key_err)?
                    .unwrap_or(1.0);
                if factor > 0.0 {
                    1.0 / factor
                } else {
                    1.0
                }
            }
            Some(other) => {
                return Err(EngineError::UnsupportedModel(format!(
                    "RoPE scaling '{other}' is not supported"
                )))
            }
        };
        let attention_scale = match gguf.opt_f32(&key("attention.scale")).map_err(key_err)? {
            Some(s) if s != 0.0 => s,
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        let use_rope = (0..n_layer)
            .map(|il| arch != Arch::SmolLM3 || (il + 1) % 4 != 0)
            .collect();
        let name = gguf
            .opt_str("general.name")
            .map_err(key_err)?
            .map(str::to_owned);
        Ok(Self {
            arch,
            name,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            context_length,
            rope_theta,
            rope_freq_scale,
            rms_eps,
            attention_scale,
            use_rope,
        })
    }

    /// Width of the key (and value) projection: `n_head_kv * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Indices of the layers that skip RoPE.
    pub fn nope_layers(&self) -> Vec<usize> {
        (0..self.n_layer).filter(|&il| !self.use_rope[il]).collect()
    }
}

//! Model hyper-parameters, read only from GGUF metadata, each validated where it is read.
//!
//! Keys follow llama.cpp's names (`{arch}.block_count`, `{arch}.attention.head_count`, ...). Two
//! architectures are accepted: `llama` and `smollm3`; SmolLM3 differs only in its NoPE layers
//! (no rotary embedding on every fourth layer, llama.cpp's `n_no_rope_layer_step = 4`).
//!
//! Model files are untrusted: every value read here is checked (counts positive, floats finite
//! and in their domain, head sizes consistent) and so is every tensor the model will read (its
//! name, and the shape the metadata implies), so that a [`ModelConfig`] always describes a file
//! the backends can run and sizes derived from it are bounded by the file itself.

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
    /// Vocabulary size: the rows of `token_embd.weight`.
    pub n_vocab: usize,
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

/// Metadata access for one architecture: `{arch}.` keys, errors that name the key.
struct Meta<'g> {
    gguf: &'g Gguf,
    arch: &'g str,
}

fn invalid(key: &str, problem: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidModel(format!("{key} {problem}"))
}

fn key_err(e: GgufError) -> EngineError {
    EngineError::InvalidModel(e.to_string())
}

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    /// A count that must be present and positive.
    fn count(&self, k: &str) -> Result<usize> {
        let key = self.key(k);
        let n = self.gguf.get_u32(&key).map_err(key_err)?;
        if n == 0 {
            return Err(invalid(&key, "is 0"));
        }
        Ok(n as usize)
    }

    /// An optional count; present means positive.
    fn opt_count(&self, k: &str) -> Result<Option<usize>> {
        let key = self.key(k);
        match self.gguf.opt_u32(&key).map_err(key_err)? {
            Some(0) => Err(invalid(&key, "is 0")),
            n => Ok(n.map(|n| n as usize)),
        }
    }

    /// An optional float, which must be finite when present (`positive` also excludes <= 0).
    fn opt_float(&self, k: &str, positive: bool) -> Result<Option<f32>> {
        let key = self.key(k);
        let Some(v) = self.gguf.opt_f32(&key).map_err(key_err)? else {
            return Ok(None);
        };
        if !v.is_finite() {
            return Err(invalid(&key, format!("is {v}: it must be a finite number")));
        }
        if positive && v <= 0.0 {
            return Err(invalid(&key, format!("is {v}: it must be positive")));
        }
        Ok(Some(v))
    }
}

impl ModelConfig {
    /// Reads and validates the hyper-parameters, and checks that the file holds every tensor
    /// they imply with the shape they imply (and no extra blocks).
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
        let m = Meta {
            gguf,
            arch: arch_name,
        };
        if let Some(n) = gguf.opt_u32(&m.key("expert_count")).map_err(key_err)? {
            if n > 0 {
                return Err(EngineError::UnsupportedModel(format!(
                    "mixture-of-experts models ({n} experts) are not supported"
                )));
            }
        }
        let n_layer = m.count("block_count")?;
        let blocks = blocks_in_tensors(gguf);
        if blocks != n_layer {
            return Err(invalid(
                &m.key("block_count"),
                format!("is {n_layer} but the file has tensors for {blocks} blocks"),
            ));
        }
        let n_embd = m.count("embedding_length")?;
        let n_head = m.count("attention.head_count")?;
        let n_head_kv = m.opt_count("attention.head_count_kv")?.unwrap_or(n_head);
        let n_ff = m.count("feed_forward_length")?;
        let context_length = m.count("context_length")?;
        if n_head % n_head_kv != 0 {
            return Err(invalid(
                &m.key("attention.head_count_kv"),
                format!("is {n_head_kv}: {n_head} attention heads cannot be grouped over it"),
            ));
        }
        let head_dim = match m.opt_count("attention.key_length")? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(invalid(
                    &m.key("embedding_length"),
                    format!("{n_embd} is not a multiple of {n_head} heads (and no attention.key_length says the head size)"),
                ))
            }
        };
        if m.opt_count("attention.value_length")?
            .is_some_and(|v| v != head_dim)
        {
            return Err(EngineError::UnsupportedModel(
                "different key and value head sizes are not supported".into(),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(invalid(
                &m.key("attention.key_length"),
                format!("gives a head size of {head_dim}: rotary embeddings need an even one"),
            ));
        }
        if n_head.checked_mul(head_dim).is_none() {
            return Err(invalid(
                &m.key("attention.key_length"),
                format!("{head_dim} x {n_head} heads overflows"),
            ));
        }
        if m.opt_count("rope.dimension_count")?
            .is_some_and(|d| d != head_dim)
        {
            return Err(EngineError::UnsupportedModel(
                "partial rotary embeddings (rope.dimension_count != head size) are not supported"
                    .into(),
            ));
        }
        let rms_eps = m
            .opt_float("attention.layer_norm_rms_epsilon", true)?
            .ok_or_else(|| {
                key_err(GgufError::MissingKey(
                    m.key("attention.layer_norm_rms_epsilon"),
                ))
            })?;
        let rope_theta = m.opt_float("rope.freq_base", true)?.unwrap_or(10_000.0);
        let rope_freq_scale = match gguf.opt_str(&m.key("rope.scaling.type")).map_err(key_err)? {
            None | Some("none") => 1.0,
            // As llama.cpp: a factor of 0 means unscaled.
            Some("linear") => match m.opt_float("rope.scaling.factor", false)? {
                None => 1.0,
                Some(0.0) => 1.0,
                Some(f) if f > 0.0 => 1.0 / f,
                Some(f) => {
                    return Err(invalid(
                        &m.key("rope.scaling.factor"),
                        format!("is {f}: it must be positive"),
                    ))
                }
            },
            Some(other) => {
                return Err(EngineError::UnsupportedModel(format!(
                    "RoPE scaling '{other}' is not supported"
                )))
            }
        };
        // As llama.cpp: a scale of 0 (or none) means 1/sqrt(head size).
        let attention_scale = match m.opt_float("attention.scale", false)? {
            Some(s) if s != 0.0 => s,
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        let name = gguf
            .opt_str("general.name")
            .map_err(key_err)?
            .map(str::to_owned);
        let n_vocab = match gguf.tensor("token_embd.weight").map(|t| t.dims.as_slice()) {
            Some(&[_, rows]) if rows > 0 => rows as usize,
            Some(dims) => {
                return Err(EngineError::InvalidModel(format!(
                    "tensor 'token_embd.weight' has shape {dims:?}, expected [{n_embd}, vocabulary size]"
                )))
            }
            None => return Err(missing_tensor("token_embd.weight")),
        };
        let cfg = Self {
            arch,
            name,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_vocab,
            context_length,
            rope_theta,
            rope_freq_scale,
            rms_eps,
            attention_scale,
            use_rope: (0..n_layer)
                .map(|il| arch != Arch::SmolLM3 || (il + 1) % 4 != 0)
                .collect(),
        };
        cfg.check_tensors(gguf)?;
        Ok(cfg)
    }

    /// Width of the key (and value) projection: `n_head_kv * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of the query projection: `n_head * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Indices of the layers that skip RoPE.
    pub fn nope_layers(&self) -> Vec<usize> {
        (0..self.n_layer).filter(|&il| !self.use_rope[il]).collect()
    }

    /// Every tensor the model reads, with the shape the metadata implies, in ggml order
    /// (`[row length, rows]`; `[n]` for a vector). `output.weight` is optional (tied embeddings).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<u64>)> {
        let [dim, q, kv, ff, vocab] = [
            self.n_embd,
            self.q_dim(),
            self.kv_dim(),
            self.n_ff,
            self.n_vocab,
        ]
        .map(|n| n as u64);
        let mut shapes = vec![
            ("token_embd.weight".to_string(), vec![dim, vocab]),
            ("output_norm.weight".to_string(), vec![dim]),
        ];
        for il in 0..self.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            shapes.extend([
                (n("attn_norm"), vec![dim]),
                (n("attn_q"), vec![dim, q]),
                (n("attn_k"), vec![dim, kv]),
                (n("attn_v"), vec![dim, kv]),
                (n("attn_output"), vec![q, dim]),
                (n("ffn_norm"), vec![dim]),
                (n("ffn_gate"), vec![dim, ff]),
                (n("ffn_up"), vec![dim, ff]),
                (n("ffn_down"), vec![ff, dim]),
            ]);
        }
        shapes
    }

    /// Checks that the file holds every tensor of [`Self::tensor_shapes`] with that shape.
    fn check_tensors(&self, gguf: &Gguf) -> Result<()> {
        let mut shapes = self.tensor_shapes();
        if gguf.tensor("output.weight").is_some() {
            shapes.push((
                "output.weight".into(),
                vec![self.n_embd as u64, self.n_vocab as u64],
            ));
        }
        for (name, want) in shapes {
            let info = gguf.tensor(&name).ok_or_else(|| missing_tensor(&name))?;
            if info.dims != want {
                return Err(EngineError::InvalidModel(format!(
                    "tensor '{name}' has shape {:?}, but the metadata implies {want:?} ({})",
                    info.dims,
                    self.summary()
                )));
            }
        }
        Ok(())
    }

    /// The sizes a tensor shape follows from, for error messages.
    fn summary(&self) -> String {
        format!(
            "embedding {}, {} heads of {} ({} key/value heads), feed-forward {}, vocabulary {}",
            self.n_embd, self.n_head, self.head_dim, self.n_head_kv, self.n_ff, self.n_vocab
        )
    }
}

fn missing_tensor(name: &str) -> EngineError {
    EngineError::InvalidModel(format!("the model has no tensor '{name}'"))
}

/// How many transformer blocks the file has tensors for: one more than the largest `N` in a
/// `blk.N.` tensor name (0 without any).
fn blocks_in_tensors(gguf: &Gguf) -> usize {
    gguf.tensors
        .iter()
        .filter_map(|t| {
            let rest = t.name.strip_prefix("blk.")?;
            rest.split('.').next()?.parse::<usize>().ok()
        })
        .max()
        .map_or(0, |n| n.saturating_add(1))
}

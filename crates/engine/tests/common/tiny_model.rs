//! A complete, runnable model file built in the test: a Llama/SmolLM3 decoder of any shape with
//! deterministic F32 weights, a byte-level gpt2 vocabulary (the 256 byte tokens, ChatML control
//! tokens), a ChatML template. Tests change one field, one key or one tensor to make a hostile
//! variant ([`TinyModel::writer`] then [`with_kv`] / [`without_kv`]).

use std::path::{Path, PathBuf};

use engine::gguf::{Array, TensorType, Value};

use super::gguf_writer::{GgufWriter, TensorSpec};

/// The shape of the decoder.
#[derive(Clone, Debug)]
pub struct TinyModel {
    pub arch: &'static str,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Written as `attention.key_length` / `value_length` when set; otherwise n_embd / n_head.
    pub head_dim: Option<usize>,
    pub n_ff: usize,
    pub context_length: u32,
    pub seed: u32,
}

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

impl Default for TinyModel {
    fn default() -> Self {
        TinyModel {
            arch: "llama",
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            head_dim: None,
            n_ff: 128,
            context_length: 256,
            seed: 1,
        }
    }
}

/// GPT-2's byte-level alphabet: the character standing for each byte.
pub fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// The vocabulary: 256 byte tokens, then `<|im_start|>` and `<|im_end|>` (control).
pub fn vocabulary() -> (Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    let mut types = vec![1; tokens.len()];
    for special in [IM_START, IM_END] {
        tokens.push(special.to_string());
        types.push(3);
    }
    (tokens, types)
}

/// Deterministic values in [-scale, scale).
fn pseudo(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12345) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ((x as f32 / u32::MAX as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

/// An F32 tensor with the given ggml dims and values.
pub fn f32_tensor(name: &str, dims: &[u64], values: &[f32]) -> TensorSpec {
    let mut spec = TensorSpec::new(name, dims, TensorType::F32);
    assert_eq!(values.len() as u64, dims.iter().product::<u64>());
    spec.data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    spec
}

impl TinyModel {
    pub fn hd(&self) -> usize {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }

    /// The metadata and tensors of a valid file of this shape.
    pub fn writer(&self) -> GgufWriter {
        let a = self.arch;
        let key = |k: &str| format!("{a}.{k}");
        let (tokens, types) = vocabulary();
        let vocab = tokens.len() as u64;
        let im_end = vocab as u32 - 1;
        let mut w = GgufWriter::new()
            .kv("general.architecture", Value::Str(a.into()))
            .kv("general.name", Value::Str("tiny".into()))
            .kv(&key("block_count"), Value::U32(self.n_layer as u32))
            .kv(&key("context_length"), Value::U32(self.context_length))
            .kv(&key("embedding_length"), Value::U32(self.n_embd as u32))
            .kv(&key("feed_forward_length"), Value::U32(self.n_ff as u32))
            .kv(&key("attention.head_count"), Value::U32(self.n_head as u32))
            .kv(
                &key("attention.head_count_kv"),
                Value::U32(self.n_head_kv as u32),
            )
            .kv(&key("rope.freq_base"), Value::F32(10_000.0))
            .kv(&key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
        if let Some(hd) = self.head_dim {
            w = w
                .kv(&key("attention.key_length"), Value::U32(hd as u32))
                .kv(&key("attention.value_length"), Value::U32(hd as u32));
        }
        w = w
            .kv("tokenizer.ggml.model", Value::Str("gpt2".into()))
            .kv("tokenizer.ggml.pre", Value::Str("gpt2".into()))
            .kv("tokenizer.ggml.tokens", Value::Array(Array::Str(tokens)))
            .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
            .kv("tokenizer.ggml.merges", Value::Array(Array::Str(vec![])))
            .kv("tokenizer.ggml.bos_token_id", Value::U32(im_end - 1))
            .kv("tokenizer.ggml.eos_token_id", Value::U32(im_end))
            .kv("tokenizer.ggml.add_bos_token", Value::Bool(false))
            .kv("tokenizer.chat_template", Value::Str(CHATML.into()));

        let (dim, ff) = (self.n_embd as u64, self.n_ff as u64);
        let q = (self.n_head * self.hd()) as u64;
        let kv = (self.n_head_kv * self.hd()) as u64;
        let mut seed = self.seed;
        let mut mat = |name: &str, cols: u64, rows: u64| {
            seed += 1;
            let scale = 2.0 / (cols as f32).sqrt();
            f32_tensor(
                name,
                &[cols, rows],
                &pseudo((cols * rows) as usize, seed, scale),
            )
        };
        let ones = |name: &str| f32_tensor(name, &[dim], &vec![1.0; dim as usize]);
        w = w
            .tensor(mat("token_embd.weight", dim, vocab))
            .tensor(ones("output_norm.weight"));
        for il in 0..self.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            w = w
                .tensor(ones(&n("attn_norm")))
                .tensor(mat(&n("attn_q"), dim, q))
                .tensor(mat(&n("attn_k"), dim, kv))
                .tensor(mat(&n("attn_v"), dim, kv))
                .tensor(mat(&n("attn_output"), q, dim))
                .tensor(ones(&n("ffn_norm")))
                .tensor(mat(&n("ffn_gate"), dim, ff))
                .tensor(mat(&n("ffn_up"), dim, ff))
                .tensor(mat(&n("ffn_down"), ff, dim));
        }
        w
    }
}

/// `w` with `key` set to `value` (replaced in place, or added).
pub fn with_kv(mut w: GgufWriter, key: &str, value: Value) -> GgufWriter {
    match w.kv.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => w.kv.push((key.to_string(), value)),
    }
    w
}

/// `w` without `key`.
pub fn without_kv(mut w: GgufWriter, key: &str) -> GgufWriter {
    w.kv.retain(|(k, _)| k != key);
    w
}

/// `w` with tensor `name` replaced (same shape) by `values`.
pub fn with_tensor_values(mut w: GgufWriter, name: &str, values: &[f32]) -> GgufWriter {
    let t = w
        .tensors
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    *t = f32_tensor(name, &t.dims.clone(), values);
    w
}

/// Writes `w` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, w: &GgufWriter) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, w.build().bytes).expect("write the model file");
    path
}

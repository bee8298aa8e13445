//! The native CPU backend: the quantized Llama/SmolLM3 transformer on our own kernels, weights
//! memory-mapped from the GGUF (or repacked into tiles), an F32 or F16 KV cache.
//!
//! `forward` reads like the paper: embed -> for each layer { RMSNorm -> attention (RoPE except on
//! NoPE layers) -> residual -> RMSNorm -> SwiGLU -> residual } -> RMSNorm -> LM head. It works on
//! plain slices in buffers kept between calls; Q/K/V and gate/up each quantize their shared
//! input once and run in one parallel region.

use std::sync::Arc;

use memmap2::Mmap;

use crate::attention::{attention_in, AttnShape, KvCache, KvType};
use crate::backend::{Backend, HostRows, Logits};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::gguf::{Gguf, TensorType};
use crate::ops::{self, RmsNorm};
use crate::qmatrix::{matmul_shared, ActBuffers, QMatrix};

struct Layer {
    attn_norm: RmsNorm, // (dim)
    wq: QMatrix,        // (n_head * hd, dim)
    wk: QMatrix,        // (n_head_kv * hd, dim)
    wv: QMatrix,        // (n_head_kv * hd, dim)
    wo: QMatrix,        // (dim, n_head * hd)
    ffn_norm: RmsNorm,  // (dim)
    w_gate: QMatrix,    // (n_ff, dim)
    w_up: QMatrix,      // (n_ff, dim)
    w_down: QMatrix,    // (dim, n_ff)
    use_rope: bool,
}

impl Layer {
    /// The layer's weight matrices.
    fn matrices(&self) -> [&QMatrix; 7] {
        let l = self;
        [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
    }
}

/// Rotary embedding tables, computed as ggml does (F32 angle, multiplied per pair index).
struct Rope {
    /// (max_len, hd / 2) interleaved as (cos, sin) pairs.
    table: Vec<f32>,
    half: usize,
}

/// The rotation of every position: (max_len, hd / 2) interleaved (cos, sin) pairs, computed as
/// ggml computes them (both backends read it, so they rotate alike).
pub(crate) fn rope_table(cfg: &ModelConfig, max_len: usize) -> Vec<f32> {
    let half = cfg.head_dim / 2;
    let theta_scale = cfg.rope_theta.powf(-2.0 / cfg.head_dim as f32);
    let mut table = Vec::with_capacity(max_len * half * 2);
    for p in 0..max_len {
        // ggml_rope_cache_init: theta_i = p * theta_scale^i by repeated multiplication.
        let mut theta = p as f32;
        for _ in 0..half {
            let t = theta * cfg.rope_freq_scale;
            table.push(t.cos());
            table.push(t.sin());
            theta *= theta_scale;
        }
    }
    table
}

impl Rope {
    fn new(cfg: &ModelConfig, max_len: usize) -> Self {
        Self {
            table: rope_table(cfg, max_len),
            half: cfg.head_dim / 2,
        }
    }

    /// Rotates adjacent pairs of `x` (t rows of `n` heads of hd) at positions pos..pos+t. GGUF
    /// stores Q/K rows permuted for this interleaved form.
    fn apply(&self, x: &mut [f32], t: usize, pos: usize) {
        rope_rows(&self.table, self.half * 2, x, t, pos)
    }
}

crate::ops::with_fma!(
    /// The rotation of [`Rope::apply`]. The products are fused as the compiler fuses ggml's
    /// `x0*cos - x1*sin` (one rounding fewer than plain arithmetic).
    rope_rows,
    fn(table: &[f32], hd: usize, x: &mut [f32], t: usize, pos: usize) {
        let row = x.len() / t;
        for (i, xr) in x.chunks_exact_mut(row).enumerate() {
            let cs = &table[(pos + i) * hd..][..hd];
            for head in xr.chunks_exact_mut(hd) {
                for (pair, c) in head.chunks_exact_mut(2).zip(cs.chunks_exact(2)) {
                    let (x0, x1, cos, sin) = (pair[0], pair[1], c[0], c[1]);
                    pair[0] = x0.mul_add(cos, -(x1 * sin));
                    pair[1] = x0.mul_add(sin, x1 * cos);
                }
            }
        }
    }
);

/// Activation buffers of one forward pass, kept between passes (grown to the largest pass, at
/// most `PREFILL_CHUNK` positions), so decoding allocates nothing.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,      // (t, dim) the residual stream
    h: Vec<f32>,      // (t, dim) a block's normalised input
    q: Vec<f32>,      // (t, max(n_head * hd, dim)): q, then the attention block's output (t, dim)
    k: Vec<f32>,      // (t, n_head_kv * hd)
    v: Vec<f32>,      // (t, n_head_kv * hd)
    attn: Vec<f32>,   // (t, n_head * hd)
    gate: Vec<f32>,   // (t, n_ff) the gate, then silu(gate) * up
    up: Vec<f32>,     // (t, max(n_ff, dim)): up, then the feed-forward block's output (t, dim)
    logits: Vec<f32>, // (rows, vocab)
    acts: ActBuffers,
}

/// `buf` as exactly `len` elements (contents unspecified).
fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

/// Hands back the mapped pages of every part of the file outside `keep`: the metadata (the
/// tokenizer and template hold their own copies by now), the norms (copied), the tiled weights
/// (`QMatrix::pack` released most, but reading the norms faulted in their neighbours too). Only
/// what the kernels still read from the map stays resident: a process holds one copy of its
/// weights, and nothing else of the file.
#[cfg(unix)]
fn release_unread(map: &Mmap, mut keep: Vec<std::ops::Range<usize>>) {
    keep.sort_by_key(|r| r.start);
    let mut from = 0;
    keep.push(map.len()..map.len());
    for r in keep {
        if r.start > from {
            // SAFETY: a read-only file mapping: MADV_DONTNEED only drops our page-table entries,
            // and a later read refaults the same file contents (the page holding the end of a
            // kept range may be dropped with the gap after it, and is refaulted when read).
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, r.start - from)
            };
        }
        from = from.max(r.end);
    }
}

/// Without `madvise` the pages stay mapped until the operating system wants them back.
#[cfg(not(unix))]
fn release_unread(_map: &Mmap, _keep: Vec<std::ops::Range<usize>>) {}

/// The transformer with its KV cache.
pub struct Model {
    cfg: ModelConfig,
    embed: QMatrix, // (vocab, dim)
    layers: Vec<Layer>,
    norm: RmsNorm,    // (dim)
    lm_head: QMatrix, // (vocab, dim); token_embd when the model ties them
    rope: Rope,
    cache: KvCache,
    scratch: Scratch,
    weights_bytes: usize,
}

impl Model {
    /// Builds the model over the mapped file; `max_len` is the context length (KV cache size),
    /// `kv_type` the cache's element type.
    pub fn load(
        gguf: &Gguf,
        map: &Arc<Mmap>,
        cfg: ModelConfig,
        max_len: usize,
        kv_type: KvType,
    ) -> Result<Self> {
        let tensor = |name: &str| {
            gguf.tensor(name).ok_or_else(|| {
                EngineError::UnsupportedModel(format!("the model has no tensor '{name}'"))
            })
        };
        let dim = cfg.n_embd;
        let q_dim = cfg.n_head * cfg.head_dim;
        let kv_dim = cfg.kv_dim();
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<QMatrix> {
            let mut m = QMatrix::new(map, tensor(name)?)?;
            if m.dims() != (rows, cols) {
                return Err(EngineError::UnsupportedModel(format!(
                    "tensor '{name}' is {}x{}, the model's metadata implies {rows}x{cols}",
                    m.dims().0,
                    m.dims().1
                )));
            }
            m.pack()?;
            Ok(m)
        };
        let norm = |name: &str| -> Result<RmsNorm> {
            let info = tensor(name)?;
            if info.dtype != TensorType::F32 || info.dims != [dim as u64] {
                return Err(EngineError::UnsupportedModel(format!(
                    "tensor '{name}' should be an F32 vector of {dim}, found {:?} {:?}",
                    info.dtype, info.dims
                )));
            }
            let mut weight = vec![0f32; dim];
            QMatrix::new(map, info)?.rows_f32(&[0], &mut weight)?;
            Ok(RmsNorm::new(weight, cfg.rms_eps))
        };
        let mut embed = QMatrix::new(map, tensor("token_embd.weight")?)?;
        let vocab = embed.dims().0;
        if embed.dims().1 != dim {
            return Err(EngineError::UnsupportedModel(format!(
                "token_embd.weight has rows of {}, the model's metadata says {dim}",
                embed.dims().1
            )));
        }
        let lm_head = match gguf.tensor("output.weight") {
            Some(_) => matrix("output.weight", vocab, dim)?,
            None => {
                // Tied: one packed copy serves the LM head and the embedding lookups.
                embed.pack()?;
                embed.clone()
            }
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            layers.push(Layer {
                attn_norm: norm(&n("attn_norm"))?,
                wq: matrix(&n("attn_q"), q_dim, dim)?,
                wk: matrix(&n("attn_k"), kv_dim, dim)?,
                wv: matrix(&n("attn_v"), kv_dim, dim)?,
                wo: matrix(&n("attn_output"), dim, q_dim)?,
                ffn_norm: norm(&n("ffn_norm"))?,
                w_gate: matrix(&n("ffn_gate"), cfg.n_ff, dim)?,
                w_up: matrix(&n("ffn_up"), cfg.n_ff, dim)?,
                w_down: matrix(&n("ffn_down"), dim, cfg.n_ff)?,
                use_rope: cfg.use_rope[il],
            });
        }
        let weights_bytes = gguf.tensors.iter().map(|t| t.n_bytes as usize).sum();
        release_unread(
            map,
            layers
                .iter()
                .flat_map(Layer::matrices)
                .chain([&embed, &lm_head])
                .filter_map(QMatrix::mapped_range)
                .collect(),
        );
        Ok(Self {
            rope: Rope::new(&cfg, max_len),
            cache: KvCache::new(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, max_len, kv_type),
            norm: norm("output_norm.weight")?,
            embed,
            layers,
            lm_head,
            cfg,
            scratch: Scratch::default(),
            weights_bytes,
        })
    }

    pub fn weights_bytes(&self) -> usize {
        self.weights_bytes
    }

    /// The forward pass; returns how many rows of logits it wrote.
    fn forward_uncommitted(&mut self, tokens: &[u32], pos: usize, logits: Logits) -> Result<usize> {
        let Self {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            cache,
            scratch: s,
            ..
        } = self;
        let (dim, hd) = (cfg.n_embd, cfg.head_dim);
        let (q_dim, kv_dim, n_ff) = (cfg.n_head * hd, cfg.kv_dim(), cfg.n_ff);
        let mut t = tokens.len();
        s.acts.set_per_row(logits == Logits::Verify);
        embed.rows_f32(tokens, sized(&mut s.x, t * dim))?;
        let n_layer = layers.len();
        for (il, layer) in layers.iter().enumerate() {
            layer
                .attn_norm
                .rows(&s.x[..t * dim], sized(&mut s.h, t * dim));
            let (q, k, v) = (
                &mut sized(&mut s.q, t * q_dim.max(dim))[..t * q_dim],
                sized(&mut s.k, t * kv_dim),
                sized(&mut s.v, t * kv_dim),
            );
            matmul_shared(
                &s.h,
                t,
                &mut [(&layer.wq, q), (&layer.wk, k), (&layer.wv, v)],
                &mut s.acts,
            )?;
            if layer.use_rope {
                rope.apply(q, t, pos);
                rope.apply(k, t, pos);
            }
            cache.put(il, k, v);
            if il + 1 == n_layer && logits == Logits::None {
                // The cache is filled: what follows in this layer only feeds the logits.
                return Ok(0);
            }
            let shape = AttnShape {
                t,
                pos,
                n_head: cfg.n_head,
                n_head_kv: cfg.n_head_kv,
                head_dim: hd,
                scale: cfg.attention_scale,
            };
            let (kv, layout) = cache.layer(il);
            attention_in(q, kv, layout, shape, sized(&mut s.attn, t * q_dim));
            // q is spent: it takes the block's output (q_dim may be smaller than dim).
            let out = sized(&mut s.q, t * q_dim.max(dim));
            let out = &mut out[..t * dim];
            matmul_shared(&s.attn, t, &mut [(&layer.wo, out)], &mut s.acts)?;
            if il + 1 == n_layer && logits == Logits::Last && t > 1 {
                // As llama.cpp: the last layer's feed-forward runs only for rows whose logits
                // are wanted.
                s.x.copy_within((t - 1) * dim..t * dim, 0);
                s.q.copy_within((t - 1) * dim..t * dim, 0);
                t = 1;
            }
            add_into(&mut s.x[..t * dim], &s.q[..t * dim]);

            layer
                .ffn_norm
                .rows(&s.x[..t * dim], sized(&mut s.h, t * dim));
            // up is sized for the block's output too, which it takes below (n_ff may be
            // smaller than dim).
            let gate = sized(&mut s.gate, t * n_ff);
            let up = &mut sized(&mut s.up, t * n_ff.max(dim))[..t * n_ff];
            matmul_shared(
                &s.h,
                t,
                &mut [(&layer.w_gate, gate), (&layer.w_up, up)],
                &mut s.acts,
            )?;
            ops::swiglu_rows(gate, up, n_ff);
            // up is spent: it takes the block's output.
            let out = &mut s.up[..t * dim];
            matmul_shared(&s.gate, t, &mut [(&layer.w_down, out)], &mut s.acts)?;
            add_into(&mut s.x[..t * dim], &s.up[..t * dim]);
        }
        if logits == Logits::Last && t > 1 {
            s.x.copy_within((t - 1) * dim..t * dim, 0);
            t = 1;
        }
        norm.rows(&s.x[..t * dim], sized(&mut s.h, t * dim));
        let vocab = lm_head.dims().0;
        let out = sized(&mut s.logits, t * vocab);
        matmul_shared(&s.h, t, &mut [(&*lm_head, out)], &mut s.acts)?;
        Ok(t)
    }
}

impl Backend for Model {
    fn forward(&mut self, pos: usize, tokens: &[u32], logits: Logits) -> Result<&[f32]> {
        self.cache.truncate(pos);
        match self.forward_uncommitted(tokens, pos, logits) {
            Ok(rows) => {
                self.cache.commit(tokens);
                Ok(&self.scratch.logits[..rows * self.vocab_size()])
            }
            Err(e) => {
                self.cache.rollback();
                Err(e)
            }
        }
    }

    fn vocab_size(&self) -> usize {
        self.embed.dims().0
    }

    fn max_len(&self) -> usize {
        self.cache.max_len()
    }

    fn save_cache(&mut self, len: usize) -> Result<Option<Vec<(HostRows, HostRows)>>> {
        Ok(Some(self.cache.save(len)))
    }

    fn restore_cache(&mut self, tokens: &[u32], layers: &[(HostRows, HostRows)]) -> Result<()> {
        self.cache
            .restore(tokens, layers)
            .map_err(EngineError::InvalidModel)
    }

    fn cache_bytes(&self) -> usize {
        self.cache.size_in_bytes()
    }

    fn scratch_bytes(&self) -> usize {
        let s = &self.scratch;
        let floats = [
            &s.x, &s.h, &s.q, &s.k, &s.v, &s.attn, &s.gate, &s.up, &s.logits,
        ];
        floats.iter().map(|b| b.capacity() * 4).sum::<usize>() + s.acts.size_in_bytes()
    }

    fn weight_types(&self) -> Vec<(TensorType, usize)> {
        let mut counts: Vec<(TensorType, usize)> = Vec::new();
        let all = self.layers.iter().flat_map(Layer::matrices);
        for m in all.chain([&self.embed, &self.lm_head]) {
            match counts.iter_mut().find(|(t, _)| *t == m.dtype()) {
                Some((_, c)) => *c += 1,
                None => counts.push((m.dtype(), 1)),
            }
        }
        counts
    }
}

/// `x += y`, as ggml's ADD (`ffn_inp = attn_out + residual`; the sum is the same either way).
fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

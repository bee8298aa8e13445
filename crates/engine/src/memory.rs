//! How much memory a model needs at a context length, and whether the machine has it.
//!
//! [`MemoryEstimate`] adds up, before anything is allocated, what a loaded model holds: its
//! weights (the tensor data, resident once loaded), the KV cache at the chosen context, and the
//! buffers of a forward pass (activations of one prefill chunk, the RoPE table, attention
//! scratch per thread, one row of logits, the tokenizer). Every size is computed with checked
//! arithmetic from a validated [`ModelConfig`], so a hostile file cannot make it wrap.
//!
//! One estimate serves every device: [`MemoryEstimate::check`] compares it with an
//! [`Available`] amount of memory, which [`host_available`] reads for the CPU and a GPU backend
//! reads from its device. Where the model would not fit the load is refused with
//! [`EngineError::InsufficientMemory`] ("needs X GB, Y GB available; lower the context").
//!
//! Available host memory: Linux reads `MemAvailable` from `/proc/meminfo` (memory the kernel can
//! hand out without swapping, page cache included), lowered to the room left under the
//! process's cgroup v2 memory limit when one is set; macOS has no such figure (it compresses and
//! purges memory on demand), so there the total physical memory (`hw.memsize`) is the bound, which
//! refuses only what could never fit; Windows reads the available physical memory
//! (`GlobalMemoryStatusEx`). Elsewhere nothing is known, the check is skipped, and the load logs
//! that it was.

use serde::Serialize;

use crate::attention::KvType;
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

/// Positions a forward pass runs at once: longer prompts are prefilled in chunks of this many
/// tokens, so the activation buffers stay bounded for any prompt length.
pub const PREFILL_CHUNK: usize = 512;

/// Bytes a model needs at one context length, by part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// The context length (KV cache positions) the estimate is for.
    pub context_len: usize,
    /// Tensor data.
    pub weights: u64,
    /// Keys and values of every layer for `context_len` positions.
    pub kv_cache: u64,
    /// Activations, RoPE table, attention scratch, logits, tokenizer.
    pub buffers: u64,
    /// The part of `buffers` that grows with the context (RoPE table, attention scores).
    pub context_buffers: u64,
}

/// Memory a model can use, and where it is (for the message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    /// "RAM", "CUDA device 0", ...
    pub place: String,
}

fn overflow() -> EngineError {
    EngineError::InvalidModel("the model's sizes overflow a 64-bit byte count".into())
}

/// The product of `factors`, or an error when it does not fit in a u64.
/// The KV cache both backends keep: keys and values per layer, `kv_dim` elements of
/// `kv_type` per position.
fn kv_cache_bytes(cfg: &ModelConfig, context_len: usize, kv_type: KvType) -> Result<u64> {
    let n = |x: usize| x as u64;
    product(&[
        n(cfg.n_layer),
        2,
        n(cfg.kv_dim()),
        n(context_len),
        n(kv_type.bytes()),
    ])
}

fn product(factors: &[u64]) -> Result<u64> {
    factors
        .iter()
        .try_fold(1u64, |acc, &f| acc.checked_mul(f))
        .ok_or_else(overflow)
}

fn sum(terms: &[u64]) -> Result<u64> {
    terms
        .iter()
        .try_fold(0u64, |acc, &t| acc.checked_add(t))
        .ok_or_else(overflow)
}

impl MemoryEstimate {
    /// The estimate for `cfg` with `weights` bytes of tensor data and `metadata` bytes of
    /// metadata (the tokenizer and template are built from it), at `context_len` positions of a
    /// cache of `kv_type` elements, run by `threads` compute threads.
    pub fn new(
        cfg: &ModelConfig,
        weights: u64,
        metadata: u64,
        context_len: usize,
        kv_type: KvType,
        threads: usize,
    ) -> Result<Self> {
        let n = |x: usize| x as u64;
        let ctx = n(context_len);
        let (dim, q, kv, ff) = (n(cfg.n_embd), n(cfg.q_dim()), n(cfg.kv_dim()), n(cfg.n_ff));
        let kv_cache = kv_cache_bytes(cfg, context_len, kv_type)?;
        // Floats per position of a forward pass (model.rs `Scratch`): the residual stream and the
        // normalised input; q (which then takes the attention block's output); k and v; the
        // attention output; gate and up (which then takes the feed-forward output); and the
        // quantized activations (at most 4 bytes an element over the widest input).
        let per_row = sum(&[
            2 * dim,
            q.max(dim),
            2 * kv,
            q,
            ff,
            ff.max(dim),
            dim.max(q).max(ff),
        ])?;
        let activations = product(&[n(PREFILL_CHUNK), per_row, 4])?;
        let rope = product(&[ctx, n(cfg.head_dim), 4])?;
        // Per compute thread: the scores of every visible key (padded to 16) and 16 partial sums;
        // with an F16 cache also one head group's keys and values widened to F32.
        let widened = match kv_type {
            KvType::F32 => 0,
            KvType::F16 => product(&[2, ctx, n(cfg.head_dim)])?,
        };
        let attention = product(&[
            n(threads.max(1)),
            sum(&[ctx.next_multiple_of(16), 16 * n(cfg.head_dim), widened])?,
            4,
        ])?;
        let logits = product(&[n(cfg.n_vocab), 4])?;
        // The vocabulary's strings, their lookup table and rendered pieces: a few copies of it.
        let tokenizer = product(&[metadata, 4])?;
        Ok(Self {
            context_len,
            weights,
            kv_cache,
            buffers: sum(&[activations, rope, attention, logits, tokenizer])?,
            context_buffers: sum(&[rope, attention])?,
        })
    }

    /// The estimate for the Candle backend ([`crate::candle_model`]) at `context_len`:
    /// `weights` bytes as the device holds them ([`candle_weight_bytes`]), a KV cache of
    /// `kv_type` (widened to F32 per layer as attention reads it), and
    /// per prefill chunk the activations, the attention scores (scores, masked scores,
    /// probabilities: three live tensors of n_head x chunk x context) and its logits, plus the
    /// cos/sin tables. `metadata` as in [`MemoryEstimate::new`] (the tokenizer, on the host).
    pub fn for_candle(
        cfg: &ModelConfig,
        weights: u64,
        metadata: u64,
        context_len: usize,
        kv_type: KvType,
    ) -> Result<Self> {
        let n = |x: usize| x as u64;
        let ctx = n(context_len);
        let chunk = n(PREFILL_CHUNK.min(context_len));
        let (dim, q, kv, ff) = (n(cfg.n_embd), n(cfg.q_dim()), n(cfg.kv_dim()), n(cfg.n_ff));
        let kv_cache = kv_cache_bytes(cfg, context_len, kv_type)?;
        // An F16 cache is widened to F32 for attention, one layer's visible rows at a time.
        let widened = match kv_type {
            KvType::F32 => 0,
            KvType::F16 => product(&[2, kv, ctx, 4])?,
        };
        // Every op allocates its output: the residual, norm, q/k/v (and their head-major
        // copies), the attention output, gate, up and their product, live at once at worst.
        let per_row = sum(&[3 * dim, 2 * (q + 2 * kv), q, 3 * ff])?;
        let activations = product(&[chunk, per_row, 4])?;
        let scores = product(&[3, n(cfg.n_head), chunk, ctx, 4])?;
        let mask = product(&[chunk, ctx, 4])?;
        let rope = product(&[ctx, n(cfg.head_dim), 4])?;
        let logits = product(&[chunk, n(cfg.n_vocab), 4])?;
        let tokenizer = product(&[metadata, 4])?;
        Ok(Self {
            context_len,
            weights,
            kv_cache,
            buffers: sum(&[activations, scores, mask, rope, logits, tokenizer, widened])?,
            context_buffers: sum(&[scores, mask, rope, widened])?,
        })
    }

    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.kv_cache)
            .saturating_add(self.buffers)
    }

    /// Refuses the load when the estimate exceeds `available`.
    pub fn check(&self, available: &Available) -> Result<()> {
        if self.total() <= available.bytes {
            return Ok(());
        }
        Err(EngineError::InsufficientMemory {
            needed: self.total(),
            available: available.bytes,
            place: available.place.clone(),
            estimate: self.clone(),
        })
    }
}

/// The message of [`EngineError::InsufficientMemory`]: what is needed and available, by part,
/// and what to do: lower the context, unless the model does not fit even without a KV cache.
pub(crate) fn refusal(e: &MemoryEstimate, needed: u64, available: u64, place: &str) -> String {
    let fixed = e.buffers - e.context_buffers;
    let advice = if e.weights.saturating_add(fixed) >= available {
        "the model itself does not fit: choose a smaller model".to_string()
    } else {
        format!("lower the context (now {} tokens)", e.context_len)
    };
    format!(
        "not enough memory in {place}: needs {}, {} available; {advice} (weights {}, KV cache {} for {} tokens, buffers {})",
        gb(needed),
        gb(available),
        gb(e.weights),
        gb(e.kv_cache),
        e.context_len,
        gb(e.buffers),
    )
}

/// Bytes the Candle backend holds for tensors of these (type, element count, file bytes): the
/// quantized ones as stored, F16/BF16 and F32 as F32 (Candle's `QMatMul` multiplies with them
/// dequantized), and `tied_embedding` elements more when the LM head is an unquantized
/// `token_embd` (the embedding lookup keeps the stored tensor, the LM head its F32 copy).
pub fn candle_weight_bytes(
    tensors: impl IntoIterator<Item = (crate::gguf::TensorType, u64, u64)>,
    tied_embedding: Option<(crate::gguf::TensorType, u64)>,
) -> Result<u64> {
    use crate::gguf::TensorType;
    let plain = |t: TensorType| matches!(t, TensorType::F32 | TensorType::F16 | TensorType::BF16);
    let mut total = 0u64;
    for (dtype, elems, bytes) in tensors {
        let held = if plain(dtype) {
            product(&[elems, 4])?
        } else {
            bytes
        };
        total = sum(&[total, held])?;
    }
    if let Some((_, elems)) = tied_embedding.filter(|(t, _)| plain(*t)) {
        total = sum(&[total, product(&[elems, 4])?])?;
    }
    Ok(total)
}

/// Bytes as gigabytes for messages: "3.2 GB", "0.41 GB".
pub fn gb(bytes: u64) -> String {
    let g = bytes as f64 / 1e9;
    if g >= 10.0 {
        format!("{g:.0} GB")
    } else if g >= 1.0 {
        format!("{g:.1} GB")
    } else {
        format!("{g:.2} GB")
    }
}

/// Memory the CPU backend can use now, where the platform says (see the module docs).
pub fn host_available() -> Option<Available> {
    let bytes = host_available_bytes()?;
    Some(Available {
        bytes,
        place: "RAM".into(),
    })
}

#[cfg(target_os = "linux")]
fn host_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo_available(&meminfo)?;
    Some(match cgroup_room() {
        Some(room) => available.min(room),
        None => available,
    })
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
#[cfg(any(target_os = "linux", test))]
fn meminfo_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// Room left under this process's cgroup v2 memory limit (`memory.max - memory.current`), when
/// it has one.
#[cfg(target_os = "linux")]
fn cgroup_room() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max" (no limit) fails here
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

#[cfg(target_os = "macos")]
fn host_available_bytes() -> Option<u64> {
    let mut bytes: u64 = 0;
    let mut len = std::mem::size_of::<u64>();
    // SAFETY: "hw.memsize" is a NUL-terminated name; the output is one u64 and `len` says so.
    let rc = unsafe {
        libc::sysctlbyname(
            c"hw.memsize".as_ptr(),
            (&mut bytes as *mut u64).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0 && len == std::mem::size_of::<u64>()).then_some(bytes)
}

#[cfg(windows)]
fn host_available_bytes() -> Option<u64> {
    use windows_sys::Win32::System::SystemInformation::{GlobalMemoryStatusEx, MEMORYSTATUSEX};
    // SAFETY: MEMORYSTATUSEX is plain data; dwLength must be set before the call.
    let mut status: MEMORYSTATUSEX = unsafe { std::mem::zeroed() };
    status.dwLength = std::mem::size_of::<MEMORYSTATUSEX>() as u32;
    // SAFETY: `status` is a valid, sized MEMORYSTATUSEX.
    let ok = unsafe { GlobalMemoryStatusEx(&mut status) };
    (ok != 0).then_some(status.ullAvailPhys)
}

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
fn host_available_bytes() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;

    fn config(n_layer: usize, n_embd: usize, n_ff: usize, n_vocab: usize) -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            name: None,
            n_layer,
            n_embd,
            n_head: 16,
            n_head_kv: 4,
            head_dim: n_embd / 16,
            n_ff,
            n_vocab,
            context_length: 65536,
            rope_theta: 5e6,
            rope_freq_scale: 1.0,
            rms_eps: 1e-6,
            attention_scale: 0.1,
            // Not read by the estimate (and a hostile layer count must not allocate here).
            use_rope: Vec::new(),
        }
    }

    #[test]
    fn kv_cache_is_layers_by_two_by_kv_width_by_context() {
        // SmolLM3-3B's shape: 36 layers, 4 KV heads of 128.
        let cfg = config(36, 2048, 11008, 128256);
        let e = MemoryEstimate::new(&cfg, 1_900_000_000, 8 << 20, 65536, KvType::F32, 2).unwrap();
        assert_eq!(e.kv_cache, 36 * 2 * 512 * 65536 * 4);
        let half =
            MemoryEstimate::new(&cfg, 1_900_000_000, 8 << 20, 65536, KvType::F16, 2).unwrap();
        assert_eq!(half.kv_cache * 2, e.kv_cache);
        // Buffers do not grow with the prompt, only with the context (RoPE table, scores).
        assert!(e.buffers < 200_000_000, "{e:?}");
        assert_eq!(e.total(), e.weights + e.kv_cache + e.buffers);
    }

    #[test]
    fn hostile_sizes_are_an_error_not_a_wrap() {
        let cfg = config(usize::MAX / 2, 1 << 20, 1 << 20, 1 << 20);
        let e = MemoryEstimate::new(&cfg, 0, 0, usize::MAX, KvType::F32, 1);
        assert!(matches!(e, Err(EngineError::InvalidModel(_))), "{e:?}");
    }

    #[test]
    fn refusal_says_what_is_needed_and_what_to_do() {
        let cfg = config(36, 2048, 11008, 128256);
        let e = MemoryEstimate::new(&cfg, 1_900_000_000, 8 << 20, 65536, KvType::F32, 2).unwrap();
        let small = Available {
            bytes: 4_000_000_000,
            place: "RAM".into(),
        };
        let err = e.check(&small).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("needs 12 GB, 4.0 GB available; lower the context"),
            "{msg}"
        );
        assert!(msg.contains("65536"), "{msg}");
        let big = Available {
            bytes: e.total(),
            place: "RAM".into(),
        };
        assert!(e.check(&big).is_ok());
    }

    #[test]
    fn meminfo_parsing() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo_available(text), Some(20_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn this_machine_reports_its_memory() {
        // Linux, macOS and Windows all have a source; the figure is positive.
        if cfg!(any(target_os = "linux", target_os = "macos", windows)) {
            let a = host_available().expect("available memory");
            assert!(a.bytes > 0);
        }
    }

    #[test]
    fn gigabytes_read_naturally() {
        assert_eq!(gb(12_345_678_901), "12 GB");
        assert_eq!(gb(3_210_000_000), "3.2 GB");
        assert_eq!(gb(410_000_000), "0.41 GB");
    }
}

//! Quantized matrix products on the memory-mapped GGUF bytes, computing what llama.cpp computes.
//!
//! - [`act`]: activation rows quantized once ([`QActs`]) to the weight type's partner (Q8_0,
//!   Q8_1 or Q8_K) with llama.cpp's rounding, plus sums the kernels reuse.
//! - [`blocks32`] (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), [`q4k`], [`q6k`]: one file per block family,
//!   each with a scalar definition that follows llama.cpp's x86 accumulation order (so results
//!   match it bit for bit, not just closely), AVX-512 VNNI, AVX2 and AArch64 NEON (dot-product
//!   extension) kernels that are bit-identical to it. Other CPUs run the scalar code (vectorised
//!   by the compiler).
//! - [`repack`]: weights rearranged at load into 16-row tiles for the SIMD kernels.
//! - [`matmul`]: several weight matrices against one [`QActs`], their columns spread over the
//!   compute threads ([`crate::threads::pool`]: hot between calls, yielding to other work).

// SIMD code indexes arrays of registers by lane, row and column; index loops read best there.
#![allow(clippy::needless_range_loop)]

pub mod act;
mod blocks32;
mod q4k;
mod q6k;
pub mod repack;
#[cfg(test)]
mod tests;

/// What the NEON kernels share.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// `acc + a . b` in each 32-bit lane, over that lane's four signed bytes (`SDOT`; stable Rust
    /// has no intrinsic for it yet, so it is written out).
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    pub fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: a register-only instruction of the dotprod extension, which this function
        // requires of the CPU.
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }

    /// Four bytes (an i32) in every lane.
    #[inline]
    #[target_feature(enable = "neon")]
    pub fn bcast(v: i32) -> int8x16_t {
        vreinterpretq_s8_s32(vdupq_n_s32(v))
    }

    /// Sixteen halves at `p` as four vectors of four floats.
    ///
    /// # Safety
    /// `p` points at 32 readable bytes.
    #[inline]
    #[target_feature(enable = "neon")]
    pub unsafe fn f16x16(p: *const u8) -> [float32x4_t; 4] {
        let v: [f32; 16] = std::array::from_fn(|i| {
            // SAFETY: inside the 32 bytes.
            let bits = unsafe { (p.add(2 * i) as *const u16).read_unaligned() };
            half::f16::from_bits(bits).to_f32()
        });
        // SAFETY: 16 floats.
        std::array::from_fn(|k| unsafe { vld1q_f32(v.as_ptr().add(4 * k)) })
    }

    /// Sixteen bytes (unsigned, or signed with `SIGNED`) as four vectors of four i32.
    #[inline]
    #[target_feature(enable = "neon")]
    pub fn widen16<const SIGNED: bool>(v: uint8x16_t) -> [int32x4_t; 4] {
        let (lo, hi) = if SIGNED {
            let v = vreinterpretq_s8_u8(v);
            (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v))
        } else {
            let (lo, hi) = (vmovl_u8(vget_low_u8(v)), vmovl_high_u8(v));
            (vreinterpretq_s16_u16(lo), vreinterpretq_s16_u16(hi))
        };
        [
            vmovl_s16(vget_low_s16(lo)),
            vmovl_high_s16(lo),
            vmovl_s16(vget_low_s16(hi)),
            vmovl_high_s16(hi),
        ]
    }

    /// Eight ggml lanes per column added as `hsum_float_8` does, for four columns.
    #[inline]
    #[target_feature(enable = "neon")]
    pub fn hsum8(l: &[float32x4_t; 8]) -> float32x4_t {
        let (t0, t1) = (vaddq_f32(l[4], l[0]), vaddq_f32(l[5], l[1]));
        let (t2, t3) = (vaddq_f32(l[6], l[2]), vaddq_f32(l[7], l[3]));
        vaddq_f32(vaddq_f32(t0, t2), vaddq_f32(t1, t3))
    }
}

use std::sync::OnceLock;

pub use act::{ActKind, QActs};
pub use repack::Packed;

use crate::gguf::TensorType;

/// The instruction set the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable code (also the reference the SIMD kernels are tested against).
    Scalar,
    /// The portable code compiled for AVX2 + FMA + F16C (Haswell, Zen 1 and later), which the
    /// compiler vectorises; the same arithmetic, so the same results.
    Avx2,
    /// AVX-512 F/BW/VL/DQ with VNNI (Ice Lake, Zen 4 and later).
    Avx512,
    /// AArch64 NEON with the dot-product extension (Apple M1, Cortex-A76, Neoverse N1 and
    /// later).
    Neon,
}

impl Isa {
    /// The instruction set as people write it ("AVX-512"), for the device list.
    pub fn label(self) -> &'static str {
        match self {
            Isa::Scalar => "portable",
            Isa::Avx2 => "AVX2",
            Isa::Avx512 => "AVX-512",
            Isa::Neon => "NEON",
        }
    }

    /// The best the CPU supports (detected once), at most what `SMOLLM3_ISA` allows (see
    /// [`crate::ops::simd_cap`]).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| match (Isa::detect_cpu(), crate::ops::simd_cap()) {
            (_, 0) => Isa::Scalar,
            (Isa::Avx512, 1) => Isa::Avx2,
            (isa, _) => isa,
        })
    }

    fn detect_cpu() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("avx512dq")
                && has!("avx512vnni")
                && has!("fma")
                && has!("f16c")
            {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            return Isa::Neon;
        }
        Isa::Scalar
    }
}

/// The activation format a weight type multiplies with, for the types these kernels handle
/// (the [`crate::quant`] table).
pub fn act_kind(dtype: TensorType) -> Option<ActKind> {
    crate::quant::of(dtype)?.act
}

/// A weight matrix: `rows` output features of `cols` inputs, in the GGUF's block format, and
/// optionally its whole 16-row groups repacked into tiles (used by the SIMD kernels; `data`
/// then still holds the leftover rows).
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    pub dtype: TensorType,
    pub data: &'a [u8],
    pub packed: Option<&'a Packed>,
    pub rows: usize,
    pub cols: usize,
}

/// One product of a [`matmul`] call: `dst (m x w.rows) = x @ w^T`, row-major.
pub struct Job<'a> {
    pub w: Weights<'a>,
    pub dst: &'a mut [f32],
}

/// Where a kernel writes: `dst[r * n + c]`. Threads write disjoint column ranges.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    ptr: *mut f32,
    n: usize,
}

// SAFETY: every (row, column) is written by exactly one thread while the owner waits.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    #[inline(always)]
    fn put(self, r: usize, c: usize, v: f32) {
        // SAFETY: kernels only write rows < m and columns < n of an m x n buffer.
        unsafe { *self.ptr.add(r * self.n + c) = v }
    }

    /// Start of row `r`.
    #[inline(always)]
    fn row(self, r: usize) -> *mut f32 {
        // SAFETY: as for `put`.
        unsafe { self.ptr.add(r * self.n) }
    }
}

/// Columns per work item: one repacked tile, and a whole cache line of f32 outputs.
const TILE: usize = repack::COLS;

/// At most this many matrices per [`matmul`] call (Q, K and V share one input).
pub const MAX_JOBS: usize = 4;

/// Runs every job (at most [`MAX_JOBS`]) against `x` on the compute threads, in one parallel
/// region; allocates nothing.
pub fn matmul<'a>(jobs: impl IntoIterator<Item = Job<'a>>, x: &QActs) {
    matmul_with(Isa::detect(), jobs, x)
}

/// [`matmul`] with a chosen instruction set (tests compare them).
pub fn matmul_with<'a>(isa: Isa, jobs: impl IntoIterator<Item = Job<'a>>, x: &QActs) {
    let m = x.rows();
    let mut outs: [Option<(Weights, Out)>; MAX_JOBS] = [None; MAX_JOBS];
    let mut starts = [0usize; MAX_JOBS + 1];
    let mut total = 0;
    for (j, job) in jobs.into_iter().enumerate() {
        assert!(j < MAX_JOBS, "more than {MAX_JOBS} matrices in one call");
        let w = job.w;
        assert_eq!(act_kind(w.dtype), Some(x.kind()), "{:?} weights", w.dtype);
        assert_eq!(w.cols, x.cols(), "row length");
        let row_bytes = crate::quant::of(w.dtype)
            .expect("kernel type")
            .row_bytes(w.cols);
        let packed = w.packed.map_or(0, |p| p.groups() * repack::COLS);
        assert!(
            w.data.len() >= w.rows * row_bytes || packed > 0,
            "weight bytes"
        );
        assert!(job.dst.len() >= m * w.rows, "output size");
        starts[j] = total;
        total += w.rows.div_ceil(TILE);
        starts[j + 1] = total;
        outs[j] = Some((
            w,
            Out {
                ptr: job.dst.as_mut_ptr(),
                n: w.rows,
            },
        ));
    }
    let run = |items: std::ops::Range<usize>| {
        // Items are consecutive tiles; run each job's share as one column range.
        for (j, (w, out)) in outs
            .iter()
            .enumerate()
            .filter_map(|(j, o)| Some((j, o.as_ref()?)))
        {
            let (lo, hi) = (items.start.max(starts[j]), items.end.min(starts[j + 1]));
            if lo < hi {
                let cols = (lo - starts[j]) * TILE..((hi - starts[j]) * TILE).min(w.rows);
                run_cols(isa, w, x, cols, *out);
            }
        }
    };
    if total <= 1 || m == 0 {
        run(0..total);
    } else {
        crate::threads::pool().execute_chunked(total, run);
    }
}

/// Columns `cols` of one matrix, on this thread.
fn run_cols(isa: Isa, w: &Weights, x: &QActs, cols: std::ops::Range<usize>, out: Out) {
    if let (false, Some(p)) = (isa == Isa::Scalar, w.packed) {
        let g0 = cols.start.div_ceil(TILE);
        let g1 = (cols.end / TILE).min(p.groups());
        if g0 < g1 {
            // SAFETY: an ISA is only chosen when the CPU has its features.
            unsafe { run_tiles(isa, w.dtype, p, x, g0..g1, out) };
            let rest = Weights { packed: None, ..*w };
            if cols.start < g0 * TILE {
                run_cols(isa, &rest, x, cols.start..g0 * TILE, out);
            }
            if g1 * TILE < cols.end {
                run_cols(isa, &rest, x, g1 * TILE..cols.end, out);
            }
            return;
        }
    }
    // The k-quants' unpacked matrices (tails of tiled ones, Q4_K that llama.cpp does not repack)
    // run the portable definition, compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2
        || (isa == Isa::Avx512 && matches!(w.dtype, TensorType::Q4K | TensorType::Q6K))
    {
        // SAFETY: both ISAs are only chosen on CPUs with AVX2, FMA and F16C.
        return unsafe { run_cols_avx2(w, x, cols, out) };
    }
    run_cols_portable(isa, w, x, cols, out)
}

/// Groups `g` of a packed matrix with the SIMD kernels of `isa`.
///
/// # Safety
/// The CPU supports `isa` (not `Isa::Scalar`).
unsafe fn run_tiles(
    isa: Isa,
    dtype: TensorType,
    p: &Packed,
    x: &QActs,
    g: std::ops::Range<usize>,
    out: Out,
) {
    use blocks32::{Q4_0, Q4_1, Q8_0};
    // SAFETY (every arm): the caller guarantees the CPU has the ISA's features.
    unsafe {
        match (isa, dtype) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, TensorType::Q4_0) => {
                blocks32::avx512::matmul_packed::<Q4_0>(p, x, g, out)
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, TensorType::Q4_1) => {
                blocks32::avx512::matmul_packed::<Q4_1>(p, x, g, out)
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, TensorType::Q8_0) => {
                blocks32::avx512::matmul_packed::<Q8_0>(p, x, g, out)
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, TensorType::Q4K) => q4k::avx512::matmul_packed(p, x, g, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, TensorType::Q6K) => q6k::avx512::matmul_packed(p, x, g, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, TensorType::Q4_0) => blocks32::avx2::matmul_packed::<Q4_0>(p, x, g, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, TensorType::Q4_1) => blocks32::avx2::matmul_packed::<Q4_1>(p, x, g, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, TensorType::Q8_0) => blocks32::avx2::matmul_packed::<Q8_0>(p, x, g, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, TensorType::Q4K) => q4k::avx2::matmul_packed(p, x, g, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, TensorType::Q6K) => q6k::avx2::matmul_packed(p, x, g, out),
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, TensorType::Q4_0) => blocks32::neon::matmul_packed::<Q4_0>(p, x, g, out),
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, TensorType::Q4_1) => blocks32::neon::matmul_packed::<Q4_1>(p, x, g, out),
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, TensorType::Q8_0) => blocks32::neon::matmul_packed::<Q8_0>(p, x, g, out),
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, TensorType::Q4K) => q4k::neon::matmul_packed(p, x, g, out),
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, TensorType::Q6K) => q6k::neon::matmul_packed(p, x, g, out),
            (isa, t) => unreachable!("{t:?} tiles have no {isa:?} kernel"),
        }
    }
}

/// [`run_cols_portable`] compiled for AVX2 (the portable kernels are inlined into it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_cols_avx2(w: &Weights, x: &QActs, cols: std::ops::Range<usize>, out: Out) {
    run_cols_portable(Isa::Scalar, w, x, cols, out)
}

#[inline(always)]
fn run_cols_portable(isa: Isa, w: &Weights, x: &QActs, cols: std::ops::Range<usize>, out: Out) {
    use blocks32::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
    let d = w.data;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            // SAFETY: `Isa::Avx512` is only chosen when the CPU has these features.
            unsafe {
                match w.dtype {
                    TensorType::Q4_0 => blocks32::avx512::matmul::<Q4_0>(d, x, cols, out),
                    TensorType::Q4_1 => blocks32::avx512::matmul::<Q4_1>(d, x, cols, out),
                    TensorType::Q5_0 => blocks32::avx512::matmul::<Q5_0>(d, x, cols, out),
                    TensorType::Q5_1 => blocks32::avx512::matmul::<Q5_1>(d, x, cols, out),
                    TensorType::Q8_0 => blocks32::avx512::matmul::<Q8_0>(d, x, cols, out),
                    t => unreachable!("{t:?} has no AVX-512 kernel on file layout"),
                }
            }
        }
        _ => match w.dtype {
            TensorType::Q4_0 => blocks32::matmul_scalar::<Q4_0>(d, x, cols, out),
            TensorType::Q4_1 => blocks32::matmul_scalar::<Q4_1>(d, x, cols, out),
            TensorType::Q5_0 => blocks32::matmul_scalar::<Q5_0>(d, x, cols, out),
            TensorType::Q5_1 => blocks32::matmul_scalar::<Q5_1>(d, x, cols, out),
            TensorType::Q8_0 => blocks32::matmul_scalar::<Q8_0>(d, x, cols, out),
            TensorType::Q4K => q4k::matmul_scalar(d, w.rows, x, cols, out),
            TensorType::Q6K => q6k::matmul_scalar(d, x, cols, out),
            t => unreachable!("{t:?} has no kernel"),
        },
    }
}

//! Activation rows quantized for the kernels: the values llama.cpp's x86 backend computes
//! (`quantize_row_q8_0` / `_q8_1` / `_q8_K`), stored with extras the SIMD kernels reuse across
//! every weight column.
//!
//! - 32-element blocks (Q8_0 for Q4_0/Q5_0/Q8_0 weights, Q8_1 for Q4_1/Q5_1): the quants, the
//!   scale as ggml reads it back (f16 -> f32), Q8_1's `s`, and for Q8_0 the negated sums of each
//!   run of four quants (the kernels treat signed weights as unsigned + offset, and these sums
//!   undo the offset exactly: `sum (u - o) y = sum u y - o sum y`).
//! - 256-element super-blocks (Q8_K for Q4_K/Q6_K): quants, scale, the 16-element sums, and the
//!   32-element sums paired per 64 elements (Q4_K's mins term).

use half::f16;

/// What the activations are quantized to; fixed by the weight type they multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    Q8_0,
    Q8_1,
    Q8K,
}

impl ActKind {
    pub fn block_len(self) -> usize {
        match self {
            ActKind::Q8_0 | ActKind::Q8_1 => 32,
            ActKind::Q8K => 256,
        }
    }
}

/// 64 bytes aligned to a cache line: the unit of the quant buffers.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `m` rows of `k` activations quantized for one weight family. Buffers are reused between
/// calls, so steady-state decoding allocates nothing.
pub struct QActs {
    kind: ActKind,
    m: usize,
    k: usize,
    /// Quants, `row_bytes` per row (k rounded up to whole lines).
    qs: Vec<Line>,
    /// Scale per (row, block), as ggml reads it (f16 rounded for the 32-blocks).
    d: Vec<f32>,
    /// Q8_1: `d * sum(q)` rounded to f16, per (row, block).
    s: Vec<f32>,
    /// Q8_0: minus the sums of quants 4l..4l+3 of each block (8 per block).
    ysum: Vec<i32>,
    /// Q8_K: the 16-element sums (16 per super-block).
    bsums: Vec<i16>,
    /// Q8_K: per 64 elements, the two 32-element sums as an i16 pair in one i32 (4 per block).
    bpairs: Vec<i32>,
    /// Every row is rounded as a single-row pass rounds it (see [`QActs::batch_rows`]).
    per_row: bool,
}

impl QActs {
    pub fn new(kind: ActKind) -> Self {
        Self {
            kind,
            m: 0,
            k: 0,
            qs: Vec::new(),
            d: Vec::new(),
            s: Vec::new(),
            ysum: Vec::new(),
            bsums: Vec::new(),
            bpairs: Vec::new(),
            per_row: false,
        }
    }

    /// Bytes of the buffers as allocated now.
    pub fn size_in_bytes(&self) -> usize {
        use std::mem::size_of_val;
        self.qs.capacity() * std::mem::size_of::<Line>()
            + self.d.capacity() * size_of_val(&0f32)
            + self.s.capacity() * size_of_val(&0f32)
            + self.ysum.capacity() * size_of_val(&0i32)
            + self.bsums.capacity() * size_of_val(&0i16)
            + self.bpairs.capacity() * size_of_val(&0i32)
    }

    pub fn kind(&self) -> ActKind {
        self.kind
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.k / self.kind.block_len()
    }

    fn row_lines(&self) -> usize {
        self.k.div_ceil(64)
    }

    /// Makes every row round as in a single-row pass (`true`) or as llama.cpp rounds a batch of
    /// this many rows (`false`, the default). Speculative decoding verifies drafted tokens in
    /// one batched pass whose rows must equal what decoding them one at a time computes.
    pub fn set_per_row(&mut self, per_row: bool) {
        self.per_row = per_row;
    }

    /// The batch size that chooses llama.cpp's kernels, whose rounding differs by batch size
    /// (GEMM or GEMV rows, tiled K-quant GEMM from 8 rows on): the rows, or 1 when each row
    /// must round as a single-row pass does.
    pub fn batch_rows(&self) -> usize {
        if self.per_row {
            1
        } else {
            self.m
        }
    }

    /// Rows `[0, gemm_rows)` are the ones llama.cpp multiplies with its 4-row GEMM kernels
    /// (repacked Q4_K); the rest with its single-row GEMV ones. The two round differently.
    pub fn gemm_rows(&self) -> usize {
        if self.batch_rows() > 3 {
            self.m - self.m % 4
        } else {
            0
        }
    }

    /// Quantizes `x` (m rows of k). `k` must be a multiple of the block length.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        self.resize(x.len() / k.max(1), k);
        let out = RowOut::new(self);
        if self.m >= 4 {
            crate::threads::pool().execute_chunked(self.m, |rows| {
                for r in rows {
                    // SAFETY: each row writes only its own part of the buffers.
                    unsafe { out.row_fast(r, &x[r * k..(r + 1) * k]) };
                }
            });
        } else {
            for r in 0..self.m {
                // SAFETY: as above, on this thread only.
                unsafe { out.row_fast(r, &x[r * k..(r + 1) * k]) };
            }
        }
    }

    fn resize(&mut self, m: usize, k: usize) {
        assert_eq!(
            k % self.kind.block_len(),
            0,
            "row length {k} not whole blocks"
        );
        self.m = m;
        self.k = k;
        let nb = self.blocks();
        let zero = Line([0; 64]);
        self.qs.resize(m * self.row_lines(), zero);
        self.d.resize(m * nb, 0.0);
        match self.kind {
            ActKind::Q8_0 => self.ysum.resize(m * nb * 8, 0),
            ActKind::Q8_1 => self.s.resize(m * nb, 0.0),
            ActKind::Q8K => {
                self.bsums.resize(m * nb * 16, 0);
                self.bpairs.resize(m * nb * 4, 0);
            }
        }
    }

    /// Row `r`'s quants.
    pub fn qs(&self, r: usize) -> &[i8] {
        let lines = &self.qs[r * self.row_lines()..(r + 1) * self.row_lines()];
        // SAFETY: lines are plain bytes; k <= 64 * row_lines.
        unsafe { std::slice::from_raw_parts(lines.as_ptr() as *const i8, self.k) }
    }

    /// Row `r`'s block scales.
    pub fn d(&self, r: usize) -> &[f32] {
        let nb = self.blocks();
        &self.d[r * nb..(r + 1) * nb]
    }

    /// Row `r`'s Q8_1 block sums (`s`).
    pub fn s(&self, r: usize) -> &[f32] {
        let nb = self.blocks();
        &self.s[r * nb..(r + 1) * nb]
    }

    /// Row `r`'s negated quad sums (Q8_0): 8 per block.
    pub fn ysum(&self, r: usize) -> &[i32] {
        let nb = self.blocks();
        &self.ysum[r * nb * 8..(r + 1) * nb * 8]
    }

    /// Row `r`'s 16-element sums (Q8_K): 16 per super-block.
    pub fn bsums(&self, r: usize) -> &[i16] {
        let nb = self.blocks();
        &self.bsums[r * nb * 16..(r + 1) * nb * 16]
    }

    /// Row `r`'s 32-element sum pairs (Q8_K): 4 per super-block.
    pub fn bpairs(&self, r: usize) -> &[i32] {
        let nb = self.blocks();
        &self.bpairs[r * nb * 4..(r + 1) * nb * 4]
    }
}

/// Raw views of a [`QActs`]'s buffers, so pool workers can fill distinct rows at once.
#[derive(Clone, Copy)]
struct RowOut {
    kind: ActKind,
    k: usize,
    nb: usize,
    lines: usize,
    qs: *mut Line,
    d: *mut f32,
    s: *mut f32,
    ysum: *mut i32,
    bsums: *mut i16,
    bpairs: *mut i32,
}

// SAFETY: the pointers stay valid while `quantize` runs; rows are disjoint.
unsafe impl Send for RowOut {}
unsafe impl Sync for RowOut {}

impl RowOut {
    fn new(a: &mut QActs) -> Self {
        Self {
            kind: a.kind,
            k: a.k,
            nb: a.blocks(),
            lines: a.row_lines(),
            qs: a.qs.as_mut_ptr(),
            d: a.d.as_mut_ptr(),
            s: a.s.as_mut_ptr(),
            ysum: a.ysum.as_mut_ptr(),
            bsums: a.bsums.as_mut_ptr(),
            bpairs: a.bpairs.as_mut_ptr(),
        }
    }

    /// [`RowOut::row`] compiled for AVX-512 or AVX2 where the CPU has them (the compiler
    /// vectorises it; the arithmetic is the same).
    ///
    /// # Safety
    /// As [`RowOut::row`].
    unsafe fn row_fast(self, r: usize, x: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            unsafe fn avx512(out: RowOut, r: usize, x: &[f32]) {
                unsafe { out.row(r, x) }
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(out: RowOut, r: usize, x: &[f32]) {
                unsafe { out.row(r, x) }
            }
            match crate::ops::simd_level() {
                // SAFETY: the CPU has the features (simd_level); the rest as for `row`.
                2 => return unsafe { avx512(self, r, x) },
                1 => return unsafe { avx2(self, r, x) },
                _ => {}
            }
        }
        unsafe { self.row(r, x) }
    }

    /// Quantizes row `r` from `x`.
    ///
    /// # Safety
    /// `r` is a row of the buffers this was made from, and no other thread writes row `r`.
    #[inline(always)]
    unsafe fn row(self, r: usize, x: &[f32]) {
        let nb = self.nb;
        // SAFETY (all slices): row r's ranges of buffers sized by `resize`.
        let qs = unsafe {
            std::slice::from_raw_parts_mut(self.qs.add(r * self.lines) as *mut i8, self.k)
        };
        let d = unsafe { std::slice::from_raw_parts_mut(self.d.add(r * nb), nb) };
        match self.kind {
            ActKind::Q8_0 | ActKind::Q8_1 => {
                for (b, (xs, q)) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).enumerate() {
                    let q: &mut [i8; 32] = q.try_into().expect("32");
                    let (scale, sum) = q8_block(xs.try_into().expect("32"), q);
                    d[b] = f16::from_f32(scale).to_f32();
                    if self.kind == ActKind::Q8_1 {
                        unsafe {
                            *self.s.add(r * nb + b) = f16::from_f32(scale * sum as f32).to_f32()
                        };
                    } else {
                        let ys = unsafe {
                            std::slice::from_raw_parts_mut(self.ysum.add((r * nb + b) * 8), 8)
                        };
                        for (l, y) in ys.iter_mut().enumerate() {
                            *y = -q[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum::<i32>();
                        }
                    }
                }
            }
            ActKind::Q8K => {
                for (b, (xs, q)) in x
                    .chunks_exact(256)
                    .zip(qs.chunks_exact_mut(256))
                    .enumerate()
                {
                    let q: &mut [i8; 256] = q.try_into().expect("256");
                    d[b] = q8k_block(xs.try_into().expect("256"), q);
                    let bs = unsafe {
                        std::slice::from_raw_parts_mut(self.bsums.add((r * nb + b) * 16), 16)
                    };
                    for (s, qq) in bs.iter_mut().zip(q.chunks_exact(16)) {
                        *s = qq.iter().map(|&v| v as i16).sum();
                    }
                    let bp = unsafe {
                        std::slice::from_raw_parts_mut(self.bpairs.add((r * nb + b) * 4), 4)
                    };
                    for (p, pair) in bp.iter_mut().enumerate() {
                        let lo = bs[4 * p] as i32 + bs[4 * p + 1] as i32;
                        let hi = bs[4 * p + 2] as i32 + bs[4 * p + 3] as i32;
                        *pair = (lo & 0xffff) | (hi << 16);
                    }
                }
            }
        }
    }
}

/// Round half to even, as `_mm256_round_ps(_MM_ROUND_NEAREST)` and ggml's `nearest_int` do:
/// adding 1.5 * 2^23 leaves the rounded integer in the low mantissa bits (|v| < 2^22).
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let t = v + 12_582_912.0;
    (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// One 32-value block as ggml's AVX code quantizes it (`quantize_row_q8_0` / `_q8_1`):
/// d = max|x| / 127, multiplier 127 / max|x| (not 1/d), round half to even. Returns d (in f32,
/// before rounding to f16) and the sum of the quants.
#[inline(always)]
pub fn q8_block(xs: &[f32; 32], qs: &mut [i8; 32]) -> (f32, i32) {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(xs) {
        let i = nearest_int(v * id).clamp(-128, 127);
        *q = i as i8;
        sum += i;
    }
    (amax / 127.0, sum)
}

/// `quantize_row_q8_K_ref` for one 256-value super-block: scale -127/max (max = the value of
/// largest magnitude, first one on ties), `nearest_int`, clamped to 127. Returns d = 1/scale.
///
/// llama.cpp's 4-row variant (`ggml_quantize_mat_q8_K_4x8`, used for its repacked Q4_K GEMM)
/// picks the sign differently only when +max and -max both occur with -max first; real
/// activations essentially never tie exactly, so one rule serves both.
#[inline(always)]
pub fn q8k_block(xs: &[f32; 256], qs: &mut [i8; 256]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in xs {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        qs.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    1.0 / iscale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (v, want) in [
            (2.5f32, 2),
            (3.5, 4),
            (-2.5, -2),
            (-3.5, -4),
            (126.5, 126),
            (-0.4, 0),
            (0.6, 1),
        ] {
            assert_eq!(nearest_int(v), want, "{v}");
            assert_eq!(v.round_ties_even() as i32, want, "{v}");
        }
    }

    #[test]
    fn q8_rows_keep_their_extras() {
        let x: Vec<f32> = (0..256 * 2)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut a = QActs::new(ActKind::Q8_0);
        a.quantize(&x, 256);
        assert_eq!((a.rows(), a.blocks()), (2, 8));
        let (qs, ys) = (a.qs(1), a.ysum(1));
        for l in 0..64 {
            let s: i32 = qs[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum();
            assert_eq!(ys[l], -s);
        }
        let mut k = QActs::new(ActKind::Q8K);
        k.quantize(&x, 256);
        let (qs, bs, bp) = (k.qs(0), k.bsums(0), k.bpairs(0));
        for s in 0..16 {
            let want: i32 = qs[16 * s..16 * s + 16].iter().map(|&v| v as i32).sum();
            assert_eq!(bs[s] as i32, want);
        }
        let lo = (bp[1] as i16) as i32;
        let hi = bp[1] >> 16;
        assert_eq!(lo, bs[4] as i32 + bs[5] as i32);
        assert_eq!(hi, bs[6] as i32 + bs[7] as i32);
        for (i, &v) in x[..256].iter().enumerate() {
            let back = qs[i] as f32 * k.d(0)[0];
            assert!((back - v).abs() <= 7.2 / 127.0 * 0.51, "{i}");
        }
    }
}

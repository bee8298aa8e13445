//! Q4_K weights times Q8_K activations.
//!
//! On x86 llama.cpp repacks Q4_K matrices whose row count is a multiple of 8 and multiplies them
//! with `ggml_gemm_q4_K_8x8_q8_K` (four activation rows at a time) or `ggml_gemv_q4_K_8x8_q8_K`
//! (the `m % 4` leftover rows, and single-token decoding). Both sum integers exactly per output,
//! but convert to float at different points:
//! - [`Mode::PerPair`] (GEMM): every 64 elements (a pair of 32-element sub-blocks),
//!   `acc += float(sum scale * q4 * q8) * (d_w * d_a)`, and likewise for the mins;
//! - [`Mode::PerSuperBlock`] (GEMV): the same once per 256-element super-block;
//! - matrices it does not repack go through its tiled K-quant GEMM ([`Mode::Tiled`], batches of
//!   8 rows or more: per super-block `acc += (float(sum) * d_w - float(mins) * dmin_w) * d_a`)
//!   or `ggml_vec_dot_q4_K_q8_K` ([`Mode::VecDot`], AVX2: eight float lanes and a four-lane
//!   mins accumulator).
//!
//! The result is `acc - acc_mins`. The SIMD kernels work on 16-column tiles (see `repack`), one
//! column per 32-bit lane (VNNI / `maddubs` dot products of four bytes), and are bit-identical to
//! the scalar definition below, which also serves the matrices llama.cpp does not repack.

use super::act::QActs;
use super::blocks32::hsum8;
use super::Out;

pub(super) const BYTES: usize = crate::quant::Q4K.block_bytes();

/// Where llama.cpp converts Q4_K's integer sums to float (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    PerSuperBlock,
    PerPair,
    Tiled,
    VecDot,
}

/// The mode of activation row `r` for a matrix with `n` weight rows (llama.cpp's choice).
pub(super) fn mode(a: &QActs, n: usize, r: usize) -> Mode {
    if !n.is_multiple_of(8) {
        if a.batch_rows() >= 8 {
            Mode::Tiled
        } else {
            Mode::VecDot
        }
    } else if r < a.gemm_rows() {
        Mode::PerPair
    } else {
        Mode::PerSuperBlock
    }
}

fn f16_at(blk: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([blk[at], blk[at + 1]]).to_f32()
}

/// The eight 6-bit scales and mins packed in 12 bytes (`get_scale_min_k4`).
fn scales_mins(s: &[u8]) -> ([i32; 8], [i32; 8]) {
    let (mut sc, mut mn) = ([0i32; 8], [0i32; 8]);
    for j in 0..4 {
        sc[j] = (s[j] & 63) as i32;
        mn[j] = (s[j + 4] & 63) as i32;
    }
    for j in 4..8 {
        sc[j] = ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4)) as i32;
        mn[j] = ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as i32;
    }
    (sc, mn)
}

/// One output: weight column `w` (whole super-blocks) against activation row `r`.
#[inline(always)]
pub(super) fn dot(w: &[u8], a: &QActs, r: usize, mode: Mode) -> f32 {
    let (qs, d, bsums) = (a.qs(r), a.d(r), a.bsums(r));
    if mode == Mode::VecDot {
        return vec_dot(w, qs, d, bsums);
    }
    if mode == Mode::Tiled {
        return tiled(w, qs, d, bsums);
    }
    let (mut acc, mut acc_m) = (0f32, 0f32);
    for (b, blk) in w.chunks_exact(BYTES).enumerate() {
        let dd = f16_at(blk, 0) * d[b];
        let dm = f16_at(blk, 2) * d[b];
        let (sc, mn) = scales_mins(&blk[4..16]);
        let q = &blk[16..];
        let y = &qs[256 * b..256 * b + 256];
        let bs = &bsums[16 * b..16 * b + 16];
        let (mut isum_b, mut imin_b) = (0i32, 0i32);
        for p in 0..4 {
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                lo += (q[32 * p + l] & 0x0f) as i32 * y[64 * p + l] as i32;
                hi += (q[32 * p + l] >> 4) as i32 * y[64 * p + 32 + l] as i32;
            }
            let isum = sc[2 * p] * lo + sc[2 * p + 1] * hi;
            let bs_lo = bs[4 * p] as i32 + bs[4 * p + 1] as i32;
            let bs_hi = bs[4 * p + 2] as i32 + bs[4 * p + 3] as i32;
            let imin = mn[2 * p] * bs_lo + mn[2 * p + 1] * bs_hi;
            if mode == Mode::PerPair {
                acc = (isum as f32).mul_add(dd, acc);
                acc_m = (imin as f32).mul_add(dm, acc_m);
            } else {
                isum_b += isum;
                imin_b += imin;
            }
        }
        if mode == Mode::PerSuperBlock {
            acc = (isum_b as f32).mul_add(dd, acc);
            acc_m = (imin_b as f32).mul_add(dm, acc_m);
        }
    }
    acc - acc_m
}

/// llama.cpp's tiled GEMM (`tiled_run_micro_vnni_8x16`, as GCC contracts it): per super-block,
/// `acc = fma(fnmadd(float(mins), dmin_w, float(sum) * d_w), d_a, acc)`.
#[inline(always)]
fn tiled(w: &[u8], qs: &[i8], d: &[f32], bsums: &[i16]) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(BYTES).enumerate() {
        let (sc, mn) = scales_mins(&blk[4..16]);
        let q = &blk[16..];
        let y = &qs[256 * b..256 * b + 256];
        let bs = &bsums[16 * b..16 * b + 16];
        let (mut s1, mut s2) = (0i32, 0i32);
        for p in 0..4 {
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                lo += (q[32 * p + l] & 0x0f) as i32 * y[64 * p + l] as i32;
                hi += (q[32 * p + l] >> 4) as i32 * y[64 * p + 32 + l] as i32;
            }
            s1 += sc[2 * p] * lo + sc[2 * p + 1] * hi;
            s2 += mn[2 * p] * (bs[4 * p] as i32 + bs[4 * p + 1] as i32)
                + mn[2 * p + 1] * (bs[4 * p + 2] as i32 + bs[4 * p + 3] as i32);
        }
        let result = (-(s2 as f32)).mul_add(f16_at(blk, 2), s1 as f32 * f16_at(blk, 0));
        acc = result.mul_add(d[b], acc);
    }
    acc
}

/// `ggml_vec_dot_q4_K_q8_K`, AVX2 path.
#[inline(always)]
fn vec_dot(w: &[u8], qs: &[i8], d: &[f32], bsums: &[i16]) -> f32 {
    let mut acc = [0f32; 8];
    let mut acc_m = [0f32; 4];
    for (b, blk) in w.chunks_exact(BYTES).enumerate() {
        let dd = d[b] * f16_at(blk, 0);
        let dmin = -d[b] * f16_at(blk, 2);
        let (sc, mn) = scales_mins(&blk[4..16]);
        let q = &blk[16..];
        let y = &qs[256 * b..256 * b + 256];
        let bs = &bsums[16 * b..16 * b + 16];
        let q8s: [i32; 8] = std::array::from_fn(|i| bs[2 * i] as i32 + bs[2 * i + 1] as i32);
        for (i, am) in acc_m.iter_mut().enumerate() {
            let prod = mn[2 * i] * q8s[2 * i] + mn[2 * i + 1] * q8s[2 * i + 1];
            *am = dmin.mul_add(prod as f32, *am);
        }
        let mut sumi = [0i32; 8];
        for j in 0..4 {
            for (l, s) in sumi.iter_mut().enumerate() {
                let (mut lo, mut hi) = (0i32, 0i32);
                for e in 4 * l..4 * l + 4 {
                    lo += (q[32 * j + e] & 0x0f) as i32 * y[64 * j + e] as i32;
                    hi += (q[32 * j + e] >> 4) as i32 * y[64 * j + 32 + e] as i32;
                }
                *s += sc[2 * j] * lo + sc[2 * j + 1] * hi;
            }
        }
        for (a, &s) in acc.iter_mut().zip(&sumi) {
            *a = dd.mul_add(s as f32, *a);
        }
    }
    hsum8(&acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
}

/// `dst[r * n + c]` for every activation row and `c` in `cols` (`n` = the matrix's row count).
#[inline(always)]
pub(super) fn matmul_scalar(w: &[u8], n: usize, a: &QActs, cols: std::ops::Range<usize>, dst: Out) {
    let row_bytes = a.blocks() * BYTES;
    for c in cols {
        let wc = &w[c * row_bytes..(c + 1) * row_bytes];
        for r in 0..a.rows() {
            dst.put(r, c, dot(wc, a, r, mode(a, n, r)));
        }
    }
}

/// Activation rows as the tile kernels take them: the GEMM rows (`gemm_rows`, llama.cpp's
/// per-pair rounding) apart from the rest, each part in runs of `n` rows, then single rows.
/// Yields (first row, rows: `n` or 1, GEMM rounding).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) fn row_runs(a: &QActs, n: usize) -> impl Iterator<Item = (usize, usize, bool)> {
    let (m, gemm) = (a.rows(), a.gemm_rows());
    let mut r0 = 0;
    std::iter::from_fn(move || {
        (r0 < m).then(|| {
            let pair = r0 < gemm;
            let rows = if (if pair { gemm } else { m }) - r0 >= n {
                n
            } else {
                1
            };
            let run = (r0, rows, pair);
            r0 += rows;
            run
        })
    })
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use crate::kernels::act::QActs;
    use crate::kernels::Out;
    use std::arch::x86_64::*;

    /// Groups `groups` of a repacked Q4_K matrix (16 columns each, see `repack`) for every row;
    /// bit-identical to [`super::dot`] in the modes llama.cpp uses for repacked matrices.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VL/DQ/VNNI; `p` holds Q4_K tiles.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    pub unsafe fn matmul_packed(
        p: &crate::kernels::repack::Packed,
        a: &QActs,
        groups: std::ops::Range<usize>,
        dst: Out,
    ) {
        for g in groups {
            let (tiles, c0) = (p.group(g).as_ptr(), 16 * g);
            for (r0, rows, pair) in super::row_runs(a, 4) {
                unsafe {
                    match (rows, pair) {
                        (4, true) => packed_rows::<4, true>(tiles, p.blocks(), a, r0, c0, dst),
                        (4, false) => packed_rows::<4, false>(tiles, p.blocks(), a, r0, c0, dst),
                        (_, true) => packed_rows::<1, true>(tiles, p.blocks(), a, r0, c0, dst),
                        (_, false) => packed_rows::<1, false>(tiles, p.blocks(), a, r0, c0, dst),
                    }
                }
            }
        }
    }

    /// Rows r0..r0+N against one group's tiles (`PAIR`: llama.cpp's GEMM rounding, else GEMV);
    /// writes columns c0..c0+16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    unsafe fn packed_rows<const N: usize, const PAIR: bool>(
        tiles: *const u8,
        nb: usize,
        a: &QActs,
        r0: usize,
        c0: usize,
        dst: Out,
    ) {
        const TILE: usize = crate::quant::Q4K.tile();
        let y: [*const i32; N] = std::array::from_fn(|i| a.qs(r0 + i).as_ptr() as *const i32);
        let bp: [*const i32; N] = std::array::from_fn(|i| a.bpairs(r0 + i).as_ptr());
        let mut fa = [_mm512_setzero_ps(); N];
        let mut fm = [_mm512_setzero_ps(); N];
        let lo_mask = _mm512_set1_epi8(0x0f);
        let hi_mask = _mm512_set1_epi8(0xf0u8 as i8);
        for b in 0..nb {
            let t = unsafe { tiles.add(b * TILE) };
            let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(t as *const __m256i) });
            let dmin = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(t.add(32) as *const __m256i) });
            let mut tot = [_mm512_setzero_si512(); N];
            for p in 0..4 {
                let mut lo = [_mm512_setzero_si512(); N];
                let mut hi = [_mm512_setzero_si512(); N];
                for w in 0..8 {
                    let v = unsafe {
                        _mm512_loadu_si512(t.add(320 + 64 * (8 * p + w)) as *const __m512i)
                    };
                    let (vl, vh) = (_mm512_and_si512(v, lo_mask), _mm512_and_si512(v, hi_mask));
                    for i in 0..N {
                        let (yl, yh) = unsafe {
                            (
                                *y[i].add(64 * b + 16 * p + w),
                                *y[i].add(64 * b + 16 * p + 8 + w),
                            )
                        };
                        lo[i] = _mm512_dpbusd_epi32(lo[i], vl, _mm512_set1_epi32(yl));
                        hi[i] = _mm512_dpbusd_epi32(hi[i], vh, _mm512_set1_epi32(yh));
                    }
                }
                let s_lo = _mm512_cvtepu8_epi32(unsafe {
                    _mm_loadu_si128(t.add(64 + 32 * p) as *const __m128i)
                });
                let s_hi = _mm512_cvtepu8_epi32(unsafe {
                    _mm_loadu_si128(t.add(80 + 32 * p) as *const __m128i)
                });
                for i in 0..N {
                    // The high nibbles were multiplied in place (x16); the product is exact.
                    let isum = _mm512_add_epi32(
                        _mm512_mullo_epi32(lo[i], s_lo),
                        _mm512_srai_epi32::<4>(_mm512_mullo_epi32(hi[i], s_hi)),
                    );
                    if PAIR {
                        let dd = _mm512_mul_ps(d, _mm512_set1_ps(a.d(r0 + i)[b]));
                        fa[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), dd, fa[i]);
                    } else {
                        tot[i] = _mm512_add_epi32(tot[i], isum);
                    }
                }
            }
            for i in 0..N {
                let dy = _mm512_set1_ps(a.d(r0 + i)[b]);
                if !PAIR {
                    fa[i] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[i]), _mm512_mul_ps(d, dy), fa[i]);
                }
                let dm = _mm512_mul_ps(dmin, dy);
                let mut totm = _mm512_setzero_si512();
                for p in 0..4 {
                    let mins = _mm512_cvtepu8_epi16(unsafe {
                        _mm256_loadu_si256(t.add(192 + 32 * p) as *const __m256i)
                    });
                    let imin = _mm512_madd_epi16(
                        mins,
                        _mm512_set1_epi32(unsafe { *bp[i].add(4 * b + p) }),
                    );
                    if PAIR {
                        fm[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin), dm, fm[i]);
                    } else {
                        totm = _mm512_add_epi32(totm, imin);
                    }
                }
                if !PAIR {
                    fm[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(totm), dm, fm[i]);
                }
            }
        }
        for i in 0..N {
            unsafe { _mm512_storeu_ps(dst.row(r0 + i).add(c0), _mm512_sub_ps(fa[i], fm[i])) };
        }
    }
}

/// The tile kernel for AVX2 CPUs: each 16-column tile as two 8-column halves, byte products with
/// `maddubs` (pair sums at most 2 * 15 * 127; eight of them fit an i16) and the scale applied by
/// `madd`, as llama.cpp's AVX2 code does; bit-identical to the scalar definition.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use crate::kernels::act::QActs;
    use crate::kernels::Out;
    use std::arch::x86_64::*;

    const TILE: usize = crate::quant::Q4K.tile();

    /// As [`super::avx512::matmul_packed`], bit for bit.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `p` holds Q4_K tiles.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn matmul_packed(
        p: &crate::kernels::repack::Packed,
        a: &QActs,
        groups: std::ops::Range<usize>,
        dst: Out,
    ) {
        for g in groups {
            let tiles = p.group(g).as_ptr();
            for r in 0..a.rows() {
                let pair = r < a.gemm_rows();
                if a.rows() == 1 {
                    // Decoding: the tiles stream from memory once.
                    unsafe { row(tiles, p.blocks(), a, r, 16 * g, pair, dst) };
                } else {
                    // Several rows: the tiles are in cache after the first; eight columns at a
                    // time keep every value in a register.
                    for h in 0..2 {
                        unsafe { half_row(tiles, p.blocks(), a, r, 16 * g + 8 * h, h, pair, dst) };
                    }
                }
            }
        }
    }

    /// Eight columns' byte values as i16 pairs (the value in both halves of each lane).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pairs(p: *const u8) -> __m256i {
        let v = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p as *const __m128i) });
        _mm256_or_si256(v, _mm256_slli_epi32::<16>(v))
    }

    /// Row `r` against the group's 16 columns, as two 8-column halves (`h`) in one pass over the
    /// tiles: each 64-byte line is used whole while it streams in from memory.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row(
        tiles: *const u8,
        nb: usize,
        a: &QActs,
        r: usize,
        c0: usize,
        pair: bool,
        dst: Out,
    ) {
        let y = a.qs(r).as_ptr() as *const i32;
        let bp = a.bpairs(r).as_ptr();
        let nib = _mm256_set1_epi8(0x0f);
        let (mut fa, mut fm) = ([_mm256_setzero_ps(); 2], [_mm256_setzero_ps(); 2]);
        for b in 0..nb {
            let t = unsafe { tiles.add(b * TILE) };
            let dy = _mm256_set1_ps(a.d(r)[b]);
            let f16s = |at: usize| {
                _mm256_cvtph_ps(unsafe { _mm_loadu_si128(t.add(at) as *const __m128i) })
            };
            let dd = [0, 1].map(|h| _mm256_mul_ps(f16s(16 * h), dy));
            let dm = [0, 1].map(|h| _mm256_mul_ps(f16s(32 + 16 * h), dy));
            let mut tot = [_mm256_setzero_si256(); 2];
            let mut totm = [_mm256_setzero_si256(); 2];
            for p in 0..4 {
                let mut lo = [_mm256_setzero_si256(); 2];
                let mut hi = [_mm256_setzero_si256(); 2];
                for w in 0..8 {
                    let (yl, yh) = unsafe {
                        (
                            _mm256_set1_epi32(*y.add(64 * b + 16 * p + w)),
                            _mm256_set1_epi32(*y.add(64 * b + 16 * p + 8 + w)),
                        )
                    };
                    for h in 0..2 {
                        let v = unsafe {
                            _mm256_loadu_si256(
                                t.add(320 + 64 * (8 * p + w) + 32 * h) as *const __m256i
                            )
                        };
                        lo[h] = _mm256_add_epi16(
                            lo[h],
                            _mm256_maddubs_epi16(_mm256_and_si256(v, nib), yl),
                        );
                        hi[h] = _mm256_add_epi16(
                            hi[h],
                            _mm256_maddubs_epi16(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib),
                                yh,
                            ),
                        );
                    }
                }
                let ymin = _mm256_set1_epi32(unsafe { *bp.add(4 * b + p) });
                for h in 0..2 {
                    let isum = unsafe {
                        _mm256_add_epi32(
                            _mm256_madd_epi16(lo[h], pairs(t.add(64 + 32 * p + 8 * h))),
                            _mm256_madd_epi16(hi[h], pairs(t.add(80 + 32 * p + 8 * h))),
                        )
                    };
                    let mins = _mm256_cvtepu8_epi16(unsafe {
                        _mm_loadu_si128(t.add(192 + 32 * p + 16 * h) as *const __m128i)
                    });
                    let imin = _mm256_madd_epi16(mins, ymin);
                    if pair {
                        fa[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), dd[h], fa[h]);
                        fm[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin), dm[h], fm[h]);
                    } else {
                        tot[h] = _mm256_add_epi32(tot[h], isum);
                        totm[h] = _mm256_add_epi32(totm[h], imin);
                    }
                }
            }
            if !pair {
                for h in 0..2 {
                    fa[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot[h]), dd[h], fa[h]);
                    fm[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(totm[h]), dm[h], fm[h]);
                }
            }
        }
        for h in 0..2 {
            let out = unsafe { dst.row(r).add(c0 + 8 * h) };
            unsafe { _mm256_storeu_ps(out, _mm256_sub_ps(fa[h], fm[h])) };
        }
    }

    /// Row `r` against the eight columns of half `h` of the group.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn half_row(
        tiles: *const u8,
        nb: usize,
        a: &QActs,
        r: usize,
        c0: usize,
        h: usize,
        pair: bool,
        dst: Out,
    ) {
        let y = a.qs(r).as_ptr() as *const i32;
        let bp = a.bpairs(r).as_ptr();
        let nib = _mm256_set1_epi8(0x0f);
        let (mut fa, mut fm) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for b in 0..nb {
            let t = unsafe { tiles.add(b * TILE) };
            let dy = _mm256_set1_ps(a.d(r)[b]);
            let dd = _mm256_mul_ps(
                _mm256_cvtph_ps(unsafe { _mm_loadu_si128(t.add(16 * h) as *const __m128i) }),
                dy,
            );
            let dm = _mm256_mul_ps(
                _mm256_cvtph_ps(unsafe { _mm_loadu_si128(t.add(32 + 16 * h) as *const __m128i) }),
                dy,
            );
            let (mut tot, mut totm) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for p in 0..4 {
                let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for w in 0..8 {
                    let v = unsafe {
                        _mm256_loadu_si256(t.add(320 + 64 * (8 * p + w) + 32 * h) as *const __m256i)
                    };
                    let (yl, yh) =
                        unsafe { (*y.add(64 * b + 16 * p + w), *y.add(64 * b + 16 * p + 8 + w)) };
                    lo = _mm256_add_epi16(
                        lo,
                        _mm256_maddubs_epi16(_mm256_and_si256(v, nib), _mm256_set1_epi32(yl)),
                    );
                    hi = _mm256_add_epi16(
                        hi,
                        _mm256_maddubs_epi16(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib),
                            _mm256_set1_epi32(yh),
                        ),
                    );
                }
                let isum = unsafe {
                    _mm256_add_epi32(
                        _mm256_madd_epi16(lo, pairs(t.add(64 + 32 * p + 8 * h))),
                        _mm256_madd_epi16(hi, pairs(t.add(80 + 32 * p + 8 * h))),
                    )
                };
                let mins = _mm256_cvtepu8_epi16(unsafe {
                    _mm_loadu_si128(t.add(192 + 32 * p + 16 * h) as *const __m128i)
                });
                let imin =
                    _mm256_madd_epi16(mins, _mm256_set1_epi32(unsafe { *bp.add(4 * b + p) }));
                if pair {
                    fa = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), dd, fa);
                    fm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin), dm, fm);
                } else {
                    tot = _mm256_add_epi32(tot, isum);
                    totm = _mm256_add_epi32(totm, imin);
                }
            }
            if !pair {
                fa = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), dd, fa);
                fm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(totm), dm, fm);
            }
        }
        unsafe { _mm256_storeu_ps(dst.row(r).add(c0), _mm256_sub_ps(fa, fm)) };
    }
}

/// The tile kernel for ARM CPUs with the dot-product extension: each 16-column tile as four
/// quarters of four columns (one per 32-bit lane), nibbles times activation bytes with `SDOT`;
/// bit-identical to the scalar definition, like the x86 kernels.
#[cfg(target_arch = "aarch64")]
pub(super) mod neon {
    use crate::kernels::act::QActs;
    use crate::kernels::neon::{bcast, f16x16, sdot, widen16};
    use crate::kernels::Out;
    use std::arch::aarch64::*;

    const TILE: usize = crate::quant::Q4K.tile();

    /// As [`super::avx512::matmul_packed`], bit for bit.
    ///
    /// # Safety
    /// The CPU supports NEON with the dot-product extension; `p` holds Q4_K tiles.
    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn matmul_packed(
        p: &crate::kernels::repack::Packed,
        a: &QActs,
        groups: std::ops::Range<usize>,
        dst: Out,
    ) {
        for g in groups {
            let (tiles, c0) = (p.group(g).as_ptr(), 16 * g);
            for (r0, rows, pair) in super::row_runs(a, 2) {
                unsafe {
                    match (rows, pair) {
                        (2, true) => packed_rows::<2, true>(tiles, p.blocks(), a, r0, c0, dst),
                        (2, false) => packed_rows::<2, false>(tiles, p.blocks(), a, r0, c0, dst),
                        (_, true) => packed_rows::<1, true>(tiles, p.blocks(), a, r0, c0, dst),
                        (_, false) => packed_rows::<1, false>(tiles, p.blocks(), a, r0, c0, dst),
                    }
                }
            }
        }
    }

    /// Rows r0..r0+N against one group's tiles (`PAIR`: llama.cpp's GEMM rounding, else GEMV);
    /// writes columns c0..c0+16.
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn packed_rows<const N: usize, const PAIR: bool>(
        tiles: *const u8,
        nb: usize,
        a: &QActs,
        r0: usize,
        c0: usize,
        dst: Out,
    ) {
        let y: [*const i32; N] = std::array::from_fn(|i| a.qs(r0 + i).as_ptr() as *const i32);
        let bp: [*const i32; N] = std::array::from_fn(|i| a.bpairs(r0 + i).as_ptr());
        let mut fa = [[vdupq_n_f32(0.0); 4]; N];
        let mut fm = [[vdupq_n_f32(0.0); 4]; N];
        let nib = vdupq_n_u8(0x0f);
        for b in 0..nb {
            let t = unsafe { tiles.add(b * TILE) };
            let (d, dmin) = unsafe { (f16x16(t), f16x16(t.add(32))) };
            let dy: [f32; N] = std::array::from_fn(|i| a.d(r0 + i)[b]);
            let mut tot = [[vdupq_n_s32(0); 4]; N];
            let mut totm = [[vdupq_n_s32(0); 4]; N];
            for p in 0..4 {
                let (s_lo, s_hi) = unsafe {
                    (
                        widen16::<false>(vld1q_u8(t.add(64 + 32 * p))),
                        widen16::<false>(vld1q_u8(t.add(80 + 32 * p))),
                    )
                };
                // The sub-block pair's mins, [mn[2p], mn[2p+1]] per column, deinterleaved.
                let mins = unsafe { vld2q_u8(t.add(192 + 32 * p)) };
                let (mn_lo, mn_hi) = (widen16::<false>(mins.0), widen16::<false>(mins.1));
                for k in 0..4 {
                    let mut lo = [vdupq_n_s32(0); N];
                    let mut hi = [vdupq_n_s32(0); N];
                    for w in 0..8 {
                        let v = unsafe { vld1q_u8(t.add(320 + 64 * (8 * p + w) + 16 * k)) };
                        let vl = vreinterpretq_s8_u8(vandq_u8(v, nib));
                        let vh = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
                        for i in 0..N {
                            let (yl, yh) = unsafe {
                                (
                                    *y[i].add(64 * b + 16 * p + w),
                                    *y[i].add(64 * b + 16 * p + 8 + w),
                                )
                            };
                            lo[i] = sdot(lo[i], vl, bcast(yl));
                            hi[i] = sdot(hi[i], vh, bcast(yh));
                        }
                    }
                    for i in 0..N {
                        let isum = vmlaq_s32(vmulq_s32(lo[i], s_lo[k]), hi[i], s_hi[k]);
                        let pairs = unsafe { *bp[i].add(4 * b + p) };
                        let (b_lo, b_hi) = (pairs as i16 as i32, pairs >> 16);
                        let imin = vmlaq_n_s32(vmulq_n_s32(mn_lo[k], b_lo), mn_hi[k], b_hi);
                        if PAIR {
                            let dd = vmulq_n_f32(d[k], dy[i]);
                            let dm = vmulq_n_f32(dmin[k], dy[i]);
                            fa[i][k] = vfmaq_f32(fa[i][k], vcvtq_f32_s32(isum), dd);
                            fm[i][k] = vfmaq_f32(fm[i][k], vcvtq_f32_s32(imin), dm);
                        } else {
                            tot[i][k] = vaddq_s32(tot[i][k], isum);
                            totm[i][k] = vaddq_s32(totm[i][k], imin);
                        }
                    }
                }
            }
            if !PAIR {
                for i in 0..N {
                    for k in 0..4 {
                        let dd = vmulq_n_f32(d[k], dy[i]);
                        let dm = vmulq_n_f32(dmin[k], dy[i]);
                        fa[i][k] = vfmaq_f32(fa[i][k], vcvtq_f32_s32(tot[i][k]), dd);
                        fm[i][k] = vfmaq_f32(fm[i][k], vcvtq_f32_s32(totm[i][k]), dm);
                    }
                }
            }
        }
        for i in 0..N {
            for k in 0..4 {
                let out = unsafe { dst.row(r0 + i).add(c0 + 4 * k) };
                unsafe { vst1q_f32(out, vsubq_f32(fa[i][k], fm[i][k])) };
            }
        }
    }
}

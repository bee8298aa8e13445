//! Q6_K weights times Q8_K activations, as llama.cpp computes them on x86 (which does not
//! repack Q6_K). Two paths, chosen by the number of activation rows:
//! - 8 rows or more, its tiled K-quant GEMM: per super-block the exact integer
//!   `s = sum scale * (q - 32) * y`, then `acc = fma(float(s) * d_w, d_a, acc)` (GCC contracts
//!   the kernel's multiply and add into that FMA);
//! - fewer, `ggml_vec_dot_q6_K_q8_K` (AVX2): eight integer lanes, lane l summing quants
//!   4l..4l+3 of every 32-element chunk times that chunk half's scale, minus
//!   `32 * scale . bsums` for its two 16-element groups; each lane converted and accumulated with
//!   one FMA by `d_a * d_w`, the lanes added pairwise at the end.
//!
//! The SIMD kernels work on 16-column tiles (see `repack`), one column per 32-bit lane and each
//! of ggml's eight lanes in its own register; they are bit-identical to the scalar code.

use super::act::QActs;
use super::blocks32::hsum8;
use super::Out;

pub(super) const BYTES: usize = crate::quant::Q6K.block_bytes();

/// The 256 quants of a block (0..63; the value is q - 32) in element order.
#[inline(always)]
fn unpack(blk: &[u8]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for j in 0..2 {
        let ql = &blk[64 * j..64 * j + 64];
        let qh = &blk[128 + 32 * j..128 + 32 * j + 32];
        for l in 0..32 {
            q[128 * j + l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
            q[128 * j + 32 + l] = (ql[32 + l] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
            q[128 * j + 64 + l] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            q[128 * j + 96 + l] = (ql[32 + l] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    q
}

/// Whether llama.cpp takes its tiled GEMM path for this many activation rows.
pub(super) fn tiled(a: &QActs) -> bool {
    a.batch_rows() >= 8
}

/// One output: weight column `w` (whole super-blocks) against activation row `r`.
#[inline(always)]
pub(super) fn dot(w: &[u8], a: &QActs, r: usize) -> f32 {
    let (qs, d, bsums) = (a.qs(r), a.d(r), a.bsums(r));
    if tiled(a) {
        let mut acc = 0f32;
        for (b, blk) in w.chunks_exact(BYTES).enumerate() {
            let q = unpack(blk);
            let xd = half::f16::from_le_bytes([blk[208], blk[209]]).to_f32();
            let y = &qs[256 * b..256 * b + 256];
            let mut s = 0i32;
            for (g, (qq, yy)) in q.chunks_exact(16).zip(y.chunks_exact(16)).enumerate() {
                let raw: i32 = qq
                    .iter()
                    .zip(yy)
                    .map(|(&q, &y)| (q as i32 - 32) * y as i32)
                    .sum();
                s += blk[192 + g] as i8 as i32 * raw;
            }
            acc = (s as f32 * xd).mul_add(d[b], acc);
        }
        return acc;
    }
    let mut acc = [0f32; 8];
    for (b, blk) in w.chunks_exact(BYTES).enumerate() {
        let q = unpack(blk);
        let sc: [i32; 16] = std::array::from_fn(|i| blk[192 + i] as i8 as i32);
        let xd = half::f16::from_le_bytes([blk[208], blk[209]]).to_f32();
        let dd = d[b] * xd;
        let y = &qs[256 * b..256 * b + 256];
        let bs = &bsums[16 * b..16 * b + 16];
        for (l, acc) in acc.iter_mut().enumerate() {
            let mut sumi = 0i32;
            for chunk in 0..8 {
                let scale = sc[2 * chunk + usize::from(l >= 4)];
                let at = 32 * chunk + 4 * l;
                let s4: i32 = (at..at + 4).map(|e| q[e] as i32 * y[e] as i32).sum();
                sumi += scale * s4;
            }
            sumi -= 32 * (bs[2 * l] as i32 * sc[2 * l] + bs[2 * l + 1] as i32 * sc[2 * l + 1]);
            *acc = dd.mul_add(sumi as f32, *acc);
        }
    }
    hsum8(&acc)
}

/// `dst[r * n + c]` for every activation row and `c` in `cols`.
#[inline(always)]
pub(super) fn matmul_scalar(w: &[u8], a: &QActs, cols: std::ops::Range<usize>, dst: Out) {
    let row_bytes = a.blocks() * BYTES;
    for c in cols {
        let wc = &w[c * row_bytes..(c + 1) * row_bytes];
        for r in 0..a.rows() {
            dst.put(r, c, dot(wc, a, r));
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use crate::kernels::act::QActs;
    use crate::kernels::Out;
    use std::arch::x86_64::*;

    const TILE: usize = crate::quant::Q6K.tile();

    /// Groups `groups` of a repacked Q6_K matrix (16 columns each, see `repack`) for every row;
    /// bit-identical to [`super::dot`].
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VL/DQ/VNNI; `p` holds Q6_K tiles.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    pub unsafe fn matmul_packed(
        p: &crate::kernels::repack::Packed,
        a: &QActs,
        groups: std::ops::Range<usize>,
        dst: Out,
    ) {
        let m = a.rows();
        let tiled = super::tiled(a);
        for g in groups {
            let tiles = p.group(g).as_ptr();
            let c0 = 16 * g;
            let mut r0 = 0;
            while r0 < m {
                unsafe {
                    if !tiled {
                        vec_dot_row(tiles, p.blocks(), a, r0, c0, dst);
                        r0 += 1;
                    } else if m - r0 >= 3 {
                        tiled_rows::<3>(tiles, p.blocks(), a, r0, c0, dst);
                        r0 += 3;
                    } else {
                        tiled_rows::<1>(tiles, p.blocks(), a, r0, c0, dst);
                        r0 += 1;
                    }
                }
            }
        }
    }

    /// The four chunks' quants (0..63) of dword w of half j, for 16 columns.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    unsafe fn quants(t: *const u8, j: usize, w: usize) -> [__m512i; 4] {
        let step = crate::kernels::repack::q6k_step(j, w);
        let (qla, qlb, qh) = unsafe {
            (
                _mm512_loadu_si512(t.add(step) as *const __m512i),
                _mm512_loadu_si512(t.add(step + 64) as *const __m512i),
                _mm512_loadu_si512(t.add(step + 128) as *const __m512i),
            )
        };
        let m0f = _mm512_set1_epi8(0x0f);
        let m30 = _mm512_set1_epi8(0x30);
        let or_masked = |a: __m512i, b: __m512i| {
            _mm512_or_si512(_mm512_and_si512(a, m0f), _mm512_and_si512(b, m30))
        };
        [
            or_masked(qla, _mm512_slli_epi16::<4>(qh)),
            or_masked(qlb, _mm512_slli_epi16::<2>(qh)),
            or_masked(_mm512_srli_epi16::<4>(qla), qh),
            or_masked(_mm512_srli_epi16::<4>(qlb), _mm512_srli_epi16::<2>(qh)),
        ]
    }

    /// Scale s of the 16 columns, sign-extended to i32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    unsafe fn scale(t: *const u8, s: usize) -> __m512i {
        _mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(t.add(32 + 16 * s) as *const __m128i) })
    }

    /// Two i32 vectors' low halves as i16 pairs (`a` low, `b` high) per lane.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    fn pairs(a: __m512i, b: __m512i) -> __m512i {
        _mm512_mask_blend_epi16(0xaaaa_aaaa, a, _mm512_slli_epi32::<16>(b))
    }

    /// One row, `ggml_vec_dot_q6_K_q8_K`'s eight lanes kept in eight registers (16 columns each).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    unsafe fn vec_dot_row(tiles: *const u8, nb: usize, a: &QActs, r: usize, c0: usize, dst: Out) {
        let y = a.qs(r).as_ptr() as *const i32;
        let bs = a.bsums(r).as_ptr() as *const i32;
        let mut acc = [_mm512_setzero_ps(); 8];
        for b in 0..nb {
            let t = unsafe { tiles.add(b * TILE) };
            // The tile two ahead (the next group's, which this thread usually runs next, for
            // the last two; past the end a prefetch is only a hint). Decoding streams the
            // matrix from DRAM faster than the hardware prefetcher alone fetches it here: with
            // the quants in the order this loop reads them (`repack::q6k_step`), prefetching
            // two tiles ahead streamed ffn_down and the LM head 8-15% faster than none, one
            // ahead or four ahead (`bench-kernels`, 1 and 2 threads).
            for k in 0..TILE.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(t.wrapping_add(2 * TILE + 64 * k) as *const i8);
            }
            let mut isum = [_mm512_setzero_si512(); 8];
            for j in 0..2 {
                for h in 0..2 {
                    // Lanes w = 4h..4h+4 read chunk c's group 8j + 2c + h: its scale, widened to
                    // i16 pairs once for the four lanes instead of once per lane.
                    let sp: [__m512i; 4] = std::array::from_fn(|c| {
                        let sc = unsafe { scale(t, 8 * j + 2 * c + h) };
                        pairs(sc, sc)
                    });
                    for w in 4 * h..4 * h + 4 {
                        let q = unsafe { quants(t, j, w) };
                        for c in 0..4 {
                            let y4 =
                                _mm512_set1_epi32(unsafe { *y.add(64 * b + 32 * j + 8 * c + w) });
                            // Quants < 64 times |y| <= 128: the byte-pair sums stay inside i16
                            // (no saturation), and VNNI's word dot adds scale x pair sum to the
                            // lane in one instruction (madd + add, the same exact integers).
                            let p = _mm512_maddubs_epi16(q[c], y4);
                            isum[w] = _mm512_dpwssd_epi32(isum[w], p, sp[c]);
                        }
                    }
                }
            }
            let d = _mm512_mul_ps(
                _mm512_set1_ps(a.d(r)[b]),
                _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(t as *const __m256i) }),
            );
            for w in 0..8 {
                let scp = unsafe { pairs(scale(t, 2 * w), scale(t, 2 * w + 1)) };
                let sub = _mm512_madd_epi16(scp, _mm512_set1_epi32(unsafe { *bs.add(8 * b + w) }));
                let s = _mm512_sub_epi32(isum[w], _mm512_slli_epi32::<5>(sub));
                acc[w] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[w]);
            }
        }
        let (t0, t1) = (_mm512_add_ps(acc[4], acc[0]), _mm512_add_ps(acc[5], acc[1]));
        let (t2, t3) = (_mm512_add_ps(acc[6], acc[2]), _mm512_add_ps(acc[7], acc[3]));
        let res = _mm512_add_ps(_mm512_add_ps(t0, t2), _mm512_add_ps(t1, t3));
        unsafe { _mm512_storeu_ps(dst.row(r).add(c0), res) };
    }

    /// Rows r0..r0+N, llama.cpp's tiled GEMM arithmetic: the super-block's exact integer, then
    /// `acc = fma(float(s) * d_w, d_a, acc)`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    unsafe fn tiled_rows<const N: usize>(
        tiles: *const u8,
        nb: usize,
        a: &QActs,
        r0: usize,
        c0: usize,
        dst: Out,
    ) {
        let y: [*const i32; N] = std::array::from_fn(|i| a.qs(r0 + i).as_ptr() as *const i32);
        let bs: [*const i32; N] = std::array::from_fn(|i| a.bsums(r0 + i).as_ptr() as *const i32);
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            let t = unsafe { tiles.add(b * TILE) };
            let mut tot = [_mm512_setzero_si512(); N];
            for j in 0..2 {
                for h in 0..2 {
                    // Chunk c's 16-element group 8j + 2c + h: dwords w = 4h..4h+4.
                    let mut raw = [[_mm512_setzero_si512(); 4]; N];
                    for w in 4 * h..4 * h + 4 {
                        let q = unsafe { quants(t, j, w) };
                        for c in 0..4 {
                            for i in 0..N {
                                let y4 = _mm512_set1_epi32(unsafe {
                                    *y[i].add(64 * b + 32 * j + 8 * c + w)
                                });
                                raw[i][c] = _mm512_dpbusd_epi32(raw[i][c], q[c], y4);
                            }
                        }
                    }
                    for c in 0..4 {
                        let sc = unsafe { scale(t, 8 * j + 2 * c + h) };
                        for i in 0..N {
                            tot[i] = _mm512_add_epi32(tot[i], _mm512_mullo_epi32(raw[i][c], sc));
                        }
                    }
                }
            }
            let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(t as *const __m256i) });
            for i in 0..N {
                let mut bias = _mm512_setzero_si512();
                for k in 0..8 {
                    let scp = unsafe { pairs(scale(t, 2 * k), scale(t, 2 * k + 1)) };
                    bias = _mm512_add_epi32(
                        bias,
                        _mm512_madd_epi16(scp, _mm512_set1_epi32(unsafe { *bs[i].add(8 * b + k) })),
                    );
                }
                let s = _mm512_sub_epi32(tot[i], _mm512_slli_epi32::<5>(bias));
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(s), d);
                acc[i] = _mm512_fmadd_ps(v, _mm512_set1_ps(a.d(r0 + i)[b]), acc[i]);
            }
        }
        for i in 0..N {
            unsafe { _mm512_storeu_ps(dst.row(r0 + i).add(c0), acc[i]) };
        }
    }
}

/// The tile kernel for AVX2 CPUs: each 16-column tile as two 8-column halves, byte products with
/// `maddubs` (quants below 64, so pair sums stay below 2^14) and scales applied by `madd`;
/// bit-identical to the scalar definition.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use crate::kernels::act::QActs;
    use crate::kernels::Out;
    use std::arch::x86_64::*;

    const TILE: usize = crate::quant::Q6K.tile();

    /// As [`super::avx512::matmul_packed`], bit for bit.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `p` holds Q6_K tiles.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn matmul_packed(
        p: &crate::kernels::repack::Packed,
        a: &QActs,
        groups: std::ops::Range<usize>,
        dst: Out,
    ) {
        let tiled = super::tiled(a);
        for g in groups {
            let tiles = p.group(g).as_ptr();
            if a.rows() == 1 {
                // Decoding: both halves in one pass, so the tiles stream from memory once.
                unsafe { vec_dot_row(tiles, p.blocks(), a, 0, 16 * g, dst) };
                continue;
            }
            for r in 0..a.rows() {
                for h in 0..2 {
                    let c0 = 16 * g + 8 * h;
                    unsafe {
                        if tiled {
                            tiled_half_row(tiles, p.blocks(), a, r, c0, h, dst)
                        } else {
                            vec_dot_half_row(tiles, p.blocks(), a, r, c0, h, dst)
                        }
                    }
                }
            }
        }
    }

    /// The four chunks' quants of dword w of half j, for columns 8h..8h+8.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(t: *const u8, j: usize, w: usize, h: usize) -> [__m256i; 4] {
        let step = crate::kernels::repack::q6k_step(j, w);
        let load = |at: usize| unsafe { _mm256_loadu_si256(t.add(at + 32 * h) as *const __m256i) };
        let (qla, qlb, qh) = (load(step), load(step + 64), load(step + 128));
        let m0f = _mm256_set1_epi8(0x0f);
        let m30 = _mm256_set1_epi8(0x30);
        let or_masked = |a: __m256i, b: __m256i| {
            _mm256_or_si256(_mm256_and_si256(a, m0f), _mm256_and_si256(b, m30))
        };
        [
            or_masked(qla, _mm256_slli_epi16::<4>(qh)),
            or_masked(qlb, _mm256_slli_epi16::<2>(qh)),
            or_masked(_mm256_srli_epi16::<4>(qla), qh),
            or_masked(_mm256_srli_epi16::<4>(qlb), _mm256_srli_epi16::<2>(qh)),
        ]
    }

    /// Scale s of the eight columns, sign-extended to i32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale(t: *const u8, s: usize, h: usize) -> __m256i {
        _mm256_cvtepi8_epi32(unsafe {
            _mm_loadl_epi64(t.add(32 + 16 * s + 8 * h) as *const __m128i)
        })
    }

    /// Two i32 vectors' low halves as i16 pairs (`a` low, `b` high) per lane.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn pairs(a: __m256i, b: __m256i) -> __m256i {
        _mm256_blend_epi16::<0b1010_1010>(a, _mm256_slli_epi32::<16>(b))
    }

    /// [`vec_dot_half_row`] for both halves of the group at once.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn vec_dot_row(tiles: *const u8, nb: usize, a: &QActs, r: usize, c0: usize, dst: Out) {
        let y = a.qs(r).as_ptr() as *const i32;
        let bs = a.bsums(r).as_ptr() as *const i32;
        let mut acc = [[_mm256_setzero_ps(); 8]; 2];
        for b in 0..nb {
            let t = unsafe { tiles.add(b * TILE) };
            let d = [0, 1].map(|h| {
                _mm256_mul_ps(
                    _mm256_set1_ps(a.d(r)[b]),
                    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(t.add(16 * h) as *const __m128i) }),
                )
            });
            for w in 0..8 {
                let mut isum = [_mm256_setzero_si256(); 2];
                for j in 0..2 {
                    let q = [0, 1].map(|h| unsafe { quants(t, j, w, h) });
                    for c in 0..4 {
                        let y4 = _mm256_set1_epi32(unsafe { *y.add(64 * b + 32 * j + 8 * c + w) });
                        for h in 0..2 {
                            let sc = unsafe { scale(t, 8 * j + 2 * c + w / 4, h) };
                            let p = _mm256_maddubs_epi16(q[h][c], y4);
                            isum[h] =
                                _mm256_add_epi32(isum[h], _mm256_madd_epi16(p, pairs(sc, sc)));
                        }
                    }
                }
                let ys = _mm256_set1_epi32(unsafe { *bs.add(8 * b + w) });
                for h in 0..2 {
                    let scp = unsafe { pairs(scale(t, 2 * w, h), scale(t, 2 * w + 1, h)) };
                    let sub = _mm256_madd_epi16(scp, ys);
                    let s = _mm256_sub_epi32(isum[h], _mm256_slli_epi32::<5>(sub));
                    acc[h][w] = _mm256_fmadd_ps(d[h], _mm256_cvtepi32_ps(s), acc[h][w]);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            let (t0, t1) = (_mm256_add_ps(acc[4], acc[0]), _mm256_add_ps(acc[5], acc[1]));
            let (t2, t3) = (_mm256_add_ps(acc[6], acc[2]), _mm256_add_ps(acc[7], acc[3]));
            let res = _mm256_add_ps(_mm256_add_ps(t0, t2), _mm256_add_ps(t1, t3));
            unsafe { _mm256_storeu_ps(dst.row(r).add(c0 + 8 * h), res) };
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn vec_dot_half_row(
        tiles: *const u8,
        nb: usize,
        a: &QActs,
        r: usize,
        c0: usize,
        h: usize,
        dst: Out,
    ) {
        let y = a.qs(r).as_ptr() as *const i32;
        let bs = a.bsums(r).as_ptr() as *const i32;
        let mut acc = [_mm256_setzero_ps(); 8];
        for b in 0..nb {
            let t = unsafe { tiles.add(b * TILE) };
            let d = _mm256_mul_ps(
                _mm256_set1_ps(a.d(r)[b]),
                _mm256_cvtph_ps(unsafe { _mm_loadu_si128(t.add(16 * h) as *const __m128i) }),
            );
            for w in 0..8 {
                let mut isum = _mm256_setzero_si256();
                for j in 0..2 {
                    let q = unsafe { quants(t, j, w, h) };
                    for c in 0..4 {
                        let sc = unsafe { scale(t, 8 * j + 2 * c + w / 4, h) };
                        let y4 = _mm256_set1_epi32(unsafe { *y.add(64 * b + 32 * j + 8 * c + w) });
                        let p = _mm256_maddubs_epi16(q[c], y4);
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, pairs(sc, sc)));
                    }
                }
                let scp = unsafe { pairs(scale(t, 2 * w, h), scale(t, 2 * w + 1, h)) };
                let sub = _mm256_madd_epi16(scp, _mm256_set1_epi32(unsafe { *bs.add(8 * b + w) }));
                let s = _mm256_sub_epi32(isum, _mm256_slli_epi32::<5>(sub));
                acc[w] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[w]);
            }
        }
        let (t0, t1) = (_mm256_add_ps(acc[4], acc[0]), _mm256_add_ps(acc[5], acc[1]));
        let (t2, t3) = (_mm256_add_ps(acc[6], acc[2]), _mm256_add_ps(acc[7], acc[3]));
        let res = _mm256_add_ps(_mm256_add_ps(t0, t2), _mm256_add_ps(t1, t3));
        unsafe { _mm256_storeu_ps(dst.row(r).add(c0), res) };
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tiled_half_row(
        tiles: *const u8,
        nb: usize,
        a: &QActs,
        r: usize,
        c0: usize,
        h: usize,
        dst: Out,
    ) {
        let y = a.qs(r).as_ptr() as *const i32;
        let bs = a.bsums(r).as_ptr() as *const i32;
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            let t = unsafe { tiles.add(b * TILE) };
            let mut tot = _mm256_setzero_si256();
            for j in 0..2 {
                for w in 0..8 {
                    let q = unsafe { quants(t, j, w, h) };
                    for c in 0..4 {
                        let sc = unsafe { scale(t, 8 * j + 2 * c + w / 4, h) };
                        let y4 = _mm256_set1_epi32(unsafe { *y.add(64 * b + 32 * j + 8 * c + w) });
                        tot = _mm256_add_epi32(
                            tot,
                            _mm256_madd_epi16(_mm256_maddubs_epi16(q[c], y4), pairs(sc, sc)),
                        );
                    }
                }
            }
            let mut bias = _mm256_setzero_si256();
            for k in 0..8 {
                let scp = unsafe { pairs(scale(t, 2 * k, h), scale(t, 2 * k + 1, h)) };
                bias = _mm256_add_epi32(
                    bias,
                    _mm256_madd_epi16(scp, _mm256_set1_epi32(unsafe { *bs.add(8 * b + k) })),
                );
            }
            let s = _mm256_sub_epi32(tot, _mm256_slli_epi32::<5>(bias));
            let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(t.add(16 * h) as *const __m128i) });
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(s), d);
            acc = _mm256_fmadd_ps(v, _mm256_set1_ps(a.d(r)[b]), acc);
        }
        unsafe { _mm256_storeu_ps(dst.row(r).add(c0), acc) };
    }
}

/// The tile kernel for ARM CPUs with the dot-product extension: each 16-column tile as four
/// quarters of four columns, quants times activation bytes with `SDOT` and the scales applied
/// per product group; bit-identical to the scalar definition.
#[cfg(target_arch = "aarch64")]
pub(super) mod neon {
    use crate::kernels::act::QActs;
    use crate::kernels::neon::{bcast, f16x16, hsum8, sdot, widen16};
    use crate::kernels::Out;
    use std::arch::aarch64::*;

    const TILE: usize = crate::quant::Q6K.tile();

    /// As [`super::avx512::matmul_packed`], bit for bit.
    ///
    /// # Safety
    /// The CPU supports NEON with the dot-product extension; `p` holds Q6_K tiles.
    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn matmul_packed(
        p: &crate::kernels::repack::Packed,
        a: &QActs,
        groups: std::ops::Range<usize>,
        dst: Out,
    ) {
        let tiled = super::tiled(a);
        for g in groups {
            let tiles = p.group(g).as_ptr();
            for r in 0..a.rows() {
                unsafe {
                    if tiled {
                        tiled_row(tiles, p.blocks(), a, r, 16 * g, dst)
                    } else {
                        vec_dot_row(tiles, p.blocks(), a, r, 16 * g, dst)
                    }
                }
            }
        }
    }

    /// Quarter k (columns 4k..4k+4) of the four chunks' quants (0..63) of dword w of half j.
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn quants(t: *const u8, j: usize, w: usize, k: usize) -> [int8x16_t; 4] {
        let step = crate::kernels::repack::q6k_step(j, w);
        let (qla, qlb, qh) = unsafe {
            (
                vld1q_u8(t.add(step + 16 * k)),
                vld1q_u8(t.add(step + 64 + 16 * k)),
                vld1q_u8(t.add(step + 128 + 16 * k)),
            )
        };
        let (m0f, m30) = (vdupq_n_u8(0x0f), vdupq_n_u8(0x30));
        let join = |l: uint8x16_t, h: uint8x16_t| {
            vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l, m0f), vandq_u8(h, m30)))
        };
        [
            join(qla, vshlq_n_u8::<4>(qh)),
            join(qlb, vshlq_n_u8::<2>(qh)),
            join(vshrq_n_u8::<4>(qla), qh),
            join(vshrq_n_u8::<4>(qlb), vshrq_n_u8::<2>(qh)),
        ]
    }

    /// The block's sixteen scales of the 16 columns, sign-extended, as [scale][quarter].
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn scales(t: *const u8) -> [[int32x4_t; 4]; 16] {
        std::array::from_fn(|s| widen16::<true>(unsafe { vld1q_u8(t.add(32 + 16 * s)) }))
    }

    /// One row, `ggml_vec_dot_q6_K_q8_K`'s eight lanes kept apart (four columns per vector).
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn vec_dot_row(tiles: *const u8, nb: usize, a: &QActs, r: usize, c0: usize, dst: Out) {
        let y = a.qs(r).as_ptr() as *const i32;
        let bs = a.bsums(r);
        let mut acc = [[vdupq_n_f32(0.0); 8]; 4];
        for b in 0..nb {
            let t = unsafe { tiles.add(b * TILE) };
            let sc = unsafe { scales(t) };
            let dw = unsafe { f16x16(t) };
            let dy = a.d(r)[b];
            for k in 0..4 {
                let d = vmulq_n_f32(dw[k], dy);
                for w in 0..8 {
                    let mut isum = vdupq_n_s32(0);
                    for j in 0..2 {
                        let q = unsafe { quants(t, j, w, k) };
                        for c in 0..4 {
                            let y4 = bcast(unsafe { *y.add(64 * b + 32 * j + 8 * c + w) });
                            let raw = sdot(vdupq_n_s32(0), q[c], y4);
                            isum = vmlaq_s32(isum, raw, sc[8 * j + 2 * c + w / 4][k]);
                        }
                    }
                    let (b0, b1) = (bs[16 * b + 2 * w] as i32, bs[16 * b + 2 * w + 1] as i32);
                    let sub = vmlaq_n_s32(vmulq_n_s32(sc[2 * w][k], b0), sc[2 * w + 1][k], b1);
                    let s = vsubq_s32(isum, vshlq_n_s32::<5>(sub));
                    acc[k][w] = vfmaq_f32(acc[k][w], d, vcvtq_f32_s32(s));
                }
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            unsafe { vst1q_f32(dst.row(r).add(c0 + 4 * k), hsum8(acc)) };
        }
    }

    /// One row, llama.cpp's tiled GEMM arithmetic: the super-block's exact integer, then
    /// `acc = fma(float(s) * d_w, d_a, acc)`.
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn tiled_row(tiles: *const u8, nb: usize, a: &QActs, r: usize, c0: usize, dst: Out) {
        let y = a.qs(r).as_ptr() as *const i32;
        let bs = a.bsums(r);
        let mut acc = [vdupq_n_f32(0.0); 4];
        for b in 0..nb {
            let t = unsafe { tiles.add(b * TILE) };
            let sc = unsafe { scales(t) };
            let dw = unsafe { f16x16(t) };
            for k in 0..4 {
                let mut tot = vdupq_n_s32(0);
                for j in 0..2 {
                    for w in 0..8 {
                        let q = unsafe { quants(t, j, w, k) };
                        for c in 0..4 {
                            let y4 = bcast(unsafe { *y.add(64 * b + 32 * j + 8 * c + w) });
                            let raw = sdot(vdupq_n_s32(0), q[c], y4);
                            tot = vmlaq_s32(tot, raw, sc[8 * j + 2 * c + w / 4][k]);
                        }
                    }
                }
                let mut bias = vdupq_n_s32(0);
                for s in 0..16 {
                    bias = vmlaq_n_s32(bias, sc[s][k], bs[16 * b + s] as i32);
                }
                let s = vsubq_s32(tot, vshlq_n_s32::<5>(bias));
                let v = vmulq_f32(vcvtq_f32_s32(s), dw[k]);
                acc[k] = vfmaq_n_f32(acc[k], v, a.d(r)[b]);
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            unsafe { vst1q_f32(dst.row(r).add(c0 + 4 * k), *acc) };
        }
    }
}

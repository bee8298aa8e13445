//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights (32-element blocks) times Q8_0/Q8_1 activations.
//!
//! The arithmetic is that of llama.cpp's x86 `ggml_vec_dot_*` (AVX2 with VNNI), which its
//! llamafile GEMM repeats for Q8_0: per block, eight integer sums of four products each, each
//! converted to float and accumulated in its own lane with one FMA by `d_w * d_a`; the eight lanes
//! are then added pairwise (`hsum_float_8`). Q4_1/Q5_1 add `sum_b m_b * s_b`, accumulated
//! sequentially with FMA, last. The scalar code is the definition (and the test oracle); the
//! AVX-512 code computes the same lanes, two weight columns per register, and is bit-identical.
//!
//! Signed weights are multiplied as unsigned bytes `u = w + o` (VNNI multiplies unsigned by
//! signed); the activation's negated quad sums times `o` restore the exact integer.

use super::act::QActs;
use crate::quant;

/// One block format's layout and unpacking.
pub(super) trait Format {
    const BYTES: usize;
    /// log2 of the offset added to make weights unsigned (0: already unsigned).
    const SHIFT: u32;
    /// Whether blocks carry a minimum `m` (value = d * q + m).
    const HAS_MIN: bool;

    /// Where the quants are.
    const LAYOUT: Layout;
    /// Where the quants start in a 16-column tile, and the tile's size (0: no tile layout; see
    /// `repack`).
    const PACKED_QS: usize;
    const TILE: usize;

    /// The block's quants as unsigned bytes in element order.
    fn unpack(blk: &[u8]) -> [u8; 32];
}

/// How a block stores its quants.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // offsets read by the x86 code
pub(super) enum Layout {
    /// 16 bytes of nibbles at this offset.
    Nibbles(usize),
    /// Nibbles at the second offset, their fifth bits in 4 bytes at the first.
    Nibbles5(usize, usize),
    /// 32 signed bytes at this offset.
    Bytes(usize),
}

fn f16_at(blk: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([blk[at], blk[at + 1]]).to_f32()
}

fn nibbles(qs: &[u8]) -> [u8; 32] {
    let mut u = [0u8; 32];
    for j in 0..16 {
        u[j] = qs[j] & 0x0f;
        u[j + 16] = qs[j] >> 4;
    }
    u
}

fn with_high_bits(mut u: [u8; 32], qh: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh[..4].try_into().expect("4 bytes"));
    for (j, v) in u.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) as u8) << 4;
    }
    u
}

pub(super) struct Q4_0;
pub(super) struct Q4_1;
pub(super) struct Q5_0;
pub(super) struct Q5_1;
pub(super) struct Q8_0;

#[cfg(target_arch = "x86_64")]
mod simd_unpack {
    use super::{Format, Layout};
    use std::arch::x86_64::*;

    /// Two blocks' unsigned quants in one register: `a` in the low half, `b` in the high half.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn unpack2<F: Format>(a: *const u8, b: *const u8) -> __m512i {
        unsafe {
            match F::LAYOUT {
                Layout::Nibbles(at) => nibbles2(a.add(at), b.add(at)),
                Layout::Nibbles5(qh, at) => {
                    high_bits2(nibbles2(a.add(at), b.add(at)), a.add(qh), b.add(qh))
                }
                Layout::Bytes(at) => {
                    let lo = _mm256_loadu_si256(a.add(at) as *const __m256i);
                    let hi = _mm256_loadu_si256(b.add(at) as *const __m256i);
                    let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                    _mm512_xor_si512(z, _mm512_set1_epi8(0x80u8 as i8))
                }
            }
        }
    }

    /// 16 bytes of nibbles from each block -> [a lo, a hi, b lo, b hi] nibbles as bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn nibbles2(a: *const u8, b: *const u8) -> __m512i {
        let qa = unsafe { _mm_loadu_si128(a as *const __m128i) };
        let qb = unsafe { _mm_loadu_si128(b as *const __m128i) };
        let z = _mm512_inserti32x4::<1>(_mm512_castsi128_si512(qa), qa);
        let z = _mm512_inserti32x4::<2>(z, qb);
        let z = _mm512_inserti32x4::<3>(z, qb);
        let shifts = _mm512_set_epi64(
            0x0004_0004_0004_0004,
            0x0004_0004_0004_0004,
            0,
            0,
            0x0004_0004_0004_0004,
            0x0004_0004_0004_0004,
            0,
            0,
        );
        _mm512_and_si512(_mm512_srlv_epi16(z, shifts), _mm512_set1_epi8(0x0f))
    }

    /// Sets bit 4 of byte j where bit j of the blocks' 32-bit `qh` is set.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn high_bits2(u: __m512i, qha: *const u8, qhb: *const u8) -> __m512i {
        let ha = unsafe { (qha as *const u32).read_unaligned() } as u64;
        let hb = unsafe { (qhb as *const u32).read_unaligned() } as u64;
        let bits = _mm512_movm_epi8(ha | (hb << 32));
        _mm512_or_si512(u, _mm512_and_si512(bits, _mm512_set1_epi8(0x10)))
    }
}

impl Format for Q4_0 {
    const TILE: usize = quant::Q4_0.tile();
    const PACKED_QS: usize = 32;
    const LAYOUT: Layout = Layout::Nibbles(2);
    const BYTES: usize = quant::Q4_0.block_bytes();
    const SHIFT: u32 = 3;
    const HAS_MIN: bool = false;
    fn unpack(blk: &[u8]) -> [u8; 32] {
        nibbles(&blk[2..18])
    }
}

impl Format for Q4_1 {
    const TILE: usize = quant::Q4_1.tile();
    const PACKED_QS: usize = 64;
    const LAYOUT: Layout = Layout::Nibbles(4);
    const BYTES: usize = quant::Q4_1.block_bytes();
    const SHIFT: u32 = 0;
    const HAS_MIN: bool = true;
    fn unpack(blk: &[u8]) -> [u8; 32] {
        nibbles(&blk[4..20])
    }
}

impl Format for Q5_0 {
    const TILE: usize = 0;
    const PACKED_QS: usize = 0;
    const LAYOUT: Layout = Layout::Nibbles5(2, 6);
    const BYTES: usize = quant::Q5_0.block_bytes();
    const SHIFT: u32 = 4;
    const HAS_MIN: bool = false;
    fn unpack(blk: &[u8]) -> [u8; 32] {
        with_high_bits(nibbles(&blk[6..22]), &blk[2..6])
    }
}

impl Format for Q5_1 {
    const TILE: usize = 0;
    const PACKED_QS: usize = 0;
    const LAYOUT: Layout = Layout::Nibbles5(4, 8);
    const BYTES: usize = quant::Q5_1.block_bytes();
    const SHIFT: u32 = 0;
    const HAS_MIN: bool = true;
    fn unpack(blk: &[u8]) -> [u8; 32] {
        with_high_bits(nibbles(&blk[8..24]), &blk[4..8])
    }
}

impl Format for Q8_0 {
    const TILE: usize = quant::Q8_0.tile();
    const PACKED_QS: usize = 32;
    const LAYOUT: Layout = Layout::Bytes(2);
    const BYTES: usize = quant::Q8_0.block_bytes();
    const SHIFT: u32 = 7;
    const HAS_MIN: bool = false;
    fn unpack(blk: &[u8]) -> [u8; 32] {
        let mut u = [0u8; 32];
        for (v, &q) in u.iter_mut().zip(&blk[2..34]) {
            *v = q ^ 0x80;
        }
        u
    }
}

/// `hsum_float_8`: lanes i and i+4 added, then [0]+[2] and [1]+[3], then those two.
#[inline(always)]
pub(super) fn hsum8(a: &[f32; 8]) -> f32 {
    let t = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (t[0] + t[2]) + (t[1] + t[3])
}

/// One output: weight row `w` (whole blocks) against activation row `r`.
#[inline(always)]
pub(super) fn dot<F: Format>(w: &[u8], a: &QActs, r: usize) -> f32 {
    let (qs, d) = (a.qs(r), a.d(r));
    let offset = if F::SHIFT == 0 { 0 } else { 1i32 << F::SHIFT };
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (b, blk) in w.chunks_exact(F::BYTES).enumerate() {
        let u = F::unpack(blk);
        let y = &qs[32 * b..32 * b + 32];
        let dd = f16_at(blk, 0) * d[b];
        for (l, acc) in acc.iter_mut().enumerate() {
            let isum: i32 = (4 * l..4 * l + 4)
                .map(|e| (u[e] as i32 - offset) * y[e] as i32)
                .sum();
            *acc = dd.mul_add(isum as f32, *acc);
        }
        if F::HAS_MIN {
            summs = f16_at(blk, 2).mul_add(a.s(r)[b], summs);
        }
    }
    hsum8(&acc) + summs
}

/// `dst[r * n + c] = dot(column c, row r)` for every activation row and `c` in `cols`; `w` is
/// the whole matrix (`k / 32` blocks per column).
#[inline(always)]
pub(super) fn matmul_scalar<F: Format>(
    w: &[u8],
    a: &QActs,
    cols: std::ops::Range<usize>,
    dst: super::Out,
) {
    let row_bytes = a.blocks() * F::BYTES;
    for c in cols {
        let wc = &w[c * row_bytes..(c + 1) * row_bytes];
        for r in 0..a.rows() {
            dst.put(r, c, dot::<F>(wc, a, r));
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::{dot, hsum8, Format, Layout};
    use crate::kernels::act::QActs;
    use crate::kernels::Out;
    use std::arch::x86_64::*;

    /// Rows per register block.
    const R: usize = 4;

    /// As [`super::matmul_scalar`], bit for bit.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VL/DQ/VNNI (see `kernels::Isa`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    pub unsafe fn matmul<F: Format>(w: &[u8], a: &QActs, cols: std::ops::Range<usize>, dst: Out) {
        let row_bytes = a.blocks() * F::BYTES;
        assert!(w.len() >= cols.end * row_bytes);
        thread_local! {
            static MINS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        MINS.with(|mins| {
            let mins = &mut mins.borrow_mut();
            let mut c = cols.start;
            while c + 8 <= cols.end {
                unsafe { group::<F, 4>(w, a, c, dst, mins) };
                c += 8;
            }
            while c + 2 <= cols.end {
                unsafe { group::<F, 1>(w, a, c, dst, mins) };
                c += 2;
            }
        });
        let c = cols.end - (cols.end - cols.start) % 2;
        for c in c..cols.end {
            for r in 0..a.rows() {
                dst.put(r, c, dot::<F>(&w[c * row_bytes..(c + 1) * row_bytes], a, r));
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = unsafe { (p as *const u16).read_unaligned() };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Columns c..c + 2P (P pairs, one pair per register) for every row.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    unsafe fn group<F: Format, const P: usize>(
        w: &[u8],
        a: &QActs,
        c: usize,
        dst: Out,
        mins: &mut Vec<f32>,
    ) {
        let nb = a.blocks();
        let row_bytes = nb * F::BYTES;
        let base = w.as_ptr();
        let col = |j: usize| unsafe { base.add((c + j) * row_bytes) };
        // Q4_1/Q5_1: the minimums, transposed to [block][column] for the summs pass.
        if F::HAS_MIN {
            mins.clear();
            mins.resize(nb * 2 * P, 0f32);
            for b in 0..nb {
                for j in 0..2 * P {
                    mins[b * 2 * P + j] = unsafe { f16_at(col(j).add(b * F::BYTES + 2)) };
                }
            }
        }
        let m = a.rows();
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(R);
            let mut acc = [[_mm512_setzero_ps(); P]; R];
            for b in 0..nb {
                let mut wv = [_mm512_setzero_si512(); P];
                let mut dv = [_mm512_setzero_ps(); P];
                for p in 0..P {
                    let (ba, bb) = unsafe {
                        (
                            col(2 * p).add(b * F::BYTES),
                            col(2 * p + 1).add(b * F::BYTES),
                        )
                    };
                    wv[p] = unsafe { super::simd_unpack::unpack2::<F>(ba, bb) };
                    let (da, db) = unsafe { (f16_at(ba), f16_at(bb)) };
                    dv[p] = _mm512_insertf32x8::<1>(_mm512_set1_ps(da), _mm256_set1_ps(db));
                }
                for (i, acc) in acc.iter_mut().enumerate().take(rows) {
                    let r = r0 + i;
                    let y = unsafe {
                        _mm256_loadu_si256(a.qs(r).as_ptr().add(32 * b) as *const __m256i)
                    };
                    let y = _mm512_broadcast_i64x4(y);
                    let init = if F::SHIFT == 0 {
                        _mm512_setzero_si512()
                    } else {
                        let s = unsafe {
                            _mm256_loadu_si256(a.ysum(r).as_ptr().add(8 * b) as *const __m256i)
                        };
                        _mm512_sll_epi32(
                            _mm512_broadcast_i64x4(s),
                            _mm_cvtsi32_si128(F::SHIFT as i32),
                        )
                    };
                    let dy = _mm512_set1_ps(a.d(r)[b]);
                    for p in 0..P {
                        let isum = _mm512_dpbusd_epi32(init, wv[p], y);
                        acc[p] = _mm512_fmadd_ps(
                            _mm512_mul_ps(dv[p], dy),
                            _mm512_cvtepi32_ps(isum),
                            acc[p],
                        );
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate().take(rows) {
                let r = r0 + i;
                let mut summs = [0f32; 8];
                if F::HAS_MIN {
                    let s = a.s(r);
                    let mut sv = _mm256_setzero_ps();
                    if P == 4 {
                        for (b, &sb) in s.iter().enumerate() {
                            let mv = unsafe { _mm256_loadu_ps(mins.as_ptr().add(b * 8)) };
                            sv = _mm256_fmadd_ps(mv, _mm256_set1_ps(sb), sv);
                        }
                        unsafe { _mm256_storeu_ps(summs.as_mut_ptr(), sv) };
                    } else {
                        for (b, &sb) in s.iter().enumerate() {
                            for j in 0..2 * P {
                                summs[j] = mins[b * 2 * P + j].mul_add(sb, summs[j]);
                            }
                        }
                    }
                }
                for p in 0..P {
                    let mut lanes = [0f32; 16];
                    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[p]) };
                    let lo: &[f32; 8] = lanes[..8].try_into().expect("8");
                    let hi: &[f32; 8] = lanes[8..].try_into().expect("8");
                    dst.put(r, c + 2 * p, hsum8(lo) + summs[2 * p]);
                    dst.put(r, c + 2 * p + 1, hsum8(hi) + summs[2 * p + 1]);
                }
            }
            r0 += rows;
        }
    }

    /// Groups `groups` of a repacked matrix (16 columns each, see `repack`) for every row; the
    /// same lanes and order as [`super::dot`], with each ggml lane in its own register.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VL/DQ/VNNI; `p` holds `F`'s tiles.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    pub unsafe fn matmul_packed<F: Format>(
        p: &crate::kernels::repack::Packed,
        a: &QActs,
        groups: std::ops::Range<usize>,
        dst: Out,
    ) {
        let m = a.rows();
        for g in groups {
            let tiles = p.group(g).as_ptr();
            let mut r0 = 0;
            while r0 < m {
                let rows = (m - r0).min(3);
                unsafe {
                    match rows {
                        3 => packed_rows::<F, 3>(tiles, p.blocks(), a, r0, 16 * g, dst),
                        2 => packed_rows::<F, 2>(tiles, p.blocks(), a, r0, 16 * g, dst),
                        _ => packed_rows::<F, 1>(tiles, p.blocks(), a, r0, 16 * g, dst),
                    }
                }
                r0 += rows;
            }
        }
    }

    /// Rows r0..r0+R against one group's tiles; writes columns c0..c0+16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
    unsafe fn packed_rows<F: Format, const R: usize>(
        tiles: *const u8,
        nb: usize,
        a: &QActs,
        r0: usize,
        c0: usize,
        dst: Out,
    ) {
        let tile = F::TILE;
        let y: [*const i32; R] = std::array::from_fn(|i| a.qs(r0 + i).as_ptr() as *const i32);
        let ys: [*const i32; R] = std::array::from_fn(|i| {
            if F::SHIFT == 0 {
                std::ptr::null()
            } else {
                a.ysum(r0 + i).as_ptr()
            }
        });
        let mut acc = [[_mm512_setzero_ps(); 8]; R];
        let mut sacc = [_mm512_setzero_ps(); R];
        let nib = _mm512_set1_epi8(0x0f);
        let shift = _mm_cvtsi32_si128(F::SHIFT as i32);
        for b in 0..nb {
            let t = unsafe { tiles.add(b * tile) };
            let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(t as *const __m256i) });
            let dd: [__m512; R] =
                std::array::from_fn(|i| _mm512_mul_ps(d, _mm512_set1_ps(a.d(r0 + i)[b])));
            for l in 0..8 {
                let w = unsafe {
                    match F::LAYOUT {
                        Layout::Bytes(_) => _mm512_xor_si512(
                            _mm512_loadu_si512(t.add(F::PACKED_QS + 64 * l) as *const __m512i),
                            _mm512_set1_epi8(0x80u8 as i8),
                        ),
                        _ => {
                            let v = _mm512_loadu_si512(
                                t.add(F::PACKED_QS + 64 * (l % 4)) as *const __m512i
                            );
                            if l < 4 {
                                _mm512_and_si512(v, nib)
                            } else {
                                _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib)
                            }
                        }
                    }
                };
                for i in 0..R {
                    let init = if F::SHIFT == 0 {
                        _mm512_setzero_si512()
                    } else {
                        _mm512_sll_epi32(_mm512_set1_epi32(unsafe { *ys[i].add(8 * b + l) }), shift)
                    };
                    let isum = _mm512_dpbusd_epi32(
                        init,
                        w,
                        _mm512_set1_epi32(unsafe { *y[i].add(8 * b + l) }),
                    );
                    acc[i][l] = _mm512_fmadd_ps(dd[i], _mm512_cvtepi32_ps(isum), acc[i][l]);
                }
            }
            if F::HAS_MIN {
                let mv =
                    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(t.add(32) as *const __m256i) });
                for i in 0..R {
                    sacc[i] = _mm512_fmadd_ps(mv, _mm512_set1_ps(a.s(r0 + i)[b]), sacc[i]);
                }
            }
        }
        for i in 0..R {
            let l = &acc[i];
            // hsum_float_8 per column: lanes l and l+4, then [0]+[2] and [1]+[3], then those.
            let (t0, t1) = (_mm512_add_ps(l[4], l[0]), _mm512_add_ps(l[5], l[1]));
            let (t2, t3) = (_mm512_add_ps(l[6], l[2]), _mm512_add_ps(l[7], l[3]));
            let mut r = _mm512_add_ps(_mm512_add_ps(t0, t2), _mm512_add_ps(t1, t3));
            if F::HAS_MIN {
                r = _mm512_add_ps(r, sacc[i]);
            }
            unsafe { _mm512_storeu_ps(dst.row(r0 + i).add(c0), r) };
        }
    }
}

/// The tile kernel for AVX2 CPUs (no AVX-512): each 16-column tile as two 8-column halves,
/// VNNI's byte dot products emulated with `maddubs` + `madd` (exact: no pair sum here reaches
/// the i16 limit; Q8_0's signed bytes use the sign trick as llama.cpp does).
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{Format, Layout};
    use crate::kernels::act::QActs;
    use crate::kernels::Out;
    use std::arch::x86_64::*;

    /// As [`super::avx512::matmul_packed`], bit for bit.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `p` holds `F`'s tiles.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn matmul_packed<F: Format>(
        p: &crate::kernels::repack::Packed,
        a: &QActs,
        groups: std::ops::Range<usize>,
        dst: Out,
    ) {
        for g in groups {
            let tiles = p.group(g).as_ptr();
            for r in 0..a.rows() {
                for h in 0..2 {
                    unsafe { half_row::<F>(tiles, p.blocks(), a, r, 16 * g + 8 * h, h, dst) };
                }
            }
        }
    }

    /// Row r against columns 8h..8h+8 of one group's tiles.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn half_row<F: Format>(
        tiles: *const u8,
        nb: usize,
        a: &QActs,
        r: usize,
        c0: usize,
        h: usize,
        dst: Out,
    ) {
        let y = a.qs(r).as_ptr() as *const i32;
        let ys = if F::SHIFT == 0 || matches!(F::LAYOUT, Layout::Bytes(_)) {
            std::ptr::null()
        } else {
            a.ysum(r).as_ptr()
        };
        let ones = _mm256_set1_epi16(1);
        let nib = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut sacc = _mm256_setzero_ps();
        for b in 0..nb {
            let t = unsafe { tiles.add(b * F::TILE) };
            let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(t.add(16 * h) as *const __m128i) });
            let dd = _mm256_mul_ps(d, _mm256_set1_ps(a.d(r)[b]));
            for l in 0..8 {
                let y4 = _mm256_set1_epi32(unsafe { *y.add(8 * b + l) });
                let isum = unsafe {
                    match F::LAYOUT {
                        Layout::Bytes(_) => {
                            let w = _mm256_loadu_si256(
                                t.add(F::PACKED_QS + 64 * l + 32 * h) as *const __m256i
                            );
                            let p = _mm256_maddubs_epi16(
                                _mm256_sign_epi8(w, w),
                                _mm256_sign_epi8(y4, w),
                            );
                            _mm256_madd_epi16(p, ones)
                        }
                        _ => {
                            let v = _mm256_loadu_si256(
                                t.add(F::PACKED_QS + 64 * (l % 4) + 32 * h) as *const __m256i
                            );
                            let w = if l < 4 {
                                _mm256_and_si256(v, nib)
                            } else {
                                _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib)
                            };
                            let s = _mm256_madd_epi16(_mm256_maddubs_epi16(w, y4), ones);
                            if ys.is_null() {
                                s
                            } else {
                                let off = _mm256_set1_epi32(*ys.add(8 * b + l) << F::SHIFT);
                                _mm256_add_epi32(s, off)
                            }
                        }
                    }
                };
                acc[l] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(isum), acc[l]);
            }
            if F::HAS_MIN {
                let m = _mm256_cvtph_ps(unsafe {
                    _mm_loadu_si128(t.add(32 + 16 * h) as *const __m128i)
                });
                sacc = _mm256_fmadd_ps(m, _mm256_set1_ps(a.s(r)[b]), sacc);
            }
        }
        let (t0, t1) = (_mm256_add_ps(acc[4], acc[0]), _mm256_add_ps(acc[5], acc[1]));
        let (t2, t3) = (_mm256_add_ps(acc[6], acc[2]), _mm256_add_ps(acc[7], acc[3]));
        let mut res = _mm256_add_ps(_mm256_add_ps(t0, t2), _mm256_add_ps(t1, t3));
        if F::HAS_MIN {
            res = _mm256_add_ps(res, sacc);
        }
        unsafe { _mm256_storeu_ps(dst.row(r).add(c0), res) };
    }
}

/// The tile kernel for ARM CPUs with the dot-product extension: each 16-column tile as four
/// quarters of four columns, signed weights (the offset subtracted first) times activation bytes
/// with `SDOT`; the same lanes and order as [`dot`], bit for bit.
#[cfg(target_arch = "aarch64")]
pub(super) mod neon {
    use super::{Format, Layout};
    use crate::kernels::act::QActs;
    use crate::kernels::neon::{bcast, f16x16, hsum8, sdot};
    use crate::kernels::Out;
    use std::arch::aarch64::*;

    /// Groups `groups` of a repacked matrix (16 columns each, see `repack`) for every row.
    ///
    /// # Safety
    /// The CPU supports NEON with the dot-product extension; `p` holds `F`'s tiles.
    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn matmul_packed<F: Format>(
        p: &crate::kernels::repack::Packed,
        a: &QActs,
        groups: std::ops::Range<usize>,
        dst: Out,
    ) {
        for g in groups {
            let tiles = p.group(g).as_ptr();
            for r in 0..a.rows() {
                unsafe { packed_row::<F>(tiles, p.blocks(), a, r, 16 * g, dst) };
            }
        }
    }

    /// Row r against one group's tiles; writes columns c0..c0+16.
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn packed_row<F: Format>(
        tiles: *const u8,
        nb: usize,
        a: &QActs,
        r: usize,
        c0: usize,
        dst: Out,
    ) {
        let y = a.qs(r).as_ptr() as *const i32;
        let mut acc = [[vdupq_n_f32(0.0); 8]; 4];
        let mut sacc = [vdupq_n_f32(0.0); 4];
        let nib = vdupq_n_u8(0x0f);
        let offset = vdupq_n_s8(if F::SHIFT == 0 { 0 } else { 1i8 << F::SHIFT });
        for b in 0..nb {
            let t = unsafe { tiles.add(b * F::TILE) };
            let dw = unsafe { f16x16(t) };
            let dy = a.d(r)[b];
            for k in 0..4 {
                let dd = vmulq_n_f32(dw[k], dy);
                for l in 0..8 {
                    let w = unsafe {
                        match F::LAYOUT {
                            Layout::Bytes(_) => {
                                vld1q_s8(t.add(F::PACKED_QS + 64 * l + 16 * k) as *const i8)
                            }
                            _ => {
                                let v = vld1q_u8(t.add(F::PACKED_QS + 64 * (l % 4) + 16 * k));
                                let u = if l < 4 {
                                    vandq_u8(v, nib)
                                } else {
                                    vshrq_n_u8::<4>(v)
                                };
                                vsubq_s8(vreinterpretq_s8_u8(u), offset)
                            }
                        }
                    };
                    let isum = sdot(vdupq_n_s32(0), w, bcast(unsafe { *y.add(8 * b + l) }));
                    acc[k][l] = vfmaq_f32(acc[k][l], dd, vcvtq_f32_s32(isum));
                }
            }
            if F::HAS_MIN {
                let mv = unsafe { f16x16(t.add(32)) };
                for k in 0..4 {
                    sacc[k] = vfmaq_n_f32(sacc[k], mv[k], a.s(r)[b]);
                }
            }
        }
        for k in 0..4 {
            let mut res = hsum8(&acc[k]);
            if F::HAS_MIN {
                res = vaddq_f32(res, sacc[k]);
            }
            unsafe { vst1q_f32(dst.row(r).add(c0 + 4 * k), res) };
        }
    }
}

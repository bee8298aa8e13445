//! Activation quantization exactly as llama.cpp's x86 CPU backend does it.
//!
//! Before a quantized matmul, ggml quantizes each activation row to the weight type's partner:
//! Q8_K for the k-quants, Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1. Candle's own quantizers
//! differ in small ways that move logits by tenths on quantized models (a `1/d` instead of a
//! `127/max` multiplier, rounding halves away from zero instead of to even, and Q8_1's block
//! sum computed in f16). These write the same bytes as ggml into Candle's block types.

use candle_core::quantized::k_quants::{BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType};
use candle_core::quantized::GgmlDType;
use half::f16;

// Mirrors of Candle's block layouts (its fields are private); sizes are checked below.
#[repr(C)]
struct Q8_0 {
    d: f16,
    qs: [i8; 32],
}

#[repr(C)]
struct Q8_1 {
    d: f16,
    s: f16,
    qs: [i8; 32],
}

#[repr(C)]
struct Q8K {
    d: f32,
    qs: [i8; 256],
    bsums: [i16; 16],
}

const _: () = assert!(std::mem::size_of::<Q8_0>() == std::mem::size_of::<BlockQ8_0>());
const _: () = assert!(std::mem::size_of::<Q8_1>() == std::mem::size_of::<BlockQ8_1>());
const _: () = assert!(std::mem::size_of::<Q8K>() == std::mem::size_of::<BlockQ8K>());
const _: () = assert!(std::mem::align_of::<Q8_0>() == std::mem::align_of::<BlockQ8_0>());
const _: () = assert!(std::mem::align_of::<Q8_1>() == std::mem::align_of::<BlockQ8_1>());
const _: () = assert!(std::mem::align_of::<Q8K>() == std::mem::align_of::<BlockQ8K>());

/// Reinterprets Candle blocks as their mirror (same size and alignment, plain data).
fn mirror<V, M>(blocks: &mut [V]) -> &mut [M] {
    assert_eq!(std::mem::size_of::<V>(), std::mem::size_of::<M>());
    assert_eq!(std::mem::align_of::<V>(), std::mem::align_of::<M>());
    // SAFETY: same size and alignment (checked), both are plain old data of the same layout.
    unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr() as *mut M, blocks.len()) }
}

/// Quantizes one activation row into `out` (the weight type's dot-product partner).
pub fn quantize_row<V: GgmlType>(x: &[f32], out: &mut [V]) {
    match V::DTYPE {
        GgmlDType::Q8K => q8k(x, mirror(out)),
        GgmlDType::Q8_0 => q8_0(x, mirror(out)),
        GgmlDType::Q8_1 => q8_1(x, mirror(out)),
        // F32 copies; F16/BF16 convert with round-to-nearest-even, as ggml does.
        _ => V::from_float(x, out),
    }
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// One 32-value block as ggml's AVX code quantizes it: multiplier 127/max (not 1/d), round
/// half to even. Returns the scale and the sum of the quants.
fn q8_block(xs: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    let amax = max_abs(xs);
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = (v * id).round_ties_even() as i8;
        sum += *q as i32;
    }
    (amax / 127.0, sum)
}

/// `quantize_row_q8_0` (AVX path).
fn q8_0(x: &[f32], out: &mut [Q8_0]) {
    for (xs, y) in x.chunks_exact(32).zip(out) {
        let (d, _) = q8_block(xs, &mut y.qs);
        y.d = f16::from_f32(d);
    }
}

/// `quantize_row_q8_1` (AVX2 path): as Q8_0, plus `s = d * sum(q)` rounded once to f16.
fn q8_1(x: &[f32], out: &mut [Q8_1]) {
    for (xs, y) in x.chunks_exact(32).zip(out) {
        let (d, sum) = q8_block(xs, &mut y.qs);
        y.d = f16::from_f32(d);
        y.s = f16::from_f32(d * sum as f32);
    }
}

/// `quantize_row_q8_K_ref`: scale -127/max (max = the value of largest magnitude), ggml's
/// `nearest_int` (half to even), and 16-element block sums.
fn q8k(x: &[f32], out: &mut [Q8K]) {
    for (xs, y) in x.chunks_exact(256).zip(out) {
        let xs: &[f32; 256] = xs.try_into().expect("256-element chunk");
        y.d = crate::kernels::act::q8k_block(xs, &mut y.qs);
        for (s, qs) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_rows_dequantize_close_to_input() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut k = vec![BlockQ8K::zeros(); 2];
        quantize_row(&x, &mut k);
        let mut back = vec![0f32; 512];
        BlockQ8K::to_float(&k, &mut back);
        let mut b0 = vec![BlockQ8_0::zeros(); 16];
        quantize_row(&x, &mut b0);
        let mut back0 = vec![0f32; 512];
        BlockQ8_0::to_float(&b0, &mut back0);
        for i in 0..512 {
            assert!((back[i] - x[i]).abs() <= 7.2 / 127.0 * 0.51, "q8k {i}");
            assert!(
                (back0[i] - x[i]).abs() <= 7.2 / 127.0 * 0.51 + 0.01,
                "q8_0 {i}"
            );
        }
    }

    #[test]
    fn q8_1_sum_is_rounded_once() {
        let x = [1.0f32; 32];
        let mut b = vec![BlockQ8_1::zeros(); 1];
        quantize_row(&x, &mut b);
        let m: &mut [Q8_1] = mirror(&mut b);
        assert_eq!(m[0].qs, [127; 32]);
        assert_eq!(
            m[0].s.to_f32(),
            f16::from_f32(1.0 / 127.0 * 4064.0).to_f32()
        );
    }

    #[test]
    fn halves_round_to_even() {
        // 127/max * v = 2.5 exactly for max = 127, v = 2.5.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        let mut b = vec![BlockQ8_0::zeros(); 1];
        quantize_row(&x, &mut b);
        let m: &mut [Q8_0] = mirror(&mut b);
        assert_eq!(&m[0].qs[..3], &[127, 2, -4]);
    }
}

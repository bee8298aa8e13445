//! Every kernel against Candle's reference dot products (`vec_dot_unopt`) on random blocks, and
//! every SIMD kernel this CPU can run (AVX2, AVX-512, NEON; flat and tiled) against the scalar
//! definitions, bit for bit.

use candle_core::quantized::k_quants::{
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, GgmlType,
};
use half::f16;

use super::*;

/// xorshift: deterministic pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `n` random rows of `k` weights of `dtype`: random quant bytes, scales of plausible size.
fn random_weights(dtype: TensorType, n: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let (bs, ts) = (dtype.block_size() as usize, dtype.type_size() as usize);
    let mut w: Vec<u8> = (0..n * k / bs * ts).map(|_| rng.next() as u8).collect();
    let put = |blk: &mut [u8], at: usize, v: f32| {
        blk[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
    };
    for blk in w.chunks_exact_mut(ts) {
        let (d, m) = (0.01 + 0.02 * rng.f().abs(), 0.05 * rng.f());
        match dtype {
            TensorType::Q4_0 | TensorType::Q5_0 | TensorType::Q8_0 => put(blk, 0, d),
            TensorType::Q4_1 | TensorType::Q5_1 => {
                put(blk, 0, d);
                put(blk, 2, m);
            }
            TensorType::Q4K => {
                put(blk, 0, d / 16.0);
                put(blk, 2, d / 32.0);
            }
            TensorType::Q6K => put(blk, 208, d / 32.0),
            t => unreachable!("{t:?}"),
        }
    }
    w
}

fn random_acts(m: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    // Mostly small values with a few large ones, like hidden states.
    (0..m * k)
        .map(|i| {
            let v = rng.f();
            if i % 97 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

/// Candle's `vec_dot_unopt` for every (row, column), with activations quantized the same way.
fn candle_reference<T: GgmlType>(w: &[u8], n: usize, x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let nb = k / T::BLCK_SIZE;
    // Copy into properly aligned blocks (the byte vector is only 1-aligned).
    let mut blocks = vec![T::zeros(); n * nb];
    let size = std::mem::size_of::<T>();
    assert_eq!(w.len(), blocks.len() * size);
    // SAFETY: the blocks are plain old data of exactly `size` bytes each.
    unsafe { std::ptr::copy_nonoverlapping(w.as_ptr(), blocks.as_mut_ptr() as *mut u8, w.len()) };
    let kb = k / <T::VecDotType as GgmlType>::BLCK_SIZE;
    let mut ys = vec![T::VecDotType::zeros(); m * kb];
    for (row, y) in x.chunks_exact(k).zip(ys.chunks_exact_mut(kb)) {
        crate::quantize::quantize_row(row, y);
    }
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            out[r * n + c] =
                T::vec_dot_unopt(k, &blocks[c * nb..(c + 1) * nb], &ys[r * kb..(r + 1) * kb]);
        }
    }
    out
}

/// Sum of |w_i y_i| over dequantized values: the scale of rounding differences.
fn magnitude<T: GgmlType>(w: &[u8], n: usize, x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let nb = k / T::BLCK_SIZE;
    let mut blocks = vec![T::zeros(); n * nb];
    // SAFETY: as in `candle_reference`.
    unsafe { std::ptr::copy_nonoverlapping(w.as_ptr(), blocks.as_mut_ptr() as *mut u8, w.len()) };
    let mut deq = vec![0f32; n * k];
    T::to_float(&blocks, &mut deq);
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let xs = &x[r * k..(r + 1) * k];
            let ws = &deq[c * k..(c + 1) * k];
            out[r * n + c] = xs.iter().zip(ws).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1e-3;
        }
    }
    out
}

fn run(isa: Isa, dtype: TensorType, w: &[u8], n: usize, x: &[f32], m: usize, k: usize) -> Vec<f32> {
    run_packed(isa, dtype, w, None, n, x, m, k)
}

#[allow(clippy::too_many_arguments)]
fn run_packed(
    isa: Isa,
    dtype: TensorType,
    w: &[u8],
    packed: Option<&Packed>,
    n: usize,
    x: &[f32],
    m: usize,
    k: usize,
) -> Vec<f32> {
    let mut acts = QActs::new(act_kind(dtype).expect("kernel type"));
    acts.quantize(x, k);
    let mut dst = vec![f32::NAN; m * n];
    let w = Weights {
        dtype,
        data: w,
        packed,
        rows: n,
        cols: k,
    };
    matmul_with(isa, [Job { w, dst: &mut dst }], &acts);
    dst
}

fn check_type<T: GgmlType>(dtype: TensorType) {
    let mut rng = Rng(0x1234_5678 ^ dtype.id() as u64);
    let k = 512;
    for &(m, n) in &[(1, 40), (5, 37), (9, 64), (4, 16), (9, 37), (13, 48)] {
        let w = random_weights(dtype, n, k, &mut rng);
        let x = random_acts(m, k, &mut rng);
        let want = candle_reference::<T>(&w, n, &x, m, k);
        let mag = magnitude::<T>(&w, n, &x, m, k);
        let scalar = run(Isa::Scalar, dtype, &w, n, &x, m, k);
        for i in 0..m * n {
            // Same integer products as Candle; only the float summation order differs: at most
            // ~k/32 + 8 roundings of 2^-24 relative to partial sums bounded by sum |w y|.
            let tol = 1e-5 * mag[i];
            assert!(
                (scalar[i] - want[i]).abs() <= tol,
                "{dtype:?} m={m} n={n} out {i}: ours {} candle {} (tol {tol})",
                scalar[i],
                want[i]
            );
        }
        let packed = Packed::new(dtype, &w, n, k).map(|p| p.expect("memory"));
        for isa in simd_isas() {
            let flat = run(isa, dtype, &w, n, &x, m, k);
            let tiled = run_packed(isa, dtype, &w, packed.as_ref(), n, &x, m, k);
            for i in 0..m * n {
                assert_eq!(
                    flat[i].to_bits(),
                    scalar[i].to_bits(),
                    "{dtype:?} m={m} n={n} out {i}: {isa:?} {} scalar {}",
                    flat[i],
                    scalar[i]
                );
                assert_eq!(
                    tiled[i].to_bits(),
                    scalar[i].to_bits(),
                    "{dtype:?} m={m} n={n} out {i}: {isa:?} packed {} scalar {}",
                    tiled[i],
                    scalar[i]
                );
            }
        }
    }
}

/// The SIMD instruction sets this CPU can run, each checked against the scalar definitions.
fn simd_isas() -> Vec<Isa> {
    match Isa::detect() {
        Isa::Scalar => vec![],
        Isa::Avx2 => vec![Isa::Avx2],
        Isa::Avx512 => vec![Isa::Avx2, Isa::Avx512],
        Isa::Neon => vec![Isa::Neon],
    }
}

#[test]
fn q4_0_matches_candle() {
    check_type::<BlockQ4_0>(TensorType::Q4_0);
}

#[test]
fn q4_1_matches_candle() {
    check_type::<BlockQ4_1>(TensorType::Q4_1);
}

#[test]
fn q5_0_matches_candle() {
    check_type::<BlockQ5_0>(TensorType::Q5_0);
}

#[test]
fn q5_1_matches_candle() {
    check_type::<BlockQ5_1>(TensorType::Q5_1);
}

#[test]
fn q8_0_matches_candle() {
    check_type::<BlockQ8_0>(TensorType::Q8_0);
}

#[test]
fn q4_k_matches_candle() {
    check_type::<BlockQ4K>(TensorType::Q4K);
}

#[test]
fn q6_k_matches_candle() {
    check_type::<BlockQ6K>(TensorType::Q6K);
}

#[test]
fn q4_k_rounds_as_llama_cpp_gemm_and_gemv() {
    // Rows 0..8 of 10 take llama.cpp's GEMM path (float per 64 elements), rows 8 and 9 its
    // GEMV path (per 256); a row computed alone is always GEMV. The same row then differs only
    // in rounding.
    let mut rng = Rng(99);
    let (k, n) = (1024, 16);
    let w = random_weights(TensorType::Q4K, n, k, &mut rng);
    let x = random_acts(10, k, &mut rng);
    let batch = run(Isa::Scalar, TensorType::Q4K, &w, n, &x, 10, k);
    let alone = run(Isa::Scalar, TensorType::Q4K, &w, n, &x[..k], 1, k);
    let last = run(Isa::Scalar, TensorType::Q4K, &w, n, &x[9 * k..], 1, k);
    assert_eq!(
        &batch[9 * n..],
        &last[..],
        "GEMV rows equal single-row results"
    );
    assert!(
        batch[..n].iter().zip(&alone).any(|(a, b)| a != b),
        "GEMM rows round differently"
    );
    for (a, b) in batch[..n].iter().zip(&alone) {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0));
    }
}

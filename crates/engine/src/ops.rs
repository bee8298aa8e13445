//! Element-wise CPU operations computed the way ggml computes them.
//!
//! In a quantized model every matmul quantizes its input activations to 8 bits, so a one-ulp
//! difference in an activation can flip a rounding and move the logits visibly. Computing RMSNorm,
//! SiLU and softmax with ggml's formulas (its vectorised `expf` approximation, a double-precision
//! sum of squares, multiplication by the reciprocal) keeps the engine on llama.cpp's numbers.

/// ggml's `ggml_v_expf`: exp(x) to about 1.5 ulp, lane for lane as its AVX-512/AVX2/NEON code.
#[inline(always)]
pub fn ggml_expf(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // scalef: j * 2^n, rounded once (exact in f64, then one rounding to f32). 2^n is built from
    // its exponent bits (|n| <= 192 here), not with `powi`, a library call.
    let pow2 = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (j as f64 * pow2) as f32
}

/// Defines `pub fn $name` that runs `$body` compiled for AVX-512 or AVX2 with FMA where the CPU
/// has them. The results are identical either way (`mul_add` is always fused, without the
/// feature through a slow library call, and vectorising does not reorder Rust float operations).
macro_rules! with_fma {
    ($(#[$doc:meta])* $name:ident, fn($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn inner($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    inner($($arg),*)
                }
                if crate::ops::simd_level() >= 2 {
                    // SAFETY: the CPU supports these features (checked by `simd_level`).
                    return unsafe { avx512($($arg),*) };
                }
                if crate::ops::simd_level() == 1 {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use with_fma;

/// 2: AVX-512 F/VL with FMA, 1: AVX2 with FMA, 0: neither (detected once, at most
/// [`simd_cap`]).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // x86 dispatch only
pub(crate) fn simd_level() -> u8 {
    static LEVEL: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("fma") && has!("avx2") {
                let level = if has!("avx512f") && has!("avx512vl") {
                    2
                } else {
                    1
                };
                return level.min(simd_cap());
            }
        }
        0
    })
}

/// The highest instruction set the engine may use, from `SMOLLM3_ISA` (`avx512`, `avx2` or
/// `portable`; unset, `native` or `neon`: whatever the CPU has): to measure or check the AVX2
/// and portable code on a machine that has more. The results are the same at every level.
/// 2, 1 or 0 as [`simd_level`].
pub fn simd_cap() -> u8 {
    static CAP: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        let v = std::env::var("SMOLLM3_ISA").ok();
        parse_simd_cap(v.as_deref()).unwrap_or_else(|| {
            tracing::warn!(
                value = v,
                "SMOLLM3_ISA is not avx512, avx2 or portable; ignored"
            );
            2
        })
    })
}

/// [`simd_cap`] of a `SMOLLM3_ISA` value; `None` for one it does not know.
fn parse_simd_cap(v: Option<&str>) -> Option<u8> {
    match v.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "avx512" | "native" | "neon") => Some(2),
        Some("avx2") => Some(1),
        Some("portable" | "scalar") => Some(0),
        Some(_) => None,
    }
}

with_fma!(swiglu_slices, fn(gate: &mut [f32], up: &[f32]) {
    // ggml_vec_swiglu_f32, in place of `gate`: blocks of 16 use ggml_v_silu, the tail libm's expf.
    let n16 = gate.len() / 16 * 16;
    for i in 0..n16 {
        let x = gate[i];
        gate[i] = x / (1.0 + ggml_expf(-x)) * up[i];
    }
    for i in n16..gate.len() {
        let x = gate[i];
        gate[i] = x / (1.0 + (-x).exp()) * up[i];
    }
});

with_fma!(softmax_in_place, fn(xs: &mut [f32]) {
    // ggml_vec_soft_max_f32: exp in blocks of 16, each block summed as a tree, the blocks and
    // the tail summed in double; then scaled by the rounded reciprocal.
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let n16 = xs.len() / 16 * 16;
    let mut sum = 0f64;
    for block in xs[..n16].chunks_exact_mut(16) {
        for v in block.iter_mut() {
            *v = ggml_expf(*v - max);
        }
        sum += tree_sum16(block) as f64;
    }
    for v in xs[n16..].iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in xs.iter_mut() {
        *v *= inv;
    }
});

/// `gate = silu(gate) * up` for rows of `n`, rows spread over the compute threads.
pub fn swiglu_rows(gate: &mut [f32], up: &[f32], n: usize) {
    let t = gate.len() / n;
    if t < 4 {
        // ggml works row by row: its 16-wide blocks restart at each row.
        for (g, u) in gate.chunks_mut(n).zip(up.chunks(n)) {
            swiglu_slices(g, u);
        }
        return;
    }
    let gate_ptr = gate.as_mut_ptr() as usize;
    crate::threads::pool().execute_chunked(t, |rows| {
        let (a, b) = (rows.start * n, rows.end * n);
        // SAFETY: each chunk of rows touches only its own rows of `gate`.
        let g = unsafe { std::slice::from_raw_parts_mut((gate_ptr as *mut f32).add(a), b - a) };
        for (g, u) in g.chunks_mut(n).zip(up[a..b].chunks(n)) {
            swiglu_slices(g, u);
        }
    });
}

/// `_mm512_reduce_add_ps`: halves added pairwise down to one lane.
#[inline(always)]
pub fn tree_sum16(v: &[f32]) -> f32 {
    let mut a = [0f32; 8];
    for i in 0..8 {
        a[i] = v[i] + v[i + 8];
    }
    let b = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let c = [b[0] + b[2], b[1] + b[3]];
    c[0] + c[1]
}

/// ggml's `ggml_vec_dot_f32` on AVX-512: four 16-lane FMA accumulators over steps of 64, reduced
/// pairwise, the tail added in double.
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n64 = a.len() / 64 * 64;
    let mut acc = [[0f32; 16]; 4];
    for (ca, cb) in a[..n64].chunks_exact(64).zip(b[..n64].chunks_exact(64)) {
        for j in 0..4 {
            for l in 0..16 {
                acc[j][l] = ca[j * 16 + l].mul_add(cb[j * 16 + l], acc[j][l]);
            }
        }
    }
    let mut sum = 0f64;
    if n64 > 0 {
        let [a0, a1, a2, a3] = &mut acc;
        for l in 0..16 {
            a0[l] += a2[l];
            a1[l] += a3[l];
            a0[l] += a1[l];
        }
        sum = tree_sum16(&acc[0]) as f64;
    }
    for (x, y) in a[n64..].iter().zip(&b[n64..]) {
        sum += (x * y) as f64;
    }
    sum as f32
}

/// RMSNorm with its weight, as a Candle op: `y = x * (1 / sqrt(mean(x^2) + eps)) * w`.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: Vec<f32>, eps: f32) -> Self {
        Self { weight, eps }
    }

    /// Normalises every row of `x` into `y` (both rows of the weight's length).
    pub fn rows(&self, x: &[f32], y: &mut [f32]) {
        let n = self.weight.len();
        for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            self.row(xr, yr);
        }
    }

    fn row(&self, x: &[f32], y: &mut [f32]) {
        // ggml sums the squares in double, in order.
        let sum: f64 = x.iter().map(|v| (v * v) as f64).sum();
        let mean = (sum / x.len() as f64) as f32;
        let scale = 1.0 / (mean + self.eps).sqrt();
        for ((y, x), w) in y.iter_mut().zip(x).zip(&self.weight) {
            *y = x * scale * w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm3_isa_caps_the_instruction_set() {
        assert_eq!(parse_simd_cap(None), Some(2));
        assert_eq!(parse_simd_cap(Some("AVX512")), Some(2));
        assert_eq!(parse_simd_cap(Some(" avx2 ")), Some(1));
        assert_eq!(parse_simd_cap(Some("portable")), Some(0));
        assert_eq!(parse_simd_cap(Some("scalar")), Some(0));
        assert_eq!(parse_simd_cap(Some("neon")), Some(2));
        assert_eq!(parse_simd_cap(Some("sse9")), None);
    }

    #[test]
    fn ggml_expf_is_close_to_exp() {
        // Normal range only: near underflow the relative error of any float exp grows.
        for i in -1600..=1600 {
            let x = i as f32 * 0.05;
            let (a, b) = (ggml_expf(x), x.exp());
            assert!(((a - b) / b).abs() < 1e-6, "exp({x}): {a} vs {b}");
        }
        assert_eq!(ggml_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(ggml_expf(-200.0), 0.0);
        assert_eq!(ggml_expf(200.0), f32::INFINITY);
    }

    #[test]
    fn softmax_sums_to_one_and_ignores_masked() {
        let mut xs: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
        xs[5] = f32::NEG_INFINITY;
        softmax_in_place(&mut xs);
        let s: f32 = xs.iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
        assert_eq!(xs[5], 0.0);
    }

    #[test]
    fn dot_matches_f64_reference() {
        for n in [3usize, 32, 64, 100, 128, 200] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.1).cos()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot_f32(&a, &b) as f64 - want).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn rms_norm_normalises() {
        let norm = RmsNorm::new(vec![2.0; 4], 0.0);
        let mut y = [0f32; 4];
        norm.row(&[1.0, -1.0, 1.0, -1.0], &mut y);
        assert_eq!(y, [2.0, -2.0, 2.0, -2.0]);
    }
}

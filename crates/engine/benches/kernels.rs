//! Throughput of the quantized kernels on a real GGUF's weights, per tensor kind and batch size:
//! `cargo bench -p smollm3-engine --bench kernels -- MODEL.gguf [THREADS] [scalar|avx2|avx512]`
//! (default: the best the CPU has; the SIMD kernels run on repacked weights, as in the engine).
//!
//! Every layer's matrix of a kind is multiplied in turn (so decoding streams the weights from
//! memory, as it does in the model); reports GB/s of weights read and GMAC/s.

use std::sync::Arc;
use std::time::Instant;

use engine::gguf::Gguf;
use engine::kernels::{self, Job, QActs};
use engine::qmatrix::QMatrix;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(path) = args.first() else {
        eprintln!(
            "usage: cargo bench --bench kernels -- MODEL.gguf [THREADS] [scalar|avx2|avx512]"
        );
        return;
    };
    let threads = args.get(1).and_then(|t| t.parse().ok()).unwrap_or(0);
    let isa = match args.get(2).map(String::as_str) {
        Some("scalar") => kernels::Isa::Scalar,
        Some("avx2") => kernels::Isa::Avx2,
        Some("avx512") => kernels::Isa::Avx512,
        _ => kernels::Isa::detect(),
    };
    let threads = engine::threads::init(threads);
    let file = std::fs::File::open(path).expect("open model");
    // SAFETY: read-only map of a file nobody modifies during the benchmark.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.expect("map model"));
    let gguf = Gguf::parse(&map).expect("parse model");
    println!("{path}: {threads} threads, {isa:?}");
    let kinds = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    let mut groups: Vec<(String, Vec<QMatrix>)> = Vec::new();
    for kind in kinds {
        for t in gguf
            .tensors
            .iter()
            .filter(|t| t.name.ends_with(&format!("{kind}.weight")))
        {
            let mut m = QMatrix::new(&map, t).expect("matrix");
            if isa != kernels::Isa::Scalar {
                m.pack().expect("repack");
            }
            let label = format!("{kind} {:?} {}x{}", m.dtype(), m.dims().0, m.dims().1);
            match groups.iter_mut().find(|(l, _)| *l == label) {
                Some((_, v)) => v.push(m),
                None => groups.push((label, vec![m])),
            }
        }
    }
    if let Some(t) = gguf
        .tensor("output.weight")
        .or_else(|| gguf.tensor("token_embd.weight"))
    {
        let mut m = QMatrix::new(&map, t).expect("matrix");
        if isa != kernels::Isa::Scalar {
            m.pack().expect("repack");
        }
        groups.push((
            format!("lm_head {:?} {}x{}", m.dtype(), m.dims().0, m.dims().1),
            vec![m],
        ));
    }
    for (label, mats) in &groups {
        let Some(kind) = kernels::act_kind(mats[0].dtype()) else {
            println!("{label}: no kernel");
            continue;
        };
        let (n, k) = mats[0].dims();
        for m in [1usize, 16, 128] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1013) as f32 / 506.0) - 1.0)
                .collect();
            let mut acts = QActs::new(kind);
            acts.quantize(&x, k);
            let mut dst = vec![0f32; m * n];
            let bytes: usize = mats.iter().map(|w| w.size_in_bytes()).sum();
            let reps = (2e9 / (bytes as f64 * m.max(8) as f64)).ceil().max(1.0) as usize;
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                for _ in 0..reps {
                    for w in mats {
                        let w = w.weights().expect("kernel type");
                        kernels::matmul_with(isa, [Job { w, dst: &mut dst }], &acts);
                    }
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            let macs = (mats.len() * m * n * k) as f64;
            println!(
                "{label:<34} x{:<2} m={m:<4} {:7.2} GB/s {:8.1} GMAC/s {:8.3} ms",
                mats.len(),
                bytes as f64 / best / 1e9,
                macs / best / 1e9,
                best * 1e3
            );
        }
    }
}

//! Mutation fuzzing of the GGUF parser: every mutated file must parse to `Ok` or `Err`, never
//! panic, and an `Ok` must describe tensor data that really lies inside the file.
//!
//! Deterministic: a fixed seed, so a failure reproduces. The case number is in the panic message.

mod common;

use std::time::Instant;

use common::gguf_writer::{sample, Built, GgufWriter, TensorSpec};
use engine::gguf::{Array, Gguf, TensorType, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Values that tend to break length and offset arithmetic.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    31,
    32,
    33,
    63,
    64,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0xFFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 32,
    1 << 40,
    (1 << 61) + 1,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 31,
    u64::MAX,
];

/// Parses one mutated file; on success checks the invariants the loader relies on.
fn check(case: &str, bytes: &[u8]) {
    let Ok(g) = Gguf::parse(bytes) else {
        return;
    };
    assert!(
        g.data_offset <= bytes.len() as u64,
        "{case}: data offset past the end"
    );
    assert!(g.alignment.is_power_of_two(), "{case}");
    for t in &g.tensors {
        let data = t.data(bytes);
        assert_eq!(
            data.map(<[u8]>::len),
            Some(t.n_bytes as usize),
            "{case}: {}",
            t.name
        );
        assert_eq!(
            (t.offset - g.data_offset) % g.alignment,
            0,
            "{case}: {}",
            t.name
        );
        assert!(
            t.dims.len() <= 4 && t.n_elements() <= i64::MAX as u64,
            "{case}"
        );
    }
}

fn write_le(bytes: &mut [u8], at: usize, value: u64, width: usize) {
    let end = (at + width).min(bytes.len());
    let n = end.saturating_sub(at);
    if n > 0 {
        bytes[at..end].copy_from_slice(&value.to_le_bytes()[..n]);
    }
}

/// One random mutation, in place.
fn mutate(rng: &mut StdRng, built: &Built, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        bytes.push(rng.random());
        return;
    }
    let at = rng.random_range(0..bytes.len());
    match rng.random_range(0..8) {
        0 => bytes[at] ^= 1 << rng.random_range(0..8),
        1 => bytes[at] = [0, 0xFF, 0x7F, 0x80, 1][rng.random_range(0..5)],
        2 => {
            let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
            write_le(bytes, at, v, if rng.random() { 4 } else { 8 });
        }
        3 => bytes.truncate(at),
        4 => {
            let n = rng.random_range(1..=16);
            let fill: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            bytes.splice(at..at, fill);
        }
        5 => {
            let end = (at + rng.random_range(1..=16)).min(bytes.len());
            bytes.drain(at..end);
        }
        // Aim at the length / count / type / offset fields, which random flips rarely hit.
        _ => {
            let f = &built.fields[rng.random_range(0..built.fields.len())];
            let v = if rng.random() {
                INTERESTING[rng.random_range(0..INTERESTING.len())]
            } else {
                let old = read_le(&built.bytes, f.offset, f.width);
                old.wrapping_add_signed(rng.random_range(-40..=40))
            };
            write_le(bytes, f.offset, v, f.width);
        }
    }
}

fn read_le(bytes: &[u8], at: usize, width: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf[..width].copy_from_slice(&bytes[at..at + width]);
    u64::from_le_bytes(buf)
}

/// Every recorded field set to every interesting value, and to its old value ±1..8.
#[test]
fn fuzz_every_field() {
    let built = sample().kv("general.alignment", Value::U32(32)).build();
    assert!(Gguf::parse(&built.bytes).is_ok());
    let mut cases = 0;
    for f in &built.fields {
        let old = read_le(&built.bytes, f.offset, f.width);
        let deltas = (1..=8).flat_map(|d| [old.wrapping_add(d), old.wrapping_sub(d)]);
        for v in INTERESTING.iter().copied().chain(deltas) {
            let mut bytes = built.bytes.clone();
            write_le(&mut bytes, f.offset, v, f.width);
            check(&format!("{:?} '{}' = {v:#x}", f.kind, f.label), &bytes);
            cases += 1;
        }
    }
    assert!(cases > 1000, "{cases}");
    eprintln!("{cases} field mutations");
}

/// Every single-bit flip and every truncation of the file.
#[test]
fn fuzz_every_bit_and_length() {
    let built = sample().build();
    assert!(Gguf::parse(&built.bytes).is_ok());
    for at in 0..built.bytes.len() {
        for bit in 0..8 {
            let mut bytes = built.bytes.clone();
            bytes[at] ^= 1 << bit;
            check(&format!("flip bit {bit} of byte {at}"), &bytes);
        }
        check(&format!("truncate to {at}"), &built.bytes[..at]);
    }
    eprintln!("{} bit flips and truncations", built.bytes.len() * 9);
}

/// A second base file exercising the unusual-but-valid paths: version 2, a 0-dimensional
/// tensor, a tensor with a zero dimension, data stored out of tensor-info order.
fn odd_sample() -> GgufWriter {
    let mut late = TensorSpec::new("late", &[4, 2], TensorType::F32);
    late.offset = Some(64);
    let mut early = TensorSpec::new("early", &[32], TensorType::Q8_0);
    early.offset = Some(0);
    let mut w = GgufWriter::new()
        .kv("general.architecture", Value::Str("llama".into()))
        .kv("t.strs", Value::Array(Array::Str(vec!["x".into(); 3])))
        .tensor(late)
        .tensor(early)
        .tensor(TensorSpec::new("scalar", &[], TensorType::F32))
        .tensor(TensorSpec::new("empty", &[0, 3], TensorType::BF16));
    w.version = 2;
    // Packed after `late`'s 32 bytes at 64..96.
    w.tensors[2].offset = Some(96);
    w.tensors[3].offset = Some(128);
    w
}

/// Random stacks of 1 to 4 mutations, on two base files. `GGUF_FUZZ_CASES` scales it up for a
/// longer run (`GGUF_FUZZ_CASES=2000000 cargo test --release --test gguf_fuzz`).
#[test]
fn fuzz_random_mutations() {
    let cases: usize = std::env::var("GGUF_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut aligned = sample().kv("general.alignment", Value::U32(64));
    aligned.alignment = 64;
    let bases = [aligned.build(), odd_sample().build()];
    for base in &bases {
        assert!(Gguf::parse(&base.bytes).is_ok());
    }
    let mut rng = StdRng::seed_from_u64(0x6767_7566);
    let start = Instant::now();
    let mut accepted = 0;
    for case in 0..cases {
        let built = &bases[case % bases.len()];
        let mut bytes = built.bytes.clone();
        for _ in 0..rng.random_range(1..=4) {
            mutate(&mut rng, built, &mut bytes);
        }
        check(&format!("random case {case}"), &bytes);
        accepted += usize::from(Gguf::parse(&bytes).is_ok());
    }
    // Most mutations must be caught; some (data bytes, metadata values) leave a valid file.
    assert!(accepted < cases / 2, "{accepted} of {cases} accepted");
    eprintln!(
        "{cases} random mutations in {:?}, {accepted} still valid",
        start.elapsed()
    );
}

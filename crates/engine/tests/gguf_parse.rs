//! Parsing valid files: the real reference models (expected values read with the Python `gguf`
//! package from these exact files; their sha256 is in `shared/reference/README.md`), a round trip
//! through the test writer, and the typed metadata accessors.

mod common;

use std::path::{Path, PathBuf};

use common::gguf_writer::sample;
use engine::gguf::{Array, Gguf, GgufError, TensorType, Value, ValueType};

fn reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference")
        .join(name)
}

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name)
}

fn load(path: &Path) -> (Vec<u8>, Gguf) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let g = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (bytes, g)
}

/// Checks one tensor: dims (ggml order), type, absolute offset, size.
fn check_tensor(g: &Gguf, name: &str, dims: &[u64], dtype: TensorType, offset: u64, n_bytes: u64) {
    let t = g.tensor(name).unwrap_or_else(|| panic!("no tensor {name}"));
    assert_eq!(
        (t.dims.as_slice(), t.dtype, t.offset, t.n_bytes),
        (dims, dtype, offset, n_bytes),
        "{name}"
    );
}

/// The tokenizer shared by all three files (SmolLM2's).
fn check_tokenizer(g: &Gguf) {
    let tokens = g.get_str_array("tokenizer.ggml.tokens").expect("tokens");
    assert_eq!(tokens.len(), 49152);
    assert_eq!(
        (tokens[0].as_str(), tokens[100].as_str()),
        ("<|endoftext|>", "t")
    );
    assert_eq!(tokens[49151], "ectable");
    let merges = g.get_str_array("tokenizer.ggml.merges").expect("merges");
    assert_eq!((merges.len(), merges[0].as_str()), (48900, "Ġ t"));
    assert_eq!(
        (merges[1000].as_str(), merges[48899].as_str()),
        ("Ġpl an", "ect able")
    );
    let types = g
        .get_i32_array("tokenizer.ggml.token_type")
        .expect("token types");
    assert_eq!(types.len(), 49152);
    assert_eq!(types.iter().map(|&t| i64::from(t)).sum::<i64>(), 49186);
    assert_eq!(types.iter().filter(|&&t| t == 3).count(), 17);
    assert_eq!(g.get_str("tokenizer.ggml.model").expect("model"), "gpt2");
    assert_eq!(g.get_str("tokenizer.ggml.pre").expect("pre"), "smollm");
    assert_eq!(g.get_u32("tokenizer.ggml.bos_token_id").expect("bos"), 1);
    assert_eq!(g.get_u32("tokenizer.ggml.eos_token_id").expect("eos"), 2);
    assert!(!g.get_bool("tokenizer.ggml.add_bos_token").expect("add_bos"));
}

/// Every tensor's data lies inside the file, aligned.
fn check_ranges(bytes: &[u8], g: &Gguf) {
    for t in &g.tensors {
        assert_eq!((t.offset - g.data_offset) % g.alignment, 0, "{}", t.name);
        assert_eq!(
            t.data(bytes).map(<[u8]>::len),
            Some(t.n_bytes as usize),
            "{}",
            t.name
        );
    }
}

#[test]
fn tiny_smollm3_q4km() {
    let (bytes, g) = load(&reference("tiny-smollm3-q4km.gguf"));
    assert_eq!((g.version, g.alignment, g.data_offset), (3, 32, 1776928));
    assert_eq!((g.tensors.len(), g.metadata().count()), (74, 25));
    let arch = g.metadata().next().expect("first key");
    assert_eq!(
        arch,
        ("general.architecture", &Value::Str("smollm3".into()))
    );
    assert_eq!(
        g.get_str("general.name").expect("name"),
        "synthetic-smollm3-h256-l8"
    );
    assert_eq!(g.get_u32("smollm3.block_count").expect("blocks"), 8);
    assert_eq!(g.get_u64("smollm3.embedding_length").expect("hidden"), 256);
    assert_eq!(
        g.get_u32("smollm3.attention.head_count_kv")
            .expect("kv heads"),
        1
    );
    assert_eq!(g.get_f32("smollm3.rope.freq_base").expect("theta"), 5e6);
    assert_eq!(
        g.get_f32("smollm3.attention.layer_norm_rms_epsilon")
            .expect("eps"),
        1e-6
    );
    assert_eq!(g.get_u32("general.file_type").expect("file type"), 15);
    assert_eq!(
        g.get_str("tokenizer.chat_template")
            .expect("template")
            .len(),
        3795
    );
    check_tensor(
        &g,
        "output_norm.weight",
        &[256],
        TensorType::F32,
        1776928,
        1024,
    );
    check_tensor(
        &g,
        "token_embd.weight",
        &[256, 49152],
        TensorType::Q6K,
        1777952,
        10321920,
    );
    check_tensor(
        &g,
        "blk.0.attn_k.weight",
        &[256, 64],
        TensorType::Q4K,
        12099872,
        9216,
    );
    check_tensor(
        &g,
        "blk.3.ffn_down.weight",
        &[768, 256],
        TensorType::Q6K,
        13530144,
        161280,
    );
    check_tensor(
        &g,
        "blk.7.ffn_up.weight",
        &[256, 768],
        TensorType::Q4K,
        15616800,
        110592,
    );
    let count = |ty| g.tensors.iter().filter(|t| t.dtype == ty).count();
    assert_eq!(
        (
            count(TensorType::Q4K),
            count(TensorType::F32),
            count(TensorType::Q6K)
        ),
        (48, 17, 9)
    );
    check_tokenizer(&g);
    check_ranges(&bytes, &g);
    // The last tensor ends exactly at the end of the file.
    assert_eq!(15616800 + 110592, bytes.len());
}

#[test]
fn tiny_smollm3_f32() {
    let (bytes, g) = load(&reference("tiny-smollm3-f32.gguf"));
    assert_eq!((g.version, g.alignment, g.data_offset), (3, 32, 1776896));
    assert_eq!((g.tensors.len(), g.metadata().count()), (74, 24));
    assert_eq!(g.get_u32("smollm3.embedding_length").expect("hidden"), 128);
    assert_eq!(
        g.get_u32("smollm3.rope.dimension_count")
            .expect("rope dims"),
        32
    );
    assert_eq!(g.get_u32("general.file_type").expect("file type"), 0);
    assert_eq!(
        g.opt_u32("general.quantization_version")
            .expect("absent is fine"),
        None
    );
    check_tensor(
        &g,
        "token_embd.weight",
        &[128, 49152],
        TensorType::F32,
        1776896,
        25165824,
    );
    check_tensor(
        &g,
        "blk.3.ffn_down.weight",
        &[384, 128],
        TensorType::F32,
        29765376,
        196608,
    );
    check_tensor(
        &g,
        "blk.7.attn_v.weight",
        &[128, 32],
        TensorType::F32,
        32308480,
        16384,
    );
    check_tensor(
        &g,
        "blk.7.ffn_down.weight",
        &[384, 128],
        TensorType::F32,
        32784128,
        196608,
    );
    assert!(g.tensors.iter().all(|t| t.dtype == TensorType::F32));
    check_tokenizer(&g);
    check_ranges(&bytes, &g);
}

#[test]
fn smollm2_135m_q4_1() {
    let (bytes, g) = load(&model("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!((g.version, g.alignment, g.data_offset), (3, 32, 1785664));
    assert_eq!((g.tensors.len(), g.metadata().count()), (272, 33));
    assert_eq!(g.get_str("general.architecture").expect("arch"), "llama");
    assert_eq!(
        g.get_str_array("general.languages").expect("languages"),
        ["en"]
    );
    assert_eq!(g.get_u32("llama.block_count").expect("blocks"), 30);
    assert_eq!(g.get_u32("llama.context_length").expect("ctx"), 8192);
    assert_eq!(g.get_u32("llama.attention.head_count").expect("heads"), 9);
    assert_eq!(
        g.get_u32("llama.attention.head_count_kv")
            .expect("kv heads"),
        3
    );
    assert_eq!(g.get_f32("llama.rope.freq_base").expect("theta"), 100000.0);
    assert_eq!(
        g.get_f32("llama.attention.layer_norm_rms_epsilon")
            .expect("eps"),
        1e-5
    );
    assert!(!g
        .get_bool("tokenizer.ggml.add_space_prefix")
        .expect("add_space_prefix"));
    assert_eq!(
        g.get_str("tokenizer.chat_template")
            .expect("template")
            .len(),
        368
    );
    check_tensor(
        &g,
        "token_embd.weight",
        &[576, 49152],
        TensorType::Q8_0,
        1785664,
        30081024,
    );
    check_tensor(
        &g,
        "blk.0.ffn_down.weight",
        &[1536, 576],
        TensorType::Q4_1,
        31868992,
        552960,
    );
    check_tensor(
        &g,
        "blk.29.ffn_down.weight",
        &[1536, 576],
        TensorType::Q4_1,
        80630848,
        552960,
    );
    check_tensor(
        &g,
        "blk.7.attn_v.weight",
        &[576, 192],
        TensorType::Q4_1,
        93858112,
        69120,
    );
    check_tensor(
        &g,
        "output_norm.weight",
        &[576],
        TensorType::F32,
        98360128,
        2304,
    );
    assert_eq!(
        g.tensors
            .iter()
            .filter(|t| t.dtype == TensorType::Q4_1)
            .count(),
        210
    );
    check_tokenizer(&g);
    check_ranges(&bytes, &g);
}

#[test]
fn writer_round_trip() {
    let w = sample();
    let built = w.build();
    let g = Gguf::parse(&built.bytes).expect("sample parses");
    let parsed: Vec<(&str, &Value)> = g.metadata().collect();
    let written: Vec<(&str, &Value)> = w.kv.iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(parsed, written);
    assert_eq!(g.tensors.len(), w.tensors.len());
    for (t, spec) in g.tensors.iter().zip(&w.tensors) {
        assert_eq!(
            (t.name.as_str(), &t.dims, t.dtype.id()),
            (spec.name.as_str(), &spec.dims, spec.type_id)
        );
        assert_eq!(
            t.data(&built.bytes),
            Some(spec.data.as_slice()),
            "{}",
            t.name
        );
    }
    let empty = g.get("t.arr_empty").expect("empty array");
    assert!(matches!(empty, Value::Array(a) if a.is_empty() && a.elem() == ValueType::I16));
}

#[test]
fn typed_accessors() {
    let g = Gguf::parse(&sample().build().bytes).expect("sample parses");
    // Integers of any type, when the value fits.
    assert_eq!(g.get_u32("t.u8").expect("u8"), 200);
    assert_eq!(g.get_u32("t.u16").expect("u16"), 60000);
    assert_eq!(g.get_u32("t.u32").expect("u32"), 4_000_000_000);
    assert_eq!(g.get_u64("t.u64").expect("u64"), 1 << 40);
    assert_eq!(g.get_i64("t.i64").expect("i64"), -(1 << 40));
    assert!(matches!(
        g.get_u32("t.u64"),
        Err(GgufError::OutOfRange { target: "u32", .. })
    ));
    assert!(matches!(
        g.get_u32("t.i8"),
        Err(GgufError::OutOfRange { .. })
    ));
    assert!(matches!(
        g.get_u64("t.i32"),
        Err(GgufError::OutOfRange { .. })
    ));
    // Floats: f32, and f64 when it fits.
    assert_eq!(g.get_f32("t.f32").expect("f32"), 1.5e-6);
    assert!(matches!(
        g.get_f32("t.f64"),
        Err(GgufError::OutOfRange { .. })
    ));
    assert!(g.get_bool("t.bool").expect("bool"));
    assert_eq!(g.get_str("t.str").expect("str"), "héllo wörld");
    let tokens = g.get_str_array("tokenizer.ggml.tokens").expect("tokens");
    assert_eq!(tokens, ["<s>", "</s>", "a", "Ġb", "日本", ""]);
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type").expect("types"),
        [3, 3, 1, 1, 1, 6]
    );
    assert_eq!(
        g.get_i32_array("t.arr_u8").expect("u8 array widens"),
        [0, 1, 255]
    );
    assert!(matches!(
        g.get_i32_array("t.arr_u64"),
        Err(GgufError::OutOfRange { .. })
    ));
    assert!(matches!(
        g.get_i32_array("t.arr_f32"),
        Err(GgufError::WrongType { .. })
    ));
    // Wrong types, missing keys, optional keys.
    let e = g.get_u32("t.str").expect_err("string is not an integer");
    assert!(
        matches!(&e, GgufError::WrongType { key, found, .. } if key == "t.str" && found == "str")
    );
    let e = g
        .get_str_array("t.arr_u8")
        .expect_err("u8 array is not a string array");
    assert!(
        matches!(&e, GgufError::WrongType { found, .. } if found == "arr[u8]"),
        "{e}"
    );
    assert!(matches!(
        g.get_bool("t.u8"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        g.get_f32("t.str"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(g.get_u32("nope"), Err(GgufError::MissingKey(k)) if k == "nope"));
    assert_eq!(g.opt_u32("nope").expect("missing is None"), None);
    assert_eq!(g.opt_str("nope").expect("missing is None"), None);
    assert_eq!(g.opt_bool("t.bool").expect("present"), Some(true));
    assert!(matches!(
        g.opt_str("t.u8"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        g.opt_str_array("t.str"),
        Err(GgufError::WrongType { .. })
    ));
    // Raw access.
    assert_eq!(
        g.get("t.arr_bool"),
        Some(&Value::Array(Array::Bool(vec![true, false])))
    );
    assert!(g.tensor("nope").is_none());
}

/// (id, block size, block bytes) from gguf-py's `GGML_QUANT_SIZES`, plus Q2_0 from ggml-common.h.
#[rustfmt::skip]
const GGML_QUANT_SIZES: &[(u32, u64, u64)] = &[
    (0, 1, 4), (1, 1, 2), (2, 32, 18), (3, 32, 20), (6, 32, 22), (7, 32, 24), (8, 32, 34),
    (9, 32, 40), (10, 256, 84), (11, 256, 110), (12, 256, 144), (13, 256, 176), (14, 256, 210),
    (15, 256, 292), (16, 256, 66), (17, 256, 74), (18, 256, 98), (19, 256, 50), (20, 32, 18),
    (21, 256, 110), (22, 256, 82), (23, 256, 136), (24, 1, 1), (25, 1, 2), (26, 1, 4),
    (27, 1, 8), (28, 1, 8), (29, 256, 56), (30, 1, 2), (34, 256, 54), (35, 256, 66),
    (39, 32, 17), (40, 64, 36), (41, 128, 18), (42, 64, 18),
];

#[test]
fn tensor_type_table() {
    assert_eq!(TensorType::ALL.len(), GGML_QUANT_SIZES.len());
    for &(id, block, size) in GGML_QUANT_SIZES {
        let t = TensorType::from_id(id).unwrap_or_else(|| panic!("id {id}"));
        let got = (t.id(), t.block_size(), t.type_size());
        assert_eq!(got, (id, block, size), "{}", t.name());
    }
    for id in [4, 5, 31, 32, 33, 36, 37, 38] {
        assert!(TensorType::from_id(id).is_none() && TensorType::removed_name(id).is_some());
    }
    assert_eq!(TensorType::from_id(43), None);
    assert_eq!(TensorType::Q4K.name(), "q4_K");
    for id in 0..13 {
        assert_eq!(ValueType::from_id(id).map(ValueType::id), Some(id));
    }
    assert_eq!(ValueType::from_id(13), None);
}

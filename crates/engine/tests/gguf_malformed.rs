//! Every way a GGUF file can be malformed yields its own typed error, never a panic.
//! Files come from the test writer in `common/gguf_writer.rs`; the random-mutation fuzz test is in
//! `gguf_fuzz.rs`.

mod common;

use common::gguf_writer::{sample, Field, GgufWriter, TensorSpec};
use engine::gguf::{Gguf, GgufError, TensorType, Value};

/// Parses `bytes`, which must be rejected, and returns the error.
fn err(bytes: &[u8]) -> GgufError {
    match Gguf::parse(bytes) {
        Ok(_) => panic!("malformed file was accepted"),
        Err(e) => e,
    }
}

/// Asserts the error matches a pattern, showing the error when it does not.
macro_rules! assert_err {
    ($bytes:expr, $pattern:pat $(if $guard:expr)?) => {{
        let e = err(&$bytes);
        assert!(matches!(e, $pattern $(if $guard)?), "unexpected error: {e:?}");
        e
    }};
}

#[test]
fn sample_is_valid() {
    let built = sample().build();
    let g = Gguf::parse(&built.bytes).expect("sample parses");
    assert_eq!(g.data_offset as usize, built.data_offset);
    assert_eq!(g.tensors.len(), 6);
}

#[test]
fn bad_magic() {
    let mut bytes = sample().build().bytes;
    bytes[..4].copy_from_slice(b"GGML");
    let e = assert_err!(bytes, GgufError::BadMagic { found } if &found == b"GGML");
    assert!(e.to_string().contains("offset 0"));
}

#[test]
fn versions() {
    let built = sample().build();
    for bad in [0, 1, 4, 0x0300_0000, u32::MAX] {
        let bytes = built.with_field(Field::Version, "", u64::from(bad));
        assert_err!(bytes, GgufError::UnsupportedVersion { version, .. } if version == bad);
    }
    // 2 and 3 share a layout; llama.cpp reads both.
    let v2 = built.with_field(Field::Version, "", 2);
    assert_eq!(Gguf::parse(&v2).expect("v2 accepted").version, 2);
}

#[test]
fn truncated_at_every_length() {
    let bytes = sample().build().bytes;
    for len in 0..bytes.len() {
        let e = err(&bytes[..len]);
        assert!(
            matches!(
                e,
                GgufError::Truncated { .. }
                    | GgufError::StringTooLong { .. }
                    | GgufError::ArrayTooLong { .. }
                    | GgufError::TensorCountTooLarge { .. }
                    | GgufError::KvCountTooLarge { .. }
                    | GgufError::TensorPastEnd { .. }
            ),
            "cut at {len}: {e:?}"
        );
    }
}

#[test]
fn truncated_in_each_section() {
    // The header's counts are bounded by the file size first, so a cut early in the metadata is
    // reported as a count too large; cuts near the end of a section reach the field itself.
    let built = sample().kv("t.last", Value::U64(7)).build();
    let cut = |kind: Field, label: &str, extra: usize| {
        let at = built.field(kind, label).offset + extra;
        built.bytes[..at].to_vec()
    };
    let e = assert_err!(
        cut(Field::TensorCount, "", 3),
        GgufError::Truncated { offset: 8, .. }
    );
    assert!(e.to_string().contains("tensor count"), "{e}");
    assert_err!(
        cut(Field::KeyLen, "t.u8", 4),
        GgufError::TensorCountTooLarge { .. }
    );
    // Key length, key bytes, value type, value.
    assert_err!(cut(Field::KeyLen, "t.last", 4), GgufError::Truncated { .. });
    assert_err!(
        cut(Field::KeyLen, "t.last", 10),
        GgufError::StringTooLong { .. }
    );
    assert_err!(
        cut(Field::ValueType, "t.last", 2),
        GgufError::Truncated { .. }
    );
    let e = assert_err!(
        cut(Field::ValueType, "t.last", 4 + 5),
        GgufError::Truncated { .. }
    );
    assert!(e.to_string().contains("value of key 't.last'"), "{e}");
    // Arrays: the count, a string element's length; fixed-size elements are bounded by the count.
    assert_err!(
        cut(Field::ArrayLen, "t.arr_u64", 5),
        GgufError::Truncated { .. }
    );
    assert_err!(
        cut(Field::StrLen, "tokenizer.ggml.tokens[5]", 3),
        GgufError::Truncated { .. }
    );
    assert_err!(
        cut(Field::ArrayLen, "t.arr_u64", 8 + 3),
        GgufError::ArrayTooLong { .. }
    );
    // Tensor infos.
    let e = assert_err!(cut(Field::Dim, "ids[3]", 5), GgufError::Truncated { .. });
    assert!(e.to_string().contains("dimension 3 of tensor 'ids'"), "{e}");
    assert_err!(
        cut(Field::TensorOffset, "ids", 7),
        GgufError::Truncated { .. }
    );
    // Padding before the data section, and the data itself.
    let infos_end = built.field(Field::TensorOffset, "ids").offset + 8;
    if infos_end < built.data_offset {
        assert_err!(built.bytes[..infos_end + 1], GgufError::Truncated { .. });
    }
    let short = &built.bytes[..built.bytes.len() - 1];
    assert_err!(short, GgufError::TensorPastEnd { ref name, .. } if name == "ids");
}

#[test]
fn counts_beyond_the_file() {
    let built = sample().build();
    for huge in [u64::MAX, 1 << 63, 1 << 32, built.bytes.len() as u64] {
        let bytes = built.with_field(Field::TensorCount, "", huge);
        assert_err!(bytes, GgufError::TensorCountTooLarge { count, .. } if count == huge);
        let bytes = built.with_field(Field::KvCount, "", huge);
        assert_err!(bytes, GgufError::KvCountTooLarge { count, .. } if count == huge);
    }
}

#[test]
fn string_lengths_beyond_the_file() {
    let built = sample().build();
    for huge in [u64::MAX, 1 << 40, built.bytes.len() as u64] {
        let e = assert_err!(
            built.with_field(Field::StrLen, "t.str", huge),
            GgufError::StringTooLong { len, .. } if len == huge
        );
        assert!(e.to_string().contains("t.str"), "{e}");
        assert_err!(
            built.with_field(Field::KeyLen, "t.i8", huge),
            GgufError::StringTooLong { .. }
        );
        assert_err!(
            built.with_field(Field::StrLen, "tokenizer.ggml.tokens[2]", huge),
            GgufError::StringTooLong { .. }
        );
        assert_err!(
            built.with_field(Field::NameLen, "q8.weight", huge),
            GgufError::StringTooLong { .. }
        );
    }
}

#[test]
fn array_lengths_beyond_the_file() {
    let built = sample().build();
    for key in [
        "tokenizer.ggml.tokens",
        "t.arr_u8",
        "t.arr_u64",
        "t.arr_empty",
    ] {
        for huge in [u64::MAX, 1 << 61, built.bytes.len() as u64] {
            let bytes = built.with_field(Field::ArrayLen, key, huge);
            assert_err!(bytes, GgufError::ArrayTooLong { key: ref k, count, .. } if k == key && count == huge);
        }
    }
}

#[test]
fn nested_array() {
    let bytes = sample()
        .build()
        .with_field(Field::ArrayElemType, "t.arr_u8", 9);
    assert_err!(bytes, GgufError::NestedArray { ref key, .. } if key == "t.arr_u8");
}

#[test]
fn invalid_value_types() {
    let built = sample().build();
    for id in [13, 255, u64::from(u32::MAX)] {
        let bytes = built.with_field(Field::ValueType, "t.u16", id);
        assert_err!(bytes, GgufError::InvalidValueType { ref key, .. } if key == "t.u16");
        let bytes = built.with_field(Field::ArrayElemType, "t.arr_f32", id);
        assert_err!(bytes, GgufError::InvalidValueType { ref key, .. } if key == "t.arr_f32");
    }
}

#[test]
fn invalid_utf8() {
    let built = sample().build();
    let corrupt = |kind: Field, label: &str| {
        let mut bytes = built.bytes.clone();
        bytes[built.field(kind, label).offset + 8] = 0xFF;
        bytes
    };
    for (kind, label, what) in [
        (Field::KeyLen, "t.bool", "key"),
        (Field::StrLen, "t.str", "t.str"),
        (Field::StrLen, "tokenizer.ggml.tokens[3]", "element 3"),
        (Field::NameLen, "norm.weight", "name of tensor 1"),
    ] {
        let e = assert_err!(corrupt(kind, label), GgufError::InvalidUtf8 { .. });
        assert!(e.to_string().contains(what), "{e}");
    }
}

#[test]
fn dimension_counts() {
    let built = sample().build();
    let bytes = built.with_field(Field::NDims, "norm.weight", 5);
    assert_err!(bytes, GgufError::TooManyDims { n_dims: 5, .. });
    // llama.cpp allows 0 dimensions (a scalar: one element) and zero-length dimensions.
    let g = Gguf::parse(
        &GgufWriter::new()
            .tensor(TensorSpec::new("scalar", &[], TensorType::F32))
            .tensor(TensorSpec::new("empty", &[0, 4], TensorType::F16))
            .tensor(TensorSpec::new("after", &[4], TensorType::F32))
            .build()
            .bytes,
    )
    .expect("scalar and empty tensors are valid");
    let scalar = g.tensor("scalar").expect("scalar");
    assert_eq!(
        (scalar.dims.len(), scalar.n_elements(), scalar.n_bytes),
        (0, 1, 4)
    );
    let empty = g.tensor("empty").expect("empty");
    assert_eq!((empty.n_elements(), empty.n_bytes), (0, 0));
}

#[test]
fn negative_dimension() {
    let bytes = sample()
        .build()
        .with_field(Field::Dim, "tok.weight[1]", u64::MAX);
    assert_err!(bytes, GgufError::NegativeDim { dim: 1, .. });
}

#[test]
fn shape_overflow() {
    let write = |dims: &[u64], dtype: TensorType| {
        let mut spec = TensorSpec::new("big", &[1], dtype);
        spec.dims = dims.to_vec();
        GgufWriter::new().tensor(spec).build().bytes
    };
    // Overflows u64 outright.
    assert_err!(
        write(&[1 << 32, 1 << 32], TensorType::F32),
        GgufError::ShapeOverflow { .. }
    );
    // Fits u64, but not the int64 element count ggml uses.
    assert_err!(
        write(&[1 << 31, 1 << 32], TensorType::F32),
        GgufError::ShapeOverflow { .. }
    );
    assert_err!(
        write(&[2, 2, 1 << 31, 1 << 31], TensorType::I8),
        GgufError::ShapeOverflow { .. }
    );
    // Elements fit, bytes do not.
    assert_err!(
        write(&[1 << 61], TensorType::F64),
        GgufError::ShapeOverflow { .. }
    );
}

#[test]
fn tensor_type_ids() {
    let built = sample().build();
    for id in [43, 1000, u64::from(u32::MAX)] {
        let bytes = built.with_field(Field::TensorType, "q8.weight", id);
        assert_err!(bytes, GgufError::UnknownTensorType { ref name, .. } if name == "q8.weight");
    }
    for (id, old) in [
        (4, "q4_2"),
        (5, "q4_3"),
        (31, "q4_0_4_4"),
        (38, "iq4_nl_8_8"),
    ] {
        let bytes = built.with_field(Field::TensorType, "tok.weight", id);
        assert_err!(bytes, GgufError::RemovedTensorType { type_name, .. } if type_name == old);
    }
}

#[test]
fn row_not_a_block_multiple() {
    let built = sample().build();
    let bytes = built.with_field(Field::Dim, "q4.weight[0]", 48);
    assert_err!(
        bytes,
        GgufError::RowNotBlockMultiple {
            row_len: 48,
            block_size: 32,
            ..
        }
    );
    // Q4_K blocks are 256 wide.
    let bytes = built.with_field(Field::TensorType, "q8.weight", 12);
    assert_err!(
        bytes,
        GgufError::RowNotBlockMultiple {
            row_len: 32,
            block_size: 256,
            ..
        }
    );
}

#[test]
fn misaligned_offset() {
    let bytes = sample()
        .build()
        .with_field(Field::TensorOffset, "norm.weight", 8);
    assert_err!(
        bytes,
        GgufError::MisalignedTensor {
            offset: 8,
            alignment: 32,
            ..
        }
    );
}

#[test]
fn data_past_the_end() {
    let built = sample().build();
    let data_len = (built.bytes.len() - built.data_offset) as u64;
    for offset in [1 << 20, !31, data_len.next_multiple_of(32)] {
        let bytes = built.with_field(Field::TensorOffset, "q8.weight", offset);
        assert_err!(bytes, GgufError::TensorPastEnd { ref name, .. } if name == "q8.weight");
    }
    // A shape bigger than the data.
    let bytes = built.with_field(Field::Dim, "tok.weight[1]", 1000);
    assert_err!(bytes, GgufError::TensorPastEnd { .. });
}

#[test]
fn overlapping_data() {
    let built = sample().build();
    let g = Gguf::parse(&built.bytes).expect("valid");
    let rel = |name: &str| g.tensor(name).expect("tensor").offset - g.data_offset;
    // Same start, and a small tensor inside a bigger, non-adjacent one.
    let bytes = built.with_field(Field::TensorOffset, "ids", rel("q8.weight"));
    assert_err!(bytes, GgufError::TensorOverlap { .. });
    let bytes = built.with_field(Field::TensorOffset, "norm.weight", rel("k.weight") + 32);
    let e = assert_err!(bytes, GgufError::TensorOverlap { ref first, ref second, .. }
        if first == "k.weight" && second == "norm.weight");
    assert!(e.to_string().contains("overlap"));
}

#[test]
fn alignment_key() {
    let with = |v: Value| sample().kv("general.alignment", v).build().bytes;
    assert_err!(
        with(Value::U32(0)),
        GgufError::InvalidAlignment { alignment: 0 }
    );
    assert_err!(
        with(Value::U32(48)),
        GgufError::InvalidAlignment { alignment: 48 }
    );
    assert_err!(with(Value::U64(32)), GgufError::AlignmentWrongType { ref found } if found == "u64");
    assert_err!(with(Value::I32(32)), GgufError::AlignmentWrongType { .. });
    // A valid non-default alignment moves the data section and the tensor offsets.
    let mut w = sample().kv("general.alignment", Value::U32(256));
    w.alignment = 256;
    let built = w.build();
    let g = Gguf::parse(&built.bytes).expect("alignment 256 is valid");
    assert_eq!((g.alignment, g.data_offset % 256), (256, 0));
    assert!(g.tensors.iter().all(|t| t.offset % 256 == 0));
    // Offsets valid at 32 but not at 256.
    let w32 = sample()
        .kv("general.alignment", Value::U32(256))
        .build()
        .bytes;
    assert_err!(
        w32,
        GgufError::MisalignedTensor { alignment: 256, .. } | GgufError::TensorPastEnd { .. }
    );
}

#[test]
fn duplicates() {
    let bytes = sample().kv("t.u8", Value::U8(1)).build().bytes;
    assert_err!(bytes, GgufError::DuplicateKey { ref key, .. } if key == "t.u8");
    let bytes = sample()
        .tensor(TensorSpec::new("q8.weight", &[32], TensorType::Q8_0))
        .build()
        .bytes;
    assert_err!(bytes, GgufError::DuplicateTensor { ref name, .. } if name == "q8.weight");
}

#[test]
fn names() {
    let bytes = sample().kv("", Value::U8(1)).build().bytes;
    assert_err!(bytes, GgufError::EmptyKey { index: 20, .. });
    let bytes = sample()
        .tensor(TensorSpec::new("", &[4], TensorType::F32))
        .build()
        .bytes;
    assert_err!(bytes, GgufError::EmptyTensorName { index: 6, .. });
    // ggml stores names NUL-terminated in 64 bytes: 63 fit, 64 do not.
    let ok = "n".repeat(63);
    let bytes = sample()
        .tensor(TensorSpec::new(&ok, &[4], TensorType::F32))
        .build()
        .bytes;
    assert!(Gguf::parse(&bytes)
        .expect("63-byte name")
        .tensor(&ok)
        .is_some());
    let long = "n".repeat(64);
    let bytes = sample()
        .tensor(TensorSpec::new(&long, &[4], TensorType::F32))
        .build()
        .bytes;
    assert_err!(
        bytes,
        GgufError::TensorNameTooLong {
            len: 64,
            max: 63,
            ..
        }
    );
}

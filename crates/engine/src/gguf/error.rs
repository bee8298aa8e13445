//! Why a GGUF file was rejected, or why a metadata lookup failed. Every variant names the place:
//! a byte offset from the start of the file, and the key or tensor name involved.

use super::types::ValueType;

/// One variant per way a GGUF file can be malformed, plus the typed-accessor failures.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("bad magic {found:02x?} at offset 0: not a GGUF file (expected \"GGUF\")")]
    BadMagic { found: [u8; 4] },

    #[error("unsupported GGUF version {version} at offset 4: {reason}")]
    UnsupportedVersion { version: u32, reason: &'static str },

    #[error("file truncated: {what} needs {needed} bytes at offset {offset} but only {available} remain")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },

    #[error("tensor count {count} at offset {offset} is more than the remaining file could describe (at most {max})")]
    TensorCountTooLarge { count: u64, offset: u64, max: u64 },

    #[error("key-value count {count} at offset {offset} is more than the remaining file could hold (at most {max})")]
    KvCountTooLarge { count: u64, offset: u64, max: u64 },

    #[error("{what}: string length {len} at offset {offset} exceeds the maximum {max} (the {available} bytes left in the file, at most 2^30)")]
    StringTooLong {
        what: String,
        offset: u64,
        len: u64,
        max: u64,
        available: u64,
    },

    #[error("key '{key}': array length {count} at offset {offset} exceeds the maximum {max} {elem} elements (what the {available} bytes left in the file can hold, at most 2^30)")]
    ArrayTooLong {
        key: String,
        offset: u64,
        count: u64,
        elem: ValueType,
        max: u64,
        available: u64,
    },

    #[error("key '{key}': invalid value type id {id} at offset {offset}")]
    InvalidValueType { key: String, offset: u64, id: u32 },

    #[error("key '{key}': array of arrays at offset {offset} (GGUF arrays cannot nest)")]
    NestedArray { key: String, offset: u64 },

    #[error("{what}: string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },

    #[error("key-value pair {index}: empty key at offset {offset}")]
    EmptyKey { index: u64, offset: u64 },

    #[error("duplicate key '{key}' at offset {offset}")]
    DuplicateKey { key: String, offset: u64 },

    #[error("key 'general.alignment' must be of type u32 but is {found}")]
    AlignmentWrongType { found: String },

    #[error("general.alignment = {alignment} is not a power of two")]
    InvalidAlignment { alignment: u64 },

    #[error("tensor {index}: empty name at offset {offset}")]
    EmptyTensorName { index: u64, offset: u64 },

    #[error("tensor '{name}' at offset {offset}: name is {len} bytes, ggml allows at most {max}")]
    TensorNameTooLong {
        name: String,
        offset: u64,
        len: u64,
        max: u64,
    },

    #[error("duplicate tensor name '{name}' at offset {offset}")]
    DuplicateTensor { name: String, offset: u64 },

    #[error("tensor '{name}': {n_dims} dimensions at offset {offset}, ggml allows at most {max}")]
    TooManyDims {
        name: String,
        offset: u64,
        n_dims: u32,
        max: u32,
    },

    #[error("tensor '{name}': dimension {dim} at offset {offset} is {value}, which is negative as the int64 ggml reads")]
    NegativeDim {
        name: String,
        offset: u64,
        dim: usize,
        value: u64,
    },

    #[error("tensor '{name}': shape {dims:?} has more elements or bytes than an int64 can count")]
    ShapeOverflow { name: String, dims: Vec<u64> },

    #[error("tensor '{name}': unknown ggml type id {id} at offset {offset}")]
    UnknownTensorType { name: String, offset: u64, id: u32 },

    #[error("tensor '{name}': ggml type id {id} ({type_name}) at offset {offset} has been removed from ggml")]
    RemovedTensorType {
        name: String,
        offset: u64,
        id: u32,
        type_name: &'static str,
    },

    #[error("tensor '{name}': row length {row_len} is not a multiple of the {dtype} block size {block_size}")]
    RowNotBlockMultiple {
        name: String,
        row_len: u64,
        dtype: &'static str,
        block_size: u64,
    },

    #[error("tensor '{name}': data offset {offset} (relative to the data section) is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },

    #[error("tensor '{name}': data at relative offset {offset} with {n_bytes} bytes ends past the end of the file ({file_len} bytes, data section at {data_offset})")]
    TensorPastEnd {
        name: String,
        offset: u64,
        n_bytes: u64,
        data_offset: u64,
        file_len: u64,
    },

    #[error("tensors '{first}' (bytes {first_start}..{first_end}) and '{second}' (bytes {second_start}..{second_end}) overlap")]
    TensorOverlap {
        first: String,
        first_start: u64,
        first_end: u64,
        second: String,
        second_start: u64,
        second_end: u64,
    },

    #[error("missing metadata key '{0}'")]
    MissingKey(String),

    #[error("metadata key '{key}' should be {expected} but is {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("metadata key '{key}': value {value} does not fit in {target}")]
    OutOfRange {
        key: String,
        value: String,
        target: &'static str,
    },
}

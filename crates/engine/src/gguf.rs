//! GGUF parsing and validation.
//!
//! Candle's own GGUF reader panics on some malformed files (an alignment of 0 divides by zero,
//! dimension products are unchecked), so the engine parses GGUF here: the caller memory-maps the
//! file and hands over its bytes, and [`Gguf::parse`] either returns a description in which every
//! tensor's byte range lies inside the file, or a [`GgufError`] that says what is wrong and where.
//! It never panics and never allocates more than a small multiple of the file size.
//!
//! The rules follow llama.cpp's reader (`ggml/src/gguf.cpp`): versions 2 and 3, at most 4
//! dimensions, no negative dimensions (zero is allowed), element counts within `i64`, known ggml
//! types, rows holding whole blocks, a `general.alignment` that is a `u32` power of two, unique
//! non-empty keys, unique tensor names of at most 63 bytes. On top of those: keys and strings must
//! be UTF-8 (they become Rust `String`s), tensor names must not be empty, and tensor data must be
//! aligned, inside the file and non-overlapping. llama.cpp additionally demands that tensors be
//! packed back to back in file order; we do not, as the loader only needs valid ranges.
//!
//! Format (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 key-value count, the
//! key-value pairs (string key, u32 value type, value; an array is element type, u64 count,
//! elements), the tensor infos (string name, u32 n_dims, n_dims u64 dims, u32 ggml type, u64
//! offset relative to the data section), padding to the alignment, then the tensor data.

mod access;
mod error;
mod reader;
mod tensor;
mod types;

use std::collections::HashMap;

pub use error::GgufError;
pub use tensor::{TensorInfo, MAX_DIMS, MAX_NAME_LEN};
pub use types::{Array, TensorType, Value, ValueType};

use reader::Reader;

/// The key that overrides the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Alignment used when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The smallest encoded key-value pair: key length (8) + a 1-byte key + value type (4) + a 1-byte value.
const MIN_KV_SIZE: u64 = 14;
/// The smallest encoded tensor info: name length (8) + a 1-byte name + n_dims (4) + type (4) + offset (8).
const MIN_TENSOR_INFO_SIZE: u64 = 25;

/// A parsed and validated GGUF file.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the tensor data section: the end of the tensor infos rounded up to the
    /// alignment (for a file without tensors, clamped to the file length).
    pub data_offset: u64,
    /// In file order, offsets absolute.
    pub tensors: Vec<TensorInfo>,
    /// Metadata in file order.
    kv: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl Gguf {
    /// Parses and validates a whole GGUF file.
    pub fn parse(bytes: &[u8]) -> Result<Gguf, GgufError> {
        let mut r = Reader::new(bytes);
        let magic = r.bytes4(format_args!("magic"))?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = r.u32(format_args!("version"))?;
        check_version(version)?;

        let n_tensors_offset = r.pos();
        let n_tensors = r.u64(format_args!("tensor count"))?;
        let n_kv_offset = r.pos();
        let n_kv = r.u64(format_args!("key-value count"))?;
        // Both counts are bounded by what the rest of the file could hold, before any allocation.
        let max_tensors = r.remaining() / MIN_TENSOR_INFO_SIZE;
        if n_tensors > max_tensors {
            return Err(GgufError::TensorCountTooLarge {
                count: n_tensors,
                offset: n_tensors_offset,
                max: max_tensors,
            });
        }
        let max_kv = r.remaining() / MIN_KV_SIZE;
        if n_kv > max_kv {
            return Err(GgufError::KvCountTooLarge {
                count: n_kv,
                offset: n_kv_offset,
                max: max_kv,
            });
        }

        let (kv, kv_index) = parse_metadata(&mut r, n_kv)?;
        let alignment = match kv_index.get(ALIGNMENT_KEY).and_then(|&i| kv.get(i)) {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) => u64::from(*a),
            Some((_, other)) => {
                return Err(GgufError::AlignmentWrongType {
                    found: other.type_description(),
                })
            }
        };
        if !alignment.is_power_of_two() {
            return Err(GgufError::InvalidAlignment { alignment });
        }

        let (mut tensors, tensor_index) = tensor::parse_infos(&mut r, n_tensors)?;

        let file_len = bytes.len() as u64;
        let infos_end = r.pos();
        let padded = infos_end
            .checked_next_multiple_of(alignment)
            .unwrap_or(u64::MAX);
        let data_offset = if tensors.is_empty() {
            padded.min(file_len)
        } else if padded > file_len {
            return Err(r.truncated(
                padded - infos_end,
                format_args!("padding before the tensor data section"),
            ));
        } else {
            padded
        };
        tensor::check_layout(&mut tensors, data_offset, alignment, file_len)?;

        Ok(Gguf {
            version,
            alignment,
            data_offset,
            tensors,
            kv,
            kv_index,
            tensor_index,
        })
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }
}

/// llama.cpp's version rules: 0 is invalid, a version with its low 16 bits zero is a byte-swapped
/// (big-endian) file, 1 is obsolete, above 3 is from the future. 2 and 3 share one layout.
fn check_version(version: u32) -> Result<(), GgufError> {
    let reason = match version {
        0 => "version 0 is invalid",
        v if v & 0xFFFF == 0 => {
            "the version looks byte-swapped: a big-endian file, which is not supported"
        }
        1 => "GGUF version 1 is obsolete; re-convert the model",
        2 | 3 => return Ok(()),
        _ => "newer than the supported versions 2 and 3",
    };
    Err(GgufError::UnsupportedVersion { version, reason })
}

type Metadata = (Vec<(String, Value)>, HashMap<String, usize>);

/// Reads `count` key-value pairs (already bounded by the remaining file size).
fn parse_metadata(r: &mut Reader<'_>, count: u64) -> Result<Metadata, GgufError> {
    let capacity = usize::try_from(count).unwrap_or(0);
    let mut kv = Vec::with_capacity(capacity);
    let mut index = HashMap::with_capacity(capacity);
    for i in 0..count {
        let key_offset = r.pos();
        let key = r.string(format_args!("key {i}"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey {
                index: i,
                offset: key_offset,
            });
        }
        if index.contains_key(key) {
            return Err(GgufError::DuplicateKey {
                key: key.to_string(),
                offset: key_offset,
            });
        }
        let ty = r.value_type(key)?;
        let value = r.value(key, ty)?;
        index.insert(key.to_string(), kv.len());
        kv.push((key.to_string(), value));
    }
    Ok((kv, index))
}

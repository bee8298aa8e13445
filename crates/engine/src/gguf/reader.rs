//! A bounds-checked little-endian cursor over the file bytes, and the decoding of metadata values.
//!
//! Every read checks the remaining length first, and every count (string length, array length) is
//! compared with what the remaining bytes could hold before anything is allocated, so a corrupt
//! length field costs an error, not a multi-gigabyte allocation.
//!
//! The `what` arguments are `format_args!` values: building one costs a few stores, and it is only
//! formatted into a `String` when an error is actually returned.

use std::fmt;

use super::error::GgufError;
use super::types::{Array, Value, ValueType};

/// llama.cpp's `GGUF_MAX_STRING_LENGTH`: longer strings are rejected even when the file is big enough.
const MAX_STRING_LEN: u64 = 1 << 30;
/// llama.cpp's `GGUF_MAX_ARRAY_ELEMENTS`.
const MAX_ARRAY_LEN: u64 = 1 << 30;

pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// Current byte offset from the start of the file.
    pub(super) fn pos(&self) -> u64 {
        self.pos as u64
    }

    pub(super) fn remaining(&self) -> u64 {
        self.bytes.len().saturating_sub(self.pos) as u64
    }

    pub(super) fn truncated(&self, needed: u64, what: fmt::Arguments<'_>) -> GgufError {
        GgufError::Truncated {
            what: what.to_string(),
            offset: self.pos(),
            needed,
            available: self.remaining(),
        }
    }

    /// The next `n` bytes.
    pub(super) fn take(&mut self, n: u64, what: fmt::Arguments<'_>) -> Result<&'a [u8], GgufError> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| self.bytes.get(self.pos..end).map(|s| (s, end)));
        match slice {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(self.truncated(n, what)),
        }
    }

    fn fixed<const N: usize>(&mut self, what: fmt::Arguments<'_>) -> Result<[u8; N], GgufError> {
        match self
            .bytes
            .get(self.pos..)
            .and_then(|s| s.first_chunk::<N>())
        {
            Some(chunk) => {
                self.pos += N;
                Ok(*chunk)
            }
            None => Err(self.truncated(N as u64, what)),
        }
    }

    pub(super) fn bytes4(&mut self, what: fmt::Arguments<'_>) -> Result<[u8; 4], GgufError> {
        self.fixed::<4>(what)
    }

    pub(super) fn u32(&mut self, what: fmt::Arguments<'_>) -> Result<u32, GgufError> {
        self.fixed(what).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, what: fmt::Arguments<'_>) -> Result<u64, GgufError> {
        self.fixed(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 length, then that many bytes of UTF-8 (no terminator).
    pub(super) fn string(&mut self, what: fmt::Arguments<'_>) -> Result<&'a str, GgufError> {
        let len_offset = self.pos();
        let len = self.u64(format_args!("length of {what}"))?;
        let max = self.remaining().min(MAX_STRING_LEN);
        if len > max {
            return Err(GgufError::StringTooLong {
                what: what.to_string(),
                offset: len_offset,
                len,
                max,
                available: self.remaining(),
            });
        }
        let start = self.pos();
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 {
            what: what.to_string(),
            offset: start,
        })
    }

    /// A value type id (stored as int32), for the value of `key`.
    pub(super) fn value_type(&mut self, key: &str) -> Result<ValueType, GgufError> {
        let offset = self.pos();
        let id = self.u32(format_args!("value type of key '{key}'"))?;
        ValueType::from_id(id).ok_or_else(|| GgufError::InvalidValueType {
            key: key.to_string(),
            offset,
            id,
        })
    }

    /// The value of `key`, of type `ty`, whose type id has just been read.
    pub(super) fn value(&mut self, key: &str, ty: ValueType) -> Result<Value, GgufError> {
        // A macro rather than a `let`: older compilers (the MSRV is 1.85) reject binding the result
        // of `format_args!` to a variable.
        macro_rules! what {
            () => {
                format_args!("value of key '{key}'")
            };
        }
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.fixed(what!())?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.fixed(what!())?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.fixed(what!())?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.fixed(what!())?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.fixed(what!())?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.fixed(what!())?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.fixed(what!())?)),
            // llama.cpp reads an int8 and treats any non-zero byte as true; so do we.
            ValueType::Bool => Value::Bool(u8::from_le_bytes(self.fixed(what!())?) != 0),
            ValueType::Str => Value::Str(self.string(what!())?.to_owned()),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.fixed(what!())?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.fixed(what!())?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.fixed(what!())?)),
            ValueType::Array => Value::Array(self.array(key)?),
        })
    }

    /// An array value: element type id, u64 count, then the elements.
    fn array(&mut self, key: &str) -> Result<Array, GgufError> {
        let elem_offset = self.pos();
        let elem = self.value_type(key)?;
        if elem == ValueType::Array {
            return Err(GgufError::NestedArray {
                key: key.to_string(),
                offset: elem_offset,
            });
        }
        let count_offset = self.pos();
        let count = self.u64(format_args!("array length of key '{key}'"))?;
        let min_size = elem.min_encoded_size() as u64;
        let max = (self.remaining() / min_size).min(MAX_ARRAY_LEN);
        // `count <= max` also bounds the Vec capacities below by the file size.
        let n = match usize::try_from(count) {
            Ok(n) if count <= max => n,
            _ => {
                return Err(GgufError::ArrayTooLong {
                    key: key.to_string(),
                    offset: count_offset,
                    count,
                    elem,
                    max,
                    available: self.remaining(),
                })
            }
        };
        macro_rules! what {
            () => {
                format_args!("elements of array '{key}'")
            };
        }
        Ok(match elem {
            ValueType::U8 => Array::U8(self.numbers(n, what!(), u8::from_le_bytes)?),
            ValueType::I8 => Array::I8(self.numbers(n, what!(), i8::from_le_bytes)?),
            ValueType::U16 => Array::U16(self.numbers(n, what!(), u16::from_le_bytes)?),
            ValueType::I16 => Array::I16(self.numbers(n, what!(), i16::from_le_bytes)?),
            ValueType::U32 => Array::U32(self.numbers(n, what!(), u32::from_le_bytes)?),
            ValueType::I32 => Array::I32(self.numbers(n, what!(), i32::from_le_bytes)?),
            ValueType::F32 => Array::F32(self.numbers(n, what!(), f32::from_le_bytes)?),
            ValueType::Bool => Array::Bool(self.numbers(n, what!(), |[b]: [u8; 1]| b != 0)?),
            ValueType::U64 => Array::U64(self.numbers(n, what!(), u64::from_le_bytes)?),
            ValueType::I64 => Array::I64(self.numbers(n, what!(), i64::from_le_bytes)?),
            ValueType::F64 => Array::F64(self.numbers(n, what!(), f64::from_le_bytes)?),
            ValueType::Str => {
                let mut items = Vec::with_capacity(n);
                for i in 0..n {
                    let s = self.string(format_args!("element {i} of array '{key}'"))?;
                    items.push(s.to_owned());
                }
                Array::Str(items)
            }
            // Rejected above; kept as an error rather than a panic.
            ValueType::Array => {
                return Err(GgufError::NestedArray {
                    key: key.to_string(),
                    offset: elem_offset,
                })
            }
        })
    }

    /// `n` fixed-size little-endian elements, decoded from one bounds-checked slice.
    fn numbers<T, const N: usize>(
        &mut self,
        n: usize,
        what: fmt::Arguments<'_>,
        decode: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, GgufError> {
        let n_bytes = (n as u64).saturating_mul(N as u64);
        let bytes = self.take(n_bytes, what)?;
        // `chunks_exact` yields only full N-byte chunks, so `first_chunk` never drops one.
        Ok(bytes
            .chunks_exact(N)
            .filter_map(|c| c.first_chunk::<N>().map(|a| decode(*a)))
            .collect())
    }
}

//! Tensor infos: parsing them, and checking that their data lies inside the file, aligned and
//! without overlap, so the loader can slice the memory map with the ranges it gets.

use std::collections::HashMap;
use std::ops::Range;

use super::error::GgufError;
use super::reader::Reader;
use super::types::TensorType;

/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// ggml's `GGML_MAX_NAME`: names are stored NUL-terminated in a 64-byte buffer, so at most 63 bytes.
pub const MAX_NAME_LEN: u64 = 63;

/// One tensor's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (the fastest-varying dimension). Empty for a
    /// 0-dimensional (scalar) tensor, which ggml allows.
    pub dims: Vec<u64>,
    pub dtype: TensorType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar, 0 when a dimension is 0).
    pub fn n_elements(&self) -> u64 {
        // Validated at parse time to fit in an i64; saturating only guards hand-built values.
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// The absolute byte range of the data in the file.
    pub fn byte_range(&self) -> Range<u64> {
        self.offset..self.offset.saturating_add(self.n_bytes)
    }

    /// The tensor's data within `file` (the bytes given to [`super::Gguf::parse`]); `None` if
    /// `file` is too short, which cannot happen for the file this info was parsed from.
    pub fn data<'a>(&self, file: &'a [u8]) -> Option<&'a [u8]> {
        let start = usize::try_from(self.offset).ok()?;
        let end = usize::try_from(self.byte_range().end).ok()?;
        file.get(start..end)
    }
}

/// Reads `count` tensor infos. Offsets are left relative to the data section; [`check_layout`]
/// makes them absolute. `count` has already been bounded by the remaining file size.
pub(super) fn parse_infos(
    r: &mut Reader<'_>,
    count: u64,
) -> Result<(Vec<TensorInfo>, HashMap<String, usize>), GgufError> {
    let capacity = usize::try_from(count).unwrap_or(0);
    let mut tensors = Vec::with_capacity(capacity);
    let mut index = HashMap::with_capacity(capacity);
    for i in 0..count {
        let name_offset = r.pos();
        let name = r.string(format_args!("name of tensor {i}"))?;
        if name.is_empty() {
            return Err(GgufError::EmptyTensorName {
                index: i,
                offset: name_offset,
            });
        }
        if name.len() as u64 > MAX_NAME_LEN {
            return Err(GgufError::TensorNameTooLong {
                name: name.to_string(),
                offset: name_offset,
                len: name.len() as u64,
                max: MAX_NAME_LEN,
            });
        }
        if index.contains_key(name) {
            return Err(GgufError::DuplicateTensor {
                name: name.to_string(),
                offset: name_offset,
            });
        }
        let info = parse_one(r, name)?;
        index.insert(info.name.clone(), tensors.len());
        tensors.push(info);
    }
    Ok((tensors, index))
}

/// The rest of one tensor info after its name: dims, type and offset.
fn parse_one(r: &mut Reader<'_>, name: &str) -> Result<TensorInfo, GgufError> {
    let n_dims_offset = r.pos();
    let n_dims = r.u32(format_args!("dimension count of tensor '{name}'"))?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            name: name.to_string(),
            offset: n_dims_offset,
            n_dims,
            max: MAX_DIMS,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for dim in 0..n_dims as usize {
        let offset = r.pos();
        let value = r.u64(format_args!("dimension {dim} of tensor '{name}'"))?;
        // ggml reads dims as int64 and rejects negative ones; zero is allowed (an empty tensor).
        if value > i64::MAX as u64 {
            return Err(GgufError::NegativeDim {
                name: name.to_string(),
                offset,
                dim,
                value,
            });
        }
        dims.push(value);
    }
    let overflow = || GgufError::ShapeOverflow {
        name: name.to_string(),
        dims: dims.clone(),
    };
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(overflow)?;

    let type_offset = r.pos();
    let id = r.u32(format_args!("type of tensor '{name}'"))?;
    let dtype = match TensorType::from_id(id) {
        Some(t) => t,
        None => {
            return Err(match TensorType::removed_name(id) {
                Some(type_name) => GgufError::RemovedTensorType {
                    name: name.to_string(),
                    offset: type_offset,
                    id,
                    type_name,
                },
                None => GgufError::UnknownTensorType {
                    name: name.to_string(),
                    offset: type_offset,
                    id,
                },
            })
        }
    };
    let row_len = dims.first().copied().unwrap_or(1);
    let block_size = dtype.block_size();
    if row_len % block_size != 0 {
        return Err(GgufError::RowNotBlockMultiple {
            name: name.to_string(),
            row_len,
            dtype: dtype.name(),
            block_size,
        });
    }
    // Every row holds whole blocks, so the element count does too.
    let n_bytes = (n_elements / block_size)
        .checked_mul(dtype.type_size())
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(overflow)?;

    let offset = r.u64(format_args!("data offset of tensor '{name}'"))?;
    Ok(TensorInfo {
        name: name.to_string(),
        dims,
        dtype,
        offset,
        n_bytes,
    })
}

/// Checks each tensor's data range (aligned, inside the file, no two overlapping) and turns the
/// relative offsets into absolute ones.
pub(super) fn check_layout(
    tensors: &mut [TensorInfo],
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    for t in tensors.iter_mut() {
        if t.offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                name: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        let range = data_offset
            .checked_add(t.offset)
            .and_then(|start| Some((start, start.checked_add(t.n_bytes)?)));
        match range {
            Some((start, end)) if end <= file_len => t.offset = start,
            _ => {
                return Err(GgufError::TensorPastEnd {
                    name: t.name.clone(),
                    offset: t.offset,
                    n_bytes: t.n_bytes,
                    data_offset,
                    file_len,
                })
            }
        }
    }

    // Sort by start and sweep, remembering the furthest end seen so far: O(n log n), and it also
    // catches a tensor lying inside a big one that is not its direct predecessor.
    let mut spans: Vec<(u64, u64, usize)> = tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| t.n_bytes > 0)
        .map(|(i, t)| (t.offset, t.offset.saturating_add(t.n_bytes), i))
        .collect();
    spans.sort_unstable();
    let mut furthest: Option<(u64, u64, usize)> = None;
    for span in spans {
        if let Some(prev) = furthest {
            if span.0 < prev.1 {
                let name = |i: usize| tensors.get(i).map(|t| t.name.clone()).unwrap_or_default();
                return Err(GgufError::TensorOverlap {
                    first: name(prev.2),
                    first_start: prev.0,
                    first_end: prev.1,
                    second: name(span.2),
                    second_start: span.0,
                    second_end: span.1,
                });
            }
        }
        if furthest.is_none_or(|prev| span.1 > prev.1) {
            furthest = Some(span);
        }
    }
    Ok(())
}

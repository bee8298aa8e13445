//! Quantized weight matrices that stay in the memory-mapped GGUF file.
//!
//! A [`QMatrix`] is a view of one 2-D weight tensor in the mapped file (never copied, never
//! dequantized). It multiplies activations on slices: the activations are quantized
//! to the weight type's dot-product partner (Q8_K for k-quants, Q8_0/Q8_1 for the 32-blocks) and
//! multiplied with the engine's own [`kernels`] (Q4_0/1, Q5_0/1, Q8_0, Q4_K, Q6_K: llama.cpp's
//! arithmetic) or, for the other types, Candle's `k_quants` kernels.

use std::sync::Arc;

use crate::threads::pool;
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{EngineError, Result};
use crate::gguf::{TensorInfo, TensorType};
use crate::kernels::{self, ActKind, Job, Packed, QActs, Weights};
use crate::quant;
use crate::quantize::quantize_row;

/// Bytes of a weight tensor: a range of the shared memory map, or an owned copy when the mapped
/// bytes are not aligned for the block type (only possible with an unusual `general.alignment`).
#[derive(Clone)]
enum Bytes {
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    Owned(Arc<Vec<u64>>, usize),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
            Bytes::Owned(words, len) => {
                // SAFETY: a Vec<u64> holds at least `len` initialised bytes (see `QMatrix::new`).
                unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, *len) }
            }
        }
    }
}

/// One weight matrix of `rows` x `cols` (`cols` is the contiguous dimension, ggml's `ne[0]`).
#[derive(Clone)]
pub struct QMatrix {
    dtype: TensorType,
    rows: usize,
    cols: usize,
    bytes: Bytes,
    /// The whole 16-row groups in the kernels' tile layout, after [`QMatrix::pack`].
    packed: Option<Arc<Packed>>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({:?}, {}x{})", self.dtype, self.rows, self.cols)
    }
}

/// Calls `$body` with `$T` bound to the block type of `$dtype`.
macro_rules! with_block_type {
    ($dtype:expr, $T:ident => $body:expr, else $other:expr) => {
        match $dtype {
            TensorType::F32 => {
                type $T = f32;
                $body
            }
            TensorType::F16 => {
                type $T = f16;
                $body
            }
            TensorType::BF16 => {
                type $T = bf16;
                $body
            }
            TensorType::Q4_0 => {
                type $T = BlockQ4_0;
                $body
            }
            TensorType::Q4_1 => {
                type $T = BlockQ4_1;
                $body
            }
            TensorType::Q5_0 => {
                type $T = BlockQ5_0;
                $body
            }
            TensorType::Q5_1 => {
                type $T = BlockQ5_1;
                $body
            }
            TensorType::Q8_0 => {
                type $T = BlockQ8_0;
                $body
            }
            TensorType::Q2K => {
                type $T = BlockQ2K;
                $body
            }
            TensorType::Q3K => {
                type $T = BlockQ3K;
                $body
            }
            TensorType::Q4K => {
                type $T = BlockQ4K;
                $body
            }
            TensorType::Q5K => {
                type $T = BlockQ5K;
                $body
            }
            TensorType::Q6K => {
                type $T = BlockQ6K;
                $body
            }
            _ => $other,
        }
    };
}

/// Whether the engine can multiply with weights of this type.
pub fn is_supported(dtype: TensorType) -> bool {
    quant::of(dtype).is_some()
}

/// Block elements, block bytes (the [`quant`] table) and the alignment of Candle's block type,
/// which the bytes are cast to.
fn block_layout(dtype: TensorType) -> Option<(usize, usize, usize)> {
    let q = quant::of(dtype)?;
    let align = with_block_type!(dtype, T => std::mem::align_of::<T>(),
        else unreachable!("every type of the quant table has a Candle block type"));
    Some((q.block_size(), q.block_bytes(), align))
}

impl QMatrix {
    /// A view of tensor `info` (2-D, or 1-D as a single row) inside `map`.
    pub fn new(map: &Arc<Mmap>, info: &TensorInfo) -> Result<Self> {
        let unsupported = || {
            EngineError::UnsupportedModel(format!(
                "tensor {} has type {:?}, which this engine cannot multiply with",
                info.name, info.dtype
            ))
        };
        let (block, type_size, align) = block_layout(info.dtype).ok_or_else(unsupported)?;
        let (cols, rows) = match info.dims.as_slice() {
            [c] => (*c as usize, 1),
            [c, r] => (*c as usize, *r as usize),
            dims => {
                return Err(EngineError::UnsupportedModel(format!(
                    "tensor {} has {} dimensions, expected a matrix",
                    info.name,
                    dims.len()
                )))
            }
        };
        if cols % block != 0 {
            return Err(EngineError::UnsupportedModel(format!(
                "tensor {}: row length {cols} is not a multiple of the {:?} block size {block}",
                info.name, info.dtype
            )));
        }
        let len = rows * (cols / block) * type_size;
        let start = info.offset as usize;
        if start.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(EngineError::UnsupportedModel(format!(
                "tensor {} data lies outside the file",
                info.name
            )));
        }
        let bytes = if (map.as_ptr() as usize + start).is_multiple_of(align) {
            Bytes::Mapped {
                map: map.clone(),
                start,
                len,
            }
        } else {
            let mut words = vec![0u64; len.div_ceil(8)];
            // SAFETY: `words` has at least `len` bytes; source range checked above.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    map.as_ptr().add(start),
                    words.as_mut_ptr() as *mut u8,
                    len,
                )
            };
            Bytes::Owned(Arc::new(words), len)
        };
        Ok(Self {
            dtype: info.dtype,
            rows,
            cols,
            bytes,
            packed: None,
        })
    }

    /// Repacks the matrix into the tile layout of the SIMD kernels when the CPU has them and
    /// the type has one (see [`kernels::repack`]); the kernels then stream one contiguous
    /// tile sequence. The mapped pages it read are handed back to the kernel page cache, so the
    /// process holds one copy of the weights, not two.
    pub fn pack(&mut self) -> Result<()> {
        if kernels::Isa::detect() == kernels::Isa::Scalar || self.packed.is_some() {
            return Ok(());
        }
        let Some(packed) = Packed::new(self.dtype, self.bytes.as_slice(), self.rows, self.cols)
        else {
            return Ok(());
        };
        let packed = packed.map_err(|e| {
            EngineError::UnsupportedModel(format!("no memory for the repacked weights: {e}"))
        })?;
        self.packed = Some(Arc::new(packed));
        #[cfg(unix)]
        if let Bytes::Mapped { map, start, len } = &self.bytes {
            // SAFETY: the map is a read-only mapping of a file. MADV_DONTNEED only drops our
            // page-table entries; a later read refaults the same file contents, so no borrow of
            // the map observes a change (the tied embedding still reads single rows from it).
            let advice = memmap2::UncheckedAdvice::DontNeed;
            let _ = unsafe { map.unchecked_advise_range(advice, *start, *len) };
        }
        Ok(())
    }

    /// The bytes of the file this matrix still reads: its rows past the last whole tile group,
    /// or all of it when it has no tiles. `None` once the tiles hold every row (or the bytes are
    /// an owned copy).
    pub fn mapped_range(&self) -> Option<std::ops::Range<usize>> {
        let Bytes::Mapped { start, len, .. } = &self.bytes else {
            return None;
        };
        let tiled = self
            .packed
            .as_ref()
            .map_or(0, |p| p.groups() * kernels::repack::COLS);
        let row_bytes = len / self.rows;
        (tiled < self.rows).then(|| start + tiled * row_bytes..start + len)
    }

    pub fn dtype(&self) -> TensorType {
        self.dtype
    }

    /// (rows, cols): output features x input features.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The tensor's bytes in the GGUF's block layout (aligned for the block type).
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    pub fn size_in_bytes(&self) -> usize {
        self.bytes.as_slice().len()
    }

    fn blocks<T: GgmlType>(&self) -> &[T] {
        let bytes = self.bytes.as_slice();
        let n = bytes.len() / std::mem::size_of::<T>();
        // SAFETY: `new` checked the length and alignment for this dtype's block type, and every
        // block type is plain old data (integers and halves) valid for any bit pattern.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, n) }
    }

    /// Dequantizes rows `ids` into `out` (ids.len() x cols): the embedding lookup.
    pub fn rows_f32(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        let cols = self.cols;
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= self.rows {
                return Err(EngineError::Tokenizer(format!(
                    "token id {id} is outside the vocabulary of {} tokens",
                    self.rows
                )));
            }
            let dst = &mut out[i * cols..(i + 1) * cols];
            with_block_type!(self.dtype, T => {
                let per_row = cols / T::BLCK_SIZE;
                match &self.packed {
                    // From the tiles: the mapped pages were released after packing, and reading
                    // them back would fault in far more than one row.
                    Some(p) if id < p.groups() * kernels::repack::COLS => {
                        let mut blk = [T::zeros()];
                        for (b, dst) in dst.chunks_exact_mut(T::BLCK_SIZE).enumerate() {
                            // SAFETY: one block of plain old data, exactly its size.
                            let bytes = unsafe {
                                std::slice::from_raw_parts_mut(
                                    blk.as_mut_ptr() as *mut u8,
                                    std::mem::size_of::<T>(),
                                )
                            };
                            p.block_into(id, b, bytes);
                            T::to_float(&blk, dst);
                        }
                    }
                    _ => T::to_float(&self.blocks::<T>()[id * per_row..(id + 1) * per_row], dst),
                }
            }, else unreachable!("QMatrix::new accepts only supported types"));
        }
        Ok(())
    }

    /// The matrix for the kernels, when they handle its type.
    pub fn weights(&self) -> Option<Weights<'_>> {
        kernels::act_kind(self.dtype)?;
        Some(Weights {
            dtype: self.dtype,
            data: self.bytes.as_slice(),
            packed: self.packed.as_deref(),
            rows: self.rows,
            cols: self.cols,
        })
    }

    /// Raw matmul on slices: `dst (m x rows) = lhs (m x cols) @ W^T`; `per_row`: every row
    /// rounded as a single-row pass rounds it ([`QActs::set_per_row`]).
    pub fn matmul_slices(
        &self,
        m: usize,
        lhs: &[f32],
        dst: &mut [f32],
        per_row: bool,
    ) -> candle_core::Result<()> {
        if let Some(w) = self.weights() {
            let mut x = QActs::new(kernels::act_kind(self.dtype).expect("checked"));
            x.set_per_row(per_row);
            x.quantize(&lhs[..m * self.cols], self.cols);
            kernels::matmul([Job { w, dst }], &x);
            return Ok(());
        }
        with_block_type!(self.dtype, T => matmul::<T>(m, self.cols, lhs, self.blocks::<T>(), dst),
            else candle_core::bail!("unsupported weight type {:?}", self.dtype));
        Ok(())
    }
}

/// Quantized activations reused between calls, one buffer per format, so that matrices sharing
/// an input quantize it once and decoding allocates nothing.
pub struct ActBuffers {
    q8_0: QActs,
    q8_1: QActs,
    q8k: QActs,
}

impl Default for ActBuffers {
    fn default() -> Self {
        Self {
            q8_0: QActs::new(ActKind::Q8_0),
            q8_1: QActs::new(ActKind::Q8_1),
            q8k: QActs::new(ActKind::Q8K),
        }
    }
}

impl ActBuffers {
    /// Bytes of the buffers as allocated now.
    pub fn size_in_bytes(&self) -> usize {
        [&self.q8_0, &self.q8_1, &self.q8k]
            .iter()
            .map(|a| a.size_in_bytes())
            .sum()
    }

    /// Makes every row round as a single-row pass rounds it, or as its batch does
    /// ([`QActs::set_per_row`]).
    pub fn set_per_row(&mut self, per_row: bool) {
        for a in [&mut self.q8_0, &mut self.q8_1, &mut self.q8k] {
            a.set_per_row(per_row);
        }
    }

    fn get(&mut self, kind: ActKind) -> &mut QActs {
        match kind {
            ActKind::Q8_0 => &mut self.q8_0,
            ActKind::Q8_1 => &mut self.q8_1,
            ActKind::Q8K => &mut self.q8k,
        }
    }
}

/// `dst_i (t x rows_i) = x (t x cols) @ W_i^T` for matrices that read the same input: `x` is
/// quantized once per activation format, and the matrices of one format share one parallel
/// region (one wake-up of the compute threads instead of one per matrix). At most
/// [`kernels::MAX_JOBS`] matrices.
pub fn matmul_shared(
    x: &[f32],
    t: usize,
    jobs: &mut [(&QMatrix, &mut [f32])],
    acts: &mut ActBuffers,
) -> Result<()> {
    for kind in [ActKind::Q8_0, ActKind::Q8_1, ActKind::Q8K] {
        let same = |w: &QMatrix| kernels::act_kind(w.dtype) == Some(kind);
        let Some(cols) = jobs.iter().find(|(w, _)| same(w)).map(|(w, _)| w.cols) else {
            continue;
        };
        let a = acts.get(kind);
        a.quantize(&x[..t * cols], cols);
        let batch = jobs
            .iter_mut()
            .filter(|(w, _)| same(w))
            .map(|(w, dst)| Job {
                w: w.weights().expect("kernel type"),
                dst: &mut dst[..t * w.rows],
            });
        kernels::matmul(batch, a);
    }
    for (w, dst) in jobs.iter_mut().filter(|(w, _)| w.weights().is_none()) {
        // Types without kernels round every row alike, whatever the batch.
        w.matmul_slices(t, &x[..t * w.cols], &mut dst[..t * w.rows], false)?;
    }
    Ok(())
}

/// `dst (m x n) = lhs (m x k) @ W^T` with W's `n` rows of `k` in blocks of `T`: the activations
/// are quantized once (as ggml does), then each group of four weight rows is multiplied with
/// every activation row while it is hot in cache. Column groups are spread over the threads.
fn matmul<T: GgmlType>(m: usize, k: usize, lhs: &[f32], rhs: &[T], dst: &mut [f32]) {
    let kb = k / T::BLCK_SIZE;
    let n = rhs.len() / kb.max(1);
    let mut lhs_q = vec![T::VecDotType::zeros(); m * kb];
    for (x, q) in lhs.chunks_exact(k).zip(lhs_q.chunks_exact_mut(kb)) {
        quantize_row(x, q);
    }
    let lhs_q = &lhs_q;
    let row = |c: usize| &rhs[c * kb..(c + 1) * kb];
    let dst_ptr = dst.as_mut_ptr() as usize;
    // SAFETY (the raw writes below): each (row, column) of dst is written by exactly one item.
    let put = |r: usize, c: usize, v: f32| unsafe { *(dst_ptr as *mut f32).add(r * n + c) = v };
    let quads = n / 4;
    pool().execute_chunked(quads + n % 4, |items| {
        for item in items {
            if item < quads {
                let c = item * 4;
                for (r, x) in lhs_q.chunks_exact(kb).enumerate() {
                    let (a, b, cc, d) =
                        T::vec_dot_4(k, row(c), row(c + 1), row(c + 2), row(c + 3), x);
                    put(r, c, a);
                    put(r, c + 1, b);
                    put(r, c + 2, cc);
                    put(r, c + 3, d);
                }
            } else {
                let c = quads * 4 + (item - quads);
                for (r, x) in lhs_q.chunks_exact(kb).enumerate() {
                    put(r, c, T::vec_dot(k, row(c), x));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use memmap2::MmapMut;

    use super::*;

    /// A `rows` x 64 matrix of `dtype` at offset 4096 of an anonymous map (zero blocks).
    fn matrix(dtype: TensorType, rows: usize) -> (QMatrix, usize) {
        let len = rows * 64 / dtype.block_size() as usize * dtype.type_size() as usize;
        let map = MmapMut::map_anon(4096 + len).expect("anonymous map");
        let map = Arc::new(map.make_read_only().expect("read-only"));
        let info = TensorInfo {
            name: "w".into(),
            dims: vec![64, rows as u64],
            dtype,
            offset: 4096,
            n_bytes: len as u64,
        };
        (QMatrix::new(&map, &info).expect("matrix"), len)
    }

    #[test]
    fn mapped_range_is_what_the_tiles_do_not_hold() {
        let tiles = kernels::Isa::detect() != kernels::Isa::Scalar;
        // 40 rows: two whole groups of 16 in tiles, 8 rows left in the file layout.
        let (mut m, len) = matrix(TensorType::Q4_0, 40);
        assert_eq!(m.mapped_range(), Some(4096..4096 + len));
        m.pack().expect("pack");
        let tail = if tiles { 4096 + len / 40 * 32 } else { 4096 };
        assert_eq!(m.mapped_range(), Some(tail..4096 + len));

        let (mut m, len) = matrix(TensorType::Q8_0, 32);
        m.pack().expect("pack");
        let expect = (!tiles).then_some(4096..4096 + len);
        assert_eq!(m.mapped_range(), expect);

        // Q5_0 has no tile layout: the kernels read all of it from the map.
        let (mut m, len) = matrix(TensorType::Q5_0, 32);
        m.pack().expect("pack");
        assert_eq!(m.mapped_range(), Some(4096..4096 + len));
    }
}

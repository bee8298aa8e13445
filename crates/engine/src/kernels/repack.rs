//! Weights repacked at load into 16-column tiles, so the SIMD kernels read one contiguous stream
//! and find the same 4-byte piece of 16 weight rows ("columns" of the product) in one register.
//!
//! A matrix of `n` rows becomes `n / 16` groups; group g holds rows 16g..16g+16, one tile per
//! block (super-block for the k-quants), tiles of a group back to back. Rows past the last whole
//! group stay in the original file layout. A tile holds exactly the bits of its 16 blocks:
//!
//! | type | tile layout (per 16 columns) | bytes |
//! |---|---|---|
//! | Q4_0 | d[16] f16, qs dword t of column c at 32 + 64t + 4c (t < 4) | 288 |
//! | Q4_1 | d[16], m[16] f16, qs as Q4_0 from 64 | 320 |
//! | Q8_0 | d[16] f16, qs dword t (t < 8) from 32 | 544 |
//! | Q4_K | d[16], dmin[16] f16; scale s of column c at 64 + 16s + c; mins of sub-block pair p as byte pairs at 192 + 32p + 2c; qs dword t (t < 32) from 320 | 2368 |
//! | Q6_K | d[16] f16; scale s (i8) of column c at 32 + 16s + c; from 288, 16 steps of 192 bytes in the order the kernels read them: step 8j + w holds ql dwords 16j + w and 16j + 8 + w, then qh dword 8j + w (j < 2, w < 8) | 3360 |
//!
//! A "dword t from X" field keeps the file's order: dword t of column c at X + 64t + 4c. Q6_K's
//! quants are in the kernels' order instead: each step reads its 192 bytes in one run, so a
//! decode streams one sequential run per tile (with ql and qh in two regions it read three
//! interleaved runs, which the hardware prefetcher followed late: ~12% slower on ffn_down and the
//! LM head, `bench-kernels`).

use memmap2::{Mmap, MmapMut};

use crate::gguf::TensorType;

/// Columns per tile.
pub const COLS: usize = 16;

/// A matrix's whole groups in tile layout.
pub struct Packed {
    dtype: TensorType,
    groups: usize,
    blocks: usize,
    data: Mmap,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Packed({:?}, {} groups x {} blocks)",
            self.dtype, self.groups, self.blocks
        )
    }
}

/// Bytes of one tile, for the types that have a tile layout (the [`crate::quant`] table).
pub fn tile_bytes(dtype: TensorType) -> Option<usize> {
    crate::quant::of(dtype)?.tile_bytes
}

impl Packed {
    /// Repacks the whole groups of `src` (`rows` x `cols` weights of `dtype` in file layout).
    /// `None` for types without a tile layout, matrices of fewer than 16 rows, and Q4_K
    /// matrices that llama.cpp does not repack (rows not a multiple of 8), whose rounding the
    /// tiled kernel does not reproduce.
    pub fn new(
        dtype: TensorType,
        src: &[u8],
        rows: usize,
        cols: usize,
    ) -> Option<std::io::Result<Packed>> {
        let tile = tile_bytes(dtype)?;
        let groups = rows / COLS;
        if groups == 0 || (dtype == TensorType::Q4K && !rows.is_multiple_of(8)) {
            return None;
        }
        let (bs, ts) = (dtype.block_size() as usize, dtype.type_size() as usize);
        let blocks = cols / bs;
        let row_bytes = blocks * ts;
        assert!(src.len() >= rows * row_bytes, "source bytes");
        // Plain pages, not huge ones: on a fresh (or host-reclaimed) memory region, huge-page
        // faults made loading a 3B model 2.4 s instead of 0.9 s, for ~3% faster decoding.
        let mut data = match MmapMut::map_anon(groups * blocks * tile) {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        let out = SendPtr(data.as_mut_ptr());
        let pack_group = |g: usize| {
            for b in 0..blocks {
                let blk = |c: usize| &src[(COLS * g + c) * row_bytes + b * ts..][..ts];
                // SAFETY: tile (g, b) lies inside `data`, and each group is written by one call.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(out.get().add((g * blocks + b) * tile), tile)
                };
                pack_tile(dtype, blk, dst);
            }
        };
        // Each worker first maps and zeroes its share of pages in one call, rather than by one
        // page fault per 4 KiB while packing (a kernel without MADV_POPULATE_WRITE, before Linux
        // 5.14, refuses it, and the faults happen as before).
        let map = &data;
        let populate = |gs: &std::ops::Range<usize>| {
            #[cfg(target_os = "linux")]
            {
                let bytes = blocks * tile;
                let advice = memmap2::Advice::PopulateWrite;
                let _ = map.advise_range(advice, gs.start * bytes, gs.len() * bytes);
            }
            #[cfg(not(target_os = "linux"))]
            let _ = (map, gs);
        };
        if groups >= 4 {
            crate::threads::pool().execute_chunked(groups, |gs| {
                populate(&gs);
                gs.for_each(pack_group)
            });
        } else {
            (0..groups).for_each(pack_group);
        }
        Some(data.make_read_only().map(|data| Packed {
            dtype,
            groups,
            blocks,
            data,
        }))
    }

    pub fn dtype(&self) -> TensorType {
        self.dtype
    }

    /// Whole groups of 16 columns.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Blocks per column.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Group `g`'s tiles.
    pub fn group(&self, g: usize) -> &[u8] {
        let tile = tile_bytes(self.dtype).expect("packed type");
        &self.data[g * self.blocks * tile..(g + 1) * self.blocks * tile]
    }

    /// Block `b` of column `c` in file layout (the inverse of packing).
    pub fn block(&self, c: usize, b: usize) -> Vec<u8> {
        let mut out = vec![0u8; self.dtype.type_size() as usize];
        self.block_into(c, b, &mut out);
        out
    }

    /// [`Packed::block`] into `out` (the block's size).
    pub fn block_into(&self, c: usize, b: usize, out: &mut [u8]) {
        let tile = tile_bytes(self.dtype).expect("packed type");
        let t = &self.group(c / COLS)[b * tile..(b + 1) * tile];
        unpack_tile(self.dtype, t, c % COLS, out);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
// SAFETY: pool workers write disjoint groups while the owner waits.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut u8 {
        self.0
    }
}

/// Where the fields of one block go in its tile, as (block offset, bytes, tile offset, piece,
/// order): the field is cut into pieces of `piece` bytes, piece i of column c landing at
/// `tile offset + (16 order(i) + c) * piece`. Packing and unpacking share this description.
fn moves(dtype: TensorType) -> &'static [(usize, usize, usize, usize, Order)] {
    use Order::{File, Q6kQh, Q6kQl};
    match dtype {
        TensorType::Q4_0 => &[(0, 2, 0, 2, File), (2, 16, 32, 4, File)],
        TensorType::Q4_1 => &[
            (0, 2, 0, 2, File),
            (2, 2, 32, 2, File),
            (4, 16, 64, 4, File),
        ],
        TensorType::Q8_0 => &[(0, 2, 0, 2, File), (2, 32, 32, 4, File)],
        // Q4_K's scales are decoded, so they are handled apart (see `pack_tile`).
        TensorType::Q4K => &[
            (0, 2, 0, 2, File),
            (2, 2, 32, 2, File),
            (16, 128, 320, 4, File),
        ],
        TensorType::Q6K => &[
            (208, 2, 0, 2, File),
            (192, 16, 32, 1, File),
            (0, 128, Q6K_QUANTS, 4, Q6kQl),
            (128, 64, Q6K_QUANTS, 4, Q6kQh),
        ],
        _ => &[],
    }
}

/// Where Q6_K's quants start in its tile.
const Q6K_QUANTS: usize = 288;

/// The tile offset of Q6_K's step `8j + w`: ql dword `16j + w` of the 16 columns (64 bytes),
/// ql dword `16j + 8 + w` (64 bytes), qh dword `8j + w` (64 bytes). The SIMD kernels read the
/// quants of their chunk `(j, w)` from here.
pub(super) const fn q6k_step(j: usize, w: usize) -> usize {
    Q6K_QUANTS + 192 * (8 * j + w)
}

/// The slot (in units of 16 pieces) that piece i of a field takes in the tile.
#[derive(Clone, Copy)]
enum Order {
    /// The file's order: slot i.
    File,
    /// Q6_K's ql dword t: step 8j + w, first or second of its three slots.
    Q6kQl,
    /// Q6_K's qh dword u: the third slot of step u.
    Q6kQh,
}

impl Order {
    #[inline(always)]
    fn slot(self, i: usize) -> usize {
        match self {
            Order::File => i,
            Order::Q6kQl => 3 * (8 * (i / 16) + i % 8) + (i / 8) % 2,
            Order::Q6kQh => 3 * i + 2,
        }
    }
}

fn pack_tile<'a>(dtype: TensorType, blk: impl Fn(usize) -> &'a [u8], dst: &mut [u8]) {
    let src: [&[u8]; COLS] = std::array::from_fn(blk);
    for &(from, len, to, piece, order) in moves(dtype) {
        let fields: [&[u8]; COLS] = std::array::from_fn(|c| &src[c][from..from + len]);
        let out = &mut dst[to..];
        // One monomorphised loop per piece size and order (each inlines its slot arithmetic).
        match (piece, order) {
            (1, Order::File) => interleave::<1>(&fields, out, |i| i),
            (2, Order::File) => interleave::<2>(&fields, out, |i| i),
            (4, Order::File) => interleave::<4>(&fields, out, |i| i),
            (4, Order::Q6kQl) => interleave::<4>(&fields, out, |i| Order::Q6kQl.slot(i)),
            (4, Order::Q6kQh) => interleave::<4>(&fields, out, |i| Order::Q6kQh.slot(i)),
            _ => unreachable!("no such move"),
        }
    }
    if dtype == TensorType::Q4K {
        for (c, src) in src.iter().enumerate() {
            let (sc, mn) = q4k_scales_mins(&src[4..16]);
            for s in 0..8 {
                dst[64 + 16 * s + c] = sc[s];
            }
            for p in 0..4 {
                dst[192 + 32 * p + 2 * c] = mn[2 * p];
                dst[192 + 32 * p + 2 * c + 1] = mn[2 * p + 1];
            }
        }
    }
}

/// Piece `i` (of `P` bytes) of field `c` to `out[(16 slot(i) + c) * P..]`: the transpose at the
/// heart of packing, done with one load and one store per piece (loading a 1.9 GB model moves
/// some 500 million of them, so no per-piece `memcpy` call).
#[inline(always)]
fn interleave<const P: usize>(
    fields: &[&[u8]; COLS],
    out: &mut [u8],
    slot: impl Fn(usize) -> usize,
) {
    let len = fields[0].len();
    assert!(len.is_multiple_of(P) && fields.iter().all(|f| f.len() == len));
    let pieces = len / P;
    // Every order is a permutation of 0..pieces (see the round-trip test), so the highest slot
    // bounds the writes.
    let last = (0..pieces).map(&slot).max().unwrap_or(0);
    assert!((COLS * last + COLS) * P <= out.len());
    let out = out.as_mut_ptr();
    for i in 0..pieces {
        let at = COLS * slot(i);
        for (c, f) in fields.iter().enumerate() {
            // SAFETY: i * P + P <= len for every field, and (16 slot(i) + c) * P + P <= 16
            // (last + 1) P <= out.len() (both asserted above); unaligned reads and writes of
            // [u8; P].
            unsafe {
                let piece = std::ptr::read_unaligned(f.as_ptr().add(i * P) as *const [u8; P]);
                std::ptr::write_unaligned(out.add((at + c) * P) as *mut [u8; P], piece);
            }
        }
    }
}

fn unpack_tile(dtype: TensorType, tile: &[u8], c: usize, out: &mut [u8]) {
    for &(from, len, to, piece, order) in moves(dtype) {
        for (i, chunk) in out[from..from + len].chunks_exact_mut(piece).enumerate() {
            let at = to + (COLS * order.slot(i) + c) * piece;
            chunk.copy_from_slice(&tile[at..at + piece]);
        }
    }
    if dtype == TensorType::Q4K {
        let sc: [u8; 8] = std::array::from_fn(|s| tile[64 + 16 * s + c]);
        let mn: [u8; 8] = std::array::from_fn(|s| tile[192 + 32 * (s / 2) + 2 * c + s % 2]);
        out[4..16].copy_from_slice(&q4k_pack_scales_mins(&sc, &mn));
    }
}

/// Q4_K's eight 6-bit scales and mins from their 12 packed bytes (`get_scale_min_k4`).
pub(crate) fn q4k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
    }
    for j in 4..8 {
        sc[j] = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    (sc, mn)
}

/// The inverse of [`q4k_scales_mins`].
fn q4k_pack_scales_mins(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_every_block() {
        for dtype in [
            TensorType::Q4_0,
            TensorType::Q4_1,
            TensorType::Q8_0,
            TensorType::Q4K,
            TensorType::Q6K,
        ] {
            let (rows, cols) = (40, 512);
            let row_bytes = cols / dtype.block_size() as usize * dtype.type_size() as usize;
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let src: Vec<u8> = (0..rows * row_bytes)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let p = Packed::new(dtype, &src, rows, cols)
                .expect("packable")
                .expect("memory");
            assert_eq!(p.groups(), 2);
            let ts = dtype.type_size() as usize;
            for c in 0..32 {
                for b in 0..p.blocks() {
                    let want = &src[c * row_bytes + b * ts..][..ts];
                    assert_eq!(p.block(c, b), want, "{dtype:?} column {c} block {b}");
                }
            }
        }
    }
}

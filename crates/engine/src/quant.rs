//! One description per weight type the engine runs, as ggml's `type_traits`: the block layout
//! (from the GGUF type table, [`TensorType::block_size`] / [`TensorType::type_size`]), the
//! 16-column tile the SIMD kernels read after repacking, the activation format the native
//! kernels multiply with, and the dtype Candle holds it as. The loader, the native kernels,
//! repacking and the Candle backend all read this table; adding a weight type means one entry
//! here plus its kernels.

use candle_core::quantized::GgmlDType;

use crate::gguf::TensorType;
use crate::kernels::ActKind;

/// What the engine knows about one weight type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quant {
    pub dtype: TensorType,
    /// Bytes of one 16-column tile of the repacked layout (one block of 16 rows), when the SIMD
    /// kernels have a tiled kernel for the type (see [`crate::kernels::repack`]).
    pub tile_bytes: Option<usize>,
    /// The activation format of the native kernels; `None`: Candle's `k_quants` kernels
    /// multiply it on the native CPU path.
    pub act: Option<ActKind>,
    /// How Candle (its CPU, CUDA and Metal storage) holds the type.
    pub candle: GgmlDType,
}

impl Quant {
    /// Elements per block.
    pub const fn block_size(&self) -> usize {
        self.dtype.block_size() as usize
    }

    /// Bytes per block.
    pub const fn block_bytes(&self) -> usize {
        self.dtype.type_size() as usize
    }

    /// Bytes of one row of `cols` elements (a multiple of the block size).
    pub const fn row_bytes(&self, cols: usize) -> usize {
        cols / self.block_size() * self.block_bytes()
    }

    /// [`Quant::tile_bytes`] for the kernels of a tiled type (a compile-time error otherwise).
    pub const fn tile(&self) -> usize {
        match self.tile_bytes {
            Some(t) => t,
            None => panic!("the type has no tile layout"),
        }
    }
}

const fn q(
    dtype: TensorType,
    tile_bytes: Option<usize>,
    act: Option<ActKind>,
    candle: GgmlDType,
) -> Quant {
    Quant {
        dtype,
        tile_bytes,
        act,
        candle,
    }
}

pub const F32: Quant = q(TensorType::F32, None, None, GgmlDType::F32);
pub const F16: Quant = q(TensorType::F16, None, None, GgmlDType::F16);
pub const BF16: Quant = q(TensorType::BF16, None, None, GgmlDType::BF16);
pub const Q4_0: Quant = q(
    TensorType::Q4_0,
    Some(288),
    Some(ActKind::Q8_0),
    GgmlDType::Q4_0,
);
pub const Q4_1: Quant = q(
    TensorType::Q4_1,
    Some(320),
    Some(ActKind::Q8_1),
    GgmlDType::Q4_1,
);
pub const Q5_0: Quant = q(TensorType::Q5_0, None, Some(ActKind::Q8_0), GgmlDType::Q5_0);
pub const Q5_1: Quant = q(TensorType::Q5_1, None, Some(ActKind::Q8_1), GgmlDType::Q5_1);
pub const Q8_0: Quant = q(
    TensorType::Q8_0,
    Some(544),
    Some(ActKind::Q8_0),
    GgmlDType::Q8_0,
);
pub const Q2K: Quant = q(TensorType::Q2K, None, None, GgmlDType::Q2K);
pub const Q3K: Quant = q(TensorType::Q3K, None, None, GgmlDType::Q3K);
pub const Q4K: Quant = q(
    TensorType::Q4K,
    Some(2368),
    Some(ActKind::Q8K),
    GgmlDType::Q4K,
);
pub const Q5K: Quant = q(TensorType::Q5K, None, None, GgmlDType::Q5K);
pub const Q6K: Quant = q(
    TensorType::Q6K,
    Some(3360),
    Some(ActKind::Q8K),
    GgmlDType::Q6K,
);

/// Every weight type the engine runs.
pub const ALL: &[Quant] = &[
    F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K,
];

/// The description of `dtype`; `None` for types the engine cannot multiply with.
pub fn of(dtype: TensorType) -> Option<&'static Quant> {
    ALL.iter().find(|q| q.dtype == dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table agrees with Candle's own block types, which the loader casts the bytes to.
    #[test]
    fn the_table_matches_candles_block_layouts() {
        for q in ALL {
            assert_eq!(q.candle.block_size(), q.block_size(), "{:?}", q.dtype);
            assert_eq!(q.candle.type_size(), q.block_bytes(), "{:?}", q.dtype);
            if let Some(act) = q.act {
                assert_eq!(q.block_size() % act.block_len(), 0, "{:?}", q.dtype);
            }
        }
        assert_eq!(of(TensorType::Q4K), Some(&Q4K));
        assert_eq!(of(TensorType::IQ4XS), None);
    }
}

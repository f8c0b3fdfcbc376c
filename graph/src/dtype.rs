//! Storage types of tensors.
//!
//! Activations are `F32` (and `I32` for ids, positions and routing choices). Weights and caches may
//! be stored in any of the float or GGUF block-quantized types; the quantized ones only appear as
//! the weight operand of `MatMul`/`MatMulId` or the table of `GetRows`.

use std::fmt;

/// Element type of a tensor's storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 12] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ];

    /// Number of elements in one storage block (1 for plain types).
    pub const fn block_elems(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 | DType::I32 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => 32,
            DType::Q4K | DType::Q5K | DType::Q6K => 256,
        }
    }

    /// Bytes of one storage block.
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q4K => 144,
            DType::Q5K => 176,
            DType::Q6K => 210,
        }
    }

    /// True for the GGUF block-quantized types.
    pub const fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }

    /// True for types whose elements read as floating point (every type but `I32`).
    pub const fn is_float(self) -> bool {
        !matches!(self, DType::I32)
    }

    /// Bytes needed to store `n` elements; `None` when `n` is not a whole number of blocks.
    pub const fn bytes_for(self, n: usize) -> Option<usize> {
        let b = self.block_elems();
        if !n.is_multiple_of(b) {
            return None;
        }
        Some(n / b * self.block_bytes())
    }

    /// The name GGUF and llama.cpp use for this type.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::Q4K => "Q4_K",
            DType::Q5K => "Q5_K",
            DType::Q6K => "Q6_K",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_match_gguf() {
        // Sizes from the GGUF specification: d (f16) + payload per block.
        assert_eq!(DType::Q8_0.bytes_for(64), Some(68));
        assert_eq!(DType::Q4_0.bytes_for(32), Some(18));
        assert_eq!(DType::Q5_0.bytes_for(64), Some(44));
        assert_eq!(DType::Q5_1.bytes_for(32), Some(24));
        assert_eq!(DType::Q4K.bytes_for(512), Some(288));
        assert_eq!(DType::Q6K.bytes_for(256), Some(210));
        assert_eq!(DType::Q5K.bytes_for(100), None);
        assert_eq!(DType::F16.bytes_for(3), Some(6));
    }
}

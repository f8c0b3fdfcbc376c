//! ggml tensor type ids and their mapping to weft's [`DType`].

use weft_graph::DType;

/// How a ggml type id relates to weft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GgmlType {
    /// A type weft stores and computes with.
    Supported(DType),
    /// A type ggml knows (named as llama.cpp names it) that weft does not implement.
    Unsupported(&'static str),
}

/// The ggml type with this id; `None` for ids ggml does not define (including removed ones).
pub(crate) fn ggml_type(id: u32) -> Option<GgmlType> {
    use GgmlType::{Supported as S, Unsupported as U};
    Some(match id {
        0 => S(DType::F32),
        1 => S(DType::F16),
        2 => S(DType::Q4_0),
        3 => S(DType::Q4_1),
        6 => S(DType::Q5_0),
        7 => S(DType::Q5_1),
        8 => S(DType::Q8_0),
        9 => U("Q8_1"),
        10 => U("Q2_K"),
        11 => U("Q3_K"),
        12 => S(DType::Q4K),
        13 => S(DType::Q5K),
        14 => S(DType::Q6K),
        15 => U("Q8_K"),
        16 => U("IQ2_XXS"),
        17 => U("IQ2_XS"),
        18 => U("IQ3_XXS"),
        19 => U("IQ1_S"),
        20 => U("IQ4_NL"),
        21 => U("IQ3_S"),
        22 => U("IQ2_S"),
        23 => U("IQ4_XS"),
        24 => U("I8"),
        25 => U("I16"),
        26 => S(DType::I32),
        27 => U("I64"),
        28 => U("F64"),
        29 => U("IQ1_M"),
        30 => S(DType::BF16),
        34 => U("TQ1_0"),
        35 => U("TQ2_0"),
        39 => U("MXFP4"),
        _ => return None,
    })
}

/// The ggml type id of a weft dtype, as written in a GGUF tensor info.
pub const fn ggml_type_id(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q5_0 => 6,
        DType::Q5_1 => 7,
        DType::Q8_0 => 8,
        DType::Q4K => 12,
        DType::Q5K => 13,
        DType::Q6K => 14,
        DType::I32 => 26,
        DType::BF16 => 30,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for d in DType::ALL {
            assert_eq!(ggml_type(ggml_type_id(d)), Some(GgmlType::Supported(d)));
        }
        assert_eq!(ggml_type(11), Some(GgmlType::Unsupported("Q3_K")));
        assert_eq!(ggml_type(4), None);
        assert_eq!(ggml_type(99), None);
    }
}

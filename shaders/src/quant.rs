//! WGSL decoders of one element of each storage dtype, reading an `array<u32>` binding.

use weft_graph::DType;

/// Byte and f16 readers for external binding `b` (emitted once per binding).
pub fn byte_helpers(b: u32) -> String {
    format!(
        "fn b{b}_u8(i: u32) -> u32 {{ return (e{b}[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu; }}\n\
         fn b{b}_f16(i: u32) -> f32 {{ return unpack2x16float(e{b}[i >> 2u] >> ((i & 2u) * 8u)).x; }}\n\
         fn b{b}_sm(sc: u32, j: u32) -> vec2<u32> {{\n\
         \x20   if (j < 4u) {{ return vec2<u32>(b{b}_u8(sc + j) & 63u, b{b}_u8(sc + j + 4u) & 63u); }}\n\
         \x20   return vec2<u32>((b{b}_u8(sc + j + 4u) & 15u) | ((b{b}_u8(sc + j - 4u) >> 6u) << 4u), (b{b}_u8(sc + j + 4u) >> 4u) | ((b{b}_u8(sc + j) >> 6u) << 4u));\n\
         }}\n"
    )
}

/// Body of `fn ldK(i: u32) -> f32` for a source of `dtype` in external binding `b`.
pub fn decode_body(b: u32, dtype: DType) -> String {
    match dtype {
        DType::F32 => format!("return bitcast<f32>(e{b}[i]);"),
        DType::F16 => format!(
            "let w = unpack2x16float(e{b}[i >> 1u]); return select(w.y, w.x, (i & 1u) == 0u);"
        ),
        DType::BF16 => {
            format!("return bitcast<f32>(((e{b}[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu) << 16u);")
        }
        DType::I32 => format!("return f32(bitcast<i32>(e{b}[i]));"),
        DType::Q8_0 => format!(
            "let base = (i / 32u) * 34u; let q = bitcast<i32>(b{b}_u8(base + 2u + i % 32u) << 24u) >> 24u; \
             return b{b}_f16(base) * f32(q);"
        ),
        DType::Q4_0 => format!(
            "let j = i % 32u; let base = (i / 32u) * 18u; let byte = b{b}_u8(base + 2u + j % 16u); \
             let q = select(byte >> 4u, byte & 15u, j < 16u); return b{b}_f16(base) * f32(i32(q) - 8);"
        ),
        DType::Q4_1 => format!(
            "let j = i % 32u; let base = (i / 32u) * 20u; let byte = b{b}_u8(base + 4u + j % 16u); \
             let q = select(byte >> 4u, byte & 15u, j < 16u); return f32(q) * b{b}_f16(base) + b{b}_f16(base + 2u);"
        ),
        DType::Q4K => format!(
            "let j = i % 256u; let base = (i / 256u) * 144u; let c = j / 64u; let l = j % 64u; \
             let sm = b{b}_sm(base + 4u, 2u * c + l / 32u); let byte = b{b}_u8(base + 16u + c * 32u + l % 32u); \
             let q = select(byte >> 4u, byte & 15u, l < 32u); \
             return (b{b}_f16(base) * f32(sm.x)) * f32(q) - b{b}_f16(base + 2u) * f32(sm.y);"
        ),
        DType::Q5K => format!(
            "let j = i % 256u; let base = (i / 256u) * 176u; let c = j / 64u; let l = j % 64u; \
             let sm = b{b}_sm(base + 4u, 2u * c + l / 32u); let byte = b{b}_u8(base + 48u + c * 32u + l % 32u); \
             let q = select(byte >> 4u, byte & 15u, l < 32u); let u = select(2u << (2u * c), 1u << (2u * c), l < 32u); \
             let h = select(0u, 16u, (b{b}_u8(base + 16u + l % 32u) & u) != 0u); \
             return (b{b}_f16(base) * f32(sm.x)) * f32(q + h) - b{b}_f16(base + 2u) * f32(sm.y);"
        ),
        DType::Q6K => format!(
            "let j = i % 256u; let base = (i / 256u) * 210u; let n = j / 128u; let r = j % 128u; let l = r % 32u; \
             let quarter = r / 32u; let lo = b{b}_u8(base + n * 64u + l + 32u * (quarter % 2u)); \
             let nib = select(lo >> 4u, lo & 15u, quarter < 2u); \
             let hi = (b{b}_u8(base + 128u + n * 32u + l) >> (2u * quarter)) & 3u; \
             let q = i32(nib | (hi << 4u)) - 32; \
             let sc = bitcast<i32>(b{b}_u8(base + 192u + n * 8u + l / 16u + 2u * quarter) << 24u) >> 24; \
             return (b{b}_f16(base + 208u) * f32(sc)) * f32(q);"
        ),
    }
}

//! The mat-vecs' previous weight dot products, kept while the quad form of `quant::quad_dot`
//! (the default) is measured against them on hardware: `Spec::matvec_chunks` (the wgpu
//! backend sets it under `WEFT_MATVEC_CHUNKS=1`) selects this one. Each lane walks contiguous
//! chunks of its own (8 f16, or a whole quantized block), so a warp's x loads stride 32-128
//! bytes from lane to lane. To be deleted once the device figures have chosen.

use crate::Home;
use weft_graph::DType;

/// The weight dot products of the mat-vec kernels, for weight source `j` (`ldj`):
/// `fn wdotj(c, xs) -> f32` is the dot of the weight's chunk `c` (chunks of `WCHj` elements,
/// numbered from the start of the source's storage) with x (source 0), where weight element `e`
/// meets x element `xs + e` (wrapping). A chunk is read with whole-word loads and decoded once;
/// `WALIGNj` is the alignment (in elements) a row's start and length need for the chunked
/// path. `fn row_dotj(wrow, xrow, lane) -> f32` is lane `lane`'s share (of `T`) of a whole
/// row's dot product: by chunks when the row is aligned, element by element otherwise.
/// `quant::QUAD_HELPERS` must be emitted once before any of them.
pub fn chunk_dot(j: usize, home: Home, dtype: DType) -> String {
    let (ch, align, body) = match home {
        Home::External(b) => chunk_body(b, dtype),
        Home::Arena => None,
    }
    .unwrap_or_else(|| {
        (
            4,
            4,
            "let e0 = c * 4u; return dot(vec4<f32>(ldJ(e0), ldJ(e0 + 1u), ldJ(e0 + 2u), ldJ(e0 + 3u)), x4(xs + e0));"
                .to_string(),
        )
    });
    let (mut s, body) = crate::quant::for_weight(j, home, &body);
    s.push_str(&format!(
        "const WCH{j}: u32 = {ch}u;\nconst WALIGN{j}: u32 = {align}u;\n\
         fn wdot{j}(c: u32, xs: u32) -> f32 {{\n    {body}\n}}\n\
         fn row_dot{j}(wrow: u32, xrow: u32, lane: u32) -> f32 {{\n\
         \x20   let k_ = pu(2u);\n\
         \x20   var acc = 0.0;\n\
         \x20   if (wrow % WALIGN{j} == 0u && k_ % WALIGN{j} == 0u) {{\n\
         \x20       for (var c = lane; c < k_ / WCH{j}; c += T) {{ acc += wdot{j}(wrow / WCH{j} + c, xrow - wrow); }}\n\
         \x20   }} else {{\n\
         \x20       for (var k = lane; k < k_; k += T) {{ acc += ld0(xrow + k) * ld{j}(wrow + k); }}\n\
         \x20   }}\n\
         \x20   return acc;\n\
         }}\n"
    ));
    s
}

/// (chunk elements, alignment, body) of `wdot` for a weight of `dtype` in external binding `b`.
fn chunk_body(b: u32, dtype: DType) -> Option<(u32, u32, String)> {
    let f16 = format!("b{b}_f16");
    Some(match dtype {
        DType::F16 => (
            8,
            8,
            format!(
                "let w = c * 4u; let x0 = xs + c * 8u; \
                 let a = unpack2x16float(e{b}[w]); let b_ = unpack2x16float(e{b}[w + 1u]); \
                 let c_ = unpack2x16float(e{b}[w + 2u]); let d = unpack2x16float(e{b}[w + 3u]); \
                 return dot(vec4<f32>(a, b_), x4(x0)) + dot(vec4<f32>(c_, d), x4(x0 + 4u));"
            ),
        ),
        DType::Q8_0 => (
            32,
            32,
            format!(
                "let o = c * 34u; let x0 = xs + c * 32u; var a = 0.0; \
                 for (var j = 0u; j < 8u; j++) {{ a += dot(i8x4(bw(o + 2u + 4u * j)), x4(x0 + 4u * j)); }} \
                 return {f16}(o) * a;"
            ),
        ),
        DType::Q4_0 => (
            32,
            32,
            format!(
                "let o = c * 18u; let x0 = xs + c * 32u; var a = 0.0; \
                 for (var j = 0u; j < 4u; j++) {{ let w = bw(o + 2u + 4u * j); \
                 a += dot(nib(w) - 8.0, x4(x0 + 4u * j)) + dot(nib(w >> 4u) - 8.0, x4(x0 + 16u + 4u * j)); }} \
                 return {f16}(o) * a;"
            ),
        ),
        DType::Q4_1 => (
            32,
            32,
            format!(
                "let o = c * 20u; let x0 = xs + c * 32u; var a = 0.0; var sx = 0.0; \
                 for (var j = 0u; j < 4u; j++) {{ let w = bw(o + 4u + 4u * j); \
                 let xl = x4(x0 + 4u * j); let xh = x4(x0 + 16u + 4u * j); \
                 a += dot(nib(w), xl) + dot(nib(w >> 4u), xh); sx += dot(xl + xh, vec4<f32>(1.0)); }} \
                 return {f16}(o) * a + {f16}(o + 2u) * sx;"
            ),
        ),
        DType::Q5_0 | DType::Q5_1 => {
            let (bytes, qh, offset, total) = if dtype == DType::Q5_0 {
                (22, 2, " - 16.0", format!("{f16}(o) * a"))
            } else {
                (24, 4, "", format!("{f16}(o) * a + {f16}(o + 2u) * sx"))
            };
            (
                32,
                32,
                format!(
                    "let o = c * {bytes}u; let x0 = xs + c * 32u; let h = bw(o + {qh}u); var a = 0.0; var sx = 0.0; \
                     for (var j = 0u; j < 4u; j++) {{ let w = bw(o + {qs}u + 4u * j); \
                     let xl = x4(x0 + 4u * j); let xh = x4(x0 + 16u + 4u * j); \
                     a += dot(nib(w) + 16.0 * hb4(h >> (4u * j)){offset}, xl) \
                     + dot(nib(w >> 4u) + 16.0 * hb4(h >> (16u + 4u * j)){offset}, xh); \
                     sx += dot(xl + xh, vec4<f32>(1.0)); }} \
                     return {total};",
                    qs = qh + 4
                ),
            )
        }
        DType::Q4K | DType::Q5K => {
            let (bytes, qs) = if dtype == DType::Q4K {
                (144, 16)
            } else {
                (176, 48)
            };
            let high = if dtype == DType::Q5K {
                "let h = bw(o + 16u + 4u * j) >> (2u * s); ql += 16.0 * bit4(h); qh += 16.0 * bit4(h >> 1u); "
            } else {
                ""
            };
            (
                64,
                256,
                format!(
                    "let o = (c / 4u) * {bytes}u; let s = c % 4u; let x0 = xs + c * 64u; \
                     let lo = b{b}_sm(o + 4u, 2u * s); let hi = b{b}_sm(o + 4u, 2u * s + 1u); \
                     var al = 0.0; var ah = 0.0; var sl = 0.0; var sh = 0.0; \
                     for (var j = 0u; j < 8u; j++) {{ let w = bw(o + {qs}u + 32u * s + 4u * j); \
                     var ql = nib(w); var qh = nib(w >> 4u); {high}\
                     let xl = x4(x0 + 4u * j); let xh = x4(x0 + 32u + 4u * j); \
                     al += dot(ql, xl); ah += dot(qh, xh); \
                     sl += dot(xl, vec4<f32>(1.0)); sh += dot(xh, vec4<f32>(1.0)); }} \
                     return {f16}(o) * (f32(lo.x) * al + f32(hi.x) * ah) - {f16}(o + 2u) * (f32(lo.y) * sl + f32(hi.y) * sh);"
                ),
            )
        }
        DType::Q6K => (
            32,
            256,
            format!(
                "let o = (c / 8u) * 210u; let n = (c % 8u) / 4u; let l0 = (c % 4u) * 8u; \
                 let x0 = xs + (c / 8u) * 256u + n * 128u + l0; \
                 let sh = 8u * (l0 / 16u); let s1 = i8x4(bw(o + 192u + n * 8u) >> sh); \
                 let s2 = i8x4(bw(o + 196u + n * 8u) >> sh); \
                 var a = vec4<f32>(0.0); \
                 for (var t = 0u; t < 2u; t++) {{ \
                 let ql = bw(o + n * 64u + l0 + 4u * t); let qm = bw(o + n * 64u + 32u + l0 + 4u * t); \
                 let h = bw(o + 128u + n * 32u + l0 + 4u * t); let xo = x0 + 4u * t; \
                 a += vec4<f32>(dot(q6x4(ql, h), x4(xo)), dot(q6x4(qm, h >> 2u), x4(xo + 32u)), \
                 dot(q6x4(ql >> 4u, h >> 4u), x4(xo + 64u)), dot(q6x4(qm >> 4u, h >> 6u), x4(xo + 96u))); }} \
                 return {f16}(o + 208u) * dot(a, vec4<f32>(s1.x, s1.z, s2.x, s2.z));"
            ),
        ),
        _ => return None,
    })
}

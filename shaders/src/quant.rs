//! WGSL decoders of one element of each storage dtype, reading an `array<u32>` binding.

use crate::Home;
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
        DType::Q5_0 | DType::Q5_1 => {
            let (bytes, qh, value) = if dtype == DType::Q5_0 {
                (22, 2, format!("b{b}_f16(base) * f32(i32(q) - 16)"))
            } else {
                (
                    24,
                    4,
                    format!("f32(q) * b{b}_f16(base) + b{b}_f16(base + 2u)"),
                )
            };
            format!(
                "let j = i % 32u; let base = (i / 32u) * {bytes}u; let byte = b{b}_u8(base + {qs}u + j % 16u); \
                 let h = (b{b}_u8(base + {qh}u + j / 8u) >> (j % 8u)) & 1u; \
                 let q = select(byte >> 4u, byte & 15u, j < 16u) | (h << 4u); return {value};",
                qs = qh + 4
            )
        }
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

/// The weight dot products of the mat-vec kernels, for weight source `j` (`ldj`), read by
/// quads: quad `q` is elements `4q .. 4q + 3` of the source's storage, and `fn wqj(q) ->
/// vec4<f32>` decodes one. A row's quads are striped over its `T` lanes (lane `l` takes quads
/// `l`, `l + T`, …), so a warp's loads of a step fall on consecutive words of the weight and of
/// x: coalesced, where a lane walking a contiguous chunk of its own strides 32-128 bytes from
/// its neighbour. Each step keeps [`MATVEC_UNROLL`] quads in flight per lane; the row's last
/// step, where it does not fill them, reads clamped indices and drops the products past the
/// end, so that it too has all its loads in flight (a tail of one quad at a time made 2048 x
/// 2048 f16 8.96 us on an H200, masking every step 8.1 us but quantized 8192 x 8192 rows 8-15%
/// slower; 8 or 16 quads a step measured the same or up to 26% slower there). x comes as a
/// 16-byte load (`x4a`) when its row starts on a quad. `WALIGNj` is the alignment (in
/// elements) a row's start and length need for the quad path (a quantized block, so that a
/// quad's block is the row's own). `fn row_dotj(wrow, xrow, lane) -> f32` is lane `lane`'s
/// share (of `T`) of a whole row's dot product: by quads (or units) when the row is aligned,
/// element by element otherwise.
/// With `blocks`, weights whose blocks have a unit decoder ([`unit_body`]: quantized, not
/// Q8_0) are read a unit at a time instead (`unitsj`): lane `l` takes units `l`, `l + T`, … of
/// the row, two a step.
/// [`QUAD_HELPERS`] must be emitted once before any of them, and `x4a` defined.
pub fn quad_dot(j: usize, home: Home, dtype: DType, blocks: bool) -> String {
    let (align, body) = match home {
        Home::External(b) => quad_body(b, dtype),
        Home::Arena => None,
    }
    .unwrap_or_else(|| {
        (
            4,
            "let e = 4u * q; return vec4<f32>(ldJ(e), ldJ(e + 1u), ldJ(e + 2u), ldJ(e + 3u));"
                .to_string(),
        )
    });
    let (mut s, body) = for_weight(j, home, &body);
    s.push_str(&format!(
        "const WALIGN{j}: u32 = {align}u;\n\
         fn wq{j}(q: u32) -> vec4<f32> {{\n    {body}\n}}\n"
    ));
    for (suffix, x) in [("a", "x4a"), ("", "x4")] {
        // a step over quads `q, q + T, ..`: whole (all below `nq`), or the row's last,
        // its indices clamped to the row and the products past its end dropped
        let step = |masked: bool| {
            let mut t = String::new();
            for u in 0..MATVEC_UNROLL {
                let i = match u {
                    0 => "q".to_string(),
                    _ if masked => format!("min(q + {u}u * T, nq - 1u)"),
                    _ => format!("q + {u}u * T"),
                };
                t.push_str(&format!(
                    "        let p{u} = wq{j}(q0 + {i}) * {x}(xrow + 4u * ({i}));\n"
                ));
            }
            for u in 0..MATVEC_UNROLL {
                t.push_str(&if masked && u > 0 {
                    format!("        acc += select(vec4<f32>(0.0), p{u}, q + {u}u * T < nq);\n")
                } else {
                    format!("        acc += p{u};\n")
                });
            }
            t
        };
        s.push_str(&format!(
            "fn quads{j}{suffix}(q0: u32, xrow: u32, nq: u32, lane: u32) -> f32 {{\n\
             \x20   var acc = vec4<f32>(0.0);\n\
             \x20   var q = lane;\n\
             \x20   for (; q + {last}u * T < nq; q += {unroll}u * T) {{\n\
             {whole}\
             \x20   }}\n\
             \x20   if (q < nq) {{\n\
             {masked}\
             \x20   }}\n\
             \x20   return hsum(acc);\n\
             }}\n",
            last = MATVEC_UNROLL - 1,
            unroll = MATVEC_UNROLL,
            whole = step(false),
            masked = step(true),
        ));
    }
    let units = match home {
        Home::External(b) if blocks => unit_body(b, dtype),
        _ => None,
    };
    let aligned = match units {
        Some((per, elems, body)) => {
            s.push_str(&units_dot(j, per, elems, &body));
            format!(
                "    if (xrow % 4u == 0u) {{ return units{j}a(wrow / {elems}u * {per}u, xrow, k_ / {elems}u * {per}u, lane); }}\n\
                 \x20   return units{j}(wrow / {elems}u * {per}u, xrow, k_ / {elems}u * {per}u, lane);\n"
            )
        }
        None => format!(
            "    if (xrow % 4u == 0u) {{ return quads{j}a(wrow / 4u, xrow, k_ / 4u, lane); }}\n\
             \x20   return quads{j}(wrow / 4u, xrow, k_ / 4u, lane);\n"
        ),
    };
    s.push_str(&format!(
        "fn row_dot{j}(wrow: u32, xrow: u32, lane: u32) -> f32 {{\n\
         \x20   let k_ = pu(2u);\n\
         \x20   if (wrow % WALIGN{j} != 0u || k_ % WALIGN{j} != 0u) {{\n\
         \x20       var acc = 0.0;\n\
         \x20       for (var k = lane; k < k_; k += T) {{ acc += ld0(xrow + k) * ld{j}(wrow + k); }}\n\
         \x20       return acc;\n\
         \x20   }}\n\
         {aligned}\
         }}\n"
    ));
    s
}

/// `wuj(u, xb)`, the dot product of unit `u` of weight source `j` (counted from the binding's
/// start; `per` units to a block of `elems` elements) with x, whose block starts at element
/// `xb`, for each of x's loaders (`a`: `x4a`, else `x4`); and `unitsj(u0, xrow, nu, lane)`,
/// lane `lane`'s share of a row of `nu` units from unit `u0`, two units a step.
fn units_dot(j: usize, per: u32, elems: u32, body: &str) -> String {
    let mut s = String::new();
    for (suffix, x) in [("a", "x4a"), ("", "x4")] {
        s.push_str(&format!(
            "fn wu{j}{suffix}(ug: u32, xb: u32) -> f32 {{\n    {}\n}}\n\
             fn units{j}{suffix}(u0: u32, xrow: u32, nu: u32, lane: u32) -> f32 {{\n\
             \x20   var a0 = 0.0;\n\
             \x20   var a1 = 0.0;\n\
             \x20   var u = lane;\n\
             \x20   for (; u + T < nu; u += 2u * T) {{\n\
             \x20       a0 += wu{j}{suffix}(u0 + u, xrow + {elems}u * (u / {per}u));\n\
             \x20       a1 += wu{j}{suffix}(u0 + u + T, xrow + {elems}u * ((u + T) / {per}u));\n\
             \x20   }}\n\
             \x20   if (u < nu) {{\n\
             \x20       a0 += wu{j}{suffix}(u0 + u, xrow + {elems}u * (u / {per}u));\n\
             \x20   }}\n\
             \x20   return a0 + a1;\n\
             }}\n",
            body.replace("X(", &format!("{x}("))
        ));
    }
    s
}

/// (units per block, elements per block, body) of `wu` ([`units_dot`]) for a weight of `dtype`
/// in external binding `b`, where a unit decodes with fewer instructions per weight than
/// quads do: the body reads unit `ug` and x's vectors `X(i)` from its block's first element
/// `xb`, and returns their dot product. Every unit loads its block's scales once for 32
/// weights and sums q·x (and x, where the block has an offset or a min) before scaling.
/// Blocks of 18, 22 or 210 bytes start on 2-byte boundaries: n words are funnelled from n + 1
/// loads, branch-free (neighbouring lanes' blocks alternate).
/// Q8_0 keeps quads: on lavapipe (one weight, runs alternating with quads) its units, a block
/// each, took 1.17× the time at 2,048 columns and 0.94–0.95× at 5,632–8,192, where the other
/// formats' took 0.63–1.04× at 2,048 and 0.52–0.84× at 5,632–8,192: its decode is the sign
/// extensions either way.
///
/// - 32-element formats but Q8_0: a unit is a block. 4-bit values: word k's low nibbles are
///   elements 4k.., its high nibbles 16 + 4k..; Q5's fifth bits are bit e of the u32 `qh`.
/// - Q4_K and Q5_K: a unit is 16 bytes of a pair of 32-element sub-blocks (c): their 4 words'
///   low nibbles are 16 values of the first sub-block, the high nibbles the same 16 of the
///   second; d, dmin, the scales' three words and both sub-blocks' scale and min load once.
/// - Q6_K: a unit is 8 bytes (two words of l) of a half (n) of 128: its low-bit words at l and
///   32 + l hold quarters 0 and 2, 1 and 3 (low and high nibbles), the bit pairs at 128 + l all
///   four, whose scales (one per quarter for these l) load once.
pub fn unit_body(b: u32, dtype: DType) -> Option<(u32, u32, String)> {
    let f16 = |o: &str| format!("unpack2x16float(e{b}[({o}) >> 2u] >> ((({o}) & 2u) * 8u)).x");
    // `n` words `{name}0..` from 2-aligned byte offset `at`: n + 1 loads (the last clamped to
    // the binding), each word funnelled from two where `at` is off a word boundary
    let funnel = |name: &str, at: &str, n: u32| {
        let mut t = format!("let {name}a = ({at}) >> 2u; let {name}o = (({at}) & 2u) != 0u;");
        for k in 0..n {
            t.push_str(&format!(" let {name}l{k} = e{b}[{name}a + {k}u];"));
        }
        t.push_str(&format!(
            " let {name}l{n} = e{b}[min({name}a + {n}u, arrayLength(&e{b}) - 1u)];"
        ));
        for k in 0..n {
            t.push_str(&format!(
                " let {name}{k} = select({name}l{k}, ({name}l{k} >> 16u) | ({name}l{} << 16u), {name}o);",
                k + 1
            ));
        }
        t
    };
    let mut body = String::new();
    let mut push = |t: String| {
        body.push(' ');
        body.push_str(&t);
    };
    let four_bit = |push: &mut dyn FnMut(String), word: &dyn Fn(u32) -> String, high: bool| {
        push("var dq = vec4<f32>(0.0); var sx = vec4<f32>(0.0);".into());
        for k in 0..4 {
            let (lo, hi) = if high {
                (
                    format!("nib(q{k}) + 16.0 * hb4(qh >> {}u)", 4 * k),
                    format!("nib(q{k} >> 4u) + 16.0 * hb4(qh >> {}u)", 16 + 4 * k),
                )
            } else {
                (format!("nib(q{k})"), format!("nib(q{k} >> 4u)"))
            };
            push(format!(
                "let q{k} = {}; let xl{k} = X(xb + {}u); let xh{k} = X(xb + {}u); \
                 dq += ({lo}) * xl{k} + ({hi}) * xh{k}; sx += xl{k} + xh{k};",
                word(k),
                4 * k,
                16 + 4 * k
            ));
        }
    };
    let shape = match dtype {
        DType::Q4_0 | DType::Q5_0 => {
            let (bytes, qs, bias) = if dtype == DType::Q4_0 {
                (18, 2, 8)
            } else {
                (22, 6, 16)
            };
            push(format!("let o = ug * {bytes}u; let d = {};", f16("o")));
            if dtype == DType::Q5_0 {
                push(funnel("qh", "o + 2u", 1));
                push("let qh = qh0;".into());
            }
            push(funnel("w", &format!("o + {qs}u"), 4));
            four_bit(&mut push, &|k| format!("w{k}"), dtype == DType::Q5_0);
            push(format!("return d * (hsum(dq) - {bias}.0 * hsum(sx));"));
            (1, 32)
        }
        DType::Q4_1 | DType::Q5_1 => {
            let (words, qs) = if dtype == DType::Q4_1 { (5, 1) } else { (6, 2) };
            push(format!(
                "let w = ug * {words}u; let dm = unpack2x16float(e{b}[w]);"
            ));
            if dtype == DType::Q5_1 {
                push(format!("let qh = e{b}[w + 1u];"));
            }
            four_bit(
                &mut push,
                &|k| format!("e{b}[w + {}u]", qs + k),
                dtype == DType::Q5_1,
            );
            push("return dm.x * hsum(dq) + dm.y * hsum(sx);".into());
            (1, 32)
        }
        DType::Q4K | DType::Q5K => {
            let (words, qs) = if dtype == DType::Q4K {
                (36, 4)
            } else {
                (44, 12)
            };
            push(format!(
                "let blk = ug / 8u; let c = (ug % 8u) / 2u; let i = ug % 2u; let w = blk * {words}u; \
                 let dm = unpack2x16float(e{b}[w]); let sm = ksm(e{b}[w + 1u], e{b}[w + 2u], e{b}[w + 3u], c); \
                 let qw = w + {qs}u + 8u * c + 4u * i; let xo = xb + 64u * c + 16u * i; \
                 var dl = vec4<f32>(0.0); var dh = vec4<f32>(0.0); var sl = vec4<f32>(0.0); var sh = vec4<f32>(0.0);"
            ));
            for k in 0..4 {
                let (lo, hi) = if dtype == DType::Q5K {
                    // the fifth bits: bit 2c (first sub-block) and 2c + 1 of the bytes at 16 + l
                    push(format!(
                        "let h{k} = e{b}[w + 4u + 4u * i + {k}u] >> (2u * c);"
                    ));
                    (
                        format!("(nib(q{k}) + 16.0 * bit4(h{k}))"),
                        format!("(nib(q{k} >> 4u) + 16.0 * bit4(h{k} >> 1u))"),
                    )
                } else {
                    (format!("nib(q{k})"), format!("nib(q{k} >> 4u)"))
                };
                push(format!(
                    "let q{k} = e{b}[qw + {k}u]; let xl{k} = X(xo + {}u); let xh{k} = X(xo + {}u); \
                     dl += {lo} * xl{k}; dh += {hi} * xh{k}; sl += xl{k}; sh += xh{k};",
                    4 * k,
                    32 + 4 * k
                ));
            }
            push(
                "return dm.x * (sm.x * hsum(dl) + sm.z * hsum(dh)) - dm.y * (sm.y * hsum(sl) + sm.w * hsum(sh));"
                    .into(),
            );
            (8, 256)
        }
        DType::Q6K => {
            push(format!(
                "let o = (ug / 8u) * 210u; let n = (ug % 8u) / 4u; let l = 8u * (ug % 4u); \
                 let d = {}; let sc = o + 192u + 8u * n + l / 16u; \
                 let xo = xb + 128u * n + l; var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); \
                 var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);",
                f16("o + 208u")
            ));
            push(funnel("lo", "o + 64u * n + l", 2));
            push(funnel("lh", "o + 64u * n + l + 32u", 2));
            push(funnel("h", "o + 128u + 32u * n + l", 2));
            for k in 0..2 {
                let l = 4 * k;
                push(format!(
                    "a0 += q6x4(lo{k}, h{k}) * X(xo + {l}u); a1 += q6x4(lh{k}, h{k} >> 2u) * X(xo + {}u); \
                     a2 += q6x4(lo{k} >> 4u, h{k} >> 4u) * X(xo + {}u); a3 += q6x4(lh{k} >> 4u, h{k} >> 6u) * X(xo + {}u);",
                    32 + l,
                    64 + l,
                    96 + l
                ));
            }
            push(format!(
                "return d * ((i8s(b{b}_u8(sc)) * hsum(a0) + i8s(b{b}_u8(sc + 2u)) * hsum(a1)) \
                 + (i8s(b{b}_u8(sc + 4u)) * hsum(a2) + i8s(b{b}_u8(sc + 6u)) * hsum(a3)));"
            ));
            (8, 256)
        }
        _ => return None,
    };
    Some((shape.0, shape.1, body))
}

/// Quads a mat-vec lane keeps in flight a step ([`quad_dot`]).
pub const MATVEC_UNROLL: u32 = 4;

/// A weight decoder's `body` with its generic names made weight source `j`'s (`bw(` reads a
/// 2-aligned word, `ldJ(` an element), after the `bwj` reader an external weight needs.
fn for_weight(j: usize, home: Home, body: &str) -> (String, String) {
    let body = body
        .replace("bw(", &format!("bw{j}("))
        .replace("ldJ(", &format!("ld{j}("));
    let reader = match home {
        Home::External(b) => format!(
            "fn bw{j}(o: u32) -> u32 {{ let i = o >> 2u; if ((o & 2u) == 0u) {{ return e{b}[i]; }} \
             return (e{b}[i] >> 16u) | (e{b}[i + 1u] << 16u); }}\n"
        ),
        Home::Arena => String::new(),
    };
    (reader, body)
}

/// Helpers of [`quad_dot`]'s functions, and the lanes per output row `T`.
pub const QUAD_HELPERS: &str = "
const T: u32 = 32u;
fn x4(i: u32) -> vec4<f32> { return vec4<f32>(ld0(i), ld0(i + 1u), ld0(i + 2u), ld0(i + 3u)); }
fn nib(w: u32) -> vec4<f32> { return vec4<f32>(f32(w & 15u), f32((w >> 8u) & 15u), f32((w >> 16u) & 15u), f32((w >> 24u) & 15u)); }
fn hb4(h: u32) -> vec4<f32> { return vec4<f32>(f32(h & 1u), f32((h >> 1u) & 1u), f32((h >> 2u) & 1u), f32((h >> 3u) & 1u)); }
fn bit4(w: u32) -> vec4<f32> { return vec4<f32>(f32(w & 1u), f32((w >> 8u) & 1u), f32((w >> 16u) & 1u), f32((w >> 24u) & 1u)); }
fn i8x4(w: u32) -> vec4<f32> { return vec4<f32>(f32(bitcast<i32>(w << 24u) >> 24u), f32(bitcast<i32>(w << 16u) >> 24u), f32(bitcast<i32>(w << 8u) >> 24u), f32(bitcast<i32>(w) >> 24u)); }
fn i8s(v: u32) -> f32 { return f32(bitcast<i32>(v << 24u) >> 24u); }
fn hsum(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }
// a K-quant block's scales and mins of sub-blocks 2c and 2c + 1 (6 bits each, in the 12 bytes
// s0, s1, s2): (scale, min, scale, min)
fn ksm(s0: u32, s1: u32, s2: u32, c: u32) -> vec4<f32> {
    let sh = 16u * (c % 2u);
    let a = s0 >> sh;
    let b = s1 >> sh;
    let d = s2 >> sh;
    let lo = vec4<u32>(a & 63u, b & 63u, (a >> 8u) & 63u, (b >> 8u) & 63u);
    let hi = vec4<u32>((d & 15u) | (((a >> 6u) & 3u) << 4u), ((d >> 4u) & 15u) | (((b >> 6u) & 3u) << 4u), ((d >> 8u) & 15u) | (((a >> 14u) & 3u) << 4u), ((d >> 12u) & 15u) | (((b >> 14u) & 3u) << 4u));
    return vec4<f32>(select(hi, lo, c < 2u));
}
fn q6x4(lo: u32, hi: u32) -> vec4<f32> { return nib(lo) + 16.0 * vec4<f32>(f32(hi & 3u), f32((hi >> 8u) & 3u), f32((hi >> 16u) & 3u), f32((hi >> 24u) & 3u)) - 32.0; }
";

/// (alignment, body) of `wq` for a weight of `dtype` in external binding `b`: the body returns
/// quad `q`'s four values. In a block of 32 the quad's offset is `j = q % 8`; 4-bit blocks keep
/// elements `i` and `i + 16` in one byte, so quad `j` is the low nibbles of the block's word
/// `j % 4` for `j < 4` and the high ones for `j >= 4`.
fn quad_body(b: u32, dtype: DType) -> Option<(u32, String)> {
    let f16 = format!("b{b}_f16");
    // the word of a 32-block's 4-bit values holding quad j, shifted to its nibbles
    let nibbles = |qs: u32| format!("bw(o + {qs}u + 4u * (j % 4u)) >> (4u * (j / 4u))");
    Some(match dtype {
        DType::F32 => (
            4,
            format!(
                "let w = 4u * q; return vec4<f32>(bitcast<f32>(e{b}[w]), bitcast<f32>(e{b}[w + 1u]), \
                 bitcast<f32>(e{b}[w + 2u]), bitcast<f32>(e{b}[w + 3u]));"
            ),
        ),
        DType::F16 => (
            4,
            format!(
                "return vec4<f32>(unpack2x16float(e{b}[2u * q]), unpack2x16float(e{b}[2u * q + 1u]));"
            ),
        ),
        DType::BF16 => (
            4,
            format!(
                "let u = e{b}[2u * q]; let v = e{b}[2u * q + 1u]; \
                 return vec4<f32>(bitcast<f32>(u << 16u), bitcast<f32>(u & 0xffff0000u), \
                 bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));"
            ),
        ),
        DType::Q8_0 => (
            32,
            format!("let o = (q / 8u) * 34u; return {f16}(o) * i8x4(bw(o + 2u + 4u * (q % 8u)));"),
        ),
        DType::Q4_0 => (
            32,
            format!(
                "let o = (q / 8u) * 18u; let j = q % 8u; return {f16}(o) * (nib({}) - 8.0);",
                nibbles(2)
            ),
        ),
        DType::Q4_1 => (
            32,
            format!(
                "let o = (q / 8u) * 20u; let j = q % 8u; return {f16}(o) * nib({}) + {f16}(o + 2u);",
                nibbles(4)
            ),
        ),
        DType::Q5_0 | DType::Q5_1 => {
            // the fifth bits: bit e of the u32 after the scale(s) is element e's
            let (bytes, qh, value) = if dtype == DType::Q5_0 {
                (22, 2, format!("{f16}(o) * (v - 16.0)"))
            } else {
                (24, 4, format!("{f16}(o) * v + {f16}(o + 2u)"))
            };
            (
                32,
                format!(
                    "let o = (q / 8u) * {bytes}u; let j = q % 8u; \
                     let v = nib({}) + 16.0 * hb4(bw(o + {qh}u) >> (4u * j)); return {value};",
                    nibbles(qh + 4)
                ),
            )
        }
        DType::Q4K | DType::Q5K => {
            // a block of 256: 4 pairs of 32-element sub-blocks (c), whose 64 values sit in 32
            // bytes, the first sub-block's in the low nibbles; Q5_K's fifth bits are bit
            // 2c (first) or 2c + 1 (second) of the bytes at 16 + l % 32
            let (bytes, qs) = if dtype == DType::Q4K {
                (144, 16)
            } else {
                (176, 48)
            };
            let high = if dtype == DType::Q5K {
                "v += 16.0 * bit4(e{b}[(o + 16u + l % 32u) >> 2u] >> (2u * c + l / 32u)); "
                    .replace("{b}", &b.to_string())
            } else {
                String::new()
            };
            (
                256,
                format!(
                    "let o = (q / 64u) * {bytes}u; let qb = q % 64u; let c = qb / 16u; let l = 4u * (qb % 16u); \
                     let sm = b{b}_sm(o + 4u, 2u * c + l / 32u); \
                     var v = nib(e{b}[(o + {qs}u + 32u * c + l % 32u) >> 2u] >> (4u * (l / 32u))); {high}\
                     return ({f16}(o) * f32(sm.x)) * v - {f16}(o + 2u) * f32(sm.y);"
                ),
            )
        }
        DType::Q6K => (
            // a block of 256: two halves (n) of 128, each four quarters of 32 (t): low 4 bits
            // in the nibbles of 64 bytes, high 2 bits in the bit pairs of 32, a scale per 16
            256,
            format!(
                "let o = (q / 64u) * 210u; let e = 4u * (q % 64u); let n = e / 128u; let l = e % 32u; \
                 let t = (e % 128u) / 32u; \
                 let lo = bw(o + n * 64u + l + 32u * (t % 2u)) >> (4u * (t / 2u)); \
                 let hi = bw(o + 128u + n * 32u + l) >> (2u * t); \
                 let sc = i8s(b{b}_u8(o + 192u + n * 8u + l / 16u + 2u * t)); \
                 return ({f16}(o + 208u) * sc) * q6x4(lo, hi);"
            ),
        ),
        _ => return None,
    })
}

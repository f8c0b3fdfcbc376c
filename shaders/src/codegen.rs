//! Assembles a shader: bindings, parameter readers, per-source loaders, helpers, the kernel
//! body with its placeholders filled.

use crate::quant::{QUAD_HELPERS, byte_helpers, decode_body, quad_dot};
use crate::{BcNormSpec, EpilogueSpec, Home, Kernel, Spec, TopKSpec, XNormSpec};
use std::fmt::Write;
use weft_graph::{BinaryOp, DType, FusedProgram, Instr, NormKind, UnaryOp};

/// A spec the generator cannot turn into a shader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShaderError {
    pub kernel: &'static str,
    pub detail: String,
}

impl std::fmt::Display for ShaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kernel {}: {}", self.kernel, self.detail)
    }
}

impl std::error::Error for ShaderError {}

const HELPERS: &str = "
fn pu(i: u32) -> u32 { return P[i / 4u][i % 4u]; }
fn pf(i: u32) -> f32 { return bitcast<f32>(pu(i)); }
fn aw(i: u32) -> u32 { return arena[i >> 2u][i & 3u]; }
fn st(i: u32, v: f32) { arena[i >> 2u][i & 3u] = bitcast<u32>(v); }
fn sti(i: u32, v: i32) { arena[i >> 2u][i & 3u] = bitcast<u32>(v); }
fn sigmoid_(x: f32) -> f32 { return 1.0 / (1.0 + exp(min(-x, 80.0))); }
fn log1p_(u: f32) -> f32 { let v = 1.0 + u; if (v == 1.0) { return u; } return log(v) * u / (v - 1.0); }
fn softplus_(x: f32) -> f32 { if (x > 20.0) { return x; } return log1p_(exp(x)); }
// rotary embedding of dim d of a head whose first nd dims rotate (mode 0 normal: pairs
// (2i, 2i+1); 1 neox: (i, i + nd/2)): the pair i, whether d is its first, and d's partner
fn rope_slot(d: u32, nd: u32, mode: u32) -> vec3<u32> {
    if (mode == 0u) { let first = (d % 2u) == 0u; return vec3<u32>(d / 2u, u32(first), select(d - 1u, d + 1u, first)); }
    let half = nd / 2u; let first = d < half;
    return vec3<u32>(select(d - half, d, first), u32(first), select(d - half, d + half, first));
}
// the angle of a rotary pair at position `pos`, in [-pi, pi): the pair's revolutions per
// position are a 64-bit binary fraction (hi, lo) and the product's fraction is taken in integer
// arithmetic, so the angle is exact to f32 rounding at any position (a product in f32 loses
// ~1e-4 rad by position 4096, and GPUs' sin/cos are only accurate near zero)
fn rope_angle(pos: i32, hi: u32, lo: u32) -> f32 {
    let a = u32(abs(pos));
    let a0 = a & 0xffffu; let a1 = a >> 16u; let b0 = lo & 0xffffu; let b1 = lo >> 16u;
    let m1 = a1 * b0; let m2 = a0 * b1;
    let cross = ((a0 * b0) >> 16u) + (m1 & 0xffffu) + (m2 & 0xffffu);
    var r = a * hi + a1 * b1 + (m1 >> 16u) + (m2 >> 16u) + (cross >> 16u);
    if (pos < 0) { r = 0u - r; }
    return f32(bitcast<i32>(r)) * 1.4629180792671596e-9;
}
// x rounded to f16 (to nearest, ties to even) and back, with integer arithmetic: below f16's
// normal range to multiples of 2^-24, past its largest value to infinity
fn f16_round(x: f32) -> f32 {
    let a = abs(x);
    if (a < 6.103515625e-5) { return round(x * 16777216.0) * 5.9604644775390625e-8; }
    let u = bitcast<u32>(x);
    if (a >= 65520.0) { return bitcast<f32>((u & 0x80000000u) | 0x7f800000u); }
    return bitcast<f32>((u + 0xfffu + ((u >> 13u) & 1u)) & 0xffffe000u);
}
// x rotated with its partner y by angle a
fn rope_rotate(x: f32, y: f32, first: bool, a: f32) -> f32 {
    let c = cos(a); let s = sin(a);
    if (first) { return x * c - y * s; }
    return y * s + x * c;
}
";

/// The top-k selection order, shared by the `top_k` kernel and the ids chosen in other kernels
/// (`Spec::top_k`): a pass over a row takes the largest value after the last one taken (`lv` at
/// `li`, unless `first`): smaller, or equal at a higher index; so the largest come first, the
/// lower index first on ties. `bi == none` while the pass has no best yet.
const TOP_K_ORDER: &str = "
fn top_k_takes(v: f32, j: u32, first: bool, lv: f32, li: u32, bv: f32, bi: u32, none: u32) -> bool {
    let after_last = first || v < lv || (v == lv && j > li);
    return after_last && (bi == none || v > bv);
}
";

fn lit(x: f32) -> String {
    format!("bitcast<f32>({:#010x}u)", x.to_bits())
}

fn unary(op: UnaryOp, x: &str) -> String {
    match op {
        UnaryOp::Neg => format!("-({x})"),
        UnaryOp::Exp => format!("exp({x})"),
        UnaryOp::Log => format!("log({x})"),
        UnaryOp::Sqrt => format!("sqrt({x})"),
        UnaryOp::Square => format!("({x} * {x})"),
        UnaryOp::Tanh => format!("tanh(clamp({x}, -15.0, 15.0))"),
        UnaryOp::Relu => format!("max({x}, 0.0)"),
        UnaryOp::SqrRelu => format!("(max({x}, 0.0) * max({x}, 0.0))"),
        UnaryOp::Sigmoid => format!("sigmoid_({x})"),
        UnaryOp::Silu => format!("({x} * sigmoid_({x}))"),
        UnaryOp::Gelu => format!(
            "(0.5 * {x} * (1.0 + tanh(clamp(0.7978846 * ({x} + 0.044715 * {x} * {x} * {x}), -15.0, 15.0))))"
        ),
        UnaryOp::Softplus => format!("softplus_({x})"),
        UnaryOp::Scale(s) => format!("({x} * {})", lit(s)),
        UnaryOp::Offset(c) => format!("({x} + {})", lit(c)),
        UnaryOp::Clamp { min, max } => format!("clamp({x}, {}, {})", lit(min), lit(max)),
    }
}

fn binary(op: BinaryOp, a: &str, b: &str) -> String {
    let o = match op {
        BinaryOp::Add => "+",
        BinaryOp::Sub => "-",
        BinaryOp::Mul => "*",
        BinaryOp::Div => "/",
    };
    format!("({a} {o} {b})")
}

/// WGSL statements computing `v` from a fused program, `load(k)` being the expression of
/// `Load(k)`.
fn program_body(p: &FusedProgram, load: impl Fn(u8) -> String) -> String {
    let mut s = String::new();
    for (n, ins) in p.code.iter().enumerate() {
        let e = match *ins {
            Instr::Load(k) => load(k),
            Instr::Unary(op, a) => unary(op, &format!("r{a}")),
            Instr::Binary(op, a, b) => binary(op, &format!("r{a}"), &format!("r{b}")),
        };
        let _ = write!(s, "let r{n} = {e};\n    ");
    }
    let _ = write!(s, "let v = r{};", p.code.len().saturating_sub(1));
    s
}

/// The WGSL expression of a row norm's factor from the row's sum of squares `ss` over `d`
/// values (as `fused_norm` computes it); sum-normalisation is `fused_norm`'s alone.
fn norm_factor(spec: &Spec, kind: NormKind, d: &str) -> Result<String, ShaderError> {
    match kind {
        NormKind::Rms { eps } => Ok(format!("1.0 / sqrt(ss / f32({d}) + {})", lit(eps))),
        NormKind::L2 { eps } => Ok(format!("1.0 / max(sqrt(ss), {})", lit(eps))),
        NormKind::Sum { .. } => Err(err(spec.kernel, "only fused_norm sum-normalises rows")),
    }
}

/// ` * ldJ(offset + element)`, the factor a norm's weight (source `J`, its offset in parameter
/// word `at`) puts on the normalised value at `element`; empty without a weight.
fn norm_weight(
    spec: &Spec,
    weight: Option<(usize, u32)>,
    element: &str,
) -> Result<String, ShaderError> {
    match weight {
        Some((j, at)) if j < spec.sources.len() => Ok(format!(" * ld{j}(pu({at}u) + {element})")),
        Some((j, _)) => Err(err(spec.kernel, format!("norm weight source {j}"))),
        None => Ok(String::new()),
    }
}

/// `group_sum(v, lid, half)`: the sum of `v` over each aligned group of `T` lanes of a
/// 128-thread workgroup, returned to every lane of the group. Subgroup shuffles sum the first
/// `SG` lanes (`Spec::subgroup`); workgroup memory (half `half` of the scratch, so a kernel can
/// take two sums back to back) sums the `T / SG` partials in a tree. With `SG = T` no barrier
/// is left. Every thread must call it (it may hold barriers).
fn group_sum(spec: &Spec) -> Result<String, ShaderError> {
    let sg = spec.subgroup;
    if !sg.is_power_of_two() || sg > 128 {
        return Err(err(spec.kernel, format!("subgroup size {sg}")));
    }
    let sg = sg.min(32);
    let mut f = format!(
        "const SG: u32 = {sg}u;
fn group_sum(v: f32, lid: u32, half: u32) -> f32 {{
    var s = v;
"
    );
    if sg > 1 {
        f.push_str(
            "    for (var o = SG / 2u; o > 0u; o >>= 1u) {
        s += subgroupShuffleXor(s, o);
    }
",
        );
    }
    if sg < 32 {
        f.push_str(
            "    let parts = T / SG;
    let base = half * 128u;
    if (lid % SG == 0u) {
        red_[base + lid / SG] = s;
    }
    workgroupBarrier();
    for (var st = parts / 2u; st > 0u; st >>= 1u) {
        if (lid < 128u / SG && lid % parts < st) {
            red_[base + lid] += red_[base + lid + st];
        }
        workgroupBarrier();
    }
    s = red_[base + lid / T * parts];
",
        );
        f = format!(
            "var<workgroup> red_: array<f32, 256>;
{f}"
        );
    }
    f.push_str(
        "    return s;
}
",
    );
    Ok(f)
}

/// `ssm_scan_lanes`' `lane_sum(v, lid)`: the sum of `v` over each aligned group of `L` = 16
/// lanes of a 64-thread workgroup, returned to every lane of the group, as `group_sum` sums:
/// subgroup shuffles over the first `SG` lanes (`Spec::subgroup`, at most 16), then, where a
/// subgroup holds fewer than 16, the partials' tree in workgroup memory (lavapipe's 8 lanes
/// take both steps, so its tests run the shuffles too). Every thread must call it (it may
/// hold barriers).
fn lane_sum(spec: &Spec) -> Result<String, ShaderError> {
    let sg = spec.subgroup;
    if !sg.is_power_of_two() || sg > 128 {
        return Err(err(spec.kernel, format!("subgroup size {sg}")));
    }
    let sg = sg.min(16);
    let mut f = format!("const L: u32 = 16u;\nconst LSG: u32 = {sg}u;\n");
    if sg < 16 {
        f.push_str("var<workgroup> lred_: array<f32, 64>;\n");
    }
    f.push_str("fn lane_sum(v: f32, lid: u32) -> f32 {\n    var s = v;\n");
    if sg > 1 {
        f.push_str(
            "    for (var o = LSG / 2u; o > 0u; o >>= 1u) {
        s += subgroupShuffleXor(s, o);
    }
",
        );
    }
    if sg < 16 {
        f.push_str(
            "    let parts = L / LSG;
    if (lid % LSG == 0u) {
        lred_[lid / LSG] = s;
    }
    workgroupBarrier();
    for (var o = parts / 2u; o > 0u; o >>= 1u) {
        if (lid < 64u / LSG && lid % parts < o) {
            lred_[lid] += lred_[lid + o];
        }
        workgroupBarrier();
    }
    s = lred_[lid / L * parts];
    workgroupBarrier();
",
        );
    }
    f.push_str("    return s;\n}\n");
    Ok(f)
}

/// `ldi{src}` (and `ld{src}`) of a [`TopKSpec`]: the `j + 1`-th largest logit's index, found
/// by `j + 1` passes over the row, each taking the largest value after the last one taken in
/// (value, index) order.
fn top_k_loader(t: &TopKSpec) -> String {
    let TopKSpec {
        src,
        k,
        row,
        stride,
        off,
    } = *t;
    format!(
        "fn ldf{src}(i: u32) -> f32 {{ return bitcast<f32>(aw(i)); }}
fn ldi{src}(i: u32) -> i32 {{
    let r = i - pu({off}u);
    let base = pu({off}u) + (r / {k}u) * {stride}u;
    var lv = 0.0;
    var li = 0u;
    for (var kk = 0u; kk <= r % {k}u; kk++) {{
        var bv = 0.0;
        var bi = {row}u;
        for (var c = 0u; c < {row}u; c++) {{
            let v = ldf{src}(base + c);
            if (top_k_takes(v, c, kk == 0u, lv, li, bv, bi, {row}u)) {{
                bv = v;
                bi = c;
            }}
        }}
        lv = bv;
        li = bi;
    }}
    return i32(li);
}}
fn ld{src}(i: u32) -> f32 {{ return f32(ldi{src}(i)); }}
"
    )
}

/// The workgroup array `xw_` of `len` elements a mat-vec's `prologue` stages its row in, and
/// the loaders reading it (`ld0` an element, `x4a` a quad) from the row's start `xbase_`.
fn staged_row(len: u32) -> String {
    format!(
        "var<workgroup> xw_: array<vec4<f32>, {}>;
fn ld0(i: u32) -> f32 {{ let e = i - xbase_; return xw_[e >> 2u][e & 3u]; }}
fn x4a(i: u32) -> vec4<f32> {{ return xw_[(i - xbase_) >> 2u]; }}",
        len / 4
    )
}

/// `ld0` for a mat-vec whose activation row is normalised in the kernel (`Spec::x_norm`), and
/// `prologue(xrow, lid)`, which every thread calls first: the row's sum of squares over 64
/// lanes in the order `fused_norm` sums it, so both give the same factor.
fn x_norm_loader(spec: &Spec) -> Result<String, ShaderError> {
    let Some(XNormSpec {
        kind,
        weight,
        staged,
    }) = spec.x_norm
    else {
        return Ok(String::new());
    };
    if !spec.kernel.is_matvec() {
        return Err(err(spec.kernel, "only mat-vecs normalise their row"));
    }
    let w = norm_weight(spec, weight, "i - xbase_")?;
    let w4 = (0..4)
        .map(|k| {
            Ok(format!(
                "1.0{}",
                norm_weight(spec, weight, &format!("e + {k}u"))?
            ))
        })
        .collect::<Result<Vec<_>, ShaderError>>()?
        .join(", ");
    let factor = norm_factor(spec, kind, "k_")?;
    // staged: once the factor is known, each thread normalises whole quads of the row (the
    // same products in the same order as the unstaged loaders') and writes them whole (threads
    // writing components of one vector would race); the tail's elements alone, past it zeros
    let (loaders, stage) = if staged > 0 {
        let wc = norm_weight(spec, weight, "e + c")?;
        (
            staged_row(staged),
            format!(
                "    if (lid < 64u) {{
        for (var q = lid; 4u * q < k_; q += 64u) {{
            let e = 4u * q;
            var v = vec4<f32>(0.0);
            if (e + 4u <= k_) {{
                v = vec4<f32>(ld0raw(xrow + e), ld0raw(xrow + e + 1u), ld0raw(xrow + e + 2u), ld0raw(xrow + e + 3u)) * xs_ * vec4<f32>({w4});
            }} else {{
                for (var c = 0u; e + c < k_; c++) {{
                    v[c] = ld0raw(xrow + e + c) * xs_{wc};
                }}
            }}
            xw_[q] = v;
        }}
    }}
    workgroupBarrier();
"
            ),
        )
    } else {
        (
            format!(
                "fn ld0(i: u32) -> f32 {{ return ld0raw(i) * xs_{w}; }}
fn x4a(i: u32) -> vec4<f32> {{ let e = i - xbase_; return bitcast<vec4<f32>>(arena[i >> 2u]) * xs_ * vec4<f32>({w4}); }}"
            ),
            String::new(),
        )
    };
    Ok(format!(
        "var<private> xs_: f32 = 1.0;
var<private> xbase_: u32 = 0u;
var<workgroup> nrm_: array<f32, 64>;
fn ld0raw(i: u32) -> f32 {{ return bitcast<f32>(aw(i)); }}
{loaders}
fn prologue(xrow: u32, lid: u32) {{
    let k_ = pu(2u);
    if (lid < 64u) {{
        // fused_norm's order (64 strided partial sums), eight loads in flight a step
        var acc = 0.0;
        var j = lid;
        for (; j + 448u < k_; j += 512u) {{
            let x0 = ld0raw(xrow + j);
            let x1 = ld0raw(xrow + j + 64u);
            let x2 = ld0raw(xrow + j + 128u);
            let x3 = ld0raw(xrow + j + 192u);
            let x4 = ld0raw(xrow + j + 256u);
            let x5 = ld0raw(xrow + j + 320u);
            let x6 = ld0raw(xrow + j + 384u);
            let x7 = ld0raw(xrow + j + 448u);
            acc += x0 * x0;
            acc += x1 * x1;
            acc += x2 * x2;
            acc += x3 * x3;
            acc += x4 * x4;
            acc += x5 * x5;
            acc += x6 * x6;
            acc += x7 * x7;
        }}
        for (; j < k_; j += 64u) {{
            let x = ld0raw(xrow + j);
            acc += x * x;
        }}
        nrm_[lid] = acc;
    }}
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {{
        if (lid < s) {{
            nrm_[lid] += nrm_[lid + s];
        }}
        workgroupBarrier();
    }}
    let ss = nrm_[0];
    xs_ = {factor};
    xbase_ = xrow;
{stage}}}
"
    ))
}

/// `ld0` for a `matmul` whose activation row is computed by a program (`Spec::x_prog`), and
/// `prologue(xrow, lid)`, which every thread calls first: with a norm head, the factor of each
/// group of the row (summed by a thread per group, at most 64 groups).
fn x_prog_loader(spec: &Spec) -> Result<String, ShaderError> {
    let Some(xp) = &spec.x_prog else {
        return Ok(String::new());
    };
    let body = indexed_program(spec, &xp.program, 1, "xpa", "the row's program")?;
    let row = xp.row;
    let (scale, factors) = match xp.program.program.head {
        None => (String::new(), String::new()),
        Some(kind) => {
            let f = norm_factor(spec, kind, "d")?;
            (
                format!(" * xf_[(i_ - xbase_) / pu({row}u)]"),
                format!(
                    "let d = pu({row}u);
    if (lid < pu(2u) / d) {{
        var ss = 0.0;
        for (var j = 0u; j < d; j++) {{
            let x = ld0raw(xrow + lid * d + j);
            ss += x * x;
        }}
        xf_[lid] = {f};
    }}
    workgroupBarrier();"
                ),
            )
        }
    };
    // staged: the row computed once into workgroup memory, which `ld0` and `x4a` then read
    let (name, staged, stage) = if xp.staged > 0 {
        (
            "ldp_",
            staged_row(xp.staged) + "\n",
            // (whole quads a thread: threads writing components of one vector would race)
            "if (lid < 64u) {
        for (var q = lid; 4u * q < pu(2u); q += 64u) {
            let e = 4u * q;
            var v = vec4<f32>(0.0);
            for (var c = 0u; c < 4u && e + c < pu(2u); c++) {
                v[c] = ldp_(xrow + e + c);
            }
            xw_[q] = v;
        }
    }
    workgroupBarrier();",
        )
    } else {
        ("ld0", String::new(), "")
    };
    Ok(format!(
        "var<private> xbase_: u32 = 0u;
var<workgroup> xf_: array<f32, 64>;
fn ld0raw(i: u32) -> f32 {{ return bitcast<f32>(aw(i)); }}
{}{staged}fn {name}(i_: u32) -> f32 {{
    let v0 = ld0raw(i_){scale};
    let i = i_ - pu(3u);
    {body}
}}
fn prologue(xrow: u32, lid: u32) {{
    xbase_ = xrow;
    {factors}
    {stage}
}}
",
        source_index("xpa", xp.program.params)
    ))
}

/// `gated_delta_net`'s `ldq`/`ldk` and `qk_factors(q_base, k_base, d, lid)`: the raw rows, or
/// (with `Spec::qk_norm`) each head row through its program, the factors of a token's q and k
/// rows computed by the whole workgroup in `fused_norm`'s order (64 strided partial sums, then
/// the same tree) so that both agree to the bit. Every thread must call `qk_factors` (it holds
/// barriers).
fn qk_loaders(spec: &Spec) -> Result<String, ShaderError> {
    let Some(progs) = &spec.qk_norm else {
        return Ok("fn ldq(i: u32, f: f32) -> f32 { return ld1(i); }\n\
                   fn ldk(i: u32, f: f32) -> f32 { return ld2(i); }\n\
                   fn qk_factors(qb: u32, kb: u32, d: u32, lid: u32) -> vec2<f32> { \
                   return vec2<f32>(1.0, 1.0); }\n"
            .into());
    };
    let mut out = String::new();
    let mut factors = vec![];
    for (name, src, p) in [("q", 1, &progs[0]), ("k", 2, &progs[1])] {
        let Some(kind) = p.head else {
            return Err(err(spec.kernel, "a q/k program without a norm head"));
        };
        factors.push(norm_factor(spec, kind, "d")?);
        let body = program_body(p, |_| "v".to_string()).replace("let v = ", "return ");
        let _ = write!(
            out,
            "fn {name}n_(v: f32) -> f32 {{
    {body}
}}
fn ld{name}(i: u32, f: f32) -> f32 {{ return {name}n_(ld{src}(i) * f); }}
"
        );
    }
    let _ = write!(
        out,
        "var<workgroup> nqk_: array<f32, 128>;
fn qk_factors(qb: u32, kb: u32, d: u32, lid: u32) -> vec2<f32> {{
    // (the previous token's readers of nqk_ are done)
    workgroupBarrier();
    let l = lid % 64u;
    var acc = 0.0;
    for (var j = l; j < d; j += 64u) {{
        var x = 0.0;
        if (lid < 64u) {{
            x = ld1(qb + j);
        }} else {{
            x = ld2(kb + j);
        }}
        acc += x * x;
    }}
    nqk_[lid] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {{
        if (l < s) {{
            nqk_[lid] += nqk_[lid + s];
        }}
        workgroupBarrier();
    }}
    var ss = nqk_[0];
    let fq = {};
    ss = nqk_[64];
    let fk = {};
    return vec2<f32>(fq, fk);
}}
",
        factors[0], factors[1]
    );
    Ok(out)
}

/// `put{n}(i, a, b)` for each word-written binding, and `rnd{n}(x)`, `x` as that binding holds
/// it (stand-ins for the attention's two when it writes none).
fn puts(spec: &Spec) -> Result<String, ShaderError> {
    let mut out = String::new();
    for (n, &(b, dtype)) in spec.puts.iter().enumerate() {
        let body = match dtype {
            DType::F32 => format!("e{b}[i] = bitcast<u32>(a); e{b}[i + 1u] = bitcast<u32>(b);"),
            DType::F16 => format!("e{b}[i >> 1u] = pack2x16float(vec2<f32>(a, b));"),
            DType::BF16 => format!(
                "let ua = bitcast<u32>(a); let ub = bitcast<u32>(b); \
                 let ha = ((ua + 0x7fffu + ((ua >> 16u) & 1u)) >> 16u) & 0xffffu; \
                 let hb = ((ub + 0x7fffu + ((ub >> 16u) & 1u)) >> 16u) & 0xffffu; \
                 e{b}[i >> 1u] = ha | (hb << 16u);"
            ),
            d => {
                return Err(err(
                    spec.kernel,
                    format!("caches are F32, F16 or BF16, not {d}"),
                ));
            }
        };
        // a value as the binding will hold it
        let rounded = match dtype {
            // in integer arithmetic (to nearest, ties to even, as `pack2x16float` stores it):
            // a compiler may fold unpack(pack(x)) back to x
            DType::F16 => "f16_round(x)",
            DType::BF16 => {
                "bitcast<f32>(((bitcast<u32>(x) + 0x7fffu + ((bitcast<u32>(x) >> 16u) & 1u)) >> 16u) << 16u)"
            }
            _ => "x",
        };
        let _ = writeln!(out, "fn put{n}(i: u32, a: f32, b: f32) {{ {body} }}");
        let _ = writeln!(out, "fn rnd{n}(x: f32) -> f32 {{ return {rounded}; }}");
    }
    if spec.kernel == Kernel::Attention {
        for n in spec.puts.len()..2 {
            let _ = writeln!(out, "fn put{n}(i: u32, a: f32, b: f32) {{ }}");
            let _ = writeln!(out, "fn rnd{n}(x: f32) -> f32 {{ return x; }}");
        }
    }
    Ok(out)
}

/// `epi(i, v)`: the spec's epilogue applied to result `v` at output element `i`, or `v` as it is.
fn epilogue(spec: &Spec) -> Result<String, ShaderError> {
    let Some(e) = &spec.epilogue else {
        return Ok("fn epi(i: u32, v: f32) -> f32 { return v; }\n".into());
    };
    if !spec.kernel.applies_epilogue() {
        return Err(err(spec.kernel, "this kernel applies no epilogue"));
    }
    if e.pair
        != matches!(
            spec.kernel,
            Kernel::MatMulPair | Kernel::MatMulIdPair | Kernel::MatMulIdPairRows
        )
    {
        return Err(err(
            spec.kernel,
            "the pair kernels' epilogues, and only theirs, read two results",
        ));
    }
    let results = if e.pair { 2 } else { 1 };
    let body = indexed_program(spec, e, results, "epa", "epilogue")?;
    let head = if e.pair {
        "fn epi2(i_: u32, v0: f32, v1: f32) -> f32"
    } else {
        "fn epi(i_: u32, v0: f32) -> f32"
    };
    // (outside its range a result is written as it is)
    let index = match e.range {
        Some((a, n)) => format!(
            "if (i_ < {a}u || i_ >= {}u) {{ return v0; }}\n    let i = i_ - {a}u;",
            a + n
        ),
        None => "let i = i_;".to_string(),
    };
    Ok(format!(
        "{}{head} {{
    {index}
    {body}
}}
",
        source_index("epa", e.params)
    ))
}

/// The body (`return …`) of `e.program` at element `i`: its first `results` loads are the
/// values `v0`, `v1`, and each other load reads source `first + k` through `index(k, i)` (see
/// [`source_index`]). An error names `what` when it reads a source the spec lacks.
fn indexed_program(
    spec: &Spec,
    e: &EpilogueSpec,
    results: usize,
    index: &str,
    what: &str,
) -> Result<String, ShaderError> {
    let reads = e.program.code.iter().filter_map(|ins| match ins {
        Instr::Load(k) if *k as usize >= results => Some(e.first + *k as usize - results),
        _ => None,
    });
    if let Some(bad) = reads.clone().find(|&s| s >= spec.sources.len()) {
        return Err(err(
            spec.kernel,
            format!("{what} reads source {bad} of {}", spec.sources.len()),
        ));
    }
    let load = |k: u8| match k as usize {
        k if k < results => format!("v{k}"),
        k => format!("ld{}({index}({}u, i))", e.first + k - results, k - results),
    };
    Ok(program_body(&e.program, load).replace("let v = ", "return "))
}

/// `name(k, i)`: the element offset of element `i` of extra source `k`, from the 9 parameter
/// words per source from `base`: the 4 dims it is read with, its offset and 4 strides (0 where
/// it broadcasts).
fn source_index(name: &str, base: u32) -> String {
    format!(
        "fn {name}(k: u32, i: u32) -> u32 {{
    let b = {base}u + 9u * k;
    let i3 = i % pu(b + 3u);
    var r = i / pu(b + 3u);
    let i2 = r % pu(b + 2u);
    r = r / pu(b + 2u);
    let i1 = r % pu(b + 1u);
    let i0 = r / pu(b + 1u);
    return pu(b + 4u) + i0 * pu(b + 5u) + i1 * pu(b + 6u) + i2 * pu(b + 7u) + i3 * pu(b + 8u);
}}
"
    )
}

/// `gated_delta_net`'s `ldg(i)` and `ldb(i)`, `g` and `beta` at element offset `i` (counted
/// from params 10 and 11): the sources as they are, or their programs (`Spec::gates`).
fn gate_loaders(spec: &Spec) -> Result<String, ShaderError> {
    let Some(gates) = &spec.gates else {
        return Ok("fn ldg(i: u32) -> f32 { return ld4(i); }\n\
                   fn ldb(i: u32) -> f32 { return ld5(i); }\n"
            .into());
    };
    let mut out = String::new();
    for (j, (name, e)) in ["g", "b"].iter().zip(gates.iter()).enumerate() {
        let index = format!("gpa{j}");
        let body = indexed_program(spec, e, 0, &index, "gate")?;
        let _ = write!(
            out,
            "{}fn ld{name}(i_: u32) -> f32 {{
    let i = i_ - pu({}u);
    {body}
}}
",
            source_index(&index, e.params),
            10 + j
        );
    }
    Ok(out)
}

/// The scans' dt: `ldt(tok, h)`, head `h`'s dt at token `tok`: source 2 as it is, or (with
/// `Spec::scan_dt`) computed from its projection, a dot product of the token's activation
/// row (normalised first with `x_norm`) with the head's weight row, through dt's program. The
/// dot product comes in two halves so that lanes can share it: `dt_part(tok, h, lane, lanes)`
/// is one lane's share (every `lanes`-th element from `lane`) of the dot and of the row's sum
/// of squares, `dt_sum(tok, h, sums)` dt from the lanes' sums (`DT_PARTS` says whether there
/// is anything to sum).
fn dt_loader(spec: &Spec) -> Result<String, ShaderError> {
    let Some(d) = &spec.scan_dt else {
        return Ok("const DT_PARTS: bool = false;
fn ldt(tok: u32, h: u32) -> f32 { return ld2(pu(9u) + tok * pu(2u) + h); }
fn dt_part(tok: u32, h: u32, lane: u32, lanes: u32) -> vec2<f32> { return vec2<f32>(0.0); }
fn dt_sum(tok: u32, h: u32, sums: vec2<f32>) -> f32 { return ldt(tok, h); }
"
        .into());
    };
    let body = indexed_program(spec, &d.program, 1, "dta", "dt's program")?;
    let (w, p) = (d.weight, d.params);
    let sx = format!("pu({}u)", p + 4);
    // the activation row's norm factor on the sum (and the norm's weight per element)
    let (weight, factor) = match d.x_norm {
        None => (String::new(), String::new()),
        Some(XNormSpec { kind, weight, .. }) => {
            let w = norm_weight(spec, weight, "r")?;
            let f = norm_factor(spec, kind, "k_")?;
            (w, format!(" * {f}"))
        }
    };
    Ok(format!(
        "{}const DT_PARTS: bool = true;
fn dt_part(tok: u32, h: u32, lane: u32, lanes: u32) -> vec2<f32> {{
    let k_ = pu({k}u);
    let xb = pu(9u) + (tok / pu(1u)) * pu({}u) + (tok % pu(1u)) * pu({}u);
    let wb = pu({p}u) + h * k_;
    var d = 0.0;
    var ss = 0.0;
    for (var r = lane; r < k_; r += lanes) {{
        let x = ld2(xb + r * {sx});
        ss += x * x;
        d += x{weight} * ld{w}(wb + r);
    }}
    return vec2<f32>(d, ss);
}}
fn dt_sum(tok: u32, h: u32, sums: vec2<f32>) -> f32 {{
    let k_ = pu({k}u);
    let ss = sums.y;
    let v0 = sums.x{factor};
    let i = tok * pu(2u) + h;
    {body}
}}
fn ldt(tok: u32, h: u32) -> f32 {{ return dt_sum(tok, h, dt_part(tok, h, 0u, 1u)); }}
",
        source_index("dta", d.program.params),
        p + 2,
        p + 3,
        k = p + 1,
    ))
}

/// What every scan kernel reads a row (sequence, head, p) and a token with (parameters as
/// `ssm_scan` documents them): the row's indices and B/C group, where its state starts, where
/// its output at token `tok` goes, and that token's dt, dt·x, B/C offset and B/C norm factors.
/// x, B and C are read through their strides (4 words each from parameter 16); `ScanTok`'s `b`
/// and `c` are the element offsets of the token's B and C rows, read by `ldbn(b, n, f)` and
/// `ldcn(c, n, f)`.
/// The tile of a prompt matmul (`matmul_rows`, `matmul_coop`; their parameters) that
/// workgroup `g` computes, 64 weight rows wide: its batch `b`, first row of x `m0` and of w
/// `n0`, where x's and w's blocks start, how many rows of each it has (0 for a workgroup past
/// the last tile), and where output `(m, n)` of the tile goes.
const ROW_TILE_HELPERS: &str = "struct RowTile { b: u32, m0: u32, n0: u32, xbase: u32, wbase: u32, rows: u32, cols: u32 }
fn row_tile(g: u32) -> RowTile {
    let m_ = pu(0u);
    let n_ = pu(1u);
    let mt = pu(12u);
    let blocks = (m_ + mt - 1u) / mt;
    let tiles = (n_ + 63u) / 64u;
    let live = g < pu(9u) / n_ * tiles;
    let n0 = (g % tiles) * 64u;
    let m0 = ((g / tiles) % blocks) * mt;
    let b = g / (tiles * blocks);
    let b0 = b / pu(6u);
    let b1 = b % pu(6u);
    let wb = select(b0, 0u, pu(7u) == 1u) * pu(8u) + select(b1, 0u, pu(8u) == 1u);
    let rows = select(0u, min(mt, m_ - m0), live);
    let cols = select(0u, min(64u, n_ - n0), live);
    return RowTile(b, m0, n0, pu(3u) + (b * m_ + m0) * pu(15u), pu(4u) + (wb * n_ + n0) * pu(2u), rows, cols);
}
fn row_tile_out(t: RowTile, m: u32, n: u32) -> u32 {
    return (t.b * pu(0u) + t.m0 + m) * pu(10u) + pu(11u) + t.n0 + n;
}
";

/// The attention kernels' `emit(t, h, dd, sum, l)`: output dim `dd` of (query `t`, head `h`)
/// from its weighted sum and softmax denominator, through the gate where there is one (its
/// three strides follow the rope's words: it may be a strided view).
const ATTENTION_EMIT: &str = "fn emit(t: u32, h: u32, dd: u32, sum: f32, l: f32) {
    var o = 0.0;
    if (l > 0.0) {
        o = sum / l;
    }
    let oi = (t * pu(1u) + h) * pu(5u) + dd;
    if (pu(9u) == 1u) {
        let gs = 24u + select(0u, pu(22u), pu(20u) == 1u);
        let gi = t * pu(gs) + h * pu(gs + 1u) + dd * pu(gs + 2u);
        o = o / (1.0 + exp(-ldgate(pu(14u) + gi)));
    }
    st(pu(15u) + oi, o);
}
";

const SCAN_HELPERS: &str = "struct ScanRow { s: u32, h: u32, p: u32, grp: u32 }
fn scan_row(i: u32) -> ScanRow {
    let sh = i / pu(3u);
    let h = sh % pu(2u);
    return ScanRow(sh / pu(2u), h, i % pu(3u), h / (pu(2u) / pu(5u)));
}
fn state_base(r: ScanRow) -> u32 { return ((state_row(r.s) * pu(2u) + r.h) * pu(3u) + r.p) * pu(4u); }
fn scan_out(tok: u32, r: ScanRow) -> u32 { return (tok * pu(2u) + r.h) * pu(3u) + r.p; }
fn strided(at: u32, a: u32, b: u32, c: u32, d: u32) -> u32 {
    return a * pu(at) + b * pu(at + 1u) + c * pu(at + 2u) + d * pu(at + 3u);
}
struct ScanTok { dt: f32, xd: f32, b: u32, c: u32, f: vec2<f32> }
fn scan_tok(tok: u32, r: ScanRow) -> ScanTok { return scan_tok_dt(tok, r, ldt(tok, r.h)); }
fn scan_tok_dt(tok: u32, r: ScanRow, dt: f32) -> ScanTok {
    let s = tok / pu(1u);
    let t = tok % pu(1u);
    let b = pu(11u) + strided(20u, s, t, r.grp, 0u);
    let c = pu(12u) + strided(24u, s, t, r.grp, 0u);
    return ScanTok(dt, ld1(pu(8u) + strided(16u, s, t, r.h, r.p)) * dt, b, c, bc_norms(b, c));
}
";

/// The scans' `bc_norms(b, c)`, the norm factors of the B and C rows at element offsets `b` and
/// `c` (1 without `Spec::bc_norm`), and `ldbn(b, n, f)`, `ldcn(c, n, f)`: element `n` of such a
/// row (through the last stride) times its factor and its norm's weight.
fn bc_loaders(spec: &Spec) -> Result<String, ShaderError> {
    let Some(BcNormSpec { kind, weights }) = spec.bc_norm else {
        return Ok(
            "fn bc_norms(b: u32, c: u32) -> vec2<f32> { return vec2<f32>(1.0, 1.0); }
fn ldbn(b: u32, n: u32, f: f32) -> f32 { return ld4(b + n * pu(23u)); }
fn ldcn(c: u32, n: u32, f: f32) -> f32 { return ld5(c + n * pu(27u)); }
"
            .into(),
        );
    };
    let factor = norm_factor(spec, kind, "pu(4u)")?;
    let mut out = format!(
        "fn bc_factor(ss: f32) -> f32 {{ return {factor}; }}
fn bc_norms(b: u32, c: u32) -> vec2<f32> {{
    var sb = 0.0;
    var sc = 0.0;
    for (var n = 0u; n < pu(4u); n++) {{
        let vb = ld4(b + n * pu(23u));
        let vc = ld5(c + n * pu(27u));
        sb += vb * vb;
        sc += vc * vc;
    }}
    return vec2<f32>(bc_factor(sb), bc_factor(sc));
}}
"
    );
    for (j, (name, w)) in ["ldbn", "ldcn"].iter().zip(weights).enumerate() {
        let weight = norm_weight(spec, w, "n")?;
        let _ = writeln!(
            out,
            "fn {name}(row: u32, n: u32, f: f32) -> f32 {{ return ld{}(row + n * pu({}u)) * f{weight}; }}",
            4 + j,
            23 + 4 * j
        );
    }
    Ok(out)
}

fn err(kernel: Kernel, detail: impl Into<String>) -> ShaderError {
    ShaderError {
        kernel: kernel.name(),
        detail: detail.into(),
    }
}

/// The complete WGSL for a spec.
pub fn generate(spec: &Spec) -> Result<String, ShaderError> {
    let k = spec.kernel;
    let mut out = String::new();
    if k.needs_cooperative_matrices() {
        out.push_str("enable f16;\nenable wgpu_cooperative_matrix;\n");
    }
    out.push_str("@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 64>;\n");
    out.push_str("@group(0) @binding(1) var<storage, read_write> arena: array<vec4<u32>>;\n");
    for b in 0..spec.externals {
        let decl = match spec.store {
            Some((sb, DType::F32)) if sb == b => "var<storage, read_write> e{b}: array<u32>",
            Some((sb, _)) if sb == b => "var<storage, read_write> e{b}: array<atomic<u32>>",
            _ if spec.puts.iter().any(|(pb, _)| *pb == b) => {
                "var<storage, read_write> e{b}: array<u32>"
            }
            _ => "var<storage, read> e{b}: array<u32>",
        };
        let _ = writeln!(
            out,
            "@group(0) @binding({}) {};",
            2 + b,
            decl.replace("{b}", &b.to_string())
        );
    }
    out.push_str(HELPERS);
    if k == Kernel::TopK || spec.top_k.is_some() {
        out.push_str(TOP_K_ORDER);
    }
    // byte helpers for external bindings read through quantized or f16 decoders
    let mut helped = vec![];
    for s in &spec.sources {
        if let Home::External(b) = s.home
            && (s.dtype.is_quantized())
            && !helped.contains(&b)
        {
            if spec.store.is_some_and(|(sb, _)| sb == b) {
                return Err(err(
                    k,
                    "a quantized source cannot share the destination binding",
                ));
            }
            helped.push(b);
            out.push_str(&byte_helpers(b));
        }
    }
    for (i, s) in spec.sources.iter().enumerate() {
        if let Some(t) = spec.top_k.filter(|t| t.src == i) {
            if (s.home, s.dtype) != (Home::Arena, DType::F32) || t.k == 0 || t.k > t.row {
                return Err(err(
                    k,
                    format!("top {} ids of rows of {} {}", t.k, t.row, s.dtype),
                ));
            }
            out.push_str(&top_k_loader(&t));
            continue;
        }
        match (s.home, s.dtype) {
            (Home::Arena, DType::I32) => {
                let _ = writeln!(
                    out,
                    "fn ldi{i}(i: u32) -> i32 {{ return bitcast<i32>(aw(i)); }}"
                );
                let _ = writeln!(out, "fn ld{i}(i: u32) -> f32 {{ return f32(ldi{i}(i)); }}");
            }
            (Home::Arena, DType::F32) if i == 0 && spec.x_norm.is_some() => {
                out.push_str(&x_norm_loader(spec)?);
            }
            (Home::Arena, DType::F32) if i == 0 && spec.x_prog.is_some() => {
                out.push_str(&x_prog_loader(spec)?);
            }
            (Home::Arena, DType::F32) => {
                let _ = writeln!(
                    out,
                    "fn ld{i}(i: u32) -> f32 {{ return bitcast<f32>(aw(i)); }}"
                );
            }
            (Home::Arena, d) => {
                return Err(err(k, format!("arena sources are F32 or I32, not {d}")));
            }
            (Home::External(b), DType::I32) => {
                let _ = writeln!(
                    out,
                    "fn ldi{i}(i: u32) -> i32 {{ return bitcast<i32>(e{b}[i]); }}"
                );
                let _ = writeln!(out, "fn ld{i}(i: u32) -> f32 {{ return f32(ldi{i}(i)); }}");
            }
            (Home::External(b), d) => {
                // an F32 destination is a plain read-write array, which a source may read too
                let f32_store = spec.store == Some((b, DType::F32)) && d == DType::F32;
                if spec.store.is_some_and(|(sb, _)| sb == b) && !f32_store {
                    return Err(err(
                        k,
                        "a source cannot be read from the destination binding",
                    ));
                }
                let _ = writeln!(out, "fn ld{i}(i: u32) -> f32 {{ {} }}", decode_body(b, d));
            }
        }
    }
    for (name, src) in &spec.aliases {
        if *src >= spec.sources.len() {
            return Err(err(
                k,
                format!("alias {name} names source {src} of {}", spec.sources.len()),
            ));
        }
        let _ = writeln!(out, "fn {name}(i: u32) -> f32 {{ return ld{src}(i); }}");
    }
    // kernels that read optional sources see harmless stand-ins when those are absent
    for name in ["ldmask", "ldgate", "ldkn", "ldvn", "ldidx", "ldpos"] {
        if matches!(
            k,
            Kernel::Attention | Kernel::AttentionRows | Kernel::SoftMax
        ) && !spec.aliases.iter().any(|(n, _)| *n == name)
        {
            let _ = writeln!(out, "fn {name}(i: u32) -> f32 {{ return 0.0; }}");
        }
    }
    out.push_str(&puts(spec)?);
    if let Some((b, dtype)) = spec.store {
        let body = match dtype {
            DType::F32 => format!("e{b}[i] = bitcast<u32>(v);"),
            DType::F16 => format!(
                "let h = pack2x16float(vec2<f32>(v, 0.0)) & 0xffffu; let sh = (i & 1u) * 16u; \
                 atomicAnd(&e{b}[i >> 1u], ~(0xffffu << sh)); atomicOr(&e{b}[i >> 1u], h << sh);"
            ),
            DType::BF16 => format!(
                "let u = bitcast<u32>(v); let h = ((u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u) & 0xffffu; \
                 let sh = (i & 1u) * 16u; atomicAnd(&e{b}[i >> 1u], ~(0xffffu << sh)); atomicOr(&e{b}[i >> 1u], h << sh);"
            ),
            d => return Err(err(k, format!("caches are F32, F16 or BF16, not {d}"))),
        };
        let _ = writeln!(out, "fn store_dst(i: u32, v: f32) {{ {body} }}");
    } else if k == Kernel::StoreRows {
        return Err(err(k, "store_rows needs a destination"));
    }
    // scans: the state row of sequence `s`, and where the new state goes: its cache row when
    // the op has slots (source 6), else the output after `y` (parameter words per kernel: the
    // state's offset, the new state's, the slots')
    let words = match k {
        k if k.is_scan() => Some((7, 14, 15)),
        k if k.is_delta() => Some((6, 13, 14)),
        _ => None,
    };
    if let Some((st, new, slots)) = words {
        let _ = if spec.own_sources() == 7 {
            write!(
                out,
                "fn state_row(s: u32) -> u32 {{ return u32(ldi6(pu({slots}u) + s)); }}\n\
                 fn state_put(i: u32, v: f32) {{ store_dst(pu({st}u) + i, v); }}\n"
            )
        } else {
            write!(
                out,
                "fn state_row(s: u32) -> u32 {{ return s; }}\n\
                 fn state_put(i: u32, v: f32) {{ st(pu({new}u) + i, v); }}\n"
            )
        };
    }
    // matmuls add a residual (source 2, param 14) when the matmul_add pass gave them one
    if matches!(k, Kernel::MatMul | Kernel::MatMulRows | Kernel::MatMulCoop) {
        out.push_str(if spec.own_sources() > 2 {
            "fn residual(i: u32) -> f32 { return ld2(pu(14u) + i); }\n"
        } else {
            "fn residual(i: u32) -> f32 { return 0.0; }\n"
        });
    }
    if spec.x_norm.is_none() && spec.x_prog.is_none() && k.is_matvec() {
        out.push_str("fn prologue(xrow: u32, lid: u32) {}\n");
    }
    if spec.x_prog.is_some() && (k != Kernel::MatMul || spec.sources[0].home != Home::Arena) {
        return Err(err(k, "only matmul computes its row (read from the arena)"));
    }
    // mat-vecs: a row dot product per weight source (one for `matmul`, one per weight for
    // `matmul_cat`, which picks the weight by output column)
    if k.is_matvec() {
        // (the experts' pair: sources x, w_a, ids, w_b)
        let weights: Vec<usize> = match k {
            Kernel::MatMul | Kernel::MatMulId => vec![1],
            Kernel::MatMulPair => vec![1, 2],
            Kernel::MatMulIdPair => vec![1, 3],
            _ => (1..spec.own_sources()).collect(),
        };
        if weights.is_empty() || weights.iter().any(|&j| j >= spec.sources.len()) {
            return Err(err(k, "missing the weight source"));
        }
        out.push_str(QUAD_HELPERS);
        // x's quads as one 16-byte load (from a row that starts on a quad); x_norm's loader
        // defines its own, and x_prog's when it stages the row
        let plain = spec.sources[0].home == Home::Arena && spec.sources[0].dtype == DType::F32;
        let staged_prog = spec.x_prog.as_ref().is_some_and(|x| x.staged > 0);
        if (spec.x_norm.is_none() || !plain) && !staged_prog {
            out.push_str(if plain && spec.x_prog.is_none() {
                "fn x4a(i: u32) -> vec4<f32> { return bitcast<vec4<f32>>(arena[i >> 2u]); }\n"
            } else {
                "fn x4a(i: u32) -> vec4<f32> { return x4(i); }\n"
            });
        }
        out.push_str(&group_sum(spec)?);
        for &j in &weights {
            let (home, dtype) = (spec.sources[j].home, spec.sources[j].dtype);
            out.push_str(&quad_dot(j, home, dtype, spec.matvec_blocks));
        }
        if k == Kernel::MatMulCat {
            out.push_str(
                "fn row_dot_of(j: u32, wrow: u32, xrow: u32, lane: u32) -> f32 {\n    switch j {\n",
            );
            for j in weights {
                let _ = writeln!(
                    out,
                    "        case {j}u: {{ return row_dot{j}(wrow, xrow, lane); }}"
                );
            }
            out.push_str("        default: { return 0.0; }\n    }\n}\n");
        }
    }
    out.push_str(&epilogue(spec)?);
    // the tiled experts' products: one kernel, the pair a switch (its second weight source 3)
    match k {
        Kernel::MatMulIdRows => out.push_str(
            "const PAIR: bool = false;\n\
             fn ldb(i: u32) -> f32 { return 0.0; }\n\
             fn tile_out(i: u32, a: f32, b: f32) -> f32 { return epi(i, a); }\n",
        ),
        Kernel::MatMulIdPairRows if spec.sources.len() > 3 => out.push_str(
            "const PAIR: bool = true;\n\
             fn ldb(i: u32) -> f32 { return ld3(i); }\n\
             fn tile_out(i: u32, a: f32, b: f32) -> f32 { return epi2(i, a, b); }\n",
        ),
        Kernel::MatMulIdPairRows => return Err(err(k, "missing the second weight")),
        _ => {}
    }
    if k == Kernel::GatedDeltaNet {
        out.push_str("const T: u32 = 32u;\n");
        out.push_str(&group_sum(spec)?);
    }
    if k.is_delta() {
        out.push_str(&qk_loaders(spec)?);
        out.push_str(&gate_loaders(spec)?);
        if k != Kernel::GatedDeltaNet {
            let _ = write!(
                out,
                "const C: u32 = {}u;\n\
                 fn ldws(i: u32) -> f32 {{ return bitcast<f32>(aw(i)); }}\n",
                crate::DELTA_CHUNK
            );
        }
    } else if spec.gates.is_some() {
        return Err(err(k, "only gated_delta_net computes gates"));
    }
    if matches!(k, Kernel::MatMulRows | Kernel::MatMulCoop) {
        out.push_str(ROW_TILE_HELPERS);
    }
    if matches!(k, Kernel::Attention | Kernel::AttentionRows) {
        out.push_str(ATTENTION_EMIT);
    }
    if k.is_scan() {
        out.push_str(SCAN_HELPERS);
        out.push_str(&dt_loader(spec)?);
        out.push_str(&bc_loaders(spec)?);
        // (16 lanes a row: two states a lane for Mamba1's, eight up to 128)
        let states = match k {
            Kernel::SsmScanLanes => Some(2),
            Kernel::SsmScanLanesWide => Some(8),
            _ => None,
        };
        if let Some(sr) = states {
            let _ = writeln!(out, "const SR: u32 = {sr}u;");
            out.push_str(&lane_sum(spec)?);
        }
    } else if spec.scan_dt.is_some() || spec.bc_norm.is_some() {
        return Err(err(k, "only the scans compute dt, or normalise B and C"));
    }
    let mut body = k.source().to_string();
    match k {
        Kernel::Elementwise | Kernel::FusedNorm => {
            let p = spec
                .program
                .as_ref()
                .ok_or_else(|| err(k, "missing program"))?;
            if p.code.is_empty() {
                return Err(err(k, "empty program"));
            }
            let head = k == Kernel::FusedNorm;
            let load = |k: u8| {
                let scale = if head && k == 0 { " * f" } else { "" };
                format!("ld{k}(lda({k}u, i0, i1, i2, i3)){scale}")
            };
            body = body
                .replace("{{BODY}}", &program_body(p, load))
                .replace("{{NSRC}}", &spec.sources.len().to_string());
        }
        _ => {}
    }
    out.push_str(&body);
    Ok(out)
}

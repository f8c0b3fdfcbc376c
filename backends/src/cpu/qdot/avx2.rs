//! The block dot products with AVX2: 32 weights meet 32 activations in one `maddubs` (u8 × i8
//! pairs to i16) and one `madd` (to i32, times the sub-block scale for the K-quants). Chosen at
//! run time when the CPU has AVX2, FMA and F16C.

use super::{Kernel, Q8Block, Q8KBlock, Rows4};
use std::arch::x86_64::*;
use weft_graph::DType;

/// Whether this CPU runs the kernels of this file (AVX2, FMA and F16C; VNNI where it has it).
pub(super) fn supported() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// A one-row product of a 32-block format.
type Row = fn(&[u8], &[Q8Block]) -> f32;

/// How the 32-block formats' kernels multiply bytes: `vpmaddubsw` + `vpmaddwd` (AVX2), or one
/// `vpdpbusd` on 8 lanes, as AVX-VNNI has it (Alder Lake, Sapphire Rapids) or as AVX-512 VNNI
/// with VL has it (Ice Lake, Zen 4: the same instruction in its EVEX form).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vnni {
    No,
    Avx,
    Avx512,
}

impl Vnni {
    /// The form this CPU runs, VEX before EVEX where it has both.
    pub fn best() -> Vnni {
        [Vnni::Avx, Vnni::Avx512]
            .into_iter()
            .find(|v| v.available())
            .unwrap_or(Vnni::No)
    }

    pub fn available(self) -> bool {
        match self {
            Vnni::No => true,
            Vnni::Avx => is_x86_feature_detected!("avxvnni"),
            Vnni::Avx512 => {
                is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
            }
        }
    }
}

pub fn kernel(dtype: DType) -> Option<Kernel> {
    Some(match kernel_with(dtype, Vnni::best())? {
        // decode's K-quant rows in 512-bit registers where the CPU has them
        Kernel::K(one, four) => Kernel::K(super::k_zmm::one_row(dtype).unwrap_or(one), four),
        k => k,
    })
}

/// [`kernel`], with the products of the 32-block formats in the given form (tests run each
/// form the CPU has); `None` where the CPU lacks it.
pub fn kernel_with(dtype: DType, vnni: Vnni) -> Option<Kernel> {
    if !supported() || !vnni.available() {
        return None;
    }
    // the forms in the order of `Vnni`'s variants
    let forms = [plain::kernels, vnni::kernels, vnni512::kernels];
    if let Some((one, four)) = forms[vnni as usize](dtype) {
        return Some(Kernel::B32(one, Some(four)));
    }
    Some(match dtype {
        DType::Q4K => Kernel::K(q4_k, Some(q4_k_x4)),
        DType::Q5K => Kernel::K(q5_k, Some(q5_k_x4)),
        DType::Q6K => Kernel::K(q6_k, Some(q6_k_x4)),
        _ => return None,
    })
}

/// Safe entry points to the `#[target_feature]` kernels, which `kernel` and `f16_kernel` hand
/// out only after they detected the features.
macro_rules! safe_entries {
    ($($name:ident => $inner:ident($a:ty) -> $ret:ty;)*) => {$(
        fn $name(w: &[u8], a: $a) -> $ret {
            // SAFETY: `kernel_with` or `f16_kernel` checked AVX2, FMA and F16C.
            unsafe { $inner(w, a) }
        }
    )*};
}

safe_entries! {
    q4_k => q4_k_avx2(&[Q8KBlock]) -> f32;
    q5_k => q5_k_avx2(&[Q8KBlock]) -> f32;
    q6_k => q6_k_avx2(&[Q8KBlock]) -> f32;
    q4_k_x4 => q4_k_x4_avx2([&[Q8KBlock]; 4]) -> [f32; 4];
    q5_k_x4 => q5_k_x4_avx2([&[Q8KBlock]; 4]) -> [f32; 4];
    q6_k_x4 => q6_k_x4_avx2([&[Q8KBlock]; 4]) -> [f32; 4];
}

/// The f16 at byte `i` of `b`, converted by F16C. The bits pass through a general register
/// (`black_box`): loaded straight into a vector register, LLVM merges the 16 bits into whatever
/// register it picks (`vpinsrw`); in the Q4_K mat-vec that was the accumulator's, which
/// chained each super-block's scale to the sums of the one before.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    let bits = std::hint::black_box(u16::from_le_bytes([b[i], b[i + 1]]) as u32);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The f16 pair at bytes `i..i + 4` of `b` in lanes 0 and 1, converted by F16C from one
/// 32-bit load (both lanes used, so nothing merges into a register, as [`f16_at`] says).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_pair(b: &[u8], i: usize) -> __m128 {
    let bits = u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load32(b: &[u8]) -> __m256i {
    assert!(b.len() >= 32);
    // SAFETY: 32 readable bytes, checked above; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn load32_i8(b: &[i8]) -> __m256i {
    assert!(b.len() >= 32);
    // SAFETY: as `load32`.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// 16 bytes of nibbles as 32 bytes: low nibbles first, then high ones.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn nibbles(b: &[u8]) -> __m256i {
    assert!(b.len() >= 16);
    // SAFETY: 16 readable bytes, checked above.
    let v = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
    _mm256_and_si256(both, _mm256_set1_epi8(0xF))
}

/// The 32 bits of the little-endian word at `b` as 32 bytes: byte `j` is 0xFF where bit `j` is
/// set, 0 elsewhere (a Q5_0/Q5_1 block's fifth bits, in element order).
#[target_feature(enable = "avx2,fma,f16c")]
fn bit_bytes(b: &[u8]) -> __m256i {
    let word = u32::from_le_bytes(b[..4].try_into().unwrap_or_default());
    // byte j of the shuffled word holds the word's byte j / 8; the mask picks bit j % 8 of it
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(word as i32),
        _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
}

/// A Q5_0 block's 32 values `q − 16` as i8: the nibble, with 0xF0 (−16) where the fifth bit
/// is clear.
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_values(b: &[u8]) -> __m256i {
    let high = _mm256_andnot_si256(bit_bytes(&b[2..]), _mm256_set1_epi8(0xF0u8 as i8));
    _mm256_or_si256(nibbles(&b[6..]), high)
}

/// The 32 unsigned values (0..32) of a Q5_0/Q5_1 block `b` whose fifth bits start at byte
/// `qh_at` and whose nibbles at `qs_at` (Q5_1: 4 and 8; Q5_0: 2 and 6, its values these
/// minus 16).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q5_values(b: &[u8], qh_at: usize, qs_at: usize) -> __m256i {
    let high = _mm256_and_si256(bit_bytes(&b[qh_at..]), _mm256_set1_epi8(0x10));
    _mm256_or_si256(nibbles(&b[qs_at..]), high)
}

/// Σ of u8 × i8 products in 8 i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// How far ahead of the block it reads a one-row kernel asks for its weights, in bytes. The
/// AVX2 forms of this file (decode's mat-vecs where the CPU has neither AVX-512 BW nor VNNI)
/// always ask: on a 2-core Zen 3 the hardware prefetchers alone left the cores waiting on the
/// weights (llama-1.1b tg16 with against without, alternating, Q4_K_M 36.0–37.2 against
/// 26.5–29.5 tok/s, Q8_0 21.7–23.8 against 16.4–17.7; 1536 to 9216 bytes ahead all did about
/// as well; qwen3next-1b Q4_K_M tg32 118–130 against 94–101). The VNNI forms and `k_zmm`'s
/// rows ask where [`decode_prefetch`] says. (`half_dot`'s 16-lane rows ask as far ahead.) On
/// the Emerald Rapids of [`decode_prefetch`], 4 KiB ahead beat 2 KiB by 2–5% (llama-1.1b
/// Q4_K_M and Q8_0 tg32, alternating), 1 KiB lost 8–12% and 8 KiB was level with 4.
pub(super) const PREFETCH: usize = 4096;

/// Whether the VNNI forms' and `k_zmm`'s one-row kernels ask for their weights [`PREFETCH`]
/// bytes ahead: on Intel CPUs, not on AMD's, unless `WEFT_CPU_PREFETCH` (`0` or `1`) says
/// otherwise. On a 2-core Emerald Rapids the hardware prefetchers alone left decode's
/// quantized rows at 8 GB/s a core: tg32 with against without, alternating, llama-1.1b Q8_0
/// 20.9 against 13.6–14.4 tok/s and Q4_K_M 35.6–36.2 against 24.4–25.5, mamba2-370m Q8_0
/// 48.2–48.6 against 33.9–35.1, qwen3next-1b Q4_K_M 128–143 against 94–101 (2 KiB ahead). On
/// a 2-core Zen 4 they did better alone (`dd9b123`, 4 KiB ahead), and the Zen 5 tables were
/// taken without; neither machine was at hand to measure again.
pub(super) fn decode_prefetch() -> bool {
    static AHEAD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AHEAD.get_or_init(|| match std::env::var("WEFT_CPU_PREFETCH").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => intel(),
    })
}

/// Whether the CPU's vendor string is Intel's.
fn intel() -> bool {
    let id = __cpuid(0);
    [id.ebx, id.edx, id.ecx] == [*b"Genu", *b"ineI", *b"ntel"].map(u32::from_le_bytes)
}

/// Asks for the `lines` cache lines from [`PREFETCH`] bytes past the start of `b` (a hint:
/// it never faults, whatever the address, so past the end of the weights is harmless).
#[inline(always)]
pub(super) fn prefetch_ahead(b: &[u8], lines: usize) {
    let p = b.as_ptr().wrapping_add(PREFETCH);
    for l in 0..lines {
        // SAFETY: a prefetch reads nothing and never faults; SSE is part of x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * l).cast()) };
    }
}

/// `[d_w·d_y, m_w·s_y, ·, ·]` of a 32-block whose f16 scale (and, for Q4_1, min) opens it: one
/// 4-byte load, so no partial-register merge chains one block to the next.
#[target_feature(enable = "avx2,fma,f16c")]
fn block_scales(b: &[u8], y: &Q8Block) -> __m128 {
    let bits = u32::from_le_bytes(b[..4].try_into().unwrap_or_default());
    let w = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    _mm_mul_ps(w, _mm_set_ps(0.0, 0.0, y.s, y.d))
}

/// `Σ_blocks d_w·d_y·Σq·y (+ m_w·s_y for unsigned formats, which have mins)`, each block
/// decoded by `decode` as in [`sum_blocks32_x4`] and its products summed by `dot`; two
/// accumulators so consecutive blocks do not wait on one FMA chain. With `prefetch`, each
/// pair of blocks asks for the weights [`PREFETCH`] bytes ahead.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (and whatever `dot` and `decode` use).
#[inline(always)]
unsafe fn sum_blocks32(
    w: &[u8],
    a: &[Q8Block],
    block: usize,
    signed: bool,
    prefetch: bool,
    decode: impl Fn(&[u8]) -> (__m256i, __m256i),
    dot: impl Fn(__m256i, __m256i) -> __m256i,
) -> f32 {
    // SAFETY: the caller's contract.
    unsafe {
        let q = |b: &[u8], y: &Q8Block| {
            let (u, sign) = decode(b);
            let act = load32_i8(&y.qs);
            dot(
                u,
                if signed {
                    _mm256_sign_epi8(act, sign)
                } else {
                    act
                },
            )
        };
        let (mut acc0, mut acc1, mut m) =
            (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm_setzero_ps());
        let pairs = w.chunks_exact(2 * block).zip(a.chunks_exact(2));
        for (bb, ys) in pairs {
            if prefetch {
                prefetch_ahead(bb, bb.len().div_ceil(64));
            }
            let (b0, b1) = bb.split_at(block);
            let (s0, s1) = (block_scales(b0, &ys[0]), block_scales(b1, &ys[1]));
            let p0 = _mm256_cvtepi32_ps(q(b0, &ys[0]));
            let p1 = _mm256_cvtepi32_ps(q(b1, &ys[1]));
            acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(s0), p0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_broadcastss_ps(s1), p1, acc1);
            m = _mm_add_ps(m, _mm_add_ps(s0, s1));
        }
        let done = a.len().min(w.len() / block) / 2 * 2;
        if let (Some(b), Some(y)) = (w.get(done * block..(done + 1) * block), a.get(done)) {
            let s = block_scales(b, y);
            let p = _mm256_cvtepi32_ps(q(b, y));
            acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(s), p, acc0);
            m = _mm_add_ps(m, s);
        }
        let total = hsum(_mm256_add_ps(acc0, acc1));
        if signed {
            total
        } else {
            total + _mm_cvtss_f32(_mm_movehdup_ps(m))
        }
    }
}

/// [`sum_blocks32`] for four activation rows at once (prompt processing): each weight block is
/// decoded once, by `decode`, into the unsigned operand of the u8 × i8 product `dot` and the
/// sign source that `signed` formats move onto the activations. Inlined into entry points
/// compiled for AVX2 (with `dot_u8_i8`) or AVX-VNNI as well (one `vpdpbusd` for the product).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (and whatever `dot` and `decode` use).
#[inline(always)]
unsafe fn sum_blocks32_x4(
    w: &[u8],
    a: [&[Q8Block]; 4],
    block: usize,
    signed: bool,
    decode: impl Fn(&[u8]) -> (__m256i, __m256i),
    dot: impl Fn(__m256i, __m256i) -> __m256i,
) -> [f32; 4] {
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut m = [_mm_setzero_ps(); 4];
        for (bi, b) in w.chunks_exact(block).enumerate() {
            let bits = u32::from_le_bytes(b[..4].try_into().unwrap_or_default());
            let ws = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
            let (u, sign) = decode(b);
            for r in 0..4 {
                let y = &a[r][bi];
                let act = load32_i8(&y.qs);
                let act = if signed {
                    _mm256_sign_epi8(act, sign)
                } else {
                    act
                };
                let p = _mm256_cvtepi32_ps(dot(u, act));
                let s = _mm_mul_ps(ws, _mm_set_ps(0.0, 0.0, y.s, y.d));
                acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(s), p, acc[r]);
                m[r] = _mm_add_ps(m[r], s);
            }
        }
        let mut out = [0.0f32; 4];
        for r in 0..4 {
            out[r] = hsum(acc[r]);
            if !signed {
                out[r] += _mm_cvtss_f32(_mm_movehdup_ps(m[r]));
            }
        }
        out
    }
}

/// `Σ u·s` of u8 × i8 bytes in 8 i32 lanes with AVX-VNNI's `vpdpbusd` (no i16 step).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn dot_u8_i8_vnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
}

/// [`dot_u8_i8_vnni`] in AVX-512 VNNI's EVEX form, for CPUs without AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
fn dot_u8_i8_vnni512(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

/// The one- and four-row kernels of the 32-block formats, each form of the byte product in a
/// module of its own (`plain`, `vnni`, `vnni512`): the features the form needs, its product and
/// whether its one-row kernels ask for their weights ahead ([`PREFETCH`]); per format, its
/// block bytes, whether its values are signed and how a block decodes.
macro_rules! b32_forms {
    ($($form:ident: $features:literal, $dot:ident, $prefetch:expr;)*) => {$(
        mod $form {
            use super::*;

            b32_formats! {
                $features, $dot, $prefetch;
                Q8_0 => q8_0, q8_0_x4: 34, true, |b| {
                    let q = load32(&b[2..]);
                    (_mm256_sign_epi8(q, q), q)
                };
                Q4_0 => q4_0, q4_0_x4: 18, true, |b| {
                    let q = _mm256_sub_epi8(nibbles(&b[2..]), _mm256_set1_epi8(8));
                    (_mm256_sign_epi8(q, q), q)
                };
                Q4_1 => q4_1, q4_1_x4: 20, false, |b| (nibbles(&b[4..]), _mm256_setzero_si256());
                Q5_0 => q5_0, q5_0_x4: 22, true, |b| {
                    let q = q5_0_values(b);
                    (_mm256_sign_epi8(q, q), q)
                };
                Q5_1 => q5_1, q5_1_x4: 24, false, |b| (q5_values(b, 4, 8), _mm256_setzero_si256());
            }
        }
    )*};
}

/// One form's kernels (see [`b32_forms`]): the `#[target_feature]` functions in `compiled`,
/// and safe entry points beside them, which `kernel_with` hands out only where the CPU has
/// the form's features.
macro_rules! b32_formats {
    ($features:literal, $dot:ident, $prefetch:expr;
     $($dtype:ident => $one:ident, $four:ident: $block:expr, $signed:expr, |$b:ident| $decode:expr;)*) => {
        mod compiled {
            use super::*;
            $(
                #[target_feature(enable = $features)]
                pub(super) fn $one(w: &[u8], a: &[Q8Block]) -> f32 {
                    // SAFETY: the features it needs are enabled here.
                    unsafe {
                        sum_blocks32(w, a, $block, $signed, $prefetch, |$b| $decode, |u, s| {
                            $dot(u, s)
                        })
                    }
                }

                #[target_feature(enable = $features)]
                pub(super) fn $four(w: &[u8], a: [&[Q8Block]; 4]) -> [f32; 4] {
                    // SAFETY: the features it needs are enabled here.
                    unsafe {
                        sum_blocks32_x4(w, a, $block, $signed, |$b| $decode, |u, s| $dot(u, s))
                    }
                }
            )*
        }
        $(
            pub(super) fn $one(w: &[u8], a: &[Q8Block]) -> f32 {
                // SAFETY: `kernel_with` checked the form's features before handing it out.
                unsafe { compiled::$one(w, a) }
            }

            pub(super) fn $four(w: &[u8], a: [&[Q8Block]; 4]) -> [f32; 4] {
                // SAFETY: as above.
                unsafe { compiled::$four(w, a) }
            }
        )*

        /// This form's one- and four-row kernels of `dtype`, if it is a 32-element format.
        pub(super) fn kernels(dtype: DType) -> Option<(Row, Rows4)> {
            match dtype {
                $(DType::$dtype => Some(($one, $four)),)*
                _ => None,
            }
        }
    };
}

b32_forms! {
    plain: "avx2,fma,f16c", dot_u8_i8, true;
    vnni: "avx2,fma,f16c,avxvnni", dot_u8_i8_vnni, decode_prefetch();
    vnni512: "avx2,fma,f16c,avx512vnni,avx512vl", dot_u8_i8_vnni512, decode_prefetch();
}

/// The 8 six-bit scales (bytes 0..8) and mins (bytes 8..16) of a Q4_K/Q5_K super-block's
/// packed `scales` (bytes 4..16 of the block), unpacked with word operations: sub-blocks 0..4
/// keep their low 6 bits, 4..8 join a nibble with the top 2 bits of an earlier byte.
#[inline]
pub(super) fn k_scales(b: &[u8]) -> [u8; 16] {
    let w = |i: usize| u32::from_le_bytes([b[4 + i], b[5 + i], b[6 + i], b[7 + i]]);
    let (w0, w1, w2) = (w(0), w(4), w(8));
    let (low6, nib, top2) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    let sc = [w0 & low6, (w2 & nib) | (((w0 >> 6) & top2) << 4)];
    let mn = [w1 & low6, ((w2 >> 4) & nib) | (((w1 >> 6) & top2) << 4)];
    let mut out = [0u8; 16];
    for (o, v) in out.chunks_exact_mut(4).zip([sc[0], sc[1], mn[0], mn[1]]) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// [`k_scales`] in vector registers, from the 16 bytes at 4..20 of a Q4_K/Q5_K super-block
/// (its 12 scale bytes and 4 it ignores): the 8 scales then the 8 mins as bytes. The same word
/// operations, one 32-bit lane per word: lanes 0 and 1 keep their low 6 bits (scales and mins
/// of sub-blocks 0..4), and word 2's nibbles join the top 2 bits of words 0 and 1 (4..8).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k_scales_vec(b: &[u8]) -> __m128i {
    assert!(b.len() >= 20);
    // SAFETY: bytes 4..20 are readable, checked above.
    let v = unsafe { _mm_loadu_si128(b[4..].as_ptr().cast()) };
    let low = _mm_and_si128(v, _mm_set1_epi8(0x3f));
    let top = _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(v, 6), _mm_set1_epi8(0x03)), 4);
    // word 2 in lanes 0 and 1, its high nibbles moved down in lane 1
    let w2 = _mm_srlv_epi32(
        _mm_shuffle_epi32(v, 0b10_10_10_10),
        _mm_set_epi32(0, 0, 4, 0),
    );
    let high = _mm_or_si128(_mm_and_si128(w2, _mm_set1_epi8(0x0f)), top);
    // [scales 0..4, scales 4..8, mins 0..4, mins 4..8]
    _mm_unpacklo_epi32(low, high)
}

/// The unsigned values of the 64 elements `64·c ..` of a Q4_K/Q5_K super-block whose 4-bit
/// values are `qs`: sub-block `2c` from the low nibbles, `2c + 1` from the high ones, with
/// `FIFTH` (Q5_K) bit `j` of `qh`'s bytes as the fifth bit of sub-block `j`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k4_values<const FIFTH: bool>(qs: &[u8], qh: __m256i, c: usize) -> (__m256i, __m256i) {
    let mask = _mm256_set1_epi8(0xF);
    let bit = |j: usize| {
        if !FIFTH {
            return _mm256_setzero_si256();
        }
        let m = _mm256_set1_epi8(1 << j);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, m), m);
        _mm256_and_si256(set, _mm256_set1_epi8(16))
    };
    let q = load32(&qs[c * 32..]);
    let lo = _mm256_or_si256(_mm256_and_si256(q, mask), bit(2 * c));
    let hi = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi16(q, 4), mask),
        bit(2 * c + 1),
    );
    (lo, hi)
}

/// Adds one Q4_K/Q5_K super-block to the accumulators of `R` activation rows, decoding its
/// values once: `d·Σ scale·Σq·y` to `acc[r]` and `dmin·Σ min·Σy` to `mins[r]`. With `FIFTH`
/// (Q5_K), bit `j` of `qh`'s bytes is the fifth bit of the values of sub-block `j`. Each row's
/// sums are those of a one-row call.
#[target_feature(enable = "avx2,fma,f16c")]
fn k4_block<const R: usize, const FIFTH: bool>(
    b: &[u8],
    qs: &[u8],
    qh: __m256i,
    y: [&Q8KBlock; R],
    acc: &mut [__m256; R],
    mins: &mut [__m256; R],
) {
    let sm = k_scales_vec(b);
    // the scales as 16-bit words in both halves, each broadcast by a byte shuffle
    let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
    let word = |j: i8| _mm256_set1_epi16(i16::from_le_bytes([2 * j as u8, 2 * j as u8 + 1]));
    let mut sumi = [_mm256_setzero_si256(); R];
    for c in 0..4 {
        let (lo, hi) = k4_values::<FIFTH>(qs, qh, c);
        let (s_lo, s_hi) = (
            _mm256_shuffle_epi8(scales, word(2 * c as i8)),
            _mm256_shuffle_epi8(scales, word(2 * c as i8 + 1)),
        );
        for r in 0..R {
            let p_lo = _mm256_maddubs_epi16(lo, load32_i8(&y[r].qs[c * 64..]));
            let p_hi = _mm256_maddubs_epi16(hi, load32_i8(&y[r].qs[c * 64 + 32..]));
            let p_lo = _mm256_madd_epi16(p_lo, s_lo);
            let p_hi = _mm256_madd_epi16(p_hi, s_hi);
            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p_lo, p_hi));
        }
    }
    // Σ_j min_j · (bsums[2j] + bsums[2j + 1]): each min twice, against the pair's sums
    let pairs = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
        sm,
        _mm_set_epi8(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8),
    ));
    let dd = f16_pair(b, 0);
    let (d, dmin) = (_mm_cvtss_f32(dd), _mm_cvtss_f32(_mm_movehdup_ps(dd)));
    for r in 0..R {
        // SAFETY: `bsums` is 16 i16s, 32 readable bytes.
        let bsums = unsafe { _mm256_loadu_si256(y[r].bsums.as_ptr().cast()) };
        let msum = _mm256_madd_epi16(pairs, bsums);
        acc[r] = _mm256_fmadd_ps(
            _mm256_set1_ps(d * y[r].d),
            _mm256_cvtepi32_ps(sumi[r]),
            acc[r],
        );
        mins[r] = _mm256_fmadd_ps(
            _mm256_set1_ps(dmin * y[r].d),
            _mm256_cvtepi32_ps(msum),
            mins[r],
        );
    }
}

/// A Q4_K row (144-byte super-blocks, values from byte 16) or with `FIFTH` a Q5_K row (176
/// bytes, fifth bits from byte 16, values from 48) against `R` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
fn k4_rows<const R: usize, const FIFTH: bool>(w: &[u8], a: [&[Q8KBlock]; R]) -> [f32; R] {
    let (bytes, qs_at) = if FIFTH { (176, 48) } else { (144, 16) };
    let (mut acc, mut mins) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
    let nb = w.len() / bytes;
    for bi in 0..nb {
        let b = &w[bi * bytes..(bi + 1) * bytes];
        // (decode's one row; a prompt's rows reuse each block)
        if R == 1 {
            prefetch_ahead(b, bytes.div_ceil(64));
        }
        // (a loop, not `a.map`: LLVM left that a call per block, with its closure another)
        let mut y = [&a[0][bi]; R];
        for r in 1..R {
            y[r] = &a[r][bi];
        }
        let qh = if FIFTH {
            load32(&b[16..])
        } else {
            _mm256_setzero_si256()
        };
        k4_block::<R, FIFTH>(b, &b[qs_at..], qh, y, &mut acc, &mut mins);
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum(_mm256_sub_ps(acc[r], mins[r]));
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_avx2(w: &[u8], a: &[Q8KBlock]) -> f32 {
    k4_rows::<1, false>(w, [a])[0]
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_x4_avx2(w: &[u8], a: [&[Q8KBlock]; 4]) -> [f32; 4] {
    k4_rows::<4, false>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k_avx2(w: &[u8], a: &[Q8KBlock]) -> f32 {
    k4_rows::<1, true>(w, [a])[0]
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k_x4_avx2(w: &[u8], a: [&[Q8KBlock]; 4]) -> [f32; 4] {
    k4_rows::<4, true>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_avx2(w: &[u8], a: &[Q8KBlock]) -> f32 {
    q6_k_rows(w, [a])[0]
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_x4_avx2(w: &[u8], a: [&[Q8KBlock]; 4]) -> [f32; 4] {
    q6_k_rows(w, a)
}

/// The unsigned 6-bit values of half `n` (0 or 1) of a Q6_K super-block `b`: elements
/// `128·n + 32·t ..` in entry `t`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6_k_values(b: &[u8], n: usize) -> [__m256i; 4] {
    let m4 = _mm256_set1_epi8(0xF);
    let ql0 = load32(&b[n * 64..]);
    let ql1 = load32(&b[n * 64 + 32..]);
    let qh = load32(&b[128 + n * 32..]);
    [
        _mm256_or_si256(
            _mm256_and_si256(ql0, m4),
            _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)), 4),
        ),
        _mm256_or_si256(
            _mm256_and_si256(ql1, m4),
            _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C)), 2),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
            _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
            _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0xC0u8 as i8)), 2),
        ),
    ]
}

/// A Q6_K row against `R` activation rows, each super-block's values decoded once.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_rows<const R: usize>(w: &[u8], a: [&[Q8KBlock]; R]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for (bi, b) in w.chunks_exact(210).enumerate() {
        if R == 1 {
            prefetch_ahead(b, 4);
        }
        // SAFETY: 16 scale bytes at 192..208 are readable.
        let sc = unsafe { _mm_loadu_si128(b[192..208].as_ptr().cast()) };
        let mut sumi = [_mm256_setzero_si256(); R];
        for n in 0..2 {
            let q = q6_k_values(b, n);
            // this half's 8 scales as words in both 128-bit lanes; entry `t` (groups `2t`
            // and `2t + 1` of the half) takes word `2t` in the low lane, `2t + 1` in the high
            let half = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(if n == 0 {
                sc
            } else {
                _mm_srli_si128::<8>(sc)
            }));
            for (t, qt) in q.iter().enumerate() {
                let e = n * 128 + t * 32;
                let (lo, hi) = (4 * t as i8, 4 * t as i8 + 2);
                let pick = _mm256_set_m128i(
                    _mm_set1_epi16(i16::from_le_bytes([hi as u8, hi as u8 + 1])),
                    _mm_set1_epi16(i16::from_le_bytes([lo as u8, lo as u8 + 1])),
                );
                let scales = _mm256_shuffle_epi8(half, pick);
                for r in 0..R {
                    let p = _mm256_maddubs_epi16(*qt, load32_i8(&a[r][bi].qs[e..]));
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, scales));
                }
            }
        }
        // the q − 32 offset: 32 · Σ_g scale_g · Σy(group g), in the same lanes
        let scales = _mm256_cvtepi8_epi16(sc);
        let d = f16_at(b, 208);
        for r in 0..R {
            let y = &a[r][bi];
            // SAFETY: the 16 i16 `bsums` are readable.
            let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(scales, bsums), 5);
            let total = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[r], offset));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), total, acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{k_scales, k_scales_vec, supported};
    use weft_graph::quant::scale_min_k4;

    #[test]
    fn word_unpacked_scales_equal_the_reference() {
        let mut seed = 11u32;
        for _ in 0..200 {
            let mut b = [0u8; 16];
            for x in b.iter_mut() {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *x = (seed >> 24) as u8;
            }
            let sm = k_scales(&b);
            for j in 0..8 {
                assert_eq!((sm[j], sm[8 + j]), scale_min_k4(j, &b[4..16]), "{b:?} {j}");
            }
            if supported() {
                let mut b20 = [0u8; 20];
                b20[..16].copy_from_slice(&b);
                // SAFETY: the CPU has the features, checked above.
                let v = unsafe { k_scales_vec(&b20) };
                let mut got = [0u8; 16];
                // SAFETY: 16 writable bytes.
                unsafe { std::arch::x86_64::_mm_storeu_si128(got.as_mut_ptr().cast(), v) };
                assert_eq!(got, sm, "{b:?}");
            }
        }
    }
}

//! Quantized weight rows unpacked for the integer tiles of [`super::gemm`]: every format's
//! element `e` is `α·u + β`, with `u` an unsigned byte and `β` shared by 16 elements. Signed
//! formats move their values up to unsigned ones (`Q8_0`: `q + 128`, `β = −128·d`); offsets
//! and mins become `β`. The 32-element-block formats keep `α` in f32, one value per 32-bit
//! lane (four elements; [`Form::Float`]); the K-quants keep it as the super-block's `d` times
//! an integer scale per 16 elements ([`Form::Int`]), so their products add up in integers
//! across a super-block. A row is unpacked once per chunk of a prompt's matmul and
//! then meets every activation row, so the unpacking is paid once per many products.

use super::avx2::{f16_at, k_scales, k4_values, load32, nibbles, q5_values, q6_k_values};
use std::arch::x86_64::*;
use weft_graph::DType;

/// A weight row unpacked: `u` (`k` bytes); `scale`, `k` bytes holding `α` as `k / 4` f32
/// ([`Form::Float`]) or, in its first `k / 4` bytes, the integer scales as one i16 pair (the
/// same scale twice) per 16 elements ([`Form::Int`]); `d`, each super-block's scale (`k /
/// 256`, [`Form::Int`] only); `beta` (`k / 16`).
pub struct RowMut<'a> {
    pub u: &'a mut [u8],
    /// Q8_0's signed values where [`q8_0_signed`] unpacks it (else untouched).
    pub q: &'a mut [u8],
    pub scale: &'a mut [u8],
    pub d: &'a mut [f32],
    pub beta: &'a mut [f32],
}

/// How an unpacked row keeps `α`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// f32 per four elements.
    Float,
    /// The super-block's `d` times an i16 per 16 elements.
    Int,
}

/// Unpacks one weight row (its block bytes) into `out`, whose `u` is the row's length.
pub type Unpack = fn(&[u8], RowMut);

/// The unpacking of `dtype`'s rows.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C: the safe functions handed out run code compiled for them.
pub unsafe fn for_dtype(dtype: DType) -> Option<(Unpack, Form)> {
    Some(match dtype {
        DType::Q8_0 => (q8_0, Form::Float),
        DType::Q4_0 => (q4_0, Form::Float),
        DType::Q4_1 => (q4_1, Form::Float),
        DType::Q5_0 => (q5_0, Form::Float),
        DType::Q5_1 => (q5_1, Form::Float),
        DType::Q4K => (q4_k, Form::Int),
        DType::Q5K => (q5_k, Form::Int),
        DType::Q6K => (q6_k, Form::Int),
        _ => return None,
    })
}

macro_rules! entries {
    ($($name:ident => $inner:ident;)*) => {$(
        fn $name(w: &[u8], out: RowMut) {
            // SAFETY: `for_dtype` and `q8_0_signed`, whose callers vouch for AVX2, FMA and
            // F16C, are the only ways to these entries.
            unsafe { $inner(w, out) }
        }
    )*};
}

entries! {
    q8_0 => q8_0_avx2;
    q8_0_signed_entry => q8_0_signed_avx2;
    q4_0 => q4_0_avx2;
    q4_1 => q4_1_avx2;
    q5_0 => q5_0_avx2;
    q5_1 => q5_1_avx2;
    q4_k => q4_k_avx2;
    q5_k => q5_k_avx2;
    q6_k => q6_k_avx2;
}

#[target_feature(enable = "avx2,fma,f16c")]
fn store32(u: &mut [u8], v: __m256i) {
    assert!(u.len() >= 32);
    // SAFETY: 32 writable bytes, checked above.
    unsafe { _mm256_storeu_si256(u.as_mut_ptr().cast(), v) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn fill8(a: &mut [f32], v: f32) {
    assert!(a.len() >= 8);
    // SAFETY: 8 writable floats, checked above.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), _mm256_set1_ps(v)) }
}

/// Writes a super-block's 16 group scales and `β`s from i32 scales `sc` and f32 `β`s `beta`,
/// groups 0..8 in the first register of each, 8..16 in the second. Each scale is written as
/// an i16 pair in a 32-bit word.
#[target_feature(enable = "avx2,fma,f16c")]
fn group_scales(out: &mut RowMut, block: usize, sc: [__m256i; 2], b: [__m256; 2]) {
    let words: &mut [u32] = bytemuck::cast_slice_mut(out.scale);
    let (words, betas) = (
        &mut words[16 * block..16 * block + 16],
        &mut out.beta[16 * block..16 * block + 16],
    );
    // SAFETY: AVX2 is enabled here.
    let w = unsafe { [pair16(sc[0]), pair16(sc[1])] };
    // SAFETY: 16 words and 16 floats, sliced above.
    unsafe {
        _mm256_storeu_si256(words.as_mut_ptr().cast(), w[0]);
        _mm256_storeu_si256(words.as_mut_ptr().add(8).cast(), w[1]);
        _mm256_storeu_ps(betas.as_mut_ptr(), b[0]);
        _mm256_storeu_ps(betas.as_mut_ptr().add(8), b[1]);
    }
}

/// Lanes 0..8 of `v` each twice: lanes `j` to `2j` and `2j + 1` of 16 (two registers), for
/// values shared by the two groups of 16 in a sub-block of 32.
#[target_feature(enable = "avx2,fma,f16c")]
fn twice(v: __m256) -> [__m256; 2] {
    let lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    let hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
    [
        _mm256_permutevar8x32_ps(v, lo),
        _mm256_permutevar8x32_ps(v, hi),
    ]
}

/// Each lane's low 16 bits twice.
#[inline(always)]
unsafe fn pair16(v: __m256i) -> __m256i {
    // SAFETY: the caller's contract (AVX2)
    unsafe {
        _mm256_or_si256(
            _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF)),
            _mm256_slli_epi32(v, 16),
        )
    }
}

/// Eight bytes from `b[at..]` widened to i32 lanes, unsigned or (`SIGNED`) signed.
#[target_feature(enable = "avx2,fma,f16c")]
fn widen8<const SIGNED: bool>(b: &[u8], at: usize) -> __m256i {
    let v = u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let x = _mm_cvtsi64_si128(v as i64);
    if SIGNED {
        _mm256_cvtepi8_epi32(x)
    } else {
        _mm256_cvtepu8_epi32(x)
    }
}

/// A 32-element-block format: each `block`-byte block's 32 unsigned values from `values` and
/// its `(α, β)` from `scale`.
#[inline(always)]
unsafe fn b32(
    w: &[u8],
    out: RowMut,
    block: usize,
    values: impl Fn(&[u8]) -> __m256i,
    scale: impl Fn(&[u8]) -> (f32, f32),
) {
    let blocks = w.chunks_exact(block).take(out.u.len() / 32);
    let alpha: &mut [f32] = bytemuck::cast_slice_mut(out.scale);
    for (bi, b) in blocks.enumerate() {
        // SAFETY: the caller's contract (the features `values` needs)
        unsafe {
            store32(&mut out.u[32 * bi..], values(b));
            let (a, beta) = scale(b);
            fill8(&mut alpha[8 * bi..], a);
            out.beta[2 * bi] = beta;
            out.beta[2 * bi + 1] = beta;
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_avx2(w: &[u8], out: RowMut) {
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    // SAFETY: the features it needs are enabled here.
    unsafe {
        b32(
            w,
            out,
            34,
            |b| _mm256_xor_si256(load32(&b[2..]), flip),
            |b| {
                let d = f16_at(b, 0);
                (d, -128.0 * d)
            },
        )
    }
}

/// Q8_0's unpacking for tiles that meet its signed values (AVX2 alone, where `q + 128` would
/// saturate `vpmaddubsw`): `u = |q|`, `q` as it is, `α = d`, `β = 0`.
///
/// # Safety
/// As [`for_dtype`].
pub unsafe fn q8_0_signed() -> Unpack {
    q8_0_signed_entry
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_signed_avx2(w: &[u8], out: RowMut) {
    let blocks = w.chunks_exact(34).take(out.u.len() / 32);
    for (bi, b) in blocks.enumerate() {
        store32(&mut out.q[32 * bi..], load32(&b[2..]));
    }
    // SAFETY: the features `b32` needs are enabled here.
    unsafe {
        b32(
            w,
            RowMut { q: &mut [], ..out },
            34,
            |b| _mm256_abs_epi8(load32(&b[2..])),
            |b| (f16_at(b, 0), 0.0),
        )
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_avx2(w: &[u8], out: RowMut) {
    // SAFETY: the features it needs are enabled here.
    unsafe {
        b32(
            w,
            out,
            18,
            |b| nibbles(&b[2..]),
            |b| {
                let d = f16_at(b, 0);
                (d, -8.0 * d)
            },
        )
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_avx2(w: &[u8], out: RowMut) {
    // SAFETY: the features it needs are enabled here.
    unsafe {
        b32(
            w,
            out,
            20,
            |b| nibbles(&b[4..]),
            |b| (f16_at(b, 0), f16_at(b, 2)),
        )
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_avx2(w: &[u8], out: RowMut) {
    // SAFETY: the features it needs are enabled here.
    unsafe {
        b32(
            w,
            out,
            22,
            |b| q5_values(b, 2, 6),
            |b| {
                let d = f16_at(b, 0);
                (d, -16.0 * d)
            },
        )
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_1_avx2(w: &[u8], out: RowMut) {
    // SAFETY: the features it needs are enabled here.
    unsafe {
        b32(
            w,
            out,
            24,
            |b| q5_values(b, 4, 8),
            |b| (f16_at(b, 0), f16_at(b, 2)),
        )
    }
}

/// Q4_K (144-byte super-blocks, values from byte 16) or with `FIFTH` Q5_K (176 bytes, fifth
/// bits from byte 16, values from 48): `α = d·scale_j` and `β = −dmin·min_j` per sub-block
/// `j` of 32.
#[target_feature(enable = "avx2,fma,f16c")]
fn k4<const FIFTH: bool>(w: &[u8], mut out: RowMut) {
    let (bytes, qs_at) = if FIFTH { (176, 48) } else { (144, 16) };
    for (bi, b) in w.chunks_exact(bytes).take(out.u.len() / 256).enumerate() {
        let sm = k_scales(b);
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let qh = if FIFTH {
            load32(&b[16..])
        } else {
            _mm256_setzero_si256()
        };
        for c in 0..4 {
            let (lo, hi) = k4_values::<FIFTH>(&b[qs_at..], qh, c);
            let e = 256 * bi + 64 * c;
            store32(&mut out.u[e..], lo);
            store32(&mut out.u[e + 32..], hi);
        }
        out.d[bi] = d;
        let mins = _mm256_cvtepi32_ps(widen8::<false>(&sm, 8));
        let beta = twice(_mm256_mul_ps(mins, _mm256_set1_ps(-dmin)));
        let sc = twice(_mm256_castsi256_ps(widen8::<false>(&sm, 0)));
        let sc = [_mm256_castps_si256(sc[0]), _mm256_castps_si256(sc[1])];
        group_scales(&mut out, bi, sc, beta);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_avx2(w: &[u8], out: RowMut) {
    k4::<false>(w, out)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k_avx2(w: &[u8], out: RowMut) {
    k4::<true>(w, out)
}

/// Q6_K: unsigned 6-bit values, `α = d·scale_g` and `β = −32·α` per group `g` of 16.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_avx2(w: &[u8], mut out: RowMut) {
    for (bi, b) in w.chunks_exact(210).take(out.u.len() / 256).enumerate() {
        for n in 0..2 {
            let q = q6_k_values(b, n);
            for (t, qt) in q.into_iter().enumerate() {
                store32(&mut out.u[256 * bi + n * 128 + t * 32..], qt);
            }
        }
        let d = f16_at(b, 208);
        out.d[bi] = d;
        let sc = [widen8::<true>(b, 192), widen8::<true>(b, 200)];
        let times = _mm256_set1_ps(-32.0 * d);
        let beta = [
            _mm256_mul_ps(_mm256_cvtepi32_ps(sc[0]), times),
            _mm256_mul_ps(_mm256_cvtepi32_ps(sc[1]), times),
        ];
        group_scales(&mut out, bi, sc, beta);
    }
}

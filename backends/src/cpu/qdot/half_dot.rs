//! Dot products of one row of f16 or bf16 weights with one row of f32 activations (decode's
//! matrix-vector products), the weights widened to f32 as they load: 8 lanes with AVX2, FMA and
//! F16C, or 16 where the CPU also has AVX-512 F. The 16-lane form issues half the instructions
//! per weight: on a 2048 × 2048 matvec in cache (criterion `cpu/matvec`, Zen 5, 2 threads) 137
//! against 92 GiB/s for f16 and 172 against 86 for bf16, and llama-1.1b bf16 decode went from
//! 29.6–30.5 to 32.4–33.7 tokens/s.

use super::avx2::{hsum, prefetch_ahead};
use super::{F16Dot, F16Dot4};
use crate::cpu::tile::Half;
use crate::cpu::vmath::hsum4;
use std::arch::x86_64::*;

/// The registers a dot product runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 8 lanes (AVX2, FMA, F16C).
    Ymm,
    /// 16 lanes (and AVX-512 F).
    Zmm,
}

impl Width {
    pub const ALL: [Width; 2] = [Width::Ymm, Width::Zmm];

    pub fn available(self) -> bool {
        let base = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        match self {
            Width::Ymm => base,
            Width::Zmm => base && is_x86_feature_detected!("avx512f"),
        }
    }
}

/// The widest kernel this CPU runs for weights in `format`.
pub fn kernel(format: Half) -> Option<F16Dot> {
    Width::ALL
        .into_iter()
        .rev()
        .find_map(|width| kernel_with(format, width))
}

/// The kernel for `format` in `width` (tests run every width the CPU has); `None` where the CPU
/// lacks it.
pub fn kernel_with(format: Half, width: Width) -> Option<F16Dot> {
    if !width.available() {
        return None;
    }
    Some(match (format, width) {
        (Half::F16, Width::Ymm) => f16_ymm,
        (Half::Bf16, Width::Ymm) => bf16_ymm,
        (Half::F16, Width::Zmm) => f16_zmm,
        (Half::Bf16, Width::Zmm) => bf16_zmm,
    })
}

/// The four-row kernel for `format` (8 lanes), where the CPU has AVX2, FMA and F16C.
pub fn kernel4(format: Half) -> Option<F16Dot4> {
    if !Width::Ymm.available() {
        return None;
    }
    Some(match format {
        Half::F16 => f16_ymm4,
        Half::Bf16 => bf16_ymm4,
    })
}

fn f16_ymm4(w: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    // SAFETY: `kernel4` hands this out only where the CPU has AVX2, FMA and F16C.
    unsafe { f16_dot4_avx2(w, x) }
}

fn bf16_ymm4(w: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    // SAFETY: as above.
    unsafe { bf16_dot4_avx2(w, x) }
}

macro_rules! safe_entries {
    ($($name:ident => $inner:ident;)*) => {$(
        fn $name(w: &[u8], x: &[f32]) -> f32 {
            // SAFETY: `kernel_with` hands this out only where the CPU has `$inner`'s features.
            unsafe { $inner(w, x) }
        }
    )*};
}

safe_entries! {
    f16_ymm => f16_dot_avx2;
    bf16_ymm => bf16_dot_avx2;
    f16_zmm => f16_dot_avx512;
    bf16_zmm => bf16_dot_avx512;
}

/// An f16 (its bits) as an f32.
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_one(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// A bf16 (its bits) as an f32: it is the f32's top half.
fn bf16_one(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// 8 f16s as f32s.
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_8(v: __m128i) -> __m256 {
    _mm256_cvtph_ps(v)
}

/// 8 bf16s as f32s: widened and shifted into the top halves.
#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_8(v: __m128i) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn f16_16(v: __m256i) -> __m512 {
    _mm512_cvtph_ps(v)
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn bf16_16(v: __m256i) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_dot_avx2(w: &[u8], x: &[f32]) -> f32 {
    // SAFETY: the features `dot8` needs are enabled here.
    unsafe { dot8(w, x, |v| f16_8(v), |b| f16_one(b)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_dot_avx2(w: &[u8], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { dot8(w, x, |v| bf16_8(v), bf16_one) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_dot4_avx2(w: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    // SAFETY: the features `dot8_rows4` needs are enabled here.
    unsafe { dot8_rows4(w, x, |v| f16_8(v), |b| f16_one(b)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_dot4_avx2(w: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    // SAFETY: as above.
    unsafe { dot8_rows4(w, x, |v| bf16_8(v), bf16_one) }
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn f16_dot_avx512(w: &[u8], x: &[f32]) -> f32 {
    // SAFETY: the features `dot16` needs are enabled here.
    unsafe { dot16(w, x, |v| f16_16(v), |v| f16_8(v), |b| f16_one(b)) }
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn bf16_dot_avx512(w: &[u8], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { dot16(w, x, |v| bf16_16(v), |v| bf16_8(v), bf16_one) }
}

/// `w · x` for a row of 16-bit floats: 8 at a time widened to f32 by `widen`, the last few
/// (under 8) by `one`. Four independent sums of 8 lanes (32 weights a step), so the multiply-adds'
/// latency (4 cycles) does not bound the loop; with two, an f16 row ran at 38–41 GiB/s in
/// cache on a Zen 4, with four at 61–68.
///
/// # Safety
/// The CPU has AVX2 and FMA (and whatever `widen` uses).
#[inline(always)]
unsafe fn dot8(
    w: &[u8],
    x: &[f32],
    widen: impl Fn(__m128i) -> __m256,
    one: impl Fn(u16) -> f32,
) -> f32 {
    let n = x.len().min(w.len() / 2);
    // SAFETY: the caller's contract.
    let mut acc = [unsafe { _mm256_setzero_ps() }; 4];
    let mut i = 0;
    while i + 32 <= n {
        let (h, xs) = (&w[2 * i..2 * i + 64], &x[i..i + 32]);
        // (no prefetch here, unlike the quantized rows in `avx2`: on a 2-core Zen 3 these rows
        // already read at a plain read's pace, and asking 2 KiB ahead made them slower)
        // SAFETY: the caller's contract; 64 bytes of `h` and 32 floats of `xs` are readable
        // (sliced above).
        unsafe {
            for (j, acc) in acc.iter_mut().enumerate() {
                let wj = widen(_mm_loadu_si128(h.as_ptr().add(16 * j).cast()));
                *acc = _mm256_fmadd_ps(wj, _mm256_loadu_ps(xs.as_ptr().add(8 * j)), *acc);
            }
        }
        i += 32;
    }
    // then 8 at a time (a Mamba dt projection's rows are 48 or 160 long: 16 scalar steps a
    // row took longer than the whole vector loop)
    while i + 8 <= n {
        let (h, xs) = (&w[2 * i..2 * i + 16], &x[i..i + 8]);
        // SAFETY: as above, 16 bytes and 8 floats.
        unsafe {
            let wi = widen(_mm_loadu_si128(h.as_ptr().cast()));
            acc[0] = _mm256_fmadd_ps(wi, _mm256_loadu_ps(xs.as_ptr()), acc[0]);
        }
        i += 8;
    }
    let tail = tail(&w[2 * i..], &x[i..n], one);
    // SAFETY: the caller's contract.
    unsafe {
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(sum) + tail
    }
}

/// [`dot8`] for four weight rows at once: each 8 activations loaded once for the four rows,
/// one sum per row (four independent chains, as `dot8`'s four), the four sums reduced
/// together. A Mamba `dt` projection's rows are 48 to 256 long: one at a time, each row's
/// single chain of multiply-adds and its horizontal sum bound the loop, not the bytes.
///
/// # Safety
/// The CPU has AVX2 and FMA (and whatever `widen` uses).
#[inline(always)]
unsafe fn dot8_rows4(
    w: [&[u8]; 4],
    x: &[f32],
    widen: impl Fn(__m128i) -> __m256,
    one: impl Fn(u16) -> f32,
) -> [f32; 4] {
    let n = w.iter().fold(x.len(), |n, r| n.min(r.len() / 2));
    // SAFETY: the caller's contract.
    let mut acc = [unsafe { _mm256_setzero_ps() }; 4];
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: the caller's contract; 8 floats of `x` and 16 bytes of each row from `i`
        // are readable (i + 8 ≤ n).
        unsafe {
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            for (acc, row) in acc.iter_mut().zip(w) {
                let wr = widen(_mm_loadu_si128(row.as_ptr().add(2 * i).cast()));
                *acc = _mm256_fmadd_ps(wr, xv, *acc);
            }
        }
        i += 8;
    }
    // SAFETY: the caller's contract.
    let sums = unsafe { hsum4(acc) };
    std::array::from_fn(|r| sums[r] + tail(&w[r][2 * i..], &x[i..n], &one))
}

/// [`dot8`] in 16 lanes: four sums of 16 (64 weights a step), then one 16-wide and one 8-wide
/// step, then the scalar tail.
///
/// # Safety
/// The CPU has AVX-512 F, AVX2 and FMA (and whatever `widen16` and `widen8` use).
#[inline(always)]
unsafe fn dot16(
    w: &[u8],
    x: &[f32],
    widen16: impl Fn(__m256i) -> __m512,
    widen8: impl Fn(__m128i) -> __m256,
    one: impl Fn(u16) -> f32,
) -> f32 {
    let n = x.len().min(w.len() / 2);
    // SAFETY: the caller's contract.
    let mut acc = [unsafe { _mm512_setzero_ps() }; 4];
    let mut i = 0;
    while i + 64 <= n {
        let (h, xs) = (&w[2 * i..2 * i + 128], &x[i..i + 64]);
        // decode streams the weights from memory: asked for ahead (on Zen 5 1–4% faster than
        // the hardware prefetchers alone, llama-1.1b bf16, four paired runs)
        prefetch_ahead(h, 2);
        // SAFETY: the caller's contract; 128 bytes of `h` and 64 floats of `xs` are readable
        // (sliced above).
        unsafe {
            for (j, acc) in acc.iter_mut().enumerate() {
                let wj = widen16(_mm256_loadu_si256(h.as_ptr().add(32 * j).cast()));
                *acc = _mm512_fmadd_ps(wj, _mm512_loadu_ps(xs.as_ptr().add(16 * j)), *acc);
            }
        }
        i += 64;
    }
    while i + 16 <= n {
        let (h, xs) = (&w[2 * i..2 * i + 32], &x[i..i + 16]);
        // SAFETY: as above, 32 bytes and 16 floats.
        unsafe {
            let wi = widen16(_mm256_loadu_si256(h.as_ptr().cast()));
            acc[0] = _mm512_fmadd_ps(wi, _mm512_loadu_ps(xs.as_ptr()), acc[0]);
        }
        i += 16;
    }
    let mut rest = 0.0;
    if i + 8 <= n {
        let (h, xs) = (&w[2 * i..2 * i + 16], &x[i..i + 8]);
        // SAFETY: as above, 16 bytes and 8 floats.
        unsafe {
            let wi = widen8(_mm_loadu_si128(h.as_ptr().cast()));
            rest = hsum(_mm256_mul_ps(wi, _mm256_loadu_ps(xs.as_ptr())));
        }
        i += 8;
    }
    let rest = rest + tail(&w[2 * i..], &x[i..n], one);
    // SAFETY: the caller's contract.
    unsafe {
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(sum) + rest
    }
}

/// `Σ one(w_j)·x_j` over the few weights the vector steps left.
#[inline(always)]
fn tail(w: &[u8], x: &[f32], one: impl Fn(u16) -> f32) -> f32 {
    x.iter()
        .zip(w.chunks_exact(2))
        .map(|(x, b)| one(u16::from_le_bytes([b[0], b[1]])) * x)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::{Half, Width, kernel_with, kernel4};

    #[test]
    fn rows_of_every_length_meet_the_reference() {
        let widths: Vec<Width> = Width::ALL.into_iter().filter(|w| w.available()).collect();
        eprintln!("half dots in {widths:?}");
        // every length's mix of 64-, 32-, 16- and 8-wide steps and a scalar tail
        for n in [
            1, 7, 8, 9, 15, 16, 24, 31, 32, 40, 48, 63, 64, 71, 88, 160, 257,
        ] {
            let vals: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 8.0)
                .collect();
            let x: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0).collect();
            let want: f64 = vals
                .iter()
                .zip(&x)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let h: Vec<u8> = vals
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect();
            let b: Vec<u8> = vals
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect();
            for &width in &widths {
                let f16 = kernel_with(Half::F16, width).expect("f16");
                let bf16 = kernel_with(Half::Bf16, width).expect("bf16");
                // the values are exact in both formats, the products and sums exact in f32
                assert_eq!(f16(&h, &x) as f64, want, "f16, {n} long, {width:?}");
                assert_eq!(bf16(&b, &x) as f64, want, "bf16, {n} long, {width:?}");
            }
            // four rows at once: the row times 1, −1, 2 and ½ (exact in both formats)
            if let (Some(f16), Some(bf16)) = (kernel4(Half::F16), kernel4(Half::Bf16)) {
                let scaled = |by: f32| -> [Vec<u8>; 2] {
                    let v = || vals.iter().map(move |&v| v * by);
                    [
                        v().flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                            .collect(),
                        v().flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                            .collect(),
                    ]
                };
                let rows = [1.0, -1.0, 2.0, 0.5].map(scaled);
                for (j, (kernel, name)) in [(f16, "f16"), (bf16, "bf16")].into_iter().enumerate() {
                    let got = kernel(std::array::from_fn(|r| &rows[r][j][..]), &x);
                    for (r, by) in [1.0, -1.0, 2.0, 0.5].into_iter().enumerate() {
                        assert_eq!(got[r] as f64, want * by, "{name} row {r}, {n} long");
                    }
                }
            }
        }
    }
}

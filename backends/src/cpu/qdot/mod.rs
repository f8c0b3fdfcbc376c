//! Dot products of quantized weight rows with 8-bit activations, the way llama.cpp's CPU backend
//! computes them: each activation row is rounded once per matmul to blocks of 8-bit integers with
//! one f32 scale, and each weight block meets its activation block as an integer sum, scaled once.
//!
//! - 32-element weight blocks (`Q8_0`, `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`) meet [`Q8Block`]s, which
//!   also carry `d·Σq` for the offset terms of `Q4_0` (`q − 8`), `Q5_0` (`q − 16`) and `Q4_1`,
//!   `Q5_1` (`+ m`).
//! - K-quant super-blocks (`Q4_K`, `Q5_K`, `Q6_K`) meet [`Q8KBlock`]s of 256, whose sums per 16
//!   elements pay for the mins and the `q − 32` offset.
//!
//! [`scalar`] holds the readable kernels; [`avx2`] the same arithmetic with AVX2 (picked at run
//! time). Both are exact integer sums, so they agree to the last bit of the i32 partials.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod gemm;
#[cfg(target_arch = "x86_64")]
mod half_dot;
#[cfg(target_arch = "x86_64")]
mod k_zmm;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub(super) mod unpack;

use weft_graph::DType;

/// Elements per [`Q8Block`].
pub const QK: usize = 32;
/// Elements per [`Q8KBlock`].
pub const QKK: usize = 256;

/// 32 activations as `d·q`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q8Block {
    pub d: f32,
    /// `d · Σ qs`
    pub s: f32,
    pub qs: [i8; QK],
}

/// 256 activations as `d·q`, with `Σ qs` per 16.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q8KBlock {
    pub d: f32,
    pub qs: [i8; QKK],
    pub bsums: [i16; 16],
}

/// Fills each of `blocks` from its `per` values of `x` with `fill`, spread over the thread
/// team when there are enough (a prompt's rows; one row is quicker alone, in one chunk).
fn spread<B: Send>(blocks: &mut [B], x: &[f32], per: usize, fill: impl Fn(&[f32], &mut B) + Sync) {
    let team = super::team::global();
    let chunk = if x.len() < 1 << 15 {
        blocks.len()
    } else {
        blocks.len().div_ceil(4 * team.threads())
    };
    team.chunks_mut(blocks, chunk, |i, bs| {
        let x = &x[i * chunk * per..];
        for (b, c) in bs.iter_mut().zip(x.chunks_exact(per)) {
            fill(c, b);
        }
    });
}

/// Rounds `x` to `d·q` with `q ∈ [−127, 127]`, `d = max|x| / 127`.
fn round_block(x: &[f32], qs: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked above.
        return unsafe { round_block_avx2(x, qs) };
    }
    round_block_body(x, qs)
}

/// [`round_block`] in AVX2 registers, 32 values at a time (the same arithmetic: compiled from
/// the plain loop, the conversions to i8 ran a value at a time, 8% of a Q8_0 prompt's time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn round_block_avx2(x: &[f32], qs: &mut [i8]) -> f32 {
    use std::arch::x86_64::*;
    assert_eq!(x.len(), qs.len());
    let whole = x.len() / 32 * 32;
    // SAFETY (both loops): every load and store lies in `x[..whole]` or `qs[..whole]`.
    let amax = unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for c in (0..whole).step_by(8) {
            // (`max` returns its second operand where either is NaN: NaNs are passed over, as
            // `f32::max` passes them)
            m = _mm256_max_ps(
                _mm256_andnot_ps(sign, _mm256_loadu_ps(x.as_ptr().add(c))),
                m,
            );
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let m = lanes.iter().fold(0.0f32, |a, &v| a.max(v));
        x[whole..].iter().fold(m, |a, v| a.max(v.abs()))
    };
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    unsafe {
        let (idv, sign) = (_mm256_set1_ps(id), _mm256_set1_ps(-0.0));
        // `f32::round` (halves away from zero) as LLVM lowers it: the truncation of
        // `v + copysign(0.5 − 2⁻²⁵, v)`
        let half = _mm256_set1_ps(f32::from_bits(0.5f32.to_bits() - 1));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for c in (0..whole).step_by(32) {
            let q: [__m256i; 4] = std::array::from_fn(|r| {
                let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(c + 8 * r)), idv);
                let h = _mm256_or_ps(half, _mm256_and_ps(sign, v));
                let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(
                    _mm256_add_ps(v, h),
                );
                // a NaN converts to 0, as `as i32` converts it (values in [−127, 127] else)
                let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(t, t);
                _mm256_andnot_si256(_mm256_castps_si256(nan), _mm256_cvttps_epi32(t))
            });
            let w = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let w = _mm256_permutevar8x32_epi32(w, order);
            _mm256_storeu_si256(qs.as_mut_ptr().add(c).cast(), w);
        }
    }
    for (q, v) in qs[whole..].iter_mut().zip(&x[whole..]) {
        *q = (v * id).round() as i8;
    }
    d
}

#[inline(always)]
fn round_block_body(x: &[f32], qs: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    d
}

/// Activation rows quantized for one weight dtype.
#[derive(Debug)]
pub enum Acts {
    B32 {
        per_row: usize,
        blocks: Vec<Q8Block>,
    },
    K {
        per_row: usize,
        blocks: Vec<Q8KBlock>,
    },
}

impl Acts {
    /// How many activation rows it holds.
    pub fn rows(&self) -> usize {
        match self {
            Acts::B32 { per_row, blocks } => blocks.len() / per_row.max(&1),
            Acts::K { per_row, blocks } => blocks.len() / per_row.max(&1),
        }
    }

    /// Quantizes the `m` rows of `x` (each `k` long) for weights of `dtype`; `None` when `dtype`
    /// is read as floats or `k` is not a whole number of its blocks.
    pub fn quantize(dtype: DType, x: &[f32], k: usize) -> Option<Acts> {
        if k == 0 || !k.is_multiple_of(dtype.block_elems()) {
            return None;
        }
        match dtype {
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => {
                let mut blocks = vec![
                    Q8Block {
                        d: 0.0,
                        s: 0.0,
                        qs: [0; QK],
                    };
                    x.len() / QK
                ];
                spread(&mut blocks, x, QK, |c, b| {
                    b.d = round_block(c, &mut b.qs);
                    b.s = b.d * b.qs.iter().map(|&q| q as i32).sum::<i32>() as f32;
                });
                Some(Acts::B32 {
                    per_row: k / QK,
                    blocks,
                })
            }
            DType::Q4K | DType::Q5K | DType::Q6K => {
                let mut blocks = vec![
                    Q8KBlock {
                        d: 0.0,
                        qs: [0; QKK],
                        bsums: [0; 16],
                    };
                    x.len() / QKK
                ];
                spread(&mut blocks, x, QKK, |c, b| {
                    b.d = round_block(c, &mut b.qs);
                    for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                        *s = g.iter().map(|&q| q as i16).sum();
                    }
                });
                Some(Acts::K {
                    per_row: k / QKK,
                    blocks,
                })
            }
            _ => None,
        }
    }
}

/// `w · x` for a row of 16-bit float weights `w` (little-endian bytes; f16 or bf16, by kernel)
/// and activations `x`.
pub type F16Dot = fn(&[u8], &[f32]) -> f32;

/// An [`F16Dot`] for weights in `format`, straight from their bytes, where the CPU has AVX2,
/// FMA and F16C (16 lanes where it also has AVX-512 F).
pub fn half_kernel(format: super::tile::Half) -> Option<F16Dot> {
    #[cfg(target_arch = "x86_64")]
    return half_dot::kernel(format);
    #[allow(unreachable_code)]
    None
}

/// `[w_r · x]` for four rows of 16-bit float weights (as [`F16Dot`]) and one activation row.
pub type F16Dot4 = fn([&[u8]; 4], &[f32]) -> [f32; 4];

/// An [`F16Dot4`] for weights in `format`, where the CPU has AVX2, FMA and F16C.
pub fn half_kernel4(format: super::tile::Half) -> Option<F16Dot4> {
    #[cfg(target_arch = "x86_64")]
    return half_dot::kernel4(format);
    #[allow(unreachable_code)]
    None
}

/// A weight row's dot product with one activation row, for one weight dtype.
#[derive(Clone, Copy, Debug)]
pub enum Kernel {
    /// One activation row, and optionally four at once (for prompts).
    B32(fn(&[u8], &[Q8Block]) -> f32, Option<Rows4>),
    K(RowK, Option<RowsK4>),
}

/// A weight row's dot products with four activation rows.
pub type Rows4 = fn(&[u8], [&[Q8Block]; 4]) -> [f32; 4];

/// A K-quant weight row's dot product with one activation row.
pub type RowK = fn(&[u8], &[Q8KBlock]) -> f32;

/// [`Rows4`] for the K-quants.
pub type RowsK4 = fn(&[u8], [&[Q8KBlock]; 4]) -> [f32; 4];

impl Kernel {
    /// The fastest kernel this machine runs for `dtype` (`None` for float dtypes).
    pub fn for_dtype(dtype: DType) -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = avx2::kernel(dtype) {
            return Some(k);
        }
        scalar::kernel(dtype)
    }

    /// `w_row · x_row(i)`; `wrow` holds exactly one row of weight blocks.
    pub fn dot(&self, wrow: &[u8], acts: &Acts, i: usize) -> f32 {
        match (self, acts) {
            (Kernel::B32(f, _), Acts::B32 { per_row, blocks }) => {
                f(wrow, &blocks[i * per_row..(i + 1) * per_row])
            }
            (Kernel::K(f, _), Acts::K { per_row, blocks }) => {
                f(wrow, &blocks[i * per_row..(i + 1) * per_row])
            }
            _ => unreachable!("kernel and activations come from the same weight dtype"),
        }
    }

    /// `out[j] = w_row(j) · x_row(0)` for each weight row `rows` yields (a mat-vec's rows),
    /// matching the kernel with the activations once for them all.
    pub fn dot_each<'w>(&self, rows: impl Iterator<Item = &'w [u8]>, acts: &Acts, out: &mut [f32]) {
        match (self, acts) {
            (Kernel::B32(f, _), Acts::B32 { per_row, blocks }) => {
                let x = &blocks[..*per_row];
                out.iter_mut().zip(rows).for_each(|(o, w)| *o = f(w, x));
            }
            (Kernel::K(f, _), Acts::K { per_row, blocks }) => {
                let x = &blocks[..*per_row];
                out.iter_mut().zip(rows).for_each(|(o, w)| *o = f(w, x));
            }
            _ => unreachable!("kernel and activations come from the same weight dtype"),
        }
    }

    /// `w_row · x_row(i)` for every activation row, into `out` (one value per row).
    pub fn dot_rows(&self, wrow: &[u8], acts: &Acts, out: &mut [f32]) {
        let mut i = 0;
        match (self, acts) {
            (Kernel::B32(_, Some(f4)), Acts::B32 { per_row, blocks }) => {
                i = by_fours(out, |r| {
                    f4(wrow, r.map(|r| &blocks[r * per_row..(r + 1) * per_row]))
                });
            }
            (Kernel::K(_, Some(f4)), Acts::K { per_row, blocks }) => {
                i = by_fours(out, |r| {
                    f4(wrow, r.map(|r| &blocks[r * per_row..(r + 1) * per_row]))
                });
            }
            _ => {}
        }
        for (r, o) in out.iter_mut().enumerate().skip(i) {
            *o = self.dot(wrow, acts, r);
        }
    }
}

/// Fills `out` four values at a time from `f(rows)` while four are left; returns how many.
fn by_fours(out: &mut [f32], f: impl Fn([usize; 4]) -> [f32; 4]) -> usize {
    let mut i = 0;
    while i + 4 <= out.len() {
        out[i..i + 4].copy_from_slice(&f([i, i + 1, i + 2, i + 3]));
        i += 4;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::tile::Half;
    use weft_graph::quant::dequantize;

    pub(super) fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Random weight blocks: random bytes with sane f16 scales in the places each layout keeps
    /// them.
    pub(super) fn random_row(dtype: DType, k: usize, seed: &mut u64) -> Vec<u8> {
        row_of(dtype, k, seed, |seed| (lcg(seed) * 128.0 + 128.0) as u8)
    }

    /// Weight blocks of bytes from `byte`, with sane random f16 scales as in [`random_row`]
    /// (all bytes 0xFF: every format's largest values and integer scales).
    pub(super) fn row_of(
        dtype: DType,
        k: usize,
        seed: &mut u64,
        mut byte: impl FnMut(&mut u64) -> u8,
    ) -> Vec<u8> {
        let nb = k / dtype.block_elems();
        let bb = dtype.block_bytes();
        let mut w: Vec<u8> = (0..nb * bb).map(|_| byte(seed)).collect();
        let scale_at: &[usize] = match dtype {
            DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => &[0],
            DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K => &[0, 2],
            _ => &[208],
        };
        for b in w.chunks_exact_mut(bb) {
            for &o in scale_at {
                let v = half::f16::from_f32(lcg(seed) * 0.05);
                b[o..o + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        w
    }

    /// Every kernel equals the f64 dot of the dequantized weights with the rounded activations.
    /// The AVX2 rounding equals the plain loop's, halves (away from zero), values just below
    /// halves, NaNs and infinities included, at whole and partial widths.
    #[test]
    fn round_block_avx2_equals_the_plain_loop() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut seed = 7;
            let below = |v: f32| f32::from_bits(v.to_bits() - 1);
            for len in [32, 40, 256, 7] {
                let mut cases: Vec<Vec<f32>> = vec![
                    (0..len).map(|_| lcg(&mut seed) * 3.0).collect(),
                    // d = 1: the values themselves rounded
                    (0..len)
                        .map(|i| {
                            if i == 0 {
                                127.0
                            } else {
                                i as f32 % 50.0 - 24.5
                            }
                        })
                        .collect(),
                    (0..len)
                        .map(|i| {
                            if i == 0 {
                                -127.0
                            } else {
                                below(i as f32 % 40.0 + 0.5)
                            }
                        })
                        .collect(),
                    vec![0.0; len],
                ];
                for special in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut v = cases[0].clone();
                    v[len / 2] = special;
                    cases.push(v);
                }
                for x in cases {
                    let (mut want, mut got) = (vec![0i8; len], vec![0i8; len]);
                    let dw = round_block_body(&x, &mut want);
                    // SAFETY: the CPU has AVX2, checked above.
                    let dg = unsafe { round_block_avx2(&x, &mut got) };
                    assert_eq!((dg.to_bits(), &got), (dw.to_bits(), &want), "{x:?}");
                }
            }
        }
    }

    #[test]
    fn kernels_match_dequantized_dot() {
        let mut seed = 7u64;
        for dtype in DType::ALL.into_iter().filter(|d| d.is_quantized()) {
            let k = 512;
            let x: Vec<f32> = (0..k).map(|_| lcg(&mut seed)).collect();
            let acts = Acts::quantize(dtype, &x, k).expect("quantized dtype");
            let xr: Vec<f64> = match &acts {
                Acts::B32 { blocks, .. } => blocks
                    .iter()
                    .flat_map(|b| b.qs.iter().map(move |&q| b.d as f64 * q as f64))
                    .collect(),
                Acts::K { blocks, .. } => blocks
                    .iter()
                    .flat_map(|b| b.qs.iter().map(move |&q| b.d as f64 * q as f64))
                    .collect(),
            };
            let rounding: f64 = x.iter().zip(&xr).map(|(a, b)| (*a as f64 - b).abs()).sum();
            assert!(
                rounding / (k as f64) < 0.01,
                "{dtype}: activations rounded badly"
            );
            for _ in 0..4 {
                let w = random_row(dtype, k, &mut seed);
                let mut wf = vec![0.0f32; k];
                assert!(dequantize(dtype, &w, &mut wf));
                let want: f64 = wf.iter().zip(&xr).map(|(a, b)| *a as f64 * b).sum();
                let norm: f64 = wf.iter().zip(&xr).map(|(a, b)| (*a as f64 * b).abs()).sum();
                // five different activation rows (four at once, then one), each equal to
                // its own one-row dot product
                let mut rows = [0.0f32; 5];
                let five: Vec<f32> = (0..5 * k).map(|_| lcg(&mut seed)).collect();
                let acts5 = Acts::quantize(dtype, &five, k).expect("quantized dtype");
                // (the four-row products in each form of the byte product the CPU has)
                #[cfg(target_arch = "x86_64")]
                let variants = [avx2::Vnni::No, avx2::Vnni::Avx, avx2::Vnni::Avx512]
                    .map(|v| avx2::kernel_with(dtype, v));
                #[cfg(not(target_arch = "x86_64"))]
                let variants: [Option<Kernel>; 0] = [];
                let kern = Kernel::for_dtype(dtype).expect("kernel");
                for kern in variants.into_iter().flatten().chain([kern]) {
                    kern.dot_rows(&w, &acts5, &mut rows);
                    for (r, got) in rows.iter().enumerate() {
                        let one = kern.dot(&w, &acts5, r);
                        let xr = &five[r * k..(r + 1) * k];
                        let norm: f32 = wf.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
                        assert!(
                            (got - one).abs() <= 1e-5 * norm,
                            "{dtype} {kern:?} row {r}: {got} vs {one}"
                        );
                    }
                }
                let mut same = [0.0f32; 5];
                let copies: Vec<f32> = x.iter().cycle().take(5 * k).copied().collect();
                let copies = Acts::quantize(dtype, &copies, k).expect("quantized dtype");
                kern.dot_rows(&w, &copies, &mut same);
                for r in same {
                    assert!(
                        (r as f64 - want).abs() <= 1e-5 * norm.max(1e-6),
                        "{dtype} rows"
                    );
                }
                let kernels = [scalar::kernel(dtype), Kernel::for_dtype(dtype)];
                for kern in kernels.into_iter().map(|k| k.expect("kernel")) {
                    let got = kern.dot(&w, &acts, 0) as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * norm.max(1e-6),
                        "{dtype} {kern:?}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_f16_and_bf16_kernels_equal_the_f64_dot() {
        // each kernel with how a value rounds to its format: (bits, value)
        type Round = fn(f32) -> (u16, f64);
        let kernels: [(&str, Option<F16Dot>, Round); 2] = [
            ("f16", half_kernel(Half::F16), |v| {
                let h = half::f16::from_f32(v);
                (h.to_bits(), h.to_f64())
            }),
            ("bf16", half_kernel(Half::Bf16), |v| {
                let h = half::bf16::from_f32(v);
                (h.to_bits(), h.to_f64())
            }),
        ];
        let mut seed = 3u64;
        for (name, kernel, round) in kernels {
            let Some(f) = kernel else { continue };
            for k in [3usize, 5, 16, 32, 37, 45, 517] {
                let x: Vec<f32> = (0..k).map(|_| lcg(&mut seed)).collect();
                let h: Vec<(u16, f64)> = (0..k).map(|_| round(lcg(&mut seed))).collect();
                let bytes: Vec<u8> = h.iter().flat_map(|v| v.0.to_le_bytes()).collect();
                let want: f64 = x.iter().zip(&h).map(|(a, b)| *a as f64 * b.1).sum();
                let norm: f64 = x.iter().zip(&h).map(|(a, b)| (*a as f64 * b.1).abs()).sum();
                let got = f(&bytes, &x) as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * norm,
                    "{name} k={k}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn float_dtypes_and_ragged_rows_have_no_kernel() {
        assert!(Acts::quantize(DType::F16, &[0.0; 64], 64).is_none());
        assert!(Acts::quantize(DType::Q4K, &[0.0; 64], 64).is_none());
        assert!(Kernel::for_dtype(DType::F32).is_none());
    }
}

//! f32 functions on eight AVX2 lanes or sixteen AVX-512 lanes at once, equal lane for lane to
//! their scalar forms in `weft_graph::math`.

use std::arch::x86_64::*;

/// A register of f32 lanes, as the kernels generic over their width use it: AVX2's eight
/// (`__m256`, with FMA) or AVX-512's sixteen (`__m512`). Every method is an instruction or two,
/// inlined into a caller compiled for the width's features.
pub trait F32s: Copy {
    const LANES: usize;
    /// # Safety (every method)
    /// The CPU has the width's features (the caller is compiled for them); pointers address
    /// `LANES` floats.
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn sub(self, b: Self) -> Self;
    unsafe fn mul(self, b: Self) -> Self;
    /// The lanes' minimum (`b` where either is NaN).
    unsafe fn min(self, b: Self) -> Self;
    /// The lanes' maximum (`b` where either is NaN).
    unsafe fn max(self, b: Self) -> Self;
    /// `self·b + c`, rounded once.
    unsafe fn fmadd(self, b: Self, c: Self) -> Self;
    /// `c − self·b`, rounded once.
    unsafe fn fnmadd(self, b: Self, c: Self) -> Self;
    /// `2^k` where `self` is `k + rounder` (an integer held in a float whose low mantissa
    /// bits are `k`).
    unsafe fn pow2_of_rounded(self, rounder: f32) -> Self;
    /// `y` where `self` is not below `low` (NaN included), 0 where it is.
    unsafe fn zero_below(self, low: f32, y: Self) -> Self;
}

/// The methods of [`F32s`] that are one intrinsic each, given the register type's intrinsics.
macro_rules! f32s_common {
    ($set1:ident, $load:ident, $store:ident, $add:ident, $sub:ident, $mul:ident, $min:ident,
     $max:ident, $fmadd:ident, $fnmadd:ident) => {
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            unsafe { $set1(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { $load(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { $store(p, self) }
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            unsafe { $add(self, b) }
        }
        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            unsafe { $sub(self, b) }
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            unsafe { $mul(self, b) }
        }
        #[inline(always)]
        unsafe fn min(self, b: Self) -> Self {
            unsafe { $min(self, b) }
        }
        #[inline(always)]
        unsafe fn max(self, b: Self) -> Self {
            unsafe { $max(self, b) }
        }
        #[inline(always)]
        unsafe fn fmadd(self, b: Self, c: Self) -> Self {
            unsafe { $fmadd(self, b, c) }
        }
        #[inline(always)]
        unsafe fn fnmadd(self, b: Self, c: Self) -> Self {
            unsafe { $fnmadd(self, b, c) }
        }
    };
}

impl F32s for __m256 {
    const LANES: usize = 8;
    f32s_common!(
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_mul_ps,
        _mm256_min_ps,
        _mm256_max_ps,
        _mm256_fmadd_ps,
        _mm256_fnmadd_ps
    );
    #[inline(always)]
    unsafe fn pow2_of_rounded(self, rounder: f32) -> Self {
        unsafe {
            let k = _mm256_sub_epi32(
                _mm256_castps_si256(self),
                _mm256_set1_epi32(rounder.to_bits() as i32),
            );
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                k,
                _mm256_set1_epi32(127),
            )))
        }
    }
    #[inline(always)]
    unsafe fn zero_below(self, low: f32, y: Self) -> Self {
        unsafe { _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(self, _mm256_set1_ps(low)), y) }
    }
}

impl F32s for __m512 {
    const LANES: usize = 16;
    f32s_common!(
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_add_ps,
        _mm512_sub_ps,
        _mm512_mul_ps,
        _mm512_min_ps,
        _mm512_max_ps,
        _mm512_fmadd_ps,
        _mm512_fnmadd_ps
    );
    #[inline(always)]
    unsafe fn pow2_of_rounded(self, rounder: f32) -> Self {
        unsafe {
            let k = _mm512_sub_epi32(
                _mm512_castps_si512(self),
                _mm512_set1_epi32(rounder.to_bits() as i32),
            );
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                k,
                _mm512_set1_epi32(127),
            )))
        }
    }
    #[inline(always)]
    unsafe fn zero_below(self, low: f32, y: Self) -> Self {
        unsafe {
            let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(self, _mm512_set1_ps(low));
            _mm512_maskz_mov_ps(keep, y)
        }
    }
}

/// [`weft_graph::math::exp_fused`] of each lane of `K` registers, bit for bit: the same steps
/// with the same roundings (`e^x` within 2 ulp; 0 below the normal range, NaN stays NaN).
/// Each step is taken for all `K` before the next: the steps of one are a chain of some 15
/// dependent instructions (about 50 cycles), and out-of-order execution overlaps only two or
/// three such chains on its own, so a loop of single calls waits on latency at a third of the
/// throughput.
///
/// # Safety
/// The CPU has `V`'s features (inlined into code compiled for them).
#[inline(always)]
pub unsafe fn exps<V: F32s, const K: usize>(x: [V; K]) -> [V; K] {
    const LOW: f32 = -87.336_55;
    const ROUNDER: f32 = 12_582_912.0;
    // SAFETY: register arithmetic only; the caller's contract gives the features.
    unsafe {
        let set = |v: f32| V::splat(v);
        // (max and min return their second operand when one is NaN: NaN goes through)
        let xc = x.map(|x| set(88.37).min(set(LOW).max(x)));
        let t: [V; K] =
            std::array::from_fn(|i| xc[i].fmadd(set(std::f32::consts::LOG2_E), set(ROUNDER)));
        let n = t.map(|t| t.sub(set(ROUNDER)));
        let r: [V; K] = std::array::from_fn(|i| n[i].fnmadd(set(0.693_359_4), xc[i]));
        let r: [V; K] = std::array::from_fn(|i| n[i].fnmadd(set(-2.121_944_4e-4), r[i]));
        let mut p = [set(1.987_569_1e-4); K];
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            for i in 0..K {
                p[i] = p[i].fmadd(r[i], set(c));
            }
        }
        let p: [V; K] = std::array::from_fn(|i| p[i].mul(r[i]).fmadd(r[i], r[i]).add(set(1.0)));
        std::array::from_fn(|i| {
            let y = p[i].mul(t[i].pow2_of_rounded(ROUNDER));
            x[i].zero_below(LOW, y)
        })
    }
}

/// The four registers' lane sums, `[Σ a[0], Σ a[1], Σ a[2], Σ a[3]]`.
///
/// # Safety
/// The CPU has AVX2 (inlined into code compiled for it).
#[inline(always)]
pub unsafe fn hsum4(a: [__m256; 4]) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    // SAFETY: register shuffles and a store of 4 floats into `out`; the caller's contract
    // gives the features.
    unsafe {
        let s = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        _mm_storeu_ps(out.as_mut_ptr(), s);
    }
    out
}

/// The 8 × 8 transpose of eight rows of eight lanes.
///
/// # Safety
/// The CPU has AVX2 (inlined into code compiled for it).
#[inline(always)]
pub unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: register shuffles only; the caller's contract gives the features.
    unsafe {
        // pairs of rows interleaved, then pairs of pairs, then the 128-bit halves
        let a: [__m256; 8] = std::array::from_fn(|i| {
            let (x, y) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(x, y)
            } else {
                _mm256_unpackhi_ps(x, y)
            }
        });
        // b[4q + j] for rows 4q..4q + 4: j = 0, 1 from a[4q] and a[4q + 2], 2, 3 from a[4q + 1]
        // and a[4q + 3]
        let b: [__m256; 8] = std::array::from_fn(|i| {
            let (q, j) = (i / 4, i % 4);
            let (x, y) = (a[4 * q + j / 2], a[4 * q + j / 2 + 2]);
            if j % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(x, y)
            } else {
                _mm256_shuffle_ps::<0xEE>(x, y)
            }
        });
        std::array::from_fn(|i| {
            if i < 4 {
                _mm256_permute2f128_ps::<0x20>(b[i], b[i + 4])
            } else {
                _mm256_permute2f128_ps::<0x31>(b[i - 4], b[i])
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_graph::math;

    #[target_feature(enable = "avx2,fma")]
    fn exp8_of(x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; 8];
        // SAFETY: compiled for AVX2 and FMA; both hold 8 values.
        unsafe { exps([__m256::load(x.as_ptr())])[0].store(out.as_mut_ptr()) };
        out
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    fn exp16_of(x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; 16];
        // SAFETY: compiled for AVX-512 F; both hold 16 values.
        unsafe { exps([__m512::load(x.as_ptr())])[0].store(out.as_mut_ptr()) };
        out
    }

    #[test]
    fn exps_equal_the_scalar_exp_bit_for_bit() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("exps not checked: this CPU lacks AVX2 or FMA");
            return;
        }
        let edges = [
            0.0,
            -0.0,
            -87.336_55,
            -87.4,
            -100.0,
            88.37,
            88.4,
            1e30,
            f32::NEG_INFINITY,
            f32::INFINITY,
        ];
        let mut xs: Vec<f32> = edges.to_vec();
        let mut x = -90.0f32;
        while x < 90.0 {
            xs.push(x);
            x += 0.000_91;
        }
        xs.resize(xs.len().next_multiple_of(16), 1.5);
        let wide = is_x86_feature_detected!("avx512f");
        type Of = unsafe fn(&[f32]) -> Vec<f32>;
        let forms: [(usize, Of); 2] = [(8, exp8_of), (16, exp16_of)];
        for (lanes, of) in forms.into_iter().filter(|(l, _)| *l == 8 || wide) {
            for chunk in xs.chunks_exact(lanes) {
                // SAFETY: the CPU has the form's features, checked above.
                let got = unsafe { of(chunk) };
                for (xi, g) in chunk.iter().zip(got) {
                    let want = math::exp_fused(*xi);
                    assert_eq!(
                        g.to_bits(),
                        want.to_bits(),
                        "exp of {lanes} lanes ({xi}) = {g}, exp = {want}"
                    );
                }
            }
            // SAFETY: as above.
            let nan = unsafe { of(&[f32::NAN; 16]) };
            assert!(nan.iter().all(|v| v.is_nan()));
        }
    }
}

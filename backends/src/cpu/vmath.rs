//! f32 functions on eight AVX2 lanes at once, equal lane for lane to their scalar forms in
//! `weft_graph::math`.

use std::arch::x86_64::*;

/// [`weft_graph::math::exp_fused`] of each lane, bit for bit: the same steps with the same
/// roundings (`e^x` within 2 ulp; 0 below the normal range, NaN stays NaN).
///
/// # Safety
/// The CPU has AVX2 and FMA (inlined into code compiled for them).
#[inline(always)]
pub unsafe fn exp8(x: __m256) -> __m256 {
    // SAFETY: the caller's contract.
    unsafe { exp8s([x])[0] }
}

/// [`exp8`] of `K` vectors, each step taken for all of them before the next: the steps of one
/// are a chain of some 15 dependent instructions (about 50 cycles), and out-of-order execution
/// overlaps only two or three such chains on its own, so a loop of single calls waits on
/// latency at a third of the throughput.
///
/// # Safety
/// As [`exp8`].
#[inline(always)]
pub unsafe fn exp8s<const K: usize>(x: [__m256; K]) -> [__m256; K] {
    const LOW: f32 = -87.336_55;
    const ROUNDER: f32 = 12_582_912.0;
    // SAFETY: register arithmetic only; the caller's contract gives the features.
    unsafe {
        let set = _mm256_set1_ps;
        // (max and min return their second operand when one is NaN: NaN goes through)
        let xc = x.map(|x| _mm256_min_ps(set(88.37), _mm256_max_ps(set(LOW), x)));
        let t: [__m256; K] = std::array::from_fn(|i| {
            _mm256_fmadd_ps(xc[i], set(std::f32::consts::LOG2_E), set(ROUNDER))
        });
        let n = t.map(|t| _mm256_sub_ps(t, set(ROUNDER)));
        let r: [__m256; K] =
            std::array::from_fn(|i| _mm256_fnmadd_ps(n[i], set(0.693_359_4), xc[i]));
        let r: [__m256; K] =
            std::array::from_fn(|i| _mm256_fnmadd_ps(n[i], set(-2.121_944_4e-4), r[i]));
        let mut p = [set(1.987_569_1e-4); K];
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            for i in 0..K {
                p[i] = _mm256_fmadd_ps(p[i], r[i], set(c));
            }
        }
        let p: [__m256; K] = std::array::from_fn(|i| {
            _mm256_add_ps(
                _mm256_fmadd_ps(_mm256_mul_ps(p[i], r[i]), r[i], r[i]),
                set(1.0),
            )
        });
        std::array::from_fn(|i| {
            let k = _mm256_sub_epi32(
                _mm256_castps_si256(t[i]),
                _mm256_set1_epi32(ROUNDER.to_bits() as i32),
            );
            let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127)));
            let y = _mm256_mul_ps(p[i], _mm256_castsi256_ps(scale));
            _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x[i], set(LOW)), y)
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
    fn exp8_of(x: [f32; 8]) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        // SAFETY: compiled for AVX2 and FMA; both arrays hold 8 values.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(x.as_ptr()))) };
        out
    }

    #[test]
    fn exp8_equals_the_scalar_exp_bit_for_bit() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("exp8 not checked: this CPU lacks AVX2 or FMA");
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
        xs.resize(xs.len().next_multiple_of(8), 1.5);
        for chunk in xs.chunks_exact(8) {
            let x: [f32; 8] = chunk.try_into().unwrap();
            // SAFETY: the CPU has AVX2 and FMA, checked above.
            let got = unsafe { exp8_of(x) };
            for (xi, g) in x.iter().zip(got) {
                let want = math::exp_fused(*xi);
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "exp8({xi}) = {g}, exp = {want}"
                );
            }
        }
        // SAFETY: as above.
        let nan = unsafe { exp8_of([f32::NAN; 8]) };
        assert!(nan.iter().all(|v| v.is_nan()));
    }
}

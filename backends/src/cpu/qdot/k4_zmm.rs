//! The one-row Q4_K product (decode's mat-vecs) in 512-bit registers, where the CPU has AVX-512
//! BW: each 32 bytes of a super-block's 4-bit values, broadcast to both halves of a register
//! and shifted by 0 in one half and 4 in the other, are the 64 values of two sub-blocks in the
//! order of the activations, so one load of 64 activations, one `vpmaddubsw` and one `vpmaddwd`
//! (each half with its sub-block's scale) take what two of each took in 256-bit registers.

use super::Q8KBlock;
use super::avx2::{f16_pair, hsum, k_scales_vec, load32};
use std::arch::x86_64::*;

/// Bytes per Q4_K super-block.
const BLOCK: usize = 144;

/// Whether this CPU runs [`q4_k`].
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && super::avx2::supported()
}

/// `w · a` for one Q4_K row; handed out only where [`available`].
pub(super) fn q4_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    // SAFETY: `avx2::kernel` hands this out only where `available()` is true.
    unsafe { q4_k_avx512(w, a) }
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
fn q4_k_avx512(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let nb = (w.len() / BLOCK).min(a.len());
    let mask = _mm512_set1_epi8(0x0f);
    // the low nibbles in the lower half (sub-block 2c), the high ones in the upper (2c + 1)
    let shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    // for chunk c, the byte shuffle that puts scale word 2c in every word of the lower half
    // and word 2c + 1 in every word of the upper
    let pick: [__m512i; 4] = std::array::from_fn(|c| {
        let word = |j: usize| i16::from_le_bytes([2 * j as u8, 2 * j as u8 + 1]);
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set1_epi16(word(2 * c))),
            _mm256_set1_epi16(word(2 * c + 1)),
        )
    });
    let mut acc = _mm512_setzero_ps();
    let mut mins = _mm256_setzero_ps();
    for (b, y) in w.chunks_exact(BLOCK).zip(a).take(nb) {
        let sm = k_scales_vec(b);
        let scales = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(sm));
        let mut sumi = _mm512_setzero_si512();
        for (c, pick) in pick.iter().enumerate() {
            let q = _mm512_broadcast_i64x4(load32(&b[16 + 32 * c..]));
            let v = _mm512_and_si512(_mm512_srlv_epi64(q, shifts), mask);
            // SAFETY: `qs` holds 256 bytes, so 64 from 64·c (c < 4) are readable.
            let yv = unsafe { _mm512_loadu_si512(y.qs.as_ptr().add(64 * c).cast()) };
            let p = _mm512_maddubs_epi16(v, yv);
            let s = _mm512_shuffle_epi8(scales, *pick);
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, s));
        }
        // Σ_j min_j · (bsums[2j] + bsums[2j + 1]): each min twice, against the pair's sums
        let pairs = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
            sm,
            _mm_set_epi8(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8),
        ));
        // SAFETY: `bsums` is 16 i16s, 32 readable bytes.
        let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
        let msum = _mm256_madd_epi16(pairs, bsums);
        let dd = f16_pair(b, 0);
        let (d, dmin) = (_mm_cvtss_f32(dd), _mm_cvtss_f32(_mm_movehdup_ps(dd)));
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d * y.d), _mm512_cvtepi32_ps(sumi), acc);
        mins = _mm256_fmadd_ps(_mm256_set1_ps(dmin * y.d), _mm256_cvtepi32_ps(msum), mins);
    }
    _mm512_reduce_add_ps(acc) - hsum(mins)
}

//! The one-row Q4_K and Q6_K products (decode's mat-vecs) in 512-bit registers, where the CPU
//! has AVX-512 BW: the values of 64 consecutive elements are built in one register in the order
//! of the activations, so one load of 64 activations, one `vpmaddubsw` and one `vpmaddwd` (each
//! 128-bit lane with its group's scale) take what two of each took in 256-bit registers.
//! - Q4_K: 32 bytes of 4-bit values, broadcast to both halves and shifted by 0 in one half and
//!   4 in the other, are two sub-blocks' values; Q5_K adds each sub-block's bit of its 32 bytes
//!   of fifth bits, broadcast and rotated to bit 4 per half.
//! - Q6_K: 64 bytes of low nibbles are 64 consecutive elements' low bits (or, shifted by 4,
//!   the next 64's), and 32 bytes of high bits, broadcast and shifted by 0 and 2 (or 4 and 6),
//!   their top two bits.
//!
//! Each row asks for its weights ahead of the block it reads where the CPU's own prefetchers
//! fall behind (`avx2::decode_prefetch`).

use super::avx2::{decode_prefetch, f16_at, f16_pair, hsum, k_scales_vec, load32, prefetch_ahead};
use super::{Q8KBlock, RowK};
use std::arch::x86_64::*;

/// Bytes per Q4_K super-block (Q5_K: 176, 32 bytes of fifth bits from byte 16).
const BLOCK: usize = 144;
const BLOCK5: usize = 176;
/// Bytes per Q6_K super-block: 128 of low nibbles, 64 of high bit pairs, 16 scales, the f16
/// scale.
const BLOCK6: usize = 210;

/// Whether this CPU runs [`q4_k`], [`q5_k`] and [`q6_k`].
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && super::avx2::supported()
}

/// The one-row product of `dtype` (Q4_K, Q5_K or Q6_K) where the CPU runs this file's kernels.
pub(super) fn one_row(dtype: weft_graph::DType) -> Option<RowK> {
    use weft_graph::DType;
    if !available() {
        return None;
    }
    match dtype {
        DType::Q4K => Some(q4_k),
        DType::Q5K => Some(q5_k),
        DType::Q6K => Some(q6_k),
        _ => None,
    }
}

/// `w · a` for one Q4_K row; handed out only where [`available`].
pub(super) fn q4_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    // SAFETY: `one_row` hands this out only where `available()` is true.
    unsafe { k4_avx512::<false>(w, a) }
}

/// `w · a` for one Q5_K row; handed out only where [`available`].
pub(super) fn q5_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    // SAFETY: as above.
    unsafe { k4_avx512::<true>(w, a) }
}

/// `w · a` for one Q6_K row; handed out only where [`available`].
pub(super) fn q6_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    // SAFETY: `one_row` hands this out only where `available()` is true.
    unsafe { q6_k_avx512(w, a) }
}

/// The byte shuffle that puts word `words[l]` of a 128-bit lane's eight in every word of lane
/// `l` (each group of elements with its scale).
#[target_feature(enable = "avx512f,avx512bw")]
fn lane_words(words: [usize; 4]) -> __m512i {
    let bytes: [u8; 64] = std::array::from_fn(|i| (2 * words[i / 16] + i % 2) as u8);
    // SAFETY: 64 readable bytes.
    unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
fn q6_k_avx512(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let nb = (w.len() / BLOCK6).min(a.len());
    let m4 = _mm512_set1_epi8(0x0f);
    let m2 = _mm512_set1_epi8(0x03);
    // high bit pairs: elements 0..32 of a quarter from bits 0-1, 32..64 from bits 2-3, then
    // 64..96 from 4-5 and 96..128 from 6-7
    let (shift01, shift23) = (
        _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0),
        _mm512_set_epi64(6, 6, 6, 6, 4, 4, 4, 4),
    );
    // groups of 16: lane i of the first 64 of a half takes scale i, of the next 64 scale 4 + i
    let (pick01, pick23) = (lane_words([0, 1, 2, 3]), lane_words([4, 5, 6, 7]));
    let ahead = decode_prefetch();
    let mut acc = _mm512_setzero_ps();
    let mut offsets = _mm256_setzero_ps();
    for (b, y) in w.chunks_exact(BLOCK6).zip(a).take(nb) {
        if ahead {
            prefetch_ahead(b, BLOCK6.div_ceil(64));
        }
        // SAFETY: 16 scale bytes at 192..208 are readable.
        let sc = unsafe { _mm_loadu_si128(b[192..208].as_ptr().cast()) };
        let mut sumi = _mm512_setzero_si512();
        for n in 0..2 {
            // SAFETY: 64 bytes of low nibbles from 64·n (n < 2), within the first 128.
            let ql = unsafe { _mm512_loadu_si512(b.as_ptr().add(64 * n).cast()) };
            let qh = _mm512_broadcast_i64x4(load32(&b[128 + 32 * n..]));
            let top =
                |s: __m512i| _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi64(qh, s), m2));
            let v01 = _mm512_or_si512(_mm512_and_si512(ql, m4), top(shift01));
            let v23 = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                top(shift23),
            );
            // this half's eight scales as words in every 128-bit lane
            let half = _mm512_broadcast_i32x4(_mm_cvtepi8_epi16(if n == 0 {
                sc
            } else {
                _mm_srli_si128::<8>(sc)
            }));
            for (j, (v, pick)) in [(v01, pick01), (v23, pick23)].into_iter().enumerate() {
                // SAFETY: `qs` holds 256 bytes; 64 from 128·n + 64·j (n, j < 2) are readable.
                let yv = unsafe { _mm512_loadu_si512(y.qs.as_ptr().add(128 * n + 64 * j).cast()) };
                let p = _mm512_maddubs_epi16(v, yv);
                let s = _mm512_shuffle_epi8(half, pick);
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, s));
            }
        }
        // the q − 32 offset: 32 · Σ_g scale_g · Σy(group g)
        // SAFETY: the 16 i16 `bsums` are readable.
        let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
        let offset = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), bsums), 5);
        let dy = f16_at(b, 208) * y.d;
        acc = _mm512_fmadd_ps(_mm512_set1_ps(dy), _mm512_cvtepi32_ps(sumi), acc);
        offsets = _mm256_fmadd_ps(_mm256_set1_ps(dy), _mm256_cvtepi32_ps(offset), offsets);
    }
    _mm512_reduce_add_ps(acc) - hsum(offsets)
}

/// A Q4_K row, or with `FIFTH` a Q5_K row, against one activation row.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
fn k4_avx512<const FIFTH: bool>(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let (bytes, qs_at) = if FIFTH { (BLOCK5, 48) } else { (BLOCK, 16) };
    let nb = (w.len() / bytes).min(a.len());
    let mask = _mm512_set1_epi8(0x0f);
    // the low nibbles in the lower half (sub-block 2c), the high ones in the upper (2c + 1)
    let shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    // for chunk c, the byte shuffle that puts scale word 2c in every word of the lower half
    // and word 2c + 1 in every word of the upper
    let pick: [__m512i; 4] =
        std::array::from_fn(|c| lane_words([2 * c, 2 * c, 2 * c + 1, 2 * c + 1]));
    // Q5_K: sub-block j's fifth bits are bit j of the 32 bytes; rotating each 64-bit lane left
    // by 4 − j (mod 64) brings bit j of every byte to its bit 4 (j ≤ 7 keeps it in the byte)
    let rot: [__m512i; 4] = std::array::from_fn(|c| {
        let r = |j: usize| ((4 + 64 - j) % 64) as i64;
        let (lo, hi) = (r(2 * c), r(2 * c + 1));
        _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo)
    });
    let ahead = decode_prefetch();
    let mut acc = _mm512_setzero_ps();
    let mut mins = _mm256_setzero_ps();
    for (b, y) in w.chunks_exact(bytes).zip(a).take(nb) {
        if ahead {
            prefetch_ahead(b, bytes.div_ceil(64));
        }
        let sm = k_scales_vec(b);
        let scales = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(sm));
        let qh = if FIFTH {
            _mm512_broadcast_i64x4(load32(&b[16..]))
        } else {
            _mm512_setzero_si512()
        };
        let mut sumi = _mm512_setzero_si512();
        for (c, pick) in pick.iter().enumerate() {
            let q = _mm512_broadcast_i64x4(load32(&b[qs_at + 32 * c..]));
            let mut v = _mm512_and_si512(_mm512_srlv_epi64(q, shifts), mask);
            if FIFTH {
                let fifth = _mm512_and_si512(_mm512_rolv_epi64(qh, rot[c]), _mm512_set1_epi8(0x10));
                v = _mm512_or_si512(v, fifth);
            }
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

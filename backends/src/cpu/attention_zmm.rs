//! Attention in AVX-512 registers: prompts' scores in tiles over transposed keys, every
//! row's weighted sums in tiles, decode's scores on the key rows as they lie.
//!
//! Scores: the keys of each key head are transposed once per node (`KeysT`, a key per lane),
//! so a tile of up to 8 query heads by 32 keys sums `q_g[i] · k_j[i]` over the head dimension
//! `i` with one broadcast query element and two key vectors per step: no horizontal sums, and
//! each key row is read once per tile instead of once per head.
//!
//! Weighted sums: up to 4 heads by 64 value columns in 16 registers, each value row read once
//! per tile; a key one of the heads weighs zero is skipped for that head (as in the other
//! kernels, so a value row of infinities it does not weigh stays out of its sums).

use super::attention::{
    AHEAD, Avx2, Elem, Operands, RowKernels, Scratch, UnitKeys, group_body, scores_by_rows,
};
use std::arch::x86_64::*;

/// Keys per score tile (two registers).
const KEYS: usize = 32;
/// Value columns per weighted-sum tile (four registers).
const COLS: usize = 64;

/// Every key head's keys transposed: element `i` of key `j` of key head `kh` at
/// `(kh·d + i)·stride + j`, with room for a whole tile of keys past the last one.
#[derive(Debug)]
pub(super) struct KeysT {
    data: Vec<f32>,
    stride: usize,
}

impl KeysT {
    /// `k` laid out `[tk, hkv, d]`.
    pub fn new<E: Elem>(k: &[E], tk: usize, hkv: usize, d: usize) -> KeysT {
        let stride = (tk + KEYS).next_multiple_of(16);
        let mut data = vec![0.0; hkv * d * stride];
        if d > 0 {
            for (j, key) in k.chunks_exact(d).take(tk * hkv).enumerate() {
                let (j, kh) = (j / hkv, j % hkv);
                for (i, &x) in key.iter().enumerate() {
                    data[(kh * d + i) * stride + j] = x.to_f32();
                }
            }
        }
        KeysT { data, stride }
    }
}

/// Whether this CPU runs [`group`].
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// [`group_body`] with the AVX-512 tiles: the weighted sums always, the scores where the keys
/// were transposed (`kt`: prompts; decode scores the key rows as they lie).
///
/// # Safety
/// The CPU has AVX-512 F, BW and VL, AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn group<E: Elem>(
    ops: &Operands<E>,
    kt: Option<&KeysT>,
    unit: usize,
    per: usize,
    o: &mut [f32],
    scratch: &mut Scratch,
) {
    // SAFETY: the caller vouches for AVX2, FMA and F16C.
    let avx2 = unsafe { Avx2::new() };
    group_body(ops, unit, per, o, scratch, Zmm { kt, avx2 });
}

/// [`RowKernels`] in AVX-512: scores in tiles over `kt` where the keys were transposed, else
/// `dot4_zmm` on the key rows; weighted sums in tiles (so `sum32` goes unused); made only by
/// [`group`].
#[derive(Clone, Copy)]
struct Zmm<'a> {
    kt: Option<&'a KeysT>,
    avx2: Avx2,
}

impl RowKernels for Zmm<'_> {
    #[inline(always)]
    fn dot4<E: Elem>(&self, a: &[f32], b: [&[E]; 4]) -> [f32; 4] {
        assert!(b.iter().all(|r| r.len() >= a.len()));
        // SAFETY: AVX-512 F, BW and VL (a `Zmm` exists only inside `group`); the rows are as
        // long as `a`.
        unsafe { dot4_zmm(a, b) }
    }

    #[inline(always)]
    fn sum32<const N: usize>(
        &self,
        p: [&[f32]; N],
        v: &[f32],
        at: impl Fn(usize) -> usize,
        acc: &mut [[f32; 32]; N],
    ) {
        self.avx2.sum32(p, v, at, acc)
    }

    #[inline(always)]
    fn scores<E: Elem>(
        &self,
        ops: &Operands<E>,
        queries: &[f32],
        keys: &UnitKeys,
        scores: &mut [f32],
    ) {
        let Some(kt) = self.kt else {
            return scores_by_rows(self, ops, queries, keys, scores);
        };
        let d = ops.dims[2];
        let per = keys.per;
        assert!(scores.len() >= per * keys.n && keys.mask.is_none_or(|m| m.len() >= keys.n));
        assert!(queries.len() >= per * d);
        assert!(keys.lo + keys.n + KEYS <= kt.stride);
        assert!(kt.data.len() >= (keys.kh + 1) * d * kt.stride);
        let mut g = 0;
        // SAFETY: an `Zmm` exists only inside `group`, where the CPU has AVX-512 F; the tiles
        // read and write within the bounds asserted above.
        unsafe {
            while g < per {
                g += match per - g {
                    8.. => score_tile::<E, 8>(kt, ops, queries, keys, scores, g),
                    4..8 => score_tile::<E, 4>(kt, ops, queries, keys, scores, g),
                    2..4 => score_tile::<E, 2>(kt, ops, queries, keys, scores, g),
                    _ => score_tile::<E, 1>(kt, ops, queries, keys, scores, g),
                };
            }
        }
    }

    #[inline(always)]
    fn weighted<E: Elem>(
        &self,
        ops: &Operands<E>,
        keys: &UnitKeys,
        scores: &[f32],
        o: &mut [f32],
        _rows: &mut Vec<f32>,
    ) {
        let [_, _, _, tk, hkv, dv] = ops.dims;
        let per = keys.per;
        assert!(o.len() >= per * dv);
        assert!(scores.len() >= per * keys.n && keys.lo + keys.n <= tk);
        assert!(ops.v.len() >= tk * hkv * dv && keys.kh < hkv);
        for c0 in (0..dv).step_by(COLS) {
            let mut g = 0;
            // SAFETY: as in `scores`; value rows of keys below `tk` and `o`'s rows are read and
            // written in the columns below `dv` only (masked lanes past them are untouched).
            unsafe {
                while g < per {
                    g += match per - g {
                        4.. => weighted_tile::<E, 4>(ops, keys, scores, o, g, c0),
                        2..4 => weighted_tile::<E, 2>(ops, keys, scores, o, g, c0),
                        _ => weighted_tile::<E, 1>(ops, keys, scores, o, g, c0),
                    };
                }
            }
        }
    }
}

/// Four dot products in 512-bit registers (decode's scores, on the key rows as they lie): two
/// sums per row, so consecutive multiply-adds do not wait on each other, the last partial
/// block through masked loads, then the four rows' sums folded together.
///
/// # Safety
/// AVX-512 F, BW and VL; every row of `b` at least as long as `a`.
#[inline(always)]
unsafe fn dot4_zmm<E: Elem>(a: &[f32], b: [&[E]; 4]) -> [f32; 4] {
    let n = a.len();
    let mut out = [0.0f32; 4];
    // SAFETY: the caller's contract; full loads end by `n`, the masked one reads below it.
    unsafe {
        let (mut even, mut odd) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4]);
        let mut c = 0;
        while c + 32 <= n {
            let x0 = _mm512_loadu_ps(a.as_ptr().add(c));
            let x1 = _mm512_loadu_ps(a.as_ptr().add(c + 16));
            for r in 0..4 {
                let y = b[r].as_ptr().add(c);
                even[r] = _mm512_fmadd_ps(x0, E::load16(ALL, y), even[r]);
                odd[r] = _mm512_fmadd_ps(x1, E::load16(ALL, y.add(16)), odd[r]);
            }
            c += 32;
        }
        while c < n {
            let lanes = first_lanes(n - c);
            let x = _mm512_maskz_loadu_ps(lanes, a.as_ptr().add(c));
            for r in 0..4 {
                let y = E::load16(lanes, b[r].as_ptr().add(c));
                even[r] = _mm512_fmadd_ps(x, y, even[r]);
            }
            c += 16;
        }
        // each row's 16 lanes folded to 8, then the four rows' together as in `dot4_avx2`
        let v: [__m256; 4] = std::array::from_fn(|r| {
            let s = _mm512_add_ps(even[r], odd[r]);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s)));
            _mm256_add_ps(_mm512_castps512_ps256(s), hi)
        });
        let s = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        _mm_storeu_ps(out.as_mut_ptr(), s);
    }
    out
}

/// All 16 lanes.
const ALL: __mmask16 = 0xFFFF;

/// The lanes of the first `n` of 16 (all of them from 16).
fn first_lanes(n: usize) -> __mmask16 {
    if n >= 16 { ALL } else { (1u16 << n) - 1 }
}

/// The scores of query heads `g0..g0 + H` against every key of the unit, a tile of 32 keys at
/// a time; returns `H`.
///
/// # Safety
/// AVX-512 F; the bounds [`Zmm::scores`] asserts.
#[inline(always)]
unsafe fn score_tile<E, const H: usize>(
    kt: &KeysT,
    ops: &Operands<E>,
    queries: &[f32],
    keys: &UnitKeys,
    scores: &mut [f32],
    g0: usize,
) -> usize {
    let d = ops.dims[2];
    let n = keys.n;
    let base = keys.kh * d * kt.stride + keys.lo;
    let q = &queries[g0 * d..(g0 + H) * d];
    // SAFETY: the caller's bounds: key rows end before `lo + n + KEYS ≤ stride`, scores and
    // mask are written and read in their first `n` per head (masked lanes past them untouched).
    unsafe {
        let scale = _mm512_set1_ps(ops.scale);
        let hidden_value = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut j = 0;
        while j < n {
            let mut acc = [[_mm512_setzero_ps(); 2]; H];
            let mut row = kt.data.as_ptr().add(base + j);
            for i in 0..d {
                let (k0, k1) = (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)));
                for h in 0..H {
                    let qv = _mm512_set1_ps(*q.get_unchecked(h * d + i));
                    acc[h][0] = _mm512_fmadd_ps(qv, k0, acc[h][0]);
                    acc[h][1] = _mm512_fmadd_ps(qv, k1, acc[h][1]);
                }
                row = row.wrapping_add(kt.stride);
            }
            for half in 0..2 {
                let j1 = j + 16 * half;
                if j1 >= n {
                    break;
                }
                let lanes = first_lanes(n - j1);
                let (m, hidden) = match keys.mask {
                    Some(m) => {
                        let m = _mm512_maskz_loadu_ps(lanes, m.as_ptr().add(j1));
                        (m, _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(m, hidden_value))
                    }
                    None => (_mm512_setzero_ps(), 0),
                };
                for h in 0..H {
                    // dot·scale + m, and -inf where the mask hides the key whatever the dot
                    let s = _mm512_mask_mov_ps(
                        _mm512_fmadd_ps(acc[h][half], scale, m),
                        hidden,
                        hidden_value,
                    );
                    let at = scores.as_mut_ptr().add((g0 + h) * n + j1);
                    _mm512_mask_storeu_ps(at, lanes, s);
                }
            }
            j += KEYS;
        }
    }
    H
}

/// `Σ_j p_gj·v_j` for heads `g0..g0 + H` in value columns `c0..c0 + 64` (those below `dv`);
/// returns `H`.
///
/// # Safety
/// AVX-512 F, BW and VL; the bounds [`Zmm::weighted`] asserts.
#[inline(always)]
unsafe fn weighted_tile<E: Elem, const H: usize>(
    ops: &Operands<E>,
    keys: &UnitKeys,
    scores: &[f32],
    o: &mut [f32],
    g0: usize,
    c0: usize,
) -> usize {
    let [_, _, _, _, hkv, dv] = ops.dims;
    let n = keys.n;
    let lanes: [__mmask16; 4] =
        std::array::from_fn(|z| first_lanes((dv - c0).saturating_sub(16 * z)));
    // SAFETY: the caller's bounds; loads and stores reach columns below `dv` only.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 4]; H];
        for j in 0..n {
            let w: [f32; H] = std::array::from_fn(|h| *scores.get_unchecked((g0 + h) * n + j));
            let row = ops
                .v
                .as_ptr()
                .wrapping_add(((keys.lo + j) * hkv + keys.kh) * dv + c0);
            // the row AHEAD keys on, from memory while this one is summed (a prefetch reads
            // nothing architecturally, so an address past the cache's end is harmless)
            let next = row.wrapping_add(AHEAD * hkv * dv);
            for z in 0..4 {
                // (a line per 16 f32 or per 32 f16)
                if lanes[z] != 0 && (16 * z * size_of::<E>()).is_multiple_of(64) {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(16 * z).cast());
                }
            }
            // (a loop, not a closure: a closure would not inherit this code's target features)
            let mut x = [_mm512_setzero_ps(); 4];
            for z in 0..4 {
                x[z] = E::load16(lanes[z], row.wrapping_add(16 * z));
            }
            let all = w.iter().all(|&p| p != 0.0);
            for h in 0..H {
                if all || w[h] != 0.0 {
                    let p = _mm512_set1_ps(w[h]);
                    for z in 0..4 {
                        acc[h][z] = _mm512_fmadd_ps(p, x[z], acc[h][z]);
                    }
                }
            }
        }
        for h in 0..H {
            let out = o.as_mut_ptr().wrapping_add((g0 + h) * dv + c0);
            for z in 0..4 {
                _mm512_mask_storeu_ps(out.wrapping_add(16 * z), lanes[z], acc[h][z]);
            }
        }
    }
    H
}

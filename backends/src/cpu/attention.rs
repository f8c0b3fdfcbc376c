//! Rotary embeddings and fused attention.

use super::matmul::{axpy_body, dot_body};
use super::rows::softmax_in_place;
use super::team;
use super::tensor::TensorRef;
use weft_graph::{RopeMode, RopeParams};

/// Rotates the first `n_dims` of every head of `x [T, H, D]` by the angles of `pos [T]`.
pub fn rope(x: &TensorRef, pos: &TensorRef, p: RopeParams, out: &mut [f32]) {
    let xv = x.f32();
    out.copy_from_slice(&xv);
    let pv = pos.i32();
    let [t, h, d] = [x.dims()[0], x.dims()[1], x.dims()[2]];
    let half = p.n_dims / 2;
    // theta_i = pos * freq_scale * base^(-2i / n_dims)
    let inv: Vec<f64> = (0..half)
        .map(|i| (p.freq_base as f64).powf(-(2.0 * i as f64) / p.n_dims as f64))
        .collect();
    for ti in 0..t {
        let pos = pv[ti] as f64 * p.freq_scale as f64;
        let cs: Vec<(f32, f32)> = inv
            .iter()
            .map(|f| {
                let a = pos * f;
                (a.cos() as f32, a.sin() as f32)
            })
            .collect();
        for hi in 0..h {
            let row = &mut out[(ti * h + hi) * d..(ti * h + hi + 1) * d];
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = match p.mode {
                    RopeMode::Normal => (2 * i, 2 * i + 1),
                    RopeMode::Neox => (i, i + half),
                };
                let (x0, x1) = (row[a], row[b]);
                row[a] = x0 * c - x1 * s;
                row[b] = x0 * s + x1 * c;
            }
        }
    }
}

/// What every output row of one attention node reads.
struct Operands<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: Option<&'a [f32]>,
    gate: Option<&'a [f32]>,
    /// `[t, hq, d, tk, hkv, dv]`
    dims: [usize; 6],
    scale: f32,
    causal: bool,
}

/// `softmax(q·kᵀ·scale + mask) · v`, grouped-query heads, optional causal mask and gate.
pub fn attention(
    q: &TensorRef,
    k: &TensorRef,
    v: &TensorRef,
    mask: Option<&TensorRef>,
    gate: Option<&TensorRef>,
    scale: f32,
    causal: bool,
    out: &mut [f32],
) {
    let (qv, kv, vv) = (q.f32(), k.f32(), v.f32());
    let mv = mask.map(|m| m.f32());
    let gv = gate.map(|g| g.f32());
    let ops = Operands {
        q: &qv,
        k: &kv,
        v: &vv,
        mask: mv.as_deref(),
        gate: gv.as_deref(),
        dims: [
            q.dims()[0],
            q.dims()[1],
            q.dims()[2],
            k.dims()[0],
            k.dims()[1],
            v.dims()[2],
        ],
        scale,
        causal,
    };
    #[cfg(target_arch = "x86_64")]
    let avx2 =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    team::global().chunks_mut(out, ops.dims[5], |row, o| {
        SCORES.with_borrow_mut(|scores| {
            scores.resize(ops.dims[3], 0.0);
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2 and FMA, checked above.
                return unsafe { row_avx2(&ops, row, o, scores) };
            }
            row_body(&ops, row, o, scores, Plain)
        })
    });
}

thread_local! {
    /// Each worker's scores of one query row, kept between rows.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`row_body`] compiled for AVX2 and FMA, with the [`Avx2`] inner loops (fused multiply-adds,
/// so the last bits differ from [`Plain`]'s).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2(ops: &Operands, row: usize, o: &mut [f32], scores: &mut [f32]) {
    // SAFETY: this function runs only where the CPU has AVX2 and FMA (its features).
    row_body(ops, row, o, scores, unsafe { Avx2::new() })
}

/// The two inner loops of an attention row, portable or in AVX2 and FMA.
trait RowKernels {
    /// `[a · b_r]` for four rows `b_r` (each at least as long as `a`).
    fn dot4(&self, a: &[f32], b: [&[f32]; 4]) -> [f32; 4];
    /// `Σ_j p_j · v[at(j)..at(j) + 32]` over the nonzero `p_j`, each column in key order.
    fn sum32(&self, p: &[f32], v: &[f32], at: impl Fn(usize) -> usize) -> [f32; 32];
}

struct Plain;

impl RowKernels for Plain {
    #[inline(always)]
    fn dot4(&self, a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
        b.map(|r| dot_body(a, &r[..a.len()]))
    }

    #[inline(always)]
    fn sum32(&self, p: &[f32], v: &[f32], at: impl Fn(usize) -> usize) -> [f32; 32] {
        let mut acc = [0.0f32; 32];
        for (j, &pj) in p.iter().enumerate().filter(|(_, p)| **p != 0.0) {
            let vr = &v[at(j)..at(j) + 32];
            for i in 0..32 {
                acc[i] += pj * vr[i];
            }
        }
        acc
    }
}

/// [`RowKernels`] for CPUs with AVX2 and FMA; only [`Avx2::new`], whose caller vouches for
/// them, makes one.
#[cfg(target_arch = "x86_64")]
struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// # Safety
    /// The CPU has AVX2 and FMA.
    unsafe fn new() -> Avx2 {
        Avx2(())
    }
}

#[cfg(target_arch = "x86_64")]
impl RowKernels for Avx2 {
    #[inline(always)]
    fn dot4(&self, a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: an `Avx2` exists only where the CPU has AVX2 and FMA.
        unsafe { dot4_avx2(a, b) }
    }

    #[inline(always)]
    fn sum32(&self, p: &[f32], v: &[f32], at: impl Fn(usize) -> usize) -> [f32; 32] {
        use std::arch::x86_64::*;
        // SAFETY: as `dot4`; every row read is sliced first, so its 32 floats exist.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (j, &pj) in p.iter().enumerate().filter(|(_, p)| **p != 0.0) {
                let vr = &v[at(j)..at(j) + 32];
                let pv = _mm256_set1_ps(pj);
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr.as_ptr().add(8 * i)), *a);
                }
            }
            let mut out = [0.0f32; 32];
            for (i, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *a);
            }
            out
        }
    }
}

/// Four dot products with AVX2 and FMA: eight independent sums (two per row), so consecutive
/// multiply-adds do not wait on each other, then the four rows' lanes summed together.
///
/// # Safety
/// The CPU has AVX2 and FMA (inlined into code compiled for them).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot4_avx2(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = a.len();
    assert!(b.iter().all(|r| r.len() >= n));
    let mut out = [0.0f32; 4];
    let mut c = 0;
    // SAFETY: the caller's contract; every load lies within `a` and the rows (c + 16, or
    // c + 8, ≤ n ≤ their lengths, asserted above).
    unsafe {
        let (mut even, mut odd) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
        while c + 16 <= n {
            let x0 = _mm256_loadu_ps(a.as_ptr().add(c));
            let x1 = _mm256_loadu_ps(a.as_ptr().add(c + 8));
            for r in 0..4 {
                even[r] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(b[r].as_ptr().add(c)), even[r]);
                odd[r] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(b[r].as_ptr().add(c + 8)), odd[r]);
            }
            c += 16;
        }
        if c + 8 <= n {
            let x = _mm256_loadu_ps(a.as_ptr().add(c));
            for r in 0..4 {
                even[r] = _mm256_fmadd_ps(x, _mm256_loadu_ps(b[r].as_ptr().add(c)), even[r]);
            }
            c += 8;
        }
        let mut v = [_mm256_setzero_ps(); 4];
        for r in 0..4 {
            v[r] = _mm256_add_ps(even[r], odd[r]);
        }
        // [Σ0 Σ1 Σ2 Σ3] from the four rows' eight lanes
        let s = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        _mm_storeu_ps(out.as_mut_ptr(), s);
    }
    for (o, r) in out.iter_mut().zip(b) {
        *o += a[c..].iter().zip(&r[c..n]).map(|(x, y)| x * y).sum::<f32>();
    }
    out
}

/// Output row `row` (query token × head): scores for the keys it may see (causality, and the
/// first and last keys the mask lets through, bound them; keys outside cost nothing), four
/// keys at a time, their softmax, then `Σ p_j·v_j`.
#[inline(always)]
fn row_body(
    ops: &Operands,
    row: usize,
    o: &mut [f32],
    scores: &mut [f32],
    kernels: impl RowKernels,
) {
    let [t, hq, d, tk, hkv, dv] = ops.dims;
    let (ti, hi) = (row / hq, row % hq);
    let kh = hi / (hq / hkv);
    let qr = &ops.q[row * d..(row + 1) * d];
    let seen = if ops.causal {
        (ti + tk + 1).saturating_sub(t).min(tk)
    } else {
        tk
    };
    // the keys from the first to the last the mask lets through (a prompt's causal mask ends
    // each row early; a batch's mask hides the other sequences' keys on either side)
    let mask = ops.mask.map(|m| &m[ti * tk..ti * tk + seen]);
    let visible = |m: &&f32| **m != f32::NEG_INFINITY;
    let (lo, hi) = match mask {
        Some(m) => match m.iter().position(|v| visible(&v)) {
            Some(lo) => (
                lo,
                seen - m.iter().rev().position(|v| visible(&v)).unwrap_or(0),
            ),
            None => (0, 0),
        },
        None => (0, seen),
    };
    let scores = &mut scores[..hi - lo];
    let key = |j: usize| &ops.k[((lo + j) * hkv + kh) * d..((lo + j) * hkv + kh + 1) * d];
    let mask_at = |j: usize| mask.map_or(0.0, |m| m[lo + j]);
    // (a hidden key's score is -inf whatever its dot product, even one that overflowed)
    let score = |dot: f32, m: f32| {
        if m == f32::NEG_INFINITY {
            m
        } else {
            dot * ops.scale + m
        }
    };
    let n = hi - lo;
    let mut j = 0;
    while j + 4 <= n {
        let s = kernels.dot4(qr, [key(j), key(j + 1), key(j + 2), key(j + 3)]);
        for (jj, (o, v)) in scores[j..j + 4].iter_mut().zip(s).enumerate() {
            *o = score(v, mask_at(j + jj));
        }
        j += 4;
    }
    for j in j..n {
        scores[j] = score(dot_body(qr, key(j)), mask_at(j));
    }
    softmax_in_place(scores);
    // Σ_j p_j·v_j, 32 output columns at a time so their sums stay in registers across keys
    // (each column still adds its terms in key order).
    for (c, oc) in o.chunks_mut(32).enumerate() {
        let at = |j: usize| ((lo + j) * hkv + kh) * dv + c * 32;
        if oc.len() == 32 {
            oc.copy_from_slice(&kernels.sum32(scores, ops.v, at));
        } else {
            oc.fill(0.0);
            for (j, &p) in scores.iter().enumerate().filter(|(_, p)| **p != 0.0) {
                axpy_body(oc, p, &ops.v[at(j)..at(j) + oc.len()]);
            }
        }
    }
    if let Some(g) = ops.gate {
        let gr = &g[row * dv..(row + 1) * dv];
        o.iter_mut()
            .zip(gr)
            .for_each(|(a, &b)| *a /= 1.0 + (-b).exp());
    }
}

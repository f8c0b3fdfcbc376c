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
    // the query heads that share a key head, one token's, meet its keys and values together
    let group = ops.dims[1] / ops.dims[4];
    team::global().chunks_mut(out, group * ops.dims[5], |unit, o| {
        SCORES.with_borrow_mut(|scores| {
            scores.resize(group * ops.dims[3], 0.0);
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2 and FMA, checked above.
                return unsafe { group_avx2(&ops, unit, o, scores) };
            }
            group_body(&ops, unit, o, scores, Plain)
        })
    });
}

thread_local! {
    /// Each worker's scores of one group of query rows, kept between groups.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`group_body`] compiled for AVX2 and FMA, with the [`Avx2`] inner loops (fused
/// multiply-adds, so the last bits differ from [`Plain`]'s).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn group_avx2(ops: &Operands, unit: usize, o: &mut [f32], scores: &mut [f32]) {
    // SAFETY: this function runs only where the CPU has AVX2 and FMA (its features).
    group_body(ops, unit, o, scores, unsafe { Avx2::new() })
}

/// The two inner loops of an attention row, portable or in AVX2 and FMA.
trait RowKernels {
    /// `[a · b_r]` for four rows `b_r` (each at least as long as `a`).
    fn dot4(&self, a: &[f32], b: [&[f32]; 4]) -> [f32; 4];
    /// `Σ_j p_j · v[at(j)..at(j) + 32]` for each of the two rows of weights `p`, over the
    /// keys where either is nonzero, each column in key order.
    fn sum32x2(&self, p: [&[f32]; 2], v: &[f32], at: impl Fn(usize) -> usize) -> [[f32; 32]; 2];
}

struct Plain;

impl RowKernels for Plain {
    #[inline(always)]
    fn dot4(&self, a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
        b.map(|r| dot_body(a, &r[..a.len()]))
    }

    #[inline(always)]
    fn sum32x2(&self, p: [&[f32]; 2], v: &[f32], at: impl Fn(usize) -> usize) -> [[f32; 32]; 2] {
        let mut acc = [[0.0f32; 32]; 2];
        for (j, (&p0, &p1)) in p[0].iter().zip(p[1]).enumerate() {
            if p0 == 0.0 && p1 == 0.0 {
                continue;
            }
            let vr = &v[at(j)..at(j) + 32];
            for i in 0..32 {
                acc[0][i] += p0 * vr[i];
                acc[1][i] += p1 * vr[i];
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
    fn sum32x2(&self, p: [&[f32]; 2], v: &[f32], at: impl Fn(usize) -> usize) -> [[f32; 32]; 2] {
        use std::arch::x86_64::*;
        // SAFETY: as `dot4`; every row read is sliced first, so its 32 floats exist.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 4]; 2];
            for (j, (&p0, &p1)) in p[0].iter().zip(p[1]).enumerate() {
                if p0 == 0.0 && p1 == 0.0 {
                    continue;
                }
                let vr = &v[at(j)..at(j) + 32];
                let pv = [_mm256_set1_ps(p0), _mm256_set1_ps(p1)];
                for i in 0..4 {
                    let x = _mm256_loadu_ps(vr.as_ptr().add(8 * i));
                    acc[0][i] = _mm256_fmadd_ps(pv[0], x, acc[0][i]);
                    acc[1][i] = _mm256_fmadd_ps(pv[1], x, acc[1][i]);
                }
            }
            let mut out = [[0.0f32; 32]; 2];
            for (o, a) in out.iter_mut().zip(&acc) {
                for (i, r) in a.iter().enumerate() {
                    _mm256_storeu_ps(o.as_mut_ptr().add(8 * i), *r);
                }
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

/// The output rows of group `unit`: the query heads of one token that share a key head (`o`
/// holds their rows). Scores for the keys the token may see (causality, and the first and
/// last keys the mask lets through, bound them; keys outside cost nothing), four keys at a
/// time, each block of keys meeting every head of the group while it is in cache; their
/// softmax, then `Σ p_j·v_j`, two heads at a time so each value row is read once per pair.
#[inline(always)]
fn group_body(
    ops: &Operands,
    unit: usize,
    o: &mut [f32],
    scores: &mut [f32],
    kernels: impl RowKernels,
) {
    let [t, hq, d, tk, hkv, dv] = ops.dims;
    let group = hq / hkv;
    let (ti, kh) = (unit / hkv, unit % hkv);
    let row0 = ti * hq + kh * group;
    let query = |g: usize| &ops.q[(row0 + g) * d..(row0 + g + 1) * d];
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
    let n = hi - lo;
    let scores = &mut scores[..group * n];
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
    let mut j = 0;
    while j + 4 <= n {
        let keys = [key(j), key(j + 1), key(j + 2), key(j + 3)];
        for g in 0..group {
            let s = kernels.dot4(query(g), keys);
            for (jj, (o, v)) in scores[g * n + j..g * n + j + 4]
                .iter_mut()
                .zip(s)
                .enumerate()
            {
                *o = score(v, mask_at(j + jj));
            }
        }
        j += 4;
    }
    for j in j..n {
        for g in 0..group {
            scores[g * n + j] = score(dot_body(query(g), key(j)), mask_at(j));
        }
    }
    for s in scores.chunks_exact_mut(n.max(1)) {
        softmax_in_place(s);
    }
    // Σ_j p_j·v_j, 32 output columns at a time so their sums stay in registers across keys
    // (each column still adds its terms in key order).
    let ps = |g: usize| &scores[g * n..(g + 1) * n];
    for c in 0..dv.div_ceil(32) {
        let at = |j: usize| ((lo + j) * hkv + kh) * dv + c * 32;
        let cols = (dv - c * 32).min(32);
        let mut g = 0;
        while g < group {
            // a pair of heads (the last of an odd group pairs with itself)
            let g1 = (g + 1).min(group - 1);
            if cols == 32 {
                let sums = kernels.sum32x2([ps(g), ps(g1)], ops.v, at);
                for (gg, s) in [g, g1].into_iter().zip(sums) {
                    o[gg * dv + c * 32..][..32].copy_from_slice(&s);
                }
            } else {
                for gg in [g, g1] {
                    let oc = &mut o[gg * dv + c * 32..][..cols];
                    oc.fill(0.0);
                    for (j, &p) in ps(gg).iter().enumerate().filter(|(_, p)| **p != 0.0) {
                        axpy_body(oc, p, &ops.v[at(j)..at(j) + cols]);
                    }
                }
            }
            g += 2;
        }
    }
    if let Some(gate) = ops.gate {
        let gr = &gate[row0 * dv..(row0 + group) * dv];
        o.iter_mut()
            .zip(gr)
            .for_each(|(a, &b)| *a /= 1.0 + (-b).exp());
    }
}

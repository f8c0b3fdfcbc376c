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

/// The element types of key and value caches that the kernels read as they lie: f32, or f16
/// widened as it is loaded (half the bytes a decode step reads from a deep cache, and no
/// conversion of the whole cache first).
pub(super) trait Elem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    /// `Σ a_i·b_i`, as the portable kernels sum it.
    fn dot(a: &[f32], b: &[Self]) -> f32;
    /// `dst = src` as f32 (as long as each other).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// Eight elements from `p`, widened.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; eight elements from `p` are readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// The elements of the first `lanes` of sixteen from `p`, widened; the other lanes zero
    /// (and their elements not read).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VL; the elements of `lanes` are readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(
        lanes: std::arch::x86_64::__mmask16,
        p: *const Self,
    ) -> std::arch::x86_64::__m512;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot_body(a, b)
    }
    #[inline(always)]
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(
        lanes: std::arch::x86_64::__mmask16,
        p: *const f32,
    ) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract (masked lanes are not read).
        unsafe { std::arch::x86_64::_mm512_maskz_loadu_ps(lanes, p) }
    }
}

impl Elem for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    #[inline(always)]
    fn dot(a: &[f32], b: &[half::f16]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
    }
    #[inline(always)]
    fn widen(src: &[half::f16], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract: eight f16 (16 bytes) readable, F16C.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(
        lanes: std::arch::x86_64::__mmask16,
        p: *const half::f16,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract (AVX-512 F, BW and VL; masked lanes are not read).
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, p.cast())) }
    }
}

/// What every output row of one attention node reads (keys and values of element type `E`).
pub(super) struct Operands<'a, E> {
    pub q: &'a [f32],
    pub k: &'a [E],
    pub v: &'a [E],
    pub mask: Option<&'a [f32]>,
    pub gate: Option<&'a [f32]>,
    /// `[t, hq, d, tk, hkv, dv]`
    pub dims: [usize; 6],
    pub scale: f32,
    pub causal: bool,
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
    let qv = q.f32();
    let mv = mask.map(|m| m.f32());
    let gv = gate.map(|g| g.f32());
    let dims = [
        q.dims()[0],
        q.dims()[1],
        q.dims()[2],
        k.dims()[0],
        k.dims()[1],
        v.dims()[2],
    ];
    // an f16 cache read as it lies; anything else as f32 values
    if let (Some(k16), Some(v16)) = (k.f16(), v.f16()) {
        let ops = Operands {
            q: &qv,
            k: k16,
            v: v16,
            mask: mv.as_deref(),
            gate: gv.as_deref(),
            dims,
            scale,
            causal,
        };
        return run(&ops, out);
    }
    let (kv, vv) = (k.f32(), v.f32());
    let ops = Operands {
        q: &qv,
        k: &kv,
        v: &vv,
        mask: mv.as_deref(),
        gate: gv.as_deref(),
        dims,
        scale,
        causal,
    };
    run(&ops, out)
}

/// [`attention`] of `ops` into `out`, the units of work shared by the team.
fn run<E: Elem>(ops: &Operands<E>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c");
    // the query heads that share a key head, one token's, meet its keys and values together
    // (all of them, or as many as leave every thread work: see `heads_per_unit`)
    let [t, hq, d, tk, hkv, dv] = ops.dims;
    let per = heads_per_unit(t, hq, hq / hkv, team::global().threads());
    // the AVX-512 tiles where the CPU has them, prompts' keys transposed once for their scores
    #[cfg(target_arch = "x86_64")]
    let zmm = super::attention_zmm::available();
    #[cfg(target_arch = "x86_64")]
    let keys_t = (zmm && d > 0 && t * (hq / hkv) >= ZMM_ROWS)
        .then(|| super::attention_zmm::KeysT::new(ops.k, tk, hkv, d));
    team::global().chunks_mut(out, per * dv, |unit, o| {
        SCRATCH.with_borrow_mut(|scratch| {
            #[cfg(target_arch = "x86_64")]
            if zmm {
                // SAFETY: `available()` found AVX-512 F, BW and VL, AVX2, FMA and F16C.
                return unsafe {
                    super::attention_zmm::group(ops, keys_t.as_ref(), unit, per, o, scratch)
                };
            }
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2, FMA and F16C, checked above.
                return unsafe { group_avx2(ops, unit, per, o, scratch) };
            }
            group_body(ops, unit, per, o, scratch, Plain)
        })
    });
}

/// Keys ahead of the one in use whose rows are prefetched (a decode step reads a deep cache
/// from memory, a strided slice per key head).
pub(super) const AHEAD: usize = 16;

/// Asks for the cache lines of `row` (a key row) ahead of their use.
#[inline(always)]
fn prefetch<E>(row: &[E]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(64 / size_of::<E>().max(1)) {
        // SAFETY: a prefetch reads nothing architecturally; the address lies within `row`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
}

/// Query rows per key head from which attention transposes the keys for the AVX-512 score
/// tiles: the transposition costs a scattered write per cached key element, one thread's,
/// which a few query rows on a deep cache would not repay (decode scores the key rows as they
/// lie).
const ZMM_ROWS: usize = 64;

/// Query heads per unit of work: the whole group sharing a key head, unless that leaves fewer
/// than two units per thread (a decode step of a model with few key heads, on many cores),
/// then the largest divisor of the group that does not (at least one head).
fn heads_per_unit(t: usize, hq: usize, group: usize, threads: usize) -> usize {
    (1..=group)
        .rev()
        .filter(|d| group.is_multiple_of(*d))
        .find(|d| t * (hq / d) >= 2 * threads)
        .unwrap_or(1)
}

/// A worker's room for one unit: the scores of its query rows, and a block of value rows
/// ([`RowKernels::weighted`]).
#[derive(Default)]
pub(super) struct Scratch {
    scores: Vec<f32>,
    rows: Vec<f32>,
}

thread_local! {
    /// Each worker's scratch, kept between units.
    static SCRATCH: std::cell::RefCell<Scratch> = const {
        std::cell::RefCell::new(Scratch {
            scores: Vec::new(),
            rows: Vec::new(),
        })
    };
}

/// [`group_body`] compiled for AVX2, FMA and F16C, with the [`Avx2`] inner loops (fused
/// multiply-adds, so the last bits differ from [`Plain`]'s).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn group_avx2<E: Elem>(
    ops: &Operands<E>,
    unit: usize,
    per: usize,
    o: &mut [f32],
    scratch: &mut Scratch,
) {
    // SAFETY: this function runs only where the CPU has AVX2, FMA and F16C (its features).
    group_body(ops, unit, per, o, scratch, unsafe { Avx2::new() })
}

/// The keys one unit sees: its key head `kh`, keys `lo..lo + n`, and its mask over them; and
/// its query heads' count `per`.
pub(super) struct UnitKeys<'a> {
    pub per: usize,
    pub kh: usize,
    pub lo: usize,
    pub n: usize,
    pub mask: Option<&'a [f32]>,
}

impl UnitKeys<'_> {
    /// The score of a key whose dot product with a query is `dot` and whose mask value is `m`
    /// (a hidden key's score is -inf whatever its dot product, even one that overflowed).
    pub fn score(dot: f32, m: f32, scale: f32) -> f32 {
        if m == f32::NEG_INFINITY {
            m
        } else {
            dot * scale + m
        }
    }

    fn mask_at(&self, j: usize) -> f32 {
        self.mask.map_or(0.0, |m| m[j])
    }
}

/// The inner loops of attention, portable, in AVX2 and FMA, or in AVX-512 (`attention_zmm`).
pub(super) trait RowKernels {
    /// `[a · b_r]` for four rows `b_r` (each at least as long as `a`).
    fn dot4<E: Elem>(&self, a: &[f32], b: [&[E]; 4]) -> [f32; 4];
    /// Adds `Σ_j p_h[j] · v[at(j)..at(j) + 32]` to `acc_h` for each of the `N` rows of
    /// weights `p_h`, over the keys it weighs (a zero weight skips the key, so a value row of
    /// infinities it does not weigh stays out of its sums), each column in key order.
    fn sum32<const N: usize>(
        &self,
        p: [&[f32]; N],
        v: &[f32],
        at: impl Fn(usize) -> usize,
        acc: &mut [[f32; 32]; N],
    );

    /// `scores[g·n + j]`: the score of query row `g` of `queries` (`per` rows of `d`) against
    /// key `keys.lo + j` ([`scores_by_rows`]).
    #[inline(always)]
    fn scores<E: Elem>(
        &self,
        ops: &Operands<E>,
        queries: &[f32],
        keys: &UnitKeys,
        scores: &mut [f32],
    ) where
        Self: Sized,
    {
        scores_by_rows(self, ops, queries, keys, scores);
    }

    /// `o[g·dv..]` = `Σ_j p_gj·v_j` over the unit's keys for each of its `per` heads (`p` =
    /// `scores`, softmaxed), 32 output columns at a time so their sums stay in registers
    /// across keys (each column still adds its terms in key order), two heads at a time so
    /// each value row is read once per pair. The keys go in blocks whose value rows are first
    /// copied side by side as f32 (widened once, however many passes read them; and a decode
    /// step's unit reads a strided slice of a deep cache, 1 KiB apart for TinyLlama's f32
    /// cache, whose rows would crowd a few sets of the L1 cache if read where they lie), the
    /// rows [`AHEAD`] keys on asked for as each is copied (into `rows`).
    #[inline(always)]
    fn weighted<E: Elem>(
        &self,
        ops: &Operands<E>,
        keys: &UnitKeys,
        scores: &[f32],
        o: &mut [f32],
        rows: &mut Vec<f32>,
    ) {
        let [_, _, _, _, hkv, dv] = ops.dims;
        let (n, per) = (keys.n, keys.per);
        let o = &mut o[..per * dv];
        o.fill(0.0);
        if dv == 0 {
            return;
        }
        let row = |j: usize| {
            let at = ((keys.lo + j) * hkv + keys.kh) * dv;
            &ops.v[at..at + dv]
        };
        let block = (BLOCK_FLOATS / dv).clamp(8, 256);
        rows.resize(block * dv, 0.0);
        for b0 in (0..n).step_by(block) {
            let b1 = (b0 + block).min(n);
            for (j, r) in (b0..b1).zip(rows.chunks_exact_mut(dv)) {
                if j + AHEAD < n {
                    prefetch(row(j + AHEAD));
                }
                E::widen(row(j), r);
            }
            let ps = |g: usize| &scores[g * n + b0..g * n + b1];
            for c in 0..dv.div_ceil(32) {
                let at = |j: usize| j * dv + c * 32;
                let cols = (dv - c * 32).min(32);
                let chunk = |o: &[f32], g: usize| -> [f32; 32] {
                    o[g * dv + c * 32..][..32].try_into().expect("32 columns")
                };
                let mut g = 0;
                while g < per {
                    // a pair of heads (or the last of an odd number)
                    let heads = g..(g + 2).min(per);
                    if cols == 32 && heads.len() == 2 {
                        let mut acc = [chunk(o, g), chunk(o, g + 1)];
                        self.sum32([ps(g), ps(g + 1)], rows, at, &mut acc);
                        for (gg, s) in heads.zip(acc) {
                            o[gg * dv + c * 32..][..32].copy_from_slice(&s);
                        }
                    } else if cols == 32 {
                        let mut acc = [chunk(o, g)];
                        self.sum32([ps(g)], rows, at, &mut acc);
                        o[g * dv + c * 32..][..32].copy_from_slice(&acc[0]);
                    } else {
                        for gg in heads {
                            let oc = &mut o[gg * dv + c * 32..][..cols];
                            let weighed = ps(gg).iter().enumerate().filter(|(_, p)| **p != 0.0);
                            for (j, &p) in weighed {
                                axpy_body(oc, p, &rows[at(j)..at(j) + cols]);
                            }
                        }
                    }
                    g += 2;
                }
            }
        }
    }
}

/// The value elements a block of keys of [`RowKernels::weighted`] copies (16 KiB: half an L1
/// cache, beside the block's scores and the sums).
const BLOCK_FLOATS: usize = 4096;

#[derive(Clone, Copy)]
struct Plain;

impl RowKernels for Plain {
    #[inline(always)]
    fn dot4<E: Elem>(&self, a: &[f32], b: [&[E]; 4]) -> [f32; 4] {
        b.map(|r| E::dot(a, &r[..a.len()]))
    }

    #[inline(always)]
    fn sum32<const N: usize>(
        &self,
        p: [&[f32]; N],
        v: &[f32],
        at: impl Fn(usize) -> usize,
        acc: &mut [[f32; 32]; N],
    ) {
        for j in 0..p[0].len() {
            let w = p.map(|r| r[j]);
            if w.iter().all(|&x| x == 0.0) {
                continue;
            }
            let vr = &v[at(j)..at(j) + 32];
            for (a, &wh) in acc.iter_mut().zip(&w).filter(|(_, w)| **w != 0.0) {
                for i in 0..32 {
                    a[i] += wh * vr[i];
                }
            }
        }
    }
}

/// [`RowKernels`] for CPUs with AVX2, FMA and F16C; only [`Avx2::new`], whose caller vouches
/// for them, makes one.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    pub(super) unsafe fn new() -> Avx2 {
        Avx2(())
    }
}

#[cfg(target_arch = "x86_64")]
impl RowKernels for Avx2 {
    #[inline(always)]
    fn dot4<E: Elem>(&self, a: &[f32], b: [&[E]; 4]) -> [f32; 4] {
        // SAFETY: an `Avx2` exists only where the CPU has AVX2, FMA and F16C.
        unsafe { dot4_avx2(a, b) }
    }

    #[inline(always)]
    fn sum32<const N: usize>(
        &self,
        p: [&[f32]; N],
        v: &[f32],
        at: impl Fn(usize) -> usize,
        acc: &mut [[f32; 32]; N],
    ) {
        use std::arch::x86_64::*;
        // SAFETY: as `dot4`; every row read is sliced first, so its 32 floats exist.
        unsafe {
            let mut sums = [[_mm256_setzero_ps(); 4]; N];
            for (s, a) in sums.iter_mut().zip(acc.iter()) {
                for i in 0..4 {
                    s[i] = _mm256_loadu_ps(a.as_ptr().add(8 * i));
                }
            }
            let n = p[0].len();
            let p = p.map(|r| &r[..n]);
            for j in 0..n {
                let w = p.map(|r| r[j]);
                let vr = &v[at(j)..at(j) + 32];
                if w.iter().all(|&x| x != 0.0) {
                    let pv = w.map(|x| _mm256_set1_ps(x));
                    for i in 0..4 {
                        let x = _mm256_loadu_ps(vr.as_ptr().add(8 * i));
                        for h in 0..N {
                            sums[h][i] = _mm256_fmadd_ps(pv[h], x, sums[h][i]);
                        }
                    }
                } else {
                    // (the rare key that one head's softmax underflowed on and another's did
                    // not: each head that weighs it)
                    for (s, &wh) in sums.iter_mut().zip(&w).filter(|(_, w)| **w != 0.0) {
                        let pv = _mm256_set1_ps(wh);
                        for i in 0..4 {
                            let x = _mm256_loadu_ps(vr.as_ptr().add(8 * i));
                            s[i] = _mm256_fmadd_ps(pv, x, s[i]);
                        }
                    }
                }
            }
            for (a, s) in acc.iter_mut().zip(&sums) {
                for (i, r) in s.iter().enumerate() {
                    _mm256_storeu_ps(a.as_mut_ptr().add(8 * i), *r);
                }
            }
        }
    }
}

/// `scores[g·n + j]`: the score of query row `g` of `queries` (`per` rows of `d`) against key
/// `keys.lo + j`, four keys at a time through `kernels.dot4`, each block of keys meeting every
/// query while it is in cache, the key rows [`AHEAD`] keys on asked for ahead.
#[inline(always)]
pub(super) fn scores_by_rows<E: Elem>(
    kernels: &impl RowKernels,
    ops: &Operands<E>,
    queries: &[f32],
    keys: &UnitKeys,
    scores: &mut [f32],
) {
    let [_, _, d, _, hkv, _] = ops.dims;
    let (n, per) = (keys.n, keys.per);
    let query = |g: usize| &queries[g * d..(g + 1) * d];
    let key = |j: usize| {
        let at = ((keys.lo + j) * hkv + keys.kh) * d;
        &ops.k[at..at + d]
    };
    let score = |dot: f32, j: usize| UnitKeys::score(dot, keys.mask_at(j), ops.scale);
    let mut j = 0;
    while j + 4 <= n {
        for jj in j + AHEAD..(j + AHEAD + 4).min(n) {
            prefetch(key(jj));
        }
        let block = [key(j), key(j + 1), key(j + 2), key(j + 3)];
        for g in 0..per {
            let s = kernels.dot4(query(g), block);
            for (jj, (o, v)) in scores[g * n + j..g * n + j + 4]
                .iter_mut()
                .zip(s)
                .enumerate()
            {
                *o = score(v, j + jj);
            }
        }
        j += 4;
    }
    for j in j..n {
        for g in 0..per {
            scores[g * n + j] = score(E::dot(query(g), key(j)), j);
        }
    }
}

/// Four dot products with AVX2 and FMA: eight independent sums (two per row), so consecutive
/// multiply-adds do not wait on each other, then the four rows' lanes summed together.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (inlined into code compiled for them).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot4_avx2<E: Elem>(a: &[f32], b: [&[E]; 4]) -> [f32; 4] {
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
                even[r] = _mm256_fmadd_ps(x0, E::load8(b[r].as_ptr().add(c)), even[r]);
                odd[r] = _mm256_fmadd_ps(x1, E::load8(b[r].as_ptr().add(c + 8)), odd[r]);
            }
            c += 16;
        }
        if c + 8 <= n {
            let x = _mm256_loadu_ps(a.as_ptr().add(c));
            for r in 0..4 {
                even[r] = _mm256_fmadd_ps(x, E::load8(b[r].as_ptr().add(c)), even[r]);
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
        *o += a[c..]
            .iter()
            .zip(&r[c..n])
            .map(|(x, y)| x * y.to_f32())
            .sum::<f32>();
    }
    out
}

/// The output rows of unit `unit`: `per` query heads of one token that share a key head (`o`
/// holds their rows). Scores for the keys the token may see (causality, and the first and
/// last keys the mask lets through, bound them; keys outside cost nothing), their softmax,
/// then `Σ p_j·v_j` (`kernels`' `scores` and `weighted`).
#[inline(always)]
pub(super) fn group_body<E: Elem>(
    ops: &Operands<E>,
    unit: usize,
    per: usize,
    o: &mut [f32],
    scratch: &mut Scratch,
    kernels: impl RowKernels,
) {
    let [t, hq, d, tk, hkv, dv] = ops.dims;
    let (ti, h0) = (unit / (hq / per), unit % (hq / per) * per);
    let kh = h0 / (hq / hkv);
    let row0 = ti * hq + h0;
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
    if scratch.scores.len() < per * n {
        scratch.scores.resize(per * n, 0.0);
    }
    let scores = &mut scratch.scores[..per * n];
    let keys = UnitKeys {
        per,
        kh,
        lo,
        n,
        mask: mask.map(|m| &m[lo..hi]),
    };
    kernels.scores(ops, &ops.q[row0 * d..(row0 + per) * d], &keys, scores);
    for s in scores.chunks_exact_mut(n.max(1)) {
        softmax_in_place(s);
    }
    kernels.weighted(ops, &keys, scores, o, &mut scratch.rows);
    if let Some(gate) = ops.gate {
        let gr = &gate[row0 * dv..(row0 + per) * dv];
        o.iter_mut()
            .zip(gr)
            .for_each(|(a, &b)| *a /= 1.0 + (-b).exp());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unit of `ops` through `group_body` with `kernels`, `per` heads a unit.
    fn run<E: Elem>(ops: &Operands<E>, per: usize, kernels: impl RowKernels + Copy) -> Vec<f32> {
        let [t, hq, _, _, _, dv] = ops.dims;
        let mut out = vec![f32::NAN; t * hq * dv];
        let mut scratch = Scratch::default();
        for (unit, o) in out.chunks_mut(per * dv).enumerate() {
            group_body(ops, unit, per, o, &mut scratch, kernels);
        }
        out
    }

    /// [`run`] through the AVX-512 tiles, where the CPU has them.
    #[cfg(target_arch = "x86_64")]
    fn run_zmm<E: Elem>(ops: &Operands<E>, per: usize) -> Option<Vec<f32>> {
        use super::super::attention_zmm::{KeysT, available, group};
        if !available() {
            return None;
        }
        let [t, hq, d, tk, hkv, dv] = ops.dims;
        let kt = KeysT::new(ops.k, tk, hkv, d);
        let mut out = vec![f32::NAN; t * hq * dv];
        let mut scratch = Scratch::default();
        let mut rows = vec![f32::NAN; t * hq * dv];
        for (unit, (o, r)) in out
            .chunks_mut(per * dv)
            .zip(rows.chunks_mut(per * dv))
            .enumerate()
        {
            // SAFETY: `available()` found the features `group` needs.
            unsafe { group(ops, Some(&kt), unit, per, o, &mut scratch) };
            // and the decode form, scoring the key rows as they lie
            // SAFETY: as above.
            unsafe { group(ops, None, unit, per, r, &mut scratch) };
        }
        for (i, (a, b)) in out.iter().zip(&rows).enumerate() {
            assert!(
                a == b || (a - b).abs() < 1e-5,
                "tiles against rows, [{i}]: {a} vs {b}"
            );
        }
        Some(out)
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 40.0)
            .collect()
    }

    /// The portable kernels, the AVX2 ones and the AVX-512 tiles agree, whatever the heads per
    /// unit: groups of three and eight, value rows of 40, 5 and 72 (past and short of the 32-
    /// and 64-column blocks), 70 keys (two tiles of 32 and a ragged one), a mask hiding a whole
    /// row, a gate.
    #[test]
    fn the_kernels_and_the_units_agree() {
        for (t, tk, hq, hkv, d, dv, masked) in [
            (3, 7, 6, 2, 8, 40, true),
            (1, 9, 8, 1, 16, 5, false),
            (4, 4, 8, 1, 4, 64, true),
            (40, 70, 8, 1, 64, 72, true),
            (5, 70, 6, 2, 24, 16, false),
            // groups of 5 and 16 (tiles after the first of a unit), head sizes of 40 and 80
            // (whole 32-element steps and a masked rest)
            (2, 9, 10, 2, 40, 24, true),
            (6, 40, 16, 1, 80, 8, false),
            // heads of no elements: every score is the mask's
            (3, 6, 4, 2, 0, 8, true),
        ] {
            let (q, k, v) = (
                values(t * hq * d, 1),
                values(tk * hkv * d, 2),
                values(tk * hkv * dv, 3),
            );
            let mask: Vec<f32> = (0..t * tk)
                .map(|i| {
                    if i / tk == 1 || i % 3 == 2 {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let gate = values(t * hq * dv, 4);
            let ops = Operands {
                q: &q,
                k: &k,
                v: &v,
                mask: masked.then_some(&mask[..]),
                gate: Some(&gate),
                dims: [t, hq, d, tk, hkv, dv],
                scale: 0.3,
                causal: true,
            };
            let want = run(&ops, hq / hkv, Plain);
            near(&want, &naive(&ops), "plain f32 against the definition");
            for per in (1..=hq / hkv).filter(|p| (hq / hkv).is_multiple_of(*p)) {
                let got = run(&ops, per, Plain);
                assert_eq!(got, want, "plain, {per} heads a unit");
                agree(&ops, per, &want, "f32");
            }
            // an f16 cache, against the plain kernels on its values widened
            let (k16, v16) = (halves(&k), halves(&v));
            let (kw, vw) = (widened(&k16), widened(&v16));
            let want = run(&with_kv(&ops, &kw, &vw), hq / hkv, Plain);
            let ops = with_kv(&ops, &k16, &v16);
            near(&want, &naive(&ops), "plain f16 against the definition");
            for per in (1..=hq / hkv).filter(|p| (hq / hkv).is_multiple_of(*p)) {
                let got = run(&ops, per, Plain);
                close(&got, &want, &format!("plain f16, {per} heads a unit"));
                agree(&ops, per, &want, "f16");
            }
        }
    }

    /// Attention from its definition, in f64: each query row's scores against the keys it may
    /// see, their softmax (a row that sees none gives zeros), the weighted values, the gate.
    fn naive<E: Elem>(ops: &Operands<E>) -> Vec<f32> {
        let [t, hq, d, tk, hkv, dv] = ops.dims;
        let mut out = vec![0.0f32; t * hq * dv];
        for ti in 0..t {
            for h in 0..hq {
                let kh = h / (hq / hkv);
                let seen = if ops.causal {
                    (ti + tk + 1).saturating_sub(t).min(tk)
                } else {
                    tk
                };
                let s: Vec<f64> = (0..seen)
                    .map(|j| {
                        let m = ops.mask.map_or(0.0, |m| m[ti * tk + j]) as f64;
                        if m == f64::NEG_INFINITY {
                            return m;
                        }
                        let dot: f64 = (0..d)
                            .map(|i| {
                                ops.q[(ti * hq + h) * d + i] as f64
                                    * ops.k[(j * hkv + kh) * d + i].to_f32() as f64
                            })
                            .sum();
                        dot * ops.scale as f64 + m
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..dv {
                    let mut acc = 0.0f64;
                    for (j, &w) in e.iter().enumerate().filter(|(_, w)| **w != 0.0) {
                        acc += w / sum * ops.v[(j * hkv + kh) * dv + c].to_f32() as f64;
                    }
                    if let Some(g) = ops.gate {
                        acc /= 1.0 + (-g[(ti * hq + h) * dv + c] as f64).exp();
                    }
                    out[(ti * hq + h) * dv + c] = acc as f32;
                }
            }
        }
        out
    }

    /// Within 1e-4 of the definition (f32 sums against f64 ones).
    fn near(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() < 1e-4, "{what}, [{i}]: {a} vs {b}");
        }
    }

    /// `ops` with keys `k` and values `v`.
    fn with_kv<'a, E, F>(ops: &Operands<'a, E>, k: &'a [F], v: &'a [F]) -> Operands<'a, F> {
        Operands {
            q: ops.q,
            k,
            v,
            mask: ops.mask,
            gate: ops.gate,
            dims: ops.dims,
            scale: ops.scale,
            causal: ops.causal,
        }
    }

    fn halves(x: &[f32]) -> Vec<half::f16> {
        x.iter().map(|&v| half::f16::from_f32(v)).collect()
    }

    fn widened(x: &[half::f16]) -> Vec<f32> {
        x.iter().map(|v| v.to_f32()).collect()
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() < 1e-5, "{what}, [{i}]: {a} vs {b}");
        }
    }

    /// The AVX2 kernels and the AVX-512 tiles, where the CPU has them, give `want` for `ops`
    /// with `per` heads a unit.
    #[allow(unused_variables)]
    fn agree<E: Elem>(ops: &Operands<E>, per: usize, want: &[f32], what: &str) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has AVX2, FMA and F16C, checked above.
            let got = run(ops, per, unsafe { Avx2::new() });
            close(&got, want, &format!("avx2 {what}, {per} heads a unit"));
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(got) = run_zmm(ops, per) {
            close(&got, want, &format!("avx-512 {what}, {per} heads a unit"));
        }
    }

    /// A key one head weighs zero (its score underflows) and the other weighs: the first head's
    /// output stays finite even where that key's value row is infinite.
    #[test]
    fn a_zero_weight_keeps_an_infinite_value_out() {
        let (d, dv) = (4, 32);
        // head 0 scores the two keys -200 and 0, head 1 scores both 0
        let q = [[100.0, 0.0, 0.0, 0.0], [0.0; 4]].concat();
        let k = [[-2.0, 0.0, 0.0, 0.0], [0.0; 4]].concat();
        let v = [vec![f32::INFINITY; dv], vec![1.0; dv]].concat();
        let ops = Operands {
            q: &q,
            k: &k,
            v: &v,
            mask: None,
            gate: None,
            dims: [1, 2, d, 2, 1, dv],
            scale: 1.0,
            causal: false,
        };
        let check = |out: Vec<f32>, what: &str| {
            assert!(
                out[..dv].iter().all(|&x| x == 1.0),
                "{what}: {:?}",
                &out[..dv]
            );
            assert!(out[dv..].iter().all(|&x| x == f32::INFINITY), "{what}");
        };
        every_kernel(&ops, &check, "f32");
        // and an f16 cache (whose infinity is as infinite)
        let (k16, v16) = (halves(&k), halves(&v));
        every_kernel(&with_kv(&ops, &k16, &v16), &check, "f16");
    }

    /// `check` on the output of every kernel this CPU runs, two heads a unit.
    fn every_kernel<E: Elem>(ops: &Operands<E>, check: &dyn Fn(Vec<f32>, &str), what: &str) {
        check(run(ops, 2, Plain), &format!("plain {what}"));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has AVX2, FMA and F16C, checked above.
            check(run(ops, 2, unsafe { Avx2::new() }), &format!("avx2 {what}"));
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(out) = run_zmm(ops, 2) {
            check(out, &format!("avx-512 {what}"));
        }
    }

    /// A key the mask hides scores -inf even where its dot product overflows to infinity (an
    /// infinite dot product plus a -inf mask would be NaN).
    #[test]
    fn a_hidden_key_stays_hidden_when_its_dot_product_overflows() {
        let (d, dv) = (4, 16);
        let q = [10.0, 10.0, 0.0, 0.0];
        // the hidden key between two seen ones (keys outside the first and last seen cost
        // nothing and are never scored)
        let k = [
            [1.0, 0.0, 0.0, 0.0],
            [3e38, 3e38, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
        ]
        .concat();
        let v = [vec![1.0; dv], vec![5.0; dv], vec![1.0; dv]].concat();
        let mask = [0.0, f32::NEG_INFINITY, 0.0];
        let ops = Operands {
            q: &q,
            k: &k,
            v: &v,
            mask: Some(&mask),
            gate: None,
            dims: [1, 1, d, 3, 1, dv],
            scale: 1.0,
            causal: false,
        };
        let check =
            |out: Vec<f32>, what: &str| assert!(out.iter().all(|&x| x == 1.0), "{what}: {out:?}");
        check(run(&ops, 1, Plain), "plain");
        #[cfg(target_arch = "x86_64")]
        if let Some(out) = run_zmm(&ops, 1) {
            check(out, "avx-512");
        }
    }

    /// Units keep every thread busy: whole groups while there are two per thread, else
    /// smaller divisors of the group.
    #[test]
    fn units_split_groups_only_when_threads_would_idle() {
        assert_eq!(heads_per_unit(512, 32, 8, 2), 8);
        assert_eq!(heads_per_unit(1, 32, 8, 2), 8);
        assert_eq!(heads_per_unit(1, 32, 8, 8), 2);
        assert_eq!(heads_per_unit(1, 16, 16, 16), 1);
        assert_eq!(heads_per_unit(1, 6, 3, 2), 1);
        assert_eq!(heads_per_unit(4, 6, 3, 2), 3);
    }
}

//! Recurrent-layer ops: causal depthwise convolution and the selective scan.

use super::matmul::Columns;
#[cfg(target_arch = "x86_64")]
use super::scan_lanes::{Lanes, scan_lanes_avx2, scan_lanes_avx512};
#[cfg(target_arch = "x86_64")]
use super::scan_zmm;
use super::state::slot_rows;
use super::team;
use super::tensor::TensorRef;
#[cfg(target_arch = "x86_64")]
use super::vmath::hsum4;
use crate::Result;
use weft_graph::math;

/// `y[s, t, c] = Σ_k xc[s, t + k, c] · w[c, k]`.
pub fn ssm_conv(xc: &TensorRef, w: &TensorRef, out: &mut [f32]) {
    let (xv, wv) = (xc.f32(), w.f32());
    let [_, l, c] = [xc.dims()[0], xc.dims()[1], xc.dims()[2]];
    let k = w.dims()[1];
    let t = l + 1 - k;
    team::global().chunks_mut(out, t * c, |s, ys| {
        let x = &xv[s * l * c..(s + 1) * l * c];
        conv_window(&|r| &x[r * c..(r + 1) * c], &wv, t, c, k, ys);
    });
}

/// The conv step on windows that live in a cache `[R, (K−1)·C]` (`Op::SsmConv` with four
/// sources `[cache, x, w, slots]`): sequence `s`'s window is row `slots[s]` followed by its
/// tokens; writes `y [S, T, C]` and leaves the window's last `K−1` rows in the cache row.
/// The window's rows are read where they lie (the cache row's, and x's, which may be columns
/// of a wider projection), not gathered into one buffer first.
pub fn ssm_conv_cached(
    cache: &mut [f32],
    slots: &[i32],
    srcs: &[TensorRef],
    node: &str,
    ys: &mut [f32],
) -> Result<()> {
    let (x, w) = (&srcs[0], &srcs[1]);
    let wv = w.f32();
    let [t, c] = [x.dims()[1], x.dims()[2]];
    let k = w.dims()[1];
    let km1 = k - 1;
    // x's rows in place where they are f32 rows evenly spaced, else gathered dense
    let (xv, x0, ld): (std::borrow::Cow<[f32]>, usize, usize) =
        match (x.dtype, x.layout.row_stride()) {
            (weft_graph::DType::F32, Some(ld)) => (
                std::borrow::Cow::Borrowed(bytemuck::cast_slice(x.bytes)),
                x.layout.offset,
                ld,
            ),
            _ => (x.f32(), 0, c),
        };
    let rows = slot_rows(cache, km1 * c, slots, "ssm_conv", node)?;
    for (si, (row, y)) in rows.into_iter().zip(ys.chunks_mut(t * c)).enumerate() {
        let x_row = |ti: usize| {
            let o = x0 + (si * t + ti) * ld;
            &xv[o..o + c]
        };
        {
            let old: &[f32] = row;
            let window = |r: usize| {
                if r < km1 {
                    &old[r * c..(r + 1) * c]
                } else {
                    x_row(r - km1)
                }
            };
            conv_window(&window, &wv, t, c, k, y);
        }
        // the window's last K−1 rows: old ones moved up (a prompt shorter than K−1), then x's
        let kept = km1.saturating_sub(t);
        row.copy_within(t.min(km1) * c.., 0);
        for r in kept..km1 {
            row[r * c..(r + 1) * c].copy_from_slice(x_row(t + r - km1));
        }
    }
    Ok(())
}

/// A window's rows by index (each `C` long): the cache row's, then the tokens'.
type Rows<'a, 'w> = dyn Fn(usize) -> &'w [f32] + Sync + 'a;

/// `y[t, c] = Σ_k window(t + k)[c] · w[c, k]` over one sequence's window of `K−1+T` rows of
/// `C`, `window(r)` giving row `r`. Each output row sums its `K` window rows times the
/// weights' columns, channels innermost so that the loop vectorizes (the weights transposed to
/// `[K, C]` first for a prompt).
fn conv_window<'w>(window: &Rows<'_, 'w>, w: &[f32], t: usize, c: usize, k: usize, y: &mut [f32]) {
    if c == 0 {
        return;
    }
    if t == 1 {
        // (Mamba's and Qwen3-Next's windows are 4 long)
        if k == 4 {
            return conv_step4(std::array::from_fn(|r| &window(r)[..c]), w, &mut y[..c]);
        }
        y[..c].fill(0.0);
        for ki in 0..k {
            let xr = window(ki);
            for (ci, yc) in y[..c].iter_mut().enumerate() {
                *yc += xr[ci] * w[ci * k + ki];
            }
        }
        return;
    }
    let mut wt = vec![0.0f32; k * c];
    for (ci, wc) in w.chunks_exact(k).enumerate() {
        for (ki, &v) in wc.iter().enumerate() {
            wt[ki * c + ci] = v;
        }
    }
    // a prompt's tokens spread over the team (a small one is quicker alone)
    let team = team::global();
    let per = if t * c * k < 1 << 16 {
        t
    } else {
        t.div_ceil(4 * team.threads())
    };
    team.chunks_mut(&mut y[..t * c], per * c, |i, ys| {
        conv_rows(window, &wt, i * per, c, ys)
    });
}

/// One token's conv over a window of 4 rows: `y[c] = Σ_k rows[k][c] · w[c·4 + k]`, the sums in
/// the order of the general loop (so the same result), each channel's 4 weights read as one
/// array so that the loop vectorizes (compiled for AVX2 where the CPU has it). Indexing the
/// weights `c·K + k` row by row took 8–12 µs for mamba-130m's 1536 channels, this 3.5 (Zen 3).
fn conv_step4(rows: [&[f32]; 4], w: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked above.
        return unsafe { conv_step4_avx2(rows, w, y) };
    }
    conv_step4_body(rows, w, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn conv_step4_avx2(rows: [&[f32]; 4], w: &[f32], y: &mut [f32]) {
    conv_step4_body(rows, w, y)
}

#[inline(always)]
fn conv_step4_body(rows: [&[f32]; 4], w: &[f32], y: &mut [f32]) {
    let c = y.len();
    let [r0, r1, r2, r3] = rows.map(|r| &r[..c]);
    let (wc, _) = w[..4 * c].as_chunks::<4>();
    for (ci, (yc, wk)) in y.iter_mut().zip(wc).enumerate() {
        let mut s = 0.0;
        s += r0[ci] * wk[0];
        s += r1[ci] * wk[1];
        s += r2[ci] * wk[2];
        s += r3[ci] * wk[3];
        *yc = s;
    }
}

/// Output rows from token `t0` (as many as `ys` holds) of [`conv_window`] with the weights
/// transposed to `wt [K, C]`; compiled for AVX2 where the CPU has it (the same sums in the
/// same order, so the same result).
fn conv_rows<'w>(window: &Rows<'_, 'w>, wt: &[f32], t0: usize, c: usize, ys: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked above.
        return unsafe { conv_rows_avx2(window, wt, t0, c, ys) };
    }
    conv_rows_body(window, wt, t0, c, ys)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn conv_rows_avx2<'w>(window: &Rows<'_, 'w>, wt: &[f32], t0: usize, c: usize, ys: &mut [f32]) {
    conv_rows_body(window, wt, t0, c, ys)
}

#[inline(always)]
fn conv_rows_body<'w>(window: &Rows<'_, 'w>, wt: &[f32], t0: usize, c: usize, ys: &mut [f32]) {
    for (i, yr) in ys.chunks_exact_mut(c).enumerate() {
        let ti = t0 + i;
        yr.fill(0.0);
        for (ki, wr) in wt.chunks_exact(c).enumerate() {
            let xr = &window(ti + ki)[..c];
            for ((yv, &x), &wv) in yr.iter_mut().zip(xr).zip(wr) {
                *yv += x * wv;
            }
        }
    }
}

/// Selective scan over `T` tokens for every sequence and head; writes `y` then the new state.
pub fn ssm_scan(srcs: &[TensorRef], out: &mut [f32]) {
    let stv = srcs[0].f32();
    let x = &srcs[1];
    let ny = x.dims()[0] * x.dims()[1] * x.dims()[2] * x.dims()[3];
    let (ys, states) = out.split_at_mut(ny);
    states.copy_from_slice(&stv);
    let per_seq = states.len() / x.dims()[0].max(1);
    scan(states.chunks_mut(per_seq.max(1)).collect(), &srcs[1..6], ys);
}

/// The scan on state rows that live in a cache `[R, H·P·N]` (`Op::SsmScan` with seven
/// sources): sequence `s` starts from row `slots[s]` and leaves its new state there. Writes `y`.
pub fn ssm_scan_cached(
    cache: &mut [f32],
    slots: &[i32],
    srcs: &[TensorRef],
    node: &str,
    ys: &mut [f32],
) -> Result<()> {
    let x = &srcs[0];
    let per = x.dims()[2] * x.dims()[3] * srcs[3].dims()[3];
    scan(slot_rows(cache, per, slots, "ssm_scan", node)?, srcs, ys);
    Ok(())
}

/// Runs the scan over `[x, dt, A, B, C]` (see `Op::SsmScan`) with each sequence's state
/// `[H, P, N]` in `states[s]`, updated in place; writes `y`.
fn scan(states: Vec<&mut [f32]>, srcs: &[TensorRef], ys: &mut [f32]) {
    let [x, dt, a, b, c] = [&srcs[0], &srcs[1], &srcs[2], &srcs[3], &srcs[4]];
    let (xv, dtv, av, bv, cv) = (x.f32(), dt.f32(), a.f32(), b.f32(), c.f32());
    let [s, t, h, p] = [x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]];
    let [g, n] = [b.dims()[2], b.dims()[3]];
    let a_cols = a.dims()[1];
    let heads_per_group = h / g;
    let per = p * n;
    // one block's heads from `h0` of sequence `si`: their state rows updated, y written as
    // [head, token, p]
    let block_y = |si: usize, h0: usize, state: &mut [f32], y: &mut [f32]| {
        let nh = state.len() / per;
        // Mamba1's heads (a channel each, a decay per state): eight heads at a time
        #[cfg(target_arch = "x86_64")]
        if p == 1 && a_cols == n && avx2_fma() {
            let lanes = Lanes {
                n,
                t,
                h,
                g,
                h0,
                a: &av,
                dt: &dtv,
                x: &xv,
                at: si * t * h,
                b: &bv,
                c: &cv,
                bc_at: si * t * g,
            };
            if t >= scan_zmm::MIN_TOKENS && scan_zmm::available() {
                // SAFETY: the CPU has AVX-512 F, AVX2 and FMA, checked above.
                unsafe { scan_lanes_avx512(&lanes, state, y) };
            } else {
                // SAFETY: the CPU has AVX2 and FMA, checked above.
                unsafe { scan_lanes_avx2(&lanes, state, y) };
            }
            return;
        }
        let mut scratch = Scratch::default();
        for j in 0..nh {
            let hi = h0 + j;
            let gi = hi / heads_per_group;
            let state = &mut state[j * per..(j + 1) * per];
            let head = Head {
                n,
                t,
                a: &av[hi * a_cols..(hi + 1) * a_cols],
                dt: &dtv,
                dt_at: si * t * h + hi,
                dt_step: h,
                b: &bv,
                c: &cv,
                bc_at: (si * t * g + gi) * n,
                bc_step: g * n,
                x: &xv,
                x_at: (si * t * h + hi) * p,
                x_step: h * p,
            };
            walk(
                &head,
                state,
                &mut y[j * t * p..(j + 1) * t * p],
                &mut scratch,
            );
        }
    };
    // Heads are independent. They go in blocks (Mamba1 has a head per channel, each a few
    // dozen flops per token): each block updates its heads' state in place, computes its y
    // rows as [head, token, p], and writes them to its heads' columns of each token's row of
    // `ys` ([S·T, H·P]), on its own thread.
    let team = team::global();
    let hb = (s * h).div_ceil(4 * team.threads()).max(1);
    // (Mamba1's heads go eight or sixteen to a register: whole blocks of sixteen)
    let hb = if p == 1 { hb.next_multiple_of(16) } else { hb };
    let mut blocks: Vec<(usize, usize, &mut [f32])> = vec![];
    for (si, row) in states.into_iter().enumerate() {
        for (bi, state) in row.chunks_mut(hb * per).enumerate() {
            blocks.push((si, bi * hb, state));
        }
    }
    let out = Columns::new(ys, h * p);
    team.chunks_mut(&mut blocks, 1, |_, blk| {
        let (si, h0, state) = &mut blk[0];
        let (si, h0) = (*si, *h0);
        let nh = state.len() / per;
        let mut y = vec![0.0; nh * t * p];
        block_y(si, h0, state, &mut y);
        // SAFETY: this block's heads' columns of its sequence's token rows are its alone.
        unsafe {
            if p == 1 {
                // [head, token]: the heads' values of token `ti` are column `ti`
                let rows: Vec<usize> = (si * t..(si + 1) * t).collect();
                out.put(h0, t, &y, Some(&rows));
            } else {
                for ti in 0..t {
                    for j in 0..nh {
                        let v = &y[(j * t + ti) * p..(j * t + ti + 1) * p];
                        out.put_run(si * t + ti, (h0 + j) * p, v);
                    }
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// A token's decay of a state row: one factor per state (Mamba1) or one for the row (Mamba2).
#[derive(Clone, Copy)]
enum Decay<'a> {
    PerState(&'a [f32]),
    One(f32),
}

/// One head's inputs for [`walk`]: `a` is its A row (one value, Mamba2's, or one per state,
/// Mamba1's); token `ti`'s dt is at `dt_at + ti·dt_step`, its B and C rows start at `bc_at +
/// ti·bc_step`, its x row at `x_at + ti·x_step`.
pub(super) struct Head<'a> {
    pub(super) n: usize,
    pub(super) t: usize,
    pub(super) a: &'a [f32],
    pub(super) dt: &'a [f32],
    pub(super) dt_at: usize,
    pub(super) dt_step: usize,
    pub(super) b: &'a [f32],
    pub(super) c: &'a [f32],
    pub(super) bc_at: usize,
    pub(super) bc_step: usize,
    pub(super) x: &'a [f32],
    pub(super) x_at: usize,
    pub(super) x_step: usize,
}

/// A worker's buffers for [`walk`], kept across heads: `exp(dt·A)` per token (`[T, len(A)]`)
/// and dt per token.
#[derive(Default)]
struct Scratch {
    decay: Vec<f32>,
    dts: Vec<f32>,
}

/// One head's state rows `[P, N]` through its tokens, `y [T, P]` written: each state row stays
/// in cache over all the tokens. The CPU features are checked once per head, not per row and
/// token.
fn walk(head: &Head, state: &mut [f32], y: &mut [f32], scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA, checked above.
        return unsafe { walk_avx2(head, state, y, scratch) };
    }
    walk_body(head, state, y, scratch, false)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn walk_avx2(head: &Head, state: &mut [f32], y: &mut [f32], scratch: &mut Scratch) {
    walk_body(head, state, y, scratch, true)
}

/// [`walk`]'s loops, after the decays `exp(dt·A)` of every token (once per token, not per state
/// row). With AVX2 and FMA (`fma`, which the caller then has): one decay per token (Mamba2)
/// takes a prompt's tiles of 32 rows by 8 states (16 by 16) in AVX-512 registers where the CPU
/// has them and the head's shape allows (`scan_zmm`), else four state rows through a token
/// together, sharing its B and C loads ([`rows4_avx2`]). Otherwise a row at a time (Mamba1's
/// heads, one state row each, take `scan_lanes` on such CPUs instead; a decay per state with
/// several rows a head comes here).
#[inline(always)]
fn walk_body(head: &Head, state: &mut [f32], y: &mut [f32], scratch: &mut Scratch, fma: bool) {
    let (n, t) = (head.n, head.t);
    let p = state.len() / n.max(1);
    let dn = head.a.len();
    scratch.dts.clear();
    scratch
        .dts
        .extend((0..t).map(|ti| head.dt[head.dt_at + ti * head.dt_step]));
    scratch.decay.resize(t * dn, 0.0);
    for (da, &d) in scratch.decay.chunks_exact_mut(dn).zip(&scratch.dts) {
        for (da, &av) in da.iter_mut().zip(head.a) {
            *da = d * av;
        }
    }
    // one flat loop (a loop per token over a few decays would set up the polynomial's
    // constants as often as it uses them)
    if fma {
        scratch
            .decay
            .iter_mut()
            .for_each(|da| *da = math::exp_fused(*da));
    } else {
        scratch.decay.iter_mut().for_each(|da| *da = math::exp(*da));
    }
    let (decays, dts) = (&scratch.decay, &scratch.dts);
    let bc = |ti: usize| {
        let o = head.bc_at + ti * head.bc_step;
        (&head.b[o..o + n], &head.c[o..o + n])
    };
    let xd = |ti: usize, pi: usize| head.x[head.x_at + ti * head.x_step + pi] * dts[ti];
    let per_state = dn == n && n != 1;
    let decay = |ti: usize| {
        let da = &decays[ti * dn..(ti + 1) * dn];
        if per_state {
            Decay::PerState(da)
        } else {
            Decay::One(da[0])
        }
    };
    #[cfg(target_arch = "x86_64")]
    if fma && !per_state && scan_zmm::fits(p, n, t) && scan_zmm::available() {
        // SAFETY: checked just above.
        return unsafe { scan_zmm::walk(head, state, y, decays, dts) };
    }
    #[allow(unused_mut)] // (only the x86 paths move it)
    let mut p0 = 0;
    #[cfg(target_arch = "x86_64")]
    if fma && !per_state {
        while p0 + 4 <= p {
            let rows = &mut state[p0 * n..(p0 + 4) * n];
            // The rows are kept as `s / D`, `D` the product of the decays since they were last
            // the state itself: a token then adds `B·x·dt / D` to them (one multiply-add per
            // state instead of a multiply and a multiply-add) and `y = D·(s / D)·C`. When `D`
            // would fall below `SCALED_MIN` (the rows would grow past 1e20 of the state) or
            // rise above 1 (a decay above 1: A is not negative), the rows take `D` back and
            // that token decays them as it is.
            let mut dcum = 1.0f32;
            for ti in 0..t {
                let (d, xs) = (decays[ti], [0, 1, 2, 3].map(|r| xd(ti, p0 + r)));
                // SAFETY (both calls): `fma` is set only by `walk_avx2`, compiled for AVX2
                // and FMA.
                let ys = if (SCALED_MIN..=1.0).contains(&(dcum * d)) {
                    dcum *= d;
                    let xs = xs.map(|x| x / dcum);
                    unsafe { rows4_avx2::<false>(rows, 1.0, bc(ti), xs) }.map(|y| y * dcum)
                } else {
                    rows.iter_mut().for_each(|s| *s *= dcum);
                    dcum = 1.0;
                    unsafe { rows4_avx2::<true>(rows, d, bc(ti), xs) }
                };
                y[ti * p + p0..ti * p + p0 + 4].copy_from_slice(&ys);
            }
            rows.iter_mut().for_each(|s| *s *= dcum);
            p0 += 4;
        }
    }
    let _ = fma;
    for (pi, row) in state.chunks_exact_mut(n).enumerate().skip(p0) {
        for ti in 0..t {
            let (b, c) = bc(ti);
            y[ti * p + pi] = step_row_body(row, decay(ti), b, c, xd(ti, pi));
        }
    }
}

/// The smallest product of decays that [`walk_body`] keeps out of Mamba2's state rows.
pub(super) const SCALED_MIN: f32 = 1e-20;

/// One token of four state rows (`rows`, `[4, N]`) with one decay `d`: `s = s·d + b·xd_r`,
/// returns each row's `s · c`. B and C are loaded once for the four rows, whose sums are four
/// independent chains. Without `DECAY`, `d` is 1 and not multiplied by. (The delta rule's
/// second pass is the same step, with its keys and queries for B and C.)
///
/// # Safety
/// The CPU has AVX2 and FMA (inlined into code compiled for them).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn rows4_avx2<const DECAY: bool>(
    rows: &mut [f32],
    d: f32,
    (b, c): (&[f32], &[f32]),
    xd: [f32; 4],
) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = rows.len() / 4;
    assert!(b.len() >= n && c.len() >= n);
    let n8 = n / 8 * 8;
    // SAFETY: the caller's contract; every access lies in `rows` (4·n), `b` and `c` (n each,
    // asserted above), k + 8 ≤ n8 ≤ n.
    let mut out = unsafe {
        let dv = _mm256_set1_ps(d);
        let mut xv = [_mm256_setzero_ps(); 4];
        for r in 0..4 {
            xv[r] = _mm256_set1_ps(xd[r]);
        }
        let mut acc = [_mm256_setzero_ps(); 4];
        let base = rows.as_mut_ptr();
        for k in (0..n8).step_by(8) {
            let bb = _mm256_loadu_ps(b.as_ptr().add(k));
            let cc = _mm256_loadu_ps(c.as_ptr().add(k));
            for r in 0..4 {
                let at = base.add(r * n + k);
                let s = if DECAY {
                    _mm256_fmadd_ps(_mm256_loadu_ps(at), dv, _mm256_mul_ps(bb, xv[r]))
                } else {
                    _mm256_fmadd_ps(bb, xv[r], _mm256_loadu_ps(at))
                };
                _mm256_storeu_ps(at, s);
                acc[r] = _mm256_fmadd_ps(s, cc, acc[r]);
            }
        }
        hsum4(acc)
    };
    for (r, o) in out.iter_mut().enumerate() {
        for k in n8..n {
            let s = &mut rows[r * n + k];
            *s = *s * d + b[k] * xd[r];
            *o += *s * c[k];
        }
    }
    out
}

/// Eight partial sums, so that the loop vectorizes (a row's single decay kept in a register).
#[inline(always)]
fn step_row_body(row: &mut [f32], decay: Decay, b: &[f32], c: &[f32], xd: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let n8 = row.len() / 8 * 8;
    let (rh, rt) = row.split_at_mut(n8);
    let mut sum = 0.0;
    match decay {
        Decay::PerState(decay) => {
            for (((s, d), b), c) in rh
                .chunks_exact_mut(8)
                .zip(decay.chunks_exact(8))
                .zip(b.chunks_exact(8))
                .zip(c.chunks_exact(8))
            {
                for i in 0..8 {
                    s[i] = s[i] * d[i] + b[i] * xd;
                    acc[i] += s[i] * c[i];
                }
            }
            sum += acc.iter().sum::<f32>();
            for (i, s) in rt.iter_mut().enumerate() {
                *s = *s * decay[n8 + i] + b[n8 + i] * xd;
                sum += *s * c[n8 + i];
            }
        }
        Decay::One(d) => {
            for ((s, b), c) in rh
                .chunks_exact_mut(8)
                .zip(b.chunks_exact(8))
                .zip(c.chunks_exact(8))
            {
                for i in 0..8 {
                    s[i] = s[i] * d + b[i] * xd;
                    acc[i] += s[i] * c[i];
                }
            }
            sum += acc.iter().sum::<f32>();
            for (i, s) in rt.iter_mut().enumerate() {
                *s = *s * d + b[n8 + i] * xd;
                sum += *s * c[n8 + i];
            }
        }
    }
    sum
}

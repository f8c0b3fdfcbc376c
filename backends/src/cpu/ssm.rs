//! Recurrent-layer ops: causal depthwise convolution and the selective scan.

use super::state::slot_rows;
use super::team;
use super::tensor::TensorRef;
use crate::Result;
use weft_graph::math;

/// `y[s, t, c] = Σ_k xc[s, t + k, c] · w[c, k]`.
pub fn ssm_conv(xc: &TensorRef, w: &TensorRef, out: &mut [f32]) {
    let (xv, wv) = (xc.f32(), w.f32());
    let [_, l, c] = [xc.dims()[0], xc.dims()[1], xc.dims()[2]];
    let k = w.dims()[1];
    let t = l + 1 - k;
    team::global().chunks_mut(out, t * c, |s, ys| {
        conv_window(&xv[s * l * c..(s + 1) * l * c], &wv, t, c, k, ys);
    });
}

/// The conv step on windows that live in a cache `[R, (K−1)·C]` (`Op::SsmConv` with four
/// sources `[cache, x, w, slots]`): sequence `s`'s window is row `slots[s]` followed by its
/// tokens; writes `y [S, T, C]` and leaves the window's last `K−1` rows in the cache row.
pub fn ssm_conv_cached(
    cache: &mut [f32],
    slots: &[i32],
    srcs: &[TensorRef],
    node: &str,
    ys: &mut [f32],
) -> Result<()> {
    let (x, w) = (&srcs[0], &srcs[1]);
    let (xv, wv) = (x.f32(), w.f32());
    let [t, c] = [x.dims()[1], x.dims()[2]];
    let k = w.dims()[1];
    let km1 = k - 1;
    let rows = slot_rows(cache, km1 * c, slots, "ssm_conv", node)?;
    let mut window = vec![0.0f32; (km1 + t) * c];
    for (si, (row, y)) in rows.into_iter().zip(ys.chunks_mut(t * c)).enumerate() {
        window[..km1 * c].copy_from_slice(row);
        window[km1 * c..].copy_from_slice(&xv[si * t * c..(si + 1) * t * c]);
        conv_window(&window, &wv, t, c, k, y);
        row.copy_from_slice(&window[t * c..]);
    }
    Ok(())
}

/// `y[t, c] = Σ_k window[t + k, c] · w[c, k]` over one sequence's window `[K−1+T, C]`.
/// Each output row sums its `K` window rows times the weights' columns, channels innermost so
/// that the loop vectorizes (the weights transposed to `[K, C]` first for a prompt).
fn conv_window(window: &[f32], w: &[f32], t: usize, c: usize, k: usize, y: &mut [f32]) {
    if c == 0 {
        return;
    }
    if t == 1 {
        for (ci, yc) in y[..c].iter_mut().enumerate() {
            let mut acc = 0.0;
            for ki in 0..k {
                acc += window[ki * c + ci] * w[ci * k + ki];
            }
            *yc = acc;
        }
        return;
    }
    let mut wt = vec![0.0f32; k * c];
    for (ci, wc) in w.chunks_exact(k).enumerate() {
        for (ki, &v) in wc.iter().enumerate() {
            wt[ki * c + ci] = v;
        }
    }
    for (ti, yr) in y.chunks_exact_mut(c).take(t).enumerate() {
        yr.fill(0.0);
        for (ki, wr) in wt.chunks_exact(c).enumerate() {
            let xr = &window[(ti + ki) * c..(ti + ki + 1) * c];
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
    // Heads are independent. They go in blocks (Mamba1 has a head per channel, each a few
    // dozen flops per token): each block updates its heads' state in place and keeps its y
    // rows, [head, token, p], for the copy below.
    let team = team::global();
    let hb = (s * h).div_ceil(4 * team.threads()).max(1);
    let mut blocks: Vec<(usize, usize, &mut [f32], Vec<f32>)> = vec![];
    for (si, row) in states.into_iter().enumerate() {
        for (bi, state) in row.chunks_mut(hb * per).enumerate() {
            blocks.push((si, bi * hb, state, vec![]));
        }
    }
    team.chunks_mut(&mut blocks, 1, |_, blk| {
        let (si, h0, state, y) = &mut blk[0];
        let (si, h0) = (*si, *h0);
        let nh = state.len() / per;
        y.resize(nh * t * p, 0.0);
        // exp(dt·A) per token: one per state (Mamba1's A is one per state), or one for the
        // head (Mamba2's)
        let dn = if a_cols == n { n } else { 1 };
        let mut decay = vec![0.0f32; t * dn];
        for j in 0..nh {
            let hi = h0 + j;
            let gi = hi / heads_per_group;
            let state = &mut state[j * per..(j + 1) * per];
            let arow = &av[hi * a_cols..(hi + 1) * a_cols];
            let dts = |ti: usize| dtv[(si * t + ti) * h + hi];
            // once per token, not once per state row
            for (ti, da) in decay.chunks_exact_mut(dn).enumerate() {
                let d = dts(ti);
                for (da, &av) in da.iter_mut().zip(arow) {
                    *da = math::exp(d * av);
                }
            }
            // each state row stays in cache over all the tokens
            for (pi, row) in state.chunks_exact_mut(n).enumerate() {
                for ti in 0..t {
                    let xd = xv[((si * t + ti) * h + hi) * p + pi] * dts(ti);
                    let bo = ((si * t + ti) * g + gi) * n;
                    let bc = (&bv[bo..bo + n], &cv[bo..bo + n]);
                    let da = &decay[ti * dn..(ti + 1) * dn];
                    let d = if dn == n {
                        Decay::PerState(da)
                    } else {
                        Decay::One(da[0])
                    };
                    y[(j * t + ti) * p + pi] = step_row(row, d, bc, xd);
                }
            }
        }
    });
    for (si, h0, _, y) in &blocks {
        for (j, rows) in y.chunks_exact(t * p).enumerate() {
            for ti in 0..t {
                let o = ((si * t + ti) * h + h0 + j) * p;
                ys[o..o + p].copy_from_slice(&rows[ti * p..(ti + 1) * p]);
            }
        }
    }
}

/// A token's decay of a state row: one factor per state (Mamba1) or one for the row (Mamba2).
#[derive(Clone, Copy)]
enum Decay<'a> {
    PerState(&'a [f32]),
    One(f32),
}

/// One token of one state row: `s = s·decay + b·xd`, returns `s · c`.
#[inline]
fn step_row(row: &mut [f32], decay: Decay, (b, c): (&[f32], &[f32]), xd: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked above.
        return unsafe { step_row_avx2(row, decay, b, c, xd) };
    }
    step_row_body(row, decay, b, c, xd)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn step_row_avx2(row: &mut [f32], decay: Decay, b: &[f32], c: &[f32], xd: f32) -> f32 {
    step_row_body(row, decay, b, c, xd)
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

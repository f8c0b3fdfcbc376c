//! The gated delta rule (Qwen3-Next's linear attention), in its recurrent form (one token at a
//! time) and its chunked form (intra-chunk work as small matrix products, the state carried
//! across chunks). Both compute the same function.
//!
//! Per sequence and value head, with state `S [Dv, Dk]`:
//! `S ← S·exp(g)`, `S ← S + β (v − S k) kᵀ`, `y = S q`.

use super::state::slot_rows;
use super::team;
use super::tensor::TensorRef;
use crate::Result;
use weft_graph::DeltaForm;

struct Operands<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    g: &'a [f32],
    beta: &'a [f32],
    t: usize,
    hk: usize,
    hv: usize,
    dk: usize,
    dv: usize,
}

impl Operands<'_> {
    fn qk(&self, src: &[f32], s: usize, ti: usize, h: usize) -> std::ops::Range<usize> {
        let kh = h / (self.hv / self.hk);
        let o = ((s * self.t + ti) * self.hk + kh) * self.dk;
        let _ = src;
        o..o + self.dk
    }
    fn vrow(&self, s: usize, ti: usize, h: usize) -> std::ops::Range<usize> {
        let o = ((s * self.t + ti) * self.hv + h) * self.dv;
        o..o + self.dv
    }
    fn scalar(&self, s: usize, ti: usize, h: usize) -> usize {
        (s * self.t + ti) * self.hv + h
    }
}

fn recurrent(o: &Operands, s: usize, h: usize, state: &mut [f32], y: &mut [f32]) {
    let (dk, dv) = (o.dk, o.dv);
    let mut delta = vec![0.0f32; dv];
    for ti in 0..o.t {
        let (q, k, v) = (
            &o.q[o.qk(o.q, s, ti, h)],
            &o.k[o.qk(o.k, s, ti, h)],
            &o.v[o.vrow(s, ti, h)],
        );
        let i = o.scalar(s, ti, h);
        let (decay, beta) = (o.g[i].exp(), o.beta[i]);
        for r in 0..dv {
            let row = &mut state[r * dk..(r + 1) * dk];
            let mut kv = 0.0;
            for j in 0..dk {
                row[j] *= decay;
                kv += row[j] * k[j];
            }
            delta[r] = (v[r] - kv) * beta;
        }
        for r in 0..dv {
            let row = &mut state[r * dk..(r + 1) * dk];
            let mut acc = 0.0;
            for j in 0..dk {
                row[j] += delta[r] * k[j];
                acc += row[j] * q[j];
            }
            y[ti * dv + r] = acc;
        }
    }
}

/// Chunked form. Within a chunk of `c` tokens with cumulative log-decays `G`:
/// `A = −tril₋₁((β k)·kᵀ ⊙ e^{G_i − G_j})`, solved as `T = (I − A)⁻¹` by forward substitution;
/// `U = T (β v)`, `W = T (β k e^{G})`; then with the state `S` carried in:
/// `v' = U − W Sᵀ`, `y = (q e^{G}) Sᵀ + tril₀(q kᵀ ⊙ e^{G_i − G_j}) v'`,
/// `S ← S e^{G_c} + v'ᵀ (k e^{G_c − G})`.
fn chunked(o: &Operands, chunk: usize, s: usize, h: usize, state: &mut [f32], y: &mut [f32]) {
    let (dk, dv) = (o.dk, o.dv);
    let mut t0 = 0;
    while t0 < o.t {
        let c = chunk.min(o.t - t0);
        let tok = |i: usize| t0 + i;
        let mut gc = vec![0.0f32; c];
        let mut acc = 0.0;
        for i in 0..c {
            acc += o.g[o.scalar(s, tok(i), h)];
            gc[i] = acc;
        }
        let beta: Vec<f32> = (0..c).map(|i| o.beta[o.scalar(s, tok(i), h)]).collect();
        let k = |i: usize| &o.k[o.qk(o.k, s, tok(i), h)];
        let q = |i: usize| &o.q[o.qk(o.q, s, tok(i), h)];
        let v = |i: usize| &o.v[o.vrow(s, tok(i), h)];
        let dotk = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        // T = (I + L)^-1 with L[i][j] = β_i (k_i·k_j) e^{G_i−G_j} for j < i.
        let mut tm = vec![0.0f32; c * c];
        for i in 0..c {
            for j in 0..i {
                let l = beta[i] * dotk(k(i), k(j)) * (gc[i] - gc[j]).exp();
                // row i of T = e_i − Σ_{j<i} L[i][j] · row j of T
                for m in 0..=j {
                    tm[i * c + m] -= l * tm[j * c + m];
                }
            }
            tm[i * c + i] = 1.0;
        }
        // U = T (β v) [c, dv]; W = T (β k e^{G}) [c, dk]
        let mut u = vec![0.0f32; c * dv];
        let mut w = vec![0.0f32; c * dk];
        for i in 0..c {
            for m in 0..=i {
                let f = tm[i * c + m] * beta[m];
                if f == 0.0 {
                    continue;
                }
                let eg = gc[m].exp();
                u[i * dv..(i + 1) * dv]
                    .iter_mut()
                    .zip(v(m))
                    .for_each(|(a, &b)| *a += f * b);
                w[i * dk..(i + 1) * dk]
                    .iter_mut()
                    .zip(k(m))
                    .for_each(|(a, &b)| *a += f * eg * b);
            }
        }
        // v' = U − W Sᵀ  (S is [dv, dk])
        let mut vp = u;
        for i in 0..c {
            let wi = &w[i * dk..(i + 1) * dk];
            for r in 0..dv {
                vp[i * dv + r] -= dotk(wi, &state[r * dk..(r + 1) * dk]);
            }
        }
        // y_i = e^{G_i} S q_i + Σ_{j≤i} (q_i·k_j) e^{G_i−G_j} v'_j
        for i in 0..c {
            let qi = q(i);
            let eg = gc[i].exp();
            let yi = &mut y[tok(i) * dv..(tok(i) + 1) * dv];
            for r in 0..dv {
                yi[r] = eg * dotk(qi, &state[r * dk..(r + 1) * dk]);
            }
            for j in 0..=i {
                let a = dotk(qi, k(j)) * (gc[i] - gc[j]).exp();
                yi.iter_mut()
                    .zip(&vp[j * dv..(j + 1) * dv])
                    .for_each(|(y, &b)| *y += a * b);
            }
        }
        // S ← S e^{G_c} + Σ_j v'_j (k_j e^{G_c − G_j})ᵀ
        let gl = gc[c - 1];
        let el = gl.exp();
        state.iter_mut().for_each(|x| *x *= el);
        for j in 0..c {
            let f = (gl - gc[j]).exp();
            let kj = k(j);
            for r in 0..dv {
                let a = vp[j * dv + r] * f;
                state[r * dk..(r + 1) * dk]
                    .iter_mut()
                    .zip(kj)
                    .for_each(|(x, &b)| *x += a * b);
            }
        }
        t0 += c;
    }
}

pub fn gated_delta_net(srcs: &[TensorRef], form: DeltaForm, out: &mut [f32]) {
    let v = &srcs[3];
    let ny = v.dims().iter().product::<usize>();
    let (ys, states) = out.split_at_mut(ny);
    states.copy_from_slice(&srcs[0].f32());
    let per = states.len() / v.dims()[0].max(1);
    delta(
        states.chunks_mut(per.max(1)).collect(),
        &srcs[1..6],
        form,
        ys,
    );
}

/// The delta rule on state rows that live in a cache `[R, Hv·Dv·Dk]` (`Op::GatedDeltaNet`
/// with seven sources): sequence `s` starts from row `slots[s]` and leaves its new state there.
pub fn gated_delta_net_cached(
    cache: &mut [f32],
    slots: &[i32],
    srcs: &[TensorRef],
    form: DeltaForm,
    node: &str,
    ys: &mut [f32],
) -> Result<()> {
    let v = &srcs[2];
    let per = v.dims()[2] * v.dims()[3] * srcs[0].dims()[3];
    delta(
        slot_rows(cache, per, slots, "gated_delta_net", node)?,
        srcs,
        form,
        ys,
    );
    Ok(())
}

/// Runs the rule over `[q, k, v, g, beta]` with each sequence's state `[Hv, Dv, Dk]` in
/// `states[s]`, updated in place; writes `y`.
fn delta(states: Vec<&mut [f32]>, srcs: &[TensorRef], form: DeltaForm, ys: &mut [f32]) {
    let vals: Vec<_> = srcs.iter().map(|t| t.f32()).collect();
    let (q, v) = (&srcs[0], &srcs[2]);
    let [t, hk, dk] = [q.dims()[1], q.dims()[2], q.dims()[3]];
    let [hv, dv] = [v.dims()[2], v.dims()[3]];
    let o = Operands {
        q: &vals[0],
        k: &vals[1],
        v: &vals[2],
        g: &vals[3],
        beta: &vals[4],
        t,
        hk,
        hv,
        dk,
        dv,
    };
    // one work item per (sequence, head), its state updated in place
    let mut items: Vec<(usize, usize, &mut [f32], Vec<f32>)> = vec![];
    for (si, row) in states.into_iter().enumerate() {
        for (hi, state) in row.chunks_mut(dv * dk).enumerate() {
            items.push((si, hi, state, vec![]));
        }
    }
    team::global().chunks_mut(&mut items, 1, |_, item| {
        let (si, hi, state, y) = &mut item[0];
        y.resize(t * dv, 0.0);
        match form {
            DeltaForm::Recurrent => recurrent(&o, *si, *hi, state, y),
            DeltaForm::Chunked { chunk } => chunked(&o, chunk, *si, *hi, state, y),
        }
    });
    for (si, hi, _, y) in &items {
        for ti in 0..t {
            let off = ((si * t + ti) * hv + hi) * dv;
            ys[off..off + dv].copy_from_slice(&y[ti * dv..(ti + 1) * dv]);
        }
    }
}

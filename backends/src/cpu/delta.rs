//! The gated delta rule (Qwen3-Next's linear attention), in its recurrent form (one token at a
//! time) and its chunked form (intra-chunk work as small matrix products, the state carried
//! across chunks). Both compute the same function.
//!
//! Per sequence and value head, with state `S [Dv, Dk]`:
//! `S ← S·exp(g)`, `S ← S + β (v − S k) kᵀ`, `y = S q`.

use super::team;
use super::tensor::TensorRef;
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
    let vals: Vec<_> = srcs.iter().map(|t| t.f32()).collect();
    let [s, hv, dv, dk] = [
        srcs[0].dims()[0],
        srcs[0].dims()[1],
        srcs[0].dims()[2],
        srcs[0].dims()[3],
    ];
    let (t, hk) = (srcs[1].dims()[1], srcs[1].dims()[2]);
    let o = Operands {
        q: &vals[1],
        k: &vals[2],
        v: &vals[3],
        g: &vals[4],
        beta: &vals[5],
        t,
        hk,
        hv,
        dk,
        dv,
    };
    let st0 = &vals[0];
    let results: Vec<(Vec<f32>, Vec<f32>)> = team::global().map(s * hv, |sh| {
        let (si, hi) = (sh / hv, sh % hv);
        let mut state = st0[sh * dv * dk..(sh + 1) * dv * dk].to_vec();
        let mut y = vec![0.0f32; t * dv];
        match form {
            DeltaForm::Recurrent => recurrent(&o, si, hi, &mut state, &mut y),
            DeltaForm::Chunked { chunk } => chunked(&o, chunk, si, hi, &mut state, &mut y),
        }
        (y, state)
    });
    let (ys, states) = out.split_at_mut(s * t * hv * dv);
    for (sh, (y, st)) in results.iter().enumerate() {
        let (si, hi) = (sh / hv, sh % hv);
        for ti in 0..t {
            let off = ((si * t + ti) * hv + hi) * dv;
            ys[off..off + dv].copy_from_slice(&y[ti * dv..(ti + 1) * dv]);
        }
        states[sh * dv * dk..(sh + 1) * dv * dk].copy_from_slice(st);
    }
}

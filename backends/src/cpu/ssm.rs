//! Recurrent-layer ops: causal depthwise convolution and the selective scan.

use super::team;
use super::tensor::TensorRef;

/// `y[s, t, c] = Σ_k xc[s, t + k, c] · w[c, k]`.
pub fn ssm_conv(xc: &TensorRef, w: &TensorRef, out: &mut [f32]) {
    let (xv, wv) = (xc.f32(), w.f32());
    let [_, l, c] = [xc.dims()[0], xc.dims()[1], xc.dims()[2]];
    let k = w.dims()[1];
    let t = l + 1 - k;
    team::global().chunks_mut(out, t * c, |s, ys| {
        let x = &xv[s * l * c..(s + 1) * l * c];
        for ti in 0..t {
            for ci in 0..c {
                let mut acc = 0.0;
                for ki in 0..k {
                    acc += x[(ti + ki) * c + ci] * wv[ci * k + ki];
                }
                ys[ti * c + ci] = acc;
            }
        }
    });
}

/// Selective scan over `T` tokens for every sequence and head; writes `y` then the new state.
pub fn ssm_scan(srcs: &[TensorRef], out: &mut [f32]) {
    let [st, x, dt, a, b, c] = [&srcs[0], &srcs[1], &srcs[2], &srcs[3], &srcs[4], &srcs[5]];
    let (stv, xv, dtv, av, bv, cv) = (st.f32(), x.f32(), dt.f32(), a.f32(), b.f32(), c.f32());
    let [s, h, p, n] = [st.dims()[0], st.dims()[1], st.dims()[2], st.dims()[3]];
    let t = x.dims()[1];
    let g = b.dims()[2];
    let a_per_state = a.dims()[1] == n;
    let heads_per_group = h / g;
    let (ys, states) = out.split_at_mut(s * t * h * p);
    // Each (sequence, head) is independent: compute its y rows and its state block.
    let results: Vec<Vec<f32>> = team::global().map(s * h, |sh| {
        let (si, hi) = (sh / h, sh % h);
        let gi = hi / heads_per_group;
        let mut state = stv[sh * p * n..(sh + 1) * p * n].to_vec();
        let mut y = vec![0.0f32; t * p];
        let mut decay = vec![0.0f32; n];
        for ti in 0..t {
            let d = dtv[(si * t + ti) * h + hi];
            let bo = ((si * t + ti) * g + gi) * n;
            let (br, cr) = (&bv[bo..bo + n], &cv[bo..bo + n]);
            // exp(dt·A) once per token, not once per state row (Mamba2's A is one per head)
            for (ni, da) in decay.iter_mut().enumerate() {
                *da = (d * av[hi * a.dims()[1] + if a_per_state { ni } else { 0 }]).exp();
            }
            for pi in 0..p {
                let xd = xv[((si * t + ti) * h + hi) * p + pi] * d;
                let row = &mut state[pi * n..(pi + 1) * n];
                let mut acc = 0.0;
                for ni in 0..n {
                    row[ni] = row[ni] * decay[ni] + br[ni] * xd;
                    acc += row[ni] * cr[ni];
                }
                y[ti * p + pi] = acc;
            }
        }
        y.extend_from_slice(&state);
        y
    });
    for (sh, r) in results.iter().enumerate() {
        let (si, hi) = (sh / h, sh % h);
        for ti in 0..t {
            let o = ((si * t + ti) * h + hi) * p;
            ys[o..o + p].copy_from_slice(&r[ti * p..(ti + 1) * p]);
        }
        states[sh * p * n..(sh + 1) * p * n].copy_from_slice(&r[t * p..]);
    }
}

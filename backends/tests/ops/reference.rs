//! Plain, obviously-correct reference implementations in f64, written as direct loops over the
//! formulas, independent of the backends' code.

#[derive(Clone, Debug)]
pub struct Nd {
    pub dims: Vec<usize>,
    pub data: Vec<f64>,
}

impl Nd {
    pub fn new(dims: &[usize], data: Vec<f64>) -> Nd {
        assert_eq!(dims.iter().product::<usize>(), data.len());
        Nd {
            dims: dims.to_vec(),
            data,
        }
    }
    pub fn zeros(dims: &[usize]) -> Nd {
        Nd::new(dims, vec![0.0; dims.iter().product()])
    }
    pub fn from_f32(dims: &[usize], v: &[f32]) -> Nd {
        Nd::new(dims, v.iter().map(|&x| x as f64).collect())
    }
    pub fn off(&self, idx: &[usize]) -> usize {
        assert_eq!(idx.len(), self.dims.len());
        idx.iter().zip(&self.dims).fold(0, |acc, (&i, &d)| {
            assert!(i < d);
            acc * d + i
        })
    }
    pub fn at(&self, idx: &[usize]) -> f64 {
        self.data[self.off(idx)]
    }
    pub fn set(&mut self, idx: &[usize], v: f64) {
        let o = self.off(idx);
        self.data[o] = v;
    }
    /// Value at `idx` of the broadcast of `self` to a shape of rank `idx.len()`.
    pub fn at_broadcast(&self, idx: &[usize]) -> f64 {
        let r = self.dims.len();
        let lead = idx.len() - r;
        let j: Vec<usize> = (0..r)
            .map(|i| if self.dims[i] == 1 { 0 } else { idx[lead + i] })
            .collect();
        self.at(&j)
    }
}

/// Every multi-index of `dims` in row-major order.
pub fn indices(dims: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &d in dims {
        out = out
            .into_iter()
            .flat_map(|p| {
                (0..d).map(move |i| {
                    let mut q = p.clone();
                    q.push(i);
                    q
                })
            })
            .collect();
    }
    out
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub fn unary(name: &str, x: f64, p: (f64, f64)) -> f64 {
    match name {
        "neg" => -x,
        "exp" => x.exp(),
        "log" => x.ln(),
        "sqrt" => x.sqrt(),
        "sqr" => x * x,
        "tanh" => x.tanh(),
        "relu" => x.max(0.0),
        "sqr_relu" => x.max(0.0).powi(2),
        "sigmoid" => sigmoid(x),
        "silu" => x * sigmoid(x),
        "gelu" => {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        }
        "softplus" => (1.0 + x.exp()).ln(),
        "scale" => x * p.0,
        "offset" => x + p.0,
        "clamp" => x.max(p.0).min(p.1),
        _ => panic!("unknown unary {name}"),
    }
}

pub fn binary(name: &str, a: f64, b: f64) -> f64 {
    match name {
        "add" => a + b,
        "sub" => a - b,
        "mul" => a * b,
        "div" => a / b,
        _ => panic!("unknown binary {name}"),
    }
}

/// `x [.., M, K] · w [.., N, K]ᵀ` with w's batch broadcast.
pub fn matmul(x: &Nd, w: &Nd) -> Nd {
    let r = x.dims.len();
    let (m, k) = (x.dims[r - 2], x.dims[r - 1]);
    let n = w.dims[w.dims.len() - 2];
    let mut od = x.dims[..r - 2].to_vec();
    od.extend([m, n]);
    let mut out = Nd::zeros(&od);
    for idx in indices(&od) {
        let (i, j) = (idx[r - 2], idx[r - 1]);
        let mut s = 0.0;
        for kk in 0..k {
            let mut xi = idx.clone();
            xi[r - 2] = i;
            xi[r - 1] = kk;
            let mut wi = idx.clone();
            wi[r - 2] = j;
            wi[r - 1] = kk;
            s += x.at(&xi) * w.at_broadcast(&wi);
        }
        out.set(&idx, s);
    }
    out
}

pub fn rms_norm(x: &Nd, eps: f64) -> Nd {
    row_map(x, |row| {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64;
        row.iter().map(|v| v / (ms + eps).sqrt()).collect()
    })
}

pub fn l2_norm(x: &Nd, eps: f64) -> Nd {
    row_map(x, |row| {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        row.iter().map(|v| v / n.max(eps)).collect()
    })
}

pub fn row_map(x: &Nd, f: impl Fn(&[f64]) -> Vec<f64>) -> Nd {
    let d = *x.dims.last().expect("rank ≥ 1");
    Nd::new(&x.dims, x.data.chunks(d).flat_map(f).collect())
}

pub fn softmax_row(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return vec![0.0; row.len()];
    }
    let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Rotary embedding of `x [T, H, D]`.
pub fn rope(x: &Nd, pos: &[i32], n_dims: usize, neox: bool, base: f64, fscale: f64) -> Nd {
    let mut out = x.clone();
    let [t, h, _] = [x.dims[0], x.dims[1], x.dims[2]];
    for ti in 0..t {
        for hi in 0..h {
            for i in 0..n_dims / 2 {
                let theta = pos[ti] as f64 * fscale / base.powf(2.0 * i as f64 / n_dims as f64);
                let (a, b) = if neox {
                    (i, i + n_dims / 2)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (x.at(&[ti, hi, a]), x.at(&[ti, hi, b]));
                out.set(&[ti, hi, a], x0 * theta.cos() - x1 * theta.sin());
                out.set(&[ti, hi, b], x0 * theta.sin() + x1 * theta.cos());
            }
        }
    }
    out
}

/// Attention with GQA, causal limit, additive mask and sigmoid gate.
pub fn attention(
    q: &Nd,
    k: &Nd,
    v: &Nd,
    mask: Option<&Nd>,
    gate: Option<&Nd>,
    scale: f64,
    causal: bool,
) -> Nd {
    let [t, hq, d] = [q.dims[0], q.dims[1], q.dims[2]];
    let [tk, hkv] = [k.dims[0], k.dims[1]];
    let dv = v.dims[2];
    let mut out = Nd::zeros(&[t, hq, dv]);
    for ti in 0..t {
        for h in 0..hq {
            let kh = h / (hq / hkv);
            let scores: Vec<f64> = (0..tk)
                .map(|j| {
                    if causal && j > ti + tk - t {
                        return f64::NEG_INFINITY;
                    }
                    let s: f64 = (0..d).map(|e| q.at(&[ti, h, e]) * k.at(&[j, kh, e])).sum();
                    s * scale + mask.map_or(0.0, |m| m.at(&[ti, j]))
                })
                .collect();
            let p = softmax_row(&scores);
            for e in 0..dv {
                let mut o: f64 = (0..tk).map(|j| p[j] * v.at(&[j, kh, e])).sum();
                if let Some(g) = gate {
                    o *= sigmoid(g.at(&[ti, h, e]));
                }
                out.set(&[ti, h, e], o);
            }
        }
    }
    out
}

/// Selective scan; returns (y [S, T, H, P], state [S, H, P, N]).
pub fn ssm_scan(state: &Nd, x: &Nd, dt: &Nd, a: &Nd, b: &Nd, c: &Nd) -> (Nd, Nd) {
    let [s, h, p, n] = [state.dims[0], state.dims[1], state.dims[2], state.dims[3]];
    let t = x.dims[1];
    let g = b.dims[2];
    let mut st = state.clone();
    let mut y = Nd::zeros(&[s, t, h, p]);
    for si in 0..s {
        for ti in 0..t {
            for hi in 0..h {
                let gi = hi / (h / g);
                let d = dt.at(&[si, ti, hi]);
                for pi in 0..p {
                    let mut acc = 0.0;
                    for ni in 0..n {
                        let av = a.at(&[hi, if a.dims[1] == 1 { 0 } else { ni }]);
                        let new = st.at(&[si, hi, pi, ni]) * (d * av).exp()
                            + d * b.at(&[si, ti, gi, ni]) * x.at(&[si, ti, hi, pi]);
                        st.set(&[si, hi, pi, ni], new);
                        acc += new * c.at(&[si, ti, gi, ni]);
                    }
                    y.set(&[si, ti, hi, pi], acc);
                }
            }
        }
    }
    (y, st)
}

/// Gated delta rule, token by token; returns (y [S, T, Hv, Dv], state [S, Hv, Dv, Dk]).
pub fn gated_delta_net(state: &Nd, q: &Nd, k: &Nd, v: &Nd, g: &Nd, beta: &Nd) -> (Nd, Nd) {
    let [s, hv, dv, dk] = [state.dims[0], state.dims[1], state.dims[2], state.dims[3]];
    let (t, hk) = (q.dims[1], q.dims[2]);
    let mut st = state.clone();
    let mut y = Nd::zeros(&[s, t, hv, dv]);
    for si in 0..s {
        for h in 0..hv {
            let kh = h / (hv / hk);
            for ti in 0..t {
                let decay = g.at(&[si, ti, h]).exp();
                let b = beta.at(&[si, ti, h]);
                for r in 0..dv {
                    for j in 0..dk {
                        let o = st.at(&[si, h, r, j]) * decay;
                        st.set(&[si, h, r, j], o);
                    }
                }
                for r in 0..dv {
                    let kv: f64 = (0..dk)
                        .map(|j| st.at(&[si, h, r, j]) * k.at(&[si, ti, kh, j]))
                        .sum();
                    let delta = (v.at(&[si, ti, h, r]) - kv) * b;
                    for j in 0..dk {
                        let o = st.at(&[si, h, r, j]) + delta * k.at(&[si, ti, kh, j]);
                        st.set(&[si, h, r, j], o);
                    }
                    let yo: f64 = (0..dk)
                        .map(|j| st.at(&[si, h, r, j]) * q.at(&[si, ti, kh, j]))
                        .sum();
                    y.set(&[si, ti, h, r], yo);
                }
            }
        }
    }
    (y, st)
}

/// `x` rounded to bf16 (to nearest, ties to even), as the CPU backend rounds a bf16 weight's
/// activations.
pub fn round_to_bf16(x: &Nd) -> Nd {
    let mut out = x.clone();
    for v in out.data.iter_mut() {
        *v = half::bf16::from_f32(*v as f32).to_f64();
    }
    out
}

/// `x` as a backend that rounds activations to 8 bits for quantized weights sees it: each run of
/// `block` values along the last axis becomes `d·round(v/d)` with `d = max|v| / 127`, in f32.
pub fn round_activations(x: &Nd, block: usize) -> Nd {
    let mut out = x.clone();
    for run in out.data.chunks_mut(block) {
        let v: Vec<f32> = run.iter().map(|&a| a as f32).collect();
        let d = v.iter().fold(0.0f32, |m, a| m.max(a.abs())) / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (o, a) in run.iter_mut().zip(&v) {
            *o = (d * (a * id).round()) as f64;
        }
    }
    out
}

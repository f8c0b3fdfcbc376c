//! Mamba1's selective scan with a head in each of eight AVX2 lanes (sixteen AVX-512 lanes for
//! prompts). A Mamba1 head is one channel (`P = 1`) whose `N` states each decay at their own
//! rate `exp(dt·A[n])`, so the exponentials are most of its work; laid across heads, every step
//! is a whole vector (a head's 16 states were two, with a horizontal sum per token and the
//! exponentials' setup per token), and a token's outputs for a register's heads are one vector.

use super::vmath::{F32s, exps, transpose8};
use std::arch::x86_64::*;

/// One sequence's inputs to a block of Mamba1 heads (`[x, dt, A, B, C]` of `Op::SsmScan`
/// with `P = 1` and a decay per state): heads `h0..` of `h`, tokens `0..t`; token `ti`'s dt
/// and x for head `hi` are at `at + ti·h + hi`, its B and C rows of group `gi` at
/// `(bc_at + ti·g + gi)·n`, head `hi`'s A row at `a[hi·n..]`.
pub struct Lanes<'a> {
    pub n: usize,
    pub t: usize,
    pub h: usize,
    pub g: usize,
    pub h0: usize,
    pub a: &'a [f32],
    pub dt: &'a [f32],
    pub x: &'a [f32],
    pub at: usize,
    pub b: &'a [f32],
    pub c: &'a [f32],
    pub bc_at: usize,
}

/// The block's heads (`state`: `[heads, N]`, updated in place) through every token, `y`
/// (`[heads, T]`) written: `s = s·exp(dt·A) + B·x·dt`, `y = s · C`. Heads go eight at a time,
/// fewer where the block or a group of heads ends (the idle lanes compute zeros).
#[target_feature(enable = "avx2,fma")]
pub fn scan_lanes_avx2(l: &Lanes, state: &mut [f32], y: &mut [f32]) {
    // SAFETY: compiled for AVX2 and FMA, `__m256`'s features.
    unsafe { scan_lanes::<__m256>(l, state, y) }
}

/// [`scan_lanes_avx2`] with sixteen heads to a register: half the instructions a token, for
/// prompts (a block's states are transposed in and out a value at a time, which a decode
/// step's one token would not repay; the eight-lane form transposes 8 × 8 blocks in
/// registers). On a 2-core Emerald Rapids, mamba-130m's scan node at 512 tokens: 5.2–5.3 →
/// 3.2–3.3 ms a layer; pp512 in one binary against the eight-lane form: mamba-130m +4–7%,
/// jamba-900m +1–4%, mamba-1.4b +10%.
#[target_feature(enable = "avx512f,avx2,fma")]
pub fn scan_lanes_avx512(l: &Lanes, state: &mut [f32], y: &mut [f32]) {
    // SAFETY: compiled for AVX-512 F, `__m512`'s features.
    unsafe { scan_lanes::<__m512>(l, state, y) }
}

/// [`scan_lanes_avx2`]'s loops for registers of `V::LANES` heads.
///
/// # Safety
/// The CPU has `V`'s features (inlined into code compiled for them).
#[inline(always)]
unsafe fn scan_lanes<V: F32s>(l: &Lanes, state: &mut [f32], y: &mut [f32]) {
    let w = V::LANES;
    let (n, t) = (l.n, l.t);
    let nh = state.len() / n;
    let per_group = l.h / l.g;
    // per lane block: A and the states, transposed to [N, lanes]
    let mut at = vec![0.0f32; n * w];
    let mut st = vec![0.0f32; n * w];
    let mut j0 = 0;
    while j0 < nh {
        let h0 = l.h0 + j0;
        let gi = h0 / per_group;
        let m = (nh - j0).min(w).min((gi + 1) * per_group - h0);
        let whole = w == 8 && m == 8 && n.is_multiple_of(8);
        if whole {
            // SAFETY: AVX2 (eight lanes: `__m256`'s features); rows `j0..j0 + 8` of `state`
            // and heads `h0..h0 + 8` of `a` hold `n` values each, and `at`, `st` hold `8·n`.
            unsafe {
                transposed_in(&l.a[h0 * n..(h0 + 8) * n], &mut at);
                transposed_in(&state[j0 * n..(j0 + 8) * n], &mut st);
            }
        } else {
            for k in 0..n {
                for lane in 0..w {
                    let (a, s) = if lane < m {
                        (l.a[(h0 + lane) * n + k], state[(j0 + lane) * n + k])
                    } else {
                        (0.0, 0.0)
                    };
                    at[k * w + lane] = a;
                    st[k * w + lane] = s;
                }
            }
        }
        let lanes = |v: &[f32], from: usize| -> [f32; 16] {
            std::array::from_fn(|lane| if lane < m { v[from + lane] } else { 0.0 })
        };
        for ti in 0..t {
            let from = l.at + ti * l.h + h0;
            let bc = (l.bc_at + ti * l.g + gi) * n;
            let (b, c) = (&l.b[bc..bc + n], &l.c[bc..bc + n]);
            let (dt, x) = (lanes(l.dt, from), lanes(l.x, from));
            let mut yv = [0.0f32; 16];
            // SAFETY: `V`'s features (the caller's contract); every load and store is of `w`
            // floats at `w·k` in `at` or `st` (`w·n` long), or of a local array of 16.
            unsafe {
                let dtv = V::load(dt.as_ptr());
                let xd = V::load(x.as_ptr()).mul(dtv);
                let mut acc = V::splat(0.0);
                // a step of the state: its decay `da`, then `s = s·da + B·x·dt`, `y += s·C`
                let mut step = |k: usize, da: V| {
                    let bx = V::splat(b[k]).mul(xd);
                    let sp = st.as_mut_ptr().add(w * k);
                    let s = V::load(sp).fmadd(da, bx);
                    s.store(sp);
                    acc = s.fmadd(V::splat(c[k]), acc);
                };
                let arg = |k: usize| dtv.mul(V::load(at.as_ptr().add(w * k)));
                // four decays' exponentials side by side (see `exps`)
                let mut k = 0;
                while k + 4 <= n {
                    let da = exps([arg(k), arg(k + 1), arg(k + 2), arg(k + 3)]);
                    for (i, da) in da.into_iter().enumerate() {
                        step(k + i, da);
                    }
                    k += 4;
                }
                for k in k..n {
                    step(k, exps([arg(k)])[0]);
                }
                acc.store(yv.as_mut_ptr());
            }
            for (lane, v) in yv.iter().enumerate().take(m) {
                y[(j0 + lane) * t + ti] = *v;
            }
        }
        if whole {
            // SAFETY: as above.
            unsafe { transposed_out(&st, &mut state[j0 * n..(j0 + 8) * n]) };
        } else {
            for k in 0..n {
                for lane in 0..m {
                    state[(j0 + lane) * n + k] = st[k * w + lane];
                }
            }
        }
        j0 += m;
    }
}

/// `rows` (`[8, N]`, `N` a multiple of 8) as `[N, 8]` in `cols`, an 8 × 8 block at a time.
///
/// # Safety
/// The CPU has AVX2 (inlined into code compiled for it).
#[inline(always)]
unsafe fn transposed_in(rows: &[f32], cols: &mut [f32]) {
    let n = rows.len() / 8;
    assert!(n.is_multiple_of(8) && cols.len() >= 8 * n);
    for k0 in (0..n).step_by(8) {
        // SAFETY: row `r`'s values `k0..k0 + 8` lie in `rows` (k0 + 8 ≤ n), and
        // `cols[(k0 + i)·8..][..8]` in `cols`; the caller's contract gives AVX2.
        unsafe {
            let v = std::array::from_fn(|r| _mm256_loadu_ps(rows.as_ptr().add(r * n + k0)));
            for (i, c) in transpose8(v).into_iter().enumerate() {
                _mm256_storeu_ps(cols.as_mut_ptr().add((k0 + i) * 8), c);
            }
        }
    }
}

/// [`transposed_in`] undone: `cols` (`[N, 8]`) back into `rows` (`[8, N]`).
///
/// # Safety
/// As [`transposed_in`].
#[inline(always)]
unsafe fn transposed_out(cols: &[f32], rows: &mut [f32]) {
    let n = rows.len() / 8;
    assert!(n.is_multiple_of(8) && cols.len() >= 8 * n);
    for k0 in (0..n).step_by(8) {
        // SAFETY: as in `transposed_in`, the other way.
        unsafe {
            let v = std::array::from_fn(|i| _mm256_loadu_ps(cols.as_ptr().add((k0 + i) * 8)));
            for (r, row) in transpose8(v).into_iter().enumerate() {
                _mm256_storeu_ps(rows.as_mut_ptr().add(r * n + k0), row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A number in `[-1, 1)` from a counter (no generator needed for a few hundred values).
    fn val(i: usize) -> f32 {
        ((i.wrapping_mul(2_654_435_761) % 1000) as f32 / 500.0) - 1.0
    }

    /// A form of the lanes kernel (eight or sixteen heads to a register).
    type Form = unsafe fn(&Lanes, &mut [f32], &mut [f32]);

    /// Heads `h0..h0 + nh` of `h` in groups of `h / g`, `t` tokens, `n` states, one sequence:
    /// the lanes' state and y against the scan written plainly, head by head.
    fn check(form: Form, h: usize, g: usize, h0: usize, nh: usize, t: usize, n: usize) {
        let a: Vec<f32> = (0..h * n).map(|i| -val(i).abs() - 0.1).collect();
        let dt: Vec<f32> = (0..t * h).map(|i| val(i + 7).abs() * 0.5).collect();
        let x: Vec<f32> = (0..t * h).map(|i| val(i + 11)).collect();
        let b: Vec<f32> = (0..t * g * n).map(|i| val(i + 13)).collect();
        let c: Vec<f32> = (0..t * g * n).map(|i| val(i + 17)).collect();
        let state0: Vec<f32> = (0..nh * n).map(|i| val(i + 19)).collect();
        let (mut want_s, mut want_y) = (state0.clone(), vec![0.0f32; nh * t]);
        for j in 0..nh {
            let (hi, gi) = (h0 + j, (h0 + j) / (h / g));
            for ti in 0..t {
                let d = dt[ti * h + hi];
                let bc = (ti * g + gi) * n;
                let mut y = 0.0f64;
                for k in 0..n {
                    let s = &mut want_s[j * n + k];
                    *s = *s * (d * a[hi * n + k]).exp() + b[bc + k] * x[ti * h + hi] * d;
                    y += (*s * c[bc + k]) as f64;
                }
                want_y[j * t + ti] = y as f32;
            }
        }
        let lanes = Lanes {
            n,
            t,
            h,
            g,
            h0,
            a: &a,
            dt: &dt,
            x: &x,
            at: 0,
            b: &b,
            c: &c,
            bc_at: 0,
        };
        let (mut got_s, mut got_y) = (state0, vec![0.0f32; nh * t]);
        // SAFETY: the CPU has the form's features, checked by the caller.
        unsafe { form(&lanes, &mut got_s, &mut got_y) };
        let what = format!("h {h} g {g} heads {h0}+{nh} t {t} n {n}");
        for (name, got, want) in [("state", &got_s, &want_s), ("y", &got_y, &want_y)] {
            for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                    "{what}: {name}[{i}] {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn lanes_equal_the_plain_scan() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("scan lanes not checked: this CPU lacks AVX2 or FMA");
            return;
        }
        let mut forms: Vec<Form> = vec![scan_lanes_avx2];
        if is_x86_feature_detected!("avx512f") {
            forms.push(scan_lanes_avx512);
        }
        for form in forms {
            for t in [1, 5] {
                // whole blocks of eight (transposed a block at a time), a block cut short by
                // the heads' end and by a group's end, states not a multiple of 8 or of 4
                check(form, 24, 1, 0, 24, t, 16);
                check(form, 24, 1, 3, 13, t, 32);
                check(form, 40, 4, 2, 36, t, 16);
                check(form, 20, 2, 0, 20, t, 12);
                check(form, 9, 1, 0, 9, t, 7);
                check(form, 48, 1, 0, 48, t, 16);
            }
        }
    }
}

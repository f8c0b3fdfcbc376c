//! Mamba1's selective scan with a head in each of eight AVX2 lanes. A Mamba1 head is one
//! channel (`P = 1`) whose `N` states each decay at their own rate `exp(dt·A[n])`, so the
//! exponentials are most of its work; laid across heads, every step is a whole vector (a head's
//! 16 states were two, with a horizontal sum per token and the exponentials' setup per token),
//! and a token's outputs for eight heads are one vector.

use super::vmath::{exp8, exp8s, transpose8};
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
    let (n, t) = (l.n, l.t);
    let nh = state.len() / n;
    let per_group = l.h / l.g;
    // per lane block: A and the states, transposed to [N, 8]
    let mut a8 = vec![0.0f32; n * 8];
    let mut s8 = vec![0.0f32; n * 8];
    let mut j0 = 0;
    while j0 < nh {
        let h0 = l.h0 + j0;
        let gi = h0 / per_group;
        let m = (nh - j0).min(8).min((gi + 1) * per_group - h0);
        let whole = m == 8 && n.is_multiple_of(8);
        if whole {
            // SAFETY: AVX2 (this function's features); rows `j0..j0 + 8` of `state` and heads
            // `h0..h0 + 8` of `a` hold `n` values each, and `a8`, `s8` hold `8·n`.
            unsafe {
                transposed_in(&l.a[h0 * n..(h0 + 8) * n], &mut a8);
                transposed_in(&state[j0 * n..(j0 + 8) * n], &mut s8);
            }
        } else {
            for k in 0..n {
                for lane in 0..8 {
                    let (a, s) = if lane < m {
                        (l.a[(h0 + lane) * n + k], state[(j0 + lane) * n + k])
                    } else {
                        (0.0, 0.0)
                    };
                    a8[k * 8 + lane] = a;
                    s8[k * 8 + lane] = s;
                }
            }
        }
        let lanes = |v: &[f32], at: usize| -> [f32; 8] {
            std::array::from_fn(|lane| if lane < m { v[at + lane] } else { 0.0 })
        };
        for ti in 0..t {
            let at = l.at + ti * l.h + h0;
            let bc = (l.bc_at + ti * l.g + gi) * n;
            let (b, c) = (&l.b[bc..bc + n], &l.c[bc..bc + n]);
            let (dt, x) = (lanes(l.dt, at), lanes(l.x, at));
            let mut yv = [0.0f32; 8];
            // SAFETY: AVX2 and FMA (this function's features); every load and store is of
            // 8 floats at `8·k` in `a8` or `s8` (`8·n` long), or of a local array of 8.
            unsafe {
                let dtv = _mm256_loadu_ps(dt.as_ptr());
                let xd = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr()), dtv);
                let mut acc = _mm256_setzero_ps();
                // a step of the state: its decay `da`, then `s = s·da + B·x·dt`, `y += s·C`
                let mut step = |k: usize, da: __m256| {
                    let bx = _mm256_mul_ps(_mm256_set1_ps(b[k]), xd);
                    let sp = s8.as_mut_ptr().add(8 * k);
                    let s = _mm256_fmadd_ps(_mm256_loadu_ps(sp), da, bx);
                    _mm256_storeu_ps(sp, s);
                    acc = _mm256_fmadd_ps(s, _mm256_set1_ps(c[k]), acc);
                };
                let arg = |k: usize| _mm256_mul_ps(dtv, _mm256_loadu_ps(a8.as_ptr().add(8 * k)));
                // four decays' exponentials side by side (see `exp8s`)
                let mut k = 0;
                while k + 4 <= n {
                    let da = exp8s([arg(k), arg(k + 1), arg(k + 2), arg(k + 3)]);
                    for (i, da) in da.into_iter().enumerate() {
                        step(k + i, da);
                    }
                    k += 4;
                }
                for k in k..n {
                    step(k, exp8(arg(k)));
                }
                _mm256_storeu_ps(yv.as_mut_ptr(), acc);
            }
            for (lane, v) in yv.iter().enumerate().take(m) {
                y[(j0 + lane) * t + ti] = *v;
            }
        }
        if whole {
            // SAFETY: as above.
            unsafe { transposed_out(&s8, &mut state[j0 * n..(j0 + 8) * n]) };
        } else {
            for k in 0..n {
                for lane in 0..m {
                    state[(j0 + lane) * n + k] = s8[k * 8 + lane];
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

    /// Heads `h0..h0 + nh` of `h` in groups of `h / g`, `t` tokens, `n` states, one sequence:
    /// the lanes' state and y against the scan written plainly, head by head.
    fn check(h: usize, g: usize, h0: usize, nh: usize, t: usize, n: usize) {
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
        // SAFETY: the CPU has AVX2 and FMA, checked by the caller.
        unsafe { scan_lanes_avx2(&lanes, &mut got_s, &mut got_y) };
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
        for t in [1, 5] {
            // whole blocks of eight (transposed a block at a time), a block cut short by the
            // heads' end and by a group's end, states not a multiple of 8 or of 4
            check(24, 1, 0, 24, t, 16);
            check(24, 1, 3, 13, t, 32);
            check(40, 4, 2, 36, t, 16);
            check(20, 2, 0, 20, t, 12);
            check(9, 1, 0, 9, t, 7);
        }
    }
}

//! Mamba2's scan of a prompt in AVX-512 registers. A Mamba2 head's state is `[P, N]` with one
//! decay per token for the whole head, so a tile of 32 rows by 8 states (16 by 16 where the
//! rows come in 16s) lies transposed in 16 registers (16 rows of state `n` in a register, a
//! row per lane) and stays there for every token of the prompt: a token adds `B[n]·x·dt` to
//! state `n`'s registers (a multiply-add each, `B[n]` broadcast from memory once for both)
//! and sums `s[n]·C[n]` into the rows' `y` the same way. No state is loaded or stored between
//! tokens and no sum is horizontal; the row-at-a-time walk (`ssm::walk_body`) loaded and
//! stored every state of its rows for every token. (32 by 8 against 16 by 16: half the
//! broadcasts a token, the scan node 3.4 against 3.7 ms a layer of mamba2-370m at 512
//! tokens on a 2-core Emerald Rapids; the AVX2 walk took 6.3–6.7.)

use super::ssm::{Head, SCALED_MIN};
use std::arch::x86_64::*;

/// Lanes of a register (state rows).
const LANES: usize = 16;

/// Tokens from which a head takes [`walk`] (and Mamba1's heads `scan_lanes_avx512`): each
/// tile is transposed in and out once per call, which a single token (decode) would not repay.
pub(super) const MIN_TOKENS: usize = 16;

/// Whether this CPU runs [`walk`].
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// Whether [`walk`] takes a head of `p` rows by `n` states over `t` tokens.
pub(super) fn fits(p: usize, n: usize, t: usize) -> bool {
    p.is_multiple_of(LANES) && n.is_multiple_of(LANES) && p > 0 && n > 0 && t >= MIN_TOKENS
}

/// One Mamba2 head (`state` `[P, N]`, updated in place) through its tokens, `y` (`[T, P]`)
/// written, as `walk_body` computes it: `s = s·d + B·x·dt`, `y = s · C`, with `decays[ti]`
/// the head's decay and `dts[ti]` its dt at token `ti`. Like `walk_body` the tiles are kept as
/// `s / D`, `D` the product of the decays since they were last the state itself, taking `D`
/// back where it would leave `[SCALED_MIN, 1]`: a token is then one multiply-add per state.
/// That sequence is the same for every tile, so it is worked out once per head ([`Steps`]).
///
/// # Safety
/// The CPU runs this file's kernels ([`available`]); [`fits`] holds for the head's shape.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn walk(
    head: &Head,
    state: &mut [f32],
    y: &mut [f32],
    decays: &[f32],
    dts: &[f32],
) {
    let (n, t) = (head.n, head.t);
    let p = state.len() / n;
    assert!(y.len() >= t * p && state.len() == p * n);
    let last = head.bc_at + (t - 1) * head.bc_step + n;
    assert!(last <= head.b.len() && last <= head.c.len());
    let steps = Steps::new(&decays[..t], &dts[..t]);
    // a head's x as [T, P]: a token's x row lies H·P from the last, so a tile's walk over
    // them read a line a page apart per token
    let mut xs = Vec::with_capacity(t * p);
    for ti in 0..t {
        let x = head.x_at + ti * head.x_step;
        xs.extend_from_slice(&head.x[x..x + p]);
    }
    let src = Src {
        x: &xs,
        x_step: p,
        b: &head.b[head.bc_at..],
        c: &head.c[head.bc_at..],
        bc_step: head.bc_step,
    };
    if p.is_multiple_of(2 * LANES) {
        // SAFETY: the caller's contract.
        unsafe { tiles::<2, 8>(&src, &steps, state, y, [p, n]) }
    } else {
        // SAFETY: the caller's contract.
        unsafe { tiles::<1, 16>(&src, &steps, state, y, [p, n]) }
    }
}

/// [`walk`]'s tiles: `R` registers of 16 rows by `S` states (`R·S` = 16 registers).
///
/// # Safety
/// As [`walk`], whose assertions and copies cover every access.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tiles<const R: usize, const S: usize>(
    src: &Src,
    steps: &Steps,
    state: &mut [f32],
    y: &mut [f32],
    [p, n]: [usize; 2],
) {
    // lane l of a register reads row l: element offsets l·n
    let rows = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(n as i32),
    );
    for p0 in (0..p).step_by(R * LANES) {
        for n0 in (0..n).step_by(S) {
            let at = state[p0 * n + n0..].as_mut_ptr();
            // SAFETY: rows p0..p0 + 16R and states n0..n0 + S lie in `state` (`fits`); the
            // caller's contract covers x, B, C and y.
            unsafe {
                // the tile transposed: register [j][r] holds state n0 + j of rows
                // p0 + 16r..p0 + 16r + 16
                let mut s: [[__m512; R]; S] = std::array::from_fn(|j| {
                    std::array::from_fn(|r| {
                        _mm512_i32gather_ps::<4>(rows, at.add(16 * r * n + j).cast())
                    })
                });
                if n0 == 0 {
                    tokens::<true, R, S>(src, steps, &mut s, y, [p, p0, n0]);
                } else {
                    tokens::<false, R, S>(src, steps, &mut s, y, [p, p0, n0]);
                }
                let back = _mm512_set1_ps(steps.end);
                for (j, s) in s.iter().enumerate() {
                    for (r, s) in s.iter().enumerate() {
                        _mm512_i32scatter_ps::<4>(
                            at.add(16 * r * n + j).cast(),
                            rows,
                            _mm512_mul_ps(*s, back),
                        );
                    }
                }
            }
        }
    }
}

/// Where a tile's walk reads token `ti`'s x (`x[ti·x_step..]`, the head's rows), B and C
/// (`b` and `c` from `ti·bc_step`, the head's group's states).
struct Src<'a> {
    x: &'a [f32],
    x_step: usize,
    b: &'a [f32],
    c: &'a [f32],
    bc_step: usize,
}

/// How each token treats the tiles: `x·dt` times `scale[ti]` is added (`decay[ti]` = 1) or the
/// tile is decayed by `decay[ti]` first; its `y` is the sum times `y_scale[ti]`. `end` takes the
/// tiles back to the state after the last token.
struct Steps {
    scale: Vec<f32>,
    decay: Vec<f32>,
    y_scale: Vec<f32>,
    end: f32,
}

impl Steps {
    fn new(decays: &[f32], dts: &[f32]) -> Steps {
        let mut dcum = 1.0f32;
        let (mut scale, mut decay, mut y_scale) = (vec![], vec![], vec![]);
        for (&d, &dt) in decays.iter().zip(dts) {
            if (SCALED_MIN..=1.0).contains(&(dcum * d)) {
                dcum *= d;
                scale.push(dt / dcum);
                decay.push(1.0);
            } else {
                // take the decays back, then decay this token as it is
                scale.push(dt);
                decay.push(dcum * d);
                dcum = 1.0;
            }
            y_scale.push(dcum);
        }
        Steps {
            scale,
            decay,
            y_scale,
            end: dcum,
        }
    }
}

/// One tile (`s`, rows `p0..p0 + 16R` by states `n0..n0 + S`) through every token: `FIRST`
/// (the row block's first tile of states) writes y, the others add to it.
///
/// # Safety
/// As [`walk`], whose assertions and copies cover every access.
#[inline(always)]
unsafe fn tokens<const FIRST: bool, const R: usize, const S: usize>(
    src: &Src,
    steps: &Steps,
    s: &mut [[__m512; R]; S],
    y: &mut [f32],
    [p, p0, n0]: [usize; 3],
) {
    for ti in 0..steps.scale.len() {
        // SAFETY: the caller's contract.
        unsafe {
            let x = src.x.as_ptr().add(ti * src.x_step + p0);
            let scale = _mm512_set1_ps(steps.scale[ti]);
            let xv: [__m512; R] =
                std::array::from_fn(|r| _mm512_mul_ps(_mm512_loadu_ps(x.add(16 * r)), scale));
            let b = src.b.as_ptr().add(ti * src.bc_step + n0);
            let c = src.c.as_ptr().add(ti * src.bc_step + n0);
            let d = steps.decay[ti];
            if d == 1.0 {
                for (j, s) in s.iter_mut().enumerate() {
                    let bj = _mm512_set1_ps(*b.add(j));
                    for (s, xv) in s.iter_mut().zip(&xv) {
                        *s = _mm512_fmadd_ps(bj, *xv, *s);
                    }
                }
            } else {
                let dv = _mm512_set1_ps(d);
                for (j, s) in s.iter_mut().enumerate() {
                    let bj = _mm512_set1_ps(*b.add(j));
                    for (s, xv) in s.iter_mut().zip(&xv) {
                        *s = _mm512_fmadd_ps(*s, dv, _mm512_mul_ps(bj, *xv));
                    }
                }
            }
            // four chains of sums, so they do not wait on one another
            let mut acc = [[_mm512_setzero_ps(); 4]; R];
            for (j, s) in s.iter().enumerate() {
                let cj = _mm512_set1_ps(*c.add(j));
                for (acc, s) in acc.iter_mut().zip(s) {
                    let k = j % (4 / R);
                    acc[k] = _mm512_fmadd_ps(*s, cj, acc[k]);
                }
            }
            let ys = _mm512_set1_ps(steps.y_scale[ti]);
            for (r, acc) in acc.iter().enumerate() {
                let sum = if R == 1 {
                    _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]))
                } else {
                    _mm512_add_ps(acc[0], acc[1])
                };
                let out = y.as_mut_ptr().add(ti * p + p0 + 16 * r);
                let part = if FIRST {
                    _mm512_mul_ps(sum, ys)
                } else {
                    _mm512_fmadd_ps(sum, ys, _mm512_loadu_ps(out))
                };
                _mm512_storeu_ps(out, part);
            }
        }
    }
}

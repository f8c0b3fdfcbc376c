//! Mamba2's scan of a prompt in AVX-512 registers. A Mamba2 head's state is `[P, N]` with one
//! decay per token for the whole head, so a tile of 16 rows by 16 states lies transposed in 16
//! registers (state `n` of the 16 rows in register `n`, a row per lane) and stays there for
//! every token of the prompt: a token adds `B[n]·x·dt` to register `n` (one multiply-add with
//! `B[n]` broadcast from memory) and sums `s[n]·C[n]` into the 16 rows' `y` the same way. No
//! state is loaded or stored between tokens and no sum is horizontal; the row-at-a-time walk
//! (`ssm::walk_body`) loaded and stored every state of a row for every token.

use super::ssm::{Head, SCALED_MIN};
use std::arch::x86_64::*;

/// State rows per tile (a lane each) and states per tile (a register each).
const TILE: usize = 16;

/// Tokens from which a head takes [`walk`]: each tile is transposed in and out once per call,
/// which a single token (decode) would not repay.
pub(super) const MIN_TOKENS: usize = 16;

/// Whether this CPU runs [`walk`].
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// Whether [`walk`] takes a head of `p` rows by `n` states over `t` tokens.
pub(super) fn fits(p: usize, n: usize, t: usize) -> bool {
    p.is_multiple_of(TILE) && n.is_multiple_of(TILE) && p > 0 && n > 0 && t >= MIN_TOKENS
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
    // lane l of a tile's register reads row l: element offsets l·n
    let rows = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(n as i32),
    );
    for p0 in (0..p).step_by(TILE) {
        for n0 in (0..n).step_by(TILE) {
            let at = state[p0 * n + n0..].as_mut_ptr();
            // SAFETY: rows p0..p0 + 16 and states n0..n0 + 16 lie in `state` (`fits`), `xs`
            // holds t rows of p; B, C and y were asserted above.
            unsafe {
                // the tile transposed: register j holds state n0 + j of rows p0..p0 + 16
                let mut s: [__m512; TILE] =
                    std::array::from_fn(|j| _mm512_i32gather_ps::<4>(rows, at.add(j).cast()));
                if n0 == 0 {
                    tokens::<true>(&src, &steps, &mut s, y, [p, p0, n0]);
                } else {
                    tokens::<false>(&src, &steps, &mut s, y, [p, p0, n0]);
                }
                let back = _mm512_set1_ps(steps.end);
                for (j, s) in s.iter().enumerate() {
                    _mm512_i32scatter_ps::<4>(at.add(j).cast(), rows, _mm512_mul_ps(*s, back));
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

/// One tile (`s`, rows `p0..p0 + 16` by states `n0..n0 + 16`) through every token, `xs`
/// holding each token's `p` values of x and `bcs` its B and C (`n` each): `FIRST` (the row
/// block's first tile of states) writes y, the others add to it.
///
/// # Safety
/// As [`walk`], whose assertions and copies cover every access.
#[inline(always)]
unsafe fn tokens<const FIRST: bool>(
    src: &Src,
    steps: &Steps,
    s: &mut [__m512; TILE],
    y: &mut [f32],
    [p, p0, n0]: [usize; 3],
) {
    for ti in 0..steps.scale.len() {
        // SAFETY: the caller's contract.
        unsafe {
            let x = src.x.as_ptr().add(ti * src.x_step + p0);
            let xv = _mm512_mul_ps(_mm512_loadu_ps(x), _mm512_set1_ps(steps.scale[ti]));
            let b = src.b.as_ptr().add(ti * src.bc_step + n0);
            let c = src.c.as_ptr().add(ti * src.bc_step + n0);
            let d = steps.decay[ti];
            if d == 1.0 {
                for (j, s) in s.iter_mut().enumerate() {
                    *s = _mm512_fmadd_ps(_mm512_set1_ps(*b.add(j)), xv, *s);
                }
            } else {
                let dv = _mm512_set1_ps(d);
                for (j, s) in s.iter_mut().enumerate() {
                    *s = _mm512_fmadd_ps(*s, dv, _mm512_mul_ps(_mm512_set1_ps(*b.add(j)), xv));
                }
            }
            // four chains of four, so the sums do not wait on one another
            let mut acc = [_mm512_setzero_ps(); 4];
            for (j, s) in s.iter().enumerate() {
                acc[j % 4] = _mm512_fmadd_ps(*s, _mm512_set1_ps(*c.add(j)), acc[j % 4]);
            }
            let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            let part = _mm512_mul_ps(sum, _mm512_set1_ps(steps.y_scale[ti]));
            let out = y.as_mut_ptr().add(ti * p + p0);
            let part = if FIRST {
                part
            } else {
                _mm512_add_ps(_mm512_loadu_ps(out), part)
            };
            _mm512_storeu_ps(out, part);
        }
    }
}

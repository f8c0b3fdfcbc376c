//! f32 functions written so that loops over slices of them vectorize (no libm calls).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2^23: adding it rounds to an integer kept in the low mantissa bits.
const ROUNDER: f32 = 12_582_912.0;

/// `e^x` within 2 ulp of the true value for normal results; 0 below the normal range, and
/// `e^88.37` (about 2.4e38) for anything larger. NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_in::<false>(x)
}

/// [`exp`] with its multiply-adds fused (`mul_add`): for loops compiled with FMA (inside a
/// `#[target_feature(enable = "fma")]` function), where it is about half the instructions.
/// Elsewhere each `mul_add` is a library call: use [`exp`] there.
#[inline(always)]
pub fn exp_fused(x: f32) -> f32 {
    exp_in::<true>(x)
}

/// `a·b + c`, rounded once when `FUSED`.
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

#[inline(always)]
fn exp_in<const FUSED: bool>(x: f32) -> f32 {
    let xc = x.clamp(-87.336_55, 88.37);
    // x = n·ln 2 + r with |r| ≤ ln 2 / 2
    let t = madd::<FUSED>(xc, LOG2E, ROUNDER);
    let n = t - ROUNDER;
    let r = madd::<FUSED>(-n, LN2_LO, madd::<FUSED>(-n, LN2_HI, xc));
    // Cephes' minimax polynomial for e^r on that interval
    let p = 1.987_569_1e-4_f32;
    let p = madd::<FUSED>(p, r, 1.398_199_9e-3);
    let p = madd::<FUSED>(p, r, 8.333_452e-3);
    let p = madd::<FUSED>(p, r, 4.166_579_6e-2);
    let p = madd::<FUSED>(p, r, 1.666_666_5e-1);
    let p = madd::<FUSED>(p, r, 0.5);
    let p = madd::<FUSED>(p * r, r, r) + 1.0;
    let k = (t.to_bits() as i32).wrapping_sub(ROUNDER.to_bits() as i32);
    let scale = f32::from_bits(((k + 127) << 23) as u32);
    let y = p * scale;
    if x < -87.336_55 { 0.0 } else { y }
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `ln(1 + u)` for `u` in `[0, 1]`, within 2 ulp: `1 + u = 2^e · (1 + x)` with `x` in
/// `[−0.293, 0.415)` (`e` is 1 above `√2 − 1`), then Cephes' polynomial for `ln(1 + x)`. Below
/// `√2 − 1`, `x` is `u` itself, so small `u` keep their precision.
#[inline(always)]
fn ln_1p_unit(u: f32) -> f32 {
    let big = u > std::f32::consts::SQRT_2 - 1.0;
    let (x, e) = if big {
        ((u - 1.0) * 0.5, 1.0)
    } else {
        (u, 0.0)
    };
    let z = x * x;
    let p = 7.037_683_6e-2_f32;
    let p = p * x - 1.151_461e-1;
    let p = p * x + 1.167_699_9e-1;
    let p = p * x - 1.242_014_1e-1;
    let p = p * x + 1.424_932_3e-1;
    let p = p * x - 1.666_805_8e-1;
    let p = p * x + 2.000_071_5e-1;
    let p = p * x - 2.499_999_4e-1;
    let p = p * x + 3.333_333e-1;
    let y = p * x * z + e * LN2_LO - 0.5 * z;
    x + y + e * LN2_HI
}

/// `ln(1 + e^x)`, as `max(x, 0) + ln(1 + e^−|x|)`: no libm call (the `ln_1p` of an `exp`
/// it replaces was two), so loops over slices of it vectorize.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    x.max(0.0) + ln_1p_unit(exp(-x.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i32).abs_diff(b.to_bits() as i32)
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        for (name, f) in [("exp", exp as fn(f32) -> f32), ("exp_fused", exp_fused)] {
            let mut worst = 0;
            let mut x = -87.3f32;
            while x < 88.3 {
                let want = (x as f64).exp() as f32;
                worst = worst.max(ulps(f(x), want));
                x += 0.000_37;
            }
            assert!(worst <= 2, "{name}: worst error {worst} ulp");
        }
    }

    #[test]
    fn softplus_is_within_two_ulp_of_f64() {
        // (below about −87.3, e^x and so the result leave the normal range: 0, as `exp` gives)
        let mut worst = (0, 0.0);
        let mut x = -87.0f32;
        while x < 40.0 {
            let xd = x as f64;
            let want = (xd.max(0.0) + (-xd.abs()).exp().ln_1p()) as f32;
            let e = ulps(softplus(x), want);
            if e > worst.0 {
                worst = (e, x);
            }
            x += 0.000_71;
        }
        assert!(worst.0 <= 2, "worst error {} ulp at {}", worst.0, worst.1);
        assert_eq!(softplus(0.0), std::f32::consts::LN_2);
        assert_eq!(softplus(-200.0), 0.0);
        assert_eq!(softplus(1e30), 1e30);
        assert!(softplus(f32::NAN).is_nan());
    }

    #[test]
    fn exp_edges() {
        for exp in [exp as fn(f32) -> f32, exp_fused] {
            assert_eq!(exp(0.0), 1.0);
            assert_eq!(exp(f32::NEG_INFINITY), 0.0);
            assert_eq!(exp(-100.0), 0.0);
            assert!(exp(f32::NAN).is_nan());
            assert!(exp(100.0) > 2.3e38 && exp(100.0).is_finite());
        }
        assert!((sigmoid(30.0) - 1.0).abs() < 1e-7 && sigmoid(-200.0) < 1e-30);
    }
}

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
    let xc = x.clamp(-87.336_55, 88.37);
    // x = n·ln 2 + r with |r| ≤ ln 2 / 2
    let t = xc * LOG2E + ROUNDER;
    let n = t - ROUNDER;
    let r = xc - n * LN2_HI - n * LN2_LO;
    // Cephes' minimax polynomial for e^r on that interval
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i32).abs_diff(b.to_bits() as i32)
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let mut worst = 0;
        let mut x = -87.3f32;
        while x < 88.3 {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), want));
            x += 0.000_37;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(100.0) > 2.3e38 && exp(100.0).is_finite());
        assert!((sigmoid(30.0) - 1.0).abs() < 1e-7 && sigmoid(-200.0) < 1e-30);
    }
}

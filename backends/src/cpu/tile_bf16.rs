//! bf16 weights meet activations rounded to bf16, as llama.cpp's CPU backend has them meet
//! (there, every CPU rounds a bf16 weight's activations; here too, so the values multiplied do
//! not depend on the CPU; the order of the sums does, and `vdpbf16ps` flushes subnormals). Where the CPU has AVX512_BF16, prompts run in register tiles of `vdpbf16ps`:
//! each instruction multiplies 32 pairs of bf16 and adds them into 16 f32 lanes, with no
//! widening of the weights: four weight rows against four activation rows, 32 elements a step.
//! Elsewhere the rounded values go through the f32 paths.

/// `v` rounded to the nearest bf16 (ties to even; a NaN stays a NaN), as its bits.
#[inline(always)]
pub fn round(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        (b >> 16) as u16 | 0x40
    } else {
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// `v` rounded to bf16, as an f32 (exactly the bf16's value).
#[inline(always)]
pub fn round_value(v: f32) -> f32 {
    f32::from_bits((round(v) as u32) << 16)
}

/// Weight rows per tile of [`rows_times`] (the matmul's chunks hold whole tiles).
pub const WEIGHT_ROWS: usize = 4;

/// Whether this CPU runs [`rows_times`]'s tiles.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16");
    #[allow(unreachable_code)]
    false
}

/// The activation rows `x` rounded to bf16 for [`rows_times`] (spread over the thread team
/// when there are many).
pub fn round_rows(x: &[f32]) -> Vec<u16> {
    const CHUNK: usize = 1 << 14;
    let mut out = vec![0u16; x.len()];
    let one = |i: usize, o: &mut [u16]| round_into(&x[i * CHUNK..], o);
    if x.len() <= CHUNK {
        one(0, &mut out);
    } else {
        super::team::global().chunks_mut(&mut out, CHUNK, one);
    }
    out
}

/// `o[i] = round(x[i])`, 16 lanes at a time where the CPU has AVX-512 (the rows are packed
/// only on such CPUs; compiled for the baseline, the loop took 4 at a time, ~1% of a prompt).
fn round_into(x: &[f32], o: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512 F and BW, checked above.
        return unsafe { round_into_avx512(x, o) };
    }
    round_into_body(x, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn round_into_avx512(x: &[f32], o: &mut [u16]) {
    round_into_body(x, o)
}

#[inline(always)]
fn round_into_body(x: &[f32], o: &mut [u16]) {
    for (o, &v) in o.iter_mut().zip(x) {
        *o = round(v);
    }
}

/// `out[j·m + i] = row(j) · x_i` for bf16 weight rows `row(j)` (`k` little-endian bf16 each,
/// `out.len() / m` of them) and activation rows `x_i` already rounded to bf16 ([`round_rows`]).
/// False, with nothing written, where the CPU lacks AVX512_BF16.
pub fn rows_times<'a>(
    row: impl Fn(usize) -> &'a [u8],
    x: &[u16],
    k: usize,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512 F, BW and BF16, checked above.
        unsafe { dp::tiles(&row, x, k, out) };
        return true;
    }
    let _ = (row, x, k, out);
    false
}

#[cfg(target_arch = "x86_64")]
mod dp {
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// Weight rows per tile ([`super::WEIGHT_ROWS`]).
    const WR: usize = super::WEIGHT_ROWS;
    /// Activation rows per tile: 16 accumulators. A 4 × 6 or 5 × 5 tile (24 or 25, as the f32
    /// tiles have) spilled accumulators to the stack in every step around the `asm!` operands
    /// (seen in the disassembly; the loaded operands did take zmm16 and up), 4 × 4 does not.
    const RA: usize = 4;
    /// Activation rows per cache block (whole tiles).
    const XB: usize = 32;

    /// `acc + Σ a·b` over each lane's pair of bf16 (`vdpbf16ps`; Rust has no stable intrinsic
    /// for it yet).
    ///
    /// # Safety
    /// The CPU has AVX512_BF16.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dpbf16(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
        let mut acc = acc;
        // SAFETY: registers only; the caller's contract gives the instruction.
        unsafe {
            asm!(
                "vdpbf16ps {acc}, {a}, {b}",
                acc = inout(zmm_reg) acc,
                a = in(zmm_reg) a,
                b = in(zmm_reg) b,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }

    /// [`super::rows_times`]: weight rows four at a time against activation rows four at a
    /// time, blocks of `XB` activation rows staying in cache while every weight row meets them.
    /// (A short group of weight rows repeats its last row; those results are not kept.)
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn tiles<'a>(
        row: &impl Fn(usize) -> &'a [u8],
        x: &[u16],
        k: usize,
        out: &mut [f32],
    ) {
        let m = x.len() / k;
        let rows = out.len() / m;
        for i0 in (0..m).step_by(XB) {
            let i1 = (i0 + XB).min(m);
            let mut j = 0;
            while j < rows {
                let n = (rows - j).min(WR);
                let ws: [&[u8]; WR] = std::array::from_fn(|jj| row(j + jj.min(n - 1)));
                let mut i = i0;
                while i < i1 {
                    let ra = (i1 - i).min(RA);
                    let at = (j, n, i);
                    // SAFETY: the caller's contract.
                    unsafe {
                        match ra {
                            4 => tile_into::<4>(ws, x, k, at, out),
                            3 => tile_into::<3>(ws, x, k, at, out),
                            2 => tile_into::<2>(ws, x, k, at, out),
                            _ => tile_into::<1>(ws, x, k, at, out),
                        }
                    }
                    i += ra;
                }
                j += n;
            }
        }
    }

    /// The tile of weight rows `ws` (the first `n` kept, from row `j`) and the `RA` activation
    /// rows of `x` from row `i`, written into `out` (`[rows, m]`); `at` is `(j, n, i)`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn tile_into<const RA: usize>(
        ws: [&[u8]; WR],
        x: &[u16],
        k: usize,
        (j, n, i): (usize, usize, usize),
        out: &mut [f32],
    ) {
        let m = x.len() / k;
        let xs = std::array::from_fn(|ii| &x[(i + ii) * k..(i + ii + 1) * k]);
        // SAFETY: the caller's contract.
        let t = unsafe { tile::<RA>(ws, xs, k) };
        for (jj, tr) in t.iter().enumerate().take(n) {
            let o = (j + jj) * m + i;
            out[o..o + RA].copy_from_slice(tr);
        }
    }

    /// The 4 × `RA` dot products of bf16 weight rows `w` and bf16 activation rows `x`: 32
    /// elements a step, the last `k % 32` through masked (zero-filling) loads.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn tile<const RA: usize>(w: [&[u8]; WR], x: [&[u16]; RA], k: usize) -> [[f32; RA]; WR] {
        assert!(w.iter().all(|r| r.len() >= 2 * k) && x.iter().all(|r| r.len() >= k));
        let mut acc = [[_mm512_setzero_ps(); RA]; WR];
        // elements c .. c + 32 of every row, those `mask` keeps
        macro_rules! step {
            ($c:expr, $mask:expr) => {{
                let (c, mask): (usize, __mmask32) = ($c, $mask);
                // SAFETY: the lanes `mask` keeps are inside every row (the callers below keep
                // c + 32 ≤ k, or only the k − c left), as asserted above; the CPU has
                // AVX512_BF16 (the caller's contract).
                unsafe {
                    let wv: [__m512i; WR] = std::array::from_fn(|r| {
                        _mm512_maskz_loadu_epi16(mask, w[r].as_ptr().add(2 * c).cast())
                    });
                    for ii in 0..RA {
                        let xv = _mm512_maskz_loadu_epi16(mask, x[ii].as_ptr().add(c).cast());
                        for r in 0..WR {
                            acc[r][ii] = dpbf16(acc[r][ii], wv[r], xv);
                        }
                    }
                }
            }};
        }
        let mut c = 0;
        while c + 32 <= k {
            step!(c, !0);
            c += 32;
        }
        if c < k {
            step!(c, (1 << (k - c)) - 1);
        }
        let mut out = [[0.0f32; RA]; WR];
        for r in 0..WR {
            for ii in 0..RA {
                out[r][ii] = _mm512_reduce_add_ps(acc[r][ii]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        for v in [
            0.0f32,
            -0.0,
            1.0,
            1.0 + 1.0 / 256.0, // a tie: to even (1.0)
            1.0 + 3.0 / 256.0, // a tie: to even (1 + 4/256)
            1.0 + 1.0 / 512.0,
            -1.0 - 1.0 / 256.0, // negative ties
            -1.0 - 3.0 / 256.0,
            -3.3e-3,
            6.5e4,
            f32::MAX,
            f32::MIN_POSITIVE / 3.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(round(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
        for nan in [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001)] {
            assert!(round_value(nan).is_nan(), "{:#x}", nan.to_bits());
        }
    }

    /// Every short tile, a ragged group of weight rows, more than one cache block, `k` below,
    /// at and above a step, not a multiple of 32.
    #[test]
    fn tiles_equal_the_dots_of_the_rounded_rows() {
        if !available() {
            eprintln!("no AVX512_BF16: the rounded rows take the f32 paths");
            return;
        }
        for (n, m, k) in [(7, 1, 45), (5, 6, 32), (9, 7, 13), (4, 33, 96), (6, 31, 77)] {
            let w: Vec<u16> = (0..n * k)
                .map(|i| round(((i * 37 % 101) as f32 - 50.0) / 37.0))
                .collect();
            let xf: Vec<f32> = (0..m * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 29.0)
                .collect();
            let x = round_rows(&xf);
            let bytes: &[u8] = bytemuck::cast_slice(&w);
            let mut out = vec![f32::NAN; n * m];
            assert!(rows_times(
                |j| &bytes[j * 2 * k..(j + 1) * 2 * k],
                &x,
                k,
                &mut out
            ));
            let val = |b: u16| f32::from_bits((b as u32) << 16) as f64;
            for j in 0..n {
                for i in 0..m {
                    let want: f64 = (0..k).map(|c| val(w[j * k + c]) * val(x[i * k + c])).sum();
                    let got = out[j * m + i] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "({n}, {m}, {k}) w{j}·x{i}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

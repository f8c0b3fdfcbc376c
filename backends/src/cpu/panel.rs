//! Prompt products of 16-bit float weights in packed panels (AVX-512 F). The activation rows
//! are woven once per product into panels of 32 rows (each column of `k` holding the 32 rows'
//! values side by side); a group of 12 weight rows is widened to f32 a block of `k` at a time
//! into a buffer that stays in L1, and meets every panel there. A micro-tile of 12 weight rows
//! by a panel's 32 activation rows keeps its 24 accumulators in registers: a column costs two
//! loads of activations and 12 broadcasts of weights for 24 multiply-adds, with no horizontal
//! sums. The register tiles of `tile.rs` instead load five weight rows and five activation
//! rows per 25 multiply-adds, the activation rows read from L2 for every tile.
//!
//! On a 2-core Emerald Rapids (peak ~360 GFLOP/s on two threads) llama-1.1b f16's prompt of
//! 512 tokens spent 3.2 s in `mul_mat` nodes instead of 4.4 (~310 GFLOP/s); `-- cpu/matmul`
//! 64 × 2048 × 2048: f16 195 → 237 GFLOP/s, bf16 (against the `vdpbf16ps` tiles) 154 → 230.

use super::tile::avx2::Weights;
use std::arch::x86_64::*;

/// Activation rows per panel: two 16-lane registers.
const PR: usize = 32;
/// Weight rows per micro-tile (24 accumulators, two activation registers).
pub const WR: usize = 12;
/// Columns of `k` per block: a micro-tile's weights (12 KiB) stay in L1 while the panels'
/// blocks (32 KiB each) stream past them.
const KC: usize = 256;

/// Whether this CPU runs the panels.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Whether prompts take the panels: where the CPU has them, unless `WEFT_PANEL=0` (to measure
/// them against the register tiles of `tile.rs`).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WEFT_PANEL").as_deref() != Ok("0") && available())
}

/// Activation rows `[m, k]` woven into panels: panel `p`'s column `c` holds rows `32p ..
/// 32p + 32` at `(p·k + c)·32` (rows past `m` are zeros).
pub struct Acts {
    woven: Vec<f32>,
    m: usize,
    k: usize,
}

impl Acts {
    /// `m` activation rows of `k`, row `i` read from `row(i)` (f32, or bf16 widened), woven
    /// on the thread team where they are many.
    ///
    /// # Safety
    /// The CPU has the panels ([`available`]).
    pub unsafe fn new<W: Weights>(row: impl Fn(usize) -> W + Sync, m: usize, k: usize) -> Acts {
        assert!(k > 0);
        let len = m.div_ceil(PR) * k * PR;
        // (every element is written below: a buffer reused need not be cleared)
        let mut woven = SPARE.take();
        if woven.len() < len {
            woven.resize(len, 0.0);
        }
        woven.truncate(len);
        // SAFETY (both): the caller's contract.
        let one = |p: usize, panel: &mut [f32]| unsafe { weave(&row, m, k, p, panel) };
        if m * k < WEAVE_ON_TEAM_FROM {
            for (p, panel) in woven.chunks_exact_mut(k * PR).enumerate() {
                one(p, panel);
            }
        } else {
            super::team::global().chunks_mut(&mut woven, k * PR, one);
        }
        Acts { woven, m, k }
    }

    pub fn rows(&self) -> usize {
        self.m
    }
}

impl Drop for Acts {
    /// The buffer kept for the next product's panels (faulting in a fresh one's pages was a
    /// third of the weaving).
    fn drop(&mut self) {
        let woven = std::mem::take(&mut self.woven);
        SPARE.with_borrow_mut(|spare| {
            if woven.capacity() > spare.capacity() {
                *spare = woven;
            }
        });
    }
}

/// Activation elements from which the team weaves the panels.
const WEAVE_ON_TEAM_FROM: usize = 1 << 18;

/// Panel `p` of the `m` rows `row(i)` into `panel` (`k · 32` floats): sixteen columns of 16
/// rows at a time through a register transpose.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn weave<W: Weights>(row: &impl Fn(usize) -> W, m: usize, k: usize, p: usize, panel: &mut [f32]) {
    assert_eq!(panel.len(), k * PR);
    for h in 0..PR / 16 {
        let i0 = p * PR + h * 16;
        let live = m.saturating_sub(i0).min(16);
        let rows: Vec<W> = (i0..i0 + live).map(row).collect();
        assert!(rows.iter().all(|r| r.elems() >= k));
        let mut c = 0;
        while c + 16 <= k {
            let vs: [__m512; 16] = std::array::from_fn(|r| match rows.get(r) {
                // SAFETY: c + 16 ≤ k ≤ the row's elements (asserted above).
                Some(w) => unsafe { w.load16(c) },
                None => _mm512_setzero_ps(),
            });
            for (cc, col) in transpose16(vs).into_iter().enumerate() {
                // SAFETY: (c + cc)·32 + 16h + 16 ≤ k · 32: inside `panel` (asserted above).
                unsafe { _mm512_storeu_ps(panel.as_mut_ptr().add((c + cc) * PR + 16 * h), col) };
            }
            c += 16;
        }
        for cc in c..k {
            for r in 0..16 {
                panel[cc * PR + 16 * h + r] = rows.get(r).map_or(0.0, |w| w.at(cc));
            }
        }
    }
}

/// The 16 × 16 transpose of `r` (rows in, columns out).
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // pairs of rows interleaved, then quads: u[4g + q] holds, in its 128-bit lane l, column
    // 4l + q of rows 4g .. 4g + 4
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, q) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + q / 2], t[4 * g + 2 + q / 2]);
        if q % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    // lanes of the four groups gathered: column 4l + q from u[q], u[4 + q], u[8 + q], u[12 + q]
    let mut out = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[q], u[4 + q]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[q], u[4 + q]);
        let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + q], u[12 + q]);
        let w1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + q], u[12 + q]);
        out[q] = _mm512_shuffle_f32x4::<0x88>(v0, w0);
        out[8 + q] = _mm512_shuffle_f32x4::<0xDD>(v0, w0);
        out[4 + q] = _mm512_shuffle_f32x4::<0x88>(v1, w1);
        out[12 + q] = _mm512_shuffle_f32x4::<0xDD>(v1, w1);
    }
    out
}

/// [`rows_times`] for rows of little-endian f16 or bf16 weights (`dtype`), `row(j)` the bytes of
/// row `j`.
///
/// # Safety
/// The CPU has the panels ([`available`]).
pub unsafe fn rows_times_half<'a>(
    dtype: weft_graph::DType,
    row: &impl Fn(usize) -> &'a [u8],
    acts: &Acts,
    out: &mut [f32],
) {
    use super::tile::avx2::{Bf16Row, F16Row};
    // SAFETY: the caller's contract.
    unsafe {
        match dtype {
            weft_graph::DType::F16 => rows_times(&|j: usize| F16Row(row(j)), acts, out),
            weft_graph::DType::BF16 => rows_times(&|j: usize| Bf16Row(row(j)), acts, out),
            other => unreachable!("panels of {other:?} weights"),
        }
    }
}

thread_local! {
    /// A buffer of panels dropped on this thread, for the next [`Acts`] it weaves.
    static SPARE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[j·m + i] = row(j) · x_i` for the `out.len() / m` weight rows and the activation rows
/// woven in `acts`.
///
/// # Safety
/// The CPU has the panels ([`available`]).
pub unsafe fn rows_times<W: Weights>(row: &impl Fn(usize) -> W, acts: &Acts, out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe { blocks(row, acts, out) }
}

/// A micro-tile's weight rows widened to f32, `KC` apart.
#[repr(C, align(64))]
struct Wide([f32; WR * KC]);

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn blocks<W: Weights>(row: &impl Fn(usize) -> W, acts: &Acts, out: &mut [f32]) {
    let (m, k) = (acts.m, acts.k);
    let rows = out.len() / m;
    assert_eq!(out.len(), rows * m);
    let ws: Vec<W> = (0..rows).map(row).collect();
    assert!(ws.iter().all(|w| w.elems() >= k));
    let mut wide = Wide([0.0; WR * KC]);
    for c0 in (0..k).step_by(KC) {
        let kb = KC.min(k - c0);
        let first = c0 == 0;
        for (j0, group) in ws.chunks(WR).enumerate().map(|(g, ws)| (g * WR, ws)) {
            // the next block of these rows asked for while this one computes
            for w in group.iter().filter(|_| c0 + KC < k) {
                for c in (c0 + KC..(c0 + 2 * KC).min(k)).step_by(32) {
                    w.prefetch32(c);
                }
            }
            // this block of the rows widened into a buffer that stays in L1 (widened into
            // one block of the chunk's every row, 60 KiB, a sixth of the time went to
            // storing them)
            for (w, dst) in group.iter().zip(wide.0.chunks_exact_mut(KC)) {
                let mut c = 0;
                while c + 16 <= kb {
                    // SAFETY: c0 + c + 16 ≤ k ≤ the row's elements (asserted above); `dst`
                    // holds KC ≥ c + 16 floats.
                    unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(c), w.load16(c0 + c)) };
                    c += 16;
                }
                for (cc, d) in dst.iter_mut().enumerate().take(kb).skip(c) {
                    *d = w.at(c0 + cc);
                }
            }
            for p in 0..m.div_ceil(PR) {
                let panel = &acts.woven[(p * k + c0) * PR..(p * k + c0 + kb) * PR];
                let at = Tile {
                    w: &wide.0,
                    panel,
                    kb,
                    first,
                    j: j0,
                    i: p * PR,
                    m,
                };
                match group.len() {
                    12 => halves::<12>(at, out),
                    11 => halves::<11>(at, out),
                    10 => halves::<10>(at, out),
                    9 => halves::<9>(at, out),
                    8 => halves::<8>(at, out),
                    7 => halves::<7>(at, out),
                    6 => halves::<6>(at, out),
                    5 => halves::<5>(at, out),
                    4 => halves::<4>(at, out),
                    3 => halves::<3>(at, out),
                    2 => halves::<2>(at, out),
                    _ => halves::<1>(at, out),
                }
            }
        }
    }
}

/// One micro-tile's place: widened weight rows `w` (`KC` apart, from row `j`), the panel's
/// block of `kb` columns (its activation rows from `i`), and whether the block is the first
/// (the sums start from zero rather than from `out`).
struct Tile<'a> {
    w: &'a [f32],
    panel: &'a [f32],
    kb: usize,
    first: bool,
    j: usize,
    i: usize,
    m: usize,
}

/// [`micro`] over the halves of the panel that hold activation rows: a panel of at most 16
/// (a mixture's expert meeting few rows) takes half the multiply-adds.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn halves<const N: usize>(t: Tile, out: &mut [f32]) {
    if t.m - t.i <= 16 {
        micro::<N, 1>(t, out)
    } else {
        micro::<N, 2>(t, out)
    }
}

/// `N` weight rows by the first `16·H` activation rows of a panel over one block of columns,
/// added into `out[(j + jj)·m + i + r]` for the rows `r` that exist.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn micro<const N: usize, const H: usize>(t: Tile, out: &mut [f32]) {
    let live = (t.m - t.i).min(16 * H);
    let masks: [__mmask16; H] =
        std::array::from_fn(|h| ((1u32 << live.saturating_sub(16 * h).min(16)) - 1) as __mmask16);
    assert!(t.w.len() >= (N - 1) * KC + t.kb && t.panel.len() >= t.kb * PR);
    assert!(out.len() >= (t.j + N - 1) * t.m + t.i + live);
    let mut acc = [[_mm512_setzero_ps(); H]; N];
    if !t.first {
        for (jj, a) in acc.iter_mut().enumerate() {
            for (h, v) in a.iter_mut().enumerate() {
                // SAFETY: the masked lanes lie inside `out` (asserted above).
                *v = unsafe {
                    _mm512_maskz_loadu_ps(
                        masks[h],
                        out.as_ptr().add((t.j + jj) * t.m + t.i + 16 * h),
                    )
                };
            }
        }
    }
    let (w, x) = (t.w.as_ptr(), t.panel.as_ptr());
    for c in 0..t.kb {
        // SAFETY: c < kb: the panel's column c and each row's element c exist (asserted
        // above).
        unsafe {
            let xs: [__m512; H] = std::array::from_fn(|h| _mm512_loadu_ps(x.add(c * PR + 16 * h)));
            for (jj, a) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*w.add(jj * KC + c));
                for (v, xh) in a.iter_mut().zip(xs) {
                    *v = _mm512_fmadd_ps(xh, b, *v);
                }
            }
        }
    }
    for (jj, a) in acc.iter().enumerate() {
        for (h, v) in a.iter().enumerate() {
            // SAFETY: as the loads above.
            unsafe {
                _mm512_mask_storeu_ps(
                    out.as_mut_ptr().add((t.j + jj) * t.m + t.i + 16 * h),
                    masks[h],
                    *v,
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tile::avx2::F16Row;
    use super::*;

    #[test]
    fn transpose16_transposes() {
        if !available() {
            return;
        }
        let m: Vec<f32> = (0..256).map(|v| v as f32).collect();
        // SAFETY: the CPU has AVX-512 F (checked above); each row is 16 floats of `m`.
        let t = unsafe {
            transpose16(std::array::from_fn(|r| {
                _mm512_loadu_ps(m.as_ptr().add(16 * r))
            }))
        };
        let mut got = vec![0.0f32; 256];
        for (c, v) in t.iter().enumerate() {
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr().add(16 * c), *v) };
        }
        for c in 0..16 {
            for r in 0..16 {
                assert_eq!(got[16 * c + r], m[16 * r + c], "column {c}, row {r}");
            }
        }
    }

    /// f16 rows through the panels equal the plain dot products of the rows widened: weight
    /// rows in whole and short micro-tiles, activation rows filling panels or not (a last
    /// panel of 1 to 16 rows takes one register, of 17 two), `k` within one block and over
    /// several, not a multiple of 16.
    #[test]
    fn panels_equal_plain_dots() {
        if !available() {
            return;
        }
        for (n, m, k) in [
            (1, 1, 16),
            (12, 32, 16),
            (13, 5, 45),
            (13, 49, 45),
            (25, 33, 300),
            (7, 70, 517),
            (30, 64, 256),
        ] {
            let w: Vec<half::f16> = (0..n * k)
                .map(|i| half::f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 50.0))
                .collect();
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let bytes: &[u8] = bytemuck::cast_slice(&w);
            // SAFETY (both): the CPU has the panels (checked above).
            let acts = unsafe { Acts::new(|i: usize| &x[i * k..(i + 1) * k], m, k) };
            let mut out = vec![f32::NAN; n * m];
            unsafe {
                rows_times(
                    &|j: usize| F16Row(&bytes[j * 2 * k..(j + 1) * 2 * k]),
                    &acts,
                    &mut out,
                )
            };
            for j in 0..n {
                for i in 0..m {
                    let want: f64 = (0..k)
                        .map(|c| w[j * k + c].to_f64() * x[i * k + c] as f64)
                        .sum();
                    let got = out[j * m + i] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{n}×{m}×{k}: w{j}·x{i}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

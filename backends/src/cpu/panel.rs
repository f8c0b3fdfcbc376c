//! Prompt products of 16-bit float weights in packed panels (AVX-512 F, or AVX2 with FMA and
//! F16C). The activation rows are woven once per product into panels of two registers' lanes
//! (32 rows, or 16 on AVX2: each column of `k` holding the panel's rows side by side); a group
//! of weight rows is widened to f32 a block of `k` at a time into a buffer that stays in L1,
//! and meets every panel there. A micro-tile of 12 weight rows by a panel's 32 activation rows
//! (6 by 16 on AVX2) keeps its 24 (12) accumulators in registers: a column costs two loads of
//! activations and a broadcast per weight row for two multiply-adds each, with no horizontal
//! sums. The register tiles of `tile.rs` instead load five weight rows and five activation
//! rows per 25 multiply-adds, the activation rows read from L2 for every tile.
//!
//! On a 2-core Emerald Rapids (peak ~360 GFLOP/s on two threads) llama-1.1b f16's prompt of
//! 512 tokens spent 3.2 s in `mul_mat` nodes instead of 4.4 (~310 GFLOP/s); `-- cpu/matmul`
//! 64 × 2048 × 2048: f16 195 → 237 GFLOP/s, bf16 (against the `vdpbf16ps` tiles) 154 → 230.

use super::tile::avx2::Weights;
use super::vmath::{F32s, transpose8};
use std::arch::x86_64::*;

/// Weight rows per micro-tile at the widest register width.
const WR_MAX: usize = 12;
/// Columns of `k` per block: a micro-tile's weights (12 KiB) stay in L1 while the panels'
/// blocks (32 KiB each) stream past them.
const KC: usize = 256;

/// The register width the panels run at on this CPU (f32 lanes), if they run.
fn lanes() -> Option<usize> {
    if !(is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"))
    {
        None
    } else if is_x86_feature_detected!("avx512f") {
        Some(16)
    } else {
        Some(8)
    }
}

/// Whether prompts take the panels: where the CPU has them, unless `WEFT_PANEL=0` (to measure
/// them against the register tiles of `tile.rs`).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WEFT_PANEL").as_deref() != Ok("0") && lanes().is_some())
}

/// Weight rows per micro-tile on this CPU (a chunk of whole micro-tiles wastes none).
pub fn weight_rows() -> usize {
    match lanes() {
        Some(8) => <__m256 as Width>::WR,
        _ => <__m512 as Width>::WR,
    }
}

/// A register width of the panels: its lanes' loads and stores, and its micro-tile's rows.
trait Width: F32s {
    /// Weight rows per micro-tile: two accumulators each, with the two activation registers
    /// and a broadcast within the register file.
    const WR: usize;
    /// Elements `c .. c + LANES` of `w`, widened.
    ///
    /// # Safety
    /// `c + LANES ≤ w.elems()`; the CPU has the width's features.
    unsafe fn widen<W: Weights>(w: W, c: usize) -> Self;
    /// The first `n` lanes from `p` (`n ≤ LANES`), zeros in the others.
    ///
    /// # Safety
    /// `p .. p + n` are readable; the CPU has the width's features.
    unsafe fn load_first(p: *const f32, n: usize) -> Self;
    /// The first `n` lanes to `p`.
    ///
    /// # Safety
    /// `p .. p + n` are writable; the CPU has the width's features.
    unsafe fn store_first(self, p: *mut f32, n: usize);
    /// Columns `c .. c + LANES` of `rows` (at most LANES of them, the rest taken as zeros),
    /// column `cc` stored from `dst + cc·stride`.
    ///
    /// # Safety
    /// `c + LANES ≤` every row's elements; `dst + cc·stride .. + LANES` writable for each `cc`;
    /// the CPU has the width's features.
    unsafe fn weave_block<W: Weights>(rows: &[W], c: usize, dst: *mut f32, stride: usize);
}

impl Width for __m512 {
    const WR: usize = WR_MAX;
    #[inline(always)]
    unsafe fn widen<W: Weights>(w: W, c: usize) -> Self {
        // SAFETY: the caller's contract.
        unsafe { w.load16(c) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        // SAFETY: the masked lanes are the `n` readable ones (the caller's contract).
        unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize) {
        // SAFETY: as `load_first`.
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, self) }
    }
    #[inline(always)]
    unsafe fn weave_block<W: Weights>(rows: &[W], c: usize, dst: *mut f32, stride: usize) {
        // SAFETY: the caller's contract.
        unsafe {
            let vs: [__m512; 16] = std::array::from_fn(|r| match rows.get(r) {
                Some(w) => w.load16(c),
                None => _mm512_setzero_ps(),
            });
            for (cc, col) in transpose16(vs).into_iter().enumerate() {
                _mm512_storeu_ps(dst.add(cc * stride), col);
            }
        }
    }
}

impl Width for __m256 {
    /// (12 accumulators, two activation registers and a broadcast: 15 of the 16)
    const WR: usize = 6;
    #[inline(always)]
    unsafe fn widen<W: Weights>(w: W, c: usize) -> Self {
        // SAFETY: the caller's contract.
        unsafe { w.load8(c) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        // SAFETY: the masked lanes are the `n` readable ones (the caller's contract).
        unsafe { _mm256_maskload_ps(p, first_lanes(n)) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize) {
        // SAFETY: as `load_first`.
        unsafe { _mm256_maskstore_ps(p, first_lanes(n), self) }
    }
    #[inline(always)]
    unsafe fn weave_block<W: Weights>(rows: &[W], c: usize, dst: *mut f32, stride: usize) {
        // SAFETY: the caller's contract.
        unsafe {
            let vs: [__m256; 8] = std::array::from_fn(|r| match rows.get(r) {
                Some(w) => w.load8(c),
                None => _mm256_setzero_ps(),
            });
            for (cc, col) in transpose8(vs).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(cc * stride), col);
            }
        }
    }
}

/// An AVX2 mask of the first `n` of eight lanes.
///
/// # Safety
/// The CPU has AVX2 (inlined into code compiled for it).
#[inline(always)]
unsafe fn first_lanes(n: usize) -> __m256i {
    // SAFETY: the caller's contract.
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

/// Activation rows `[m, k]` woven into panels of `2·lanes` rows: panel `p`'s column `c` holds
/// its rows at `(p·k + c)·2·lanes` (rows past `m` are zeros).
pub struct Acts {
    woven: Vec<f32>,
    m: usize,
    k: usize,
    lanes: usize,
}

impl Acts {
    /// `m` activation rows of `k`, row `i` read from `row(i)` (f32, or bf16 widened), woven
    /// for this CPU's register width, on the thread team where they are many; `None` where the
    /// CPU has no panels.
    pub fn new<W: Weights>(row: impl Fn(usize) -> W + Sync, m: usize, k: usize) -> Option<Acts> {
        Some(Acts::with_lanes(lanes()?, row, m, k))
    }

    /// [`Acts::new`] for a register width of `lanes` (16 where the CPU has AVX-512 F, or 8).
    fn with_lanes<W: Weights>(
        lanes: usize,
        row: impl Fn(usize) -> W + Sync,
        m: usize,
        k: usize,
    ) -> Acts {
        assert!(k > 0 && self::lanes().is_some_and(|l| lanes <= l) && (lanes == 8 || lanes == 16));
        let pr = 2 * lanes;
        let len = m.div_ceil(pr) * k * pr;
        // (every element is written below: a buffer reused need not be cleared)
        let mut woven = super::spare::take(&SPARE, len);
        let one = |p: usize, panel: &mut [f32]| {
            // SAFETY: the CPU has the width's features (asserted above).
            unsafe {
                if lanes == 16 {
                    weave_zmm(&row, m, k, p, panel)
                } else {
                    weave_ymm(&row, m, k, p, panel)
                }
            }
        };
        if m * k < WEAVE_ON_TEAM_FROM {
            for (p, panel) in woven.chunks_exact_mut(k * pr).enumerate() {
                one(p, panel);
            }
        } else {
            super::team::global().chunks_mut(&mut woven, k * pr, one);
        }
        Acts { woven, m, k, lanes }
    }

    pub fn rows(&self) -> usize {
        self.m
    }
}

impl Drop for Acts {
    /// The buffer kept for the next product's panels (faulting in a fresh one's pages was a
    /// third of the weaving).
    fn drop(&mut self) {
        super::spare::keep(&SPARE, std::mem::take(&mut self.woven));
    }
}

thread_local! {
    /// A buffer of panels dropped on this thread, for the next [`Acts`] it weaves.
    static SPARE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Activation elements from which the team weaves the panels.
const WEAVE_ON_TEAM_FROM: usize = 1 << 18;

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn weave_zmm<W: Weights>(
    row: &impl Fn(usize) -> W,
    m: usize,
    k: usize,
    p: usize,
    panel: &mut [f32],
) {
    // SAFETY: this function's features.
    unsafe { weave::<__m512, W>(row, m, k, p, panel) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weave_ymm<W: Weights>(
    row: &impl Fn(usize) -> W,
    m: usize,
    k: usize,
    p: usize,
    panel: &mut [f32],
) {
    // SAFETY: this function's features.
    unsafe { weave::<__m256, W>(row, m, k, p, panel) }
}

/// Panel `p` of the `m` rows `row(i)` into `panel` (`k · 2 · LANES` floats): a register's
/// lanes of columns of as many rows at a time, through a register transpose.
///
/// # Safety
/// The CPU has the width's features (inlined into code compiled for them).
#[inline(always)]
unsafe fn weave<V: Width, W: Weights>(
    row: &impl Fn(usize) -> W,
    m: usize,
    k: usize,
    p: usize,
    panel: &mut [f32],
) {
    let (l, pr) = (V::LANES, 2 * V::LANES);
    assert_eq!(panel.len(), k * pr);
    for h in 0..2 {
        let i0 = p * pr + h * l;
        let live = m.saturating_sub(i0).min(l);
        let rows: Vec<W> = (i0..i0 + live).map(row).collect();
        assert!(rows.iter().all(|r| r.elems() >= k));
        let mut c = 0;
        while c + l <= k {
            // SAFETY: c + LANES ≤ k ≤ every row's elements (asserted above); column c + cc's
            // lanes from (c + cc)·pr + h·l lie inside `panel`, k·pr long (asserted above);
            // the features are the caller's contract.
            unsafe { V::weave_block(&rows, c, panel.as_mut_ptr().add(c * pr + h * l), pr) };
            c += l;
        }
        for cc in c..k {
            for r in 0..l {
                panel[cc * pr + h * l + r] = rows.get(r).map_or(0.0, |w| w.at(cc));
            }
        }
    }
}

/// The 16 × 16 transpose of `r` (rows in, columns out).
///
/// # Safety
/// The CPU has AVX-512 F (inlined into code compiled for it).
#[inline(always)]
pub(super) unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // SAFETY: register shuffles only; the caller's contract gives the features.
    unsafe {
        // pairs of rows interleaved, then quads: u[4g + q] holds, in its 128-bit lane l,
        // column 4l + q of rows 4g .. 4g + 4
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
        // the four groups' lanes gathered: column 4l + q from u[q], u[4 + q], u[8 + q] and
        // u[12 + q]
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
}

/// [`rows_times`] for rows of little-endian f16 or bf16 weights (`dtype`), `row(j)` the bytes of
/// row `j`.
pub fn rows_times_half<'a>(
    dtype: weft_graph::DType,
    row: &impl Fn(usize) -> &'a [u8],
    acts: &Acts,
    out: &mut [f32],
) {
    use super::tile::avx2::{Bf16Row, F16Row};
    match dtype {
        weft_graph::DType::F16 => rows_times(&|j: usize| F16Row(row(j)), acts, out),
        weft_graph::DType::BF16 => rows_times(&|j: usize| Bf16Row(row(j)), acts, out),
        other => unreachable!("panels of {other:?} weights"),
    }
}

/// `out[j·m + i] = row(j) · x_i` for the `out.len() / m` weight rows and the activation rows
/// woven in `acts`.
pub fn rows_times<W: Weights>(row: &impl Fn(usize) -> W, acts: &Acts, out: &mut [f32]) {
    // SAFETY: `acts` was woven for a width this CPU has (`Acts::with_lanes`).
    unsafe {
        if acts.lanes == 16 {
            blocks_zmm(row, acts, out)
        } else {
            blocks_ymm(row, acts, out)
        }
    }
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn blocks_zmm<W: Weights>(row: &impl Fn(usize) -> W, acts: &Acts, out: &mut [f32]) {
    // SAFETY: this function's features.
    unsafe { blocks::<__m512, W>(row, acts, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blocks_ymm<W: Weights>(row: &impl Fn(usize) -> W, acts: &Acts, out: &mut [f32]) {
    // SAFETY: this function's features.
    unsafe { blocks::<__m256, W>(row, acts, out) }
}

/// A micro-tile's weight rows widened to f32, `KC` apart.
#[repr(C, align(64))]
struct Wide([f32; WR_MAX * KC]);

/// # Safety
/// The CPU has the width's features (inlined into code compiled for them).
#[inline(always)]
unsafe fn blocks<V: Width, W: Weights>(row: &impl Fn(usize) -> W, acts: &Acts, out: &mut [f32]) {
    let (m, k, pr) = (acts.m, acts.k, 2 * V::LANES);
    assert_eq!(acts.lanes, V::LANES);
    let rows = out.len() / m;
    assert_eq!(out.len(), rows * m);
    let ws: Vec<W> = (0..rows).map(row).collect();
    assert!(ws.iter().all(|w| w.elems() >= k));
    let mut wide = Wide([0.0; WR_MAX * KC]);
    for c0 in (0..k).step_by(KC) {
        let kb = KC.min(k - c0);
        let first = c0 == 0;
        for (j0, group) in ws.chunks(V::WR).enumerate().map(|(g, ws)| (g * V::WR, ws)) {
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
                while c + V::LANES <= kb {
                    // SAFETY: c0 + c + LANES ≤ k ≤ the row's elements (asserted above);
                    // `dst` holds KC ≥ c + LANES floats; the features are the caller's.
                    unsafe { V::widen(*w, c0 + c).store(dst.as_mut_ptr().add(c)) };
                    c += V::LANES;
                }
                for (cc, d) in dst.iter_mut().enumerate().take(kb).skip(c) {
                    *d = w.at(c0 + cc);
                }
            }
            for p in 0..m.div_ceil(pr) {
                let panel = &acts.woven[(p * k + c0) * pr..(p * k + c0 + kb) * pr];
                let at = Tile {
                    w: &wide.0,
                    panel,
                    kb,
                    first,
                    j: j0,
                    i: p * pr,
                    m,
                };
                // SAFETY (each): the caller's contract.
                unsafe {
                    match group.len() {
                        12 => halves::<V, 12>(at, out),
                        11 => halves::<V, 11>(at, out),
                        10 => halves::<V, 10>(at, out),
                        9 => halves::<V, 9>(at, out),
                        8 => halves::<V, 8>(at, out),
                        7 => halves::<V, 7>(at, out),
                        6 => halves::<V, 6>(at, out),
                        5 => halves::<V, 5>(at, out),
                        4 => halves::<V, 4>(at, out),
                        3 => halves::<V, 3>(at, out),
                        2 => halves::<V, 2>(at, out),
                        _ => halves::<V, 1>(at, out),
                    }
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

/// [`micro`] over the halves of the panel that hold activation rows: a panel of at most one
/// register's lanes (a mixture's expert meeting few rows) takes half the multiply-adds.
///
/// # Safety
/// The CPU has the width's features (inlined into code compiled for them).
#[inline(always)]
unsafe fn halves<V: Width, const N: usize>(t: Tile, out: &mut [f32]) {
    // SAFETY (both): the caller's contract.
    unsafe {
        if t.m - t.i <= V::LANES {
            micro::<V, N, 1>(t, out)
        } else {
            micro::<V, N, 2>(t, out)
        }
    }
}

/// `N` weight rows by the first `H` registers of a panel's activation rows over one block of
/// columns, added into `out[(j + jj)·m + i + r]` for the rows `r` that exist.
///
/// # Safety
/// The CPU has the width's features (inlined into code compiled for them).
#[inline(always)]
unsafe fn micro<V: Width, const N: usize, const H: usize>(t: Tile, out: &mut [f32]) {
    let (l, pr) = (V::LANES, 2 * V::LANES);
    let live = (t.m - t.i).min(l * H);
    let lanes: [usize; H] = std::array::from_fn(|h| live.saturating_sub(l * h).min(l));
    assert!(t.w.len() >= (N - 1) * KC + t.kb && t.panel.len() >= t.kb * pr);
    assert!(out.len() >= (t.j + N - 1) * t.m + t.i + live);
    // SAFETY: the caller's contract gives the features; every access is inside the slices
    // (asserted above: the lanes of `out` each row's live ones, column c < kb of the panel
    // and of each weight row).
    unsafe {
        let at = |jj: usize, h: usize| (t.j + jj) * t.m + t.i + l * h;
        let mut acc = [[V::splat(0.0); H]; N];
        if !t.first {
            for (jj, a) in acc.iter_mut().enumerate() {
                for (h, v) in a.iter_mut().enumerate() {
                    *v = V::load_first(out.as_ptr().add(at(jj, h)), lanes[h]);
                }
            }
        }
        let (w, x) = (t.w.as_ptr(), t.panel.as_ptr());
        for c in 0..t.kb {
            let xs: [V; H] = std::array::from_fn(|h| V::load(x.add(c * pr + l * h)));
            for (jj, a) in acc.iter_mut().enumerate() {
                let b = V::splat(*w.add(jj * KC + c));
                for (v, xh) in a.iter_mut().zip(xs) {
                    *v = xh.fmadd(b, *v);
                }
            }
        }
        for (jj, a) in acc.iter().enumerate() {
            for (h, v) in a.iter().enumerate() {
                v.store_first(out.as_mut_ptr().add(at(jj, h)), lanes[h]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tile::avx2::F16Row;
    use super::*;

    #[test]
    fn transpose16_transposes() {
        if lanes() != Some(16) {
            return;
        }
        let m: Vec<f32> = (0..256).map(|v| v as f32).collect();
        let mut got = vec![0.0f32; 256];
        // SAFETY: the CPU has AVX-512 F (checked above); each row and column is 16 floats of
        // `m` or `got`.
        unsafe { transposed16(&m, &mut got) };
        for c in 0..16 {
            for r in 0..16 {
                assert_eq!(got[16 * c + r], m[16 * r + c], "column {c}, row {r}");
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    fn transposed16(m: &[f32], got: &mut [f32]) {
        assert!(m.len() >= 256 && got.len() >= 256);
        // SAFETY: inside both (asserted above); this function's features.
        unsafe {
            let t = transpose16(std::array::from_fn(|r| {
                _mm512_loadu_ps(m.as_ptr().add(16 * r))
            }));
            for (c, v) in t.iter().enumerate() {
                _mm512_storeu_ps(got.as_mut_ptr().add(16 * c), *v);
            }
        }
    }

    /// f16 rows through the panels of either width equal the plain dot products of the rows
    /// widened: weight rows in whole and short micro-tiles, activation rows filling panels or
    /// not (a last panel of up to a register's lanes takes one register, of one more two),
    /// `k` within one block and over several, not a multiple of 16.
    #[test]
    fn panels_equal_plain_dots() {
        let Some(widest) = lanes() else {
            return;
        };
        for (n, m, k) in [
            (1, 1, 16),
            (12, 32, 16),
            (13, 5, 45),
            (13, 9, 45),
            (13, 25, 45),
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
            for l in [8, 16].into_iter().filter(|&l| l <= widest) {
                let acts = Acts::with_lanes(l, |i: usize| &x[i * k..(i + 1) * k], m, k);
                let mut out = vec![f32::NAN; n * m];
                rows_times(
                    &|j: usize| F16Row(&bytes[j * 2 * k..(j + 1) * 2 * k]),
                    &acts,
                    &mut out,
                );
                for j in 0..n {
                    for i in 0..m {
                        let want: f64 = (0..k)
                            .map(|c| w[j * k + c].to_f64() * x[i * k + c] as f64)
                            .sum();
                        let got = out[j * m + i] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{l} lanes, {n}×{m}×{k}: w{j}·x{i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

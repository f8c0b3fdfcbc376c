//! Prompt products of 16-bit float weights on AMX tiles (Intel's Advanced Matrix Extensions,
//! Sapphire Rapids and later, on Linux). One `tdpbf16ps` multiplies a tile of 16 weight rows
//! by 32 columns of `k` into 16 activation rows' sums: 8,192 multiply-adds, against 16 for an
//! AVX-512 FMA.
//!
//! The tiles multiply bf16 only. bf16 weights meet their activations rounded to bf16, as every
//! path has them meet (`tile_bf16`): one product. An f16 weight (11 significant bits) is
//! exactly the sum of two bf16 (8 bits, and the rest), and an f32 activation nearly so (16 of
//! its 24 bits), so f16 weights take three products per column, `wh·xh + wl·xh + wh·xl`: what
//! is left out, `wl·xl` and the activation past 16 bits, is below 2⁻¹⁵ of each product
//! (llama.cpp rounds an f16 weight's activations to f16, 2⁻¹¹).
//!
//! Activation rows are packed once per product into tiles of 16 rows (pairs of columns side by
//! side, as `tdpbf16ps` reads its second operand); each chunk of weight rows is packed into
//! tiles of 16 rows by 32 columns, then meets every activation tile, two by two in the eight
//! tile registers (four sums, two weight tiles, two activation tiles).

use super::tile::avx2::{F16Row, Weights};
use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;
use weft_graph::DType;

/// Weight rows per chunk unit: two tiles of 16.
pub const WEIGHT_ROWS: usize = 32;
/// Rows (of weights or activations) per tile.
const TR: usize = 16;
/// Columns of `k` per tile.
const TC: usize = 32;
/// u16 per tile (16 rows of 64 bytes).
const TILE: usize = TR * TC;

/// Whether prompts take the AMX tiles: where the CPU and the kernel allow them, unless
/// `WEFT_AMX=0` (to measure them against the packed panels).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WEFT_AMX").as_deref() != Ok("0") && supported())
}

/// AMX-TILE and AMX-BF16 (CPUID leaf 7: EDX bits 24 and 22), the AVX-512 the packing uses
/// (F, BW and BF16), and Linux's leave to use the tiles' 8 KiB of state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`, granted to the whole process; refused where the kernel or the
/// hypervisor does not save that state).
fn supported() -> bool {
    if !(cfg!(target_os = "linux")
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16"))
    {
        return false;
    }
    // (CPUID leaf 7 exists on every CPU with AVX-512, checked above)
    let edx = __cpuid_count(7, 0).edx;
    if edx & (1 << 24) == 0 || edx & (1 << 22) == 0 {
        return false;
    }
    const ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let status: i64;
    // SAFETY: the arch_prctl system call with an integer argument (x86-64 Linux ABI: the
    // number and result in rax, arguments in rdi and rsi, rcx and r11 overwritten); it only
    // changes which register state the kernel saves for this process.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") ARCH_PRCTL => status,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    status == 0
}

/// How weights of a dtype meet their activations: how many bf16 parts each side is split
/// into, and which pairs of parts are multiplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    /// bf16 weights, activations rounded to bf16: one part each, one product.
    Bf16,
    /// f16 weights and f32 activations: two parts each, three products.
    F16,
}

impl Split {
    fn of(dtype: DType) -> Option<Split> {
        match dtype {
            DType::BF16 => Some(Split::Bf16),
            DType::F16 => Some(Split::F16),
            _ => None,
        }
    }

    fn parts(self) -> usize {
        match self {
            Split::Bf16 => 1,
            Split::F16 => 2,
        }
    }
}

/// Activation rows packed into tiles: tile `((b·kb + c)·parts + part)` holds part `part` of
/// rows `16b ..` over columns `32c ..`, row `r` of the tile holding columns `32c + 2r` and
/// `32c + 2r + 1` of the 16 activation rows side by side (zeros past `m` and `k`).
pub struct Acts {
    tiles: Vec<u16>,
    split: Split,
    m: usize,
    k: usize,
}

impl Acts {
    /// The `m` rows of `x` (`[m, k]`) packed for weights of `dtype` (f16 or bf16), on the
    /// thread team where they are many; `None` where the tiles do not run or for other dtypes.
    pub fn new(dtype: DType, x: &[f32], k: usize) -> Option<Acts> {
        let split = Split::of(dtype).filter(|_| k > 0 && enabled())?;
        let m = x.len() / k;
        let kb = k.div_ceil(TC);
        let per_block = kb * split.parts() * TILE;
        // (every element is written below: a buffer reused need not be cleared)
        let len = m.div_ceil(TR) * per_block;
        let mut tiles = super::spare::take(&SPARE, len);
        let one = |b: usize, dst: &mut [u16]| {
            let rows = &x[b * TR * k..((b + 1) * TR * k).min(x.len())];
            // SAFETY: the CPU has AVX-512 F and BW (`enabled`).
            unsafe { pack_acts(rows, k, split, dst) }
        };
        if m * k < PACK_ON_TEAM_FROM {
            for (b, dst) in tiles.chunks_exact_mut(per_block).enumerate() {
                one(b, dst);
            }
        } else {
            super::team::global().chunks_mut(&mut tiles, per_block, one);
        }
        Some(Acts { tiles, split, m, k })
    }

    pub fn rows(&self) -> usize {
        self.m
    }
}

impl Drop for Acts {
    /// The buffer kept for the next product's tiles (`spare`).
    fn drop(&mut self) {
        super::spare::keep(&SPARE, std::mem::take(&mut self.tiles));
    }
}

thread_local! {
    /// A buffer of activation tiles dropped on this thread, for the next [`Acts`] it packs.
    static SPARE: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Activation elements from which the team packs the tiles.
const PACK_ON_TEAM_FROM: usize = 1 << 16;

/// The high and low bf16 parts of 32 floats (`v[0]`'s 16, then `v[1]`'s): `hi` the nearest
/// bf16 (ties to even), `lo` the nearest to what is left (exact where the float has at most 16
/// significant bits, as f16 values do). `vcvtne2ps2bf16` rounds 32 floats in one instruction
/// (Rust has no stable intrinsic for it): the packing took 0.6 ns an element rounding in
/// integer lanes and narrowing by `vpmovdw`.
///
/// # Safety
/// The CPU has AVX-512 F, BW and BF16.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn split32(v: [__m512; 2]) -> (__m512i, __m512i) {
    // SAFETY: register operations only; the caller's contract gives the features.
    unsafe {
        let hi = round32(v);
        let widen =
            |h: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
        let rest = [
            _mm512_sub_ps(v[0], widen(_mm512_castsi512_si256(hi))),
            _mm512_sub_ps(v[1], widen(_mm512_extracti64x4_epi64::<1>(hi))),
        ];
        (hi, round32(rest))
    }
}

/// `v[0]`'s 16 floats, then `v[1]`'s, rounded to the nearest bf16 (ties to even).
///
/// # Safety
/// The CPU has AVX-512 F and BF16.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn round32(v: [__m512; 2]) -> __m512i {
    let r: __m512i;
    // SAFETY: a register operation; the caller's contract gives the features.
    unsafe {
        // (the second source fills the low 16 words)
        asm!(
            "vcvtne2ps2bf16 {r}, {a}, {b}",
            r = lateout(zmm_reg) r,
            a = in(zmm_reg) v[1],
            b = in(zmm_reg) v[0],
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    r
}

/// One block of up to 16 activation rows (`rows`, `[≤16, k]`) into its tiles (`dst`, every
/// element written: zeros past the rows and past `k`).
///
/// # Safety
/// The CPU has AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_acts(rows: &[f32], k: usize, split: Split, dst: &mut [u16]) {
    let (kb, parts) = (k.div_ceil(TC), split.parts());
    let live = rows.len() / k;
    assert!(live <= TR && dst.len() == kb * parts * TILE);
    // SAFETY: loads inside each row (the mask keeps columns below k), stores inside `dst`
    // (tile (c, part) ends at (c·parts + part + 1)·TILE ≤ dst.len()); this function's features.
    unsafe {
        for c in 0..kb {
            let cols = (k - c * TC).min(TC);
            // each row's 32 columns as two halves of 16 floats, split, as 16 u32 pairs
            let mut his = [_mm512_setzero_si512(); TR];
            let mut los = [_mm512_setzero_si512(); TR];
            for (n, (hi, lo)) in his.iter_mut().zip(&mut los).enumerate().take(live) {
                let p = rows.as_ptr().add(n * k + c * TC);
                let halves: [__m512; 2] = std::array::from_fn(|h| {
                    let n = cols.saturating_sub(16 * h).min(16);
                    _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p.add(16 * h))
                });
                // (bf16 weights take the high part alone: the activations rounded, as
                // `tile_bf16` rounds them)
                (*hi, *lo) = split32(halves);
            }
            for (part, vs) in [his, los].into_iter().enumerate().take(parts) {
                let t = dst.as_mut_ptr().add((c * parts + part) * TILE);
                let cols = super::panel::transpose16(vs.map(|v| _mm512_castsi512_ps(v)));
                for (r, col) in cols.into_iter().enumerate() {
                    _mm512_storeu_ps(t.add(r * TC) as *mut f32, col);
                }
            }
        }
    }
}

/// `out[j·m + i] = row(j) · x_i` for the `out.len() / m` weight rows `row(j)` (little-endian
/// f16 or bf16 as `dtype`, which must be the dtype `acts` was packed for) and the activation
/// rows packed in `acts`.
pub fn rows_times<'a>(
    dtype: DType,
    row: &impl Fn(usize) -> &'a [u8],
    acts: &Acts,
    out: &mut [f32],
) {
    assert_eq!(
        Split::of(dtype),
        Some(acts.split),
        "weights of the packed dtype"
    );
    let (m, k) = (acts.m, acts.k);
    let n = out.len() / m;
    assert_eq!(out.len(), n * m);
    let (kb, parts) = (k.div_ceil(TC), acts.split.parts());
    let per_block = kb * parts * TILE;
    WEIGHTS.with_borrow_mut(|w| {
        // (every element of the rows packed is written below, and the rows past `n` in the
        // last block are cleared: a buffer reused need not be)
        let len = n.div_ceil(TR) * per_block;
        if w.len() < len {
            w.resize(len, 0);
        }
        if !n.is_multiple_of(TR) {
            let last = &mut w[(n / TR) * per_block..len];
            for c in 0..kb * parts {
                last[c * TILE + (n % TR) * TC..(c + 1) * TILE].fill(0);
            }
        }
        // a block's rows a few tile columns at a time, so that the stores fill consecutive
        // tiles (a row's tiles are 1 or 2 KiB apart: whole rows at a time, their lines
        // crowded into two of L1's sets)
        for (b, dst) in w[..len].chunks_exact_mut(per_block).enumerate() {
            let rows: Vec<&[u8]> = (b * TR..((b + 1) * TR).min(n)).map(row).collect();
            for (r, bytes) in rows.iter().enumerate() {
                assert!(
                    bytes.len() >= 2 * k,
                    "weight row {} holds {k} elements",
                    b * TR + r
                );
            }
            for c0 in (0..kb).step_by(PACK_COLUMNS) {
                let cs = c0..(c0 + PACK_COLUMNS).min(kb);
                for (r, bytes) in rows.iter().enumerate() {
                    // SAFETY: the CPU has AVX-512 F, BW and BF16 (`enabled`, which `acts`
                    // required).
                    unsafe {
                        match acts.split {
                            Split::F16 => pack_f16_row(F16Row(bytes), k, cs.clone(), r, dst),
                            Split::Bf16 => pack_bf16_row(bytes, k, cs.clone(), r, dst),
                        }
                    }
                }
            }
        }
        // SAFETY: the CPU has the tiles (`enabled`); the packed buffers hold every tile the
        // blocks read (`n` weight rows, `m` activation rows, `kb` columns, `parts` parts).
        unsafe { products(w, acts, n, out) };
    });
}

thread_local! {
    /// Each thread's buffer of packed weight tiles.
    static WEIGHTS: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Tile columns of a block's rows packed before the next rows'.
const PACK_COLUMNS: usize = 4;

/// Tile columns `cs` of weight row `r` of its block (`r < 16`), f16, into its block's tiles
/// `dst` (both parts).
///
/// # Safety
/// The CPU has AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn pack_f16_row(w: F16Row, k: usize, cs: Range<usize>, r: usize, dst: &mut [u16]) {
    assert!(w.elems() >= k && dst.len() == k.div_ceil(TC) * 2 * TILE && r < TR);
    assert!(cs.end <= k.div_ceil(TC));
    for c in cs {
        // SAFETY: whole loads inside the row (c0 + 16 ≤ k), the tail element by element; a
        // store of 32 u16 at row r of tile (c, part) inside `dst`; this function's features.
        unsafe {
            let v: [__m512; 2] = std::array::from_fn(|h| {
                let c0 = c * TC + 16 * h;
                if c0 + 16 <= k {
                    w.load16(c0)
                } else {
                    let tail: [f32; 16] =
                        std::array::from_fn(|i| if c0 + i < k { w.at(c0 + i) } else { 0.0 });
                    _mm512_loadu_ps(tail.as_ptr())
                }
            });
            let (hi, lo) = split32(v);
            for (part, v) in [hi, lo].into_iter().enumerate() {
                let at = (c * 2 + part) * TILE + r * TC;
                _mm512_storeu_si512(dst.as_mut_ptr().add(at).cast(), v);
            }
        }
    }
}

/// Tile columns `cs` of weight row `r` of its block (`r < 16`), `k` little-endian bf16, into
/// its block's tiles `dst` as they lie.
fn pack_bf16_row(src: &[u8], k: usize, cs: Range<usize>, r: usize, dst: &mut [u16]) {
    assert!(dst.len() == k.div_ceil(TC) * TILE && r < TR);
    for c in cs {
        let cols = (k - c * TC).min(TC);
        let d = &mut dst[c * TILE + r * TC..][..TC];
        for (i, v) in d.iter_mut().enumerate() {
            let at = 2 * (c * TC + i);
            *v = if i < cols {
                u16::from_le_bytes([src[at], src[at + 1]])
            } else {
                0
            };
        }
    }
}

/// A tile configuration as `ldtilecfg` reads it (palette, then each tile's bytes per row and
/// rows).
#[repr(C, align(64))]
pub(super) struct Config(pub(super) [u8; 64]);

/// The tile registers' shapes here: palette 1, all eight 16 rows of 64 bytes.
const CONFIG: Config = {
    let mut b = [0u8; 64];
    b[0] = 1;
    let mut t = 0;
    while t < 8 {
        b[16 + 2 * t] = 64;
        b[48 + t] = TR as u8;
        t += 1;
    }
    Config(b)
};

/// `tileloadd tmm$t` from `$p`, rows `$s` bytes apart (64 where not given).
macro_rules! tload {
    ($t:literal, $p:expr) => {
        tload!($t, $p, 64usize)
    };
    ($t:literal, $p:expr, $s:expr) => {
        asm!(
            concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
            p = in(reg) $p,
            s = in(reg) $s,
            options(nostack, readonly, preserves_flags)
        )
    };
}
pub(super) use tload;

/// The tile product `$op tmm$c, tmm$a, tmm$b`: `tdpbf16ps` (bf16 pairs into f32), `tdpbssd`
/// (i8 by i8 into i32) or `tdpbusd` (u8 by i8).
macro_rules! tdp {
    ($op:literal, $c:literal, $a:literal, $b:literal) => {
        asm!(
            concat!($op, " tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nomem, nostack, preserves_flags)
        )
    };
}
pub(super) use tdp;

/// `tilestored` of `tmm$t` to `$p`, rows `$s` bytes apart.
macro_rules! tstore {
    ($t:literal, $p:expr, $s:expr) => {
        asm!(
            concat!("tilestored [{p} + {s}*1], tmm", $t),
            p = in(reg) $p,
            s = in(reg) $s,
            options(nostack, preserves_flags)
        )
    };
}

pub(super) use tstore;

/// Leaves the tiles in their initial state (the kernel then saves none of their data).
///
/// # Safety
/// The CPU has AMX-TILE.
#[inline(always)]
pub(super) unsafe fn tile_release() {
    // SAFETY: the caller's contract.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Every weight tile pair against every activation tile pair, into `out`.
///
/// # Safety
/// The CPU has AMX-TILE and AMX-BF16 with the process's leave to use them; `w` holds the
/// packed tiles of `n` weight rows.
unsafe fn products(w: &[u16], acts: &Acts, n: usize, out: &mut [f32]) {
    let (m, k, parts) = (acts.m, acts.k, acts.split.parts());
    let kb = k.div_ceil(TC);
    let per_block = kb * parts * TILE;
    let (wbs, xbs) = (n.div_ceil(TR), m.div_ceil(TR));
    assert!(w.len() >= wbs * per_block && acts.tiles.len() >= xbs * per_block);
    assert!(out.len() >= n * m);
    let mut spilled = Spilled([0.0; 4 * TR * TR]);
    let (outp, spilledp) = (out.as_mut_ptr(), spilled.0.as_mut_ptr());
    // SAFETY: the CPU has the tiles (the caller's contract); every tile loaded lies inside
    // `w` or `acts.tiles` (asserted above), every store inside `out` (a full tile's 16 rows
    // and columns are live) or `spilled`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        for xb in (0..xbs).step_by(2) {
            for wb in (0..wbs).step_by(2) {
                let two_w = wb + 1 < wbs;
                let two_x = xb + 1 < xbs;
                let wt = w.as_ptr().add(wb * per_block);
                let xt = acts.tiles.as_ptr().add(xb * per_block);
                pair(wt, xt, per_block, kb, acts.split, two_w, two_x);
                // sums (wb + a, xb + b) in tmm(2a + b)
                let dst = |a: usize, b: usize| -> (*mut f32, usize, bool) {
                    let (j0, i0) = ((wb + a) * TR, (xb + b) * TR);
                    if j0 + TR <= n && i0 + TR <= m {
                        (outp.add(j0 * m + i0), 4 * m, false)
                    } else {
                        (spilledp.add((2 * a + b) * TR * TR), 4 * TR, true)
                    }
                };
                let d = [dst(0, 0), dst(0, 1), dst(1, 0), dst(1, 1)];
                tstore!("0", d[0].0, d[0].1);
                if two_x {
                    tstore!("1", d[1].0, d[1].1);
                }
                if two_w {
                    tstore!("2", d[2].0, d[2].1);
                    if two_x {
                        tstore!("3", d[3].0, d[3].1);
                    }
                }
                for (t, &(_, _, spilled)) in d.iter().enumerate() {
                    let (a, b) = (t / 2, t % 2);
                    if !spilled || (a == 1 && !two_w) || (b == 1 && !two_x) {
                        continue;
                    }
                    let (j0, i0) = ((wb + a) * TR, (xb + b) * TR);
                    let cols = (m - i0).min(TR);
                    for r in 0..(n - j0).min(TR) {
                        let src = spilledp.add(t * TR * TR + r * TR);
                        std::ptr::copy_nonoverlapping(src, outp.add((j0 + r) * m + i0), cols);
                    }
                }
            }
        }
        tile_release();
    }
}

/// Sums spilled from tiles that reach past the output's rows or columns.
#[repr(C, align(64))]
struct Spilled([f32; 4 * TR * TR]);

/// The products of one or two weight tiles' rows (`wt`, their blocks `per_block` apart) and
/// one or two activation tiles' (`xt`) over `kb` columns of tiles, into tmm0 ..= tmm3 (weight
/// tile `a`, activation tile `b` in tmm(2a + b)).
///
/// # Safety
/// The tiles are configured ([`CONFIG`]); the blocks read lie inside their buffers.
#[inline(always)]
unsafe fn pair(
    wt: *const u16,
    xt: *const u16,
    per_block: usize,
    kb: usize,
    split: Split,
    two_w: bool,
    two_x: bool,
) {
    let parts = split.parts();
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nomem, nostack, preserves_flags)
        );
        let at = |base: *const u16, block: usize, c: usize, part: usize| {
            base.add(block * per_block + (c * parts + part) * TILE)
        };
        // Each tile is loaded just before the first product that reads it, so the loads
        // overlap the products before them (4 loads then 4 products: 227 G multiply-adds a
        // second per core from L1 here; interleaved: 360; products alone: 565).
        let w = |c: usize, part: usize, b: usize| at(wt, b, c, part);
        let x = |c: usize, part: usize, b: usize| at(xt, b, c, part);
        // the weights' part `wp` (both tiles) by the activations' high parts
        let by_xh = |c: usize, wp: usize| {
            tload!("4", w(c, wp, 0));
            tload!("6", x(c, 0, 0));
            tdp!("tdpbf16ps", "0", "4", "6");
            if two_x {
                tload!("7", x(c, 0, 1));
                tdp!("tdpbf16ps", "1", "4", "7");
            }
            if two_w {
                tload!("5", w(c, wp, 1));
                tdp!("tdpbf16ps", "2", "5", "6");
                if two_x {
                    tdp!("tdpbf16ps", "3", "5", "7");
                }
            }
        };
        for c in 0..kb {
            by_xh(c, 0);
            if split == Split::Bf16 {
                continue;
            }
            // wh·xl (the weights' high parts still loaded)
            tload!("6", x(c, 1, 0));
            tdp!("tdpbf16ps", "0", "4", "6");
            if two_w {
                tdp!("tdpbf16ps", "2", "5", "6");
            }
            if two_x {
                tload!("7", x(c, 1, 1));
                tdp!("tdpbf16ps", "1", "4", "7");
                if two_w {
                    tdp!("tdpbf16ps", "3", "5", "7");
                }
            }
            by_xh(c, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f16 and bf16 weight rows through the tiles equal the plain dot products (f16: the
    /// activations as they are, within the three products' 2⁻¹⁵; bf16: the activations
    /// rounded to bf16): weight and activation rows in whole and partial tiles and pairs,
    /// `k` within one tile column and over several, not a multiple of 32.
    #[test]
    fn tiles_equal_plain_dots() {
        if !enabled() {
            return;
        }
        for (n, m, k) in [
            (1, 1, 16),
            (16, 16, 32),
            (13, 5, 45),
            (33, 17, 45),
            (32, 32, 64),
            (25, 49, 300),
            (70, 40, 517),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0 + 1e-5 * (i % 7) as f32)
                .collect();
            for dtype in [DType::F16, DType::BF16] {
                let w: Vec<f32> = (0..n * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                    .collect();
                let (bytes, wv, xv): (Vec<u8>, Vec<f64>, Vec<f64>) = match dtype {
                    DType::F16 => {
                        let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
                        (
                            bytemuck::cast_slice(&h).to_vec(),
                            h.iter().map(|v| v.to_f64()).collect(),
                            x.iter().map(|&v| v as f64).collect(),
                        )
                    }
                    _ => {
                        let h: Vec<half::bf16> =
                            w.iter().map(|&v| half::bf16::from_f32(v)).collect();
                        (
                            bytemuck::cast_slice(&h).to_vec(),
                            h.iter().map(|v| v.to_f64()).collect(),
                            x.iter()
                                .map(|&v| super::super::tile_bf16::round_value(v) as f64)
                                .collect(),
                        )
                    }
                };
                let acts = Acts::new(dtype, &x, k).expect("the tiles run");
                let mut out = vec![f32::NAN; n * m];
                rows_times(
                    dtype,
                    &|j| &bytes[j * 2 * k..(j + 1) * 2 * k],
                    &acts,
                    &mut out,
                );
                for j in 0..n {
                    for i in 0..m {
                        let terms = (0..k).map(|c| wv[j * k + c] * xv[i * k + c]);
                        let want: f64 = terms.clone().sum();
                        let scale: f64 = terms.map(f64::abs).sum();
                        let got = out[j * m + i] as f64;
                        assert!(
                            (got - want).abs() <= 4e-5 * scale + 1e-6,
                            "{dtype:?} {n}×{m}×{k}: w{j}·x{i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

//! Prompt products of Q8_0 weights on AMX-INT8 tiles. The activations are the 8-bit rows every
//! Q8_0 product meets ([`super::qdot::Acts`]: per 32 elements a scale `d` and 32 `i8`), so the
//! integer sums equal the register tiles' exactly and only the order of the f32 additions
//! differs. Each 32-element block is one `tdpbssd` (16 weight rows by 16 activation rows,
//! 8,192 multiply-adds of `i8` into `i32`), whose sums are scaled in AVX-512 by the weight
//! row's and the activation row's `d` and added into 16 registers of f32 sums; the next
//! block's tile product runs while this one's sums are scaled.

use super::amx::{Config, tdp_ssd, tile_release, tload, tstore};
use super::qdot::{Acts as QActs, Q8Block, QK};
use std::arch::asm;
use std::arch::x86_64::*;

/// Rows (of weights or activations) per tile.
const TR: usize = 16;
/// Weight rows per chunk unit: one tile's.
pub const WEIGHT_ROWS: usize = TR;
/// Bytes of a Q8_0 block: an f16 scale, then 32 `i8`.
const BLOCK_BYTES: usize = 2 + QK;

/// Whether Q8_0 prompts take the tiles: AMX-INT8 (CPUID leaf 7: EDX bit 25) besides what
/// [`super::amx::enabled`] asks.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| super::amx::enabled() && __cpuid_count(7, 0).edx & (1 << 25) != 0)
}

/// Activation rows packed into tiles: tile `b·kb + c` holds block `c` of rows `16b ..`, its
/// row `r` the bytes `4r .. 4r + 4` of the block of each of the 16 rows side by side (as
/// `tdpbssd` reads its second operand; zeros past `m`), with the 16 rows' scales.
pub struct Acts {
    tiles: Vec<[u8; 512]>,
    scales: Vec<[f32; TR]>,
    m: usize,
    kb: usize,
}

impl Acts {
    /// The Q8_0 activation rows `q` packed for the tiles; `None` where the tiles do not run or
    /// `q` holds another format's blocks.
    pub fn new(q: &QActs) -> Option<Acts> {
        let QActs::B32 { per_row, blocks } = q else {
            return None;
        };
        let kb = *per_row;
        if !enabled() || kb == 0 {
            return None;
        }
        let m = blocks.len() / kb;
        let xbs = m.div_ceil(TR);
        let mut tiles = vec![[0u8; 512]; xbs * kb];
        let mut scales = vec![[0f32; TR]; xbs * kb];
        for i in 0..m {
            let (b, n) = (i / TR, i % TR);
            for c in 0..kb {
                let blk: &Q8Block = &blocks[i * kb + c];
                let t = &mut tiles[b * kb + c];
                for r in 0..QK / 4 {
                    for e in 0..4 {
                        t[r * 64 + n * 4 + e] = blk.qs[4 * r + e] as u8;
                    }
                }
                scales[b * kb + c][n] = blk.d;
            }
        }
        Some(Acts {
            tiles,
            scales,
            m,
            kb,
        })
    }

    pub fn rows(&self) -> usize {
        self.m
    }
}

/// The tile shapes: sums (tmm0, tmm3) 16 rows of 16 `i32`; weights (tmm1, tmm4) 16 rows of
/// one block's 32 bytes; activations (tmm2, tmm5) 8 rows of 16 four-byte groups.
const CONFIG: Config = {
    let mut b = [0u8; 64];
    b[0] = 1;
    let shapes: [(usize, u8, u8); 6] = [
        (0, 16, 64),
        (1, 16, 32),
        (2, 8, 64),
        (3, 16, 64),
        (4, 16, 32),
        (5, 8, 64),
    ];
    let mut i = 0;
    while i < shapes.len() {
        let (t, rows, colsb) = shapes[i];
        b[16 + 2 * t] = colsb;
        b[48 + t] = rows;
        i += 1;
    }
    Config(b)
};

/// `out[j·m + i] = row(j) · x_i` for the `out.len() / m` Q8_0 weight rows `row(j)` and the
/// activation rows packed in `acts`.
pub fn rows_times<'a>(row: &impl Fn(usize) -> &'a [u8], acts: &Acts, out: &mut [f32]) {
    let (m, kb) = (acts.m, acts.kb);
    let n = out.len() / m;
    assert_eq!(out.len(), n * m);
    let wbs = n.div_ceil(TR);
    WEIGHTS.with_borrow_mut(|(tiles, scales)| {
        // (rows past `n` in the last block are cleared: their sums are not stored, but a NaN
        // scale would not matter either; the bytes must be defined)
        tiles.clear();
        tiles.resize(wbs * kb, [0; 512]);
        scales.clear();
        scales.resize(wbs * kb, [0.0; TR]);
        for j in 0..n {
            let bytes = row(j);
            assert!(
                bytes.len() >= kb * BLOCK_BYTES,
                "weight row {j} holds {kb} blocks"
            );
            let (b, r) = (j / TR, j % TR);
            for c in 0..kb {
                let blk = &bytes[c * BLOCK_BYTES..(c + 1) * BLOCK_BYTES];
                tiles[b * kb + c][r * QK..(r + 1) * QK].copy_from_slice(&blk[2..]);
                scales[b * kb + c][r] = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            }
        }
        // SAFETY: the CPU has the tiles and AVX-512 F (`enabled`, which `acts` required);
        // the packed buffers hold `wbs` and `acts.m.div_ceil(16)` blocks of `kb` tiles.
        unsafe { products(tiles, scales, acts, n, out) };
    });
}

type Packed = (Vec<[u8; 512]>, Vec<[f32; TR]>);

thread_local! {
    /// Each thread's packed weight tiles and scales.
    static WEIGHTS: std::cell::RefCell<Packed> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Every weight tile against every activation tile, into `out`.
///
/// # Safety
/// The CPU has AMX-TILE, AMX-INT8 and AVX-512 F, with the process's leave to use the tiles;
/// `tiles` and `scales` hold `n.div_ceil(16)` blocks of `acts.kb`.
#[target_feature(enable = "avx512f")]
unsafe fn products(
    tiles: &[[u8; 512]],
    scales: &[[f32; TR]],
    acts: &Acts,
    n: usize,
    out: &mut [f32],
) {
    let (m, kb) = (acts.m, acts.kb);
    let (wbs, xbs) = (n.div_ceil(TR), m.div_ceil(TR));
    assert!(tiles.len() >= wbs * kb && scales.len() >= wbs * kb);
    assert!(acts.tiles.len() >= xbs * kb && out.len() >= n * m);
    let mut sums = Sums([0; 2 * TR * TR]);
    let outp = out.as_mut_ptr();
    // SAFETY: the CPU has the features (the caller's contract); every tile loaded lies in
    // `tiles` or `acts.tiles` (asserted above), every store in `sums` or, for the rows and
    // columns that exist, in `out`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        for xb in 0..xbs {
            for wb in 0..wbs {
                let w = |c: usize| tiles[wb * kb + c].as_ptr();
                let x = |c: usize| acts.tiles[xb * kb + c].as_ptr();
                let mut acc = [_mm512_setzero_ps(); TR];
                // block c's product into set c % 2 (tmm0..2 or tmm3..5), block c + 1's
                // started before block c's sums are scaled
                let start = |c: usize| {
                    if c.is_multiple_of(2) {
                        tload!("1", w(c), 32usize);
                        tload!("2", x(c), 64usize);
                        asm!("tilezero tmm0", options(nomem, nostack, preserves_flags));
                        tdp_ssd!("0", "1", "2");
                    } else {
                        tload!("4", w(c), 32usize);
                        tload!("5", x(c), 64usize);
                        asm!("tilezero tmm3", options(nomem, nostack, preserves_flags));
                        tdp_ssd!("3", "4", "5");
                    }
                };
                start(0);
                for c in 0..kb {
                    if c + 1 < kb {
                        start(c + 1);
                    }
                    let s = sums.0.as_mut_ptr().add((c % 2) * TR * TR);
                    if c.is_multiple_of(2) {
                        tstore!("0", s, 64usize);
                    } else {
                        tstore!("3", s, 64usize);
                    }
                    let dx = _mm512_loadu_ps(acts.scales[xb * kb + c].as_ptr());
                    let dw = &scales[wb * kb + c];
                    for (r, a) in acc.iter_mut().enumerate() {
                        let v = _mm512_cvtepi32_ps(_mm512_loadu_si512(s.add(r * TR).cast()));
                        *a = _mm512_fmadd_ps(v, _mm512_mul_ps(dx, _mm512_set1_ps(dw[r])), *a);
                    }
                }
                let (j0, i0) = (wb * TR, xb * TR);
                let cols = (m - i0).min(TR);
                let mask = ((1u32 << cols) - 1) as __mmask16;
                for (r, a) in acc.iter().enumerate().take((n - j0).min(TR)) {
                    _mm512_mask_storeu_ps(outp.add((j0 + r) * m + i0), mask, *a);
                }
            }
        }
        tile_release();
    }
}

/// Two blocks' integer sums, stored from the tiles.
#[repr(C, align(64))]
struct Sums([i32; 2 * TR * TR]);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_graph::DType;

    /// Q8_0 weight rows through the tiles equal the plain sums of the rounded activations
    /// times the weights (the same integers, summed in another order): weight and activation
    /// rows in whole and partial tiles, one block and several, odd and even counts.
    #[test]
    fn tiles_equal_plain_sums() {
        if !enabled() {
            return;
        }
        for (n, m, k) in [
            (1, 1, 32),
            (16, 16, 64),
            (13, 5, 96),
            (33, 17, 160),
            (40, 70, 512),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            // Q8_0 blocks: d = max |w| / 127 as f16, q = round(w / d)
            let mut bytes = vec![];
            for blk in w.chunks_exact(QK) {
                let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = half::f16::from_f32(amax / 127.0);
                bytes.extend_from_slice(&d.to_le_bytes());
                let inv = if d.to_f32() > 0.0 {
                    1.0 / d.to_f32()
                } else {
                    0.0
                };
                bytes.extend(
                    blk.iter()
                        .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8),
                );
            }
            let q = QActs::quantize(DType::Q8_0, &x, k).expect("Q8_0 activations");
            let acts = Acts::new(&q).expect("the tiles run");
            let per = k / QK * BLOCK_BYTES;
            let mut out = vec![f32::NAN; n * m];
            rows_times(&|j| &bytes[j * per..(j + 1) * per], &acts, &mut out);
            let QActs::B32 { blocks, .. } = &q else {
                unreachable!()
            };
            let mut wv = vec![0f32; n * k];
            assert!(weft_graph::quant::dequantize(DType::Q8_0, &bytes, &mut wv));
            for j in 0..n {
                for i in 0..m {
                    let mut want = 0f64;
                    for c in 0..k {
                        let b = &blocks[(i * k + c) / QK];
                        want += wv[j * k + c] as f64 * (b.d * b.qs[c % QK] as f32) as f64;
                    }
                    let got = out[j * m + i] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{n}×{m}×{k}: w{j}·x{i}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

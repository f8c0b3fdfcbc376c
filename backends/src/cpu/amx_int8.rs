//! Prompt products of the 32-element block formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and of Q4_K
//! and Q5_K (whose scale and min change every 32 elements) on AMX-INT8 tiles. The activations
//! are the 8-bit rows every such product meets ([`super::qdot::Acts`]: per 32 elements a
//! scale `d`, 32 `i8` and `s = d·Σq`), so the
//! integer sums equal the register tiles' exactly and only the order of the f32 additions
//! differs. Each 32-element block is one tile product (16 weight rows by 16 activation rows,
//! 8,192 multiply-adds of bytes into `i32`): `tdpbssd` of Q8_0's signed values, or `tdpbusd`
//! of the other formats' unsigned ones as [`super::qdot::unpack`] gives them (an element is
//! `α·u + β`); its sums are scaled in AVX-512, `Σ·α·d + β·s`, and added into 16 registers of
//! f32 sums while the next block's tile product runs.

use super::amx::{Config, tdp, tile_release, tload, tstore};
use super::qdot::unpack::{self, Form, RowMut};
use super::qdot::{Acts as QActs, Q8Block, QK};
use std::arch::asm;
use std::arch::x86_64::*;
use weft_graph::DType;

/// Rows (of weights or activations) per tile.
const TR: usize = 16;
/// Weight rows per chunk unit: one tile's.
pub const WEIGHT_ROWS: usize = TR;
/// Bytes of a Q8_0 block: an f16 scale, then 32 `i8`.
const Q8_0_BYTES: usize = 2 + QK;

/// Whether weights of `dtype` take these tiles (where [`enabled`]).
pub fn takes(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q8_0
            | DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q4K
            | DType::Q5K
    )
}

/// Whether prompts take the tiles: AMX-INT8 (CPUID leaf 7: EDX bit 25) besides what
/// [`super::amx::enabled`] asks.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| super::amx::enabled() && __cpuid_count(7, 0).edx & (1 << 25) != 0)
}

/// Activation rows packed into tiles: tile `b·kb + c` holds block `c` of rows `16b ..`, its
/// row `r` the bytes `4r .. 4r + 4` of the block of each of the 16 rows side by side (as
/// `tdpbssd` reads its second operand; zeros past `m`), with the 16 rows' `d` and `s`.
pub struct Acts {
    tiles: Vec<[u8; 512]>,
    scales: Vec<[f32; TR]>,
    sums: Vec<[f32; TR]>,
    m: usize,
    kb: usize,
}

impl Acts {
    /// The 8-bit activation rows `q` packed for the tiles (the K-quants' per 32 elements of
    /// their 256: the super-block's `d`, and `s` from the two sums of 16); `None` where the
    /// tiles do not run.
    pub fn new(q: &QActs) -> Option<Acts> {
        if !enabled() {
            return None;
        }
        // each row's 32-element blocks: (d, s, the 32 values)
        let (kb, m): (usize, usize) = match q {
            QActs::B32 { per_row, blocks } => (*per_row, blocks.len() / (*per_row).max(1)),
            QActs::K { per_row, blocks } => (8 * per_row, blocks.len() / (*per_row).max(1)),
        };
        if kb == 0 {
            return None;
        }
        let block = |i: usize, c: usize| -> (f32, f32, &[i8]) {
            match q {
                QActs::B32 { blocks, .. } => {
                    let b: &Q8Block = &blocks[i * kb + c];
                    (b.d, b.s, &b.qs)
                }
                QActs::K { blocks, .. } => {
                    let b = &blocks[(i * kb + c) / 8];
                    let g = c % 8;
                    let sum = b.bsums[2 * g] as i32 + b.bsums[2 * g + 1] as i32;
                    (b.d, b.d * sum as f32, &b.qs[QK * g..QK * (g + 1)])
                }
            }
        };
        let xbs = m.div_ceil(TR);
        let mut tiles = vec![[0u8; 512]; xbs * kb];
        let mut scales = vec![[0f32; TR]; xbs * kb];
        let mut sums = vec![[0f32; TR]; xbs * kb];
        for i in 0..m {
            let (b, n) = (i / TR, i % TR);
            for c in 0..kb {
                let (d, s, qs) = block(i, c);
                let t = &mut tiles[b * kb + c];
                for r in 0..QK / 4 {
                    for e in 0..4 {
                        t[r * 64 + n * 4 + e] = qs[4 * r + e] as u8;
                    }
                }
                scales[b * kb + c][n] = d;
                sums[b * kb + c][n] = s;
            }
        }
        Some(Acts {
            tiles,
            scales,
            sums,
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

/// `out[j·m + i] = row(j) · x_i` for the `out.len() / m` weight rows `row(j)` of `dtype` (one
/// that [`takes`]) and the activation rows packed in `acts`.
pub fn rows_times<'a>(
    dtype: DType,
    row: &impl Fn(usize) -> &'a [u8],
    acts: &Acts,
    out: &mut [f32],
) {
    assert!(takes(dtype), "{dtype:?} weights on the integer tiles");
    let (m, kb) = (acts.m, acts.kb);
    let n = out.len() / m;
    assert_eq!(out.len(), n * m);
    let wbs = n.div_ceil(TR);
    let k = kb * QK;
    WEIGHTS.with_borrow_mut(|p| {
        // (rows past `n` in the last block are cleared: their sums are not stored, but the
        // bytes must be defined)
        p.tiles.clear();
        p.tiles.resize(wbs * kb, [0; 512]);
        p.alpha.clear();
        p.alpha.resize(wbs * kb, [0.0; TR]);
        p.beta.clear();
        p.beta.resize(wbs * kb, [0.0; TR]);
        // SAFETY: the CPU has AVX2, FMA and F16C (every CPU with AMX does).
        let unpacked = unsafe { unpack::for_dtype(dtype) }.filter(|_| dtype != DType::Q8_0);
        let (mut u, mut q, mut scale, mut d, mut beta) = match unpacked {
            Some(_) => (
                vec![0u8; k],
                vec![0u8; k],
                vec![0f32; k / 4],
                vec![0f32; k.div_ceil(256)],
                vec![0f32; k / 16],
            ),
            None => Default::default(),
        };
        for j in 0..n {
            let bytes = row(j);
            let (b, r) = (j / TR, j % TR);
            match unpacked {
                // Q8_0: its signed values as they lie, no offset
                None => {
                    assert!(
                        bytes.len() >= kb * Q8_0_BYTES,
                        "weight row {j} holds {kb} blocks"
                    );
                    for c in 0..kb {
                        let blk = &bytes[c * Q8_0_BYTES..(c + 1) * Q8_0_BYTES];
                        p.tiles[b * kb + c][r * QK..(r + 1) * QK].copy_from_slice(&blk[2..]);
                        p.alpha[b * kb + c][r] =
                            half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    }
                }
                Some((f, form)) => {
                    f(
                        bytes,
                        RowMut {
                            u: &mut u,
                            q: &mut q,
                            scale: bytemuck::cast_slice_mut(&mut scale),
                            d: &mut d,
                            beta: &mut beta,
                        },
                    );
                    // (the K-quants: the integer scale of the block's first 16, which its
                    // second 16 share in Q4_K and Q5_K, times the super-block's d)
                    let words: &[u32] = bytemuck::cast_slice(&scale);
                    for c in 0..kb {
                        p.tiles[b * kb + c][r * QK..(r + 1) * QK]
                            .copy_from_slice(&u[c * QK..(c + 1) * QK]);
                        p.alpha[b * kb + c][r] = match form {
                            Form::Float => scale[c * QK / 4],
                            Form::Int => d[c / 8] * words[2 * c] as u16 as i16 as f32,
                        };
                        p.beta[b * kb + c][r] = beta[c * QK / 16];
                    }
                }
            }
        }
        // SAFETY: the CPU has the tiles and AVX-512 F (`enabled`, which `acts` required);
        // the packed buffers hold `wbs` and `acts.m.div_ceil(16)` blocks of `kb` tiles.
        unsafe { products(p, acts, n, unpacked.is_none(), out) };
    });
}

/// A chunk's weight rows packed: per 16 rows and block, the tile of their bytes, and each
/// row's `α` and `β`.
#[derive(Default)]
struct Packed {
    tiles: Vec<[u8; 512]>,
    alpha: Vec<[f32; TR]>,
    beta: Vec<[f32; TR]>,
}

thread_local! {
    /// Each thread's packed weight rows.
    static WEIGHTS: std::cell::RefCell<Packed> = std::cell::RefCell::new(Packed::default());
}

/// Every weight tile against every activation tile, into `out`.
///
/// `signed`: the weights' bytes are `i8` (Q8_0: `tdpbssd`, no `β`), else `u8` (`tdpbusd`).
///
/// # Safety
/// The CPU has AMX-TILE, AMX-INT8 and AVX-512 F, with the process's leave to use the tiles;
/// `p` holds `n.div_ceil(16)` blocks of `acts.kb`.
#[target_feature(enable = "avx512f")]
unsafe fn products(p: &Packed, acts: &Acts, n: usize, signed: bool, out: &mut [f32]) {
    let (m, kb) = (acts.m, acts.kb);
    let (wbs, xbs) = (n.div_ceil(TR), m.div_ceil(TR));
    let (tiles, alpha, beta) = (&p.tiles, &p.alpha, &p.beta);
    assert!(tiles.len() >= wbs * kb && alpha.len() >= wbs * kb && beta.len() >= wbs * kb);
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
                        if signed {
                            tdp!("tdpbssd", "0", "1", "2");
                        } else {
                            tdp!("tdpbusd", "0", "1", "2");
                        }
                    } else {
                        tload!("4", w(c), 32usize);
                        tload!("5", x(c), 64usize);
                        asm!("tilezero tmm3", options(nomem, nostack, preserves_flags));
                        if signed {
                            tdp!("tdpbssd", "3", "4", "5");
                        } else {
                            tdp!("tdpbusd", "3", "4", "5");
                        }
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
                    let (aw, bw) = (&alpha[wb * kb + c], &beta[wb * kb + c]);
                    for (r, a) in acc.iter_mut().enumerate() {
                        let v = _mm512_cvtepi32_ps(_mm512_loadu_si512(s.add(r * TR).cast()));
                        *a = _mm512_fmadd_ps(v, _mm512_mul_ps(dx, _mm512_set1_ps(aw[r])), *a);
                    }
                    if !signed {
                        let sx = _mm512_loadu_ps(acts.sums[xb * kb + c].as_ptr());
                        for (r, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(bw[r]), sx, *a);
                        }
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

    /// Weight rows of each format through the tiles equal the plain sums of the rounded
    /// activations times the weights' values (the same integers, summed in another order):
    /// weight and activation rows in whole and partial tiles, one block and several, odd and
    /// even counts. The weights are arbitrary bytes with their scales (and mins) set to modest
    /// f16 values, so every bit pattern of the values meets the tiles.
    #[test]
    fn tiles_equal_plain_sums() {
        if !enabled() {
            return;
        }
        let formats = [
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
            DType::Q4K,
            DType::Q5K,
        ];
        for (f, dtype) in formats.into_iter().enumerate() {
            let elems = dtype.block_elems();
            let block = dtype.bytes_for(elems).expect("a block format");
            // (the K-quants' d and dmin lie where Q4_1's d and m do)
            let mins = matches!(dtype, DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K);
            let shapes = [
                (1, 1, 32),
                (16, 16, 64),
                (13, 5, 96),
                (33, 17, 160),
                (3, 20, 256),
                (40, 70, 512),
            ];
            for (n, m, k) in shapes.into_iter().filter(|s| s.2 % elems == 0) {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                    .collect();
                let mut bytes: Vec<u8> = (0..n * k / elems * block)
                    .map(|i| ((i * 131 + 17 * f) % 251) as u8)
                    .collect();
                for (b, blk) in bytes.chunks_exact_mut(block).enumerate() {
                    let d = half::f16::from_f32(0.01 + (b % 7) as f32 * 0.003);
                    blk[..2].copy_from_slice(&d.to_le_bytes());
                    if mins {
                        let m = half::f16::from_f32((b % 5) as f32 * 0.02 - 0.04);
                        blk[2..4].copy_from_slice(&m.to_le_bytes());
                    }
                }
                let q = QActs::quantize(dtype, &x, k).expect("8-bit activations");
                let acts = Acts::new(&q).expect("the tiles run");
                let per = k / elems * block;
                let mut out = vec![f32::NAN; n * m];
                rows_times(dtype, &|j| &bytes[j * per..(j + 1) * per], &acts, &mut out);
                // each activation row's values as the tiles meet them
                let xv: Vec<f32> = match &q {
                    QActs::B32 { blocks, .. } => blocks
                        .iter()
                        .flat_map(|b| b.qs.map(|v| b.d * v as f32))
                        .collect(),
                    QActs::K { blocks, .. } => blocks
                        .iter()
                        .flat_map(|b| b.qs.map(|v| b.d * v as f32))
                        .collect(),
                };
                let mut wv = vec![0f32; n * k];
                assert!(weft_graph::quant::dequantize(dtype, &bytes, &mut wv));
                for j in 0..n {
                    for i in 0..m {
                        let mut want = 0f64;
                        for c in 0..k {
                            want += wv[j * k + c] as f64 * xv[i * k + c] as f64;
                        }
                        let got = out[j * m + i] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{dtype:?} {n}×{m}×{k}: w{j}·x{i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

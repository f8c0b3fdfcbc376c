//! Prompt matmuls of quantized weights in integer register tiles, with AVX-512 VNNI: weight
//! rows, unpacked four at a time ([`super::unpack`]), meet activation rows 64 elements at a
//! time. The 32-element-block formats meet them in 4 × 3 tiles, each pair in one `vpdpbusd`
//! (u8 × i8, four products summed per 32-bit lane), scaled in f32 by the lanes' `α·d`. The
//! K-quants meet them in 4 × 2 tiles that stay in integers through a super-block: `vpmaddubsw`
//! (u8 × i8 pairs to i16), then `vpdpwssd` with the sub-blocks' integer scales, and one f32
//! multiply-add per pair and 256 elements. The weights' offsets and mins (`β`) meet the
//! activations' sums per 16 elements once per row pair. The activations are the same 8-bit
//! rows as [`Acts`]' (same blocks, same rounding), so the sums equal the one-row kernels' up
//! to the order of f32 additions.

use super::unpack::{self, Form, RowMut, Unpack};
use super::{Acts, QK, QKK};
use std::arch::x86_64::*;
use weft_graph::DType;

/// Whether this CPU runs the tiles (AVX-512 F, BW and VNNI, and what the unpacking uses).
pub fn supported() -> bool {
    super::avx2::supported()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// 64 bytes on a cache line: the tiles' 64-byte loads never straddle two lines.
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Activation rows as the tiles read them: `q` (`k` per row), the block scale `d` and
/// `s = d·Σq` per 16 elements (`k / 16` each per row).
#[derive(Debug)]
struct LaneActs {
    k: usize,
    q: Vec<Line>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl LaneActs {
    fn new(acts: &Acts, k: usize) -> LaneActs {
        let (mut d, mut s) = (vec![], vec![]);
        let elems = match acts {
            Acts::B32 { blocks, .. } => blocks.len() * QK,
            Acts::K { blocks, .. } => blocks.len() * QKK,
        };
        let mut lines = vec![Line([0; 64]); elems / 64];
        let q: &mut [i8] = bytemuck::cast_slice_mut(&mut lines);
        match acts {
            Acts::B32 { blocks, .. } => {
                for (b, q) in blocks.iter().zip(q.chunks_exact_mut(QK)) {
                    q.copy_from_slice(&b.qs);
                    for half in b.qs.chunks_exact(QK / 2) {
                        d.push(b.d);
                        s.push(b.d * half.iter().map(|&v| v as i32).sum::<i32>() as f32);
                    }
                }
            }
            Acts::K { blocks, .. } => {
                for (b, q) in blocks.iter().zip(q.chunks_exact_mut(QKK)) {
                    q.copy_from_slice(&b.qs);
                    d.extend([b.d; QKK / 16]);
                    s.extend(b.bsums.iter().map(|&v| b.d * v as f32));
                }
            }
        }
        LaneActs { k, q: lines, d, s }
    }

    fn rows(&self) -> usize {
        self.q.len() * 64 / self.k
    }

    fn row(&self, i: usize) -> ActRow<'_> {
        let (k, g) = (self.k, self.k / 16);
        ActRow {
            q: &bytemuck::cast_slice(&self.q)[i * k..(i + 1) * k],
            d: &self.d[i * g..(i + 1) * g],
            s: &self.s[i * g..(i + 1) * g],
        }
    }
}

#[derive(Clone, Copy)]
struct ActRow<'a> {
    q: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
}

/// An unpacked weight row (see [`RowMut`]).
#[derive(Clone, Copy)]
struct WeightRow<'a> {
    u: &'a [u8],
    scale: &'a [u8],
    d: &'a [f32],
    beta: &'a [f32],
}

impl<'a> WeightRow<'a> {
    fn alpha(&self) -> &'a [f32] {
        bytemuck::cast_slice(self.scale)
    }

    fn scales(&self) -> &'a [i16] {
        bytemuck::cast_slice(self.scale)
    }
}

/// Four weight rows unpacked, kept per worker between chunks.
#[derive(Default)]
struct Unpacked {
    u: Vec<Line>,
    scale: Vec<Line>,
    d: Vec<f32>,
    beta: Vec<f32>,
}

impl Unpacked {
    /// Room for four rows of `k` (a multiple of 64).
    fn fit(&mut self, k: usize) {
        self.u.resize(4 * k / 64, Line([0; 64]));
        self.scale.resize(4 * k / 64, Line([0; 64]));
        self.d.resize(4 * k.div_ceil(256), 0.0);
        self.beta.resize(k / 4, 0.0);
    }

    fn row_mut(&mut self, j: usize, k: usize) -> RowMut<'_> {
        let nd = k.div_ceil(256);
        RowMut {
            u: &mut bytemuck::cast_slice_mut(&mut self.u)[j * k..(j + 1) * k],
            scale: &mut bytemuck::cast_slice_mut(&mut self.scale)[j * k..(j + 1) * k],
            d: &mut self.d[j * nd..(j + 1) * nd],
            beta: &mut self.beta[j * k / 16..(j + 1) * k / 16],
        }
    }

    fn row(&self, j: usize, k: usize) -> WeightRow<'_> {
        let nd = k.div_ceil(256);
        WeightRow {
            u: &bytemuck::cast_slice(&self.u)[j * k..(j + 1) * k],
            scale: &bytemuck::cast_slice(&self.scale)[j * k..(j + 1) * k],
            d: &self.d[j * nd..(j + 1) * nd],
            beta: &self.beta[j * k / 16..(j + 1) * k / 16],
        }
    }
}

thread_local! {
    static UNPACKED: std::cell::RefCell<Unpacked> = std::cell::RefCell::default();
}

/// A quantized weight's products with a prompt's activation rows, in tiles.
#[derive(Debug)]
pub struct Gemm {
    unpack: Unpack,
    form: Form,
    acts: LaneActs,
}

impl Gemm {
    /// The tiles for weights of `dtype` meeting `acts` (rows `k` long); `None` where the CPU
    /// lacks AVX-512 VNNI, `dtype` has no unpacking or `k` is not a multiple of 64.
    pub fn new(dtype: DType, acts: &Acts, k: usize) -> Option<Gemm> {
        if !supported() || k == 0 || !k.is_multiple_of(64) {
            return None;
        }
        // SAFETY: `supported` (checked above) includes AVX2, FMA and F16C.
        let (unpack, form) = unsafe { unpack::for_dtype(dtype) }?;
        if form == Form::Int && !k.is_multiple_of(256) {
            return None;
        }
        Some(Gemm {
            unpack,
            form,
            acts: LaneActs::new(acts, k),
        })
    }

    /// `out[jj·m + i] = row(jj) · x_i` for the `out.len() / m` weight rows (`m` activation
    /// rows): rows unpacked four at a time, each four meeting every activation row.
    pub fn rows<'a>(&self, row: impl Fn(usize) -> &'a [u8], out: &mut [f32]) {
        match self.form {
            // SAFETY (both): `new` checked AVX-512 F, BW and VNNI.
            Form::Float => self.rows_in(row, out, |w, x, k| unsafe { float_tile::<4, 3>(w, x, k) }),
            Form::Int => self.rows_in(row, out, |w, x, k| unsafe { int_tile::<4, 2>(w, x, k) }),
        }
    }

    /// [`Gemm::rows`] in tiles of `RA` activation rows by `tile`, four weight rows at a time.
    fn rows_in<'a, const RA: usize>(
        &self,
        row: impl Fn(usize) -> &'a [u8],
        out: &mut [f32],
        tile: impl Fn([WeightRow; 4], [ActRow; RA], usize) -> [[f32; RA]; 4],
    ) {
        let (k, m) = (self.acts.k, self.acts.rows());
        let n = out.len() / m;
        UNPACKED.with_borrow_mut(|buf| {
            buf.fit(k);
            for j0 in (0..n).step_by(4) {
                let nj = (n - j0).min(4);
                for jj in 0..nj {
                    (self.unpack)(row(j0 + jj), buf.row_mut(jj, k));
                }
                let ws = [0, 1, 2, 3].map(|jj: usize| buf.row(jj.min(nj - 1), k));
                for i0 in (0..m).step_by(RA) {
                    let ni = (m - i0).min(RA);
                    let xs = std::array::from_fn(|ii: usize| self.acts.row(i0 + ii.min(ni - 1)));
                    let t = tile(ws, xs, k);
                    for (jj, tr) in t.iter().enumerate().take(nj) {
                        let o = (j0 + jj) * m + i0;
                        // (a loop: a copy of two or three values is not worth a call)
                        for (d, v) in out[o..o + ni].iter_mut().zip(tr) {
                            *d = *v;
                        }
                    }
                }
            }
        });
    }
}

/// The `RW × RA` products of [`Form::Float`] weight rows `w` and activation rows `x`, `k` (a
/// multiple of 64) long.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn float_tile<const RW: usize, const RA: usize>(
    w: [WeightRow; RW],
    x: [ActRow; RA],
    k: usize,
) -> [[f32; RA]; RW] {
    assert!(k.is_multiple_of(64));
    assert!(
        w.iter()
            .all(|r| r.u.len() >= k && r.scale.len() >= k && r.beta.len() >= k / 16)
    );
    assert!(
        x.iter()
            .all(|r| r.q.len() >= k && r.d.len() >= k / 16 && r.s.len() >= k / 16)
    );
    // lane l of 16 takes the scale of its group of 16 elements, l / 4
    let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let alpha_rows = w.map(|r| r.alpha());
    let mut acc = [[_mm512_setzero_ps(); RA]; RW];
    for c in 0..k / 64 {
        // SAFETY: every row holds at least `k` elements, so chunk `c` and its scales exist
        // (asserted above); unaligned loads.
        unsafe {
            // (loops rather than `map`, whose closures would not inherit AVX-512)
            let mut u = [_mm512_setzero_si512(); RW];
            let mut alpha = [_mm512_setzero_ps(); RW];
            for j in 0..RW {
                u[j] = _mm512_loadu_si512(w[j].u.as_ptr().add(64 * c).cast());
                alpha[j] = _mm512_loadu_ps(alpha_rows[j].as_ptr().add(16 * c));
            }
            for i in 0..RA {
                let q = _mm512_loadu_si512(x[i].q.as_ptr().add(64 * c).cast());
                let d4 = _mm_loadu_ps(x[i].d.as_ptr().add(4 * c));
                let d = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(d4));
                for j in 0..RW {
                    let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[j], q);
                    let scale = _mm512_mul_ps(alpha[j], d);
                    acc[j][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc[j][i]);
                }
            }
        }
    }
    add_offsets(&w, &x, k, &mut acc);
    sums(&acc)
}

/// The `RW × RA` products of [`Form::Int`] weight rows `w` and activation rows `x`, `k` (a
/// multiple of 256) long: each pair's super-block sums in i32, `Σ scale · Σ u·q` (u8 × i8 pairs
/// to i16, then i16 × i16 with the scales), then `d_w·d_x` times that in f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn int_tile<const RW: usize, const RA: usize>(
    w: [WeightRow; RW],
    x: [ActRow; RA],
    k: usize,
) -> [[f32; RA]; RW] {
    assert!(k.is_multiple_of(256));
    let blocks = k / 256;
    assert!(w.iter().all(|r| {
        r.u.len() >= k && r.scale.len() >= k && r.d.len() >= blocks && r.beta.len() >= k / 16
    }));
    assert!(
        x.iter()
            .all(|r| r.q.len() >= k && r.d.len() >= k / 16 && r.s.len() >= k / 16)
    );
    let scale_rows = w.map(|r| r.scales());
    let mut acc = [[_mm512_setzero_ps(); RA]; RW];
    let mut sum = [[_mm512_setzero_si512(); RA]; RW];
    for c in 0..k / 64 {
        // SAFETY: every row holds at least `k` elements and their scales (asserted
        // above); unaligned loads.
        unsafe {
            let mut u = [_mm512_setzero_si512(); RW];
            let mut sc = [_mm512_setzero_si512(); RW];
            for j in 0..RW {
                u[j] = _mm512_loadu_si512(w[j].u.as_ptr().add(64 * c).cast());
                sc[j] = _mm512_loadu_si512(scale_rows[j].as_ptr().add(32 * c).cast());
            }
            for i in 0..RA {
                let q = _mm512_loadu_si512(x[i].q.as_ptr().add(64 * c).cast());
                for j in 0..RW {
                    let pairs = _mm512_maddubs_epi16(u[j], q);
                    sum[j][i] = _mm512_dpwssd_epi32(sum[j][i], pairs, sc[j]);
                }
            }
        }
        if c % 4 == 3 {
            let b = c / 4;
            for i in 0..RA {
                // the activations' one scale per super-block
                let dx = x[i].d[16 * b];
                for j in 0..RW {
                    let scale = _mm512_set1_ps(w[j].d[b] * dx);
                    acc[j][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[j][i]), scale, acc[j][i]);
                    sum[j][i] = _mm512_setzero_si512();
                }
            }
        }
    }
    add_offsets(&w, &x, k, &mut acc);
    sums(&acc)
}

/// Adds each pair's `Σ β·s` over its groups of 16 elements to its accumulator, 16 groups at a
/// time.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn add_offsets<const RW: usize, const RA: usize>(
    w: &[WeightRow; RW],
    x: &[ActRow; RA],
    k: usize,
    acc: &mut [[__m512; RA]; RW],
) {
    let groups = k / 16;
    assert!(w.iter().all(|r| r.beta.len() >= groups) && x.iter().all(|r| r.s.len() >= groups));
    for g in (0..groups).step_by(16) {
        let mask: __mmask16 = if groups - g >= 16 {
            0xFFFF
        } else {
            (1u16 << (groups - g)) - 1
        };
        // SAFETY: the masked lanes lie within the rows' `k / 16` scales (asserted above).
        unsafe {
            let mut beta = [_mm512_setzero_ps(); RW];
            for j in 0..RW {
                beta[j] = _mm512_maskz_loadu_ps(mask, w[j].beta.as_ptr().add(g));
            }
            for i in 0..RA {
                let s = _mm512_maskz_loadu_ps(mask, x[i].s.as_ptr().add(g));
                for j in 0..RW {
                    acc[j][i] = _mm512_fmadd_ps(beta[j], s, acc[j][i]);
                }
            }
        }
    }
}

/// Each accumulator's lanes summed.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn sums<const RW: usize, const RA: usize>(acc: &[[__m512; RA]; RW]) -> [[f32; RA]; RW] {
    let mut out = [[0.0f32; RA]; RW];
    for j in 0..RW {
        for i in 0..RA {
            out[j][i] = _mm512_reduce_add_ps(acc[j][i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{lcg, random_row};
    use super::*;
    use crate::cpu::qdot::Kernel;

    /// Each unpacked element `α·u + β` equals the dequantized weight.
    #[test]
    fn unpacked_rows_equal_the_dequantized_rows() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut seed = 5u64;
        for dtype in DType::ALL.into_iter().filter(|d| d.is_quantized()) {
            let k = 512;
            let w = random_row(dtype, k, &mut seed);
            let mut want = vec![0.0f32; k];
            assert!(weft_graph::quant::dequantize(dtype, &w, &mut want));
            let mut buf = Unpacked::default();
            buf.fit(k);
            // SAFETY: `supported` (checked above) includes AVX2, FMA and F16C.
            let (unpack, form) = unsafe { unpack::for_dtype(dtype) }.expect("unpacking");
            unpack(&w, buf.row_mut(0, k));
            let r = buf.row(0, k);
            for e in 0..k {
                let alpha = match form {
                    Form::Float => r.alpha()[e / 4],
                    Form::Int => r.d[e / 256] * r.scales()[e / 2] as f32,
                };
                let got = alpha * r.u[e] as f32 + r.beta[e / 16];
                let tol = 1e-6 * (want[e].abs() + r.beta[e / 16].abs() + 1e-3);
                assert!(
                    (got - want[e]).abs() <= tol,
                    "{dtype} element {e}: {got} vs {}",
                    want[e]
                );
            }
        }
    }

    /// Every tile product equals the one-row kernel's, for shapes with short tiles on both
    /// sides.
    #[test]
    fn tiles_equal_the_one_row_products() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut seed = 9u64;
        for dtype in DType::ALL.into_iter().filter(|d| d.is_quantized()) {
            // the last two: a row length whose offsets' groups end in a partial vector (the
            // 32-element formats only), and activations all of one sign, where Q8_0's
            // `u = q + 128` and its `β = −128·d` cancel the most
            for (k, m, n, positive) in [
                (256, 1, 1, false),
                (512, 6, 7, false),
                (768, 9, 4, false),
                (256, 4, 5, false),
                (320, 8, 5, false),
                (512, 5, 3, true),
            ] {
                let x: Vec<f32> = (0..m * k)
                    .map(|_| lcg(&mut seed))
                    .map(|v| if positive { v.abs() } else { v })
                    .collect();
                let Some(acts) = Acts::quantize(dtype, &x, k) else {
                    assert_ne!(k % dtype.block_elems(), 0, "{dtype} k={k}");
                    continue; // (a K-quant at k = 320)
                };
                let rows: Vec<Vec<u8>> = (0..n).map(|_| random_row(dtype, k, &mut seed)).collect();
                let gemm = Gemm::new(dtype, &acts, k).expect("tiles");
                let mut out = vec![f32::NAN; n * m];
                gemm.rows(|j| &rows[j], &mut out);
                let kern = Kernel::for_dtype(dtype).expect("kernel");
                for (j, w) in rows.iter().enumerate() {
                    let mut wf = vec![0.0f32; k];
                    assert!(weft_graph::quant::dequantize(dtype, w, &mut wf));
                    for i in 0..m {
                        let xr = &x[i * k..(i + 1) * k];
                        let norm: f32 = wf.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
                        let want = kern.dot(w, &acts, i);
                        let got = out[j * m + i];
                        assert!(
                            (got - want).abs() <= 1e-5 * norm.max(1e-6),
                            "{dtype} k={k} w{j}·x{i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

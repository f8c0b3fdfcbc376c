//! Matrix products with weights of any dtype (quantized ones meet 8-bit activations in integer
//! dot products, bf16 ones activations rounded to bf16, others are decoded row by row), expert
//! products and row gathers.

#[cfg(target_arch = "x86_64")]
use super::qdot::gemm::Gemm;
use super::qdot::{Acts, F16Dot, F16Dot4, Kernel, half_kernel, half_kernel4};
use super::team;
use super::tensor::TensorRef;
use super::tile::{Half, half_rows_times, rows_times, weight_rows_per_tile};
use super::tile_bf16;
#[cfg(target_arch = "x86_64")]
use super::vmath::transpose8;
use crate::{BackendError, Result};
use weft_graph::DType;

/// `Σ a·b` with eight accumulators so the compiler vectorises it; on CPUs with AVX2 the same
/// code compiled for 8-wide registers (the same sums in the same order, so the same result).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked above.
        return unsafe { dot_avx2(a, b) };
    }
    dot_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

#[inline(always)]
pub(super) fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `o += p · v` (inlined into callers compiled for AVX2, like [`dot_body`]).
#[inline(always)]
pub(super) fn axpy_body(o: &mut [f32], p: f32, v: &[f32]) {
    o.iter_mut().zip(v).for_each(|(a, &b)| *a += p * b);
}

/// How a weight meets a block of activation rows: their 8-bit forms and the weight's integer
/// dot product (quantized weights), else the f16 or bf16 dot product straight from the weight's
/// bytes where the CPU has the kernel (bf16 weights with the rows rounded to bf16), else decoded
/// rows.
struct Meet {
    quantized: Option<(Kernel, Acts)>,
    /// Quantized weights meeting enough activation rows for the integer tiles (see
    /// [`Gemm::new`]), where the CPU has them.
    #[cfg(target_arch = "x86_64")]
    gemm: Option<Gemm>,
    /// f16 or bf16 weights' product straight from their bytes (prompts widen them in the
    /// register tiles instead, or multiply bf16 in `tile_bf16`'s).
    half: Option<F16Dot>,
    /// The same four weight rows at a time, for one activation row and rows of at most
    /// [`HALF4_MAX_K`].
    half4: Option<F16Dot4>,
    /// bf16 weights' activations, rounded to bf16 (see `tile_bf16`).
    bf16: Option<Bf16Acts>,
    /// f16 or bf16 weights' activation rows woven into panels, for prompts of at least
    /// [`PANEL_MIN_ROWS`] rows where the CPU has the panels (and bf16 weights no `vdpbf16ps`
    /// tiles).
    #[cfg(target_arch = "x86_64")]
    panel: Option<super::panel::Acts>,
    /// f16 or bf16 weights' activation rows packed into AMX tiles, for prompts of at least
    /// [`AMX_MIN_ROWS`] rows where the CPU has them (instead of the panels).
    #[cfg(target_arch = "x86_64")]
    amx: Option<super::amx::Acts>,
    /// 32-element-format weights' activation rows (rounded to 8 bits as `quantized` holds
    /// them) packed into AMX-INT8 tiles, for prompts of at least [`AMX_INT8_MIN_ROWS`] rows where the CPU
    /// has them (instead of the integer register tiles).
    #[cfg(target_arch = "x86_64")]
    amx_int8: Option<super::amx_int8::Acts>,
}

/// Activation rows from which 16-bit float weights meet them in packed panels. Fewer fill
/// half a panel or less, where the panels' multiply-adds per weight widened halve: llama-1.1b
/// f16 pp16 78 tok/s in the register tiles against 66 in panels, pp32 89–91 against 92–102,
/// pp64 98–105 against 118–119 (Emerald Rapids, alternating); jamba-900m's experts, meeting
/// 16 rows each on average at pp64, took 139–141 ms in tiles, 148–157 in panels from 16 rows,
/// 135–145 from 32. The AVX2 forms on the same CPU (one thread, 2048 × 2048 f16 in chunks of
/// 60 rows): tiles 62–70 GFLOP/s against panels 57–62 at 16 rows, 71–72 against 72–73 at 32,
/// 71–72 against 76–79 at 64, 69–70 against 78 at 512.
#[cfg(target_arch = "x86_64")]
const PANEL_MIN_ROWS: usize = 32;

/// Activation rows from which 16-bit float weights meet them on AMX tiles: each chunk of
/// weight rows is packed into tiles for every product, which fewer rows do not repay.
/// llama-1.1b f16 on a 2-core Emerald Rapids (the panels against the tiles, one binary,
/// alternating; a noisy hour): pp32 79–81 tok/s against 56–73, pp64 85–89 against 87–109,
/// pp128 83–89 against 84–101, pp256 75–77 against 128–131.
#[cfg(target_arch = "x86_64")]
const AMX_MIN_ROWS: usize = 64;

/// Activation rows from which the 32-element formats' weights meet them on AMX-INT8 tiles
/// (their packing copies or unpacks bytes): llama-1.1b Q8_0, the integer register tiles against the AMX tiles (one binary,
/// alternating): pp8 36–51 tok/s against 44–47, pp16 71–87 against 77–86, pp32 96–100
/// against 125–133, pp64 106–123 against 155–168, pp512 106–111 against 206–208.
#[cfg(target_arch = "x86_64")]
const AMX_INT8_MIN_ROWS: usize = 32;

/// Activation rows `x` (`[m, k]`) woven into panels for 16-bit float weights of `dtype`
/// meeting at least [`PANEL_MIN_ROWS`] of them, where prompts take the panels; bf16 weights'
/// activations rounded to bf16 first (as every path rounds them: `tile_bf16`).
#[cfg(target_arch = "x86_64")]
fn panel_acts(dtype: DType, x: &[f32], k: usize) -> Option<super::panel::Acts> {
    use super::tile::avx2::Bf16Row;
    let half = Half::of(dtype)?;
    if k == 0 || x.len() / k < PANEL_MIN_ROWS || !super::panel::enabled() {
        return None;
    }
    let m = x.len() / k;
    match half {
        Half::F16 => super::panel::Acts::new(|i: usize| &x[i * k..(i + 1) * k], m, k),
        Half::Bf16 => {
            let rounded = tile_bf16::round_rows(x);
            let bytes: &[u8] = bytemuck::cast_slice(&rounded);
            super::panel::Acts::new(|i: usize| Bf16Row(&bytes[2 * i * k..2 * (i + 1) * k]), m, k)
        }
    }
}

/// Activation rows rounded to bf16: packed for the `vdpbf16ps` tiles (prompts, where the CPU
/// has them), else as the f32 values they round to, for the f32 paths.
enum Bf16Acts {
    Packed(Vec<u16>),
    Values(Vec<f32>),
}

impl Bf16Acts {
    fn new(x: &[f32], k: usize) -> Bf16Acts {
        if k > 0 && x.len() >= 4 * k && tile_bf16::available() {
            Bf16Acts::Packed(tile_bf16::round_rows(x))
        } else {
            Bf16Acts::Values(x.iter().map(|&v| tile_bf16::round_value(v)).collect())
        }
    }
}

impl Meet {
    fn new(w: &TensorRef, x: &[f32]) -> Meet {
        let k = w.row_len();
        let quantized = Kernel::for_dtype(w.dtype).zip(Acts::quantize(w.dtype, x, k));
        #[cfg(target_arch = "x86_64")]
        let amx = (k > 0 && x.len() / k >= AMX_MIN_ROWS)
            .then(|| super::amx::Acts::new(w.dtype, x, k))
            .flatten();
        #[cfg(target_arch = "x86_64")]
        let panel = amx.is_none().then(|| panel_acts(w.dtype, x, k)).flatten();
        #[cfg(target_arch = "x86_64")]
        let panelled = panel.is_some() || amx.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        let panelled = false;
        #[cfg(target_arch = "x86_64")]
        let amx_int8 = quantized
            .as_ref()
            .filter(|(_, acts)| super::amx_int8::takes(w.dtype) && acts.rows() >= AMX_INT8_MIN_ROWS)
            .and_then(|(_, acts)| super::amx_int8::Acts::new(acts));
        Meet {
            #[cfg(target_arch = "x86_64")]
            gemm: quantized
                .as_ref()
                .filter(|_| amx_int8.is_none())
                .and_then(|(_, acts)| Gemm::new(w.dtype, acts, k)),
            quantized,
            half: Half::of(w.dtype).and_then(half_kernel),
            half4: Half::of(w.dtype)
                .filter(|_| k <= HALF4_MAX_K)
                .and_then(half_kernel4),
            bf16: (w.dtype == DType::BF16 && !panelled).then(|| Bf16Acts::new(x, k)),
            #[cfg(target_arch = "x86_64")]
            panel,
            #[cfg(target_arch = "x86_64")]
            amx,
            #[cfg(target_arch = "x86_64")]
            amx_int8,
        }
    }

    /// Weight rows per chunk of work: at least `parts` chunks over `n` rows, whole register
    /// tiles (at least one) where the tiles meet several activation rows.
    fn rows_per_chunk(&self, n: usize, parts: usize, m: usize) -> usize {
        let r = (n / parts.max(1)).clamp(4, 64);
        let tile = self.tile_rows(m);
        r.max(tile) / tile * tile
    }

    /// Weight rows per register tile of the kernel that meets `m` activation rows.
    fn tile_rows(&self, m: usize) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.gemm.is_some() {
            return super::qdot::gemm::TILE_ROWS;
        }
        #[cfg(target_arch = "x86_64")]
        if self.panel.is_some() {
            return super::panel::weight_rows();
        }
        #[cfg(target_arch = "x86_64")]
        if self.amx.is_some() {
            return super::amx::WEIGHT_ROWS;
        }
        #[cfg(target_arch = "x86_64")]
        if self.amx_int8.is_some() {
            return super::amx_int8::WEIGHT_ROWS;
        }
        if m < 4 || self.quantized.is_some() {
            1
        } else if let Some(Bf16Acts::Packed(_)) = self.bf16 {
            tile_bf16::WEIGHT_ROWS
        } else {
            weight_rows_per_tile()
        }
    }

    /// `out[jj·m + i] = x_i · w_row(row0 + jj)` for the `out.len() / m` rows from `row0`.
    fn rows(&self, w: &TensorRef, row0: usize, x: &[f32], m: usize, out: &mut [f32]) {
        let k = w.row_len();
        let x = match &self.bf16 {
            Some(Bf16Acts::Packed(rounded)) => {
                debug_assert_eq!(rounded.len(), x.len(), "the rows this Meet was made for");
                if tile_bf16::rows_times(|jj| w.row_bytes(row0 + jj), rounded, k, out) {
                    return;
                }
                unreachable!("bf16 activations are packed only for CPUs with the tiles");
            }
            Some(Bf16Acts::Values(rounded)) => {
                debug_assert_eq!(rounded.len(), x.len(), "the rows this Meet was made for");
                rounded
            }
            None => x,
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(gemm) = &self.gemm {
            gemm.rows(|jj| w.row_bytes(row0 + jj), out);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(acts) = &self.amx_int8 {
            debug_assert_eq!(acts.rows(), m, "the rows this Meet was made for");
            super::amx_int8::rows_times(w.dtype, &|jj: usize| w.row_bytes(row0 + jj), acts, out);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(acts) = &self.amx {
            debug_assert_eq!(acts.rows(), m, "the rows this Meet was made for");
            let bytes = |jj: usize| w.row_bytes(row0 + jj);
            super::amx::rows_times(w.dtype, &bytes, acts, out);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(acts) = &self.panel {
            debug_assert_eq!(acts.rows(), m, "the rows this Meet was made for");
            let bytes = |jj: usize| w.row_bytes(row0 + jj);
            super::panel::rows_times_half(w.dtype, &bytes, acts, out);
            return;
        }
        match (&self.quantized, self.half) {
            (Some((kern, acts)), _) if m == 1 => {
                kern.dot_each(w.rows_bytes(row0, out.len()), acts, out)
            }
            (Some((kern, acts)), _) => {
                for (jj, col) in out.chunks_mut(m).enumerate() {
                    kern.dot_rows(w.row_bytes(row0 + jj), acts, col);
                }
            }
            // prompts: f16 and bf16 rows widened as the register tiles load them
            (None, Some(_))
                if m >= 4
                    && Half::of(w.dtype).is_some_and(|format| {
                        half_rows_times(format, |jj| w.row_bytes(row0 + jj), x, k, out)
                    }) => {}
            // other dtypes: the rows decoded once, then register tiles
            (None, _) if m >= 4 => DECODED.with_borrow_mut(|buf| {
                let need = out.len() / m * k;
                if buf.len() < need {
                    buf.resize(need, 0.0);
                }
                let buf = &mut buf[..need];
                for (jj, row) in buf.chunks_exact_mut(k).enumerate() {
                    w.row_into(row0 + jj, row);
                }
                rows_times(buf, x, k, out);
            }),
            (None, Some(half)) => {
                let mut rows = w.rows_bytes(row0, out.len() / m);
                let mut out = out;
                if let Some(half4) = self.half4.filter(|_| m == 1) {
                    let (fours, rest) = out.split_at_mut(out.len() / 4 * 4);
                    for o in fours.chunks_exact_mut(4) {
                        let r: [&[u8]; 4] =
                            std::array::from_fn(|_| rows.next().expect("a row per output"));
                        o.copy_from_slice(&half4(r, x));
                    }
                    out = rest;
                }
                for (wrow, col) in rows.zip(out.chunks_mut(m)) {
                    for (i, o) in col.iter_mut().enumerate() {
                        *o = half(wrow, &x[i * k..(i + 1) * k]);
                    }
                }
            }
            (None, None) => {
                let mut buf = vec![0.0f32; k];
                for (jj, col) in out.chunks_mut(m).enumerate() {
                    w.row_into(row0 + jj, &mut buf);
                    for (i, o) in col.iter_mut().enumerate() {
                        *o = dot(&x[i * k..(i + 1) * k], &buf);
                    }
                }
            }
        }
    }
}

/// The longest 16-bit weight rows a decode mat-vec meets four at a time. A Mamba `dt`
/// projection's rows (48 to 256 long) then save one row's latency and horizontal sum each
/// (mamba-130m, 1536 rows of 48, Zen 3: the scan's whole `dt`, product and softplus, from 22
/// to 14 µs a layer); long rows read as four streams at once ran slower (mamba-130m f16
/// generation, paired runs).
const HALF4_MAX_K: usize = 256;

thread_local! {
    /// Each worker's decoded weight rows, kept between chunks.
    static DECODED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each worker's `[rows, M]` results of a chunk bound for an `[M, N]` output.
    static RESULTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[m][j] = x[m] · w_row(row0 + j)` for `j < n`, `x` dense `[M, K]`.
fn product(x: &[f32], m: usize, w: &TensorRef, row0: usize, n: usize, out: &mut [f32]) {
    let meet = Meet::new(w, x);
    let p = Product {
        w,
        row0,
        n,
        x,
        m,
        meet: &meet,
    };
    // (`[N, M]` and `[M, N]` are one layout when M = 1)
    if m == 1 {
        products(&[p], vec![Out::ByWeightRow(out)]);
    } else {
        let cols = Columns::new(out, n);
        products(&[p], vec![Out::Into(&cols, None)]);
    }
}

/// Weight rows `row0 .. row0 + n` of `w` times `m` dense activation rows `x` (which `meet`
/// prepared for `w`): one of the products [`products`] computes in one dispatch.
struct Product<'a> {
    w: &'a TensorRef<'a>,
    row0: usize,
    n: usize,
    x: &'a [f32],
    m: usize,
    meet: &'a Meet,
}

/// Where a product's results go.
enum Out<'o> {
    /// `[N, M]`: each chunk of weight rows writes its own part.
    ByWeightRow(&'o mut [f32]),
    /// Rows of an output `[R, N]` (a matmul's own layout): result row `i` (the product with
    /// activation row `i`) is output row `rows[i]`, or `i` without a list. Each chunk of
    /// weight rows writes its columns of those rows; no two products may write one row.
    Into(&'o Columns<'o>, Option<&'o [usize]>),
}

/// A chunk of a product's weight rows: `rows` of them from `j0`, and where its results go
/// (its part of an [`Out::ByWeightRow`] output, or its columns of an [`Out::Into`] one).
struct Chunk<'o> {
    product: usize,
    j0: usize,
    rows: usize,
    out: ChunkOut<'o>,
}

enum ChunkOut<'o> {
    Part(&'o mut [f32]),
    Into(&'o Columns<'o>, Option<&'o [usize]>),
}

/// Each product `ps[i]` into `outs[i]` in one dispatch of the team: every product's weight
/// rows in chunks (each chunk meets them with all of its activation rows), all handed out at
/// once, so one layer's several weights or experts wait on one barrier, not one each. A chunk
/// bound for [`Out::Into`] computes its `[rows, M]` results in a buffer of its thread, then
/// writes them to its columns of the output's rows: the transposition (and an expert's
/// scatter) is spread over the team and done while the results are in cache.
fn products(ps: &[Product], outs: Vec<Out>) {
    let team = team::global();
    let parts = (8 * team.threads()).div_ceil(ps.len().max(1));
    let mut chunks: Vec<Chunk> = vec![];
    for (i, (p, out)) in ps.iter().zip(outs).enumerate() {
        let per = p.meet.rows_per_chunk(p.n, parts, p.m);
        match out {
            Out::ByWeightRow(out) => {
                for (c, part) in out.chunks_mut(per * p.m).enumerate() {
                    chunks.push(Chunk {
                        product: i,
                        j0: c * per,
                        rows: part.len() / p.m,
                        out: ChunkOut::Part(part),
                    });
                }
            }
            Out::Into(cols, rows) => {
                assert!(rows.is_none_or(|r| r.len() == p.m) && cols.n == p.n);
                for j0 in (0..p.n).step_by(per) {
                    chunks.push(Chunk {
                        product: i,
                        j0,
                        rows: per.min(p.n - j0),
                        out: ChunkOut::Into(cols, rows),
                    });
                }
            }
        }
    }
    team.chunks_mut(&mut chunks, 1, |_, one| {
        let c = &mut one[0];
        let p = &ps[c.product];
        match &mut c.out {
            ChunkOut::Part(part) => p.meet.rows(p.w, p.row0 + c.j0, p.x, p.m, part),
            ChunkOut::Into(cols, rows) => RESULTS.with_borrow_mut(|t| {
                t.clear();
                t.resize(c.rows * p.m, 0.0);
                p.meet.rows(p.w, p.row0 + c.j0, p.x, p.m, t);
                // SAFETY: columns `j0 .. j0 + rows` of these output rows are this chunk's
                // alone (the chunks of a product split its columns, and no two products
                // write one row: see `Out::Into`).
                unsafe { cols.put(c.j0, p.m, t, *rows) };
            }),
        }
    });
}

/// An output `[R, N]` whose rows' column ranges chunks on several threads write at once (a
/// prompt's products; a scan's heads).
pub(super) struct Columns<'o> {
    ptr: *mut f32,
    n: usize,
    len: usize,
    _out: std::marker::PhantomData<&'o mut [f32]>,
}

// SAFETY: `Columns` is a `&mut [f32]` whose writers keep to their own places (see `put`).
unsafe impl Send for Columns<'_> {}
// SAFETY: as above.
unsafe impl Sync for Columns<'_> {}

impl<'o> Columns<'o> {
    pub(super) fn new(out: &'o mut [f32], n: usize) -> Columns<'o> {
        Columns {
            ptr: out.as_mut_ptr(),
            n,
            len: out.len(),
            _out: std::marker::PhantomData,
        }
    }

    /// Columns `j0 .. j0 + cols` of output row `rows[i]` (or `i`) from `t[.., i]`, `t` being
    /// `[cols, m]`.
    ///
    /// # Safety
    /// No other thread writes these places meanwhile.
    pub(super) unsafe fn put(&self, j0: usize, m: usize, t: &[f32], rows: Option<&[usize]>) {
        let cols = t.len() / m;
        assert!(j0 + cols <= self.n);
        #[allow(unused_mut)] // (only the x86 path moves it)
        let mut i0 = 0;
        #[cfg(target_arch = "x86_64")]
        if m >= 8 && cols >= 8 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above); the contract is the caller's.
            i0 = unsafe { self.put_avx2(j0, m, t, rows) };
        }
        for i in i0..m {
            let r = rows.map_or(i, |rs| rs[i]);
            assert!((r + 1) * self.n <= self.len);
            // SAFETY: row `r`'s columns `j0 .. j0 + cols` are inside the output (asserted
            // above) and this caller's alone (the contract).
            let row =
                unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.n + j0), cols) };
            for (jj, o) in row.iter_mut().enumerate() {
                *o = t[jj * m + i];
            }
        }
    }

    /// [`Columns::put`] of the first `m / 8 · 8` rows, eight rows by eight columns at a time
    /// through register transposes (one at a time, each column of `t` read `m` apart, was a
    /// few percent of a long prompt); returns how many rows it wrote.
    ///
    /// # Safety
    /// As [`Columns::put`], and the CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn put_avx2(&self, j0: usize, m: usize, t: &[f32], rows: Option<&[usize]>) -> usize {
        use std::arch::x86_64::*;
        let cols = t.len() / m;
        assert!(j0 + cols <= self.n);
        let mut i0 = 0;
        while i0 + 8 <= m {
            let outs: [*mut f32; 8] = std::array::from_fn(|b| {
                let r = rows.map_or(i0 + b, |rs| rs[i0 + b]);
                assert!((r + 1) * self.n <= self.len);
                // SAFETY: row `r` lies inside the output (asserted above).
                unsafe { self.ptr.add(r * self.n + j0) }
            });
            let mut jj = 0;
            while jj + 8 <= cols {
                // SAFETY: `t[(jj + a)·m + i0 ..][..8]` lies in `t` (jj + 8 ≤ cols, i0 + 8 ≤
                // m), and each row's columns `j0 + jj ..][..8]` in the output (j0 + cols ≤ n,
                // asserted by `put`) and the caller's alone (the contract).
                unsafe {
                    let v =
                        std::array::from_fn(|a| _mm256_loadu_ps(t.as_ptr().add((jj + a) * m + i0)));
                    for (b, row) in transpose8(v).into_iter().enumerate() {
                        _mm256_storeu_ps(outs[b].add(jj), row);
                    }
                }
                jj += 8;
            }
            for jj in jj..cols {
                for (b, o) in outs.iter().enumerate() {
                    // SAFETY: as above, one value.
                    unsafe { *o.add(jj) = t[jj * m + i0 + b] };
                }
            }
            i0 += 8;
        }
        i0
    }

    /// Columns `j0 .. j0 + vals.len()` of output row `r` from `vals`.
    ///
    /// # Safety
    /// As [`Columns::put`].
    pub(super) unsafe fn put_run(&self, r: usize, j0: usize, vals: &[f32]) {
        assert!(j0 + vals.len() <= self.n && (r + 1) * self.n <= self.len);
        // SAFETY: inside the output (asserted above), and this caller's alone (the contract).
        let row =
            unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.n + j0), vals.len()) };
        row.copy_from_slice(vals);
    }
}

/// `x [1, K] · w_iᵀ` for each weight `w_i [N_i, K]`, the outputs side by side, in one dispatch.
pub fn matvec_cat(x: &TensorRef, ws: &[TensorRef], out: &mut [f32]) {
    let xv = x.f32();
    let ws: Vec<&TensorRef> = ws.iter().collect();
    let (meets, which) = meets_by_dtype(&ws, &xv);
    let ps: Vec<Product> = ws
        .iter()
        .zip(which)
        .map(|(w, i)| Product {
            w,
            row0: 0,
            n: w.dims()[0],
            x: &xv,
            m: 1,
            meet: &meets[i],
        })
        .collect();
    products(&ps, split_outputs(out, &ps));
}

/// Consecutive parts of `buf` for the products' `[N, M]` outputs, in order.
fn split_outputs<'o>(mut buf: &'o mut [f32], ps: &[Product]) -> Vec<Out<'o>> {
    let mut outs = vec![];
    for p in ps {
        let (mine, rest) = std::mem::take(&mut buf).split_at_mut(p.n * p.m);
        outs.push(Out::ByWeightRow(mine));
        buf = rest;
    }
    outs
}

/// How activation rows `x` meet each of `ws`: the [`Meet`]s, and which one each weight takes
/// (weights of one dtype share one, so `x` is quantized once per dtype).
fn meets_by_dtype(ws: &[&TensorRef], x: &[f32]) -> (Vec<Meet>, Vec<usize>) {
    let mut dtypes: Vec<DType> = vec![];
    let mut meets = vec![];
    let which = ws
        .iter()
        .map(|w| match dtypes.iter().position(|&d| d == w.dtype) {
            Some(i) => i,
            None => {
                dtypes.push(w.dtype);
                meets.push(Meet::new(w, x));
                meets.len() - 1
            }
        })
        .collect();
    (meets, which)
}

/// `x [.., M, K] · w [.., N, K]ᵀ`.
pub fn matmul(x: &TensorRef, w: &TensorRef, out: &mut [f32]) {
    let xv = x.f32();
    let (xd, wd) = (x.dims(), w.dims());
    let (m, k) = (xd[xd.len() - 2], xd[xd.len() - 1]);
    let n = wd[wd.len() - 2];
    let xb = &xd[..xd.len() - 2];
    let wb = &wd[..wd.len() - 2];
    let batches: usize = xb.iter().product();
    for b in 0..batches {
        // Map the batch index of x onto w's (broadcast) batch index.
        let (mut rem, mut wi, mut wstride) = (b, 0, 1);
        for i in (0..xb.len()).rev() {
            let idx = rem % xb[i];
            rem /= xb[i];
            let j = i as isize - (xb.len() - wb.len()) as isize;
            if j >= 0 {
                let wdim = wb[j as usize];
                if wdim != 1 {
                    wi += idx * wstride;
                }
                wstride *= wdim;
            }
        }
        let xs = &xv[b * m * k..(b + 1) * m * k];
        let os = &mut out[b * m * n..(b + 1) * m * n];
        product(xs, m, w, wi * n, n, os);
    }
}

fn check_index(op: &'static str, node: &str, i: i32, len: usize) -> Result<usize> {
    if i < 0 || i as usize >= len {
        return Err(BackendError::IndexOutOfRange {
            op,
            node: node.to_string(),
            index: i as i64,
            len,
        });
    }
    Ok(i as usize)
}

/// Activation elements (rows × K) from which a `mul_mat_id` prepares its experts' rows on the
/// team; a decode step's few rows are prepared on the calling thread, without a dispatch.
const PREPARE_ON_TEAM_FROM: usize = 1 << 16;

/// `x [T, U|1, K]`, `w [E, N, K]`, `ids [T, U]` → `[T, U, N]` for each `w` of `ws` (all of one
/// shape), their outputs one after the other: the experts' products in one dispatch.
pub fn matmul_id(
    x: &TensorRef,
    ws: &[&TensorRef],
    ids: &TensorRef,
    node: &str,
    out: &mut [f32],
) -> Result<()> {
    let xv = x.f32();
    let idv = ids.i32();
    let u = ids.dims()[1];
    let xu = x.dims()[1];
    let [e, n, k] = [ws[0].dims()[0], ws[0].dims()[1], ws[0].dims()[2]];
    let mut per_expert: Vec<Vec<usize>> = vec![Vec::new(); e];
    for (r, &id) in idv.iter().enumerate() {
        per_expert[check_index("mul_mat_id", node, id, e)?].push(r);
    }
    // the experts in use, each with its activation rows gathered and prepared for the weights
    // (quantized, woven)
    let mut used: Vec<Expert> = per_expert
        .iter()
        .enumerate()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(id, rows)| Expert {
            id,
            rows,
            xs: vec![],
            meets: (vec![], vec![]),
        })
        .collect();
    let prepare = |e: &mut Expert| {
        e.xs.reserve_exact(e.rows.len() * k);
        for &r in e.rows {
            let (ti, ui) = (r / u, r % u);
            let xr = ti * xu + if xu == 1 { 0 } else { ui };
            e.xs.extend_from_slice(&xv[xr * k..(xr + 1) * k]);
        }
        e.meets = meets_by_dtype(ws, &e.xs);
    };
    if idv.len() * k >= PREPARE_ON_TEAM_FROM {
        team::global().chunks_mut(&mut used, 1, |_, one| prepare(&mut one[0]));
    } else {
        used.iter_mut().for_each(prepare);
    }
    // every weight's products with every expert's rows, straight into that weight's
    // `[T·U, N]` part of `out` (each row of ids chose one expert: no two products share a row)
    let cols: Vec<Columns> = out
        .chunks_mut(idv.len() * n)
        .take(ws.len())
        .map(|o| Columns::new(o, n))
        .collect();
    let (ps, outs): (Vec<Product>, Vec<Out>) = ws
        .iter()
        .zip(&cols)
        .enumerate()
        .flat_map(|(wi, (w, c))| {
            used.iter().map(move |e| {
                let p = Product {
                    w,
                    row0: e.id * n,
                    n,
                    x: &e.xs,
                    m: e.rows.len(),
                    meet: &e.meets.0[e.meets.1[wi]],
                };
                (p, Out::Into(c, Some(e.rows)))
            })
        })
        .unzip();
    products(&ps, outs);
    Ok(())
}

/// An expert in use by a `mul_mat_id`: its id, the rows of ids that chose it, their activation
/// rows gathered, and how each weight meets them (see [`meets_by_dtype`]).
struct Expert<'a> {
    id: usize,
    rows: &'a [usize],
    xs: Vec<f32>,
    meets: (Vec<Meet>, Vec<usize>),
}

/// Rows of `table [B?, R, D]` chosen by `ids [B?, n]`.
pub fn get_rows(table: &TensorRef, ids: &TensorRef, node: &str, out: &mut [f32]) -> Result<()> {
    let idv = ids.i32();
    let td = table.dims();
    let (r, d) = (td[td.len() - 2], td[td.len() - 1]);
    let per_batch = ids.dims()[ids.dims().len() - 1];
    for (i, (&id, o)) in idv.iter().zip(out.chunks_mut(d)).enumerate() {
        let row = check_index("get_rows", node, id, r)?;
        let batch = i / per_batch;
        table.row_into(batch * r + row, o);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `put` of a `[cols, m]` block into columns from `j0` of the output rows (in order, or
    /// picked), against the plain transpose: blocks of eight on both sides with leftovers.
    #[test]
    fn put_writes_the_transposed_block() {
        for (m, cols, j0, picked) in [(19, 21, 3, false), (16, 8, 0, true), (7, 30, 2, false)] {
            let n = j0 + cols + 4;
            let out_rows = m + 6;
            let t: Vec<f32> = (0..cols * m).map(|i| i as f32 * 0.5 + 1.0).collect();
            let rows: Vec<usize> = (0..m).map(|i| (i * 7 + 2) % out_rows).collect();
            // (distinct rows: i·7 + 2 modulo a count coprime to 7)
            let rows = picked.then_some(&rows[..]);
            let mut out = vec![-1.0f32; out_rows * n];
            let cols_out = Columns::new(&mut out, n);
            // SAFETY: this thread alone writes `out`.
            unsafe { cols_out.put(j0, m, &t, rows) };
            let mut want = vec![-1.0f32; out_rows * n];
            for i in 0..m {
                let r = rows.map_or(i, |rs| rs[i]);
                for jj in 0..cols {
                    want[r * n + j0 + jj] = t[jj * m + i];
                }
            }
            assert_eq!(out, want, "m {m} cols {cols} j0 {j0} picked {picked}");
        }
    }
}

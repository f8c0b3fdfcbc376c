//! Matrix products with weights of any dtype (quantized ones meet 8-bit activations in integer
//! dot products, others are decoded row by row), expert products and row gathers.

use super::qdot::{Acts, Kernel, f16_kernel};
use super::team;
use super::tensor::TensorRef;
use super::tile::rows_times;
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

/// `outᵀ[n][m] = x[m] · w_row(n)` for `n` in `rows`, `x` dense `[M, K]`; returns `[M, N]`.
fn product(
    x: &[f32],
    m: usize,
    w: &TensorRef,
    rows: impl Fn(usize) -> usize + Sync,
    n: usize,
    out: &mut [f32],
) {
    let k = w.row_len();
    let team = team::global();
    let quantized = Kernel::for_dtype(w.dtype).zip(Acts::quantize(w.dtype, x, k));
    let f16 = if w.dtype == DType::F16 {
        f16_kernel()
    } else {
        None
    };
    // Each chunk takes a few weight rows and meets them with every activation row: `t` is
    // `[N, M]` (the output itself when M = 1).
    let mut rows_per_chunk = (n / (8 * team.threads())).clamp(4, 64);
    if m >= 4 && quantized.is_none() {
        rows_per_chunk -= rows_per_chunk % 3; // whole register tiles (see `tile`)
    }
    let mut transposed = (m > 1).then(|| vec![0.0f32; n * m]);
    let t = transposed.as_deref_mut().unwrap_or(&mut *out);
    team.chunks_mut(t, rows_per_chunk * m, |c, chunk| {
        let first = c * rows_per_chunk;
        match (&quantized, f16) {
            (Some((kern, acts)), _) => {
                for (jj, col) in chunk.chunks_mut(m).enumerate() {
                    kern.dot_rows(w.row_bytes(rows(first + jj)), acts, col);
                }
            }
            // prompts: the chunk's rows decoded once, then register tiles
            (None, _) if m >= 4 => {
                let mut buf = vec![0.0f32; chunk.len() / m * k];
                for (jj, row) in buf.chunks_exact_mut(k).enumerate() {
                    w.row_into(rows(first + jj), row);
                }
                rows_times(&buf, x, k, chunk);
            }
            (None, Some(f16)) => {
                for (jj, col) in chunk.chunks_mut(m).enumerate() {
                    let wrow = w.row_bytes(rows(first + jj));
                    for (i, o) in col.iter_mut().enumerate() {
                        *o = f16(wrow, &x[i * k..(i + 1) * k]);
                    }
                }
            }
            (None, None) => {
                let mut buf = vec![0.0f32; k];
                for (jj, col) in chunk.chunks_mut(m).enumerate() {
                    w.row_into(rows(first + jj), &mut buf);
                    for (i, o) in col.iter_mut().enumerate() {
                        *o = dot(&x[i * k..(i + 1) * k], &buf);
                    }
                }
            }
        }
    });
    if let Some(t) = transposed {
        transpose_into(&t, m, n, out);
    }
}

/// `out[i][j] = t[j][i]` for `t` of `n` rows by `m`, in tiles that stay in cache.
fn transpose_into(t: &[f32], m: usize, n: usize, out: &mut [f32]) {
    const TILE: usize = 32;
    for j0 in (0..n).step_by(TILE) {
        for i0 in (0..m).step_by(TILE) {
            for j in j0..(j0 + TILE).min(n) {
                for i in i0..(i0 + TILE).min(m) {
                    out[i * n + j] = t[j * m + i];
                }
            }
        }
    }
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
        product(xs, m, w, |j| wi * n + j, n, os);
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

/// `x [T, U|1, K]`, `w [E, N, K]`, `ids [T, U]` → `[T, U, N]`, grouped by expert.
pub fn matmul_id(
    x: &TensorRef,
    w: &TensorRef,
    ids: &TensorRef,
    node: &str,
    out: &mut [f32],
) -> Result<()> {
    let xv = x.f32();
    let idv = ids.i32();
    let [t, u] = [ids.dims()[0], ids.dims()[1]];
    let xu = x.dims()[1];
    let [e, n, k] = [w.dims()[0], w.dims()[1], w.dims()[2]];
    let mut per_expert: Vec<Vec<usize>> = vec![Vec::new(); e];
    for (r, &id) in idv.iter().enumerate() {
        per_expert[check_index("mul_mat_id", node, id, e)?].push(r);
    }
    for (ex, rows) in per_expert.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let mut xs = Vec::with_capacity(rows.len() * k);
        for &r in rows {
            let (ti, ui) = (r / u, r % u);
            let xr = ti * xu + if xu == 1 { 0 } else { ui };
            xs.extend_from_slice(&xv[xr * k..(xr + 1) * k]);
        }
        let mut o = vec![0.0; rows.len() * n];
        product(&xs, rows.len(), w, |j| ex * n + j, n, &mut o);
        for (i, &r) in rows.iter().enumerate() {
            out[r * n..(r + 1) * n].copy_from_slice(&o[i * n..(i + 1) * n]);
        }
    }
    let _ = t;
    Ok(())
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

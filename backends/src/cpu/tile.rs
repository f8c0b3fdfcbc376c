//! Prompt products of weight rows (f32, or f16 or bf16 widened as they are loaded) with activation
//! rows in register tiles: three weight rows meet four activation rows per pass over `k` (8
//! lanes, AVX2), or five meet five (16 lanes, AVX-512), so each load feeds several
//! multiply-adds instead of one.

use super::matmul::dot;

/// Weight rows per register tile on this CPU: chunks of whole tiles waste no products.
pub fn weight_rows_per_tile() -> usize {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        return avx2::WR16;
    }
    3
}

/// `out[j·m + i] = w_j · x_i` for the rows `w_j` of `w` and `x_i` of `x`, each `k` long
/// (`m` = rows of `x`).
pub fn rows_times(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::supported() {
        // SAFETY: the CPU has AVX2, FMA and F16C, checked above.
        unsafe { avx2::best(&|j: usize| &w[j * k..(j + 1) * k], x, k, out, true) };
        return;
    }
    let m = x.len() / k;
    for (j, col) in out.chunks_mut(m).enumerate() {
        for (i, o) in col.iter_mut().enumerate() {
            *o = dot(&w[j * k..(j + 1) * k], &x[i * k..(i + 1) * k]);
        }
    }
}

/// The 16-bit float formats the tiles widen as they load them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    F16,
    Bf16,
}

impl Half {
    /// The format of weights of `dtype`, if it is one.
    pub fn of(dtype: weft_graph::DType) -> Option<Half> {
        match dtype {
            weft_graph::DType::F16 => Some(Half::F16),
            weft_graph::DType::BF16 => Some(Half::Bf16),
            _ => None,
        }
    }
}

/// `out[j·m + i] = w_j · x_i` for 16-bit float weight rows `w_j = row(j)` (`k` little-endian
/// f16 or bf16 each, `out.len() / m` of them), widened as they are loaded rather than decoded
/// to f32 rows first: no pass over the weights before the products, and the weights stream
/// from memory while the tiles compute. False, with nothing written, on CPUs without AVX2, FMA
/// and F16C.
pub fn half_rows_times<'a>(
    format: Half,
    row: impl Fn(usize) -> &'a [u8],
    x: &[f32],
    k: usize,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx2::supported() {
        // SAFETY: the CPU has AVX2, FMA and F16C, checked above.
        unsafe { avx2::best_half(format, &row, x, k, out, true) };
        return true;
    }
    let _ = (format, row, x, k, out);
    false
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    pub fn supported() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// Activation rows per cache block.
    const XB: usize = 32;

    /// [`tiles16`] where the CPU has AVX-512 F and `wide` asks for it, else [`tiles`] (16-lane
    /// registers: half the loads and conversions per multiply-add; 96 against 82 GFLOP/s per
    /// thread on 64 × 2048 × 2048 f16 here, whose one 512-bit FMA port gives both the same
    /// peak).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    pub unsafe fn best<W: Weights>(
        row: &impl Fn(usize) -> W,
        x: &[f32],
        k: usize,
        out: &mut [f32],
        wide: bool,
    ) {
        // SAFETY: the caller's contract, and AVX-512 F checked here.
        unsafe {
            if wide && is_x86_feature_detected!("avx512f") {
                tiles16(row, x, k, out)
            } else {
                tiles(row, x, k, out)
            }
        }
    }

    /// [`best`] for rows of 16-bit floats in `format`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    pub unsafe fn best_half<'a>(
        format: super::Half,
        row: &impl Fn(usize) -> &'a [u8],
        x: &[f32],
        k: usize,
        out: &mut [f32],
        wide: bool,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            match format {
                super::Half::F16 => best(&|j: usize| F16Row(row(j)), x, k, out, wide),
                super::Half::Bf16 => best(&|j: usize| Bf16Row(row(j)), x, k, out, wide),
            }
        }
    }

    /// A weight row as the tiles read it: eight elements at a time, widened to f32.
    pub trait Weights: Copy {
        /// Elements `c..c + 8`; the caller checks that they exist (`elems`).
        ///
        /// # Safety
        /// `c + 8 ≤ self.elems()`, and the CPU has AVX2 and F16C.
        unsafe fn load8(self, c: usize) -> __m256;
        /// Elements `c..c + 16`.
        ///
        /// # Safety
        /// `c + 16 ≤ self.elems()`, and the CPU has AVX-512 F.
        unsafe fn load16(self, c: usize) -> __m512;
        fn at(self, c: usize) -> f32;
        fn elems(self) -> usize;
        /// Asks for the row's bytes holding elements `c .. c + 32` to be brought into cache
        /// (a hint: nothing is read, whatever `c`).
        #[inline(always)]
        fn prefetch32(self, c: usize) {
            let _ = c;
        }
    }

    impl Weights for &[f32] {
        #[inline(always)]
        unsafe fn load8(self, c: usize) -> __m256 {
            // SAFETY: c + 8 ≤ the row's length (the caller's contract).
            unsafe { _mm256_loadu_ps(self.as_ptr().add(c)) }
        }
        #[inline(always)]
        unsafe fn load16(self, c: usize) -> __m512 {
            // SAFETY: c + 16 ≤ the row's length (the caller's contract).
            unsafe { _mm512_loadu_ps(self.as_ptr().add(c)) }
        }
        fn at(self, c: usize) -> f32 {
            self[c]
        }
        fn elems(self) -> usize {
            self.len()
        }
    }

    /// A row of little-endian bf16 weights (an f32's upper half each).
    #[derive(Clone, Copy)]
    pub struct Bf16Row<'a>(pub &'a [u8]);

    impl Weights for Bf16Row<'_> {
        #[inline(always)]
        fn prefetch32(self, c: usize) {
            // SAFETY: a prefetch is a hint; it reads nothing and never faults.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(self.0.as_ptr().wrapping_add(2 * c).cast());
            }
        }
        #[inline(always)]
        unsafe fn load8(self, c: usize) -> __m256 {
            // SAFETY: c + 8 ≤ the row's elements, so its 16 bytes from byte 2c exist (the
            // caller's contract), and the CPU has AVX2.
            unsafe {
                let h = _mm_loadu_si128(self.0.as_ptr().add(2 * c).cast());
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            }
        }
        #[inline(always)]
        unsafe fn load16(self, c: usize) -> __m512 {
            // SAFETY: c + 16 ≤ the row's elements, so its 32 bytes from byte 2c exist (the
            // caller's contract), and the CPU has AVX-512 F.
            unsafe {
                let h = _mm256_loadu_si256(self.0.as_ptr().add(2 * c).cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
        }
        fn at(self, c: usize) -> f32 {
            half::bf16::from_le_bytes([self.0[2 * c], self.0[2 * c + 1]]).to_f32()
        }
        fn elems(self) -> usize {
            self.0.len() / 2
        }
    }

    /// A row of little-endian f16 weights.
    #[derive(Clone, Copy)]
    pub struct F16Row<'a>(pub &'a [u8]);

    impl Weights for F16Row<'_> {
        #[inline(always)]
        fn prefetch32(self, c: usize) {
            // SAFETY: a prefetch is a hint; it reads nothing and never faults.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(self.0.as_ptr().wrapping_add(2 * c).cast());
            }
        }
        #[inline(always)]
        unsafe fn load8(self, c: usize) -> __m256 {
            // SAFETY: c + 8 ≤ the row's elements, so its 16 bytes from byte 2c exist (the
            // caller's contract), and the CPU has F16C.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(self.0.as_ptr().add(2 * c).cast())) }
        }
        #[inline(always)]
        unsafe fn load16(self, c: usize) -> __m512 {
            // SAFETY: c + 16 ≤ the row's elements, so its 32 bytes from byte 2c exist (the
            // caller's contract), and the CPU has AVX-512 F.
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(self.0.as_ptr().add(2 * c).cast())) }
        }
        fn at(self, c: usize) -> f32 {
            half::f16::from_le_bytes([self.0[2 * c], self.0[2 * c + 1]]).to_f32()
        }
        fn elems(self) -> usize {
            self.0.len() / 2
        }
    }

    /// `out[j·m + i] = row(j) · x_i` for the `out.len() / m` weight rows: rows in groups of
    /// three against activation rows in groups of four, blocks of `XB` activation rows staying
    /// in cache while every weight row meets them. (A short group repeats its last row; those
    /// results are not kept.)
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tiles<W: Weights>(row: &impl Fn(usize) -> W, x: &[f32], k: usize, out: &mut [f32]) {
        let m = x.len() / k;
        let rows = out.len() / m;
        let xr = |i: usize| &x[i * k..(i + 1) * k];
        for i0 in (0..m).step_by(XB) {
            let i1 = (i0 + XB).min(m);
            let mut j = 0;
            while j < rows {
                let n = (rows - j).min(3);
                let ws = [row(j), row(j + (n > 1) as usize), row(j + n - 1)];
                let mut i = i0;
                while i < i1 {
                    let mi = (i1 - i).min(4);
                    let xs = [
                        xr(i),
                        xr(i + (mi > 1) as usize),
                        xr(i + 2.min(mi - 1)),
                        xr(i + mi - 1),
                    ];
                    let t = tile(ws, xs, k);
                    for (jj, tr) in t.iter().enumerate().take(n) {
                        out[(j + jj) * m + i..(j + jj) * m + i + mi].copy_from_slice(&tr[..mi]);
                    }
                    i += mi;
                }
                j += n;
            }
        }
    }

    /// [`tiles`] with AVX-512: five weight rows against five activation rows, 16 lanes.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn tiles16<W: Weights>(row: &impl Fn(usize) -> W, x: &[f32], k: usize, out: &mut [f32]) {
        let m = x.len() / k;
        let rows = out.len() / m;
        for i0 in (0..m).step_by(XB16) {
            let i1 = (i0 + XB16).min(m);
            let mut j = 0;
            while j < rows {
                let n = (rows - j).min(WR16);
                let ws: [W; WR16] = std::array::from_fn(|jj| row(j + jj.min(n - 1)));
                let mut i = i0;
                while i < i1 {
                    let mi = (i1 - i).min(RA16);
                    // a short tile of exactly the rows left (a mixture's experts meet a few
                    // rows each: eight rows are a tile of five and one of three, not of five)
                    let at = (j, n, i);
                    match mi {
                        5 => tile16_into::<W, 5>(ws, x, k, at, out),
                        4 => tile16_into::<W, 4>(ws, x, k, at, out),
                        3 => tile16_into::<W, 3>(ws, x, k, at, out),
                        2 => tile16_into::<W, 2>(ws, x, k, at, out),
                        _ => tile16_into::<W, 1>(ws, x, k, at, out),
                    }
                    i += mi;
                }
                j += n;
            }
        }
    }

    /// Activation rows per cache block of [`tiles16`] (whole tiles).
    const XB16: usize = 30;
    /// Weight rows and activation rows per tile of [`tiles16`]: 25 accumulators, five weight
    /// registers and one activation register of the 32. Against four by six (24 accumulators),
    /// five by five loads 10 registers per 25 multiply-adds instead of 10 per 24, but the six
    /// activation rows (read from L2: a block of 30 rows of 2048 f32 is 240 KiB) become five:
    /// llama-1.1b f16 pp64 162-163 -> 185-189 tokens/s (Zen 5, 2 threads, paired runs; six by
    /// four 180, eight by three 167, eight by two 121).
    pub const WR16: usize = 5;
    const RA16: usize = 5;

    /// The tile of weight rows `ws` (the first `n` of them kept, from row `j`) and the `RA`
    /// activation rows of `x` from row `i`, written into `out` (`[rows, m]`); `at` is
    /// `(j, n, i)`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn tile16_into<W: Weights, const RA: usize>(
        ws: [W; WR16],
        x: &[f32],
        k: usize,
        (j, n, i): (usize, usize, usize),
        out: &mut [f32],
    ) {
        let m = x.len() / k;
        let t = tile16::<W, RA>(
            ws,
            std::array::from_fn(|ii| &x[(i + ii) * k..(i + ii + 1) * k]),
            k,
        );
        for (jj, tr) in t.iter().enumerate().take(n) {
            let o = (j + jj) * m + i;
            for (d, v) in out[o..o + RA].iter_mut().zip(tr) {
                *d = *v;
            }
        }
    }

    /// The `WR16` × `RA` dot products of weight rows `w` and activation rows `x` (`RA` ≤ 5).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn tile16<W: Weights, const RA: usize>(
        w: [W; WR16],
        x: [&[f32]; RA],
        k: usize,
    ) -> [[f32; RA]; WR16] {
        assert!(w.iter().all(|r| r.elems() >= k) && x.iter().all(|r| r.len() >= k));
        let mut acc = [[_mm512_setzero_ps(); RA]; WR16];
        let mut c = 0;
        while c + 16 <= k {
            // SAFETY: c + 16 ≤ k ≤ the length of every row (asserted above).
            unsafe {
                let mut wv = [_mm512_setzero_ps(); WR16];
                for j in 0..WR16 {
                    wv[j] = w[j].load16(c);
                }
                for i in 0..RA {
                    let xv = _mm512_loadu_ps(x[i].as_ptr().add(c));
                    for j in 0..WR16 {
                        acc[j][i] = _mm512_fmadd_ps(wv[j], xv, acc[j][i]);
                    }
                }
            }
            c += 16;
        }
        let mut out = [[0.0f32; RA]; WR16];
        for j in 0..WR16 {
            for i in 0..RA {
                let mut s = _mm512_reduce_add_ps(acc[j][i]);
                for cc in c..k {
                    s += w[j].at(cc) * x[i][cc];
                }
                out[j][i] = s;
            }
        }
        out
    }

    /// The 3 × 4 dot products of weight rows `w` and activation rows `x` (each at least `k`
    /// long): each load feeds four or three multiply-adds instead of one.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tile<W: Weights>(w: [W; 3], x: [&[f32]; 4], k: usize) -> [[f32; 4]; 3] {
        assert!(w.iter().all(|r| r.elems() >= k) && x.iter().all(|r| r.len() >= k));
        let mut acc = [[_mm256_setzero_ps(); 4]; 3];
        let mut c = 0;
        while c + 8 <= k {
            // SAFETY: c + 8 ≤ k ≤ the length of every row (asserted above).
            unsafe {
                let wv = w.map(|r| r.load8(c));
                for i in 0..4 {
                    let xv = _mm256_loadu_ps(x[i].as_ptr().add(c));
                    for j in 0..3 {
                        acc[j][i] = _mm256_fmadd_ps(wv[j], xv, acc[j][i]);
                    }
                }
            }
            c += 8;
        }
        let mut out = [[0.0f32; 4]; 3];
        for j in 0..3 {
            for i in 0..4 {
                let mut s = hsum(acc[j][i]);
                for cc in c..k {
                    s += w[j].at(cc) * x[i][cc];
                }
                out[j][i] = s;
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 7 weight rows (tiles of 3 or 5 and leftovers); 1 to 9 activation rows (every short tile
    /// of either kernel) and 33 (more than one cache block of either), `k` not a multiple of 8
    /// or 16.
    const SHAPES: [(usize, usize, usize); 10] = [
        (7, 1, 45),
        (7, 2, 45),
        (7, 3, 45),
        (7, 4, 45),
        (7, 5, 45),
        (7, 6, 45),
        (7, 7, 45),
        (7, 8, 45),
        (7, 9, 45),
        (7, 33, 61),
    ];

    fn inputs(n: usize, m: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let w = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let x = (0..m * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
            .collect();
        (w, x)
    }

    fn check(w: &[f32], x: &[f32], k: usize, out: &[f32], what: &str) {
        let m = x.len() / k;
        for j in 0..w.len() / k {
            for i in 0..m {
                let want: f64 = (0..k)
                    .map(|c| w[j * k + c] as f64 * x[i * k + c] as f64)
                    .sum();
                let got = out[j * m + i] as f64;
                assert!(
                    (got - want).abs() < 1e-4,
                    "{what} w{j}·x{i}: {got} vs {want}"
                );
            }
        }
    }

    /// f16 and bf16 rows through the tiles of either width equal the plain dot products of
    /// the rows widened.
    #[test]
    fn half_tiles_equal_plain_dots() {
        for (n, m, k) in SHAPES {
            let (w, x) = inputs(n, m, k);
            let f16s: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
            let bf16s: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            for (format, bytes, wide) in [
                (
                    Half::F16,
                    bytemuck::cast_slice::<_, u8>(&f16s),
                    f16s.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                ),
                (
                    Half::Bf16,
                    bytemuck::cast_slice(&bf16s),
                    bf16s.iter().map(|v| v.to_f32()).collect(),
                ),
            ] {
                let row = |j: usize| &bytes[j * 2 * k..(j + 1) * 2 * k];
                let mut out = vec![0.0; n * m];
                if !half_rows_times(format, row, &x, k, &mut out) {
                    return; // (no F16C: the caller decodes rows instead)
                }
                check(&wide, &x, k, &out, &format!("{format:?}"));
                #[cfg(target_arch = "x86_64")]
                for lanes16 in [false, true] {
                    let mut out = vec![0.0; n * m];
                    // SAFETY: `half_rows_times` ran the tiles, so the CPU has AVX2, FMA and
                    // F16C.
                    unsafe { avx2::best_half(format, &row, &x, k, &mut out, lanes16) };
                    check(
                        &wide,
                        &x,
                        k,
                        &out,
                        &format!("{format:?}, 16 lanes: {lanes16}"),
                    );
                }
            }
        }
    }

    #[test]
    fn tiles_equal_plain_dots() {
        for (n, m, k) in SHAPES {
            let (w, x) = inputs(n, m, k);
            let mut out = vec![0.0; n * m];
            rows_times(&w, &x, k, &mut out);
            check(&w, &x, k, &out, "f32");
            #[cfg(target_arch = "x86_64")]
            if avx2::supported() {
                for wide in [false, true] {
                    let mut out = vec![0.0; n * m];
                    let row = |j: usize| &w[j * k..(j + 1) * k];
                    // SAFETY: the CPU has AVX2, FMA and F16C, checked above.
                    unsafe { avx2::best(&row, &x, k, &mut out, wide) };
                    check(&w, &x, k, &out, if wide { "16 lanes" } else { "8 lanes" });
                }
            }
        }
    }
}

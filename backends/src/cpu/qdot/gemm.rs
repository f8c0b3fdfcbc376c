//! Prompt matmuls of quantized weights in integer register tiles, with AVX-512 VNNI or, on
//! CPUs without it, AVX2 (see [`Isa`]). The activation rows are woven sixteen to a group once
//! per matmul: per four elements a 64-byte line holding each row's four bytes in its own
//! 32-bit lane. Weight rows, unpacked eight at a time ([`super::unpack`]), meet a group four
//! elements at a time: the weight row's four bytes broadcast to every lane meet the line, so
//! lane `i` of a sum is activation row `i`'s product and no sums run across lanes. The
//! 32-element-block formats meet each line in one `vpdpbusd` (u8 × i8, four products summed
//! per lane; with AVX2, `vpmaddubsw` then `vpmaddwd` by ones) and scale each 32-element
//! block's sum in f32 by the weight's `α` and the activations' `d`. The K-quants stay in
//! integers through a super-block: each group's sum by `vpdpbusd`, times the group's integer
//! scale by `vpmulld` (with AVX2, `vpmaddubsw` pairs to i16, two or four lines' added in i16,
//! then `vpmaddwd` with the scale), and one f32 multiply-add per weight row and 256 elements. The weights'
//! offsets and mins (`β`) meet the activations' sums once per weight row, per 32 elements
//! (per 16 for Q6_K, whose `β` changes every 16). The activations are the same 8-bit rows as
//! [`Acts`]' (same blocks, same rounding), so the sums equal the one-row kernels' up to the
//! order of f32 additions.

use super::unpack::{self, Form, RowMut, Unpack};
use super::{Acts, QK, QKK};
use std::arch::x86_64::*;
use weft_graph::DType;

/// The instructions the tiles run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F, BW, VL and VNNI: up to 16 lanes, one `vpdpbusd` (or `vpmaddubsw` then
    /// `vpdpwssd`) per four elements.
    Avx512Vnni,
    /// AVX2 alone: 8 lanes (each group of activation rows in two halves), `vpmaddubsw` then
    /// `vpmaddwd` and an add per four elements. `vpmaddubsw` saturates its pair sums at
    /// i16, which no unpacked value up to 63 reaches (63 · 128 · 2 = 16,128); Q8_0's `u`
    /// reaches 255, so its tiles take its signed values ([`Kind::FloatSigned`]).
    Avx2,
}

impl Isa {
    /// The best this CPU has, if any.
    pub fn best() -> Option<Isa> {
        [Isa::Avx512Vnni, Isa::Avx2]
            .into_iter()
            .find(|i| i.available())
    }

    /// Whether this CPU has it (and AVX2, FMA and F16C, which the unpacking uses).
    pub fn available(self) -> bool {
        super::avx2::supported()
            && match self {
                Isa::Avx512Vnni => {
                    is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
                Isa::Avx2 => true,
            }
    }
}

/// 64 bytes on a cache line: the tiles' 64-byte loads never straddle two lines.
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Activation rows per woven group: one per 32-bit lane of a 512-bit register.
const LANES: usize = 16;

/// Weight rows per tile (a chunk of a matmul's rows is best a multiple of it).
pub const TILE_ROWS: usize = 8;

/// A prompt's activation rows woven in groups of [`LANES`] (the last group's missing rows
/// zero), per group: `q`, a line per four elements (`k / 4`); the scale `d` and `s32 = d·Σq`
/// per 32 elements (`k / 32` lines each), and `s = d·Σq` per 16 (`k / 16`); lane `i` row
/// `i`'s.
#[derive(Debug)]
struct WovenActs {
    k: usize,
    m: usize,
    q: Vec<Line>,
    d: Vec<Line>,
    s: Vec<Line>,
    s32: Vec<Line>,
}

/// One group of [`WovenActs`], its lanes from `lane0` (0, or 8 for a group's second half in
/// 8-lane registers).
#[derive(Clone, Copy)]
struct ActGroup<'a> {
    q: &'a [Line],
    d: &'a [Line],
    s: &'a [Line],
    s32: &'a [Line],
    lane0: usize,
}

impl ActGroup<'_> {
    /// The group's lanes from `lane0`.
    fn lanes_from(self, lane0: usize) -> Self {
        ActGroup { lane0, ..self }
    }
}

impl WovenActs {
    /// # Safety
    /// The CPU has `isa`.
    unsafe fn new(acts: &Acts, k: usize, isa: Isa) -> WovenActs {
        // each row's bytes (four to a word), its d and s per 32 elements and s per 16, row
        // after row
        let (mut q, mut d, mut s, mut s32) = (Vec::<u32>::new(), vec![], vec![], vec![]);
        fn words(qs: &[i8]) -> impl Iterator<Item = u32> + '_ {
            qs.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]))
        }
        match acts {
            Acts::B32 { blocks, .. } => {
                for b in blocks {
                    q.extend(words(&b.qs));
                    d.push(b.d);
                    s32.push(b.s);
                    for half in b.qs.chunks_exact(QK / 2) {
                        s.push(b.d * half.iter().map(|&v| v as i32).sum::<i32>() as f32);
                    }
                }
            }
            Acts::K { blocks, .. } => {
                for b in blocks {
                    q.extend(words(&b.qs));
                    d.extend([b.d; QKK / 32]);
                    s.extend(b.bsums.iter().map(|&v| b.d * v as f32));
                    let pairs = b.bsums.chunks_exact(2);
                    s32.extend(pairs.map(|p| b.d * (p[0] as i32 + p[1] as i32) as f32));
                }
            }
        }
        let m = 4 * q.len() / k;
        let groups = m.div_ceil(LANES);
        let mut woven = WovenActs {
            k,
            m,
            q: vec![Line([0; 64]); groups * k / 4],
            d: vec![Line([0; 64]); groups * k / 32],
            s: vec![Line([0; 64]); groups * k / 16],
            s32: vec![Line([0; 64]); groups * k / 32],
        };
        let zeros = vec![0u32; k / 4];
        let [d, s, s32]: [&[u32]; 3] = [&d, &s, &s32].map(|v| bytemuck::cast_slice(v));
        for gi in 0..groups {
            fn rows<'a>(
                v: &'a [u32],
                zeros: &'a [u32],
                gi: usize,
                m: usize,
                len: usize,
            ) -> [&'a [u32]; LANES] {
                std::array::from_fn(|l| {
                    let i = gi * LANES + l;
                    if i < m {
                        &v[i * len..(i + 1) * len]
                    } else {
                        &zeros[..len]
                    }
                })
            }
            let (lq, lg, lh) = (k / 4, k / 16, k / 32);
            let weave = |rows: [&[u32]; LANES], dst: &mut [Line]| match isa {
                // SAFETY: the caller vouches for AVX-512 (F among it).
                Isa::Avx512Vnni => unsafe { weave_words(rows, dst) },
                Isa::Avx2 => weave_from(rows, dst, 0),
            };
            weave(
                rows(&q, &zeros, gi, m, lq),
                &mut woven.q[gi * lq..(gi + 1) * lq],
            );
            weave(
                rows(d, &zeros, gi, m, lh),
                &mut woven.d[gi * lh..(gi + 1) * lh],
            );
            weave(
                rows(s, &zeros, gi, m, lg),
                &mut woven.s[gi * lg..(gi + 1) * lg],
            );
            weave(
                rows(s32, &zeros, gi, m, lh),
                &mut woven.s32[gi * lh..(gi + 1) * lh],
            );
        }
        woven
    }

    fn groups(&self) -> usize {
        self.m.div_ceil(LANES)
    }

    fn group(&self, gi: usize) -> ActGroup<'_> {
        let (lq, lg, lh) = (self.k / 4, self.k / 16, self.k / 32);
        ActGroup {
            q: &self.q[gi * lq..(gi + 1) * lq],
            d: &self.d[gi * lh..(gi + 1) * lh],
            s: &self.s[gi * lg..(gi + 1) * lg],
            s32: &self.s32[gi * lh..(gi + 1) * lh],
            lane0: 0,
        }
    }
}

/// [`weave_words`] word by word, from line `c0` on.
fn weave_from(rows: [&[u32]; LANES], dst: &mut [Line], c0: usize) {
    let len = dst.len();
    assert!(rows.iter().all(|r| r.len() >= len));
    let words: &mut [u32] = bytemuck::cast_slice_mut(dst);
    for (c, line) in words.chunks_exact_mut(LANES).enumerate().skip(c0) {
        for (w, row) in line.iter_mut().zip(&rows) {
            *w = row[c];
        }
    }
}

/// `dst` line `c`, lane `r` = `rows[r][c]`: sixteen rows of 32-bit words (each at least as
/// long as `dst` has lines) transposed 16 × 16 words at a time, the last lines (fewer than
/// 16) word by word.
#[target_feature(enable = "avx512f")]
fn weave_words(rows: [&[u32]; LANES], dst: &mut [Line]) {
    let len = dst.len();
    assert!(rows.iter().all(|r| r.len() >= len));
    let whole = len - len % 16;
    weave_from(rows, dst, whole);
    // Stage `b` swaps bit `b` of the row with bit `b` of the column: registers `a` and
    // `a | bit` exchange the lanes where those bits differ.
    const fn index(bit: usize, upper: bool) -> [u32; 16] {
        let mut v = [0u32; 16];
        let mut c = 0;
        while c < 16 {
            v[c] = match (c & bit == 0, upper) {
                (true, false) => c,
                (false, false) => 16 + (c ^ bit),
                (true, true) => c ^ bit,
                (false, true) => 16 + c,
            } as u32;
            c += 1;
        }
        v
    }
    const INDEX: [[[u32; 16]; 2]; 4] = [
        [index(1, false), index(1, true)],
        [index(2, false), index(2, true)],
        [index(4, false), index(4, true)],
        [index(8, false), index(8, true)],
    ];
    for c0 in (0..whole).step_by(16) {
        // SAFETY: 16 words from `c0` in every row and 16 lines from `c0` (asserted above).
        unsafe {
            let mut v = [_mm512_setzero_si512(); 16];
            for (r, row) in rows.iter().enumerate() {
                v[r] = _mm512_loadu_si512(row.as_ptr().add(c0).cast());
            }
            for (stage, idx) in INDEX.iter().enumerate() {
                let bit = 1 << stage;
                let lo = _mm512_loadu_si512(idx[0].as_ptr().cast());
                let hi = _mm512_loadu_si512(idx[1].as_ptr().cast());
                for a in 0..16 {
                    if a & bit == 0 {
                        let (x, y) = (v[a], v[a | bit]);
                        v[a] = _mm512_permutex2var_epi32(x, lo, y);
                        v[a | bit] = _mm512_permutex2var_epi32(x, hi, y);
                    }
                }
            }
            for (c, line) in v.iter().enumerate() {
                _mm512_store_si512(dst.as_mut_ptr().add(c0 + c).cast(), *line);
            }
        }
    }
}

/// An unpacked weight row (see [`RowMut`]).
#[derive(Clone, Copy)]
struct WeightRow<'a> {
    u: &'a [u8],
    q: &'a [u8],
    scale: &'a [u8],
    d: &'a [f32],
    beta: &'a [f32],
}

impl<'a> WeightRow<'a> {
    /// [`Form::Float`]'s `α`, one per four elements.
    fn alpha(&self) -> &'a [f32] {
        bytemuck::cast_slice(self.scale)
    }

    /// [`Form::Int`]'s scales, an i16 pair per 16 elements.
    fn scales(&self) -> &'a [u32] {
        bytemuck::cast_slice(self.scale)
    }
}

/// Weight rows unpacked, kept per worker between chunks.
#[derive(Default)]
struct Unpacked {
    u: Vec<Line>,
    q: Vec<Line>,
    scale: Vec<Line>,
    d: Vec<f32>,
    beta: Vec<f32>,
}

impl Unpacked {
    /// Room for `rows` rows of `k` (a multiple of 64).
    fn fit(&mut self, k: usize, rows: usize) {
        self.u.resize(rows * k / 64, Line([0; 64]));
        self.q.resize(rows * k / 64, Line([0; 64]));
        self.scale.resize(rows * k / 64, Line([0; 64]));
        self.d.resize(rows * k.div_ceil(256), 0.0);
        self.beta.resize(rows * k / 16, 0.0);
    }

    fn row_mut(&mut self, j: usize, k: usize) -> RowMut<'_> {
        let nd = k.div_ceil(256);
        RowMut {
            u: &mut bytemuck::cast_slice_mut(&mut self.u)[j * k..(j + 1) * k],
            q: &mut bytemuck::cast_slice_mut(&mut self.q)[j * k..(j + 1) * k],
            scale: &mut bytemuck::cast_slice_mut(&mut self.scale)[j * k..(j + 1) * k],
            d: &mut self.d[j * nd..(j + 1) * nd],
            beta: &mut self.beta[j * k / 16..(j + 1) * k / 16],
        }
    }

    fn row(&self, j: usize, k: usize) -> WeightRow<'_> {
        let nd = k.div_ceil(256);
        WeightRow {
            u: &bytemuck::cast_slice(&self.u)[j * k..(j + 1) * k],
            q: &bytemuck::cast_slice(&self.q)[j * k..(j + 1) * k],
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
    kind: Kind,
    isa: Isa,
    acts: WovenActs,
}

/// How a tile meets the unpacked weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// [`Form::Float`]: `u` times the line in `vpdpbusd`.
    Float,
    /// [`Form::Float`] with AVX2 alone for Q8_0, whose `u = q + 128` would saturate
    /// `vpmaddubsw`: `|q|` times the line's bytes with `q`'s signs (at most 2 · 128 · 127 a
    /// pair), and no offset ([`unpack::q8_0_signed`]; from more rows, [`Kind::min_rows`]).
    FloatSigned,
    /// [`Form::Int`], `β` per 32 elements.
    Int,
    /// [`Form::Int`], `β` per 16 elements (Q6_K).
    IntFine,
}

impl Kind {
    /// Activation rows from which the tiles beat the four-row products: each chunk's rows are
    /// unpacked once, and the tiles' registers hold 8 or 16 activation rows. With AVX-512 VNNI
    /// (`-- cpu/matmul` at 4 and 6 rows, Q8_0 and Q4_K) and with AVX2 alone (4384 × 1024
    /// weights of Q4_K, Q5_K, Q6_K and Q4_1 at 2 to 64 rows, one process alternating: the
    /// tiles 0.6–0.7× at 4 rows, 1.05–1.2× at 6, 2× at 64), from 6; [`Kind::FloatSigned`],
    /// two more instructions per four elements, from 16 (0.79× at 6 rows, 0.95× at 12, 1.33×
    /// at 16, 1.45–1.6× at 64).
    fn min_rows(self) -> usize {
        match self {
            Kind::FloatSigned => 16,
            _ => 6,
        }
    }
}

impl Gemm {
    /// The tiles for weights of `dtype` meeting `acts` (rows `k` long) with the best
    /// instructions this CPU has; `None` where it has neither kind, or where `acts` has fewer
    /// rows than the tiles need to beat the four-row products ([`Kind::min_rows`]); else as
    /// [`Self::with_isa`].
    pub fn new(dtype: DType, acts: &Acts, k: usize) -> Option<Gemm> {
        let isa = Isa::best()?;
        let (_, kind) = unpacking(dtype, k, isa)?;
        if acts.rows() < kind.min_rows() {
            return None;
        }
        Gemm::with_isa(dtype, acts, k, isa)
    }

    /// [`Self::new`] with `isa`, whatever the rows; `None` where the CPU lacks `isa`, `dtype`
    /// has no unpacking or `k` is not a multiple of 64 (of 256 for the K-quants).
    pub fn with_isa(dtype: DType, acts: &Acts, k: usize, isa: Isa) -> Option<Gemm> {
        let (unpack, kind) = unpacking(dtype, k, isa)?;
        Some(Gemm {
            unpack,
            kind,
            isa,
            // SAFETY: the CPU has `isa` (checked by `unpacking`).
            acts: unsafe { WovenActs::new(acts, k, isa) },
        })
    }

    /// `out[jj·m + i] = row(jj) · x_i` for the `out.len() / m` weight rows (`m` activation
    /// rows): rows unpacked [`TILE_ROWS`] at a time, each such set meeting every group of
    /// activation rows.
    pub fn rows<'a>(&self, row: impl Fn(usize) -> &'a [u8], out: &mut [f32]) {
        let (k, m) = (self.acts.k, self.acts.m);
        let n = out.len() / m;
        UNPACKED.with_borrow_mut(|buf| {
            buf.fit(k, TILE_ROWS);
            for j0 in (0..n).step_by(TILE_ROWS) {
                let nj = (n - j0).min(TILE_ROWS);
                for jj in 0..nj {
                    (self.unpack)(row(j0 + jj), buf.row_mut(jj, k));
                }
                let ws: [WeightRow; TILE_ROWS] =
                    std::array::from_fn(|jj| buf.row(jj.min(nj - 1), k));
                for gi in 0..self.acts.groups() {
                    let x = self.acts.group(gi);
                    let (i0, ni) = (gi * LANES, (m - gi * LANES).min(LANES));
                    let t = self.tile(ws, x, k, nj, ni);
                    for (jj, tr) in t.iter().enumerate().take(nj) {
                        let o = (j0 + jj) * m + i0;
                        out[o..o + ni].copy_from_slice(&tr[..ni]);
                    }
                }
            }
        });
    }
}

/// How rows of `dtype`, `k` long, are unpacked and meet the tiles with `isa`; `None` as
/// [`Gemm::with_isa`] says.
fn unpacking(dtype: DType, k: usize, isa: Isa) -> Option<(Unpack, Kind)> {
    if !isa.available() || k == 0 || !k.is_multiple_of(64) {
        return None;
    }
    // SAFETY: every `Isa` includes AVX2, FMA and F16C (checked above).
    let (unpack, form) = unsafe { unpack::for_dtype(dtype) }?;
    Some(match form {
        Form::Int if !k.is_multiple_of(256) => return None,
        // SAFETY: as above.
        Form::Float if isa == Isa::Avx2 && dtype == DType::Q8_0 => {
            (unsafe { unpack::q8_0_signed() }, Kind::FloatSigned)
        }
        Form::Float => (unpack, Kind::Float),
        Form::Int if dtype == DType::Q6K => (unpack, Kind::IntFine),
        Form::Int => (unpack, Kind::Int),
    })
}

/// The registers a tile runs in: 16 lanes ([`Zmm`]) or, for groups of at most 8 activation
/// rows, 8 ([`Ymm`], reading the first half of each line), both with AVX-512 VNNI; or 8 with
/// AVX2 alone ([`Avx2`], each half of a line in turn). Every method is an intrinsic or two,
/// inlined into the tiles compiled for them.
trait Regs {
    /// Lanes per register.
    const LANES: usize;
    type I: Copy;
    type F: Copy;
    unsafe fn zero_i() -> Self::I;
    unsafe fn zero_f() -> Self::F;
    /// [`Self::LANES`] words of an aligned line from word `lane0` (0, or 8 for 8 lanes).
    unsafe fn line_i(p: *const Line, lane0: usize) -> Self::I;
    unsafe fn line_f(p: *const Line, lane0: usize) -> Self::F;
    unsafe fn splat_i(v: i32) -> Self::I;
    unsafe fn splat_f(v: f32) -> Self::F;
    /// `acc + Σ₄ u·a` per lane, u8 × i8.
    unsafe fn dpbusd(acc: Self::I, u: Self::I, a: Self::I) -> Self::I;
    /// Whether the K-quants' tiles add `maddubs`' i16 pairs over several lines before
    /// [`Self::dp_words`] (see `int_tile`): fewer instructions where `dp_words` is two
    /// (AVX2), none saved where it is one (`vpdpwssd`).
    const SUM16: bool;
    /// u8 × i8 pairs summed to i16 (`vpmaddubsw`).
    unsafe fn maddubs(u: Self::I, a: Self::I) -> Self::I;
    /// Lane-wise i16 add.
    unsafe fn add16(a: Self::I, b: Self::I) -> Self::I;
    /// Lane-wise i32 add.
    unsafe fn add32(a: Self::I, b: Self::I) -> Self::I;
    /// Lane-wise i32 product (the low 32 bits).
    unsafe fn mul32(a: Self::I, b: Self::I) -> Self::I;
    /// `acc + Σ₂ p·scale` per 32-bit lane, i16 × i16.
    unsafe fn dp_words(acc: Self::I, p: Self::I, scale: Self::I) -> Self::I;
    /// `a`'s bytes with the signs of `s`'s (0 where `s`'s is), for [`Kind::FloatSigned`]
    /// ([`Avx2`] alone).
    unsafe fn sign8(_a: Self::I, _s: Self::I) -> Self::I {
        unreachable!("only the AVX2 tiles take Q8_0's signed values")
    }
    unsafe fn to_f(v: Self::I) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// The lanes into the first [`Self::LANES`] of `out`.
    unsafe fn store(out: &mut [f32; LANES], v: Self::F);
}

/// 16 lanes in 512-bit registers.
struct Zmm;

/// 8 lanes in 256-bit registers.
struct Ymm;

/// 8 lanes in 256-bit registers, AVX2 alone.
struct Avx2;

/// `impl Regs` for one register width, from its types and intrinsics (`ymm`: 256-bit
/// registers, from the two products and `SUM16`).
macro_rules! regs {
    (ymm $name:ident, $dpbusd:ident, $dpwssd:ident, $sum16:expr $(, $sign8:ident)?) => {
        regs!(
            $name,
            8,
            __m256i,
            __m256,
            _mm256_setzero_si256,
            _mm256_setzero_ps,
            _mm256_load_si256,
            _mm256_load_ps,
            _mm256_set1_epi32,
            _mm256_set1_ps,
            $dpbusd,
            $dpwssd,
            _mm256_maddubs_epi16,
            _mm256_add_epi16,
            _mm256_add_epi32,
            _mm256_mullo_epi32,
            $sum16,
            _mm256_cvtepi32_ps,
            _mm256_mul_ps,
            _mm256_fmadd_ps,
            _mm256_storeu_ps
            $(, $sign8)?
        );
    };
    ($name:ident, $lanes:expr, $i:ty, $f:ty, $zero_i:ident, $zero_f:ident, $load_i:ident,
     $load_f:ident, $splat_i:ident, $splat_f:ident, $dpbusd:ident, $dpwssd:ident,
     $maddubs:ident, $add16:ident, $add32:ident, $mul32:ident, $sum16:expr, $to_f:ident,
     $mul:ident, $fmadd:ident,
     $store:ident $(, $sign8:ident)?) => {
        impl Regs for $name {
            const LANES: usize = $lanes;
            const SUM16: bool = $sum16;
            type I = $i;
            type F = $f;
            // SAFETY (every method): the callers' contract, compiled for the instructions; the
            // line loads' pointers are aligned to their width (lines to 64 bytes, from lane 8 to
            // 32), the stores' lanes writable.
            #[inline(always)]
            unsafe fn zero_i() -> $i {
                unsafe { $zero_i() }
            }
            #[inline(always)]
            unsafe fn zero_f() -> $f {
                unsafe { $zero_f() }
            }
            #[inline(always)]
            unsafe fn line_i(p: *const Line, lane0: usize) -> $i {
                unsafe { $load_i(p.cast::<u32>().add(lane0).cast()) }
            }
            #[inline(always)]
            unsafe fn line_f(p: *const Line, lane0: usize) -> $f {
                unsafe { $load_f(p.cast::<f32>().add(lane0).cast()) }
            }
            #[inline(always)]
            unsafe fn splat_i(v: i32) -> $i {
                unsafe { $splat_i(v) }
            }
            #[inline(always)]
            unsafe fn splat_f(v: f32) -> $f {
                unsafe { $splat_f(v) }
            }
            #[inline(always)]
            unsafe fn dpbusd(acc: $i, u: $i, a: $i) -> $i {
                unsafe { $dpbusd(acc, u, a) }
            }
            #[inline(always)]
            unsafe fn maddubs(u: $i, a: $i) -> $i {
                unsafe { $maddubs(u, a) }
            }
            #[inline(always)]
            unsafe fn add16(a: $i, b: $i) -> $i {
                unsafe { $add16(a, b) }
            }
            #[inline(always)]
            unsafe fn add32(a: $i, b: $i) -> $i {
                unsafe { $add32(a, b) }
            }
            #[inline(always)]
            unsafe fn mul32(a: $i, b: $i) -> $i {
                unsafe { $mul32(a, b) }
            }
            #[inline(always)]
            unsafe fn dp_words(acc: $i, p: $i, scale: $i) -> $i {
                unsafe { $dpwssd(acc, p, scale) }
            }
            #[inline(always)]
            unsafe fn to_f(v: $i) -> $f {
                unsafe { $to_f(v) }
            }
            #[inline(always)]
            unsafe fn mul(a: $f, b: $f) -> $f {
                unsafe { $mul(a, b) }
            }
            #[inline(always)]
            unsafe fn fmadd(a: $f, b: $f, c: $f) -> $f {
                unsafe { $fmadd(a, b, c) }
            }
            #[inline(always)]
            unsafe fn store(out: &mut [f32; LANES], v: $f) {
                unsafe { $store(out.as_mut_ptr(), v) }
            }
            $(
                #[inline(always)]
                unsafe fn sign8(a: $i, s: $i) -> $i {
                    unsafe { $sign8(a, s) }
                }
            )?
        }
    };
}

regs!(
    Zmm,
    16,
    __m512i,
    __m512,
    _mm512_setzero_si512,
    _mm512_setzero_ps,
    _mm512_load_si512,
    _mm512_load_ps,
    _mm512_set1_epi32,
    _mm512_set1_ps,
    _mm512_dpbusd_epi32,
    _mm512_dpwssd_epi32,
    _mm512_maddubs_epi16,
    _mm512_add_epi16,
    _mm512_add_epi32,
    _mm512_mullo_epi32,
    false,
    _mm512_cvtepi32_ps,
    _mm512_mul_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);
regs!(ymm Ymm, _mm256_dpbusd_epi32, _mm256_dpwssd_epi32, false);

/// `acc + Σ₄ u·a` per lane with AVX2 alone: `vpmaddubsw`, then `vpmaddwd` by ones.
///
/// # Safety
/// The caller is compiled for AVX2.
#[inline(always)]
unsafe fn avx2_dpbusd(acc: __m256i, u: __m256i, a: __m256i) -> __m256i {
    unsafe {
        let ones = _mm256_set1_epi16(1);
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), ones))
    }
}

/// `acc + Σ₂ p·scale` per lane (i16 pairs) with AVX2 alone: `vpmaddwd`, then an add.
///
/// # Safety
/// The caller is compiled for AVX2.
#[inline(always)]
unsafe fn avx2_dpwssd(acc: __m256i, p: __m256i, scale: __m256i) -> __m256i {
    unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(p, scale)) }
}

regs!(ymm Avx2, avx2_dpbusd, avx2_dpwssd, true, _mm256_sign_epi8);

impl Gemm {
    /// The products of `w` (its first `nj` rows real) and `x` (its first `ni` rows real).
    fn tile(
        &self,
        w: [WeightRow; TILE_ROWS],
        x: ActGroup,
        k: usize,
        nj: usize,
        ni: usize,
    ) -> Tiles {
        let kind = self.kind;
        match self.isa {
            // SAFETY (all three): `with_isa` checked the instructions.
            Isa::Avx512Vnni if ni > Ymm::LANES => unsafe {
                tile_vnni::<Zmm, TILE_ROWS>(kind, w, x, k)
            },
            Isa::Avx512Vnni => unsafe { tile_vnni::<Ymm, TILE_ROWS>(kind, w, x, k) },
            Isa::Avx2 => unsafe { tile_avx2(kind, w, x, k, nj, ni) },
        }
    }
}

/// A tile in registers `R` (16 or 8 lanes), compiled for AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn tile_vnni<R: Regs, const RW: usize>(
    kind: Kind,
    w: [WeightRow; RW],
    x: ActGroup,
    k: usize,
) -> [[f32; LANES]; RW] {
    let mut acc = [[0.0; LANES]; RW];
    // SAFETY (both): compiled for what `R`'s intrinsics need.
    let mut sums = unsafe { [R::zero_f(); RW] };
    unsafe { tile_in::<R, RW>(kind, &w, &x, k, &mut sums) };
    for (a, s) in acc.iter_mut().zip(&sums) {
        unsafe { R::store(a, *s) };
    }
    acc
}

/// Weight rows per AVX2 register tile: their sums, partial sums and scales, with the line and
/// the weights' bytes, fill AVX2's 16 registers.
const AVX2_ROWS: usize = 4;

/// A tile in 8 lanes, compiled for AVX2 alone: each 8-lane half of the group (up to `ni`
/// rows) by [`AVX2_ROWS`] weight rows (up to `nj`) at a time, each over the whole row (in
/// 256-element spans, with the sums passed from one to the next, the tiles ran about 10%
/// slower: `-- cpu/matmul` shapes, one process alternating the two).
#[target_feature(enable = "avx2,fma")]
fn tile_avx2(
    kind: Kind,
    w: [WeightRow; TILE_ROWS],
    x: ActGroup,
    k: usize,
    nj: usize,
    ni: usize,
) -> Tiles {
    let mut t = [[0.0; LANES]; TILE_ROWS];
    for lane0 in (0..ni).step_by(8) {
        let half = x.lanes_from(lane0);
        for j0 in (0..nj).step_by(AVX2_ROWS) {
            let quad: [WeightRow; AVX2_ROWS] = std::array::from_fn(|j| w[j0 + j]);
            let mut acc = [_mm256_setzero_ps(); AVX2_ROWS];
            // SAFETY: compiled for what `Avx2`'s intrinsics need.
            unsafe { tile_in::<Avx2, AVX2_ROWS>(kind, &quad, &half, k, &mut acc) };
            for (tr, a) in t[j0..j0 + AVX2_ROWS].iter_mut().zip(&acc) {
                // SAFETY: 8 writable floats from `lane0` (at most 8 of 16).
                unsafe { _mm256_storeu_ps(tr[lane0..lane0 + 8].as_mut_ptr(), *a) };
            }
        }
    }
    t
}

/// Adds the products of weight rows `w` and the group `x` (`k` long) into `acc`, inlined into
/// a caller compiled for `R`.
///
/// # Safety
/// The caller is compiled for the instructions `R`'s methods use; [`Kind::FloatSigned`] only
/// with [`Avx2`].
#[inline(always)]
unsafe fn tile_in<R: Regs, const RW: usize>(
    kind: Kind,
    w: &[WeightRow; RW],
    x: &ActGroup,
    k: usize,
    acc: &mut [R::F; RW],
) {
    // SAFETY (all four): the caller's contract.
    match kind {
        Kind::Float => unsafe { float_tile::<R, RW, false>(w, x, k, acc) },
        Kind::FloatSigned => unsafe { float_tile::<R, RW, true>(w, x, k, acc) },
        Kind::Int => unsafe { int_tile::<R, RW, false>(w, x, k, acc) },
        Kind::IntFine => unsafe { int_tile::<R, RW, true>(w, x, k, acc) },
    }
}

/// A tile's products: per weight row, the group's activation rows.
type Tiles = [[f32; LANES]; TILE_ROWS];

/// Adds the products of [`Form::Float`] weight rows `w` and the group `x` of activation rows
/// (`k`, a multiple of 32, long) into `acc`: `vpdpbusd` per four elements, then per 32-element
/// block the sum times the weight's `α` and the activations' `d`, and the offset `β` times
/// the activations' sums; with `SIGNED` ([`Kind::FloatSigned`]), `u = |q|` meets the line
/// with `q`'s signs, and no offset.
///
/// # Safety
/// As [`tile_in`].
#[inline(always)]
unsafe fn float_tile<R: Regs, const RW: usize, const SIGNED: bool>(
    w: &[WeightRow; RW],
    x: &ActGroup,
    k: usize,
    acc: &mut [R::F; RW],
) {
    check(w, x, k);
    assert!(!SIGNED || w.iter().all(|r| r.q.len() >= k));
    let alpha = w.map(|r| r.alpha());
    // SAFETY (every block): the intrinsics need what the caller is compiled for;
    // `check` asserted the rows' and lines' lengths; the weights' four-byte reads are
    // unaligned.
    unsafe {
        for blk in 0..k / 32 {
            let mut sum = [R::zero_i(); RW];
            for c in 8 * blk..8 * (blk + 1) {
                let a = R::line_i(x.q.as_ptr().add(c), x.lane0);
                for j in 0..RW {
                    let u = R::splat_i(w[j].u.as_ptr().add(4 * c).cast::<i32>().read_unaligned());
                    sum[j] = if SIGNED {
                        let q = w[j].q.as_ptr().add(4 * c).cast::<i32>().read_unaligned();
                        R::dpbusd(sum[j], u, R::sign8(a, R::splat_i(q)))
                    } else {
                        R::dpbusd(sum[j], u, a)
                    };
                }
            }
            let dx = R::line_f(x.d.as_ptr().add(blk), x.lane0);
            let s = R::line_f(x.s32.as_ptr().add(blk), x.lane0);
            for j in 0..RW {
                let scale = R::mul(dx, R::splat_f(alpha[j][8 * blk]));
                acc[j] = R::fmadd(R::to_f(sum[j]), scale, acc[j]);
                if !SIGNED {
                    // the block's offset (its two `β` are equal)
                    acc[j] = R::fmadd(R::splat_f(w[j].beta[2 * blk]), s, acc[j]);
                }
            }
        }
    }
}

/// Adds the products of [`Form::Int`] weight rows `w` and the group `x` of activation rows
/// (`k`, a multiple of 256, long) into `acc`: each super-block's sums in i32,
/// `Σ scale · Σ u·q` (with VNNI a group's `Σ u·q` in i32 times its scale; with AVX2 alone
/// u8 × i8 pairs to i16, then i16 × i16 with the group's scale), then
/// `d_w·d_x` times that in f32; the offsets per 16 elements where `FINE`, else per 32 (whose
/// two `β` are equal).
///
/// # Safety
/// As [`tile_in`].
#[inline(always)]
unsafe fn int_tile<R: Regs, const RW: usize, const FINE: bool>(
    w: &[WeightRow; RW],
    x: &ActGroup,
    k: usize,
    acc: &mut [R::F; RW],
) {
    check(w, x, k);
    assert!(w.iter().all(|r| r.d.len() >= k / 256));
    let scales = w.map(|r| r.scales());
    // SAFETY (every block): as in `float_tile`.
    unsafe {
        for b in 0..k / 256 {
            let mut sum = [R::zero_i(); RW];
            // with VNNI: each group's `Σ u·q` by `vpdpbusd`, four elements to an instruction,
            // then times its scale in i32 (11 instructions per 32 elements and weight row
            // where `vpmaddubsw` then `vpdpwssd` per four elements took 16; Q6_K's groups of
            // 16: 7 against 8); a group's sum is at most 32 · 63 · 128, its product with a
            // scale below 2²⁰
            for g in (0..16 * (!R::SUM16) as usize).step_by(2 - FINE as usize) {
                let g = 16 * b + g;
                let steps = if FINE { 4 } else { 8 };
                let mut gs = [R::zero_i(); RW];
                for c in 4 * g..4 * g + steps {
                    let a = R::line_i(x.q.as_ptr().add(c), x.lane0);
                    for j in 0..RW {
                        let u = w[j].u.as_ptr().add(4 * c).cast::<i32>().read_unaligned();
                        gs[j] = R::dpbusd(gs[j], R::splat_i(u), a);
                    }
                }
                for j in 0..RW {
                    // (the scale's i16 pair as one i32)
                    let sc = R::splat_i(scales[j][g] as i32 >> 16);
                    sum[j] = R::add32(sum[j], R::mul32(gs[j], sc));
                }
            }
            for g in (16 * b..16 * (b + 1)).filter(|_| R::SUM16) {
                let mut sc = [R::zero_i(); RW];
                for j in 0..RW {
                    sc[j] = R::splat_i(scales[j][g] as i32);
                }
                // `depth` lines' i16 pairs added before they meet the scale: each pair is
                // at most 2 · 31 · 128 (Q4_K, Q5_K) or 2 · 63 · 128 (Q6_K), so four or two
                // of them stay below 2¹⁵
                let depth = if FINE { 2 } else { 4 };
                for c0 in (4 * g..4 * (g + 1)).step_by(depth) {
                    let mut p = [R::zero_i(); RW];
                    for c in c0..c0 + depth {
                        let a = R::line_i(x.q.as_ptr().add(c), x.lane0);
                        for j in 0..RW {
                            let u = w[j].u.as_ptr().add(4 * c).cast::<i32>().read_unaligned();
                            let m = R::maddubs(R::splat_i(u), a);
                            p[j] = if c == c0 { m } else { R::add16(p[j], m) };
                        }
                    }
                    for j in 0..RW {
                        sum[j] = R::dp_words(sum[j], p[j], sc[j]);
                    }
                }
            }
            let dx = R::line_f(x.d.as_ptr().add(8 * b), x.lane0);
            for j in 0..RW {
                let scale = R::mul(dx, R::splat_f(w[j].d[b]));
                acc[j] = R::fmadd(R::to_f(sum[j]), scale, acc[j]);
            }
            let (per, lines) = if FINE { (16, x.s) } else { (32, x.s32) };
            for h in 256 / per * b..256 / per * (b + 1) {
                let s = R::line_f(lines.as_ptr().add(h), x.lane0);
                for j in 0..RW {
                    let beta = R::splat_f(w[j].beta[h * per / 16]);
                    acc[j] = R::fmadd(beta, s, acc[j]);
                }
            }
        }
    }
}

/// Asserts that the weight rows and the group hold `k` elements with their offsets, and at
/// least [`Form::Int`]'s scales (`float_tile` reads `α` through bounds checks).
fn check<const RW: usize>(w: &[WeightRow; RW], x: &ActGroup, k: usize) {
    let groups = k / 16;
    assert!(
        w.iter()
            .all(|r| r.u.len() >= k && r.scale.len() >= k / 4 && r.beta.len() >= groups)
    );
    assert!(x.q.len() >= k / 4 && x.s.len() >= groups);
    assert!(x.d.len() >= k / 32 && x.s32.len() >= k / 32);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{lcg, random_row, row_of};
    use super::*;
    use crate::cpu::qdot::Kernel;

    /// Each unpacked element `α·u + β` equals the dequantized weight.
    #[test]
    fn unpacked_rows_equal_the_dequantized_rows() {
        if Isa::best().is_none() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut seed = 5u64;
        for dtype in DType::ALL.into_iter().filter(|d| d.is_quantized()) {
            let k = 512;
            let w = random_row(dtype, k, &mut seed);
            let mut want = vec![0.0f32; k];
            assert!(weft_graph::quant::dequantize(dtype, &w, &mut want));
            let mut buf = Unpacked::default();
            buf.fit(k, 1);
            // SAFETY: every `Isa` (one was found above) includes AVX2, FMA and F16C.
            let (unpack, form) = unsafe { unpack::for_dtype(dtype) }.expect("unpacking");
            unpack(&w, buf.row_mut(0, k));
            let r = buf.row(0, k);
            for e in 0..k {
                let alpha = match form {
                    Form::Float => r.alpha()[e / 4],
                    Form::Int => r.d[e / 256] * r.scales()[e / 16] as i16 as f32,
                };
                let got = alpha * r.u[e] as f32 + r.beta[e / 16];
                let tol = 1e-6 * (want[e].abs() + r.beta[e / 16].abs() + 1e-3);
                assert!(
                    (got - want[e]).abs() <= tol,
                    "{dtype} element {e}: {got} vs {}",
                    want[e]
                );
            }
            if dtype == DType::Q8_0 {
                // the signed form: `α·q`, with `u = |q|`
                let mut buf = Unpacked::default();
                buf.fit(k, 1);
                // SAFETY: as above.
                let signed = unsafe { unpack::q8_0_signed() };
                signed(&w, buf.row_mut(0, k));
                let r = buf.row(0, k);
                for e in 0..k {
                    let q = r.q[e] as i8;
                    assert_eq!(r.u[e], q.unsigned_abs(), "element {e}");
                    assert_eq!(r.alpha()[e / 4] * q as f32, want[e], "element {e}");
                }
            }
        }
    }

    /// The activations of a case of [`tiles_equal_the_one_row_products`].
    #[derive(Clone, Copy)]
    enum Fill {
        Random,
        Positive,
        Largest,
    }

    /// Every tile product equals the one-row kernel's, for shapes with short tiles on both
    /// sides.
    #[test]
    fn tiles_equal_the_one_row_products() {
        let isas: Vec<Isa> = [Isa::Avx512Vnni, Isa::Avx2]
            .into_iter()
            .filter(|i| i.available())
            .collect();
        if isas.is_empty() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        eprintln!("tiles with {isas:?}");
        let mut seed = 9u64;
        let dtypes = DType::ALL.into_iter().filter(|d| d.is_quantized());
        for (isa, dtype) in isas
            .iter()
            .flat_map(|&i| dtypes.clone().map(move |d| (i, d)))
        {
            // then: a row length whose lines of d and s per 16 and 32 elements end past a
            // whole 16 × 16 transpose (the 32-element formats only); activations all of one
            // sign, where Q8_0's `u = q + 128` and its `β = −128·d` cancel the most; three
            // groups of activation rows (the last partial) with three sets of weight rows (the
            // last partial); and every weight at its format's largest value against
            // activations of ±1 (rows alternating), whose bytes are ±127: the largest sums
            // the AVX2 tiles keep in i16
            for (k, m, n, fill) in [
                (256, 1, 1, Fill::Random),
                (512, 6, 7, Fill::Random),
                (768, 9, 4, Fill::Random),
                (256, 4, 5, Fill::Random),
                (320, 8, 5, Fill::Random),
                (512, 5, 3, Fill::Positive),
                (512, 37, 17, Fill::Random),
                (512, 10, 5, Fill::Largest),
            ] {
                let x: Vec<f32> = (0..m * k)
                    .map(|e| match fill {
                        Fill::Random => lcg(&mut seed),
                        Fill::Positive => lcg(&mut seed).abs(),
                        Fill::Largest => [1.0, -1.0][e / k % 2],
                    })
                    .collect();
                let Some(acts) = Acts::quantize(dtype, &x, k) else {
                    assert_ne!(k % dtype.block_elems(), 0, "{dtype} k={k}");
                    continue; // (a K-quant at k = 320)
                };
                let rows: Vec<Vec<u8>> = (0..n)
                    .map(|_| match fill {
                        Fill::Largest => row_of(dtype, k, &mut seed, |_| 0xFF),
                        _ => random_row(dtype, k, &mut seed),
                    })
                    .collect();
                let gemm = Gemm::with_isa(dtype, &acts, k, isa).expect("tiles");
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
                            "{isa:?} {dtype} k={k} w{j}·x{i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

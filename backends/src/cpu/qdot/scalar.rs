//! The block dot products in plain Rust: the definition the SIMD kernels must equal.

use super::{Kernel, Q8Block, Q8KBlock};
use weft_graph::DType;
use weft_graph::quant::{q5_values, scale_min_k4};

pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

pub fn kernel(dtype: DType) -> Option<Kernel> {
    Some(match dtype {
        DType::Q8_0 => Kernel::B32(q8_0, None),
        DType::Q4_0 => Kernel::B32(q4_0, None),
        DType::Q4_1 => Kernel::B32(q4_1, None),
        DType::Q5_0 => Kernel::B32(q5_0, None),
        DType::Q5_1 => Kernel::B32(q5_1, None),
        DType::Q4K => Kernel::K(q4_k, None),
        DType::Q5K => Kernel::K(q5_k, None),
        DType::Q6K => Kernel::K(q6_k, None),
        _ => return None,
    })
}

fn q8_0(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0.0f32;
    for (b, y) in w.chunks_exact(34).zip(a) {
        let s: i32 = (0..32)
            .map(|j| b[2 + j] as i8 as i32 * y.qs[j] as i32)
            .sum();
        acc += f16_at(b, 0) * y.d * s as f32;
    }
    acc
}

/// `Σ nibble·q` of a 32-element block: low nibbles are elements 0..16, high ones 16..32.
fn nibble_dot(qs: &[u8], y: &[i8; 32]) -> i32 {
    (0..16)
        .map(|j| (qs[j] & 0xF) as i32 * y[j] as i32 + (qs[j] >> 4) as i32 * y[j + 16] as i32)
        .sum()
}

fn q4_0(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0.0f32;
    for (b, y) in w.chunks_exact(18).zip(a) {
        let s = nibble_dot(&b[2..18], &y.qs);
        acc += f16_at(b, 0) * (y.d * s as f32 - 8.0 * y.s);
    }
    acc
}

fn q4_1(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0.0f32;
    for (b, y) in w.chunks_exact(20).zip(a) {
        let s = nibble_dot(&b[4..20], &y.qs);
        acc += f16_at(b, 0) * y.d * s as f32 + f16_at(b, 2) * y.s;
    }
    acc
}

/// `Σ q·y` of a Q5_0/Q5_1 block whose `qh` starts at byte `h`.
fn q5_dot(b: &[u8], h: usize, y: &[i8; 32]) -> i32 {
    q5_values(b, h)
        .iter()
        .zip(y)
        .map(|(&q, &v)| q as i32 * v as i32)
        .sum()
}

fn q5_0(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0.0f32;
    for (b, y) in w.chunks_exact(22).zip(a) {
        acc += f16_at(b, 0) * (y.d * q5_dot(b, 2, &y.qs) as f32 - 16.0 * y.s);
    }
    acc
}

fn q5_1(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0.0f32;
    for (b, y) in w.chunks_exact(24).zip(a) {
        acc += f16_at(b, 0) * y.d * q5_dot(b, 4, &y.qs) as f32 + f16_at(b, 2) * y.s;
    }
    acc
}

/// Σ over a K-quant super-block's 8 sub-blocks of `scale·Σq·y`, and of `min·Σy`.
fn k_sums(b: &[u8], y: &Q8KBlock, q: impl Fn(usize) -> i32) -> (i32, i32) {
    let (mut sumi, mut summ) = (0i32, 0i32);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &b[4..16]);
        let s: i32 = (j * 32..j * 32 + 32).map(|e| q(e) * y.qs[e] as i32).sum();
        sumi += sc as i32 * s;
        summ += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
    }
    (sumi, summ)
}

/// Element `e` of a Q4_K/Q5_K super-block: sub-block pair `c = e / 64` shares 32 bytes of `qs`,
/// the first 32 elements in the low nibbles.
fn k4_nibble(qs: &[u8], e: usize) -> i32 {
    let (c, l) = (e / 64, e % 64);
    let b = qs[c * 32 + l % 32];
    (if l < 32 { b & 0xF } else { b >> 4 }) as i32
}

fn q4_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let mut acc = 0.0f32;
    for (b, y) in w.chunks_exact(144).zip(a) {
        let (sumi, summ) = k_sums(b, y, |e| k4_nibble(&b[16..144], e));
        acc += y.d * (f16_at(b, 0) * sumi as f32 - f16_at(b, 2) * summ as f32);
    }
    acc
}

fn q5_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let mut acc = 0.0f32;
    for (b, y) in w.chunks_exact(176).zip(a) {
        let q = |e: usize| {
            let hi = (b[16 + e % 32] >> (e / 32)) & 1;
            k4_nibble(&b[48..176], e) + 16 * hi as i32
        };
        let (sumi, summ) = k_sums(b, y, q);
        acc += y.d * (f16_at(b, 0) * sumi as f32 - f16_at(b, 2) * summ as f32);
    }
    acc
}

/// Element `e` of a Q6_K super-block, without its offset of 32.
fn q6_value(b: &[u8], e: usize) -> i32 {
    let (n, t, l) = (e / 128, e % 128 / 32, e % 32);
    let ql = b[n * 64 + l + 32 * (t & 1)];
    let low = if t < 2 { ql & 0xF } else { ql >> 4 };
    let high = (b[128 + n * 32 + l] >> (2 * t)) & 3;
    (low | (high << 4)) as i32
}

fn q6_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let mut acc = 0.0f32;
    for (b, y) in w.chunks_exact(210).zip(a) {
        let mut sumi = 0i32;
        for g in 0..16 {
            let s: i32 = (g * 16..g * 16 + 16)
                .map(|e| q6_value(b, e) * y.qs[e] as i32)
                .sum();
            sumi += b[192 + g] as i8 as i32 * (s - 32 * y.bsums[g] as i32);
        }
        acc += f16_at(b, 208) * y.d * sumi as f32;
    }
    acc
}

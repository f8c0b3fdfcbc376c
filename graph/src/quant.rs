//! GGUF block formats and their exact dequantization (the arithmetic order of the reference
//! implementation, so results match bit for bit).
//!
//! Layouts (bytes, little endian):
//! - `Q8_0`: `d: f16, qs: [i8; 32]` → `d·q`
//! - `Q4_0`: `d: f16, qs: [u8; 16]` → low nibbles are elements 0..16, high 16..32, `d·(q−8)`
//! - `Q4_1`: `d: f16, m: f16, qs: [u8; 16]` → `d·q + m`
//! - `Q5_0`: `d: f16, qh: u32, qs: [u8; 16]`: as Q4_0 with bit `j` of `qh` the fifth bit of
//!   element `j`, `d·(q−16)`
//! - `Q5_1`: `d: f16, m: f16, qh: u32, qs: [u8; 16]` → `d·q + m`, the fifth bits as in Q5_0
//! - `Q4_K`: `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`: 8 sub-blocks of 32 with 6-bit
//!   scales and mins → `(d·sc)·q − dmin·m`
//! - `Q5_K`: `d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`: as Q4_K plus a fifth
//!   bit per element from `qh`
//! - `Q6_K`: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16` → `(d·sc)·(q − 32)`

use crate::dtype::DType;
use half::{bf16, f16};

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` of a K-quant's packed `scales`.
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = d * (b[2 + j] as i8) as f32;
    }
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = d * ((q & 0xF) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = (q & 0xF) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// The 5-bit values of a Q5_0/Q5_1 block whose `qh` starts at byte `h` (its 16 nibble bytes
/// follow): element `j` in `0..16` takes the low nibble of byte `j`, `j + 16` the high one.
pub fn q5_values(b: &[u8], h: usize) -> [u8; 32] {
    let qh = u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]);
    let mut q = [0u8; 32];
    for j in 0..16 {
        let byte = b[h + 4 + j];
        q[j] = (byte & 0xF) | (((qh >> j) & 1) << 4) as u8;
        q[j + 16] = (byte >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
    }
    q
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, q) in y.iter_mut().zip(q5_values(b, 2)) {
        *o = (q as i32 - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (o, q) in y.iter_mut().zip(q5_values(b, 4)) {
        *o = q as f32 * d + m;
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (c, chunk) in y.chunks_exact_mut(64).enumerate() {
        let q = &qs[c * 32..c * 32 + 32];
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, mm1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, mm2) = (d * s2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            chunk[l] = d1 * (q[l] & 0xF) as f32 - mm1;
            chunk[l + 32] = d2 * (q[l] >> 4) as f32 - mm2;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (c, chunk) in y.chunks_exact_mut(64).enumerate() {
        let q = &qs[c * 32..c * 32 + 32];
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, mm1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, mm2) = (d * s2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            chunk[l] = d1 * ((q[l] & 0xF) + h1) as f32 - mm1;
            chunk[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - mm2;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for (n, chunk) in y.chunks_exact_mut(128).enumerate() {
        let ql = &b[n * 64..n * 64 + 64];
        let qh = &b[128 + n * 32..128 + n * 32 + 32];
        let sc = &b[192 + n * 8..192 + n * 8 + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            chunk[l] = s(0) * q1 as f32;
            chunk[l + 32] = s(2) * q2 as f32;
            chunk[l + 64] = s(4) * q3 as f32;
            chunk[l + 96] = s(6) * q4 as f32;
        }
    }
}

/// Decodes `out.len()` elements stored as `dtype` in `bytes` (which must hold exactly that many:
/// `dtype.bytes_for(out.len())`). Returns false when the sizes do not agree or `dtype` is `I32`.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) -> bool {
    if dtype.bytes_for(out.len()) != Some(bytes.len()) {
        return false;
    }
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            // whole slices convert with the CPU's f16 instructions where it has them
            Ok(h) if cfg!(target_endian = "little") => {
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(h, out)
            }
            _ => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        },
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::I32 => return false,
        q => {
            let f = match q {
                DType::Q8_0 => q8_0,
                DType::Q4_0 => q4_0,
                DType::Q4_1 => q4_1,
                DType::Q5_0 => q5_0,
                DType::Q5_1 => q5_1,
                DType::Q4K => q4_k,
                DType::Q5K => q5_k,
                _ => q6_k,
            };
            let (be, bb) = (q.block_elems(), q.block_bytes());
            for (o, b) in out.chunks_exact_mut(be).zip(bytes.chunks_exact(bb)) {
                f(b, o);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_block() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        for j in 0..32 {
            b[2 + j] = (j as i8 - 16) as u8;
        }
        let mut y = [0.0; 32];
        assert!(dequantize(DType::Q8_0, &b, &mut y));
        assert_eq!(y[0], -8.0);
        assert_eq!(y[31], 7.5);
    }

    #[test]
    fn q4_0_nibble_order() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b[2] = 0xF1; // element 0 = 1, element 16 = 15
        let mut y = [0.0; 32];
        assert!(dequantize(DType::Q4_0, &b, &mut y));
        assert_eq!((y[0], y[16], y[1]), (-14.0, 14.0, -16.0));
    }

    #[test]
    fn q5_high_bits() {
        // qh bit j is element j's fifth bit: element 0 = 0x10 | 1, element 17 = 0x10 | 0xF.
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        b[2..6].copy_from_slice(&(1u32 | 1 << 17).to_le_bytes());
        b[6] = 0x01;
        b[7] = 0xF0;
        let mut y = [0.0; 32];
        assert!(dequantize(DType::Q5_0, &b, &mut y));
        assert_eq!((y[0], y[16], y[17], y[1]), (1.0, -16.0, 15.0, -16.0));
        let mut b1 = vec![0u8; 24];
        b1[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b1[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b1[4..24].copy_from_slice(&b[2..22]);
        assert!(dequantize(DType::Q5_1, &b1, &mut y));
        assert_eq!((y[0], y[16], y[17], y[1]), (33.0, -1.0, 61.0, -1.0));
    }

    #[test]
    fn k_scales_unpack() {
        // j < 4 reads the low 6 bits; j ≥ 4 combines nibbles with the top bits of earlier bytes.
        let mut s = [0u8; 12];
        s[0] = 0b1100_0101; // scale 5 for j=0, top bits 3 go to j=4's scale
        s[4] = 0b0000_0111; // min 7 for j=0
        s[8] = 0x2A; // j=4: low nibble 0xA scale, high nibble 2 min
        assert_eq!(scale_min_k4(0, &s), (5, 7));
        assert_eq!(scale_min_k4(4, &s), (0xA | (3 << 4), 2));
    }

    #[test]
    fn wrong_size_is_refused() {
        let mut y = [0.0; 32];
        assert!(!dequantize(DType::Q4K, &[0; 144], &mut y));
    }
}

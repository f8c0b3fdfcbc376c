//! Read access to a node's values: its storage bytes, layout and dtype.

use std::borrow::Cow;
use weft_graph::quant::dequantize;
use weft_graph::{DType, Layout, Shape};

/// Elements from which [`TensorRef::gather_f32`] copies rows on the thread team.
const GATHER_ON_TEAM_FROM: usize = 1 << 16;

/// A source operand: the whole storage buffer it lives in plus how to read it.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub bytes: &'a [u8],
    pub layout: Layout,
    pub dtype: DType,
}

impl<'a> TensorRef<'a> {
    /// Dense F32 `values` of `shape`.
    pub fn dense(values: &'a [f32], shape: Shape) -> TensorRef<'a> {
        TensorRef {
            bytes: bytemuck::cast_slice(values),
            layout: Layout::contiguous(shape),
            dtype: DType::F32,
        }
    }

    pub fn dims(&self) -> &[usize] {
        self.layout.shape.dims()
    }

    pub fn numel(&self) -> usize {
        self.layout.shape.numel()
    }

    /// Dense f32 values (borrowed when already dense F32).
    pub fn f32(&self) -> Cow<'a, [f32]> {
        let n = self.numel();
        if self.dtype == DType::F32 && self.layout.is_contiguous() {
            let start = self.layout.offset * 4;
            return Cow::Borrowed(bytemuck::cast_slice(&self.bytes[start..start + n * 4]));
        }
        Cow::Owned(self.gather_f32(self.layout))
    }

    /// The values of a dense F16 tensor as they lie (None for any other dtype or layout).
    pub fn f16(&self) -> Option<&'a [half::f16]> {
        if self.dtype != DType::F16 || !self.layout.is_contiguous() {
            return None;
        }
        let start = self.layout.offset * 2;
        let bytes = self.bytes.get(start..start + self.numel() * 2)?;
        bytemuck::try_cast_slice(bytes).ok()
    }

    /// Dense f32 values after broadcasting to `layout` (which must address this storage).
    pub fn gather_f32(&self, layout: Layout) -> Vec<f32> {
        let mut out = vec![0.0; layout.shape.numel()];
        let b = self.bytes;
        match self.dtype {
            // rows of contiguous elements (a projection's columns) copied a row at a time
            DType::F32 if layout.strides().last() == Some(&1) && layout.shape.last() > 0 => {
                let v: &[f32] = bytemuck::cast_slice(b);
                let d = layout.shape.last();
                if out.len() < GATHER_ON_TEAM_FROM {
                    layout
                        .for_each_row(|r, o| out[r * d..(r + 1) * d].copy_from_slice(&v[o..o + d]));
                } else {
                    // a prompt's rows (a Mamba2 scan's x and z, views of the projection's
                    // output: 1.6 ms a layer on one thread at 512 tokens) on the team
                    let mut starts = Vec::with_capacity(out.len() / d);
                    layout.for_each_row(|_, o| starts.push(o));
                    let per = (1usize << 14).div_ceil(d);
                    super::team::global().chunks_mut(&mut out, per * d, |c, part| {
                        for (row, &o) in part.chunks_exact_mut(d).zip(&starts[c * per..]) {
                            row.copy_from_slice(&v[o..o + d]);
                        }
                    });
                }
            }
            DType::F32 => {
                let v: &[f32] = bytemuck::cast_slice(b);
                layout.for_each_offset(|i, o| out[i] = v[o]);
            }
            DType::F16 => {
                let v: &[half::f16] = bytemuck::cast_slice(b);
                layout.for_each_offset(|i, o| out[i] = v[o].to_f32());
            }
            DType::BF16 => {
                let v: &[half::bf16] = bytemuck::cast_slice(b);
                layout.for_each_offset(|i, o| out[i] = v[o].to_f32());
            }
            DType::I32 => {
                let v: &[i32] = bytemuck::cast_slice(b);
                layout.for_each_offset(|i, o| out[i] = v[o] as f32);
            }
            _ => unreachable!("quantized tensors are only read by rows"),
        }
        out
    }

    /// Dense i32 values.
    pub fn i32(&self) -> Cow<'a, [i32]> {
        let n = self.numel();
        let v: &'a [i32] = bytemuck::cast_slice(self.bytes);
        if self.layout.is_contiguous() {
            return Cow::Borrowed(&v[self.layout.offset..self.layout.offset + n]);
        }
        let mut out = vec![0; n];
        self.layout.for_each_offset(|i, o| out[i] = v[o]);
        Cow::Owned(out)
    }

    /// Row length (innermost dimension).
    pub fn row_len(&self) -> usize {
        self.layout.shape.last()
    }

    /// The stored bytes of row `r` (counting rows of a dense tensor of any dtype).
    pub fn row_bytes(&self, r: usize) -> &'a [u8] {
        let (b0, nb) = self.row_at(r);
        &self.bytes[b0..b0 + nb]
    }

    /// The stored bytes of rows `r0 .. r0 + n`, one slice per row (as [`TensorRef::row_bytes`]
    /// gives them, without its arithmetic per row).
    pub fn rows_bytes(&self, r0: usize, n: usize) -> std::slice::ChunksExact<'a, u8> {
        let (b0, nb) = self.row_at(r0);
        self.bytes[b0..b0 + n * nb].chunks_exact(nb.max(1))
    }

    /// Where row `r`'s bytes start, and how many a row holds.
    fn row_at(&self, r: usize) -> (usize, usize) {
        let k = self.row_len();
        let start = self.layout.offset + r * k;
        let b0 = start / self.dtype.block_elems() * self.dtype.block_bytes();
        (b0, self.dtype.bytes_for(k).unwrap_or(0))
    }

    /// Decodes row `r` (counting rows of a dense tensor of any dtype) into `out`.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let ok = dequantize(self.dtype, self.row_bytes(r), out);
        debug_assert!(ok, "row sizes are checked when the graph is built");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dense f16 view is its elements as they lie (from its offset); other dtypes and
    /// strided views are not.
    #[test]
    fn f16_reads_dense_f16_views_only() {
        let vals: Vec<half::f16> = (0..24).map(|i| half::f16::from_f32(i as f32)).collect();
        let bytes: &[u8] = bytemuck::cast_slice(&vals);
        let mut layout = Layout::contiguous(Shape::new(&[4, 5]).unwrap());
        layout.offset = 3;
        let t = TensorRef {
            bytes,
            layout,
            dtype: DType::F16,
        };
        assert_eq!(t.f16(), Some(&vals[3..23]));
        let f32s = TensorRef {
            dtype: DType::F32,
            ..t
        };
        assert_eq!(f32s.f16(), None);
        // a transposed view: [4, 5] with the strides of a [5, 4] tensor's columns
        let mut transposed = Layout::contiguous(Shape::new(&[4, 5]).unwrap());
        transposed.strides[..2].copy_from_slice(&[1, 4]);
        let strided = TensorRef {
            layout: transposed,
            ..t
        };
        assert_eq!(strided.f16(), None);
    }

    /// Column slices of a wide f32 tensor (a projection's x and z), below and above the size
    /// from which rows are copied on the team, read the elements `for_each_offset` names.
    #[test]
    fn gather_f32_copies_strided_rows_below_and_above_the_team_size() {
        for (rows, cols) in [(7, 40), (300, 257), (1030, 96)] {
            let width = 3 * cols + 5;
            let vals: Vec<f32> = (0..rows * width).map(|i| i as f32 * 0.5).collect();
            let mut layout = Layout::contiguous(Shape::new(&[rows, cols]).unwrap());
            layout.strides[0] = width;
            layout.offset = cols + 2;
            let t = TensorRef::dense(&vals, Shape::new(&[vals.len()]).unwrap());
            let mut want = vec![0.0; rows * cols];
            layout.for_each_offset(|i, o| want[i] = vals[o]);
            assert_eq!(t.gather_f32(layout), want, "{rows} x {cols}");
        }
    }

    #[test]
    fn rows_bytes_are_the_rows_row_bytes_gives() {
        // a weight's rows from row 2 of an expert that starts 3 rows into its storage
        for dtype in [DType::Q4K, DType::Q8_0, DType::F16, DType::F32] {
            let k = 512;
            let rows = 9;
            let bytes: Vec<u8> = (0..dtype.bytes_for(rows * k).unwrap())
                .map(|i| (i * 7 % 251) as u8)
                .collect();
            let mut layout = Layout::contiguous(Shape::new(&[6, k]).unwrap());
            layout.offset = 3 * k;
            let t = TensorRef {
                bytes: &bytes,
                layout,
                dtype,
            };
            let got: Vec<&[u8]> = t.rows_bytes(2, 4).collect();
            let want: Vec<&[u8]> = (2..6).map(|r| t.row_bytes(r)).collect();
            assert_eq!(got, want, "{dtype}");
            assert_eq!(t.rows_bytes(1, 0).count(), 0);
        }
    }
}

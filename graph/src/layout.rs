//! Shapes (up to four dimensions, row-major: the last dimension is the fastest) and strided
//! layouts, so that reshape, permute, slices and broadcasts are views that copy nothing.

use std::fmt;

/// Largest supported rank.
pub const MAX_RANK: usize = 4;

/// Dimensions of a tensor, outermost first.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    /// A shape from its dimensions; `None` for rank 0 or a rank above [`MAX_RANK`].
    pub fn new(dims: &[usize]) -> Option<Shape> {
        if dims.is_empty() || dims.len() > MAX_RANK {
            return None;
        }
        let mut d = [1; MAX_RANK];
        d[..dims.len()].copy_from_slice(dims);
        Some(Shape {
            dims: d,
            rank: dims.len() as u8,
        })
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }

    pub fn rank(&self) -> usize {
        self.rank as usize
    }

    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// The innermost (fastest) dimension.
    pub fn last(&self) -> usize {
        self.dims[self.rank as usize - 1]
    }

    /// Number of rows of length [`Shape::last`].
    pub fn rows(&self) -> usize {
        let l = self.last();
        self.numel().checked_div(l).unwrap_or(0)
    }

    /// Dimension `i` counted from the end (0 is the innermost); 1 past the rank.
    pub fn rev(&self, i: usize) -> usize {
        let r = self.rank as usize;
        if i < r { self.dims[r - 1 - i] } else { 1 }
    }

    /// The same dimensions padded with leading ones to rank 4.
    pub fn padded(&self) -> [usize; MAX_RANK] {
        let mut out = [1; MAX_RANK];
        let r = self.rank as usize;
        out[MAX_RANK - r..].copy_from_slice(self.dims());
        out
    }

    /// Numpy-style broadcast of two shapes (aligned at the innermost dimension).
    pub fn broadcast(a: Shape, b: Shape) -> Option<Shape> {
        let rank = a.rank().max(b.rank());
        let mut dims = [1usize; MAX_RANK];
        for i in 0..rank {
            let (x, y) = (a.rev(i), b.rev(i));
            dims[rank - 1 - i] = match (x, y) {
                _ if x == y => x,
                (1, _) => y,
                (_, 1) => x,
                _ => return None,
            };
        }
        Shape::new(&dims[..rank])
    }

    /// Row-major strides (in elements) of a contiguous tensor of this shape.
    pub fn contiguous_strides(&self) -> [usize; MAX_RANK] {
        let mut s = [0; MAX_RANK];
        let mut acc = 1;
        for i in (0..self.rank as usize).rev() {
            s[i] = acc;
            acc *= self.dims[i];
        }
        s
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// Where the elements of a tensor sit in its buffer: shape, strides and offset, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    pub shape: Shape,
    pub strides: [usize; MAX_RANK],
    pub offset: usize,
}

impl Layout {
    /// The stride between the rows of the layout when each row (its last dimension) is
    /// contiguous and the rows are evenly spaced over all its outer dimensions (a dense tensor,
    /// or the first columns of a wider one), else `None`.
    pub fn row_stride(&self) -> Option<usize> {
        let dims = self.shape.dims();
        let r = dims.len();
        if r == 0 || (dims[r - 1] > 1 && self.strides[r - 1] != 1) {
            return None;
        }
        if r == 1 {
            return Some(dims[0]);
        }
        let lda = self.strides[r - 2];
        // each outer dimension steps over the rows of those inside it (sizes of 1 step nowhere)
        let mut rows = dims[r - 2];
        for i in (0..r - 2).rev() {
            if dims[i] > 1 && self.strides[i] != rows * lda {
                return None;
            }
            rows *= dims[i];
        }
        Some(if dims[r - 2] > 1 || rows > 1 {
            lda
        } else {
            dims[r - 1]
        })
    }

    pub fn contiguous(shape: Shape) -> Layout {
        Layout {
            shape,
            strides: shape.contiguous_strides(),
            offset: 0,
        }
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides[..self.shape.rank()]
    }

    /// How many elements this layout's element order repeats after: `Some(p)` when its
    /// innermost dimensions, from some dimension on, are row-major dense and every dimension
    /// before them has stride 0 (a broadcast of a dense trailing block, such as a bias over
    /// every row), so that element `i` is the element at `offset + i % p`. A dense layout
    /// repeats after all its elements; `None` for other strides.
    pub fn period(&self) -> Option<usize> {
        let (dims, strides) = (self.shape.dims(), self.strides());
        let mut p = 1;
        let mut k = dims.len();
        while k > 0 && (dims[k - 1] == 1 || strides[k - 1] == p) {
            p *= dims[k - 1];
            k -= 1;
        }
        (0..k).all(|i| dims[i] == 1 || strides[i] == 0).then_some(p)
    }

    /// Row-major dense (dimensions of size one may have any stride); the offset may be non-zero.
    pub fn is_contiguous(&self) -> bool {
        let want = self.shape.contiguous_strides();
        self.shape
            .dims()
            .iter()
            .enumerate()
            .all(|(i, &d)| d == 1 || self.strides[i] == want[i])
    }

    /// Element offset of a multi-index (one entry per dimension).
    pub fn index(&self, idx: &[usize]) -> usize {
        self.offset
            + idx
                .iter()
                .zip(self.strides())
                .map(|(i, s)| i * s)
                .sum::<usize>()
    }

    /// One past the largest element offset this layout touches (0 for an empty tensor).
    pub fn extent(&self) -> usize {
        if self.shape.numel() == 0 {
            return 0;
        }
        self.offset
            + 1
            + self
                .shape
                .dims()
                .iter()
                .zip(self.strides())
                .map(|(d, s)| (d - 1) * s)
                .sum::<usize>()
    }

    /// The layout seen through a broadcast to `to` (stride 0 on broadcast dimensions).
    /// `None` when the shapes do not broadcast that way.
    pub fn broadcast_to(&self, to: Shape) -> Option<Layout> {
        if to.rank() < self.shape.rank() {
            return None;
        }
        let mut strides = [0; MAX_RANK];
        let r = self.shape.rank();
        for i in 0..to.rank() {
            let td = to.rev(i);
            let o = to.rank() - 1 - i;
            if i < r {
                let sd = self.shape.rev(i);
                let ss = self.strides[r - 1 - i];
                strides[o] = if sd == td {
                    ss
                } else if sd == 1 {
                    0
                } else {
                    return None;
                };
            }
        }
        Some(Layout {
            shape: to,
            strides,
            offset: self.offset,
        })
    }

    /// Calls `f(row, offset)` for each row (innermost dimension) in row-major order: its index
    /// and the storage offset of its first element (the rest follow `strides()`'s last).
    pub fn for_each_row(&self, mut f: impl FnMut(usize, usize)) {
        let p = self.shape.padded();
        let r = self.shape.rank();
        let mut st = [0; MAX_RANK];
        st[MAX_RANK - r..].copy_from_slice(self.strides());
        let mut row = 0;
        for a in 0..p[0] {
            for b in 0..p[1] {
                for c in 0..p[2] {
                    f(row, self.offset + a * st[0] + b * st[1] + c * st[2]);
                    row += 1;
                }
            }
        }
    }

    /// Calls `f(linear_index, element_offset)` for every element in row-major order.
    pub fn for_each_offset(&self, mut f: impl FnMut(usize, usize)) {
        let d = self.shape.last();
        let step = self.strides().last().copied().unwrap_or(1);
        self.for_each_row(|row, base| {
            for j in 0..d {
                f(row * d + j, base + j * step);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(d: &[usize]) -> Shape {
        Shape::new(d).expect("valid shape")
    }

    fn strided(dims: &[usize], strides: &[usize]) -> Layout {
        let mut st = [0; MAX_RANK];
        st[..strides.len()].copy_from_slice(strides);
        Layout {
            shape: s(dims),
            strides: st,
            offset: 3,
        }
    }

    #[test]
    fn periods_are_those_of_the_element_order() {
        let c = |d: &[usize]| Layout::contiguous(s(d));
        assert_eq!(c(&[3, 4]).period(), Some(12));
        // a bias [4] over 3 rows, and [2, 4] over 3 planes
        assert_eq!(c(&[4]).broadcast_to(s(&[3, 4])).unwrap().period(), Some(4));
        assert_eq!(
            c(&[2, 4]).broadcast_to(s(&[3, 2, 4])).unwrap().period(),
            Some(8)
        );
        // a column broadcast along rows repeats nowhere; nor do padded rows
        assert_eq!(c(&[3, 1]).broadcast_to(s(&[3, 4])).unwrap().period(), None);
        assert_eq!(strided(&[2, 3, 4], &[40, 10, 1]).period(), None);
        // every other element of a row is not dense
        assert_eq!(strided(&[3, 2, 4], &[0, 8, 2]).period(), None);
        // a row [4] broadcast over planes and rows; a dimension of one has any stride
        assert_eq!(strided(&[3, 2, 4], &[0, 0, 1]).period(), Some(4));
        assert_eq!(strided(&[3, 1, 4], &[0, 7, 1]).period(), Some(4));
    }

    #[test]
    fn rows_start_where_their_first_elements_are() {
        // a [2, 3, 4] view with padded rows (stride 10) and planes (stride 40)
        let l = strided(&[2, 3, 4], &[40, 10, 1]);
        let mut firsts = vec![];
        l.for_each_offset(|i, o| {
            if i % 4 == 0 {
                firsts.push(o);
            }
        });
        let mut rows = vec![];
        l.for_each_row(|r, o| rows.push((r, o)));
        assert_eq!(rows, firsts.into_iter().enumerate().collect::<Vec<_>>());
    }

    #[test]
    fn rows_evenly_spaced_have_a_row_stride() {
        let rs = |d: &[usize], st: &[usize]| strided(d, st).row_stride();
        // dense, the first columns of wider rows, one row (any strides)
        assert_eq!(rs(&[2, 3, 4], &[12, 4, 1]), Some(4));
        assert_eq!(rs(&[2, 3, 4], &[24, 8, 1]), Some(8));
        assert_eq!(rs(&[1, 1, 4], &[99, 7, 1]), Some(4));
        // a gap between batches, columns not contiguous, transposed
        assert_eq!(rs(&[2, 3, 4], &[30, 8, 1]), None);
        assert_eq!(rs(&[3, 4], &[8, 2]), None);
        assert_eq!(rs(&[3, 4], &[1, 3]), None);
    }

    #[test]
    fn broadcast_rules() {
        assert_eq!(
            Shape::broadcast(s(&[3, 1, 5]), s(&[4, 5])),
            Some(s(&[3, 4, 5]))
        );
        assert_eq!(Shape::broadcast(s(&[2, 3]), s(&[3, 3])), None);
        assert_eq!(Shape::broadcast(s(&[7]), s(&[1])), Some(s(&[7])));
    }

    #[test]
    fn broadcast_layout_has_zero_strides() {
        let l = Layout::contiguous(s(&[4, 1]))
            .broadcast_to(s(&[2, 4, 3]))
            .expect("bcast");
        assert_eq!(l.strides(), &[0, 1, 0]);
        let mut offs = vec![];
        l.for_each_offset(|_, o| offs.push(o));
        assert_eq!(&offs[..6], &[0, 0, 0, 1, 1, 1]);
        assert_eq!(offs.len(), 24);
    }

    #[test]
    fn contiguity_and_extent() {
        let l = Layout::contiguous(s(&[2, 3]));
        assert!(l.is_contiguous());
        assert_eq!(l.extent(), 6);
        let t = Layout {
            shape: s(&[3, 2]),
            strides: [1, 3, 0, 0],
            offset: 2,
        };
        assert!(!t.is_contiguous());
        assert_eq!(t.extent(), 2 + 1 + 2 + 3);
        assert_eq!(t.index(&[2, 1]), 2 + 2 + 3);
    }
}

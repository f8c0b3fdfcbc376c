//! Host-side data passed into and out of a run.

use weft_graph::{DType, Shape};

/// Host values for one graph input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HostData<'a> {
    F32(&'a [f32]),
    I32(&'a [i32]),
}

impl HostData<'_> {
    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::I32(_) => DType::I32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            HostData::F32(v) => bytemuck::cast_slice(v),
            HostData::I32(v) => bytemuck::cast_slice(v),
        }
    }
}

/// Values of one output, dense in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// One named output of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub shape: Shape,
    pub data: OutputData,
}

impl Output {
    /// The values as f32 (I32 outputs are converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            OutputData::F32(v) => v.clone(),
            OutputData::I32(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as f32, taken without a copy when they are f32 already.
    pub fn into_f32(self) -> Vec<f32> {
        match self.data {
            OutputData::F32(v) => v,
            OutputData::I32(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as f32, borrowed; `None` for I32 outputs.
    pub fn f32(&self) -> Option<&[f32]> {
        match &self.data {
            OutputData::F32(v) => Some(v),
            OutputData::I32(_) => None,
        }
    }

    /// The values as i32, borrowed; `None` for F32 outputs.
    pub fn i32(&self) -> Option<&[i32]> {
        match &self.data {
            OutputData::I32(v) => Some(v),
            OutputData::F32(_) => None,
        }
    }
}

/// Bytes in host memory kept alive by their owner (a memory-mapped model file), which a
/// backend that computes from host memory can read in place instead of copying: a range of
/// the owner's bytes.
#[derive(Clone)]
pub struct HostBytes {
    owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: std::ops::Range<usize>,
}

impl HostBytes {
    /// `owner`'s bytes `range`; `None` when the range is outside them.
    pub fn new(
        owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: std::ops::Range<usize>,
    ) -> Option<HostBytes> {
        (range.start <= range.end && range.end <= (*owner).as_ref().len())
            .then_some(HostBytes { owner, range })
    }

    pub fn bytes(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

impl std::fmt::Debug for HostBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBytes")
            .field("range", &self.range)
            .finish()
    }
}

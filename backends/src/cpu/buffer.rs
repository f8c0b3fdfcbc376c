//! The backend's buffers: 8-byte aligned bytes of its own, so f32/i32 views of them never
//! fail alignment, or host bytes it reads in place (mapped weights, checked aligned the same).

use crate::{BackendError, HostBytes, Result};

#[derive(Clone, Debug, Default)]
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    pub fn zeroed(len: usize) -> Self {
        AlignedBytes {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }
}

/// A buffer: bytes of the backend's own, or host bytes read in place (read-only).
#[derive(Debug)]
pub enum Buffer {
    Owned(AlignedBytes),
    Host(HostBytes),
}

impl Buffer {
    /// `bytes` read in place, where they start 8-byte aligned as owned buffers do.
    pub fn host(bytes: HostBytes) -> Option<Buffer> {
        bytes
            .bytes()
            .as_ptr()
            .cast::<u64>()
            .is_aligned()
            .then_some(Buffer::Host(bytes))
    }

    pub fn len(&self) -> usize {
        match self {
            Buffer::Owned(b) => b.len(),
            Buffer::Host(h) => h.len(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Buffer::Owned(b) => b.bytes(),
            Buffer::Host(h) => h.bytes(),
        }
    }

    /// The bytes to write (buffer `id`'s): an error for host bytes, which are read-only.
    pub fn bytes_mut(&mut self, id: u32) -> Result<&mut [u8]> {
        match self {
            Buffer::Owned(b) => Ok(b.bytes_mut()),
            Buffer::Host(_) => Err(BackendError::ReadOnlyBuffer(id)),
        }
    }
}

//! The backend's buffers: 8-byte aligned bytes of its own, so f32/i32 views of them never
//! fail alignment, or host bytes it reads in place (mapped weights, checked aligned the same).

use crate::{BackendError, HostBytes, Result};

/// Bytes of the backend's own, zeroed at allocation.
#[derive(Debug, Default)]
pub struct AlignedBytes {
    store: Store,
    len: usize,
}

#[derive(Debug)]
enum Store {
    Words(Vec<u64>),
    /// An anonymous mapping for a large buffer, its bytes from `start` on: on Linux the whole
    /// huge pages among them are backed by transparent huge pages where the kernel allows, so
    /// that streaming through weights walks a page table entry per 2 MiB instead of per 4 KiB
    /// (on the development machine: a mat-vec larger than the caches 4–15% faster, whole
    /// models' generation about 2%, and a 2 GB model loaded in 3 s less, a fault per 2 MiB
    /// instead of per 4 KiB).
    Pages {
        map: memmap2::MmapMut,
        start: usize,
    },
}

impl Default for Store {
    fn default() -> Self {
        Store::Words(Vec::new())
    }
}

/// The huge page size of x86-64 and most ARM64 kernels; buffers from this size on are
/// mappings.
const HUGE_PAGE: usize = 2 << 20;

impl AlignedBytes {
    pub fn zeroed(len: usize) -> Self {
        let store = (len >= HUGE_PAGE).then(|| Self::pages(len)).flatten();
        let store = store.unwrap_or_else(|| Store::Words(vec![0; len.div_ceil(8)]));
        AlignedBytes { store, len }
    }

    /// `len` zeroed bytes in an anonymous mapping a huge page longer, starting at its first
    /// huge page boundary, with huge pages asked for the whole ones among them before any is
    /// touched (the tail stays in small pages, so no buffer takes more memory than its
    /// length); `None` where the mapping fails, for the heap to try.
    fn pages(len: usize) -> Option<Store> {
        let map = memmap2::MmapMut::map_anon(len + HUGE_PAGE).ok()?;
        let addr = map.as_ptr() as usize;
        let start = addr.next_multiple_of(HUGE_PAGE) - addr;
        #[cfg(target_os = "linux")]
        {
            // only a hint: kernels without transparent huge pages refuse it
            let whole = len / HUGE_PAGE * HUGE_PAGE;
            let _ = map.advise_range(memmap2::Advice::HugePage, start, whole);
        }
        Some(Store::Pages { map, start })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.store {
            Store::Words(w) => &bytemuck::cast_slice(w)[..self.len],
            Store::Pages { map, start } => &map[*start..*start + self.len],
        }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.store {
            Store::Words(w) => &mut bytemuck::cast_slice_mut(w)[..self.len],
            Store::Pages { map, start } => &mut map[*start..*start + self.len],
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_start_on_a_huge_page_and_hold_exactly_their_bytes() {
        for len in [HUGE_PAGE, 3 * HUGE_PAGE + 12_344, 100] {
            let mut b = AlignedBytes::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.bytes().iter().all(|&x| x == 0), "{len} bytes not zeroed");
            let addr = b.bytes().as_ptr() as usize;
            if len >= HUGE_PAGE {
                assert_eq!(addr % HUGE_PAGE, 0, "{len} bytes start at {addr:#x}");
            } else {
                assert_eq!(addr % 8, 0);
            }
            let bytes = b.bytes_mut();
            bytes[len - 1] = 7;
            bytes[0] = 9;
            assert_eq!((b.bytes()[0], b.bytes()[len - 1]), (9, 7));
        }
    }
}

//! The process's allocator settings.
//!
//! A prompt's nodes allocate temporaries of a few MiB (results, gathered sources, a conv's
//! window) and free them a node later. glibc's malloc serves blocks that size with fresh
//! `mmap`s, or from a heap top it hands back to the kernel once enough of it is free, so each
//! node paid a page fault for every 4 KiB it touched: about half a millisecond per MiB on the
//! development machine, more than the 1 M multiply-adds of a Mamba conv node. Keeping blocks up
//! to 32 MiB on the heap and the heap's free top mapped lets them be reused.

/// Tells glibc's malloc to serve blocks up to 32 MiB from its heap and to keep up to 2 GiB of
/// freed heap mapped; true when both settings took (elsewhere there is nothing to set).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes two of malloc's thresholds, called before any other
        // thread exists.
        unsafe {
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            mmap == 1 && trim == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_thresholds_take() {
        assert!(super::keep_freed_memory());
    }
}

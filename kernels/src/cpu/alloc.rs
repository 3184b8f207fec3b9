//! Allocator tuning for training processes.
//!
//! Every candle op allocates its output and every backward step allocates and frees
//! gradients of MBs. With glibc's defaults such buffers are `mmap`ed and `munmap`ed (or the
//! heap top is trimmed) each time, so each op pays a page fault per 4 KiB on first touch and
//! a TLB shoot-down on free. On the 2-core VMs we measured, that was most of a SiLU-mul
//! backward (24 ms of 30) and a large part of a decoder layer's step. Keeping freed memory
//! in the process removes it.

/// Makes glibc's malloc keep freed memory for reuse: blocks up to 32 MiB come from the heap
/// instead of fresh `mmap`s, and the heap is never trimmed. Call once at the start of a
/// training or benchmark process (it is process-wide, so libraries must not call it on
/// their own). Returns whether the settings were applied (false on non-glibc targets).
///
/// Setting `MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647` in the
/// environment has the same effect without code.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator parameters; both values are in range
        // (glibc caps the mmap threshold at 32 MiB on 64-bit targets).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

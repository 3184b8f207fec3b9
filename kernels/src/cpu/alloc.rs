//! Allocator tuning for training processes.
//!
//! Every candle op allocates its output and every backward step allocates and frees
//! gradients of MBs. With glibc's defaults such buffers are `mmap`ed and `munmap`ed (or the
//! heap top is trimmed) each time, so each op pays a page fault per 4 KiB on first touch and
//! a TLB shoot-down on free. On the 2-core VMs we measured, that was most of a SiLU-mul
//! backward (24 ms of 30) and a large part of a decoder layer's step. Keeping freed memory
//! in the process removes it.
//!
//! Weights read once per generated token want the opposite treatment from the TLB's point
//! of view: a 500 MB model in 4 KiB pages is ~130 000 pages, and a decode step walks all of
//! them. Backing the weights with 2 MiB pages ([`back_with_huge_pages`]) raised a plain
//! two-thread read from ~32 to ~35 GB/s on the 2-core Zen 3 VMs (decode A/B runs gained
//! 0-10%, inside those VMs' noise).

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

/// The size of a transparent huge page on x86-64 and (4 KiB-granule) aarch64 Linux.
const HUGE_PAGE: usize = 2 << 20;

/// What [`back_with_huge_pages`] could do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugePages {
    /// The kernel moved the range onto huge pages (every 2 MiB-aligned piece of it that
    /// lies in one anonymous mapping).
    Collapsed,
    /// The kernel did part of it, or none (not enough free huge pages, or a piece that
    /// crosses mappings); the rest stays on small pages, which is only slower.
    Partly,
    /// The range is smaller than a huge page, or this kernel or OS cannot collapse memory
    /// (Linux before 6.1, transparent huge pages disabled, not Linux).
    Unsupported,
    /// Not tried: the kernel found no free huge pages for the last few calls in a row.
    Skipped,
}

/// After this many `ENOMEM`s in a row the kernel is taken to have no huge pages to give
/// (fragmented memory) and the process stops asking: each refusal still costs its
/// compaction attempt, up to ~15 ms a weight on the VMs we measured (0.6 s for a ~100M
/// model's 60 weights). A single `ENOMEM` can also mean a widened range reached unmapped
/// memory, so one alone does not stop it.
#[cfg(target_os = "linux")]
const ENOMEM_IN_A_ROW_TO_STOP: usize = 3;

#[cfg(target_os = "linux")]
static ENOMEM_IN_A_ROW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Moves the memory under `data` onto transparent huge pages (`madvise(MADV_COLLAPSE)`,
/// synchronous, contents unchanged), for data that is read over and over, such as model
/// weights. The range is widened to 2 MiB boundaries: a weight living in malloc's heap
/// shares its first and last huge page with its neighbours, which is harmless (the same
/// process's memory, copied as is) and lets consecutive weights fill whole huge pages.
/// Pieces of the widened range that lie in another mapping, or none, are left alone by the
/// kernel. Best effort: nothing fails if the kernel says no.
pub fn back_with_huge_pages<T>(data: &[T]) -> HugePages {
    let len = std::mem::size_of_val(data);
    if len < HUGE_PAGE / 2 {
        return HugePages::Unsupported;
    }
    #[cfg(target_os = "linux")]
    {
        let start = data.as_ptr() as usize & !(HUGE_PAGE - 1);
        let end = (data.as_ptr() as usize + len).next_multiple_of(HUGE_PAGE);
        collapse(start, end)
    }
    #[cfg(not(target_os = "linux"))]
    {
        HugePages::Unsupported
    }
}

/// `MADV_COLLAPSE` on `[start, end)`, unless the kernel has refused for want of huge pages
/// [`ENOMEM_IN_A_ROW_TO_STOP`] times in a row.
#[cfg(target_os = "linux")]
fn collapse(start: usize, end: usize) -> HugePages {
    use std::sync::atomic::Ordering;
    if ENOMEM_IN_A_ROW.load(Ordering::Relaxed) >= ENOMEM_IN_A_ROW_TO_STOP {
        return HugePages::Skipped;
    }
    // SAFETY: MADV_COLLAPSE never changes the contents of the memory it is given (it
    // copies pages into a huge page and remaps them, as khugepaged does in the
    // background), and on ranges that are not mapped it only returns an error.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_COLLAPSE) };
    let errno = (rc != 0)
        .then(|| std::io::Error::last_os_error().raw_os_error())
        .flatten();
    if errno == Some(libc::ENOMEM) {
        ENOMEM_IN_A_ROW.fetch_add(1, Ordering::Relaxed);
    } else {
        ENOMEM_IN_A_ROW.store(0, Ordering::Relaxed);
    }
    match (rc, errno) {
        (0, _) => HugePages::Collapsed,
        // Unknown advice (kernel < 6.1) or huge pages switched off.
        (_, Some(libc::EINVAL)) | (_, Some(libc::EPERM)) => HugePages::Unsupported,
        _ => HugePages::Partly,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapsing_keeps_the_contents_and_tolerates_any_range() {
        let data: Vec<u32> = (0..3_000_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let expected: u64 = data.iter().map(|&v| v as u64).sum();
        let outcome = back_with_huge_pages(&data);
        if outcome == HugePages::Collapsed {
            // At least the 2 MiB pieces inside the 12 MB are now huge pages.
            let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
            let huge_kb: u64 = rollup
                .lines()
                .find_map(|l| l.strip_prefix("AnonHugePages:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            assert!(
                huge_kb >= 4096,
                "collapsed but AnonHugePages is {huge_kb} kB"
            );
        }
        assert_eq!(data.iter().map(|&v| v as u64).sum::<u64>(), expected);
        assert_eq!(data[2_999_999], 2_999_999u32.wrapping_mul(2_654_435_761));
        // Too small to be worth it: left alone.
        assert_eq!(back_with_huge_pages(&data[..1024]), HugePages::Unsupported);
    }

    /// Refusals for want of memory stop the asking (each costs a compaction attempt);
    /// anything else starts the count again. The count is process-wide, so this test
    /// restores it; the test above accepts any outcome.
    #[cfg(target_os = "linux")]
    #[test]
    fn enomem_in_a_row_stops_the_collapsing() {
        use std::sync::atomic::Ordering;
        // An address range that is certainly not mapped: map 8 MiB, unmap it.
        let len = 4 * HUGE_PAGE;
        // SAFETY: a fresh anonymous mapping, unmapped at once and never dereferenced.
        let start = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::munmap(p, len), 0);
            (p as usize).next_multiple_of(HUGE_PAGE)
        };
        let first = collapse(start, start + HUGE_PAGE);
        if first == HugePages::Unsupported {
            return; // no MADV_COLLAPSE here: nothing to count
        }
        assert_eq!(first, HugePages::Partly);
        for _ in 1..ENOMEM_IN_A_ROW_TO_STOP {
            assert_eq!(collapse(start, start + HUGE_PAGE), HugePages::Partly);
        }
        let data = vec![1u8; 4 * HUGE_PAGE];
        assert_eq!(back_with_huge_pages(&data), HugePages::Skipped);
        ENOMEM_IN_A_ROW.store(0, Ordering::Relaxed);
        assert_ne!(back_with_huge_pages(&data), HugePages::Skipped);
    }
}

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

/// The opposite of [`keep_freed_memory`], for a process that passes over large tensors
/// once (`swift export`): every block of 1 MiB or more is its own `mmap`, unmapped when
/// freed, so resident memory is what is live. With [`keep_freed_memory`] the workspace of
/// PiSSA's SVDs (run on several threads, each with its own malloc arena) stayed resident
/// after the merge: merging a PiSSA adapter into SmolLM2-135M peaked at 1.38 GB, against
/// 1.08 GB (the load's own peak) with this. Returns whether the setting was applied
/// (false on non-glibc targets).
pub fn return_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator parameters; the value is in range.
        unsafe { mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1 }
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

/// After this many refusals for want of huge pages in a row the kernel is taken to have
/// none to give (fragmented memory) and the process stops asking: each refusal still costs
/// its compaction attempt, up to ~15 ms a weight on the VMs we measured (0.6 s for a ~100M
/// model's 60 weights).
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
        let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + len);
        let widened = start & !(HUGE_PAGE - 1)..end.next_multiple_of(HUGE_PAGE);
        let inside = start.next_multiple_of(HUGE_PAGE)..end & !(HUGE_PAGE - 1);
        collapse(widened, inside)
    }
    #[cfg(not(target_os = "linux"))]
    {
        HugePages::Unsupported
    }
}

/// `MADV_COLLAPSE` on `widened`, unless the kernel has refused for want of huge pages
/// [`ENOMEM_IN_A_ROW_TO_STOP`] times in a row.
///
/// `ENOMEM` has two meanings here: no huge page to be had, or part of the range is not
/// mapped (a weight in its own `mmap` whose widened ends reach past it), in which case
/// the kernel has still collapsed the mapped part. Only the first should count towards
/// giving up (counting both stopped a model's load after its first three weights, leaving
/// ~3/4 of SmolLM2 on small pages), so an `ENOMEM` is asked again on `inside`, whole huge
/// pages within the data and so certainly mapped: if that succeeds, it was the holes.
#[cfg(target_os = "linux")]
fn collapse(widened: std::ops::Range<usize>, inside: std::ops::Range<usize>) -> HugePages {
    use std::sync::atomic::Ordering;
    if ENOMEM_IN_A_ROW.load(Ordering::Relaxed) >= ENOMEM_IN_A_ROW_TO_STOP {
        return HugePages::Skipped;
    }
    let mut outcome = madvise_collapse(&widened);
    if outcome == Err(libc::ENOMEM) && !inside.is_empty() {
        outcome = madvise_collapse(&inside);
    }
    if outcome == Err(libc::ENOMEM) {
        ENOMEM_IN_A_ROW.fetch_add(1, Ordering::Relaxed);
    } else {
        ENOMEM_IN_A_ROW.store(0, Ordering::Relaxed);
    }
    match outcome {
        Ok(()) => HugePages::Collapsed,
        // Unknown advice (kernel < 6.1) or huge pages switched off.
        Err(libc::EINVAL) | Err(libc::EPERM) => HugePages::Unsupported,
        Err(_) => HugePages::Partly,
    }
}

/// One `madvise(MADV_COLLAPSE)`; the errno when it fails.
#[cfg(target_os = "linux")]
fn madvise_collapse(range: &std::ops::Range<usize>) -> Result<(), i32> {
    // SAFETY: MADV_COLLAPSE never changes the contents of the memory it is given (it
    // copies pages into a huge page and remaps them, as khugepaged does in the
    // background), and on ranges that are not mapped it only returns an error.
    let rc = unsafe {
        libc::madvise(
            range.start as *mut libc::c_void,
            range.end - range.start,
            libc::MADV_COLLAPSE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    Err(std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal count is process-wide: tests that may move it run one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn collapsing_keeps_the_contents_and_tolerates_any_range() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Refusals for want of memory stop the asking (each costs a compaction attempt); a
    /// widened range that only reaches unmapped memory does not count; anything else
    /// starts the count again. The count is process-wide, so this one test covers all of
    /// it and restores it; the test above accepts any outcome.
    #[cfg(target_os = "linux")]
    #[test]
    fn only_real_refusals_stop_the_collapsing() {
        use std::sync::atomic::Ordering;
        // 12 MiB mapped, then everything up to just past its first huge-page boundary
        // unmapped: what is left starts 4 KiB into a huge page whose first 4 KiB is a hole,
        // as a weight in its own `mmap` usually does.
        let len = 6 * HUGE_PAGE;
        // SAFETY: a fresh anonymous mapping; only its still-mapped part is used below, and
        // it is unmapped at the end of the test.
        let (map, boundary) = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let boundary = (p as usize).next_multiple_of(HUGE_PAGE);
            assert_eq!(libc::munmap(p, boundary + 4096 - p as usize), 0);
            (p as usize, boundary)
        };
        let data_start = boundary + 4096;
        // SAFETY: [data_start, map + len) is still mapped, read-write, zero-filled.
        let data = unsafe {
            std::slice::from_raw_parts_mut(data_start as *mut u8, map + len - data_start)
        };
        data.fill(7);
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        ENOMEM_IN_A_ROW.store(0, Ordering::Relaxed);
        // Only where the kernel has huge pages to give right now: on fragmented memory a
        // real refusal (`Partly`) is what the count is for, and would end the asking.
        if back_with_huge_pages(data) == HugePages::Collapsed {
            // The hole at the widened start must not be mistaken for a shortage: asked
            // more times than the limit, the process still asks.
            for _ in 0..ENOMEM_IN_A_ROW_TO_STOP {
                assert_ne!(back_with_huge_pages(data), HugePages::Skipped);
            }
            assert!(data.iter().all(|&b| b == 7));

            // A range with nothing mapped at all is a refusal every time: it counts.
            let hole = boundary..boundary + 4096;
            for _ in 0..ENOMEM_IN_A_ROW_TO_STOP {
                assert_eq!(collapse(hole.clone(), hole.clone()), HugePages::Partly);
            }
            assert_eq!(back_with_huge_pages(data), HugePages::Skipped);
            ENOMEM_IN_A_ROW.store(0, Ordering::Relaxed);
            assert_ne!(back_with_huge_pages(data), HugePages::Skipped);
        }
        // SAFETY: unmaps the part of the test's mapping that is still mapped.
        unsafe {
            assert_eq!(
                libc::munmap(data_start as *mut libc::c_void, map + len - data_start),
                0
            )
        };
    }
}

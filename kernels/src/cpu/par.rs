//! Small helpers for splitting work across rayon threads.

/// A raw pointer that may cross threads. Users guarantee that concurrent tasks write
/// disjoint elements through it (each use site has a SAFETY comment saying why).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);

impl<T> SendPtr<T> {
    /// The pointer. (A method, so closures capture the whole `Send` wrapper rather than
    /// its raw-pointer field.)
    #[inline(always)]
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }
}

// SAFETY: the pointer is only dereferenced by tasks that write disjoint ranges (see above).
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

/// The number of threads rayon runs tasks on.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Rows per task so that each thread gets a few tasks (for balance) and each task at least
/// `min_rows` rows (so scheduling overhead stays small).
pub(crate) fn rows_per_task(rows: usize, min_rows: usize) -> usize {
    let tasks = threads() * 4;
    rows.div_ceil(tasks).max(min_rows).max(1)
}

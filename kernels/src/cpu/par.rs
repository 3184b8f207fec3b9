//! Parallel loops on candle's own CPU thread pool.
//!
//! candle 0.11 runs its elementwise ops on a spinning "barrier pool" (`candle_core::utils::
//! barrier_pool`). Running our kernels on a second pool (rayon) makes the two fight for
//! the cores: after every candle op its worker spins for up to ~0.5 ms while our threads
//! want the same core, which on a 2-core machine costs a large share of a layer's time.
//! So our kernels use candle's pool too: one set of threads, handed from op to op.
//!
//! Nested calls (a parallel loop inside a task) run inline on the calling thread; candle's
//! pool would deadlock on them otherwise.
//!
//! Public so the runtime's inference loops (decode products, attention) run here as well:
//! a serving step mixes prompts (our GEMM, this pool) with decoding rows, and when those
//! rows went to rayon the two pools' spinning workers left a fifth of the cores idle.

use std::cell::Cell;
use std::sync::Mutex;

thread_local! {
    static IN_PARALLEL: Cell<bool> = const { Cell::new(false) };
}

/// A raw pointer that may cross threads. Users guarantee that concurrent tasks write
/// disjoint elements through it (each use site has a SAFETY comment saying why).
pub struct SendPtr<T>(pub *mut T);

// Not derived: the derive would require `T: Copy`.
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer. (A method, so closures capture the whole `Send` wrapper rather than
    /// its raw-pointer field.)
    #[inline(always)]
    pub fn ptr(self) -> *mut T {
        self.0
    }
}

// SAFETY: the pointer is only dereferenced by tasks that write disjoint ranges (see above).
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

/// The number of threads parallel loops run on (the caller included).
pub fn threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// Runs `f(i)` for every `i < n`, spread over the pool (dynamically, in chunks of about
/// `n / (8 * threads)` items).
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    if n == 0 {
        return;
    }
    if n == 1 || IN_PARALLEL.with(Cell::get) || threads() == 1 {
        (0..n).for_each(f);
        return;
    }
    candle_core::utils::barrier_pool().execute_chunked(n, |range| {
        let was = IN_PARALLEL.with(|c| c.replace(true));
        range.for_each(&f);
        IN_PARALLEL.with(|c| c.set(was));
    });
}

/// `(0..n).map(f).collect()`, computed in parallel.
pub fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let slots: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    for_each(n, |i| {
        let value = f(i);
        if let Ok(mut slot) = slots[i].lock() {
            *slot = Some(value);
        }
    });
    slots
        .into_iter()
        .filter_map(|slot| slot.into_inner().ok().flatten())
        .collect()
}

/// Runs `f(index, chunk)` for each `chunk`-sized piece of `data`, in parallel.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: chunks [start, end) are disjoint for distinct i and lie inside `data`,
        // which is borrowed mutably for the whole call.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.ptr().add(start), end - start) };
        f(i, piece);
    });
}

/// Rows per task so that each thread gets a few tasks (for balance) and each task at least
/// `min_rows` rows (so scheduling overhead stays small).
pub fn rows_per_task(rows: usize, min_rows: usize) -> usize {
    let tasks = threads() * 4;
    rows.div_ceil(tasks).max(min_rows).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_cover_every_index_once_and_nest() {
        let hits: Vec<Mutex<usize>> = (0..100).map(|_| Mutex::new(0)).collect();
        for_each(100, |i| {
            // A nested loop runs inline instead of deadlocking.
            for_each(3, |_| *hits[i].lock().unwrap() += 1);
        });
        assert!(hits.iter().all(|h| *h.lock().unwrap() == 3));
        assert_eq!(map(5, |i| i * i), vec![0, 1, 4, 9, 16]);
        let mut data = vec![0usize; 10];
        for_each_chunk_mut(&mut data, 3, |i, c| c.fill(i));
        assert_eq!(data, vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
    }
}

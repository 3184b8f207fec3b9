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
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Runs `f(range)` over ranges of items covering `0..n` once each: every thread walks its
/// own contiguous share from the front, in claims that shrink as the share runs out, and a
/// thread done with its share takes items from the back of another's.
///
/// For loops whose neighbouring items share data: decode attention's query heads of one
/// key/value head read the same cached keys and values, which [`for_each`]'s small chunks
/// from a shared cursor spread over every thread (each thread then reads most of the cache
/// from memory), while whole groups per task balance badly (three key/value heads on two
/// threads). Stealing keeps the balance: a thread the machine slows down is not waited for.
pub fn for_each_owned_range(n: usize, f: impl Fn(Range<usize>) + Sync) {
    let threads = threads();
    if n == 0 {
        return;
    }
    // Claims are packed into 32-bit halves; a larger loop simply runs on the caller.
    if n == 1 || threads == 1 || IN_PARALLEL.with(Cell::get) || n > u32::MAX as usize {
        f(0..n);
        return;
    }
    let shares: Vec<Share> = (0..threads)
        .map(|t| Share::new(t * n / threads..(t + 1) * n / threads))
        .collect();
    // One pool item per share: whichever thread takes item `own` walks that share, then
    // helps with the others'. (The pool's chunked loop, not its per-thread `execute`, so a
    // call from inside one of candle's own parallel ops runs inline instead of waiting on
    // the pool it is part of.)
    candle_core::utils::barrier_pool().execute_chunked(threads, |owners| {
        let was = IN_PARALLEL.with(|c| c.replace(true));
        for own in owners {
            while let Some(r) = shares[own].claim(End::Front) {
                f(r);
            }
            for other in (1..threads).map(|d| (own + d) % threads) {
                while let Some(r) = shares[other].claim(End::Back) {
                    f(r);
                }
            }
        }
        IN_PARALLEL.with(|c| c.set(was));
    });
}

/// Which end of a [`Share`] a claim takes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The owner's.
    Front,
    /// A thief's.
    Back,
}

/// One thread's share of [`for_each_owned_range`]'s items: the unclaimed `front..back`,
/// packed in one atomic so the owner and a thief never both take an item.
struct Share(AtomicU64);

impl Share {
    fn new(r: Range<usize>) -> Self {
        Share(AtomicU64::new(((r.start as u64) << 32) | r.end as u64))
    }

    /// A quarter of what is left (at least one item): long runs while the share is long,
    /// single items at its end, where a thief may be working towards the owner.
    fn claim(&self, end: End) -> Option<Range<usize>> {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (front, back) = (cur >> 32, cur & u64::from(u32::MAX));
            if front >= back {
                return None;
            }
            let take = (back - front).div_ceil(4);
            let (next, range) = match end {
                End::Front => (((front + take) << 32) | back, front..front + take),
                End::Back => ((front << 32) | (back - take), back - take..back),
            };
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(range.start as usize..range.end as usize),
                Err(seen) => cur = seen,
            }
        }
    }
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

/// `n` copies of `value` (an op's output buffer, before its tasks fill it), written by all
/// threads. A serial `vec![value; n]` of the MBs an activation takes was a memset (with
/// the page faults of fresh memory) on the calling thread while the others spun: ~1% of a
/// LoRA step, over the outputs of SiLU, RMSNorm, RoPE and attention.
pub fn filled<T: Copy + Send + Sync>(n: usize, value: T) -> Vec<T> {
    const CHUNK_BYTES: usize = 256 << 10;
    let chunk = (CHUNK_BYTES / std::mem::size_of::<T>().max(1)).max(1);
    if n <= chunk || threads() == 1 {
        return vec![value; n];
    }
    let mut out = Vec::with_capacity(n);
    for_each_chunk_mut(&mut out.spare_capacity_mut()[..n], chunk, |_, piece| {
        for slot in piece {
            slot.write(value);
        }
    });
    // SAFETY: the chunks cover 0..n and every element of each was written above.
    unsafe { out.set_len(n) };
    out
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

    #[test]
    fn owned_ranges_cover_every_item_once_even_when_a_thread_is_slow() {
        for n in [1, 2, 3, 9, 100, 1000] {
            let hits: Vec<Mutex<usize>> = (0..n).map(|_| Mutex::new(0)).collect();
            for_each_owned_range(n, |r| {
                // The thread starting at 0 lags: the others must take the rest of its share.
                if r.start == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                for i in r {
                    *hits[i].lock().unwrap() += 1;
                }
            });
            assert!(hits.iter().all(|h| *h.lock().unwrap() == 1), "n={n}");
        }
    }

    #[test]
    fn a_share_hands_out_shrinking_claims_from_both_ends_without_overlap() {
        let share = Share::new(10..50);
        let (mut front, mut back) = (Vec::new(), Vec::new());
        loop {
            match (share.claim(End::Front), share.claim(End::Back)) {
                (None, None) => break,
                (a, b) => {
                    front.extend(a);
                    back.extend(b);
                }
            }
        }
        // The owner's claims are adjacent and shrinking; with the thief's they tile 10..50.
        assert_eq!(front[0], 10..20);
        assert!(
            front
                .windows(2)
                .all(|w| w[0].end == w[1].start && w[0].len() >= w[1].len())
        );
        let mut all: Vec<_> = front.iter().chain(&back).cloned().collect();
        all.sort_by_key(|r| r.start);
        assert_eq!(all.first().map(|r| r.start), Some(10));
        assert!(all.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(all.last().map(|r| r.end), Some(50));
    }
}

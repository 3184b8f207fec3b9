//! Collectives behind one trait: `Solo` for a single process, `Ring` for CPU training over
//! TCP (`--ddp_backend gloo`). NCCL implements the same trait in the `cuda` build (`nccl.rs`).
//!
//! The ring all-reduce is the bandwidth-optimal one (reduce-scatter, then all-gather):
//! each rank sends and receives 2·(n−1)/n of the buffer whatever the world size. Chunk c is
//! summed in ring order starting at rank c and then copied, so every rank ends with the same
//! bits — ranks never drift apart. Values travel as native-endian bytes: all ranks of a job
//! run the same binary on the same architecture.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::{AddAssign, Range};
use std::time::Duration;

use bytemuck::Pod;

use super::error::DistError;
use super::store::{ABORT_KEY, Store};

/// The operations data-parallel training needs. Every call is collective: all ranks make
/// the same calls with buffers of the same length, in the same order.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum over ranks, in place.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), DistError>;
    /// Element-wise sum over ranks in f64 (counts and loss sums, exact in f64).
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<(), DistError>;
    /// Overwrites `buf` on every rank with `root`'s.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), DistError>;
    /// Returns when every rank called it; the error names the ranks that did not.
    fn barrier(&mut self, name: &str) -> Result<(), DistError>;
    /// Collects one string from every rank on rank 0, in rank order; `None` on the others
    /// (distributed inference merges its results this way).
    fn gather(&mut self, name: &str, value: String) -> Result<Option<Vec<String>>, DistError>;
    /// Leaves the job on purpose (after the last collective).
    fn finish(&mut self) {}
}

/// One process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _: &mut [f32]) -> Result<(), DistError> {
        Ok(())
    }
    fn all_reduce_sum_f64(&mut self, _: &mut [f64]) -> Result<(), DistError> {
        Ok(())
    }
    fn broadcast(&mut self, _: &mut [f32], _: usize) -> Result<(), DistError> {
        Ok(())
    }
    fn barrier(&mut self, _: &str) -> Result<(), DistError> {
        Ok(())
    }
    fn gather(&mut self, _: &str, value: String) -> Result<Option<Vec<String>>, DistError> {
        Ok(Some(vec![value]))
    }
}

/// Bytes a broadcast forwards at a time, so the ring's links work in a pipeline.
const BROADCAST_CHUNK: usize = 1 << 20;

/// The CPU ring: a TCP stream to the next rank and one from the previous.
pub struct Ring {
    rank: usize,
    world_size: usize,
    to_next: TcpStream,
    from_prev: TcpStream,
    /// A second handle on `to_next`, to unblock a sender when the receive side failed.
    to_next_control: TcpStream,
    store: Store,
    timeout: Duration,
    /// Barriers so far (each gets a fresh name in the store).
    barriers: u64,
}

/// Elements the ring can sum.
pub trait Element: Pod + AddAssign + Send + Sync {}
impl Element for f32 {}
impl Element for f64 {}
impl Element for u64 {}

/// Bytes received before they are summed: small enough to stay in cache and to overlap
/// the sum with the rest of the transfer.
const SEGMENT_BYTES: usize = 256 << 10;

/// `buf[a]` to read and `buf[b]` to write; the ranges must not overlap.
fn disjoint<T>(buf: &mut [T], a: Range<usize>, b: Range<usize>) -> (&[T], &mut [T]) {
    if a.end <= b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&lo[a], &mut hi[..b.len()])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        (&hi[..a.len()], &mut lo[b])
    }
}

/// The `i`th of `parts` balanced pieces of `0..n`.
pub fn chunk(n: usize, parts: usize, i: usize) -> Range<usize> {
    (i * n / parts)..((i + 1) * n / parts)
}

fn io_kind_is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// What a broken link means, in words: a closed stream is a peer that went away.
pub(crate) fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            format!("the connection closed ({e}): the process exited or was killed")
        }
        _ => e.to_string(),
    }
}

impl Ring {
    /// Wraps connected streams; every blocking read and write gets `timeout`.
    pub fn new(
        rank: usize,
        world_size: usize,
        to_next: TcpStream,
        from_prev: TcpStream,
        store: Store,
        timeout: Duration,
    ) -> Result<Self, DistError> {
        let setup = |e: std::io::Error| DistError::PeerLost {
            rank,
            peer: (rank + 1) % world_size,
            op: "ring setup".into(),
            detail: describe(&e),
        };
        for s in [&to_next, &from_prev] {
            s.set_nodelay(true).map_err(setup)?;
            s.set_read_timeout(Some(timeout)).map_err(setup)?;
            s.set_write_timeout(Some(timeout)).map_err(setup)?;
        }
        let to_next_control = to_next.try_clone().map_err(setup)?;
        Ok(Ring {
            rank,
            world_size,
            to_next,
            from_prev,
            to_next_control,
            store,
            timeout,
            barriers: 0,
        })
    }

    fn next(&self) -> usize {
        (self.rank + 1) % self.world_size
    }

    fn prev(&self) -> usize {
        (self.rank + self.world_size - 1) % self.world_size
    }

    fn recv_error(&self, op: &str, e: std::io::Error) -> DistError {
        peer_error(self.rank, self.prev(), self.timeout, op, &e)
    }

    fn send_error(&self, op: &str, e: std::io::Error) -> DistError {
        if io_kind_is_timeout(&e) {
            DistError::PeerTimeout {
                rank: self.rank,
                peer: self.next(),
                op: op.into(),
                waited: self.timeout,
            }
        } else {
            DistError::PeerLost {
                rank: self.rank,
                peer: self.next(),
                op: op.into(),
                detail: describe(&e),
            }
        }
    }

    /// Records this failure as the job's cause unless another rank was first, and reports
    /// the first cause (the lost rank, not a neighbour's symptom).
    fn fail(&self, op: &str, err: DistError) -> DistError {
        let mine = err.to_string();
        // Record the cause before closing the link: the next rank notices the close at once
        // and would otherwise record its own symptom ("lost rank <me>") first.
        let first = self.store.set_if_absent(ABORT_KEY, &mine);
        let _ = self.to_next_control.shutdown(Shutdown::Both);
        match first {
            Ok(cause) if cause != mine => DistError::Aborted {
                rank: self.rank,
                op: op.into(),
                cause,
            },
            _ => err,
        }
    }

    /// Sends `send` to the next rank while receiving `recv.len()` values from the previous
    /// into `recv`, segment by segment; with `scratch` each segment lands there and is added
    /// into `recv` while the rest is still in flight (reduce), without it is copied (gather).
    fn exchange<T: Element>(
        &mut self,
        op: &str,
        send: &[T],
        recv: &mut [T],
        scratch: Option<&mut [T]>,
    ) -> Result<(), DistError> {
        let (rank, prev, timeout) = (self.rank, self.prev(), self.timeout);
        let (to_next, from_prev) = (&mut self.to_next, &mut self.from_prev);
        let (control, store) = (&self.to_next_control, &self.store);
        let (sent, received) = std::thread::scope(|s| {
            let sender = s.spawn(|| to_next.write_all(bytemuck::cast_slice(send)));
            let seg = (SEGMENT_BYTES / size_of::<T>()).max(1);
            let received = match scratch {
                None => from_prev.read_exact(bytemuck::cast_slice_mut(recv)),
                Some(scratch) => recv.chunks_mut(seg).try_for_each(|dst| {
                    let incoming = &mut scratch[..dst.len()];
                    from_prev.read_exact(bytemuck::cast_slice_mut(incoming))?;
                    for (acc, x) in dst.iter_mut().zip(incoming.iter()) {
                        *acc += *x;
                    }
                    Ok(())
                }),
            };
            if let Err(e) = &received {
                // The sender may be blocked on a peer that will never read again, so the
                // link is closed; the cause is recorded first (see `fail`), because the
                // next rank notices the close at once.
                let cause = peer_error(rank, prev, timeout, op, e).to_string();
                let _ = store.set_if_absent(ABORT_KEY, &cause);
                let _ = control.shutdown(Shutdown::Both);
            }
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("sender thread panicked")));
            (sent, received)
        });
        if let Err(e) = received {
            return Err(self.recv_error(op, e));
        }
        sent.map_err(|e| self.send_error(op, e))
    }

    /// Every collective starts by checking that the neighbours run the same one on the same
    /// length: a mismatch would otherwise garble the stream silently.
    fn handshake(&mut self, op: &str, code: u64, len: usize) -> Result<(), DistError> {
        let mine = [code, len as u64];
        let mut theirs = [0u64; 2];
        self.exchange(op, &mine, &mut theirs, None)
            .map_err(|e| self.fail(op, e))?;
        if theirs != mine {
            let err = DistError::Length {
                op: format!("{op} (operation code {} vs {})", mine[0], theirs[0]),
                peer: self.prev(),
                expected: theirs[1] as usize,
                found: len,
            };
            return Err(self.fail(op, err));
        }
        Ok(())
    }

    fn all_reduce<T: Element>(&mut self, buf: &mut [T], code: u64) -> Result<(), DistError> {
        let op = "all_reduce";
        let w = self.world_size;
        if w == 1 {
            return Ok(());
        }
        self.handshake(op, code, buf.len())?;
        let n = buf.len();
        let mut scratch: Vec<T> = vec![T::zeroed(); (SEGMENT_BYTES / size_of::<T>()).max(1)];
        // Reduce-scatter: after w-1 steps rank r holds the full sum of chunk r+1.
        for step in 0..w - 1 {
            let send = chunk(n, w, (self.rank + w - step) % w);
            let recv = chunk(n, w, (self.rank + w - step - 1) % w);
            let (send, recv) = disjoint(buf, send, recv);
            self.exchange(op, send, recv, Some(&mut scratch))
                .map_err(|e| self.fail(op, e))?;
        }
        // All-gather: pass the finished chunks around, straight into place.
        for step in 0..w - 1 {
            let send = chunk(n, w, (self.rank + 1 + w - step) % w);
            let recv = chunk(n, w, (self.rank + w - step) % w);
            let (send, recv) = disjoint(buf, send, recv);
            self.exchange(op, send, recv, None)
                .map_err(|e| self.fail(op, e))?;
        }
        Ok(())
    }
}

impl Collective for Ring {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), DistError> {
        self.all_reduce(buf, 1)
    }

    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<(), DistError> {
        self.all_reduce(buf, 2)
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), DistError> {
        let op = "broadcast";
        if self.world_size == 1 {
            return Ok(());
        }
        self.handshake(op, 3 + root as u64, buf.len())?;
        // Root -> root+1 -> ... -> root-1, chunk by chunk so every link is busy at once.
        let forward = self.next() != root;
        let per = (BROADCAST_CHUNK / size_of::<f32>()).max(1);
        for piece in buf.chunks_mut(per) {
            if self.rank != root {
                self.from_prev
                    .read_exact(bytemuck::cast_slice_mut(piece))
                    .map_err(|e| {
                        let err = self.recv_error(op, e);
                        self.fail(op, err)
                    })?;
            }
            if forward {
                self.to_next
                    .write_all(bytemuck::cast_slice(piece))
                    .map_err(|e| {
                        let err = self.send_error(op, e);
                        self.fail(op, err)
                    })?;
            }
        }
        Ok(())
    }

    fn barrier(&mut self, name: &str) -> Result<(), DistError> {
        self.barriers += 1;
        self.store
            .barrier(&format!("{name}#{}", self.barriers), self.timeout)
    }

    fn gather(&mut self, name: &str, value: String) -> Result<Option<Vec<String>>, DistError> {
        store_gather(
            &self.store,
            self.rank,
            self.world_size,
            self.timeout,
            name,
            value,
        )
    }

    fn finish(&mut self) {
        self.store.bye();
    }
}

/// A gather through rank 0's store, in pieces under its frame limit: every rank sets
/// `gather/NAME/RANK/i` and a piece count; rank 0 waits for each (up to `timeout`, naming
/// a rank that never delivered). Every backend gathers this way.
pub(crate) fn store_gather(
    store: &Store,
    rank: usize,
    world_size: usize,
    timeout: Duration,
    name: &str,
    value: String,
) -> Result<Option<Vec<String>>, DistError> {
    let pieces = utf8_pieces(&value, GATHER_PIECE);
    for (i, piece) in pieces.iter().enumerate() {
        store.set(&format!("gather/{name}/{rank}/{i}"), piece)?;
    }
    store.set(
        &format!("gather/{name}/{rank}/n"),
        &pieces.len().to_string(),
    )?;
    if rank != 0 {
        return Ok(None);
    }
    let wait = |key: String, from: usize| -> Result<String, DistError> {
        store.get(&key, timeout)?.ok_or_else(|| DistError::Missing {
            what: format!("gather {name}"),
            missing: vec![from],
            world_size,
            waited: timeout,
        })
    };
    let mut out = Vec::with_capacity(world_size);
    for r in 0..world_size {
        let count = wait(format!("gather/{name}/{r}/n"), r)?;
        let count: usize = count.parse().map_err(|_| DistError::Store {
            addr: store.addr().to_string(),
            message: format!("gather {name}: rank {r} sent a bad piece count {count:?}"),
        })?;
        let mut joined = String::new();
        for i in 0..count {
            joined.push_str(&wait(format!("gather/{name}/{r}/{i}"), r)?);
        }
        out.push(joined);
    }
    Ok(Some(out))
}

/// A failed read from `peer`: a timeout or a lost connection.
fn peer_error(
    rank: usize,
    peer: usize,
    waited: Duration,
    op: &str,
    e: &std::io::Error,
) -> DistError {
    if io_kind_is_timeout(e) {
        DistError::PeerTimeout {
            rank,
            peer,
            op: op.into(),
            waited,
        }
    } else {
        DistError::PeerLost {
            rank,
            peer,
            op: op.into(),
            detail: describe(e),
        }
    }
}

/// Bytes per gathered piece: well under the store's frame limit.
const GATHER_PIECE: usize = 4 << 20;

/// `s` cut into pieces of at most `max` bytes, at character boundaries (at least one
/// piece, so an empty value still arrives).
fn utf8_pieces(s: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = s;
    loop {
        if rest.len() <= max {
            pieces.push(rest);
            return pieces;
        }
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            // One character longer than `max`: it travels whole.
            cut = (1..=rest.len())
                .find(|&i| rest.is_char_boundary(i))
                .unwrap_or(rest.len());
        }
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_values_are_cut_at_character_boundaries() {
        assert_eq!(utf8_pieces("", 4), vec![""]);
        assert_eq!(utf8_pieces("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        let s = "aé中b";
        let pieces = utf8_pieces(s, 2);
        assert_eq!(pieces.concat(), s);
        assert!(pieces.iter().all(|p| p.len() <= 3 && !p.is_empty()));
    }

    #[test]
    fn chunks_cover_the_buffer_in_balanced_pieces() {
        for n in [0, 1, 5, 7, 100] {
            for parts in 1..5 {
                let pieces: Vec<_> = (0..parts).map(|i| chunk(n, parts, i)).collect();
                assert_eq!(pieces[0].start, 0);
                assert_eq!(pieces[parts - 1].end, n);
                for w in pieces.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<_> = pieces.iter().map(|r| r.len()).collect();
                let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(hi - lo <= 1, "n {n} parts {parts}: {lens:?}");
            }
        }
    }
}

//! The rendezvous and the CPU ring on 127.0.0.1, one thread per rank: sums equal the serial
//! sum for uneven lengths and world sizes 1..4, broadcasts, late peers, wrong ports, dead
//! and silent peers (errors name the rank, within the timeout), mismatched jobs.

use crate::ports::free_port;
use std::time::{Duration, Instant};

use kubeswift_runtime::dist::rendezvous::{RendezvousOptions, connect};
use kubeswift_runtime::dist::{Backend, Collective, DistError, WorldInfo};

fn world(rank: usize, world_size: usize, port: u16) -> WorldInfo {
    WorldInfo {
        world_size,
        rank,
        local_rank: rank,
        local_world_size: world_size,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    }
}

fn options(deadline_s: u64, timeout_s: u64) -> RendezvousOptions {
    RendezvousOptions {
        deadline: Duration::from_secs(deadline_s),
        timeout: Duration::from_secs(timeout_s),
        fingerprint: "job".into(),
        backend: Backend::Gloo,
    }
}

/// Runs `body(rank, collective)` on `n` ranks, each on its own thread; returns the results
/// in rank order.
fn on_ranks<T: Send + 'static>(
    n: usize,
    opts: RendezvousOptions,
    body: impl Fn(usize, Box<dyn Collective>) -> T + Send + Sync + Clone + 'static,
) -> Vec<Result<T, DistError>> {
    let port = free_port();
    let threads: Vec<_> = (0..n)
        .map(|rank| {
            let (opts, body) = (opts.clone(), body.clone());
            std::thread::spawn(move || connect(&world(rank, n, port), &opts).map(|c| body(rank, c)))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// A deterministic, rank-dependent buffer with fractional values.
fn data(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + rank * 13) % 17) as f32 * 0.25 - 1.5 + rank as f32)
        .collect()
}

#[test]
fn ring_all_reduce_equals_the_serial_sum() {
    for n in 1..=4 {
        for len in [0usize, 1, 2, 3, 5, 17, 1000, 100_003] {
            let results = on_ranks(n, options(10, 10), move |rank, mut c| {
                let mut buf = data(rank, len);
                c.all_reduce_sum(&mut buf).unwrap();
                let mut wide: Vec<f64> = data(rank, len).into_iter().map(f64::from).collect();
                c.all_reduce_sum_f64(&mut wide).unwrap();
                c.finish();
                (buf, wide)
            });
            let inputs: Vec<Vec<f32>> = (0..n).map(|r| data(r, len)).collect();
            let serial: Vec<f64> = (0..len)
                .map(|i| inputs.iter().map(|v| f64::from(v[i])).sum())
                .collect();
            let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
            for (rank, (buf, wide)) in results.iter().enumerate() {
                assert_eq!(buf.len(), len);
                for i in 0..len {
                    assert!(
                        (f64::from(buf[i]) - serial[i]).abs() <= 1e-5 * serial[i].abs().max(1.0),
                        "world {n} len {len} rank {rank} [{i}]: {} vs {}",
                        buf[i],
                        serial[i]
                    );
                    assert_eq!(wide[i], serial[i], "f64 sums of quarters are exact");
                }
                // Every rank holds the same bits: ranks never drift apart.
                assert_eq!(buf, &results[0].0, "world {n} len {len} rank {rank}");
            }
        }
    }
}

#[test]
fn broadcast_copies_the_root_and_barriers_pass() {
    for n in 2..=4 {
        for root in [0, n - 1] {
            let results = on_ranks(n, options(10, 10), move |rank, mut c| {
                let mut buf = data(rank, 300_001);
                c.broadcast(&mut buf, root).unwrap();
                c.barrier("after").unwrap();
                c.finish();
                buf
            });
            for r in results {
                assert_eq!(r.unwrap(), data(root, 300_001), "world {n} root {root}");
            }
        }
    }
}

#[test]
fn a_late_peer_still_joins() {
    let port = free_port();
    let opts = options(15, 15);
    let early = {
        let opts = opts.clone();
        std::thread::spawn(move || {
            let mut c = connect(&world(0, 2, port), &opts)?;
            let mut buf = vec![1.0f32; 10];
            c.all_reduce_sum(&mut buf)?;
            Ok::<_, DistError>(buf)
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let mut late = connect(&world(1, 2, port), &opts).unwrap();
    let mut buf = vec![2.0f32; 10];
    late.all_reduce_sum(&mut buf).unwrap();
    assert_eq!(buf, vec![3.0; 10]);
    assert_eq!(early.join().unwrap().unwrap(), vec![3.0; 10]);
    late.finish();
}

#[test]
fn a_wrong_port_fails_within_the_deadline_naming_the_address() {
    let port = free_port();
    let started = Instant::now();
    let err = connect(&world(1, 2, port), &options(2, 2))
        .err()
        .unwrap()
        .to_string();
    let waited = started.elapsed();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("MASTER_PORT"),
        "{err}"
    );
    assert!(waited < Duration::from_secs(8), "took {waited:?}");
    // Rank 0 alone: the rendezvous names the rank that never came.
    let err = connect(&world(0, 3, free_port()), &options(2, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ranks [1, 2] of 3"), "{err}");
}

#[test]
fn a_dead_peer_is_named_within_the_timeout() {
    let started = Instant::now();
    let results = on_ranks(3, options(10, 4), |rank, mut c| {
        let mut buf = data(rank, 1000);
        c.all_reduce_sum(&mut buf).unwrap();
        if rank == 2 {
            // Dies without saying goodbye: its sockets close as a killed process's do.
            drop(c);
            return Ok(());
        }
        c.all_reduce_sum(&mut buf).map(drop)
    });
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    for (rank, r) in results.into_iter().enumerate().take(2) {
        let err = r.unwrap().unwrap_err().to_string();
        assert!(err.contains("rank 2"), "rank {rank}: {err}");
    }
}

#[test]
fn a_silent_peer_times_out_naming_it() {
    let started = Instant::now();
    let results = on_ranks(2, options(10, 2), |rank, mut c| {
        if rank == 1 {
            // Alive but never joins the collective (a hung step).
            std::thread::sleep(Duration::from_secs(6));
            return Ok(());
        }
        let mut buf = vec![0f32; 8];
        c.all_reduce_sum(&mut buf).map(drop)
    });
    let err = results.into_iter().next().unwrap().unwrap().unwrap_err();
    assert!(
        matches!(err, DistError::PeerTimeout { peer: 1, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("rank 1 sent nothing for 2s"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(9));
}

#[test]
fn mismatched_jobs_and_lengths_are_refused() {
    let port = free_port();
    let threads: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let mut opts = options(10, 5);
                opts.fingerprint = format!("args-{rank}");
                connect(&world(rank, 2, port), &opts)
                    .err()
                    .map(|e| e.to_string())
            })
        })
        .collect();
    for t in threads {
        let err = t.join().unwrap().unwrap();
        assert!(err.contains("rank 1 runs different arguments"), "{err}");
    }
    let results = on_ranks(2, options(10, 5), |rank, mut c| {
        let mut buf = vec![1f32; 10 + rank];
        c.all_reduce_sum(&mut buf).map(drop)
    });
    for r in results {
        let err = r.unwrap().unwrap_err().to_string();
        assert!(err.contains("all_reduce") && err.contains("rank"), "{err}");
    }
}

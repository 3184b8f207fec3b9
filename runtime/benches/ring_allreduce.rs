//! Bandwidth of the CPU ring all-reduce over loopback, one thread per rank.
//!
//!     cargo bench -p kubeswift-runtime --bench ring_allreduce
//!     cargo bench -p kubeswift-runtime --bench ring_allreduce -- --mb 100 --repeat 5
//!
//! Prints a table: world size, buffer size, median time of one all-reduce, algorithm
//! bandwidth (buffer bytes / time) and bus bandwidth (2·(n−1)/n of that: the bytes each
//! rank's link carries, NCCL's convention, comparable across world sizes). Under `cargo test
//! --all-targets` (no `--bench`) it does one 1 MB all-reduce per world size, a smoke check.

use std::time::{Duration, Instant};

use kubeswift_runtime::dist::rendezvous::{RendezvousOptions, connect};
use kubeswift_runtime::dist::{Backend, WorldInfo};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(29500)
}

/// Median seconds of `repeat` all-reduces of `len` f32 on `world` ranks.
fn measure(world: usize, len: usize, repeat: usize) -> Result<f64, String> {
    let port = free_port();
    let options = RendezvousOptions {
        deadline: Duration::from_secs(30),
        timeout: Duration::from_secs(120),
        fingerprint: "bench".into(),
        backend: Backend::Gloo,
    };
    let threads: Vec<_> = (0..world)
        .map(|rank| {
            let options = options.clone();
            std::thread::spawn(move || -> Result<Vec<f64>, String> {
                let info = WorldInfo {
                    world_size: world,
                    rank,
                    local_rank: rank,
                    local_world_size: world,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                };
                let mut comm = connect(&info, &options).map_err(|e| e.to_string())?;
                let mut buf = vec![1.0f32 + rank as f32; len];
                let mut times = Vec::new();
                for _ in 0..repeat {
                    comm.barrier("round").map_err(|e| e.to_string())?;
                    let t = Instant::now();
                    comm.all_reduce_sum(&mut buf).map_err(|e| e.to_string())?;
                    times.push(t.elapsed().as_secs_f64());
                }
                comm.finish();
                Ok(times)
            })
        })
        .collect();
    let mut slowest = vec![0f64; repeat];
    for t in threads {
        let times = t.join().map_err(|_| "a rank panicked".to_string())??;
        for (s, t) in slowest.iter_mut().zip(times) {
            *s = s.max(t);
        }
    }
    slowest.sort_by(f64::total_cmp);
    Ok(slowest[repeat / 2])
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let mut mb = if bench { 100 } else { 1 };
    let mut repeat = if bench { 5 } else { 1 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        // `cargo bench` passes --bench to harness-less benches; it takes no value.
        let target = match flag.as_str() {
            "--mb" => &mut mb,
            "--repeat" => &mut repeat,
            _ => continue,
        };
        match args.next().and_then(|v| v.parse::<usize>().ok()) {
            Some(v) => *target = v.max(1),
            None => {
                eprintln!("error: {flag} needs a positive integer");
                std::process::exit(2);
            }
        }
    }
    let len = mb * 1_000_000 / 4;
    println!("| ranks | MB | ms per all-reduce | algbw GB/s | busbw GB/s |");
    println!("|------:|---:|------------------:|-----------:|-----------:|");
    for world in [2usize, 4] {
        match measure(world, len, repeat) {
            Ok(s) => {
                let algbw = (len * 4) as f64 / s / 1e9;
                let busbw = algbw * 2.0 * (world - 1) as f64 / world as f64;
                println!(
                    "| {world} | {mb} | {:.1} | {algbw:.2} | {busbw:.2} |",
                    s * 1e3
                );
            }
            Err(e) => {
                eprintln!("error: {world} ranks: {e}");
                std::process::exit(1);
            }
        }
    }
}

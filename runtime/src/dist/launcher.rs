//! The launcher, torchrun's role: `swift sft|pt` with NPROC_PER_NODE > 1 or NNODES > 1
//! re-executes itself once per local worker with WORLD_SIZE, RANK, LOCAL_RANK,
//! LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, the CPU threads split evenly
//! (RAYON_NUM_THREADS, OMP_NUM_THREADS, unless the user set them). It forwards SIGTERM and
//! SIGINT to the workers (which save the step they finish, `train::interrupt`), and when one
//! fails it stops the others (SIGTERM, then SIGKILL after a grace period) and exits with the
//! code of the worker that caused the failure: one killed by a signal, else one that failed
//! on its own error, not the peers that stopped because it did (they exit with
//! `exit::PEER_FAILED`).
//!
//! A process with RANK/WORLD_SIZE set is a worker and never launches again.

use std::collections::HashMap;
use std::ffi::OsString;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kubeswift_args::DistEnv;
use tokio::signal::unix::{SignalKind, signal};

use super::world::WorldInfo;

/// How long the other workers get to exit after one failed before SIGKILL: they save
/// nothing (their peer is gone), they only need to notice and leave.
const FAILED_GRACE: Duration = Duration::from_secs(10);

/// How long workers get to finish their step and save it after a forwarded SIGTERM/SIGINT
/// when the environment does not give the pod's grace (a laptop, a plain container).
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(60);

/// What the launcher keeps of the pod's termination grace for itself: reaping the workers,
/// reporting and exiting before the kubelet's SIGKILL ends the container.
const HEADROOM: Duration = Duration::from_secs(3);

/// How long workers get after a forwarded SIGTERM/SIGINT before SIGKILL: the pod's
/// termination grace less [`HEADROOM`] (at least one second), else [`DEFAULT_STOP_GRACE`].
/// A full fine-tune of a large model writing to object storage needs more than the old
/// fixed 10 s; the kubelet's own deadline is the real limit, so the launcher uses it.
pub fn stop_grace(termination_grace_seconds: Option<u64>) -> Duration {
    match termination_grace_seconds {
        None => DEFAULT_STOP_GRACE,
        Some(s) => Duration::from_secs(s)
            .saturating_sub(HEADROOM)
            .max(Duration::from_secs(1)),
    }
}

/// How long the launcher waits after the first failed worker for the others' exits before
/// it names the cause and stops the rest.
const SETTLE: Duration = Duration::from_millis(500);

/// One worker to start: its global and local rank and its extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPlan {
    pub rank: usize,
    pub local_rank: usize,
    pub env: Vec<(String, String)>,
}

/// The workers of this node. `cpus` is the node's parallelism; `user_threads` is
/// RAYON_NUM_THREADS when the user set it (then it is kept); `gpus` are the node's GPUs
/// ([`node_gpus`]): worker `i` gets `CUDA_VISIBLE_DEVICES=gpus[i]`, its own GPU, as one
/// process per GPU wants (a worker beyond the GPUs gets none and computes on the CPU).
pub fn plan(
    dist: &DistEnv,
    cpus: usize,
    user_threads: Option<&str>,
    gpus: &[String],
) -> Vec<WorkerPlan> {
    let nproc = dist.nproc_per_node;
    let threads = user_threads
        .map(str::to_string)
        .unwrap_or_else(|| (cpus / nproc).max(1).to_string());
    let master_addr = dist
        .master_addr
        .clone()
        .unwrap_or_else(|| "127.0.0.1".into());
    (0..nproc)
        .map(|local_rank| {
            let rank = dist.node_rank * nproc + local_rank;
            let gpu = gpus
                .get(local_rank)
                .map(|id| ("CUDA_VISIBLE_DEVICES", id.clone()));
            let env = [
                ("WORLD_SIZE", dist.world_size().to_string()),
                ("RANK", rank.to_string()),
                ("LOCAL_RANK", local_rank.to_string()),
                ("LOCAL_WORLD_SIZE", nproc.to_string()),
                ("GROUP_RANK", dist.node_rank.to_string()),
                ("MASTER_ADDR", master_addr.clone()),
                ("MASTER_PORT", dist.master_port.to_string()),
                ("RAYON_NUM_THREADS", threads.clone()),
                ("OMP_NUM_THREADS", threads.clone()),
            ]
            .into_iter()
            .chain(gpu)
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            WorkerPlan {
                rank,
                local_rank,
                env,
            }
        })
        .collect()
}

/// The GPUs a launcher hands out on this node, one per worker: the ids listed in
/// `CUDA_VISIBLE_DEVICES` (it may name a subset, or UUIDs), else `0..count`. Empty on a node
/// without usable GPUs (`count` 0).
pub fn node_gpus(visible: Option<&str>, count: usize) -> Vec<String> {
    match visible {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .take(count)
            .map(String::from)
            .collect(),
        None => (0..count).map(|i| i.to_string()).collect(),
    }
}

/// The exit code a shell would report for `status` (128 + signal when killed).
pub fn exit_code(status: &ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        _ => 1,
    }
}

/// Launches the workers when this process is the launcher; `Ok(None)` when it should
/// train itself (a worker, or a single-process job).
pub fn maybe_launch() -> anyhow::Result<Option<u8>> {
    let env = |k: &str| std::env::var(k).ok();
    if WorldInfo::from_env(env)?.is_some() {
        return Ok(None);
    }
    let mut dist = DistEnv::from_env(env)?;
    let probe = crate::device::probe();
    let gpus = node_gpus(probe.visible_devices.as_deref(), probe.usable_gpus());
    // On a GPU node, one worker per GPU unless NPROC_PER_NODE says otherwise (torchrun's
    // `--nproc_per_node gpu`, ms-swift's default there).
    let nproc_set = env("NPROC_PER_NODE")
        .or_else(|| env("PET_NPROC_PER_NODE"))
        .is_some();
    if !nproc_set && gpus.len() > 1 {
        dist.nproc_per_node = gpus.len();
    }
    if dist.world_size() == 1 {
        return Ok(None);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = plan(&dist, cpus, env("RAYON_NUM_THREADS").as_deref(), &gpus);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the launcher")?;
    let grace = stop_grace(kubeswift_args::dist_env::termination_grace_seconds(env)?);
    runtime.block_on(supervise(workers, grace)).map(Some)
}

fn send(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned and have not reaped (it is still in `live`).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A worker must not outlive its launcher. When the launcher is SIGKILLed (the OOM killer,
/// `kill -9` of a node's main process) it cannot forward anything, and an orphaned worker
/// would hold its GPU and wait on its peers until `--ddp_timeout`. In a container the PID
/// namespace ends with its first process; on a laptop or a bare node the kernel's parent-death
/// signal does the same. The launcher spawns from the thread that runs it to the end (a
/// current-thread runtime on the main thread), which is what the signal is tied to.
fn die_with_launcher(command: &mut tokio::process::Command) {
    let launcher = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2) and
    // getppid(2), which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher may have died between fork and prctl: then no signal would come.
            if libc::getppid() != launcher {
                return Err(std::io::Error::other("the launcher exited"));
            }
            Ok(())
        });
    }
}

/// Runs the workers to the end; `grace` is how long they get to stop after a forwarded
/// signal ([`stop_grace`]).
async fn supervise(workers: Vec<WorkerPlan>, grace: Duration) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("finding the swift binary to start workers")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut live: HashMap<usize, u32> = HashMap::new();
    let mut waits = FuturesUnordered::new();
    for w in &workers {
        let mut command = tokio::process::Command::new(&exe);
        command
            .args(&args)
            .envs(w.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        die_with_launcher(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting worker rank {}", w.rank))?;
        if let Some(pid) = child.id() {
            live.insert(w.rank, pid);
        }
        let rank = w.rank;
        waits.push(async move { (rank, child.wait().await) });
    }
    tracing::info!(workers = workers.len(), "launched");
    // Failed workers seen so far, in the order the launcher reaped them. The first one is
    // not always the cause: a worker whose peer was killed notices the closed connection and
    // exits on its own a few milliseconds later, and both deaths can reach us in either
    // order. So the verdict waits SETTLE after the first failure before it is reported.
    let mut failures: Vec<(usize, u8)> = Vec::new();
    let mut settle_until: Option<tokio::time::Instant> = None;
    let mut reported: Option<(usize, u8)> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut signals = 0u32;
    let far = || tokio::time::Instant::now() + Duration::from_secs(86400);
    while !waits.is_empty() {
        let deadline = kill_at.unwrap_or_else(far);
        tokio::select! {
            Some((rank, status)) = waits.next() => {
                live.remove(&rank);
                let code = match status {
                    Ok(s) => exit_code(&s),
                    Err(e) => {
                        tracing::error!(rank, error = %e, "waiting for a worker");
                        1
                    }
                };
                if code != 0 {
                    failures.push((rank, code));
                    if reported.is_none() && settle_until.is_none() {
                        settle_until = Some(tokio::time::Instant::now() + SETTLE);
                    }
                }
            }
            _ = tokio::time::sleep_until(settle_until.unwrap_or_else(far)), if settle_until.is_some() => {
                settle_until = None;
                reported = root_cause(&failures);
                if let Some((rank, code)) = reported {
                    report_failure(rank, code);
                }
                live.values().for_each(|&pid| send(pid, libc::SIGTERM));
                kill_at = kill_at.or(Some(tokio::time::Instant::now() + FAILED_GRACE));
            }
            _ = sigterm.recv() => {
                let now = tokio::time::Instant::now();
                kill_at = forward(&live, libc::SIGTERM, &mut signals, grace, kill_at, now);
            }
            _ = sigint.recv() => {
                let now = tokio::time::Instant::now();
                kill_at = forward(&live, libc::SIGINT, &mut signals, grace, kill_at, now);
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(workers = ?live.keys().collect::<Vec<_>>(), "workers did not stop in time: SIGKILL");
                live.values().for_each(|&pid| send(pid, libc::SIGKILL));
                kill_at = Some(far());
            }
        }
    }
    // Every worker ended inside the settle window: report now.
    if reported.is_none()
        && let Some((rank, code)) = root_cause(&failures)
    {
        report_failure(rank, code);
        reported = Some((rank, code));
    }
    Ok(reported.map_or(0, |(_, code)| code))
}

/// Forwards the launcher's SIGTERM/SIGINT to the live workers and returns when to SIGKILL
/// them: the first signal gives them `grace` to save their step (sooner if a deadline was
/// already set); a second one, a user pressing Ctrl-C again, ends them now.
fn forward(
    live: &HashMap<usize, u32>,
    sig: i32,
    signals: &mut u32,
    grace: Duration,
    kill_at: Option<tokio::time::Instant>,
    now: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    *signals += 1;
    let name = if sig == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    if *signals > 1 {
        tracing::warn!("second {name}: stopping the workers now");
        return Some(now);
    }
    tracing::warn!(
        grace_s = grace.as_secs(),
        "{name}: forwarding to the workers"
    );
    live.values().for_each(|&pid| send(pid, sig));
    Some(kill_at.map_or(now + grace, |at| at.min(now + grace)))
}

/// Which of the failed workers, in the order they were reaped, to report and whose code to
/// exit with: the one whose code names the cause ([`kubeswift_args::exit::root_cause`]: a
/// worker killed by a signal, else one that failed on its own error, before the peers that
/// stopped because it did).
fn root_cause(failures: &[(usize, u8)]) -> Option<(usize, u8)> {
    kubeswift_args::exit::root_cause(failures.iter().map(|&(_, code)| i32::from(code)))
        .map(|i| failures[i])
}

fn report_failure(rank: usize, code: u8) {
    crate::commands::eprint_line(&format!(
        "error: worker rank {rank} exited with code {code}{}; stopping the other workers",
        if code > 128 {
            format!(" (killed by signal {})", code - 128)
        } else {
            String::new()
        }
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(w: &'a WorkerPlan, k: &str) -> &'a str {
        w.env
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn the_stop_grace_is_the_pods_less_headroom() {
        assert_eq!(stop_grace(None), DEFAULT_STOP_GRACE);
        assert_eq!(stop_grace(Some(120)), Duration::from_secs(117));
        assert_eq!(stop_grace(Some(30)), Duration::from_secs(27));
        // A grace shorter than the headroom still lets the workers try.
        assert_eq!(stop_grace(Some(2)), Duration::from_secs(1));
        assert_eq!(stop_grace(Some(0)), Duration::from_secs(1));
    }

    #[test]
    fn a_second_signal_kills_at_once_and_a_first_keeps_an_earlier_deadline() {
        let live = HashMap::new();
        let grace = Duration::from_secs(60);
        let mut signals = 0;
        let now = tokio::time::Instant::now();
        let first = forward(&live, libc::SIGTERM, &mut signals, grace, None, now);
        assert_eq!(first, Some(now + grace));
        let second = forward(&live, libc::SIGINT, &mut signals, grace, first, now);
        assert_eq!(second, Some(now));
        // A failure's shorter deadline, set before the signal, stands.
        let mut signals = 0;
        let sooner = Some(now + Duration::from_secs(5));
        assert_eq!(
            forward(&live, libc::SIGTERM, &mut signals, grace, sooner, now),
            sooner
        );
    }

    #[test]
    fn plans_global_ranks_and_splits_threads() {
        let dist = DistEnv {
            nproc_per_node: 2,
            nnodes: 3,
            node_rank: 1,
            master_addr: Some("job-node-0.job".into()),
            master_port: 1234,
            launcher_requested: true,
        };
        let workers = plan(&dist, 8, None, &[]);
        assert_eq!(workers.len(), 2);
        assert_eq!((workers[0].rank, workers[1].rank), (2, 3));
        assert_eq!(get(&workers[1], "LOCAL_RANK"), "1");
        assert_eq!(get(&workers[1], "WORLD_SIZE"), "6");
        assert_eq!(get(&workers[0], "MASTER_ADDR"), "job-node-0.job");
        assert_eq!(get(&workers[0], "RAYON_NUM_THREADS"), "4");
        let kept = plan(&dist, 8, Some("1"), &[]);
        assert_eq!(get(&kept[0], "RAYON_NUM_THREADS"), "1");
        let single_node = DistEnv {
            nnodes: 1,
            node_rank: 0,
            master_addr: None,
            nproc_per_node: 4,
            ..dist
        };
        let w = plan(&single_node, 2, None, &[]);
        assert_eq!(get(&w[3], "MASTER_ADDR"), "127.0.0.1");
        assert_eq!(
            get(&w[3], "RAYON_NUM_THREADS"),
            "1",
            "at least one thread each"
        );
    }

    #[test]
    fn each_worker_gets_its_own_gpu() {
        let dist = DistEnv {
            nproc_per_node: 3,
            nnodes: 1,
            node_rank: 0,
            master_addr: None,
            master_port: 29500,
            launcher_requested: true,
        };
        let gpus = node_gpus(Some("2, 5"), 2);
        assert_eq!(gpus, ["2", "5"]);
        let w = plan(&dist, 48, None, &gpus);
        assert_eq!(get(&w[0], "CUDA_VISIBLE_DEVICES"), "2");
        assert_eq!(get(&w[1], "CUDA_VISIBLE_DEVICES"), "5");
        assert!(
            !w[2].env.iter().any(|(k, _)| k == "CUDA_VISIBLE_DEVICES"),
            "a worker beyond the GPUs gets none"
        );
        assert_eq!(node_gpus(None, 4), ["0", "1", "2", "3"]);
        assert!(node_gpus(None, 0).is_empty());
        assert!(
            plan(&dist, 4, None, &[])
                .iter()
                .all(|w| !w.env.iter().any(|(k, _)| k == "CUDA_VISIBLE_DEVICES"))
        );
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(&ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(&ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(&ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn the_cause_is_the_worker_killed_by_a_signal_not_the_peer_that_noticed() {
        assert_eq!(root_cause(&[]), None);
        assert_eq!(root_cause(&[(0, 4), (1, 137)]), Some((1, 137)));
        assert_eq!(root_cause(&[(1, 137), (0, 4)]), Some((1, 137)));
        assert_eq!(root_cause(&[(0, 4), (1, 1)]), Some((1, 1)), "its own error");
        assert_eq!(root_cause(&[(2, 1), (0, 3)]), Some((2, 1)), "first reaped");
    }
}

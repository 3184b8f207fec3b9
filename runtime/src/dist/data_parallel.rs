//! What the trainer calls to train data-parallel, kept apart from the training loop.
//!
//! - Batches: the sampler shuffles the whole dataset with `--data_seed` and cuts *global*
//!   batches of `per_device_train_batch_size × world_size` rows; each rank takes its
//!   contiguous share of every global batch ([`shard`]). Global batches are therefore the
//!   same whatever the world size, and runs with 1, 2 or 4 ranks are comparable. A short
//!   last batch (fewer rows than the global batch) is split as evenly as possible, the
//!   first ranks taking one row more; a rank whose share is empty contributes zero
//!   gradient and zero tokens. No row is dropped unless `--dataloader_drop_last`.
//! - Weights: rank 0's initial trainable weights are broadcast, so every rank starts equal.
//! - Gradients: each rank sums the losses of its rows; before the optimizer step the
//!   accumulated gradients of the whole accumulation window are summed over ranks in one
//!   all-reduce. With `--average_tokens_across_devices true` they are divided by the global
//!   token count, which is exactly the single-process loss over the same global batch;
//!   with false each rank first divides by its own token count and the sum is divided by
//!   the world size (per-device mean loss, then the mean over devices, as plain DDP).
//! - Files: rank 0 alone writes logs and checkpoints; the data cursor and RNG counters are
//!   global (every rank holds the same ones), so rank 0's checkpoint resumes every rank.

use std::time::Duration;

use anyhow::Context;
use kubeswift_args::Args;
use sha2::{Digest, Sha256};

use super::collective::{Collective, Solo};
use super::error::DistError;
use super::rendezvous::{RendezvousOptions, connect};
use super::world::WorldInfo;
use crate::train::optimizer::AdamW;
use crate::train::step::LossStats;

/// `--ddp_backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Our CPU ring over TCP (gloo's role in torch).
    Gloo,
    /// NVIDIA's collectives on this worker's GPU; only in the `cuda` build.
    Nccl { ordinal: usize },
}

/// What the backend choice depends on, gathered once (plain data: [`Backend::choose`] is
/// a pure function).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendEnv {
    /// Built with the `cuda` feature.
    pub cuda_built: bool,
    /// This worker's GPU ordinal, or why it computes on the CPU (`device::decide`).
    pub gpu: Result<usize, String>,
    /// libnccl loads.
    pub nccl_library: bool,
}

impl BackendEnv {
    /// This process's: the CUDA probe, the device choice for `local_rank`, and libnccl.
    pub fn probe(local_rank: usize) -> Self {
        let probe = crate::device::probe();
        let gpu = match crate::device::decide(probe, local_rank) {
            crate::device::Choice::Cuda(ordinal) => Ok(ordinal),
            crate::device::Choice::Cpu(reason) => Err(reason),
        };
        #[cfg(feature = "cuda")]
        let nccl_library = gpu.is_ok() && super::nccl::library_present();
        #[cfg(not(feature = "cuda"))]
        let nccl_library = false;
        BackendEnv {
            cuda_built: probe.built,
            gpu,
            nccl_library,
        }
    }
}

impl Backend {
    /// ms-swift's rule: NCCL when the worker has a GPU, gloo otherwise. Unset falls back
    /// to gloo when libnccl is missing (gradients then cross the CPU ring); an explicit
    /// `nccl` that cannot run is an error saying why.
    pub fn choose(value: Option<&str>, env: &BackendEnv) -> Result<Self, DistError> {
        let refuse = |why: String| DistError::Backend("nccl".into(), why);
        match value {
            Some("gloo") => Ok(Backend::Gloo),
            None => Ok(match env.gpu {
                Ok(ordinal) if env.nccl_library => Backend::Nccl { ordinal },
                _ => Backend::Gloo,
            }),
            Some("nccl") if !env.cuda_built => Err(refuse(
                "needs the cuda build of kubeswift; this build trains on CPU: use --ddp_backend gloo (or leave it unset)".into(),
            )),
            Some("nccl") => match &env.gpu {
                Err(reason) => Err(refuse(format!(
                    "this worker computes on the CPU ({reason}) and NCCL needs a GPU: use --ddp_backend gloo (or leave it unset)"
                ))),
                Ok(_) if !env.nccl_library => Err(refuse(
                    "libnccl.so.2 is not on the library path (the CUDA images' libnccl2 package or PyPI's nvidia-nccl wheel provide it; add its folder to LD_LIBRARY_PATH), or use --ddp_backend gloo".into(),
                )),
                Ok(ordinal) => Ok(Backend::Nccl { ordinal: *ordinal }),
            },
            Some(other) => Err(DistError::Backend(
                other.into(),
                "not supported: use gloo (CPU) or nccl (cuda build)".into(),
            )),
        }
    }
}

/// Rank `rank`'s contiguous share of a global batch: balanced, the first
/// `len % world_size` ranks taking one row more, possibly empty.
pub fn shard(global: &[usize], rank: usize, world_size: usize) -> &[usize] {
    let world = world_size.max(1);
    let (base, extra) = (global.len() / world, global.len() % world);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    let start = start.min(global.len());
    &global[start..(start + len).min(global.len())]
}

/// The trainer's handle on the job.
pub struct DataParallel {
    comm: Box<dyn Collective>,
    average_tokens: bool,
}

impl DataParallel {
    /// One process.
    pub fn single() -> Self {
        DataParallel {
            comm: Box::new(Solo),
            average_tokens: true,
        }
    }

    pub fn new(comm: Box<dyn Collective>, average_tokens: bool) -> Self {
        DataParallel {
            comm,
            average_tokens,
        }
    }

    /// From a launched worker's environment and the arguments: checks `--ddp_backend`,
    /// then meets the other ranks within `--ddp_timeout` seconds. Not a worker: one process.
    pub fn from_args(args: &Args) -> anyhow::Result<Self> {
        let Some(world) = WorldInfo::from_env(|k| std::env::var(k).ok())? else {
            return Ok(Self::single());
        };
        // `swift infer` owns none of the ddp arguments: it runs on their defaults.
        let backend = Backend::choose(
            args.lookup("ddp_backend").and_then(|v| v.as_str()),
            &BackendEnv::probe(world.local_rank),
        )?;
        let seconds = args
            .lookup("ddp_timeout")
            .and_then(|v| v.as_i64())
            .unwrap_or(1800)
            .max(1) as u64;
        let timeout = Duration::from_secs(seconds);
        let options = RendezvousOptions {
            deadline: timeout,
            timeout,
            fingerprint: fingerprint(std::env::args().skip(1)),
            backend,
        };
        let comm = connect(&world, &options).with_context(|| {
            format!(
                "distributed rendezvous of rank {} of {} at {}",
                world.rank,
                world.world_size,
                world.master()
            )
        })?;
        let average_tokens = args
            .lookup("average_tokens_across_devices")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Ok(Self::new(comm, average_tokens))
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Whether this rank writes logs and checkpoints.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// This rank's rows of a global batch.
    pub fn my_rows<'a>(&self, global: &'a [usize]) -> &'a [usize] {
        shard(global, self.rank(), self.world_size())
    }

    /// Makes every rank's trainable weights (and optimizer master copy) rank 0's.
    pub fn broadcast_weights(&mut self, optimizer: &mut AdamW) -> anyhow::Result<()> {
        if self.world_size() == 1 {
            return Ok(());
        }
        let mut flat = optimizer.flat_masters();
        self.comm
            .broadcast(&mut flat, 0)
            .context("broadcasting the initial weights from rank 0")?;
        optimizer.set_flat_masters(&flat)?;
        Ok(())
    }

    /// Sums the window's gradients and loss statistics over ranks; returns the global
    /// statistics, the factor the optimizer multiplies the gradients by, and whether any
    /// rank was asked to stop (`stop`: this rank received SIGTERM/SIGINT), so that every
    /// rank stops after the same step.
    pub fn reduce_gradients(
        &mut self,
        optimizer: &mut AdamW,
        local: LossStats,
        stop: bool,
    ) -> anyhow::Result<(LossStats, f32, bool)> {
        if self.world_size() == 1 {
            return Ok((local, 1.0 / local.tokens.max(1) as f32, stop));
        }
        let mut stats = [
            local.loss_sum,
            local.tokens as f64,
            local.correct as f64,
            local.sequences as f64,
            local.sequences_correct as f64,
            f64::from(u8::from(stop)),
        ];
        self.comm
            .all_reduce_sum_f64(&mut stats)
            .context("all-reducing the loss and token counts")?;
        let global = LossStats {
            loss_sum: stats[0],
            tokens: stats[1] as usize,
            correct: stats[2] as usize,
            sequences: stats[3] as usize,
            sequences_correct: stats[4] as usize,
        };
        let mut grads = optimizer.flat_grads();
        let scale = if self.average_tokens {
            1.0 / global.tokens.max(1) as f32
        } else {
            if local.tokens > 0 {
                let own = 1.0 / local.tokens as f32;
                grads.iter_mut().for_each(|g| *g *= own);
            }
            1.0 / self.world_size() as f32
        };
        self.comm
            .all_reduce_sum(&mut grads)
            .context("all-reducing the gradients")?;
        optimizer.set_flat_grads(&grads);
        Ok((global, scale, stats[5] > 0.0))
    }

    /// Every rank waits here (around checkpoint saves).
    pub fn barrier(&mut self, name: &str) -> anyhow::Result<()> {
        self.comm
            .barrier(name)
            .with_context(|| format!("barrier {name}"))
    }

    /// One string from every rank on rank 0, in rank order; `None` on the others.
    pub fn gather(&mut self, name: &str, value: String) -> anyhow::Result<Option<Vec<String>>> {
        self.comm
            .gather(name, value)
            .with_context(|| format!("gathering {name}"))
    }

    /// Leaves the job cleanly after the last collective.
    pub fn finish(&mut self) {
        self.comm.finish();
    }
}

/// A short hash of what every rank must share (the command line).
pub fn fingerprint(parts: impl Iterator<Item = String>) -> String {
    let mut hash = Sha256::new();
    for p in parts {
        hash.update(p.as_bytes());
        hash.update([0u8]);
    }
    hex::encode(&hash.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_a_global_batch_in_rank_order() {
        let rows: Vec<usize> = (10..17).collect();
        for world in 1..=4 {
            let parts: Vec<&[usize]> = (0..world).map(|r| shard(&rows, r, world)).collect();
            assert_eq!(parts.concat(), rows, "world {world}");
            let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
            assert!(
                lens.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1),
                "{lens:?}"
            );
        }
        assert_eq!(shard(&[1, 2, 3], 0, 2), [1, 2]);
        assert_eq!(shard(&[1, 2, 3], 1, 2), [3]);
        assert!(shard(&[7], 1, 2).is_empty(), "a rank may get no rows");
    }

    fn env(cuda_built: bool, gpu: Result<usize, &str>, nccl_library: bool) -> BackendEnv {
        BackendEnv {
            cuda_built,
            gpu: gpu.map_err(String::from),
            nccl_library,
        }
    }

    #[test]
    fn the_backend_defaults_to_nccl_on_a_gpu_and_gloo_elsewhere() {
        let gpu = env(true, Ok(3), true);
        assert_eq!(
            Backend::choose(None, &gpu).unwrap(),
            Backend::Nccl { ordinal: 3 }
        );
        assert_eq!(Backend::choose(Some("gloo"), &gpu).unwrap(), Backend::Gloo);
        let cpu = env(false, Err("built without cuda"), false);
        assert_eq!(Backend::choose(None, &cpu).unwrap(), Backend::Gloo);
        assert_eq!(Backend::choose(Some("gloo"), &cpu).unwrap(), Backend::Gloo);
        // A GPU without libnccl: unset still trains, over the CPU ring.
        let no_lib = env(true, Ok(0), false);
        assert_eq!(Backend::choose(None, &no_lib).unwrap(), Backend::Gloo);
    }

    #[test]
    fn nccl_that_cannot_run_is_refused_with_the_reason() {
        let cases = [
            (env(false, Err("x"), false), "cuda build"),
            (
                env(true, Err("the driver reports no GPU"), false),
                "the driver reports no GPU",
            ),
            (env(true, Ok(0), false), "LD_LIBRARY_PATH"),
        ];
        for (e, why) in cases {
            let err = Backend::choose(Some("nccl"), &e).unwrap_err().to_string();
            assert!(
                err.contains("--ddp_backend nccl") && err.contains(why),
                "{err}"
            );
            assert!(err.contains("gloo"), "names the alternative: {err}");
        }
        let err = Backend::choose(Some("mpi"), &env(true, Ok(0), true)).unwrap_err();
        assert!(err.to_string().contains("--ddp_backend mpi"), "{err}");
    }

    #[test]
    fn fingerprints_tell_command_lines_apart() {
        let a = fingerprint(["--lr", "1"].map(String::from).into_iter());
        assert_eq!(a, fingerprint(["--lr", "1"].map(String::from).into_iter()));
        assert_ne!(a, fingerprint(["--lr1"].map(String::from).into_iter()));
    }
}

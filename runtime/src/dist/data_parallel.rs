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
    /// NVIDIA's collectives; only in the `cuda` build.
    Nccl,
}

impl Backend {
    /// The backend for this build; unset means gloo, as there is no GPU path yet.
    pub fn from_arg(value: Option<&str>) -> Result<Self, DistError> {
        match value {
            None | Some("gloo") => Ok(Backend::Gloo),
            Some("nccl") => Err(DistError::Backend(
                "nccl".into(),
                "needs the cuda build of kubeswift; this build trains on CPU: use --ddp_backend gloo (or leave it unset)".into(),
            )),
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
        Backend::from_arg(args.lookup("ddp_backend").and_then(|v| v.as_str()))?;
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
    /// statistics and the factor the optimizer multiplies the gradients by.
    pub fn reduce_gradients(
        &mut self,
        optimizer: &mut AdamW,
        local: LossStats,
    ) -> anyhow::Result<(LossStats, f32)> {
        if self.world_size() == 1 {
            return Ok((local, 1.0 / local.tokens.max(1) as f32));
        }
        let mut stats = [
            local.loss_sum,
            local.tokens as f64,
            local.correct as f64,
            local.sequences as f64,
            local.sequences_correct as f64,
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
        Ok((global, scale))
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

    #[test]
    fn nccl_is_refused_with_a_clear_reason() {
        assert_eq!(Backend::from_arg(None).unwrap(), Backend::Gloo);
        assert_eq!(Backend::from_arg(Some("gloo")).unwrap(), Backend::Gloo);
        let err = Backend::from_arg(Some("nccl")).unwrap_err().to_string();
        assert!(
            err.contains("--ddp_backend nccl") && err.contains("cuda build"),
            "{err}"
        );
    }

    #[test]
    fn fingerprints_tell_command_lines_apart() {
        let a = fingerprint(["--lr", "1"].map(String::from).into_iter());
        assert_eq!(a, fingerprint(["--lr", "1"].map(String::from).into_iter()));
        assert_ne!(a, fingerprint(["--lr1"].map(String::from).into_iter()));
    }
}

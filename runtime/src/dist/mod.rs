//! Distributed training (issue 8): torchrun's environment contract, a TCP rendezvous with a
//! small key-value store, collectives behind one trait (a CPU ring all-reduce over TCP;
//! NCCL in the `cuda` build), the `NPROC_PER_NODE` launcher and the data-parallel glue the
//! trainer calls.
//!
//! - `world`: who this process is (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT).
//! - `store`: the rendezvous key-value store rank 0 hosts, with barriers that name the
//!   ranks that did not arrive.
//! - `rendezvous`: connect every rank to the store (retrying while DNS and peers come up),
//!   check they run the same job, then wire the ring.
//! - `collective`: the `Collective` trait, the single-process `Solo` and the TCP `Ring`.
//! - `nccl` (`cuda` build): the same trait over NCCL on each worker's GPU.
//! - `launcher`: one worker process per local device; signals; the first failure wins.
//! - `data_parallel`: batch sharding, weight broadcast and gradient averaging.
//!
//! Every wait has a deadline (`--ddp_timeout`): a dead or missing peer ends the job with an
//! error naming its rank, never a hang.

pub mod collective;
pub mod data_parallel;
pub mod error;
pub mod launcher;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod rendezvous;
pub mod store;
pub mod world;

pub use collective::{Collective, Ring, Solo};
pub use data_parallel::{Backend, BackendEnv, DataParallel, shard};
pub use error::DistError;
pub use world::WorldInfo;

//! torchrun's environment contract: NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR,
//! MASTER_PORT, with torchrun's `PET_*` names as fallbacks (Kubeflow's PyTorchJob sets those).

use crate::error::{ArgsError, Origin};
use crate::table::ENV_VARS;

/// The distributed layout read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Worker processes on this node (default 1).
    pub nproc_per_node: usize,
    /// Nodes in the job (default 1).
    pub nnodes: usize,
    /// This node's rank, `0..nnodes`.
    pub node_rank: usize,
    /// Rendezvous host; required when nnodes > 1.
    pub master_addr: Option<String>,
    /// Rendezvous port (default 29500).
    pub master_port: u16,
    /// Whether any variable asked for a launcher (ms-swift uses torchrun when NPROC_PER_NODE
    /// or NNODES is set).
    pub launcher_requested: bool,
}

/// Reads a variable by its plain name, then by its torchrun `PET_*` alias.
fn read(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<(String, String)> {
    let alias = ENV_VARS
        .iter()
        .find(|v| v.name == name)
        .and_then(|v| v.pet_alias);
    env(name)
        .filter(|v| !v.is_empty())
        .map(|v| (name.to_string(), v))
        .or_else(|| {
            alias.and_then(|a| env(a).filter(|v| !v.is_empty()).map(|v| (a.to_string(), v)))
        })
}

fn number<T>(
    env: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
    min: T,
) -> Result<T, ArgsError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match read(env, name) {
        None => Ok(default),
        Some((var, text)) => match text.trim().parse::<T>() {
            Ok(v) if v >= min => Ok(v),
            _ => Err(ArgsError::BadValue {
                name: var.clone(),
                value: text,
                expected: format!("an integer >= {min}"),
                origin: Origin::Resource {
                    field: format!("environment variable {var}"),
                },
            }),
        },
    }
}

impl DistEnv {
    /// Reads and checks the layout; `env` is `std::env::var(..).ok()` in production.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, ArgsError> {
        let nproc_per_node = number(&env, "NPROC_PER_NODE", 1usize, 1)?;
        let nnodes = number(&env, "NNODES", 1usize, 1)?;
        let node_rank = number(&env, "NODE_RANK", 0usize, 0)?;
        let master_port = number(&env, "MASTER_PORT", 29500u16, 1)?;
        let master_addr = read(&env, "MASTER_ADDR").map(|(_, v)| v);
        if node_rank >= nnodes {
            return Err(ArgsError::Conflict {
                message: format!("NODE_RANK={node_rank} must be below NNODES={nnodes}"),
            });
        }
        if nnodes > 1 && master_addr.is_none() {
            return Err(ArgsError::Conflict {
                message: format!("NNODES={nnodes} needs MASTER_ADDR (the rank-0 node's address)"),
            });
        }
        let launcher_requested =
            read(&env, "NPROC_PER_NODE").is_some() || read(&env, "NNODES").is_some();
        Ok(DistEnv {
            nproc_per_node,
            nnodes,
            node_rank,
            master_addr,
            master_port,
            launcher_requested,
        })
    }

    /// Total worker processes across the job.
    pub fn world_size(&self) -> usize {
        self.nproc_per_node * self.nnodes
    }
}

/// The pod's `terminationGracePeriodSeconds`, which the operator passes in
/// `KUBESWIFT_TERMINATION_GRACE_SECONDS` (Kubernetes does not show it to the container): how
/// long after SIGTERM the kubelet waits before it SIGKILLs the container. None when unset.
pub fn termination_grace_seconds(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<u64>, ArgsError> {
    match read(&env, TERMINATION_GRACE_ENV) {
        None => Ok(None),
        Some(_) => number(&env, TERMINATION_GRACE_ENV, 0u64, 0).map(Some),
    }
}

/// See [`termination_grace_seconds`].
pub const TERMINATION_GRACE_ENV: &str = "KUBESWIFT_TERMINATION_GRACE_SECONDS";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_the_termination_grace_and_names_the_variable_when_it_is_bad() {
        assert_eq!(termination_grace_seconds(env(&[])).unwrap(), None);
        assert_eq!(
            termination_grace_seconds(env(&[(TERMINATION_GRACE_ENV, " 120 ")])).unwrap(),
            Some(120)
        );
        assert_eq!(
            termination_grace_seconds(env(&[(TERMINATION_GRACE_ENV, "0")])).unwrap(),
            Some(0)
        );
        let err = termination_grace_seconds(env(&[(TERMINATION_GRACE_ENV, "2m")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(TERMINATION_GRACE_ENV), "{err}");
        assert!(err.contains("2m"), "{err}");
    }

    #[test]
    fn defaults_to_one_process() {
        let d = DistEnv::from_env(env(&[])).unwrap();
        assert_eq!(
            (d.nproc_per_node, d.nnodes, d.node_rank, d.master_port),
            (1, 1, 0, 29500)
        );
        assert!(!d.launcher_requested);
        assert_eq!(d.world_size(), 1);
    }

    #[test]
    fn reads_plain_names_before_pet_aliases() {
        let d = DistEnv::from_env(env(&[
            ("PET_NNODES", "4"),
            ("NNODES", "2"),
            ("PET_NODE_RANK", "1"),
            ("PET_MASTER_ADDR", "job-node-0.job"),
            ("NPROC_PER_NODE", "8"),
        ]))
        .unwrap();
        assert_eq!(d.nnodes, 2);
        assert_eq!(d.node_rank, 1);
        assert_eq!(d.master_addr.as_deref(), Some("job-node-0.job"));
        assert_eq!(d.world_size(), 16);
        assert!(d.launcher_requested);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = DistEnv::from_env(env(&[("NPROC_PER_NODE", "two")])).unwrap_err();
        assert!(err.to_string().contains("NPROC_PER_NODE"), "{err}");
        let err = DistEnv::from_env(env(&[("PET_MASTER_PORT", "0")])).unwrap_err();
        assert!(err.to_string().contains("PET_MASTER_PORT"), "{err}");
        let err = DistEnv::from_env(env(&[
            ("NNODES", "2"),
            ("NODE_RANK", "2"),
            ("MASTER_ADDR", "a"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("NODE_RANK=2"), "{err}");
        let err = DistEnv::from_env(env(&[("NNODES", "2")])).unwrap_err();
        assert!(err.to_string().contains("MASTER_ADDR"), "{err}");
    }
}

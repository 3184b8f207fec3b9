//! Who this process is in the job, read from the environment torchrun gives its workers
//! (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; the last two
//! also under torchrun's `PET_*` names). A pure parser: the caller passes the lookup.

use super::error::DistError;

/// torchrun's default rendezvous port.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// One worker's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldInfo {
    pub world_size: usize,
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Rank on this node, `0..local_world_size`.
    pub local_rank: usize,
    /// Workers on this node.
    pub local_world_size: usize,
    /// Where rank 0 hosts the rendezvous.
    pub master_addr: String,
    pub master_port: u16,
}

/// A variable by its plain name, then by torchrun's `PET_` alias; empty counts as unset.
fn read(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<(String, String)> {
    [name.to_string(), format!("PET_{name}")]
        .into_iter()
        .find_map(|var| env(&var).filter(|v| !v.trim().is_empty()).map(|v| (var, v)))
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    env: &impl Fn(&str) -> Option<String>,
    name: &str,
    min: T,
) -> Result<Option<T>, DistError> {
    let Some((var, text)) = read(env, name) else {
        return Ok(None);
    };
    match text.trim().parse::<T>() {
        Ok(v) if v >= min => Ok(Some(v)),
        _ => Err(DistError::Env {
            var,
            value: text,
            expected: format!("an integer >= {min}"),
        }),
    }
}

impl WorldInfo {
    /// `Ok(None)` when this process is not a launched worker (neither RANK nor WORLD_SIZE
    /// set): it then runs alone or becomes the launcher.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let rank = number::<usize>(&env, "RANK", 0)?;
        let world_size = number::<usize>(&env, "WORLD_SIZE", 1)?;
        let (rank, world_size) = match (rank, world_size) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(DistError::MissingEnv {
                    var: "WORLD_SIZE",
                    reason: "RANK is set".into(),
                });
            }
            (None, Some(_)) => {
                return Err(DistError::MissingEnv {
                    var: "RANK",
                    reason: "WORLD_SIZE is set".into(),
                });
            }
            (Some(r), Some(w)) => (r, w),
        };
        if rank >= world_size {
            return Err(DistError::Env {
                var: "RANK".into(),
                value: rank.to_string(),
                expected: format!("a rank below WORLD_SIZE={world_size}"),
            });
        }
        let local_world_size = number::<usize>(&env, "LOCAL_WORLD_SIZE", 1)?.unwrap_or(1);
        let local_rank = number::<usize>(&env, "LOCAL_RANK", 0)?.unwrap_or(0);
        if local_rank >= local_world_size.max(1) && read(&env, "LOCAL_WORLD_SIZE").is_some() {
            return Err(DistError::Env {
                var: "LOCAL_RANK".into(),
                value: local_rank.to_string(),
                expected: format!("a rank below LOCAL_WORLD_SIZE={local_world_size}"),
            });
        }
        let master_addr = match read(&env, "MASTER_ADDR") {
            Some((_, v)) => v.trim().to_string(),
            None if world_size == 1 => "127.0.0.1".to_string(),
            None => {
                return Err(DistError::MissingEnv {
                    var: "MASTER_ADDR",
                    reason: format!("WORLD_SIZE={world_size} (the rank-0 host's address)"),
                });
            }
        };
        let master_port = number::<u16>(&env, "MASTER_PORT", 1)?.unwrap_or(DEFAULT_MASTER_PORT);
        Ok(Some(WorldInfo {
            world_size,
            rank,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
        }))
    }

    /// `host:port` of the rendezvous (IPv6 literals bracketed).
    pub fn master(&self) -> String {
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }
}

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
    fn not_a_worker_without_rank_and_world_size() {
        assert_eq!(
            WorldInfo::from_env(env(&[("NPROC_PER_NODE", "2")])).unwrap(),
            None
        );
    }

    #[test]
    fn reads_a_worker_with_pet_fallbacks() {
        let w = WorldInfo::from_env(env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("PET_MASTER_ADDR", "job-node-0.job"),
            ("PET_MASTER_PORT", "23456"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            w,
            WorldInfo {
                world_size: 4,
                rank: 3,
                local_rank: 1,
                local_world_size: 2,
                master_addr: "job-node-0.job".into(),
                master_port: 23456,
            }
        );
        assert_eq!(w.master(), "job-node-0.job:23456");
        let plain = WorldInfo::from_env(env(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("PET_MASTER_ADDR", "ignored"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(plain.master(), "10.0.0.1:29500");
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("RANK", "0")], "WORLD_SIZE"),
            (&[("WORLD_SIZE", "2")], "RANK"),
            (
                &[("WORLD_SIZE", "two"), ("RANK", "0")],
                "WORLD_SIZE=\"two\"",
            ),
            (&[("WORLD_SIZE", "2"), ("RANK", "2")], "RANK=\"2\""),
            (&[("WORLD_SIZE", "2"), ("RANK", "1")], "MASTER_ADDR"),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "1"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "0"),
                ],
                "MASTER_PORT",
            ),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "1"),
                    ("MASTER_ADDR", "h"),
                    ("PET_MASTER_PORT", "x"),
                ],
                "PET_MASTER_PORT",
            ),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "1"),
                    ("LOCAL_RANK", "2"),
                    ("LOCAL_WORLD_SIZE", "2"),
                ],
                "LOCAL_RANK",
            ),
        ];
        for (vars, needle) in cases {
            let err = WorldInfo::from_env(env(vars)).unwrap_err().to_string();
            assert!(err.contains(needle), "{vars:?}: {err}");
        }
    }
}

//! Which device a `swift` process computes on.
//!
//! The `cuda` build trains on a GPU when the driver and the CUDA libraries load: the only
//! one it sees (our launcher gives each worker its own through CUDA_VISIBLE_DEVICES), or GPU
//! `LOCAL_RANK` when it sees several (torchrun's convention);
//! otherwise it says why in one log line and uses the CPU, so one binary serves GPU and CPU
//! nodes. The default build always uses the CPU.

use candle_core::Device;

/// The outcome of [`decide`], with the reason for a CPU fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// CUDA device ordinal.
    Cuda(usize),
    /// The CPU, and why not a GPU.
    Cpu(String),
}

/// What the process can see of CUDA (gathered by [`probe`]; plain data so that the choice
/// is a pure function).
#[derive(Debug, Clone, Default)]
pub struct CudaProbe {
    /// Built with the `cuda` feature.
    pub built: bool,
    /// `CUDA_VISIBLE_DEVICES` as set, if set.
    pub visible_devices: Option<String>,
    /// Shared libraries that failed to load (libcuda, libcublas, libcurand).
    pub missing_libraries: Vec<&'static str>,
    /// GPUs the driver reports (`None` when it could not be asked).
    pub device_count: Option<usize>,
}

impl CudaProbe {
    /// GPUs this process can use: the driver's count when the build and the libraries allow.
    pub fn usable_gpus(&self) -> usize {
        if self.built && self.missing_libraries.is_empty() {
            self.device_count.unwrap_or(0)
        } else {
            0
        }
    }

    /// `CUDA_VISIBLE_DEVICES` is set and names no GPU: the CPU on purpose.
    fn gpus_hidden(&self) -> bool {
        self.visible_devices
            .as_deref()
            .is_some_and(|v| v.trim().is_empty() || v.trim() == "-1")
    }
}

/// Picks the device for the worker with `local_rank`.
pub fn decide(probe: &CudaProbe, local_rank: usize) -> Choice {
    if !probe.built {
        return Choice::Cpu("this swift binary is built without the `cuda` feature".into());
    }
    if probe.gpus_hidden() {
        let v = probe.visible_devices.as_deref().unwrap_or_default();
        return Choice::Cpu(format!("CUDA_VISIBLE_DEVICES={v:?} hides every GPU"));
    }
    if !probe.missing_libraries.is_empty() {
        return Choice::Cpu(format!(
            "no NVIDIA driver or CUDA libraries ({} not found on the library path)",
            probe.missing_libraries.join(", ")
        ));
    }
    match probe.device_count {
        None | Some(0) => Choice::Cpu("the driver reports no GPU".into()),
        // Our launcher gives each worker its own GPU through CUDA_VISIBLE_DEVICES.
        Some(1) => Choice::Cuda(0),
        Some(n) if local_rank < n => Choice::Cuda(local_rank),
        Some(n) => Choice::Cpu(format!(
            "LOCAL_RANK {local_rank} but only {n} GPU(s) are visible (one worker per GPU: \
             set NPROC_PER_NODE to at most {n})"
        )),
    }
}

/// What this process can load and see; probed once (the launcher and the trainer both ask,
/// and loading the libraries and initialising the driver is not free).
pub fn probe() -> &'static CudaProbe {
    static PROBE: std::sync::OnceLock<CudaProbe> = std::sync::OnceLock::new();
    PROBE.get_or_init(probe_now)
}

fn probe_now() -> CudaProbe {
    let visible_devices = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc;
        // SAFETY: these only try to dlopen the libraries by name; nothing is called yet.
        let present = unsafe {
            [
                ("libcuda", cudarc::driver::sys::is_culib_present()),
                ("libcublas", cudarc::cublas::sys::is_culib_present()),
                ("libcurand", cudarc::curand::sys::is_culib_present()),
            ]
        };
        let missing_libraries: Vec<&'static str> = present
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| *name)
            .collect();
        let device_count = if missing_libraries.is_empty() {
            cudarc::driver::CudaContext::device_count()
                .ok()
                .map(|n| n.max(0) as usize)
        } else {
            None
        };
        CudaProbe {
            built: true,
            visible_devices,
            missing_libraries,
            device_count,
        }
    }
    #[cfg(not(feature = "cuda"))]
    CudaProbe {
        built: false,
        visible_devices,
        ..CudaProbe::default()
    }
}

/// The device this worker computes on (see the module docs); logs the choice once.
pub fn compute_device() -> anyhow::Result<Device> {
    let local_rank = std::env::var("LOCAL_RANK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let probe = probe();
    match decide(probe, local_rank) {
        Choice::Cuda(ordinal) => {
            let device = Device::new_cuda(ordinal)
                .map_err(|e| anyhow::anyhow!("opening CUDA device {ordinal}: {e}"))?;
            tracing::info!(ordinal, "computing on GPU cuda:{ordinal}");
            Ok(device)
        }
        Choice::Cpu(reason) => {
            if cfg!(feature = "cuda") {
                // A cuda binary on a CPU node is worth a warning; hiding the GPUs on purpose
                // is not.
                if probe.gpus_hidden() {
                    tracing::info!(%reason, "computing on the CPU");
                } else {
                    tracing::warn!(%reason, "computing on the CPU");
                }
            }
            // The kernels' instruction set sets the speed and, for bf16, which kernel sums
            // the products (kubeswift_kernels::cpu::isa): worth one line in every CPU log.
            tracing::info!(
                isa = kubeswift_kernels::cpu::isa::active().name(),
                "CPU kernels"
            );
            Ok(Device::Cpu)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu_node(count: usize) -> CudaProbe {
        CudaProbe {
            built: true,
            visible_devices: None,
            missing_libraries: Vec::new(),
            device_count: Some(count),
        }
    }

    #[test]
    fn each_local_rank_takes_its_own_gpu() {
        assert_eq!(decide(&gpu_node(8), 0), Choice::Cuda(0));
        assert_eq!(decide(&gpu_node(8), 7), Choice::Cuda(7));
        assert_eq!(
            decide(&gpu_node(1), 3),
            Choice::Cuda(0),
            "its own GPU, from the launcher"
        );
    }

    #[test]
    fn the_cpu_is_chosen_with_the_reason() {
        let reason = |probe: &CudaProbe, rank| match decide(probe, rank) {
            Choice::Cpu(r) => r,
            other => panic!("expected the CPU, got {other:?}"),
        };
        assert!(reason(&CudaProbe::default(), 0).contains("without the `cuda` feature"));
        let hidden = CudaProbe {
            visible_devices: Some(String::new()),
            ..gpu_node(2)
        };
        assert!(reason(&hidden, 0).contains("CUDA_VISIBLE_DEVICES"));
        let no_driver = CudaProbe {
            missing_libraries: vec!["libcuda"],
            device_count: None,
            ..gpu_node(0)
        };
        assert!(reason(&no_driver, 0).contains("libcuda not found"));
        assert!(reason(&gpu_node(0), 0).contains("no GPU"));
        assert!(reason(&gpu_node(2), 3).contains("NPROC_PER_NODE to at most 2"));
    }
}

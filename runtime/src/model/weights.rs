//! The safetensors of a model folder: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Files are memory-mapped; a tensor is copied out (and
//! converted to the requested dtype) when a module asks for it by its checkpoint name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::error::{ModelError, Result};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// The opened safetensors files of a folder and which file holds which tensor.
pub struct Weights {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// Tensor name -> index into `files`.
    routing: HashMap<String, usize>,
    device: Device,
}

#[derive(Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

impl Weights {
    /// Opens `folder/model.safetensors` or every shard named by the index.
    pub fn open(folder: &Path, device: &Device) -> Result<Self> {
        let index_path = folder.join(INDEX_FILE);
        let single = folder.join(SINGLE_FILE);
        let shard_names: Vec<String> = if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| ModelError::Io {
                path: index_path.clone(),
                source,
            })?;
            let index: Index = serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: index_path.clone(),
                source,
            })?;
            let mut names: Vec<String> = index.weight_map.values().cloned().collect();
            names.sort();
            names.dedup();
            names
        } else if single.is_file() {
            vec![SINGLE_FILE.to_string()]
        } else {
            return Err(ModelError::MissingFile {
                path: folder.to_path_buf(),
                what: "model weights (model.safetensors or model.safetensors.index.json)",
            });
        };
        let mut files = Vec::with_capacity(shard_names.len());
        let mut routing = HashMap::new();
        for name in shard_names {
            let path = folder.join(&name);
            if !path.is_file() {
                return Err(ModelError::MissingFile {
                    path,
                    what: "a safetensors shard listed in model.safetensors.index.json",
                });
            }
            // SAFETY: the mapping is read-only and the file is not modified while we run;
            // this is how every safetensors reader maps checkpoints.
            let st =
                unsafe { MmapedSafetensors::new(&path) }.map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for (tensor, _) in st.tensors() {
                routing.insert(tensor, files.len());
            }
            files.push((path, st));
        }
        Ok(Weights {
            files,
            routing,
            device: device.clone(),
        })
    }

    /// True when the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.routing.contains_key(name)
    }

    /// Loads `name`, checks its shape and converts it to `dtype`.
    pub fn get(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let &i = self
            .routing
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.into(),
                files: self.file_list(),
            })?;
        let (path, st) = &self.files[i];
        let bad = |e: candle_core::Error| ModelError::Safetensors {
            path: path.clone(),
            message: format!("tensor '{name}': {e}"),
        };
        let view = st.get(name).map_err(bad)?;
        let t = view.load(&self.device).map_err(bad)?;
        release_mapped_pages(view.data());
        if t.dims() != shape {
            return Err(ModelError::TensorShape {
                name: name.into(),
                path: path.clone(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        if t.dtype() == dtype {
            Ok(t)
        } else {
            t.to_dtype(dtype).map_err(bad)
        }
    }

    fn file_list(&self) -> String {
        self.files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Drops the process's mapping of a tensor's bytes once they have been copied out. The
/// file's pages stay in the page cache (the kernel's to reclaim) but no longer count in
/// the process's resident memory, so a load peaks at about the model's size rather than
/// twice it (the mapped file plus the copies: SmolLM2-135M's f32 load peaked at 1.08 GB
/// for 0.54 GB of weights). Only whole pages inside the range are dropped: the pages it
/// shares with its neighbours may still be read.
fn release_mapped_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return,
        };
        let start = bytes.as_ptr() as usize;
        let (lo, hi) = (
            start.next_multiple_of(page),
            (start + bytes.len()) / page * page,
        );
        if hi > lo {
            // SAFETY: [lo, hi) lies inside a read-only mapping of the file that outlives
            // this call. MADV_DONTNEED on a file mapping only drops the pages: a later read
            // faults them back in from the file, unchanged, so the borrowed slices into the
            // mapping stay valid. Failure only leaves the pages resident.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Released pages are read back from the file: a tensor loads the same any number of
    /// times, and so does its neighbour, which shares a page with it.
    #[test]
    fn a_tensor_loads_the_same_after_its_pages_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<f32> = (0..70_000).map(|i| (i as f32 * 0.37).sin()).collect();
        let small: Vec<f32> = (0..3).map(|i| i as f32 + 0.5).collect();
        let tensors = HashMap::from([
            (
                "a.weight".to_string(),
                Tensor::from_vec(big.clone(), (700, 100), &Device::Cpu).unwrap(),
            ),
            (
                "b.weight".to_string(),
                Tensor::from_vec(small.clone(), 3, &Device::Cpu).unwrap(),
            ),
        ]);
        candle_core::safetensors::save(&tensors, dir.path().join(SINGLE_FILE)).unwrap();
        let weights = Weights::open(dir.path(), &Device::Cpu).unwrap();
        for _ in 0..2 {
            let a = weights.get("a.weight", &[700, 100], DType::F32).unwrap();
            assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), big);
            let b = weights.get("b.weight", &[3], DType::F32).unwrap();
            assert_eq!(b.to_vec1::<f32>().unwrap(), small);
        }
        let err = weights
            .get("a.weight", &[100, 700], DType::F32)
            .unwrap_err();
        assert!(err.to_string().contains("a.weight"), "{err}");
    }
}

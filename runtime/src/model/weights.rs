//! The safetensors of a model folder: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Files are memory-mapped; a tensor is copied out (and
//! converted to the requested dtype) when a module asks for it by its checkpoint name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
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
        let t = st.load(name, &self.device).map_err(bad)?;
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

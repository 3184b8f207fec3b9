//! Merging LoRA adapters into the base weights (`W + scale * B A`, with DoRA
//! `(m / ||W + scale B A||)[:, None] * (W + scale B A)`; trained biases and `modules_to_save`
//! replacing the originals) and writing the result as a standard Hugging Face model folder.
//!
//! Several adapters merge in order, each onto the weights the previous ones left: a DoRA
//! adapter's norm is then taken of that merged weight. (PEFT, holding several DoRA adapters
//! in one model, takes each norm of the original base weight instead; with one adapter the
//! two agree.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::DType;
use serde_json::Value;

use super::ExportError;
use super::shards;
use crate::model::{CausalLm, Linear, Pretrained};
use crate::tuner::lora::{ADAPTER_CONFIG, LoraAdapters};

/// Merges the adapter in `dir` (a PEFT folder, ours or PEFT's) into `model` in place and
/// returns how many linear layers changed. The model afterwards has no adapter attached:
/// its plain forward is the adapted model's.
pub fn merge_adapter(model: &mut CausalLm, dir: &Path) -> Result<usize, ExportError> {
    if !dir.join(ADAPTER_CONFIG).is_file() {
        return Err(ExportError::MissingAdapter(dir.to_path_buf()));
    }
    let adapter_err = |source| ExportError::Adapter {
        dir: dir.to_path_buf(),
        source: Box::new(source),
    };
    let adapters = LoraAdapters::load(model, dir, false).map_err(adapter_err)?;
    let layers: HashMap<&str, _> = adapters
        .layers
        .iter()
        .map(|(p, l)| (p.as_str(), l))
        .collect();
    let mut merged = 0;
    for (path, linear) in linears(model) {
        let Some(layer) = layers.get(path.as_str()) else {
            continue;
        };
        let terr = |source| ExportError::Tensor {
            what: format!("{path} (adapter {})", dir.display()),
            source,
        };
        let w = linear.weight();
        let weight = layer
            .merged_weight(w)
            .and_then(|m| m.to_dtype(w.dtype()))
            .map_err(terr)?;
        let bias = match &layer.bias {
            Some(trained) => Some(trained.as_tensor().to_dtype(w.dtype()).map_err(terr)?),
            None => linear.bias().cloned(),
        };
        linear.set_weight(weight, bias);
        linear.set_adapter(None);
        merged += 1;
    }
    Ok(merged)
}

/// Every linear layer with its module path, `lm_head` included when it is not tied.
fn linears(model: &mut CausalLm) -> Vec<(String, &mut Linear)> {
    let mut out = model.model.linears_mut();
    if !model.config.tie_word_embeddings {
        out.push(("lm_head".into(), &mut model.lm_head));
    }
    out
}

/// Where and how to write a merged model.
#[derive(Debug, Clone)]
pub struct OutputFolder {
    pub dir: PathBuf,
    /// Overwrite (the weights of) an existing folder instead of refusing.
    pub exist_ok: bool,
    pub max_shard_size: u64,
}

impl OutputFolder {
    /// Refuses an existing folder unless `exist_ok`; in a reused folder, removes an
    /// earlier export's weight files (only those) so no stale shard outlives the new index.
    pub fn prepare(&self) -> Result<(), ExportError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e: std::io::Error| ExportError::Io {
                path,
                message: e.to_string(),
            }
        };
        if self.dir.exists() {
            if !self.exist_ok {
                return Err(ExportError::Exists(self.dir.clone()));
            }
            if !self.dir.is_dir() {
                return Err(ExportError::Io {
                    path: self.dir.clone(),
                    message: "exists and is not a folder".into(),
                });
            }
            for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
                let entry = entry.map_err(io(&self.dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if shards::is_export_weight_file(&name) && entry.path().is_file() {
                    std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
                }
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))
    }
}

/// Writes `pretrained` (merged) into `out`: sharded safetensors, config.json (with the
/// saved dtype), and every other file of the source folder (tokenizer files,
/// generation_config.json, chat template) except weights and args.json. Returns the weight
/// files written.
pub fn write_model_folder(
    pretrained: &mut Pretrained,
    out: &OutputFolder,
) -> Result<Vec<PathBuf>, ExportError> {
    out.prepare()?;
    let tensors = pretrained.model.named_parameters();
    let files = shards::write(&tensors, &out.dir, out.max_shard_size)?;
    copy_side_files(&pretrained.folder, &out.dir)?;
    write_config(
        &pretrained.folder.join("config.json"),
        &out.dir.join("config.json"),
        pretrained.model.dtype(),
    )?;
    Ok(files)
}

fn copy_side_files(from: &Path, to: &Path) -> Result<(), ExportError> {
    let io = |path: &Path, e: std::io::Error| ExportError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    for entry in std::fs::read_dir(from).map_err(|e| io(from, e))? {
        let entry = entry.map_err(|e| io(from, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !path.is_file()
            || shards::is_weight_file(&name)
            || name == "config.json"
            || name == kubeswift_args::args_json::FILE_NAME
        {
            continue;
        }
        std::fs::copy(&path, to.join(&name)).map_err(|e| io(&path, e))?;
    }
    Ok(())
}

/// The source config.json with its dtype field set to what was saved.
fn write_config(from: &Path, to: &Path, dtype: DType) -> Result<(), ExportError> {
    let err = |path: &Path, message: String| ExportError::Io {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(from).map_err(|e| err(from, e.to_string()))?;
    let mut config: Value = serde_json::from_str(&text).map_err(|e| err(from, e.to_string()))?;
    let name = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    if let Some(obj) = config.as_object_mut() {
        // transformers 5 writes `dtype`, earlier versions `torch_dtype`; keep the file's.
        let key = if obj.contains_key("dtype") {
            "dtype"
        } else {
            "torch_dtype"
        };
        obj.insert(key.into(), Value::from(name));
    }
    let text = serde_json::to_string_pretty(&config).map_err(|e| err(to, e.to_string()))?;
    std::fs::write(to, text + "\n").map_err(|e| err(to, e.to_string()))
}

//! Writing a model's tensors as Hugging Face does: `model.safetensors` when everything fits
//! in one `--max_shard_size` file, else `model-00001-of-0000N.safetensors` shards plus
//! `model.safetensors.index.json` (`metadata.total_size`, `weight_map` name -> file).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::json;

use super::ExportError;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// `--max_shard_size` in bytes, as transformers reads it: an integer with `GB`/`MB`/`KB`
/// (powers of 10) or `GiB`/`MiB`/`KiB` (powers of 2), or a plain number of bytes. A
/// lower-case final `b` means bits, as in transformers.
pub fn parse_size(value: &str) -> Result<u64, ExportError> {
    let bad = |reason: &str| ExportError::ShardSize {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let v = value.trim();
    let upper = v.to_ascii_uppercase();
    let units: [(&str, u64); 6] = [
        ("GIB", 1 << 30),
        ("MIB", 1 << 20),
        ("KIB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
    ];
    let (digits, unit, bits) = match units.iter().find(|(u, _)| upper.ends_with(u)) {
        Some((u, m)) => (
            &v[..v.len() - u.len()],
            *m,
            !u.contains('I') && v.ends_with('b'),
        ),
        None => (v, 1, false),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| bad("expected an integer and a unit, e.g. 5GB, 500MB or 2GiB"))?;
    let bytes = n.checked_mul(unit).ok_or_else(|| bad("too large"))?;
    let bytes = if bits { bytes / 8 } else { bytes };
    if bytes == 0 {
        return Err(bad("must be more than 0 bytes"));
    }
    Ok(bytes)
}

/// Splits tensors (by byte size, in order) into shards of at most `max` bytes; a tensor
/// larger than `max` gets a shard of its own. Returns the indices of each shard.
pub fn plan(sizes: &[u64], max: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        match shards.last_mut() {
            Some(shard) if current + size <= max => {
                shard.push(i);
                current += size;
            }
            _ => {
                shards.push(vec![i]);
                current = size;
            }
        }
    }
    shards
}

/// File name of shard `i` (0-based) of `n`.
pub fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        SINGLE_FILE.to_string()
    } else {
        format!("model-{:05}-of-{n:05}.safetensors", i + 1)
    }
}

fn io_err(path: &Path) -> impl FnOnce(String) -> ExportError + '_ {
    move |message| ExportError::Io {
        path: path.to_path_buf(),
        message,
    }
}

/// Writes `tensors` into `dir` (which exists) and returns the files written.
pub fn write(
    tensors: &[(String, Tensor)],
    dir: &Path,
    max_shard_size: u64,
) -> Result<Vec<PathBuf>, ExportError> {
    let sizes: Vec<u64> = tensors
        .iter()
        .map(|(_, t)| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .collect();
    let shards = plan(&sizes, max_shard_size);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut files = Vec::with_capacity(shards.len());
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = shard_name(i, shards.len());
        let path = dir.join(&name);
        let data: Vec<(&str, &Tensor)> = shard
            .iter()
            .map(|&t| (tensors[t].0.as_str(), &tensors[t].1))
            .collect();
        for (tensor, _) in &data {
            weight_map.insert(tensor.to_string(), name.clone());
        }
        safetensors::serialize_to_file(data, Some(metadata.clone()), &path)
            .map_err(|e| io_err(&path)(e.to_string()))?;
        crate::storage::weights_file::set_created_mode(&path)
            .map_err(|e| io_err(&path)(e.to_string()))?;
        files.push(path);
    }
    if shards.len() > 1 {
        let path = dir.join(INDEX_FILE);
        let index = json!({
            "metadata": {"total_size": sizes.iter().sum::<u64>()},
            "weight_map": weight_map,
        });
        let text =
            serde_json::to_string_pretty(&index).map_err(|e| io_err(&path)(e.to_string()))?;
        std::fs::write(&path, text + "\n").map_err(|e| io_err(&path)(e.to_string()))?;
        files.push(path);
    }
    Ok(files)
}

/// True for the names an export writes its weights under ([`shard_name`], [`INDEX_FILE`]):
/// the files of an earlier export that a reused output folder clears, so no stale shard
/// outlives the new index. Any other file there (an adapter, an optimizer state, the
/// user's own) is left alone.
pub fn is_export_weight_file(name: &str) -> bool {
    if name == SINGLE_FILE || name == INDEX_FILE {
        return true;
    }
    let Some(numbers) = name
        .strip_prefix("model-")
        .and_then(|n| n.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let Some((index, count)) = numbers.split_once("-of-") else {
        return false;
    };
    [index, count]
        .iter()
        .all(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// True for the file names of model weights (ours or another framework's), which an
/// export never copies from the source folder.
pub fn is_weight_file(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name.ends_with(".safetensors.index.json")
        || name.ends_with(".bin")
        || name.ends_with(".bin.index.json")
        || name.ends_with(".pt")
        || name.ends_with(".pth")
        || name.ends_with(".gguf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_transformers_reads_them() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("10kb").unwrap(), 1250);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        for bad in ["", "GB", "1.5GB", "-1GB", "0", "5 parsecs"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_fill_in_order_and_big_tensors_stand_alone() {
        assert_eq!(plan(&[3, 3, 3], 10), vec![vec![0, 1, 2]]);
        assert_eq!(plan(&[4, 4, 4], 10), vec![vec![0, 1], vec![2]]);
        assert_eq!(plan(&[2, 20, 2, 2], 10), vec![vec![0], vec![1], vec![2, 3]]);
        assert_eq!(shard_name(0, 1), "model.safetensors");
        assert_eq!(shard_name(1, 12), "model-00002-of-00012.safetensors");
    }

    #[test]
    fn only_an_exports_own_weight_files_are_cleared() {
        for ours in [
            "model.safetensors",
            "model.safetensors.index.json",
            "model-00001-of-00009.safetensors",
            &shard_name(11, 12),
        ] {
            assert!(is_export_weight_file(ours), "{ours}");
        }
        for theirs in [
            "adapter_model.safetensors",
            "optimizer.safetensors",
            "mydata.safetensors",
            "model-1-of-2.safetensors",
            "model-00001-of-00002.bin",
            "pytorch_model.bin",
            "notes.txt",
        ] {
            assert!(!is_export_weight_file(theirs), "{theirs}");
        }
    }
}

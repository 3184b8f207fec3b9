//! Training inputs given as URIs made local: `--model s3://b/models/qwen` and `--adapters`
//! become folders in the model cache, `--dataset s3://b/data/train.jsonl#1000` a cached
//! file that keeps its `#N` sampling suffix. Local paths pass through untouched, so the
//! data pipeline and the model loader only ever see local paths.

use crate::storage::cache::Cache;
use crate::storage::error::Result;
use crate::storage::location::is_remote_uri;

/// Splits a `--dataset` entry into the part that names the data and its `#N` sampling
/// suffix (with the `#`). Only a `#` followed by digits is a suffix, as `DatasetSpec`
/// reads it; anything else stays part of the name.
pub fn split_sample_suffix(spec: &str) -> (&str, &str) {
    match spec.rsplit_once('#') {
        Some((name, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (name, &spec[name.len()..])
        }
        _ => (spec, ""),
    }
}

/// A `--dataset`/`--val_dataset` entry with a remote file or folder replaced by its
/// cached copy (`s3://b/x.jsonl#5` -> `/cache/.../x.jsonl#5`); local entries unchanged.
pub async fn localize_dataset_spec(spec: &str, cache: &Cache) -> Result<String> {
    let (name, suffix) = split_sample_suffix(spec);
    if !is_remote_uri(name) {
        return Ok(spec.to_string());
    }
    let local = cache.materialize(name).await?;
    Ok(format!("{}{suffix}", local.display()))
}

/// A model, adapter or checkpoint folder: remote ones are downloaded into the cache
/// (checked against their manifest when they have one), local ones pass through.
pub async fn localize_folder(uri: &str, cache: &Cache) -> Result<String> {
    if !is_remote_uri(uri) {
        return Ok(uri.to_string());
    }
    Ok(cache.materialize(uri).await?.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_numeric_hash_suffix_is_split_off() {
        assert_eq!(
            split_sample_suffix("s3://b/d/train.jsonl#1000"),
            ("s3://b/d/train.jsonl", "#1000")
        );
        assert_eq!(
            split_sample_suffix("s3://b/d/x.jsonl"),
            ("s3://b/d/x.jsonl", "")
        );
        assert_eq!(
            split_sample_suffix("s3://b/d#x/y.jsonl"),
            ("s3://b/d#x/y.jsonl", "")
        );
        assert_eq!(split_sample_suffix("a.jsonl#"), ("a.jsonl#", ""));
        assert_eq!(split_sample_suffix("a.jsonl#0"), ("a.jsonl", "#0"));
    }

    #[tokio::test]
    async fn local_inputs_pass_through_untouched() {
        let cache = Cache::new(tempfile::tempdir().unwrap().path());
        assert_eq!(
            localize_dataset_spec("data/x.jsonl:sub#3", &cache)
                .await
                .unwrap(),
            "data/x.jsonl:sub#3"
        );
        assert_eq!(
            localize_folder("./models/qwen", &cache).await.unwrap(),
            "./models/qwen"
        );
    }
}

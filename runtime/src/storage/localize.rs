//! Training inputs given as URIs made local: `--model s3://b/models/qwen` and `--adapters`
//! become folders in the model cache, `--dataset s3://b/data/train.jsonl#1000` a cached
//! file that keeps its `#N` sampling suffix. Local paths pass through untouched, so the
//! data pipeline and the model loader only ever see local paths, with one exception: a
//! bucket `.jsonl` `--dataset` of `swift sft/pt --streaming true` stays a URI and is
//! streamed with ranged reads (`storage::remote_bytes`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use kubeswift_args::Args;
use object_store::{ObjectStoreExt, PutPayload};

use crate::storage::cache::Cache;
use crate::storage::client::Remote;
use crate::storage::dataset::is_jsonl;
use crate::storage::error::{Result, StorageError};
use crate::storage::location::{Location, is_remote_uri};

/// `--adapters` entries may be `name=path` (named adapters for `swift deploy`); the path
/// part is what gets localized.
pub fn split_adapter_name(entry: &str) -> (Option<&str>, &str) {
    match entry.split_once('=') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') && !name.contains(':') => {
            (Some(name), path)
        }
        _ => (None, entry),
    }
}

/// `--model`, `--adapters` (also `name=uri`), `--dataset` and `--val_dataset` given as URIs,
/// replaced by their copies in the local cache (`$MODELSCOPE_CACHE`), so every engine reads
/// local paths only. The arguments as the user gave them are what `args.json` records.
/// `io` drives the downloads (its clients are dropped before this returns).
pub fn localize_args(args: &Args, io: &tokio::runtime::Runtime) -> anyhow::Result<Args> {
    if !has_remote_inputs(args) {
        return Ok(args.clone());
    }
    let cache = Cache::from_env();
    let mut local = args.clone();
    io.block_on(async {
        if let Some(model) = args.str("model") {
            let path = localize_folder(model, &cache)
                .await
                .with_context(|| format!("--model {model}"))?;
            local.set_resolved("model", path.into());
        }
        let mut adapters = Vec::new();
        for entry in args.strings("adapters") {
            let (name, path) = split_adapter_name(&entry);
            let path = localize_adapter(path, &cache)
                .await
                .with_context(|| format!("--adapters {entry}"))?;
            adapters.push(match name {
                Some(n) => format!("{n}={path}"),
                None => path,
            });
        }
        if !adapters.is_empty() {
            local.set_resolved("adapters", adapters.into());
        }
        // `swift sft/pt --streaming true` reads a bucket `.jsonl` training file with ranged
        // GETs as it trains (data::load, storage::remote_bytes): no download.
        let streams = args.command().is_training()
            && args.lookup("streaming").and_then(|v| v.as_bool()) == Some(true);
        for name in ["dataset", "val_dataset"] {
            let mut out = Vec::new();
            for entry in args.strings(name) {
                if streams && name == "dataset" && is_jsonl(split_sample_suffix(&entry).0) {
                    out.push(entry);
                    continue;
                }
                let path = localize_dataset_spec(&entry, &cache).await;
                out.push(path.with_context(|| format!("--{name} {entry}"))?);
            }
            if !out.is_empty() {
                local.set_resolved(name, out.into());
            }
        }
        anyhow::Ok(())
    })?;
    Ok(local)
}

/// [`localize_args`] for engines that need no async runtime afterwards (infer, deploy,
/// export): a one-worker runtime is started only when some input is remote.
pub fn localize_args_blocking(args: &Args) -> anyhow::Result<Args> {
    if !has_remote_inputs(args) {
        return Ok(args.clone());
    }
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    localize_args(args, &io)
}

/// Whether `--model`, `--adapters` (`name=uri` too) or a dataset names a bucket.
fn has_remote_inputs(args: &Args) -> bool {
    args.str("model").is_some_and(is_remote_uri)
        || args
            .strings("adapters")
            .iter()
            .any(|s| is_remote_uri(split_adapter_name(s).1))
        || ["dataset", "val_dataset"]
            .into_iter()
            .flat_map(|n| args.strings(n))
            .any(|s| is_remote_uri(split_sample_suffix(&s).0))
}

/// Where a result file for `uri` is written before upload: the file itself when local, a
/// staging path in the cache when remote.
pub fn staging_path(uri: &str, cache: &Cache) -> Result<PathBuf> {
    Ok(match Location::parse(uri)? {
        Location::Local(path) => path,
        Location::Remote(remote) => cache
            .root()
            .join("results")
            .join(cache_rel(&remote.to_string())),
    })
}

fn cache_rel(uri: &str) -> String {
    uri.replace("://", "/")
}

/// Uploads a finished local file to `uri` (one PUT: result files are small). A no-op for
/// local URIs, which were written in place.
pub async fn publish_file(local: &Path, uri: &str) -> Result<()> {
    let Location::Remote(loc) = Location::parse(uri)? else {
        return Ok(());
    };
    let bytes = tokio::fs::read(local)
        .await
        .map_err(|e| StorageError::io("read", local, e))?;
    let remote = Remote::open(&loc)?;
    remote
        .store
        .put(&loc.object_path(), PutPayload::from(bytes))
        .await
        .map_err(|e| StorageError::remote("upload", &loc, e))?;
    Ok(())
}

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

/// An adapter in a bucket: a checkpoint folder, or a training job's output (what a
/// SwiftTrainJob's `storage.output` names), whose newest complete checkpoint is taken, found
/// as `--resume_from_checkpoint` finds it. A folder with no checkpoint manifest at or under
/// it (an adapter uploaded by hand) is used as it is.
pub async fn localize_adapter(uri: &str, cache: &Cache) -> Result<String> {
    if !is_remote_uri(uri) {
        return Ok(uri.to_string());
    }
    let target = match crate::storage::resume::resolve_resume(uri).await? {
        Some(point) => point.location.to_string(),
        None => uri.to_string(),
    };
    if target != uri {
        tracing::info!(adapter = %uri, checkpoint = %target, "the adapter is the output's newest checkpoint");
    }
    localize_folder(&target, cache).await
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

    #[test]
    fn adapter_names_are_split_only_from_a_plain_name() {
        assert_eq!(split_adapter_name("a=s3://b/x"), (Some("a"), "s3://b/x"));
        assert_eq!(split_adapter_name("s3://b/x=y"), (None, "s3://b/x=y"));
        assert_eq!(split_adapter_name("out/ckpt-5"), (None, "out/ckpt-5"));
        assert_eq!(split_adapter_name("=x"), (None, "=x"));
    }

    #[test]
    fn remote_results_are_staged_under_the_cache() {
        let cache = Cache::new("/c");
        assert_eq!(
            staging_path("s3://b/r/out.jsonl", &cache).unwrap(),
            PathBuf::from("/c/results/s3/b/r/out.jsonl")
        );
        assert_eq!(
            staging_path("res/out.jsonl", &cache).unwrap(),
            PathBuf::from("res/out.jsonl")
        );
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

//! `swift export --merge_lora true --adapters <checkpoint>`: loads the base model named by
//! `--model` (or by the checkpoint's args.json, through load_args), merges every adapter in
//! order, and writes the model folder to `--output_dir` (default `<checkpoint>-merged`)
//! with the export's args.json.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kubeswift_args::Args;

use super::merge::{OutputFolder, merge_adapter, write_model_folder};
use super::shards::parse_size;
use crate::model::pretrained::dtype_arg;
use crate::model::{LoadOptions, Pretrained, PretrainedOptions};
use crate::storage::localize::localize_args_blocking;
use crate::storage::location::is_remote_uri;

/// Runs `swift export` with resolved arguments.
pub fn run(user_args: &Args) -> anyhow::Result<()> {
    if let Some(out) = user_args.str("output_dir").filter(|o| is_remote_uri(o)) {
        bail!(
            "--output_dir {out}: swift export writes a local folder; give a local --output_dir \
             (a bucket output is not supported yet)"
        );
    }
    // The base model and adapters may live in a bucket: merged from the local cache.
    let local_args = localize_args_blocking(user_args)?;
    let args = &local_args;
    if !args.bool("merge_lora") {
        return Err(crate::commands::NotBuilt(
            "swift export: only --merge_lora true is built yet (quantization, ollama and hub \
             pushes are not)"
                .into(),
        )
        .into());
    }
    let adapters: Vec<PathBuf> = args.strings("adapters").iter().map(PathBuf::from).collect();
    if adapters.is_empty() {
        bail!("--merge_lora true needs --adapters <checkpoint folder> to merge");
    }
    let Some(model) = args.str("model") else {
        bail!(
            "--model is required: the base model folder (or an adapter checkpoint whose \
             args.json names it)"
        );
    };
    let Some(output_dir) = args.str("output_dir") else {
        bail!("--output_dir is required");
    };
    let out = OutputFolder {
        dir: PathBuf::from(output_dir),
        exist_ok: args.bool("exist_ok"),
        max_shard_size: parse_size(args.str("max_shard_size").unwrap_or("5GB"))?,
    };
    // Fail before the (slow) load when the folder is taken.
    if out.dir.exists() && !out.exist_ok {
        return Err(super::ExportError::Exists(out.dir.clone()).into());
    }
    // Even with --exist_ok: the inputs are read while the output is written, and the side
    // files are copied from the model folder (onto themselves, truncating them).
    let inputs = std::iter::once(("--model", Path::new(model)))
        .chain(adapters.iter().map(|a| ("--adapters", a.as_path())));
    for (argument, input) in inputs {
        if same_folder(&out.dir, input) {
            return Err(super::ExportError::OutputIsInput {
                output: out.dir.clone(),
                argument,
            }
            .into());
        }
    }
    // The checkpoint's own dtype unless --torch_dtype says otherwise: an export keeps it.
    let opts = PretrainedOptions {
        model_type: args.str("model_type").map(String::from),
        load: LoadOptions {
            dtype: dtype_arg(args.str("torch_dtype"))?,
            ..LoadOptions::default()
        },
    };
    let mut pretrained =
        Pretrained::load(Path::new(model), &opts).with_context(|| format!("--model {model}"))?;
    for dir in &adapters {
        let layers = merge_adapter(&mut pretrained.model, dir)?;
        tracing::info!(adapter = %dir.display(), layers, "LoRA merged");
    }
    let files = write_model_folder(&mut pretrained, &out)?;
    // The detected model_type goes into args.json, so `--model <merged>` finds it through
    // load_args even when the folder name no longer says which model it is.
    let mut saved = args.clone();
    saved.set_resolved(
        "model_type",
        serde_json::Value::from(pretrained.model_type.name),
    );
    kubeswift_args::args_json::write(&saved, &out.dir)?;
    tracing::info!(output_dir = %out.dir.display(), weight_files = files.len(), "merged model written");
    println!("{}", out.dir.display());
    Ok(())
}

/// Whether two paths name one existing folder (through symlinks, `.` and `..`).
fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

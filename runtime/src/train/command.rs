//! `swift sft` and `swift pt`: load the model, apply the tuner, prepare the data, open the
//! run folder and train. A thin shell; decisions live in `config`, `tuning`, `trainer`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use candle_core::DType;
use kubeswift_args::Args;

use crate::data::{Collator, DataOptions, Shard, prepare, write_val_dataset};
use crate::dist::DataParallel;
use crate::model::pretrained::dtype_arg;
use crate::model::{LoadOptions, Pretrained, PretrainedOptions};
use crate::progress::ProgressReporter;
use crate::storage::Cache;
use crate::storage::checkpoint::UploadOptions;
use crate::storage::error::StorageError;
use crate::storage::localize::localize_args;
use crate::storage::output::RunOutput;
use crate::storage::resume::{
    fetch_resume_point, is_output_root, resolve_resume, why_nothing_to_resume,
};
use crate::template::Template;
use crate::train::config::TrainConfig;
use crate::train::streamed::StreamedBatches;
use crate::train::trainer::{TrainSummary, Trainer, TrainerParts};
use crate::train::tuning::Tuning;

/// Runs `swift sft` / `swift pt` with resolved arguments.
pub fn run(args: &Args) -> anyhow::Result<TrainSummary> {
    // Under the operator, rank 0 serves /progress and leaves a final report on exit,
    // whether training succeeds or fails (operator/PROGRESS.md).
    let reporter = Arc::new(ProgressReporter::from_env()?);
    let trained = train(args, &reporter);
    reporter.finish_with(trained.as_ref().err());
    trained
}

fn train(user_args: &Args, reporter: &Arc<ProgressReporter>) -> anyhow::Result<TrainSummary> {
    // One background worker that outlives the trainer: the bucket clients made here keep
    // pooled connections whose tasks live on this runtime, and the trainer reuses them
    // from its own runtime; a runtime nobody drives would leave those requests hanging.
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    // Everything below reads local paths; args.json keeps what the user gave.
    let local_args = localize_args(user_args, &io)?;
    let args = &local_args;
    let Some(model_path) = args.str("model") else {
        bail!(
            "--model is required: a local model folder (config.json, safetensors, tokenizer.json)"
        );
    };
    let config = TrainConfig::from_args(args)?;
    // A launched worker meets the other ranks first, so a wrong address fails fast.
    let dist = DataParallel::from_args(args)?;
    // Before anything is loaded or written: a wrong path fails in seconds and leaves no
    // empty run folder behind.
    let resume = resume_point(args, &io, &dist)?;
    let model_dir = Path::new(model_path);
    // f32 unless --torch_dtype says otherwise: ms-swift's choice on CPU.
    let dtype = dtype_arg(args.str("torch_dtype"))?.unwrap_or(DType::F32);
    let opts = PretrainedOptions {
        model_type: args.str("model_type").map(String::from),
        load: LoadOptions {
            dtype: Some(dtype),
            trainable: false,
            // The GPU of this worker in the `cuda` build, when it has one (device.rs).
            device: crate::device::compute_device()?,
            // Training streams weights through the GEMM's packing, not once a token.
            huge_pages: false,
        },
    };
    let mut pretrained = Pretrained::load(model_dir, &opts)?;
    let template = Template::from_args(
        args,
        pretrained.model_type.name,
        pretrained.tokenizer.clone(),
        &pretrained.tokenizer_config,
    )?;
    let data_opts =
        DataOptions::from_args(args, Some(pretrained.model.config.max_position_embeddings))?;
    let collator = Collator {
        pad_token_id: template.pad_token_id(),
        padding_side: data_opts.padding_side,
    };
    let template = Arc::new(template);
    // With --streaming only --val_dataset is loaded here; the training rows are read
    // lazily, each rank its own shard (train/streamed.rs).
    let prepared = prepare(&data_opts, template.clone())?;
    let stream = if config.streaming {
        let shard = Shard {
            rank: dist.rank() as u64,
            world: dist.world_size() as u64,
        };
        Some(StreamedBatches::open(
            data_opts.clone(),
            template,
            shard,
            config.batch_size,
            config.drop_last,
        )?)
    } else {
        None
    };
    if stream.is_none() && prepared.train.is_empty() {
        bail!("--dataset: no training rows (give --dataset, and check that its rows encode)");
    }
    let tuning = Tuning::from_args(args, &mut pretrained.model, model_path)?;

    // Only rank 0 creates the run folder; the others write into a private scratch one.
    let output = if dist.is_main() {
        open_run(args, &io)?
    } else {
        scratch_run(dist.rank())?
    };
    let scratch = (!dist.is_main()).then(|| output.local.clone());
    // args.json names the detected model_type, so `swift infer --adapters CKPT` (load_args)
    // knows the template without the model folder's name.
    let mut resolved = user_args.clone();
    if args.str("model_type").is_none() {
        resolved.set_resolved("model_type", pretrained.model_type.name.into());
    }
    let args_json = kubeswift_args::args_json::write(&resolved, &output.local)
        .with_context(|| format!("writing args.json into {}", output.local.display()))?;
    write_val_dataset(&prepared.loaded, &output.local)?;
    tracing::info!(
        run = %output.local.display(),
        train_rows = prepared.train.len(),
        val_rows = prepared.val.len(),
        "output"
    );

    let parts = TrainerParts {
        model: &pretrained.model,
        model_dir,
        tuning: &tuning,
        train: &prepared.train,
        stream,
        val: &prepared.val,
        collator,
        output,
        args_json: args_json.clone(),
    };
    let worker = dist.world_size() > 1;
    let mut trainer = Trainer::data_parallel(parts, config, dist)?.with_reporter(reporter.clone());
    if let Some(dir) = resume {
        trainer.resume(&dir, args.bool("resume_only_model"))?;
    }
    // From here a SIGTERM (eviction, preemption, the launcher) or Ctrl-C saves a checkpoint
    // after the step under way instead of losing the work since the last one.
    crate::train::interrupt::install(worker).context("installing the SIGTERM/SIGINT handlers")?;
    let summary = trainer.train();
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    let summary = summary?;
    // As ms-swift logs it; None after `--save_strategy no`.
    let last = summary.last_checkpoint_uri.as_deref().unwrap_or("None");
    tracing::info!(last_model_checkpoint = %last, best_model_checkpoint = ?summary.best_checkpoint, "done");
    crate::commands::eprint_line(&format!("last_model_checkpoint: {last}"));
    Ok(summary)
}

/// `output_dir/vN-YYYYMMDD-HHMMSS` (or `output_dir` itself with `--add_version false`).
fn open_run(args: &Args, io: &tokio::runtime::Runtime) -> anyhow::Result<RunOutput> {
    let output_dir = args.str("output_dir").unwrap_or("output");
    let timestamp = chrono::Local::now().format("%Y%m%d-%H%M%S").to_string();
    if args.opt_bool("add_version") == Some(false) && !output_dir.contains("://") {
        let local = PathBuf::from(output_dir);
        std::fs::create_dir_all(&local).with_context(|| format!("creating {output_dir}"))?;
        return Ok(RunOutput {
            local,
            remote: None,
            upload: UploadOptions::default(),
        });
    }
    let staging = std::env::temp_dir().join("kubeswift-staging");
    Ok(io.block_on(RunOutput::create(output_dir, &staging, &timestamp))?)
}

/// A non-zero rank's run folder: nothing there is published.
fn scratch_run(rank: usize) -> anyhow::Result<RunOutput> {
    let local = std::env::temp_dir().join(format!("kubeswift-rank{rank}-{}", std::process::id()));
    std::fs::create_dir_all(&local).with_context(|| format!("creating {}", local.display()))?;
    Ok(RunOutput {
        local,
        remote: None,
        upload: UploadOptions::default(),
    })
}

/// `--resume_from_checkpoint`: a checkpoint folder, a run folder or an output root, local
/// or in a bucket (the newest complete checkpoint wins; remote ones count only with a
/// valid manifest and are downloaded into the cache). Nothing there: start fresh when it is
/// the run's own `--output_dir` (a job's first start), else an error (a wrong path).
fn resume_point(
    args: &Args,
    io: &tokio::runtime::Runtime,
    dist: &DataParallel,
) -> anyhow::Result<Option<PathBuf>> {
    let Some(arg) = args.str("resume_from_checkpoint") else {
        return Ok(None);
    };
    let context = || format!("--resume_from_checkpoint {arg}");
    let Some(point) = io.block_on(resolve_resume(arg)).with_context(context)? else {
        let output_dir = args.str("output_dir").unwrap_or("output");
        if !is_output_root(arg, output_dir) {
            return Err(StorageError::NothingToResume {
                location: arg.to_string(),
                reason: why_nothing_to_resume(arg),
                output_dir: output_dir.to_string(),
            })
            .with_context(context);
        }
        tracing::info!(
            resume_from_checkpoint = arg,
            "no complete checkpoint to resume from: starting fresh"
        );
        return Ok(None);
    };
    let dir = io
        .block_on(fetch_resume_point(&point, &Cache::from_env()))
        .with_context(context)?;
    // The run being continued is over: what its killed saves left is only in the way
    // (a full fine-tune's half-written folder holds the model's size on disk).
    if let (crate::storage::location::Location::Local(ck), true) = (&point.location, dist.is_main())
        && let Some(run_dir) = ck.parent()
    {
        let removed = crate::storage::checkpoint::remove_stale_temporaries(run_dir);
        if removed > 0 {
            tracing::info!(run = %run_dir.display(), removed, "removed the temporary folders of saves that were killed");
        }
    }
    tracing::info!(checkpoint = %point.location, step = ?point.step, "resuming");
    Ok(Some(dir))
}

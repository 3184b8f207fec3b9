//! The training loop: batches -> forward/backward -> gradient accumulation -> clipping ->
//! AdamW with the schedule; logging, evaluation and checkpoints at their intervals; exact
//! resume from our checkpoint state. Batches come from the in-memory dataset (a shuffled
//! order per epoch) or, with `--streaming true`, from this rank's stream (`streamed`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::{Map, Value, json};

use crate::data::{Collator, TrainData, TrainRow, epoch_batches};
use crate::dist::DataParallel;
use crate::model::CausalLm;
use crate::progress::{ProgressReport, ProgressReporter};
use crate::storage::checkpoint::LocalCheckpoint;
use crate::storage::output::RunOutput;
use crate::train::config::{Strategy, TrainConfig};
use crate::train::interrupt;
use crate::train::neftune::EmbedNoise;
use crate::train::optimizer::AdamW;
use crate::train::progress::{ProgressDisplay, StepReport};
use crate::train::report::{Progress, TrainerState, eval_line, train_line};
use crate::train::schedule::{Schedule, warmup_steps};
use crate::train::state::{RunState, load_optimizer, save_optimizer};
use crate::train::step::{LossStats, MicroBatch, evaluate, forward_backward};
use crate::train::streamed::StreamedBatches;
use crate::train::tensorboard::{EventWriter, tag_for};
use crate::train::tuning::Tuning;

/// Bytes of packed frozen weights kept through a run: a 0.5B model's linear layers in bf16.
/// Larger models keep what fits (the last layers, which the backward reaches first) and
/// pack the rest per product.
const PACKED_WEIGHTS_BUDGET: usize = 1 << 30;

/// What a run needs besides its configuration.
pub struct TrainerParts<'a> {
    pub model: &'a CausalLm,
    pub model_dir: &'a Path,
    pub tuning: &'a Tuning,
    /// The in-memory training rows (empty with `stream`).
    pub train: &'a TrainData,
    /// `--streaming true`: this rank's stream of micro-batches, used instead of `train`.
    pub stream: Option<StreamedBatches>,
    pub val: &'a TrainData,
    pub collator: Collator,
    pub output: RunOutput,
    /// The run's args.json, copied into every checkpoint.
    pub args_json: PathBuf,
}

/// The outcome of a finished run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub global_step: u64,
    pub last_checkpoint: Option<PathBuf>,
    /// Where the last checkpoint is published: its URI for a bucket `--output_dir`.
    pub last_checkpoint_uri: Option<String>,
    pub best_checkpoint: Option<String>,
    pub log_history: Vec<Map<String, Value>>,
}

pub struct Trainer<'a> {
    parts: TrainerParts<'a>,
    config: TrainConfig,
    optimizer: AdamW,
    schedule: Schedule,
    state: RunState,
    trainer_state: TrainerState,
    /// `None` when streaming: a stream has no length.
    batches_per_epoch: Option<usize>,
    /// `--streaming true`: where micro-batches come from.
    stream: Option<StreamedBatches>,
    runtime: tokio::runtime::Runtime,
    tensorboard: Option<EventWriter>,
    started: Instant,
    /// Losses of the steps since the last log line.
    window: LossStats,
    last_checkpoint: Option<PathBuf>,
    /// The last checkpoint as users see it (a URI when the output is in a bucket).
    last_checkpoint_uri: Option<String>,
    /// `/progress` and the termination message for the operator (a no-op off-cluster).
    reporter: Arc<ProgressReporter>,
    /// The other ranks (dist/): batch shares, gradient sums, who writes files.
    dist: DataParallel,
}

/// A stable mix of a seed and a counter (splitmix64), for dropout seeds.
fn mix(seed: u64, counter: u64) -> u64 {
    let mut z = seed ^ counter.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Resident memory of this process in GiB (ms-swift reports device memory; on CPU this
/// is the honest equivalent).
fn memory_gib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / (1024.0 * 1024.0))
}

impl<'a> Trainer<'a> {
    pub fn new(parts: TrainerParts<'a>, config: TrainConfig) -> anyhow::Result<Self> {
        Self::data_parallel(parts, config, DataParallel::single())
    }

    /// A trainer that is one rank of a data-parallel job: batches are global
    /// (`per_device_train_batch_size` × world size rows) and each rank trains its share.
    pub fn data_parallel(
        mut parts: TrainerParts<'a>,
        config: TrainConfig,
        mut dist: DataParallel,
    ) -> anyhow::Result<Self> {
        let stream = parts.stream.take();
        let batches_per_epoch = match &stream {
            Some(_) => None,
            None => Some(
                epoch_batches(
                    parts.train.len(),
                    config.batch_size * dist.world_size(),
                    config.data_seed,
                    0,
                    true,
                    config.drop_last,
                )
                .len(),
            ),
        };
        if batches_per_epoch == Some(0) {
            anyhow::bail!(
                "the training set has {} rows, fewer than one batch of --per_device_train_batch_size {} with --dataloader_drop_last",
                parts.train.len(),
                config.batch_size
            );
        }
        if stream.is_some() && config.max_steps.is_none() {
            anyhow::bail!(
                "--streaming true needs --max_steps > 0: a streamed dataset has no length"
            );
        }
        // With a stream `max_steps` is set (checked above), so the count is not used.
        let total = config.total_steps(batches_per_epoch.unwrap_or(0));
        let schedule = Schedule {
            kind: config.schedule,
            base_lr: config.learning_rate,
            warmup_steps: warmup_steps(config.warmup_steps, config.warmup_ratio, total),
            total_steps: total,
        };
        let mut optimizer = AdamW::new(parts.tuning.trainables(), config.adamw)?;
        dist.broadcast_weights(&mut optimizer)?;
        let tensorboard = if config.tensorboard && dist.is_main() {
            Some(
                EventWriter::create(&parts.output.local.join("runs"))
                    .context("TensorBoard event file")?,
            )
        } else {
            None
        };
        let trainer_state = TrainerState {
            best_metric: None,
            best_model_checkpoint: None,
            epoch: 0.0,
            eval_steps: json!(config.eval_steps.steps(total)),
            global_step: 0,
            is_hyper_param_search: false,
            is_local_process_zero: dist.is_main(),
            is_world_process_zero: dist.is_main(),
            log_history: Vec::new(),
            logging_steps: json!(config.logging_steps.steps(total)),
            max_steps: total,
            num_input_tokens_seen: 0,
            num_train_epochs: config.num_train_epochs,
            save_steps: json!(config.save_steps.steps(total)),
            total_flos: 0.0,
            train_batch_size: config.batch_size as u64,
            trial_name: None,
            trial_params: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the I/O runtime")?;
        let state = RunState {
            seed: config.seed,
            data_seed: config.data_seed,
            ..RunState::default()
        };
        tracing::info!(
            trainable_parameters = optimizer.numel(),
            batches_per_epoch = ?batches_per_epoch,
            streaming = stream.is_some(),
            max_steps = total,
            "training"
        );
        Ok(Trainer {
            parts,
            config,
            optimizer,
            schedule,
            state,
            trainer_state,
            batches_per_epoch,
            stream,
            runtime,
            tensorboard,
            started: Instant::now(),
            window: LossStats::default(),
            last_checkpoint: None,
            last_checkpoint_uri: None,
            reporter: Arc::new(ProgressReporter::disabled()),
            dist,
        })
    }

    /// Reports progress through `reporter` (rank 0 under the operator).
    pub fn with_reporter(mut self, reporter: Arc<ProgressReporter>) -> Self {
        self.reporter = reporter;
        self
    }

    /// Publishes the operator's view of the run (see operator/PROGRESS.md).
    fn publish_progress(&self, loss: Option<f64>, learning_rate: Option<f64>) {
        let progress = self.progress();
        self.reporter.publish(ProgressReport {
            total_steps: Some(progress.max_steps),
            epoch: Some(progress.epoch),
            loss,
            learning_rate,
            eta_seconds: Some(progress.remaining_s().round() as u64),
            checkpoint: self.last_checkpoint_uri.clone(),
            ..ProgressReport::at_step(progress.step)
        });
    }

    /// Restores a checkpoint: weights always; with `only_model` false also the optimizer,
    /// the step, the data cursor and the log history.
    pub fn resume(&mut self, dir: &Path, only_model: bool) -> anyhow::Result<()> {
        self.parts.tuning.check_checkpoint(dir)?;
        if only_model {
            self.parts.tuning.load_weights(dir)?;
            // The optimizer's master weights start from the loaded values.
            self.optimizer = AdamW::new(self.parts.tuning.trainables(), self.config.adamw)?;
            tracing::info!(checkpoint = %dir.display(), "resumed the weights only");
            return Ok(());
        }
        load_optimizer(&mut self.optimizer, dir)?;
        self.state = RunState::load(dir)?;
        if let Some(stream) = &mut self.stream {
            let (rank, world) = (self.dist.rank(), self.dist.world_size());
            let cursors = &self.state.stream;
            let Some(cursor) = cursors.get(rank).filter(|_| cursors.len() == world) else {
                anyhow::bail!(
                    "--resume_from_checkpoint {}: no stream position for rank {rank} of {world} (the checkpoint holds {}); resume a --streaming true run with the same number of ranks",
                    dir.display(),
                    cursors.len()
                );
            };
            stream.seek(*cursor).with_context(|| {
                format!(
                    "--resume_from_checkpoint {}: skipping to the stream position",
                    dir.display()
                )
            })?;
        }
        if let Ok(ts) = TrainerState::load(&dir.join("trainer_state.json")) {
            self.trainer_state.log_history = ts.log_history;
            self.trainer_state.best_metric = ts.best_metric;
            self.trainer_state.best_model_checkpoint = ts.best_model_checkpoint;
        }
        tracing::info!(
            checkpoint = %dir.display(),
            step = self.state.global_step,
            epoch = self.state.epoch,
            batch = self.state.batch_in_epoch,
            "resumed"
        );
        Ok(())
    }

    fn progress(&self) -> Progress {
        Progress {
            step: self.state.global_step,
            max_steps: self.schedule.total_steps,
            epoch: self.epoch_float(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
        }
    }

    fn epoch_float(&self) -> f64 {
        match self.batches_per_epoch {
            Some(n) => self.state.epoch as f64 + self.state.batch_in_epoch as f64 / n as f64,
            // HF's value for a dataloader without a length (`epoch + step / steps_in_epoch`
            // with `steps_in_epoch = max_steps × accumulation`) while the stream lasts.
            None => self.state.global_step as f64 / self.schedule.total_steps.max(1) as f64,
        }
    }

    fn order(&self, epoch: u64) -> Vec<Vec<usize>> {
        epoch_batches(
            self.parts.train.len(),
            self.config.batch_size * self.dist.world_size(),
            self.config.data_seed,
            epoch,
            true,
            self.config.drop_last,
        )
    }

    fn micro_batch(&self, rows: &[usize], data: &TrainData) -> anyhow::Result<MicroBatch> {
        self.micro_batch_of(&rows_of(rows, data)?)
    }

    fn micro_batch_of(&self, rows: &[TrainRow]) -> anyhow::Result<MicroBatch> {
        let batch = self.parts.collator.collate(rows);
        Ok(MicroBatch::from_batch(&batch, self.parts.model.device())?)
    }

    /// This rank's rows for the next accumulation window, one entry per micro-batch (an
    /// empty one when this rank's share of a short global batch is empty), and whether
    /// the window ended an epoch of the in-memory order.
    fn next_window(&mut self, order: &[Vec<usize>]) -> anyhow::Result<(Vec<Vec<TrainRow>>, bool)> {
        if let Some(stream) = &mut self.stream {
            let batches = (0..self.config.grad_accum)
                .map(|_| stream.next_batch())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| {
                    format!(
                        "reading --dataset (--streaming true) for step {}",
                        self.state.global_step + 1
                    )
                })?;
            return Ok((batches, false));
        }
        let mut batches = Vec::new();
        for _ in 0..self.config.grad_accum {
            let Some(global) = order.get(self.state.batch_in_epoch as usize) else {
                break;
            };
            batches.push(rows_of(self.dist.my_rows(global), self.parts.train)?);
            self.state.batch_in_epoch += 1;
        }
        Ok((batches, self.state.batch_in_epoch as usize >= order.len()))
    }

    /// Runs to `max_steps`, then saves the final checkpoint.
    pub fn train(mut self) -> anyhow::Result<TrainSummary> {
        // Frozen weights do not change during the run (only `Var`s are updated), so their
        // bf16 GEMM packing for the input gradient is made once and kept.
        let _packed_weights = kubeswift_kernels::keep_packed_weights(PACKED_WEIGHTS_BUDGET);
        let total = self.schedule.total_steps;
        let display = if self.dist.is_main() {
            ProgressDisplay::new(
                total,
                self.config.disable_tqdm,
                self.config.logging_steps.steps(total),
            )
        } else {
            ProgressDisplay::Silent
        };
        let mut order = self.order(self.state.epoch);
        let mut steps_this_run = 0u64;
        while self.state.global_step < total {
            let step_start = Instant::now();
            let mut stats = LossStats::default();
            let (window_batches, epoch_done) = self.next_window(&order)?;
            for rows in &window_batches {
                // Drawn from the micro-step counter before it moves (resume-safe).
                let embed_noise = EmbedNoise::for_micro_step(
                    self.config.neftune_noise_alpha,
                    self.state.seed,
                    self.state.micro_step,
                );
                self.parts
                    .tuning
                    .set_mode(true, mix(self.state.seed, self.state.micro_step));
                self.state.micro_step += 1;
                // This rank's share of the global batch; an empty share adds nothing.
                if rows.is_empty() {
                    continue;
                }
                let mut mb = self.micro_batch_of(rows)?;
                mb.embed_noise = embed_noise;
                let s = forward_backward(
                    self.parts.model,
                    &mb,
                    &mut self.optimizer,
                    self.config.checkpointing,
                )
                .with_context(|| format!("training step {}", self.state.global_step + 1))?;
                stats.add(s);
            }
            // Sum gradients and token counts over ranks (identity in one process).
            let (stats, grad_scale, stop) = self.dist.reduce_gradients(
                &mut self.optimizer,
                stats,
                interrupt::requested().is_some(),
            )?;
            let grad_norm = self.optimizer_step(grad_scale)?;
            self.state.tokens_seen += stats.tokens as u64;
            if epoch_done {
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
                order = self.order(self.state.epoch);
            }
            self.window.add(stats);
            steps_this_run += 1;
            let step = self.state.global_step;
            let lr_now = self.schedule.lr(step);
            display.step(&StepReport {
                step,
                loss: stats.mean_loss(),
                learning_rate: lr_now,
                tokens_per_second: stats.tokens as f64
                    / step_start.elapsed().as_secs_f64().max(1e-9),
            });
            let log_every = self.config.logging_steps.steps(total);
            if step.is_multiple_of(log_every)
                || (steps_this_run == 1 && self.config.logging_first_step && step == 1)
                || step == total
            {
                self.log_train(grad_norm, lr_now)?;
            }
            let eval_now = match self.config.eval_strategy {
                Strategy::No => false,
                Strategy::Steps => step.is_multiple_of(self.config.eval_steps.steps(total)),
                Strategy::Epoch => epoch_done,
            } || (step == total && self.config.eval_strategy != Strategy::No);
            let mut metrics = None;
            if eval_now && !self.parts.val.is_empty() {
                metrics = Some(self.evaluate()?);
            }
            // The last step saves too, except with `--save_strategy no`. The seed lists
            // save_strategy as "保存模型的策略,可选为'no'、'steps'、'epoch'" and ms-swift adds
            // no save of its own after `trainer.train()` (SwiftSft.train only writes
            // logging.jsonl and the best/last links); HF's DefaultFlowCallback saves at the
            // end only under a save strategy. So `no` leaves no checkpoint at all.
            let save_now = match self.config.save_strategy {
                Strategy::No => false,
                Strategy::Steps => {
                    step.is_multiple_of(self.config.save_steps.steps(total)) || step == total
                }
                Strategy::Epoch => epoch_done || step == total,
            };
            if save_now {
                self.save_checkpoint(metrics)?;
            }
            if stop && step < total {
                display.finish();
                return Err(self.stop_after_signal(save_now)?.into());
            }
        }
        display.finish();
        if let Some(stream) = &self.stream {
            let cursor = stream.cursor();
            tracing::info!(
                rank = self.dist.rank(),
                epoch = cursor.epoch,
                rows = cursor.rows,
                "stream: final position"
            );
        }
        self.dist.finish();
        if self.dist.is_main()
            && self.config.create_checkpoint_symlink
            && let Some(best) = self.trainer_state.best_model_checkpoint.clone()
        {
            let name = Path::new(&best)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(best);
            self.runtime
                .block_on(self.parts.output.set_pointer("best", &name))?;
        }
        self.runtime.block_on(self.parts.output.sync_run_files());
        Ok(TrainSummary {
            global_step: self.state.global_step,
            last_checkpoint: self.last_checkpoint.clone(),
            last_checkpoint_uri: self.last_checkpoint_uri.clone(),
            best_checkpoint: self.trainer_state.best_model_checkpoint.clone(),
            log_history: self.trainer_state.log_history.clone(),
        })
    }

    /// Ends a run that a signal asked to stop (on any rank) after the step just done:
    /// saves a checkpoint unless that step saved one or `--save_strategy no`, says goodbye
    /// to the other ranks (they stop after the same step) and syncs the run's files.
    fn stop_after_signal(&mut self, saved: bool) -> anyhow::Result<interrupt::Interrupted> {
        let step = self.state.global_step;
        if !saved && self.config.save_strategy != Strategy::No {
            self.save_checkpoint(None)?;
        }
        self.dist.finish();
        self.runtime.block_on(self.parts.output.sync_run_files());
        let checkpoint = (self.config.save_strategy != Strategy::No).then(|| {
            self.last_checkpoint_uri
                .clone()
                .unwrap_or_else(|| format!("checkpoint-{step}"))
        });
        // A rank that got no signal itself stops because a peer did: SIGTERM's code, what
        // the launcher sends every worker.
        let signal = interrupt::requested().unwrap_or(libc::SIGTERM);
        tracing::warn!(step, signal, "stopped by a signal");
        Ok(interrupt::Interrupted {
            signal,
            step,
            checkpoint,
        })
    }

    /// Scales the accumulated gradients by `scale` (to the mean over the window's tokens),
    /// clips them and steps; returns the gradient norm before clipping.
    fn optimizer_step(&mut self, scale: f32) -> anyhow::Result<f64> {
        let norm = self.optimizer.grad_norm(scale);
        let clip = if self.config.max_grad_norm > 0.0 && norm > self.config.max_grad_norm {
            (self.config.max_grad_norm / (norm + 1e-6)) as f32
        } else {
            1.0
        };
        // HF steps the optimizer with the scheduler's current lr, then advances it.
        let lr = self.schedule.lr(self.state.global_step);
        self.optimizer.step(lr, scale * clip)?;
        self.state.global_step += 1;
        Ok(norm)
    }

    fn record(&mut self, line: Map<String, Value>) -> anyhow::Result<()> {
        if !self.dist.is_main() {
            return Ok(());
        }
        let path = self.parts.output.local.join("logging.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}", path.display()))?;
        // One write per line, so a reader tailing the file (a dashboard, the bench) never
        // sees half a record: formatting into the file wrote it token by token.
        let text = format!("{}\n", Value::Object(line.clone()));
        f.write_all(text.as_bytes())
            .with_context(|| format!("{}", path.display()))?;
        if let Some(tb) = &mut self.tensorboard {
            for (k, v) in &line {
                if let Some(x) = v.as_f64()
                    && k != "epoch"
                    && !k.contains('(')
                {
                    tb.scalar(&tag_for(k), x, self.state.global_step)?;
                }
            }
        }
        let mut history = line;
        history.insert("step".into(), json!(self.state.global_step));
        self.trainer_state.log_history.push(history);
        Ok(())
    }

    fn log_train(&mut self, grad_norm: f64, lr: f64) -> anyhow::Result<()> {
        let w = std::mem::take(&mut self.window);
        self.publish_progress(Some(w.mean_loss()), Some(lr));
        let progress = self.progress();
        let speed = progress.elapsed_s / self.state.global_step.max(1) as f64;
        let line = train_line(
            &[
                ("loss", w.mean_loss()),
                ("grad_norm", grad_norm),
                ("learning_rate", lr),
                (
                    self.config.acc_strategy.key(),
                    self.config.acc_strategy.of(&w),
                ),
            ],
            memory_gib(),
            speed,
            &progress,
        );
        self.record(line)
    }

    /// Eval loss and token accuracy over the validation set, dropout off.
    fn evaluate(&mut self) -> anyhow::Result<Map<String, Value>> {
        self.parts.tuning.set_mode(false, 0);
        let order = epoch_batches(
            self.parts.val.len(),
            self.config.eval_batch_size,
            0,
            0,
            false,
            false,
        );
        let mut total = LossStats::default();
        for rows in &order {
            let mb = self.micro_batch(rows, self.parts.val)?;
            total.add(evaluate(self.parts.model, &mb).context("evaluation")?);
        }
        let line = eval_line(
            &[
                ("loss", total.mean_loss()),
                (
                    self.config.acc_strategy.key(),
                    self.config.acc_strategy.of(&total),
                ),
            ],
            &self.progress(),
        );
        tracing::info!(
            eval_loss = total.mean_loss(),
            eval_acc = self.config.acc_strategy.of(&total),
            step = self.state.global_step,
            "eval"
        );
        self.record(line.clone())?;
        Ok(line)
    }

    fn save_checkpoint(&mut self, metrics: Option<Map<String, Value>>) -> anyhow::Result<()> {
        let step = self.state.global_step;
        // Every rank's stream position goes into rank 0's checkpoint (each rank read its
        // own shard, so only it knows where it stands).
        if let Some(stream) = &self.stream {
            let mine = serde_json::to_string(&stream.cursor()).context("stream cursor")?;
            if let Some(all) = self.dist.gather(&format!("stream-cursor-{step}"), mine)? {
                self.state.stream = all
                    .iter()
                    .map(|c| serde_json::from_str(c))
                    .collect::<Result<_, _>>()
                    .context("a rank's stream cursor")?;
            }
        }
        // Rank 0 alone writes; every rank leaves the save together.
        if self.dist.is_main() {
            self.write_checkpoint(metrics)?;
        }
        self.dist.barrier(&format!("checkpoint-{step}"))
    }

    fn write_checkpoint(&mut self, metrics: Option<Map<String, Value>>) -> anyhow::Result<()> {
        let step = self.state.global_step;
        let name = format!("checkpoint-{step}");
        let run_dir = self.parts.output.local.clone();
        let final_dir = run_dir.join(&name);
        if let Some(m) = &metrics
            && let Some(value) = m
                .get(&self.config.best_metric_key())
                .and_then(Value::as_f64)
        {
            let better = match self.trainer_state.best_metric {
                None => true,
                Some(best) if self.config.greater_is_better => value > best,
                Some(best) => value < best,
            };
            if better {
                self.trainer_state.best_metric = Some(value);
                self.trainer_state.best_model_checkpoint = Some(final_dir.display().to_string());
            }
        }
        self.trainer_state.global_step = step;
        self.trainer_state.epoch = self.epoch_float();
        self.trainer_state.num_input_tokens_seen = self.state.tokens_seen;
        let ck = self
            .runtime
            .block_on(LocalCheckpoint::begin(&run_dir, step))?;
        let dir = ck.dir().to_path_buf();
        self.parts
            .tuning
            .save(&dir, self.parts.model, self.parts.model_dir)?;
        std::fs::copy(&self.parts.args_json, dir.join("args.json"))
            .with_context(|| format!("copying {}", self.parts.args_json.display()))?;
        self.trainer_state
            .save(&dir.join("trainer_state.json"))
            .context("trainer_state.json")?;
        if !self.config.save_only_model {
            save_optimizer(&self.optimizer, &dir)?;
            self.state.save(&dir)?;
        }
        let committed = self.runtime.block_on(ck.commit())?;
        let best = self
            .trainer_state
            .best_model_checkpoint
            .as_deref()
            .and_then(|b| Path::new(b).file_name())
            .map(|n| n.to_string_lossy().into_owned());
        self.runtime.block_on(self.parts.output.publish_checkpoint(
            &committed,
            self.config.save_total_limit,
            best.as_deref(),
            self.config.create_checkpoint_symlink,
        ))?;
        let uri = self.parts.output.checkpoint_uri(&name);
        tracing::info!(checkpoint = %uri, "saved");
        self.reporter.set_checkpoint(uri.clone());
        self.last_checkpoint = Some(committed);
        self.last_checkpoint_uri = Some(uri);
        Ok(())
    }
}

/// The rows at `indices` of the in-memory dataset.
fn rows_of(indices: &[usize], data: &TrainData) -> anyhow::Result<Vec<TrainRow>> {
    Ok(indices
        .iter()
        .map(|&i| data.get(i))
        .collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_seeds_differ_per_micro_step_and_repeat_per_seed() {
        assert_ne!(mix(42, 0), mix(42, 1));
        assert_eq!(mix(42, 7), mix(42, 7));
        assert_ne!(mix(1, 7), mix(2, 7));
    }
}

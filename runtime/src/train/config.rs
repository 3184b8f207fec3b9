//! The trainer's settings, read once from the resolved arguments (pure: no I/O).

use kubeswift_args::Args;
use serde_json::Value;

use crate::train::optimizer::AdamWConfig;
use crate::train::schedule::ScheduleKind;
use crate::train::step::Checkpointing;

/// `--eval_strategy` / `--save_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    No,
    Steps,
    Epoch,
}

/// `--acc_strategy`: accuracy per label token (`token_acc`) or per sequence, a sequence
/// counting only when all its label tokens are right (`seq_acc`), as ms-swift logs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccStrategy {
    Token,
    Seq,
}

impl AccStrategy {
    /// The log key ms-swift uses (`{acc_strategy}_acc`; eval lines prefix `eval_`).
    pub fn key(&self) -> &'static str {
        match self {
            AccStrategy::Token => "token_acc",
            AccStrategy::Seq => "seq_acc",
        }
    }

    /// The accuracy of `stats` under this strategy.
    pub fn of(&self, stats: &crate::train::step::LossStats) -> f64 {
        match self {
            AccStrategy::Token => stats.token_acc(),
            AccStrategy::Seq => stats.seq_acc(),
        }
    }
}

/// A setting the trainer cannot honour; names the argument.
#[derive(Debug, thiserror::Error)]
#[error("--{arg} {value}: {reason}")]
pub struct ConfigError {
    pub arg: &'static str,
    pub value: String,
    pub reason: String,
}

fn bad(arg: &'static str, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        arg,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A step interval: a count, or (below 1) a fraction of the total steps, as HF reads
/// `logging_steps`, `eval_steps` and `save_steps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval(pub f64);

impl Interval {
    /// The interval in steps for a run of `max_steps`.
    pub fn steps(&self, max_steps: u64) -> u64 {
        if self.0 < 1.0 {
            ((self.0 * max_steps as f64).ceil() as u64).max(1)
        } else {
            self.0 as u64
        }
    }
}

/// Everything the training loop needs from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub grad_accum: usize,
    pub num_train_epochs: f64,
    /// `None` = from the epochs.
    pub max_steps: Option<u64>,
    pub learning_rate: f64,
    pub schedule: ScheduleKind,
    pub warmup_ratio: f64,
    pub warmup_steps: u64,
    pub adamw: AdamWConfig,
    /// 0 disables clipping.
    pub max_grad_norm: f64,
    pub seed: u64,
    pub data_seed: u64,
    pub logging_steps: Interval,
    pub logging_first_step: bool,
    pub eval_strategy: Strategy,
    pub eval_steps: Interval,
    pub save_strategy: Strategy,
    pub save_steps: Interval,
    pub save_total_limit: Option<usize>,
    pub save_only_model: bool,
    /// e.g. `loss` (read as `eval_loss`).
    pub metric_for_best_model: String,
    pub greater_is_better: bool,
    pub create_checkpoint_symlink: bool,
    /// `--gradient_checkpointing` with `--recompute_granularity`.
    pub checkpointing: Checkpointing,
    pub tensorboard: bool,
    pub disable_tqdm: bool,
    pub drop_last: bool,
    /// NEFTune's alpha; 0 = off.
    pub neftune_noise_alpha: f64,
    pub acc_strategy: AccStrategy,
    /// `--streaming`: batches come from a stream (`train::streamed`), which has no length.
    pub streaming: bool,
}

fn strategy(args: &Args, arg: &'static str) -> Result<Strategy, ConfigError> {
    match args.str(arg).unwrap_or("steps") {
        "no" => Ok(Strategy::No),
        "steps" => Ok(Strategy::Steps),
        "epoch" => Ok(Strategy::Epoch),
        other => Err(bad(arg, other, "expected no, steps or epoch")),
    }
}

fn interval(args: &Args, arg: &'static str, default: f64) -> Result<Interval, ConfigError> {
    let v = args.lookup(arg).and_then(Value::as_f64).unwrap_or(default);
    if v <= 0.0 {
        return Err(bad(arg, v, "must be positive"));
    }
    Ok(Interval(v))
}

fn positive(args: &Args, arg: &'static str, default: i64) -> Result<usize, ConfigError> {
    let v = args.int(arg).unwrap_or(default);
    if v < 1 {
        return Err(bad(arg, v, "must be at least 1"));
    }
    Ok(v as usize)
}

impl TrainConfig {
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let neftune_noise_alpha = args.float("neftune_noise_alpha").unwrap_or(0.0);
        if !(neftune_noise_alpha >= 0.0 && neftune_noise_alpha.is_finite()) {
            return Err(bad(
                "neftune_noise_alpha",
                neftune_noise_alpha,
                "must be a finite number >= 0",
            ));
        }
        if let Some(optim) = args.str("optim")
            && optim != "adamw_torch"
            && optim != "adamw_torch_fused"
        {
            return Err(bad(
                "optim",
                optim,
                "only AdamW (adamw_torch) is implemented",
            ));
        }
        let acc_strategy = match args.str("acc_strategy").unwrap_or("token") {
            "token" => AccStrategy::Token,
            "seq" => AccStrategy::Seq,
            other => return Err(bad("acc_strategy", other, "expected token or seq")),
        };
        let checkpointing = match (
            args.opt_bool("gradient_checkpointing").unwrap_or(true),
            args.str("recompute_granularity").unwrap_or("full"),
        ) {
            (false, _) => Checkpointing::Off,
            (true, "full") => Checkpointing::Full,
            (true, "selective") => Checkpointing::Selective,
            (true, other) => {
                return Err(bad(
                    "recompute_granularity",
                    other,
                    "expected full or selective",
                ));
            }
        };
        let schedule_name = args.str("lr_scheduler_type").unwrap_or("cosine");
        let schedule = ScheduleKind::parse(schedule_name)
            .ok_or_else(|| bad("lr_scheduler_type", schedule_name, "not supported yet"))?;
        let max_steps = match args.int("max_steps") {
            Some(n) if n > 0 => Some(n as u64),
            _ => None,
        };
        let num_train_epochs = args.float("num_train_epochs").unwrap_or(3.0);
        if max_steps.is_none() && num_train_epochs <= 0.0 {
            return Err(bad(
                "num_train_epochs",
                num_train_epochs,
                "must be positive unless --max_steps is given",
            ));
        }
        let streaming = args.bool("streaming");
        if streaming && max_steps.is_none() {
            // The argument table refuses this at parse time; a config that reaches the
            // trainer another way (args.json) is refused here too.
            return Err(bad(
                "max_steps",
                args.int("max_steps").unwrap_or(-1),
                "--streaming true needs --max_steps > 0: a streamed dataset has no length",
            ));
        }
        let eval_strategy = strategy(args, "eval_strategy")?;
        let save_strategy = strategy(args, "save_strategy")?;
        for (arg, s) in [
            ("eval_strategy", eval_strategy),
            ("save_strategy", save_strategy),
        ] {
            if streaming && s == Strategy::Epoch {
                // Each rank restarts its own shard when it runs out, at different steps.
                return Err(bad(
                    arg,
                    "epoch",
                    "a streamed dataset (--streaming true) has no epoch shared by every rank; use steps",
                ));
            }
        }
        let learning_rate = args.float("learning_rate").unwrap_or(1e-4);
        if learning_rate < 0.0 {
            return Err(bad("learning_rate", learning_rate, "must not be negative"));
        }
        let metric = args
            .str("metric_for_best_model")
            .unwrap_or("loss")
            .to_string();
        let report_to = args.strings("report_to");
        Ok(TrainConfig {
            batch_size: positive(args, "per_device_train_batch_size", 1)?,
            eval_batch_size: positive(args, "per_device_eval_batch_size", 1)?,
            grad_accum: positive(args, "gradient_accumulation_steps", 1)?,
            num_train_epochs,
            max_steps,
            learning_rate,
            schedule,
            warmup_ratio: args.float("warmup_ratio").unwrap_or(0.0),
            warmup_steps: args.int("warmup_steps").unwrap_or(0).max(0) as u64,
            adamw: AdamWConfig {
                beta1: args.float("adam_beta1").unwrap_or(0.9),
                beta2: args.float("adam_beta2").unwrap_or(0.95),
                eps: args.float("adam_epsilon").unwrap_or(1e-8),
                weight_decay: args.float("weight_decay").unwrap_or(0.1),
            },
            max_grad_norm: args.float("max_grad_norm").unwrap_or(1.0),
            seed: args.int("seed").unwrap_or(42) as u64,
            data_seed: args.int("data_seed").unwrap_or(42) as u64,
            logging_steps: interval(args, "logging_steps", 5.0)?,
            logging_first_step: args.opt_bool("logging_first_step").unwrap_or(true),
            eval_strategy,
            eval_steps: interval(args, "eval_steps", 500.0)?,
            save_strategy,
            save_steps: interval(args, "save_steps", 500.0)?,
            save_total_limit: args.int("save_total_limit").map(|n| n.max(1) as usize),
            save_only_model: args.bool("save_only_model"),
            greater_is_better: args
                .opt_bool("greater_is_better")
                .unwrap_or(!metric.contains("loss")),
            metric_for_best_model: metric,
            create_checkpoint_symlink: args.bool("create_checkpoint_symlink"),
            checkpointing,
            tensorboard: report_to.iter().any(|r| r == "tensorboard" || r == "all"),
            disable_tqdm: args.bool("disable_tqdm"),
            drop_last: args.bool("dataloader_drop_last"),
            neftune_noise_alpha,
            acc_strategy,
            streaming,
        })
    }

    /// Optimizer steps of one epoch of `batches` micro-batches (a short accumulation window
    /// at the end of an epoch still steps).
    pub fn steps_per_epoch(&self, batches: usize) -> u64 {
        batches.div_ceil(self.grad_accum).max(1) as u64
    }

    /// The run's total optimizer steps.
    pub fn total_steps(&self, batches_per_epoch: usize) -> u64 {
        match self.max_steps {
            Some(n) => n,
            None => {
                let per = self.steps_per_epoch(batches_per_epoch) as f64;
                ((self.num_train_epochs * per).ceil() as u64).max(1)
            }
        }
    }

    /// The key of the best-model metric in an evaluation's metrics (`loss` -> `eval_loss`).
    pub fn best_metric_key(&self) -> String {
        if self.metric_for_best_model.starts_with("eval_") {
            self.metric_for_best_model.clone()
        } else {
            format!("eval_{}", self.metric_for_best_model)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeswift_args::cli::{Cli, parse};

    fn args(extra: &[&str]) -> Args {
        let argv = ["swift", "sft", "--model", "m"]
            .into_iter()
            .chain(extra.iter().copied());
        match parse(argv) {
            Ok(Cli::Run { resolved, .. }) => resolved.args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_ms_swift_defaults() {
        let c = TrainConfig::from_args(&args(&[])).unwrap();
        assert_eq!(c.learning_rate, 1e-4);
        assert_eq!(c.adamw.beta2, 0.95);
        assert_eq!(c.adamw.weight_decay, 0.1);
        assert_eq!(c.schedule, ScheduleKind::Cosine);
        assert_eq!(c.checkpointing, Checkpointing::Full);
        assert_eq!(c.eval_strategy, Strategy::Steps);
        assert_eq!(c.eval_steps.steps(1000), 500);
        assert_eq!(c.best_metric_key(), "eval_loss");
        assert!(!c.greater_is_better);
        let full = TrainConfig::from_args(&args(&["--train_type", "full"])).unwrap();
        assert_eq!(full.learning_rate, 1e-5);
    }

    #[test]
    fn counts_steps_like_hf() {
        let c = TrainConfig::from_args(&args(&[
            "--gradient_accumulation_steps",
            "4",
            "--num_train_epochs",
            "2",
        ]))
        .unwrap();
        assert_eq!(c.steps_per_epoch(10), 3);
        assert_eq!(c.total_steps(10), 6);
        let m = TrainConfig::from_args(&args(&["--max_steps", "7"])).unwrap();
        assert_eq!(m.total_steps(10), 7);
        assert_eq!(Interval(0.25).steps(10), 3);
    }

    #[test]
    fn reads_checkpointing_and_its_granularity() {
        let c = |argv: &[&str]| TrainConfig::from_args(&args(argv)).unwrap().checkpointing;
        assert_eq!(c(&[]), Checkpointing::Full);
        assert_eq!(
            c(&["--gradient_checkpointing", "false"]),
            Checkpointing::Off
        );
        let selective = ["--recompute_granularity", "selective"];
        assert_eq!(c(&selective), Checkpointing::Selective);
        // Without checkpointing nothing is recomputed, whatever the granularity.
        let off = [
            "--gradient_checkpointing",
            "false",
            "--recompute_granularity",
            "selective",
        ];
        assert_eq!(c(&off), Checkpointing::Off);
    }

    #[test]
    fn reads_neftune_and_acc_strategy() {
        let c = TrainConfig::from_args(&args(&[])).unwrap();
        assert_eq!(c.neftune_noise_alpha, 0.0);
        assert_eq!(c.acc_strategy, AccStrategy::Token);
        assert_eq!(c.acc_strategy.key(), "token_acc");
        let c = TrainConfig::from_args(&args(&[
            "--neftune_noise_alpha",
            "5",
            "--acc_strategy",
            "seq",
        ]))
        .unwrap();
        assert_eq!(c.neftune_noise_alpha, 5.0);
        assert_eq!(c.acc_strategy.key(), "seq_acc");
    }

    #[test]
    fn refuses_what_it_cannot_do_naming_the_argument() {
        let e = TrainConfig::from_args(&args(&["--num_train_epochs", "0"])).unwrap_err();
        assert!(e.to_string().contains("--num_train_epochs 0"), "{e}");
        let e = TrainConfig::from_args(&args(&[
            "--streaming",
            "true",
            "--max_steps",
            "4",
            "--save_strategy",
            "epoch",
        ]))
        .unwrap_err();
        // eval_strategy follows save_strategy (ms-swift), so either may be named.
        assert!(
            e.to_string().contains("_strategy epoch") && e.to_string().contains("--streaming"),
            "{e}"
        );
        let c =
            TrainConfig::from_args(&args(&["--streaming", "true", "--max_steps", "4"])).unwrap();
        assert!(c.streaming);
        assert_eq!(c.total_steps(0), 4);
    }
}

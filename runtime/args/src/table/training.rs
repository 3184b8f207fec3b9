//! Seq2SeqTrainer arguments with ms-swift's defaults, plus the HF ones the seed does not list
//! ("未列出的请参考HF官方文档") that the trainer uses.

use super::{DDP_BACKENDS, DDP_BACKENDS_BUILT, FALSE, NONE, TRUE, derived, float, int, text};
use crate::group::Group;
use crate::spec::{ArgSpec, DefaultValue, Scalar as S, ValueType as T};

const fn r(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Seq2Seq, name, ty, d, help)
}

const fn hf(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::HfTraining, name, ty, d, help)
}

const SCHEDULERS: &[&str] = &[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "warmup_stable_decay",
];
const REPORT_TO: &[&str] = &[
    "tensorboard",
    "wandb",
    "swanlab",
    "mlflow",
    "comet_ml",
    "clearml",
    "dvclive",
    "neptune",
    "none",
    "all",
];
const STRATEGIES: &[&str] = &["no", "steps", "epoch"];
const RECOMPUTE_GRANULARITY: &[&str] = &["full", "selective"];

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    r("output_dir", T::Str, derived("output/<model_name>"), "Output folder of the run.").hot(),
    r("gradient_checkpointing", T::Bool, TRUE, "Recompute activations in backward to save memory.").hot(),
    r("deepspeed", T::Str, NONE,
      "DeepSpeed config: zero0, zero1, zero2, zero3, zero2_offload, zero3_offload or a JSON file.").hot().default_only(),
    r("per_device_train_batch_size", T::Int, int(1), "Training batch size per device.").hot(),
    r("per_device_eval_batch_size", T::Int, int(1), "Evaluation batch size per device.").hot(),
    r("weight_decay", T::Float, float(0.1), "AdamW weight decay."),
    r("learning_rate", T::Float, derived("1e-5 for full, 1e-4 for tuners"), "Peak learning rate.").hot(),
    r("lr_scheduler_type", T::Choice(SCHEDULERS), text("cosine"), "Learning-rate schedule.")
        .only(&["cosine", "linear", "constant", "constant_with_warmup"]),
    r("lr_scheduler_kwargs", T::Dict, NONE, "Extra scheduler parameters as JSON.").default_only(),
    r("gradient_checkpointing_kwargs", T::Dict, NONE,
      "Arguments for torch.utils.checkpoint, e.g. '{\"use_reentrant\": false}'.").hot().default_only(),
    r("report_to", T::List(S::Choice(REPORT_TO)), DefaultValue::List(&["tensorboard"]),
      "Where to report metrics: tensorboard, wandb, swanlab, all, none.").only(&["tensorboard", "none"]),
    r("logging_first_step", T::Bool, TRUE, "Log the first step."),
    r("logging_steps", T::Number, int(5), "Log every N steps."),
    r("predict_with_generate", T::Bool, FALSE, "Evaluate by generating text instead of computing loss."),
    r("metric_for_best_model", T::Str,
      derived("'loss', or 'rouge-l' with --predict_with_generate; 'reward' for GRPO; unset for PPO"),
      "Metric that picks the best checkpoint."),
    r("greater_is_better", T::Bool, derived("False when metric_for_best_model contains 'loss', else True"),
      "Whether a larger metric is better."),
    r("num_train_epochs", T::Float, float(3.0), "Number of training epochs.").hot(),
    r("gradient_accumulation_steps", T::Int, int(1), "Gradient accumulation steps.").hot(),
    r("save_strategy", T::Choice(STRATEGIES), text("steps"), "When to save checkpoints: 'no', 'steps' or 'epoch'.").hot(),
    r("save_steps", T::Number, int(500), "Save every N steps.").hot(),
    r("eval_strategy", T::Choice(STRATEGIES), derived("follows save_strategy"), "When to evaluate.").hot(),
    r("eval_steps", T::Number, derived("follows save_steps"), "Evaluate every N steps.").hot(),
    r("save_total_limit", T::Int, NONE, "Keep at most N checkpoints (older ones are deleted); default: keep all.").hot(),
    r("max_steps", T::Int, int(-1), "Max training steps (required with --streaming); -1 = from epochs."),
    r("warmup_ratio", T::Float, float(0.0), "Fraction of steps for linear warmup.").hot(),
    r("save_on_each_node", T::Bool, FALSE, "Save checkpoints on every node (multi-node training)."),
    r("save_only_model", T::Bool, FALSE, "Save only model weights, not optimizer, RNG and data state."),
    r("resume_from_checkpoint", T::Str, NONE,
      "Checkpoint to resume from: weights, optimizer, RNG and step.").hot(),
    r("ddp_backend", T::Choice(DDP_BACKENDS), NONE, "Distributed backend; default: nccl on GPU, gloo on CPU.")
        .hot().only(DDP_BACKENDS_BUILT),
    r("ddp_find_unused_parameters", T::Bool, NONE, "DDP find_unused_parameters.").hot(),
    r("dataloader_num_workers", T::Int, int(0), "Data loader worker count.").hot(),
    r("neftune_noise_alpha", T::Float, float(0.0), "NEFTune noise coefficient (typically 5, 10 or 15); 0 disables.").hot(),
    r("average_tokens_across_devices", T::Bool, FALSE,
      "All-reduce the token count across devices for an exact loss."),
    r("max_grad_norm", T::Float, float(1.0), "Gradient clipping norm."),
    r("push_to_hub", T::Bool, FALSE, "Push checkpoints to the hub.").default_only(),
    r("hub_model_id", T::Str, NONE, "Hub model id to push to.").default_only(),
    r("hub_private_repo", T::Bool, FALSE, "Make the hub repo private.").default_only(),
    hf("warmup_steps", T::Int, int(0), "Linear warmup steps; overrides warmup_ratio when > 0."),
    hf("recompute_granularity", T::Choice(RECOMPUTE_GRANULARITY), text("full"),
      "With gradient_checkpointing: full recomputes each decoder layer in backward; selective keeps the outputs of its q/k/v and gate/up products and recomputes only the rest (near no-checkpointing speed, more memory than full). The name is Megatron-SWIFT's."),
    hf("adam_beta1", T::Float, float(0.9), "AdamW beta1."),
    hf("adam_beta2", T::Float, float(0.95), "AdamW beta2 (ms-swift's default 0.95)."),
    hf("adam_epsilon", T::Float, float(1e-8), "AdamW epsilon."),
    hf("optim", T::Str, text("adamw_torch"), "Optimizer; kubeswift implements AdamW with f32 master weights.")
        .only(&["adamw_torch", "adamw_torch_fused", "adamw_hf"]),
    hf("bf16", T::Bool, derived("torch_dtype == bfloat16"), "bf16 training; must agree with --torch_dtype."),
    hf("fp16", T::Bool, derived("torch_dtype == float16"), "fp16 training; must agree with --torch_dtype."),
    hf("logging_dir", T::Str, derived("<output_dir>/runs"), "TensorBoard log folder."),
    hf("load_best_model_at_end", T::Bool, FALSE, "Load the best checkpoint when training ends.").default_only(),
    hf("dataloader_drop_last", T::Bool, FALSE, "Drop the last incomplete batch."),
    hf("ddp_timeout", T::Int, int(1800), "Seconds a rendezvous or collective may wait before the job fails."),
    hf("run_name", T::Str, NONE, "Run name for loggers."),
    hf("disable_tqdm", T::Bool, NONE, "Disable the progress bar; default: on for a terminal, plain log lines otherwise."),
    hf("save_safetensors", T::Bool, TRUE, "Save weights as safetensors.").only(&["true"]),
];

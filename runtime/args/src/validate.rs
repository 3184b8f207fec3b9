//! Checks on resolved arguments: values this build does not implement, model kwargs, and rules
//! that span several arguments. Each failure names the arguments involved.

use serde_json::Value;

use crate::args::Args;
use crate::command::Command;
use crate::error::ArgsError;
use crate::model_kwargs;
use crate::spec::Support;
use crate::value::{default_json, display};

/// Runs every check; the first failure is returned.
pub(crate) fn check(args: &Args) -> Result<(), ArgsError> {
    check_support(args)?;
    model_kwargs::check(args)?;
    check_ranges(args)?;
    check_rules(args)
}

/// Refuses values this build does not implement, wherever they came from.
fn check_support(args: &Args) -> Result<(), ArgsError> {
    for (spec, value, source) in args.iter() {
        if !source.is_given() && !matches!(source, crate::args::Source::Loaded(_)) {
            continue;
        }
        let ok = match spec.support {
            Support::Any => true,
            Support::DefaultOnly => {
                *value == default_json(spec) || (is_blank(value) && is_blank(&default_json(spec)))
            }
            Support::Values(allowed) => match value {
                Value::Null => true,
                Value::Array(items) => items.iter().all(|v| supported(allowed, &display(v))),
                v => supported(allowed, &display(v)),
            },
        };
        if !ok {
            let supported = match spec.support {
                Support::Values(allowed) => allowed.iter().map(|s| s.to_string()).collect(),
                _ => vec![format!("only the default, {}", spec.default_display())],
            };
            return Err(ArgsError::NotSupported {
                name: spec.name.to_string(),
                value: display(value),
                origin: source.origin(),
                supported,
            });
        }
    }
    Ok(())
}

/// Whether `value` is among `allowed`; an entry ending in `*` admits every value with
/// that prefix (`pissa_niter_*`).
fn supported(allowed: &[&str], value: &str) -> bool {
    allowed.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => *a == value,
    })
}

/// `None`, `[]` and `{}` all mean "nothing set" (ms-swift writes `{}` for an unset dict).
fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// A numeric bound on one argument.
enum Range {
    /// `>= min`
    AtLeast(f64),
    /// `min <= v < max`
    HalfOpen(f64, f64),
    /// `min <= v <= max`
    Closed(f64, f64),
    /// `min < v <= max`
    OpenClosed(f64, f64),
}

const RANGES: &[(&str, Range)] = &[
    ("per_device_train_batch_size", Range::AtLeast(1.0)),
    ("per_device_eval_batch_size", Range::AtLeast(1.0)),
    ("gradient_accumulation_steps", Range::AtLeast(1.0)),
    ("lora_rank", Range::AtLeast(1.0)),
    ("lora_alpha", Range::AtLeast(1.0)),
    ("max_batch_size", Range::AtLeast(1.0)),
    ("num_beams", Range::AtLeast(1.0)),
    ("dataset_num_proc", Range::AtLeast(1.0)),
    ("max_length", Range::AtLeast(1.0)),
    ("max_new_tokens", Range::AtLeast(1.0)),
    ("top_k", Range::AtLeast(0.0)),
    ("top_logprobs", Range::AtLeast(0.0)),
    ("max_logprobs", Range::AtLeast(0.0)),
    ("temperature", Range::AtLeast(0.0)),
    ("repetition_penalty", Range::OpenClosed(0.0, f64::INFINITY)),
    ("top_p", Range::OpenClosed(0.0, 1.0)),
    ("learning_rate", Range::OpenClosed(0.0, f64::INFINITY)),
    ("weight_decay", Range::AtLeast(0.0)),
    // What torch.optim.AdamW itself refuses ("Invalid beta parameter at index 0").
    ("adam_beta1", Range::HalfOpen(0.0, 1.0)),
    ("adam_beta2", Range::HalfOpen(0.0, 1.0)),
    ("adam_epsilon", Range::AtLeast(0.0)),
    ("lorap_lr_ratio", Range::OpenClosed(0.0, f64::INFINITY)),
    ("max_grad_norm", Range::AtLeast(0.0)),
    ("split_dataset_ratio", Range::HalfOpen(0.0, 1.0)),
    ("lora_dropout", Range::HalfOpen(0.0, 1.0)),
    ("warmup_ratio", Range::Closed(0.0, 1.0)),
    ("freeze_parameters_ratio", Range::Closed(0.0, 1.0)),
    ("gpu_memory_utilization", Range::OpenClosed(0.0, 1.0)),
    ("num_train_epochs", Range::AtLeast(0.0)),
    ("neftune_noise_alpha", Range::AtLeast(0.0)),
    ("save_steps", Range::OpenClosed(0.0, f64::INFINITY)),
    ("eval_steps", Range::OpenClosed(0.0, f64::INFINITY)),
    ("logging_steps", Range::OpenClosed(0.0, f64::INFINITY)),
    ("port", Range::Closed(0.0, 65535.0)),
    ("server_port", Range::Closed(0.0, 65535.0)),
    ("save_total_limit", Range::AtLeast(1.0)),
    ("warmup_steps", Range::AtLeast(0.0)),
];

fn check_ranges(args: &Args) -> Result<(), ArgsError> {
    let owned = RANGES
        .iter()
        .filter(|(name, _)| args.command().args().get(name).is_some());
    for (name, range) in owned {
        let Some(v) = args.float(name) else { continue };
        let (ok, expected) = match *range {
            Range::AtLeast(min) => (v >= min, format!("a number >= {min}")),
            Range::HalfOpen(lo, hi) => (lo <= v && v < hi, format!("a number in [{lo}, {hi})")),
            Range::Closed(lo, hi) => (lo <= v && v <= hi, format!("a number in [{lo}, {hi}]")),
            Range::OpenClosed(lo, hi) if hi.is_infinite() => (lo < v, format!("a number > {lo}")),
            Range::OpenClosed(lo, hi) => (lo < v && v <= hi, format!("a number in ({lo}, {hi}]")),
        };
        if !ok {
            return Err(ArgsError::BadValue {
                name: name.to_string(),
                value: display(args.get(name)),
                expected,
                origin: args
                    .source(name)
                    .map(|s| s.origin())
                    .unwrap_or(crate::error::Origin::Internal),
            });
        }
    }
    Ok(())
}

fn conflict(message: impl Into<String>) -> Result<(), ArgsError> {
    Err(ArgsError::Conflict {
        message: message.into(),
    })
}

/// Rules between arguments, from the seed's notes.
fn check_rules(args: &Args) -> Result<(), ArgsError> {
    let cmd = args.command();
    if cmd.is_training() {
        if args.bool("streaming") && args.int("max_steps").unwrap_or(-1) <= 0 {
            return conflict(
                "--streaming true needs --max_steps: a streamed dataset's length is unknown",
            );
        }
        if args.str("template_backend") == Some("jinja") {
            return conflict("--template_backend jinja supports inference only, not training");
        }
        for (flag, dtype) in [("bf16", "bfloat16"), ("fp16", "float16")] {
            if args.is_given(flag)
                && args.bool(flag)
                && let Some(d) = args.str("torch_dtype")
                && d != dtype
            {
                return conflict(format!("--{flag} true contradicts --torch_dtype {d}"));
            }
        }
    }
    if cmd == Command::Pt && args.is_given("use_chat_template") && args.bool("use_chat_template") {
        return conflict(
            "`swift pt` always uses the generation template: drop --use_chat_template true (or use `swift sft`)",
        );
    }
    if cmd == Command::Pt && args.is_given("loss_scale") && args.str("loss_scale") != Some("all") {
        return conflict(format!(
            "`swift pt` trains on every token: --loss_scale {} is not allowed (or use `swift sft`)",
            display(args.get("loss_scale"))
        ));
    }
    for name in ["model_name", "model_author"] {
        if cmd.args().get(name).is_some() {
            let n = args.strings(name).len();
            if !args.get(name).is_null() && !(1..=2).contains(&n) {
                return conflict(format!(
                    "--{name} takes one or two names (Chinese and English), got {n}"
                ));
            }
        }
    }
    if cmd == Command::Sample {
        let range = args.strings("data_range");
        if !range.is_empty() {
            let nums: Vec<i64> = range.iter().filter_map(|s| s.parse().ok()).collect();
            match nums.as_slice() {
                [index, count] if *count >= 1 && (0..*count).contains(index) => {}
                _ => {
                    return conflict(format!(
                        "--data_range takes '<index> <count>' with 0 <= index < count, got '{}'",
                        range.join(" ")
                    ));
                }
            }
        }
    }
    Ok(())
}

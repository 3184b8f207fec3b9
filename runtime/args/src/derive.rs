//! Derived defaults: arguments whose default the seed defines by a rule over other arguments.
//! Runs after the user's values and load_args, before validation. Pure: reads and writes `Args`.

use serde_json::{Value, json};

use crate::args::{Args, Source};
use crate::command::Command;

/// The last path component of a model id, path or URI: `output/<model_suffix>` in ms-swift.
pub fn model_suffix(model: &str) -> String {
    model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_string()
}

/// A string argument, `None` when unset or not owned by the command.
fn text(args: &Args, name: &str) -> Option<String> {
    args.lookup(name)
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A boolean argument, false when unset or not owned by the command.
fn flag(args: &Args, name: &str) -> bool {
    args.lookup(name).and_then(Value::as_bool).unwrap_or(false)
}

/// An owned value, `Null` when not owned by the command.
fn value(args: &Args, name: &str) -> Value {
    args.lookup(name).cloned().unwrap_or(Value::Null)
}

/// True when the command owns `name` and it is still unset.
fn unset(args: &Args, name: &str) -> bool {
    args.lookup(name).is_some_and(Value::is_null)
}

/// Fills every derived default that is still unset.
pub(crate) fn apply(args: &mut Args) {
    let cmd = args.command();
    let mut derived: Vec<(&str, Value)> = Vec::new();
    let model = text(args, "model").map(|m| model_suffix(&m));
    let rlhf_type = text(args, "rlhf_type");

    if unset(args, "learning_rate") {
        let lr = if text(args, "train_type").as_deref() == Some("full") {
            1e-5
        } else {
            1e-4
        };
        derived.push(("learning_rate", json!(lr)));
    }
    if cmd.is_training()
        && unset(args, "output_dir")
        && let Some(m) = &model
    {
        derived.push(("output_dir", json!(format!("output/{m}"))));
    }
    if cmd == Command::Export
        && unset(args, "output_dir")
        && let Some(dir) = export_output_dir(args)
    {
        derived.push(("output_dir", json!(dir)));
    }
    if unset(args, "task_type") {
        let task = if !value(args, "num_labels").is_null() {
            "seq_cls"
        } else {
            "causal_lm"
        };
        derived.push(("task_type", json!(task)));
    }
    if unset(args, "bnb_4bit_compute_dtype") && !value(args, "torch_dtype").is_null() {
        derived.push(("bnb_4bit_compute_dtype", value(args, "torch_dtype")));
    }
    for (flag, dtype) in [("bf16", "bfloat16"), ("fp16", "float16")] {
        if unset(args, flag)
            && let Some(d) = text(args, "torch_dtype")
        {
            derived.push((flag, json!(d == dtype)));
        }
    }
    if unset(args, "lazy_tokenize") {
        // We train text-only models; ms-swift turns lazy tokenization on for multimodal ones.
        derived.push(("lazy_tokenize", json!(false)));
    }
    if unset(args, "metric") && cmd.is_training() {
        let m = if flag(args, "predict_with_generate") {
            "nlg"
        } else {
            "acc"
        };
        derived.push(("metric", json!(m)));
    }
    if unset(args, "beta") {
        let beta = match rlhf_type.as_deref() {
            Some("simpo") => 2.0,
            Some("grpo") => 0.04,
            _ => 0.1,
        };
        derived.push(("beta", json!(beta)));
    }
    if unset(args, "cosine_max_len") {
        derived.push(("cosine_max_len", value(args, "max_completion_length")));
    }
    for name in ["served_model_name", "studio_title"] {
        if unset(args, name)
            && let Some(m) = &model
        {
            derived.push((name, json!(m)));
        }
    }
    for (name, value) in derived {
        args.set(name, value, Source::Derived);
    }

    // Second pass: rules that read values derived above.
    let mut derived: Vec<(&str, Value)> = Vec::new();
    if unset(args, "metric_for_best_model") {
        let metric = match rlhf_type.as_deref() {
            Some("ppo") => None,
            Some("grpo") => Some("reward"),
            _ if flag(args, "predict_with_generate") => Some("rouge-l"),
            _ => Some("loss"),
        };
        if let Some(m) = metric {
            derived.push(("metric_for_best_model", json!(m)));
        }
    }
    if unset(args, "eval_strategy") {
        derived.push(("eval_strategy", value(args, "save_strategy")));
    }
    if unset(args, "eval_steps") {
        derived.push(("eval_steps", value(args, "save_steps")));
    }
    if let Some(out) = text(args, "output_dir") {
        if unset(args, "logging_dir") {
            derived.push(("logging_dir", json!(format!("{out}/runs"))));
        }
        if unset(args, "swanlab_exp_name") {
            derived.push(("swanlab_exp_name", json!(out)));
        }
    }
    for (name, value) in derived {
        args.set(name, value, Source::Derived);
    }

    if unset(args, "greater_is_better")
        && let Some(metric) = text(args, "metric_for_best_model")
    {
        let greater = !metric.contains("loss");
        args.set("greater_is_better", json!(greater), Source::Derived);
    }
}

/// ms-swift's export folder: `<checkpoint>-merged`, or `<model>-<method>-int<bits>`.
fn export_output_dir(args: &Args) -> Option<String> {
    let first_adapter = args
        .lookup("adapters")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(str::to_string);
    let ckpt = first_adapter.or_else(|| text(args, "model"))?;
    if flag(args, "merge_lora") {
        return Some(format!("{}-merged", ckpt.trim_end_matches('/')));
    }
    let method = text(args, "quant_method")?;
    let bits = value(args, "quant_bits").as_i64()?;
    Some(format!("{}-{method}-int{bits}", model_suffix(&ckpt)))
}

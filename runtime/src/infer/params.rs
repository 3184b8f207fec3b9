//! Generation settings from the command line, falling back to generation_config.json for
//! every argument left unset, then to transformers' built-in defaults (as ms-swift does).

use kubeswift_args::Args;

use super::engine::GenerationParams;
use super::error::{InferError, Result};
use super::sampler::SamplingConfig;
use crate::model::{GenerationConfig, Pretrained};
use crate::template::Template;

/// transformers' GenerationConfig defaults, used when neither the user nor the model says.
const HF_TOP_K: usize = 50;

/// Resolves the generation arguments of `swift infer`/`deploy`/`sample`.
pub fn generation_params(
    args: &Args,
    model: &GenerationConfig,
    stop_token_ids: Vec<u32>,
) -> Result<GenerationParams> {
    let temperature = match args.float("temperature") {
        Some(t) if t < 0.0 => return Err(arg_err("temperature", format!("{t} is negative"))),
        Some(t) => t,
        // A model that does not sample by default is greedy whatever its temperature says.
        None if model.do_sample != Some(true) => 0.0,
        None => model.temperature.unwrap_or(1.0),
    };
    let top_k = match args.int("top_k").or(model.top_k) {
        Some(k) if k < 0 => return Err(arg_err("top_k", format!("{k} is negative"))),
        Some(k) => k as usize,
        None => HF_TOP_K,
    };
    let top_p = args.float("top_p").or(model.top_p).unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(arg_err("top_p", format!("{top_p} is not in (0, 1]")));
    }
    let repetition_penalty = args
        .float("repetition_penalty")
        .or(model.repetition_penalty)
        .unwrap_or(1.0);
    if repetition_penalty <= 0.0 {
        return Err(arg_err(
            "repetition_penalty",
            format!("{repetition_penalty} must be positive"),
        ));
    }
    let max_new_tokens = match args.int("max_new_tokens").or(model.max_new_tokens) {
        Some(m) if m < 1 => {
            return Err(arg_err("max_new_tokens", format!("{m} must be at least 1")));
        }
        m => m.map(|m| m as usize),
    };
    let num_beams = match args.int("num_beams").or(model.num_beams) {
        Some(n) if n < 1 => return Err(arg_err("num_beams", format!("{n} must be at least 1"))),
        n => n.unwrap_or(1) as usize,
    };
    let top_logprobs = match args.int("top_logprobs") {
        Some(n) if n < 0 => return Err(arg_err("top_logprobs", format!("{n} is negative"))),
        n => n.unwrap_or(0) as usize,
    };
    let logprobs = args.bool("logprobs") || top_logprobs > 0;
    if logprobs && num_beams > 1 {
        return Err(arg_err(
            "logprobs",
            "is not available with beam search (--num_beams > 1)".into(),
        ));
    }
    Ok(GenerationParams {
        sampling: SamplingConfig {
            temperature,
            top_k,
            top_p,
            repetition_penalty,
        },
        max_new_tokens,
        num_beams,
        stop_words: args.strings("stop_words"),
        stop_token_ids,
        logprobs,
        top_logprobs,
        seed: args.int("seed").unwrap_or(42) as u64,
        exact_seed: false,
    })
}

/// The generation settings of a model served through `template`: the arguments over
/// generation_config.json, stopping at the template's end-of-turn tokens and the model's eos
/// (removed from the output) and at the template's multi-token stop words (kept).
pub fn for_model(
    args: &Args,
    pretrained: &Pretrained,
    template: &Template,
) -> Result<GenerationParams> {
    let mut stop = template.stop_token_ids();
    stop.extend(pretrained.eos_token_ids());
    stop.sort_unstable();
    stop.dedup();
    let mut params = generation_params(args, &pretrained.generation_config, stop)?;
    for word in template.stop_words() {
        if template.tokenizer().token_to_id(&word).is_none() && !params.stop_words.contains(&word) {
            params.stop_words.push(word);
        }
    }
    Ok(params)
}

fn arg_err(arg: &'static str, message: String) -> InferError {
    InferError::Argument { arg, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeswift_args::cli::{Cli, parse};

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["swift", "infer", "--model", "m"];
        argv.extend_from_slice(extra);
        match parse(argv.iter().map(std::ffi::OsString::from)).unwrap() {
            Cli::Run { resolved, .. } => resolved.args,
            Cli::Exit { text, .. } => panic!("{text}"),
        }
    }

    fn config(json: &str) -> GenerationConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn unset_arguments_come_from_generation_config() {
        let g = config(
            r#"{"do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}"#,
        );
        let p = generation_params(&args(&[]), &g, vec![2]).unwrap();
        assert_eq!(
            p.sampling,
            SamplingConfig {
                temperature: 0.7,
                top_k: 20,
                top_p: 0.8,
                repetition_penalty: 1.05
            }
        );
        assert_eq!(p.stop_token_ids, vec![2]);
        assert_eq!(p.seed, 42);
        let p = generation_params(
            &args(&["--temperature", "0", "--top_k", "5", "--seed", "7"]),
            &g,
            vec![],
        )
        .unwrap();
        assert!(p.sampling.is_greedy());
        assert_eq!((p.sampling.top_k, p.seed), (5, 7));
    }

    #[test]
    fn a_model_that_does_not_sample_is_greedy_unless_asked() {
        let g = config(r#"{"temperature": 0.6}"#);
        assert!(
            generation_params(&args(&[]), &g, vec![])
                .unwrap()
                .sampling
                .is_greedy()
        );
        let p = generation_params(&args(&["--temperature", "0.6"]), &g, vec![]).unwrap();
        assert_eq!(p.sampling.temperature, 0.6);
        assert_eq!(p.sampling.top_k, HF_TOP_K);
    }

    #[test]
    fn bad_values_name_their_argument() {
        let g = GenerationConfig::default();
        let e = generation_params(&args(&[]), &config(r#"{"top_p": 1.5}"#), vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("top_p"), "{e}");
        // The parser checks ranges of given arguments; generation_config.json is checked here.
        let e = generation_params(&args(&[]), &config(r#"{"max_new_tokens": 0}"#), vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_new_tokens"), "{e}");
        let e = generation_params(
            &args(&["--num_beams", "2", "--logprobs", "true"]),
            &g,
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--logprobs"), "{e}");
    }
}

//! `swift infer`: interactive chat on a terminal, or batch inference over a dataset into
//! ms-swift's result jsonl. A thin shell over the engine; decisions live in `params`,
//! `dataset`, `result` and `metric`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::DType;
use kubeswift_args::Args;

use super::chat_template::{ChatTemplate, TokenizerChatTemplate};
use super::dataset::{self, ChatMessage, Row};
use super::engine::{Engine, Event, GenerationParams, Request};
use super::error::InferError;
use super::params::generation_params;
use super::{metric, result};
use crate::model::pretrained::dtype_arg;
use crate::model::{LoadOptions, Pretrained, PretrainedOptions};

/// Runs `swift infer` with resolved arguments.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let Some(model_path) = args.str("model") else {
        bail!(
            "--model is required: a local model folder (config.json, safetensors, tokenizer.json)"
        );
    };
    if !args.strings("adapters").is_empty() {
        bail!("--adapters is not supported yet: adapters arrive with training (LoRA)");
    }
    let pretrained = load_model(args, Path::new(model_path))?;
    let template =
        TokenizerChatTemplate::new(pretrained.tokenizer.clone(), &pretrained.tokenizer_config)?;
    let mut stop = template.stop_token_ids();
    stop.extend(pretrained.eos_token_ids());
    stop.sort_unstable();
    stop.dedup();
    let params = generation_params(args, &pretrained.generation_config, stop)?;
    let session = Session {
        args,
        pretrained: &pretrained,
        template: &template,
        params,
    };
    if args.strings("val_dataset").is_empty() && args.strings("dataset").is_empty() {
        session.chat(&mut std::io::stdin().lock(), &mut std::io::stdout())
    } else {
        session.infer_dataset()
    }
}

/// `--torch_dtype`, else float32: ms-swift's default on CPU, where half-precision matmul is
/// slow in torch (config.json's dtype applies on GPU).
fn load_model(args: &Args, folder: &Path) -> anyhow::Result<Pretrained> {
    let dtype = dtype_arg(args.str("torch_dtype"))?.unwrap_or(DType::F32);
    let opts = PretrainedOptions {
        model_type: args.str("model_type").map(String::from),
        load: LoadOptions {
            dtype: Some(dtype),
            ..LoadOptions::default()
        },
    };
    Ok(Pretrained::load(folder, &opts)?)
}

struct Session<'a> {
    args: &'a Args,
    pretrained: &'a Pretrained,
    template: &'a dyn ChatTemplate,
    params: GenerationParams,
}

impl Session<'_> {
    fn engine(&self) -> Engine<'_> {
        let batch = self.args.int("max_batch_size").unwrap_or(1).max(1) as usize;
        Engine::new(&self.pretrained.model, &self.pretrained.tokenizer, batch)
    }

    /// `--system` (text, or a .txt file) prepended when the messages have no system turn.
    fn with_system(&self, mut messages: Vec<ChatMessage>) -> anyhow::Result<Vec<ChatMessage>> {
        if let Some(system) = self.args.str("system")
            && messages.first().is_none_or(|m| m.role != "system")
        {
            let text = if system.ends_with(".txt") && Path::new(system).is_file() {
                std::fs::read_to_string(system).with_context(|| format!("--system {system}"))?
            } else {
                system.to_string()
            };
            messages.insert(0, ChatMessage::new("system", text));
        }
        Ok(messages)
    }

    fn request(&self, messages: &[ChatMessage]) -> anyhow::Result<Request> {
        let prompt = self
            .template
            .encode_prompt(&self.with_system(messages.to_vec())?)?;
        if let Some(max) = self.args.int("max_length")
            && prompt.len() > max.max(0) as usize
        {
            return Err(InferError::PromptTooLong {
                prompt_tokens: prompt.len(),
                limit: max as usize,
                what: "--max_length".into(),
            }
            .into());
        }
        Ok(Request {
            prompt,
            params: self.params.clone(),
        })
    }

    /// Multi-turn chat on a terminal: `clear` forgets the history, `exit`/`quit` leave,
    /// `reset-system` takes the next line as the system prompt.
    fn chat(&self, input: &mut dyn BufRead, out: &mut dyn Write) -> anyhow::Result<()> {
        writeln!(
            out,
            "Input `exit` or `quit` to leave, `clear` to clear the history, `reset-system` to set the system prompt."
        )?;
        let mut engine = self.engine();
        let mut history: Vec<ChatMessage> = Vec::new();
        let mut system: Option<String> = None;
        let mut reading_system = false;
        let result_path = self.args.str("result_path").map(PathBuf::from);
        loop {
            write!(out, "{}", if reading_system { "<<<[S] " } else { "<<< " })?;
            out.flush()?;
            let mut line = String::new();
            if input.read_line(&mut line)? == 0 {
                break;
            }
            let query = line.trim_end_matches(['\n', '\r']).to_string();
            if reading_system {
                system = Some(query);
                reading_system = false;
                history.clear();
                continue;
            }
            match query.trim().to_lowercase().as_str() {
                "exit" | "quit" => break,
                "clear" => {
                    history.clear();
                    continue;
                }
                "reset-system" => {
                    reading_system = true;
                    continue;
                }
                "" => continue,
                _ => {}
            }
            history.push(ChatMessage::new("user", query));
            let mut messages = history.clone();
            if let Some(s) = &system {
                messages.insert(0, ChatMessage::new("system", s.clone()));
            }
            let request = match self.request(&messages) {
                Ok(r) => r,
                Err(e) => {
                    writeln!(out, "error: {e:#}")?;
                    history.pop();
                    continue;
                }
            };
            let mut write_err = None;
            let output = engine
                .generate(vec![request], |event| {
                    if let Event::Delta { text, .. } = event
                        && let Err(e) = write!(out, "{text}").and_then(|_| out.flush())
                    {
                        write_err = Some(e);
                    }
                })?
                .remove(0);
            if let Some(e) = write_err {
                return Err(e.into());
            }
            writeln!(out)?;
            history.push(ChatMessage::new("assistant", output.text.clone()));
            if let Some(path) = &result_path {
                let mut messages = history.clone();
                if let Some(s) = &system {
                    messages.insert(0, ChatMessage::new("system", s.clone()));
                }
                result::append(path, &[result::chat_record(&messages, &output.text)])?;
            }
        }
        Ok(())
    }

    fn rows(&self) -> anyhow::Result<Vec<Row>> {
        let seed = self.args.int("data_seed").unwrap_or(42) as u64;
        let val = self.args.strings("val_dataset");
        let rows = if !val.is_empty() {
            dataset::load(&val)?
        } else {
            let ratio = self.args.float("split_dataset_ratio").unwrap_or(0.01);
            dataset::split_validation(dataset::load(&self.args.strings("dataset"))?, ratio, seed)
        };
        let n = self
            .args
            .int("val_dataset_sample")
            .map(|n| n.max(0) as usize);
        Ok(dataset::sample(rows, n, seed))
    }

    /// Batch inference over the validation rows into `--result_path` (printed).
    fn infer_dataset(&self) -> anyhow::Result<()> {
        let mut rows = self.rows()?;
        let labels: Vec<Option<String>> = rows.iter_mut().map(Row::take_labels).collect();
        let requests: Vec<Request> = rows
            .iter()
            .map(|r| self.request(&r.messages))
            .collect::<anyhow::Result<_>>()?;
        let path = result::default_path(
            self.args.str("result_path"),
            Path::new(self.args.str("model").unwrap_or("model")),
        );
        let mut engine = self.engine();
        let outputs = if self.args.bool("stream") {
            // One row at a time, printed as it streams, as ms-swift does with --stream.
            let mut outputs = Vec::with_capacity(requests.len());
            for (i, request) in requests.into_iter().enumerate() {
                println!(
                    "[QUERY] {}",
                    rows[i].messages.last().map_or("", |m| m.content.as_str())
                );
                if let Some(l) = &labels[i] {
                    println!("[LABELS] {l}");
                }
                print!("[RESPONSE] ");
                let out = engine
                    .generate(vec![request], |e| {
                        if let Event::Delta { text, .. } = e {
                            print!("{text}");
                            let _ = std::io::stdout().flush();
                        }
                    })?
                    .remove(0);
                println!();
                outputs.push(out);
            }
            outputs
        } else {
            let bar = indicatif::ProgressBar::new(requests.len() as u64);
            let outs = engine.generate(requests, |e| {
                if matches!(e, Event::Finished(_)) {
                    bar.inc(1);
                }
            })?;
            bar.finish_and_clear();
            outs
        };
        let records: Vec<_> = rows
            .iter()
            .zip(&outputs)
            .zip(&labels)
            .map(|((row, out), label)| {
                result::dataset_record(
                    &row.messages,
                    out,
                    label.as_deref(),
                    &self.pretrained.tokenizer,
                )
            })
            .collect();
        result::append(&path, &records)?;
        println!(
            "The inference results have been saved to result_path: `{}`.",
            path.display()
        );
        if let Some(m) = self.args.str("metric") {
            let pairs: Vec<(String, Option<String>)> =
                outputs.iter().map(|o| o.text.clone()).zip(labels).collect();
            let scores = if m == "acc" {
                metric::accuracy(&pairs)
            } else {
                metric::rouge(&pairs)
            };
            println!("{scores}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-Qwen2.5")
    }

    fn args(extra: &[&str]) -> Args {
        let model = fixture().display().to_string();
        let mut argv = vec!["swift".to_string(), "infer".into(), "--model".into(), model];
        argv.extend(extra.iter().map(|s| s.to_string()));
        match kubeswift_args::cli::parse(argv.into_iter().map(std::ffi::OsString::from)).unwrap() {
            kubeswift_args::cli::Cli::Run { resolved, .. } => resolved.args,
            kubeswift_args::cli::Cli::Exit { text, .. } => panic!("{text}"),
        }
    }

    #[test]
    fn chat_keeps_history_until_cleared_and_quits() {
        let args = args(&["--max_new_tokens", "3", "--temperature", "0"]);
        let pretrained = load_model(&args, &fixture()).unwrap();
        let template =
            TokenizerChatTemplate::new(pretrained.tokenizer.clone(), &pretrained.tokenizer_config)
                .unwrap();
        let params = generation_params(
            &args,
            &pretrained.generation_config,
            template.stop_token_ids(),
        )
        .unwrap();
        let session = Session {
            args: &args,
            pretrained: &pretrained,
            template: &template,
            params,
        };
        let mut out = Vec::new();
        let mut input: &[u8] = b"hello\nagain\nclear\nhello\nquit\nnever read\n";
        session.chat(&mut input, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        // Four prompts before quitting ("hello", "again", "clear" is a command, "hello").
        assert_eq!(text.matches("<<< ").count(), 5, "{text}");
        let answers: Vec<&str> = text.split("<<< ").skip(1).collect();
        // The same first message, asked on a fresh history, gets the same greedy answer.
        assert_eq!(answers[0], answers[3]);
    }
}

//! `swift infer`: interactive chat on a terminal, or batch inference over a dataset into
//! ms-swift's result jsonl. A thin shell over the engine; decisions live in `params`,
//! `result`, `metric`, the template and the data pipeline.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::DType;
use kubeswift_args::Args;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;

use super::engine::{Engine, EngineOptions, Event, GenerationParams, Output, Request};
use super::error::InferError;
use super::{metric, result};
use crate::data::{DataOptions, RowOrigin, sampling};
use crate::dist::{DataParallel, WorldInfo};
use crate::model::pretrained::dtype_arg;
use crate::model::{LoadOptions, Pretrained, PretrainedOptions};
use crate::storage::Cache;
use crate::storage::localize::{localize_args_blocking, publish_file, staging_path};
use crate::storage::location::is_remote_uri;
use crate::template::{Message, Role, Template};
use crate::tuner::lora::LoraAdapters;

/// Runs `swift infer` with resolved arguments.
pub fn run(user_args: &Args) -> anyhow::Result<()> {
    // Models, adapters and datasets in a bucket are read from the local cache.
    let local_args = localize_args_blocking(user_args)?;
    let args = &local_args;
    let Some(model_path) = args.str("model") else {
        bail!(
            "--model is required: a local model folder (config.json, safetensors, tokenizer.json)"
        );
    };
    // A launched worker meets the other ranks before loading anything (fails fast on a
    // wrong address); one process gets a single-rank handle.
    let dataset_mode =
        !(args.strings("val_dataset").is_empty() && args.strings("dataset").is_empty());
    let dist = if dataset_mode {
        DataParallel::from_args(args)?
    } else {
        DataParallel::single()
    };
    let mut pretrained = load_model(args, Path::new(model_path))?;
    for adapter in args.strings("adapters") {
        LoraAdapters::load(&mut pretrained.model, Path::new(&adapter), false)
            .with_context(|| format!("--adapters {adapter}"))?;
        tracing::info!(adapter, "LoRA adapter loaded");
    }
    let template = Template::from_args(
        args,
        pretrained.model_type.name,
        pretrained.tokenizer.clone(),
        &pretrained.tokenizer_config,
    )?;
    let session = Session::new(args, &pretrained, &template)?;
    if !dataset_mode {
        if WorldInfo::from_env(|k| std::env::var(k).ok())?.is_some_and(|w| w.world_size > 1) {
            bail!(
                "interactive `swift infer` runs in one process: unset NPROC_PER_NODE/NNODES, or give --val_dataset to split a dataset across workers"
            );
        }
        session.chat(&mut std::io::stdin().lock(), &mut std::io::stdout())
    } else {
        session.infer_dataset(dist)
    }
}

/// `--torch_dtype`, else float32: ms-swift's default on CPU, where half-precision matmul is
/// slow in torch (config.json's dtype applies on GPU).
pub fn load_model(args: &Args, folder: &Path) -> anyhow::Result<Pretrained> {
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
    template: &'a Template,
    params: GenerationParams,
}

impl<'a> Session<'a> {
    fn new(
        args: &'a Args,
        pretrained: &'a Pretrained,
        template: &'a Template,
    ) -> anyhow::Result<Self> {
        let params = super::params::for_model(args, pretrained, template)?;
        Ok(Session {
            args,
            pretrained,
            template,
            params,
        })
    }

    fn engine(&self) -> Engine<'_> {
        let batch = self.args.int("max_batch_size").unwrap_or(1).max(1) as usize;
        // `--max_model_len` caps the context as `swift deploy` does: a longer prompt is an
        // error naming it instead of the argument being ignored.
        let options = EngineOptions {
            max_model_len: self
                .args
                .int("max_model_len")
                .filter(|&m| m > 0)
                .map(|m| m as usize),
            ..EngineOptions::new(batch)
        };
        Engine::with_options(&self.pretrained.model, &self.pretrained.tokenizer, options)
    }

    fn request(&self, messages: &[Message]) -> anyhow::Result<Request> {
        let prompt = self.template.encode_prompt(messages)?;
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

    /// Multi-turn chat on a terminal, as ms-swift's `infer_cli`: `clear` forgets the
    /// history, `exit`/`quit` leave, `reset-system` takes the next line as the system prompt
    /// (`default-system` restores the template's).
    fn chat(&self, input: &mut dyn BufRead, out: &mut dyn Write) -> anyhow::Result<()> {
        writeln!(
            out,
            "Input `exit` or `quit` to leave, `clear` to clear the history, `reset-system` to set the system prompt."
        )?;
        let mut engine = self.engine();
        let mut history: Vec<Message> = Vec::new();
        let mut system: Option<String> = None;
        let mut reading_system = false;
        let results = self
            .args
            .str("result_path")
            .map(ResultTarget::new)
            .transpose()?;
        let with_system = |history: &[Message], system: &Option<String>| -> Vec<Message> {
            let mut messages = history.to_vec();
            if let Some(s) = system {
                messages.insert(0, message(Role::System, s));
            }
            messages
        };
        loop {
            write!(out, "{}", if reading_system { "<<<[S] " } else { "<<< " })?;
            out.flush()?;
            let mut line = String::new();
            if input.read_line(&mut line)? == 0 {
                break;
            }
            let query = line.trim_end_matches(['\n', '\r']).to_string();
            if reading_system {
                system = (query != "default-system").then_some(query);
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
            history.push(message(Role::User, &query));
            let request = match self.request(&with_system(&history, &system)) {
                Ok(r) => r,
                Err(e) => {
                    writeln!(out, "error: {}", crate::commands::error_text(&e))?;
                    history.pop();
                    continue;
                }
            };
            let mut write_err = None;
            let mut streamed = false;
            let output = engine
                .generate(vec![request], |event| {
                    if let Event::Delta { text, .. } = event {
                        streamed = true;
                        if let Err(e) = write!(out, "{text}").and_then(|_| out.flush()) {
                            write_err = Some(e);
                        }
                    }
                })?
                .remove(0);
            if let Some(e) = write_err {
                return Err(e.into());
            }
            // Beam search streams nothing (the best beam is known only at the end).
            if !streamed {
                write!(out, "{}", output.text)?;
            }
            writeln!(out)?;
            history.push(message(Role::Assistant, &output.text));
            if let Some(results) = &results {
                result::append(
                    &results.local,
                    &[result::chat_record(
                        &with_system(&history, &system),
                        &output.text,
                    )],
                )?;
                // Published after every turn: an interactive session ends with Ctrl-C as
                // often as with `exit`.
                results.publish()?;
            }
        }
        Ok(())
    }

    /// `--result_path`, or ms-swift's default under the model's result folder.
    fn result_target(&self) -> anyhow::Result<ResultTarget> {
        let model = Path::new(self.args.str("model").unwrap_or("model"));
        match self.args.str("result_path") {
            Some(p) => ResultTarget::new(p),
            None => Ok(ResultTarget::local(result::default_path(None, model))),
        }
    }

    /// The validation conversations: `--val_dataset`, or the split of `--dataset`, then
    /// `--val_dataset_sample` rows of them.
    /// Each with the file and line it came from, for errors.
    fn conversations(&self) -> anyhow::Result<Vec<(RowOrigin, Vec<Message>)>> {
        let model_len = self.pretrained.model.config.max_position_embeddings;
        let opts = DataOptions::from_args(self.args, Some(model_len))?;
        let loaded = crate::data::load(&opts)?;
        let rows: Vec<(RowOrigin, Vec<Message>)> = loaded
            .val
            .into_iter()
            .map(|r| (r.origin, r.sample.messages))
            .collect();
        if rows.is_empty() {
            bail!(
                "no validation rows: give --val_dataset, or --dataset with --split_dataset_ratio > 0"
            );
        }
        Ok(match self.args.int("val_dataset_sample") {
            Some(n) => {
                let mut rng = StdRng::seed_from_u64(opts.data_seed);
                sampling::sample_indices(rows.len(), n.max(0) as usize, &mut rng)
                    .into_iter()
                    .map(|i| rows[i].clone())
                    .collect()
            }
            None => rows,
        })
    }

    /// Batch inference over the validation rows into `--result_path` (printed).
    fn infer_dataset(&self, mut dist: DataParallel) -> anyhow::Result<()> {
        let (origins, mut all_rows): (Vec<RowOrigin>, Vec<Vec<Message>>) =
            self.conversations()?.into_iter().unzip();
        // ms-swift's InferRequest.remove_response: a final assistant turn is the label.
        let all_labels: Vec<Option<String>> = all_rows
            .iter_mut()
            .map(|m| match m.last() {
                Some(last) if last.role == Role::Assistant => m.pop().map(|m| m.content),
                _ => None,
            })
            .collect();
        // Several workers (NPROC_PER_NODE/NNODES): each answers a contiguous share of the
        // rows and rank 0 joins the shares in rank order, so the result file keeps the
        // dataset's order (ms-swift's multi-process inference). One process: every row.
        let indices: Vec<usize> = (0..all_rows.len()).collect();
        let mine = dist.my_rows(&indices).to_vec();
        let rows: Vec<Vec<Message>> = mine.iter().map(|&i| all_rows[i].clone()).collect();
        let labels: Vec<Option<String>> = mine.iter().map(|&i| all_labels[i].clone()).collect();
        let requests: Vec<Request> = rows
            .iter()
            .zip(&mine)
            .map(|(m, &i)| self.request(m).with_context(|| origins[i].to_string()))
            .collect::<anyhow::Result<_>>()?;
        // The results file is opened before any generation, so a bad --result_path fails
        // in a second rather than after the whole dataset; one process appends each row as
        // soon as it and every row before it are done (ms-swift writes batch by batch), so
        // an interrupted run keeps what it answered. Several workers join at the end.
        let results = dist.is_main().then(|| self.result_target()).transpose()?;
        let mut writer = match (&results, dist.world_size()) {
            (Some(target), 1) => Some(OrderedWriter::open(&target.local)?),
            (Some(target), _) => {
                result::append(&target.local, &[])
                    .with_context(|| format!("--result_path {}", target.shown()))?;
                None
            }
            (None, _) => None,
        };
        let tokenizer = &self.pretrained.tokenizer;
        let record = |i: usize, out: &Output| {
            result::dataset_record(&rows[i], out, labels[i].as_deref(), tokenizer)
        };
        let mut engine = self.engine();
        let outputs = if self.args.bool("stream") {
            // One row at a time, printed as it streams, as ms-swift does with --stream.
            let mut outputs = Vec::with_capacity(requests.len());
            for (i, request) in requests.into_iter().enumerate() {
                println!(
                    "[QUERY] {}",
                    rows[i].last().map_or("", |m| m.content.as_str())
                );
                if let Some(l) = &labels[i] {
                    println!("[LABELS] {l}");
                }
                print!("[RESPONSE] ");
                let mut streamed = false;
                let out = engine
                    .generate(vec![request], |e| {
                        if let Event::Delta { text, .. } = e {
                            streamed = true;
                            print!("{text}");
                            let _ = std::io::stdout().flush();
                        }
                    })?
                    .remove(0);
                // Beam search streams nothing (the best beam is known only at the end).
                if !streamed {
                    print!("{}", out.text);
                }
                println!();
                if let Some(w) = &mut writer {
                    w.finished(i, record(i, &out))?;
                }
                outputs.push(out);
            }
            outputs
        } else {
            let bar = indicatif::ProgressBar::new(requests.len() as u64);
            let mut write_err = None;
            let outs = engine.generate_indexed(requests, |e, index| {
                if let (Event::Finished(out), Some(i)) = (e, index) {
                    bar.inc(1);
                    if let Some(w) = &mut writer
                        && write_err.is_none()
                        && let Err(e) = w.finished(i, record(i, out))
                    {
                        write_err = Some(e);
                    }
                }
            })?;
            bar.finish_and_clear();
            if let Some(e) = write_err {
                return Err(e);
            }
            outs
        };
        let records: Vec<_> = outputs
            .iter()
            .enumerate()
            .map(|(i, out)| record(i, out))
            .collect();
        let share: String = records.iter().map(|r| format!("{r}\n")).collect();
        let gathered = dist.gather("infer-results", share)?;
        dist.finish();
        let (Some(shares), Some(results)) = (gathered, results) else {
            return Ok(()); // not rank 0: rank 0 writes the merged results
        };
        let records: Vec<Value> = shares
            .iter()
            .flat_map(|s| s.lines())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("merging the workers' results")?;
        if writer.is_none() {
            result::append(&results.local, &records)
                .with_context(|| "writing the inference results")?;
        }
        results.publish()?;
        println!(
            "The inference results have been saved to result_path: `{}`.",
            results.shown()
        );
        if let Some(m) = self.args.str("metric") {
            let text = |v: &Value| v.as_str().map(String::from);
            let pairs: Vec<(String, Option<String>)> = records
                .iter()
                .map(|r| (text(&r["response"]).unwrap_or_default(), text(&r["labels"])))
                .collect();
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

/// Appends dataset results in the rows' order as they finish (in any order): a finished
/// row waits until every row before it is written.
struct OrderedWriter {
    path: PathBuf,
    next: usize,
    waiting: std::collections::BTreeMap<usize, Value>,
    /// The file did not exist before: a run that ends before its first row (a prompt
    /// refused, an interrupt) removes it again rather than leave an empty file behind.
    created: bool,
}

impl OrderedWriter {
    /// Creates (or opens for appending) the file, so a path that cannot be written fails
    /// before any generation.
    fn open(path: &Path) -> anyhow::Result<OrderedWriter> {
        let created = !path.exists();
        result::append(path, &[]).with_context(|| "opening the inference results file")?;
        Ok(OrderedWriter {
            path: path.to_path_buf(),
            next: 0,
            waiting: Default::default(),
            created,
        })
    }

    /// Row `index` is done: writes it and every waiting row that now follows in order.
    fn finished(&mut self, index: usize, record: Value) -> anyhow::Result<()> {
        self.waiting.insert(index, record);
        let mut ready = Vec::new();
        while let Some(r) = self.waiting.remove(&self.next) {
            ready.push(r);
            self.next += 1;
        }
        if !ready.is_empty() {
            result::append(&self.path, &ready).with_context(|| "writing the inference results")?;
        }
        Ok(())
    }
}

impl Drop for OrderedWriter {
    fn drop(&mut self) {
        if self.created && self.next == 0 {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn message(role: Role, content: &str) -> Message {
    Message {
        role,
        content: content.to_string(),
        loss: None,
    }
}

/// Where results go: the local file rows are appended to and, for a `--result_path` in a
/// bucket, the URI that file is uploaded to (a staging copy in the cache holds this run's
/// rows only, so an existing object is replaced, not appended to).
struct ResultTarget {
    local: PathBuf,
    remote: Option<String>,
}

impl ResultTarget {
    fn new(path: &str) -> anyhow::Result<ResultTarget> {
        if !is_remote_uri(path) {
            return Ok(Self::local(PathBuf::from(path)));
        }
        let local = staging_path(path, &Cache::from_env())
            .with_context(|| format!("--result_path {path}"))?;
        match std::fs::remove_file(&local) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("clearing {}", local.display())),
        }
        Ok(ResultTarget {
            local,
            remote: Some(path.to_string()),
        })
    }

    fn local(path: PathBuf) -> ResultTarget {
        ResultTarget {
            local: path,
            remote: None,
        }
    }

    /// Uploads the local file when the target is in a bucket.
    fn publish(&self) -> anyhow::Result<()> {
        let Some(uri) = &self.remote else {
            return Ok(());
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the upload runtime")?;
        rt.block_on(publish_file(&self.local, uri))
            .with_context(|| format!("--result_path {uri}"))
    }

    /// What the user named.
    fn shown(&self) -> String {
        self.remote
            .clone()
            .unwrap_or_else(|| self.local.display().to_string())
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

    /// Rows finishing out of order reach the file in the rows' order, each as soon as
    /// every row before it is written; a path that cannot be a file fails at open.
    #[test]
    fn results_are_appended_in_row_order_as_they_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/r.jsonl");
        let mut w = OrderedWriter::open(&path).unwrap();
        let lines = || -> Vec<Value> {
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        assert!(lines().is_empty());
        drop(OrderedWriter::open(&dir.path().join("unused.jsonl")).unwrap());
        assert!(
            !dir.path().join("unused.jsonl").exists(),
            "nothing written, nothing left"
        );
        w.finished(2, serde_json::json!({"row": 2})).unwrap();
        w.finished(1, serde_json::json!({"row": 1})).unwrap();
        assert!(lines().is_empty(), "row 0 is not done yet");
        w.finished(0, serde_json::json!({"row": 0})).unwrap();
        assert_eq!(lines().len(), 3);
        w.finished(3, serde_json::json!({"row": 3})).unwrap();
        let rows: Vec<i64> = lines().iter().map(|v| v["row"].as_i64().unwrap()).collect();
        assert_eq!(rows, [0, 1, 2, 3]);
        let e = OrderedWriter::open(dir.path()).err().unwrap();
        assert!(format!("{e:#}").contains("results file"), "{e:#}");
    }

    #[test]
    fn chat_keeps_history_until_cleared_and_quits() {
        let args = args(&["--max_new_tokens", "3", "--temperature", "0"]);
        let pretrained = load_model(&args, &fixture()).unwrap();
        let template = Template::from_args(
            &args,
            pretrained.model_type.name,
            pretrained.tokenizer.clone(),
            &pretrained.tokenizer_config,
        )
        .unwrap();
        let session = Session::new(&args, &pretrained, &template).unwrap();
        let mut out = Vec::new();
        let mut input: &[u8] = b"hello\nagain\nclear\nhello\nquit\nnever read\n";
        session.chat(&mut input, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        // Five prompts shown: hello, again, clear (a command), hello, quit.
        assert_eq!(text.matches("<<< ").count(), 5, "{text}");
        let answers: Vec<&str> = text.split("<<< ").skip(1).collect();
        // The same first message on a fresh history gets the same greedy answer.
        assert_eq!(answers[0], answers[3]);
    }
}

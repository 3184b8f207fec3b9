//! The data pipeline end to end: files of every format through preprocessing, sampling,
//! splitting, encoding, truncation, packing, streaming and batching, and the bad inputs
//! the issue lists.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kubeswift_args::{Command, Given, GivenValue, Origin, resolve};
use kubeswift_runtime::data::{
    self, Collator, DataError, DataOptions, DatasetSpec, PaddingSide, Position, RowError, Shard,
    TrainData, TrainRow, TrainStream, Truncation,
};
use kubeswift_runtime::template::{IGNORE_INDEX, LossScale, Role, Template, TemplateOptions};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

fn qwen() -> Arc<Template> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates/chatml");
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    Arc::new(Template::new(&TemplateOptions::new("qwen"), tokenizer, &config).unwrap())
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, content).unwrap();
    path
}

fn jsonl(rows: &[Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

fn qa(i: usize) -> Value {
    json!({"query": format!("question {i}"), "response": format!("answer {i}")})
}

fn opts(specs: &[&str]) -> DataOptions {
    DataOptions {
        dataset: specs
            .iter()
            .map(|s| DatasetSpec::parse(s).unwrap())
            .collect(),
        ..DataOptions::default()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_format_in_a_folder_becomes_conversations() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.jsonl",
        &jsonl(&[
            json!({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
            json!({"system": "S2", "query": "q", "response": "r", "history": [["q0", "r0"]]}),
        ]),
    );
    write(
        dir.path(),
        "b.json",
        &json!([
            {"instruction": "Do", "input": "it", "output": "done"},
            {"conversation": [{"human": "h", "assistant": "a"}]},
        ])
        .to_string(),
    );
    write(dir.path(), "sub/c.csv", "question,answer\nwhat?,that\n");
    write(dir.path(), "sub/ignored.md", "not data");
    let loaded = data::load(&opts(&[path_str(dir.path())])).unwrap();
    let roles: Vec<Vec<Role>> = loaded
        .train
        .iter()
        .map(|r| r.sample.messages.iter().map(|m| m.role).collect())
        .collect();
    assert_eq!(loaded.train.len(), 5);
    assert_eq!(roles[0], [Role::System, Role::User, Role::Assistant]);
    assert_eq!(
        roles[1],
        [
            Role::System,
            Role::User,
            Role::Assistant,
            Role::User,
            Role::Assistant
        ]
    );
    assert_eq!(loaded.train[2].sample.messages[0].content, "Do\nit");
    assert_eq!(loaded.train[4].sample.messages[1].content, "that");
    assert_eq!(loaded.drops.count, 0);
}

#[test]
fn bad_rows_are_counted_or_stop_loading_under_strict() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "d.jsonl",
        &format!(
            "{}\n{{broken json\n{}\n{}\n",
            qa(1),
            json!({"messages": [{"content": "no role"}, {"role": "assistant", "content": "x"}]}),
            qa(2)
        ),
    );
    let loaded = data::load(&opts(&[path_str(&file)])).unwrap();
    assert_eq!(loaded.train.len(), 2);
    assert_eq!(loaded.drops.count, 2);
    let (origin, error) = &loaded.drops.examples[0];
    assert_eq!(origin.position, Position::Line(2));
    assert!(matches!(error, RowError::Json(_)));
    assert!(loaded.drops.examples[1].1.to_string().contains("no 'role'"));

    let strict = DataOptions {
        strict: true,
        ..opts(&[path_str(&file)])
    };
    let err = data::load(&strict).unwrap_err().to_string();
    assert!(err.contains("d.jsonl:2"), "names file and line: {err}");
}

#[test]
fn an_empty_dataset_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.jsonl", "\n\n");
    let err = data::load(&opts(&[path_str(&empty)])).unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }), "{err}");
    assert!(err.to_string().contains("empty.jsonl"), "{err}");
    let bad_only = write(dir.path(), "bad.jsonl", "nope\n");
    let err = data::load(&opts(&[path_str(&bad_only)]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 bad rows dropped"), "{err}");
}

#[test]
fn bad_specs_columns_and_file_types_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "d.jsonl", &jsonl(&[qa(1)]));
    let err = DatasetSpec::parse(&format!("{}#0", file.display()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("#0"), "{err}");

    let mut o = opts(&[path_str(&file)]);
    o.preprocess.columns = vec![("prompt_text".into(), "query".into())];
    let err = data::load(&o).unwrap_err().to_string();
    assert!(
        err.contains("--columns") && err.contains("'prompt_text'"),
        "{err}"
    );

    let parquet = write(dir.path(), "d.parquet", "PAR1");
    let err = data::load(&opts(&[path_str(&parquet)]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("d.parquet") && err.contains("unsupported file type"),
        "{err}"
    );

    let err = data::load(&opts(&["AI-ModelScope/alpaca-gpt4-data-en"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such file or folder"), "{err}");
}

#[test]
fn columns_remap_user_fields() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "d.jsonl",
        &jsonl(&[json!({"Q": "hi", "A": "yo"})]),
    );
    let mut o = opts(&[path_str(&file)]);
    o.preprocess.columns = vec![
        ("q".into(), "query".into()),
        ("a".into(), "response".into()),
    ];
    let loaded = data::load(&o).unwrap();
    let m = &loaded.train[0].sample.messages;
    assert_eq!((m[0].content.as_str(), m[1].content.as_str()), ("hi", "yo"));

    // A misspelt column that leaves every row unreadable is named, not reported as
    // "no usable rows".
    o.preprocess.columns = vec![
        ("qq".into(), "query".into()),
        ("answr".into(), "response".into()),
    ];
    let e = data::load(&o).unwrap_err().to_string();
    assert!(
        e.contains("--columns") && e.contains("'qq', 'answr'"),
        "{e}"
    );
}

#[test]
fn sampling_repeats_above_the_size_and_split_writes_val_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Value> = (0..10).map(qa).collect();
    let file = write(dir.path(), "d.jsonl", &jsonl(&rows));
    let loaded = data::load(&opts(&[&format!("{}#25", file.display())])).unwrap();
    assert_eq!(loaded.train.len(), 25);

    let o = DataOptions {
        split_dataset_ratio: 0.2,
        ..opts(&[path_str(&file)])
    };
    let loaded = data::load(&o).unwrap();
    assert_eq!((loaded.train.len(), loaded.val.len()), (8, 2));
    let out = dir.path().join("out");
    let path = data::write_val_dataset(&loaded, &out).unwrap().unwrap();
    let written: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(written.len(), 2);
    assert_eq!(written[0], loaded.val[0].sample.to_json());
    assert_eq!(written[0]["messages"][0]["role"], "user");
    let train_queries: Vec<&str> = loaded
        .train
        .iter()
        .map(|r| r.sample.messages[0].content.as_str())
        .collect();
    for v in &loaded.val {
        assert!(
            !train_queries.contains(&v.sample.messages[0].content.as_str()),
            "val rows are held out"
        );
    }
    // The same seed picks the same rows.
    assert_eq!(data::load(&o).unwrap().val, loaded.val);

    // An explicit --val_dataset is used whole and not written out.
    let o = DataOptions {
        val_dataset: vec![DatasetSpec::parse(&format!("{}#3", file.display())).unwrap()],
        ..opts(&[path_str(&file)])
    };
    let loaded = data::load(&o).unwrap();
    assert_eq!((loaded.train.len(), loaded.val.len()), (10, 3));
    assert_eq!(
        data::write_val_dataset(&loaded, &out.join("x")).unwrap(),
        None
    );
    let val = |raw: String| DataOptions {
        val_dataset: vec![DatasetSpec::parse_as("val_dataset", &raw).unwrap()],
        ..opts(&[path_str(&file)])
    };
    let err = data::load(&val(format!("{}#30", file.display()))).unwrap_err();
    assert!(matches!(
        err,
        DataError::ValSampleTooLarge {
            requested: 30,
            available: 10,
            ..
        }
    ));
    // Errors about a validation dataset name the argument it was given to.
    assert!(err.to_string().starts_with("--val_dataset '"), "{err}");
    let err = data::load(&val(path_str(&out.join("missing.jsonl")).to_string())).unwrap_err();
    assert!(
        err.to_string().starts_with("--val_dataset '") && err.to_string().contains("no such file"),
        "{err}"
    );
}

fn long_row() -> Value {
    json!({"query": "hello ".repeat(20), "response": "world ".repeat(20)})
}

#[test]
fn max_length_under_each_truncation_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "d.jsonl", &jsonl(&[qa(1), long_row()]));
    let template = qwen();
    let loaded = data::load(&opts(&[path_str(&file)])).unwrap();
    let encode = |i: usize| {
        template
            .encode(&loaded.train[i].sample.messages, LossScale::Default)
            .unwrap()
    };
    let (short, full) = (encode(0), encode(1));
    let max = (short.len() + full.len()) / 2;
    assert!(short.len() <= max && full.len() > max);
    for (strategy, kept) in [
        (Truncation::Delete, 1),
        (Truncation::Left, 2),
        (Truncation::Right, 2),
    ] {
        let mut o = opts(&[path_str(&file)]);
        o.encode.max_length = Some(max);
        o.encode.truncation = strategy;
        let prepared = data::prepare(&o, template.clone()).unwrap();
        assert_eq!(prepared.train.len(), kept, "{strategy:?}");
        if strategy == Truncation::Delete {
            assert_eq!((prepared.drops.count, prepared.drops.too_long), (1, 1));
            continue;
        }
        let row = prepared.train.get(1).unwrap();
        assert_eq!(row.len(), max);
        let expected = match strategy {
            Truncation::Left => &full.input_ids[full.len() - max..],
            _ => &full.input_ids[..max],
        };
        assert_eq!(row.input_ids, expected, "{strategy:?}");
        assert_eq!(row.labels[0], IGNORE_INDEX);
    }
}

fn rows_of(data: &TrainData) -> Vec<TrainRow> {
    (0..data.len()).map(|i| data.get(i).unwrap()).collect()
}

#[test]
fn parallel_lazy_and_streamed_encoding_agree_with_eager() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<Value> = (0..300).map(qa).collect();
    rows.insert(7, json!({"messages": []}));
    let file = write(dir.path(), "d.jsonl", &jsonl(&rows));
    let template = qwen();
    let base = opts(&[path_str(&file)]);
    let eager = data::prepare(&base, template.clone()).unwrap();
    assert_eq!(eager.train.len(), 300);
    assert_eq!(eager.drops.count, 1);
    let expected = rows_of(&eager.train);

    let parallel = data::prepare(
        &DataOptions {
            num_proc: 4,
            ..base.clone()
        },
        template.clone(),
    )
    .unwrap();
    assert_eq!(rows_of(&parallel.train), expected);

    let lazy = data::prepare(
        &DataOptions {
            lazy_tokenize: true,
            ..base.clone()
        },
        template.clone(),
    )
    .unwrap();
    assert!(matches!(lazy.train, TrainData::Lazy(_)));
    assert_eq!(rows_of(&lazy.train), expected);

    let streamed: Vec<TrainRow> = TrainStream::new(
        &DataOptions {
            streaming: true,
            num_proc: 3,
            ..base.clone()
        },
        template.clone(),
        Shard::ALL,
    )
    .unwrap()
    .map(Result::unwrap)
    .collect();
    assert_eq!(streamed, expected);

    // Three ranks each stream a byte range; together they see every row exactly once.
    let mut sharded: Vec<TrainRow> = Vec::new();
    for rank in 0..3 {
        let stream = TrainStream::new(
            &DataOptions {
                streaming: true,
                ..base.clone()
            },
            template.clone(),
            Shard { rank, world: 3 },
        )
        .unwrap();
        sharded.extend(stream.map(Result::unwrap));
    }
    assert_eq!(sharded, expected);

    // #N in streaming mode takes the first N good rows.
    let first: Vec<TrainRow> = TrainStream::new(
        &DataOptions {
            streaming: true,
            ..opts(&[&format!("{}#5", file.display())])
        },
        template.clone(),
        Shard::ALL,
    )
    .unwrap()
    .map(Result::unwrap)
    .collect();
    assert_eq!(first, expected[..5]);
}

#[test]
fn streaming_reports_the_first_bad_row_under_strict() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "d.jsonl", &format!("{}\n{{oops\n", qa(1)));
    let o = DataOptions {
        streaming: true,
        strict: true,
        ..opts(&[path_str(&file)])
    };
    let results: Vec<_> = TrainStream::new(&o, qwen(), Shard::ALL).unwrap().collect();
    let err = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .unwrap()
        .to_string();
    assert!(err.contains("d.jsonl:2"), "{err}");
}

#[test]
fn packing_fills_rows_and_keeps_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Value> = (0..60).map(qa).collect();
    let file = write(dir.path(), "d.jsonl", &jsonl(&rows));
    let template = qwen();
    let mut o = opts(&[path_str(&file)]);
    o.encode.max_length = Some(256);
    let plain = rows_of(&data::prepare(&o, template.clone()).unwrap().train);
    o.packing = true;
    let packed = rows_of(&data::prepare(&o, template.clone()).unwrap().train);
    assert!(
        packed.len() <= plain.len() / 5,
        "{} packed rows for {} samples",
        packed.len(),
        plain.len()
    );
    let tokens = |rows: &[TrainRow]| rows.iter().map(TrainRow::len).sum::<usize>();
    assert_eq!(tokens(&packed), tokens(&plain));
    let trained = |rows: &[TrainRow]| {
        rows.iter()
            .flat_map(|r| &r.labels)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    };
    assert_eq!(trained(&packed), trained(&plain));
    for row in &packed {
        assert!(row.len() <= 256);
        // Each packed sample starts untrained, so no loss crosses a sample boundary.
        let mut start = 0;
        for &n in &row.seq_lens {
            assert_eq!(row.labels[start], IGNORE_INDEX);
            start += n;
        }
    }
    // Streaming packs too, a window at a time.
    o.streaming = true;
    let streamed: Vec<TrainRow> = TrainStream::new(&o, template, Shard::ALL)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(tokens(&streamed), tokens(&plain));
    assert!(streamed.iter().all(|r| r.len() <= 256));
}

#[test]
fn batches_pad_and_mask() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "d.jsonl", &jsonl(&[qa(1), long_row()]));
    let prepared = data::prepare(&opts(&[path_str(&file)]), qwen()).unwrap();
    let rows = rows_of(&prepared.train);
    let pad = 0;
    for side in [PaddingSide::Right, PaddingSide::Left] {
        let batch = Collator {
            pad_token_id: pad,
            padding_side: side,
        }
        .collate(&rows);
        assert_eq!(batch.batch_size, 2);
        assert_eq!(batch.seq_len, rows[1].len());
        let short = rows[0].len();
        let row0 = &batch.attention_mask[..batch.seq_len];
        assert_eq!(row0.iter().filter(|&&m| m == 1).count(), short);
        let real: Vec<u32> = batch.input_ids[..batch.seq_len]
            .iter()
            .zip(row0)
            .filter(|(_, m)| **m == 1)
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(real, rows[0].input_ids);
        assert_eq!(
            batch.trained_tokens(),
            rows.iter()
                .map(|r| r.labels.iter().filter(|&&l| l >= 0).count())
                .sum::<usize>()
        );
    }
}

#[test]
fn self_cognition_ships_with_the_binary_and_takes_names() {
    let mut o = opts(&["swift/self-cognition#500"]);
    o.preprocess.self_cognition = data::SelfCognition::from_lists(
        &["小黄".into(), "Xiao Huang".into()],
        &["魔搭".into(), "ModelScope".into()],
    );
    let loaded = data::load(&o).unwrap();
    assert_eq!(loaded.train.len(), 500);
    let text: String = loaded
        .train
        .iter()
        .flat_map(|r| &r.sample.messages)
        .map(|m| m.content.as_str())
        .collect();
    assert!(!text.contains("{{NAME}}") && !text.contains("{{AUTHOR}}"));
    assert!(text.contains("Xiao Huang") && text.contains("小黄"));
    let en = loaded
        .train
        .iter()
        .find(|r| r.sample.messages[0].content == "who are you?")
        .unwrap();
    assert!(
        en.sample.messages[1].content.contains("Xiao Huang")
            && en.sample.messages[1].content.contains("ModelScope")
    );

    let qwen3 = data::load(&opts(&["swift/self-cognition:qwen3"])).unwrap();
    let m = &qwen3.train[0].sample.messages;
    assert!(
        m[0].content.ends_with(" /no_think") && m[1].content.starts_with("<think>\n\n</think>\n\n")
    );
    let err = data::load(&opts(&["swift/self-cognition:nope"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no subset 'nope'"), "{err}");
}

fn words(name: &str, values: &[&str]) -> Given {
    Given {
        name: name.into(),
        value: GivenValue::Words(values.iter().map(|s| s.to_string()).collect()),
        origin: Origin::CommandLine,
    }
}

#[test]
fn options_come_from_swift_arguments() {
    let args = resolve(
        Command::Sft,
        vec![
            words("dataset", &["a.jsonl#10", "b.csv"]),
            words("val_dataset", &["v.jsonl"]),
            words("columns", &[r#"{"q": "query"}"#]),
            words("max_length", &["512"]),
            words("truncation_strategy", &["left"]),
            words("loss_scale", &["last_round"]),
            words("packing", &["true"]),
            words("dataset_num_proc", &["4"]),
            words("model_name", &["小黄", "Xiao Huang"]),
            words("model_author", &["ModelScope"]),
        ],
    )
    .unwrap()
    .args;
    let o = DataOptions::from_args(&args, Some(4096)).unwrap();
    assert_eq!(o.dataset[0].sample, Some(10));
    assert_eq!(
        o.split_dataset_ratio, 0.0,
        "a --val_dataset turns the split off"
    );
    assert_eq!(o.encode.max_length, Some(512));
    assert_eq!(o.encode.truncation, Truncation::Left);
    assert_eq!(o.encode.loss_scale, LossScale::LastRound);
    assert!(o.packing);
    assert_eq!(o.num_proc, 4);
    assert_eq!(
        o.preprocess.columns,
        vec![("q".to_string(), "query".to_string())]
    );
    assert_eq!(
        o.preprocess.self_cognition.author,
        Some(("ModelScope".into(), "ModelScope".into()))
    );

    let args = resolve(
        Command::Sft,
        vec![
            words("dataset", &["a.jsonl"]),
            words("streaming", &["true"]),
            words("max_steps", &["100"]),
        ],
    )
    .unwrap()
    .args;
    let o = DataOptions::from_args(&args, None).unwrap();
    assert!(
        o.streaming && o.split_dataset_ratio == 0.0,
        "streaming turns the split off"
    );

    let args = resolve(Command::Pt, vec![words("dataset", &["a.jsonl"])])
        .unwrap()
        .args;
    let o = DataOptions::from_args(&args, Some(2048)).unwrap();
    assert_eq!(
        o.encode.loss_scale,
        LossScale::All,
        "swift pt trains every token"
    );
    assert_eq!(
        o.encode.max_length,
        Some(2048),
        "unset --max_length falls back to the model's"
    );
    assert!(o.split_dataset_ratio > 0.0);
}

/// A sample in which no token carries a loss (no assistant reply, or a reply that
/// truncation cut off) would train nothing: it is dropped and counted, or under `--strict`
/// stops loading at its file and line, saying which of the two it was.
#[test]
fn samples_without_a_trained_token_are_dropped_or_refused_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let no_reply = json!({"messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ]});
    let file = write(dir.path(), "d.jsonl", &jsonl(&[qa(1), no_reply, qa(2)]));
    let template = qwen();
    let prepared = data::prepare(&opts(&[path_str(&file)]), template.clone()).unwrap();
    assert_eq!(prepared.train.len(), 2);
    assert_eq!(prepared.drops.count, 1);
    let (origin, error) = &prepared.drops.examples[0];
    assert_eq!(origin.position, Position::Line(2));
    assert!(
        matches!(error, RowError::NoLoss { truncated_to: None }),
        "{error}"
    );
    assert!(
        error.to_string().contains("no token carries a loss"),
        "{error}"
    );
    let strict = DataOptions {
        strict: true,
        ..opts(&[path_str(&file)])
    };
    let Err(err) = data::prepare(&strict, template.clone()) else {
        panic!("--strict loaded a sample without a trained token");
    };
    let err = err.to_string();
    assert!(
        err.contains("d.jsonl:2") && err.contains("no assistant reply"),
        "{err}"
    );

    // Right truncation that ends before the reply begins.
    let long = write(dir.path(), "long.jsonl", &jsonl(&[qa(1), long_row()]));
    let loaded = data::load(&opts(&[path_str(&long)])).unwrap();
    let short = template
        .encode(&loaded.train[0].sample.messages, LossScale::Default)
        .unwrap()
        .len();
    let mut o = opts(&[path_str(&long)]);
    o.encode.max_length = Some(short + 5);
    o.encode.truncation = Truncation::Right;
    let prepared = data::prepare(&o, template).unwrap();
    assert_eq!(prepared.train.len(), 1);
    let error = prepared.drops.examples[0].1.to_string();
    assert!(
        error.contains(&format!("truncation to --max_length {}", short + 5)),
        "{error}"
    );
}

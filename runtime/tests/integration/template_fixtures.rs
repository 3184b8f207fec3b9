//! Our templates against ms-swift's own encoding of the same conversations
//! (fixtures made by runtime/tests/fixtures/templates/generate.py with ms-swift 3.8.3).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use kubeswift_runtime::template::{Backend, LossScale, Message, Role, Template, TemplateOptions};
use serde_json::Value;
use tokenizers::Tokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates")
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message {
            role: m["role"].as_str().unwrap().parse::<Role>().unwrap(),
            content: m["content"].as_str().unwrap().to_string(),
            loss: m.get("loss").and_then(Value::as_bool),
        })
        .collect()
}

struct Family {
    tokenizer: Tokenizer,
    config: Value,
}

fn family(name: &str) -> Family {
    let dir = fixtures().join(name);
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    Family { tokenizer, config }
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn templates_match_ms_swift_token_for_token() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let today =
        NaiveDate::parse_from_str(doc["llama3_2_today"].as_str().unwrap(), "%Y-%m-%d").unwrap();
    let mut families: HashMap<String, Family> = HashMap::new();
    let cases = doc["cases"].as_array().unwrap();
    assert!(
        cases.len() > 200,
        "the fixture should cover many cases, has {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let fam_name = case["tokenizer"].as_str().unwrap();
        let fam = families
            .entry(fam_name.to_string())
            .or_insert_with(|| family(fam_name));
        let options = TemplateOptions {
            system: case["system"].as_str().map(str::to_string),
            use_chat_template: case["use_chat_template"].as_bool().unwrap(),
            backend: if case["backend"] == "jinja" {
                Backend::Jinja
            } else {
                Backend::Swift
            },
            today,
            ..TemplateOptions::new(case["template"].as_str().unwrap())
        };
        let label = format!(
            "case {i}: template {} ({}), tokenizer {fam_name}, conversation {}, mode {}, loss_scale {}, system {:?}, backend {}",
            case["template"],
            if options.use_chat_template {
                "chat"
            } else {
                "generation"
            },
            case["conversation"],
            case["mode"],
            case["loss_scale"],
            case["system"],
            case["backend"],
        );
        let msgs = messages(&doc["conversations"][case["conversation"].as_str().unwrap()]);
        let mut config = fam.config.clone();
        if let Some(name) = case.get("chat_template").and_then(Value::as_str) {
            config["chat_template"] = doc["chat_templates"][name].clone();
        }
        let result = Template::new(&options, fam.tokenizer.clone(), &config).and_then(|t| {
            if case["mode"] == "train" {
                let ls = LossScale::parse(case["loss_scale"].as_str().unwrap()).unwrap();
                t.encode(&msgs, ls).map(|e| {
                    (
                        e.input_ids
                            .iter()
                            .map(|&x| i64::from(x))
                            .collect::<Vec<_>>(),
                        Some(e.labels),
                    )
                })
            } else {
                t.encode_prompt(&msgs)
                    .map(|p| (p.iter().map(|&x| i64::from(x)).collect(), None))
            }
        });
        match (case.get("error"), result) {
            (Some(err), Ok(_)) => {
                failures.push(format!("{label}: ms-swift refused ({err}) but we encoded"))
            }
            (Some(_), Err(_)) => {}
            (None, Err(e)) => failures.push(format!("{label}: we refused: {e}")),
            (None, Ok((input_ids, labels))) => {
                let want = ids(&case["input_ids"]);
                if input_ids != want {
                    let at = input_ids
                        .iter()
                        .zip(&want)
                        .position(|(a, b)| a != b)
                        .unwrap_or(want.len().min(input_ids.len()));
                    failures.push(format!("{label}: input_ids differ at {at}\n  ours:     {input_ids:?}\n  ms-swift: {want:?}"));
                } else if let Some(labels) = labels {
                    let want = ids(&case["labels"]);
                    if labels != want {
                        failures.push(format!(
                            "{label}: labels differ\n  ours:     {labels:?}\n  ms-swift: {want:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

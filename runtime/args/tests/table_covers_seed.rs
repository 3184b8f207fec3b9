//! The table is the contract: every argument the seed documents is in it, attached to the
//! commands that own it, and refused by the others.

use std::collections::{BTreeSet, HashMap};

use kubeswift_args::cli::{Cli, parse};
use kubeswift_args::command::{Command, owners};
use kubeswift_args::spec::{ArgSpec, DefaultValue, Scalar, Support, ValueType};
use kubeswift_args::table::{ENV_VARS, MODEL_KWARGS, rows};
use kubeswift_args::value::{default_json, to_words};
use kubeswift_args::{ArgsError, Source};

const SEED: &str = include_str!("../seed/ms-swift-3.x-arguments.zh.txt");

/// Argument names as the seed lists them: `- name: ...` or `- 🔥name: ...`.
fn seed_names() -> BTreeSet<String> {
    let re = regex::Regex::new(r"(?m)(?:^|\s)- (?:🔥)?([A-Za-z_][A-Za-z0-9_]*)\s*[:：]").unwrap();
    re.captures_iter(SEED).map(|c| c[1].to_string()).collect()
}

#[test]
fn every_seed_name_is_in_the_table() {
    let names = seed_names();
    assert!(
        names.len() > 330,
        "seed extraction found only {}",
        names.len()
    );
    let known: BTreeSet<&str> = rows()
        .map(|s| s.name)
        .chain(MODEL_KWARGS.iter().map(|k| k.name))
        .chain(ENV_VARS.iter().map(|v| v.name))
        .collect();
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "seed arguments missing from the table: {missing:?}"
    );
}

#[test]
fn rows_are_complete_and_unique_per_group() {
    let mut seen = HashMap::new();
    for spec in rows() {
        assert!(!spec.help.trim().is_empty(), "{} has no help", spec.name);
        assert!(
            seen.insert((spec.group, spec.name), ()).is_none(),
            "{} listed twice in {:?}",
            spec.name,
            spec.group
        );
        if let (ValueType::Choice(c), DefaultValue::Str(d)) = (spec.ty, spec.default) {
            assert!(
                c.contains(&d),
                "{}: default {d} not among its choices",
                spec.name
            );
        }
        if let Support::Values(v) = spec.support {
            let d = kubeswift_args::value::display(&default_json(spec));
            assert!(
                default_json(spec).is_null()
                    || v.contains(&d.as_str())
                    || matches!(spec.ty, ValueType::List(_)),
                "{}: the default {d} is not a supported value",
                spec.name
            );
        }
    }
    // Every row belongs to at least one command.
    for spec in rows() {
        assert!(
            !owners(spec.name).is_empty(),
            "{} belongs to no command",
            spec.name
        );
    }
}

/// A value to pass for `spec` on the command line: its default, or a plausible sample.
fn sample_words(spec: &ArgSpec) -> Vec<String> {
    let d = default_json(spec);
    if d.is_null() {
        return vec!["None".into()];
    }
    let words = to_words(&d);
    if !words.is_empty() {
        return words;
    }
    match spec.ty {
        ValueType::List(Scalar::Int) => vec!["0".into(), "1".into()],
        ValueType::List(Scalar::Float) => vec!["0.5".into()],
        ValueType::List(Scalar::Choice(c)) => vec![c[0].to_string()],
        _ => vec!["x".into()],
    }
}

fn run(argv: Vec<String>) -> Result<Cli, ArgsError> {
    parse(argv)
}

#[test]
fn each_argument_parses_on_its_commands_and_is_refused_on_the_others() {
    let mut checked = 0;
    for spec in rows() {
        let owning = owners(spec.name);
        for &command in Command::ALL {
            let Some(own) = command.args().get(spec.name) else {
                let mut argv = vec!["swift".to_string(), command.name().to_string()];
                argv.push(format!("--{}", spec.name));
                argv.extend(sample_words(spec));
                match run(argv) {
                    Err(ArgsError::UnknownArgument { name, owners, .. }) => {
                        assert_eq!(name, spec.name);
                        assert_eq!(owners, owning, "owners of {}", spec.name);
                    }
                    other => panic!("swift {command} accepted --{}: {other:?}", spec.name),
                }
                continue;
            };
            let mut argv = vec!["swift".to_string(), command.name().to_string()];
            argv.push(format!("--{}", own.name));
            let words = sample_words(own);
            argv.extend(words.clone());
            let pt_forced =
                command == Command::Pt && matches!(own.name, "use_chat_template" | "loss_scale");
            match run(argv) {
                Ok(Cli::Run { resolved, .. }) => {
                    assert!(!pt_forced, "swift pt accepted --{} {:?}", own.name, words);
                    let args = &resolved.args;
                    if !matches!(args.source(own.name), Some(Source::Derived)) {
                        let expected = kubeswift_args::value::parse_words(own, &words).unwrap();
                        assert_eq!(
                            args.get(own.name),
                            &expected,
                            "swift {command} --{}",
                            own.name
                        );
                        assert!(args.is_given(own.name));
                    }
                }
                Err(ArgsError::NotSupported { name, .. }) => {
                    assert_eq!(name, own.name);
                    assert!(
                        own.support != Support::Any,
                        "--{} refused though supported",
                        own.name
                    );
                }
                Err(ArgsError::Conflict { .. }) if pt_forced => {}
                other => panic!("swift {command} --{} {words:?}: {other:?}", own.name),
            }
            checked += 1;
        }
    }
    assert!(
        checked > 1000,
        "only {checked} (command, argument) pairs checked"
    );
}

#[test]
fn integrated_commands_inherit_their_parents() {
    let names = |c: Command| c.args().iter().map(|s| s.name).collect::<BTreeSet<_>>();
    assert!(names(Command::Sft).is_subset(&names(Command::Rlhf)));
    assert!(names(Command::Infer).is_subset(&names(Command::Deploy)));
    assert!(names(Command::Deploy).is_subset(&names(Command::Eval)));
    assert!(names(Command::Deploy).is_subset(&names(Command::App)));
    assert_eq!(names(Command::Sft), names(Command::Pt));
    assert!(!names(Command::Sft).contains("rlhf_type"));
    assert!(!names(Command::Infer).contains("lora_rank"));
    assert!(!names(Command::WebUi).contains("model"));
}

//! `swift <command> --help`: the command's arguments by group, 🔥 ones first in each group,
//! each with type, default, what this build supports, and the seed's meaning.

use std::fmt::Write;

use crate::command::Command;
use crate::spec::{ArgSpec, Support};
use crate::table::{ENV_VARS, MODEL_KWARGS};

fn support_note(spec: &ArgSpec) -> String {
    match spec.support {
        Support::Any => String::new(),
        Support::DefaultOnly => "  [other values: not supported yet]".into(),
        Support::Values(v) => format!("  [supported: {}]", v.join(", ")),
    }
}

fn render_arg(out: &mut String, spec: &ArgSpec) {
    let mark = if spec.important { "🔥" } else { "  " };
    let _ = writeln!(
        out,
        "  {mark}--{} <{}>  default: {}{}",
        spec.name,
        spec.type_name(),
        spec.default_display(),
        support_note(spec)
    );
    let _ = writeln!(out, "        {}", spec.help);
}

/// The full help text of one command.
pub fn render(command: Command) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", command.about());
    let _ = writeln!(
        out,
        "Usage: swift {command} [--<argument> <value>...] [--config <file.yaml|file.json>]\n"
    );
    let _ = writeln!(
        out,
        "Names are ms-swift 3.x's (dashes work too). Lists are space separated (--dataset a.jsonl b.jsonl),\n\
         dicts are JSON strings or JSON file paths, booleans true/false. Command-line flags override\n\
         --config. 🔥 marks the important arguments, listed first in each group.\n"
    );
    let args = command.args();
    for group in command.groups() {
        let mut rows: Vec<&ArgSpec> = args.iter().filter(|s| s.group == group).collect();
        if rows.is_empty() {
            continue;
        }
        rows.sort_by_key(|s| !s.important); // stable: keeps table order within each half
        let _ = writeln!(out, "{}:", group.title());
        for spec in rows {
            render_arg(&mut out, spec);
        }
        out.push('\n');
    }
    if command.loads_model() {
        let _ = writeln!(
            out,
            "Model-specific parameters (--model_kwargs '{{\"name\": value}}' or the environment variable):"
        );
        for kw in MODEL_KWARGS {
            let mark = if kw.important { "🔥" } else { "  " };
            let spec = ArgSpec::new(
                crate::group::Group::Model,
                kw.name,
                kw.ty,
                kw.default,
                kw.help,
            );
            let _ = writeln!(
                out,
                "  {mark}{} ({})  default: {}  {}",
                kw.name,
                kw.family,
                spec.default_display(),
                kw.help
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "Environment variables:");
    for var in ENV_VARS {
        let alias = var
            .pet_alias
            .map(|a| format!(" (or {a})"))
            .unwrap_or_default();
        let _ = writeln!(out, "  {}{alias}  {}", var.name, var.help);
    }
    out
}

//! The OpenAPI v3 schema of a resource's `args` object, generated from the table, so
//! `kubectl apply` refuses a misspelt argument name (field validation) or a wrongly typed
//! value before the operator ever sees it.

use serde_json::{Map, Value, json};

use crate::command::Command;
use crate::spec::{ArgSpec, Scalar, ValueType};
use crate::value::is_optional;

fn scalar_schema(s: Scalar) -> Value {
    match s {
        Scalar::Str => json!({"type": "string"}),
        Scalar::Int => json!({"type": "integer"}),
        Scalar::Float => json!({"type": "number"}),
        Scalar::Choice(c) => json!({"type": "string", "enum": c}),
    }
}

/// The schema of one argument's value.
pub fn arg_schema(spec: &ArgSpec) -> Value {
    let mut schema = match spec.ty {
        ValueType::Bool => json!({"type": "boolean"}),
        ValueType::Int => json!({"type": "integer"}),
        ValueType::Float | ValueType::Number => json!({"type": "number"}),
        ValueType::Str => json!({"type": "string"}),
        ValueType::Choice(c) => json!({"type": "string", "enum": c}),
        ValueType::List(s) => json!({"type": "array", "items": scalar_schema(s)}),
        ValueType::Dict => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        // A word or an object / a bool or a word: Kubernetes has no union type but this.
        ValueType::StrOrDict | ValueType::InitWeights => {
            json!({"x-kubernetes-preserve-unknown-fields": true})
        }
    };
    if let Value::Object(m) = &mut schema {
        m.insert("description".into(), Value::from(spec.help));
        if is_optional(spec) {
            m.insert("nullable".into(), Value::Bool(true));
        }
    }
    schema
}

/// The schema of an `args` object accepted by any of `commands` (e.g. sft, pt, rlhf).
pub fn args_schema(commands: &[Command]) -> Value {
    let mut properties = Map::new();
    for command in commands {
        for spec in command.args().iter() {
            properties
                .entry(spec.name.to_string())
                .or_insert_with(|| arg_schema(spec));
        }
    }
    let names: Vec<_> = commands.iter().map(|c| format!("swift {c}")).collect();
    json!({
        "type": "object",
        "description": format!("Arguments of {} by ms-swift name, e.g. lora_rank: 8", names.join(" / ")),
        "properties": properties,
    })
}

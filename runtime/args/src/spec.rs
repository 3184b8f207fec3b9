//! The shape of one row of the argument table.
//!
//! Rows are `const` data built with small `const fn` helpers so the whole table reads like the
//! seed: name, type, default, one-line meaning. Everything else (parser, help, validation,
//! args.json, CRD schema) is derived from these rows.

use crate::group::Group;

/// The value type of an argument, as the seed describes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueType {
    /// `true`/`false` (also `1/0`, `yes/no`); a bare `--flag` means true.
    Bool,
    /// A whole number (negative allowed).
    Int,
    /// A floating point number.
    Float,
    /// A step count or a ratio: HF accepts both for `save_steps`-like arguments.
    Number,
    /// Free text.
    Str,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// Space separated values on the command line, a JSON/YAML array elsewhere.
    List(Scalar),
    /// A JSON object, given as a JSON string or the path of a JSON file.
    Dict,
    /// A word (e.g. `auto`, `linear`) or a JSON object / JSON file path.
    StrOrDict,
    /// LoRA's `init_weights`: `true`, `false` or a named method (`gaussian`, `pissa`, ...).
    InitWeights,
}

/// The element type of a list argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    Str,
    Int,
    Float,
    Choice(&'static [&'static str]),
}

/// The seed's default for an argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DefaultValue {
    /// `None` in ms-swift: unset (`null` in args.json).
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'static str),
    /// A list default; `&[]` is ms-swift's `[]`.
    List(&'static [&'static str]),
    /// `None` in the table, replaced after parsing by a rule in `derive.rs`; the text says which.
    Derived(&'static str),
}

/// Which values of an argument this build implements.
///
/// Every other value is refused with "not supported yet" naming argument and value, so a user
/// never believes a setting took effect when it did not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Support {
    /// Every valid value works.
    Any,
    /// Only the default value works (the feature behind the argument is not built).
    DefaultOnly,
    /// Only these values (for lists: every element must be one of them).
    Values(&'static [&'static str]),
}

/// One argument: a row of the table.
#[derive(Debug, Clone, Copy)]
pub struct ArgSpec {
    pub name: &'static str,
    pub group: Group,
    pub ty: ValueType,
    pub default: DefaultValue,
    /// The seed's meaning, in one English line.
    pub help: &'static str,
    /// 🔥 in the seed: shown first in `--help`.
    pub important: bool,
    pub support: Support,
}

impl ArgSpec {
    /// A row with the common case: supported for every value, not marked important.
    pub const fn new(
        group: Group,
        name: &'static str,
        ty: ValueType,
        default: DefaultValue,
        help: &'static str,
    ) -> Self {
        ArgSpec {
            name,
            group,
            ty,
            default,
            help,
            important: false,
            support: Support::Any,
        }
    }

    /// Marks the row 🔥 (important), as the seed does.
    pub const fn hot(mut self) -> Self {
        self.important = true;
        self
    }

    /// Limits the values this build implements.
    pub const fn only(mut self, values: &'static [&'static str]) -> Self {
        self.support = Support::Values(values);
        self
    }

    /// Marks the feature behind the argument as not built: only its default is accepted.
    pub const fn default_only(mut self) -> Self {
        self.support = Support::DefaultOnly;
        self
    }

    /// Short type name for help and error messages.
    pub fn type_name(&self) -> String {
        match self.ty {
            ValueType::Bool => "bool".into(),
            ValueType::Int => "int".into(),
            ValueType::Float => "float".into(),
            ValueType::Number => "number".into(),
            ValueType::Str => "str".into(),
            ValueType::Choice(c) => c.join("|"),
            ValueType::List(s) => format!("{} ...", scalar_name(s)),
            ValueType::Dict => "json".into(),
            ValueType::StrOrDict => "str|json".into(),
            ValueType::InitWeights => "true|false|gaussian|pissa|pissa_niter_N|...".into(),
        }
    }

    /// The default as ms-swift shows it in its docs.
    pub fn default_display(&self) -> String {
        match self.default {
            DefaultValue::None => "None".into(),
            DefaultValue::Bool(b) => if b { "True" } else { "False" }.into(),
            DefaultValue::Int(i) => i.to_string(),
            DefaultValue::Float(f) => format!("{f:?}"),
            DefaultValue::Str(s) => format!("'{s}'"),
            DefaultValue::List(l) => format!(
                "[{}]",
                l.iter()
                    .map(|s| format!("'{s}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DefaultValue::Derived(rule) => format!("None ({rule})"),
        }
    }
}

fn scalar_name(s: Scalar) -> String {
    match s {
        Scalar::Str => "str".into(),
        Scalar::Int => "int".into(),
        Scalar::Float => "float".into(),
        Scalar::Choice(c) => c.join("|"),
    }
}

/// A model-specific parameter: set through `--model_kwargs '{"name": v}'` or the environment.
#[derive(Debug, Clone, Copy)]
pub struct ModelKwarg {
    /// The environment variable name (upper case); `--model_kwargs` keys may be lower case.
    pub name: &'static str,
    /// The model family the seed lists it under.
    pub family: &'static str,
    pub ty: ValueType,
    pub default: DefaultValue,
    pub help: &'static str,
    pub important: bool,
}

/// A process-level environment variable the seed documents (devices, cache, torchrun wiring).
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    pub name: &'static str,
    pub help: &'static str,
    /// torchrun's `PET_*` alias, read when the plain name is unset.
    pub pet_alias: Option<&'static str>,
}

//! The `swift` subcommands and the argument groups each one is made of.
//!
//! ms-swift composes its per-command dataclasses by inheritance (`TrainArguments` inherits
//! the tuner, Seq2Seq and base arguments, `RLHFArguments` inherits `TrainArguments`, ...).
//! We mirror that with an ordered list of groups per command: a later group's row replaces an
//! earlier row of the same name, exactly as a subclass field overrides its parent's default.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::group::Group;
use crate::spec::ArgSpec;
use crate::table;

/// A `swift` subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    Sft,
    Pt,
    Rlhf,
    Infer,
    Deploy,
    Export,
    Sample,
    Eval,
    App,
    WebUi,
}

use Group as G;

/// ms-swift's `BaseArguments`: base plus the model, data, template, generation and
/// quantization atomic groups.
const BASE_ARGUMENTS: &[Group] = &[
    G::Base,
    G::Model,
    G::Data,
    G::Template,
    G::Generation,
    G::Quantization,
];

const TRAIN_ARGUMENTS: &[Group] = &[
    G::Seq2Seq,
    G::HfTraining,
    G::Tuner,
    G::Full,
    G::Lora,
    G::FourierFt,
    G::Boft,
    G::Vera,
    G::GaLore,
    G::Lisa,
    G::Unsloth,
    G::LlamaPro,
    G::AdaLora,
    G::Reft,
    G::Liger,
    G::Swanlab,
    G::Train,
];

const RLHF_ARGUMENTS: &[Group] = &[
    G::Rlhf,
    G::RewardModel,
    G::Ppo,
    G::Grpo,
    G::CosineReward,
    G::RepetitionReward,
];

const INFER_ARGUMENTS: &[Group] = &[G::Merge, G::Vllm, G::LmDeploy, G::Infer];

impl Command {
    /// Every subcommand, in `swift --help` order.
    pub const ALL: &'static [Command] = &[
        Command::Sft,
        Command::Pt,
        Command::Rlhf,
        Command::Infer,
        Command::Deploy,
        Command::Export,
        Command::Sample,
        Command::Eval,
        Command::App,
        Command::WebUi,
    ];

    /// The name typed after `swift`.
    pub fn name(self) -> &'static str {
        match self {
            Command::Sft => "sft",
            Command::Pt => "pt",
            Command::Rlhf => "rlhf",
            Command::Infer => "infer",
            Command::Deploy => "deploy",
            Command::Export => "export",
            Command::Sample => "sample",
            Command::Eval => "eval",
            Command::App => "app",
            Command::WebUi => "web-ui",
        }
    }

    /// One line for `swift --help`.
    pub fn about(self) -> &'static str {
        match self {
            Command::Sft => "Supervised fine-tuning (LoRA and other tuners, or full parameters)",
            Command::Pt => {
                "Pre-training / continued pre-training (generation template, all-token loss)"
            }
            Command::Rlhf => {
                "Human preference alignment (DPO, ORPO, SimPO, KTO, CPO, RM, PPO, GRPO)"
            }
            Command::Infer => "Inference: interactive chat or batch over a dataset",
            Command::Deploy => "OpenAI-compatible HTTP server",
            Command::Export => "Export a model: merge LoRA, quantise, push",
            Command::Sample => "Sample responses for RFT/distillation",
            Command::Eval => "Evaluate a model on benchmarks",
            Command::App => "Chat web app over a deployed model",
            Command::WebUi => "Web UI for training and inference",
        }
    }

    /// Is this one of the training commands (`sft`, `pt`, `rlhf`)?
    pub fn is_training(self) -> bool {
        matches!(self, Command::Sft | Command::Pt | Command::Rlhf)
    }

    /// The argument groups this command is made of, base first; later groups override.
    pub fn groups(self) -> Vec<Group> {
        let chain: &[&[Group]] = match self {
            Command::Sft | Command::Pt => &[BASE_ARGUMENTS, TRAIN_ARGUMENTS],
            Command::Rlhf => &[BASE_ARGUMENTS, TRAIN_ARGUMENTS, RLHF_ARGUMENTS],
            Command::Infer => &[BASE_ARGUMENTS, INFER_ARGUMENTS],
            Command::Deploy => &[BASE_ARGUMENTS, INFER_ARGUMENTS, &[G::Deploy]],
            Command::App => &[
                BASE_ARGUMENTS,
                INFER_ARGUMENTS,
                &[G::Deploy, G::WebUi, G::App],
            ],
            Command::Eval => &[BASE_ARGUMENTS, INFER_ARGUMENTS, &[G::Deploy, G::Eval]],
            Command::Export => &[BASE_ARGUMENTS, &[G::Merge, G::Export]],
            Command::Sample => &[BASE_ARGUMENTS, &[G::Sample, G::Mcts]],
            Command::WebUi => &[&[G::WebUi]],
        };
        chain.iter().flat_map(|g| g.iter().copied()).collect()
    }

    /// Whether this command loads a model (and so takes model-specific kwargs).
    pub fn loads_model(self) -> bool {
        self.groups().contains(&Group::Model)
    }

    /// The resolved argument set of this command: one row per name, overrides applied.
    pub fn args(self) -> &'static CommandArgs {
        static CACHE: OnceLock<HashMap<Command, CommandArgs>> = OnceLock::new();
        let all = CACHE.get_or_init(|| {
            Command::ALL
                .iter()
                .map(|&c| (c, CommandArgs::build(c)))
                .collect()
        });
        &all[&self]
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Command {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.replace('_', "-");
        Command::ALL
            .iter()
            .copied()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Command::ALL.iter().map(|c| c.name()).collect();
                format!(
                    "unknown command '{s}' (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// The arguments of one command after group overrides, in table order.
#[derive(Debug)]
pub struct CommandArgs {
    specs: Vec<&'static ArgSpec>,
    index: HashMap<&'static str, usize>,
}

impl CommandArgs {
    fn build(command: Command) -> Self {
        let mut specs: Vec<&'static ArgSpec> = Vec::new();
        let mut index: HashMap<&'static str, usize> = HashMap::new();
        for group in command.groups() {
            for spec in table::rows().filter(|s| s.group == group) {
                match index.get(spec.name) {
                    // A subclass redefines the field: same position, new default/type/meaning.
                    Some(&i) => specs[i] = spec,
                    None => {
                        index.insert(spec.name, specs.len());
                        specs.push(spec);
                    }
                }
            }
        }
        CommandArgs { specs, index }
    }

    /// The row for `name`, if this command owns it.
    pub fn get(&self, name: &str) -> Option<&'static ArgSpec> {
        self.index.get(name).map(|&i| self.specs[i])
    }

    /// The index of `name` in table order.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Every row, in table order.
    pub fn iter(&self) -> impl Iterator<Item = &'static ArgSpec> + '_ {
        self.specs.iter().copied()
    }

    /// How many arguments the command has.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// True when the command has no arguments (never, but clippy wants the pair).
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

/// Every command that accepts an argument called `name`.
pub fn owners(name: &str) -> Vec<Command> {
    Command::ALL
        .iter()
        .copied()
        .filter(|c| c.args().get(name).is_some())
        .collect()
}

//! Argument groups, as the seed groups them (base, atomic, integrated).

/// Which of the seed's three layers a group belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// 基本参数
    Base,
    /// 原子参数
    Atomic,
    /// 集成参数
    Integrated,
}

/// One argument group of the seed. The order of variants is the seed's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Base,
    Model,
    Data,
    Template,
    Generation,
    Quantization,
    Seq2Seq,
    HfTraining,
    Tuner,
    Full,
    Lora,
    FourierFt,
    Boft,
    Vera,
    GaLore,
    Lisa,
    Unsloth,
    LlamaPro,
    AdaLora,
    Reft,
    Liger,
    LmDeploy,
    Vllm,
    Merge,
    Train,
    Swanlab,
    Rlhf,
    RewardModel,
    Ppo,
    Grpo,
    CosineReward,
    RepetitionReward,
    Infer,
    Deploy,
    WebUi,
    App,
    Eval,
    Export,
    Sample,
    Mcts,
}

impl Group {
    /// Every group in the seed's order.
    pub const ALL: &'static [Group] = &[
        Group::Base,
        Group::Model,
        Group::Data,
        Group::Template,
        Group::Generation,
        Group::Quantization,
        Group::Seq2Seq,
        Group::HfTraining,
        Group::Tuner,
        Group::Full,
        Group::Lora,
        Group::FourierFt,
        Group::Boft,
        Group::Vera,
        Group::GaLore,
        Group::Lisa,
        Group::Unsloth,
        Group::LlamaPro,
        Group::AdaLora,
        Group::Reft,
        Group::Liger,
        Group::LmDeploy,
        Group::Vllm,
        Group::Merge,
        Group::Train,
        Group::Swanlab,
        Group::Rlhf,
        Group::RewardModel,
        Group::Ppo,
        Group::Grpo,
        Group::CosineReward,
        Group::RepetitionReward,
        Group::Infer,
        Group::Deploy,
        Group::WebUi,
        Group::App,
        Group::Eval,
        Group::Export,
        Group::Sample,
        Group::Mcts,
    ];

    /// The heading used in `--help` (the seed's section name in English).
    pub fn title(self) -> &'static str {
        match self {
            Group::Base => "Base arguments",
            Group::Model => "Model arguments",
            Group::Data => "Dataset arguments",
            Group::Template => "Template arguments",
            Group::Generation => "Generation arguments",
            Group::Quantization => "Quantization arguments",
            Group::Seq2Seq => "Training arguments (Seq2SeqTrainer, ms-swift defaults)",
            Group::HfTraining => "Training arguments (Seq2SeqTrainer, not listed in the seed)",
            Group::Tuner => "Tuner arguments",
            Group::Full => "Full-parameter training arguments",
            Group::Lora => "LoRA arguments",
            Group::FourierFt => "FourierFt arguments",
            Group::Boft => "BOFT arguments",
            Group::Vera => "Vera arguments",
            Group::GaLore => "GaLore arguments",
            Group::Lisa => "LISA arguments",
            Group::Unsloth => "UnSloth arguments",
            Group::LlamaPro => "LLaMAPro arguments",
            Group::AdaLora => "AdaLoRA arguments",
            Group::Reft => "ReFT arguments",
            Group::Liger => "Liger arguments",
            Group::LmDeploy => "LMDeploy arguments",
            Group::Vllm => "vLLM arguments",
            Group::Merge => "Merge arguments",
            Group::Train => "Train arguments",
            Group::Swanlab => "SwanLab arguments",
            Group::Rlhf => "RLHF arguments",
            Group::RewardModel => "Reward model arguments",
            Group::Ppo => "PPO arguments",
            Group::Grpo => "GRPO arguments",
            Group::CosineReward => "Cosine reward arguments",
            Group::RepetitionReward => "Repetition reward arguments",
            Group::Infer => "Inference arguments",
            Group::Deploy => "Deployment arguments",
            Group::WebUi => "Web-UI arguments",
            Group::App => "App arguments",
            Group::Eval => "Evaluation arguments",
            Group::Export => "Export arguments",
            Group::Sample => "Sampling arguments",
            Group::Mcts => "MCTS arguments",
        }
    }

    /// The seed's layer for this group.
    pub fn layer(self) -> Layer {
        match self {
            Group::Base => Layer::Base,
            Group::Model
            | Group::Data
            | Group::Template
            | Group::Generation
            | Group::Quantization
            | Group::Seq2Seq
            | Group::HfTraining
            | Group::Tuner
            | Group::Full
            | Group::Lora
            | Group::FourierFt
            | Group::Boft
            | Group::Vera
            | Group::GaLore
            | Group::Lisa
            | Group::Unsloth
            | Group::LlamaPro
            | Group::AdaLora
            | Group::Reft
            | Group::Liger
            | Group::LmDeploy
            | Group::Vllm
            | Group::Merge => Layer::Atomic,
            _ => Layer::Integrated,
        }
    }

    /// Groups whose fields make up ms-swift's `BaseArguments` (what `load_args` may fill).
    pub fn in_base_arguments(self) -> bool {
        matches!(
            self,
            Group::Base
                | Group::Model
                | Group::Data
                | Group::Template
                | Group::Generation
                | Group::Quantization
        )
    }
}

//! Tuner arguments: the shared ones, full-parameter freezing, LoRA, and the other tuners
//! (FourierFt, BOFT, Vera, GaLore, LISA, UnSloth, LLaMAPro, AdaLoRA, ReFT, Liger).
//! Tuners we have not built accept only their defaults.

use super::{DTYPES, EMPTY, FALSE, NONE, TRUE, float, int, text};
use crate::group::Group;
use crate::spec::{ArgSpec, DefaultValue, Scalar as S, ValueType as T};

const fn g(
    group: Group,
    name: &'static str,
    ty: T,
    d: DefaultValue,
    help: &'static str,
) -> ArgSpec {
    ArgSpec::new(group, name, ty, d, help)
}
const fn tuner(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    g(Group::Tuner, name, ty, d, help)
}
const fn full(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    g(Group::Full, name, ty, d, help)
}
const fn lora(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    g(Group::Lora, name, ty, d, help)
}
/// A row of a tuner this build does not implement: only the default is accepted.
const fn unbuilt(
    group: Group,
    name: &'static str,
    ty: T,
    d: DefaultValue,
    help: &'static str,
) -> ArgSpec {
    g(group, name, ty, d, help).default_only()
}

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    tuner("freeze_llm", T::Bool, FALSE, "Multimodal: freeze the LLM (full) or add no tuner to it (LoRA all-linear).").hot().default_only(),
    tuner("freeze_vit", T::Bool, TRUE, "Multimodal: freeze the vision tower, or add no tuner to it.").hot().default_only(),
    tuner("freeze_aligner", T::Bool, TRUE, "Multimodal: freeze the aligner, or add no tuner to it.").hot().default_only(),
    tuner("target_modules", T::List(S::Str), DefaultValue::List(&["all-linear"]),
          "Modules that get a tuner: 'all-linear' (every linear but lm_head) or module names.").hot(),
    tuner("target_regex", T::Str, NONE, "Regex of modules that get a tuner; overrides target_modules.").hot(),
    tuner("init_weights", T::InitWeights, TRUE,
          "Tuner init: LoRA true, false, gaussian, pissa, pissa_niter_N; Bone true, false, bat.")
        .only(&["true", "false", "gaussian", "pissa", "pissa_niter_*"]),
    tuner("modules_to_save", T::List(S::Str), EMPTY, "Original modules trained and saved besides the tuner.").hot(),

    full("freeze_parameters", T::List(S::Str), EMPTY, "Prefixes of parameters to freeze."),
    full("freeze_parameters_ratio", T::Float, float(0.0),
         "Fraction of parameters to freeze from the bottom up; 1 freezes all (then use trainable_parameters)."),
    full("trainable_parameters", T::List(S::Str), EMPTY,
         "Prefixes of extra trainable parameters; wins over freeze_parameters and freeze_parameters_ratio."),

    lora("lora_rank", T::Int, int(8), "LoRA rank r.").hot(),
    lora("lora_alpha", T::Int, int(32), "LoRA alpha (scale alpha/r, or alpha/sqrt(r) with rslora).").hot(),
    lora("lora_dropout", T::Float, float(0.05), "LoRA dropout."),
    lora("lora_bias", T::Choice(&["none", "all"]), text("none"), "Which biases train: 'none' or 'all'."),
    lora("lora_dtype", T::Choice(DTYPES), NONE, "dtype of the LoRA weights; default: the model's."),
    lora("use_dora", T::Bool, FALSE, "Use DoRA.").hot(),
    lora("use_rslora", T::Bool, FALSE, "Use rank-stabilised LoRA (scale alpha/sqrt(r))."),
    lora("lorap_lr_ratio", T::Float, NONE, "LoRA+: learning-rate ratio of B to A (10-16 suggested).").hot(),
    unbuilt(Group::Lora, "lora_ga_batch_size", T::Int, int(2), "LoRA-GA: batch size for gradient estimation."),
    unbuilt(Group::Lora, "lora_ga_iters", T::Int, int(2), "LoRA-GA: iterations of gradient estimation."),
    unbuilt(Group::Lora, "lora_ga_max_length", T::Int, int(1024), "LoRA-GA: max input length for gradient estimation."),
    unbuilt(Group::Lora, "lora_ga_direction", T::Choice(&["ArBr", "A2rBr", "ArB2r", "random"]), text("ArB2r"),
            "LoRA-GA: initial direction."),
    unbuilt(Group::Lora, "lora_ga_scale", T::Choice(&["gd", "unit", "stable", "weightS"]), text("stable"),
            "LoRA-GA: initial scaling."),
    unbuilt(Group::Lora, "lora_ga_stable_gamma", T::Int, int(16), "LoRA-GA: gamma of the 'stable' scaling."),

    unbuilt(Group::FourierFt, "fourier_n_frequency", T::Int, int(2000), "FourierFt: number of frequencies (like LoRA's r)."),
    unbuilt(Group::FourierFt, "fourier_scaling", T::Float, float(300.0), "FourierFt: scaling of W (like lora_alpha)."),

    unbuilt(Group::Boft, "boft_block_size", T::Int, int(4), "BOFT block size."),
    unbuilt(Group::Boft, "boft_block_num", T::Int, NONE, "BOFT block count (exclusive with boft_block_size)."),
    unbuilt(Group::Boft, "boft_dropout", T::Float, float(0.0), "BOFT dropout."),

    unbuilt(Group::Vera, "vera_rank", T::Int, int(256), "Vera rank."),
    unbuilt(Group::Vera, "vera_projection_prng_key", T::Bool, TRUE, "Vera: store the projection matrices."),
    unbuilt(Group::Vera, "vera_dropout", T::Float, float(0.0), "Vera dropout."),
    unbuilt(Group::Vera, "vera_d_initial", T::Float, float(0.1), "Vera: initial value of d."),

    unbuilt(Group::GaLore, "use_galore", T::Bool, FALSE, "Use GaLore.").hot(),
    unbuilt(Group::GaLore, "galore_target_modules", T::List(S::Str), NONE, "GaLore modules; default: attention and MLP."),
    unbuilt(Group::GaLore, "galore_rank", T::Int, int(128), "GaLore rank."),
    unbuilt(Group::GaLore, "galore_update_proj_gap", T::Int, int(50), "Steps between projection updates."),
    unbuilt(Group::GaLore, "galore_scale", T::Float, float(1.0), "GaLore scale."),
    unbuilt(Group::GaLore, "galore_proj_type", T::Choice(&["std", "reverse_std", "right", "left", "full"]),
            text("std"), "GaLore projection type."),
    unbuilt(Group::GaLore, "galore_optim_per_parameter", T::Bool, FALSE, "One optimizer per GaLore parameter."),
    unbuilt(Group::GaLore, "galore_with_embedding", T::Bool, FALSE, "Apply GaLore to embeddings."),
    unbuilt(Group::GaLore, "galore_quantization", T::Bool, FALSE, "Use Q-GaLore."),
    unbuilt(Group::GaLore, "galore_proj_quant", T::Bool, FALSE, "Quantise the SVD projection."),
    unbuilt(Group::GaLore, "galore_proj_bits", T::Int, int(4), "Bits of the quantised projection."),
    unbuilt(Group::GaLore, "galore_proj_group_size", T::Int, int(256), "Group size of the quantised projection."),
    unbuilt(Group::GaLore, "galore_cos_threshold", T::Float, float(0.4), "Cosine-similarity threshold for projection updates."),
    unbuilt(Group::GaLore, "galore_gamma_proj", T::Int, int(2), "Factor that lengthens the update gap as projections converge."),
    unbuilt(Group::GaLore, "galore_queue_size", T::Int, int(5), "Queue length for projection similarity."),

    unbuilt(Group::Lisa, "lisa_activated_layers", T::Int, int(0), "LISA (full only): active layers; 0 disables, 2 or 8 suggested.").hot(),
    unbuilt(Group::Lisa, "lisa_step_interval", T::Int, int(20), "LISA: steps between switching the trained layers."),

    unbuilt(Group::LlamaPro, "llamapro_num_new_blocks", T::Int, int(4), "LLaMAPro: new layers to insert.").hot(),
    unbuilt(Group::LlamaPro, "llamapro_num_groups", T::Int, NONE, "LLaMAPro: groups to insert new blocks in; default: llamapro_num_new_blocks."),

    unbuilt(Group::AdaLora, "adalora_target_r", T::Int, int(8), "AdaLoRA average rank."),
    unbuilt(Group::AdaLora, "adalora_init_r", T::Int, int(12), "AdaLoRA initial rank."),
    unbuilt(Group::AdaLora, "adalora_tinit", T::Int, int(0), "AdaLoRA initial warmup."),
    unbuilt(Group::AdaLora, "adalora_tfinal", T::Int, int(0), "AdaLoRA final warmup."),
    unbuilt(Group::AdaLora, "adalora_deltaT", T::Int, int(1), "AdaLoRA step interval."),
    unbuilt(Group::AdaLora, "adalora_beta1", T::Float, float(0.85), "AdaLoRA EMA beta1."),
    unbuilt(Group::AdaLora, "adalora_beta2", T::Float, float(0.85), "AdaLoRA EMA beta2."),
    unbuilt(Group::AdaLora, "adalora_orth_reg_weight", T::Float, float(0.5), "AdaLoRA orthogonal regularisation weight."),

    unbuilt(Group::Reft, "reft_layers", T::List(S::Int), NONE, "ReFT layers, e.g. 1 2 3 4; default: all.").hot(),
    unbuilt(Group::Reft, "reft_rank", T::Int, int(4), "ReFT rank.").hot(),
    unbuilt(Group::Reft, "reft_intervention_type",
            T::Choice(&["NoreftIntervention", "LoreftIntervention", "ConsreftIntervention",
                        "LobireftIntervention", "DireftIntervention", "NodireftIntervention"]),
            text("LoreftIntervention"), "ReFT intervention type."),
    unbuilt(Group::Reft, "reft_args", T::Dict, NONE, "Extra ReFT intervention arguments as JSON."),

    unbuilt(Group::Liger, "use_liger", T::Bool, FALSE, "Train with liger-kernel."),
];

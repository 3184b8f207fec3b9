//! RLHF arguments (inherit the train arguments): DPO-family, reward model, PPO, GRPO and its
//! cosine/repetition rewards.

use super::{EMPTY, FALSE, LOSS_SCALES, LOSS_SCALES_BUILT, NONE, TRUE, derived, float, int, text};
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
const fn r(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    g(Group::Rlhf, name, ty, d, help)
}
const fn ppo(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    g(Group::Ppo, name, ty, d, help)
}
const fn grpo(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    g(Group::Grpo, name, ty, d, help)
}

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    r("rlhf_type", T::Choice(&["dpo", "orpo", "simpo", "kto", "cpo", "rm", "ppo", "grpo"]), text("dpo"),
      "Alignment algorithm: dpo, orpo, simpo, kto, cpo, rm, ppo or grpo.").hot(),
    r("ref_model", T::Str, NONE, "Reference model (dpo, kto, ppo with full training)."),
    r("ref_model_type", T::Str, NONE, "model_type of the reference model."),
    r("ref_model_revision", T::Str, NONE, "Revision of the reference model.").default_only(),
    r("beta", T::Float, derived("2.0 for simpo, 0.04 for grpo, 0.1 otherwise"), "KL regularisation coefficient.").hot(),
    r("label_smoothing", T::Float, float(0.0), "DPO label smoothing."),
    r("rpo_alpha", T::Float, float(1.0), "Weight of the SFT loss added to DPO: loss = KL_loss + rpo_alpha * sft_loss.").hot(),
    r("cpo_alpha", T::Float, float(1.0), "Weight of the NLL loss in CPO/SimPO."),
    r("simpo_gamma", T::Float, float(1.0), "SimPO reward margin (0.5-1.5 suggested)."),
    r("desirable_weight", T::Float, float(1.0), "KTO weight of desirable responses."),
    r("undesirable_weight", T::Float, float(1.0), "KTO weight of undesirable responses."),
    r("loss_scale", T::Choice(LOSS_SCALES), text("last_round"), "Token loss weights (RLHF default: last_round).")
        .only(LOSS_SCALES_BUILT),
    r("temperature", T::Float, float(0.9), "Sampling temperature for PPO and GRPO."),

    g(Group::RewardModel, "reward_model", T::Str, NONE, "Reward model (PPO, GRPO)."),
    g(Group::RewardModel, "reward_adapters", T::List(S::Str), EMPTY, "Adapters of the reward model."),
    g(Group::RewardModel, "reward_model_type", T::Str, NONE, "model_type of the reward model."),
    g(Group::RewardModel, "reward_model_revision", T::Str, NONE, "Revision of the reward model.").default_only(),

    ppo("num_ppo_epochs", T::Int, int(4), "PPO epochs per batch."),
    ppo("whiten_rewards", T::Bool, FALSE, "Whiten rewards."),
    ppo("kl_coef", T::Float, float(0.05), "KL coefficient."),
    ppo("cliprange", T::Float, float(0.2), "Policy clip range."),
    ppo("vf_coef", T::Float, float(0.1), "Value function coefficient."),
    ppo("cliprange_value", T::Float, float(0.2), "Value clip range."),
    ppo("gamma", T::Float, float(1.0), "Discount factor."),
    ppo("lam", T::Float, float(0.95), "GAE lambda."),
    ppo("num_mini_batches", T::Int, int(1), "Mini-batches per PPO batch."),
    ppo("local_rollout_forward_batch_size", T::Int, int(64), "Rollout forward batch size."),
    ppo("num_sample_generations", T::Int, int(10), "Debug sample generations during training."),
    ppo("response_length", T::Int, int(512), "Max response length."),
    ppo("missing_eos_penalty", T::Float, NONE, "Penalty for responses without eos."),

    grpo("num_generations", T::Int, int(8), "GRPO group size G."),
    grpo("max_completion_length", T::Int, int(512), "Max generated length."),
    grpo("ds3_gather_for_generation", T::Bool, TRUE, "DeepSpeed ZeRO-3: gather weights for generation.").default_only(),
    grpo("reward_funcs", T::List(S::Str), EMPTY, "Reward functions: accuracy, format, cosine, repetition or plugins."),
    grpo("reward_weights", T::List(S::Float), NONE, "Weight per reward function; default: 1.0 each."),
    grpo("log_completions", T::Bool, FALSE, "Log generated completions (completions.jsonl in the checkpoint)."),
    grpo("use_vllm", T::Bool, FALSE, "Generate with vLLM.").default_only(),
    grpo("num_infer_workers", T::Int, int(1), "Inference workers per node (vllm/lmdeploy).").default_only(),
    grpo("vllm_device", T::List(S::Str), DefaultValue::List(&["auto"]), "Devices for vLLM, e.g. cuda:1 cuda:2.").default_only(),
    grpo("vllm_gpu_memory_utilization", T::Float, float(0.9), "vLLM memory fraction.").default_only(),
    grpo("vllm_max_model_len", T::Int, NONE, "vLLM max model length.").default_only(),
    grpo("vllm_max_num_seqs", T::Int, int(256), "vLLM max sequences.").default_only(),
    grpo("vllm_enforce_eager", T::Bool, FALSE, "vLLM eager mode.").default_only(),
    grpo("vllm_limit_mm_per_prompt", T::Dict, NONE, "vLLM multimodal limits.").default_only(),
    grpo("vllm_enable_prefix_caching", T::Bool, TRUE, "vLLM prefix caching.").default_only(),
    grpo("top_k", T::Int, int(50), "Top-k for GRPO generation."),
    grpo("top_p", T::Float, float(0.9), "Top-p for GRPO generation."),
    grpo("repetition_penalty", T::Float, float(1.0), "Repetition penalty for GRPO generation."),
    grpo("num_iterations", T::Int, int(1), "Updates per batch."),
    grpo("epsilon", T::Float, float(0.2), "Clip coefficient."),
    grpo("async_generate", T::Bool, FALSE, "Asynchronous rollout."),

    g(Group::CosineReward, "cosine_min_len_value_wrong", T::Float, float(0.0), "Cosine reward: wrong answer at min length."),
    g(Group::CosineReward, "cosine_max_len_value_wrong", T::Float, float(-0.5), "Cosine reward: wrong answer at max length."),
    g(Group::CosineReward, "cosine_min_len_value_correct", T::Float, float(1.0), "Cosine reward: correct answer at min length."),
    g(Group::CosineReward, "cosine_max_len_value_correct", T::Float, float(0.5), "Cosine reward: correct answer at max length."),
    g(Group::CosineReward, "cosine_max_len", T::Int, derived("max_completion_length"), "Cosine reward: max length."),

    g(Group::RepetitionReward, "repetition_n_grams", T::Int, int(3), "Repetition reward: n-gram size."),
    g(Group::RepetitionReward, "repetition_max_penalty", T::Float, float(-1.0), "Repetition reward: max penalty."),
];

//! Inference, deployment, web-ui, app and evaluation arguments (each inherits the previous).

use super::{
    DDP_BACKENDS, DDP_BACKENDS_BUILT, EMPTY, FALSE, NONE, TRUE, derived, float, int, text,
};
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
const fn infer(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    g(Group::Infer, name, ty, d, help)
}
const fn deploy(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    g(Group::Deploy, name, ty, d, help)
}
const fn eval(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    g(Group::Eval, name, ty, d, help)
}

const LANGS: &[&str] = &["zh", "en"];

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    infer("infer_backend", T::Choice(&["pt", "vllm", "lmdeploy"]), text("pt"),
          "Inference engine: 'pt' (kubeswift's own engine), 'vllm' or 'lmdeploy'.").hot().only(&["pt"]),
    infer("max_batch_size", T::Int, int(1), "Batch size of the pt engine.").hot(),
    infer("ddp_backend", T::Choice(DDP_BACKENDS), NONE, "Distributed backend for multi-device inference; default: automatic.")
        .only(DDP_BACKENDS_BUILT),
    infer("result_path", T::Str, NONE,
          "Where inference results go (jsonl); default: the checkpoint folder or './result'; the path is printed.").hot(),
    infer("metric", T::Choice(&["acc", "rouge"]), NONE, "Score the results: 'acc' or 'rouge'."),
    infer("val_dataset_sample", T::Int, NONE, "Number of validation rows to infer."),

    deploy("host", T::Str, text("0.0.0.0"), "Address the server binds."),
    deploy("port", T::Int, int(8000), "Port the server listens on."),
    deploy("api_key", T::Str, NONE, "Require 'Authorization: Bearer <api_key>'; unset: the SWIFT_API_KEY environment variable (e.g. from a Secret); empty: no key."),
    deploy("owned_by", T::Str, text("swift"), "owned_by in /v1/models."),
    deploy("served_model_name", T::Str, derived("the model's folder name"), "Model name the server answers to.").hot(),
    deploy("verbose", T::Bool, TRUE, "Log requests and responses."),
    deploy("log_interval", T::Int, int(20), "Seconds between throughput log lines; -1 disables."),
    deploy("max_logprobs", T::Int, int(20), "Most logprobs returned to a client."),

    g(Group::WebUi, "server_name", T::Str, text("0.0.0.0"), "Web UI host."),
    g(Group::WebUi, "server_port", T::Int, int(7860), "Web UI port."),
    g(Group::WebUi, "share", T::Bool, FALSE, "Create a public share link.").default_only(),
    g(Group::WebUi, "lang", T::Choice(LANGS), text("zh"), "Web UI language: zh or en."),

    g(Group::App, "base_url", T::Str, NONE, "Base URL of a deployed model, e.g. http://localhost:8000/v1; default: deploy locally."),
    g(Group::App, "studio_title", T::Str, derived("the model name"), "Title of the app."),
    g(Group::App, "is_multimodal", T::Bool, NONE, "Start the multimodal app; default: from the model, else False."),
    g(Group::App, "lang", T::Choice(LANGS), text("en"), "App language: zh or en."),

    eval("eval_backend", T::Choice(&["Native", "OpenCompass", "VLMEvalKit"]), text("Native"), "Evaluation backend.").hot(),
    eval("eval_dataset", T::List(S::Str), EMPTY, "Evaluation datasets.").hot(),
    eval("eval_limit", T::Int, NONE, "Rows sampled per evaluation dataset."),
    eval("eval_output_dir", T::Str, text("eval_output"), "Folder for evaluation results."),
    eval("local_dataset", T::Bool, FALSE, "Download the full data package into ./data and evaluate from it.").hot(),
    eval("temperature", T::Float, float(0.0), "Generation temperature for evaluation."),
    eval("verbose", T::Bool, FALSE, "Verbose logging of the local deployment."),
    eval("eval_num_proc", T::Int, int(16), "Max concurrent client requests."),
    eval("eval_url", T::Str, NONE, "URL of a deployed model to evaluate, e.g. http://localhost:8000/v1; default: deploy locally.").hot(),
];

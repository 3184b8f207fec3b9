//! 特定模型参数 and environment variables. Model-specific parameters are set with
//! `--model_kwargs '{"fps_max_frames": 12}'` or the environment (`FPS_MAX_FRAMES=12`).

use super::{FALSE, float, int};
use crate::spec::{DefaultValue, EnvVar, ModelKwarg, ValueType as T};

const fn k(
    family: &'static str,
    name: &'static str,
    ty: T,
    d: DefaultValue,
    help: &'static str,
) -> ModelKwarg {
    ModelKwarg {
        name,
        family,
        ty,
        default: d,
        help,
        important: false,
    }
}
const fn hot(mut kw: ModelKwarg) -> ModelKwarg {
    kw.important = true;
    kw
}

/// Every model-specific parameter of the seed, by model family.
#[rustfmt::skip]
pub const MODEL_KWARGS: &[ModelKwarg] = &[
    k("qwen2_vl", "IMAGE_FACTOR", T::Int, int(28), "Image side length factor."),
    k("qwen2_vl", "MIN_PIXELS", T::Int, int(4 * 28 * 28), "Min pixels of an image."),
    hot(k("qwen2_vl", "MAX_PIXELS", T::Int, int(16384 * 28 * 28), "Max pixels of an image.")),
    k("qwen2_vl", "MAX_RATIO", T::Int, int(200), "Max aspect ratio of an image."),
    k("qwen2_vl", "VIDEO_MIN_PIXELS", T::Int, int(128 * 28 * 28), "Min pixels of a video frame."),
    hot(k("qwen2_vl", "VIDEO_MAX_PIXELS", T::Int, int(768 * 28 * 28), "Max pixels of a video frame.")),
    k("qwen2_vl", "VIDEO_TOTAL_PIXELS", T::Int, int(24576 * 28 * 28), "Total pixels of a video."),
    k("qwen2_vl", "FRAME_FACTOR", T::Int, int(2), "Frame count factor."),
    k("qwen2_vl", "FPS", T::Float, float(2.0), "Video frames per second."),
    k("qwen2_vl", "FPS_MIN_FRAMES", T::Int, int(4), "Min frames of a video."),
    hot(k("qwen2_vl", "FPS_MAX_FRAMES", T::Int, int(768), "Max frames of a video.")),
    k("qwen2_audio", "SAMPLING_RATE", T::Int, int(16000), "Audio sampling rate."),
    k("internvl", "MAX_NUM", T::Int, int(12), "Max image tiles."),
    k("internvl", "INPUT_SIZE", T::Int, int(448), "Tile input size."),
    k("internvl2", "MAX_NUM", T::Int, int(12), "Max image tiles."),
    k("internvl2", "INPUT_SIZE", T::Int, int(448), "Tile input size."),
    k("internvl2", "VIDEO_MAX_NUM", T::Int, int(1), "MAX_NUM for video frames."),
    k("internvl2", "VIDEO_SEGMENTS", T::Int, int(8), "Video segments."),
    k("minicpmv2_6", "MAX_SLICE_NUMS", T::Int, int(9), "Max image slices."),
    k("minicpmv2_6", "VIDEO_MAX_SLICE_NUMS", T::Int, int(1), "MAX_SLICE_NUMS for video."),
    k("minicpmv2_6", "MAX_NUM_FRAMES", T::Int, int(64), "Max video frames."),
    k("minicpmo2_6", "INIT_TTS", T::Bool, FALSE, "Initialise the TTS module."),
    k("minicpmo2_6", "INIT_AUDIO", T::Bool, FALSE, "Initialise the audio module."),
    k("ovis1_6", "MAX_PARTITION", T::Int, int(9), "Max image partitions."),
    k("mplug_owl3", "MAX_NUM_FRAMES", T::Int, int(16), "Max video frames."),
    k("xcomposer2_4khd", "HD_NUM", T::Int, int(55), "HD image count."),
    k("xcomposer2", "HD_NUM", T::Int, int(24), "HD image count: 24 for one image, 6 for several."),
    k("video_cogvlm2", "NUM_FRAMES", T::Int, int(24), "Video frames."),
    k("phi3_vision", "NUM_CROPS", T::Int, int(4), "Image crops."),
    k("llama3_1_omni", "N_MELS", T::Int, int(128), "Mel bins of audio input."),
    k("video_llava", "NUM_FRAMES", T::Int, int(16), "Video frames."),
];

/// Process environment variables of the seed's 其他环境变量 section.
#[rustfmt::skip]
pub const ENV_VARS: &[EnvVar] = &[
    EnvVar { name: "CUDA_VISIBLE_DEVICES", help: "Which GPUs to use; default: all.", pet_alias: None },
    EnvVar { name: "ASCEND_RT_VISIBLE_DEVICES", help: "Which NPUs to use (Ascend); default: all.", pet_alias: None },
    EnvVar { name: "MODELSCOPE_CACHE", help: "Cache folder for downloaded models and datasets.", pet_alias: None },
    EnvVar { name: "NPROC_PER_NODE", help: "Worker processes per node (torchrun --nproc_per_node); default 1.", pet_alias: Some("PET_NPROC_PER_NODE") },
    EnvVar { name: "MASTER_PORT", help: "Rendezvous port (torchrun --master_port); default 29500.", pet_alias: Some("PET_MASTER_PORT") },
    EnvVar { name: "MASTER_ADDR", help: "Rendezvous host (torchrun --master_addr).", pet_alias: Some("PET_MASTER_ADDR") },
    EnvVar { name: "NNODES", help: "Number of nodes (torchrun --nnodes).", pet_alias: Some("PET_NNODES") },
    EnvVar { name: "NODE_RANK", help: "Rank of this node (torchrun --node_rank).", pet_alias: Some("PET_NODE_RANK") },
    EnvVar { name: "KUBESWIFT_TERMINATION_GRACE_SECONDS", help: "The pod's terminationGracePeriodSeconds (the operator sets it): after SIGTERM/SIGINT the launcher gives its workers this long, less 3 s, to save the step and exit before SIGKILL; default 60 s without it. A second signal stops them at once.", pet_alias: None },
];

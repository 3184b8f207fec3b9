//! A checkpoint's LoRA weights as plain numbers, for comparing training runs.

use std::path::Path;

/// `adapter_model.safetensors` of `dir`: (tensor name, f32 values), sorted by name.
pub fn adapter_f32(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let tensors = candle_core::safetensors::load(
        dir.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The same as bit patterns, for "bit-identical" assertions (NaN-safe, -0.0 != 0.0).
pub fn adapter_bits(dir: &Path) -> Vec<(String, Vec<u32>)> {
    adapter_f32(dir)
        .into_iter()
        .map(|(k, v)| (k, v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

//! Tuners: LoRA's configuration and PEFT's file formats (the adapter layers themselves sit on
//! the model's linear layers).

pub mod dora;
pub mod lora;
pub mod lora_config;
pub mod multi_lora;
pub mod pissa;
pub mod svd;

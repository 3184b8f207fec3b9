//! Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): the Llama block with biases on q/k/v_proj.
//!
//! The modules themselves are the shared tree in `decoder.rs` (the same names as the
//! checkpoint keys); this file says what is Qwen2's: its config.json and its quirks.

use std::path::Path;

use serde::Deserialize;

use super::config::{Architecture, BaseConfig, DecoderConfig, check_sliding_window};
use super::error::Result;

/// Qwen2's config.json (transformers 4 or 5 form).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub base: BaseConfig,
    pub use_sliding_window: Option<bool>,
    /// Window size when `use_sliding_window` is true; null or an int.
    pub sliding_window: Option<usize>,
    pub max_window_layers: Option<usize>,
}

impl Config {
    /// Qwen2 always has q/k/v biases and never an o_proj or MLP bias.
    pub fn decoder_config(&self, path: &Path) -> Result<DecoderConfig> {
        check_sliding_window(path, self.use_sliding_window)?;
        let mut c = self
            .base
            .decoder_config(path, Architecture::Qwen2, None, 10_000.0, false)?;
        c.qkv_bias = true;
        Ok(c)
    }
}

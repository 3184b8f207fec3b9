//! Qwen3 (`Qwen3ForCausalLM`): the Llama block with a per-head RMSNorm on queries and keys
//! (`q_norm`, `k_norm`) before RoPE, an explicit `head_dim`, and optional attention biases.

use std::path::Path;

use serde::Deserialize;

use super::config::{Architecture, BaseConfig, DecoderConfig, check_sliding_window};
use super::error::Result;

/// Qwen3's config.json (transformers 4 or 5 form).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub base: BaseConfig,
    /// Qwen3 sets it explicitly (128 for every size), not hidden_size / heads.
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub attention_bias: bool,
    pub use_sliding_window: Option<bool>,
    pub sliding_window: Option<usize>,
}

impl Config {
    pub fn decoder_config(&self, path: &Path) -> Result<DecoderConfig> {
        check_sliding_window(path, self.use_sliding_window)?;
        let mut c =
            self.base
                .decoder_config(path, Architecture::Qwen3, self.head_dim, 10_000.0, false)?;
        c.qkv_bias = self.attention_bias;
        c.o_bias = self.attention_bias;
        c.qk_norm = true;
        Ok(c)
    }
}

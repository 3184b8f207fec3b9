//! Llama 3 / 3.1 / 3.2 and SmolLM2 (`LlamaForCausalLM`): RMSNorm, grouped-query attention,
//! SiLU-gated MLP, RoPE with optional llama3 frequency scaling, often tied embeddings.

use std::path::Path;

use serde::Deserialize;

use super::config::{Architecture, BaseConfig, DecoderConfig};
use super::error::Result;

/// Llama's config.json (transformers 4 or 5 form).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub base: BaseConfig,
    pub head_dim: Option<usize>,
    /// One switch for q/k/v/o biases, as transformers' LlamaAttention has it.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

impl Config {
    pub fn decoder_config(&self, path: &Path) -> Result<DecoderConfig> {
        let mut c =
            self.base
                .decoder_config(path, Architecture::Llama, self.head_dim, 10_000.0, false)?;
        c.qkv_bias = self.attention_bias;
        c.o_bias = self.attention_bias;
        c.mlp_bias = self.mlp_bias;
        Ok(c)
    }
}

//! `generation_config.json`: the model author's generation defaults, used for every
//! generation argument the user leaves unset.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::error::{ModelError, Result};

/// The fields of generation_config.json that matter to the engine (all optional).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GenerationConfig {
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub max_new_tokens: Option<i64>,
    pub num_beams: Option<i64>,
    #[serde(default)]
    eos_token_id: Option<Value>,
    pub bos_token_id: Option<i64>,
    pub pad_token_id: Option<Value>,
}

impl GenerationConfig {
    /// Reads the file; a missing file means "no defaults" (transformers' built-ins apply).
    pub fn from_folder(folder: &Path) -> Result<Self> {
        let path = folder.join("generation_config.json");
        if !path.is_file() {
            return Ok(GenerationConfig::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ModelError::Json { path, source })
    }

    /// `eos_token_id` as a list (the file may hold a number or a list).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(Value::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_u64)
                .map(|v| v as u32)
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eos_may_be_a_number_or_a_list() {
        let a: GenerationConfig = serde_json::from_str(r#"{"eos_token_id": 2}"#).unwrap();
        let b: GenerationConfig =
            serde_json::from_str(r#"{"eos_token_id": [151645, 151643], "top_k": 20}"#).unwrap();
        assert_eq!(a.eos_token_ids(), vec![2]);
        assert_eq!(b.eos_token_ids(), vec![151645, 151643]);
        assert_eq!(b.top_k, Some(20));
    }
}

//! ms-swift's `model_type`: which architecture, template and loading rules a model folder
//! gets. ms-swift decides it from `--model_type`, else the folder name (matched against the
//! model ids it registers), else config.json's `architectures` when only one model_type
//! has that architecture; otherwise it asks for `--model_type`. We follow that order.
//!
//! Name matching: ms-swift compares the folder name with every registered hub id; we keep
//! the families as substring patterns instead of the id lists (e.g. any `*Qwen2.5*` folder
//! with a Qwen2 architecture is `qwen2_5`), which covers the registered ids and local copies.
//! `smollm2` is ours: ms-swift does not register SmolLM2 (its Llama architecture is
//! ambiguous there). Which template a model_type gets is the template module's
//! (`template::default_template_for`).

use std::path::Path;

use super::config::Architecture;
use super::error::{ModelError, Result};

/// One supported ms-swift model_type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelType {
    /// ms-swift's name (`LLMModelType`).
    pub name: &'static str,
    pub architecture: Architecture,
    /// Lower-case substrings of a folder name that identify the family.
    name_patterns: &'static [&'static str],
}

/// Registry order matters for name matching: more specific families first.
pub const MODEL_TYPES: &[ModelType] = &[
    ModelType {
        name: "qwen2_5",
        architecture: Architecture::Qwen2,
        name_patterns: &["qwen2.5", "qwen2_5", "qwen2-5"],
    },
    ModelType {
        name: "qwen2",
        architecture: Architecture::Qwen2,
        name_patterns: &["qwen1.5", "qwen1_5", "qwen2"],
    },
    ModelType {
        name: "qwen3",
        architecture: Architecture::Qwen3,
        name_patterns: &["qwen3"],
    },
    ModelType {
        name: "llama3_2",
        architecture: Architecture::Llama,
        name_patterns: &["llama-3.2", "llama3.2", "llama3_2", "llama-3_2"],
    },
    ModelType {
        name: "llama3_1",
        architecture: Architecture::Llama,
        name_patterns: &["llama-3.1", "llama3.1", "llama3_1", "llama-3_1"],
    },
    ModelType {
        name: "llama3",
        architecture: Architecture::Llama,
        name_patterns: &["llama-3", "llama3"],
    },
    ModelType {
        name: "smollm2",
        architecture: Architecture::Llama,
        name_patterns: &["smollm2"],
    },
];

/// How the model_type was decided (logged, so a surprising choice is explainable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    Given,
    FolderName,
    Architecture,
}

impl ModelType {
    /// Looks up a model_type by its ms-swift name.
    pub fn by_name(name: &str) -> Option<&'static ModelType> {
        MODEL_TYPES.iter().find(|m| m.name == name)
    }

    fn supported_list() -> String {
        MODEL_TYPES
            .iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Decides the model_type of `folder` (whose config.json declares `architecture`).
    pub fn detect(
        given: Option<&str>,
        folder: &Path,
        architecture: Architecture,
    ) -> Result<(&'static ModelType, Detection)> {
        if let Some(name) = given {
            let m = Self::by_name(name).ok_or_else(|| ModelError::UnknownModelType {
                model_type: name.into(),
                supported: Self::supported_list(),
            })?;
            if m.architecture != architecture {
                return Err(ModelError::ModelTypeMismatch {
                    model_type: name.into(),
                    expected: m.architecture.hf_name().into(),
                    found: architecture.hf_name().into(),
                    path: folder.join("config.json"),
                });
            }
            return Ok((m, Detection::Given));
        }
        if let Some(m) = Self::from_folder_name(folder, architecture) {
            return Ok((m, Detection::FolderName));
        }
        let candidates: Vec<&ModelType> = MODEL_TYPES
            .iter()
            .filter(|m| m.architecture == architecture)
            .collect();
        match candidates.as_slice() {
            [only] => Ok((only, Detection::Architecture)),
            _ => Err(ModelError::AmbiguousModelType {
                path: folder.to_path_buf(),
                architecture: architecture.hf_name().into(),
                candidates: candidates
                    .iter()
                    .map(|m| m.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The first family whose pattern occurs in the folder name and whose architecture agrees.
    fn from_folder_name(folder: &Path, architecture: Architecture) -> Option<&'static ModelType> {
        let name = folder_name(folder)?;
        MODEL_TYPES
            .iter()
            .filter(|m| m.architecture == architecture)
            .find(|m| m.name_patterns.iter().any(|p| name.contains(p)))
    }
}

/// The last path component, lower-cased, with ModelScope's `___` for `.` undone.
fn folder_name(folder: &Path) -> Option<String> {
    let last = folder.components().next_back()?.as_os_str().to_str()?;
    Some(last.replace("___", ".").to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(given: Option<&str>, folder: &str, arch: Architecture) -> Result<&'static str> {
        ModelType::detect(given, Path::new(folder), arch).map(|(m, _)| m.name)
    }

    #[test]
    fn folder_names_pick_the_family() {
        use Architecture::*;
        assert_eq!(
            detect(None, "/m/Qwen2.5-0.5B-Instruct", Qwen2).unwrap(),
            "qwen2_5"
        );
        assert_eq!(
            detect(None, "/m/Qwen2___5-7B-Instruct/", Qwen2).unwrap(),
            "qwen2_5"
        );
        assert_eq!(detect(None, "Qwen2-7B", Qwen2).unwrap(), "qwen2");
        assert_eq!(detect(None, "Qwen1.5-0.5B-Chat", Qwen2).unwrap(), "qwen2");
        assert_eq!(
            detect(None, "Meta-Llama-3.1-8B-Instruct", Llama).unwrap(),
            "llama3_1"
        );
        assert_eq!(
            detect(None, "Llama-3.2-1B-Instruct", Llama).unwrap(),
            "llama3_2"
        );
        assert_eq!(detect(None, "Meta-Llama-3-8B", Llama).unwrap(), "llama3");
        assert_eq!(
            detect(None, "SmolLM2-135M-Instruct", Llama).unwrap(),
            "smollm2"
        );
    }

    #[test]
    fn architecture_decides_when_unique_and_ambiguity_asks_for_model_type() {
        use Architecture::*;
        assert_eq!(detect(None, "my-model", Qwen3).unwrap(), "qwen3");
        let e = detect(None, "my-model", Llama).unwrap_err().to_string();
        assert!(
            e.contains("--model_type") && e.contains("llama3_2") && e.contains("smollm2"),
            "{e}"
        );
        // A name of another architecture's family does not override config.json.
        let e = detect(None, "qwen2.5-but-llama", Llama)
            .unwrap_err()
            .to_string();
        assert!(e.contains("LlamaForCausalLM"), "{e}");
    }

    #[test]
    fn given_model_type_is_checked() {
        use Architecture::*;
        assert_eq!(detect(Some("qwen2"), "Qwen2.5-7B", Qwen2).unwrap(), "qwen2");
        let e = detect(Some("gpt9"), "x", Qwen2).unwrap_err().to_string();
        assert!(e.contains("gpt9") && e.contains("qwen2_5"), "{e}");
        let e = detect(Some("qwen3"), "x", Llama).unwrap_err().to_string();
        assert!(
            e.contains("Qwen3ForCausalLM") && e.contains("LlamaForCausalLM"),
            "{e}"
        );
    }
}

//! Datasets known by name, shipped inside the binary so they work with no hub: ms-swift's
//! `swift/self-cognition` (our own rows in its format, `{{NAME}}`/`{{AUTHOR}}` placeholders,
//! `tag` zh/en) with its subsets `default`, `qwen3` and `empty_think`.

use std::io::{self, Read};

use super::preprocess::Preprocess;
use super::source::ByteSource;

/// The rows behind `swift/self-cognition` (also in `examples/data/self_cognition.jsonl`).
pub const SELF_COGNITION: &str = include_str!("../../../examples/data/self_cognition.jsonl");

const SELF_COGNITION_NAMES: [&str; 3] = [
    "swift/self-cognition",
    "modelscope/self-cognition",
    "self-cognition",
];

/// Bytes held in memory.
#[derive(Debug, Clone)]
pub struct MemorySource {
    pub name: String,
    pub bytes: &'static [u8],
}

impl ByteSource for MemorySource {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }

    fn open_at(&self, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        Ok(Box::new(&self.bytes[start..]))
    }
}

/// A registered dataset: its source and how its subsets preprocess, or `None` when `name`
/// is not registered. `Err` names an unknown subset.
pub fn lookup(
    name: &str,
    subsets: &[String],
    base: &Preprocess,
) -> Option<Result<Vec<(MemorySource, Preprocess)>, String>> {
    if !SELF_COGNITION_NAMES.contains(&name) {
        return None;
    }
    let subsets: Vec<&str> = if subsets.is_empty() {
        vec!["default"]
    } else {
        subsets.iter().map(String::as_str).collect()
    };
    let mut out = Vec::new();
    for subset in subsets {
        let (query_suffix, response_prefix) = match subset {
            "default" => ("", ""),
            "qwen3" => (" /no_think", "<think>\n\n</think>\n\n"),
            "empty_think" => ("", "<think>\n\n</think>\n\n"),
            other => {
                return Some(Err(format!(
                    "'{name}' has no subset '{other}' (subsets: default, qwen3, empty_think)"
                )));
            }
        };
        let source = MemorySource {
            name: format!("{name}:{subset} (self_cognition.jsonl)"),
            bytes: SELF_COGNITION.as_bytes(),
        };
        let preprocess = Preprocess {
            query_suffix: query_suffix.to_string(),
            response_prefix: response_prefix.to_string(),
            ..base.clone()
        };
        out.push((source, preprocess));
    }
    Some(Ok(out))
}

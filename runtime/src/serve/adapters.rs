//! `swift deploy --adapters`: which LoRA adapters the server holds and the model names
//! that select them. `name=path` serves the adapter under `name`; a bare path is the
//! default adapter, applied to requests for the served model name itself (as ms-swift).
//! Adapter ids follow [`ServedAdapters::dirs`]: the default first, then the named ones in
//! the order given.

use std::path::PathBuf;

use crate::tuner::multi_lora::AdapterId;

/// The adapters of a server, parsed from `--adapters`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServedAdapters {
    pub default: Option<PathBuf>,
    pub named: Vec<(String, PathBuf)>,
}

/// An `--adapters` entry the server cannot serve; names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterArgError {
    #[error("--adapters {entry}: expected name=path or a path, with neither part empty")]
    Malformed { entry: String },
    #[error("--adapters {entry}: the name {name} is given twice")]
    DuplicateName { entry: String, name: String },
    #[error(
        "--adapters {entry}: {name} is the served model name (requests for it get the base \
         model or the default adapter); pick another name"
    )]
    ClashesWithModel { entry: String, name: String },
    #[error(
        "--adapters: more than one bare path ({first}, {second}); only one adapter can be the \
         default, give the others as name=path"
    )]
    TwoDefaults { first: String, second: String },
}

impl ServedAdapters {
    /// Parses `--adapters` entries for a server whose model is called `model_name`.
    pub fn parse(entries: &[String], model_name: &str) -> Result<Self, AdapterArgError> {
        let mut out = ServedAdapters::default();
        for entry in entries {
            let malformed = || AdapterArgError::Malformed {
                entry: entry.clone(),
            };
            match entry.split_once('=') {
                Some((name, path)) => {
                    let (name, path) = (name.trim(), path.trim());
                    if name.is_empty() || path.is_empty() {
                        return Err(malformed());
                    }
                    if name == model_name {
                        return Err(AdapterArgError::ClashesWithModel {
                            entry: entry.clone(),
                            name: name.into(),
                        });
                    }
                    if out.named.iter().any(|(n, _)| n == name) {
                        return Err(AdapterArgError::DuplicateName {
                            entry: entry.clone(),
                            name: name.into(),
                        });
                    }
                    out.named.push((name.into(), PathBuf::from(path)));
                }
                None => {
                    if entry.trim().is_empty() {
                        return Err(malformed());
                    }
                    if let Some(first) = &out.default {
                        return Err(AdapterArgError::TwoDefaults {
                            first: first.display().to_string(),
                            second: entry.clone(),
                        });
                    }
                    out.default = Some(PathBuf::from(entry.trim()));
                }
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.named.is_empty()
    }

    /// The adapter folders, index = [`AdapterId`].
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.default
            .iter()
            .cloned()
            .chain(self.named.iter().map(|(_, p)| p.clone()))
            .collect()
    }

    /// The adapter applied to requests for the served model name.
    pub fn default_id(&self) -> Option<AdapterId> {
        self.default.as_ref().map(|_| 0)
    }

    /// The adapter served under `name`.
    pub fn id_of(&self, name: &str) -> Option<AdapterId> {
        let offset = usize::from(self.default.is_some());
        self.named
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i + offset)
    }

    /// The names of the named adapters, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.named.iter().map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[&str]) -> Result<ServedAdapters, AdapterArgError> {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        ServedAdapters::parse(&entries, "base")
    }

    #[test]
    fn named_and_default_adapters_get_ids_in_order() {
        let a = parse(&["x=/a/x", "/a/default", "y=/a/y=1"]).unwrap();
        assert_eq!(a.default, Some(PathBuf::from("/a/default")));
        assert_eq!(
            a.dirs(),
            ["/a/default", "/a/x", "/a/y=1"].map(PathBuf::from).to_vec()
        );
        assert_eq!(a.default_id(), Some(0));
        assert_eq!(
            (a.id_of("x"), a.id_of("y"), a.id_of("z")),
            (Some(1), Some(2), None)
        );
        assert_eq!(a.names().collect::<Vec<_>>(), ["x", "y"]);
        let b = parse(&["x=/a/x"]).unwrap();
        assert_eq!((b.default_id(), b.id_of("x")), (None, Some(0)));
        assert!(parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        assert!(matches!(
            parse(&["=/a"]),
            Err(AdapterArgError::Malformed { .. })
        ));
        assert!(matches!(
            parse(&["x="]),
            Err(AdapterArgError::Malformed { .. })
        ));
        assert!(matches!(
            parse(&["x=/a", "x=/b"]),
            Err(AdapterArgError::DuplicateName { .. })
        ));
        assert!(matches!(
            parse(&["base=/a"]),
            Err(AdapterArgError::ClashesWithModel { .. })
        ));
        let e = parse(&["/a", "/b"]).unwrap_err();
        assert!(
            e.to_string().contains("/a") && e.to_string().contains("/b"),
            "{e}"
        );
    }
}

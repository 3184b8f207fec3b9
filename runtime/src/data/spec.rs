//! The `--dataset` syntax: `path[:subset1/subset2][#N]` (ms-swift's `DatasetSyntax`).

use std::path::Path;

use super::error::DataError;

/// One `--dataset`/`--val_dataset` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSpec {
    /// As written, for messages.
    pub raw: String,
    /// A file, a folder, or a registered name (`swift/self-cognition`).
    pub path: String,
    pub subsets: Vec<String>,
    /// `#N`: how many rows to sample.
    pub sample: Option<usize>,
    /// The argument it came from (`dataset`, `val_dataset`), for messages.
    pub arg: &'static str,
}

impl DatasetSpec {
    /// Parses a spec. An existing path is taken whole (a file may contain `#` or `:`), as
    /// ms-swift does; `#0` is refused (ms-swift asserts N > 0).
    pub fn parse(raw: &str) -> Result<Self, DataError> {
        Self::parse_as("dataset", raw)
    }

    /// [`DatasetSpec::parse`] for the argument `arg` (`val_dataset`), which errors name.
    pub fn parse_as(arg: &'static str, raw: &str) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::BadSpec {
            arg,
            spec: raw.to_string(),
            reason,
        };
        let exists = |p: &str| Path::new(p).exists();
        let (rest, sample) = if exists(raw) {
            (raw, None)
        } else {
            match raw.rsplit_once('#') {
                Some((rest, n)) => {
                    let n: usize = n
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("'#{n}' must be a positive row count")))?;
                    if n == 0 {
                        return Err(bad("#0 selects no rows; use a positive count".to_string()));
                    }
                    (rest, Some(n))
                }
                None => (raw, None),
            }
        };
        let (path, subsets) = if exists(rest) {
            (rest, Vec::new())
        } else {
            // A URI's `scheme://` is not a subset separator.
            let body_at = rest.find("://").map_or(0, |i| i + 3);
            match rest[body_at..].split_once(':') {
                Some((path, subsets)) => (
                    &rest[..body_at + path.len()],
                    subsets.split('/').map(|s| s.trim().to_string()).collect(),
                ),
                None => (rest, Vec::new()),
            }
        };
        let path = path.trim();
        if path.is_empty() {
            return Err(bad("no path".to_string()));
        }
        Ok(DatasetSpec {
            raw: raw.to_string(),
            path: path.to_string(),
            subsets,
            sample,
            arg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subsets_and_sample_count() {
        let s = DatasetSpec::parse("no/such/dir:a/b#500").unwrap();
        assert_eq!(s.path, "no/such/dir");
        assert_eq!(s.subsets, vec!["a", "b"]);
        assert_eq!(s.sample, Some(500));
        let s = DatasetSpec::parse("s3://bucket/d/train.jsonl#5").unwrap();
        assert_eq!(s.path, "s3://bucket/d/train.jsonl");
        assert_eq!((s.subsets.len(), s.sample), (0, Some(5)));
        let s = DatasetSpec::parse("s3://bucket/folder:a").unwrap();
        assert_eq!(
            (s.path.as_str(), s.subsets.as_slice()),
            ("s3://bucket/folder", &["a".to_string()][..])
        );
        let s = DatasetSpec::parse("data.jsonl").unwrap();
        assert_eq!((s.path.as_str(), s.sample), ("data.jsonl", None));
    }

    #[test]
    fn an_existing_path_is_taken_whole() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("odd#3.jsonl");
        std::fs::write(&odd, "{}\n").unwrap();
        let s = DatasetSpec::parse(odd.to_str().unwrap()).unwrap();
        assert_eq!(s.sample, None);
        assert_eq!(s.path, odd.to_str().unwrap());
    }

    #[test]
    fn zero_and_garbage_counts_are_refused() {
        let err = DatasetSpec::parse("a.jsonl#0").unwrap_err().to_string();
        assert!(err.contains("#0"), "{err}");
        let err = DatasetSpec::parse("a.jsonl#many").unwrap_err().to_string();
        assert!(err.contains("'#many'"), "{err}");
    }
}

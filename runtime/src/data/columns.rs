//! Column renaming as ms-swift's `RowPreprocessor.safe_rename_columns` does it, per row:
//! names match case-insensitively, a target claimed by two present columns is left alone
//! (`response` and `answer` both present: neither is renamed), and identity mappings keep a
//! column where it is.

use serde_json::{Map, Value};

/// An ordered column mapping (`from` -> `to`).
pub type ColumnMap = Vec<(String, String)>;

/// Renames the row's columns; fails when a new name is already a column of the row
/// (Hugging Face `rename_columns` refuses that too).
pub fn safe_rename(
    row: &mut Map<String, Value>,
    mapping: &[(String, String)],
) -> Result<(), String> {
    let mut renames: Vec<(String, String)> = Vec::new();
    for (from, to) in mapping {
        let Some(actual) = row.keys().find(|k| k.eq_ignore_ascii_case(from)) else {
            continue;
        };
        // A later mapping of the same column replaces an earlier one (a Python dict).
        renames.retain(|(f, _)| f != actual);
        renames.push((actual.clone(), to.clone()));
    }
    let claimed = |to: &str| renames.iter().filter(|(_, t)| t == to).count();
    let renames: Vec<(String, String)> = renames
        .iter()
        .filter(|(from, to)| claimed(to) == 1 && from != to)
        .cloned()
        .collect();
    for (from, to) in &renames {
        if row.contains_key(to) && !renames.iter().any(|(f, _)| f == to) {
            return Err(format!(
                "renaming column '{from}' to '{to}': the row already has a '{to}' column"
            ));
        }
    }
    let moved: Vec<(String, Value)> = renames
        .iter()
        .filter_map(|(from, to)| row.remove(from).map(|v| (to.clone(), v)))
        .collect();
    row.extend(moved);
    Ok(())
}

/// Mapping from a list of alias names to one target.
pub fn aliases(names: &[&str], to: &str) -> impl Iterator<Item = (String, String)> {
    names
        .iter()
        .map(move |n| (n.to_string(), to.to_string()))
        .collect::<Vec<_>>()
        .into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn map(pairs: &[(&str, &str)]) -> ColumnMap {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn renames_case_insensitively() {
        let mut r = row(json!({"Question": "q", "Answer": "a"}));
        safe_rename(
            &mut r,
            &map(&[("question", "query"), ("answer", "response")]),
        )
        .unwrap();
        assert_eq!(r, row(json!({"query": "q", "response": "a"})));
    }

    #[test]
    fn a_target_claimed_twice_is_left_alone() {
        let mut r = row(json!({"response": "r", "answer": "a"}));
        safe_rename(
            &mut r,
            &map(&[("response", "response"), ("answer", "response")]),
        )
        .unwrap();
        assert_eq!(r, row(json!({"response": "r", "answer": "a"})));
    }

    #[test]
    fn renaming_onto_an_existing_column_fails() {
        let mut r = row(json!({"a": 1, "query": "q"}));
        let err = safe_rename(&mut r, &map(&[("a", "query")])).unwrap_err();
        assert!(err.contains("'a'") && err.contains("'query'"), "{err}");
    }
}

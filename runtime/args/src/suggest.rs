//! "Did you mean ...?" for misspelt argument names.

/// The candidate closest to `name`, if any is close enough to be a plausible typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let name = name.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&name, &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn suggests_typos_and_nothing_for_strangers() {
        let names = ["lora_rank", "lora_alpha", "learning_rate", "model"];
        assert_eq!(closest("lora_rnak", names).as_deref(), Some("lora_rank"));
        assert_eq!(
            closest("learning_rat", names).as_deref(),
            Some("learning_rate")
        );
        assert_eq!(closest("Model", names).as_deref(), Some("model"));
        assert_eq!(closest("xyz", names), None);
    }
}

//! A short stable hash of a desired child's spec, stored as an annotation, so a reconciler
//! can tell "unchanged" from "must be replaced" without diffing server-defaulted fields.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// 16 hex digits of SHA-256 over the value's JSON (serde_json keeps field order stable).
pub fn of<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn stable_and_sensitive() {
        let a = super::of(&serde_json::json!({"a": 1}));
        assert_eq!(a, super::of(&serde_json::json!({"a": 1})));
        assert_ne!(a, super::of(&serde_json::json!({"a": 2})));
        assert_eq!(a.len(), 16);
    }
}

//! Free text (user names, node names) made into what Kubernetes accepts as a label value or a
//! part of an object name.

use crate::identity::UNKNOWN_CALLER;

/// `text` made into a valid label value: at most 63 characters of `A-Z a-z 0-9 - _ .`, starting
/// and ending with a letter or digit (other characters become `_`, e.g. in
/// `system:serviceaccount:ns:name`); [`UNKNOWN_CALLER`] when nothing is left.
pub fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        UNKNOWN_CALLER.to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// `text` made into a part of an object name (e.g. a binding named after a user): lower-case
/// letters and digits, everything else `-`, no `-` at either end.
pub fn name_part(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    cleaned.trim_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_always_valid() {
        assert_eq!(label_value("alice"), "alice");
        assert_eq!(
            label_value("system:serviceaccount:ops:bot"),
            "system_serviceaccount_ops_bot"
        );
        assert_eq!(label_value("bob@example.com"), "bob_example.com");
        assert_eq!(label_value(":::"), UNKNOWN_CALLER);
        assert_eq!(label_value(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn name_parts_are_lower_case_and_dashed() {
        assert_eq!(name_part("Bob@Example.com"), "bob-example-com");
        assert_eq!(name_part(":alice:"), "alice");
    }
}

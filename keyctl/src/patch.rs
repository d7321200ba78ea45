//! The exact changes keyctl sends: built here, as data, so that tests can pin their shape.
//!
//! - A grant is a JSON merge patch that sets one annotation: concurrent grants of other keys
//!   touch other annotations and never overwrite each other.
//! - A removal is a JSON patch that first *tests* each annotation still holds the value that was
//!   read, then removes it: a grant re-issued in the meantime is not removed by mistake; the
//!   server refuses the whole patch and keyctl reads again.

use serde_json::{Value, json};

/// The merge patch that sets one grant annotation.
pub fn set_annotation(key: &str, value: &str) -> Value {
    json!({ "metadata": { "annotations": { key: value } } })
}

/// The JSON patch that removes annotations, each only if it still has the value given.
pub fn remove_annotations<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> json_patch::Patch {
    let mut operations = Vec::new();
    for (key, value) in entries {
        let path = annotation_pointer(key);
        operations.push(json!({ "op": "test", "path": path, "value": value }));
        operations.push(json!({ "op": "remove", "path": path }));
    }
    // A list of well-formed test/remove operations always deserializes.
    serde_json::from_value(Value::Array(operations)).expect("valid JSON patch operations")
}

/// The JSON pointer (RFC 6901) of an annotation: `/` and `~` in the key are escaped.
pub fn annotation_pointer(key: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_touches_only_its_own_annotation() {
        assert_eq!(
            set_annotation(
                "ssh.nodegate.dev/g.root.00aa",
                "login=\"root\" ssh-ed25519 AAAA"
            ),
            json!({"metadata": {"annotations": {"ssh.nodegate.dev/g.root.00aa": "login=\"root\" ssh-ed25519 AAAA"}}})
        );
    }

    #[test]
    fn removals_test_before_they_remove() {
        let patch = remove_annotations([("ssh.nodegate.dev/g.root.00aa", "v1"), ("a~b/c", "v2")]);
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([
                {"op": "test", "path": "/metadata/annotations/ssh.nodegate.dev~1g.root.00aa", "value": "v1"},
                {"op": "remove", "path": "/metadata/annotations/ssh.nodegate.dev~1g.root.00aa"},
                {"op": "test", "path": "/metadata/annotations/a~0b~1c", "value": "v2"},
                {"op": "remove", "path": "/metadata/annotations/a~0b~1c"},
            ])
        );
    }
}

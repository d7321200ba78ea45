//! The exact changes keyctl sends: built here, as data, so that tests can pin their shape.
//!
//! - A grant is a JSON merge patch that sets one annotation: concurrent grants of other keys
//!   touch other annotations and never overwrite each other.
//! - A removal is a JSON patch that first *tests* that the Node still has the resourceVersion
//!   that was read, then removes the annotations chosen from that read: nothing changed in
//!   between, so nothing is removed that was not read (a grant re-issued in the meantime, say).
//!   If anything changed, the server refuses the whole patch and keyctl reads again.
//!
//! Why the resourceVersion and not each annotation's value: the API server compares a `test`
//! value with its own JSON encoding of the stored one, byte for byte, and that encoding escapes
//! `&`, `<`, `>`, U+2028 and U+2029 (Go's HTML-safe JSON). A value holding any of them never
//! matched, so such a grant could never be removed. A resourceVersion is an opaque token of
//! digits that both sides write alike.

use serde_json::{Value, json};

/// The merge patch that sets one grant annotation.
pub fn set_annotation(key: &str, value: &str) -> Value {
    json!({ "metadata": { "annotations": { key: value } } })
}

/// The JSON patch that removes annotations, only if the Node is still at `resource_version`.
pub fn remove_annotations<'a>(
    resource_version: &str,
    keys: impl IntoIterator<Item = &'a str>,
) -> json_patch::Patch {
    let mut operations = vec![json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": resource_version,
    })];
    for key in keys {
        operations.push(json!({ "op": "remove", "path": annotation_pointer(key) }));
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
    fn removals_test_the_resource_version_read_then_remove() {
        let patch = remove_annotations("4711", ["ssh.nodegate.dev/g.root.00aa", "a~b/c"]);
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "4711"},
                {"op": "remove", "path": "/metadata/annotations/ssh.nodegate.dev~1g.root.00aa"},
                {"op": "remove", "path": "/metadata/annotations/a~0b~1c"},
            ])
        );
    }

    #[test]
    fn no_annotation_value_is_sent_so_none_can_be_encoded_differently() {
        let patch = remove_annotations("1", ["a", "b"]);
        let text = serde_json::to_string(&patch).unwrap();
        assert_eq!(text.matches("\"value\"").count(), 1, "{text}");
    }
}

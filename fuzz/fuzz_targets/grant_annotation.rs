//! The grant parser: whatever is on a Node either fails to parse or round-trips exactly.
//!
//! Input: `NAME\0VALUE` (without `\0`, the whole input is the value and the name is derived
//! from it, so that valid grants are reachable).

#![no_main]

use libfuzzer_sys::fuzz_target;
use nodegate_core::Grant;
use nodegate_core::grant::is_forbidden_char;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (name, value) = match text.split_once('\0') {
        Some((name, value)) => (name.to_owned(), value),
        None => {
            // Try the name the value would imply, if it parses at all under some name.
            match Grant::from_annotation("", text) {
                Err(nodegate_core::GrantError::NameMismatch { expected, .. }) => (expected, text),
                _ => (String::new(), text),
            }
        }
    };
    let Ok(grant) = Grant::from_annotation(&name, value) else {
        return;
    };
    // What was accepted is well-formed...
    assert_eq!(grant.annotation_name(), name);
    let rewritten = grant.annotation_value();
    assert!(!rewritten.chars().any(is_forbidden_char), "{rewritten:?}");
    // ...and survives a round trip unchanged.
    let again = Grant::from_annotation(&name, &rewritten).expect("a written grant parses");
    assert_eq!(again, grant);
    assert_eq!(again.annotation_value(), rewritten);
});

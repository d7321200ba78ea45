//! The host key parser: whatever is published on a Node is refused, or accepted exactly as
//! written and printed as plain `known_hosts` lines. The check is
//! `nodegate_fuzz_targets::host_key_annotation` (fuzz/targets/), which
//! `cargo test -p nodegate-fuzz-targets` also replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nodegate_fuzz_targets::host_key_annotation(data);
});

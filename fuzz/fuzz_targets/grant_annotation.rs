//! The grant parser: whatever is on a Node either fails to parse or round-trips exactly.
//! The check is `nodegate_fuzz_targets::grant_annotation` (fuzz/targets/), which
//! `cargo test -p nodegate-fuzz-targets` also replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nodegate_fuzz_targets::grant_annotation(data);
});

//! The session Event fields keyctl sessions reads: what from_annotations accepts round-trips through to_annotations.
//! The check is `nodegate_fuzz_targets::session_event` (fuzz/targets/), which
//! `cargo test -p nodegate-fuzz-targets` also replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nodegate_fuzz_targets::session_event(data);
});

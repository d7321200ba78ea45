//! The watch event parser of nodegate-agent: an accepted event is node n1's, its resourceVersion is URL-safe, its annotations are under the prefix.
//! The check is `nodegate_fuzz_targets::watch_event` (fuzz/targets/), which
//! `cargo test -p nodegate-fuzz-targets` also replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nodegate_fuzz_targets::watch_event(data);
});

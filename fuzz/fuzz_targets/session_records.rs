//! The agent's persisted session records: what restore_json keeps re-serializes and restores to the same, never more records than given.
//! The check is `nodegate_fuzz_targets::session_records` (fuzz/targets/), which
//! `cargo test -p nodegate-fuzz-targets` also replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nodegate_fuzz_targets::session_records(data);
});
